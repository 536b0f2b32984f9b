//! qpack: deduplicated, content-addressed, peer-to-peer deployment of EUPS install trees.
//!
//! The library beneath the `qpack` binary. `ARCHITECTURE.md` maps the modules; `proto/FORMAT.md` specifies
//! every on-disk encoding.
#![warn(missing_docs)]

pub mod chunk;
pub mod cli;
pub mod export;
pub mod format;
pub mod fsx;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod materialize;
pub mod net;
pub mod node;
pub mod publish;
pub mod scan;
pub mod statcache;
pub mod store;
#[cfg(test)]
mod testvec;
pub mod treegen;
