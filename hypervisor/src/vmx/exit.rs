//! What the processor reports about a VM exit: the basic exit reasons (SDM Vol. 3D
//! Appendix C "VMX Basic Exit Reasons"), the full exit-reason field with its flag bits,
//! and the exit qualifications sluice decodes for I/O instructions, control-register
//! accesses and EPT violations (SDM Vol. 3C 28.2.1 "Basic VM-Exit Information").

/// Basic exit reasons (bits 15:0 of the exit-reason field), SDM Vol. 3D Table C-1
/// "Basic Exit Reasons".
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

/// The full 32-bit exit-reason field (the table "Format of Exit Reason" in SDM Vol. 3C
/// 25.9.1 "Basic VM-Exit Information"; what each bit reports: 28.2.1 "Basic VM-Exit
/// Information").
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

/// Exit qualification for I/O instructions (exit reason 30; SDM Vol. 3C Table 28-5
/// "Exit Qualification for I/O Instructions").
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

/// Exit qualification for control-register accesses (exit reason 28; SDM Vol. 3C
/// Table 28-3 "Exit Qualification for Control-Register Accesses").
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

/// Exit qualification for EPT violations (exit reason 48; SDM Vol. 3C Table 28-7 "Exit
/// Qualification for EPT Violations").
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

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
}
