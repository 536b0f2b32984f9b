//! Integration tests: the built `qpack` binary run on temporary trees and repositories.
//!
//! One test binary (faster to link than one per file), one module per area; `util` holds the helpers (running
//! the binary, sample trees, tree snapshots and comparison, repository listings).

mod util;

mod attack;
mod bad_input;
mod cluster;
mod cluster_attack;
mod corruption;
mod crash;
mod forge;
mod incremental;
mod node;
mod repo_cmds;
mod roundtrip;
mod signing;
mod treegen;
