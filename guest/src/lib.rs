//! The tiny runtime shared by sluice's 64-bit test guests.
//!
//! A guest is entered by the hypervisor in IA-32e mode at CPL 0 on identity-mapped page
//! tables, with a valid stack and interrupts off, and has nothing else: no firmware, no
//! allocator, no IDT. This crate gives it the few things every test needs:
//!
//! - [`entry!`]: the `_start` symbol the linker script names as entry point;
//! - [`hypercall`]: VMCALL wrappers for sluice's print and exit functions
//!   (`hypervisor::hypercall` defines the ABI);
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

/// Defines the guest's entry point `_start`, which zeroes `.bss`, calls `$main` (a
/// `fn() -> u32`) and ends the run with the status it returns.
///
/// `_start` is naked because nothing may run before the stack is aligned and `.bss` is
/// cleared. The hypervisor hands over a 16-byte aligned RSP, but a Rust function expects
/// RSP = 8 (mod 16) on entry, as if a return address had just been pushed; the `call`
/// below makes that true. `.bss` is cleared even though the loader zero-fills
/// `p_memsz - p_filesz`, so a guest does not depend on that detail of the loader.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        extern "C" fn __guest_main() -> ! {
            let main: fn() -> u32 = $main;
            $crate::hypercall::exit(main())
        }

        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        #[unsafe(link_section = ".text._start")]
        pub unsafe extern "C" fn _start() -> ! {
            core::arch::naked_asm!(
                "cld",
                "lea rdi, [rip + __bss_start]",
                "lea rcx, [rip + __bss_end]",
                "sub rcx, rdi",
                "xor eax, eax",
                "rep stosb",
                "and rsp, -16",
                "xor ebp, ebp",
                "call {main}",
                "ud2",
                main = sym __guest_main,
            )
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("guest panic: {}", info);
    hypercall::exit(PANIC_STATUS)
}
