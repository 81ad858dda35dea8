//! Port I/O, the only way the test guests talk to the devices sluice emulates.
//!
//! These are safe functions: a sluice guest has no device that can reach memory (no DMA,
//! no memory-mapped registers behind these ports), so an `in` or `out` can change device
//! state but never break Rust's memory safety.

use core::arch::asm;

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: see the module comment; no memory is touched.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes `value` to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: see the module comment; no memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}
