//! Deterministic generator of realistic EUPS install trees (the LSST/Qserv software stack layout).
//!
//! This module owns [`generate`]: it makes a directory hold exactly one *release* of a synthetic but
//! realistic Qserv stack — `<flavor>/<product>/<version>/` product trees with binaries, shared libraries and
//! their symlink chains, headers, Python modules with `__pycache__`, data and docs, plus `ups_db/` (EUPS version
//! and chain files, `global.tags`, a pickle cache), `eups/`, `site/` and `loadLSST.bash`. Trees are used by
//! tests, benchmarks and the demo.
//!
//! Everything is a pure function of ([`GenOptions`], release): the same options always give byte-identical
//! trees (content, modes, file and directory mtimes). Content is made by small deterministic generators
//! (splitmix64-driven) that compress like the real thing: binaries are ELF-like (instruction-pattern code,
//! mangled-name string tables, unwind tables, zero padding), text comes from identifier and word vocabularies.
//!
//! Releases model a real stack's life: `qserv` is rebuilt every release (new version directory; most binary
//! sections and every `.pyc` change, most sources do not), every even release bumps one dependency to a new
//! version directory sharing most of its bytes with the old one, and everything else stays byte-identical.
//! [`generate`] updates an existing tree in place, rewriting only what differs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default build prefix embedded in generated files (shebangs, `.pc`/`.cmake` files, RPATHs).
pub const DEFAULT_PREFIX: &str = "/qserv/stack";
/// Default EUPS flavor (name of the directory holding the products).
pub const DEFAULT_FLAVOR: &str = "Linux64";
/// Version of the top-level `eups/` installation.
pub const EUPS_VERSION: &str = "2.2.8";

/// Options for [`generate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenOptions {
    /// Release number, `>= 1`: release N+1 is release N with qserv rebuilt (and, for even N+1, one dependency
    /// bumped).
    pub release: u32,
    /// Approximate total bytes of regular-file content.
    pub size: u64,
    /// Build prefix embedded in some files (shebangs, `.pc`/`.cmake` files, RPATHs).
    pub prefix: String,
    /// EUPS flavor: the directory under which products live, and the `FLAVOR` of `ups_db` entries.
    pub flavor: String,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            release: 1,
            size: 64 << 20,
            prefix: DEFAULT_PREFIX.to_string(),
            flavor: DEFAULT_FLAVOR.to_string(),
        }
    }
}

/// What a [`generate`] call produced and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Regular files (distinct inodes) in the tree.
    pub files: u64,
    /// Directories in the tree (not counting the root).
    pub dirs: u64,
    /// Symbolic links in the tree.
    pub symlinks: u64,
    /// Extra names of already-counted regular files (hard links).
    pub hardlinks: u64,
    /// Total bytes of regular-file content (each inode once).
    pub bytes: u64,
    /// Regular files created or rewritten by this call.
    pub files_written: u64,
    /// Non-directory entries removed by this call (files, links, junk).
    pub files_removed: u64,
}

/// Makes `out` hold exactly release `opts.release` of the generated stack. `out` may be empty/missing
/// (fresh generation) or hold an earlier generated release (then it is updated IN PLACE: only files whose
/// content or mode differs are rewritten, files not in the new release are removed; unchanged files keep their
/// inode and mtime).
///
/// Anything in `out` that is not part of the release (e.g. [`add_build_junk`]) is removed. As a safety net a
/// non-empty `out` without a `ups_db/` directory is refused. Read-only files and directories are handled.
pub fn generate(out: &Path, opts: &GenOptions) -> io::Result<GenStats> {
    if opts.release == 0 {
        return Err(invalid("release must be >= 1"));
    }
    if opts.flavor.is_empty() || opts.flavor.contains('/') || opts.flavor.starts_with('.') {
        return Err(invalid("flavor must be a plain directory name"));
    }
    let plan = build_plan(opts);
    sync(out, &plan)
}

/// Parses sizes like "1G", "200M", "64k", "1500" (binary units: K=1024...).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix(['b', 'B']).map(|t| t.strip_suffix(['i', 'I']).unwrap_or(t)).unwrap_or(s);
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Some((int, frac)) = num.split_once('.') {
        // Decimal fractions, e.g. "1.5G"; computed exactly in integers.
        if shift == 0 || frac.contains('.') || frac.is_empty() || frac.len() > 9 {
            return None;
        }
        let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let scale = 10u64.pow(frac.len() as u32);
        let frac: u64 = frac.parse().ok()?;
        let whole = int.checked_mul(1u64 << shift)?;
        let part = ((frac as u128) << shift) / scale as u128;
        return whole.checked_add(u64::try_from(part).ok()?);
    }
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The version directory name qserv has in release `release` (`2026.11.<release>`).
pub fn qserv_version(release: u32) -> String {
    format!("2026.11.{release}")
}

/// `(product, version)` of every product declared in `ups_db` in release `release`, in a fixed order.
pub fn product_versions(release: u32) -> Vec<(String, String)> {
    product_states(release).into_iter().map(|s| (s.def.name.to_string(), s.version)).collect()
}

/// Adds build leftovers a real stack may hold and a packer should exclude: `EupsBuildDir/` with some junk
/// files, and an EUPS lock directory `ups_db/.lockDir/`. [`generate`] removes them again.
pub fn add_build_junk(out: &Path) -> io::Result<()> {
    let build = out.join("EupsBuildDir").join(DEFAULT_FLAVOR).join("qserv-build");
    fs::create_dir_all(build.join("src/core/modules/czar"))?;
    fs::create_dir_all(build.join("ups"))?;
    let mut rng = Rng::new(0xb111d);
    let ctx = junk_ctx();
    let mut buf = Vec::new();
    text_block(Dialect::Txt, &ctx, &mut rng, &mut buf, 20_000, true, true);
    fs::write(build.join("build.log"), &buf)?;
    fs::write(build.join("build.msg"), b"eupspkg: build failed in qserv (exit 2)\n")?;
    buf.clear();
    code_section(&mut rng, &mut buf, 50_000);
    fs::write(build.join("src/core/modules/czar/Czar.o"), &buf)?;
    fs::write(build.join("ups/qserv.table"), b"setupRequired(boost)\n")?;
    let lock = out.join("ups_db").join(".lockDir");
    fs::create_dir_all(&lock)?;
    fs::write(lock.join("exclusive-4242"), b"4242\n")?;
    Ok(())
}

/// Removes a directory tree even if it holds read-only directories (which are made writable first).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let md = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return fs::remove_file(path);
    }
    remove_dir_counting(path, &mut 0)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

// ---------------------------------------------------------------------------------------------------------
// Hashing and PRNG.

#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn h2(a: u64, b: u64) -> u64 {
    mix64(a.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23) ^ mix64(b ^ 0x632b_e59b_d9b4_e019))
}

fn hstr(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix64(seed ^ 0x5851_f42d_4c95_7f2d))
    }
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// Uniform in `0..n` (n < 2^32).
    #[inline]
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
    /// Skewed towards small values in `0..n`.
    #[inline]
    fn skew(&mut self, n: usize) -> usize {
        let r = self.next();
        let a = (((r >> 32) * n as u64) >> 32) as usize;
        let b = (((r & 0xffff_ffff) * n as u64) >> 32) as usize;
        a.min(b)
    }
    #[inline]
    fn pct(&mut self, p: u32) -> bool {
        self.below(100) < p as usize
    }
    #[inline]
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    #[inline]
    fn pick_skew<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.skew(xs.len())]
    }
    /// `lo + (hi-lo) * u^k` for uniform `u`: heavy towards `lo`, mean `lo + (hi-lo)/(k+1)`.
    fn sized(&mut self, lo: u64, hi: u64, k: u32) -> u64 {
        if hi <= lo {
            return lo;
        }
        let u = self.next() as u128;
        let mut f = u;
        for _ in 1..k {
            f = (f * u) >> 64;
        }
        lo + (((hi - lo) as u128 * f) >> 64) as u64
    }
    /// [`Rng::sized`] with `hi` lowered towards what is left of a budget.
    fn capped(&mut self, lo: u64, hi: u64, remaining: u64, k: u32) -> u64 {
        self.sized(lo, hi.min(remaining.max(2 * lo)), k)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Time.

const DAY: u64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
const fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// 2026-01-01T12:00:00Z: release 1's build (mtime) and declaration time; release N is N-1 days later. Kept
/// well in the past so that stat caches do not take the files for freshly modified ones.
const EPOCH_SECS: u64 = days_from_civil(2026, 1, 1) as u64 * DAY + 12 * 3600;

/// Unix seconds at which release `rev` was built.
pub fn release_time(rev: u32) -> u64 {
    EPOCH_SECS + (rev.max(1) as u64 - 1) * DAY
}

fn declared_stamp(rev: u32) -> String {
    let secs = release_time(rev);
    let (y, m, d) = civil_from_days((secs / DAY) as i64);
    let s = secs % DAY;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000", s / 3600, s / 60 % 60, s % 60)
}

// ---------------------------------------------------------------------------------------------------------
// Vocabularies.

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "data", "table", "chunk", "query", "result", "worker", "czar", "index", "node", "file", "path", "name",
    "config", "value", "count", "size", "buffer", "stream", "request", "response", "handler", "service", "session",
    "message", "status", "error", "state", "job", "task", "thread", "pool", "queue", "lock", "mutex", "time",
    "timeout", "host", "port", "socket", "connection", "server", "client", "database", "schema", "column", "row",
    "field", "key", "map", "list", "vector", "array", "item", "entry", "record", "block", "page", "cache", "memory",
    "resource", "manager", "factory", "builder", "parser", "reader", "writer", "loader", "info", "spec", "param",
    "option", "flag", "mode", "type", "kind", "format", "level", "limit", "range", "offset", "length", "position",
    "partition", "region", "sphere", "box", "circle", "polygon", "point", "angle", "vertex", "edge", "tree",
    "graph", "transaction", "replica", "controller", "registry", "catalog", "director", "secondary", "primary",
    "overlap", "stripe", "substripe", "shard", "merge", "aggregate", "filter", "predicate", "expression",
    "statement", "clause", "select", "where", "order", "group", "join", "alias", "context", "plugin", "iterator",
    "visitor", "policy", "logger", "event", "signal", "callback", "future", "promise", "channel", "protocol",
    "header", "payload", "frame", "packet", "digest", "checksum", "version", "release", "build", "target",
    "source", "dest", "input", "output", "temp", "scratch", "base", "impl", "util", "helper", "common", "core",
    "global", "local", "remote", "async", "sync", "default", "current", "next", "prev", "first", "last", "begin",
    "end", "start", "stop", "init", "reset", "clear", "close", "open", "read", "write", "load", "save", "send",
    "recv", "get", "set", "add", "remove", "insert", "erase", "find", "lookup", "update", "create", "delete",
    "check", "verify", "validate", "parse", "encode", "decode", "compress", "expand", "apply", "run", "execute",
    "dispatch", "submit", "cancel", "wait", "notify", "process", "handle", "make", "copy", "move", "swap",
    "compare", "hash", "sort", "split", "to", "from", "is", "has", "num", "max", "min", "total", "id", "ptr",
    "ref", "obj", "str", "msg", "buf", "len", "idx", "pos", "cfg", "ctx", "mgr", "db", "sql", "http", "json",
    "proto", "meta", "exec", "sched", "dir", "url", "user", "auth", "token", "cert", "key", "pair", "slot",
];

#[rustfmt::skip]
const PROSE: &[&str] = &[
    "the", "the", "the", "of", "of", "and", "to", "to", "a", "a", "in", "is", "is", "that", "for", "it", "as",
    "with", "be", "on", "not", "this", "are", "by", "or", "from", "an", "which", "if", "all", "will", "can",
    "may", "must", "should", "when", "each", "used", "returns", "value", "object", "function", "method", "class",
    "instance", "parameter", "argument", "default", "otherwise", "only", "also", "any", "number", "list",
    "string", "given", "specified", "new", "current", "following", "note", "see", "data", "query", "table",
    "chunk", "worker", "result", "file", "name", "error", "exception", "raised", "none", "true", "false", "set",
    "read", "written", "configuration", "service", "request", "database", "there", "these", "those", "into",
    "than", "then", "such", "other", "more", "most", "some", "one", "two", "first", "second", "time", "before",
    "after", "while", "because", "however", "therefore", "example", "case", "where", "has", "have", "been",
    "was", "were", "does", "do", "used", "using", "use", "support", "supported", "provides", "provided", "option",
    "options", "path", "directory", "output", "input", "format", "version", "release", "library", "module",
    "package", "install", "installed", "build", "system", "user", "users", "thread", "threads", "memory",
    "size", "type", "types", "field", "fields", "record", "records", "index", "indexes", "partition", "column",
    "columns", "row", "rows", "server", "client", "connection", "message", "messages", "state", "status",
    "return", "returned", "call", "called", "calls", "pointer", "reference", "const", "empty", "valid",
    "invalid", "license", "software", "copyright", "without", "warranty", "distributed", "under", "terms",
    "see", "http", "www", "lsst", "org", "project", "information", "details", "implementation", "interface",
];

#[rustfmt::skip]
const PY_TYPES: &[&str] = &[
    "str", "int", "float", "bool", "list", "dict", "`str`", "`int`", "`list` [`str`]", "`dict` [`str`, `int`]",
    "`bool`", "`float`", "`None`", "`object`", "`Path`", "`sqlalchemy.engine.Engine`",
];

#[rustfmt::skip]
const CPP_TYPES: &[&str] = &[
    "int", "bool", "double", "std::string", "std::string const&", "std::size_t", "std::uint64_t", "int64_t",
    "std::vector<int>", "std::shared_ptr<void>", "unsigned int", "char const*", "void", "float", "std::uint32_t",
];

#[rustfmt::skip]
const C_TYPES: &[&str] = &[
    "int", "unsigned int", "char *", "const char *", "size_t", "void *", "long", "unsigned long", "my_bool",
    "uint32_t", "int64_t", "double", "struct st_list *", "void",
];

const LICENSES: &[&str] =
    &["lsst-gpl3", "boost-1.0", "bsd-3", "apache-2.0", "gpl-2.0", "lgpl-3.0", "psf-2.0", "mit", "gpl-3.0"];
const LIC_LSST: u8 = 0;
const LIC_BSL: u8 = 1;
const LIC_BSD: u8 = 2;
const LIC_APACHE: u8 = 3;
const LIC_GPL2: u8 = 4;
const LIC_LGPL: u8 = 5;
const LIC_PSF: u8 = 6;
const LIC_MIT: u8 = 7;
const LIC_GPL3: u8 = 8;

// ---------------------------------------------------------------------------------------------------------
// Products.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `2026.11.<release>`.
    Qserv,
    /// `<base>.lsst<k>` (third-party packages).
    Lsst,
    /// `<base>+<k>` (LSST science-pipelines packages).
    Plus,
}

const F_RO_HDR: u16 = 1; // headers installed read-only (0444)
const F_PC: u16 = 2; // lib/pkgconfig/<name>.pc
const F_CMAKE: u16 = 4; // lib/cmake/<name>/*.cmake
const F_C: u16 = 8; // C headers (.h, C dialect)
const F_NOBUMP: u16 = 16; // never bumped (others' shebangs point at it)
const F_EXT: u16 = 32; // compiled Python extension modules
const F_HPP: u16 = 64; // C++ headers named .hpp

struct ProdDef {
    name: &'static str,
    base: &'static str,
    style: Style,
    /// Share of the total bytes (relative).
    weight: u32,
    /// Percent of the product's bytes in bin, lib, include, python, share.
    mix: [u8; 5],
    deps: &'static [&'static str],
    /// Real executable names: `@` marks a Python script, `%` a shell script; the first two are always made.
    bins: &'static [&'static str],
    /// Real library stems (`libX.so`).
    libs: &'static [&'static str],
    /// Include subdirectory.
    inc: &'static str,
    /// Top Python package path under `lib/python` (for `python`: the stdlib under `lib/python3.11`).
    py: &'static str,
    lic: u8,
    flags: u16,
}

#[allow(clippy::too_many_arguments)]
const fn pd(
    name: &'static str,
    base: &'static str,
    style: Style,
    weight: u32,
    mix: [u8; 5],
    deps: &'static [&'static str],
    bins: &'static [&'static str],
    libs: &'static [&'static str],
    inc: &'static str,
    py: &'static str,
    lic: u8,
    flags: u16,
) -> ProdDef {
    ProdDef { name, base, style, weight, mix, deps, bins, libs, inc, py, lic, flags }
}

use Style::{Lsst, Plus};

// name, base version, style, weight, mix [bin, lib, include, python, share], deps, bins, libs, include dir,
// python package, license, flags.
#[rustfmt::skip]
const PRODUCTS: &[ProdDef] = &[
    pd("qserv", "2026.11", Style::Qserv, 120, [22, 38, 8, 18, 14],
        &["python", "boost", "xrootd", "mariadbclient", "protobuf", "log", "sphgeom", "partition", "antlr4",
          "nlohmann_json", "mysqlconnector", "sqlalchemy", "pyyaml", "requests", "jemalloc", "curl", "lz4"],
        &["qserv-czar", "qserv-worker", "qserv-replica-controller", "qserv-replica-worker",
          "qserv-replica-master-http", "qserv-replica-registry", "qserv-replica-job-verify",
          "qserv-replica-file-server", "@qserv-admin.py", "@qserv-configure.py", "@qserv-smig.py",
          "%qserv-start.sh", "%qserv-stop.sh", "qserv-ingest-http", "qserv-replica-file", "qserv-query-http"],
        &["qserv_czar", "qserv_common", "qserv_replica", "qserv_wbase", "qserv_xrdsvc", "qserv_css", "qserv_qproc",
          "qserv_parser", "qserv_ccontrol", "qserv_http", "qserv_rproc", "qserv_qdisp", "qserv_wdb", "qserv_mysql"],
        "lsst/qserv", "lsst/qserv", LIC_LSST, F_RO_HDR | F_PC | F_EXT),
    pd("xrootd", "5.6.3", Lsst, 60, [30, 52, 14, 0, 4], &["python", "libuuid", "curl", "openssl", "zlib"],
        &["xrdcp", "xrootd", "cmsd", "xrdfs", "frm_xfrd", "frm_purged", "xrdpwdadmin", "xrdsssadmin", "xrdmapc",
          "xrdadler32", "xrdgsiproxy", "xrdcrc32c", "%xrootd-config"],
        &["XrdCl", "XrdUtils", "XrdServer", "XrdXrootd-5", "XrdSsiLib", "XrdSsiShMap", "XrdPosix", "XrdCrypto",
          "XrdSecgsi-5", "XrdHttpUtils", "XrdAppUtils", "XrdFfs"],
        "xrootd", "", LIC_LGPL, F_PC | F_CMAKE),
    pd("mariadb", "10.6.16", Lsst, 70, [52, 20, 6, 0, 22], &["zlib", "openssl"],
        &["mariadb-admin", "mariadb", "mariadbd", "mariadb-dump", "mariadb-check", "mariadb-import",
          "mariadb-show", "mariadb-binlog", "mariadb-upgrade", "aria_chk", "myisamchk", "innochecksum",
          "%mysqld_safe", "%mariadb-install-db", "resolveip", "perror", "my_print_defaults", "mariadb-slap"],
        &["mariadbd", "mysqlservices"], "mysql", "", LIC_GPL2, F_C | F_PC),
    pd("mariadbclient", "3.3.8", Lsst, 18, [10, 62, 28, 0, 0], &["zlib", "openssl"], &["mariadb_config"],
        &["mariadb"], "mariadb", "", LIC_LGPL, F_C | F_PC),
    pd("boost", "1.83.0", Lsst, 100, [0, 42, 58, 0, 0], &["python"], &[],
        &["boost_system", "boost_filesystem", "boost_thread", "boost_program_options", "boost_regex",
          "boost_date_time", "boost_chrono", "boost_atomic", "boost_iostreams", "boost_serialization",
          "boost_unit_test_framework", "boost_log", "boost_json", "boost_python311", "boost_random", "boost_timer"],
        "boost", "", LIC_BSL, F_RO_HDR | F_CMAKE | F_HPP),
    pd("python", "3.11.7", Lsst, 100, [8, 22, 4, 58, 8], &["openssl", "zlib"],
        &["python3.11", "@pip3", "@pydoc3", "@2to3-3.11", "@idle3", "%python3.11-config"], &["python3.11"],
        "python3.11", "python3.11", LIC_PSF, F_C | F_PC | F_NOBUMP | F_EXT),
    pd("numpy", "1.26.4", Lsst, 45, [2, 4, 6, 84, 4], &["python"], &["@f2py"], &[], "numpy", "numpy", LIC_BSD, F_EXT),
    pd("protobuf", "3.21.12", Lsst, 30, [12, 58, 25, 5, 0], &["python", "zlib"], &["protoc"],
        &["protobuf", "protobuf-lite", "protoc"], "google/protobuf", "google/protobuf", LIC_BSD,
        F_RO_HDR | F_PC | F_CMAKE),
    pd("log4cxx", "0.13.0", Lsst, 15, [0, 68, 32, 0, 0], &["apr", "apr_util"], &[], &["log4cxx"], "log4cxx", "",
        LIC_APACHE, F_PC | F_CMAKE | F_HPP),
    pd("log", "26.0.0", Plus, 8, [0, 50, 15, 30, 5], &["log4cxx", "base", "utils", "sconsUtils"], &[], &["log"],
        "lsst/log", "lsst/log", LIC_LSST, F_EXT),
    pd("sconsUtils", "26.0.0", Plus, 4, [5, 0, 0, 85, 10], &["scons", "python"],
        &["@sconsUtils-check", "%sconsUtils-setup.sh"], &[], "", "lsst/sconsUtils", LIC_LSST, 0),
    pd("lsst", "26.0.0", Plus, 2, [40, 0, 0, 0, 60], &["python"],
        &["%lsst-setup.sh", "@lsst-git-check", "%lsst-deploy.sh"], &[], "", "", LIC_LSST, 0),
    pd("scons", "4.5.2", Lsst, 8, [5, 0, 0, 90, 5], &["python"], &["@scons", "@sconsign"], &[], "", "SCons", LIC_MIT,
        0),
    pd("swig", "4.1.1", Lsst, 12, [35, 0, 0, 0, 65], &[], &["swig", "ccache-swig"], &[], "", "", LIC_GPL3, 0),
    pd("pybind11", "2.11.1", Lsst, 10, [0, 0, 75, 20, 5], &["python"], &[], &[], "pybind11", "pybind11", LIC_BSD,
        F_CMAKE),
    pd("antlr4", "4.13.1", Lsst, 14, [0, 70, 30, 0, 0], &[], &[], &["antlr4-runtime"], "antlr4-runtime", "", LIC_BSD,
        F_CMAKE),
    pd("apr", "1.7.4", Lsst, 8, [8, 62, 30, 0, 0], &[], &["%apr-1-config"], &["apr-1"], "apr-1", "", LIC_APACHE,
        F_C | F_PC),
    pd("apr_util", "1.6.3", Lsst, 7, [5, 65, 30, 0, 0], &["apr"], &["%apu-1-config"], &["aprutil-1"], "apr-1", "",
        LIC_APACHE, F_C | F_PC),
    pd("sphgeom", "26.0.0", Plus, 12, [0, 55, 15, 25, 5], &["python", "pybind11", "sconsUtils"], &[], &["sphgeom"],
        "lsst/sphgeom", "lsst/sphgeom", LIC_LSST, F_EXT),
    pd("partition", "26.0.0", Plus, 10, [70, 25, 5, 0, 0], &["boost", "sphgeom", "sconsUtils"],
        &["sph-partition", "sph-duplicate", "sph-estimate-stats", "sph-htm-index", "sph-partition-matches",
          "sph-layout"],
        &["partition"], "lsst/partition", "", LIC_LSST, 0),
    pd("utils", "26.0.0", Plus, 8, [0, 10, 5, 80, 5], &["python", "base", "sconsUtils"], &[], &["utils"],
        "lsst/utils", "lsst/utils", LIC_LSST, 0),
    pd("pex_exceptions", "26.0.0", Plus, 6, [0, 55, 25, 15, 5], &["base", "pybind11", "sconsUtils"], &[],
        &["pex_exceptions"], "lsst/pex/exceptions", "lsst/pex/exceptions", LIC_LSST, F_EXT),
    pd("base", "26.0.0", Plus, 5, [0, 40, 15, 40, 5], &["python", "pybind11", "sconsUtils"], &[], &["base"],
        "lsst/base", "lsst/base", LIC_LSST, F_EXT),
    pd("nlohmann_json", "3.11.2", Lsst, 6, [0, 0, 95, 0, 5], &[], &[], &[], "nlohmann", "", LIC_MIT,
        F_CMAKE | F_HPP | F_PC),
    pd("yaml_cpp", "0.7.0", Lsst, 8, [0, 70, 30, 0, 0], &[], &[], &["yaml-cpp"], "yaml-cpp", "", LIC_MIT,
        F_PC | F_CMAKE),
    pd("pyyaml", "6.0.1", Lsst, 6, [0, 0, 0, 95, 5], &["python"], &[], &[], "", "yaml", LIC_MIT, F_EXT),
    pd("sqlalchemy", "2.0.23", Lsst, 16, [0, 0, 0, 95, 5], &["python"], &[], &[], "", "sqlalchemy", LIC_MIT, F_EXT),
    pd("mysqlconnector", "8.2.0", Lsst, 10, [0, 10, 0, 85, 5], &["python", "openssl"], &[], &["mysqlclient"], "",
        "mysql/connector", LIC_GPL2, 0),
    pd("requests", "2.31.0", Lsst, 5, [0, 0, 0, 95, 5], &["python"], &[], &[], "", "requests", LIC_APACHE, 0),
    pd("lz4", "1.9.4", Lsst, 6, [25, 55, 20, 0, 0], &[], &["lz4", "lz4cat"], &["lz4"], "", "", LIC_BSD, F_C | F_PC),
    pd("libuuid", "2.39.2", Lsst, 3, [0, 75, 25, 0, 0], &[], &[], &["uuid"], "uuid", "", LIC_BSD, F_C | F_PC),
    pd("gtest", "1.14.0", Lsst, 8, [0, 60, 40, 0, 0], &[], &[], &["gtest", "gtest_main", "gmock", "gmock_main"],
        "gtest", "", LIC_BSD, F_PC | F_CMAKE),
    pd("jemalloc", "5.3.0", Lsst, 8, [12, 75, 8, 0, 5], &[], &["%jemalloc.sh", "%jeprof", "%jemalloc-config"],
        &["jemalloc"], "jemalloc", "", LIC_BSD, F_C | F_PC),
    pd("curl", "8.4.0", Lsst, 10, [15, 60, 20, 0, 5], &["openssl", "zlib"], &["curl", "%curl-config"], &["curl"],
        "curl", "", LIC_MIT, F_C | F_PC | F_CMAKE),
    pd("openssl", "3.0.12", Lsst, 14, [20, 65, 15, 0, 0], &["zlib"], &["openssl", "%c_rehash"], &["ssl", "crypto"],
        "openssl", "", LIC_APACHE, F_C | F_PC),
    pd("zlib", "1.3", Lsst, 3, [0, 75, 25, 0, 0], &[], &[], &["z"], "", "", LIC_BSD, F_C | F_PC),
    pd("doxygen", "1.9.8", Lsst, 14, [90, 0, 0, 0, 10], &[], &["doxygen"], &[], "", "", LIC_GPL2, 0),
];

/// The top-level `eups/<version>` installation (not declared in `ups_db`).
#[rustfmt::skip]
const EUPS_DEF: ProdDef = pd("eups", EUPS_VERSION, Lsst, 4, [10, 0, 0, 80, 10], &["python"],
    &["@eups", "%setups.sh", "%setups.csh", "%setups.zsh", "@eups_setup", "@eups_impl.py"], &[], "", "eups",
    LIC_LSST, 0);

/// Hard and symbolic links inside product trees: (product, path, target, hard). For a hard link the target is
/// the product-relative path of the primary file; for a symlink it is the link text.
const LINKS: &[(&str, &str, &str, bool)] = &[
    ("python", "bin/python3", "bin/python3.11", true),
    ("python", "bin/python", "python3", false),
    ("python", "bin/pip", "pip3", false),
    ("xrootd", "bin/xrdcopy", "bin/xrdcp", true),
    ("mariadb", "bin/mysqladmin", "bin/mariadb-admin", true),
    ("mariadb", "bin/mysql", "mariadb", false),
];

/// State of one product in one release.
struct ProdState {
    def: &'static ProdDef,
    version: String,
    /// Release at which the current version directory appeared.
    dir_rev: u32,
    /// Releases (newest first, all >= 2) at which the product was rebuilt.
    builds: Arc<[u32]>,
}

/// Products that get bumped, in bump order.
fn bump_order() -> Vec<usize> {
    let mut v: Vec<usize> = (0..PRODUCTS.len())
        .filter(|&i| PRODUCTS[i].style != Style::Qserv && PRODUCTS[i].flags & F_NOBUMP == 0)
        .collect();
    v.sort_by_key(|&i| h2(0xb0b, hstr(PRODUCTS[i].name)));
    v
}

/// Index into [`PRODUCTS`] of the dependency bumped going to `release` (even releases only).
fn bumped_at(order: &[usize], release: u32) -> Option<usize> {
    if release < 2 || release % 2 != 0 {
        return None;
    }
    let k = (release / 2 - 1) as usize;
    Some(order[k % order.len()])
}

fn product_states(release: u32) -> Vec<ProdState> {
    let order = bump_order();
    let mut bumps: Vec<Vec<u32>> = vec![Vec::new(); PRODUCTS.len()];
    for r in (2..=release).rev() {
        if let Some(i) = bumped_at(&order, r) {
            bumps[i].push(r);
        }
    }
    PRODUCTS
        .iter()
        .enumerate()
        .map(|(i, def)| match def.style {
            Style::Qserv => ProdState {
                def,
                version: qserv_version(release),
                dir_rev: release,
                builds: (2..=release).rev().collect::<Vec<_>>().into(),
            },
            style => {
                let k = bumps[i].len() + 1;
                let version = match style {
                    Style::Plus => format!("{}+{k}", def.base),
                    _ => format!("{}.lsst{k}", def.base),
                };
                ProdState {
                    def,
                    version,
                    dir_rev: bumps[i].first().copied().unwrap_or(1),
                    builds: bumps[i].clone().into(),
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The plan: what the tree must hold.

/// How a file's content changes over releases.
#[derive(Clone)]
struct Hist {
    /// Releases at which the product was rebuilt (newest first).
    builds: Arc<[u32]>,
    /// Percent chance a file changes in a rebuild.
    pct_file: u32,
    /// Percent chance each block of a changed file changes (at least one does).
    pct_block: u32,
}

impl Hist {
    fn changed(&self, id: u64, r: u32) -> bool {
        h2(id, r as u64) % 100 < self.pct_file as u64
    }
    /// Release of the file's current content (1 = never changed).
    fn file_rev(&self, id: u64) -> u32 {
        self.builds.iter().copied().find(|&r| self.changed(id, r)).unwrap_or(1)
    }
    /// Release of block `blk`'s current content.
    fn block_rev(&self, id: u64, blk: usize, nblocks: usize) -> u32 {
        for &r in self.builds.iter() {
            if !self.changed(id, r) {
                continue;
            }
            let h = h2(h2(id, r as u64), blk as u64 + 1);
            let forced = h2(id ^ 0xf0cc, r as u64) % nblocks.max(1) as u64 == blk as u64;
            if forced || h % 100 < self.pct_block as u64 {
                return r;
            }
        }
        1
    }
}

/// Per-product context for content generators.
struct Ctx {
    /// Product name.
    name: String,
    /// Domain words (identifier parts) of this product.
    words: Vec<&'static str>,
    /// C++ namespace components.
    ns: Vec<String>,
    lic: u8,
    /// RPATH embedded in some binaries (contains the build prefix).
    rpath: String,
    /// DT_NEEDED library names.
    needed: Vec<String>,
    /// Python shebang line (contains the build prefix).
    shebang: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dialect {
    Py,
    PyScript,
    Cpp,
    C,
    Md,
    Html,
    Man,
    Txt,
    Sql,
    Sh,
    Json,
    Csv,
    Xml,
    Swig,
}

#[derive(Clone, Copy)]
enum Kind {
    /// ELF executable or shared object; `rpath` embeds [`Ctx::rpath`].
    Elf { rpath: bool },
    /// `ar` archive of ELF objects.
    Archive,
    /// Text in a dialect.
    Text(Dialect),
    /// Compiled Python for the `.py` with the same id and history; `stamp` = source mtime release.
    Pyc { stamp: u32, src_len: u32 },
    /// Binary data table.
    Data,
}

/// A generated file's recipe.
#[derive(Clone)]
struct Gen {
    kind: Kind,
    size: usize,
    id: u64,
    hist: Hist,
    ctx: Arc<Ctx>,
}

enum Content {
    Bytes(Vec<u8>),
    Gen(Gen),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Gen(g) => g.size as u64,
        }
    }
}

struct FileNode {
    mode: u32,
    mtime: u64,
    content: Content,
    /// Number of names (1 + hard links).
    nlink: u32,
}

enum Node {
    Dir {
        mode: u32,
        rev: u32,
    },
    File(FileNode),
    Symlink(String),
    /// Extra name of the file at the given tree path.
    Hardlink(String),
}

struct Planner {
    nodes: BTreeMap<String, Node>,
}

impl Planner {
    fn ensure_dirs(&mut self, path: &str, rev: u32) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let dir = &path[..end + i];
            match self.nodes.get_mut(dir) {
                Some(Node::Dir { rev: r, .. }) => *r = (*r).max(rev),
                Some(_) => panic!("treegen: {dir} is both a directory and a file"),
                None => {
                    self.nodes.insert(dir.to_string(), Node::Dir { mode: 0o755, rev });
                }
            }
            end += i + 1;
        }
    }
    fn dir(&mut self, path: &str, mode: u32, rev: u32) {
        self.ensure_dirs(&format!("{path}/"), rev);
        if let Some(Node::Dir { mode: m, .. }) = self.nodes.get_mut(path) {
            *m = mode;
        }
    }
    fn file(&mut self, path: &str, mode: u32, rev: u32, content: Content) {
        self.ensure_dirs(path, rev);
        let mtime = release_time(rev) + h2(hstr(path), 7) % 3600;
        let old = self.nodes.insert(path.to_string(), Node::File(FileNode { mode, mtime, content, nlink: 1 }));
        debug_assert!(old.is_none(), "treegen: duplicate path {path}");
    }
    fn bytes(&mut self, path: &str, mode: u32, rev: u32, content: impl Into<Vec<u8>>) {
        self.file(path, mode, rev, Content::Bytes(content.into()));
    }
    fn symlink(&mut self, path: &str, target: &str, rev: u32) {
        self.ensure_dirs(path, rev);
        self.nodes.insert(path.to_string(), Node::Symlink(target.to_string()));
    }
    fn hardlink(&mut self, path: &str, primary: &str, rev: u32) {
        match self.nodes.get_mut(primary) {
            Some(Node::File(f)) => f.nlink += 1,
            _ => return,
        }
        self.ensure_dirs(path, rev);
        self.nodes.insert(path.to_string(), Node::Hardlink(primary.to_string()));
    }
    fn has(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }
}

fn build_plan(opts: &GenOptions) -> BTreeMap<String, Node> {
    let mut pl = Planner { nodes: BTreeMap::new() };
    let states = product_states(opts.release);
    let total_w: u64 = PRODUCTS.iter().map(|p| p.weight as u64).sum::<u64>() + EUPS_DEF.weight as u64;
    let py_version = states.iter().find(|s| s.def.name == "python").map(|s| s.version.clone()).unwrap_or_default();
    let shebang = format!("#!{}/{}/python/{}/bin/python3", opts.prefix, opts.flavor, py_version);
    let ver_of: HashMap<&str, &str> = states.iter().map(|s| (s.def.name, s.version.as_str())).collect();

    for st in &states {
        let root = format!("{}/{}/{}", opts.flavor, st.def.name, st.version);
        let budget = opts.size * st.def.weight as u64 / total_w;
        plan_product(&mut pl, opts, st, &root, budget, &shebang, &ver_of);
    }
    let eups_state = ProdState { def: &EUPS_DEF, version: EUPS_VERSION.to_string(), dir_rev: 1, builds: Arc::from([]) };
    let eups_root = format!("eups/{EUPS_VERSION}");
    plan_product(
        &mut pl,
        opts,
        &eups_state,
        &eups_root,
        opts.size * EUPS_DEF.weight as u64 / total_w,
        &shebang,
        &ver_of,
    );
    pl.symlink("eups/current", EUPS_VERSION, 1);

    plan_ups_db(&mut pl, opts, &states);
    plan_top(&mut pl, opts);
    pl.nodes
}

fn plan_top(pl: &mut Planner, opts: &GenOptions) {
    let p = &opts.prefix;
    let bash = format!(
        "# This script is intended to be used with bash to load the minimal LSST environment\n\
         # Usage: source loadLSST.bash\n\n\
         LSST_HOME=\"{p}\"\n\n\
         # Bootstrap EUPS\n\
         EUPS_DIR=\"${{LSST_HOME}}/eups/{EUPS_VERSION}\"\n\
         source \"${{EUPS_DIR}}/bin/setups.sh\"\n\
         export EUPS_PKGROOT=${{EUPS_PKGROOT:-https://eups.lsst.codes/stack/src}}\n\
         export EUPS_PATH=\"${{LSST_HOME}}\"\n\
         export LSST_CONDA_ENV_NAME=${{LSST_CONDA_ENV_NAME:-}}\n\n\
         setup -j lsst\n\
         setup -j python\n"
    );
    pl.bytes("loadLSST.bash", 0o644, 1, bash.clone());
    pl.bytes("loadLSST.zsh", 0o644, 1, bash.replace("bash", "zsh").replace("setups.sh", "setups.zsh"));
    let startup = format!(
        "# -*- python -*-\n\
         # EUPS startup file for the stack at {p}\n\
         import eups\n\
         import eups.hooks\n\n\
         hooks.config.Eups.userTags += [\"qserv\", \"qserv_dev\"]\n\
         hooks.config.Eups.VRO[\"default\"] = [\"type:exact\", \"current\", \"newest\"]\n\
         hooks.config.distrib[\"builder\"][\"variables\"][\"LSST_BUILD_PREFIX\"] = \"{p}\"\n\
         hooks.config.Eups.setupCmdName = \"setup\"\n"
    );
    pl.bytes("site/startup.py", 0o644, 1, startup);
    pl.bytes("site/manifest.remap", 0o644, 1, "# product-name remapping for eups distrib\n");
}

fn version_file(opts: &GenOptions, name: &str, version: &str, rev: u32) -> String {
    format!(
        "FILE = version\nPRODUCT = {name}\nVERSION = {version}\n#***************************************\n\n\
         Group:\n   FLAVOR = {flavor}\n   QUALIFIERS = \"\"\n   DECLARER = qserv\n   DECLARED = {declared}\n   \
         PROD_DIR = {flavor}/{name}/{version}\n   UPS_DIR = ups\n   TABLE_FILE = {name}.table\nEnd:\n",
        flavor = opts.flavor,
        declared = declared_stamp(rev),
    )
}

fn chain_file(opts: &GenOptions, name: &str, version: &str, rev: u32) -> String {
    format!(
        "FILE = version\nPRODUCT = {name}\nCHAIN = current\n#***************************************\n\n\
         #Group:\n   FLAVOR = {flavor}\n   VERSION = {version}\n   QUALIFIERS = \"\"\n   DECLARER = qserv\n   \
         DECLARED = {declared}\n#End:\n",
        flavor = opts.flavor,
        declared = declared_stamp(rev),
    )
}

fn plan_ups_db(pl: &mut Planner, opts: &GenOptions, states: &[ProdState]) {
    for st in states {
        let n = st.def.name;
        pl.bytes(
            &format!("ups_db/{n}/{}.version", st.version),
            0o644,
            st.dir_rev,
            version_file(opts, n, &st.version, st.dir_rev),
        );
        pl.bytes(&format!("ups_db/{n}/current.chain"), 0o644, st.dir_rev, chain_file(opts, n, &st.version, st.dir_rev));
    }
    pl.bytes("ups_db/global.tags", 0o644, 1, "current\nlatest\nqserv\nqserv_dev\n");
    // A pickle-ish cache of the database.
    let mut body = Vec::new();
    body.extend_from_slice(b"}\x94(");
    for st in states {
        for s in [st.def.name, st.version.as_str(), "current"] {
            body.push(0x8c);
            body.push(s.len() as u8);
            body.extend_from_slice(s.as_bytes());
            body.push(0x94);
        }
        let pd = format!("{}/{}/{}", opts.flavor, st.def.name, st.version);
        body.extend_from_slice(b"\x8c\x08eups.Product\x94)\x81\x94}\x94(\x8c\x08prod_dir\x94X");
        body.extend_from_slice(&(pd.len() as u32).to_le_bytes());
        body.extend_from_slice(pd.as_bytes());
        body.extend_from_slice(b"\x94\x8c\x07declared\x94J");
        body.extend_from_slice(&(release_time(st.dir_rev) as u32).to_le_bytes());
        body.extend_from_slice(b"ub");
    }
    body.extend_from_slice(b"u.");
    let mut pickle = b"\x80\x04\x95".to_vec();
    pickle.extend_from_slice(&(body.len() as u64).to_le_bytes());
    pickle.extend_from_slice(&body);
    pl.bytes(&format!("ups_db/{}.pickleDB1_3_0", opts.flavor), 0o644, opts.release, pickle);
}

/// Splits a version like "1.83.0" into up to three numbers.
fn so_version(base: &str) -> (u32, u32, u32) {
    let mut it = base.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(1), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn camel(s: &str) -> String {
    s.split(['_', '-', '/'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Names unique within a scope (a directory).
struct Namer {
    used: HashSet<(String, String)>,
    next: HashMap<(String, String), u32>,
}

impl Namer {
    fn new() -> Namer {
        Namer { used: HashSet::new(), next: HashMap::new() }
    }
    fn try_take(&mut self, scope: &str, name: &str) -> bool {
        self.used.insert((scope.to_string(), name.to_string()))
    }
    fn take(&mut self, scope: &str, name: String) -> String {
        if self.try_take(scope, &name) {
            return name;
        }
        let key = (scope.to_string(), name.clone());
        let mut k = self.next.get(&key).copied().unwrap_or(1);
        loop {
            k += 1;
            let n = format!("{name}{k}");
            if self.try_take(scope, &n) {
                self.next.insert(key, k);
                return n;
            }
        }
    }
    /// A name of `min + skew(extra)` words, unique in `scope`.
    fn word_name(&mut self, rng: &mut Rng, ctx: &Ctx, scope: &str, sep: &str, min: usize, extra: usize) -> String {
        let parts = min + rng.skew(extra);
        let mut first = String::new();
        for attempt in 0..4 {
            let mut s = String::new();
            for i in 0..parts + attempt / 2 {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push_str(if rng.pct(70) { rng.pick_skew(&ctx.words) } else { rng.pick(WORDS) });
            }
            if self.try_take(scope, &s) {
                return s;
            }
            if attempt == 0 {
                first = s;
            }
        }
        self.take(scope, first)
    }
}

fn plan_product(
    pl: &mut Planner,
    opts: &GenOptions,
    st: &ProdState,
    root: &str,
    budget: u64,
    shebang: &str,
    ver_of: &HashMap<&str, &str>,
) {
    let def = st.def;
    let name = def.name;
    let rev = st.dir_rev;
    let pseed = hstr(name) ^ opts.size.rotate_left(13);
    let mut rng = Rng::new(pseed);
    let abs_root = format!("{}/{}", opts.prefix, root);

    // Context.
    let mut words: Vec<&'static str> = Vec::with_capacity(48);
    let mut wr = Rng::new(hstr(name) ^ 0x3030);
    for part in name.split('_') {
        if let Some(w) = WORDS.iter().find(|w| **w == part) {
            words.push(w);
        }
    }
    while words.len() < 48 {
        words.push(WORDS[wr.below(WORDS.len())]);
    }
    let ns: Vec<String> = if def.style == Style::Lsst {
        let top = name.split('_').next().unwrap_or(name).to_string();
        vec![top]
    } else {
        vec!["lsst".to_string(), name.to_string()]
    };
    let mut rpath = format!("{abs_root}/lib");
    let mut needed = vec!["libstdc++.so.6".to_string(), "libm.so.6".to_string(), "libgcc_s.so.1".to_string()];
    if def.style == Style::Qserv {
        for d in def.deps {
            if let Some(v) = ver_of.get(d) {
                rpath.push_str(&format!(":{}/{}/{}/{}/lib", opts.prefix, opts.flavor, d, v));
            }
            if let Some(p) = PRODUCTS.iter().find(|p| p.name == *d) {
                for l in p.libs.iter().take(2) {
                    needed.push(format!("lib{l}.so"));
                }
            }
        }
    }
    needed.push("libc.so.6".to_string());
    let ctx =
        Arc::new(Ctx { name: name.to_string(), words, ns, lic: def.lic, rpath, needed, shebang: shebang.to_string() });

    let qserv = def.style == Style::Qserv;
    let bin_hist = Hist { builds: st.builds.clone(), pct_file: if qserv { 95 } else { 15 }, pct_block: 55 };
    let txt_hist = Hist { builds: st.builds.clone(), pct_file: if qserv { 3 } else { 2 }, pct_block: 35 };
    let path_of = |rel: &str| format!("{root}/{rel}");
    let id_of = |rel: &str| h2(hstr(name), hstr(rel));
    let gen = |kind: Kind, size: u64, rel: &str, hist: &Hist| {
        Content::Gen(Gen { kind, size: size as usize, id: id_of(rel), hist: hist.clone(), ctx: ctx.clone() })
    };
    let elf_cap = (opts.size * 6 / 100).max(16 << 10);
    let budgets: Vec<u64> = def.mix.iter().map(|&m| budget * m as u64 / 100).collect();
    let so = so_version(def.base);
    let versioned_libs = def.style == Style::Lsst;

    // ups/
    let mut table = String::new();
    for d in def.deps {
        table.push_str(&format!("setupRequired({d})\n"));
    }
    if def.mix[1] > 0 || !def.libs.is_empty() {
        table.push_str("envPrepend(LD_LIBRARY_PATH, ${PRODUCT_DIR}/lib)\n");
        if def.style != Style::Lsst {
            table.push_str("envPrepend(DYLD_LIBRARY_PATH, ${PRODUCT_DIR}/lib)\n");
        }
    }
    if def.mix[0] > 0 {
        table.push_str("envPrepend(PATH, ${PRODUCT_DIR}/bin)\n");
    }
    if !def.py.is_empty() && name != "python" {
        table.push_str(if name == "eups" {
            "envPrepend(PYTHONPATH, ${PRODUCT_DIR}/python)\n"
        } else {
            "envPrepend(PYTHONPATH, ${PRODUCT_DIR}/lib/python)\n"
        });
    }
    if def.flags & F_PC != 0 {
        table.push_str("envPrepend(PKG_CONFIG_PATH, ${PRODUCT_DIR}/lib/pkgconfig)\n");
    }
    if def.flags & F_CMAKE != 0 || def.mix[2] > 0 {
        table.push_str("envPrepend(CMAKE_PREFIX_PATH, ${PRODUCT_DIR})\n");
    }
    if def.style == Style::Plus {
        table.push_str(&format!("envSet({}_DIR, ${{PRODUCT_DIR}})\n", name.to_uppercase()));
    }
    pl.bytes(&path_of(&format!("ups/{name}.table")), 0o644, rev, table);
    match def.style {
        Style::Plus | Style::Qserv => {
            let cfg = format!(
                "# -*- python -*-\n\nimport lsst.sconsUtils\n\ndependencies = {{\n    \"required\": [{}],\n    \
                 \"buildRequired\": [\"pybind11\"],\n}}\n\nconfig = lsst.sconsUtils.Configuration(\n    __file__,\n    \
                 headers=[\"{}/{}.h\"],\n    libs=[{}],\n    hasDoxygenInclude=False,\n    hasSwigFiles=False,\n)\n",
                def.deps.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", "),
                def.inc,
                camel(name),
                def.libs.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", "),
            );
            pl.bytes(&path_of(&format!("ups/{name}.cfg")), 0o644, rev, cfg);
        }
        Style::Lsst => {
            let cfg = format!(
                "# EupsPkg config file. Sourced by 'eupspkg'\n\n\
                 CONFIGURE_OPTIONS=\"--prefix=$PREFIX --disable-static\"\n\
                 PKGDIR_NAME={name}-{}\nTAP_PACKAGE=1\n\nprep()\n{{\n\tdefault_prep\n}}\n",
                def.base
            );
            pl.bytes(&path_of("ups/eupspkg.cfg.sh"), 0o644, rev, cfg);
        }
    }

    // bin/
    let mut names = Namer::new();
    let required_bins: Vec<&str> = LINKS.iter().filter(|l| l.0 == name && l.3).map(|l| l.2).collect();
    let mut remaining = budgets[0];
    let mut i = 0usize;
    let script_only = def.mix[1] == 0 && def.mix[2] == 0 && name != "swig" && name != "doxygen";
    loop {
        if def.mix[0] == 0 {
            break;
        }
        let forced = i < def.bins.len().min(2);
        if !forced && (remaining < 2048 || i > 5000) {
            break;
        }
        let raw = if i < def.bins.len() {
            def.bins[i].to_string()
        } else if rng.pct(30) {
            format!("%{}", names.word_name(&mut rng, &ctx, "bin", "-", 2, 0))
        } else if script_only || rng.pct(25) {
            format!("@{}-{}", name, names.word_name(&mut rng, &ctx, "bin", "_", 1, 0))
        } else {
            format!("{}-{}", name.replace('_', "-"), names.word_name(&mut rng, &ctx, "bin", "-", 1, 0))
        };
        i += 1;
        let (kind, bn) = if let Some(n) = raw.strip_prefix('@') {
            (Kind::Text(Dialect::PyScript), n)
        } else if let Some(n) = raw.strip_prefix('%') {
            (Kind::Text(Dialect::Sh), n)
        } else {
            (Kind::Elf { rpath: qserv || rng.pct(25) }, raw.as_str())
        };
        let rel = format!("bin/{bn}");
        if pl.has(&path_of(&rel)) {
            continue;
        }
        let size = match kind {
            Kind::Elf { .. } => rng.sized(12 << 10, elf_cap.min(remaining.max(24 << 10)), 7),
            _ => rng.capped(300, 12 << 10, remaining, 3),
        };
        remaining = remaining.saturating_sub(size);
        let hist = if matches!(kind, Kind::Elf { .. }) { &bin_hist } else { &txt_hist };
        pl.file(&path_of(&rel), 0o755, rev, gen(kind, size, &rel, hist));
    }
    for rb in required_bins {
        if !pl.has(&path_of(rb)) {
            let size = rng.sized(64 << 10, elf_cap, 4);
            pl.file(&path_of(rb), 0o755, rev, gen(Kind::Elf { rpath: true }, size, rb, &bin_hist));
        }
    }
    for &(p, link, target, hard) in LINKS {
        if p != name {
            continue;
        }
        if hard {
            pl.hardlink(&path_of(link), &path_of(target), rev);
        } else {
            pl.symlink(&path_of(link), target, rev);
        }
    }

    // lib/
    let mut remaining = budgets[1];
    let mut i = 0usize;
    let mut lib_stems = Vec::new();
    loop {
        if def.mix[1] == 0 {
            break;
        }
        let forced = i < def.libs.len().min(1);
        if !forced && (remaining < 4096 || i > 5000) {
            break;
        }
        let stem = if i < def.libs.len() {
            names.take("lib", def.libs[i].to_string())
        } else {
            let base = def.libs.first().copied().unwrap_or(name).replace('-', "_");
            format!("{}_{}", base, names.word_name(&mut rng, &ctx, "lib", "_", 1, 0))
        };
        i += 1;
        let size = rng.sized(16 << 10, elf_cap.min(remaining.max(32 << 10)), 7);
        remaining = remaining.saturating_sub(size);
        let rpath = qserv || rng.pct(25);
        if versioned_libs {
            let full = format!("lib{stem}.so.{}.{}.{}", so.0, so.1, so.2);
            let rel = format!("lib/{full}");
            pl.file(&path_of(&rel), 0o755, rev, gen(Kind::Elf { rpath }, size, &rel, &bin_hist));
            pl.symlink(&path_of(&format!("lib/lib{stem}.so.{}", so.0)), &full, rev);
            pl.symlink(&path_of(&format!("lib/lib{stem}.so")), &format!("lib{stem}.so.{}", so.0), rev);
            if rng.pct(15) {
                let rel = format!("lib/lib{stem}.a");
                let asize = size * 3 / 2;
                remaining = remaining.saturating_sub(asize);
                pl.file(&path_of(&rel), 0o644, rev, gen(Kind::Archive, asize, &rel, &bin_hist));
            }
        } else {
            let rel = format!("lib/lib{stem}.so");
            pl.file(&path_of(&rel), 0o755, rev, gen(Kind::Elf { rpath }, size, &rel, &bin_hist));
        }
        lib_stems.push(stem);
    }
    if def.flags & F_PC != 0 && !lib_stems.is_empty() {
        let pc = format!(
            "prefix={abs_root}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\n\
             includedir=${{prefix}}/include\n\n\
             Name: {name}\nDescription: {} library\nVersion: {}\nLibs: -L${{libdir}} {}\nCflags: -I${{includedir}}\n",
            camel(name),
            def.base,
            lib_stems.iter().take(4).map(|s| format!("-l{s}")).collect::<Vec<_>>().join(" ")
        );
        pl.bytes(&path_of(&format!("lib/pkgconfig/{name}.pc")), 0o644, rev, pc);
    }
    if def.flags & F_CMAKE != 0 {
        let cname = camel(name);
        let mut t = format!(
            "# Generated by CMake\n\nif(\"${{CMAKE_MAJOR_VERSION}}.${{CMAKE_MINOR_VERSION}}\" LESS 2.8)\n   \
             message(FATAL_ERROR \"CMake >= 2.8.0 required\")\nendif()\n\
             cmake_policy(PUSH)\ncmake_policy(VERSION 2.8.3...3.25)\n\n\
             set(_IMPORT_PREFIX \"{abs_root}\")\n\n"
        );
        for s in lib_stems.iter().take(12) {
            t.push_str(&format!(
                "add_library({cname}::{s} SHARED IMPORTED)\nset_target_properties({cname}::{s} PROPERTIES\n  \
                 INTERFACE_INCLUDE_DIRECTORIES \"${{_IMPORT_PREFIX}}/include\"\n  IMPORTED_LOCATION_RELEASE \
                 \"{abs_root}/lib/lib{s}.so\"\n)\n\n"
            ));
        }
        t.push_str("set(_IMPORT_PREFIX)\ncmake_policy(POP)\n");
        pl.bytes(&path_of(&format!("lib/cmake/{cname}/{cname}Targets.cmake")), 0o644, rev, t);
        let c = format!(
            "# {cname}Config.cmake\n\n@PACKAGE_INIT@\nset({up}_VERSION {v})\n\
             set({up}_INCLUDE_DIRS \"{abs_root}/include\")\n\
             set({up}_LIBRARY_DIRS \"{abs_root}/lib\")\n\
             include(\"${{CMAKE_CURRENT_LIST_DIR}}/{cname}Targets.cmake\")\n",
            up = name.to_uppercase(),
            v = def.base
        );
        pl.bytes(&path_of(&format!("lib/cmake/{cname}/{cname}Config.cmake")), 0o644, rev, c);
        let v = format!(
            "set(PACKAGE_VERSION \"{}\")\n\nif(PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION)\n  \
             set(PACKAGE_VERSION_COMPATIBLE FALSE)\nelse()\n  set(PACKAGE_VERSION_COMPATIBLE TRUE)\n  \
             if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)\n    set(PACKAGE_VERSION_EXACT TRUE)\n  \
             endif()\nendif()\n",
            def.base
        );
        pl.bytes(&path_of(&format!("lib/cmake/{cname}/{cname}ConfigVersion.cmake")), 0o644, rev, v);
    }

    // include/
    let hdr_mode = if def.flags & F_RO_HDR != 0 { 0o444 } else { 0o644 };
    let ext = if def.flags & F_HPP != 0 { "hpp" } else { "h" };
    let dialect = if def.flags & F_C != 0 { Dialect::C } else { Dialect::Cpp };
    let inc_root = if def.inc.is_empty() { "include".to_string() } else { format!("include/{}", def.inc) };
    let mut subdirs = vec![inc_root.clone()];
    let mut remaining = budgets[2];
    let mut i = 0usize;
    loop {
        if def.mix[2] == 0 {
            break;
        }
        if i > 0 && (remaining < 256 || i > 100_000) {
            break;
        }
        i += 1;
        if rng.below(30) == 0 || (subdirs.len() == 1 && i > 3) {
            let parent = subdirs[rng.skew(subdirs.len())].clone();
            if parent.matches('/').count() < 4 {
                let d = format!("{parent}/{}", names.word_name(&mut rng, &ctx, &parent, "_", 1, 0));
                subdirs.push(d);
            }
        }
        let dir = subdirs[rng.below(subdirs.len())].clone();
        let stem = if dialect == Dialect::C {
            names.word_name(&mut rng, &ctx, &dir, "_", 1, 2)
        } else {
            camel(&names.word_name(&mut rng, &ctx, &dir, "_", 1, 2))
        };
        let rel = format!("{dir}/{stem}.{ext}");
        let size = rng.capped(300, 24 << 10, remaining, 3);
        remaining = remaining.saturating_sub(size);
        pl.file(&path_of(&rel), hdr_mode, rev, gen(Kind::Text(dialect), size, &rel, &txt_hist));
    }

    // Python.
    if def.mix[3] > 0 && !def.py.is_empty() {
        let lsst_ns = def.py.starts_with("lsst/");
        let py_root = match name {
            "python" => format!("lib/{}", def.py),
            "eups" => format!("python/{}", def.py),
            _ => format!("lib/python/{}", def.py),
        };
        let pyc_for = |pl: &mut Planner, dir: &str, stem: &str, py_rel: &str, size: u64| {
            let id = id_of(py_rel);
            let stamp = if qserv { rev } else { txt_hist.file_rev(id) };
            let pyc_len = pyc_len(size as usize);
            let rel = format!("{dir}/__pycache__/{stem}.cpython-311.pyc");
            let content = Content::Gen(Gen {
                kind: Kind::Pyc { stamp, src_len: size as u32 },
                size: pyc_len,
                id,
                hist: txt_hist.clone(),
                ctx: ctx.clone(),
            });
            pl.file(&path_of(&rel), 0o644, rev, content);
            pyc_len as u64
        };
        // Namespace package files shared by every LSST product.
        if lsst_ns {
            let parts: Vec<&str> = def.py.split('/').collect();
            for depth in 1..parts.len() {
                let dir = format!("lib/python/{}", parts[..depth].join("/"));
                let rel = format!("{dir}/__init__.py");
                let src = "import pkgutil\n\n__path__ = pkgutil.extend_path(__path__, __name__)\n";
                pl.bytes(&path_of(&rel), 0o644, rev, src);
                let pyc = ns_pyc(parts[..depth].join(".").as_str());
                pl.bytes(&path_of(&format!("{dir}/__pycache__/__init__.cpython-311.pyc")), 0o644, rev, pyc);
            }
        }
        let mut pkgs: Vec<String> = vec![py_root.clone()];
        let mut remaining = budgets[3];
        let mut made_init: HashSet<String> = HashSet::new();
        let mut i = 0usize;
        let mut typed = false;
        loop {
            if i > 0 && (remaining < 256 || i > 100_000) {
                break;
            }
            i += 1;
            if rng.below(14) == 0 || (pkgs.len() == 1 && i > 4) {
                let parent = pkgs[rng.skew(pkgs.len())].clone();
                if parent.matches('/').count() < 6 {
                    pkgs.push(format!("{parent}/{}", names.word_name(&mut rng, &ctx, &parent, "_", 1, 0)));
                }
            }
            let dir = pkgs[rng.below(pkgs.len())].clone();
            let needs_init = !(name == "python" && dir == py_root);
            if needs_init && made_init.insert(dir.clone()) {
                let rel = format!("{dir}/__init__.py");
                if !pl.has(&path_of(&rel)) {
                    let size = if rng.pct(55) { 0 } else { rng.sized(100, 6000, 3) };
                    let c = if size == 0 {
                        Content::Bytes(Vec::new())
                    } else {
                        gen(Kind::Text(Dialect::Py), size, &rel, &txt_hist)
                    };
                    pl.file(&path_of(&rel), 0o644, rev, c);
                    remaining = remaining.saturating_sub(size + pyc_for(pl, &dir, "__init__", &rel, size));
                }
                if !typed && lsst_ns {
                    typed = true;
                    pl.bytes(&path_of(&format!("{dir}/py.typed")), 0o644, rev, Vec::new());
                }
            }
            if def.flags & F_EXT != 0 && rng.pct(6) {
                let stem = format!("_{}", names.word_name(&mut rng, &ctx, &dir, "_", 1, 0));
                let rel = format!("{dir}/{stem}.cpython-311-x86_64-linux-gnu.so");
                let size = rng.sized(16 << 10, (elf_cap / 4).min(remaining.max(32 << 10)), 7);
                remaining = remaining.saturating_sub(size);
                pl.file(&path_of(&rel), 0o755, rev, gen(Kind::Elf { rpath: qserv }, size, &rel, &bin_hist));
                continue;
            }
            let stem = names.word_name(&mut rng, &ctx, &dir, "_", 1, 3);
            let rel = format!("{dir}/{stem}.py");
            let size = rng.capped(200, 40 << 10, remaining, 3);
            pl.file(&path_of(&rel), 0o644, rev, gen(Kind::Text(Dialect::Py), size, &rel, &txt_hist));
            remaining = remaining.saturating_sub(size + pyc_for(pl, &dir, &stem, &rel, size));
        }
        if lsst_ns {
            let rel = format!("{py_root}/version.py");
            if !pl.has(&path_of(&rel)) {
                let v = format!(
                    "__all__ = [\"__version__\", \"__repo_version__\", \
                     \"__fingerprint__\", \"__dependency_versions__\"]\n\
                     __version__ = \"{}\"\n__repo_version__ = \"{}\"\n\
                     __fingerprint__ = \"{:016x}\"\n__dependency_versions__ = {{}}\n",
                    st.version,
                    st.version,
                    h2(hstr(name), hstr(&st.version))
                );
                pl.bytes(&path_of(&rel), 0o644, rev, v);
            }
        }
    }

    // share/
    if def.mix[4] > 0 || name == "qserv" {
        let doc = format!("share/doc/{name}");
        let lic = LICENSES[def.lic as usize];
        let lic_len = 4000 + (hstr(lic) % 20_000) as usize;
        // Identical across products with the same license (a shared id).
        pl.file(
            &path_of(&format!("{doc}/LICENSE")),
            0o644,
            rev,
            Content::Gen(Gen {
                kind: Kind::Text(Dialect::Txt),
                size: lic_len,
                id: hstr(lic),
                hist: Hist { builds: Arc::from([]), pct_file: 0, pct_block: 0 },
                ctx: ctx.clone(),
            }),
        );
        let mut remaining = budgets[4].saturating_sub(lic_len as u64);
        let rel = format!("{doc}/README.md");
        let size = rng.sized(500, 12 << 10, 2);
        pl.file(&path_of(&rel), 0o644, rev, gen(Kind::Text(Dialect::Md), size, &rel, &txt_hist));
        remaining = remaining.saturating_sub(size);
        // Special directories.
        let mut data_dirs: Vec<(String, u32, Dialect, &str)> = Vec::new();
        match name {
            "qserv" => {
                pl.dir(&path_of("share/qserv/schema"), 0o555, rev);
                data_dirs.push(("share/qserv/schema".into(), 0o444, Dialect::Sql, "sql"));
                data_dirs.push(("share/qserv/templates".into(), 0o644, Dialect::Txt, "tpl"));
                data_dirs.push(("share/qserv/www".into(), 0o644, Dialect::Html, "html"));
                data_dirs.push(("share/qserv/data".into(), 0o644, Dialect::Csv, "csv"));
            }
            "mariadb" => {
                pl.dir(&path_of("share/mariadb/charsets"), 0o555, rev);
                data_dirs.push(("share/mariadb/charsets".into(), 0o444, Dialect::Xml, "xml"));
                data_dirs.push(("share/mariadb".into(), 0o644, Dialect::Sql, "sql"));
                pl.dir(&path_of("var/lib/mysql"), 0o755, rev);
            }
            "swig" => {
                data_dirs.push((format!("share/swig/{}", def.base), 0o644, Dialect::Swig, "swg"));
                data_dirs.push((format!("share/swig/{}/python", def.base), 0o644, Dialect::Swig, "i"));
            }
            "xrootd" => {
                pl.dir(&path_of("etc/xrootd/config.d"), 0o755, rev);
                data_dirs.push(("etc/xrootd".into(), 0o644, Dialect::Sh, "cfg"));
            }
            _ => {}
        }
        data_dirs.push((format!("share/{name}"), 0o644, Dialect::Json, "json"));
        data_dirs.push((doc.clone(), 0o644, Dialect::Html, "html"));
        data_dirs.push((format!("share/{name}/data"), 0o644, Dialect::Txt, "dat"));
        let nbins: Vec<String> =
            def.bins.iter().take(3).map(|b| b.trim_start_matches(['@', '%']).to_string()).collect();
        for b in &nbins {
            let rel = format!("share/man/man1/{b}.1");
            let size = rng.sized(800, 16 << 10, 2);
            pl.file(&path_of(&rel), 0o644, rev, gen(Kind::Text(Dialect::Man), size, &rel, &txt_hist));
            remaining = remaining.saturating_sub(size);
        }
        let mut i = 0usize;
        let mut seen_dirs: HashSet<usize> = HashSet::new();
        loop {
            let k = if seen_dirs.len() < data_dirs.len() { seen_dirs.len() } else { rng.skew(data_dirs.len()) };
            if seen_dirs.len() >= data_dirs.len() && (remaining < 256 || i > 50_000) {
                break;
            }
            seen_dirs.insert(k);
            i += 1;
            let (dir, mode, dialect, ext) = &data_dirs[k];
            let stem = names.word_name(&mut rng, &ctx, dir, "_", 1, 2);
            let rel = format!("{dir}/{stem}.{ext}");
            let (kind, size) = if *ext == "dat" {
                if rng.pct(50) {
                    (Kind::Data, rng.capped(2 << 10, (400 << 10).min(elf_cap), remaining, 3))
                } else {
                    (Kind::Text(Dialect::Csv), rng.capped(1 << 10, 200 << 10, remaining, 3))
                }
            } else {
                (Kind::Text(*dialect), rng.capped(300, 48 << 10, remaining, 3))
            };
            remaining = remaining.saturating_sub(size);
            pl.file(&path_of(&rel), *mode, rev, gen(kind, size, &rel, &txt_hist));
        }
    }
}

fn junk_ctx() -> Ctx {
    Ctx {
        name: "junk".into(),
        words: WORDS[..48].to_vec(),
        ns: vec!["junk".into()],
        lic: 0,
        rpath: String::new(),
        needed: Vec::new(),
        shebang: "#!/usr/bin/env python".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Content generators.

const TEXT_BLOCK: usize = 4096;
const PYC_HEADER: usize = 16;

fn text_blocks(size: usize) -> usize {
    size.div_ceil(TEXT_BLOCK).max(1)
}

fn pyc_block_len(py_block: usize) -> usize {
    py_block * 3 / 4 + 24
}

fn pyc_len(py_len: usize) -> usize {
    let n = text_blocks(py_len);
    let last = py_len - (n - 1) * TEXT_BLOCK;
    PYC_HEADER + (n - 1) * pyc_block_len(TEXT_BLOCK) + pyc_block_len(last) + 64
}

/// A namespace package's `__init__.pyc` (same bytes in every LSST product).
fn ns_pyc(pkg: &str) -> Vec<u8> {
    let mut v = vec![0xa7, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0];
    v.extend_from_slice(&(release_time(1) as u32).to_le_bytes());
    v.extend_from_slice(&66u32.to_le_bytes());
    v.extend_from_slice(
        b"\xe3\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\xf3\x2c\x00\x00\x00\
      \x97\x00\x64\x00\x64\x01\x6c\x00\x5a\x00\x02\x00\x65\x00\x6a\x02",
    );
    v.extend_from_slice(
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x65\
      \x03\x65\x04\xa6\x02\x00\x00\xab\x02\x00\x00\x00\x00\x00\x00\x00\x00\
      \x5a\x03\x64\x01\x53\x00\x29\x02\xe9\x00\x00\x00\x00\x4e\x29\x05",
    );
    for s in ["pkgutil", "extend_path", "__path__", "__name__"] {
        v.push(0xda);
        v.push(s.len() as u8);
        v.extend_from_slice(s.as_bytes());
    }
    v.push(0xda);
    v.push(pkg.len().min(255) as u8);
    v.extend_from_slice(&pkg.as_bytes()[..pkg.len().min(255)]);
    v.extend_from_slice(
        b"\xa9\x00\xf3\x00\x00\x00\x00\xfa\x08<module>r\x08\x00\x00\x00\x01\x00\x00\x00\
      s\x12\x00\x00\x00\xf0\x03\x01\x01\x01\xd8\x00\x0e\x80\x0e\x80\x0e\x80\x0e\xe0\
      \x0b\x1c\x88\x37\x90\x38\xa0\x58\xd1\x0b\x2e\xd4\x0b\x2e\x80\x48\x80\x48\x80\x48r\x07\x00\x00\x00",
    );
    v
}

fn render(g: &Gen, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(g.size);
    match g.kind {
        Kind::Elf { rpath } => elf(g, buf, rpath, false),
        Kind::Archive => elf(g, buf, false, true),
        Kind::Text(d) => {
            let n = text_blocks(g.size);
            for b in 0..n {
                let len = TEXT_BLOCK.min(g.size - b * TEXT_BLOCK);
                let rev = g.hist.block_rev(g.id, b, n);
                let mut rng = Rng::new(h2(h2(g.id, b as u64), rev as u64));
                text_block(d, &g.ctx, &mut rng, buf, len, b == 0, b + 1 == n);
            }
        }
        Kind::Pyc { stamp, src_len } => {
            buf.extend_from_slice(&[0xa7, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0]);
            buf.extend_from_slice(&(release_time(stamp) as u32).to_le_bytes());
            buf.extend_from_slice(&src_len.to_le_bytes());
            let py_len = src_len as usize;
            let n = text_blocks(py_len);
            for b in 0..n {
                let len = pyc_block_len(TEXT_BLOCK.min(py_len - b * TEXT_BLOCK));
                let rev = g.hist.block_rev(g.id, b, n);
                let mut rng = Rng::new(h2(h2(g.id ^ 0x9c, b as u64), rev as u64));
                pyc_block(&g.ctx, &mut rng, buf, len);
            }
            let mut rng = Rng::new(h2(g.id ^ 0x9d, g.hist.file_rev(g.id) as u64));
            pyc_block(&g.ctx, &mut rng, buf, 64);
        }
        Kind::Data => {
            let nb = g.size.div_ceil(64 << 10).max(1);
            for b in 0..nb {
                let len = (64 << 10).min(g.size - b * (64 << 10));
                let rev = g.hist.block_rev(g.id, b, nb);
                let mut rng = Rng::new(h2(h2(g.id ^ 0xda, b as u64), rev as u64));
                data_block(&mut rng, buf, len);
            }
        }
    }
    debug_assert_eq!(buf.len(), g.size, "treegen: generator size mismatch for {:?}", g.ctx.name);
    buf.resize(g.size, 0);
}

// --- Binaries.

#[derive(Clone, Copy, PartialEq)]
enum Sect {
    Str,
    Text,
    Ro,
    Eh,
    Data,
}

/// Section kind at relative position `pos` (per mille) of the file.
fn sect_at(pos: u64) -> Sect {
    match pos {
        0..=79 => Sect::Str,
        80..=619 => Sect::Text,
        620..=739 => Sect::Ro,
        740..=819 => Sect::Eh,
        820..=869 => Sect::Data,
        _ => Sect::Str,
    }
}

fn elf(g: &Gen, buf: &mut Vec<u8>, rpath: bool, archive: bool) {
    let size = g.size;
    let nsect = (size / (96 << 10)).clamp(1, 64);
    let sect_len = size / nsect;
    let build = h2(g.id ^ 0xb1d, g.hist.file_rev(g.id) as u64);
    // Header: rebuilt with every build (build-id).
    let mut hdr = Vec::with_capacity(4096);
    if archive {
        hdr.extend_from_slice(b"!<arch>\n");
        ar_member_header(&mut hdr, "/", 1200, 0);
        let mut r = Rng::new(g.id);
        let mut body = Vec::new();
        symtab(&g.ctx, &mut r, &mut body, 1200);
        hdr.extend_from_slice(&body);
        ar_member_header(&mut hdr, &format!("{}.o/", g.ctx.words[(g.id % 48) as usize]), size as u64, build);
    }
    elf_header(g, &mut hdr, build, rpath);
    let mut out_len = 0usize;
    for s in 0..nsect {
        let start = s * sect_len;
        let len = if s + 1 == nsect { size - start } else { sect_len };
        let rev = g.hist.block_rev(g.id, s, nsect);
        let mut rng = Rng::new(h2(h2(g.id, s as u64 + 1000), rev as u64));
        let begin = buf.len();
        if s == 0 {
            let h = hdr.len().min(len);
            buf.extend_from_slice(&hdr[..h]);
        }
        let body = len - (buf.len() - begin);
        let pos = (start as u64 + len as u64 / 2) * 1000 / size.max(1) as u64;
        let kind = if nsect == 1 { Sect::Text } else { sect_at(pos) };
        let pad = if body > 4096 { rng.below(body / 24 + 1) } else { 0 };
        let body = body - pad;
        match kind {
            Sect::Text => {
                // Small single-section files still get a string table.
                if nsect == 1 {
                    let st = body / 4;
                    symtab(&g.ctx, &mut rng, buf, st);
                    code_section(&mut rng, buf, body - st);
                } else {
                    code_section(&mut rng, buf, body);
                }
            }
            Sect::Str => symtab(&g.ctx, &mut rng, buf, body),
            Sect::Ro => rodata(&g.ctx, &mut rng, buf, body),
            Sect::Eh => eh_frame(&mut rng, buf, body),
            Sect::Data => data_section(&mut rng, buf, body),
        }
        buf.resize(begin + len, 0);
        out_len += len;
    }
    debug_assert_eq!(out_len, size);
}

fn ar_member_header(v: &mut Vec<u8>, name: &str, size: u64, stamp: u64) {
    let h = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, stamp % 1_000_000_000, 0, 0, 644, size);
    v.extend_from_slice(h.as_bytes());
}

fn elf_header(g: &Gen, v: &mut Vec<u8>, build: u64, rpath: bool) {
    let base = v.len();
    v.extend_from_slice(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    v.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
    v.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&(0x1000 + (build & 0xff0)).to_le_bytes()); // entry
    v.extend_from_slice(&64u64.to_le_bytes()); // phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // no section headers (stripped)
    v.extend_from_slice(&0u32.to_le_bytes());
    for x in [64u16, 56, 11, 64, 0, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    // Program headers.
    let phdrs: [(u32, u32, u64); 11] = [
        (6, 4, 0x40),
        (3, 4, 0x2a8),
        (1, 4, 0),
        (1, 5, 0x1000),
        (1, 4, 0x2000),
        (1, 6, 0x3000),
        (2, 6, 0x3e00),
        (4, 4, 0x2c4),
        (0x6474_e550, 4, 0x2100),
        (0x6474_e551, 6, 0),
        (0x6474_e552, 4, 0x3df0),
    ];
    let sz = g.size as u64;
    for (i, (t, f, off)) in phdrs.iter().enumerate() {
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&f.to_le_bytes());
        let o = ((off * (1 + (sz >> 16))) & !0xfff) | (off & 0xfff);
        let seg = (sz / 11 * i as u64) & !7;
        for x in [o, o, o, seg, seg, if i < 3 { 8 } else { 0x1000 }] {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v.extend_from_slice(b"/lib64/ld-linux-x86-64.so.2\0\0\0\0\0");
    // .note.gnu.property + .note.gnu.build-id + .note.ABI-tag
    v.extend_from_slice(
        b"\x04\x00\x00\x00\x20\x00\x00\x00\x05\x00\x00\x00GNU\0\
      \x02\x00\x00\xc0\x04\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\
      \x02\x80\x00\xc0\x04\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
    );
    v.extend_from_slice(b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\0");
    let mut r = Rng::new(build);
    for _ in 0..3 {
        v.extend_from_slice(&r.next().to_le_bytes()[..]);
    }
    v.truncate(v.len() - 4);
    v.extend_from_slice(
        b"\x04\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00\x00GNU\0\
      \x00\x00\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00",
    );
    // .dynstr: needed libraries, soname, rpath.
    v.push(0);
    for n in &g.ctx.needed {
        v.extend_from_slice(n.as_bytes());
        v.push(0);
    }
    if rpath {
        v.extend_from_slice(g.ctx.rpath.as_bytes());
        v.push(0);
    }
    v.extend_from_slice(b"GLIBC_2.2.5\0GLIBC_2.3.4\0GLIBC_2.14\0GLIBC_2.34\0GLIBCXX_3.4\0GLIBCXX_3.4.21\0CXXABI_1.3\0");
    v.extend_from_slice(b"GCC: (conda-forge gcc 12.3.0-3) 12.3.0\0");
    let pad = (v.len() - base).next_multiple_of(512) - (v.len() - base);
    v.resize(v.len() + pad, 0);
}

// Operand kinds.
const OP_NONE: u8 = 0;
const OP_IMM8: u8 = 1;
const OP_DISP8: u8 = 2;
const OP_REL8: u8 = 3;
const OP_REL32: u8 = 4;
const OP_DISP8_IMM32: u8 = 5;
const OP_IMM32: u8 = 6;
const OP_MODRM: u8 = 7;

/// (bytes, operand kind, weight of 256).
const INSNS: &[(&[u8], u8, u8)] = &[
    (&[0x48, 0x89], OP_MODRM, 22),
    (&[0x89], OP_MODRM, 12),
    (&[0x48, 0x8b, 0x45], OP_DISP8, 12),
    (&[0x48, 0x89, 0x45], OP_DISP8, 10),
    (&[0x8b, 0x45], OP_DISP8, 7),
    (&[0x48, 0x8b, 0x7b], OP_DISP8, 6),
    (&[0x48, 0x8b, 0x47], OP_DISP8, 7),
    (&[0x48, 0x8d, 0x3d], OP_REL32, 8),
    (&[0x48, 0x8d, 0x35], OP_REL32, 6),
    (&[0x48, 0x8b, 0x05], OP_REL32, 4),
    (&[0xe8], OP_REL32, 24),
    (&[0xe9], OP_REL32, 4),
    (&[0x74], OP_REL8, 10),
    (&[0x75], OP_REL8, 9),
    (&[0xeb], OP_REL8, 5),
    (&[0x0f, 0x84], OP_REL32, 4),
    (&[0x0f, 0x85], OP_REL32, 3),
    (&[0x48, 0x85, 0xc0], OP_NONE, 8),
    (&[0x85, 0xc0], OP_NONE, 6),
    (&[0x31, 0xc0], OP_NONE, 6),
    (&[0x48, 0x83, 0xf8], OP_IMM8, 5),
    (&[0x48, 0x83, 0xc4], OP_IMM8, 3),
    (&[0x48, 0x83, 0xc0], OP_IMM8, 4),
    (&[0xc7, 0x45], OP_DISP8_IMM32, 5),
    (&[0xbe], OP_IMM32, 5),
    (&[0xba], OP_IMM32, 4),
    (&[0xff, 0x50], OP_DISP8, 5),
    (&[0x48, 0x89, 0xdf], OP_NONE, 6),
    (&[0x48, 0x89, 0xee], OP_NONE, 4),
    (&[0x4c, 0x89, 0xe7], OP_NONE, 4),
    (&[0x53], OP_NONE, 3),
    (&[0x5b], OP_NONE, 3),
    (&[0x0f, 0x1f, 0x44, 0x00, 0x00], OP_NONE, 3),
    (&[0xf2, 0x0f, 0x10, 0x05], OP_REL32, 3),
    (&[0xf3, 0x0f, 0x10, 0x45], OP_DISP8, 2),
    (&[0x0f, 0xb6, 0x47], OP_DISP8, 3),
    (&[0x48, 0x0f, 0x45], OP_MODRM, 2),
    (&[0x0f, 0x95, 0xc0], OP_NONE, 2),
    (&[0x49, 0x8b, 0x44, 0x24], OP_DISP8, 3),
    (&[0x41, 0x89, 0xc4], OP_NONE, 2),
    (&[0x48, 0x8b, 0x03], OP_NONE, 3),
    (&[0x48, 0x39], OP_MODRM, 4),
];

const INSN_TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut pos = 0;
    let mut i = 0;
    while i < INSNS.len() {
        let mut w = 0;
        while w < INSNS[i].2 && pos < 256 {
            t[pos] = i as u8;
            pos += 1;
            w += 1;
        }
        i += 1;
    }
    t
};

const PROLOGUES: &[&[u8]] = &[
    &[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5],
    &[0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec],
    &[0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53, 0x48, 0x83, 0xec],
    &[0x53, 0x48, 0x89, 0xfb],
    &[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfd],
];
const EPILOGUES: &[&[u8]] = &[
    &[0xc9, 0xc3],
    &[0x48, 0x83, 0xc4, 0x18, 0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0x41, 0x5f, 0xc3],
    &[0x5b, 0xc3],
    &[0x5b, 0x5d, 0x41, 0x5c, 0xc3],
    &[0x5d, 0xc3],
];

#[inline]
fn insn(r: u64, v: &mut Vec<u8>) {
    let (bytes, op, _) = INSNS[INSN_TABLE[(r & 0xff) as usize] as usize];
    v.extend_from_slice(bytes);
    let x = r >> 8;
    match op {
        OP_IMM8 => v.push((((x & 15) + 1) * 8) as u8),
        OP_DISP8 => v.push(if x & 16 != 0 {
            0u8.wrapping_sub((((x >> 5) & 7) as u8 + 1) * 8)
        } else {
            ((x >> 5) & 7) as u8 * 8
        }),
        OP_REL8 => v.push((x & 0x3f) as u8 + 2),
        OP_REL32 => {
            let back = x & 1 != 0;
            let hi = if back { 0xff } else { 0x00 };
            v.extend_from_slice(&[(x >> 8) as u8, (x >> 16) as u8 & 0x3f | if back { 0xc0 } else { 0 }, hi, hi]);
        }
        OP_DISP8_IMM32 => {
            v.push(0u8.wrapping_sub((((x >> 5) & 7) as u8 + 1) * 4));
            v.extend_from_slice(&[(x >> 12) as u8 & 0x1f, 0, 0, 0]);
        }
        OP_IMM32 => v.extend_from_slice(&[(x >> 12) as u8 & 0x7f, if x & 3 == 0 { 1 } else { 0 }, 0, 0]),
        OP_MODRM => {
            const RM: [u8; 8] = [0xc7, 0xc6, 0xde, 0xe5, 0xd7, 0xc2, 0xef, 0xf8];
            v.push(RM[((x >> 4) & 7) as usize]);
        }
        _ => {}
    }
}

/// One function: prologue, body, epilogue, alignment.
fn function(rng: &mut Rng, v: &mut Vec<u8>) {
    let p = rng.skew(PROLOGUES.len());
    v.extend_from_slice(PROLOGUES[p]);
    if matches!(p, 1 | 2) {
        v.push(((rng.below(12) + 1) * 8) as u8);
    }
    let n = 3 + rng.skew(48);
    for _ in 0..n {
        insn(rng.next(), v);
    }
    v.extend_from_slice(EPILOGUES[rng.skew(EPILOGUES.len())]);
    while v.len() % 16 != 0 {
        let left = 16 - v.len() % 16;
        if left >= 10 {
            v.extend_from_slice(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00]);
        } else if left >= 4 {
            v.extend_from_slice(&[0x0f, 0x1f, 0x40, 0x00]);
        } else {
            v.push(0x90);
        }
    }
}

/// Machine-code-like bytes: fresh functions mixed with copies of a pool of "inlined/template" functions.
fn code_section(rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    let mut pool: Vec<u8> = Vec::with_capacity(8192);
    let mut bounds = vec![0usize];
    for _ in 0..32 {
        function(rng, &mut pool);
        bounds.push(pool.len());
    }
    while v.len() - start < len {
        if rng.pct(45) {
            let k = rng.skew(32);
            let f = &pool[bounds[k]..bounds[k + 1]];
            let at = v.len();
            v.extend_from_slice(f);
            // Relocated call/jump targets differ between copies.
            let r = rng.next();
            let n = f.len();
            v[at + (r as usize % n)] ^= (r >> 32) as u8;
            v[at + ((r >> 12) as usize % n)] = (r >> 40) as u8;
        } else {
            function(rng, v);
        }
    }
    v.truncate(start + len);
}

const MANGLED_PARAMS: &[&[u8]] = &[
    b"v",
    b"i",
    b"RKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE",
    b"m",
    b"PKc",
    b"b",
    b"d",
    b"RKSt6vectorIiSaIiEE",
    b"St10shared_ptrIvE",
    b"j",
    b"l",
    b"RKS0_",
    b"S1_",
    b"NS_5ChunkIdE",
];

/// Text pieces; methods so that counts can be drawn from the same generator in the call.
impl Rng {
    /// An identifier of `min + skew(extra)` words from the product's domain words and the common vocabulary.
    fn ident(&mut self, ctx: &Ctx, v: &mut Vec<u8>, camel: bool, min: usize, extra: usize) {
        let parts = min + self.skew(extra);
        for i in 0..parts {
            let w = if self.pct(70) { self.pick_skew(&ctx.words) } else { self.pick_skew(WORDS) };
            if camel {
                let b = w.as_bytes();
                v.push(b[0].to_ascii_uppercase());
                v.extend_from_slice(&b[1..]);
            } else {
                if i > 0 {
                    v.push(b'_');
                }
                v.extend_from_slice(w.as_bytes());
            }
        }
    }

    /// A length-prefixed identifier, as in Itanium C++ mangling.
    fn lp_ident(&mut self, ctx: &Ctx, v: &mut Vec<u8>) {
        let mut tmp = Vec::with_capacity(32);
        let camel = self.pct(50);
        self.ident(ctx, &mut tmp, camel, 1, 3);
        v.extend_from_slice(tmp.len().to_string().as_bytes());
        v.extend_from_slice(&tmp);
    }

    /// `min + below(extra)` words of English-like prose, capitalized, without final punctuation.
    fn prose(&mut self, v: &mut Vec<u8>, min: usize, extra: usize) {
        let words = min + self.below(extra);
        for i in 0..words {
            let w = self.pick_skew(PROSE).as_bytes();
            if i == 0 {
                v.push(w[0].to_ascii_uppercase());
                v.extend_from_slice(&w[1..]);
            } else {
                v.push(b' ');
                v.extend_from_slice(w);
            }
        }
    }
}

/// Symbol/string table: NUL-terminated mangled C++ names and C identifiers.
fn symtab(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    while v.len() - start < len {
        let k = rng.below(10);
        if k < 7 {
            v.extend_from_slice(match rng.below(8) {
                0 => b"_ZNK" as &[u8],
                1 => b"_ZTV",
                2 => b"_ZTI",
                _ => b"_ZN",
            });
            for n in &ctx.ns {
                v.extend_from_slice(n.len().to_string().as_bytes());
                v.extend_from_slice(n.as_bytes());
            }
            for _ in 0..1 + rng.skew(3) {
                rng.lp_ident(ctx, v);
            }
            match rng.below(6) {
                0 => v.extend_from_slice(b"C2E"),
                1 => v.extend_from_slice(b"D0Ev"),
                _ => {}
            }
            v.push(b'E');
            for _ in 0..1 + rng.skew(3) {
                v.extend_from_slice(MANGLED_PARAMS[rng.skew(MANGLED_PARAMS.len())]);
            }
        } else if k < 9 {
            rng.ident(ctx, v, false, 1, 3);
        } else {
            v.extend_from_slice(b"src/");
            rng.ident(ctx, v, false, 1, 0);
            v.push(b'/');
            rng.ident(ctx, v, true, 1, 2);
            v.extend_from_slice(b".cc");
        }
        v.push(0);
    }
    v.truncate(start + len);
}

/// Read-only data: format strings, numeric tables, jump tables.
fn rodata(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    while v.len() - start < len {
        match rng.below(5) {
            0 | 1 => {
                rng.prose(v, 3, 8);
                v.extend_from_slice(if rng.pct(50) { b": %s\0" as &[u8] } else { b" (%d)\n\0" });
            }
            2 => {
                rng.ident(ctx, v, false, 2, 0);
                v.push(0);
            }
            3 => {
                // Jump table: small negative offsets.
                let base = rng.below(4000) as i32;
                for _ in 0..4 + rng.below(16) {
                    v.extend_from_slice(&(-(base + rng.below(64) as i32 * 16)).to_le_bytes());
                }
            }
            _ => {
                const F: [f64; 8] = [0.0, 1.0, 0.5, 2.0, 1e-9, std::f64::consts::PI, 0.25, 1000.0];
                for _ in 0..2 + rng.below(8) {
                    v.extend_from_slice(&F[rng.skew(8)].to_le_bytes());
                }
            }
        }
    }
    v.truncate(start + len);
}

/// DWARF-like call frame records.
fn eh_frame(rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    let mut pc: u32 = rng.below(1 << 20) as u32;
    while v.len() - start < len {
        let n = 4 * (2 + rng.skew(8));
        v.extend_from_slice(&(n as u32 + 16).to_le_bytes());
        v.extend_from_slice(&((v.len() - start) as u32).to_le_bytes());
        v.extend_from_slice(&(0u32.wrapping_sub(pc)).to_le_bytes());
        let range = 16 + rng.skew(64) as u32 * 16;
        pc = pc.wrapping_add(range + 16);
        v.extend_from_slice(&range.to_le_bytes());
        const CFA: [u8; 12] = [0x41, 0x0e, 0x10, 0x86, 0x02, 0x43, 0x0d, 0x06, 0x42, 0x8c, 0x03, 0x0c];
        for i in 0..n {
            v.push(match CFA.get(i) {
                Some(&c) if rng.pct(80) => c,
                _ => (rng.skew(16) as u8) << 1,
            });
        }
    }
    v.truncate(start + len);
}

/// Initialized data: pointers, vtables, small ints, zeros.
fn data_section(rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    let mut p: u64 = 0x20_0000 + rng.below(1 << 16) as u64 * 8;
    while v.len() - start < len {
        match rng.below(4) {
            0 => v.resize(v.len() + 8 * (1 + rng.skew(16)), 0),
            1 | 2 => {
                for _ in 0..1 + rng.below(8) {
                    p += 8 * (1 + rng.skew(32) as u64);
                    v.extend_from_slice(&p.to_le_bytes());
                }
            }
            _ => {
                for _ in 0..2 + rng.below(6) {
                    v.extend_from_slice(&(rng.skew(300) as u32).to_le_bytes());
                }
            }
        }
    }
    v.truncate(start + len);
}

/// Binary table data: records of an id, a few quantized floats and flags.
fn data_block(rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    let start = v.len();
    let mut id = rng.below(1 << 24) as u32;
    let mut ra = rng.below(360) as f32;
    let mut dec = rng.below(180) as f32 - 90.0;
    while v.len() - start < len {
        id += 1 + rng.skew(4) as u32;
        ra += (rng.below(64) as f32) / 1024.0;
        dec += (rng.below(32) as f32 - 16.0) / 2048.0;
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&ra.to_le_bytes());
        v.extend_from_slice(&dec.to_le_bytes());
        v.extend_from_slice(&(((rng.skew(256) as f32) * 0.25) + 12.0).to_le_bytes());
        v.extend_from_slice(&(rng.skew(8) as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
    }
    v.truncate(start + len);
}

/// CPython 3.11 marshal-like bytes: code objects, bytecode with inline caches, interned names, docstrings.
fn pyc_block(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, len: usize) {
    const OPS: [u8; 16] =
        [0x64, 0x65, 0x74, 0x7c, 0x7d, 0x6a, 0xab, 0xa6, 0x01, 0x53, 0x5a, 0x72, 0x97, 0x84, 0x6b, 0x71];
    let start = v.len();
    while v.len() - start < len {
        match rng.below(4) {
            0 => {
                v.extend_from_slice(b"\xe3\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
                v.push(rng.skew(8) as u8);
                v.extend_from_slice(b"\x00\x00\x00\xf3");
                let n = 8 + rng.skew(80) * 2;
                v.extend_from_slice(&(n as u32).to_le_bytes());
                let mut i = 0;
                while i < n {
                    let op = OPS[rng.skew(16)];
                    v.push(op);
                    v.push(rng.skew(16) as u8);
                    i += 2;
                    if matches!(op, 0x6a | 0xab | 0x74) {
                        let c = 2 + 2 * rng.below(4);
                        v.resize(v.len() + c, 0);
                        i += c;
                    }
                }
            }
            1 => {
                v.push(0x29);
                v.push(1 + rng.skew(6) as u8);
                for _ in 0..1 + rng.skew(6) {
                    if rng.pct(40) {
                        v.push(b'r');
                        v.extend_from_slice(&(rng.skew(64) as u32).to_le_bytes());
                    } else {
                        let at = v.len();
                        v.extend_from_slice(&[0xda, 0]);
                        rng.ident(ctx, v, false, 1, 2);
                        v[at + 1] = (v.len() - at - 2) as u8;
                    }
                }
            }
            2 => {
                v.push(0xf5);
                let at = v.len();
                v.extend_from_slice(&[0, 0, 0, 0]);
                rng.prose(v, 4, 20);
                v.extend_from_slice(b".\n\n        ");
                let n = (v.len() - at - 4) as u32;
                v[at..at + 4].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                v.extend_from_slice(b"s");
                let n = 8 + rng.below(40);
                v.extend_from_slice(&(n as u32).to_le_bytes());
                for _ in 0..n {
                    v.push(if rng.pct(50) { 0x80 | rng.skew(16) as u8 } else { rng.skew(32) as u8 });
                }
            }
        }
    }
    v.truncate(start + len);
}

// --- Text.

fn license_comment(ctx: &Ctx, v: &mut Vec<u8>, lead: &[u8], open: &[u8], close: &[u8]) {
    let lic = LICENSES[ctx.lic as usize];
    let mut r = Rng::new(hstr(lic) ^ 0x11c);
    v.extend_from_slice(open);
    let lines = 6 + (hstr(lic) % 14) as usize;
    if ctx.lic == LIC_LSST {
        v.extend_from_slice(lead);
        v.extend_from_slice(b"This file is part of ");
        v.extend_from_slice(ctx.name.as_bytes());
        v.extend_from_slice(b".\n");
        v.extend_from_slice(lead);
        v.push(b'\n');
        v.extend_from_slice(lead);
        v.extend_from_slice(b"Developed for the LSST Data Management System.\n");
    } else {
        v.extend_from_slice(lead);
        v.extend_from_slice(b"Copyright (C) the ");
        v.extend_from_slice(lic.as_bytes());
        v.extend_from_slice(b" authors.\n");
    }
    for _ in 0..lines {
        v.extend_from_slice(lead);
        r.prose(v, 9, 5);
        v.extend_from_slice(b".\n");
    }
    v.extend_from_slice(close);
    v.push(b'\n');
}

fn indent(v: &mut Vec<u8>, n: usize) {
    v.resize(v.len() + n, b' ');
}

fn py_stmt(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, ind: usize) {
    indent(v, ind);
    match rng.skew(11) {
        0 => {
            rng.ident(ctx, v, false, 1, 2);
            v.extend_from_slice(b" = self._");
            rng.ident(ctx, v, false, 1, 0);
            v.push(b'.');
            rng.ident(ctx, v, false, 2, 0);
            v.push(b'(');
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b")\n");
        }
        1 => {
            v.extend_from_slice(b"if ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b" is None:\n");
            indent(v, ind + 4);
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b" = []\n");
        }
        2 => {
            v.extend_from_slice(b"for ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b" in self._");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"s:\n");
            indent(v, ind + 4);
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b".append(");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b")\n");
        }
        3 => {
            v.extend_from_slice(b"_LOG.debug(\"");
            rng.prose(v, 3, 6);
            v.extend_from_slice(b": %s\", ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b")\n");
        }
        4 => {
            v.extend_from_slice(b"return ");
            rng.ident(ctx, v, false, 1, 2);
            v.push(b'\n');
        }
        5 => {
            v.extend_from_slice(b"# ");
            rng.prose(v, 4, 10);
            v.push(b'\n');
        }
        6 => {
            v.extend_from_slice(b"raise ");
            rng.ident(ctx, v, true, 1, 0);
            v.extend_from_slice(b"Error(f\"");
            rng.prose(v, 3, 5);
            v.extend_from_slice(b" {");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"}\")\n");
        }
        7 => {
            v.extend_from_slice(b"self._");
            rng.ident(ctx, v, false, 1, 2);
            v.extend_from_slice(b" = ");
            rng.ident(ctx, v, false, 1, 0);
            v.push(b'\n');
        }
        8 => {
            v.extend_from_slice(b"try:\n");
            indent(v, ind + 4);
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b" = ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"[\"");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"\"]\n");
            indent(v, ind);
            v.extend_from_slice(b"except KeyError as exc:\n");
            indent(v, ind + 4);
            v.extend_from_slice(b"raise ValueError(\"");
            rng.prose(v, 4, 0);
            v.extend_from_slice(b"\") from exc\n");
        }
        _ => {
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b" = {\"");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"\": ");
            v.extend_from_slice(rng.skew(100).to_string().as_bytes());
            v.extend_from_slice(b", \"");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b"\": None}\n");
        }
    }
}

fn py_def(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, ind: usize, method: bool) {
    indent(v, ind);
    v.extend_from_slice(b"def ");
    if method && rng.pct(20) {
        v.push(b'_');
    }
    rng.ident(ctx, v, false, 1, 3);
    v.push(b'(');
    if method {
        v.extend_from_slice(b"self");
    }
    let nargs = rng.skew(4);
    let mut args: Vec<usize> = Vec::new();
    for i in 0..nargs {
        if i > 0 || method {
            v.extend_from_slice(b", ");
        }
        let at = v.len();
        rng.ident(ctx, v, false, 1, 0);
        args.push(at);
        args.push(v.len());
        v.extend_from_slice(b": ");
        v.extend_from_slice(rng.pick_skew(&["str", "int", "bool", "float", "list[str]", "Any"]).as_bytes());
    }
    v.extend_from_slice(b") -> ");
    v.extend_from_slice(rng.pick_skew(&["None", "str", "int", "bool", "list[str]", "dict[str, Any]"]).as_bytes());
    v.extend_from_slice(b":\n");
    indent(v, ind + 4);
    v.extend_from_slice(b"\"\"\"");
    rng.prose(v, 5, 9);
    v.extend_from_slice(b".\n");
    if nargs > 0 {
        v.push(b'\n');
        indent(v, ind + 4);
        v.extend_from_slice(b"Parameters\n");
        indent(v, ind + 4);
        v.extend_from_slice(b"----------\n");
        for a in args.chunks(2) {
            indent(v, ind + 4);
            let name = v[a[0]..a[1]].to_vec();
            v.extend_from_slice(&name);
            v.extend_from_slice(b" : ");
            v.extend_from_slice(rng.pick_skew(PY_TYPES).as_bytes());
            v.push(b'\n');
            indent(v, ind + 8);
            rng.prose(v, 4, 10);
            v.extend_from_slice(b".\n");
        }
    }
    indent(v, ind + 4);
    v.extend_from_slice(b"\"\"\"\n");
    for _ in 0..1 + rng.skew(10) {
        py_stmt(ctx, rng, v, ind + 4);
    }
    v.push(b'\n');
}

fn cpp_unit(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>) {
    match rng.below(4) {
        0 | 1 => {
            v.extend_from_slice(b"/**\n * ");
            rng.prose(v, 6, 12);
            v.extend_from_slice(b".\n */\nclass ");
            let at = v.len();
            rng.ident(ctx, v, true, 1, 2);
            let cls = v[at..].to_vec();
            if rng.pct(40) {
                v.extend_from_slice(b" : public ");
                rng.ident(ctx, v, true, 1, 0);
            }
            v.extend_from_slice(b" {\npublic:\n    using Ptr = std::shared_ptr<");
            v.extend_from_slice(&cls);
            v.extend_from_slice(b">;\n\n    ");
            v.extend_from_slice(&cls);
            v.extend_from_slice(b"(");
            v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
            v.extend_from_slice(b" ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b");\n    ");
            v.extend_from_slice(&cls);
            v.extend_from_slice(b"(");
            v.extend_from_slice(&cls);
            v.extend_from_slice(b" const&) = delete;\n    virtual ~");
            v.extend_from_slice(&cls);
            v.extend_from_slice(b"();\n\n");
            for _ in 0..1 + rng.skew(8) {
                v.extend_from_slice(b"    /// ");
                rng.prose(v, 4, 10);
                v.extend_from_slice(b".\n    ");
                v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
                v.push(b' ');
                let at = v.len();
                rng.ident(ctx, v, true, 1, 2);
                v[at] = v[at].to_ascii_lowercase();
                v.push(b'(');
                for i in 0..rng.skew(3) {
                    if i > 0 {
                        v.extend_from_slice(b", ");
                    }
                    v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
                    v.push(b' ');
                    rng.ident(ctx, v, false, 1, 0);
                }
                v.extend_from_slice(if rng.pct(40) { b") const;\n\n" as &[u8] } else { b");\n\n" });
            }
            v.extend_from_slice(b"private:\n");
            for _ in 0..1 + rng.skew(5) {
                v.extend_from_slice(b"    ");
                v.extend_from_slice(rng.pick_skew(CPP_TYPES).trim_end_matches(" const&").as_bytes());
                v.extend_from_slice(b" _");
                let at = v.len();
                rng.ident(ctx, v, true, 1, 2);
                v[at] = v[at].to_ascii_lowercase();
                v.extend_from_slice(b";\n");
            }
            v.extend_from_slice(b"};\n\n");
        }
        2 => {
            v.extend_from_slice(b"/// ");
            rng.prose(v, 5, 8);
            v.extend_from_slice(b".\n");
            v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
            v.push(b' ');
            rng.ident(ctx, v, false, 2, 0);
            v.extend_from_slice(b"(");
            v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
            v.extend_from_slice(b" ");
            rng.ident(ctx, v, false, 1, 0);
            v.extend_from_slice(b");\n\n");
        }
        _ => {
            v.extend_from_slice(b"enum class ");
            rng.ident(ctx, v, true, 1, 2);
            v.extend_from_slice(b" {\n");
            for i in 0..2 + rng.skew(8) {
                v.extend_from_slice(b"    ");
                let at = v.len();
                rng.ident(ctx, v, false, 1, 2);
                v[at..].make_ascii_uppercase();
                v.extend_from_slice(b" = ");
                v.extend_from_slice(i.to_string().as_bytes());
                v.extend_from_slice(b",\n");
            }
            v.extend_from_slice(b"};\n\n");
        }
    }
}

fn c_unit(ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>) {
    let up = ctx.name.to_ascii_uppercase();
    match rng.below(3) {
        0 => {
            for _ in 0..1 + rng.skew(8) {
                v.extend_from_slice(b"#define ");
                v.extend_from_slice(up.as_bytes());
                v.push(b'_');
                let at = v.len();
                rng.ident(ctx, v, false, 1, 2);
                v[at..].make_ascii_uppercase();
                v.extend_from_slice(format!(" {}\n", rng.skew(4096)).as_bytes());
            }
            v.push(b'\n');
        }
        1 => {
            v.extend_from_slice(b"/* ");
            rng.prose(v, 5, 10);
            v.extend_from_slice(b". */\n");
            v.extend_from_slice(rng.pick_skew(C_TYPES).as_bytes());
            v.extend_from_slice(b" STDCALL ");
            v.extend_from_slice(ctx.name.as_bytes());
            v.push(b'_');
            rng.ident(ctx, v, false, 1, 2);
            v.push(b'(');
            for i in 0..1 + rng.skew(4) {
                if i > 0 {
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(rng.pick_skew(C_TYPES).as_bytes());
                v.push(b' ');
                rng.ident(ctx, v, false, 1, 0);
            }
            v.extend_from_slice(b");\n\n");
        }
        _ => {
            v.extend_from_slice(b"typedef struct st_");
            rng.ident(ctx, v, false, 1, 2);
            v.extend_from_slice(b"\n{\n");
            for _ in 0..2 + rng.skew(10) {
                v.extend_from_slice(b"  ");
                v.extend_from_slice(rng.pick_skew(C_TYPES).as_bytes());
                v.push(b' ');
                rng.ident(ctx, v, false, 1, 2);
                v.extend_from_slice(b";\t/* ");
                rng.prose(v, 2, 5);
                v.extend_from_slice(b" */\n");
            }
            v.extend_from_slice(b"} ");
            let at = v.len();
            rng.ident(ctx, v, false, 1, 0);
            v[at..].make_ascii_uppercase();
            v.extend_from_slice(b";\n\n");
        }
    }
}

fn prose_para(rng: &mut Rng, v: &mut Vec<u8>, lead: &[u8], width: usize) {
    let mut col = 0;
    v.extend_from_slice(lead);
    for _ in 0..1 + rng.below(5) {
        let n = 6 + rng.below(14);
        for i in 0..n {
            let w = rng.pick_skew(PROSE).as_bytes();
            if col + w.len() > width {
                v.push(b'\n');
                v.extend_from_slice(lead);
                col = 0;
            } else if col > 0 {
                v.push(b' ');
                col += 1;
            }
            if i == 0 {
                v.push(w[0].to_ascii_uppercase());
                v.extend_from_slice(&w[1..]);
            } else {
                v.extend_from_slice(w);
            }
            col += w.len();
        }
        v.push(b'.');
    }
    v.extend_from_slice(b"\n\n");
}

/// Writes exactly `len` bytes of text in `d` (prologue if `first`, epilogue if `last`).
fn text_block(d: Dialect, ctx: &Ctx, rng: &mut Rng, v: &mut Vec<u8>, len: usize, first: bool, last: bool) {
    let start = v.len();
    let guard = || {
        let mut g = ctx.ns.join("_").to_ascii_uppercase();
        g.push_str("_H");
        g
    };
    let epilogue: Vec<u8> = if !last {
        Vec::new()
    } else {
        match d {
            Dialect::Cpp => {
                format!("\n}}  // namespace {}\n\n#endif  // {}\n", ctx.ns.join("::"), guard()).into_bytes()
            }
            Dialect::C => format!("\n#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {} */\n", guard()).into_bytes(),
            Dialect::Html => b"</div>\n</body>\n</html>\n".to_vec(),
            Dialect::Json => b"{\"end\": true}\n}\n".to_vec(),
            Dialect::Py | Dialect::PyScript => b"\n\nif __name__ == \"__main__\":\n    main()\n".to_vec(),
            Dialect::Sh => b"\nexit 0\n".to_vec(),
            _ => Vec::new(),
        }
    };
    if first {
        match d {
            Dialect::Py | Dialect::PyScript => {
                if d == Dialect::PyScript {
                    v.extend_from_slice(ctx.shebang.as_bytes());
                    v.push(b'\n');
                }
                license_comment(ctx, v, b"# ", b"", b"#");
                v.extend_from_slice(b"\n\"\"\"");
                rng.prose(v, 6, 10);
                v.extend_from_slice(b".\n\"\"\"\n\nfrom __future__ import annotations\n\n");
                v.extend_from_slice(b"__all__ = [\"");
                rng.ident(ctx, v, true, 2, 0);
                v.extend_from_slice(b"\"]\n\nimport logging\nimport os\nfrom typing import Any\n\nfrom .");
                rng.ident(ctx, v, false, 1, 0);
                v.extend_from_slice(b" import ");
                rng.ident(ctx, v, true, 1, 2);
                v.extend_from_slice(b"\n\n_LOG = logging.getLogger(__name__)\n\n\n");
            }
            Dialect::Cpp => {
                v.extend_from_slice(b"// -*- LSST-C++ -*-\n");
                license_comment(ctx, v, b" * ", b"/*\n", b" */");
                let g = guard();
                v.extend_from_slice(
                    format!(
                        "#ifndef {g}\n#define {g}\n\n// System headers\n\
                    #include <memory>\n#include <string>\n#include <vector>\n\n"
                    )
                    .as_bytes(),
                );
                v.extend_from_slice(format!("// Qserv headers\n#include \"{}/", ctx.ns.join("/")).as_bytes());
                rng.ident(ctx, v, true, 1, 0);
                v.extend_from_slice(format!(".h\"\n\nnamespace {} {{\n\n", ctx.ns.join("::")).as_bytes());
            }
            Dialect::C => {
                license_comment(ctx, v, b"   ", b"/*", b"*/");
                let g = guard();
                v.extend_from_slice(
                    format!(
                        "#ifndef {g}\n#define {g}\n\n#include <stddef.h>\n#include <stdint.h>\n\n\
                    #ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
                    )
                    .as_bytes(),
                );
            }
            Dialect::Html => {
                v.extend_from_slice(b"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
                v.extend_from_slice(ctx.name.as_bytes());
                v.extend_from_slice(
                    b"</title>\n<link rel=\"stylesheet\" href=\"_static/style.css\">\n</head>\n\
                    <body>\n<div class=\"body\">\n",
                );
            }
            Dialect::Man => {
                v.extend_from_slice(b".TH ");
                v.extend_from_slice(ctx.name.to_ascii_uppercase().as_bytes());
                v.extend_from_slice(b" 1 \"2026\" \"LSST\" \"User Commands\"\n.SH NAME\n");
                v.extend_from_slice(ctx.name.as_bytes());
                v.extend_from_slice(b" \\- ");
                rng.prose(v, 6, 0);
                v.extend_from_slice(b"\n.SH SYNOPSIS\n.B ");
                v.extend_from_slice(ctx.name.as_bytes());
                v.extend_from_slice(b"\n[\\fIOPTIONS\\fR]\n.SH DESCRIPTION\n");
            }
            Dialect::Md => {
                v.extend_from_slice(b"# ");
                v.extend_from_slice(ctx.name.as_bytes());
                v.extend_from_slice(b"\n\n");
            }
            Dialect::Sh => {
                v.extend_from_slice(b"#!/bin/bash\n");
                license_comment(ctx, v, b"# ", b"", b"#");
                v.extend_from_slice(b"\nset -e\n\n");
            }
            Dialect::Sql => {
                v.extend_from_slice(b"-- ");
                rng.prose(v, 8, 0);
                v.extend_from_slice(b"\n\nSET NAMES utf8mb4;\nSET FOREIGN_KEY_CHECKS = 0;\n\n");
            }
            Dialect::Json => v.extend_from_slice(b"{\n"),
            Dialect::Xml => v.extend_from_slice(b"<?xml version='1.0' encoding=\"utf-8\"?>\n<charsets>\n"),
            Dialect::Swig => {
                v.extend_from_slice(
                    b"/* -----------------------------------------------------------------------------\n * ",
                );
                rng.prose(v, 8, 0);
                v.extend_from_slice(
                    b"\n * ----------------------------------------------------------------------------- */\n\n",
                );
            }
            Dialect::Csv => v.extend_from_slice(b"id,ra,decl,flux,flux_err,flags\n"),
            Dialect::Txt => {}
        }
    }
    let target = start + len.saturating_sub(epilogue.len());
    let mut in_class = false;
    while v.len() < target {
        match d {
            Dialect::Py | Dialect::PyScript => {
                if rng.pct(25) {
                    v.extend_from_slice(b"\nclass ");
                    rng.ident(ctx, v, true, 1, 3);
                    v.extend_from_slice(b":\n    \"\"\"");
                    rng.prose(v, 6, 14);
                    v.extend_from_slice(b".\n    \"\"\"\n\n");
                    in_class = true;
                } else if rng.pct(20) {
                    in_class = false;
                }
                py_def(ctx, rng, v, if in_class { 4 } else { 0 }, in_class);
            }
            Dialect::Cpp => cpp_unit(ctx, rng, v),
            Dialect::C => c_unit(ctx, rng, v),
            Dialect::Md | Dialect::Txt => {
                if rng.pct(15) {
                    v.extend_from_slice(if d == Dialect::Md { b"## " as &[u8] } else { b"" });
                    rng.prose(v, 2, 4);
                    v.extend_from_slice(b"\n\n");
                }
                prose_para(rng, v, b"", 76);
            }
            Dialect::Man => {
                v.extend_from_slice(b".TP\n.B \\-\\-");
                rng.ident(ctx, v, false, 1, 2);
                v.push(b'\n');
                prose_para(rng, v, b"", 72);
            }
            Dialect::Html => {
                v.extend_from_slice(b"<p>");
                prose_para(rng, v, b"", 100);
                v.truncate(v.len() - 2);
                v.extend_from_slice(b" <a class=\"reference internal\" href=\"");
                rng.ident(ctx, v, false, 1, 0);
                v.extend_from_slice(b".html\">");
                rng.ident(ctx, v, true, 1, 0);
                v.extend_from_slice(b"</a></p>\n");
            }
            Dialect::Sh => {
                if rng.pct(50) {
                    v.extend_from_slice(b"export ");
                    let at = v.len();
                    rng.ident(ctx, v, false, 2, 0);
                    v[at..].make_ascii_uppercase();
                    v.extend_from_slice(b"=\"${");
                    let at = v.len();
                    rng.ident(ctx, v, false, 1, 0);
                    v[at..].make_ascii_uppercase();
                    v.extend_from_slice(b"_DIR}/");
                    rng.ident(ctx, v, false, 1, 0);
                    v.extend_from_slice(b"\"\n");
                } else {
                    v.extend_from_slice(b"if [ -z \"$");
                    let at = v.len();
                    rng.ident(ctx, v, false, 1, 0);
                    v[at..].make_ascii_uppercase();
                    v.extend_from_slice(b"\" ]; then\n    echo \"");
                    rng.prose(v, 4, 6);
                    v.extend_from_slice(b"\" >&2\n    exit 1\nfi\n");
                }
            }
            Dialect::Sql => {
                v.extend_from_slice(b"CREATE TABLE IF NOT EXISTS `");
                rng.ident(ctx, v, false, 1, 2);
                v.extend_from_slice(b"` (\n");
                for _ in 0..2 + rng.skew(12) {
                    v.extend_from_slice(b"  `");
                    rng.ident(ctx, v, false, 1, 2);
                    v.extend_from_slice(b"` ");
                    v.extend_from_slice(
                        rng.pick_skew(&[
                            "INT NOT NULL",
                            "BIGINT UNSIGNED NOT NULL",
                            "VARCHAR(255) NOT NULL",
                            "DOUBLE",
                            "TEXT",
                            "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP",
                            "BOOLEAN DEFAULT FALSE",
                        ])
                        .as_bytes(),
                    );
                    v.extend_from_slice(b",\n");
                }
                v.extend_from_slice(b"  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n\n");
            }
            Dialect::Json => {
                v.extend_from_slice(b"  \"");
                rng.ident(ctx, v, false, 1, 2);
                v.extend_from_slice(b"\": {\"");
                rng.ident(ctx, v, false, 1, 0);
                v.extend_from_slice(b"\": ");
                v.extend_from_slice(rng.skew(1000).to_string().as_bytes());
                v.extend_from_slice(b", \"description\": \"");
                rng.prose(v, 3, 8);
                v.extend_from_slice(b"\", \"enabled\": true},\n");
            }
            Dialect::Csv => {
                let id = rng.below(1 << 30);
                for k in 0..8 + rng.below(24) {
                    v.extend_from_slice(
                        format!(
                            "{},{}.{:04},{}.{:04},{}.{:02},0.{:03},{}\n",
                            id + k,
                            rng.below(360),
                            rng.below(10000),
                            rng.below(90),
                            rng.below(10000),
                            12 + rng.skew(12),
                            rng.below(100),
                            rng.skew(4),
                            rng.skew(8)
                        )
                        .as_bytes(),
                    );
                }
            }
            Dialect::Xml => {
                v.extend_from_slice(b"<charset name=\"");
                rng.ident(ctx, v, false, 1, 0);
                v.extend_from_slice(b"\">\n<ctype>\n<map>\n");
                for _ in 0..8 {
                    v.extend_from_slice(b" ");
                    for _ in 0..16 {
                        v.extend_from_slice(format!("{:02X} ", rng.skew(256)).as_bytes());
                    }
                    v.push(b'\n');
                }
                v.extend_from_slice(b"</map>\n</ctype>\n</charset>\n\n");
            }
            Dialect::Swig => {
                v.extend_from_slice(b"%typemap(in) ");
                v.extend_from_slice(rng.pick_skew(CPP_TYPES).as_bytes());
                v.extend_from_slice(b" {\n  $1 = ($1_ltype) SWIG_");
                rng.ident(ctx, v, true, 2, 0);
                v.extend_from_slice(b"($input);\n}\n\n");
            }
        }
    }
    v.truncate(target.max(start));
    if v.len() > start && v.len() == target && !epilogue.is_empty() {
        let l = v.len();
        v[l - 1] = b'\n';
    }
    v.extend_from_slice(&epilogue);
    v.truncate(start + len);
    if v.len() < start + len {
        v.resize(start + len, b'\n');
    }
    if len > 0 {
        let l = v.len();
        v[l - 1] = b'\n';
    }
}

// ---------------------------------------------------------------------------------------------------------
// Syncing a directory to a plan.

#[derive(Clone, Copy)]
struct Existing {
    len: u64,
    mode: u32,
    mtime: i64,
    mtime_ns: i64,
    nlink: u64,
}

fn mode_of(md: &fs::Metadata) -> u32 {
    md.permissions().mode() & 0o7777
}

fn remove_dir_counting(dir: &Path, removed: &mut u64) -> io::Result<()> {
    let md = fs::symlink_metadata(dir)?;
    if mode_of(&md) & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            remove_dir_counting(&p, removed)?;
        } else {
            fs::remove_file(&p)?;
            *removed += 1;
        }
    }
    fs::remove_dir(dir)
}

fn scan(
    abs: &Path,
    rel: &str,
    plan: &BTreeMap<String, Node>,
    existing: &mut HashMap<String, Existing>,
    removed: &mut u64,
) -> io::Result<()> {
    let mut entries: Vec<(String, fs::DirEntry)> = Vec::new();
    for e in fs::read_dir(abs)? {
        let e = e?;
        let name = e.file_name().into_string().unwrap_or_else(|n| n.to_string_lossy().into_owned());
        entries.push((name, e));
    }
    for (name, e) in entries {
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let p = e.path();
        let md = fs::symlink_metadata(&p)?;
        let ft = md.file_type();
        let want = plan.get(&r);
        if ft.is_dir() {
            if matches!(want, Some(Node::Dir { .. })) {
                if mode_of(&md) & 0o700 != 0o700 {
                    fs::set_permissions(&p, fs::Permissions::from_mode(mode_of(&md) | 0o700))?;
                }
                scan(&p, &r, plan, existing, removed)?;
            } else {
                remove_dir_counting(&p, removed)?;
            }
            continue;
        }
        let keep = match want {
            Some(Node::File(_)) | Some(Node::Hardlink(_)) => ft.is_file(),
            Some(Node::Symlink(t)) => ft.is_symlink() && fs::read_link(&p)?.as_os_str() == std::ffi::OsStr::new(t),
            _ => false,
        };
        if keep {
            existing.insert(
                r,
                Existing {
                    len: md.len(),
                    mode: mode_of(&md),
                    mtime: md.mtime(),
                    mtime_ns: md.mtime_nsec(),
                    nlink: md.nlink(),
                },
            );
        } else {
            fs::remove_file(&p)?;
            *removed += 1;
        }
    }
    Ok(())
}

fn same_content(path: &Path, want: &[u8], rd: &mut Vec<u8>) -> io::Result<bool> {
    let mut f = fs::File::open(path)?;
    rd.resize(1 << 20, 0);
    let mut off = 0;
    loop {
        let n = f.read(&mut rd[..])?;
        if n == 0 {
            return Ok(off == want.len());
        }
        if off + n > want.len() || rd[..n] != want[off..off + n] {
            return Ok(false);
        }
        off += n;
    }
}

fn systime(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn set_mtime_of(f: &fs::File, secs: u64) -> io::Result<()> {
    f.set_times(fs::FileTimes::new().set_modified(systime(secs)).set_accessed(systime(secs)))
}

/// Writes or keeps one file; returns whether it was written.
fn sync_file(
    out: &Path,
    rel: &str,
    node: &FileNode,
    ex: Option<&Existing>,
    buf: &mut Vec<u8>,
    rd: &mut Vec<u8>,
) -> io::Result<bool> {
    let path = out.join(rel);
    let data: &[u8] = match &node.content {
        Content::Bytes(b) => b,
        Content::Gen(g) => {
            render(g, buf);
            buf
        }
    };
    if let Some(e) = ex {
        let links_ok = node.nlink > 1 || e.nlink == 1;
        if links_ok && e.len == data.len() as u64 && same_content(&path, data, rd)? {
            if e.mode != node.mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(node.mode))?;
            }
            if e.mtime != node.mtime as i64 || e.mtime_ns != 0 {
                set_mtime_of(&fs::File::open(&path)?, node.mtime)?;
            }
            return Ok(false);
        }
    }
    // A new path is written in place; an existing file is replaced by renaming a new one over it.
    let tmp = match ex {
        None => None,
        Some(_) => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
            let tmp = path.with_file_name(format!(".{name}.treegen-tmp"));
            let _ = fs::remove_file(&tmp);
            Some(tmp)
        }
    };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp.as_ref().unwrap_or(&path))?;
    f.write_all(data)?;
    set_mtime_of(&f, node.mtime)?;
    f.set_permissions(fs::Permissions::from_mode(node.mode))?;
    drop(f);
    if let Some(tmp) = tmp {
        fs::rename(&tmp, &path)?;
    }
    Ok(true)
}

fn sync(out: &Path, plan: &BTreeMap<String, Node>) -> io::Result<GenStats> {
    // The root itself may be reached through a symlink; nothing below it is ever followed.
    match fs::metadata(out) {
        Ok(md) if md.is_dir() => {
            let empty = fs::read_dir(out)?.next().is_none();
            if !empty && !out.join("ups_db").is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is not empty and holds no ups_db/: refusing to replace it with a generated tree",
                        out.display()
                    ),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a directory", out.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(out)?,
        Err(e) => return Err(e),
    }
    let root_mode = mode_of(&fs::metadata(out)?);
    let mut stats = GenStats::default();
    let mut existing = HashMap::new();
    if root_mode & 0o700 != 0o700 {
        fs::set_permissions(out, fs::Permissions::from_mode(root_mode | 0o700))?;
    }
    scan(out, "", plan, &mut existing, &mut stats.files_removed)?;

    // Directories (parents sort before children).
    for (rel, node) in plan {
        if let Node::Dir { .. } = node {
            stats.dirs += 1;
            let p = out.join(rel);
            if fs::symlink_metadata(&p).is_err() {
                fs::DirBuilder::new().mode(0o755).create(&p)?;
            }
        }
    }

    // Regular files, in parallel (largest first).
    let mut jobs: Vec<(&String, &FileNode)> = plan
        .iter()
        .filter_map(|(r, n)| match n {
            Node::File(f) => Some((r, f)),
            _ => None,
        })
        .collect();
    jobs.sort_by_key(|(r, f)| (std::cmp::Reverse(f.content.len()), *r));
    stats.files = jobs.len() as u64;
    stats.bytes = jobs.iter().map(|(_, f)| f.content.len()).sum();
    let next = AtomicUsize::new(0);
    let written = AtomicUsize::new(0);
    let error: Mutex<Option<io::Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                let mut rd = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    let (rel, node) = jobs[i];
                    match sync_file(out, rel, node, existing.get(rel.as_str()), &mut buf, &mut rd) {
                        Ok(true) => {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            let e = io::Error::new(e.kind(), format!("{}: {e}", out.join(rel).display()));
                            if let Ok(mut slot) = error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    stats.files_written = written.into_inner() as u64;

    // Links.
    for (rel, node) in plan {
        let p = out.join(rel);
        match node {
            Node::Hardlink(primary) => {
                stats.hardlinks += 1;
                let pm = fs::symlink_metadata(out.join(primary))?;
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.ino() == pm.ino() && m.dev() == pm.dev() => {}
                    Ok(_) => {
                        fs::remove_file(&p)?;
                        fs::hard_link(out.join(primary), &p)?;
                    }
                    Err(_) => fs::hard_link(out.join(primary), &p)?,
                }
            }
            Node::Symlink(target) => {
                stats.symlinks += 1;
                if !existing.contains_key(rel.as_str()) {
                    std::os::unix::fs::symlink(target, &p)?;
                }
            }
            _ => {}
        }
    }

    // Directory modes and mtimes, children first.
    for (rel, node) in plan.iter().rev() {
        if let Node::Dir { mode, rev } = node {
            let p = out.join(rel);
            let md = fs::symlink_metadata(&p)?;
            let want = release_time(*rev) + 7200;
            if md.mtime() != want as i64 || md.mtime_nsec() != 0 {
                set_mtime_of(&fs::File::open(&p)?, want)?;
            }
            if mode_of(&md) != *mode {
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
            }
        }
    }
    if root_mode & 0o700 != 0o700 {
        fs::set_permissions(out, fs::Permissions::from_mode(root_mode))?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests;
