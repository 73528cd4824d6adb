//! Values the verifier is made to forget. It explores every path through a program, and two
//! paths whose registers differ only in a number it knows (which way of a bucket matched, which
//! family the tuple is) cannot be pruned as one: each such number multiplies the paths that
//! follow (conn6 was 349,043 verified instructions, a second of `attach` on a fast host and
//! most of a minute under emulation). A number read from writable memory is one it does not
//! know, so adding a zero read from a global, then masking, gives the same number at run time
//! and a range to the verifier: the paths after it are verified once.

use core::ptr;

/// Zero, in the program's writable data (nobody writes it): unknown to the verifier.
#[unsafe(no_mangle)]
static mut OPAQUE_ZERO: u64 = 0;

#[inline(always)]
fn zero() -> u64 {
    // SAFETY: a plain read of a global.
    unsafe { ptr::read_volatile(&raw const OPAQUE_ZERO) }
}

/// A way of a claim bucket (0..=7), known to the verifier only by its range.
#[inline(always)]
pub fn way(way: usize) -> usize {
    way.wrapping_add(zero() as usize) & 7
}

/// A flag, known to the verifier only as 0 or 1.
#[inline(always)]
pub fn flag(flag: bool) -> bool {
    (flag as u64).wrapping_add(zero()) & 1 != 0
}

/// A 32-bit number, known to the verifier only as one.
#[inline(always)]
pub fn word(word: u32) -> u32 {
    word.wrapping_add(zero() as u32)
}
