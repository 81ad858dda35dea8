//! How a run ended, in words: the line sluice prints when a guest stops (where it was
//! and what the exit information says), and why a VM entry failed (SDM Vol. 3C 31.4
//! "VM Instruction Error Numbers", 27.8 "VM-Entry Failures During or After Loading
//! Guest State").

use core::fmt::{self, Write};

use crate::devices::board::ResetSource;
use crate::stats::EndKind;
use crate::vmx::exit::{
    exit_reason as er, exit_reason_name, EptViolationQualification, ExitReason,
};
use crate::vmx::vmcs::{vm_instruction_error_text, Vmcs, VmcsField};
use crate::x86::Rflags;

/// Writes one line (with `\n`) explaining why the guest ended, for the
/// console: where the guest was and what the exit information says. The
/// VMCS must still hold the exit that produced `kind`.
///
/// Example: `sluice: guest stopped: EPT violation at rip=0x1000 gpa=0xfee00000 (write, not mapped)`.
pub fn describe_end(vmcs: &impl Vmcs, kind: EndKind, w: &mut impl Write) -> fmt::Result {
    let rip = vmcs.read(VmcsField::GuestRip);
    let gpa = vmcs.read(VmcsField::GuestPhysicalAddress);
    let q = vmcs.read(VmcsField::ExitQualification);
    let reason = ExitReason(vmcs.read(VmcsField::ExitReason) as u32);
    match kind {
        EndKind::Hypercall => write!(w, "sluice: guest ended by hypercall at rip={rip:#x}"),
        EndKind::TripleFault => write!(w, "sluice: guest stopped: triple fault at rip={rip:#x}"),
        EndKind::Halt => {
            let irq = if vmcs.read(VmcsField::GuestRflags) & Rflags::IF.bits() != 0 {
                "enabled"
            } else {
                "disabled"
            };
            write!(
                w,
                "sluice: guest stopped: HLT at rip={rip:#x} with interrupts {irq}"
            )
        }
        EndKind::EptViolation => {
            let e = EptViolationQualification::from_qualification(q);
            let access = if e.fetch {
                "fetch"
            } else if e.write {
                "write"
            } else if e.read {
                "read"
            } else {
                "access"
            };
            write!(
                w,
                "sluice: guest stopped: EPT violation at rip={rip:#x} gpa={gpa:#x} ({access}, "
            )?;
            if !(e.readable || e.writable || e.executable) {
                w.write_str("not mapped")?;
            } else {
                let p = |b, c| if b { c } else { '-' };
                write!(
                    w,
                    "mapped {}{}{}",
                    p(e.readable, 'r'),
                    p(e.writable, 'w'),
                    p(e.executable, 'x')
                )?;
            }
            w.write_char(')')?;
            if e.linear_address_valid {
                let linear = vmcs.read(VmcsField::GuestLinearAddress);
                write!(w, " linear={linear:#x}")?;
                if !e.translated_access {
                    w.write_str(" during the guest page walk")?;
                }
            }
            Ok(())
        }
        EndKind::EptMisconfiguration => write!(
            w,
            "sluice: guest stopped: EPT misconfiguration at rip={rip:#x} gpa={gpa:#x}"
        ),
        EndKind::EntryFailure => {
            write!(w, "sluice: guest stopped: VM entry failed: ")?;
            match reason.basic() {
                er::ENTRY_FAILURE_INVALID_GUEST_STATE => {
                    write!(w, "invalid guest state ({})", entry_failure_detail(q))?
                }
                er::ENTRY_FAILURE_MSR_LOADING => {
                    write!(w, "MSR loading failed at entry {q} of the MSR-load area")?
                }
                er::ENTRY_FAILURE_MACHINE_CHECK => w.write_str("machine-check event")?,
                n => write!(w, "{} (reason {n})", exit_reason_name(u32::from(n)))?,
            }
            write!(w, " rip={rip:#x}")
        }
        EndKind::Reset(source) => write!(
            w,
            "sluice: guest stopped: guest requested a reset via {} at rip={rip:#x}",
            match source {
                ResetSource::I8042 => "the i8042",
                ResetSource::Port92 => "port 0x92",
            }
        ),
        EndKind::Fatal => write!(
            w,
            "sluice: guest stopped: unhandled VM exit {} (reason {}) at rip={rip:#x} qualification={q:#x}",
            reason.name(),
            reason.basic()
        ),
    }?;
    w.write_char('\n')
}

/// Exit qualification of a VM-entry failure due to invalid guest state (SDM Vol. 3C
/// 27.8 "VM-Entry Failures During or After Loading Guest State").
pub const fn entry_failure_detail(q: u64) -> &'static str {
    match q {
        0 => "a guest-state check failed",
        2 => "PDPTE load failure",
        3 => "NMI injection with virtual-NMI blocking",
        4 => "invalid VMCS link pointer",
        _ => "unknown qualification",
    }
}

/// Why VMLAUNCH/VMRESUME did not enter the guest (SDM Vol. 3C 31.2 "Conventions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryFailure {
    /// VMfailInvalid (CF = 1): no current VMCS, or its pointer is invalid.
    Invalid,
    /// VMfailValid (ZF = 1): the VM-instruction error field of the current VMCS says
    /// why.
    Valid,
}

impl fmt::Display for EntryFailure {
    /// The VMfailValid case names no error number: it is in the current VMCS, which
    /// [`describe_entry_failure`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryFailure::Invalid => "VM entry failed: VMfailInvalid (no valid current VMCS)",
            EntryFailure::Valid => {
                "VM entry failed: VMfailValid (the VM-instruction error field of the current \
                 VMCS says why)"
            }
        })
    }
}

impl core::error::Error for EntryFailure {}

/// Explains a failed VMLAUNCH/VMRESUME in one line (SDM Vol. 3C 31.4 "VM Instruction
/// Error Numbers").
pub fn describe_entry_failure(fail: EntryFailure, vmcs: &impl Vmcs, w: &mut impl Write) {
    let _ = match fail {
        EntryFailure::Invalid => writeln!(
            w,
            "sluice: VM entry failed: VMfailInvalid (no valid current VMCS)"
        ),
        EntryFailure::Valid => {
            let n = vmcs.read(VmcsField::VmInstructionError);
            writeln!(
                w,
                "sluice: VM entry failed: VM-instruction error {n}: {}",
                vm_instruction_error_text(n)
            )
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

    #[test]
    fn reset_request_is_described() {
        let h = Harness::long();
        let line = h.describe(EndKind::Reset(ResetSource::I8042));
        assert!(
            line.starts_with(
                "sluice: guest stopped: guest requested a reset via the i8042 at rip="
            ),
            "{line}"
        );
        assert!(h
            .describe(EndKind::Reset(ResetSource::Port92))
            .contains("via port 0x92"));
    }

    #[test]
    fn ept_violation_is_described() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestPhysicalAddress, 0xFEE0_0000);
        h.exit_on(er::EPT_VIOLATION, 0b10);
        assert_eq!(h.run(), end(EndKind::EptViolation));
        assert_eq!(
            h.describe(EndKind::EptViolation),
            "sluice: guest stopped: EPT violation at rip=0x7000 gpa=0xfee00000 (write, not mapped)\n"
        );
        // A fetch from a read-only page, found in a guest page walk.
        h.vmcs
            .write(VmcsField::GuestLinearAddress, 0xFFFF_8000_0000_0000);
        h.exit_on(er::EPT_VIOLATION, (1 << 7) | (1 << 3) | (1 << 2));
        assert_eq!(
            h.describe(EndKind::EptViolation),
            "sluice: guest stopped: EPT violation at rip=0x7000 gpa=0xfee00000 (fetch, mapped r--) \
             linear=0xffff800000000000 during the guest page walk\n"
        );
        h.exit_on(er::EPT_MISCONFIGURATION, 0);
        assert_eq!(h.run(), end(EndKind::EptMisconfiguration));
        assert_eq!(
            h.describe(EndKind::EptMisconfiguration),
            "sluice: guest stopped: EPT misconfiguration at rip=0x7000 gpa=0xfee00000\n"
        );
    }

    #[test]
    fn entry_failures_are_described() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitReason, 0x8000_0021);
        h.vmcs.write(VmcsField::ExitQualification, 2);
        assert_eq!(h.run(), end(EndKind::EntryFailure));
        assert_eq!(
            h.describe(EndKind::EntryFailure),
            "sluice: guest stopped: VM entry failed: invalid guest state (PDPTE load failure) rip=0x7000\n"
        );
        h.vmcs.write(VmcsField::ExitReason, 0x8000_0022);
        h.vmcs.write(VmcsField::ExitQualification, 3);
        assert_eq!(h.run(), end(EndKind::EntryFailure));
        assert_eq!(
            h.describe(EndKind::EntryFailure),
            "sluice: guest stopped: VM entry failed: MSR loading failed at entry 3 of the MSR-load area rip=0x7000\n"
        );
        h.vmcs.write(VmcsField::ExitReason, 0x8000_0029);
        assert!(h
            .describe(EndKind::EntryFailure)
            .contains("machine-check event"));
        assert_eq!(entry_failure_detail(4), "invalid VMCS link pointer");
    }

    #[test]
    fn failed_entries_are_explained() {
        let mut v = SoftVmcs::new();
        let mut s = String::new();
        describe_entry_failure(EntryFailure::Invalid, &v, &mut s);
        assert_eq!(
            s,
            "sluice: VM entry failed: VMfailInvalid (no valid current VMCS)\n"
        );
        v.write(VmcsField::VmInstructionError, 7);
        let mut s = String::new();
        describe_entry_failure(EntryFailure::Valid, &v, &mut s);
        assert!(
            s.starts_with("sluice: VM entry failed: VM-instruction error 7: ")
                && s.contains("invalid control field"),
            "{s}"
        );
    }

    #[test]
    fn entry_failures_name_the_failed_entry_and_the_flag() {
        assert_eq!(
            EntryFailure::Invalid.to_string(),
            "VM entry failed: VMfailInvalid (no valid current VMCS)"
        );
        let m = EntryFailure::Valid.to_string();
        assert!(
            m.starts_with("VM entry failed: VMfailValid") && m.contains("VM-instruction error"),
            "{m}"
        );
    }
}
