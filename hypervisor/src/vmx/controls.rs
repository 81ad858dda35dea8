//! The VM-execution, VM-exit and VM-entry controls: the five control words computed
//! against the CPU's allowed settings, the fields [`write_controls`] fills around them
//! (bitmap addresses, EPTP, VPID, exception bitmap, MSR lists), the CR0/CR4 guest/host
//! masks and read shadows, and the I/O and MSR bitmaps.
//!
//! Sources (SDM Vol. 3C unless stated, the edition `crate::vmx` pins): 25.6
//! "VM-Execution Control Fields" (I/O bitmaps 25.6.4 "I/O-Bitmap Addresses", CR masks
//! and shadows 25.6.6 "Guest/Host Masks and Read Shadows for CR0 and CR4", MSR bitmaps
//! 25.6.9 "MSR-Bitmap Address"), 25.7.1 "VM-Exit Controls", 25.8.1 "VM-Entry
//! Controls", the VM-entry checks on them 27.2.1 "Checks on VMX Controls", and the
//! allowed settings in SDM Vol. 3D Appendix A "VMX Capability Reporting Facility".

use core::fmt;

use crate::vmx::caps::{
    Allowed, EntryControls, ExitControls, PinBasedControls, PrimaryControls, SecondaryControls,
    VmxCaps,
};
use crate::vmx::ept::Eptp;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::Cr0;

// ---------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------

/// The five 32-bit control fields, plus the CR0/CR4 guest/host masks derived from the
/// same capabilities (they belong to the VM-execution controls, SDM Vol. 3C 25.6.6
/// "Guest/Host Masks and Read Shadows for CR0 and CR4").
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
    /// Allowed-1 setting is 0 (SDM Vol. 3D Appendix A "VMX Capability Reporting
    /// Facility").
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

impl core::error::Error for SetupError {}

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
/// exiting can be cleared; SDM Vol. 3D A.2 "Reserved Controls and Default Settings").
/// Every control not asked for below is left at its must-be-one setting, which is how
/// CR3-load/store, INVLPG, RDTSC, RDPMC, MWAIT and MONITOR exiting end up clear
/// whenever the CPU allows it. Sections are SDM Vol. 3C:
///
/// - Pin-based (25.6.1 "Pin-Based VM-Execution Controls"): external-interrupt and NMI
///   exiting (required), the preemption timer only when asked and available.
/// - Primary (25.6.2 "Processor-Based VM-Execution Controls"): HLT exiting, use I/O
///   bitmaps, use MSR bitmaps, activate secondary controls (required).
/// - Secondary (25.6.2, Table 25-7 "Definitions of Secondary Processor-Based
///   VM-Execution Controls"): enable EPT and unrestricted guest (required); enable VPID,
///   WBINVD exiting, enable RDTSCP, enable INVPCID, enable XSAVES/XRSTORS when allowed
///   (without the last three those instructions #UD in the guest).
/// - VM-exit (25.7.1 "VM-Exit Controls"): host address-space size, acknowledge
///   interrupt on exit, save/load IA32_EFER, save/load IA32_PAT (all required).
/// - VM-entry (25.8.1 "VM-Entry Controls"): load IA32_EFER, load IA32_PAT (required),
///   IA-32e mode guest exactly when `long_mode_guest`.
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
    /// allowed in the VMCS; SDM Vol. 3C 27.2.1.1 "VM-Execution Control Fields") turns
    /// "enable VPID" off.
    pub vpid: Option<u16>,
}

/// Writes the VM-execution, VM-exit and VM-entry control fields (SDM Vol. 3C 25.6
/// "VM-Execution Control Fields", 25.7 "VM-Exit Control Fields", 25.8 "VM-Entry Control
/// Fields"):
/// the five control words, bitmap addresses, EPTP and VPID, exception bitmap 0 (no
/// exception exits), page-fault error-code mask/match 0, CR3-target count 0, empty
/// MSR store/load lists, no event to inject, VMCS link pointer all ones (no shadow
/// VMCS), and the CR0/CR4 guest/host masks. The read shadows depend on the guest's
/// starting state and are written by the `write_guest_*` functions of
/// [`super::guest_state`].
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
    // A stale valid bit from a reused VMCS would inject an event on entry (SDM Vol. 3C
    // 25.8.3 "VM-Entry Controls for Event Injection").
    vmcs.write(VmcsField::EntryInterruptionInfo, 0);
    // Anything but all ones makes VM entry check (and use) a shadow VMCS (SDM Vol. 3C
    // 27.3.1.5 "Checks on Guest Non-Register State").
    vmcs.write(VmcsField::VmcsLinkPointer, u64::MAX);

    vmcs.write(VmcsField::Cr0GuestHostMask, controls.cr0_guest_host_mask);
    vmcs.write(VmcsField::Cr4GuestHostMask, controls.cr4_guest_host_mask);
}

// ---------------------------------------------------------------------------------------
// CR0/CR4 masks, shadows and values (SDM Vol. 3C 25.6.6 "Guest/Host Masks and Read
// Shadows for CR0 and CR4"; fixed bits SDM Vol. 3D A.7 "VMX-Fixed Bits in CR0", A.8
// "VMX-Fixed Bits in CR4")
// ---------------------------------------------------------------------------------------

/// CR0 bits VMX forces to 1 in the guest, honouring the unrestricted-guest exemption
/// for PE and PG (SDM Vol. 3C 27.3.1.1 "Checks on Guest Control Registers, Debug
/// Registers, and MSRs").
pub(super) const fn cr0_forced_one(caps: &VmxCaps, unrestricted: bool) -> u64 {
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
// Bitmaps (SDM Vol. 3C 25.6.4 "I/O-Bitmap Addresses", 25.6.9 "MSR-Bitmap Address")
// ---------------------------------------------------------------------------------------

/// Size of each I/O bitmap and of the MSR bitmap.
pub const BITMAP_BYTES: usize = 4096;

/// Makes every port in the bitmap's half of the port space exit (all bits 1). Used
/// for both I/O bitmaps: every port access is emulated (SDM Vol. 3C 25.6.4 "I/O-Bitmap
/// Addresses").
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
/// MSRs outside both ranges (those always exit, SDM Vol. 3C 25.6.9 "MSR-Bitmap
/// Address").
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

/// Fills the MSR bitmap (SDM Vol. 3C 25.6.9 "MSR-Bitmap Address"): read-low at 0x000
/// (MSRs 0-0x1FFF), read-high at 0x400 (0xC0000000-0xC0001FFF), write-low at 0x800,
/// write-high at 0xC00. Every bit is set (every RDMSR/WRMSR exits) except the read and
/// write bits of `passthrough`; MSRs outside the two ranges are ignored (they exit
/// regardless).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fixtures::{addrs, caps, caps_without_true};
    use crate::vmx::vmcs::SoftVmcs;
    use crate::x86::Cr4;

    fn has(value: u32, bits: u32) -> bool {
        value & bits == bits
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
}
