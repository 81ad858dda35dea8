//! hello64: the default demo guest and the basic 64-bit smoke test.
//!
//! Proves that a 64-bit ELF guest starts at its entry point with a working stack, that
//! both output paths reach the console (the virtual UART and the print hypercall), and
//! that CPUID is virtualised: the hypervisor leaf 0x4000_0000 says "sluicesluice" and
//! leaf 1 hides VMX but reports a hypervisor. Exit status 0 when all holds, 1 otherwise.
#![no_std]
#![no_main]

use guest::cpu::{cpuid, read_cr3, read_rsp, signature};
use guest::{hypercall, println, uart};

guest::entry!(main);

/// CPUID.1:ECX bit 5: VMX.
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const HYPERVISOR_LEAF: u32 = 0x4000_0000;

fn main() -> u32 {
    uart::write(b"hello from a 64-bit guest (this line came through the virtual UART)\n");
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
