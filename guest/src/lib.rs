//! The tiny runtime shared by sluice's 64-bit test guests.
//!
//! A guest is entered by the hypervisor in IA-32e mode at CPL 0 on identity-mapped page
//! tables, with a valid stack and interrupts off, and has nothing else: no firmware, no
//! allocator, no IDT. This crate gives it the few things every test needs:
//!
//! - [`entry!`]: the `_start` symbol the linker script names as entry point, which
//!   hands `main` the run's `guest.arg` (RDI at entry) if it takes one;
//! - [`hypercall`]: VMCALL wrappers for sluice's print and exit functions
//!   (`hypervisor::vcpu::hypercall` defines the ABI);
//! - [`uart`]: polled output through the (virtual) COM1 16550;
//! - [`println!`]: formatted lines through the print hypercall;
//! - [`idt`]: an IDT that routes the 32 exception vectors to one Rust handler, so a
//!   guest can observe exceptions the hypervisor injects, and the PIC's vectors
//!   0x20-0x2F to another;
//! - [`port`], [`pic`], [`pit`]: port I/O and the 8259A pair and 8254 timer of the PC;
//! - [`interrupts`]: STI, CLI and HLT;
//! - a panic handler that reports and ends the run with [`PANIC_STATUS`].
#![no_std]

pub mod console;
pub mod cpu;
pub mod hypercall;
pub mod idt;
pub mod interrupts;
pub mod pic;
pub mod pit;
pub mod port;
pub mod uart;

/// Exit status of a guest that panicked.
pub const PANIC_STATUS: u32 = 99;

/// Defines the guest's entry point `_start`, which zeroes `.bss`, calls `$main` and ends
/// the run with the status it returns.
///
/// `$main` is either a `fn() -> u32` or a `fn(arg: u64) -> u32`; the second form gets
/// the run configuration's `guest.arg`, which the hypervisor hands to a 64-bit guest in
/// RDI at its entry point (0 unless configured). [`EntryFn`] tells the two apart, so
/// both are written `entry!(main)`.
///
/// `_start` is naked because nothing may run before the stack is aligned and `.bss` is
/// cleared. It copies RDI into R12 first (the `.bss` clearing uses RDI for
/// `rep stosb`, and R12 is callee-saved, so nothing in between may change it) and
/// passes it on as the first argument of the call. The hypervisor hands over a 16-byte
/// aligned RSP, but a Rust function expects RSP = 8 (mod 16) on entry, as if a return
/// address had just been pushed; the `call` below makes that true. `.bss` is cleared
/// even though the loader zero-fills `p_memsz - p_filesz`, so a guest does not depend
/// on that detail of the loader.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        extern "C" fn __guest_main(arg: u64) -> ! {
            $crate::hypercall::exit($crate::EntryFn::call($main, arg))
        }

        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        #[unsafe(link_section = ".text._start")]
        pub unsafe extern "C" fn _start() -> ! {
            core::arch::naked_asm!(
                "mov r12, rdi",
                "cld",
                "lea rdi, [rip + __bss_start]",
                "lea rcx, [rip + __bss_end]",
                "sub rcx, rdi",
                "xor eax, eax",
                "rep stosb",
                "and rsp, -16",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call {main}",
                "ud2",
                main = sym __guest_main,
            )
        }
    };
}

/// A guest's `main` as [`entry!`] accepts it: `fn() -> u32`, or `fn(u64) -> u32`
/// taking the `guest.arg` the hypervisor passed in RDI. The type parameter only keeps
/// the two implementations apart (a function type implements exactly one of them), so
/// the compiler infers it.
pub trait EntryFn<Form> {
    /// Runs `main`, with `arg` if it takes one; returns the exit status.
    fn call(self, arg: u64) -> u32;
}

impl<F: FnOnce() -> u32> EntryFn<()> for F {
    fn call(self, _arg: u64) -> u32 {
        self()
    }
}

impl<F: FnOnce(u64) -> u32> EntryFn<(u64,)> for F {
    fn call(self, arg: u64) -> u32 {
        self(arg)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("guest panic: {}", info);
    hypercall::exit(PANIC_STATUS)
}
