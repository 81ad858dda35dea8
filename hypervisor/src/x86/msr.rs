//! MSR numbers, one definition each (SDM Vol. 4 chapter 2 "Model-Specific Registers
//! (MSRs)", Table 2-2 "IA-32 Architectural MSRs"; the VMX capability MSRs are described
//! in Vol. 3D Appendix A "VMX Capability Reporting Facility").

pub const IA32_TIME_STAMP_COUNTER: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1B;
/// Lock (bit 0), VMX inside SMX (bit 1), VMX outside SMX (bit 2).
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8B;
/// VCNT in bits 7:0, FIX bit 8, WC bit 10 (SDM Vol. 3A 12.11.1 "MTRR Feature
/// Identification").
pub const IA32_MTRRCAP: u32 = 0xFE;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
/// IA32_MTRR_PHYSBASE0; PHYSMASKn is PHYSBASEn + 1, and the pairs follow each other
/// (SDM Vol. 3A 12.11.2.3 "Variable Range MTRRs").
pub const IA32_MTRR_PHYSBASE0: u32 = 0x200;
/// The eleven fixed-range MTRRs in address order (SDM Vol. 3A 12.11.2.2 "Fixed Range
/// MTRRs"): one 64 KiB-granular register for 0-512 KiB, two 16 KiB-granular ones for
/// 512-768 KiB, eight 4 KiB-granular ones for 768 KiB-1 MiB; each holds eight one-byte
/// types.
pub const IA32_MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F,
];
pub const IA32_PAT: u32 = 0x277;
/// Type in bits 7:0, FE (fixed enable) bit 10, E (MTRRs enable) bit 11 (SDM Vol. 3A
/// 12.11.2.1 "IA32_MTRR_DEF_TYPE MSR").
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;

// The VMX capability MSRs (SDM Vol. 3D Appendix A "VMX Capability Reporting Facility").
/// A.1 "Basic VMX Information".
pub const IA32_VMX_BASIC: u32 = 0x480;
/// A.3.1 "Pin-Based VM-Execution Controls".
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// A.3.2 "Primary Processor-Based VM-Execution Controls".
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// A.4 "VM-Exit Controls".
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// A.5 "VM-Entry Controls".
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// A.6 "Miscellaneous Data".
pub const IA32_VMX_MISC: u32 = 0x485;
/// A.7 "VMX-Fixed Bits in CR0".
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// A.8 "VMX-Fixed Bits in CR4".
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// A.9 "VMCS Enumeration".
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48A;
/// A.3.3 "Secondary Processor-Based VM-Execution Controls".
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// A.10 "VPID and EPT Capabilities".
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// The TRUE_* controls (A.3.1, A.3.2, A.4, A.5; A.2 "Reserved Controls and Default
/// Settings"): the default1 bits software may clear.
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
/// A.11 "VM Functions".
pub const IA32_VMX_VMFUNC: u32 = 0x491;

pub const IA32_EFER: u32 = 0xC000_0080;
pub const IA32_STAR: u32 = 0xC000_0081;
pub const IA32_LSTAR: u32 = 0xC000_0082;
pub const IA32_CSTAR: u32 = 0xC000_0083;
pub const IA32_FMASK: u32 = 0xC000_0084;
pub const IA32_FS_BASE: u32 = 0xC000_0100;
pub const IA32_GS_BASE: u32 = 0xC000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
