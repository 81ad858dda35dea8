//! sluice's hypervisor core: everything that does not touch hardware (capability
//! decoding, VMCS/EPT builders, exit handling, devices, the coalescer, configuration)
//! as plain `no_std` Rust, unit-tested on the host. The bare-metal shim in `boot/`
//! reads MSRs, executes VMX instructions and hands raw values to this crate.
#![cfg_attr(not(test), no_std)]

// The unit tests cover the coalescer's decoder and exit path as well.
#[cfg(all(test, not(feature = "decoder")))]
compile_error!("the hypervisor's tests need the `decoder` feature (on by default)");

pub mod coalesce;
pub mod config;
pub mod elf64;
pub mod ept;
pub mod exits;
pub mod fbcon;
pub mod frames;
pub mod guest_mem;
pub mod guest_paging;
pub mod hypercall;
pub mod i8042;
pub mod iobus;
pub mod irq;
pub mod linux_boot;
pub mod loader;
pub mod machine;
pub mod mtrr;
pub mod payload;
pub mod pic8259;
pub mod pit8254;
pub mod regs;
pub mod rtc;
pub mod stats;
pub mod timebase;
pub mod uart16550;
pub mod vmcs;
pub mod vmcs_setup;
pub mod vmx_caps;
