//! The virtual CPU: VM-exit handling (one handler per exit reason), interrupt
//! injection and the VMCALL ABI.

pub mod exits;
pub mod hypercall;
pub mod irq;
