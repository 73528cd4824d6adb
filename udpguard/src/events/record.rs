//! A conflict event as user space tells it: decoded from the kernel's [`ConflictEvent`], with
//! its time on the wall clock and its addresses as socket addresses, and the records `events`
//! prints (one per shown event, one per flood summary).
use std::{mem::size_of, net::SocketAddr, path::PathBuf};

use serde::Serialize;
use udpguard_common::{ConflictEvent, action, claims::words_addr};

use crate::{settings::Errno, sys::socket::fold_v4_mapped};

/// What the guard did with the conflicting `connect()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refused (enforce mode).
    Rejected,
    /// Let through and counted (audit mode): two sockets now share the tuple.
    Audited,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Rejected => "rejected",
            Action::Audited => "audited",
        }
    }
}

/// The family of the 4-tuple (a v4-mapped connect is IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

/// One refused or audited `connect()`, decoded; who holds the tuple is found later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `CLOCK_BOOTTIME` nanoseconds when the kernel program ran.
    pub boot_ns: u64,
    pub action: Action,
    /// The errno the connect failed with; `None` when audited.
    pub errno: Option<u32>,
    /// The caller's process id (thread group id), as the host's pid namespace numbers it.
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// The caller's uid (as the host's user namespace numbers it).
    pub uid: u32,
    pub family: IpFamily,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The caller's socket cookie: the holder is another socket on the tuple.
    pub sock_cookie: u64,
}

impl Conflict {
    /// Decodes one ring buffer record; `None` when it is too short or holds values this build
    /// does not know (an attachment made by another udpguard version).
    pub fn decode(bytes: &[u8]) -> Option<Conflict> {
        if bytes.len() < size_of::<ConflictEvent>() {
            return None;
        }
        // SAFETY: `ConflictEvent` is plain `#[repr(C)]` data, valid for any bit pattern, and
        // `bytes` holds at least one; the read copes with any alignment.
        let event = unsafe { bytes.as_ptr().cast::<ConflictEvent>().read_unaligned() };
        Conflict::from_event(&event)
    }

    /// Converts the kernel's event; `None` for an unknown action or family.
    pub fn from_event(event: &ConflictEvent) -> Option<Conflict> {
        let action = match event.action {
            action::REJECTED => Action::Rejected,
            action::AUDITED => Action::Audited,
            _ => return None,
        };
        let family = match event.family {
            4 => IpFamily::Ipv4,
            6 => IpFamily::Ipv6,
            _ => return None,
        };
        let address = |words: [u32; 4], port: u16| {
            let ip = words_addr(words, event.family).expect("the family is 4 or 6");
            fold_v4_mapped(SocketAddr::new(ip, u16::from_be(port)))
        };
        let comm_len = event.comm.iter().position(|&b| b == 0).unwrap_or(16);
        Some(Conflict {
            boot_ns: event.boot_ns,
            action,
            errno: (action == Action::Rejected).then_some(event.errno),
            pid: (event.pid_tgid >> 32) as u32,
            comm: String::from_utf8_lossy(&event.comm[..comm_len]).into_owned(),
            cgroup_id: event.cgroup_id,
            netns_cookie: event.netns_cookie,
            uid: event.uid_gid as u32,
            family,
            local: address(event.local_addr, event.local_port),
            remote: address(event.peer_addr, event.peer_port),
            sock_cookie: event.sock_cookie,
        })
    }

    /// The errno's symbolic name ("EPERM"), if the connect was refused.
    pub fn errno_name(&self) -> Option<String> {
        self.errno.map(errno_name)
    }
}

/// "EPERM", "EADDRINUSE", "EADDRNOTAVAIL", or "errno N" for anything else.
pub fn errno_name(raw: u32) -> String {
    Errno::from_raw(raw).map_or_else(|| format!("errno {raw}"), |e| e.name().to_owned())
}

/// What an event and a flood summary both say about a conflict (flattened into their JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictFields {
    pub action: Action,
    /// "EPERM" etc.; `null` when audited.
    pub errno: Option<String>,
    /// The caller.
    pub pid: u32,
    pub comm: String,
    /// The caller's uid (its owner's, for the socket it connects).
    pub uid: u32,
    /// The cookie of the network namespace the connect ran in (what tells the same tuple in
    /// two containers apart); the kernel's `bpf_get_netns_cookie`, also `ss -e`'s and the
    /// route mirror's key.
    pub netns_cookie: u64,
    /// The caller's cgroup; `null` when it no longer exists.
    pub cgroup: Option<PathBuf>,
    pub family: IpFamily,
    /// `127.0.0.1:4444`, `[::1]:4444`; v4-mapped addresses as plain IPv4.
    pub local: String,
    pub remote: String,
}

impl ConflictFields {
    pub fn of(conflict: &Conflict, cgroup: Option<PathBuf>) -> Self {
        ConflictFields {
            action: conflict.action,
            errno: conflict.errno_name(),
            pid: conflict.pid,
            comm: conflict.comm.clone(),
            uid: conflict.uid,
            netns_cookie: conflict.netns_cookie,
            cgroup,
            family: conflict.family,
            local: conflict.local.to_string(),
            remote: conflict.remote.to_string(),
        }
    }
}

/// One event as `events` prints it (the `--json` object, field for field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// "conflict" (what tells an event from a "flood_summary").
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    #[serde(flatten)]
    pub conflict: ConflictFields,
    /// Who already holds the tuple; `null` when it could not be found.
    pub holder: Option<Holder>,
}

impl EventRecord {
    pub fn new(conflict: &Conflict, cgroup: Option<PathBuf>, holder: Option<Holder>) -> Self {
        EventRecord {
            kind: "conflict",
            time: rfc3339(wall_clock_ns(conflict.boot_ns)),
            conflict: ConflictFields::of(conflict, cgroup),
            holder,
        }
    }
}

/// "N more like this in the last second": what a flood summary says, with the last
/// suppressed event as the example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SummaryRecord {
    /// "flood_summary".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the summarised window ended (RFC 3339).
    pub time: String,
    /// How many events like this one were not shown.
    pub suppressed: u64,
    /// The window they fell in, in seconds.
    pub seconds: u64,
    /// The last suppressed event.
    #[serde(flatten)]
    pub conflict: ConflictFields,
}

impl SummaryRecord {
    pub fn new(
        last: &Conflict,
        cgroup: Option<PathBuf>,
        suppressed: u64,
        seconds: u64,
        end_boot_ns: u64,
    ) -> Self {
        SummaryRecord {
            kind: "flood_summary",
            time: rfc3339(wall_clock_ns(end_boot_ns)),
            suppressed,
            seconds,
            conflict: ConflictFields::of(last, cgroup),
        }
    }
}

/// Events that were lost, as a `--json` line: `{"type": "lost", "time", "lost", "by"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LostRecord {
    /// "lost".
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When it was noticed (RFC 3339).
    pub time: String,
    /// How many events.
    pub lost: u64,
    /// "ring_buffer" (the kernel's was full; `udpguard_events_lost_total` counts them) or
    /// "reader" (this reader fell behind the one reading the ring).
    pub by: &'static str,
}

impl LostRecord {
    pub fn new(lost: u64, by: &'static str) -> Self {
        LostRecord {
            kind: "lost",
            time: rfc3339(wall_clock_ns(boot_clock_ns())),
            lost,
            by,
        }
    }
}

/// Nanoseconds on `clock`.
fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; both clocks exist on every Linux the
    // guard runs on, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock the kernel stamps events with.
pub fn boot_clock_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// A `CLOCK_BOOTTIME` instant as nanoseconds since the Unix epoch, by today's offset between
/// the two clocks (so it follows clock steps and counts time suspended).
pub fn wall_clock_ns(boot_ns: u64) -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME) + i128::from(boot_ns)
}

/// RFC 3339 in UTC with microseconds: `2026-11-25T20:16:14.123456Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The process holding the tuple, and its socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// The socket's inode (the `N` in `socket:[N]`, as `ss -e` and `/proc/<pid>/fd` show it).
    pub inode: u64,
    /// How many other processes share that socket (inherited across `fork`); not in the JSON.
    #[serde(skip)]
    pub others: usize,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    /// The event the kernel sends for a refused 127.0.0.1:4444 -> 127.0.0.1:1111.
    fn refused_v4() -> ConflictEvent {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"python3");
        ConflictEvent {
            boot_ns: 5,
            pid_tgid: (4321 << 32) | 4322,
            cgroup_id: 77,
            netns_cookie: 9,
            comm,
            local_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            peer_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            local_port: 4444u16.to_be(),
            peer_port: 1111u16.to_be(),
            family: 4,
            action: action::REJECTED,
            errno: 1,
            sock_cookie: 12,
            uid_gid: (1000 << 32) | 1001,
            cause: 0,
            device: 0,
        }
    }

    fn words(ip: Ipv6Addr) -> [u32; 4] {
        // Raw IPv6 words (a v4-mapped address stays mapped here, as the kernel would send it).
        let o = ip.octets();
        [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
    }

    #[test]
    fn decodes_a_refused_ipv4_connect() {
        let c = Conflict::from_event(&refused_v4()).unwrap();
        assert_eq!(c.pid, 4321);
        assert_eq!(c.comm, "python3");
        assert_eq!(c.local.to_string(), "127.0.0.1:4444");
        assert_eq!(c.remote.to_string(), "127.0.0.1:1111");
        assert_eq!(c.family, IpFamily::Ipv4);
        assert_eq!(c.action, Action::Rejected);
        assert_eq!(c.errno_name().as_deref(), Some("EPERM"));
        assert_eq!(c.sock_cookie, 12);
    }

    #[test]
    fn decodes_from_ring_buffer_bytes_and_refuses_short_ones() {
        let event = refused_v4();
        // SAFETY: reading the bytes of a plain-data struct.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const ConflictEvent).cast::<u8>(),
                size_of::<ConflictEvent>(),
            )
        };
        assert_eq!(Conflict::decode(bytes), Conflict::from_event(&event));
        assert_eq!(Conflict::decode(&bytes[1..]), None);
    }

    #[test]
    fn ipv6_in_brackets_and_v4_mapped_as_plain_ipv4() {
        let mut event = refused_v4();
        event.family = 6;
        event.local_addr = words("::1".parse().unwrap());
        event.peer_addr = words("::ffff:127.0.0.2".parse().unwrap());
        let c = Conflict::from_event(&event).unwrap();
        assert_eq!(c.local.to_string(), "[::1]:4444");
        assert_eq!(c.remote.to_string(), "127.0.0.2:1111");
    }

    #[test]
    fn audited_has_no_errno_and_unknown_values_do_not_decode() {
        let mut event = refused_v4();
        event.action = action::AUDITED;
        event.errno = 0;
        assert_eq!(Conflict::from_event(&event).unwrap().errno, None);
        event.action = 7;
        assert_eq!(Conflict::from_event(&event), None);
        let mut event = refused_v4();
        event.family = 5;
        assert_eq!(Conflict::from_event(&event), None);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(1), "EPERM");
        assert_eq!(errno_name(98), "EADDRINUSE");
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(4), "errno 4");
    }

    #[test]
    fn rfc3339_in_utc_with_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_636_572_123_456_789),
            "2026-11-25T19:56:12.123456Z"
        );
    }
}
