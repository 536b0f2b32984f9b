//! Helpers shared by the benchmarks: running reference commands and measuring what they leave.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Bytes used below `path`, as `du -sb` counts them.
pub fn du(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().expect("du");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Runs a shell command, which must succeed, and returns its wall time in seconds.
pub fn sh(cmd: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "failed: {cmd}");
    t.elapsed().as_secs_f64()
}

/// Whether a command is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool} >/dev/null")).status().is_ok_and(|s| s.success())
}
