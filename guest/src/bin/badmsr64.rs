//! badmsr64: a guest that reads an MSR that does not exist.
//!
//! On real hardware RDMSR of an unimplemented MSR raises #GP(0). Under sluice the read
//! exits to the hypervisor (it intercepts MSRs it does not pass through), which must
//! inject #GP(0) rather than read the MSR on the host or crash. The guest checks that
//! #GP arrives, with error code 0, at the RDMSR. Exit status 0 when it does, 1
//! otherwise (98 for any other exception).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest::idt::{self, Frame};
use guest::{hypercall, println};

guest::entry!(main);

/// An MSR index no Intel CPU implements (between the architectural and model-specific
/// ranges in use, SDM Vol. 4 chapter 2 "Model-Specific Registers (MSRs)").
const NONEXISTENT_MSR: u32 = 0x0000_0abc;

/// Address of the RDMSR instruction, recorded just before it runs.
static RDMSR_RIP: AtomicU64 = AtomicU64::new(0);

fn on_exception(frame: &Frame) -> ! {
    if frame.vector != u64::from(idt::GP) {
        idt::unexpected(frame);
    }
    println!("guest: caught #GP");
    let expected = RDMSR_RIP.load(Ordering::SeqCst);
    if frame.rip != expected {
        println!(
            "guest: #GP reported at rip {:#x}, but RDMSR is at {:#x}",
            frame.rip, expected
        );
        hypercall::exit(1);
    }
    if frame.error_code != 0 {
        println!(
            "guest: #GP error code is {:#x}, expected 0",
            frame.error_code
        );
        hypercall::exit(1);
    }
    hypercall::exit(0)
}

fn main() -> u32 {
    idt::install(on_exception);
    println!("guest: reading MSR {:#x} (expecting #GP)", NONEXISTENT_MSR);
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no side effects; the expected outcome is #GP, handled
    // by `on_exception`, which ends the run.
    unsafe {
        core::arch::asm!(
            // Record where RDMSR sits, so the handler can check the injected RIP.
            "lea {tmp}, [rip + 2f]",
            "mov [{slot}], {tmp}",
            "2:",
            "rdmsr",
            tmp = out(reg) _,
            slot = in(reg) RDMSR_RIP.as_ptr(),
            in("ecx") NONEXISTENT_MSR,
            out("eax") lo,
            out("edx") hi,
            options(nostack),
        );
    }
    println!(
        "guest: rdmsr did not fault (read {:#x})",
        (u64::from(hi) << 32) | u64::from(lo)
    );
    1
}
