//! The x86 architecture as the guest sees it, independent of VMX: the register file
//! the exit stub saves and guest memory with the guest's own paging walks.

pub mod guest_mem;
pub mod regs;
