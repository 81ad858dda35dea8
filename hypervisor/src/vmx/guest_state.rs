//! The guest-state area for each way a guest can start: real mode at CS:IP as a BIOS
//! leaves a boot sector, the processor's state after RESET for firmware images, and
//! 64-bit mode with paging on (at the GDT, page tables and stack
//! `guest::long_mode::LongModeLayout` places). Also the VMCS fields that make up each segment
//! register, which [`super::checks`] reads back. After a VM exit, the readers the exit
//! handlers and the coalescer share: the guest's mode, CPL, IA32_EFER and paging
//! registers, and the interruptibility update of a retired instruction.
//!
//! Sources (the SDM edition `crate::vmx` pins): SDM Vol. 3C 25.4 "Guest-State Area";
//! the state after RESET from SDM Vol. 3A 10.1.1 "Processor State After Reset"
//! (Table 10-1 "IA-32 and Intel 64 Processor States Following Power-up, Reset, or
//! INIT"). Starting in real mode relies on the "unrestricted guest" control
//! (SDM Vol. 3C 25.6.2 "Processor-Based VM-Execution Controls", 26.6 "Unrestricted
//! Guests"; checks in 27.3.1 "Checks on the Guest State Area").

use crate::guest::linux_boot;
use crate::guest::loader::Start;
use crate::guest::long_mode::{CODE64_SEGMENT, DATA_SEGMENT, GDT_LIMIT, LDTR_SEGMENT, TR_SEGMENT};
use crate::vmx::caps::{EntryControls, VmxCaps};
use crate::vmx::controls::{cr0_for_guest, cr0_read_shadow, cr4_for_guest, cr4_read_shadow};
use crate::vmx::vmcs::{interruptibility, Vmcs, VmcsField};
use crate::x86::guest_mem::PagingContext;
use crate::x86::regs::GuestRegs;
use crate::x86::segment::access_rights;
use crate::x86::segment::SegmentState;
use crate::x86::{Cr0, Cr4, Efer, Rflags};

// ---------------------------------------------------------------------------------------
// Reset values (the architectural bits are in `crate::x86`)
// ---------------------------------------------------------------------------------------

/// Power-up value of IA32_PAT: WB, WT, UC-, UC in each half (SDM Vol. 3A 12.12.4
/// "Programming the PAT").
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// DR7 after reset: only the reserved bit 10 set (SDM Vol. 3A Table 10-1 "IA-32 and
/// Intel 64 Processor States Following Power-up, Reset, or INIT").
pub const DR7_DEFAULT: u64 = 0x400;

// ---------------------------------------------------------------------------------------
// Guest state (SDM Vol. 3C 25.4 "Guest-State Area")
// ---------------------------------------------------------------------------------------

/// The VMCS fields of one segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegFields {
    pub(super) selector: VmcsField,
    pub(super) base: VmcsField,
    pub(super) limit: VmcsField,
    pub(super) access_rights: VmcsField,
}

pub(super) const ES: SegFields = SegFields {
    selector: VmcsField::GuestEsSelector,
    base: VmcsField::GuestEsBase,
    limit: VmcsField::GuestEsLimit,
    access_rights: VmcsField::GuestEsAccessRights,
};
pub(super) const CS: SegFields = SegFields {
    selector: VmcsField::GuestCsSelector,
    base: VmcsField::GuestCsBase,
    limit: VmcsField::GuestCsLimit,
    access_rights: VmcsField::GuestCsAccessRights,
};
pub(super) const SS: SegFields = SegFields {
    selector: VmcsField::GuestSsSelector,
    base: VmcsField::GuestSsBase,
    limit: VmcsField::GuestSsLimit,
    access_rights: VmcsField::GuestSsAccessRights,
};
pub(super) const DS: SegFields = SegFields {
    selector: VmcsField::GuestDsSelector,
    base: VmcsField::GuestDsBase,
    limit: VmcsField::GuestDsLimit,
    access_rights: VmcsField::GuestDsAccessRights,
};
pub(super) const FS: SegFields = SegFields {
    selector: VmcsField::GuestFsSelector,
    base: VmcsField::GuestFsBase,
    limit: VmcsField::GuestFsLimit,
    access_rights: VmcsField::GuestFsAccessRights,
};
pub(super) const GS: SegFields = SegFields {
    selector: VmcsField::GuestGsSelector,
    base: VmcsField::GuestGsBase,
    limit: VmcsField::GuestGsLimit,
    access_rights: VmcsField::GuestGsAccessRights,
};
pub(super) const LDTR: SegFields = SegFields {
    selector: VmcsField::GuestLdtrSelector,
    base: VmcsField::GuestLdtrBase,
    limit: VmcsField::GuestLdtrLimit,
    access_rights: VmcsField::GuestLdtrAccessRights,
};
pub(super) const TR: SegFields = SegFields {
    selector: VmcsField::GuestTrSelector,
    base: VmcsField::GuestTrBase,
    limit: VmcsField::GuestTrLimit,
    access_rights: VmcsField::GuestTrAccessRights,
};

fn write_segment(vmcs: &mut impl Vmcs, f: SegFields, s: &SegmentState) {
    vmcs.write(f.selector, s.selector.into());
    vmcs.write(f.base, s.base);
    vmcs.write(f.limit, s.limit.into());
    vmcs.write(f.access_rights, s.access_rights.into());
}

pub(super) fn read_segment(vmcs: &impl Vmcs, f: SegFields) -> SegmentState {
    SegmentState {
        selector: vmcs.read(f.selector) as u16,
        base: vmcs.read(f.base),
        limit: vmcs.read(f.limit) as u32,
        access_rights: vmcs.read(f.access_rights) as u32,
    }
}

/// Real-mode access rights: present, DPL 0, code/data, accessed; type 3 for data
/// (read/write), type 11 for code (execute/read). 16-bit (D/B = 0), byte granular.
const AR_REAL_DATA: u32 = 0x93;
const AR_REAL_CODE: u32 = 0x9B;
/// Busy 32-bit TSS, present: the only TR types VM entry accepts outside IA-32e mode
/// are 3 and 11 (SDM Vol. 3C 27.3.1.2 "Checks on Guest Segment Registers").
const AR_BUSY_TSS32: u32 = 0x8B;
/// LDT, present (type 2).
const AR_LDT: u32 = 0x82;

const fn real_segment(selector: u16, access_rights: u32) -> SegmentState {
    SegmentState {
        selector,
        base: (selector as u64) << 4,
        limit: 0xFFFF,
        access_rights,
    }
}

/// Everything the `write_guest_*` functions set the same way, plus CR0/CR4/CR3,
/// their read shadows and EFER.
struct CommonGuest {
    cr0_believed: u64,
    cr4_believed: u64,
    cr3: u64,
    efer: u64,
    rip: u64,
    rsp: u64,
}

fn write_guest_common(vmcs: &mut impl Vmcs, caps: &VmxCaps, g: &CommonGuest) {
    // Unrestricted guest is a required control (compute_controls), so PE/PG are free.
    vmcs.write(
        VmcsField::GuestCr0,
        cr0_for_guest(caps, true, g.cr0_believed),
    );
    vmcs.write(VmcsField::GuestCr4, cr4_for_guest(caps, g.cr4_believed));
    vmcs.write(
        VmcsField::Cr0ReadShadow,
        cr0_read_shadow(caps, true, g.cr0_believed),
    );
    vmcs.write(
        VmcsField::Cr4ReadShadow,
        cr4_read_shadow(caps, g.cr4_believed),
    );
    vmcs.write(VmcsField::GuestCr3, g.cr3);
    vmcs.write(VmcsField::GuestDr7, DR7_DEFAULT);
    vmcs.write(VmcsField::GuestRflags, Rflags::FIXED1.bits());
    vmcs.write(VmcsField::GuestRip, g.rip);
    vmcs.write(VmcsField::GuestRsp, g.rsp);
    vmcs.write(VmcsField::GuestIa32Efer, g.efer);
    vmcs.write(VmcsField::GuestIa32Pat, PAT_DEFAULT);
    // Loaded only with "load debug controls", which CPUs without TRUE controls force.
    vmcs.write(VmcsField::GuestIa32Debugctl, 0);
    vmcs.write(VmcsField::GuestIa32SysenterCs, 0);
    vmcs.write(VmcsField::GuestIa32SysenterEsp, 0);
    vmcs.write(VmcsField::GuestIa32SysenterEip, 0);
    vmcs.write(VmcsField::GuestActivityState, 0); // active
    vmcs.write(VmcsField::GuestInterruptibilityState, 0);
    vmcs.write(VmcsField::GuestPendingDebugExceptions, 0);
}

/// Guest state for a real-mode start at `cs:ip` with the stack at `ss:sp`, as a BIOS
/// leaves things for a boot sector (relies on unrestricted guest, SDM Vol. 3C 26.6
/// "Unrestricted Guests" and 27.3.1 "Checks on the Guest State Area"):
///
/// - CR0 = ET plus VMX's fixed-1 bits except PE and PG (i.e. NE); the read shadow
///   shows NE clear, as the guest never set it. CR4 = VMXE (fixed), shadow 0. CR3 0.
/// - CS = `cs` (base `cs * 16`, limit 0xFFFF, access 0x9B: execute/read, accessed),
///   SS = `ss`, DS/ES/FS/GS = `cs` (the tiny-model convention: a flat binary finds
///   its data through DS/ES), access 0x93.
/// - TR: busy 32-bit TSS (0x8B), base 0, limit 0xFFFF (VM entry needs a usable TR of
///   type 3 or 11 even in real mode); LDTR unusable.
/// - GDTR base 0 limit 0xFFFF, IDTR base 0 limit 0x3FF (the real-mode IVT).
/// - RFLAGS 0x2, DR7 0x400, EFER 0, PAT power-up default, SYSENTER MSRs 0, active,
///   no interruptibility blocking, no pending debug exceptions.
pub fn write_guest_real_mode(
    vmcs: &mut impl Vmcs,
    caps: &VmxCaps,
    cs: u16,
    ip: u16,
    ss: u16,
    sp: u16,
) {
    write_guest_common(
        vmcs,
        caps,
        &CommonGuest {
            cr0_believed: Cr0::ET.bits(),
            cr4_believed: 0,
            cr3: 0,
            efer: 0,
            rip: ip.into(),
            rsp: sp.into(),
        },
    );
    write_segment(vmcs, CS, &real_segment(cs, AR_REAL_CODE));
    write_segment(vmcs, SS, &real_segment(ss, AR_REAL_DATA));
    for f in [DS, ES, FS, GS] {
        write_segment(vmcs, f, &real_segment(cs, AR_REAL_DATA));
    }
    write_segment(vmcs, TR, &real_segment(0, AR_BUSY_TSS32));
    write_segment(vmcs, LDTR, &LDTR_SEGMENT);
    write_descriptor_tables(vmcs, (0, 0xFFFF), (0, 0x3FF));
}

fn write_descriptor_tables(vmcs: &mut impl Vmcs, gdtr: (u64, u32), idtr: (u64, u32)) {
    vmcs.write(VmcsField::GuestGdtrBase, gdtr.0);
    vmcs.write(VmcsField::GuestGdtrLimit, gdtr.1.into());
    vmcs.write(VmcsField::GuestIdtrBase, idtr.0);
    vmcs.write(VmcsField::GuestIdtrLimit, idtr.1.into());
}

/// General-purpose registers after RESET that the VMCS does not hold; the kernel
/// loads them before VMLAUNCH. All GPRs are 0 except EDX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "EDX after reset holds the processor signature; load it before VMLAUNCH"]
pub struct ResetGprs;

impl ResetGprs {
    /// EDX after RESET: the processor signature (type, family, model, stepping), which
    /// is the value CPUID.01H returns in EAX (SDM Vol. 3A 10.1.3 "Model and Stepping
    /// Information", Table 10-1 "IA-32 and Intel 64 Processor States Following
    /// Power-up, Reset, or INIT").
    pub const fn rdx(self, cpuid_1_eax: u32) -> u64 {
        cpuid_1_eax as u64
    }
}

/// Guest state of a processor right after RESET (SDM Vol. 3A 10.1.4 "First Instruction
/// Executed", Table 10-1 "IA-32 and Intel 64 Processor States Following Power-up,
/// Reset, or INIT"), for firmware images: CS selector 0xF000 with base 0xFFFF0000 and
/// limit 0xFFFF, IP 0xFFF0, so the first fetch is at 0xFFFFFFF0; the other segments
/// selector 0, base 0, limit 0xFFFF; GDTR/IDTR base 0 limit 0xFFFF; LDTR a present LDT
/// and TR a busy TSS with base 0 and limit 0xFFFF; CR0 = 0x60000010 (CD, NW, ET) plus
/// the VMX fixed NE (the shadow shows the architectural value), CR3/CR4 0 (VMXE fixed,
/// shadowed as 0), EFER 0, RFLAGS 0x2, DR7 0x400, PAT default. Returns what must go in
/// the GPRs.
pub fn write_guest_reset_vector(vmcs: &mut impl Vmcs, caps: &VmxCaps) -> ResetGprs {
    write_guest_common(
        vmcs,
        caps,
        &CommonGuest {
            cr0_believed: Cr0::CD.bits() | Cr0::NW.bits() | Cr0::ET.bits(),
            cr4_believed: 0,
            cr3: 0,
            efer: 0,
            rip: 0xFFF0,
            rsp: 0,
        },
    );
    write_segment(
        vmcs,
        CS,
        &SegmentState {
            selector: 0xF000,
            base: 0xFFFF_0000,
            limit: 0xFFFF,
            access_rights: AR_REAL_CODE,
        },
    );
    for f in [SS, DS, ES, FS, GS] {
        write_segment(vmcs, f, &real_segment(0, AR_REAL_DATA));
    }
    write_segment(vmcs, TR, &real_segment(0, AR_BUSY_TSS32));
    write_segment(vmcs, LDTR, &real_segment(0, AR_LDT));
    write_descriptor_tables(vmcs, (0, 0xFFFF), (0, 0xFFFF));
    ResetGprs
}

/// Guest state for a 64-bit start at `entry` with RSP = `rsp`, paging on with the
/// tables at `cr3`, and the [`long_mode::long_mode_gdt`] image at `gdt_base`:
///
/// - CR0 = PE | MP | ET | NE | WP | PG (with the fixed bits applied), shadow NE (the
///   guest state shows it set). CR4 = PAE | VMXE, shadow without VMXE. EFER = LME |
///   LMA (no NXE: the guest turns it on if it wants it).
/// - CS 0x08 = [`CODE64_SEGMENT`], SS/DS/ES/FS/GS 0x10 = [`DATA_SEGMENT`],
///   TR = [`TR_SEGMENT`] (busy 64-bit TSS at 0, limit 0x67), LDTR unusable.
/// - GDTR = `gdt_base`/[`GDT_LIMIT`], IDTR base 0 limit 0 (the guest loads its own;
///   any interrupt before that shuts it down).
/// - RFLAGS 0x2 (interrupts off), DR7 0x400, PAT default, active, no blocking.
///
/// The VM-entry control "IA-32e mode guest" must be set
/// ([`compute_controls`](super::controls::compute_controls) with `long_mode_guest`).
pub fn write_guest_long_mode(
    vmcs: &mut impl Vmcs,
    caps: &VmxCaps,
    entry: u64,
    rsp: u64,
    cr3: u64,
    gdt_base: u64,
) {
    write_guest_long_mode_with(
        vmcs,
        caps,
        entry,
        rsp,
        cr3,
        (gdt_base, GDT_LIMIT.into()),
        (&CODE64_SEGMENT, &DATA_SEGMENT),
    );
}

/// [`write_guest_long_mode`] with the caller's GDT and segments, for guests whose boot
/// protocol fixes the selectors (Linux: `__BOOT_CS` 0x10, `__BOOT_DS` 0x18).
pub fn write_guest_long_mode_with(
    vmcs: &mut impl Vmcs,
    caps: &VmxCaps,
    entry: u64,
    rsp: u64,
    cr3: u64,
    gdt: (u64, u32),
    (code, data): (&SegmentState, &SegmentState),
) {
    write_guest_common(
        vmcs,
        caps,
        &CommonGuest {
            cr0_believed: Cr0::PE.bits()
                | Cr0::MP.bits()
                | Cr0::ET.bits()
                | Cr0::NE.bits()
                | Cr0::WP.bits()
                | Cr0::PG.bits(),
            cr4_believed: Cr4::PAE.bits(),
            cr3,
            efer: Efer::LME.bits() | Efer::LMA.bits(),
            rip: entry,
            rsp,
        },
    );
    write_segment(vmcs, CS, code);
    for f in [SS, DS, ES, FS, GS] {
        write_segment(vmcs, f, data);
    }
    write_segment(vmcs, TR, &TR_SEGMENT);
    write_segment(vmcs, LDTR, &LDTR_SEGMENT);
    write_descriptor_tables(vmcs, gdt, (0, 0));
}

/// Writes the guest-state area for the way the loader says the guest starts, and
/// returns the general registers the guest starts with: `guest_arg` in RDI for real-mode
/// and 64-bit ELF guests (the first argument register of the System V ABI, so a 64-bit
/// entry function can take it as a parameter), the zero page in RSI for Linux (its
/// 64-bit boot protocol), the processor signature in EDX after RESET (`cpuid_1_eax` is
/// the host's CPUID.1:EAX, SDM Vol. 3A 10.1.3 "Model and Stepping Information").
pub fn write_guest_start(
    vmcs: &mut impl Vmcs,
    caps: &VmxCaps,
    start: &Start,
    guest_arg: u64,
    cpuid_1_eax: u32,
) -> GuestRegs {
    let mut regs = GuestRegs::default();
    match *start {
        Start::Real { cs, ip, ss, sp } => {
            write_guest_real_mode(vmcs, caps, cs, ip, ss, sp);
            regs.rdi = guest_arg;
        }
        Start::ResetVector => {
            regs.rdx = write_guest_reset_vector(vmcs, caps).rdx(cpuid_1_eax);
        }
        Start::Long {
            entry,
            rsp,
            cr3,
            gdt_base,
        } => {
            write_guest_long_mode(vmcs, caps, entry, rsp, cr3, gdt_base);
            regs.rdi = guest_arg;
        }
        Start::Linux {
            entry,
            rsp,
            cr3,
            gdt_base,
            rsi,
        } => {
            write_guest_long_mode_with(
                vmcs,
                caps,
                entry,
                rsp,
                cr3,
                (gdt_base, u32::from(linux_boot::LINUX_GDT_LIMIT)),
                (
                    &linux_boot::LINUX_CODE_SEGMENT,
                    &linux_boot::LINUX_DATA_SEGMENT,
                ),
            );
            regs.rsi = rsi;
        }
    }
    regs
}

// ---------------------------------------------------------------------------------------
// After a VM exit: the guest's state as the exit path reads it (SDM Vol. 3C 25.4.1
// "Guest Register State", 25.4.2 "Guest Non-Register State")
// ---------------------------------------------------------------------------------------

/// IA32_EFER.LMA as VM entry will load it: the "IA-32e mode guest" entry control.
pub fn guest_lma(vmcs: &impl Vmcs) -> bool {
    vmcs.read(VmcsField::EntryControls) & u64::from(EntryControls::IA32E_MODE_GUEST.bits()) != 0
}

/// 64-bit mode: IA-32e mode with CS.L set (SDM Vol. 3A 3.4.5 "Segment Descriptors").
pub fn guest_long_mode(vmcs: &impl Vmcs) -> bool {
    guest_lma(vmcs) && vmcs.read(VmcsField::GuestCsAccessRights) & u64::from(access_rights::L) != 0
}

/// Whether the guest's CS is a 32-bit segment (CS.D/B) outside 64-bit mode.
pub fn guest_cs_32bit(vmcs: &impl Vmcs) -> bool {
    vmcs.read(VmcsField::GuestCsAccessRights) & u64::from(access_rights::DB) != 0
}

/// CPL is SS.DPL (SDM Vol. 3C 25.4.1 "Guest Register State"; checked by 27.3.1.2
/// "Checks on Guest Segment Registers").
pub fn guest_cpl(vmcs: &impl Vmcs) -> u8 {
    ((vmcs.read(VmcsField::GuestSsAccessRights) >> 5) & 3) as u8
}

/// The guest's EFER with LMA as the entry control says.
pub fn guest_efer(vmcs: &impl Vmcs) -> u64 {
    let e = vmcs.read(VmcsField::GuestIa32Efer) & !Efer::LMA.bits();
    if guest_lma(vmcs) {
        e | Efer::LMA.bits()
    } else {
        e
    }
}

/// The guest's paging registers, for walks of its page tables.
pub fn guest_paging(vmcs: &impl Vmcs) -> PagingContext {
    PagingContext {
        cr0: vmcs.read(VmcsField::GuestCr0),
        cr3: vmcs.read(VmcsField::GuestCr3),
        cr4: vmcs.read(VmcsField::GuestCr4),
        efer: guest_efer(vmcs),
    }
}

/// An instruction retired: blocking by STI and by MOV SS ends with it (SDM Vol. 3C
/// 25.4.2 "Guest Non-Register State").
/// Shared by every path that moves the guest past instructions (one-instruction
/// exit handlers, the coalescer's write-back).
pub fn retire_interrupt_shadow(vmcs: &mut impl Vmcs) {
    let irq = vmcs.read(VmcsField::GuestInterruptibilityState);
    if irq & interruptibility::STI_MOV_SS != 0 {
        vmcs.write(
            VmcsField::GuestInterruptibilityState,
            irq & !interruptibility::STI_MOV_SS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::long_mode::LongModeLayout;
    use crate::vmx::fixtures::{caps, long_vmcs, real_vmcs, vmcs_for};
    use crate::vmx::vmcs::FieldType;
    use crate::x86::segment::access_rights as ar;

    const MIB: u64 = 1 << 20;

    // --- guest state writers --------------------------------------------------------

    #[test]
    fn real_mode_state_looks_like_a_bios_handoff() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        write_guest_real_mode(&mut v, &c, 0x1000, 0x0100, 0x2000, 0xFFFE);
        assert_eq!(v.read(VmcsField::GuestCsBase), 0x10000);
        assert_eq!(v.read(VmcsField::GuestCsAccessRights), 0x9B);
        assert_eq!(v.read(VmcsField::GuestSsBase), 0x20000);
        assert_eq!(v.read(VmcsField::GuestDsSelector), 0x1000);
        assert_eq!(v.read(VmcsField::GuestRip), 0x100);
        assert_eq!(v.read(VmcsField::GuestRsp), 0xFFFE);
        assert_eq!(v.read(VmcsField::GuestCr0), Cr0::ET.bits() | Cr0::NE.bits());
        assert_eq!(v.read(VmcsField::Cr0ReadShadow), 0);
        assert_eq!(v.read(VmcsField::GuestCr4), Cr4::VMXE.bits());
        assert_eq!(v.read(VmcsField::Cr4ReadShadow), 0);
        assert_eq!(v.read(VmcsField::GuestIdtrLimit), 0x3FF);
        assert_eq!(v.read(VmcsField::GuestTrAccessRights), 0x8B);
        assert_eq!(
            v.read(VmcsField::GuestLdtrAccessRights),
            u64::from(ar::UNUSABLE)
        );
        assert_eq!(v.read(VmcsField::GuestRflags), 2);
        assert_eq!(v.read(VmcsField::GuestIa32Pat), PAT_DEFAULT);
    }

    #[test]
    fn reset_vector_state_is_the_state_after_reset() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        let gprs = write_guest_reset_vector(&mut v, &c);
        assert_eq!(gprs.rdx(0x000906EA), 0x000906EA);
        assert_eq!(v.read(VmcsField::GuestCsSelector), 0xF000);
        assert_eq!(v.read(VmcsField::GuestCsBase), 0xFFFF_0000);
        assert_eq!(v.read(VmcsField::GuestRip), 0xFFF0);
        assert_eq!(
            v.read(VmcsField::GuestCr0),
            Cr0::CD.bits() | Cr0::NW.bits() | Cr0::ET.bits() | Cr0::NE.bits()
        );
        assert_eq!(v.read(VmcsField::GuestLdtrAccessRights), 0x82);
        assert_eq!(v.read(VmcsField::GuestIdtrLimit), 0xFFFF);
    }

    #[test]
    fn long_mode_state_is_64_bit_with_paging() {
        let v = long_vmcs();
        let l = LongModeLayout::for_ram(64 * MIB).unwrap();
        let want_cr0 = Cr0::PE.bits()
            | Cr0::MP.bits()
            | Cr0::ET.bits()
            | Cr0::NE.bits()
            | Cr0::WP.bits()
            | Cr0::PG.bits();
        assert_eq!(v.read(VmcsField::GuestCr0), want_cr0);
        assert_eq!(v.read(VmcsField::Cr0ReadShadow), Cr0::NE.bits());
        assert_eq!(
            v.read(VmcsField::GuestCr4),
            Cr4::PAE.bits() | Cr4::VMXE.bits()
        );
        assert_eq!(v.read(VmcsField::Cr4ReadShadow), 0);
        assert_eq!(
            v.read(VmcsField::GuestIa32Efer),
            Efer::LME.bits() | Efer::LMA.bits()
        );
        assert_eq!(v.read(VmcsField::GuestCr3), l.tables_gpa);
        assert_eq!(v.read(VmcsField::GuestGdtrBase), l.gdt_gpa);
        assert_eq!(v.read(VmcsField::GuestGdtrLimit), u64::from(GDT_LIMIT));
        assert_eq!(v.read(VmcsField::GuestCsSelector), 0x08);
        assert_eq!(v.read(VmcsField::GuestCsAccessRights), 0xA09B);
        assert_eq!(v.read(VmcsField::GuestSsAccessRights), 0xC093);
        assert_eq!(v.read(VmcsField::GuestTrAccessRights), 0x8B);
        assert_eq!(v.read(VmcsField::GuestRip), 0x20_0000);
        assert_eq!(v.read(VmcsField::GuestRsp), l.stack_top);
    }

    #[test]
    fn guest_writers_cover_the_whole_guest_state_area() {
        // Everything but the fields we deliberately leave alone (SMBASE, PDPTEs,
        // PERF_GLOBAL_CTRL: not loaded with our controls; the preemption timer value
        // belongs to the timer work).
        let skip = [
            VmcsField::GuestSmbase,
            VmcsField::GuestIa32PerfGlobalCtrl,
            VmcsField::HostIa32PerfGlobalCtrl,
            VmcsField::PreemptionTimerValue,
            VmcsField::GuestPdpte0,
            VmcsField::GuestPdpte1,
            VmcsField::GuestPdpte2,
            VmcsField::GuestPdpte3,
        ];
        for v in [real_vmcs(), long_vmcs()] {
            for &f in VmcsField::ALL {
                let guest = f.field_type() == FieldType::GuestState;
                let host = f.field_type() == FieldType::HostState;
                if (guest || host) && !skip.contains(&f) {
                    assert!(v.was_written(f), "{} not written", f.name());
                }
            }
        }
    }

    #[test]
    fn each_start_gets_its_registers() {
        let caps = caps();
        let mut v = crate::vmx::vmcs::SoftVmcs::new();
        let real = Start::Real {
            cs: 0,
            ip: 0x7C00,
            ss: 0,
            sp: 0x7C00,
        };
        let r = write_guest_start(&mut v, &caps, &real, 0x105, 0x906EA);
        assert_eq!((r.rdi, r.rdx, r.rsi), (0x105, 0, 0));
        assert_eq!(v.read(VmcsField::GuestRip), 0x7C00);
        let r = write_guest_start(&mut v, &caps, &Start::ResetVector, 0x105, 0x906EA);
        assert_eq!(
            (r.rdi, r.rdx),
            (0, 0x906EA),
            "EDX holds the signature, no argument"
        );
        let linux = Start::Linux {
            entry: 0x100_0200,
            rsp: 0x9_0000,
            cr3: 0x8_0000,
            gdt_base: 0x7_0000,
            rsi: 0x1_0000,
        };
        let r = write_guest_start(&mut v, &caps, &linux, 0x105, 0);
        assert_eq!((r.rsi, r.rdi), (0x1_0000, 0), "the zero page, no argument");
        assert_eq!(
            v.read(VmcsField::GuestGdtrLimit),
            u64::from(linux_boot::LINUX_GDT_LIMIT)
        );
    }
}
