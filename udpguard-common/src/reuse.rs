//! Where a socket's reuse options lie in the kernel's `struct sock`, so the connect programs
//! can read them in one copy instead of two `bpf_getsockopt` calls.
//!
//! `SO_REUSEADDR` and `SO_REUSEPORT` are the bit fields `skc_reuse` (4 bits) and
//! `skc_reuseport` (1 bit) of `struct sock_common`, the first member of `struct sock`; what
//! `getsockopt` answers is exactly whether they are non-zero. Their place is not ABI, so user
//! space reads it from the kernel's BTF at load time and hands it to the programs as a word of
//! the socket's first [`REUSE_READ_BYTES`] bytes and a mask of bits in it. A mask of 0 (no
//! BTF, a layout that does not fit, a kernel locked down for confidentiality) keeps the
//! `bpf_getsockopt` calls: slower, never different.
//! Profiled on a 2-vCPU VM, the two calls of an unshared socket took ~100 ns each; the copy
//! is one `bpf_probe_read_kernel` of 24 bytes.

/// Bytes of the socket the programs copy (from its start: the verifier refuses arithmetic on
/// a socket pointer); both fields must lie in them.
pub const REUSE_READ_BYTES: u32 = 24;

/// A bit field of a kernel struct, as BTF describes it: its offset from the struct's start
/// and its width, in bits (a plain member has the width of its type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitField {
    pub bit_offset: u32,
    pub bits: u32,
}

/// Where the programs find the options: the index of a native-endian `u32` among the first
/// [`REUSE_READ_BYTES`] bytes of the socket, and the bits of both fields in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReuseBits {
    pub word: u32,
    pub mask: u32,
}

impl ReuseBits {
    /// The word and mask holding both fields, given their places in `struct sock` (that is,
    /// `struct sock_common`'s plus the offset of `__sk_common`, which is 0); None when they
    /// do not share one `u32` in the bytes read, or on a big-endian host (BTF counts bits
    /// from the least significant end of a little-endian word only).
    pub const fn of(reuse: BitField, reuseport: BitField) -> Option<ReuseBits> {
        if cfg!(target_endian = "big") {
            return None;
        }
        let word = reuse.bit_offset / 32;
        if reuse.bits == 0
            || reuseport.bits == 0
            || reuse.bits > 8
            || reuseport.bits > 8
            || (reuse.bit_offset + reuse.bits - 1) / 32 != word
            || reuseport.bit_offset / 32 != word
            || (reuseport.bit_offset + reuseport.bits - 1) / 32 != word
            || (word + 1) * 4 > REUSE_READ_BYTES
        {
            return None;
        }
        Some(ReuseBits {
            word,
            mask: field_mask(reuse) | field_mask(reuseport),
        })
    }

    /// Whether a socket whose first bytes, read as words, are `words` has either option on.
    #[inline(always)]
    pub fn shared(self, words: &[u32; (REUSE_READ_BYTES / 4) as usize]) -> bool {
        words[(self.word as usize) % words.len()] & self.mask != 0
    }
}

/// A field's bits in its `u32` word.
const fn field_mask(field: BitField) -> u32 {
    ((1u32 << field.bits) - 1) << (field.bit_offset % 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `struct sock_common` on x86-64 since Linux 3.9: `skc_state` at byte 18, then the bit
    /// fields in byte 19.
    const REUSE: BitField = BitField {
        bit_offset: 152,
        bits: 4,
    };
    const REUSEPORT: BitField = BitField {
        bit_offset: 156,
        bits: 1,
    };

    #[test]
    fn the_x86_64_layout_is_one_word_and_five_bits() {
        let bits = ReuseBits::of(REUSE, REUSEPORT).unwrap();
        assert_eq!(
            bits,
            ReuseBits {
                word: 4,
                mask: 0x1f << 24
            }
        );
        let mut words = [0u32; 6];
        assert!(!bits.shared(&words), "neither option");
        // skc_ipv6only (bit 5) and skc_net_refcnt (bit 6) of the same byte are not options.
        words[4] = 0x60 << 24 | 0x00ff_ffff;
        assert!(!bits.shared(&words), "neighbours' bits");
        words[4] = 1 << 24;
        assert!(bits.shared(&words), "SO_REUSEADDR (SK_CAN_REUSE)");
        words[4] = 2 << 24;
        assert!(bits.shared(&words), "SK_FORCE_REUSE");
        words[4] = 0x10 << 24;
        assert!(bits.shared(&words), "SO_REUSEPORT");
    }

    #[test]
    fn a_layout_that_does_not_fit_keeps_getsockopt() {
        let far = |f: BitField, by: u32| BitField {
            bit_offset: f.bit_offset + by,
            ..f
        };
        assert_eq!(ReuseBits::of(far(REUSE, 64), REUSEPORT), None, "two words");
        assert_eq!(
            ReuseBits::of(far(REUSE, 192), far(REUSEPORT, 192)),
            None,
            "past the bytes read"
        );
        assert_eq!(
            ReuseBits::of(
                BitField {
                    bit_offset: 30,
                    bits: 4
                },
                REUSEPORT
            ),
            None,
            "straddling a word"
        );
        assert_eq!(
            ReuseBits::of(
                REUSE,
                BitField {
                    bits: 0,
                    ..REUSEPORT
                }
            ),
            None
        );
    }
}
