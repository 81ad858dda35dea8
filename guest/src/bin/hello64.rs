//! hello64: the default demo guest and the basic 64-bit smoke test.
//!
//! It starts the way a driver does: a UART initialisation burst (seven OUTs), then its
//! first line polled out through the UART byte by byte (LSR, then THR). That is the IO
//! sluice coalesces: with coalescing on, the burst and the line take a handful of VM
//! exits instead of one per IO instruction, which the run's summary shows.
//!
//! It also proves that a 64-bit ELF guest starts at its entry point with a working
//! stack, that both output paths reach the console (the virtual UART and the print
//! hypercall), and that CPUID is virtualised: the hypervisor leaf 0x4000_0000 says
//! "sluicesluice" and leaf 1 hides VMX but reports a hypervisor. Exit status 0 when all
//! holds, 1 otherwise.
#![no_std]
#![no_main]

use core::arch::asm;

use guest::cpu::{cpuid, read_cr3, read_rsp, signature};
use guest::{hypercall, println, uart};

guest::entry!(main);

/// CPUID.1:ECX bit 5: VMX.
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

/// The first line, sent by [`polled_write`] (CR LF as a serial terminal expects).
const FIRST_LINE: &[u8] =
    b"hello from a 64-bit guest (this line came through the virtual UART)\r\n";

/// COM1 set up as a PC serial driver does it (PC16550D datasheet, registers at
/// 0x3f8-0x3ff): interrupts off, DLAB on to reach the divisor latch, divisor 1 (115200
/// baud), 8N1 with DLAB off, FIFOs on and cleared, DTR and RTS. One `asm!` block, so
/// the compiler cannot put anything between the OUTs.
fn uart_init() {
    // SAFETY: port IO only (see guest::port); the clobbered registers are declared.
    unsafe {
        asm!(
            "mov dx, 0x3f9", "xor al, al", "out dx, al", // IER: no interrupts
            "mov dx, 0x3fb", "mov al, 0x80", "out dx, al", // LCR: DLAB
            "mov dx, 0x3f8", "mov al, 1", "out dx, al", // DLL: divisor 1
            "mov dx, 0x3f9", "xor al, al", "out dx, al", // DLM
            "mov dx, 0x3fb", "mov al, 0x03", "out dx, al", // LCR: 8N1
            "mov dx, 0x3fa", "mov al, 0xc7", "out dx, al", // FCR: FIFOs on, cleared, 14-byte trigger
            "mov dx, 0x3fc", "mov al, 0x03", "out dx, al", // MCR: DTR, RTS
            out("al") _, out("dx") _,
            options(nostack, nomem),
        );
    }
}

/// Sends `bytes` the way a polled console driver does: for each byte, read LSR until
/// the transmit holding register is empty (bit 5, at most [`uart::POLL_LIMIT`] reads),
/// then write the byte to THR. One loop in one `asm!` block, reading the bytes from
/// memory.
fn polled_write(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: reads `bytes.len()` bytes from `bytes` and does port IO; the clobbered
    // registers are declared.
    unsafe {
        asm!(
            "2:",
            "mov dx, 0x3fd",
            "mov r8d, {limit:e}",
            "3:",
            "in al, dx",
            "test al, 0x20",
            "jnz 4f",
            "dec r8d",
            "jnz 3b",
            "4:",
            "mov dx, 0x3f8",
            "mov al, byte ptr [rsi]",
            "out dx, al",
            "inc rsi",
            "dec rcx",
            "jnz 2b",
            limit = in(reg) uart::POLL_LIMIT,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            out("al") _, out("dx") _, out("r8") _,
            options(nostack, readonly),
        );
    }
}

fn main() -> u32 {
    uart_init();
    polled_write(FIRST_LINE);
    if !hypercall::print(b"hypercall print works (this line came through VMCALL)\n") {
        uart::write(b"guest: the print hypercall failed\n");
        return 1;
    }
    println!(
        "guest: running at {:#x} on a stack at {:#x}, page tables at {:#x}",
        main as fn() -> u32 as usize,
        read_rsp(),
        read_cr3() & !0xfff
    );

    let mut failures = 0;

    let leaf = cpuid(HYPERVISOR_LEAF, 0);
    let sig = signature(&leaf);
    match core::str::from_utf8(&sig) {
        Ok("sluicesluice") => println!("cpuid: hypervisor sluicesluice"),
        _ => {
            println!(
                "cpuid: hypervisor leaf signature is {:02x?}, expected \"sluicesluice\"",
                sig
            );
            failures += 1;
        }
    }
    if leaf.eax < HYPERVISOR_LEAF + 1 {
        println!(
            "cpuid: hypervisor leaf max is {:#x}, expected >= {:#x}",
            leaf.eax,
            HYPERVISOR_LEAF + 1
        );
        failures += 1;
    }

    let features = cpuid(1, 0);
    if features.ecx & CPUID_1_ECX_VMX == 0 {
        println!("cpuid: vmx hidden");
    } else {
        println!("cpuid: leaf 1 reports VMX (ECX bit 5); the hypervisor should hide it");
        failures += 1;
    }
    if features.ecx & CPUID_1_ECX_HYPERVISOR == 0 {
        println!("cpuid: leaf 1 ECX bit 31 (hypervisor present) is clear");
        failures += 1;
    }

    if failures != 0 {
        println!("guest: {} check(s) failed", failures);
        return 1;
    }
    println!("guest: done");
    0
}
