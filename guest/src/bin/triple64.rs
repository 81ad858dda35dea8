//! triple64: a guest that triple-faults on purpose.
//!
//! It loads an IDT with limit 0 and executes UD2. The #UD cannot be delivered (its gate
//! lies beyond the limit), which raises #GP, which cannot be delivered either, so the
//! CPU raises #DF; #DF fails the same way, and a fault while delivering #DF is a triple
//! fault (SDM Vol. 3A 6.15 "Exception and Interrupt Reference", "Interrupt 8—Double
//! Fault Exception (#DF)"). In VMX non-root operation a triple fault is a VM exit;
//! sluice must end the guest and report the triple fault, never reset or crash the
//! host. If execution somehow continues, the guest exits with status 1.
#![no_std]
#![no_main]

use guest::{idt, println};

guest::entry!(main);

fn main() -> u32 {
    println!("guest: about to triple-fault");
    // SAFETY: deliberately makes every exception undeliverable; nothing runs after the
    // UD2 unless the hypervisor mishandles the triple fault.
    unsafe {
        idt::load_raw(0, 0);
        core::arch::asm!("ud2", options(nomem, nostack));
    }
    println!("guest: still running after the triple fault");
    1
}
