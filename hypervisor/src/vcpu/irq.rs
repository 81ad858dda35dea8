//! Delivering the virtual PIC's interrupts into the guest (SDM Vol. 3C 27.6 "Event
//! Injection"; the interruptibility state of 25.4.2 "Guest Non-Register State";
//! interrupt-window exiting, 27.7.5 "Interrupt-Window Exiting and Virtual-Interrupt
//! Delivery").
//!
//! Before every VM entry the run loop asks the interrupt controller for a pending
//! vector. If the guest can take an external interrupt now (RFLAGS.IF = 1, no blocking
//! by STI or MOV SS, no other event already being injected), the vector is
//! acknowledged (the INTA cycle) and injected, and a guest sitting in the HLT activity
//! state is woken. Otherwise interrupt-window exiting is switched on so the CPU exits
//! the moment the guest opens the window, and delivery is retried then. The
//! controller is only acknowledged when the interrupt is really injected, so nothing
//! is lost or delivered twice.

use crate::devices::board::Machine;
use crate::devices::bus::ConsoleSink;
use crate::devices::InterruptController;
use crate::stats::Stats;
use crate::vmx::caps::PrimaryControls;
use crate::vmx::event::{external_interrupt, INTERRUPTION_INFO_VALID};
use crate::vmx::vmcs::{activity, interruptibility, Vmcs, VmcsField};
use crate::x86::Rflags;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// This vector will be delivered by the next VM entry.
    Injected(u8),
    /// An interrupt is pending but the guest cannot take it yet; the CPU will exit
    /// when it can (interrupt-window exiting).
    Waiting,
    /// Nothing is pending.
    Idle,
}

/// Whether the guest could take an external interrupt at the next VM entry.
pub fn guest_interruptible(vmcs: &impl Vmcs) -> bool {
    vmcs.read(VmcsField::GuestRflags) & Rflags::IF.bits() != 0
        && vmcs.read(VmcsField::GuestInterruptibilityState) & interruptibility::STI_MOV_SS == 0
        && vmcs.read(VmcsField::EntryInterruptionInfo) & u64::from(INTERRUPTION_INFO_VALID) == 0
}

fn set_window_exiting(vmcs: &mut impl Vmcs, on: bool) {
    let bit = u64::from(PrimaryControls::INTERRUPT_WINDOW_EXITING.bits());
    let controls = vmcs.read(VmcsField::PrimaryProcControls);
    let new = if on { controls | bit } else { controls & !bit };
    if new != controls {
        vmcs.write(VmcsField::PrimaryProcControls, new);
    }
}

/// Injects the controller's pending interrupt if the guest can take it, or arranges
/// an exit for when it can.
pub fn deliver(vmcs: &mut impl Vmcs, pic: &mut impl InterruptController) -> Delivery {
    if pic.pending_vector().is_none() {
        set_window_exiting(vmcs, false);
        return Delivery::Idle;
    }
    if !guest_interruptible(vmcs) {
        set_window_exiting(vmcs, true);
        return Delivery::Waiting;
    }
    let vector = pic.acknowledge();
    vmcs.write(
        VmcsField::EntryInterruptionInfo,
        u64::from(external_interrupt(vector)),
    );
    // An external interrupt ends the HLT state (SDM Vol. 3C 27.3.1.5 "Checks on Guest
    // Non-Register State" allows injecting it into a halted guest with IF = 1; the
    // guest resumes after the HLT).
    if vmcs.read(VmcsField::GuestActivityState) == activity::HLT {
        vmcs.write(VmcsField::GuestActivityState, activity::ACTIVE);
    }
    set_window_exiting(vmcs, false);
    Delivery::Injected(vector)
}

/// [`deliver`] from the board's PIC, counting the injected interrupt by IRQ line in
/// `stats` (a spurious IRQ7/IRQ15 counts as spurious).
pub fn deliver_from<S: ConsoleSink>(
    vmcs: &mut impl Vmcs,
    machine: &Machine<S>,
    stats: &mut Stats,
) -> Delivery {
    let mut intr = machine.intr();
    let d = deliver(vmcs, &mut intr);
    if let Delivery::Injected(_) = d {
        match intr.irq {
            Some(irq) => {
                let slot = &mut stats.irq_injected[usize::from(irq & 15)];
                *slot = slot.saturating_add(1);
            }
            None => stats.irq_spurious = stats.irq_spurious.saturating_add(1),
        }
    }
    d
}

use crate::stats::EndKind;
use crate::vcpu::exits::{end, ExitAction, ExitContext, HostOps};
use crate::x86::guest_mem::GuestMemory;

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    /// HLT ends the guest whether or not interrupts are enabled: no device raises
    /// interrupts yet. The device models add wake-ups (HLT with RFLAGS.IF = 1 then
    /// waits for the next interrupt). HLT with interrupts off stops the guest for good
    /// (nothing but an NMI could wake it, and sluice sends none): Linux's power-off
    /// ends this way. With interrupts on, the guest waits for one: RIP moves past the
    /// HLT and the guest goes into the HLT activity state (SDM Vol. 3C 25.4.2 "Guest
    /// Non-Register State"); the run loop injects the next interrupt, which wakes it,
    /// or arms the preemption timer for the next timer event, or ends the guest if no
    /// interrupt source could ever wake it.
    pub(super) fn hlt(&mut self) -> ExitAction {
        if self.read(VmcsField::GuestRflags) & Rflags::IF.bits() == 0 {
            return end(EndKind::Halt);
        }
        self.advance_rip();
        self.vmcs
            .write(VmcsField::GuestActivityState, activity::HLT);
        ExitAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::vmcs::SoftVmcs;

    struct FakePic {
        pending: Option<u8>,
        acks: u32,
    }

    impl InterruptController for FakePic {
        fn pending_vector(&self) -> Option<u8> {
            self.pending
        }
        fn acknowledge(&mut self) -> u8 {
            self.acks += 1;
            self.pending.take().unwrap_or(0x27)
        }
    }

    fn vmcs(rflags: u64, interruptibility: u64) -> SoftVmcs {
        let mut v = SoftVmcs::new();
        v.write(VmcsField::GuestRflags, rflags);
        v.write(VmcsField::GuestInterruptibilityState, interruptibility);
        v.write(VmcsField::PrimaryProcControls, 0x8000_0080);
        v
    }

    #[test]
    fn pending_interrupt_is_acknowledged_and_injected_when_if_is_set() {
        let mut v = vmcs(0x202, 0);
        let mut pic = FakePic {
            pending: Some(0x20),
            acks: 0,
        };
        assert_eq!(deliver(&mut v, &mut pic), Delivery::Injected(0x20));
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo), 0x8000_0020);
        assert_eq!(pic.acks, 1);
        assert_eq!(v.read(VmcsField::PrimaryProcControls) & 4, 0);
    }

    #[test]
    fn if_clear_requests_an_interrupt_window_and_does_not_acknowledge() {
        let mut v = vmcs(0x2, 0);
        let mut pic = FakePic {
            pending: Some(0x20),
            acks: 0,
        };
        assert_eq!(deliver(&mut v, &mut pic), Delivery::Waiting);
        assert_eq!(pic.acks, 0);
        assert_eq!(v.read(VmcsField::PrimaryProcControls), 0x8000_0084);
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo), 0);
    }

    #[test]
    fn sti_and_mov_ss_blocking_delay_delivery() {
        for blocking in [1, 2] {
            let mut v = vmcs(0x202, blocking);
            let mut pic = FakePic {
                pending: Some(0x21),
                acks: 0,
            };
            assert_eq!(deliver(&mut v, &mut pic), Delivery::Waiting);
            assert_eq!(pic.acks, 0);
        }
    }

    #[test]
    fn an_event_already_being_injected_is_not_overwritten() {
        let mut v = vmcs(0x202, 0);
        v.write(VmcsField::EntryInterruptionInfo, 0x8000_0B0D); // #GP(0)
        let mut pic = FakePic {
            pending: Some(0x20),
            acks: 0,
        };
        assert_eq!(deliver(&mut v, &mut pic), Delivery::Waiting);
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo), 0x8000_0B0D);
        assert_eq!(pic.acks, 0);
    }

    #[test]
    fn nothing_pending_turns_window_exiting_off() {
        let mut v = vmcs(0x2, 0);
        v.write(VmcsField::PrimaryProcControls, 0x8000_0084);
        let mut pic = FakePic {
            pending: None,
            acks: 0,
        };
        assert_eq!(deliver(&mut v, &mut pic), Delivery::Idle);
        assert_eq!(v.read(VmcsField::PrimaryProcControls), 0x8000_0080);
    }

    #[test]
    fn injecting_into_a_halted_guest_wakes_it() {
        let mut v = vmcs(0x202, 0);
        v.write(VmcsField::GuestActivityState, activity::HLT);
        let mut pic = FakePic {
            pending: Some(0x20),
            acks: 0,
        };
        assert_eq!(deliver(&mut v, &mut pic), Delivery::Injected(0x20));
        assert_eq!(v.read(VmcsField::GuestActivityState), activity::ACTIVE);
    }

    use crate::vcpu::testing::*;

    #[test]
    fn hlt_with_interrupts_off_ends_the_guest() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestRflags, 0x2);
        h.exit_on(er::HLT, 0);
        assert_eq!(h.run(), end(EndKind::Halt));
        assert_eq!(
            h.describe(EndKind::Halt),
            "sluice: guest stopped: HLT at rip=0x7000 with interrupts disabled\n"
        );
    }

    #[test]
    fn hlt_with_interrupts_on_waits_in_the_hlt_activity_state() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestRflags, 0x202);
        h.exit_on(er::HLT, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestActivityState), activity::HLT);
        assert_eq!(
            h.describe(EndKind::Halt),
            "sluice: guest stopped: HLT at rip=0x7002 with interrupts enabled\n"
        );
    }
}
