//! The kernel's own BTF (`/sys/kernel/btf/vmlinux`), read for one thing: where the reuse
//! options lie in `struct sock` (see `udpguard_common::reuse`).
//!
//! Written by hand: aya parses BTF but keeps a struct's members to itself, and the one crate
//! that exposes them (btf-rs) is LGPL, which this MIT/Apache project does not link. What is
//! needed is small: walk the type section once, skipping each kind's trailing records, and read
//! the members of two structs. Anything unexpected reads as "not found", and the programs then
//! keep `bpf_getsockopt`.
use std::path::Path;

use udpguard_common::reuse::{BitField, ReuseBits};

/// The running kernel's BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's lockdown mode (absent without securityfs or the lockdown LSM).
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";

/// Where `struct sock` keeps `SO_REUSEADDR` and `SO_REUSEPORT` on the running kernel, or None
/// (no BTF, a layout the programs cannot read in one copy, or a kernel locked down for
/// confidentiality, which withholds `bpf_probe_read_kernel` from programs: the verifier would
/// refuse them).
pub fn reuse_bits() -> Option<ReuseBits> {
    let lockdown = std::fs::read_to_string(LOCKDOWN).unwrap_or_default();
    if reads_kernel_memory_locked(&lockdown) {
        return None;
    }
    reuse_bits_in(Path::new(VMLINUX))
}

/// True when the lockdown file (`none integrity [confidentiality]`, the mode in brackets) says
/// confidentiality: no program may read kernel memory.
fn reads_kernel_memory_locked(lockdown: &str) -> bool {
    lockdown.contains("[confidentiality]")
}

fn reuse_bits_in(path: &Path) -> Option<ReuseBits> {
    let data = std::fs::read(path).ok()?;
    let btf = Types::parse(&data)?;
    let common = btf.member("sock", "__sk_common")?;
    let reuse = btf.member("sock_common", "skc_reuse")?;
    let reuseport = btf.member("sock_common", "skc_reuseport")?;
    let shift = |f: BitField| BitField {
        bit_offset: f.bit_offset + common.bit_offset,
        ..f
    };
    ReuseBits::of(shift(reuse), shift(reuseport))
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;

/// The type section of a BTF blob and its strings.
struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Types<'a> {
    fn parse(data: &'a [u8]) -> Option<Types<'a>> {
        if u16::from_ne_bytes(data.get(0..2)?.try_into().ok()?) != MAGIC {
            return None; // the other byte order: not the running kernel's
        }
        let header = u32_at(data, 4)? as usize;
        let [type_off, type_len, str_off, str_len] =
            [8, 12, 16, 20].map(|at| u32_at(data, at).map(|v| v as usize));
        let (type_off, type_len) = (header + type_off?, type_len?);
        let (str_off, str_len) = (header + str_off?, str_len?);
        Some(Types {
            types: data.get(type_off..type_off + type_len)?,
            strings: data.get(str_off..str_off + str_len)?,
        })
    }

    fn name(&self, offset: u32) -> Option<&'a [u8]> {
        let rest = self.strings.get(offset as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    }

    /// A member of the struct `strukt` (the first struct of that name): its place, and its
    /// width when it is a bit field (0 for a plain member, or a bit field described the older
    /// way, by its int type: the reuse options then read as not found).
    fn member(&self, strukt: &str, member: &str) -> Option<BitField> {
        let mut at = 0;
        while at < self.types.len() {
            let name_off = u32_at(self.types, at)?;
            let info = u32_at(self.types, at + 4)?;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
            let records = at + 12;
            at = records + trailing_bytes(kind, vlen)?;
            if kind != KIND_STRUCT || self.name(name_off)? != strukt.as_bytes() {
                continue;
            }
            for i in 0..vlen as usize {
                let record = records + i * 12;
                if self.name(u32_at(self.types, record)?)? != member.as_bytes() {
                    continue;
                }
                let offset = u32_at(self.types, record + 8)?;
                return Some(if kind_flag == 1 {
                    BitField {
                        bit_offset: offset & 0xff_ffff,
                        bits: offset >> 24,
                    }
                } else {
                    BitField {
                        bit_offset: offset,
                        bits: 0,
                    }
                });
            }
            return None;
        }
        None
    }
}

/// Bytes of the records that follow a type of `kind` with `vlen` members (BTF's layout,
/// include/uapi/linux/btf.h); None for a kind this reader does not know.
fn trailing_bytes(kind: u32, vlen: u32) -> Option<usize> {
    let vlen = vlen as usize;
    Some(match kind {
        KIND_INT => 4,                // encoding
        2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
        3 => 12,                   // array
        KIND_STRUCT | 5 => vlen * 12, // struct, union: members
        6 => vlen * 8,             // enum
        13 => vlen * 8,            // func_proto: params
        14 | 17 => 4,              // var, decl_tag
        15 => vlen * 12,           // datasec
        19 => vlen * 12,           // enum64
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF gives the options' place (every kernel this project supports
    /// has BTF; without the file the answer must be None, and getsockopt stays).
    #[test]
    fn the_running_kernel_places_the_reuse_options() {
        let bits = reuse_bits();
        if !Path::new(VMLINUX).exists() {
            assert_eq!(bits, None);
            return;
        }
        let bits = bits.expect("struct sock's reuse options in the kernel's BTF");
        if cfg!(target_arch = "x86_64") {
            // skc_reuse:4 and skc_reuseport:1 in byte 19, since Linux 3.9.
            assert_eq!(
                bits,
                ReuseBits {
                    word: 4,
                    mask: 0x1f << 24
                }
            );
        }
    }

    #[test]
    fn a_kernel_locked_down_for_confidentiality_keeps_getsockopt() {
        assert!(reads_kernel_memory_locked(
            "none integrity [confidentiality]\n"
        ));
        assert!(!reads_kernel_memory_locked(
            "none [integrity] confidentiality\n"
        ));
        assert!(!reads_kernel_memory_locked(
            "[none] integrity confidentiality\n"
        ));
        assert!(!reads_kernel_memory_locked(""), "no lockdown file");
    }

    #[test]
    fn not_btf_reads_as_not_found() {
        assert!(Types::parse(b"not BTF at all, not even close").is_none());
        assert!(reuse_bits_in(Path::new("/proc/self/status")).is_none());
        assert!(reuse_bits_in(Path::new("/nonexistent")).is_none());
    }
}
