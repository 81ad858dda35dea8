//! Everything written into a VMCS before the first VMLAUNCH, as pure functions over
//! [`Vmcs`]: the VM-execution, VM-exit and VM-entry controls (computed against the
//! CPU's allowed settings), the MSR and I/O bitmaps, the CR0/CR4 guest/host masks and
//! read shadows, the host-state area, the guest-state area for each way a guest can
//! start (real mode at CS:IP, the reset vector, 64-bit mode), and a software
//! pre-check of the guest-state area that names the offending field before the CPU
//! fails VM entry with a bare "invalid guest state".
//!
//! Sources (Intel SDM, Vol. 3C unless stated): VM-execution controls 25.6 (MSR bitmaps
//! 25.6.9, I/O bitmaps 25.6.4, CR masks and shadows 25.6.6); VM-exit controls 25.7.1;
//! VM-entry controls 25.8.1; checks on controls 27.2.1, on the host state 27.2.2 and
//! 27.2.3, on the guest state 27.3.1; guest-state area layout 25.4; processor state
//! after RESET Vol. 3A 10.1.4 (Table 10-1); capability MSRs Vol. 3D Appendix A.
//!
//! # The sequence the kernel follows
//!
//! 1. `VMCLEAR` the VMCS region (revision id written first), then `VMPTRLD` it.
//! 2. [`compute_controls`] (once, from the probed [`VmxCaps`]), fill the bitmaps
//!    ([`fill_io_bitmap`] for both I/O bitmaps, [`fill_msr_bitmap`] with
//!    [`PASSTHROUGH_MSRS`]), then [`write_controls`].
//! 3. [`write_host_state`] with the kernel's own CR0/CR3/CR4, selectors, bases,
//!    MSRs, the exit-handler stack (`rsp`) and the VM-exit entry point (`rip`).
//! 4. One of [`write_guest_real_mode`], [`write_guest_reset_vector`] or
//!    [`write_guest_long_mode`] (for the last, [`LongModeLayout`] says where the
//!    GDT, page tables and stack go). These also write the CR0/CR4 read shadows, so
//!    they come after [`write_controls`] or in any order relative to it: neither
//!    overwrites what the other writes.
//! 5. [`check_guest_state`]: on error, report it and do not launch.
//! 6. Load the guest general-purpose registers and `VMLAUNCH`.

use core::fmt;
use core::ops::Range;

use crate::guest::long_mode::{
    self, SegmentState, CODE64_SEGMENT, DATA_SEGMENT, GDT_LIMIT, LDTR_SEGMENT, TR_SEGMENT,
};
use crate::vmx::caps::{
    Allowed, EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
    VmxCaps,
};
use crate::vmx::ept::Eptp;
use crate::vmx::vmcs::{access_rights as ar, Vmcs, VmcsField};
use crate::x86::{is_canonical, Cr0, Cr4, Efer, Rflags};

// ---------------------------------------------------------------------------------------
// Reset values and assumptions (the architectural bits are in `crate::x86`)
// ---------------------------------------------------------------------------------------

/// Power-up value of IA32_PAT: WB, WT, UC-, UC in each half (SDM Vol. 3A 13.12.4).
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// DR7 after reset: only the reserved bit 10 set (SDM Vol. 3A Table 10-1).
pub const DR7_DEFAULT: u64 = 0x400;
/// Guest-physical address width assumed by [`check_guest_state`] for the CR3 check
/// (the exact width is CPUID.80000008H:EAX[7:0], which the VMCS does not hold; 46 is
/// what current server parts report, so a smaller real width can still slip by).
pub const ASSUMED_PHYS_ADDR_BITS: u32 = 46;

// ---------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------

/// The five 32-bit control fields, plus the CR0/CR4 guest/host masks derived from the
/// same capabilities (they belong to the VM-execution controls, SDM 25.6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub exit: u32,
    pub entry: u32,
    /// [`cr0_guest_host_mask`] with unrestricted guest on.
    pub cr0_guest_host_mask: u64,
    /// [`cr4_guest_host_mask`].
    pub cr4_guest_host_mask: u64,
}

impl Controls {
    /// Secondary controls are active and "enable VPID" is set.
    pub const fn vpid_enabled(&self) -> bool {
        self.primary & PrimaryControls::ACTIVATE_SECONDARY_CONTROLS.bits() != 0
            && self.secondary & SecondaryControls::ENABLE_VPID.bits() != 0
    }

    /// "Activate VMX-preemption timer" is set; the timer work must then write
    /// [`VmcsField::PreemptionTimerValue`] before each entry.
    pub const fn preemption_timer(&self) -> bool {
        self.pin & PinBasedControls::VMX_PREEMPTION_TIMER.bits() != 0
    }

    /// MOV to CR3 exits (CPUs without TRUE controls cannot clear "CR3-load exiting";
    /// with a CR3-target count of 0 every MOV to CR3 then exits).
    pub const fn cr3_load_exiting(&self) -> bool {
        self.primary & PrimaryControls::CR3_LOAD_EXITING.bits() != 0
    }
}

/// Choices for [`compute_controls_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ControlOptions {
    /// Set "IA-32e mode guest" (the guest starts in 64-bit mode).
    pub long_mode_guest: bool,
    /// Set "activate VMX-preemption timer" when the CPU has it (dropped silently
    /// otherwise; check [`Controls::preemption_timer`]). Off until the timer work.
    pub want_preemption_timer: bool,
}

/// Which of the five control fields a [`SetupError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlGroup {
    PinBased,
    Primary,
    Secondary,
    Exit,
    Entry,
}

impl ControlGroup {
    const fn label(self) -> &'static str {
        match self {
            ControlGroup::PinBased => "pin-based VM-execution",
            ControlGroup::Primary => "primary processor-based VM-execution",
            ControlGroup::Secondary => "secondary processor-based VM-execution",
            ControlGroup::Exit => "VM-exit",
            ControlGroup::Entry => "VM-entry",
        }
    }

    /// Name of control bit `bit` in this group, for the controls this module uses.
    pub const fn bit_name(self, bit: u32) -> Option<&'static str> {
        Some(match (self, bit) {
            (ControlGroup::PinBased, 0) => "external-interrupt exiting",
            (ControlGroup::PinBased, 3) => "NMI exiting",
            (ControlGroup::PinBased, 5) => "virtual NMIs",
            (ControlGroup::PinBased, 6) => "activate VMX-preemption timer",
            (ControlGroup::Primary, 7) => "HLT exiting",
            (ControlGroup::Primary, 9) => "INVLPG exiting",
            (ControlGroup::Primary, 10) => "MWAIT exiting",
            (ControlGroup::Primary, 11) => "RDPMC exiting",
            (ControlGroup::Primary, 12) => "RDTSC exiting",
            (ControlGroup::Primary, 15) => "CR3-load exiting",
            (ControlGroup::Primary, 16) => "CR3-store exiting",
            (ControlGroup::Primary, 25) => "use I/O bitmaps",
            (ControlGroup::Primary, 28) => "use MSR bitmaps",
            (ControlGroup::Primary, 29) => "MONITOR exiting",
            (ControlGroup::Primary, 31) => "activate secondary controls",
            (ControlGroup::Secondary, 1) => "enable EPT",
            (ControlGroup::Secondary, 3) => "enable RDTSCP",
            (ControlGroup::Secondary, 5) => "enable VPID",
            (ControlGroup::Secondary, 6) => "WBINVD exiting",
            (ControlGroup::Secondary, 7) => "unrestricted guest",
            (ControlGroup::Secondary, 12) => "enable INVPCID",
            (ControlGroup::Secondary, 20) => "enable XSAVES/XRSTORS",
            (ControlGroup::Exit, 2) => "save debug controls",
            (ControlGroup::Exit, 9) => "host address-space size",
            (ControlGroup::Exit, 15) => "acknowledge interrupt on exit",
            (ControlGroup::Exit, 18) => "save IA32_PAT",
            (ControlGroup::Exit, 19) => "load IA32_PAT",
            (ControlGroup::Exit, 20) => "save IA32_EFER",
            (ControlGroup::Exit, 21) => "load IA32_EFER",
            (ControlGroup::Entry, 2) => "load debug controls",
            (ControlGroup::Entry, 9) => "IA-32e mode guest",
            (ControlGroup::Entry, 14) => "load IA32_PAT",
            (ControlGroup::Entry, 15) => "load IA32_EFER",
            _ => return None,
        })
    }
}

/// Whether the named controls would have to be 1 but may not, or the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlProblem {
    /// Allowed-1 setting is 0 (SDM Appendix A).
    CannotSet,
    /// Allowed-0 setting is 1: the CPU forces the control on.
    CannotClear,
}

/// The CPU cannot provide a control setting the hypervisor needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupError {
    pub group: ControlGroup,
    /// The offending control bits.
    pub bits: u32,
    pub problem: ControlProblem,
}

impl fmt::Display for SetupError {
    /// One line, e.g. `VM-exit control 'host address-space size' cannot be set`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.bits.count_ones() > 1 { "s" } else { "" };
        write!(f, "{} control{plural} ", self.group.label())?;
        let mut first = true;
        for bit in 0..32 {
            if self.bits & (1 << bit) == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            match self.group.bit_name(bit) {
                Some(name) => write!(f, "'{name}'")?,
                None => write!(f, "bit {bit}")?,
            }
        }
        f.write_str(match self.problem {
            ControlProblem::CannotSet => " cannot be set",
            ControlProblem::CannotClear => " cannot be cleared",
        })
    }
}

fn adjust(
    group: ControlGroup,
    allowed: Allowed,
    desired: u32,
    required: u32,
) -> Result<u32, SetupError> {
    allowed.adjust(desired, required).map_err(|e| SetupError {
        group,
        bits: e.missing,
        problem: ControlProblem::CannotSet,
    })
}

/// [`compute_controls_with`] without the preemption timer.
pub fn compute_controls(caps: &VmxCaps, long_mode_guest: bool) -> Result<Controls, SetupError> {
    compute_controls_with(
        caps,
        &ControlOptions {
            long_mode_guest,
            want_preemption_timer: false,
        },
    )
}

/// Computes the control fields from the allowed settings in `caps` (which are the
/// TRUE_* values when the CPU has them, so "default1" controls such as CR3-load
/// exiting can be cleared; SDM A.2). Every control not asked for below is left at its
/// must-be-one setting, which is how CR3-load/store, INVLPG, RDTSC, RDPMC, MWAIT and
/// MONITOR exiting end up clear whenever the CPU allows it.
///
/// - Pin-based (SDM 25.6.1): external-interrupt and NMI exiting (required), the
///   preemption timer only when asked and available.
/// - Primary (25.6.2): HLT exiting, use I/O bitmaps, use MSR bitmaps, activate
///   secondary controls (required).
/// - Secondary (25.6.2): enable EPT and unrestricted guest (required); enable VPID,
///   WBINVD exiting, enable RDTSCP, enable INVPCID, enable XSAVES/XRSTORS when allowed
///   (without the last three those instructions #UD in the guest).
/// - VM-exit (25.7.1): host address-space size, acknowledge interrupt on exit,
///   save/load IA32_EFER, save/load IA32_PAT (all required).
/// - VM-entry (25.8.1): load IA32_EFER, load IA32_PAT (required), IA-32e mode guest
///   exactly when `long_mode_guest`.
pub fn compute_controls_with(
    caps: &VmxCaps,
    opts: &ControlOptions,
) -> Result<Controls, SetupError> {
    let pin_required = PinBasedControls::EXTERNAL_INTERRUPT_EXITING | PinBasedControls::NMI_EXITING;
    let mut pin_desired = pin_required;
    if opts.want_preemption_timer {
        pin_desired |= PinBasedControls::VMX_PREEMPTION_TIMER;
    }
    let pin = adjust(
        ControlGroup::PinBased,
        caps.pinbased,
        pin_desired.bits(),
        pin_required.bits(),
    )?;

    let primary_required = PrimaryControls::HLT_EXITING
        | PrimaryControls::USE_IO_BITMAPS
        | PrimaryControls::USE_MSR_BITMAPS
        | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
    let primary = adjust(
        ControlGroup::Primary,
        caps.procbased,
        primary_required.bits(),
        primary_required.bits(),
    )?;

    let secondary_required = SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST;
    let secondary_desired = secondary_required
        | SecondaryControls::ENABLE_VPID
        | SecondaryControls::WBINVD_EXITING
        | SecondaryControls::ENABLE_RDTSCP
        | SecondaryControls::ENABLE_INVPCID
        | SecondaryControls::ENABLE_XSAVES_XRSTORS;
    let secondary = adjust(
        ControlGroup::Secondary,
        caps.procbased2,
        secondary_desired.bits(),
        secondary_required.bits(),
    )?;

    let exit_required = ExitControls::HOST_ADDRESS_SPACE_SIZE
        | ExitControls::ACK_INTERRUPT_ON_EXIT
        | ExitControls::SAVE_EFER
        | ExitControls::LOAD_EFER
        | ExitControls::SAVE_PAT
        | ExitControls::LOAD_PAT;
    let exit = adjust(
        ControlGroup::Exit,
        caps.exit,
        exit_required.bits(),
        exit_required.bits(),
    )?;

    let mut entry_required = EntryControls::LOAD_EFER | EntryControls::LOAD_PAT;
    if opts.long_mode_guest {
        entry_required |= EntryControls::IA32E_MODE_GUEST;
    }
    let entry = adjust(
        ControlGroup::Entry,
        caps.entry,
        entry_required.bits(),
        entry_required.bits(),
    )?;
    let ia32e = EntryControls::IA32E_MODE_GUEST.bits();
    if !opts.long_mode_guest && entry & ia32e != 0 {
        return Err(SetupError {
            group: ControlGroup::Entry,
            bits: ia32e,
            problem: ControlProblem::CannotClear,
        });
    }

    Ok(Controls {
        pin,
        primary,
        secondary,
        exit,
        entry,
        cr0_guest_host_mask: cr0_guest_host_mask(caps, true),
        cr4_guest_host_mask: cr4_guest_host_mask(caps),
    })
}

/// Physical addresses and identifiers [`write_controls`] puts into the VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlAddrs {
    /// I/O bitmap A (ports 0x0000-0x7FFF), 4 KiB aligned host-physical address.
    pub io_bitmap_a: u64,
    /// I/O bitmap B (ports 0x8000-0xFFFF), 4 KiB aligned host-physical address.
    pub io_bitmap_b: u64,
    /// MSR bitmap, 4 KiB aligned host-physical address.
    pub msr_bitmap: u64,
    pub eptp: Eptp,
    /// The guest's VPID. `None` (or `Some(0)`, which is the host's VPID and not
    /// allowed in the VMCS; SDM 27.2.1.1) turns "enable VPID" off.
    pub vpid: Option<u16>,
}

/// Writes the VM-execution, VM-exit and VM-entry control fields (SDM 25.6-25.8):
/// the five control words, bitmap addresses, EPTP and VPID, exception bitmap 0 (no
/// exception exits), page-fault error-code mask/match 0, CR3-target count 0, empty
/// MSR store/load lists, no event to inject, VMCS link pointer all ones (no shadow
/// VMCS), and the CR0/CR4 guest/host masks. The read shadows depend on the guest's
/// starting state and are written by the `write_guest_*` functions.
pub fn write_controls(vmcs: &mut impl Vmcs, controls: &Controls, addrs: &ControlAddrs) {
    let vpid = addrs.vpid.filter(|&v| v != 0);
    let mut secondary = controls.secondary;
    if vpid.is_none() {
        secondary &= !SecondaryControls::ENABLE_VPID.bits();
    }
    vmcs.write(VmcsField::PinBasedControls, controls.pin.into());
    vmcs.write(VmcsField::PrimaryProcControls, controls.primary.into());
    vmcs.write(VmcsField::SecondaryProcControls, secondary.into());
    vmcs.write(VmcsField::ExitControls, controls.exit.into());
    vmcs.write(VmcsField::EntryControls, controls.entry.into());

    vmcs.write(VmcsField::IoBitmapA, addrs.io_bitmap_a);
    vmcs.write(VmcsField::IoBitmapB, addrs.io_bitmap_b);
    vmcs.write(VmcsField::MsrBitmap, addrs.msr_bitmap);
    vmcs.write(VmcsField::EptPointer, addrs.eptp.raw());
    if let Some(v) = vpid {
        vmcs.write(VmcsField::Vpid, v.into());
    }

    vmcs.write(VmcsField::ExceptionBitmap, 0);
    vmcs.write(VmcsField::PageFaultErrorCodeMask, 0);
    vmcs.write(VmcsField::PageFaultErrorCodeMatch, 0);
    vmcs.write(VmcsField::Cr3TargetCount, 0);
    vmcs.write(VmcsField::ExitMsrStoreCount, 0);
    vmcs.write(VmcsField::ExitMsrLoadCount, 0);
    vmcs.write(VmcsField::EntryMsrLoadCount, 0);
    // A stale valid bit from a reused VMCS would inject an event on entry (25.8.3).
    vmcs.write(VmcsField::EntryInterruptionInfo, 0);
    // Anything but all ones makes VM entry check (and use) a shadow VMCS (27.3.1.5).
    vmcs.write(VmcsField::VmcsLinkPointer, u64::MAX);

    vmcs.write(VmcsField::Cr0GuestHostMask, controls.cr0_guest_host_mask);
    vmcs.write(VmcsField::Cr4GuestHostMask, controls.cr4_guest_host_mask);
}

// ---------------------------------------------------------------------------------------
// CR0/CR4 masks, shadows and values (SDM 25.6.6; fixed bits A.7, A.8)
// ---------------------------------------------------------------------------------------

/// CR0 bits VMX forces to 1 in the guest, honouring the unrestricted-guest exemption
/// for PE and PG (SDM 27.3.1.1).
const fn cr0_forced_one(caps: &VmxCaps, unrestricted: bool) -> u64 {
    if unrestricted {
        caps.cr0_fixed0 & !(Cr0::PE.bits() | Cr0::PG.bits())
    } else {
        caps.cr0_fixed0
    }
}

/// CR0 guest/host mask: the bits VMX fixes (forced to 1 — with unrestricted guest
/// that leaves NE — or forced to 0), so a guest write that would change them exits
/// and a guest read sees the read shadow instead of the forced value. Only bits 31:0
/// are considered: bits 63:32 of CR0 are reserved and MOV to CR0 setting them #GPs.
pub const fn cr0_guest_host_mask(caps: &VmxCaps, unrestricted: bool) -> u64 {
    cr0_forced_one(caps, unrestricted) | (!caps.cr0_fixed1 & 0xFFFF_FFFF)
}

/// CR4 guest/host mask: VMXE (fixed to 1) and every other bit fixed by VMX, including
/// the bits IA32_VMX_CR4_FIXED1 does not allow (features the guest cannot turn on).
/// All 64 bits are considered: CR4 has architectural bits above 31 (FRED is bit 32).
pub const fn cr4_guest_host_mask(caps: &VmxCaps) -> u64 {
    caps.cr4_fixed0 | !caps.cr4_fixed1
}

/// The value to put in the guest CR0 field when the guest believes CR0 is `believed`:
/// the fixed bits applied (PE and PG left to the guest with unrestricted guest).
pub const fn cr0_for_guest(caps: &VmxCaps, unrestricted: bool, believed: u64) -> u64 {
    (believed | cr0_forced_one(caps, unrestricted)) & caps.cr0_fixed1
}

/// The value to put in the guest CR4 field when the guest believes CR4 is `believed`.
pub const fn cr4_for_guest(caps: &VmxCaps, believed: u64) -> u64 {
    (believed | caps.cr4_fixed0) & caps.cr4_fixed1
}

/// Read shadow for CR0 when the guest believes CR0 is `believed`: the owned bits of
/// what the guest wrote (bits outside the mask come from the real register).
pub const fn cr0_read_shadow(caps: &VmxCaps, unrestricted: bool, believed: u64) -> u64 {
    believed & cr0_guest_host_mask(caps, unrestricted)
}

/// Read shadow for CR4 when the guest believes CR4 is `believed`.
pub const fn cr4_read_shadow(caps: &VmxCaps, believed: u64) -> u64 {
    believed & cr4_guest_host_mask(caps)
}

// ---------------------------------------------------------------------------------------
// Bitmaps (SDM 25.6.4, 25.6.9)
// ---------------------------------------------------------------------------------------

/// Size of each I/O bitmap and of the MSR bitmap.
pub const BITMAP_BYTES: usize = 4096;

/// Makes every port in the bitmap's half of the port space exit (all bits 1). Used
/// for both I/O bitmaps: every port access is emulated (SDM 25.6.4).
pub fn fill_io_bitmap(bitmap: &mut [u8; BITMAP_BYTES]) {
    bitmap.fill(0xFF);
}

/// MSRs the guest reads and writes directly. The host never executes SYSCALL,
/// SYSRET or SWAPGS, so nothing in it depends on these; the guest owns them outright
/// and the exit handler therefore never sees an access to them. (The host's values
/// are simply whatever the guest left; VM exits do not touch them.)
pub const PASSTHROUGH_MSRS: &[u32] = &[
    0xC000_0102, // IA32_KERNEL_GS_BASE
    0xC000_0081, // IA32_STAR
    0xC000_0082, // IA32_LSTAR
    0xC000_0083, // IA32_CSTAR
    0xC000_0084, // IA32_FMASK (SFMASK)
];

const MSR_LOW_END: u32 = 0x2000;
const MSR_HIGH_BASE: u32 = 0xC000_0000;
const MSR_HIGH_END: u32 = 0xC000_2000;

/// Byte offset (within the read-low/read-high half) and bit of `msr`, or `None` for
/// MSRs outside both ranges (those always exit, SDM 25.6.9).
const fn msr_bitmap_slot(msr: u32) -> Option<(usize, u8)> {
    let (base, index) = if msr < MSR_LOW_END {
        (0x000, msr)
    } else if msr >= MSR_HIGH_BASE && msr < MSR_HIGH_END {
        (0x400, msr - MSR_HIGH_BASE)
    } else {
        return None;
    };
    Some((base + (index / 8) as usize, 1 << (index % 8)))
}

/// Offset of the write bitmaps relative to the read bitmaps.
const MSR_WRITE_OFFSET: usize = 0x800;

/// Fills the MSR bitmap (SDM 25.6.9): read-low at 0x000 (MSRs 0-0x1FFF), read-high at
/// 0x400 (0xC0000000-0xC0001FFF), write-low at 0x800, write-high at 0xC00. Every bit is
/// set (every RDMSR/WRMSR exits) except the read and write bits of `passthrough`;
/// MSRs outside the two ranges are ignored (they exit regardless).
pub fn fill_msr_bitmap(bitmap: &mut [u8; BITMAP_BYTES], passthrough: &[u32]) {
    bitmap.fill(0xFF);
    for &msr in passthrough {
        if let Some((byte, mask)) = msr_bitmap_slot(msr) {
            bitmap[byte] &= !mask;
            bitmap[byte + MSR_WRITE_OFFSET] &= !mask;
        }
    }
}

/// Whether an access to `msr` exits with this bitmap (`write`: WRMSR, else RDMSR).
pub fn msr_exits(bitmap: &[u8; BITMAP_BYTES], msr: u32, write: bool) -> bool {
    match msr_bitmap_slot(msr) {
        Some((byte, mask)) => {
            let at = if write { byte + MSR_WRITE_OFFSET } else { byte };
            bitmap[at] & mask != 0
        }
        None => true,
    }
}

// ---------------------------------------------------------------------------------------
// Guest state (SDM 25.4)
// ---------------------------------------------------------------------------------------

/// The VMCS fields of one segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegFields {
    selector: VmcsField,
    base: VmcsField,
    limit: VmcsField,
    access_rights: VmcsField,
}

const ES: SegFields = SegFields {
    selector: VmcsField::GuestEsSelector,
    base: VmcsField::GuestEsBase,
    limit: VmcsField::GuestEsLimit,
    access_rights: VmcsField::GuestEsAccessRights,
};
const CS: SegFields = SegFields {
    selector: VmcsField::GuestCsSelector,
    base: VmcsField::GuestCsBase,
    limit: VmcsField::GuestCsLimit,
    access_rights: VmcsField::GuestCsAccessRights,
};
const SS: SegFields = SegFields {
    selector: VmcsField::GuestSsSelector,
    base: VmcsField::GuestSsBase,
    limit: VmcsField::GuestSsLimit,
    access_rights: VmcsField::GuestSsAccessRights,
};
const DS: SegFields = SegFields {
    selector: VmcsField::GuestDsSelector,
    base: VmcsField::GuestDsBase,
    limit: VmcsField::GuestDsLimit,
    access_rights: VmcsField::GuestDsAccessRights,
};
const FS: SegFields = SegFields {
    selector: VmcsField::GuestFsSelector,
    base: VmcsField::GuestFsBase,
    limit: VmcsField::GuestFsLimit,
    access_rights: VmcsField::GuestFsAccessRights,
};
const GS: SegFields = SegFields {
    selector: VmcsField::GuestGsSelector,
    base: VmcsField::GuestGsBase,
    limit: VmcsField::GuestGsLimit,
    access_rights: VmcsField::GuestGsAccessRights,
};
const LDTR: SegFields = SegFields {
    selector: VmcsField::GuestLdtrSelector,
    base: VmcsField::GuestLdtrBase,
    limit: VmcsField::GuestLdtrLimit,
    access_rights: VmcsField::GuestLdtrAccessRights,
};
const TR: SegFields = SegFields {
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

fn read_segment(vmcs: &impl Vmcs, f: SegFields) -> SegmentState {
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
/// are 3 and 11 (SDM 27.3.1.2).
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
/// leaves things for a boot sector (relies on unrestricted guest, SDM 27.3.1):
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
    /// EDX after RESET: the processor signature (type, family, model, stepping),
    /// which is the value CPUID.01H returns in EAX (SDM Vol. 3A 10.1.2, Table 10-1).
    pub const fn rdx(self, cpuid_1_eax: u32) -> u64 {
        cpuid_1_eax as u64
    }
}

/// Guest state of a processor right after RESET (SDM Vol. 3A 10.1.4, Table 10-1), for
/// firmware images: CS selector 0xF000 with base 0xFFFF0000 and limit 0xFFFF, IP 0xFFF0,
/// so the first fetch is at 0xFFFFFFF0; the other segments selector 0, base 0, limit
/// 0xFFFF; GDTR/IDTR base 0 limit 0xFFFF; LDTR a present LDT and TR a busy TSS with
/// base 0 and limit 0xFFFF; CR0 = 0x60000010 (CD, NW, ET) plus the VMX fixed NE (the
/// shadow shows the architectural value), CR3/CR4 0 (VMXE fixed, shadowed as 0), EFER 0,
/// RFLAGS 0x2, DR7 0x400, PAT default. Returns what must go in the GPRs.
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
/// The VM-entry control "IA-32e mode guest" must be set ([`compute_controls`] with
/// `long_mode_guest`).
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

/// Size of the hypervisor-built area at the top of a 64-bit guest's RAM.
pub const LONG_MODE_RESERVED: u64 = 1 << 20;

/// Where the hypervisor puts what a 64-bit guest needs before its first instruction.
///
/// The top [`LONG_MODE_RESERVED`] (1 MiB) of guest RAM belongs to the hypervisor at
/// start-up; the guest may reuse it once it has its own GDT, page tables and stack,
/// and should report it as reserved in any memory map it builds:
///
/// ```text
/// ram - 1 MiB            GDT (long_mode::long_mode_gdt, one 4 KiB page)
/// ram - 1 MiB + 4 KiB    .. stack, growing down from stack_top
/// tables_gpa = stack_top identity page tables (long_mode::default_tables_gpa)
/// ram                    end of RAM
/// ```
///
/// ELF guests must not load anything into `reserved`; xtask refuses such images with
/// `elf64::check_fits(elf, ram, &[reserved])` before anything is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongModeLayout {
    pub gdt_gpa: u64,
    pub tables_gpa: u64,
    /// Initial RSP: 16-byte aligned, just below the page tables.
    pub stack_top: u64,
    /// [ram - 1 MiB, ram).
    pub reserved: Range<u64>,
}

impl LongModeLayout {
    /// The layout for `ram_bytes` of guest RAM, or `None` if RAM is smaller than the
    /// reserved area or the page tables leave no room for the GDT page and a stack
    /// inside it (more than about 250 GiB of RAM).
    pub fn for_ram(ram_bytes: u64) -> Option<Self> {
        let start = ram_bytes.checked_sub(LONG_MODE_RESERVED)?;
        let tables_gpa = long_mode::default_tables_gpa(ram_bytes)?;
        // GDT page below, and at least one more page of stack.
        if tables_gpa <= start + 0x1000 {
            return None;
        }
        Some(LongModeLayout {
            gdt_gpa: start,
            tables_gpa,
            stack_top: tables_gpa & !0xF,
            reserved: start..ram_bytes,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Host state (SDM 25.5, checks 27.2.2-27.2.3)
// ---------------------------------------------------------------------------------------

/// The host-state area: what the CPU loads on every VM exit. `rip` is the VM-exit
/// entry point and `rsp` the stack it starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub tr: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub efer: u64,
    pub pat: u64,
    pub rsp: u64,
    pub rip: u64,
}

/// Writes the host-state area. Selectors are written with RPL and TI cleared: VM
/// entry requires both to be 0 in every host selector field (SDM 27.2.3), and a
/// VM exit loads the selectors as ring-0 GDT selectors anyway, so a selector read
/// from the running kernel (whose RPL is 0 already) is unchanged. The host's LDTR is
/// always null after a VM exit; there is no field for it.
pub fn write_host_state(vmcs: &mut impl Vmcs, h: &HostState) {
    let sel = |s: u16| u64::from(s & !7);
    vmcs.write(VmcsField::HostCr0, h.cr0);
    vmcs.write(VmcsField::HostCr3, h.cr3);
    vmcs.write(VmcsField::HostCr4, h.cr4);
    vmcs.write(VmcsField::HostCsSelector, sel(h.cs));
    vmcs.write(VmcsField::HostSsSelector, sel(h.ss));
    vmcs.write(VmcsField::HostDsSelector, sel(h.ds));
    vmcs.write(VmcsField::HostEsSelector, sel(h.es));
    vmcs.write(VmcsField::HostFsSelector, sel(h.fs));
    vmcs.write(VmcsField::HostGsSelector, sel(h.gs));
    vmcs.write(VmcsField::HostTrSelector, sel(h.tr));
    vmcs.write(VmcsField::HostFsBase, h.fs_base);
    vmcs.write(VmcsField::HostGsBase, h.gs_base);
    vmcs.write(VmcsField::HostTrBase, h.tr_base);
    vmcs.write(VmcsField::HostGdtrBase, h.gdtr_base);
    vmcs.write(VmcsField::HostIdtrBase, h.idtr_base);
    vmcs.write(VmcsField::HostIa32SysenterCs, h.sysenter_cs);
    vmcs.write(VmcsField::HostIa32SysenterEsp, h.sysenter_esp);
    vmcs.write(VmcsField::HostIa32SysenterEip, h.sysenter_eip);
    vmcs.write(VmcsField::HostIa32Efer, h.efer);
    vmcs.write(VmcsField::HostIa32Pat, h.pat);
    vmcs.write(VmcsField::HostRsp, h.rsp);
    vmcs.write(VmcsField::HostRip, h.rip);
}

// ---------------------------------------------------------------------------------------
// Guest-state checks (SDM 27.3.1)
// ---------------------------------------------------------------------------------------

/// One rule of SDM 27.3.1 that the guest state breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStateRule {
    // 27.3.1.1 control registers, debug registers and MSRs
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
    // 27.3.1.2 segment registers
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
    // 27.3.1.3 descriptor-table registers
    DescriptorTableLimit,
    // 27.3.1.4 RIP and RFLAGS
    RipAbove4G,
    RipNotCanonical,
    RflagsReserved,
    RflagsVm,
    RflagsIfForInterrupt,
    // 27.3.1.5 non-register state
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

    /// The SDM section stating the rule.
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
/// segment (SDM 27.3.1.2).
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

/// Checks the guest-state area in `vmcs` against a useful subset of the VM-entry
/// checks of SDM 27.3.1 (control registers and MSRs, segment registers,
/// descriptor-table registers, RIP/RFLAGS, non-register state), reading the VM-entry
/// and secondary controls from the same VMCS. Returns the first violation found, in
/// the SDM's order. Passing does not guarantee the CPU accepts the state (not every
/// check is modelled; the physical-address width is assumed to be
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

    // --- 27.3.1.1: control registers, debug registers, MSRs -----------------------
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

    // --- 27.3.1.2: segment registers ----------------------------------------------
    let rflags_v = vmcs.read(F::GuestRflags);
    let vm86 = rflags_v & Rflags::VM.bits() != 0;
    // A 27.3.1.4 check, done here because it decides which segment rules apply: a
    // stray VM flag is better reported as itself than as eight VM86 segment faults.
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

    // --- 27.3.1.3: GDTR, IDTR ------------------------------------------------------
    for (base, limit) in [
        (F::GuestGdtrBase, F::GuestGdtrLimit),
        (F::GuestIdtrBase, F::GuestIdtrLimit),
    ] {
        let b = vmcs.read(base);
        ensure(is_canonical(b, linear_bits), base, b, R::BaseNotCanonical)?;
        let l = vmcs.read(limit);
        ensure(l >> 16 == 0, limit, l, R::DescriptorTableLimit)?;
    }

    // --- 27.3.1.4: RIP, RFLAGS -----------------------------------------------------
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

    // --- 27.3.1.5: non-register state ---------------------------------------------
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
    use crate::guest::long_mode::{long_mode_gdt, tables_needed};
    use crate::vmx::vmcs::SoftVmcs;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    use crate::vmx::caps::test_cpus::skylake as skylake_raw;

    fn caps() -> VmxCaps {
        VmxCaps::decode(&skylake_raw(), true, 0x5)
    }

    /// The same CPU as seen without the TRUE MSRs: default1 controls stay forced.
    fn caps_without_true() -> VmxCaps {
        let mut raw = skylake_raw();
        raw.basic &= !(1 << 55);
        VmxCaps::decode(&raw, true, 0x5)
    }

    fn addrs() -> ControlAddrs {
        ControlAddrs {
            io_bitmap_a: 0x10_0000,
            io_bitmap_b: 0x10_1000,
            msr_bitmap: 0x10_2000,
            eptp: Eptp::new(0x20_0000, false),
            vpid: Some(1),
        }
    }

    fn has(value: u32, bits: u32) -> bool {
        value & bits == bits
    }

    /// A complete VMCS for each kind of start: controls, host, guest.
    fn vmcs_for(caps: &VmxCaps, long_mode: bool) -> SoftVmcs {
        let mut v = SoftVmcs::new();
        let c = compute_controls(caps, long_mode).unwrap();
        write_controls(&mut v, &c, &addrs());
        write_host_state(&mut v, &host());
        v
    }

    fn real_vmcs() -> SoftVmcs {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        write_guest_real_mode(&mut v, &c, 0, 0x7C00, 0, 0x7C00);
        v
    }

    fn long_vmcs() -> SoftVmcs {
        let c = caps();
        let mut v = vmcs_for(&c, true);
        let l = LongModeLayout::for_ram(64 * MIB).unwrap();
        write_guest_long_mode(&mut v, &c, 0x20_0000, l.stack_top, l.tables_gpa, l.gdt_gpa);
        v
    }

    fn host() -> HostState {
        HostState {
            cr0: 0x8005_0033,
            cr3: 0x1000,
            cr4: 0x2020,
            cs: 0x08,
            ss: 0x10,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
            tr: 0x18,
            tr_base: 0xFFFF_8000_0001_0000,
            gdtr_base: 0xFFFF_8000_0002_0000,
            idtr_base: 0xFFFF_8000_0003_0000,
            efer: 0xD01,
            pat: PAT_DEFAULT,
            rsp: 0xFFFF_8000_0010_0000,
            rip: 0xFFFF_8000_0000_4000,
            ..HostState::default()
        }
    }

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

    // --- controls -----------------------------------------------------------------

    #[test]
    fn controls_for_long_mode_guest_on_skylake() {
        let c = compute_controls(&caps(), true).unwrap();
        assert!(has(
            c.pin,
            (PinBasedControls::EXTERNAL_INTERRUPT_EXITING | PinBasedControls::NMI_EXITING).bits()
        ));
        assert!(!c.preemption_timer());
        let want = PrimaryControls::HLT_EXITING
            | PrimaryControls::USE_IO_BITMAPS
            | PrimaryControls::USE_MSR_BITMAPS
            | PrimaryControls::ACTIVATE_SECONDARY_CONTROLS;
        assert!(has(c.primary, want.bits()));
        let unwanted = PrimaryControls::CR3_LOAD_EXITING
            | PrimaryControls::CR3_STORE_EXITING
            | PrimaryControls::INVLPG_EXITING
            | PrimaryControls::RDTSC_EXITING
            | PrimaryControls::RDPMC_EXITING
            | PrimaryControls::MWAIT_EXITING
            | PrimaryControls::MONITOR_EXITING;
        assert_eq!(c.primary & unwanted.bits(), 0);
        assert!(!c.cr3_load_exiting());
        let sec = SecondaryControls::ENABLE_EPT
            | SecondaryControls::UNRESTRICTED_GUEST
            | SecondaryControls::ENABLE_VPID
            | SecondaryControls::WBINVD_EXITING
            | SecondaryControls::ENABLE_RDTSCP
            | SecondaryControls::ENABLE_INVPCID
            | SecondaryControls::ENABLE_XSAVES_XRSTORS;
        assert_eq!(c.secondary, sec.bits());
        assert!(c.vpid_enabled());
        let exit = ExitControls::HOST_ADDRESS_SPACE_SIZE
            | ExitControls::ACK_INTERRUPT_ON_EXIT
            | ExitControls::SAVE_EFER
            | ExitControls::LOAD_EFER
            | ExitControls::SAVE_PAT
            | ExitControls::LOAD_PAT;
        assert!(has(c.exit, exit.bits()));
        let entry =
            EntryControls::IA32E_MODE_GUEST | EntryControls::LOAD_EFER | EntryControls::LOAD_PAT;
        assert!(has(c.entry, entry.bits()));
        // TRUE entry controls let "load debug controls" be cleared.
        assert_eq!(c.entry & EntryControls::LOAD_DEBUG_CONTROLS.bits(), 0);
        assert_eq!(c.cr0_guest_host_mask, Cr0::NE.bits());
    }

    #[test]
    fn real_mode_guest_has_no_ia32e_control() {
        let c = compute_controls(&caps(), false).unwrap();
        assert_eq!(c.entry & EntryControls::IA32E_MODE_GUEST.bits(), 0);
        assert!(has(
            c.entry,
            (EntryControls::LOAD_EFER | EntryControls::LOAD_PAT).bits()
        ));
    }

    #[test]
    fn preemption_timer_only_when_asked_and_available() {
        let opts = ControlOptions {
            long_mode_guest: false,
            want_preemption_timer: true,
        };
        assert!(compute_controls_with(&caps(), &opts)
            .unwrap()
            .preemption_timer());
        let mut c = caps();
        c.pinbased.may_be_one &= !PinBasedControls::VMX_PREEMPTION_TIMER.bits();
        assert!(!compute_controls_with(&c, &opts).unwrap().preemption_timer());
    }

    #[test]
    fn without_true_controls_default1_bits_stay() {
        let c = compute_controls(&caps_without_true(), false).unwrap();
        assert!(c.cr3_load_exiting());
        assert!(has(c.primary, PrimaryControls::CR3_STORE_EXITING.bits()));
        assert!(has(c.entry, EntryControls::LOAD_DEBUG_CONTROLS.bits()));
    }

    #[test]
    fn optional_secondary_controls_are_dropped_when_unsupported() {
        let mut c = caps();
        c.procbased2.may_be_one =
            (SecondaryControls::ENABLE_EPT | SecondaryControls::UNRESTRICTED_GUEST).bits();
        let ctl = compute_controls(&c, true).unwrap();
        assert_eq!(ctl.secondary, c.procbased2.may_be_one);
        assert!(!ctl.vpid_enabled());
    }

    #[test]
    fn missing_ept_names_the_secondary_controls() {
        let mut c = caps();
        c.procbased2 = Allowed::default();
        let e = compute_controls(&c, true).unwrap_err();
        assert_eq!(e.group, ControlGroup::Secondary);
        assert_eq!(
            e.to_string(),
            "secondary processor-based VM-execution controls 'enable EPT', 'unrestricted guest' cannot be set"
        );
    }

    #[test]
    fn missing_exit_controls_are_named_one_per_line() {
        let mut c = caps();
        c.exit.may_be_one &= !ExitControls::HOST_ADDRESS_SPACE_SIZE.bits();
        assert_eq!(
            compute_controls(&c, true).unwrap_err().to_string(),
            "VM-exit control 'host address-space size' cannot be set"
        );
        let mut c = caps();
        c.exit.may_be_one &= !(ExitControls::SAVE_PAT | ExitControls::LOAD_PAT).bits();
        let e = compute_controls(&c, true).unwrap_err();
        assert_eq!(
            e.bits,
            (ExitControls::SAVE_PAT | ExitControls::LOAD_PAT).bits()
        );
        assert_eq!(
            e.to_string(),
            "VM-exit controls 'save IA32_PAT', 'load IA32_PAT' cannot be set"
        );
    }

    #[test]
    fn entry_and_pin_errors() {
        let mut c = caps();
        c.entry.may_be_one &= !EntryControls::IA32E_MODE_GUEST.bits();
        assert_eq!(
            compute_controls(&c, true).unwrap_err().to_string(),
            "VM-entry control 'IA-32e mode guest' cannot be set"
        );
        // A real-mode guest does not need it.
        assert!(compute_controls(&c, false).is_ok());
        let mut c = caps();
        c.entry.must_be_one |= EntryControls::IA32E_MODE_GUEST.bits();
        let e = compute_controls(&c, false).unwrap_err();
        assert_eq!(e.problem, ControlProblem::CannotClear);
        assert_eq!(
            e.to_string(),
            "VM-entry control 'IA-32e mode guest' cannot be cleared"
        );
        let mut c = caps();
        c.pinbased.may_be_one = 0x16 | (1 << 30);
        assert_eq!(
            compute_controls(&c, true).unwrap_err().to_string(),
            "pin-based VM-execution controls 'external-interrupt exiting', 'NMI exiting' cannot be set"
        );
        let e = SetupError {
            group: ControlGroup::Primary,
            bits: 1 << 26,
            problem: ControlProblem::CannotSet,
        };
        assert_eq!(
            e.to_string(),
            "primary processor-based VM-execution control bit 26 cannot be set"
        );
    }

    #[test]
    fn write_controls_fills_every_control_field() {
        let c = compute_controls(&caps(), true).unwrap();
        let mut v = SoftVmcs::new();
        write_controls(&mut v, &c, &addrs());
        assert_eq!(v.read(VmcsField::PinBasedControls), c.pin.into());
        assert_eq!(v.read(VmcsField::PrimaryProcControls), c.primary.into());
        assert_eq!(v.read(VmcsField::SecondaryProcControls), c.secondary.into());
        assert_eq!(v.read(VmcsField::ExitControls), c.exit.into());
        assert_eq!(v.read(VmcsField::EntryControls), c.entry.into());
        assert_eq!(v.read(VmcsField::IoBitmapA), 0x10_0000);
        assert_eq!(v.read(VmcsField::IoBitmapB), 0x10_1000);
        assert_eq!(v.read(VmcsField::MsrBitmap), 0x10_2000);
        assert_eq!(v.read(VmcsField::EptPointer), 0x20_001E);
        assert_eq!(v.read(VmcsField::Vpid), 1);
        assert_eq!(v.read(VmcsField::VmcsLinkPointer), u64::MAX);
        assert_eq!(v.read(VmcsField::Cr0GuestHostMask), Cr0::NE.bits());
        assert_eq!(
            v.read(VmcsField::Cr4GuestHostMask),
            cr4_guest_host_mask(&caps())
        );
        for f in [
            VmcsField::ExceptionBitmap,
            VmcsField::PageFaultErrorCodeMask,
            VmcsField::PageFaultErrorCodeMatch,
            VmcsField::Cr3TargetCount,
            VmcsField::ExitMsrStoreCount,
            VmcsField::ExitMsrLoadCount,
            VmcsField::EntryMsrLoadCount,
            VmcsField::EntryInterruptionInfo,
        ] {
            assert!(v.was_written(f), "{}", f.name());
            assert_eq!(v.read(f), 0, "{}", f.name());
        }
    }

    #[test]
    fn no_vpid_clears_enable_vpid() {
        let c = compute_controls(&caps(), true).unwrap();
        for vpid in [None, Some(0)] {
            let mut v = SoftVmcs::new();
            write_controls(&mut v, &c, &ControlAddrs { vpid, ..addrs() });
            let sec = v.read(VmcsField::SecondaryProcControls) as u32;
            assert_eq!(sec & SecondaryControls::ENABLE_VPID.bits(), 0);
            assert!(has(sec, SecondaryControls::ENABLE_EPT.bits()));
            assert!(!v.was_written(VmcsField::Vpid));
        }
    }

    // --- CR masks -----------------------------------------------------------------

    #[test]
    fn cr_masks_cover_the_fixed_bits() {
        let c = caps();
        assert_eq!(cr0_guest_host_mask(&c, true), Cr0::NE.bits());
        assert_eq!(
            cr0_guest_host_mask(&c, false),
            Cr0::PE.bits() | Cr0::NE.bits() | Cr0::PG.bits()
        );
        let m4 = cr4_guest_host_mask(&c);
        assert_ne!(m4 & Cr4::VMXE.bits(), 0);
        // LA57 (bit 12) is not allowed by Cr4::FIXED1.bits() here: the guest may not set it.
        assert_ne!(m4 & Cr4::LA57.bits(), 0);
        assert_eq!(m4 & Cr4::PAE.bits(), 0);
        // Exit-handler helpers: a guest writing CR0 = PE only gets NE forced and
        // sees what it wrote.
        assert_eq!(
            cr0_for_guest(&c, true, Cr0::PE.bits()),
            Cr0::PE.bits() | Cr0::NE.bits()
        );
        assert_eq!(cr0_read_shadow(&c, true, Cr0::PE.bits()), 0);
        assert_eq!(
            cr4_for_guest(&c, Cr4::PAE.bits()),
            Cr4::PAE.bits() | Cr4::VMXE.bits()
        );
        assert_eq!(cr4_read_shadow(&c, Cr4::PAE.bits()), 0);
    }

    // --- bitmaps ------------------------------------------------------------------

    #[test]
    fn msr_bitmap_bit_positions() {
        let mut b = [0u8; BITMAP_BYTES];
        fill_msr_bitmap(
            &mut b,
            &[0x10, 0x1FFF, 0xC000_0082, 0x4000_0000, 0xC000_2000],
        );
        // TSC (0x10): read-low byte 2 bit 0, write-low byte 0x802 bit 0.
        assert_eq!(b[0x002], 0xFE);
        assert_eq!(b[0x802], 0xFE);
        // 0x1FFF: last bit of read-low and write-low.
        assert_eq!(b[0x3FF], 0x7F);
        assert_eq!(b[0xBFF], 0x7F);
        // LSTAR (0xC0000082): read-high 0x400 + 0x10 bit 2, write-high 0xC10 bit 2.
        assert_eq!(b[0x410], 0xFB);
        assert_eq!(b[0xC10], 0xFB);
        // Out-of-range MSRs change nothing else.
        let cleared: usize = b.iter().map(|&x| x.count_zeros() as usize).sum();
        assert_eq!(cleared, 6);
        assert!(!msr_exits(&b, 0xC000_0082, false) && !msr_exits(&b, 0xC000_0082, true));
        assert!(msr_exits(&b, 0xC000_0080, true));
        assert!(msr_exits(&b, 0x4000_0000, false));
    }

    #[test]
    fn passthrough_msrs_do_not_exit_and_everything_else_does() {
        let mut b = [0u8; BITMAP_BYTES];
        fill_msr_bitmap(&mut b, PASSTHROUGH_MSRS);
        for &m in PASSTHROUGH_MSRS {
            assert!(
                !msr_exits(&b, m, false) && !msr_exits(&b, m, true),
                "{m:#x}"
            );
        }
        // KERNEL_GS_BASE 0xC0000102: byte 0x400 + 0x20, bit 2.
        assert_eq!(b[0x420] & 0x04, 0);
        assert_eq!(b[0xC20] & 0x04, 0);
        for m in [
            0x1B,
            0x10,
            0xC000_0080,
            0xC000_0100,
            0xC000_0101,
            0xC000_0103,
        ] {
            assert!(msr_exits(&b, m, false) && msr_exits(&b, m, true), "{m:#x}");
        }
        let cleared: usize = b.iter().map(|&x| x.count_zeros() as usize).sum();
        assert_eq!(cleared, 2 * PASSTHROUGH_MSRS.len());
        let mut io = [0u8; BITMAP_BYTES];
        fill_io_bitmap(&mut io);
        assert!(io.iter().all(|&x| x == 0xFF));
    }

    // --- guest state writers --------------------------------------------------------

    #[test]
    fn real_mode_state_passes_and_looks_like_a_bios_handoff() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        write_guest_real_mode(&mut v, &c, 0x1000, 0x0100, 0x2000, 0xFFFE);
        assert_eq!(check_guest_state(&v, &c), Ok(()));
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
        assert_eq!(check_guest_state(&real_vmcs(), &c), Ok(()));
    }

    #[test]
    fn reset_vector_state_passes() {
        let c = caps();
        let mut v = vmcs_for(&c, false);
        let gprs = write_guest_reset_vector(&mut v, &c);
        assert_eq!(gprs.rdx(0x000906EA), 0x000906EA);
        assert_eq!(check_guest_state(&v, &c), Ok(()));
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
    fn long_mode_state_passes() {
        let c = caps();
        let v = long_vmcs();
        assert_eq!(check_guest_state(&v, &c), Ok(()));
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
                let guest = f.field_type() == crate::vmx::vmcs::FieldType::GuestState;
                let host = f.field_type() == crate::vmx::vmcs::FieldType::HostState;
                if (guest || host) && !skip.contains(&f) {
                    assert!(v.was_written(f), "{} not written", f.name());
                }
            }
        }
    }

    // --- layout -----------------------------------------------------------------------

    #[test]
    fn long_mode_layout_for_4_gib() {
        let ram = 4 * GIB;
        let l = LongModeLayout::for_ram(ram).unwrap();
        assert_eq!(l.reserved, ram - MIB..ram);
        assert_eq!(l.gdt_gpa, ram - MIB);
        assert_eq!(l.tables_gpa, ram - tables_needed(ram) * 4096);
        assert_eq!(l.stack_top, l.tables_gpa);
        assert_eq!(l.stack_top % 16, 0);
        assert!(l.gdt_gpa + (long_mode_gdt().len() as u64 * 8) <= l.stack_top - 0x1000);
        assert!(l.reserved.contains(&l.tables_gpa) && l.reserved.contains(&(l.stack_top - 1)));
    }

    #[test]
    fn long_mode_layout_limits() {
        assert_eq!(LongModeLayout::for_ram(0), None);
        assert_eq!(LongModeLayout::for_ram(MIB - 4096), None);
        assert!(LongModeLayout::for_ram(2 * MIB).is_some());
        assert!(LongModeLayout::for_ram(64 * GIB).is_some());
        // Tables for 256 TiB do not fit in 1 MiB.
        assert_eq!(LongModeLayout::for_ram(1 << 48), None);
    }

    // --- host state -----------------------------------------------------------------

    #[test]
    fn host_selectors_lose_rpl_and_ti() {
        let mut v = SoftVmcs::new();
        let h = HostState {
            cs: 0x0B,
            ss: 0x17,
            ds: 0x2F,
            tr: 0x1C,
            ..host()
        };
        write_host_state(&mut v, &h);
        assert_eq!(v.read(VmcsField::HostCsSelector), 0x08);
        assert_eq!(v.read(VmcsField::HostSsSelector), 0x10);
        assert_eq!(v.read(VmcsField::HostDsSelector), 0x28);
        assert_eq!(v.read(VmcsField::HostTrSelector), 0x18);
        assert_eq!(v.read(VmcsField::HostRip), h.rip);
        assert_eq!(v.read(VmcsField::HostRsp), h.rsp);
        assert_eq!(v.read(VmcsField::HostIa32Efer), 0xD01);
        assert_eq!(v.read(VmcsField::HostTrBase), h.tr_base);
        assert_eq!(v.read(VmcsField::HostCr3), 0x1000);
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
