//! The x86 architecture as the guest sees it, independent of VMX: the bits of the
//! control registers, IA32_EFER and RFLAGS, MSR numbers, exception vectors, canonical
//! addresses, the register file the exit stub saves, and guest memory with the guest's
//! own paging walks.

pub mod arch;
pub mod exception;
pub mod guest_mem;
pub mod msr;
pub mod regs;
pub mod segment;
pub mod width;

pub use arch::{Cr0, Cr4, Efer, Rflags};
pub use width::{update_addr_reg, Width};

/// Whether bits 63:`bits`-1 of `addr` are all equal, i.e. the address is canonical for
/// `bits` implemented linear-address bits (SDM Vol. 1 3.3.7.1 "Canonical Addressing").
pub const fn is_canonical(addr: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}
