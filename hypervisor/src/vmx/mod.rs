//! VMX: capabilities, the VMCS and its fields, what a VM exit reports (exit reasons
//! and qualifications), event injection, everything written into the VMCS before
//! VMLAUNCH (controls, host and guest state, the software guest-state checks), EPT and
//! the host MTRRs that give EPT its memory types.

pub mod caps;
pub mod ept;
pub mod event;
pub mod exit;
pub mod mtrr;
pub mod setup;
pub mod vmcs;
