//! VMCALL wrappers for sluice's hypercalls (ABI in `hypervisor::vcpu::hypercall`).

use core::arch::asm;

pub use hypervisor::vcpu::hypercall::{COUNTERS, ERROR, EXIT, PRINT, PRINT_MAX};

/// Executes VMCALL with RAX = `function`, RBX = `rbx`, RCX = `rcx`; returns RAX.
///
/// LLVM reserves RBX, so it cannot be an asm operand: the argument travels in a scratch
/// register and is swapped into RBX around the VMCALL, which restores RBX afterwards.
///
/// # Safety
/// The hypervisor reads guest memory named by the arguments; for [`PRINT`] they must
/// describe readable memory (a bad range only yields [`ERROR`], but the caller should
/// not hand out memory it does not mean to publish).
pub unsafe fn vmcall(function: u64, rbx: u64, rcx: u64) -> u64 {
    let mut rax = function;
    // SAFETY: VMCALL at CPL 0 exits to the hypervisor, which returns with only RAX
    // changed (or never returns, for EXIT).
    unsafe {
        asm!(
            "xchg {b}, rbx",
            "vmcall",
            "xchg {b}, rbx",
            b = inout(reg) rbx => _,
            inout("rax") rax,
            inout("rcx") rcx => _,
            options(nostack),
        );
    }
    rax
}

/// Prints `bytes` on sluice's console, in calls of at most [`PRINT_MAX`] bytes.
/// Returns `false` if the hypervisor refused any of them.
pub fn print(bytes: &[u8]) -> bool {
    let mut ok = true;
    for chunk in bytes.chunks(PRINT_MAX as usize) {
        // SAFETY: `chunk` is readable guest memory; identity paging makes its address
        // the guest-linear address the hypervisor translates.
        let rax = unsafe { vmcall(PRINT, chunk.as_ptr() as u64, chunk.len() as u64) };
        ok &= rax == 0;
    }
    ok
}

/// sluice's IO counters so far (hypercall 3), to measure a section of a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub io_exits: u64,
    pub io_instructions: u64,
    pub emulated: u64,
}

impl Counters {
    /// What happened between `self` (earlier) and `later`.
    pub fn delta(self, later: Counters) -> Counters {
        Counters {
            io_exits: later.io_exits.wrapping_sub(self.io_exits),
            io_instructions: later.io_instructions.wrapping_sub(self.io_instructions),
            emulated: later.emulated.wrapping_sub(self.emulated),
        }
    }
}

pub fn counters() -> Counters {
    let (rax, rbx, rcx): (u64, u64, u64);
    // SAFETY: COUNTERS reads no guest memory and returns values in RAX, RBX, RCX; RBX
    // is swapped out and back because LLVM reserves it.
    unsafe {
        asm!(
            "xchg {b}, rbx",
            "vmcall",
            "xchg {b}, rbx",
            b = inout(reg) 0u64 => rbx,
            inout("rax") COUNTERS => rax,
            inout("rcx") 0u64 => rcx,
            options(nostack),
        );
    }
    Counters {
        io_exits: rax,
        io_instructions: rbx,
        emulated: rcx,
    }
}

/// Ends the run with `status`.
pub fn exit(status: u32) -> ! {
    // SAFETY: EXIT reads only registers.
    unsafe { vmcall(EXIT, u64::from(status), 0) };
    // Only a broken hypervisor gets here. Say so on the UART (the one channel left) and
    // stop; with IF = 0 and no NMIs expected, HLT does not return.
    crate::uart::write(b"guest: the exit hypercall returned\n");
    loop {
        // SAFETY: halting has no memory effects.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
