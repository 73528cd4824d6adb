//! udpguard: refuses UDP `connect()`s that would give two sockets the same 4-tuple.
pub mod scan;
