//! One VM exit as the VMCS reports it, read once right after the exit (SDM Vol. 3C
//! 28.2.1 "Basic VM-Exit Information"): the run loop counts it, the coalescer and the
//! exit handlers take their facts from this copy instead of reading the VMCS again.

use crate::vmx::exit::{exit_reason, ExitReason, IoQualification};
use crate::vmx::vmcs::{Vmcs, VmcsField};

/// The basic VM-exit information fields of one exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmExit {
    pub reason: ExitReason,
    pub qualification: u64,
    /// The VM-exit instruction length: set for exits caused by an instruction.
    pub instruction_length: u64,
    /// The VM-exit instruction-information field (INS/OUTS address size and segment,
    /// SDM Vol. 3C 28.2.5 "Information for VM Exits Due to Instruction Execution").
    pub instruction_info: u64,
}

impl VmExit {
    /// Reads the exit the VMCS holds now.
    pub fn read(vmcs: &impl Vmcs) -> VmExit {
        VmExit {
            reason: ExitReason(vmcs.read(VmcsField::ExitReason) as u32),
            qualification: vmcs.read(VmcsField::ExitQualification),
            instruction_length: vmcs.read(VmcsField::ExitInstructionLength),
            instruction_info: vmcs.read(VmcsField::ExitInstructionInfo),
        }
    }

    /// The IO access of an IO-instruction exit (SDM Vol. 3C Table 28-5 "Exit
    /// Qualification for I/O Instructions"); `None` for every other exit.
    pub fn io(&self) -> Option<IoQualification> {
        (!self.reason.is_entry_failure() && self.reason.basic() == exit_reason::IO_INSTRUCTION)
            .then(|| IoQualification::from_qualification(self.qualification))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::vmcs::SoftVmcs;

    #[test]
    fn an_exit_is_read_once_and_only_io_exits_decode_as_io() {
        let mut v = SoftVmcs::new();
        v.write(
            VmcsField::ExitReason,
            u64::from(exit_reason::IO_INSTRUCTION),
        );
        v.write(VmcsField::ExitQualification, (0x3F8 << 16) | (1 << 3));
        v.write(VmcsField::ExitInstructionLength, 1);
        v.write(VmcsField::ExitInstructionInfo, 0x80);
        let exit = VmExit::read(&v);
        assert_eq!(exit.instruction_length, 1);
        assert_eq!(exit.instruction_info, 0x80);
        let io = exit.io().unwrap();
        assert_eq!((io.port, io.is_in, io.size), (0x3F8, true, 1));
        v.write(VmcsField::ExitReason, u64::from(exit_reason::CPUID));
        assert_eq!(VmExit::read(&v).io(), None);
        // An entry failure is never an IO exit, whatever bits 15:0 say.
        v.write(
            VmcsField::ExitReason,
            u64::from(ExitReason::ENTRY_FAILURE | u32::from(exit_reason::IO_INSTRUCTION)),
        );
        assert_eq!(VmExit::read(&v).io(), None);
    }
}
