//! Exceptions the exception bitmap intercepts, and NMIs (SDM Vol. 3C 28.2.2
//! "Information for VM Exits Due to Vectored Events"): reflected into the guest
//! unchanged, with the event-injection fields of SDM Vol. 3C 27.6 "Event Injection".

use crate::stats::EndKind;
use crate::vcpu::exits::{end, ExitAction, ExitContext, HostOps};
use crate::vmx::event::{
    inject_event, interruption_info, EventType, INTERRUPTION_INFO_DELIVER_ERROR_CODE,
    INTERRUPTION_INFO_VALID,
};
use crate::vmx::vmcs::interruptibility;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::GuestMemory;

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // Exceptions, NMIs (reason 0)

    /// An exception the exception bitmap intercepted is delivered to the guest
    /// unchanged; an NMI belongs to the host and is only counted. Exits during
    /// event delivery (IDT-vectoring info) are not merged into #DF; a #PF is
    /// re-injected without CR2 (the kernel keeps #PF out of the bitmap).
    pub(super) fn exception_or_nmi(&mut self) -> ExitAction {
        let info = self.read(VmcsField::ExitInterruptionInfo) as u32;
        if info & INTERRUPTION_INFO_VALID == 0 {
            return end(EndKind::Fatal);
        }
        let vector = info as u8;
        let error = if info & INTERRUPTION_INFO_DELIVER_ERROR_CODE != 0 {
            Some(self.read(VmcsField::ExitInterruptionErrorCode) as u32)
        } else {
            None
        };
        let kind = match (info >> 8) & 7 {
            2 => return ExitAction::Resume,
            3 => EventType::HardwareException,
            5 => EventType::PrivilegedSoftwareException,
            6 => EventType::SoftwareException,
            _ => return end(EndKind::Fatal),
        };
        // Re-injecting a fault from IRET must restore NMI blocking (SDM Vol. 3C 28.2.3
        // "Information About NMI Unblocking Due to IRET").
        if info & (1 << 12) != 0 && vector != 8 {
            let irq = self.read(VmcsField::GuestInterruptibilityState);
            self.vmcs.write(
                VmcsField::GuestInterruptibilityState,
                irq | interruptibility::NMI,
            );
        }
        if kind == EventType::HardwareException {
            self.inject_exception(vector, error);
        } else {
            // Trap-like INT3/INTO/INT1 need the instruction length.
            let len = self.exit.instruction_length as u32;
            inject_event(self.vmcs, interruption_info(vector, kind, false), None, len);
            self.stats.injected_exceptions = self.stats.injected_exceptions.saturating_add(1);
        }
        ExitAction::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

    #[test]
    fn intercepted_exceptions_are_reinjected() {
        let mut h = Harness::long();
        h.vmcs.write(
            VmcsField::ExitInterruptionInfo,
            u64::from(hardware_exception(14, Some(0))),
        );
        h.vmcs.write(VmcsField::ExitInterruptionErrorCode, 6);
        h.exit_on(er::EXCEPTION_OR_NMI, 0x1234);
        let a = h.run();
        h.assert_faulted(a, 0x8000_0B0E);
        assert_eq!(h.vmcs.read(VmcsField::EntryExceptionErrorCode), 6);
        // INT3: software exception with the instruction length.
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionLength, 1);
        h.vmcs.write(
            VmcsField::ExitInterruptionInfo,
            u64::from(crate::vmx::event::software_exception(3)),
        );
        h.exit_on(er::EXCEPTION_OR_NMI, 0);
        assert_eq!(h.run(), ExitAction::Resume);
        assert_eq!(h.injected(), 0x8000_0603);
        assert_eq!(h.vmcs.read(VmcsField::EntryInstructionLength), 1);
        // #GP from IRET with NMI unblocking: NMI blocking is restored.
        let mut h = Harness::long();
        h.vmcs.write(
            VmcsField::ExitInterruptionInfo,
            u64::from(hardware_exception(13, Some(0)) | (1 << 12)),
        );
        h.exit_on(er::EXCEPTION_OR_NMI, 0);
        assert_eq!(h.run(), ExitAction::Resume);
        assert_eq!(
            h.vmcs.read(VmcsField::GuestInterruptibilityState),
            interruptibility::NMI
        );
        assert_eq!(h.stats.injected_exceptions, 1);
        // Invalid info ends the guest.
        let mut h = Harness::long();
        h.exit_on(er::EXCEPTION_OR_NMI, 0);
        assert_eq!(h.run(), end(EndKind::Fatal));
    }
}
