//! Publisher keys and signed releases (RELIABILITY cases 15, 42).

use crate::args;
use crate::util::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes a key; returns the public key's hex.
fn make_key(path: &Path) -> String {
    let out = qpack(args!["keys", "publisher", "--out", path]).ok();
    let line = out.stdout.trim();
    let hex = line.strip_prefix("qpack-publisher ").unwrap_or_else(|| panic!("public key line: {line:?}"));
    assert_eq!(hex.len(), 64);
    hex.to_owned()
}

#[test]
fn signed_release_reports_its_signer_and_tampering_is_found() {
    let t = TestDir::new();
    let (tree, repo, key) = (t.join("tree"), t.join("repo"), t.join("publisher.key"));
    sample_tree(&tree);
    let public = make_key(&key);
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // Never overwritten.
    let secret = fs::read(&key).unwrap();
    qpack(args!["keys", "publisher", "--out", &key]).fails();
    assert_eq!(fs::read(&key).unwrap(), secret);

    let r = publish(&tree, &repo, "signed", &["--key", key.to_str().unwrap()]);
    assert_eq!(r["signed"], true);
    let show = qpack(args!["show", "signed", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(show["signed_by"], public.as_str());
    qpack(args!["show", "signed", "--repo", &repo]).ok().says(&[&format!("qpack-publisher {public}")]);
    let rels = qpack(args!["releases", "--repo", &repo, "--json"]).ok().json();
    assert_eq!(rels[0]["signed"], true);
    // The key can come from the environment too; an unsigned release says so.
    let mut c = cmd();
    c.args(args!["publish", &tree, "--repo", &repo, "--release", "env-signed", "--json"])
        .env("QPACK_PUBLISHER_KEY", &key);
    assert_eq!(run_cmd(c).ok().json()["signed"], true);
    publish(&tree, &repo, "unsigned", &[]);
    let show = qpack(args!["show", "unsigned", "--repo", &repo, "--json"]).ok().json();
    assert!(show["signed_by"].is_null());
    verify(&repo).ok();

    // Flip a byte of the signature (the last bytes of the release object).
    let id = r["id"].as_str().unwrap();
    let path = repo.join("objects/releases").join(id);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    qpack(args!["show", "signed", "--repo", &repo]).fails().says(&["signature"]);
    let v = qpack(args!["verify", "--repo", &repo, "--json"]).code(3).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    assert_eq!(problems[0]["kind"], "release");
    assert_eq!(problems[0]["id"], id);
    assert_eq!(problems[0]["breaks"], serde_json::json!(["signed"]));
    assert!(problems[0]["error"].as_str().unwrap().contains("signature"), "{v:#}");
    let dest = t.join("co");
    qpack(args!["checkout", "signed", &dest, "--repo", &repo]).fails().says(&["signature"]);
    assert!(!dest.exists());
    qpack(args!["export", "signed", "--repo", &repo, "-o", t.join("x.tar")]).fails().says(&["signature"]);

    // Flip a byte of the public key instead: the signature no longer verifies either.
    let mut bad = good.clone();
    bad[n - 64 - 1 - 5] ^= 0x80;
    fs::write(&path, &bad).unwrap();
    verify(&repo).code(3).says(&["signature"]);

    // Changing the body changes the id: the release no longer matches its name.
    let mut bad = good.clone();
    bad[12] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    verify(&repo).code(3).says(&[id]);

    fs::write(&path, &good).unwrap();
    verify(&repo).ok();
    let out = t.join("out");
    checkout(&repo, "signed", &out);
    assert_same_tree(&tree, &out, Cmp::EXACT);
}

#[test]
fn a_malformed_key_file_is_refused() {
    let t = TestDir::new();
    let (tree, repo) = (t.join("tree"), t.join("repo"));
    fs::create_dir_all(tree.join("ups_db")).unwrap();
    publish(&tree, &repo, "r1", &[]);
    let before = repo_listing(&repo);
    let key = t.join("bad.key");
    fs::write(&key, "qpack-publisher-secret nothex\n").unwrap();
    qpack(args!["publish", &tree, "--repo", &repo, "--release", "r2", "--key", &key]).fails().says(&["bad.key"]);
    let public = t.join("public.key");
    fs::write(&public, format!("qpack-publisher {}\n", "ab".repeat(32))).unwrap();
    qpack(args!["publish", &tree, "--repo", &repo, "--release", "r2", "--key", &public]).fails().says(&["secret key"]);
    qpack(args!["publish", &tree, "--repo", &repo, "--release", "r2", "--key", t.join("none")]).fails();
    assert_listing_unchanged(&before, &repo);
}
