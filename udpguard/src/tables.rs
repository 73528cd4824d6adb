//! How big an attachment's kernel tables are: the claim table and the socket records, sized
//! when the programs are loaded (arrays cannot grow). The default comes from the host's
//! memory; `--max-sockets` sets it. Whatever still fills up fails open and is counted: a claim
//! that finds no room refuses nobody.
use serde::Serialize;
use udpguard_common::{BIRTH_SLOTS, Birth, CLAIM_WAYS, ClaimBucket, SocketRecord};

/// The share of the host's memory the tables get by default (0.2%, as Cilium sizes its
/// connection maps by a share of memory): 48 MiB on a 24 GiB host.
const MEMORY_SHARE: u64 = 512;
/// Bytes of table per connected socket the default budgets for (a record, and a claim way at
/// half load).
const BYTES_PER_SOCKET: u64 = 128;
/// Bounds on the default: small hosts still index tens of thousands of sockets, and the
/// largest stay under 2^28 buckets (the records' claim references).
const MIN_SOCKETS: u64 = 1 << 14;
const MAX_SOCKETS: u64 = 1 << 24;
/// Claims a bucket (of [`CLAIM_WAYS`] ways) holds on average with the sockets the tables are
/// sized for.
const CLAIMS_PER_BUCKET: u64 = 2;
/// The fewest socket records: they only need to outlive a fresh claim, and cost 24 bytes each.
const MIN_RECORDS: u64 = 1 << 12;

/// The sizes the programs are loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TableSizes {
    /// Connected UDP sockets the tables are sized for: at most two claims a bucket of seven
    /// ways, so that many random tuples fill no bucket and its spill bucket both (see
    /// `a_table_for_n_sockets_evicts_none_of_n`).
    pub sockets: u64,
    /// Buckets of the claim table (a power of two).
    pub claim_buckets: u32,
    /// Places of the socket records (a power of two).
    pub records: u32,
}

impl TableSizes {
    /// Tables for `sockets` connected UDP sockets.
    pub fn for_sockets(sockets: u64) -> TableSizes {
        // Two buckets at the least: a claim spills into the other one.
        let sockets = sockets.clamp(2 * CLAIMS_PER_BUCKET, MAX_SOCKETS);
        // Two claims a bucket at most: at 2.3 a bucket (two sevenths of N, rounded up to a
        // power of two, left that much for some N) 4 of 152,000 claims were evicted.
        let claim_buckets = sockets.div_ceil(CLAIMS_PER_BUCKET).next_power_of_two();
        TableSizes {
            sockets,
            claim_buckets: claim_buckets.max(2) as u32,
            records: sockets.max(MIN_RECORDS).next_power_of_two() as u32,
        }
    }

    /// The sizes of tables loaded with `claim_buckets` and `records`: the sockets they are
    /// sized for, at the most.
    pub fn loaded(claim_buckets: u32, records: u32) -> TableSizes {
        TableSizes {
            sockets: claim_buckets as u64 * CLAIMS_PER_BUCKET,
            claim_buckets,
            records,
        }
    }

    /// The default for a host with `memory` bytes: a share of it.
    pub fn for_memory(memory: u64) -> TableSizes {
        let sockets = (memory / MEMORY_SHARE / BYTES_PER_SOCKET).clamp(MIN_SOCKETS, MAX_SOCKETS);
        // A power of two below the budget: the tables round up.
        TableSizes::for_sockets(1 << (63 - sockets.leading_zeros()))
    }

    /// The default for this host (its `MemTotal`).
    pub fn for_this_host() -> TableSizes {
        TableSizes::for_memory(host_memory().unwrap_or(1 << 30))
    }

    /// Bytes of kernel memory the tables take (the births' fixed array included).
    pub fn bytes(&self) -> u64 {
        self.claim_buckets as u64 * size_of::<ClaimBucket>() as u64
            + self.records as u64 * size_of::<SocketRecord>() as u64
            + (BIRTH_SLOTS as u64 + 1) * size_of::<Birth>() as u64
    }

    /// Claims the table holds in all.
    pub fn claim_ways(&self) -> u64 {
        self.claim_buckets as u64 * CLAIM_WAYS as u64
    }
}

/// The host's memory in bytes, from `/proc/meminfo`.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses `--max-sockets`: a positive count, with an optional k or M suffix.
pub fn parse_max_sockets(text: &str) -> Result<u64, String> {
    let (digits, scale) = match text.strip_suffix(['k', 'K']) {
        Some(digits) => (digits, 1_000),
        None => match text.strip_suffix('M') {
            Some(digits) => (digits, 1_000_000),
            None => (text, 1),
        },
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a count (e.g. 200000, 200k or 2M)"))?;
    match n.checked_mul(scale) {
        Some(n) if (1..=MAX_SOCKETS).contains(&n) => Ok(n),
        _ => Err(format!("must be between 1 and {MAX_SOCKETS}")),
    }
}

/// `n` bytes for people: 48.0 MiB.
pub fn human_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_share_of_memory() {
        let host = TableSizes::for_memory(24 << 30);
        assert_eq!(host.sockets, 1 << 18);
        assert_eq!(host.claim_buckets, 1 << 17);
        assert_eq!(host.records, 1 << 18);
        assert!(host.claim_ways() >= 2 * host.sockets, "half load at most");
        assert_eq!(TableSizes::loaded(host.claim_buckets, host.records), host);
        assert!(
            host.bytes() <= (24 << 30) / MEMORY_SHARE,
            "{}",
            host.bytes()
        );
        let small = TableSizes::for_memory(512 << 20);
        assert_eq!(small.sockets, MIN_SOCKETS);
    }

    #[test]
    fn tables_for_a_given_count_hold_it_at_two_claims_a_bucket() {
        for n in [1, 4, 7, 1000, 150_000, 1 << 20] {
            let t = TableSizes::for_sockets(n);
            assert!(t.claim_buckets.is_power_of_two() && t.records.is_power_of_two());
            assert!(
                t.claim_buckets as u64 * CLAIMS_PER_BUCKET >= n && t.records as u64 >= n,
                "{t:?}"
            );
            assert!(TableSizes::loaded(t.claim_buckets, t.records).sockets >= n);
        }
        assert_eq!(TableSizes::for_sockets(4).claim_buckets, 2, "the smallest");
        assert_eq!(TableSizes::for_sockets(200_000).claim_buckets, 1 << 17);
    }

    /// The tables hold the sockets they are sized for: N random tuples, each in its primary
    /// bucket or else its spill bucket (the programs' two places), evict none, or a few in a
    /// million, even for the N whose bucket count rounds up least.
    #[test]
    fn a_table_for_n_sockets_evicts_none_of_n() {
        use udpguard_common::{
            ClaimKey,
            claims::{primary_bucket, spill_bucket},
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in [150_000, 200_000, 262_144, 262_145] {
            let t = TableSizes::for_sockets(n);
            let mask = t.claim_buckets - 1;
            let mut fill = vec![0u8; t.claim_buckets as usize];
            let (mut spilled, mut evicted) = (0, 0);
            for _ in 0..n {
                let key = ClaimKey {
                    netns_cookie: 4096 + next() % 8,
                    local_addr: [next() as u32, 0, 0, 0],
                    peer_addr: [next() as u32, 0, 0, 0],
                    local_port: next() as u16,
                    peer_port: next() as u16,
                    family: 4,
                };
                let tag = key.tag();
                let (primary, spill) = (primary_bucket(tag, mask), spill_bucket(tag, mask));
                if fill[primary as usize] < CLAIM_WAYS as u8 {
                    fill[primary as usize] += 1;
                } else if fill[spill as usize] < CLAIM_WAYS as u8 {
                    fill[spill as usize] += 1;
                    spilled += 1;
                } else {
                    evicted += 1;
                }
            }
            eprintln!(
                "{n}: {} buckets, {spilled} spilled, {evicted} evicted",
                t.claim_buckets
            );
            assert!(
                evicted * 1_000_000 <= 5 * n,
                "{n}: {evicted} evicted, {spilled} spilled"
            );
        }
    }

    #[test]
    fn max_sockets_parses_counts_with_suffixes() {
        assert_eq!(parse_max_sockets("200000"), Ok(200_000));
        assert_eq!(parse_max_sockets("200k"), Ok(200_000));
        assert_eq!(parse_max_sockets("2M"), Ok(2_000_000));
        assert!(parse_max_sockets("0").is_err());
        assert!(parse_max_sockets("lots").is_err());
        assert!(parse_max_sockets("99999M").is_err());
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let text = "MemTotal:       24683584 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(text), Some(24683584 * 1024));
        assert_eq!(human_bytes(48 << 20), "48.0 MiB");
    }
}
