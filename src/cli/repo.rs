//! Repository commands: `releases`, `show`, `diff`, `verify`, `gc`, `init`.

use super::{date, human, print_json, Bar};
use crate::chunk::ChunkerParams;
use crate::fsx::LockMode;
use crate::id::ChunkId;
use crate::manifest::{show_path, PartKind, PartRef, Release};
use crate::store::Repository;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ReleasesArgs {
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ReleaseRow {
    name: String,
    id: String,
    created: i64,
    created_utc: String,
    parent: Option<String>,
    prefix: String,
    parts: usize,
    files: u64,
    bytes: u64,
    signed: bool,
}

pub fn releases(a: ReleasesArgs) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&a.repo)?;
    let rows: Vec<ReleaseRow> = repo
        .releases()?
        .into_iter()
        .map(|(name, id, signed, r)| {
            let (files, bytes) = r.totals();
            ReleaseRow {
                name,
                id: id.to_hex(),
                created: r.created,
                created_utc: date(r.created),
                parent: r.parent.map(|p| p.to_hex()),
                prefix: show_path(&r.prefix),
                parts: r.parts.len(),
                files,
                bytes,
                signed: signed.signature.is_some(),
            }
        })
        .collect();
    if a.json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no releases in {}", a.repo.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<12} {:<19} {:>5} {:>8} {:>11} SIGNED", "NAME", "ID", "CREATED (UTC)", "PARTS", "FILES", "SIZE");
    for r in rows {
        println!(
            "{:<24} {:<12} {:<19} {:>5} {:>8} {:>11} {}",
            r.name,
            &r.id[..12],
            r.created_utc,
            r.parts,
            r.files,
            human(r.bytes),
            if r.signed { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Release name or id (prefix).
    release: String,
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct PartRow {
    mount: String,
    kind: &'static str,
    product: Option<String>,
    version: Option<String>,
    manifest: String,
    files: u64,
    bytes: u64,
}

fn part_row(p: &PartRef) -> PartRow {
    let (kind, product, version) = match &p.kind {
        PartKind::Base => ("base", None, None),
        PartKind::Product { product, version } => ("product", Some(product.clone()), Some(version.clone())),
        PartKind::Config => ("config", None, None),
    };
    PartRow {
        mount: if p.mount.is_empty() { ".".into() } else { show_path(&p.mount) },
        kind,
        product,
        version,
        manifest: p.manifest.to_hex(),
        files: p.n_files,
        bytes: p.n_bytes,
    }
}

pub fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&a.repo)?;
    let (name, id) = repo.resolve(&a.release)?;
    let (signed, r) = repo.read_release(&id)?;
    let parts: Vec<PartRow> = r.parts.iter().map(part_row).collect();
    if a.json {
        #[derive(Serialize)]
        struct Out {
            name: String,
            id: String,
            created: i64,
            parent: Option<String>,
            prefix: String,
            signed_by: Option<String>,
            parts: Vec<PartRow>,
        }
        print_json(&Out {
            name,
            id: id.to_hex(),
            created: r.created,
            parent: r.parent.map(|p| p.to_hex()),
            prefix: show_path(&r.prefix),
            signed_by: signed.signature.map(|s| hex::encode(s.key)),
            parts,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let (files, bytes) = r.totals();
    println!("release  {name}\nid       {id}\ncreated  {} UTC", date(r.created));
    if let Some(p) = r.parent {
        println!("parent   {p}");
    }
    println!("prefix   {}", show_path(&r.prefix));
    match &signed.signature {
        Some(s) => println!("signed   by qpack-publisher {}", hex::encode(s.key)),
        None => println!("signed   no"),
    }
    println!("content  {} parts, {files} files, {}\n", r.parts.len(), human(bytes));
    println!("{:<44} {:<24} {:>8} {:>11}  MANIFEST", "MOUNT", "PRODUCT VERSION", "FILES", "SIZE");
    for p in parts {
        let pv = match (&p.product, &p.version) {
            (Some(p), Some(v)) => format!("{p} {v}"),
            _ => p.kind.to_string(),
        };
        println!("{:<44} {:<24} {:>8} {:>11}  {}", p.mount, pv, p.files, human(p.bytes), &p.manifest[..12]);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The release a node holds.
    a: String,
    /// The release it would get.
    b: String,
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DiffOut {
    from: String,
    to: String,
    added: Vec<PartRow>,
    removed: Vec<PartRow>,
    changed: Vec<(PartRow, PartRow)>,
    unchanged: usize,
    chunks_to_fetch: u64,
    bytes_to_fetch: u64,
    bytes_to_fetch_uncompressed: u64,
}

fn product_name(p: &PartRef) -> Option<&str> {
    match &p.kind {
        PartKind::Product { product, .. } => Some(product),
        _ => None,
    }
}

/// Chunks of a release (deduplicated).
fn chunk_set(repo: &Repository, r: &Release) -> anyhow::Result<HashSet<(ChunkId, u32)>> {
    let mut set = HashSet::new();
    for p in &r.parts {
        set.extend(repo.read_manifest(&p.manifest)?.chunks().map(|c| (c.id, c.len)));
    }
    Ok(set)
}

pub fn diff(a: DiffArgs) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&a.repo)?;
    let (na, ida) = repo.resolve(&a.a)?;
    let (nb, idb) = repo.resolve(&a.b)?;
    let (_, ra) = repo.read_release(&ida)?;
    let (_, rb) = repo.read_release(&idb)?;
    let mut removed: Vec<&PartRef> =
        ra.parts.iter().filter(|p| !rb.parts.iter().any(|q| q.mount == p.mount && q.kind == p.kind)).collect();
    let mut added: Vec<&PartRef> =
        rb.parts.iter().filter(|p| !ra.parts.iter().any(|q| q.mount == p.mount && q.kind == p.kind)).collect();
    let mut changed: Vec<(&PartRef, &PartRef)> = Vec::new();
    let mut unchanged = 0;
    for p in &rb.parts {
        if let Some(q) = ra.parts.iter().find(|q| q.mount == p.mount && q.kind == p.kind) {
            if q.manifest == p.manifest {
                unchanged += 1;
            } else {
                changed.push((q, p));
            }
        }
    }
    // A product that moved to a new version directory is a change of that product, not a removal plus an addition.
    added.retain(|p| {
        let Some(name) = product_name(p) else { return true };
        match removed.iter().position(|q| product_name(q) == Some(name)) {
            Some(i) => {
                changed.push((removed.remove(i), p));
                false
            }
            None => true,
        }
    });
    let have = chunk_set(&repo, &ra)?;
    let want = chunk_set(&repo, &rb)?;
    let mut out = DiffOut {
        from: na,
        to: nb,
        added: added.into_iter().map(part_row).collect(),
        removed: removed.into_iter().map(part_row).collect(),
        changed: changed.into_iter().map(|(x, y)| (part_row(x), part_row(y))).collect(),
        unchanged,
        chunks_to_fetch: 0,
        bytes_to_fetch: 0,
        bytes_to_fetch_uncompressed: 0,
    };
    let have_ids: HashSet<ChunkId> = have.iter().map(|c| c.0).collect();
    for (id, len) in want.iter().filter(|c| !have_ids.contains(&c.0)) {
        out.chunks_to_fetch += 1;
        out.bytes_to_fetch_uncompressed += u64::from(*len);
        out.bytes_to_fetch += repo.chunk_stored_len(id).unwrap_or(u64::from(*len));
    }
    if a.json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} -> {}: {} parts unchanged", out.from, out.to, out.unchanged);
    for p in &out.added {
        println!("  + {:<40} {}", p.mount, human(p.bytes));
    }
    for p in &out.removed {
        println!("  - {:<40} {}", p.mount, human(p.bytes));
    }
    for (x, y) in &out.changed {
        let label = if x.mount == y.mount { x.mount.clone() } else { format!("{} -> {}", x.mount, y.mount) };
        println!("  ~ {:<40} {} -> {}", label, human(x.bytes), human(y.bytes));
    }
    println!(
        "a node holding {} fetches {} chunks: {} ({} uncompressed)",
        out.from,
        out.chunks_to_fetch,
        human(out.bytes_to_fetch),
        human(out.bytes_to_fetch_uncompressed)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The repository.
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let repo = Repository::open(&a.repo)?;
    let _lock = repo.lock(LockMode::Shared)?;
    let bar = Bar::new(a.json);
    crate::publish::Progress::phase(&bar, "verifying", 0);
    let report = crate::store::verify(&repo, &|n| bar.0.set_position(n))?;
    bar.finish();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} releases, {} manifests, {} chunks ({} unreferenced)",
            report.releases, report.manifests, report.chunks, report.unreferenced_chunks
        );
        for p in &report.problems {
            let breaks = if p.breaks.is_empty() { "no release".to_string() } else { p.breaks.join(", ") };
            println!("DAMAGED {} {}: {}\n  breaks: {breaks}", p.kind, p.id, p.error);
        }
        if report.problems.is_empty() {
            println!("ok: every object is intact");
        } else {
            println!("{} damaged or missing objects", report.problems.len());
        }
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// The repository.
    #[arg(long, env = "QPACK_REPO", required_unless_present = "node", conflicts_with = "node")]
    repo: Option<PathBuf>,
    /// A node root instead: removes installed releases beyond --keep (never the active or previous one), then
    /// the objects no installed release needs.
    #[arg(long)]
    node: Option<PathBuf>,
    /// Keep the N newest releases.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Keep this release too (repeatable).
    #[arg(long = "keep-release", value_name = "NAME")]
    keep_release: Vec<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn gc(a: GcArgs) -> anyhow::Result<ExitCode> {
    if a.keep.is_none() && a.keep_release.is_empty() {
        anyhow::bail!("say what to keep: --keep N (the N newest releases) and/or --keep-release NAME");
    }
    if let Some(node) = &a.node {
        return super::node::gc(node, a.keep.unwrap_or(0), a.json);
    }
    let repo = Repository::open(a.repo.as_ref().expect("clap requires --repo without --node"))?;
    let lock = repo.lock(LockMode::Exclusive)?;
    let report = crate::store::gc(&repo, a.keep.unwrap_or(0), &a.keep_release, a.dry_run)?;
    drop(lock);
    if a.json {
        print_json(&report)?;
    } else {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("kept {} releases: {}", report.kept.len(), report.kept.join(", "));
        println!(
            "{verb} {} releases{}{}",
            report.removed.len(),
            if report.removed.is_empty() { "" } else { ": " },
            report.removed.join(", ")
        );
        println!(
            "{verb} {} chunks and {} metadata objects, {}",
            report.chunks_removed,
            report.metadata_removed,
            human(report.bytes_freed)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The repository directory (missing or empty).
    #[arg(long, env = "QPACK_REPO")]
    repo: PathBuf,
    /// Average chunk size in KiB (min is a quarter, max four times).
    #[arg(long, default_value_t = 64)]
    chunk_kib: u32,
}

pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    if a.repo.join(crate::store::REPO_FILE).exists() {
        anyhow::bail!("{} is already a qpack repository", a.repo.display());
    }
    let avg = a.chunk_kib.saturating_mul(1024);
    let params = ChunkerParams { min: avg / 4, avg, max: avg.saturating_mul(4) };
    let repo = Repository::open_or_init(&a.repo, params)?;
    println!(
        "created repository {} (chunks {}/{}/{} bytes)",
        repo.root().display(),
        params.min,
        params.avg,
        params.max
    );
    Ok(ExitCode::SUCCESS)
}
