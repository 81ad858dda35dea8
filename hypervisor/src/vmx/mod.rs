//! VMX: the capabilities, the VMCS and what a VM exit reports, everything written into
//! the VMCS before VMLAUNCH, EPT and the host MTRRs that give EPT its memory types. One
//! file per hardware concept, each citing the Intel SDM section that defines it:
//!
//! - [`caps`]: IA32_FEATURE_CONTROL and the VMX capability MSRs (SDM Vol. 3D Appendix A
//!   "VMX Capability Reporting Facility").
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
//! The modules depend on each other in one direction only: `vmcs` at the bottom;
//! `exit` and `event` on `vmcs`; `controls` on `caps`, `ept` and `vmcs`;
//! `host_state` on `vmcs`; `guest_state` on `controls` (the CR0/CR4 values and
//! shadows); `checks` on `controls` and `guest_state` (the forced CR0 bits and the
//! segment-register fields).
//!
//! # The SDM edition every citation follows
//!
//! All Intel SDM citations in sluice, in the code and in the docs, follow one edition:
//! *Intel 64 and IA-32 Architectures Software Developer's Manual, Combined Volumes*,
//! order number 325462-078US (December 2022). A citation gives the volume, the section
//! number in that edition and the section's title as the SDM prints it:
//! `SDM Vol. 3C 25.8.3 "VM-Entry Controls for Event Injection"`; tables and figures
//! the same way (`SDM Vol. 3C Table 28-5 "Exit Qualification for I/O Instructions"`);
//! instruction pages, which have no section number of their own, by their heading
//! (`SDM Vol. 2A "IN—Input from Port"`, `SDM Vol. 3C 31.3 "VMX Instructions"` for
//! VMXON). Where one comment cites several sections of a volume, the volume is named
//! once.
//!
//! The title is what finds a section in another edition. In this one, Vol. 3 has
//! Chapter 7 "User Interrupts", so every Vol. 3 chapter from Task Management on is one
//! higher than in the editions before it: 8 "Task Management", 10 "Processor Management
//! and Initialization", 12 "Memory Cache Control" (MTRRs 12.11, PAT 12.12), 24
//! "Introduction to Virtual Machine Extensions", 25 "Virtual Machine Control
//! Structures", 26 "VMX Non-Root Operation", 27 "VM Entries", 28 "VM Exits", 29 "VMX
//! Support for Address Translation", 31 "VMX Instruction Reference" (so 25.8.3 here is
//! 24.8.3 there, and the VM-entry checks 27.3.1 here are 26.3.1 there); later editions
//! renumber again. Chapters 1-6 of Vol. 3 (2 "System Architecture Overview", 3
//! "Protected-Mode Memory Management", 4 "Paging", 5 "Protection", 6 "Interrupt and
//! Exception Handling"), Vols. 1, 2 and 4, and the Vol. 3D appendices (A "VMX
//! Capability Reporting Facility", B "Field Encoding in VMCS", C "VMX Basic Exit
//! Reasons") keep their numbers.
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
//!    [`crate::guest::long_mode::LongModeLayout`] says where the GDT, page tables and stack go).
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
