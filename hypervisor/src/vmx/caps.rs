//! VMX capability discovery: decoding of the VMX capability MSRs, adjustment of
//! VM-execution/exit/entry control values, and the hypervisor's minimum requirement check.
//!
//! Sources (Intel SDM, the edition `crate::vmx` pins):
//! - SDM Vol. 3D Appendix A "VMX Capability Reporting Facility": A.1 "Basic VMX
//!   Information" (`IA32_VMX_BASIC`); A.3 "VM-Execution Controls", A.4 "VM-Exit
//!   Controls" and A.5 "VM-Entry Controls", with their allowed-0 (low 32 bits: must
//!   be 1) and allowed-1 (high 32 bits: may be 1) settings, and the `IA32_VMX_TRUE_*`
//!   variants (A.2 "Reserved Controls and Default Settings"); A.6 "Miscellaneous Data"
//!   (`IA32_VMX_MISC`); A.7 "VMX-Fixed Bits in CR0" and A.8 "VMX-Fixed Bits in CR4";
//!   A.10 "VPID and EPT Capabilities" (`IA32_VMX_EPT_VPID_CAP`); A.11 "VM Functions"
//!   (`IA32_VMX_VMFUNC`).
//! - SDM Vol. 3C 25.6 "VM-Execution Control Fields", 25.7 "VM-Exit Control Fields" and
//!   25.8 "VM-Entry Control Fields" for the meaning of each control bit.
//! - CPUID.1:ECX[5] reports VMX; `IA32_FEATURE_CONTROL` (MSR 0x3A) bit 0 = lock,
//!   bit 1 = VMX inside SMX, bit 2 = VMX outside SMX.
//!
//! Everything here is pure logic on raw values: the kernel executes CPUID/RDMSR and
//! passes the results in. No allocation, and no panics on any input.

use core::fmt;

// ---------------------------------------------------------------------------------------
// MSR numbers and architectural bits
// ---------------------------------------------------------------------------------------

use crate::x86::msr::{
    IA32_VMX_BASIC, IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED0,
    IA32_VMX_CR4_FIXED1, IA32_VMX_ENTRY_CTLS, IA32_VMX_EPT_VPID_CAP, IA32_VMX_EXIT_CTLS,
    IA32_VMX_MISC, IA32_VMX_PINBASED_CTLS, IA32_VMX_PROCBASED_CTLS, IA32_VMX_PROCBASED_CTLS2,
    IA32_VMX_TRUE_ENTRY_CTLS, IA32_VMX_TRUE_EXIT_CTLS, IA32_VMX_TRUE_PINBASED_CTLS,
    IA32_VMX_TRUE_PROCBASED_CTLS, IA32_VMX_VMFUNC,
};

/// CPUID.1:ECX bit 5: VMX supported.
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;

/// `IA32_FEATURE_CONTROL` bit 0: lock (the MSR is read-only until reset once set).
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
/// `IA32_FEATURE_CONTROL` bit 1: VMXON allowed inside SMX operation.
pub const FEATURE_CONTROL_VMX_INSIDE_SMX: u64 = 1 << 1;
/// `IA32_FEATURE_CONTROL` bit 2: VMXON allowed outside SMX operation.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// VMCS / EPT memory type encoding: uncacheable.
pub const MEMTYPE_UC: u8 = 0;
/// VMCS / EPT memory type encoding: write-back.
pub const MEMTYPE_WB: u8 = 6;

/// Returns true if CPUID.1:ECX (passed as `ecx`) reports VMX.
pub const fn cpuid_has_vmx(ecx: u32) -> bool {
    ecx & CPUID_1_ECX_VMX != 0
}

#[inline]
const fn bit(value: u64, n: u32) -> bool {
    (value >> n) & 1 != 0
}

#[inline]
const fn field(value: u64, lo: u32, width: u32) -> u64 {
    (value >> lo) & ((1u64 << width) - 1)
}

// ---------------------------------------------------------------------------------------
// Raw MSR values and the rules for which ones may be read
// ---------------------------------------------------------------------------------------

/// The raw VMX capability MSR values as read by the kernel.
///
/// All non-`Option` MSRs exist whenever CPUID.1:ECX.VMX\[bit 5\] = 1 (independently of
/// `IA32_FEATURE_CONTROL`). The `Option` ones exist only under the stated conditions;
/// reading an absent MSR raises #GP, so the kernel must check the predicates
/// ([`has_secondary`], [`secondary_allows_ept_or_vpid`], [`secondary_allows_vmfunc`],
/// [`has_true_controls`]) first, or simply use [`RawVmxMsrs::read_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawVmxMsrs {
    /// `IA32_VMX_BASIC` (0x480). Always present with VMX.
    pub basic: u64,
    /// `IA32_VMX_PINBASED_CTLS` (0x481). Always present with VMX.
    pub pinbased: u64,
    /// `IA32_VMX_PROCBASED_CTLS` (0x482). Always present with VMX.
    pub procbased: u64,
    /// `IA32_VMX_EXIT_CTLS` (0x483). Always present with VMX.
    pub exit: u64,
    /// `IA32_VMX_ENTRY_CTLS` (0x484). Always present with VMX.
    pub entry: u64,
    /// `IA32_VMX_MISC` (0x485). Always present with VMX.
    pub misc: u64,
    /// `IA32_VMX_CR0_FIXED0` (0x486). Always present with VMX.
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1` (0x487). Always present with VMX.
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0` (0x488). Always present with VMX.
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1` (0x489). Always present with VMX.
    pub cr4_fixed1: u64,
    /// `IA32_VMX_PROCBASED_CTLS2` (0x48B). Readable only if `IA32_VMX_PROCBASED_CTLS`
    /// bit 63 is set (allowed-1 of "activate secondary controls"): see [`has_secondary`].
    pub procbased2: Option<u64>,
    /// `IA32_VMX_EPT_VPID_CAP` (0x48C). Readable only if secondary controls exist and
    /// `IA32_VMX_PROCBASED_CTLS2` bit 33 ("enable EPT") or bit 37 ("enable VPID") is set:
    /// see [`secondary_allows_ept_or_vpid`].
    pub ept_vpid_cap: Option<u64>,
    /// `IA32_VMX_TRUE_PINBASED_CTLS` (0x48D). Readable only if `IA32_VMX_BASIC` bit 55
    /// is set: see [`has_true_controls`].
    pub true_pinbased: Option<u64>,
    /// `IA32_VMX_TRUE_PROCBASED_CTLS` (0x48E). Same condition as `true_pinbased`.
    pub true_procbased: Option<u64>,
    /// `IA32_VMX_TRUE_EXIT_CTLS` (0x48F). Same condition as `true_pinbased`.
    pub true_exit: Option<u64>,
    /// `IA32_VMX_TRUE_ENTRY_CTLS` (0x490). Same condition as `true_pinbased`.
    pub true_entry: Option<u64>,
    /// `IA32_VMX_VMFUNC` (0x491). Readable only if secondary controls exist and
    /// `IA32_VMX_PROCBASED_CTLS2` bit 45 ("enable VM functions") is set: see
    /// [`secondary_allows_vmfunc`].
    pub vmfunc: Option<u64>,
}

/// `IA32_VMX_PROCBASED_CTLS` value → whether `IA32_VMX_PROCBASED_CTLS2` exists
/// (allowed-1 of "activate secondary controls", bit 63 of the MSR).
pub const fn has_secondary(procbased: u64) -> bool {
    bit(procbased, 32 + 31)
}

/// `IA32_VMX_BASIC` value → whether the `IA32_VMX_TRUE_*_CTLS` MSRs exist (bit 55).
pub const fn has_true_controls(basic: u64) -> bool {
    bit(basic, 55)
}

/// `IA32_VMX_PROCBASED_CTLS2` value → whether `IA32_VMX_EPT_VPID_CAP` exists
/// (allowed-1 of "enable EPT", bit 33, or of "enable VPID", bit 37).
pub const fn secondary_allows_ept_or_vpid(procbased2: u64) -> bool {
    bit(procbased2, 32 + 1) || bit(procbased2, 32 + 5)
}

/// `IA32_VMX_PROCBASED_CTLS2` value → whether `IA32_VMX_VMFUNC` exists
/// (allowed-1 of "enable VM functions", bit 45).
pub const fn secondary_allows_vmfunc(procbased2: u64) -> bool {
    bit(procbased2, 32 + 13)
}

impl RawVmxMsrs {
    /// Reads every VMX capability MSR through `rdmsr`, asking only for MSRs that exist
    /// according to the rules documented on the fields. The caller must already have
    /// checked CPUID.1:ECX.VMX; otherwise even the unconditional MSRs are absent.
    pub fn read_with(mut rdmsr: impl FnMut(u32) -> u64) -> Self {
        let basic = rdmsr(IA32_VMX_BASIC);
        let procbased = rdmsr(IA32_VMX_PROCBASED_CTLS);
        let procbased2 = if has_secondary(procbased) {
            Some(rdmsr(IA32_VMX_PROCBASED_CTLS2))
        } else {
            None
        };
        let p2 = procbased2.unwrap_or(0);
        let true_controls = has_true_controls(basic);
        let mut opt = |present: bool, msr: u32| if present { Some(rdmsr(msr)) } else { None };
        let ept_vpid_cap = opt(secondary_allows_ept_or_vpid(p2), IA32_VMX_EPT_VPID_CAP);
        let vmfunc = opt(secondary_allows_vmfunc(p2), IA32_VMX_VMFUNC);
        let true_pinbased = opt(true_controls, IA32_VMX_TRUE_PINBASED_CTLS);
        let true_procbased = opt(true_controls, IA32_VMX_TRUE_PROCBASED_CTLS);
        let true_exit = opt(true_controls, IA32_VMX_TRUE_EXIT_CTLS);
        let true_entry = opt(true_controls, IA32_VMX_TRUE_ENTRY_CTLS);
        RawVmxMsrs {
            basic,
            pinbased: rdmsr(IA32_VMX_PINBASED_CTLS),
            procbased,
            exit: rdmsr(IA32_VMX_EXIT_CTLS),
            entry: rdmsr(IA32_VMX_ENTRY_CTLS),
            misc: rdmsr(IA32_VMX_MISC),
            cr0_fixed0: rdmsr(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(IA32_VMX_CR4_FIXED1),
            procbased2,
            ept_vpid_cap,
            true_pinbased,
            true_procbased,
            true_exit,
            true_entry,
            vmfunc,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Allowed settings and control adjustment
// ---------------------------------------------------------------------------------------

/// Allowed settings of a 32-bit VMX control field, decoded from its capability MSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Allowed-0 settings (MSR bits 31:0): a 1 here means the control must be 1.
    pub must_be_one: u32,
    /// Allowed-1 settings (MSR bits 63:32): a 1 here means the control may be 1.
    pub may_be_one: u32,
}

/// Some controls the hypervisor cannot do without are not supported (allowed-1 is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlError {
    /// The required control bits that cannot be set to 1.
    pub missing: u32,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "required VMX controls not supported: bits {:#x}",
            self.missing
        )
    }
}

impl core::error::Error for ControlError {}

impl Allowed {
    /// Decodes a control capability MSR (`IA32_VMX_*_CTLS` or `IA32_VMX_TRUE_*_CTLS`).
    pub const fn from_msr(msr: u64) -> Self {
        Allowed {
            must_be_one: msr as u32,
            may_be_one: (msr >> 32) as u32,
        }
    }

    /// True if every bit of `bits` may be set to 1.
    pub const fn allows(&self, bits: u32) -> bool {
        bits & !self.may_be_one == 0
    }

    /// See [`adjust_controls`].
    pub const fn adjust(&self, desired: u32, required: u32) -> Result<u32, ControlError> {
        let missing = required & !self.may_be_one;
        if missing != 0 {
            return Err(ControlError { missing });
        }
        Ok((desired | required | self.must_be_one) & self.may_be_one)
    }
}

/// Computes the value to write into a VMX control field.
///
/// Returns `(desired | required | must_be_one) & may_be_one`: must-be-one bits are forced
/// on and unsupported optional bits are dropped. `required` is the subset of `desired`
/// the hypervisor cannot live without; if any of those bits is not allowed-1 the result is
/// `ControlError { missing }` listing them. `msr` is the raw capability MSR (use the TRUE
/// variant when it exists, which lets "default1" controls be cleared; SDM Vol. 3D A.2
/// "Reserved Controls and Default Settings").
pub const fn adjust_controls(desired: u32, required: u32, msr: u64) -> Result<u32, ControlError> {
    Allowed::from_msr(msr).adjust(desired, required)
}

// ---------------------------------------------------------------------------------------
// Control bits (SDM Vol. 3C 25.6 "VM-Execution Control Fields", 25.7 "VM-Exit Control
// Fields", 25.8 "VM-Entry Control Fields")
// ---------------------------------------------------------------------------------------

bitflags::bitflags! {
    /// Pin-based VM-execution controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PinBasedControls: u32 {
        const EXTERNAL_INTERRUPT_EXITING = 1 << 0;
        const NMI_EXITING = 1 << 3;
        const VIRTUAL_NMIS = 1 << 5;
        const VMX_PREEMPTION_TIMER = 1 << 6;
        const PROCESS_POSTED_INTERRUPTS = 1 << 7;
    }
}

bitflags::bitflags! {
    /// Primary processor-based VM-execution controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PrimaryControls: u32 {
        const INTERRUPT_WINDOW_EXITING = 1 << 2;
        const USE_TSC_OFFSETTING = 1 << 3;
        const HLT_EXITING = 1 << 7;
        const INVLPG_EXITING = 1 << 9;
        const MWAIT_EXITING = 1 << 10;
        const RDPMC_EXITING = 1 << 11;
        const RDTSC_EXITING = 1 << 12;
        const CR3_LOAD_EXITING = 1 << 15;
        const CR3_STORE_EXITING = 1 << 16;
        const ACTIVATE_TERTIARY_CONTROLS = 1 << 17;
        const CR8_LOAD_EXITING = 1 << 19;
        const CR8_STORE_EXITING = 1 << 20;
        const USE_TPR_SHADOW = 1 << 21;
        const NMI_WINDOW_EXITING = 1 << 22;
        const MOV_DR_EXITING = 1 << 23;
        const UNCONDITIONAL_IO_EXITING = 1 << 24;
        const USE_IO_BITMAPS = 1 << 25;
        const MONITOR_TRAP_FLAG = 1 << 27;
        const USE_MSR_BITMAPS = 1 << 28;
        const MONITOR_EXITING = 1 << 29;
        const PAUSE_EXITING = 1 << 30;
        const ACTIVATE_SECONDARY_CONTROLS = 1 << 31;
    }
}

bitflags::bitflags! {
    /// Secondary processor-based VM-execution controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SecondaryControls: u32 {
        const VIRTUALIZE_APIC_ACCESSES = 1 << 0;
        const ENABLE_EPT = 1 << 1;
        const DESCRIPTOR_TABLE_EXITING = 1 << 2;
        const ENABLE_RDTSCP = 1 << 3;
        const VIRTUALIZE_X2APIC_MODE = 1 << 4;
        const ENABLE_VPID = 1 << 5;
        const WBINVD_EXITING = 1 << 6;
        const UNRESTRICTED_GUEST = 1 << 7;
        const APIC_REGISTER_VIRTUALIZATION = 1 << 8;
        const VIRTUAL_INTERRUPT_DELIVERY = 1 << 9;
        const PAUSE_LOOP_EXITING = 1 << 10;
        const RDRAND_EXITING = 1 << 11;
        const ENABLE_INVPCID = 1 << 12;
        const ENABLE_VM_FUNCTIONS = 1 << 13;
        const VMCS_SHADOWING = 1 << 14;
        const ENABLE_ENCLS_EXITING = 1 << 15;
        const RDSEED_EXITING = 1 << 16;
        const ENABLE_PML = 1 << 17;
        const EPT_VIOLATION_VE = 1 << 18;
        const CONCEAL_VMX_FROM_PT = 1 << 19;
        const ENABLE_XSAVES_XRSTORS = 1 << 20;
        const MODE_BASED_EPT_EXECUTE = 1 << 22;
        const USE_TSC_SCALING = 1 << 25;
    }
}

bitflags::bitflags! {
    /// Primary VM-exit controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ExitControls: u32 {
        const SAVE_DEBUG_CONTROLS = 1 << 2;
        const HOST_ADDRESS_SPACE_SIZE = 1 << 9;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 12;
        const ACK_INTERRUPT_ON_EXIT = 1 << 15;
        const SAVE_PAT = 1 << 18;
        const LOAD_PAT = 1 << 19;
        const SAVE_EFER = 1 << 20;
        const LOAD_EFER = 1 << 21;
        const SAVE_PREEMPTION_TIMER = 1 << 22;
    }
}

bitflags::bitflags! {
    /// VM-entry controls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EntryControls: u32 {
        const LOAD_DEBUG_CONTROLS = 1 << 2;
        const IA32E_MODE_GUEST = 1 << 9;
        const ENTRY_TO_SMM = 1 << 10;
        const DEACTIVATE_DUAL_MONITOR = 1 << 11;
        const LOAD_PERF_GLOBAL_CTRL = 1 << 13;
        const LOAD_PAT = 1 << 14;
        const LOAD_EFER = 1 << 15;
    }
}

// ---------------------------------------------------------------------------------------
// Decoded capabilities
// ---------------------------------------------------------------------------------------

/// Decoded `IA32_FEATURE_CONTROL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureControl {
    /// The raw MSR value.
    pub raw: u64,
    /// Bit 0: the MSR is locked (writes #GP until reset).
    pub locked: bool,
    /// Bit 1: VMXON allowed inside SMX.
    pub vmx_inside_smx: bool,
    /// Bit 2: VMXON allowed outside SMX.
    pub vmx_outside_smx: bool,
}

impl FeatureControl {
    /// Decodes a raw `IA32_FEATURE_CONTROL` value.
    pub const fn from_raw(raw: u64) -> Self {
        FeatureControl {
            raw,
            locked: raw & FEATURE_CONTROL_LOCKED != 0,
            vmx_inside_smx: raw & FEATURE_CONTROL_VMX_INSIDE_SMX != 0,
            vmx_outside_smx: raw & FEATURE_CONTROL_VMX_OUTSIDE_SMX != 0,
        }
    }
}

/// EPT capabilities. All fields are false unless "enable EPT" may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EptCaps {
    /// Secondary control "enable EPT" (bit 1) may be 1.
    pub present: bool,
    /// Cap bit 0: execute-only translations.
    pub execute_only: bool,
    /// Cap bit 6: 4-level page walk.
    pub walk_length_4: bool,
    /// Cap bit 7: 5-level page walk.
    pub walk_length_5: bool,
    /// Cap bit 8: uncacheable EPT paging-structure memory type.
    pub memtype_uc: bool,
    /// Cap bit 14: write-back EPT paging-structure memory type.
    pub memtype_wb: bool,
    /// Cap bit 16: 2-MiB pages (PDE mapping).
    pub pages_2m: bool,
    /// Cap bit 17: 1-GiB pages (PDPTE mapping).
    pub pages_1g: bool,
    /// Cap bit 20: INVEPT supported.
    pub invept: bool,
    /// Cap bit 21: accessed and dirty flags.
    pub accessed_dirty: bool,
    /// Cap bit 25: single-context INVEPT.
    pub invept_single_context: bool,
    /// Cap bit 26: all-context INVEPT.
    pub invept_all_context: bool,
}

/// VPID capabilities. All fields are false unless "enable VPID" may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VpidCaps {
    /// Secondary control "enable VPID" (bit 5) may be 1.
    pub present: bool,
    /// Cap bit 32: INVVPID supported.
    pub invvpid: bool,
    /// Cap bit 40: individual-address INVVPID.
    pub invvpid_individual_address: bool,
    /// Cap bit 41: single-context INVVPID.
    pub invvpid_single_context: bool,
    /// Cap bit 42: all-context INVVPID.
    pub invvpid_all_context: bool,
    /// Cap bit 43: single-context-retaining-globals INVVPID.
    pub invvpid_single_context_retaining_globals: bool,
}

/// Decoded `IA32_VMX_MISC` fields this hypervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MiscCaps {
    /// Bits 4:0: the VMX-preemption timer counts down by 1 each time TSC bit X changes.
    pub preemption_timer_rate: u8,
    /// Bit 5: VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    pub stores_lma: bool,
    /// Bit 6: activity state HLT supported.
    pub activity_hlt: bool,
    /// Bit 7: activity state shutdown supported.
    pub activity_shutdown: bool,
    /// Bit 8: activity state wait-for-SIPI supported.
    pub activity_wait_for_sipi: bool,
    /// Bits 24:16: number of CR3-target values supported.
    pub cr3_target_count: u16,
    /// 512 * (N + 1) with N = bits 27:25: recommended maximum MSR load/store list entries.
    pub max_msr_list_entries: u32,
}

impl MiscCaps {
    /// Decodes a raw `IA32_VMX_MISC` value.
    pub const fn from_raw(misc: u64) -> Self {
        MiscCaps {
            preemption_timer_rate: field(misc, 0, 5) as u8,
            stores_lma: bit(misc, 5),
            activity_hlt: bit(misc, 6),
            activity_shutdown: bit(misc, 7),
            activity_wait_for_sipi: bit(misc, 8),
            cr3_target_count: field(misc, 16, 9) as u16,
            max_msr_list_entries: 512 * (field(misc, 25, 3) as u32 + 1),
        }
    }
}

/// Everything the hypervisor needs to know about the CPU's VMX implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// CPUID.1:ECX.VMX.
    pub cpuid_vmx: bool,
    /// Decoded `IA32_FEATURE_CONTROL`.
    pub feature_control: FeatureControl,
    /// `IA32_VMX_BASIC` bits 30:0.
    pub vmcs_revision: u32,
    /// `IA32_VMX_BASIC` bits 44:32: bytes to allocate for VMXON/VMCS regions.
    pub vmcs_region_size: u16,
    /// `IA32_VMX_BASIC` bits 53:50: memory type for VMCS accesses ([`MEMTYPE_WB`] = 6).
    pub vmcs_memory_type: u8,
    /// `IA32_VMX_BASIC` bit 48: VMXON/VMCS/bitmap addresses limited to 32 bits.
    pub physical_address_32bit: bool,
    /// `IA32_VMX_BASIC` bit 54: VM exits due to INS/OUTS report instruction information.
    pub io_exit_info: bool,
    /// `IA32_VMX_BASIC` bit 55: the `IA32_VMX_TRUE_*` MSRs exist.
    pub true_controls: bool,
    /// Pin-based controls (from the TRUE MSR when it exists).
    pub pinbased: Allowed,
    /// Primary processor-based controls (from the TRUE MSR when it exists).
    pub procbased: Allowed,
    /// Secondary processor-based controls (all zero when they do not exist).
    pub procbased2: Allowed,
    /// VM-exit controls (from the TRUE MSR when it exists).
    pub exit: Allowed,
    /// VM-entry controls (from the TRUE MSR when it exists).
    pub entry: Allowed,
    /// EPT capabilities.
    pub ept: EptCaps,
    /// VPID capabilities.
    pub vpid: VpidCaps,
    /// Secondary control "unrestricted guest" (bit 7) may be 1.
    pub unrestricted_guest: bool,
    /// Pin-based control "activate VMX-preemption timer" (bit 6) may be 1.
    pub preemption_timer: bool,
    /// Decoded `IA32_VMX_MISC`.
    pub misc: MiscCaps,
    /// `IA32_VMX_CR0_FIXED0`: CR0 bits that must be 1 in VMX operation.
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1`: CR0 bits that may be 1 (0 here = must be 0).
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0`: CR4 bits that must be 1 in VMX operation.
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1`: CR4 bits that may be 1.
    pub cr4_fixed1: u64,
    /// Raw `IA32_VMX_EPT_VPID_CAP` (0 when absent).
    pub ept_vpid_cap: u64,
    /// Raw `IA32_VMX_VMFUNC` (0 when absent).
    pub vmfunc: u64,
}

impl VmxCaps {
    /// Decodes the raw MSR values. Inconsistent input (e.g. an optional MSR supplied although
    /// its gating bit is clear) is tolerated: gated values are ignored when their gate is
    /// clear, and missing optional values read as 0.
    pub fn decode(raw: &RawVmxMsrs, cpuid_vmx: bool, feature_control: u64) -> Self {
        let basic = raw.basic;
        let true_controls = has_true_controls(basic);
        let pick = |plain: u64, tru: Option<u64>| match (true_controls, tru) {
            (true, Some(v)) => Allowed::from_msr(v),
            _ => Allowed::from_msr(plain),
        };
        let procbased = pick(raw.procbased, raw.true_procbased);
        let procbased2_raw = if has_secondary(raw.procbased) {
            raw.procbased2.unwrap_or(0)
        } else {
            0
        };
        let procbased2 = Allowed::from_msr(procbased2_raw);
        let cap = if secondary_allows_ept_or_vpid(procbased2_raw) {
            raw.ept_vpid_cap.unwrap_or(0)
        } else {
            0
        };
        let vmfunc = if secondary_allows_vmfunc(procbased2_raw) {
            raw.vmfunc.unwrap_or(0)
        } else {
            0
        };
        let pinbased = pick(raw.pinbased, raw.true_pinbased);

        let ept_present = procbased2.allows(SecondaryControls::ENABLE_EPT.bits());
        let e = |n: u32| ept_present && bit(cap, n);
        let ept = EptCaps {
            present: ept_present,
            execute_only: e(0),
            walk_length_4: e(6),
            walk_length_5: e(7),
            memtype_uc: e(8),
            memtype_wb: e(14),
            pages_2m: e(16),
            pages_1g: e(17),
            invept: e(20),
            accessed_dirty: e(21),
            invept_single_context: e(25),
            invept_all_context: e(26),
        };
        let vpid_present = procbased2.allows(SecondaryControls::ENABLE_VPID.bits());
        let v = |n: u32| vpid_present && bit(cap, n);
        let vpid = VpidCaps {
            present: vpid_present,
            invvpid: v(32),
            invvpid_individual_address: v(40),
            invvpid_single_context: v(41),
            invvpid_all_context: v(42),
            invvpid_single_context_retaining_globals: v(43),
        };

        VmxCaps {
            cpuid_vmx,
            feature_control: FeatureControl::from_raw(feature_control),
            vmcs_revision: field(basic, 0, 31) as u32,
            vmcs_region_size: field(basic, 32, 13) as u16,
            vmcs_memory_type: field(basic, 50, 4) as u8,
            physical_address_32bit: bit(basic, 48),
            io_exit_info: bit(basic, 54),
            true_controls,
            pinbased,
            procbased,
            procbased2,
            exit: pick(raw.exit, raw.true_exit),
            entry: pick(raw.entry, raw.true_entry),
            ept,
            vpid,
            unrestricted_guest: procbased2.allows(SecondaryControls::UNRESTRICTED_GUEST.bits()),
            preemption_timer: pinbased.allows(PinBasedControls::VMX_PREEMPTION_TIMER.bits()),
            misc: MiscCaps::from_raw(raw.misc),
            cr0_fixed0: raw.cr0_fixed0,
            cr0_fixed1: raw.cr0_fixed1,
            cr4_fixed0: raw.cr4_fixed0,
            cr4_fixed1: raw.cr4_fixed1,
            ept_vpid_cap: cap,
            vmfunc,
        }
    }

    /// Full requirement check (platform first, then capabilities); see [`check_platform`]
    /// and [`MissingFeature`] for the priority order.
    pub fn check_requirements(&self) -> Result<FeatureControlAction, MissingFeature> {
        let action = check_platform(self.cpuid_vmx, self.feature_control.raw)?;
        if !self.ept.present {
            return Err(MissingFeature::NoEpt);
        }
        if !self.unrestricted_guest {
            return Err(MissingFeature::NoUnrestrictedGuest);
        }
        if !self.ept.memtype_wb {
            return Err(MissingFeature::NoEptWriteBack);
        }
        if !self.ept.walk_length_4 {
            return Err(MissingFeature::NoEpt4LevelWalk);
        }
        Ok(action)
    }

    /// Writes the human-readable capability report, one `vmx: ` prefixed line per topic.
    pub fn write_report(&self, w: &mut impl fmt::Write) -> fmt::Result {
        writeln!(
            w,
            "vmx: {}",
            if self.cpuid_vmx { "present" } else { "absent" }
        )?;
        writeln!(
            w,
            "vmx: feature-control locked={} vmx-outside-smx={}",
            yn(self.feature_control.locked),
            yn(self.feature_control.vmx_outside_smx)
        )?;
        write!(
            w,
            "vmx: vmcs revision={:#x} size={} memtype=",
            self.vmcs_revision, self.vmcs_region_size
        )?;
        match self.vmcs_memory_type {
            MEMTYPE_WB => w.write_str("wb\n")?,
            MEMTYPE_UC => w.write_str("uc\n")?,
            other => writeln!(w, "unknown({other})")?,
        }
        writeln!(w, "vmx: true-controls={}", yn(self.true_controls))?;

        let ept = &self.ept;
        write!(
            w,
            "vmx: ept={} walk4={} wb={} 2m={} 1g={} ad={} invept=",
            yn(ept.present),
            yn(ept.walk_length_4),
            yn(ept.memtype_wb),
            yn(ept.pages_2m),
            yn(ept.pages_1g),
            yn(ept.accessed_dirty)
        )?;
        write_list(
            w,
            &[
                (ept.invept && ept.invept_single_context, "single"),
                (ept.invept && ept.invept_all_context, "all"),
            ],
        )?;
        writeln!(w, " execute-only={}", yn(ept.execute_only))?;

        let vpid = &self.vpid;
        write!(w, "vmx: vpid={} invvpid=", yn(vpid.present))?;
        let inv = vpid.invvpid;
        write_list(
            w,
            &[
                (inv && vpid.invvpid_individual_address, "individual"),
                (inv && vpid.invvpid_single_context, "single"),
                (inv && vpid.invvpid_all_context, "all"),
                (
                    inv && vpid.invvpid_single_context_retaining_globals,
                    "single-globals",
                ),
            ],
        )?;
        w.write_char('\n')?;

        writeln!(w, "vmx: unrestricted-guest={}", yn(self.unrestricted_guest))?;
        if self.preemption_timer {
            writeln!(
                w,
                "vmx: preemption-timer=yes rate=tsc>>{}",
                self.misc.preemption_timer_rate
            )
        } else {
            writeln!(w, "vmx: preemption-timer=no rate=none")
        }
    }
}

const fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Writes the names whose flag is set, comma-separated, or `none`.
fn write_list(w: &mut impl fmt::Write, items: &[(bool, &str)]) -> fmt::Result {
    let mut any = false;
    for &(set, name) in items {
        if set {
            if any {
                w.write_char(',')?;
            }
            w.write_str(name)?;
            any = true;
        }
    }
    if !any {
        w.write_str("none")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Requirement check
// ---------------------------------------------------------------------------------------

/// What the kernel must do with `IA32_FEATURE_CONTROL` before VMXON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlAction {
    /// Locked with VMX outside SMX enabled: nothing to do.
    AlreadyEnabled,
    /// Unlocked: write `value` (old | lock | VMX-outside-SMX) to `IA32_FEATURE_CONTROL`.
    LockAndEnable {
        /// The value to write.
        value: u64,
    },
}

/// The first (most fundamental) missing feature that prevents this hypervisor from running.
/// Variants are listed in check priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFeature {
    /// CPUID.1:ECX.VMX is clear.
    NoVmx,
    /// `IA32_FEATURE_CONTROL` is locked with VMX outside SMX disabled.
    DisabledByFirmware,
    /// The "enable EPT" secondary control cannot be set (or there are no secondary controls).
    NoEpt,
    /// The "unrestricted guest" secondary control cannot be set.
    NoUnrestrictedGuest,
    /// EPT paging structures cannot use the write-back memory type.
    NoEptWriteBack,
    /// EPT does not support a 4-level page walk.
    NoEpt4LevelWalk,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MissingFeature::NoVmx => "no VMX on this CPU (CPUID.1:ECX.VMX[bit 5] is clear)",
            MissingFeature::DisabledByFirmware => {
                "VMX disabled by firmware (IA32_FEATURE_CONTROL is locked with VMX-outside-SMX off); \
                 enable VT-x in the firmware setup"
            }
            MissingFeature::NoEpt => {
                "no EPT (secondary processor-based control 'enable EPT' cannot be set)"
            }
            MissingFeature::NoUnrestrictedGuest => {
                "no unrestricted guest (secondary processor-based control 'unrestricted guest' \
                 cannot be set)"
            }
            MissingFeature::NoEptWriteBack => {
                "EPT cannot use the write-back memory type (IA32_VMX_EPT_VPID_CAP bit 14 is clear)"
            }
            MissingFeature::NoEpt4LevelWalk => {
                "EPT does not support a 4-level page walk (IA32_VMX_EPT_VPID_CAP bit 6 is clear)"
            }
        })
    }
}

impl core::error::Error for MissingFeature {}

/// The CPU's maker (CPUID leaf 0 vendor string), for advice that differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

impl CpuVendor {
    /// From the 12-byte vendor string (EBX, EDX, ECX of CPUID leaf 0).
    pub fn from_vendor_string(s: &str) -> Self {
        match s {
            "GenuineIntel" => CpuVendor::Intel,
            // Early AMD samples said "AMDisbetter!"; Hygon's Zen derivative has no VMX
            // either, and gets the same advice.
            "AuthenticAMD" | "AMDisbetter!" | "HygonGenuine" => CpuVendor::Amd,
            _ => CpuVendor::Other,
        }
    }
}

impl MissingFeature {
    /// What a user can do about it, in words for someone at the machine (shown on the
    /// screen and the serial console after the error).
    pub const fn hint(self, vendor: CpuVendor) -> &'static str {
        match (self, vendor) {
            (MissingFeature::NoVmx, CpuVendor::Amd) => {
                "sluice needs Intel VMX (VT-x); this is an AMD CPU, whose AMD-V (SVM) sluice \
                 does not support"
            }
            (MissingFeature::NoVmx, _) => {
                "this CPU does not offer VT-x: inside a virtual machine, enable nested \
                 virtualization; on a PC, enable Intel VT-x (Virtualization Technology) in \
                 the firmware setup and power-cycle, or the CPU lacks it"
            }
            (MissingFeature::DisabledByFirmware, _) => {
                "enable Intel VT-x (Virtualization Technology) in the firmware setup, then \
                 power-cycle (the setting takes effect only after a full power-off)"
            }
            (MissingFeature::NoEpt, _)
            | (MissingFeature::NoUnrestrictedGuest, _)
            | (MissingFeature::NoEptWriteBack, _)
            | (MissingFeature::NoEpt4LevelWalk, _) => {
                "this CPU lacks EPT / unrestricted guest: sluice needs a Westmere-or-newer \
                 Intel CPU (2010 or later)"
            }
        }
    }
}

/// Platform part of the requirement check, usable before any VMX MSR is read (with VMX
/// absent, reading them would #GP): checks CPUID and `IA32_FEATURE_CONTROL`.
pub const fn check_platform(
    cpuid_vmx: bool,
    feature_control: u64,
) -> Result<FeatureControlAction, MissingFeature> {
    if !cpuid_vmx {
        return Err(MissingFeature::NoVmx);
    }
    let fc = FeatureControl::from_raw(feature_control);
    if !fc.locked {
        return Ok(FeatureControlAction::LockAndEnable {
            value: feature_control | FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX,
        });
    }
    if !fc.vmx_outside_smx {
        return Err(MissingFeature::DisabledByFirmware);
    }
    Ok(FeatureControlAction::AlreadyEnabled)
}

/// VM-instruction error 15, "VMXON executed in VMX root operation" (SDM Vol. 3C 31.4
/// "VM Instruction Error Numbers").
pub const VMXON_IN_VMX_ROOT: u64 = 15;

/// How a VMXON failed (SDM Vol. 3C 31.2 "Conventions"): CF set, or ZF set with an error
/// number in the current VMCS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxonFailure {
    FailInvalid,
    FailValid(u64),
}

impl fmt::Display for VmxonFailure {
    /// The causes of VMfailInvalid are those of the VMXON operation (SDM Vol. 3C 31.3
    /// "VMX Instructions", VMXON—Enter VMX Operation): a region pointer that is not
    /// 4-KiB aligned or beyond the physical-address width, a wrong VMCS revision
    /// identifier, or VMX root operation without a current VMCS.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmxonFailure::FailInvalid => f.write_str(
                "VMXON failed with VMfailInvalid (the VMXON region is misaligned, beyond the \
                 physical-address width or has the wrong VMCS revision, or the CPU is already \
                 in VMX root operation)",
            ),
            VmxonFailure::FailValid(n) => write!(
                f,
                "VMXON failed with VM-instruction error {n} ({})",
                crate::vmx::vmcs::vm_instruction_error_text(n)
            ),
        }
    }
}

impl core::error::Error for VmxonFailure {}

/// Whether a failed VMXON means firmware left this CPU in VMX root operation, so that
/// VMXOFF followed by a second VMXON takes the CPU over.
///
/// VMXON on a correctly prepared region (4-KiB aligned, inside the physical-address
/// width, with this CPU's VMCS revision) fails in one situation only: the CPU is
/// already in VMX root operation. It then reports "VMXON executed in VMX root
/// operation", as VMfailValid when that operation has a current VMCS and as
/// VMfailInvalid when it has none (SDM Vol. 3C 31.3 "VMX Instructions", the operation
/// of VMXON—Enter VMX Operation). CR4.VMXE is fixed to 1 in VMX operation (SDM Vol. 3C
/// 24.8 "Restrictions on VMX Operation": IA32_VMX_CR4_FIXED0 has bit 13 set), so when
/// CR4.VMXE was clear as firmware handed over, VMX cannot have been left on, and the
/// failure is a bad VMXON region: no retry (VMXOFF would #UD).
pub const fn firmware_left_vmx_on(cr4_vmxe_from_firmware: bool, failure: VmxonFailure) -> bool {
    cr4_vmxe_from_firmware
        && matches!(
            failure,
            VmxonFailure::FailInvalid | VmxonFailure::FailValid(VMXON_IN_VMX_ROOT)
        )
}

/// Raw capability-MSR values of CPU models, shared by the unit tests of every module
/// that consumes `VmxCaps`.
#[cfg(test)]
pub(crate) mod test_cpus {
    use super::RawVmxMsrs;

    pub const SKL_BASIC: u64 = 0x2b | (0x1000 << 32) | (6 << 50) | (1 << 54) | (1 << 55);
    pub const SKL_PROCBASED2: u64 = 0x0053_ffff_0000_0000;
    pub const SKL_EPT_VPID_CAP: u64 = (1 << 0)
        | (1 << 6)
        | (1 << 8)
        | (1 << 14)
        | (1 << 16)
        | (1 << 17)
        | (1 << 20)
        | (1 << 21)
        | (1 << 25)
        | (1 << 26)
        | (1 << 32)
        | (1 << 40)
        | (1 << 41)
        | (1 << 42)
        | (1 << 43);
    /// A Skylake-class CPU (Bochs corei7_skylake_x): TRUE controls, EPT with 2M/1G
    /// pages and A/D, VPID, unrestricted guest, preemption timer.
    pub fn skylake() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: SKL_BASIC,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xfff9_fffe_0401_e172,
            exit: 0x01ff_ffff_0003_6dff,
            entry: 0x0003_ffff_0000_11ff,
            // rate 5, LMA, HLT/shutdown/SIPI, 4 CR3 targets, N = 0.
            misc: 0x7004_c1e5,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27ff,
            procbased2: Some(SKL_PROCBASED2),
            ept_vpid_cap: Some(SKL_EPT_VPID_CAP),
            true_pinbased: Some(0x0000_007f_0000_0016),
            true_procbased: Some(0xfff9_fffe_0400_6172),
            true_exit: Some(0x01ff_ffff_0003_6dfb),
            true_entry: Some(0x0003_ffff_0000_11fb),
            vmfunc: Some(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_cpus::{skylake, SKL_EPT_VPID_CAP, SKL_PROCBASED2};
    use super::*;
    use crate::x86::msr::IA32_FEATURE_CONTROL;

    #[test]
    fn hints_tell_the_user_what_to_do() {
        let amd = CpuVendor::from_vendor_string("AuthenticAMD");
        let intel = CpuVendor::from_vendor_string("GenuineIntel");
        assert_eq!((amd, intel), (CpuVendor::Amd, CpuVendor::Intel));
        assert_eq!(
            CpuVendor::from_vendor_string("GenuineIotel"),
            CpuVendor::Other
        );
        assert!(MissingFeature::NoVmx
            .hint(amd)
            .contains("this is an AMD CPU"));
        assert!(!MissingFeature::NoVmx.hint(intel).contains("AMD"));
        assert!(MissingFeature::DisabledByFirmware
            .hint(intel)
            .starts_with("enable Intel VT-x (Virtualization Technology) in the firmware setup"));
        for m in [
            MissingFeature::NoEpt,
            MissingFeature::NoUnrestrictedGuest,
            MissingFeature::NoEptWriteBack,
            MissingFeature::NoEpt4LevelWalk,
        ] {
            assert!(m.hint(intel).contains("Westmere-or-newer"), "{m:?}");
        }
    }

    // Skylake-class values (revision 0x2b as reported by Bochs corei7_skylake_x).
    // Locked, VMX outside SMX on.
    const FC_ENABLED: u64 = 0x5;

    // Penryn-class: VMX with secondary controls but no EPT, VPID, unrestricted guest,
    // preemption timer or TRUE MSRs.
    fn penryn() -> RawVmxMsrs {
        RawVmxMsrs {
            basic: 0x005a_0400_0000_000d,
            pinbased: 0x0000_003f_0000_0016,
            procbased: 0xf7f9_fffe_0401_e172,
            exit: 0x0003_6fff_0003_6dff,
            entry: 0x0000_3fff_0000_11ff,
            misc: 0x0004_0000 | (1 << 6),
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0000_67ff,
            procbased2: Some(0x0000_0041_0000_0000),
            ept_vpid_cap: None,
            true_pinbased: None,
            true_procbased: None,
            true_exit: None,
            true_entry: None,
            vmfunc: None,
        }
    }

    fn skl_caps() -> VmxCaps {
        VmxCaps::decode(&skylake(), true, FC_ENABLED)
    }

    fn report(c: &VmxCaps) -> String {
        let mut s = String::new();
        c.write_report(&mut s).unwrap();
        s
    }

    #[test]
    fn msr_numbers_match_sdm() {
        assert_eq!(IA32_FEATURE_CONTROL, 0x3a);
        assert_eq!(IA32_VMX_BASIC, 0x480);
        assert_eq!(IA32_VMX_MISC, 0x485);
        assert_eq!(IA32_VMX_CR4_FIXED1, 0x489);
        assert_eq!(IA32_VMX_PROCBASED_CTLS2, 0x48b);
        assert_eq!(IA32_VMX_EPT_VPID_CAP, 0x48c);
        assert_eq!(IA32_VMX_TRUE_ENTRY_CTLS, 0x490);
        assert_eq!(IA32_VMX_VMFUNC, 0x491);
    }

    #[test]
    fn control_bits_match_sdm() {
        assert_eq!(PinBasedControls::VMX_PREEMPTION_TIMER.bits(), 0x40);
        assert_eq!(
            PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits(),
            0x8000_0000
        );
        assert_eq!(PrimaryControls::USE_MSR_BITMAPS.bits(), 1 << 28);
        assert_eq!(PrimaryControls::UNCONDITIONAL_IO_EXITING.bits(), 1 << 24);
        assert_eq!(SecondaryControls::ENABLE_EPT.bits(), 0x2);
        assert_eq!(SecondaryControls::UNRESTRICTED_GUEST.bits(), 0x80);
        assert_eq!(SecondaryControls::ENABLE_PML.bits(), 1 << 17);
        assert_eq!(SecondaryControls::ENABLE_XSAVES_XRSTORS.bits(), 1 << 20);
        assert_eq!(ExitControls::HOST_ADDRESS_SPACE_SIZE.bits(), 0x200);
        assert_eq!(ExitControls::ACK_INTERRUPT_ON_EXIT.bits(), 0x8000);
        assert_eq!(ExitControls::LOAD_EFER.bits(), 1 << 21);
        assert_eq!(EntryControls::IA32E_MODE_GUEST.bits(), 0x200);
        assert_eq!(EntryControls::LOAD_EFER.bits(), 0x8000);
    }

    #[test]
    fn cpuid_vmx_bit_is_ecx_bit_5() {
        assert!(cpuid_has_vmx(0x20));
        assert!(!cpuid_has_vmx(!0x20));
    }

    #[test]
    fn gating_predicates_follow_msr_bits() {
        assert!(has_secondary(1 << 63));
        assert!(!has_secondary(0x7fff_ffff_ffff_ffff));
        assert!(has_true_controls(1 << 55));
        assert!(!has_true_controls(!(1 << 55)));
        assert!(secondary_allows_ept_or_vpid(1 << 33));
        assert!(secondary_allows_ept_or_vpid(1 << 37));
        assert!(!secondary_allows_ept_or_vpid(0x0000_0041_ffff_ffff));
        assert!(secondary_allows_vmfunc(1 << 45));
        assert!(!secondary_allows_vmfunc(!(1 << 45)));
    }

    #[test]
    fn read_with_skips_absent_msrs() {
        let p = penryn();
        let raw = RawVmxMsrs::read_with(|msr| match msr {
            IA32_VMX_BASIC => p.basic,
            IA32_VMX_PINBASED_CTLS => p.pinbased,
            IA32_VMX_PROCBASED_CTLS => p.procbased,
            IA32_VMX_EXIT_CTLS => p.exit,
            IA32_VMX_ENTRY_CTLS => p.entry,
            IA32_VMX_MISC => p.misc,
            IA32_VMX_CR0_FIXED0 => p.cr0_fixed0,
            IA32_VMX_CR0_FIXED1 => p.cr0_fixed1,
            IA32_VMX_CR4_FIXED0 => p.cr4_fixed0,
            IA32_VMX_CR4_FIXED1 => p.cr4_fixed1,
            IA32_VMX_PROCBASED_CTLS2 => p.procbased2.unwrap(),
            other => panic!("read of absent MSR {other:#x}"),
        });
        assert_eq!(raw, p);
    }

    #[test]
    fn read_with_reads_all_present_msrs() {
        let s = skylake();
        let raw = RawVmxMsrs::read_with(|msr| match msr {
            IA32_VMX_BASIC => s.basic,
            IA32_VMX_PINBASED_CTLS => s.pinbased,
            IA32_VMX_PROCBASED_CTLS => s.procbased,
            IA32_VMX_EXIT_CTLS => s.exit,
            IA32_VMX_ENTRY_CTLS => s.entry,
            IA32_VMX_MISC => s.misc,
            IA32_VMX_CR0_FIXED0 => s.cr0_fixed0,
            IA32_VMX_CR0_FIXED1 => s.cr0_fixed1,
            IA32_VMX_CR4_FIXED0 => s.cr4_fixed0,
            IA32_VMX_CR4_FIXED1 => s.cr4_fixed1,
            IA32_VMX_PROCBASED_CTLS2 => s.procbased2.unwrap(),
            IA32_VMX_EPT_VPID_CAP => s.ept_vpid_cap.unwrap(),
            IA32_VMX_TRUE_PINBASED_CTLS => s.true_pinbased.unwrap(),
            IA32_VMX_TRUE_PROCBASED_CTLS => s.true_procbased.unwrap(),
            IA32_VMX_TRUE_EXIT_CTLS => s.true_exit.unwrap(),
            IA32_VMX_TRUE_ENTRY_CTLS => s.true_entry.unwrap(),
            IA32_VMX_VMFUNC => s.vmfunc.unwrap(),
            other => panic!("unexpected MSR {other:#x}"),
        });
        assert_eq!(raw, s);
    }

    #[test]
    fn read_with_never_reads_secondary_without_bit_63() {
        let raw = RawVmxMsrs::read_with(|msr| match msr {
            IA32_VMX_PROCBASED_CTLS => 0x7fff_ffff_0000_0000,
            IA32_VMX_PROCBASED_CTLS2
            | IA32_VMX_EPT_VPID_CAP
            | IA32_VMX_VMFUNC
            | IA32_VMX_TRUE_PINBASED_CTLS
            | IA32_VMX_TRUE_PROCBASED_CTLS
            | IA32_VMX_TRUE_EXIT_CTLS
            | IA32_VMX_TRUE_ENTRY_CTLS => panic!("read of absent MSR {msr:#x}"),
            _ => 0,
        });
        assert_eq!(raw.procbased2, None);
        assert_eq!(raw.ept_vpid_cap, None);
        assert_eq!(raw.vmfunc, None);
    }

    #[test]
    fn allowed_splits_low_and_high_halves() {
        let a = Allowed::from_msr(0x0000_007f_0000_0016);
        assert_eq!(a.must_be_one, 0x16);
        assert_eq!(a.may_be_one, 0x7f);
        assert!(a.allows(0x41));
        assert!(!a.allows(0x80));
    }

    #[test]
    fn adjust_sets_must_be_one_bits() {
        assert_eq!(adjust_controls(0x1, 0, 0x0000_007f_0000_0016), Ok(0x17));
    }

    #[test]
    fn adjust_drops_optional_bits_not_allowed() {
        // Bit 7 (posted interrupts) optional and unsupported: silently dropped.
        assert_eq!(adjust_controls(0x89, 0x9, 0x0000_007f_0000_0016), Ok(0x1f));
    }

    #[test]
    fn adjust_reports_missing_required_bits() {
        assert_eq!(
            adjust_controls(0xc1, 0xc0, 0x0000_007f_0000_0016),
            Err(ControlError { missing: 0x80 })
        );
        assert_eq!(
            adjust_controls(0, u32::MAX, 0),
            Err(ControlError { missing: u32::MAX })
        );
    }

    #[test]
    fn adjust_forces_required_bits_even_if_not_desired() {
        assert_eq!(adjust_controls(0, 0x40, 0x0000_007f_0000_0016), Ok(0x56));
    }

    #[test]
    fn adjust_with_true_msr_clears_default1_bits() {
        let desired =
            PrimaryControls::USE_MSR_BITMAPS | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        let plain = adjust_controls(desired.bits(), desired.bits(), 0xfff9_fffe_0401_e172).unwrap();
        let tru = adjust_controls(desired.bits(), desired.bits(), 0xfff9_fffe_0400_6172).unwrap();
        assert!(plain & PrimaryControls::CR3_LOAD_EXITING.bits() != 0);
        assert!(tru & PrimaryControls::CR3_LOAD_EXITING.bits() == 0);
        assert!(tru & desired.bits() == desired.bits());
    }

    #[test]
    fn decode_basic_fields() {
        let c = skl_caps();
        assert_eq!(c.vmcs_revision, 0x2b);
        assert_eq!(c.vmcs_region_size, 0x1000);
        assert_eq!(c.vmcs_memory_type, MEMTYPE_WB);
        assert!(c.true_controls);
        assert!(c.io_exit_info);
        assert!(!c.physical_address_32bit);
        // Revision ignores bit 31; size is only 13 bits.
        let c = VmxCaps::decode(
            &RawVmxMsrs {
                basic: u64::MAX,
                ..RawVmxMsrs::default()
            },
            true,
            0,
        );
        assert_eq!(c.vmcs_revision, 0x7fff_ffff);
        assert_eq!(c.vmcs_region_size, 0x1fff);
        assert_eq!(c.vmcs_memory_type, 0xf);
        assert!(c.physical_address_32bit);
    }

    #[test]
    fn decode_uses_true_msrs_when_present() {
        let c = skl_caps();
        assert_eq!(c.procbased.must_be_one, 0x0400_6172);
        assert_eq!(c.exit.must_be_one, 0x0003_6dfb);
        assert_eq!(c.entry.must_be_one, 0x11fb);
        let p = VmxCaps::decode(&penryn(), true, FC_ENABLED);
        assert_eq!(p.procbased.must_be_one, 0x0401_e172);
    }

    #[test]
    fn decode_ignores_true_msrs_when_basic_bit_55_clear() {
        let mut raw = skylake();
        raw.basic &= !(1 << 55);
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert!(!c.true_controls);
        assert_eq!(c.procbased.must_be_one, 0x0401_e172);
    }

    #[test]
    fn decode_ept_and_vpid_caps() {
        let c = skl_caps();
        let e = c.ept;
        assert!(e.present && e.execute_only && e.walk_length_4 && !e.walk_length_5);
        assert!(e.memtype_uc && e.memtype_wb && e.pages_2m && e.pages_1g);
        assert!(e.invept && e.accessed_dirty && e.invept_single_context && e.invept_all_context);
        let v = c.vpid;
        assert!(v.present && v.invvpid && v.invvpid_individual_address);
        assert!(v.invvpid_single_context && v.invvpid_all_context);
        assert!(v.invvpid_single_context_retaining_globals);
        assert!(c.unrestricted_guest);
        assert_eq!(c.vmfunc, 1);
    }

    #[test]
    fn decode_ignores_secondary_without_primary_bit_31() {
        let mut raw = skylake();
        raw.procbased &= !(1 << 63);
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert_eq!(c.procbased2, Allowed::default());
        assert!(!c.ept.present && !c.vpid.present && !c.unrestricted_guest);
        assert_eq!(c.ept_vpid_cap, 0);
        assert_eq!(c.vmfunc, 0);
    }

    #[test]
    fn decode_tolerates_missing_ept_vpid_cap() {
        let mut raw = skylake();
        raw.ept_vpid_cap = None;
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert!(c.ept.present && !c.ept.walk_length_4 && !c.ept.memtype_wb);
        assert_eq!(c.check_requirements(), Err(MissingFeature::NoEptWriteBack));
    }

    #[test]
    fn decode_misc_fields() {
        let c = skl_caps();
        assert!(c.preemption_timer);
        let m = c.misc;
        assert_eq!(m.preemption_timer_rate, 5);
        assert!(m.stores_lma && m.activity_hlt && m.activity_shutdown && m.activity_wait_for_sipi);
        assert_eq!(m.cr3_target_count, 4);
        assert_eq!(m.max_msr_list_entries, 512);
        let m = MiscCaps::from_raw(u64::MAX);
        assert_eq!(m.preemption_timer_rate, 31);
        assert_eq!(m.cr3_target_count, 0x1ff);
        assert_eq!(m.max_msr_list_entries, 4096);
    }

    #[test]
    fn decode_keeps_fixed_bits_raw() {
        let c = skl_caps();
        assert_eq!(c.cr0_fixed0, 0x8000_0021);
        assert_eq!(c.cr0_fixed1, 0xffff_ffff);
        assert_eq!(c.cr4_fixed0, 0x2000);
        assert_eq!(c.cr4_fixed1, 0x0037_27ff);
    }

    #[test]
    fn decode_feature_control_bits() {
        let f = FeatureControl::from_raw(0x7);
        assert!(f.locked && f.vmx_inside_smx && f.vmx_outside_smx);
        let f = FeatureControl::from_raw(0x2);
        assert!(!f.locked && f.vmx_inside_smx && !f.vmx_outside_smx);
    }

    #[test]
    fn decode_never_panics_on_extreme_inputs() {
        for v in [0, u64::MAX, 0x5555_5555_5555_5555, 0xaaaa_aaaa_aaaa_aaaa] {
            let raw = RawVmxMsrs {
                basic: v,
                pinbased: v,
                procbased: v,
                exit: v,
                entry: v,
                misc: v,
                cr0_fixed0: v,
                cr0_fixed1: v,
                cr4_fixed0: v,
                cr4_fixed1: v,
                procbased2: Some(v),
                ept_vpid_cap: Some(v),
                true_pinbased: Some(v),
                true_procbased: Some(v),
                true_exit: Some(v),
                true_entry: Some(v),
                vmfunc: Some(v),
            };
            let c = VmxCaps::decode(&raw, v & 1 != 0, v);
            let _ = c.check_requirements();
            assert_eq!(report(&c).lines().count(), 8);
        }
    }

    #[test]
    fn no_cpuid_vmx_is_no_vmx() {
        assert_eq!(
            check_platform(false, FC_ENABLED),
            Err(MissingFeature::NoVmx)
        );
        assert_eq!(check_platform(false, 0x1), Err(MissingFeature::NoVmx));
        let c = VmxCaps::decode(&skylake(), false, FC_ENABLED);
        assert_eq!(c.check_requirements(), Err(MissingFeature::NoVmx));
    }

    #[test]
    fn locked_without_outside_smx_is_disabled_by_firmware() {
        assert_eq!(
            check_platform(true, 0x1),
            Err(MissingFeature::DisabledByFirmware)
        );
        // VMX inside SMX alone does not help.
        assert_eq!(
            check_platform(true, 0x3),
            Err(MissingFeature::DisabledByFirmware)
        );
        let c = VmxCaps::decode(&skylake(), true, 0x1);
        assert_eq!(
            c.check_requirements(),
            Err(MissingFeature::DisabledByFirmware)
        );
    }

    #[test]
    fn unlocked_feature_control_must_be_locked_and_enabled() {
        assert_eq!(
            check_platform(true, 0),
            Ok(FeatureControlAction::LockAndEnable { value: 0x5 })
        );
        // Other bits (e.g. SENTER enables, bit 1) are preserved.
        assert_eq!(
            check_platform(true, 0xff02),
            Ok(FeatureControlAction::LockAndEnable { value: 0xff07 })
        );
        let c = VmxCaps::decode(&skylake(), true, 0);
        assert_eq!(
            c.check_requirements(),
            Ok(FeatureControlAction::LockAndEnable { value: 0x5 })
        );
    }

    #[test]
    fn locked_and_enabled_is_already_enabled() {
        assert_eq!(
            check_platform(true, 0x5),
            Ok(FeatureControlAction::AlreadyEnabled)
        );
        assert_eq!(
            skl_caps().check_requirements(),
            Ok(FeatureControlAction::AlreadyEnabled)
        );
        assert_eq!(
            check_platform(true, 0x7),
            Ok(FeatureControlAction::AlreadyEnabled)
        );
    }

    #[test]
    fn penryn_without_ept_is_no_ept() {
        let c = VmxCaps::decode(&penryn(), true, FC_ENABLED);
        assert_eq!(c.check_requirements(), Err(MissingFeature::NoEpt));
        // Platform problems take priority.
        let c = VmxCaps::decode(&penryn(), true, 0x1);
        assert_eq!(
            c.check_requirements(),
            Err(MissingFeature::DisabledByFirmware)
        );
    }

    #[test]
    fn ept_without_unrestricted_guest_is_no_unrestricted_guest() {
        let mut raw = skylake();
        raw.procbased2 = Some(SKL_PROCBASED2 & !(1 << 39));
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert_eq!(
            c.check_requirements(),
            Err(MissingFeature::NoUnrestrictedGuest)
        );
    }

    #[test]
    fn ept_without_wb_is_no_ept_write_back() {
        let mut raw = skylake();
        raw.ept_vpid_cap = Some(SKL_EPT_VPID_CAP & !(1 << 14));
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert_eq!(c.check_requirements(), Err(MissingFeature::NoEptWriteBack));
    }

    #[test]
    fn ept_without_4_level_walk_is_no_ept_4_level_walk() {
        let mut raw = skylake();
        raw.ept_vpid_cap = Some(SKL_EPT_VPID_CAP & !(1 << 6));
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert_eq!(c.check_requirements(), Err(MissingFeature::NoEpt4LevelWalk));
    }

    #[test]
    fn missing_true_controls_is_not_an_error() {
        let mut raw = skylake();
        raw.basic &= !(1 << 55);
        raw.true_pinbased = None;
        raw.true_procbased = None;
        raw.true_exit = None;
        raw.true_entry = None;
        let c = VmxCaps::decode(&raw, true, FC_ENABLED);
        assert_eq!(
            c.check_requirements(),
            Ok(FeatureControlAction::AlreadyEnabled)
        );
    }

    #[test]
    fn missing_feature_messages_are_single_lines() {
        let all = [
            MissingFeature::NoVmx,
            MissingFeature::DisabledByFirmware,
            MissingFeature::NoEpt,
            MissingFeature::NoUnrestrictedGuest,
            MissingFeature::NoEptWriteBack,
            MissingFeature::NoEpt4LevelWalk,
        ];
        for m in all {
            let s = m.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{s:?}");
            assert!(!s.contains("  "), "{s:?}");
        }
        assert_eq!(
            MissingFeature::NoVmx.to_string(),
            "no VMX on this CPU (CPUID.1:ECX.VMX[bit 5] is clear)"
        );
        assert_eq!(
            MissingFeature::DisabledByFirmware.to_string(),
            "VMX disabled by firmware (IA32_FEATURE_CONTROL is locked with VMX-outside-SMX off); \
             enable VT-x in the firmware setup"
        );
        assert_eq!(
            MissingFeature::NoEpt.to_string(),
            "no EPT (secondary processor-based control 'enable EPT' cannot be set)"
        );
    }

    #[test]
    fn control_error_display_names_missing_bits() {
        assert_eq!(
            ControlError { missing: 0x82 }.to_string(),
            "required VMX controls not supported: bits 0x82"
        );
    }

    #[test]
    fn report_for_skylake() {
        let expected = "\
vmx: present
vmx: feature-control locked=yes vmx-outside-smx=yes
vmx: vmcs revision=0x2b size=4096 memtype=wb
vmx: true-controls=yes
vmx: ept=yes walk4=yes wb=yes 2m=yes 1g=yes ad=yes invept=single,all execute-only=yes
vmx: vpid=yes invvpid=individual,single,all,single-globals
vmx: unrestricted-guest=yes
vmx: preemption-timer=yes rate=tsc>>5
";
        assert_eq!(report(&skl_caps()), expected);
    }

    #[test]
    fn report_for_penryn() {
        let c = VmxCaps::decode(&penryn(), true, 0);
        let expected = "\
vmx: present
vmx: feature-control locked=no vmx-outside-smx=no
vmx: vmcs revision=0xd size=1024 memtype=wb
vmx: true-controls=no
vmx: ept=no walk4=no wb=no 2m=no 1g=no ad=no invept=none execute-only=no
vmx: vpid=no invvpid=none
vmx: unrestricted-guest=no
vmx: preemption-timer=no rate=none
";
        assert_eq!(report(&c), expected);
    }

    #[test]
    fn report_lists_only_supported_invalidation_types() {
        let mut raw = skylake();
        raw.ept_vpid_cap = Some(SKL_EPT_VPID_CAP & !((1 << 25) | (1 << 41) | (1 << 43)));
        let r = report(&VmxCaps::decode(&raw, true, FC_ENABLED));
        assert!(r.contains(" invept=all "), "{r}");
        assert!(r.contains("vmx: vpid=yes invvpid=individual,all\n"), "{r}");
        // INVEPT/INVVPID themselves unsupported: no types listed.
        raw.ept_vpid_cap = Some(SKL_EPT_VPID_CAP & !((1 << 20) | (1 << 32)));
        let r = report(&VmxCaps::decode(&raw, true, FC_ENABLED));
        assert!(r.contains(" invept=none "), "{r}");
        assert!(r.contains("invvpid=none\n"), "{r}");
    }

    #[test]
    fn report_shows_uncommon_vmcs_memtype() {
        let mut raw = skylake();
        raw.basic &= !(0xf << 50);
        assert!(report(&VmxCaps::decode(&raw, true, FC_ENABLED)).contains("memtype=uc\n"));
        raw.basic |= 3 << 50;
        assert!(report(&VmxCaps::decode(&raw, true, FC_ENABLED)).contains("memtype=unknown(3)\n"));
    }

    #[test]
    fn report_says_absent_without_cpuid_vmx() {
        let c = VmxCaps::decode(&RawVmxMsrs::default(), false, 0);
        assert!(report(&c).starts_with("vmx: absent\n"));
    }

    #[test]
    fn vmxon_failure_means_vmx_left_on_only_with_cr4_vmxe_from_firmware() {
        use VmxonFailure::*;
        // Firmware left VMX on, with and without a current VMCS.
        assert!(firmware_left_vmx_on(true, FailInvalid));
        assert!(firmware_left_vmx_on(true, FailValid(VMXON_IN_VMX_ROOT)));
        // Any other VM-instruction error is not "already in VMX root operation".
        assert!(!firmware_left_vmx_on(true, FailValid(7)));
        // CR4.VMXE was clear: the CPU was not in VMX operation, VMXOFF would #UD.
        assert!(!firmware_left_vmx_on(false, FailInvalid));
        assert!(!firmware_left_vmx_on(false, FailValid(VMXON_IN_VMX_ROOT)));
    }

    #[test]
    fn vmxon_failures_name_the_instruction_and_the_error() {
        let m = VmxonFailure::FailInvalid.to_string();
        assert!(m.starts_with("VMXON failed with VMfailInvalid"), "{m}");
        assert!(m.contains("VMXON region"), "{m}");
        assert_eq!(
            VmxonFailure::FailValid(VMXON_IN_VMX_ROOT).to_string(),
            "VMXON failed with VM-instruction error 15 (VMXON executed in VMX root operation)"
        );
    }
}
