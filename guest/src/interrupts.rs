//! Enabling, disabling and waiting for maskable interrupts.
//!
//! None of these asm blocks is marked `nomem`: interrupt handlers change memory
//! behind the compiler's back, so each one must also be a compiler barrier that
//! forces memory to be read again afterwards.

use core::arch::asm;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// STI: maskable interrupts are delivered from the end of the next instruction on.
pub fn enable() {
    // SAFETY: the guest's IDT routes every vector it can receive (`idt::install`).
    unsafe { asm!("sti", options(nostack)) };
}

/// CLI.
pub fn disable() {
    // SAFETY: masking interrupts has no memory effects of its own.
    unsafe { asm!("cli", options(nostack)) };
}

/// HLT: waits for the next interrupt (with IF = 1) and returns after its handler.
pub fn halt() {
    // SAFETY: halting has no memory effects of its own.
    unsafe { asm!("hlt", options(nostack)) };
}

/// STI immediately followed by HLT. STI blocks interrupts until the end of the
/// instruction after it, so an interrupt that is already pending cannot be taken
/// between the two (its handler running before the HLT would leave the guest halted
/// with the wake-up already spent): the HLT starts and the interrupt then wakes it.
/// Used as `disable(); if !condition() { enable_and_halt() }` this never misses a
/// wake-up. Returns with interrupts enabled.
pub fn enable_and_halt() {
    // SAFETY: as `enable` and `halt`.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Whether RFLAGS.IF is set.
pub fn enabled() -> bool {
    let rflags: u64;
    // SAFETY: reads RFLAGS through the stack (push/pop).
    unsafe { asm!("pushfq", "pop {}", out(reg) rflags, options(nomem, preserves_flags)) };
    rflags & RFLAGS_IF != 0
}
