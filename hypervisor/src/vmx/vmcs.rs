//! The VMCS as software sees it: the field encodings (SDM Vol. 3D Appendix B "Field
//! Encoding in VMCS"), the [`Vmcs`] access seam with its in-memory double
//! [`SoftVmcs`], the encodings of the guest-state fields that are more than a number
//! (access rights, interruptibility and activity state; SDM Vol. 3C 25.4 "Guest-State
//! Area"), and the texts of the VM-instruction error numbers (SDM Vol. 3C 31.4 "VM
//! Instruction Error Numbers").
//!
//! What a VM exit reports lives in [`super::exit`], event injection in
//! [`super::event`].

/// Width of a VMCS field, encoded in bits 14:13 of its encoding (SDM Vol. 3D Appendix B
/// "Field Encoding in VMCS").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldWidth {
    Bits16 = 0,
    Bits64 = 1,
    Bits32 = 2,
    /// 64 bits on processors that support Intel 64 — the only kind we run on.
    Natural = 3,
}

/// Type of a VMCS field, encoded in bits 11:10 of its encoding (SDM Vol. 3D Appendix B
/// "Field Encoding in VMCS").
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
        /// A VMCS field, with its encoding as the discriminant (SDM Vol. 3D Appendix B
        /// "Field Encoding in VMCS").
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

/// SDM meaning of a VM-instruction error number (VMCS field 0x4400), as listed in SDM
/// Vol. 3C 31.4 "VM Instruction Error Numbers" (Table 31-1 "VM-Instruction Error
/// Numbers"). Numbers 14, 21 and 27 are not assigned.
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
}
