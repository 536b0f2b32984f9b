//! The network side: the `qpack/1` protocol over QUIC (`proto/PROTOCOL.md`), the agent every node runs, the
//! swarm that fetches a release from all peers at once, and the operator's client.

pub mod agent;
pub mod client;
pub mod config;
pub mod swarm;
pub mod testbed;
pub mod tls;
pub mod wire;

pub use agent::Agent;
pub use config::{AgentConfig, Cluster, ClusterNode, DesiredFile};
pub use tls::{Identity, Role};
