//! The contract between udpguard's kernel programs and user space: every type that crosses
//! the boundary, defined once, one module per concept. Each type is `#[repr(C)]` plain data;
//! with the `user` feature its `aya::Pod` impl sits beside it.
//!
//! The rules both sides apply (which claim refuses whom, when a record may be reused, when the
//! index of a namespace is complete) are pure functions here, so they are unit-tested without
//! a kernel and the eBPF code calls the same ones.
#![no_std]

pub mod claims;
pub mod config;
pub mod counters;
pub mod events;
pub mod meta;
pub mod names;
pub mod namespaces;
pub mod ports;
pub mod records;
pub mod reuse;
pub mod routes;
pub mod time;

pub use claims::{CLAIM_WAYS, ClaimBucket, ClaimKey, ClaimSlot, SEEDED_ORDER};
pub use config::{Config, autobind, errno, mode};
pub use counters::{COUNTER_SLOTS, Counter, Counters};
pub use events::{ConflictEvent, action};
pub use meta::AttachMeta;
pub use names::{map_names, program_names};
pub use namespaces::{INDEX_LEASE_SECS, NAMESPACE_SLOTS, NamespaceIndex, namespace_slot};
pub use ports::{PORT_NOTE_WORDS, port_note_bit};
pub use records::{BIRTH_SLOTS, Birth, CLAIM_CLOCK, SocketRecord, birth_slot};
pub use routes::{
    AGENT_TIMEOUT_NS, AgentState, NetnsEvent, ROUTE_MODELED, Route4, Route6, netns_state,
    route_key4, route_key6,
};
