//! A software pass over the VM-entry checks on the guest-state area, run before
//! VMLAUNCH so that a bad state is reported as the field at fault, its value and the
//! rule it breaks, rather than as the processor's bare "VM-entry failure due to
//! invalid guest state" (exit reason 33). SDM Vol. 3C 27.3.1 "Checks on the Guest State
//! Area" (the edition `crate::vmx` pins):
//! - 27.3.1.1 "Checks on Guest Control Registers, Debug Registers, and MSRs";
//! - 27.3.1.2 "Checks on Guest Segment Registers";
//! - 27.3.1.3 "Checks on Guest Descriptor-Table Registers";
//! - 27.3.1.4 "Checks on Guest RIP, RFLAGS, and SSP";
//! - 27.3.1.5 "Checks on Guest Non-Register State".
//!
//! Error messages name the section by its number alone (`(SDM 27.3.1.2)`) to stay on
//! one line; the titles above say which checks each number holds.

use core::fmt;

use crate::vmx::caps::{EntryControls, PrimaryControls, SecondaryControls, VmxCaps};
use crate::vmx::controls::cr0_forced_one;
use crate::vmx::guest_state::{read_segment, SegFields, CS, DS, ES, FS, GS, LDTR, SS, TR};
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::segment::access_rights as ar;
use crate::x86::segment::SegmentState;
use crate::x86::{is_canonical, Cr0, Cr4, Efer, Rflags};

/// Guest-physical address width assumed by [`check_guest_state`] for the CR3 check
/// (the exact width is CPUID.80000008H:EAX[7:0], which the VMCS does not hold; 46 is
/// what current server parts report, so a smaller real width can still slip by).
pub const ASSUMED_PHYS_ADDR_BITS: u32 = 46;

/// One rule of SDM Vol. 3C 27.3.1 "Checks on the Guest State Area" that the guest state
/// breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStateRule {
    // 27.3.1.1 "Checks on Guest Control Registers, Debug Registers, and MSRs"
    Cr0FixedBits,
    Cr0PagingWithoutProtection,
    Cr4FixedBits,
    Ia32eWithoutPaging,
    Ia32eWithoutPae,
    PcideOutsideIa32e,
    Cr3BeyondAddressWidth,
    Dr7HighBits,
    PatInvalidType,
    EferReservedBits,
    EferLmaMismatch,
    EferLmeMismatch,
    // 27.3.1.2 "Checks on Guest Segment Registers"
    TrSelectorTi,
    LdtrSelectorTi,
    SsRplMismatch,
    Vm86Base,
    Vm86Limit,
    Vm86AccessRights,
    BaseNotCanonical,
    BaseAbove4G,
    CsUnusable,
    CsType,
    CsDpl,
    CsLongAndDefaultSize,
    SsType,
    SsDpl,
    DataNotAccessed,
    DataCodeNotReadable,
    DataDpl,
    NotCodeOrData,
    NotPresent,
    AccessRightsReserved,
    LimitGranularity,
    TrUnusable,
    TrTypeIa32e,
    TrType,
    TrNotSystem,
    LdtrType,
    LdtrNotSystem,
    // 27.3.1.3 "Checks on Guest Descriptor-Table Registers"
    DescriptorTableLimit,
    // 27.3.1.4 "Checks on Guest RIP, RFLAGS, and SSP"
    RipAbove4G,
    RipNotCanonical,
    RflagsReserved,
    RflagsVm,
    RflagsIfForInterrupt,
    // 27.3.1.5 "Checks on Guest Non-Register State"
    ActivityStateInvalid,
    ActivityStateUnsupported,
    ActivityHltNotCpl0,
    InterruptibilityReserved,
    InterruptibilityStiAndMovSs,
    InterruptibilityStiWithoutIf,
    PendingDebugReserved,
    VmcsLinkPointer,
}

impl GuestStateRule {
    /// What the rule requires, in a few words.
    pub const fn message(self) -> &'static str {
        use GuestStateRule::*;
        match self {
            Cr0FixedBits => "CR0 violates IA32_VMX_CR0_FIXED0/FIXED1 (PE and PG are exempt only with unrestricted guest)",
            Cr0PagingWithoutProtection => "CR0.PG requires CR0.PE",
            Cr4FixedBits => "CR4 violates IA32_VMX_CR4_FIXED0/FIXED1 (VMXE must be set)",
            Ia32eWithoutPaging => "an IA-32e mode guest requires CR0.PG",
            Ia32eWithoutPae => "an IA-32e mode guest requires CR4.PAE",
            PcideOutsideIa32e => "CR4.PCIDE requires an IA-32e mode guest",
            Cr3BeyondAddressWidth => "CR3 sets bits beyond the physical-address width",
            Dr7HighBits => "DR7 bits 63:32 must be 0",
            PatInvalidType => "every IA32_PAT entry must be 0, 1, 4, 5, 6 or 7",
            EferReservedBits => "IA32_EFER reserved bits must be 0",
            EferLmaMismatch => "IA32_EFER.LMA must equal the 'IA-32e mode guest' VM-entry control",
            EferLmeMismatch => "with CR0.PG set, IA32_EFER.LME must equal IA32_EFER.LMA",
            TrSelectorTi => "the TR selector must have TI = 0",
            LdtrSelectorTi => "a usable LDTR selector must have TI = 0",
            SsRplMismatch => "without unrestricted guest, SS.RPL must equal CS.RPL",
            Vm86Base => "in virtual-8086 mode the base must be selector * 16",
            Vm86Limit => "in virtual-8086 mode the limit must be 0xFFFF",
            Vm86AccessRights => "in virtual-8086 mode the access rights must be 0xF3",
            BaseNotCanonical => "the base address must be canonical",
            BaseAbove4G => "bits 63:32 of the base address must be 0",
            CsUnusable => "CS cannot be unusable",
            CsType => "CS must be code of type 9, 11, 13 or 15 (or type 3 with unrestricted guest)",
            CsDpl => "CS.DPL is inconsistent with its type and SS.DPL",
            CsLongAndDefaultSize => "in IA-32e mode CS.L = 1 requires CS.D = 0",
            SsType => "a usable SS must be read/write data (type 3 or 7)",
            SsDpl => "SS.DPL must be 0 in real mode or with a type-3 CS, and equal SS.RPL without unrestricted guest",
            DataNotAccessed => "a usable data segment must have the accessed bit (type bit 0) set",
            DataCodeNotReadable => "a code segment loaded in a data segment register must be readable",
            DataDpl => "without unrestricted guest, a data segment's DPL must not be below its RPL",
            NotCodeOrData => "a usable code/data segment must have S = 1",
            NotPresent => "a usable segment must be present (P = 1)",
            AccessRightsReserved => "access-rights bits 11:8 and 31:17 must be 0",
            LimitGranularity => "the limit is inconsistent with the G bit (limit[11:0] < 0xFFF needs G = 0, limit[31:20] != 0 needs G = 1)",
            TrUnusable => "TR must be usable",
            TrTypeIa32e => "TR must be a busy TSS (type 11) in IA-32e mode",
            TrType => "TR must be a busy TSS (type 3 or 11)",
            TrNotSystem => "TR must be a system descriptor (S = 0)",
            LdtrType => "a usable LDTR must be an LDT (type 2)",
            LdtrNotSystem => "a usable LDTR must be a system descriptor (S = 0)",
            DescriptorTableLimit => "GDTR/IDTR limit bits 31:16 must be 0",
            RipAbove4G => "RIP bits 63:32 must be 0 outside 64-bit mode",
            RipNotCanonical => "RIP must be canonical in 64-bit mode",
            RflagsReserved => "RFLAGS bit 1 must be 1 and bits 3, 5, 15 and 63:22 must be 0",
            RflagsVm => "RFLAGS.VM must be 0 in IA-32e mode and in real mode",
            RflagsIfForInterrupt => "injecting an external interrupt requires RFLAGS.IF = 1",
            ActivityStateInvalid => "the activity state must be 0 (active), 1 (HLT), 2 (shutdown) or 3 (wait-for-SIPI)",
            ActivityStateUnsupported => "the activity state is not supported by this CPU (IA32_VMX_MISC)",
            ActivityHltNotCpl0 => "the HLT activity state requires SS.DPL = 0",
            InterruptibilityReserved => "interruptibility-state bits 31:5 must be 0",
            InterruptibilityStiAndMovSs => "blocking by STI and by MOV SS cannot both be set",
            InterruptibilityStiWithoutIf => "blocking by STI requires RFLAGS.IF = 1",
            PendingDebugReserved => "pending-debug-exceptions bits 11:4, 13, 15 and 63:17 must be 0",
            VmcsLinkPointer => "the VMCS link pointer must be 0xFFFFFFFFFFFFFFFF (no shadow VMCS)",
        }
    }

    /// The SDM Vol. 3C section stating the rule (its number; the module documentation
    /// gives the titles).
    pub const fn section(self) -> &'static str {
        use GuestStateRule::*;
        match self {
            Cr0FixedBits
            | Cr0PagingWithoutProtection
            | Cr4FixedBits
            | Ia32eWithoutPaging
            | Ia32eWithoutPae
            | PcideOutsideIa32e
            | Cr3BeyondAddressWidth
            | Dr7HighBits
            | PatInvalidType
            | EferReservedBits
            | EferLmaMismatch
            | EferLmeMismatch => "27.3.1.1",
            DescriptorTableLimit => "27.3.1.3",
            RipAbove4G | RipNotCanonical | RflagsReserved | RflagsVm | RflagsIfForInterrupt => {
                "27.3.1.4"
            }
            ActivityStateInvalid
            | ActivityStateUnsupported
            | ActivityHltNotCpl0
            | InterruptibilityReserved
            | InterruptibilityStiAndMovSs
            | InterruptibilityStiWithoutIf
            | PendingDebugReserved
            | VmcsLinkPointer => "27.3.1.5",
            _ => "27.3.1.2",
        }
    }
}

/// The first guest-state field [`check_guest_state`] finds at fault, its value, and
/// the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStateError {
    pub field: VmcsField,
    pub value: u64,
    pub rule: GuestStateRule,
}

impl fmt::Display for GuestStateError {
    /// One line, e.g. `guest_tr_access_rights 0x83: TR must be a busy TSS (type 11)
    /// in IA-32e mode (SDM 27.3.1.2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:#x}: {} (SDM {})",
            self.field.name(),
            self.value,
            self.rule.message(),
            self.rule.section()
        )
    }
}

impl core::error::Error for GuestStateError {}

const AR_TYPE: u32 = ar::TYPE_MASK;
const AR_DPL: u32 = 3 << ar::DPL_SHIFT;
const AR_RESERVED: u32 = 0xF00 | !0x1_FFFF;

const fn dpl(access_rights: u32) -> u32 {
    (access_rights & AR_DPL) >> ar::DPL_SHIFT
}

const fn usable(s: &SegmentState) -> bool {
    s.access_rights & ar::UNUSABLE == 0
}

type Check = Result<(), GuestStateError>;

fn fail(field: VmcsField, value: u64, rule: GuestStateRule) -> Check {
    Err(GuestStateError { field, value, rule })
}

fn ensure(ok: bool, field: VmcsField, value: u64, rule: GuestStateRule) -> Check {
    if ok {
        Ok(())
    } else {
        fail(field, value, rule)
    }
}

/// P, reserved access-rights bits and limit/G consistency: common to every usable
/// segment (SDM Vol. 3C 27.3.1.2 "Checks on Guest Segment Registers").
fn check_present_reserved_granularity(s: &SegmentState, f: SegFields) -> Check {
    let a = s.access_rights;
    ensure(
        a & ar::P != 0,
        f.access_rights,
        a.into(),
        GuestStateRule::NotPresent,
    )?;
    ensure(
        a & AR_RESERVED == 0,
        f.access_rights,
        a.into(),
        GuestStateRule::AccessRightsReserved,
    )?;
    let g = a & ar::G != 0;
    let ok = (s.limit & 0xFFF == 0xFFF || !g) && (s.limit >> 20 == 0 || g);
    ensure(
        ok,
        f.limit,
        s.limit.into(),
        GuestStateRule::LimitGranularity,
    )
}

/// Checks the guest-state area in `vmcs` against a useful subset of the VM-entry checks
/// of SDM Vol. 3C 27.3.1 "Checks on the Guest State Area" (control registers and MSRs,
/// segment registers, descriptor-table registers, RIP/RFLAGS, non-register state),
/// reading the VM-entry and secondary controls from the same VMCS. Returns the first
/// violation found, in the SDM's order. Passing does not guarantee the CPU accepts the
/// state (not every check is modelled; the physical-address width is assumed to be
/// [`ASSUMED_PHYS_ADDR_BITS`]), but a failure always names a real problem.
pub fn check_guest_state(vmcs: &impl Vmcs, caps: &VmxCaps) -> Result<(), GuestStateError> {
    use GuestStateRule as R;
    use VmcsField as F;

    let entry = vmcs.read(F::EntryControls) as u32;
    let primary = vmcs.read(F::PrimaryProcControls) as u32;
    let secondary = if primary & PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits() != 0 {
        vmcs.read(F::SecondaryProcControls) as u32
    } else {
        0
    };
    let ug = secondary & SecondaryControls::UNRESTRICTED_GUEST.bits() != 0;
    let ia32e = entry & EntryControls::IA32E_MODE_GUEST.bits() != 0;
    let linear_bits = if caps.cr4_fixed1 & Cr4::LA57.bits() != 0 {
        57
    } else {
        48
    };

    // --- 27.3.1.1 "Checks on Guest Control Registers, Debug Registers, and MSRs" -----
    let cr0v = vmcs.read(F::GuestCr0);
    let forced = cr0_forced_one(caps, ug);
    ensure(
        cr0v & forced == forced && cr0v & !caps.cr0_fixed1 == 0,
        F::GuestCr0,
        cr0v,
        R::Cr0FixedBits,
    )?;
    ensure(
        cr0v & Cr0::PG.bits() == 0 || cr0v & Cr0::PE.bits() != 0,
        F::GuestCr0,
        cr0v,
        R::Cr0PagingWithoutProtection,
    )?;
    let cr4v = vmcs.read(F::GuestCr4);
    ensure(
        cr4v & caps.cr4_fixed0 == caps.cr4_fixed0 && cr4v & !caps.cr4_fixed1 == 0,
        F::GuestCr4,
        cr4v,
        R::Cr4FixedBits,
    )?;
    if ia32e {
        ensure(
            cr0v & Cr0::PG.bits() != 0,
            F::GuestCr0,
            cr0v,
            R::Ia32eWithoutPaging,
        )?;
        ensure(
            cr4v & Cr4::PAE.bits() != 0,
            F::GuestCr4,
            cr4v,
            R::Ia32eWithoutPae,
        )?;
    } else {
        ensure(
            cr4v & Cr4::PCIDE.bits() == 0,
            F::GuestCr4,
            cr4v,
            R::PcideOutsideIa32e,
        )?;
    }
    let cr3v = vmcs.read(F::GuestCr3);
    ensure(
        cr3v >> ASSUMED_PHYS_ADDR_BITS == 0,
        F::GuestCr3,
        cr3v,
        R::Cr3BeyondAddressWidth,
    )?;
    if entry & EntryControls::LOAD_DEBUG_CONTROLS.bits() != 0 {
        let dr7 = vmcs.read(F::GuestDr7);
        ensure(dr7 >> 32 == 0, F::GuestDr7, dr7, R::Dr7HighBits)?;
    }
    if entry & EntryControls::LOAD_PAT.bits() != 0 {
        let pat = vmcs.read(F::GuestIa32Pat);
        let ok = pat
            .to_le_bytes()
            .iter()
            .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7));
        ensure(ok, F::GuestIa32Pat, pat, R::PatInvalidType)?;
    }
    if entry & EntryControls::LOAD_EFER.bits() != 0 {
        let e = vmcs.read(F::GuestIa32Efer);
        let known = Efer::SCE.bits() | Efer::LME.bits() | Efer::LMA.bits() | Efer::NXE.bits();
        ensure(e & !known == 0, F::GuestIa32Efer, e, R::EferReservedBits)?;
        ensure(
            (e & Efer::LMA.bits() != 0) == ia32e,
            F::GuestIa32Efer,
            e,
            R::EferLmaMismatch,
        )?;
        ensure(
            cr0v & Cr0::PG.bits() == 0
                || (e & Efer::LME.bits() != 0) == (e & Efer::LMA.bits() != 0),
            F::GuestIa32Efer,
            e,
            R::EferLmeMismatch,
        )?;
    }

    // --- 27.3.1.2 "Checks on Guest Segment Registers" --------------------------------
    let rflags_v = vmcs.read(F::GuestRflags);
    let vm86 = rflags_v & Rflags::VM.bits() != 0;
    // A 27.3.1.4 check (RFLAGS.VM), done here because it decides which segment rules
    // apply: a stray VM flag is better reported as itself than as eight VM86 segment
    // faults.
    ensure(
        !vm86 || (!ia32e && cr0v & Cr0::PE.bits() != 0),
        F::GuestRflags,
        rflags_v,
        R::RflagsVm,
    )?;
    let cs = read_segment(vmcs, CS);
    let ss = read_segment(vmcs, SS);
    let tr = read_segment(vmcs, TR);
    let ldtr = read_segment(vmcs, LDTR);
    let data = [
        (DS, read_segment(vmcs, DS)),
        (ES, read_segment(vmcs, ES)),
        (FS, read_segment(vmcs, FS)),
        (GS, read_segment(vmcs, GS)),
    ];

    // Selectors.
    ensure(
        tr.selector & 4 == 0,
        F::GuestTrSelector,
        tr.selector.into(),
        R::TrSelectorTi,
    )?;
    if usable(&ldtr) {
        ensure(
            ldtr.selector & 4 == 0,
            F::GuestLdtrSelector,
            ldtr.selector.into(),
            R::LdtrSelectorTi,
        )?;
    }
    if !vm86 && !ug {
        ensure(
            ss.selector & 3 == cs.selector & 3,
            F::GuestSsSelector,
            ss.selector.into(),
            R::SsRplMismatch,
        )?;
    }

    // Bases.
    let all_six = [(CS, cs), (SS, ss), data[0], data[1], data[2], data[3]];
    if vm86 {
        for (f, s) in &all_six {
            ensure(
                s.base == u64::from(s.selector) << 4,
                f.base,
                s.base,
                R::Vm86Base,
            )?;
        }
    }
    for (f, s) in [(TR, &tr), (FS, &data[2].1), (GS, &data[3].1)] {
        ensure(
            is_canonical(s.base, linear_bits),
            f.base,
            s.base,
            R::BaseNotCanonical,
        )?;
    }
    if usable(&ldtr) {
        ensure(
            is_canonical(ldtr.base, linear_bits),
            F::GuestLdtrBase,
            ldtr.base,
            R::BaseNotCanonical,
        )?;
    }
    ensure(cs.base >> 32 == 0, F::GuestCsBase, cs.base, R::BaseAbove4G)?;
    for (f, s) in [(SS, &ss), (DS, &data[0].1), (ES, &data[1].1)] {
        if usable(s) {
            ensure(s.base >> 32 == 0, f.base, s.base, R::BaseAbove4G)?;
        }
    }

    // Limits and access rights.
    if vm86 {
        for (f, s) in &all_six {
            ensure(s.limit == 0xFFFF, f.limit, s.limit.into(), R::Vm86Limit)?;
            ensure(
                s.access_rights == 0xF3,
                f.access_rights,
                s.access_rights.into(),
                R::Vm86AccessRights,
            )?;
        }
    } else {
        // CS.
        let a = cs.access_rights;
        let av = u64::from(a);
        let ty = a & AR_TYPE;
        ensure(usable(&cs), F::GuestCsAccessRights, av, R::CsUnusable)?;
        ensure(
            matches!(ty, 9 | 11 | 13 | 15) || (ug && ty == 3),
            F::GuestCsAccessRights,
            av,
            R::CsType,
        )?;
        ensure(a & ar::S != 0, F::GuestCsAccessRights, av, R::NotCodeOrData)?;
        let dpl_ok = match ty {
            3 => dpl(a) == 0,
            9 | 11 => dpl(a) == dpl(ss.access_rights),
            _ => dpl(a) <= dpl(ss.access_rights),
        };
        ensure(dpl_ok, F::GuestCsAccessRights, av, R::CsDpl)?;
        check_present_reserved_granularity(&cs, CS)?;
        if ia32e {
            ensure(
                a & ar::L == 0 || a & ar::DB == 0,
                F::GuestCsAccessRights,
                av,
                R::CsLongAndDefaultSize,
            )?;
        }

        // SS.
        let a = ss.access_rights;
        let av = u64::from(a);
        if usable(&ss) {
            ensure(
                matches!(a & AR_TYPE, 3 | 7),
                F::GuestSsAccessRights,
                av,
                R::SsType,
            )?;
            ensure(a & ar::S != 0, F::GuestSsAccessRights, av, R::NotCodeOrData)?;
        }
        let ss_dpl_ok = (ug || dpl(a) == u32::from(ss.selector & 3))
            && ((cs.access_rights & AR_TYPE != 3 && cr0v & Cr0::PE.bits() != 0) || dpl(a) == 0);
        ensure(ss_dpl_ok, F::GuestSsAccessRights, av, R::SsDpl)?;
        if usable(&ss) {
            check_present_reserved_granularity(&ss, SS)?;
        }

        // DS, ES, FS, GS.
        for (f, s) in &data {
            if !usable(s) {
                continue;
            }
            let a = s.access_rights;
            let av = u64::from(a);
            let ty = a & AR_TYPE;
            ensure(ty & 1 != 0, f.access_rights, av, R::DataNotAccessed)?;
            ensure(
                ty & 8 == 0 || ty & 2 != 0,
                f.access_rights,
                av,
                R::DataCodeNotReadable,
            )?;
            ensure(a & ar::S != 0, f.access_rights, av, R::NotCodeOrData)?;
            ensure(
                ug || ty > 11 || dpl(a) >= u32::from(s.selector & 3),
                f.access_rights,
                av,
                R::DataDpl,
            )?;
            check_present_reserved_granularity(s, *f)?;
        }
    }

    // TR.
    let a = tr.access_rights;
    let av = u64::from(a);
    ensure(usable(&tr), F::GuestTrAccessRights, av, R::TrUnusable)?;
    if ia32e {
        ensure(
            a & AR_TYPE == 11,
            F::GuestTrAccessRights,
            av,
            R::TrTypeIa32e,
        )?;
    } else {
        ensure(
            matches!(a & AR_TYPE, 3 | 11),
            F::GuestTrAccessRights,
            av,
            R::TrType,
        )?;
    }
    ensure(a & ar::S == 0, F::GuestTrAccessRights, av, R::TrNotSystem)?;
    check_present_reserved_granularity(&tr, TR)?;

    // LDTR.
    if usable(&ldtr) {
        let a = ldtr.access_rights;
        let av = u64::from(a);
        ensure(a & AR_TYPE == 2, F::GuestLdtrAccessRights, av, R::LdtrType)?;
        ensure(
            a & ar::S == 0,
            F::GuestLdtrAccessRights,
            av,
            R::LdtrNotSystem,
        )?;
        check_present_reserved_granularity(&ldtr, LDTR)?;
    }

    // --- 27.3.1.3 "Checks on Guest Descriptor-Table Registers": GDTR, IDTR -----------
    for (base, limit) in [
        (F::GuestGdtrBase, F::GuestGdtrLimit),
        (F::GuestIdtrBase, F::GuestIdtrLimit),
    ] {
        let b = vmcs.read(base);
        ensure(is_canonical(b, linear_bits), base, b, R::BaseNotCanonical)?;
        let l = vmcs.read(limit);
        ensure(l >> 16 == 0, limit, l, R::DescriptorTableLimit)?;
    }

    // --- 27.3.1.4 "Checks on Guest RIP, RFLAGS, and SSP" -----------------------------
    let rip = vmcs.read(F::GuestRip);
    if ia32e && cs.access_rights & ar::L != 0 {
        ensure(
            is_canonical(rip, linear_bits),
            F::GuestRip,
            rip,
            R::RipNotCanonical,
        )?;
    } else {
        ensure(rip >> 32 == 0, F::GuestRip, rip, R::RipAbove4G)?;
    }
    ensure(
        rflags_v & Rflags::RESERVED == 0 && rflags_v & Rflags::FIXED1.bits() != 0,
        F::GuestRflags,
        rflags_v,
        R::RflagsReserved,
    )?;
    let inject = vmcs.read(F::EntryInterruptionInfo) as u32;
    let injects_interrupt = inject & (1 << 31) != 0 && (inject >> 8) & 7 == 0;
    ensure(
        !injects_interrupt || rflags_v & Rflags::IF.bits() != 0,
        F::GuestRflags,
        rflags_v,
        R::RflagsIfForInterrupt,
    )?;

    // --- 27.3.1.5 "Checks on Guest Non-Register State" -------------------------------
    let activity = vmcs.read(F::GuestActivityState);
    ensure(
        activity <= 3,
        F::GuestActivityState,
        activity,
        R::ActivityStateInvalid,
    )?;
    let supported = match activity {
        1 => caps.misc.activity_hlt,
        2 => caps.misc.activity_shutdown,
        3 => caps.misc.activity_wait_for_sipi,
        _ => true,
    };
    ensure(
        supported,
        F::GuestActivityState,
        activity,
        R::ActivityStateUnsupported,
    )?;
    ensure(
        activity != 1 || dpl(ss.access_rights) == 0,
        F::GuestActivityState,
        activity,
        R::ActivityHltNotCpl0,
    )?;
    let intr = vmcs.read(F::GuestInterruptibilityState);
    ensure(
        intr >> 5 == 0,
        F::GuestInterruptibilityState,
        intr,
        R::InterruptibilityReserved,
    )?;
    ensure(
        intr & 3 != 3,
        F::GuestInterruptibilityState,
        intr,
        R::InterruptibilityStiAndMovSs,
    )?;
    ensure(
        intr & 1 == 0 || rflags_v & Rflags::IF.bits() != 0,
        F::GuestInterruptibilityState,
        intr,
        R::InterruptibilityStiWithoutIf,
    )?;
    let pending = vmcs.read(F::GuestPendingDebugExceptions);
    let pending_reserved: u64 = 0xFF0 | (1 << 13) | (1 << 15) | !0x1_FFFF;
    ensure(
        pending & pending_reserved == 0,
        F::GuestPendingDebugExceptions,
        pending,
        R::PendingDebugReserved,
    )?;
    let link = vmcs.read(F::VmcsLinkPointer);
    ensure(
        link == u64::MAX,
        F::VmcsLinkPointer,
        link,
        R::VmcsLinkPointer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fixtures::{caps, caps_without_true, long_vmcs, real_vmcs, vmcs_for};
    use crate::vmx::guest_state::{
        write_guest_long_mode, write_guest_real_mode, write_guest_reset_vector, DR7_DEFAULT,
        PAT_DEFAULT,
    };
    use crate::vmx::vmcs::SoftVmcs;

    /// Asserts `check_guest_state` rejects `v` naming `field` and `rule`.
    #[track_caller]
    fn rejects(v: &SoftVmcs, field: VmcsField, rule: GuestStateRule) {
        match check_guest_state(v, &caps()) {
            Err(e) => {
                assert_eq!((e.field, e.rule), (field, rule), "{e}");
                let s = e.to_string();
                assert!(s.starts_with(field.name()) && !s.contains('\n'), "{s}");
            }
            Ok(()) => panic!("accepted; expected {} / {rule:?}", field.name()),
        }
    }

    // --- what the guest-state writers produce passes -------------------------------

    #[test]
    fn real_mode_state_passes() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        write_guest_real_mode(&mut v, &c, 0x1000, 0x0100, 0x2000, 0xFFFE);
        assert_eq!(check_guest_state(&v, &c), Ok(()));
        assert_eq!(check_guest_state(&real_vmcs(), &c), Ok(()));
    }

    #[test]
    fn reset_vector_state_passes() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        let _ = write_guest_reset_vector(&mut v, &c);
        assert_eq!(check_guest_state(&v, &c), Ok(()));
    }

    #[test]
    fn long_mode_state_passes() {
        assert_eq!(check_guest_state(&long_vmcs(), &caps()), Ok(()));
    }

    #[test]
    fn every_state_passes_without_true_controls() {
        // Forced "load debug controls" and CR3 exiting do not upset anything.
        let c = caps_without_true();
        for kind in 0..3 {
            let mut v = vmcs_for(&c, kind == 2);
            match kind {
                0 => write_guest_real_mode(&mut v, &c, 0, 0x7C00, 0, 0x7C00),
                1 => {
                    let _ = write_guest_reset_vector(&mut v, &c);
                }
                _ => write_guest_long_mode(&mut v, &c, 0x1000, 0x8000, 0x10_0000, 0x2000),
            }
            assert_eq!(check_guest_state(&v, &c), Ok(()), "kind {kind}");
        }
    }

    // --- guest-state checker: one broken thing at a time -----------------------------

    #[test]
    fn rejects_cr0_without_ne() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestCr0, Cr0::ET.bits());
        rejects(&v, VmcsField::GuestCr0, GuestStateRule::Cr0FixedBits);
    }

    #[test]
    fn rejects_real_mode_without_unrestricted_guest() {
        let mut v = real_vmcs();
        let sec = v.read(VmcsField::SecondaryProcControls)
            & !u64::from(SecondaryControls::UNRESTRICTED_GUEST.bits());
        v.write(VmcsField::SecondaryProcControls, sec);
        rejects(&v, VmcsField::GuestCr0, GuestStateRule::Cr0FixedBits);
    }

    #[test]
    fn rejects_paging_without_protection() {
        let mut v = real_vmcs();
        v.write(
            VmcsField::GuestCr0,
            Cr0::PG.bits() | Cr0::NE.bits() | Cr0::ET.bits(),
        );
        rejects(
            &v,
            VmcsField::GuestCr0,
            GuestStateRule::Cr0PagingWithoutProtection,
        );
    }

    #[test]
    fn rejects_cr4_without_vmxe() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCr4, Cr4::PAE.bits());
        rejects(&v, VmcsField::GuestCr4, GuestStateRule::Cr4FixedBits);
    }

    #[test]
    fn rejects_ia32e_without_pae() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCr4, Cr4::VMXE.bits());
        rejects(&v, VmcsField::GuestCr4, GuestStateRule::Ia32eWithoutPae);
    }

    #[test]
    fn rejects_ia32e_without_paging() {
        let mut v = long_vmcs();
        v.write(
            VmcsField::GuestCr0,
            Cr0::PE.bits() | Cr0::NE.bits() | Cr0::ET.bits(),
        );
        rejects(&v, VmcsField::GuestCr0, GuestStateRule::Ia32eWithoutPaging);
    }

    #[test]
    fn rejects_lma_without_ia32e_control() {
        let mut v = long_vmcs();
        let entry =
            v.read(VmcsField::EntryControls) & !u64::from(EntryControls::IA32E_MODE_GUEST.bits());
        v.write(VmcsField::EntryControls, entry);
        // CR0.PG and CR4.PAE are fine outside IA-32e mode; LMA is not.
        rejects(
            &v,
            VmcsField::GuestIa32Efer,
            GuestStateRule::EferLmaMismatch,
        );
    }

    #[test]
    fn rejects_efer_problems() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestIa32Efer, Efer::LMA.bits());
        rejects(
            &v,
            VmcsField::GuestIa32Efer,
            GuestStateRule::EferLmeMismatch,
        );
        v.write(
            VmcsField::GuestIa32Efer,
            Efer::LME.bits() | Efer::LMA.bits() | (1 << 2),
        );
        rejects(
            &v,
            VmcsField::GuestIa32Efer,
            GuestStateRule::EferReservedBits,
        );
    }

    #[test]
    fn rejects_wide_cr3() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCr3, 1 << 50);
        rejects(
            &v,
            VmcsField::GuestCr3,
            GuestStateRule::Cr3BeyondAddressWidth,
        );
    }

    #[test]
    fn rejects_dr7_high_bits_when_loading_debug_controls() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestDr7, DR7_DEFAULT | (1 << 40));
        // Not loaded without "load debug controls": not checked.
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        let entry =
            v.read(VmcsField::EntryControls) | u64::from(EntryControls::LOAD_DEBUG_CONTROLS.bits());
        v.write(VmcsField::EntryControls, entry);
        rejects(&v, VmcsField::GuestDr7, GuestStateRule::Dr7HighBits);
    }

    #[test]
    fn rejects_bad_pat() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestIa32Pat, (PAT_DEFAULT & !0xFF00) | (2 << 8));
        rejects(&v, VmcsField::GuestIa32Pat, GuestStateRule::PatInvalidType);
    }

    #[test]
    fn rejects_tr_not_busy_tss_in_ia32e() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestTrAccessRights, 0x83);
        rejects(
            &v,
            VmcsField::GuestTrAccessRights,
            GuestStateRule::TrTypeIa32e,
        );
        let e = check_guest_state(&v, &caps()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest_tr_access_rights 0x83: TR must be a busy TSS (type 11) in IA-32e mode (SDM 27.3.1.2)"
        );
        // Type 3 is fine outside IA-32e mode.
        let mut v = real_vmcs();
        v.write(VmcsField::GuestTrAccessRights, 0x83);
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        v.write(VmcsField::GuestTrAccessRights, 0x89);
        rejects(&v, VmcsField::GuestTrAccessRights, GuestStateRule::TrType);
    }

    #[test]
    fn rejects_unusable_or_code_data_tr() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestTrAccessRights, u64::from(ar::UNUSABLE));
        rejects(
            &v,
            VmcsField::GuestTrAccessRights,
            GuestStateRule::TrUnusable,
        );
        v.write(VmcsField::GuestTrAccessRights, 0x9B);
        rejects(
            &v,
            VmcsField::GuestTrAccessRights,
            GuestStateRule::TrNotSystem,
        );
        v.write(VmcsField::GuestTrAccessRights, 0x0B);
        rejects(
            &v,
            VmcsField::GuestTrAccessRights,
            GuestStateRule::NotPresent,
        );
    }

    #[test]
    fn rejects_tr_selector_with_ti() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestTrSelector, 0x1C);
        rejects(&v, VmcsField::GuestTrSelector, GuestStateRule::TrSelectorTi);
    }

    #[test]
    fn rejects_usable_ldtr_of_wrong_type() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestLdtrAccessRights, 0x83);
        rejects(
            &v,
            VmcsField::GuestLdtrAccessRights,
            GuestStateRule::LdtrType,
        );
    }

    #[test]
    fn rejects_data_segment_as_cs() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCsAccessRights, 0xA093);
        // Type 3 (data) is accepted as CS with unrestricted guest and DPL 0; type 1
        // (read-only data) never is.
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        v.write(VmcsField::GuestCsAccessRights, 0xA091);
        rejects(&v, VmcsField::GuestCsAccessRights, GuestStateRule::CsType);
    }

    #[test]
    fn rejects_cs_with_l_and_d() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCsAccessRights, 0xE09B);
        rejects(
            &v,
            VmcsField::GuestCsAccessRights,
            GuestStateRule::CsLongAndDefaultSize,
        );
    }

    #[test]
    fn rejects_cs_dpl_mismatch() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestCsAccessRights, 0xA0BB); // DPL 1, SS DPL 0
        rejects(&v, VmcsField::GuestCsAccessRights, GuestStateRule::CsDpl);
    }

    #[test]
    fn rejects_limit_inconsistent_with_granularity() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestCsLimit, 0x10_0000);
        rejects(
            &v,
            VmcsField::GuestCsLimit,
            GuestStateRule::LimitGranularity,
        );
        let mut v = long_vmcs();
        v.write(VmcsField::GuestDsLimit, 0xFFFF_F000);
        rejects(
            &v,
            VmcsField::GuestDsLimit,
            GuestStateRule::LimitGranularity,
        );
    }

    #[test]
    fn rejects_unaccessed_or_absent_data_segments() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestDsAccessRights, 0xC092);
        rejects(
            &v,
            VmcsField::GuestDsAccessRights,
            GuestStateRule::DataNotAccessed,
        );
        let mut v = long_vmcs();
        v.write(VmcsField::GuestGsAccessRights, 0xC013);
        rejects(
            &v,
            VmcsField::GuestGsAccessRights,
            GuestStateRule::NotPresent,
        );
        let mut v = long_vmcs();
        v.write(VmcsField::GuestSsAccessRights, 0xC09B);
        rejects(&v, VmcsField::GuestSsAccessRights, GuestStateRule::SsType);
        // Unusable data segments are not checked.
        let mut v = long_vmcs();
        v.write(VmcsField::GuestFsAccessRights, u64::from(ar::UNUSABLE));
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
    }

    #[test]
    fn rejects_reserved_access_rights_bits() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestEsAccessRights, 0x193);
        rejects(
            &v,
            VmcsField::GuestEsAccessRights,
            GuestStateRule::AccessRightsReserved,
        );
    }

    #[test]
    fn rejects_non_canonical_bases() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestFsBase, 0x0000_8000_0000_0000);
        rejects(&v, VmcsField::GuestFsBase, GuestStateRule::BaseNotCanonical);
        let mut v = long_vmcs();
        v.write(VmcsField::GuestIdtrBase, 0x1234_0000_0000_0000);
        rejects(
            &v,
            VmcsField::GuestIdtrBase,
            GuestStateRule::BaseNotCanonical,
        );
        // Canonical high-half addresses are fine.
        let mut v = long_vmcs();
        v.write(VmcsField::GuestGsBase, 0xFFFF_8000_0000_0000);
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        let mut v = real_vmcs();
        v.write(VmcsField::GuestCsBase, 1 << 32);
        rejects(&v, VmcsField::GuestCsBase, GuestStateRule::BaseAbove4G);
    }

    #[test]
    fn rejects_wide_descriptor_table_limit() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestGdtrLimit, 0x1_0000);
        rejects(
            &v,
            VmcsField::GuestGdtrLimit,
            GuestStateRule::DescriptorTableLimit,
        );
    }

    #[test]
    fn rejects_rip_problems() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestRip, 1 << 32);
        rejects(&v, VmcsField::GuestRip, GuestStateRule::RipAbove4G);
        let mut v = long_vmcs();
        v.write(VmcsField::GuestRip, 0xFFFF_8000_0000_0000);
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        v.write(VmcsField::GuestRip, 0x0001_0000_0000_0000);
        rejects(&v, VmcsField::GuestRip, GuestStateRule::RipNotCanonical);
    }

    #[test]
    fn rejects_rflags_problems() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestRflags, 0);
        rejects(&v, VmcsField::GuestRflags, GuestStateRule::RflagsReserved);
        v.write(VmcsField::GuestRflags, 0x2 | (1 << 3));
        rejects(&v, VmcsField::GuestRflags, GuestStateRule::RflagsReserved);
        v.write(VmcsField::GuestRflags, 0x2 | (1 << 22));
        rejects(&v, VmcsField::GuestRflags, GuestStateRule::RflagsReserved);
        let mut v = long_vmcs();
        v.write(VmcsField::GuestRflags, 0x2 | Rflags::VM.bits());
        rejects(&v, VmcsField::GuestRflags, GuestStateRule::RflagsVm);
        let mut v = real_vmcs();
        v.write(VmcsField::GuestRflags, 0x2 | Rflags::VM.bits());
        rejects(&v, VmcsField::GuestRflags, GuestStateRule::RflagsVm);
        let mut v = real_vmcs();
        v.write(VmcsField::EntryInterruptionInfo, 0x8000_0020);
        rejects(
            &v,
            VmcsField::GuestRflags,
            GuestStateRule::RflagsIfForInterrupt,
        );
    }

    #[test]
    fn rejects_vm86_with_wrong_segments() {
        // A protected-mode guest with VM set: segments must look like VM86 ones.
        let mut v = real_vmcs();
        v.write(
            VmcsField::GuestCr0,
            Cr0::PE.bits() | Cr0::NE.bits() | Cr0::ET.bits(),
        );
        v.write(VmcsField::GuestRflags, 0x2 | Rflags::VM.bits());
        rejects(
            &v,
            VmcsField::GuestCsAccessRights,
            GuestStateRule::Vm86AccessRights,
        );
        for f in [CS, SS, DS, ES, FS, GS] {
            v.write(f.access_rights, 0xF3);
        }
        v.write(VmcsField::GuestSsLimit, 0xFFFE);
        rejects(&v, VmcsField::GuestSsLimit, GuestStateRule::Vm86Limit);
        v.write(VmcsField::GuestSsLimit, 0xFFFF);
        v.write(VmcsField::GuestCsBase, 0x10);
        rejects(&v, VmcsField::GuestCsBase, GuestStateRule::Vm86Base);
    }

    #[test]
    fn rejects_bad_activity_state() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestActivityState, 4);
        rejects(
            &v,
            VmcsField::GuestActivityState,
            GuestStateRule::ActivityStateInvalid,
        );
        v.write(VmcsField::GuestActivityState, 1);
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        let mut c = caps();
        c.misc.activity_hlt = false;
        assert_eq!(
            check_guest_state(&v, &c).unwrap_err().rule,
            GuestStateRule::ActivityStateUnsupported
        );
    }

    #[test]
    fn rejects_bad_interruptibility() {
        let mut v = real_vmcs();
        v.write(VmcsField::GuestInterruptibilityState, 1 << 5);
        rejects(
            &v,
            VmcsField::GuestInterruptibilityState,
            GuestStateRule::InterruptibilityReserved,
        );
        v.write(VmcsField::GuestInterruptibilityState, 3);
        rejects(
            &v,
            VmcsField::GuestInterruptibilityState,
            GuestStateRule::InterruptibilityStiAndMovSs,
        );
        v.write(VmcsField::GuestInterruptibilityState, 1);
        rejects(
            &v,
            VmcsField::GuestInterruptibilityState,
            GuestStateRule::InterruptibilityStiWithoutIf,
        );
    }

    #[test]
    fn rejects_reserved_pending_debug_exceptions() {
        let mut v = long_vmcs();
        v.write(VmcsField::GuestPendingDebugExceptions, 1 << 4);
        rejects(
            &v,
            VmcsField::GuestPendingDebugExceptions,
            GuestStateRule::PendingDebugReserved,
        );
    }

    #[test]
    fn rejects_vmcs_link_pointer_other_than_all_ones() {
        let mut v = long_vmcs();
        v.write(VmcsField::VmcsLinkPointer, 0);
        rejects(
            &v,
            VmcsField::VmcsLinkPointer,
            GuestStateRule::VmcsLinkPointer,
        );
    }

    #[test]
    fn rejects_ss_rpl_mismatch_without_unrestricted_guest() {
        let mut v = long_vmcs();
        let sec = v.read(VmcsField::SecondaryProcControls)
            & !u64::from(SecondaryControls::UNRESTRICTED_GUEST.bits());
        v.write(VmcsField::SecondaryProcControls, sec);
        assert_eq!(check_guest_state(&v, &caps()), Ok(()));
        v.write(VmcsField::GuestSsSelector, 0x13);
        rejects(
            &v,
            VmcsField::GuestSsSelector,
            GuestStateRule::SsRplMismatch,
        );
    }

    #[test]
    fn every_rule_message_is_one_line() {
        use GuestStateRule::*;
        for r in [
            Cr0FixedBits,
            TrTypeIa32e,
            LimitGranularity,
            RflagsReserved,
            VmcsLinkPointer,
            SsDpl,
        ] {
            let e = GuestStateError {
                field: VmcsField::GuestCr0,
                value: 0,
                rule: r,
            };
            let s = e.to_string();
            assert!(!s.contains('\n') && s.ends_with(')'), "{s}");
            assert!(s.contains("(SDM 27.3.1."), "{s}");
        }
    }
}
