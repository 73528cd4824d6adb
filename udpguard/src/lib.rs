//! udpguard: refuses UDP `connect()`s that would give two sockets the same 4-tuple.
//!
//! Modules by capability:
//! - [`loader`]: the embedded eBPF object, loaded and attached with aya;
//! - [`attachment`]: one attachment's pins in the bpffs; [`bpffs`]: the pin root and its lock;
//! - [`guard`]: the `attach` / `detach` verbs; [`status`]: the `status` report;
//! - [`cgroup`], [`settings`], [`privilege`]: inputs and their checks;
//! - [`scan`]: finding duplicates that already exist (no BPF);
//! - [`events`]: live conflict events, their holders, flood summaries; [`metrics`]: the
//!   Prometheus exposition of the pinned counters; [`agent`]: the `run` and `events` verbs;
//! - [`sandbox`]: a throw-away cgroup + network namespace for tests, stress tools and benches.
pub mod agent;
pub mod attachment;
pub mod bpffs;
pub mod cgroup;
pub mod claims;
pub mod clock;
pub mod error;
pub mod events;
pub mod fastpath;
pub mod faults;
pub mod guard;
pub mod health;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod privilege;
pub mod routes;
pub mod sandbox;
pub mod scan;
pub mod settings;
pub mod shared_map;
pub mod status;
pub mod sys;
pub mod tables;
pub mod watch;
