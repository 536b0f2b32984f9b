//! Generates (or updates in place) a realistic EUPS install tree with `qpack::treegen`.
//!
//! ```text
//! cargo run --release --example make-tree -- OUT [--release N] [--size 1G] [--prefix /qserv/stack]
//! ```

use qpack::treegen::{self, GenOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: make-tree OUT [--release N] [--size SIZE] [--prefix PATH] [--flavor NAME] [--junk]

Makes OUT hold exactly release N of a generated Qserv/EUPS stack (updating an earlier
generated release in place, rewriting only what changed).

  --release N     release number, >= 1 (default 1)
  --size SIZE     approximate total file bytes: 1G, 200M, 64k, 1500 (default 64M)
  --prefix PATH   build prefix embedded in scripts, .pc/.cmake files and RPATHs
                  (default /qserv/stack)
  --flavor NAME   EUPS flavor directory (default Linux64)
  --junk          afterwards add EupsBuildDir/ and ups_db/.lockDir/ leftovers
  -h, --help      print this help";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("make-tree: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut opts = GenOptions::default();
    let mut out: Option<PathBuf> = None;
    let mut junk = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--release" => {
                let v = value("--release")?;
                opts.release =
                    v.parse().ok().filter(|&r| r >= 1).ok_or(format!("bad --release {v:?}: want an integer >= 1"))?;
            }
            "--size" => {
                let v = value("--size")?;
                opts.size =
                    treegen::parse_size(&v).ok_or(format!("bad --size {v:?}: want e.g. 1G, 200M, 64k, 1500"))?;
            }
            "--prefix" => opts.prefix = value("--prefix")?,
            "--flavor" => opts.flavor = value("--flavor")?,
            "--junk" => junk = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n\n{USAGE}")),
            _ if out.is_none() => out = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}\n\n{USAGE}")),
        }
    }
    let out = out.ok_or(format!("missing OUT\n\n{USAGE}"))?;
    let t = Instant::now();
    let st = treegen::generate(&out, &opts).map_err(|e| format!("{}: {e}", out.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if junk {
        treegen::add_build_junk(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    println!(
        "tree:          {} (release {}, qserv {})",
        out.display(),
        opts.release,
        treegen::qserv_version(opts.release)
    );
    println!("files:         {}", st.files);
    println!("dirs:          {}", st.dirs);
    println!("symlinks:      {}", st.symlinks);
    println!("hardlinks:     {}", st.hardlinks);
    println!("bytes:         {} ({:.1} MiB)", st.bytes, st.bytes as f64 / (1u64 << 20) as f64);
    println!("files written: {}", st.files_written);
    println!("files removed: {}", st.files_removed);
    println!(
        "time:          {secs:.2} s ({:.0} MiB/s of tree content)",
        st.bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}
