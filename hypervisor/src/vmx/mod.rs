//! VMX: the capabilities, the VMCS and what a VM exit reports, everything written into
//! the VMCS before VMLAUNCH, EPT and the host MTRRs that give EPT its memory types. One
//! file per hardware concept, each citing the Intel SDM section that defines it:
//!
//! - [`caps`]: IA32_FEATURE_CONTROL and the VMX capability MSRs (Vol. 3D Appendix A).
//! - [`vmcs`]: field encodings, the [`vmcs::Vmcs`] access trait and
//!   [`vmcs::SoftVmcs`], VM-instruction errors, the access-rights, interruptibility
//!   and activity encodings of the guest-state area.
//! - [`exit`]: exit reasons and the exit qualifications (I/O, CR access, EPT
//!   violation).
//! - [`event`]: the interruption-information format and event injection.
//! - [`controls`]: VM-execution, VM-exit and VM-entry controls from the capabilities,
//!   CR0/CR4 guest/host masks and read shadows, the I/O and MSR bitmaps.
//! - [`host_state`]: the host-state area.
//! - [`guest_state`]: the guest-state area for each entry mode (real mode, reset
//!   vector, 64-bit mode) and the 64-bit guest's start-up layout; and, after an exit,
//!   the guest's mode, CPL and paging registers as the exit path reads them.
//! - [`checks`]: a software pass over the VM-entry guest-state checks that names the
//!   offending field.
//! - [`ept`], [`mtrr`]: EPT tables and the host MTRRs.
//!
//! Section numbers are those of the SDM editions in which Vol. 3C chapter 25 is
//! "Virtual Machine Control Structures"; older editions number the VMX chapters one
//! lower (24.8.3 there is 25.8.3 here).
//!
//! The modules depend on each other in one direction only: `vmcs` at the bottom;
//! `exit` and `event` on `vmcs`; `controls` on `caps`, `ept` and `vmcs`;
//! `host_state` on `vmcs`; `guest_state` on `controls` (the CR0/CR4 values and
//! shadows); `checks` on `controls` and `guest_state` (the forced CR0 bits and the
//! segment-register fields).
//!
//! # The sequence the kernel follows
//!
//! 1. `VMCLEAR` the VMCS region (revision id written first), then `VMPTRLD` it.
//! 2. [`controls::compute_controls`] (once, from the probed [`caps::VmxCaps`]), fill
//!    the bitmaps ([`controls::fill_io_bitmap`] for both I/O bitmaps,
//!    [`controls::fill_msr_bitmap`] with [`controls::PASSTHROUGH_MSRS`]), then
//!    [`controls::write_controls`].
//! 3. [`host_state::write_host_state`] with the kernel's own CR0/CR3/CR4, selectors,
//!    bases, MSRs, the exit-handler stack (`rsp`) and the VM-exit entry point (`rip`).
//! 4. One of [`guest_state::write_guest_real_mode`],
//!    [`guest_state::write_guest_reset_vector`] or
//!    [`guest_state::write_guest_long_mode`] (for the last,
//!    [`guest_state::LongModeLayout`] says where the GDT, page tables and stack go).
//!    These also write the CR0/CR4 read shadows, so they come after
//!    [`controls::write_controls`] or in any order relative to it: neither overwrites
//!    what the other writes.
//! 5. [`checks::check_guest_state`]: on error, report it and do not launch.
//! 6. Load the guest general-purpose registers and `VMLAUNCH`.

pub mod caps;
pub mod checks;
pub mod controls;
pub mod ept;
pub mod event;
pub mod exit;
#[cfg(test)]
mod fixtures;
pub mod guest_state;
pub mod host_state;
pub mod mtrr;
pub mod vmcs;
