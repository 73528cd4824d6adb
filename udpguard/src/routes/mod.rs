//! The route mirror: what `udpguard run` keeps in the kernel so wildcard-bound sockets can be
//! checked. For every network namespace a guarded socket connects from, it mirrors which
//! source address the kernel will choose for each destination prefix, and keeps that current
//! from rtnetlink notifications. See `udpguard-ebpf/src/routes.rs` for the kernel side.
mod maps;
mod mirror;
pub mod model;

pub use mirror::RouteMirror;
