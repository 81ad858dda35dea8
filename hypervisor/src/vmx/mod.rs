//! VMX: capabilities, the VMCS and its fields, everything written into it before
//! VMLAUNCH (controls, host and guest state, the software guest-state checks), EPT and
//! the host MTRRs that give EPT its memory types.

pub mod caps;
pub mod ept;
pub mod guest_state;
pub mod mtrr;
pub mod setup;
pub mod vmcs;
