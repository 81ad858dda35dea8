//! Event injection: the interruption-information format (vector, type, deliver-error-
//! code and valid bits) that the VM-entry interruption-information field shares with
//! the VM-exit interruption-information and IDT-vectoring information fields, and the
//! writer of the three VM-entry event-injection fields (SDM Vol. 3C 25.8.3 "VM-Entry
//! Controls for Event Injection"; delivery on entry SDM Vol. 3C 27.6 "Event
//! Injection").

use crate::vmx::vmcs::{Vmcs, VmcsField};

/// Event types for the interruption-information format (bits 10:8; SDM Vol. 3C 25.8.3
/// "VM-Entry Controls for Event Injection").
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
    use crate::vmx::vmcs::SoftVmcs;

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
