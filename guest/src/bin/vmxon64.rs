//! vmxon64: a guest that tries to use VMX, which sluice does not offer to guests.
//!
//! VMXON in VMX non-root operation always exits to the hypervisor (SDM Vol. 3C 26.1.2
//! "Instructions That Cause VM Exits Unconditionally"); the #UD check for CR4.VMXE = 0
//! that comes first does not fire, because the guest's real CR4.VMXE is 1 in VMX
//! operation even though the guest reads 0 through the CR4 read shadow. sluice must
//! answer the exit by injecting #UD, exactly as a CPU without VMX would. The guest checks that #UD arrives, and at the VMXON itself.
//! Exit status 0 when it does, 1 otherwise (98 for any other exception).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest::idt::{self, Frame};
use guest::{hypercall, println};

guest::entry!(main);

/// Address of the VMXON instruction, recorded just before it runs.
static VMXON_RIP: AtomicU64 = AtomicU64::new(0);

/// Operand of VMXON: a 4 KiB-aligned VMXON region. Its content is never looked at,
/// since the instruction exits before the CPU reads it.
#[repr(C, align(4096))]
struct Region([u8; 4096]);
static mut VMXON_REGION: Region = Region([0; 4096]);

fn on_exception(frame: &Frame) -> ! {
    if frame.vector != u64::from(idt::UD) {
        idt::unexpected(frame);
    }
    println!("guest: caught #UD");
    let expected = VMXON_RIP.load(Ordering::SeqCst);
    if frame.rip != expected {
        println!(
            "guest: #UD reported at rip {:#x}, but VMXON is at {:#x}",
            frame.rip, expected
        );
        hypercall::exit(1);
    }
    hypercall::exit(0)
}

fn main() -> u32 {
    idt::install(on_exception);
    // VMXON's operand is a memory location holding the VMXON region's physical address
    // (identity paging: the same as its linear address).
    let region_pa: u64 = &raw mut VMXON_REGION as u64;
    println!("guest: executing VMXON (expecting #UD)");
    // SAFETY: VMXON cannot enter VMX operation from a guest; the expected outcome is #UD,
    // handled by `on_exception`, which ends the run.
    unsafe {
        core::arch::asm!(
            // Record where VMXON sits, so the handler can check the injected RIP.
            "lea {tmp}, [rip + 2f]",
            "mov [{slot}], {tmp}",
            "2:",
            "vmxon [{operand}]",
            tmp = out(reg) _,
            slot = in(reg) VMXON_RIP.as_ptr(),
            operand = in(reg) &region_pa,
            options(nostack),
        );
    }
    println!("guest: vmxon did not fault");
    1
}
