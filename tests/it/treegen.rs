//! A realistic generated stack: release 1, then release 2 (qserv rebuilt, one dependency bumped) in place.

use crate::args;
use crate::incremental::wait_until_cacheable;
use crate::util::*;
use qpack::treegen::{generate, GenOptions};
use std::time::Instant;

#[test]
fn generated_release_update_reuses_parts_and_the_stat_cache() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    let opts = GenOptions { release: 1, size: 8 << 20, ..GenOptions::default() };
    let g1 = generate(&tree, &opts).unwrap();
    wait_until_cacheable(Instant::now());
    let r1 = publish(&tree, &repo, "r1", &[]);
    assert_eq!(num(&r1, "files"), g1.files + g1.hardlinks, "{r1:#} {g1:?}");
    assert_eq!(num(&r1, "symlinks"), g1.symlinks, "{r1:#} {g1:?}");
    let out = t.join("out1");
    checkout(&repo, "r1", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);

    let g2 = generate(&tree, &GenOptions { release: 2, ..opts.clone() }).unwrap();
    let r2 = publish(&tree, &repo, "r2", &[]);
    let parts = num(&r2, "parts_new") + num(&r2, "parts_reused");
    // qserv (a new version directory), the bumped dependency, and the base (ups_db) are new; the rest reused.
    assert!(num(&r2, "parts_new") <= 3, "{r2:#}");
    assert!(num(&r2, "parts_reused") >= parts - 3 && parts > 5, "{r2:#}");
    // Files the update did not rewrite come from the stat cache.
    assert!(num(&r2, "files_read") <= g2.files_written, "{r2:#} {g2:?}");
    assert!(num(&r2, "stat_cache_hits") >= g2.files - g2.files_written, "{r2:#} {g2:?}");
    assert!(num(&r2, "chunks_new") < num(&r2, "chunks_reused"), "{r2:#}");
    assert!(num(&r2, "bytes_new") * 2 < num(&r2, "bytes"), "{r2:#}");

    let d = qpack(args!["diff", "r1", "r2", "--repo", &repo, "--json"]).ok().json();
    let changed = d["changed"].as_array().unwrap();
    assert!(changed.iter().any(|c| c[1]["product"] == "qserv"), "{d:#}");
    let total = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json()[0]["bytes"].as_u64().unwrap();
    assert!(num(&d, "bytes_to_fetch") * 2 < total, "{d:#}");

    let out = t.join("out2");
    checkout(&repo, "r2", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);
    verify(&repo).ok();
}
