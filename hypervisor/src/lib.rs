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
pub mod console;
pub mod devices;
pub mod frames;
pub mod guest;
pub mod payload;
pub mod stats;
pub mod timebase;
pub mod vcpu;
pub mod vmx;
pub mod x86;
