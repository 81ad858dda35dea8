//! VMCS field encodings, a `Vmcs` access seam, and decoders for the VMCS values
//! a hypervisor reads after a VM exit or writes before a VM entry.
//!
//! Sources (Intel SDM): field encodings — Vol 3D Appendix B "Field Encoding in
//! VMCS"; VM-instruction error numbers — Vol 3C 31.4 "VM Instruction Error
//! Numbers"; basic exit reasons — Vol 3D Appendix C; exit qualifications —
//! Vol 3C 28.2.1 "Basic VM-Exit Information"; event injection format — Vol 3C
//! 24.8.3 "VM-Entry Controls for Event Injection".

/// Width of a VMCS field, encoded in bits 14:13 of its encoding (SDM Appendix B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldWidth {
    Bits16 = 0,
    Bits64 = 1,
    Bits32 = 2,
    /// 64 bits on processors that support Intel 64 — the only kind we run on.
    Natural = 3,
}

/// Type of a VMCS field, encoded in bits 11:10 of its encoding (SDM Appendix B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Control = 0,
    /// "VM-exit information" — read-only data fields.
    ReadOnlyData = 1,
    GuestState = 2,
    HostState = 3,
}

impl FieldWidth {
    /// Mask of the bits a VMWRITE to a field of this width actually stores;
    /// hardware ignores the higher bits of the source operand.
    pub const fn value_mask(self) -> u64 {
        match self {
            FieldWidth::Bits16 => 0xFFFF,
            FieldWidth::Bits32 => 0xFFFF_FFFF,
            FieldWidth::Bits64 | FieldWidth::Natural => u64::MAX,
        }
    }
}

/// Declares `VmcsField` from one table so the enum, its names, the list of all
/// fields and the group each field was *declared* in cannot drift apart. The
/// declared group is checked against the encoding bits in the tests, which is
/// what catches a mistyped hex constant.
macro_rules! vmcs_fields {
    ($( ($width:ident, $ty:ident) { $( $variant:ident = $enc:literal => $name:literal, )* } )*) => {
        /// A VMCS field, with its SDM Appendix B encoding as the discriminant.
        /// 64-bit fields are named by their "full" encoding (bit 0 = 0).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum VmcsField {
            $( $( $variant = $enc, )* )*
        }

        impl VmcsField {
            /// Every field this module knows, in declaration order.
            pub const ALL: &'static [VmcsField] = &[ $( $( VmcsField::$variant, )* )* ];

            /// snake_case field name for diagnostics and logs.
            pub const fn name(self) -> &'static str {
                match self { $( $( VmcsField::$variant => $name, )* )* }
            }

            /// The (width, type) group the field is listed under in Appendix B.
            #[cfg(test)]
            const fn declared_group(self) -> (FieldWidth, FieldType) {
                match self { $( $( VmcsField::$variant => (FieldWidth::$width, FieldType::$ty), )* )* }
            }
        }
    };
}

vmcs_fields! {
    (Bits16, Control) {
        Vpid = 0x0000 => "vpid",
    }
    (Bits16, GuestState) {
        GuestEsSelector = 0x0800 => "guest_es_selector",
        GuestCsSelector = 0x0802 => "guest_cs_selector",
        GuestSsSelector = 0x0804 => "guest_ss_selector",
        GuestDsSelector = 0x0806 => "guest_ds_selector",
        GuestFsSelector = 0x0808 => "guest_fs_selector",
        GuestGsSelector = 0x080A => "guest_gs_selector",
        GuestLdtrSelector = 0x080C => "guest_ldtr_selector",
        GuestTrSelector = 0x080E => "guest_tr_selector",
    }
    (Bits16, HostState) {
        HostEsSelector = 0x0C00 => "host_es_selector",
        HostCsSelector = 0x0C02 => "host_cs_selector",
        HostSsSelector = 0x0C04 => "host_ss_selector",
        HostDsSelector = 0x0C06 => "host_ds_selector",
        HostFsSelector = 0x0C08 => "host_fs_selector",
        HostGsSelector = 0x0C0A => "host_gs_selector",
        HostTrSelector = 0x0C0C => "host_tr_selector",
    }
    (Bits64, Control) {
        IoBitmapA = 0x2000 => "io_bitmap_a",
        IoBitmapB = 0x2002 => "io_bitmap_b",
        MsrBitmap = 0x2004 => "msr_bitmap",
        ExitMsrStoreAddr = 0x2006 => "vm_exit_msr_store_addr",
        ExitMsrLoadAddr = 0x2008 => "vm_exit_msr_load_addr",
        EntryMsrLoadAddr = 0x200A => "vm_entry_msr_load_addr",
        TscOffset = 0x2010 => "tsc_offset",
        VirtualApicAddr = 0x2012 => "virtual_apic_addr",
        ApicAccessAddr = 0x2014 => "apic_access_addr",
        EptPointer = 0x201A => "ept_pointer",
    }
    (Bits64, ReadOnlyData) {
        GuestPhysicalAddress = 0x2400 => "guest_physical_address",
    }
    (Bits64, GuestState) {
        VmcsLinkPointer = 0x2800 => "vmcs_link_pointer",
        GuestIa32Debugctl = 0x2802 => "guest_ia32_debugctl",
        GuestIa32Pat = 0x2804 => "guest_ia32_pat",
        GuestIa32Efer = 0x2806 => "guest_ia32_efer",
        GuestIa32PerfGlobalCtrl = 0x2808 => "guest_ia32_perf_global_ctrl",
        GuestPdpte0 = 0x280A => "guest_pdpte0",
        GuestPdpte1 = 0x280C => "guest_pdpte1",
        GuestPdpte2 = 0x280E => "guest_pdpte2",
        GuestPdpte3 = 0x2810 => "guest_pdpte3",
    }
    (Bits64, HostState) {
        HostIa32Pat = 0x2C00 => "host_ia32_pat",
        HostIa32Efer = 0x2C02 => "host_ia32_efer",
        HostIa32PerfGlobalCtrl = 0x2C04 => "host_ia32_perf_global_ctrl",
    }
    (Bits32, Control) {
        PinBasedControls = 0x4000 => "pin_based_controls",
        PrimaryProcControls = 0x4002 => "primary_proc_controls",
        ExceptionBitmap = 0x4004 => "exception_bitmap",
        PageFaultErrorCodeMask = 0x4006 => "page_fault_error_code_mask",
        PageFaultErrorCodeMatch = 0x4008 => "page_fault_error_code_match",
        Cr3TargetCount = 0x400A => "cr3_target_count",
        ExitControls = 0x400C => "vm_exit_controls",
        ExitMsrStoreCount = 0x400E => "vm_exit_msr_store_count",
        ExitMsrLoadCount = 0x4010 => "vm_exit_msr_load_count",
        EntryControls = 0x4012 => "vm_entry_controls",
        EntryMsrLoadCount = 0x4014 => "vm_entry_msr_load_count",
        EntryInterruptionInfo = 0x4016 => "vm_entry_interruption_info",
        EntryExceptionErrorCode = 0x4018 => "vm_entry_exception_error_code",
        EntryInstructionLength = 0x401A => "vm_entry_instruction_length",
        TprThreshold = 0x401C => "tpr_threshold",
        SecondaryProcControls = 0x401E => "secondary_proc_controls",
    }
    (Bits32, ReadOnlyData) {
        VmInstructionError = 0x4400 => "vm_instruction_error",
        ExitReason = 0x4402 => "exit_reason",
        ExitInterruptionInfo = 0x4404 => "vm_exit_interruption_info",
        ExitInterruptionErrorCode = 0x4406 => "vm_exit_interruption_error_code",
        IdtVectoringInfo = 0x4408 => "idt_vectoring_info",
        IdtVectoringErrorCode = 0x440A => "idt_vectoring_error_code",
        ExitInstructionLength = 0x440C => "vm_exit_instruction_length",
        ExitInstructionInfo = 0x440E => "vm_exit_instruction_info",
    }
    (Bits32, GuestState) {
        GuestEsLimit = 0x4800 => "guest_es_limit",
        GuestCsLimit = 0x4802 => "guest_cs_limit",
        GuestSsLimit = 0x4804 => "guest_ss_limit",
        GuestDsLimit = 0x4806 => "guest_ds_limit",
        GuestFsLimit = 0x4808 => "guest_fs_limit",
        GuestGsLimit = 0x480A => "guest_gs_limit",
        GuestLdtrLimit = 0x480C => "guest_ldtr_limit",
        GuestTrLimit = 0x480E => "guest_tr_limit",
        GuestGdtrLimit = 0x4810 => "guest_gdtr_limit",
        GuestIdtrLimit = 0x4812 => "guest_idtr_limit",
        GuestEsAccessRights = 0x4814 => "guest_es_access_rights",
        GuestCsAccessRights = 0x4816 => "guest_cs_access_rights",
        GuestSsAccessRights = 0x4818 => "guest_ss_access_rights",
        GuestDsAccessRights = 0x481A => "guest_ds_access_rights",
        GuestFsAccessRights = 0x481C => "guest_fs_access_rights",
        GuestGsAccessRights = 0x481E => "guest_gs_access_rights",
        GuestLdtrAccessRights = 0x4820 => "guest_ldtr_access_rights",
        GuestTrAccessRights = 0x4822 => "guest_tr_access_rights",
        GuestInterruptibilityState = 0x4824 => "guest_interruptibility_state",
        GuestActivityState = 0x4826 => "guest_activity_state",
        GuestSmbase = 0x4828 => "guest_smbase",
        GuestIa32SysenterCs = 0x482A => "guest_ia32_sysenter_cs",
        PreemptionTimerValue = 0x482E => "vmx_preemption_timer_value",
    }
    (Bits32, HostState) {
        HostIa32SysenterCs = 0x4C00 => "host_ia32_sysenter_cs",
    }
    (Natural, Control) {
        Cr0GuestHostMask = 0x6000 => "cr0_guest_host_mask",
        Cr4GuestHostMask = 0x6002 => "cr4_guest_host_mask",
        Cr0ReadShadow = 0x6004 => "cr0_read_shadow",
        Cr4ReadShadow = 0x6006 => "cr4_read_shadow",
        Cr3TargetValue0 = 0x6008 => "cr3_target_value0",
        Cr3TargetValue1 = 0x600A => "cr3_target_value1",
        Cr3TargetValue2 = 0x600C => "cr3_target_value2",
        Cr3TargetValue3 = 0x600E => "cr3_target_value3",
    }
    (Natural, ReadOnlyData) {
        ExitQualification = 0x6400 => "exit_qualification",
        IoRcx = 0x6402 => "io_rcx",
        IoRsi = 0x6404 => "io_rsi",
        IoRdi = 0x6406 => "io_rdi",
        IoRip = 0x6408 => "io_rip",
        GuestLinearAddress = 0x640A => "guest_linear_address",
    }
    (Natural, GuestState) {
        GuestCr0 = 0x6800 => "guest_cr0",
        GuestCr3 = 0x6802 => "guest_cr3",
        GuestCr4 = 0x6804 => "guest_cr4",
        GuestEsBase = 0x6806 => "guest_es_base",
        GuestCsBase = 0x6808 => "guest_cs_base",
        GuestSsBase = 0x680A => "guest_ss_base",
        GuestDsBase = 0x680C => "guest_ds_base",
        GuestFsBase = 0x680E => "guest_fs_base",
        GuestGsBase = 0x6810 => "guest_gs_base",
        GuestLdtrBase = 0x6812 => "guest_ldtr_base",
        GuestTrBase = 0x6814 => "guest_tr_base",
        GuestGdtrBase = 0x6816 => "guest_gdtr_base",
        GuestIdtrBase = 0x6818 => "guest_idtr_base",
        GuestDr7 = 0x681A => "guest_dr7",
        GuestRsp = 0x681C => "guest_rsp",
        GuestRip = 0x681E => "guest_rip",
        GuestRflags = 0x6820 => "guest_rflags",
        GuestPendingDebugExceptions = 0x6822 => "guest_pending_debug_exceptions",
        GuestIa32SysenterEsp = 0x6824 => "guest_ia32_sysenter_esp",
        GuestIa32SysenterEip = 0x6826 => "guest_ia32_sysenter_eip",
    }
    (Natural, HostState) {
        HostCr0 = 0x6C00 => "host_cr0",
        HostCr3 = 0x6C02 => "host_cr3",
        HostCr4 = 0x6C04 => "host_cr4",
        HostFsBase = 0x6C06 => "host_fs_base",
        HostGsBase = 0x6C08 => "host_gs_base",
        HostTrBase = 0x6C0A => "host_tr_base",
        HostGdtrBase = 0x6C0C => "host_gdtr_base",
        HostIdtrBase = 0x6C0E => "host_idtr_base",
        HostIa32SysenterEsp = 0x6C10 => "host_ia32_sysenter_esp",
        HostIa32SysenterEip = 0x6C12 => "host_ia32_sysenter_eip",
        HostRsp = 0x6C14 => "host_rsp",
        HostRip = 0x6C16 => "host_rip",
    }
}

/// Number of fields in [`VmcsField::ALL`]; sizes [`SoftVmcs`]'s table.
pub const FIELD_COUNT: usize = VmcsField::ALL.len();

impl VmcsField {
    /// The 32-bit encoding passed to VMREAD/VMWRITE.
    pub const fn encoding(self) -> u32 {
        self as u32
    }

    /// Width from encoding bits 14:13.
    pub const fn width(self) -> FieldWidth {
        match (self.encoding() >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// Type from encoding bits 11:10.
    pub const fn field_type(self) -> FieldType {
        match (self.encoding() >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ReadOnlyData,
            2 => FieldType::GuestState,
            _ => FieldType::HostState,
        }
    }

    /// Read-only fields fail VMWRITE unless the CPU reports "VMWRITE to any
    /// field" in IA32_VMX_MISC bit 29, so setup code should not touch them.
    pub const fn is_read_only(self) -> bool {
        matches!(self.field_type(), FieldType::ReadOnlyData)
    }

    /// Look a field up by its encoding (e.g. one decoded from a guest VMREAD).
    pub fn from_encoding(encoding: u32) -> Option<VmcsField> {
        VmcsField::ALL
            .iter()
            .copied()
            .find(|f| f.encoding() == encoding)
    }

    /// Position in [`VmcsField::ALL`]; the slot used by [`SoftVmcs`].
    fn index(self) -> usize {
        // Linear scan is fine: SoftVmcs is a host-test double, not a hot path.
        let mut i = 0;
        while i < FIELD_COUNT {
            if VmcsField::ALL[i] as u32 == self as u32 {
                return i;
            }
            i += 1;
        }
        unreachable!()
    }
}

/// Access to the current VMCS. The kernel implements this with VMREAD/VMWRITE
/// on the loaded VMCS; host tests use [`SoftVmcs`].
///
/// Infallible on purpose: with a valid current VMCS and a field encoding from
/// [`VmcsField`], VMREAD/VMWRITE can only fail through a hypervisor bug, which
/// the hardware implementation reports (and halts on) itself.
pub trait Vmcs {
    fn read(&self, field: VmcsField) -> u64;
    fn write(&mut self, field: VmcsField, value: u64);
}

/// In-memory VMCS for host tests: one slot per [`VmcsField`], no heap.
///
/// Writes are truncated to the field width, as VMWRITE does, so tests see the
/// value the hardware would hold. Unwritten fields read as 0.
#[derive(Clone, Debug)]
pub struct SoftVmcs {
    values: [u64; FIELD_COUNT],
    written: [bool; FIELD_COUNT],
}

impl Default for SoftVmcs {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftVmcs {
    pub const fn new() -> Self {
        SoftVmcs {
            values: [0; FIELD_COUNT],
            written: [false; FIELD_COUNT],
        }
    }

    /// Whether `field` has been written since creation; lets tests assert that
    /// setup code initialised every field it should.
    pub fn was_written(&self, field: VmcsField) -> bool {
        self.written[field.index()]
    }
}

impl Vmcs for SoftVmcs {
    fn read(&self, field: VmcsField) -> u64 {
        self.values[field.index()]
    }

    fn write(&mut self, field: VmcsField, value: u64) {
        let i = field.index();
        self.values[i] = value & field.width().value_mask();
        self.written[i] = true;
    }
}

/// Access-rights fields of the guest segment registers (SDM Vol. 3C 25.4.1 "Guest
/// Register State", Table 25-2 "Format of Access Rights").
pub mod access_rights {
    pub const TYPE_MASK: u32 = 0xF;
    /// S: code/data (1) vs system (0) descriptor.
    pub const S: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const P: u32 = 1 << 7;
    pub const AVL: u32 = 1 << 12;
    /// L: 64-bit code segment.
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    /// Segment unusable (a null selector was loaded).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// The interruptibility-state field (SDM Vol. 3C 25.4.2 "Guest Non-Register State",
/// Table 25-3 "Format of Interruptibility State").
pub mod interruptibility {
    /// Blocking by STI: the instruction after an STI that set IF.
    pub const STI: u64 = 1 << 0;
    /// Blocking by MOV SS or POP SS.
    pub const MOV_SS: u64 = 1 << 1;
    /// Blocking by SMI.
    pub const SMI: u64 = 1 << 2;
    /// Blocking by NMI.
    pub const NMI: u64 = 1 << 3;
    /// The two shadows one retired instruction ends.
    pub const STI_MOV_SS: u64 = STI | MOV_SS;
}

/// The activity-state field (SDM Vol. 3C 25.4.2 "Guest Non-Register State").
pub mod activity {
    pub const ACTIVE: u64 = 0;
    pub const HLT: u64 = 1;
    pub const SHUTDOWN: u64 = 2;
    pub const WAIT_FOR_SIPI: u64 = 3;
}

/// SDM meaning of a VM-instruction error number (VMCS field 0x4400), as listed
/// in Vol 3C 31.4. Numbers 14, 21 and 27 are not assigned.
pub fn vm_instruction_error_text(n: u64) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// Basic exit reasons (bits 15:0 of the exit-reason field), SDM Appendix C.
pub mod exit_reason {
    pub const EXCEPTION_OR_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT_SIGNAL: u16 = 3;
    pub const STARTUP_IPI: u16 = 4;
    pub const IO_SMI: u16 = 5;
    pub const OTHER_SMI: u16 = 6;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const RSM: u16 = 17;
    pub const VMCALL: u16 = 18;
    pub const VMCLEAR: u16 = 19;
    pub const VMLAUNCH: u16 = 20;
    pub const VMPTRLD: u16 = 21;
    pub const VMPTRST: u16 = 22;
    pub const VMREAD: u16 = 23;
    pub const VMRESUME: u16 = 24;
    pub const VMWRITE: u16 = 25;
    pub const VMXOFF: u16 = 26;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO_INSTRUCTION: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const ENTRY_FAILURE_INVALID_GUEST_STATE: u16 = 33;
    pub const ENTRY_FAILURE_MSR_LOADING: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MONITOR_TRAP_FLAG: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const ENTRY_FAILURE_MACHINE_CHECK: u16 = 41;
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    pub const APIC_ACCESS: u16 = 44;
    pub const VIRTUALIZED_EOI: u16 = 45;
    pub const GDTR_IDTR_ACCESS: u16 = 46;
    pub const LDTR_TR_ACCESS: u16 = 47;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIGURATION: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const APIC_WRITE: u16 = 56;
    pub const RDRAND: u16 = 57;
    pub const INVPCID: u16 = 58;
    pub const VMFUNC: u16 = 59;
    pub const ENCLS: u16 = 60;
    pub const RDSEED: u16 = 61;
    pub const PML_FULL: u16 = 62;
    pub const XSAVES: u16 = 63;
    pub const XRSTORS: u16 = 64;
    pub const PCONFIG: u16 = 65;
    pub const SPP_EVENT: u16 = 66;
    pub const UMWAIT: u16 = 67;
    pub const TPAUSE: u16 = 68;
    pub const LOADIWKEY: u16 = 69;
    pub const ENCLV: u16 = 70;
    pub const ENQCMD_PASID_FAILURE: u16 = 72;
    pub const ENQCMDS_PASID_FAILURE: u16 = 73;
    pub const BUS_LOCK: u16 = 74;
    pub const INSTRUCTION_TIMEOUT: u16 = 75;
    pub const SEAMCALL: u16 = 76;
    pub const TDCALL: u16 = 77;
    pub const RDMSRLIST: u16 = 78;
    pub const WRMSRLIST: u16 = 79;
}

/// snake_case name of a basic exit reason, suitable as a JSON key. Accepts the
/// raw exit-reason field: only bits 15:0 are looked at.
pub fn exit_reason_name(n: u32) -> &'static str {
    use exit_reason::*;
    match (n & 0xFFFF) as u16 {
        EXCEPTION_OR_NMI => "exception_or_nmi",
        EXTERNAL_INTERRUPT => "external_interrupt",
        TRIPLE_FAULT => "triple_fault",
        INIT_SIGNAL => "init_signal",
        STARTUP_IPI => "startup_ipi",
        IO_SMI => "io_smi",
        OTHER_SMI => "other_smi",
        INTERRUPT_WINDOW => "interrupt_window",
        NMI_WINDOW => "nmi_window",
        TASK_SWITCH => "task_switch",
        CPUID => "cpuid",
        GETSEC => "getsec",
        HLT => "hlt",
        INVD => "invd",
        INVLPG => "invlpg",
        RDPMC => "rdpmc",
        RDTSC => "rdtsc",
        RSM => "rsm",
        VMCALL => "vmcall",
        VMCLEAR => "vmclear",
        VMLAUNCH => "vmlaunch",
        VMPTRLD => "vmptrld",
        VMPTRST => "vmptrst",
        VMREAD => "vmread",
        VMRESUME => "vmresume",
        VMWRITE => "vmwrite",
        VMXOFF => "vmxoff",
        VMXON => "vmxon",
        CR_ACCESS => "cr_access",
        DR_ACCESS => "dr_access",
        IO_INSTRUCTION => "io_instruction",
        RDMSR => "rdmsr",
        WRMSR => "wrmsr",
        ENTRY_FAILURE_INVALID_GUEST_STATE => "entry_failure_invalid_guest_state",
        ENTRY_FAILURE_MSR_LOADING => "entry_failure_msr_loading",
        MWAIT => "mwait",
        MONITOR_TRAP_FLAG => "monitor_trap_flag",
        MONITOR => "monitor",
        PAUSE => "pause",
        ENTRY_FAILURE_MACHINE_CHECK => "entry_failure_machine_check",
        TPR_BELOW_THRESHOLD => "tpr_below_threshold",
        APIC_ACCESS => "apic_access",
        VIRTUALIZED_EOI => "virtualized_eoi",
        GDTR_IDTR_ACCESS => "gdtr_idtr_access",
        LDTR_TR_ACCESS => "ldtr_tr_access",
        EPT_VIOLATION => "ept_violation",
        EPT_MISCONFIGURATION => "ept_misconfiguration",
        INVEPT => "invept",
        RDTSCP => "rdtscp",
        PREEMPTION_TIMER => "preemption_timer",
        INVVPID => "invvpid",
        WBINVD => "wbinvd",
        XSETBV => "xsetbv",
        APIC_WRITE => "apic_write",
        RDRAND => "rdrand",
        INVPCID => "invpcid",
        VMFUNC => "vmfunc",
        ENCLS => "encls",
        RDSEED => "rdseed",
        PML_FULL => "pml_full",
        XSAVES => "xsaves",
        XRSTORS => "xrstors",
        PCONFIG => "pconfig",
        SPP_EVENT => "spp_event",
        UMWAIT => "umwait",
        TPAUSE => "tpause",
        LOADIWKEY => "loadiwkey",
        ENCLV => "enclv",
        ENQCMD_PASID_FAILURE => "enqcmd_pasid_failure",
        ENQCMDS_PASID_FAILURE => "enqcmds_pasid_failure",
        BUS_LOCK => "bus_lock",
        INSTRUCTION_TIMEOUT => "instruction_timeout",
        SEAMCALL => "seamcall",
        TDCALL => "tdcall",
        RDMSRLIST => "rdmsrlist",
        WRMSRLIST => "wrmsrlist",
        _ => "unknown",
    }
}

/// The full 32-bit exit-reason field (SDM Vol 3C 28.2.1, "Format of Exit Reason").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason(pub u32);

impl ExitReason {
    /// Bit 31: VM entry failed (the guest never ran); bits 15:0 then hold 33,
    /// 34 or 41 and the exit qualification says which check failed.
    pub const ENTRY_FAILURE: u32 = 1 << 31;

    pub const fn basic(self) -> u16 {
        self.0 as u16
    }
    pub const fn is_entry_failure(self) -> bool {
        self.0 & Self::ENTRY_FAILURE != 0
    }
    /// Bit 27: the exit was incident to enclave mode.
    pub const fn in_enclave_mode(self) -> bool {
        self.0 & (1 << 27) != 0
    }
    /// Bit 28: a monitor-trap-flag VM exit is pending.
    pub const fn pending_mtf(self) -> bool {
        self.0 & (1 << 28) != 0
    }
    /// Bit 29: VM exit from VMX root operation (SMM dual-monitor treatment).
    pub const fn from_vmx_root(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    pub fn name(self) -> &'static str {
        exit_reason_name(self.0)
    }
}

/// Exit qualification for I/O instructions (exit reason 30; SDM Vol 3C
/// Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4.
    pub size: u8,
    /// `true` for IN/INS, `false` for OUT/OUTS (bit 3).
    pub is_in: bool,
    /// String instruction INS/OUTS (bit 4).
    pub string: bool,
    /// REP prefixed (bit 5).
    pub rep: bool,
    /// Port given as an immediate operand (bit 6); otherwise it came from DX.
    pub immediate: bool,
    /// Port number (bits 31:16).
    pub port: u16,
}

impl IoQualification {
    pub const fn from_qualification(q: u64) -> Self {
        // Bits 2:0 encode size-1 (0 = 1 byte, 1 = 2, 3 = 4); hardware never
        // reports the other values, so mapping them to 0 flags a bogus input.
        let size = match q & 7 {
            0 => 1,
            1 => 2,
            3 => 4,
            _ => 0,
        };
        IoQualification {
            size,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            immediate: q & (1 << 6) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// Access type in a control-register exit qualification, bits 5:4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    MovToCr = 0,
    MovFromCr = 1,
    Clts = 2,
    Lmsw = 3,
}

/// Exit qualification for control-register accesses (exit reason 28; SDM
/// Vol 3C Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccessQualification {
    /// Control register number (bits 3:0): 0, 3, 4 or 8. 0 for CLTS/LMSW.
    pub cr: u8,
    pub access: CrAccessType,
    /// LMSW operand was in memory (bit 6); otherwise a register.
    pub lmsw_memory_operand: bool,
    /// General-purpose register for MOV CR (bits 11:8): 0 = RAX, 1 = RCX,
    /// 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15.
    pub gpr: u8,
    /// LMSW source data (bits 31:16).
    pub lmsw_source: u16,
}

impl CrAccessQualification {
    pub const fn from_qualification(q: u64) -> Self {
        let access = match (q >> 4) & 3 {
            0 => CrAccessType::MovToCr,
            1 => CrAccessType::MovFromCr,
            2 => CrAccessType::Clts,
            _ => CrAccessType::Lmsw,
        };
        CrAccessQualification {
            cr: (q & 0xF) as u8,
            access,
            lmsw_memory_operand: q & (1 << 6) != 0,
            gpr: ((q >> 8) & 0xF) as u8,
            lmsw_source: (q >> 16) as u16,
        }
    }
}

/// Exit qualification for EPT violations (exit reason 48; SDM Vol 3C
/// Table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolationQualification {
    /// The access was a data read (bit 0).
    pub read: bool,
    /// The access was a data write (bit 1).
    pub write: bool,
    /// The access was an instruction fetch (bit 2).
    pub fetch: bool,
    /// The guest-physical address was readable, i.e. the AND of bit 0 across
    /// the EPT entries walked (bit 3).
    pub readable: bool,
    /// Likewise for writes (bit 4).
    pub writable: bool,
    /// Likewise for (supervisor) execution (bit 5).
    pub executable: bool,
    /// The guest-linear-address VMCS field is valid (bit 7).
    pub linear_address_valid: bool,
    /// Meaningful only with `linear_address_valid`: `true` if the access was
    /// to the translated linear address, `false` if it was to a guest
    /// paging-structure entry during the page walk (bit 8).
    pub translated_access: bool,
    /// NMI unblocking due to IRET (bit 12): the handler must re-establish NMI
    /// blocking before resuming if it re-executes the IRET's consequences.
    pub nmi_unblocking: bool,
}

impl EptViolationQualification {
    pub const fn from_qualification(q: u64) -> Self {
        EptViolationQualification {
            read: q & (1 << 0) != 0,
            write: q & (1 << 1) != 0,
            fetch: q & (1 << 2) != 0,
            readable: q & (1 << 3) != 0,
            writable: q & (1 << 4) != 0,
            executable: q & (1 << 5) != 0,
            linear_address_valid: q & (1 << 7) != 0,
            translated_access: q & (1 << 8) != 0,
            nmi_unblocking: q & (1 << 12) != 0,
        }
    }
}

/// Event types for the interruption-information format (bits 10:8; SDM 24.8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    ExternalInterrupt = 0,
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    OtherEvent = 7,
}

/// Valid bit (31) of the interruption-information fields.
pub const INTERRUPTION_INFO_VALID: u32 = 1 << 31;
/// Deliver-error-code bit (11) of the interruption-information fields.
pub const INTERRUPTION_INFO_DELIVER_ERROR_CODE: u32 = 1 << 11;

/// Builds a VM-entry interruption-information value (field 0x4016).
pub const fn interruption_info(vector: u8, kind: EventType, deliver_error_code: bool) -> u32 {
    let mut v = INTERRUPTION_INFO_VALID | ((kind as u32) << 8) | vector as u32;
    if deliver_error_code {
        v |= INTERRUPTION_INFO_DELIVER_ERROR_CODE;
    }
    v
}

/// Whether the architecture pushes an error code for exception `vector`
/// (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP). VM entry checks that the
/// deliver-error-code bit agrees with this for hardware exceptions in
/// protected mode.
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// Interruption info for a hardware exception. The error code itself goes in
/// the VM-entry exception error code field (see [`inject_event`]); here it
/// only decides bit 11.
pub const fn hardware_exception(vector: u8, error_code: Option<u32>) -> u32 {
    interruption_info(vector, EventType::HardwareException, error_code.is_some())
}

/// Interruption info for an external interrupt.
pub const fn external_interrupt(vector: u8) -> u32 {
    interruption_info(vector, EventType::ExternalInterrupt, false)
}

/// Interruption info for an NMI (vector is architecturally 2).
pub const fn nmi() -> u32 {
    interruption_info(2, EventType::Nmi, false)
}

/// Interruption info for a software interrupt (INT n). Needs a VM-entry
/// instruction length so the pushed return RIP skips the instruction.
pub const fn software_interrupt(vector: u8) -> u32 {
    interruption_info(vector, EventType::SoftwareInterrupt, false)
}

/// Interruption info for a software exception (#BP from INT3, #OF from INTO).
/// Also needs a VM-entry instruction length.
pub const fn software_exception(vector: u8) -> u32 {
    interruption_info(vector, EventType::SoftwareException, false)
}

/// Writes the three VM-entry event-injection fields. `instruction_len` only
/// matters for software interrupts/exceptions and is written regardless so a
/// stale value from an earlier injection cannot leak into this one.
pub fn inject_event(
    vmcs: &mut impl Vmcs,
    info: u32,
    error_code: Option<u32>,
    instruction_len: u32,
) {
    vmcs.write(VmcsField::EntryInterruptionInfo, info as u64);
    if let Some(code) = error_code {
        vmcs.write(VmcsField::EntryExceptionErrorCode, code as u64);
    }
    vmcs.write(VmcsField::EntryInstructionLength, instruction_len as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn encodings_match_declared_width_and_type() {
        for &f in VmcsField::ALL {
            let (w, t) = f.declared_group();
            assert_eq!(f.width(), w, "{} width", f.name());
            assert_eq!(f.field_type(), t, "{} type", f.name());
            // Bit 0 = access type (full), bit 12 reserved, bits 31:15 reserved.
            assert_eq!(f.encoding() & 1, 0, "{} not a full encoding", f.name());
            assert_eq!(f.encoding() & (1 << 12), 0, "{}", f.name());
            assert_eq!(f.encoding() >> 15, 0, "{}", f.name());
        }
    }

    #[test]
    fn encodings_and_names_are_unique() {
        let encs: HashSet<u32> = VmcsField::ALL.iter().map(|f| f.encoding()).collect();
        let names: HashSet<&str> = VmcsField::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(encs.len(), FIELD_COUNT);
        assert_eq!(names.len(), FIELD_COUNT);
    }

    #[test]
    fn spot_check_encodings() {
        assert_eq!(VmcsField::EptPointer.encoding(), 0x201A);
        assert_eq!(VmcsField::GuestRip.encoding(), 0x681E);
        assert_eq!(VmcsField::HostRip.encoding(), 0x6C16);
        assert_eq!(VmcsField::ExitReason.encoding(), 0x4402);
        assert_eq!(VmcsField::GuestTrAccessRights.encoding(), 0x4822);
        assert_eq!(VmcsField::PreemptionTimerValue.encoding(), 0x482E);
        assert_eq!(
            VmcsField::from_encoding(0x6400),
            Some(VmcsField::ExitQualification)
        );
        assert_eq!(VmcsField::from_encoding(0x6401), None);
        assert!(VmcsField::ExitQualification.is_read_only());
        assert!(!VmcsField::GuestRip.is_read_only());
    }

    #[test]
    fn soft_vmcs_round_trips_and_truncates() {
        let mut v = SoftVmcs::new();
        assert_eq!(v.read(VmcsField::GuestRip), 0);
        assert!(!v.was_written(VmcsField::GuestRip));
        v.write(VmcsField::GuestRip, 0xFFFF_8000_0000_1234);
        v.write(VmcsField::GuestCsSelector, 0x1_0008);
        v.write(VmcsField::PinBasedControls, 0x1_0000_0016);
        v.write(VmcsField::EptPointer, u64::MAX);
        assert_eq!(v.read(VmcsField::GuestRip), 0xFFFF_8000_0000_1234);
        assert_eq!(v.read(VmcsField::GuestCsSelector), 0x0008);
        assert_eq!(v.read(VmcsField::PinBasedControls), 0x16);
        assert_eq!(v.read(VmcsField::EptPointer), u64::MAX);
        assert!(v.was_written(VmcsField::GuestRip));
        assert!(!v.was_written(VmcsField::HostRip));
        // Every field has its own slot.
        for (i, &f) in VmcsField::ALL.iter().enumerate() {
            v.write(f, i as u64 + 1);
        }
        for (i, &f) in VmcsField::ALL.iter().enumerate() {
            assert_eq!(v.read(f), i as u64 + 1, "{}", f.name());
        }
    }

    #[test]
    fn instruction_error_texts() {
        assert_eq!(
            vm_instruction_error_text(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            vm_instruction_error_text(8),
            "VM entry with invalid host-state field(s)"
        );
        assert_eq!(
            vm_instruction_error_text(16),
            "VM entry with invalid executive-VMCS pointer"
        );
        assert_eq!(
            vm_instruction_error_text(28),
            "invalid operand to INVEPT/INVVPID"
        );
        for unassigned in [0, 14, 21, 27, 29, 33, u64::MAX] {
            assert_eq!(
                vm_instruction_error_text(unassigned),
                "unknown VM-instruction error"
            );
        }
    }

    #[test]
    fn exit_reason_names() {
        assert_eq!(exit_reason_name(0), "exception_or_nmi");
        assert_eq!(exit_reason_name(2), "triple_fault");
        assert_eq!(exit_reason_name(10), "cpuid");
        assert_eq!(exit_reason_name(12), "hlt");
        assert_eq!(exit_reason_name(13), "invd");
        assert_eq!(exit_reason_name(18), "vmcall");
        assert_eq!(exit_reason_name(27), "vmxon");
        assert_eq!(exit_reason_name(30), "io_instruction");
        assert_eq!(exit_reason_name(48), "ept_violation");
        assert_eq!(exit_reason_name(52), "preemption_timer");
        assert_eq!(exit_reason_name(54), "wbinvd");
        assert_eq!(exit_reason_name(55), "xsetbv");
        assert_eq!(exit_reason_name(35), "unknown");
        assert_eq!(exit_reason_name(1000), "unknown");
        // The high flag bits do not disturb the name.
        assert_eq!(
            exit_reason_name(0x8000_0021),
            "entry_failure_invalid_guest_state"
        );
        // Names are JSON-key friendly and unique.
        let mut seen = HashSet::new();
        for n in 0..=0xFFFFu32 {
            let name = exit_reason_name(n);
            if name == "unknown" {
                continue;
            }
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(seen.insert(name), "duplicate {name}");
        }
    }

    #[test]
    fn exit_reason_flags() {
        let r = ExitReason(0x8000_0021);
        assert!(r.is_entry_failure());
        assert_eq!(r.basic(), exit_reason::ENTRY_FAILURE_INVALID_GUEST_STATE);
        let r = ExitReason(exit_reason::CPUID as u32);
        assert!(
            !r.is_entry_failure() && !r.pending_mtf() && !r.from_vmx_root() && !r.in_enclave_mode()
        );
        assert_eq!(r.name(), "cpuid");
        assert!(ExitReason(1 << 28).pending_mtf());
    }

    #[test]
    fn io_qualification() {
        // `in al, dx` with DX = 0x3F8.
        let q = IoQualification::from_qualification((0x3F8 << 16) | (1 << 3));
        assert_eq!(
            q,
            IoQualification {
                size: 1,
                is_in: true,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3F8
            }
        );
        // `rep outsw` to DX = 0x1F0.
        let q = IoQualification::from_qualification((0x1F0 << 16) | (1 << 5) | (1 << 4) | 1);
        assert_eq!(q.size, 2);
        assert!(!q.is_in && q.string && q.rep && !q.immediate);
        // `out 0x80, eax` (immediate port).
        let q = IoQualification::from_qualification((0x80 << 16) | (1 << 6) | 3);
        assert_eq!((q.size, q.port, q.immediate), (4, 0x80, true));
        assert_eq!(IoQualification::from_qualification(2).size, 0);
    }

    #[test]
    fn cr_access_qualification() {
        // mov cr3, r9
        let q = CrAccessQualification::from_qualification((9 << 8) | 3);
        assert_eq!((q.cr, q.access, q.gpr), (3, CrAccessType::MovToCr, 9));
        // mov rax, cr4 -> mov from CR
        let q = CrAccessQualification::from_qualification((1 << 4) | 4);
        assert_eq!((q.cr, q.access, q.gpr), (4, CrAccessType::MovFromCr, 0));
        // clts
        assert_eq!(
            CrAccessQualification::from_qualification(2 << 4).access,
            CrAccessType::Clts
        );
        // lmsw [mem] with source 0x000F
        let q = CrAccessQualification::from_qualification((0xF << 16) | (1 << 6) | (3 << 4));
        assert_eq!(q.access, CrAccessType::Lmsw);
        assert!(q.lmsw_memory_operand);
        assert_eq!(q.lmsw_source, 0xF);
    }

    #[test]
    fn ept_violation_qualification() {
        // Write to a read-only, executable page via a linear address.
        let q = EptViolationQualification::from_qualification(0b1_1010_1010);
        assert!(!q.read && q.write && !q.fetch);
        assert!(q.readable && !q.writable && q.executable);
        assert!(q.linear_address_valid && q.translated_access && !q.nmi_unblocking);
        // Fetch from a not-present page during a guest page walk.
        let q = EptViolationQualification::from_qualification((1 << 7) | (1 << 2) | (1 << 12));
        assert!(q.fetch && !q.readable && !q.writable && !q.executable);
        assert!(q.linear_address_valid && !q.translated_access && q.nmi_unblocking);
    }

    #[test]
    fn event_injection_encodings() {
        assert_eq!(hardware_exception(13, Some(0)), 0x8000_0B0D);
        assert_eq!(hardware_exception(6, None), 0x8000_0306); // #UD
        assert_eq!(hardware_exception(14, Some(2)), 0x8000_0B0E);
        assert_eq!(external_interrupt(0x20), 0x8000_0020);
        assert_eq!(nmi(), 0x8000_0202);
        assert_eq!(software_interrupt(0x80), 0x8000_0480);
        assert_eq!(software_exception(3), 0x8000_0603);
        assert!(exception_has_error_code(13) && exception_has_error_code(8));
        assert!(!exception_has_error_code(6) && !exception_has_error_code(3));

        let mut v = SoftVmcs::new();
        inject_event(&mut v, hardware_exception(13, Some(0x18)), Some(0x18), 0);
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo), 0x8000_0B0D);
        assert_eq!(v.read(VmcsField::EntryExceptionErrorCode), 0x18);
        assert_eq!(v.read(VmcsField::EntryInstructionLength), 0);
    }
}
