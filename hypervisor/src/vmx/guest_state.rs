//! The guest's architectural state as the VMCS holds it after a VM exit: the
//! processor mode, CPL, IA32_EFER and the paging registers the exit handlers and the
//! coalescer both read, and the interruptibility update both make when they retire
//! instructions (SDM Vol. 3C 25.4.1 "Guest Register State", 25.4.2 "Guest
//! Non-Register State").

use crate::vmx::caps::EntryControls;
use crate::vmx::vmcs::{access_rights, interruptibility, Vmcs, VmcsField};
use crate::x86::guest_mem::PagingContext;
use crate::x86::Efer;

/// IA32_EFER.LMA as VM entry will load it: the "IA-32e mode guest" entry control.
pub fn guest_lma(vmcs: &impl Vmcs) -> bool {
    vmcs.read(VmcsField::EntryControls) & u64::from(EntryControls::IA32E_MODE_GUEST.bits()) != 0
}

/// 64-bit mode: IA-32e mode with CS.L set (SDM Vol. 3A 3.4.5).
pub fn guest_long_mode(vmcs: &impl Vmcs) -> bool {
    guest_lma(vmcs) && vmcs.read(VmcsField::GuestCsAccessRights) & u64::from(access_rights::L) != 0
}

/// Whether the guest's CS is a 32-bit segment (CS.D/B) outside 64-bit mode.
pub fn guest_cs_32bit(vmcs: &impl Vmcs) -> bool {
    vmcs.read(VmcsField::GuestCsAccessRights) & u64::from(access_rights::DB) != 0
}

/// CPL is SS.DPL (SDM 27.3.1.2 / 25.4.1).
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

/// An instruction retired: blocking by STI and by MOV SS ends with it (SDM Vol. 3C 25.4.2
/// "Guest Non-Register State").
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
