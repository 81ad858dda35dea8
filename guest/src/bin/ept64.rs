//! ept64: a guest that touches guest-physical memory outside its RAM.
//!
//! The hypervisor's identity page tables map only guest RAM, so the guest extends them
//! itself: in the page directory for the first GiB it maps the 2 MiB page at
//! guest-physical 0x3fe0_0000 (1022 MiB, outside RAM for any `ram_mib` up to 1022) and
//! writes to it. The guest's own paging allows the write; EPT does not map that address,
//! so the write is an EPT violation, and sluice must end the guest and report it rather
//! than map memory or crash. If the write completes, the guest exits with status 1.
#![no_std]
#![no_main]

use guest::cpu::{invlpg, read_cr3};
use guest::println;

guest::entry!(main);

/// The guest-physical (and, once mapped, linear) address that is touched.
const TARGET: u64 = 0x3fe0_0000;

/// Paging-entry bits (SDM Vol. 3A 4.5 "4-Level Paging and 5-Level Paging", Tables 4-15
/// to 4-18, the PML4E, PDPTE and PDE formats).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// PDPTE/PDE bit 7: the entry maps a page (1 GiB / 2 MiB) instead of a table.
const PAGE_SIZE: u64 = 1 << 7;
/// Bits 51:12: the physical address an entry points at.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The 512 entries of the paging structure at physical `addr`, reachable through the
/// identity mapping of RAM.
fn table(addr: u64) -> *mut u64 {
    (addr & ADDR_MASK) as *mut u64
}

/// Follows a non-leaf entry; `None` (after saying why) if it maps no table.
fn next_table(level: &str, entry: u64) -> Option<*mut u64> {
    if entry & PRESENT == 0 || entry & PAGE_SIZE != 0 {
        println!(
            "guest: {} entry {:#x} does not point at a table",
            level, entry
        );
        return None;
    }
    Some(table(entry))
}

fn main() -> u32 {
    // TARGET lies in the first GiB: PML4[0] -> PDPT[0] -> PD[TARGET / 2 MiB].
    let slot = (TARGET >> 21) as usize;
    // SAFETY: the hypervisor's identity tables live in guest RAM, which is identity
    // mapped; only the one PDE for TARGET is changed, which maps nothing the guest uses.
    unsafe {
        let pml4 = table(read_cr3());
        let Some(pdpt) = next_table("PML4", pml4.read_volatile()) else {
            return 1;
        };
        let Some(pd) = next_table("PDPT", pdpt.read_volatile()) else {
            return 1;
        };
        let pde = pd.add(slot);
        if pde.read_volatile() & PRESENT != 0 {
            println!(
                "guest: {:#x} is already mapped: guest RAM reaches it (use ram_mib < 1023)",
                TARGET
            );
            return 1;
        }
        pde.write_volatile(TARGET | PRESENT | WRITABLE | PAGE_SIZE);
    }
    invlpg(TARGET);
    println!("guest: touching {:#x}", TARGET);
    // SAFETY: the page is mapped (above); the write is meant to fault in EPT.
    unsafe { (TARGET as *mut u64).write_volatile(0x5eed_5eed_5eed_5eed) };
    println!("guest: no EPT violation");
    1
}
