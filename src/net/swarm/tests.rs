//! The scheduler on its own: who is asked for what, with stripes, the cohort, the end game and peers that come
//! and go — driven by hand, without a network.

use super::*;
use crate::id::ChunkId;
use std::time::{Duration, Instant};

/// A chunk list of `n` chunks of `len` bytes each.
fn list(n: u32, len: u32) -> Arc<ChunkList> {
    let ids = (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
    Arc::new(ChunkList { ids, lens: vec![len; n as usize] })
}

fn full(n: u32) -> Bitmap {
    let mut b = Bitmap::new(n);
    for i in 0..n {
        b.set(i);
    }
    b
}

fn bits(n: u32, mut which: impl FnMut(u32) -> bool) -> Bitmap {
    let mut b = Bitmap::new(n);
    for i in (0..n).filter(|&i| which(i)) {
        b.set(i);
    }
    b
}

/// A scheduler for node `me` that lacks every chunk, with peers `names` (in that order), the operator having
/// named `ordered` in the order.
fn sched(n: u32, me: &str, names: &[&str], ordered: &[&str]) -> Sched {
    let names = names.iter().map(|s| s.to_string()).collect();
    let ordered: Vec<String> = ordered.iter().map(|s| s.to_string()).collect();
    Sched::new(list(n, 1000), (0..n).collect(), names, me.to_string(), &ordered, 7)
}

/// node03's scheduler, node01 and node02 staging with every chunk.
fn beside_two_full_peers(n: u32) -> Sched {
    let mut s = sched(n, "node03", &["node01", "node02"], &[]);
    s.set_have(0, Some(full(n)), true);
    s.set_have(1, Some(full(n)), true);
    s
}

/// Takes every batch `next` gives now: (peer, indices, end game).
fn drain(s: &mut Sched, now: Instant) -> Vec<(usize, Vec<u32>, bool)> {
    let mut out = Vec::new();
    while let Some(b) = s.next(now) {
        out.push(b);
    }
    out
}

/// Takes every batch `next` gives now and answers each at once: the chunks asked, in order. (Answered batches
/// free their peer; the chunks stay in flight, as nothing is received.)
fn ask_all(s: &mut Sched, now: Instant) -> Vec<u32> {
    let got = drain(s, now);
    for (p, _, _) in &got {
        s.finished(*p, false, Duration::from_millis(10), Outcome::Got);
    }
    got.into_iter().flat_map(|b| b.1).collect()
}

/// Peers `ps` have been absent (not found or unreachable) for longer than `ORPHAN_AFTER` at `now`.
fn orphaned(s: &mut Sched, ps: &[usize], now: Instant) {
    for &p in ps {
        s.absent_since[p] = Some(now - ORPHAN_AFTER - Duration::from_millis(1));
    }
    s.recount_orphans(now);
}

#[test]
fn from_a_source_a_node_asks_only_for_its_stripe_of_the_novel_chunks() {
    // node02 of a cohort {node01, node02, node03} (named in the order), the seed has everything.
    let n = 3000;
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    assert_eq!((s.k, s.rank), (3, 1), "the cohort is the order's, before any peer said it stages");
    let now = Instant::now();
    let got = drain(&mut s, now);
    assert!(!got.is_empty());
    for (p, batch, endgame) in &got {
        assert_eq!(*p, 0, "only the seed has anything");
        assert!(!endgame);
        assert!(batch.iter().all(|i| i % 3 == 1), "a chunk outside node02's stripe was asked of the seed");
    }
    // At most 2 batches in flight at one peer.
    assert!(got.len() <= usize::from(PER_PEER), "{} batches at once to one peer", got.len());
}

#[test]
fn chunks_a_cohort_peer_has_are_not_asked_of_the_seed_while_some_are_novel() {
    let n = 600;
    let mut s = sched(n, "node02", &["build", "node01"], &["node01", "node02"]);
    s.set_have(0, Some(full(n)), false);
    // node01 stages too and already has its stripe (the even chunks).
    s.set_have(1, Some(bits(n, |i| i % 2 == 0)), true);
    assert_eq!(s.novel, 300, "the odd chunks are on the seed only");
    let now = Instant::now();
    for (p, batch, _) in drain(&mut s, now) {
        if p == 0 {
            assert!(batch.iter().all(|i| i % 2 == 1), "the seed was asked for a chunk node01 has");
        } else {
            assert!(batch.iter().all(|i| i % 2 == 0), "node01 was asked for a chunk it lacks");
        }
    }
}

#[test]
fn a_named_peer_that_cannot_be_reached_keeps_its_stripe_until_it_is_an_orphan() {
    // node02 of a cohort node01..node03 named in the order; node03 stages; node01's dials fail.
    let n = 3000;
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    s.set_have(2, Some(Bitmap::new(n)), true);
    s.unreachable(1);
    assert_eq!((s.k, s.rank), (3, 1), "the stripes were dealt again at the first failed dial");
    for i in (0..n).filter(|i| i % 3 == 1) {
        assert!(s.complete(i));
    }
    let now = Instant::now();
    // Its own stripe done: only the next one (node03's) at first.
    let first = ask_all(&mut s, now);
    assert!(!first.is_empty() && first.iter().all(|i| i % 3 == 2), "{:?}", &first[..first.len().min(8)]);
    // Unreachable for longer than ORPHAN_AFTER: node01's stripe falls to the first stager, node02.
    orphaned(&mut s, &[1], now);
    let orphan: Vec<u32> = ask_all(&mut s, now).into_iter().filter(|i| i % 3 != 2).collect();
    assert!(!orphan.is_empty(), "node01's stripe not asked once it is an orphan");
    assert!(orphan.iter().all(|i| i % 3 == 0) && orphan[0] == 2997, "{:?}", &orphan[..orphan.len().min(8)]);
    // A peer the operator did not name leaves the cohort at once.
    let mut s = sched(n, "node02", &["build", "node01"], &[]);
    s.set_have(1, Some(Bitmap::new(n)), true);
    assert_eq!((s.k, s.rank), (2, 1));
    s.unreachable(1);
    assert_eq!((s.k, s.rank), (1, 0), "an unreachable peer not named in the order still counted");
}

#[test]
fn a_peer_not_found_yet_stays_in_the_cohort_the_operator_named() {
    let mut s = sched(100, "node02", &["build", "node01"], &["node01", "node02"]);
    s.not_found(1);
    assert_eq!(s.k, 2, "a peer named in the order that has not started yet left the cohort");
    // It has the manifests and part of the release, and does not stage it yet: still in.
    s.set_have(1, Some(bits(100, |i| i < 10)), false);
    assert_eq!(s.k, 2, "a named peer about to stage left the cohort");
    // It has all of it and does not stage it: a source, out.
    s.set_have(1, Some(full(100)), false);
    assert_eq!((s.k, s.rank), (1, 0), "a named peer with the whole release, not staging, still counted");
    // A peer the operator did not name is in the cohort only once it says it stages.
    let mut s = sched(100, "node02", &["build", "node01"], &[]);
    assert_eq!(s.k, 1);
    s.set_have(1, Some(Bitmap::new(100)), true);
    assert_eq!((s.k, s.rank), (2, 1));
    s.left_cohort(1);
    assert_eq!(s.k, 1, "a peer whose staging ended is still in the cohort");
}

#[test]
fn the_stripes_of_named_nodes_that_do_not_stage_are_dealt_out_among_those_that_do() {
    // node02 of a cohort node01..node05 named in the order: node01 and node03 stage, node04 and node05 say they
    // do not know the release (their order was lost). Stripes: i mod 5 = rank.
    let n = 5000;
    let names = ["build", "node01", "node03", "node04", "node05"];
    let mut s = sched(n, "node02", &names, &["node01", "node02", "node03", "node04", "node05"]);
    s.set_have(0, Some(full(n)), false);
    s.set_have(1, Some(Bitmap::new(n)), true);
    s.set_have(2, Some(Bitmap::new(n)), true);
    s.not_found(3);
    s.not_found(4);
    assert_eq!((s.k, s.rank), (5, 1));
    for i in (0..n).filter(|i| i % 5 == 1) {
        assert!(s.complete(i));
    }
    let now = Instant::now();
    // Just absent (they may still be fetching the manifests): only the next stripe, node03's.
    let first = ask_all(&mut s, now);
    assert!(!first.is_empty() && first.iter().all(|i| i % 5 == 2), "{:?}", &first[..first.len().min(8)]);
    // Absent for longer than ORPHAN_AFTER: orphans. Their stripes (3 and 4) dealt in turn to the stagers in
    // rank order (node01, node02, node03): node04's to node01, node05's to node02, from its far end.
    orphaned(&mut s, &[3, 4], now);
    let second = ask_all(&mut s, now);
    let orphan: Vec<u32> = second.iter().copied().filter(|i| i % 5 != 2).collect();
    assert!(!orphan.is_empty(), "node05's stripe not asked");
    assert!(orphan.iter().all(|i| i % 5 == 4), "a stripe not dealt to node02: {:?}", &orphan[..orphan.len().min(8)]);
    assert_eq!(orphan[0], 4999, "from the far end (4999 mod 5 = 4)");
    // node05 turns up and stages: its stripe is its own again.
    s.set_have(4, Some(Bitmap::new(n)), true);
    let third = ask_all(&mut s, now);
    assert!(third.iter().all(|i| i % 5 == 2), "node05's stripe still helped: {:?}", &third[..third.len().min(8)]);
}

#[test]
fn when_novel_chunks_stop_dwindling_any_stripe_is_asked() {
    let n = 300;
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    // node02 got its whole stripe; node01 and node03 (the owners of the rest) never show up.
    for i in (0..n).filter(|i| i % 3 == 1) {
        assert!(s.complete(i));
    }
    let now = Instant::now();
    let at_once: Vec<u32> = drain(&mut s, now).into_iter().flat_map(|b| b.1).collect();
    assert!(at_once.iter().all(|i| i % 3 == 2), "a stripe other than the next one was asked of the seed at once");
    // No change for longer than HELP_AFTER: help with any stripe.
    s.finished(0, false, Duration::from_millis(10), Outcome::Got);
    s.finished(0, false, Duration::from_millis(10), Outcome::Got);
    s.novel_moved = now - HELP_AFTER - Duration::from_millis(1);
    s.dirty.iter_mut().for_each(|d| *d = true);
    let got = drain(&mut s, now);
    assert!(!got.is_empty(), "nothing asked though the owners of the rest are gone");
    assert!(got.iter().all(|b| b.0 == 0 && b.1.iter().all(|i| i % 3 != 1)));
    assert!(got.iter().any(|b| b.1.iter().any(|i| i % 3 == 0)), "node01's stripe not asked");
}

#[test]
fn an_end_game_batch_never_asks_for_a_chunk_twice() {
    // Chunks asked, given back (the batch failed), asked again: the end game must ask each once, or the
    // honest peer answering both would be banned as a liar ("sent twice").
    let n = 8;
    let mut s = beside_two_full_peers(n);
    let t = Instant::now();
    let first = drain(&mut s, t);
    for (p, batch, _) in &first {
        s.requeue(*p, batch);
        s.finished(*p, false, Duration::ZERO, Outcome::Got);
    }
    let second = drain(&mut s, t);
    assert_eq!(second.iter().map(|b| b.1.len()).sum::<usize>(), n as usize, "given back, not asked again");
    for (p, _, e) in &second {
        s.finished(*p, *e, Duration::ZERO, Outcome::Got);
    }
    s.typical = 1.0;
    s.dirty.iter_mut().for_each(|d| *d = true);
    let again = drain(&mut s, t + Duration::from_secs(3));
    assert!(!again.is_empty(), "nothing late asked again");
    for (_, batch, endgame) in &again {
        assert!(*endgame);
        let mut b = batch.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), batch.len(), "a chunk asked twice in one batch: {batch:?}");
    }
}

#[test]
fn the_end_game_asks_again_elsewhere_only_what_is_late_and_only_once() {
    let n = 40;
    let mut s = beside_two_full_peers(n);
    let t = Instant::now();
    let first = drain(&mut s, t);
    let asked: usize = first.iter().map(|b| b.1.len()).sum();
    assert_eq!(asked, n as usize, "every chunk should be in flight");
    assert!(first.iter().all(|b| !b.2));
    // Everything in flight, nothing late yet: nothing to do.
    for (p, _, e) in &first {
        s.finished(*p, *e, Duration::ZERO, Outcome::Got);
    }
    // (finished() counted them done as batches; their chunks are still in flight: nothing came.)
    s.typical = 1.0;
    let soon = t + Duration::from_millis(500);
    assert!(drain(&mut s, soon).is_empty(), "chunks re-asked before they are late");
    // Late (> 2 × 1 s + 0.5 s): each re-asked once, of the other peer.
    let late = t + Duration::from_secs(3);
    assert!(drain(&mut s, late).is_empty(), "time alone wakes nobody: the tick does");
    s.dirty.iter_mut().for_each(|d| *d = true); // the tick
    let again = drain(&mut s, late);
    assert!(!again.is_empty());
    for (p, batch, endgame) in &again {
        assert!(*endgame);
        assert!(batch.len() <= ENDGAME_BATCH);
        for &i in batch {
            assert_ne!(s.at[i as usize], *p as u32, "re-asked of the peer it is in flight at");
        }
    }
    for (p, _, e) in &again {
        s.finished(*p, *e, Duration::ZERO, Outcome::Got);
    }
    s.dirty.iter_mut().for_each(|d| *d = true);
    let more: Vec<u32> = drain(&mut s, late).into_iter().flat_map(|b| b.1).collect();
    let once: Vec<u32> = again.iter().flat_map(|b| b.1.iter().copied()).collect();
    assert!(more.iter().all(|i| !once.contains(i)), "a chunk was asked a third time");
}

#[test]
fn a_failed_batch_is_needed_again_and_its_peer_waits() {
    let n = 50;
    let mut s = sched(n, "node02", &["node01"], &[]);
    s.set_have(0, Some(full(n)), true);
    let t = Instant::now();
    let (p, batch, e) = s.next(t).expect("a batch");
    let needed = s.needed;
    s.requeue(p, &batch);
    s.finished(p, e, Duration::from_millis(10), Outcome::Failed);
    assert_eq!(s.needed, needed + batch.len());
    assert_eq!(s.given_back, batch.len() as u64, "the log counts what is asked again");
    assert!(s.next(t).is_none(), "a peer that just failed is asked again at once");
    assert!(s.next(t + Duration::from_secs(1)).is_some(), "a failed peer is never asked again");
}

#[test]
fn the_tail_trace_says_what_the_last_chunks_wait_for() {
    let n = 100;
    let mut s = beside_two_full_peers(n);
    assert!(s.tail(0).is_none(), "traced only for the last 5% of the chunks");
    for i in 0..96 {
        assert!(s.complete(i));
    }
    let (p, batch, _) = s.next(Instant::now()).expect("a batch");
    let t = s.tail(1).expect("4 of 100 chunks left");
    let name = ["node01", "node02"][p];
    assert!(t.starts_with(&format!("tail: 4 chunks to get, {} not asked", 4 - batch.len())), "{t}");
    assert!(t.contains(&format!("{name:?}: {}", batch.len())), "{t}");
}

#[test]
fn a_banned_peer_is_never_asked_and_counts_for_nothing() {
    let n = 50;
    let mut s = beside_two_full_peers(n);
    assert_eq!(s.counts[0], 2);
    s.finished(0, false, Duration::ZERO, Outcome::Banned);
    assert_eq!(s.counts[0], 1);
    // What it still announces (a bitmap sent again) counts for nothing either.
    s.set_have(0, Some(full(n)), true);
    assert_eq!(s.counts[0], 1, "a banned peer's bitmap counted");
    assert_eq!(s.k, 2, "a banned peer still counts in the cohort");
    let got = drain(&mut s, Instant::now());
    assert!(!got.is_empty() && got.iter().all(|b| b.0 == 1));
}

/// Random bitmaps, peers that fail, lie or answer only in part: driving the scheduler until nothing is missing
/// ends exactly when every chunk has a peer that will give it, and no chunk is ever asked of a peer that lacks it.
#[test]
fn a_random_swarm_completes_iff_every_chunk_has_an_honest_holder() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..200 {
        let n = 1 + (rand() % 300) as u32;
        let np = 1 + (rand() % 6) as usize;
        let names: Vec<String> = (0..np).map(|p| format!("peer{p}")).collect();
        let name_refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut s = sched(n, "me", &name_refs, &[]);
        // Each peer: what it has, whether it lies (banned on its first batch), fails half its batches.
        let peers: Vec<(Bitmap, bool, bool)> = (0..np)
            .map(|_| {
                let dens = rand() % 100;
                (bits(n, |_| rand() % 100 < dens), rand() % 5 == 0, rand() % 3 == 0)
            })
            .collect();
        for (p, (bm, _, _)) in peers.iter().enumerate() {
            s.set_have(p, Some(bm.clone()), rand() % 2 == 0);
        }
        let coverable = (0..n).all(|i| peers.iter().any(|(bm, liar, _)| !liar && bm.get(i)));
        let mut now = Instant::now();
        let mut steps = 0;
        while s.remaining > 0 && steps < 20_000 {
            steps += 1;
            let Some((p, batch, endgame)) = s.next(now) else {
                // Nothing to ask now: time passes (back-offs, help, the end game).
                now += Duration::from_millis(500);
                s.dirty.iter_mut().for_each(|d| *d = true);
                if now.duration_since(s.t0) > Duration::from_secs(3600) {
                    break;
                }
                continue;
            };
            let (bm, liar, flaky) = &peers[p];
            for &i in &batch {
                assert!(s.haves[p].as_ref().is_some_and(|b| b.get(i)), "round {round}: asked {p} for {i}");
                assert!(bm.get(i), "round {round}: asked peer {p} for chunk {i} it never had");
            }
            let outcome = if *liar {
                s.requeue(p, &batch);
                Outcome::Banned
            } else if *flaky && rand() % 2 == 0 {
                s.requeue(p, &batch);
                Outcome::Failed
            } else {
                // Answers part of it; the rest is unanswered.
                let k = (rand() as usize % batch.len()) + 1;
                for &i in &batch[..k] {
                    s.complete(i);
                }
                s.requeue(p, &batch);
                Outcome::Got
            };
            s.finished(p, endgame, Duration::from_millis(5), outcome);
        }
        assert_eq!(s.remaining == 0, coverable, "round {round}: n {n}, {np} peers, {steps} steps");
    }
}

#[test]
fn manifests_pass_through_a_tree_of_bounded_fan_out_rooted_at_their_owner() {
    for k in [2usize, 3, 7, 8, 50, 51, 200] {
        let cohort: Vec<String> = (0..k).map(|i| format!("node{i:03}")).collect();
        for j in [0usize, 1, 5, 37, 199] {
            let mut children = vec![0usize; k];
            let mut deepest = 0;
            for me in &cohort {
                // Follow the chain of relays up to the root: it ends, at the member whose share it is.
                let (mut at, mut depth) = (me.as_str(), 0);
                while let Some(up) = manifest_relay(&cohort, at, j) {
                    assert_ne!(up, at, "k={k} j={j}: {at} asks itself");
                    if depth == 0 {
                        children[cohort.iter().position(|n| n == up).unwrap()] += 1;
                    }
                    at = up;
                    depth += 1;
                    assert!(depth <= k, "k={k} j={j}: the chain from {me} loops");
                }
                assert_eq!(at, cohort[j % k], "k={k} j={j}: {me}'s chain ends elsewhere than the owner");
                deepest = deepest.max(depth);
            }
            assert!(children.iter().all(|&c| c <= MANIFEST_FANOUT), "k={k} j={j}: fan-out {children:?}");
            assert_eq!(children.iter().sum::<usize>(), k - 1, "k={k} j={j}: everyone but the owner asks someone");
            // ⌈log_F K⌉ levels below the owner at most (F = 7: 2 levels for 50, 3 for 200).
            let levels =
                (1usize..).find(|&l| (0..=l as u32).map(|e| MANIFEST_FANOUT.pow(e)).sum::<usize>() >= k).unwrap();
            assert!(deepest <= levels, "k={k} j={j}: {deepest} levels deep, {levels} expected at most");
        }
    }
    assert_eq!(manifest_relay(&["a".into(), "b".into()], "c", 0), None, "not in the cohort: no relay");
}

#[test]
fn once_every_chunk_is_in_the_cohort_the_seed_gives_only_what_no_other_peer_has_or_what_is_very_late() {
    let n = 100;
    let mut s = sched(n, "node03", &["build", "node01"], &[]);
    s.seed[0] = true;
    s.set_have(0, Some(full(n)), false);
    s.set_have(1, Some(full(n)), true);
    assert_eq!(s.novel, 0);
    let t = Instant::now();
    let first = drain(&mut s, t);
    assert!(!first.is_empty());
    assert!(first.iter().all(|b| b.0 == 1), "the seed was asked for chunks node01 has: {first:?}");
    // node01 fails a batch and is not asked for a while: its chunks still do not go to the seed...
    let (p, failed, e) = first[0].clone();
    s.requeue(p, &failed);
    s.finished(p, e, Duration::from_millis(10), Outcome::Failed);
    assert!(drain(&mut s, t).is_empty(), "the seed was asked for chunks node01 has");
    // ...but one node01 says it lacks does (one of this node's stripe: it is novel again).
    let i = *failed.iter().find(|&&i| s.mine(i)).expect("a chunk of node03's stripe");
    s.forget(1, i);
    s.dirty.iter_mut().for_each(|d| *d = true);
    let got = drain(&mut s, t);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1.clone()), (0, vec![i]), "the chunk only the seed has");
    // And once nothing has come for a while (node01 keeps failing), the seed gives the rest too.
    assert!(s.complete(i));
    s.last_progress = t;
    s.not_before[1] = Some(t + Duration::from_secs(60));
    s.dirty.iter_mut().for_each(|d| *d = true);
    let later = t + SEED_SPARED_WHILE + Duration::from_millis(1);
    let rescue = drain(&mut s, later);
    assert!(!rescue.is_empty() && rescue.iter().all(|b| b.0 == 0), "a stalled node never turns to the seed");
    // The end game: what is late at node01 goes to the seed only once it is three times as late.
    let mut s2 = sched(n, "node03", &["build", "node01"], &[]);
    s2.seed[0] = true;
    s2.set_have(0, Some(full(n)), false);
    s2.set_have(1, Some(full(n)), true);
    let all = drain(&mut s2, t);
    assert_eq!(all.iter().map(|b| b.1.len()).sum::<usize>(), n as usize, "every chunk in flight at node01");
    s2.typical = 1.0; // late: 2.5 s; for the seed 7.5 s
    s2.dirty.iter_mut().for_each(|d| *d = true);
    s2.last_progress = t + Duration::from_secs(4); // chunks keep coming
    assert!(drain(&mut s2, t + Duration::from_secs(4)).is_empty(), "the seed re-asked for a chunk node01 has");
    s2.dirty.iter_mut().for_each(|d| *d = true);
    s2.last_progress = t + Duration::from_secs(8);
    let again = drain(&mut s2, t + Duration::from_secs(8));
    assert!(!again.is_empty(), "a very late chunk is never asked of the seed");
    assert!(again.iter().all(|b| b.0 == 0 && b.2));
}

#[test]
fn once_nothing_of_its_own_stripe_is_left_to_ask_a_node_asks_a_source_for_the_next_stripe_from_its_far_end() {
    let n = 3000;
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    assert_eq!((s.k, s.rank), (3, 1));
    let now = Instant::now();
    // Its own stripe (i mod 3 = 1), from its start.
    let (p, first, _) = s.next(now).expect("a batch");
    assert_eq!(p, 0);
    assert_eq!(first[0], 1, "its stripe from its start");
    assert!(first.iter().all(|i| i % 3 == 1) && first.windows(2).all(|w| w[0] < w[1]));
    s.finished(p, false, Duration::from_millis(10), Outcome::Got);
    // Batches of its own stripe until none is left to ask; then the next stripe (node03's, i mod 3 = 2), from
    // its far end; never node01's.
    let help = loop {
        let (p, b, _) = s.next(now).expect("a batch");
        assert_eq!(p, 0);
        s.finished(p, false, Duration::from_millis(10), Outcome::Got);
        if b.iter().all(|i| i % 3 != 1) {
            break b;
        }
        assert!(b.iter().all(|i| i % 3 == 1), "own and other stripes in one batch: {b:?}");
    };
    assert!(help.iter().all(|i| i % 3 == 2), "only the next stripe: {:?}", &help[..help.len().min(8)]);
    assert_eq!(help[0], 2999, "from the far end (2999 mod 3 = 2)");
    assert!(help.windows(2).all(|w| w[0] > w[1]));
    // Chunks of it that node03 (the owner) already has are not asked of the source.
    s.set_have(2, Some(bits(n, |i| i % 3 == 2 && i < 1500)), true);
    s.finished(0, false, Duration::from_millis(10), Outcome::Got);
    let from_seed: Vec<Vec<u32>> = drain(&mut s, now).into_iter().filter(|b| b.0 == 0).map(|b| b.1).collect();
    assert!(!from_seed.is_empty(), "the rest of the next stripe not asked of the seed");
    for b in &from_seed {
        assert!(b.iter().all(|&i| i % 3 == 2 && i >= 1500 && !help.contains(&i)), "{b:?}");
    }
}

#[test]
fn the_source_lane_asks_only_sources_and_only_for_novel_chunks() {
    // node02 of {node01, node02, node03}; the seed has everything, node01 and node03 their own stripes.
    let n = 3000;
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    s.set_have(1, Some(bits(n, |i| i % 3 == 0)), true);
    s.set_have(2, Some(bits(n, |i| i % 3 == 2)), true);
    let now = Instant::now();
    let mut lane = Vec::new();
    while let Some(b) = s.next_in_lane(now) {
        lane.push(b);
    }
    assert_eq!(lane.len(), usize::from(PER_PEER), "the lane stops at the seed's limit: {lane:?}");
    for (p, batch, endgame) in &lane {
        assert_eq!(*p, 0, "the lane asked a cohort peer");
        assert!(!endgame);
        assert!(batch.iter().all(|i| i % 3 == 1), "the lane asked for a chunk a cohort peer has");
    }
    // The cohort peers still have something to give outside the lane.
    assert!(s.next(now).is_some_and(|(p, _, _)| p != 0));
    // Once no chunk is on sources only, the lane asks nothing, though the seed has room.
    for (p, _, _) in lane {
        s.finished(p, false, Duration::from_millis(10), Outcome::Got);
    }
    s.set_have(1, Some(bits(n, |i| i % 3 != 2)), true);
    assert_eq!(s.novel, 0);
    assert!(s.next_in_lane(now).is_none(), "the lane asked for a chunk a cohort peer has");
}

#[test]
fn a_helper_leaves_the_owner_its_share_of_the_next_stripe_while_the_source_turns_asks_away() {
    // node02 (rank 1 of 3) has asked all its own stripe; node03 (the owner of stripe 2) has nothing yet.
    let n = 3000;
    let helper_batch = |busy_answers: usize| {
        let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
        s.set_have(0, Some(full(n)), false);
        s.set_have(2, Some(Bitmap::new(n)), true);
        let now = Instant::now();
        for _ in 0..busy_answers {
            let (p, _, _) = s.next(now).expect("a batch");
            s.finished(p, false, Duration::from_millis(10), Outcome::Busy);
            s.not_before[p] = None;
        }
        loop {
            let (p, b, _) = s.next(now).expect("a batch");
            assert_eq!(p, 0);
            if b.iter().all(|i| i % 3 != 1) {
                assert!(b.iter().all(|i| i % 3 == 2), "only the next stripe: {b:?}");
                return (s.batch_bytes(), b);
            }
            // Answered: the source gave a batch (a busy answer would put the chunks back).
            s.finished(p, false, Duration::from_millis(10), Outcome::Got);
        }
    };
    // With slots to spare at the source (no busy answer), the far end of the whole stripe, as before.
    let (_, b) = helper_batch(0);
    assert_eq!(b[0], 2999);
    // After busy answers (its average of them over `SOURCE_BUSY`), the owner's share is left: the first
    // `OWNER_SHARE_BATCHES` batches of its stripe (1000-byte chunks), from index 2 by steps of 3.
    let (batch_bytes, b) = helper_batch(10);
    let share = (batch_bytes * OWNER_SHARE_BATCHES / 1000) as u32;
    let share_end = 2 + 3 * (share - 1);
    assert!(b.iter().all(|&i| i > share_end), "asked within the owner's share (to {share_end}): {b:?}");
    assert_eq!(b[0], 2999, "still from the far end");
    // Once the owner has the rest, the novel chunks left are its share: the helper asks the source for none.
    let mut s = sched(n, "node02", &["build", "node01", "node03"], &["node01", "node02", "node03"]);
    s.set_have(0, Some(full(n)), false);
    s.set_have(2, Some(bits(n, |i| i % 3 == 2 && i > share_end)), true);
    s.busy[0] = 1.0;
    let now = Instant::now();
    let mut from_seed = Vec::new();
    for _ in 0..100 {
        let got = drain(&mut s, now);
        if got.is_empty() {
            break;
        }
        for (p, b, _) in got {
            s.finished(p, false, Duration::from_millis(10), Outcome::Got);
            s.busy[0] = 1.0;
            if p == 0 {
                from_seed.extend(b);
            }
        }
    }
    assert!(from_seed.iter().any(|i| i % 3 == 1), "its own stripe was not asked");
    assert!(from_seed.iter().all(|i| i % 3 == 1), "asked the owner's share of the source: {from_seed:?}");
}
