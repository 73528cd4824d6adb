//! What the running agent knows about itself, for `/metrics`: its route mirror's heartbeat and
//! namespaces, the links it re-attached after someone else removed them, and the last periodic
//! scan. One per process: the agent's threads write it, the metrics server reads it.
use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

/// The agent's own state (all zero / empty outside `udpguard run`).
#[derive(Debug)]
pub struct AgentState {
    /// True while `udpguard run` runs in this process.
    running: AtomicBool,
    /// `CLOCK_MONOTONIC` ns of the last heartbeat the route mirror wrote (0: none yet).
    heartbeat_ns: AtomicU64,
    /// Network namespaces whose routes the mirror keeps.
    mirrored: AtomicU64,
    /// Links found removed by someone else, and re-attached.
    reattached: AtomicU64,
    /// Links found removed by someone else that could not be re-attached.
    reattach_failed: AtomicU64,
    /// The last periodic scan, if one ran.
    scan: Mutex<Option<ScanSummary>>,
}

/// What the agent's last periodic scan found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanSummary {
    /// `CLOCK_MONOTONIC` ns when it finished.
    pub finished_ns: u64,
    /// How long it took, in seconds.
    pub seconds: f64,
    /// Connected UDP sockets it looked at.
    pub sockets: usize,
    /// Network namespaces it looked in.
    pub namespaces: usize,
    /// Per namespace (its label, "" for the agent's own when only that one is scanned):
    /// duplicate 4-tuples, and sockets that receive nothing because another holds their tuple.
    pub per_netns: Vec<NetnsFindings>,
    /// True when some namespace or socket could not be seen.
    pub partial: bool,
}

/// One namespace's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsFindings {
    pub netns: String,
    pub duplicate_tuples: usize,
    pub starving_sockets: usize,
}

/// The agent's state in this process.
pub static AGENT: AgentState = AgentState {
    running: AtomicBool::new(false),
    heartbeat_ns: AtomicU64::new(0),
    mirrored: AtomicU64::new(0),
    reattached: AtomicU64::new(0),
    reattach_failed: AtomicU64::new(0),
    scan: Mutex::new(None),
};

/// A copy of the agent's state at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentSnapshot {
    /// Seconds since the last heartbeat (None: the mirror never ran).
    pub heartbeat_age: Option<f64>,
    pub mirrored: u64,
    pub reattached: u64,
    pub reattach_failed: u64,
    pub scan: Option<ScanSummary>,
    /// Seconds since the last scan finished.
    pub scan_age: Option<f64>,
}

impl AgentState {
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeat_ns
            .store(crate::clock::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn set_mirrored(&self, namespaces: usize) {
        self.mirrored.store(namespaces as u64, Ordering::Relaxed);
    }

    pub fn reattached(&self, links: u64) {
        self.reattached.fetch_add(links, Ordering::Relaxed);
    }

    pub fn reattach_failed(&self) {
        self.reattach_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_scan(&self, summary: ScanSummary) {
        *self.scan.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }

    /// The state now; None outside the agent (`udpguard metrics` has no agent to report on).
    pub fn snapshot(&self) -> Option<AgentSnapshot> {
        if !self.running.load(Ordering::Relaxed) {
            return None;
        }
        let now = crate::clock::monotonic_ns();
        let age = |ns: u64| (ns > 0).then(|| now.saturating_sub(ns) as f64 / 1e9);
        let scan = self.scan.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(AgentSnapshot {
            heartbeat_age: age(self.heartbeat_ns.load(Ordering::Relaxed)),
            mirrored: self.mirrored.load(Ordering::Relaxed),
            reattached: self.reattached.load(Ordering::Relaxed),
            reattach_failed: self.reattach_failed.load(Ordering::Relaxed),
            scan_age: scan.as_ref().and_then(|s| age(s.finished_ns)),
            scan,
        })
    }
}
