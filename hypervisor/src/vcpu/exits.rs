//! The VM-exit dispatcher: one small handler per basic exit reason (SDM Vol. 3D
//! Appendix C "VMX Basic Exit Reasons"), each in the module of its family (`cpuid`,
//! `msr`, `cr`, `io`, `hypercall`, `irq`, `exception`), over one [`ExitContext`]. Each
//! handler emulates the instruction that exited, or injects the exception the
//! instruction would have raised, or ends the guest. The run loop (`vcpu::run`) reads
//! and counts the exit; this module only handles it.
//!
//! Rules every handler follows:
//! - Nothing a guest does can panic the hypervisor: guest-controlled values are
//!   never used to index, arithmetic on them wraps or is checked, and an exit
//!   that cannot happen with a correct processor ends the guest as
//!   [`EndKind::Fatal`] instead of asserting.
//! - An emulated instruction retires through [`ExitContext::advance_rip`]
//!   (RIP += VM-exit instruction length, blocking by STI / MOV SS cleared, SDM Vol. 3C
//!   25.4.2 "Guest Non-Register State"). An instruction that faults leaves RIP on
//!   itself and gets its exception injected (SDM Vol. 3C 27.6 "Event Injection").
//!   Single-stepping (RFLAGS.TF) over an emulated instruction does not raise the #DB
//!   trap the processor would: not modelled yet.
//! - Exceptions injected in real mode carry no error code: VM entry requires that
//!   with unrestricted guest and CR0.PE = 0 (SDM Vol. 3C 27.2.1.3 "VM-Entry Control
//!   Fields", one of the 27.2.1 "Checks on VMX Controls").
//!
//! Assumptions about the VMCS the kernel sets up:
//! - Guest IA32_EFER is loaded on entry; RDMSR/WRMSR of IA32_EFER exit (or "save
//!   IA32_EFER" is on), so [`VmcsField::GuestIa32Efer`] is current. LMA is taken from
//!   the "IA-32e mode guest" entry control, which every VM exit updates (SDM Vol. 3C
//!   28.2 "Recording VM-Exit Information and Updating VM-Entry Control Fields").
//! - The CR0/CR4 guest/host masks cover the bits whose real value differs from what
//!   the guest wrote (the VMX fixed bits), so the read shadows are what the guest sees
//!   for them.
//! - The MSRs in [`MsrFile`] are loaded into the hardware before VM entry (MSR-load
//!   area) by the kernel; here they are only stored.

use crate::devices::bus::IoBus;
use crate::stats::{EndKind, Stats};
use crate::vcpu::exit::VmExit;
use crate::vmx::event::{hardware_exception, inject_event};
use crate::vmx::exit::exit_reason as er;
use crate::vmx::guest_state::{
    guest_cpl, guest_efer, guest_lma, guest_long_mode, guest_paging, retire_interrupt_shadow,
};
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::{GuestMemory, PagingContext};
use crate::x86::regs::GuestRegs;
use crate::x86::segment::access_rights;
use crate::x86::{exception, Cr0};

/// What the kernel's exit handler needs from the machine.
pub trait HostOps {
    /// CPUID on the host processor.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Guest console output (hypercall PRINT).
    fn console(&mut self, bytes: &[u8]);
    /// XSETBV on the host processor (the guest's XCR value, already validated).
    fn xsetbv(&mut self, xcr: u32, value: u64);
    fn wbinvd(&mut self);
    fn rdtsc(&mut self) -> u64;
}

/// MSRs the guest owns but the VMCS has no field for. Stored here; the kernel
/// loads them into the hardware for the guest (MSR-load area) or passes them
/// through later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrFile {
    pub kernel_gs_base: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    /// The guest's XCR0 as its last XSETBV set it (the hardware holds it too; kept
    /// here for CPUID leaf 0DH). 0 until the first XSETBV: only x87/SSE state then.
    pub xcr0: u64,
}

/// Fixed facts about the virtual CPU, from the capability probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuConfig {
    /// Offer VMX to the guest (CPUID.1:ECX.VMX, CR4.VMXE). The VMX
    /// instructions themselves are not emulated yet.
    pub nested_vmx: bool,
    /// The "unrestricted guest" control is on: CR0.PE and CR0.PG may be 0
    /// (SDM Vol. 3C 27.3.1.1 "Checks on Guest Control Registers, Debug Registers, and
    /// MSRs").
    pub unrestricted_guest: bool,
    /// IA32_VMX_CR0_FIXED0/1 and IA32_VMX_CR4_FIXED0/1 (SDM Vol. 3D A.7 "VMX-Fixed Bits
    /// in CR0", A.8 "VMX-Fixed Bits in CR4"): bits set in FIXED0 must be 1, bits clear
    /// in FIXED1 must be 0.
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// The rate of the guest's TSC in Hz as sluice measured it against the 8254 (the
    /// guest reads the host TSC: no RDTSC exiting, no offset); 0 if unknown. CPUID
    /// leaves 15H/16H report it (see [`tsc_frequency_leaf`]).
    pub tsc_hz: u64,
}

/// Everything a handler may touch.
pub struct ExitContext<'a, 'b, V: Vmcs, M: GuestMemory, H: HostOps> {
    pub vmcs: &'a mut V,
    pub regs: &'a mut GuestRegs,
    pub mem: &'a mut M,
    pub host: &'a mut H,
    pub bus: &'a mut IoBus<'b>,
    pub stats: &'a mut Stats,
    pub msrs: &'a mut MsrFile,
    pub config: VcpuConfig,
    /// The exit being handled, as the run loop read it.
    pub exit: VmExit,
}

/// What the kernel does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// VMRESUME.
    Resume,
    /// The guest is done; print [`describe_end`] and the stats line.
    End { kind: EndKind, exit_code: u32 },
}

pub(super) const fn end(kind: EndKind) -> ExitAction {
    ExitAction::End { kind, exit_code: 0 }
}

/// Why an emulated instruction did not retire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    Gp,
    Ud,
}

/// Handles one VM exit. Call after every VM exit; act on the result.
pub fn handle_exit<V: Vmcs, M: GuestMemory, H: HostOps>(
    ctx: &mut ExitContext<'_, '_, V, M, H>,
) -> ExitAction {
    let reason = ctx.exit.reason;
    if reason.is_entry_failure() {
        return end(EndKind::EntryFailure);
    }
    match reason.basic() {
        er::EXCEPTION_OR_NMI => ctx.exception_or_nmi(),
        er::EXTERNAL_INTERRUPT | er::INTERRUPT_WINDOW | er::PREEMPTION_TIMER => ExitAction::Resume,
        er::TRIPLE_FAULT => end(EndKind::TripleFault),
        er::CPUID => ctx.cpuid(),
        er::HLT => ctx.hlt(),
        er::INVD | er::WBINVD => ctx.wbinvd(),
        er::VMCALL => ctx.vmcall(),
        er::VMCLEAR..=er::VMXON | er::INVEPT | er::INVVPID | er::VMFUNC => ctx.vmx_instruction(),
        er::CR_ACCESS => ctx.cr_access(),
        er::IO_INSTRUCTION => ctx.io_instruction(),
        er::RDMSR => ctx.rdmsr(),
        er::WRMSR => ctx.wrmsr(),
        er::ENTRY_FAILURE_INVALID_GUEST_STATE
        | er::ENTRY_FAILURE_MSR_LOADING
        | er::ENTRY_FAILURE_MACHINE_CHECK => end(EndKind::EntryFailure),
        er::EPT_VIOLATION => end(EndKind::EptViolation),
        er::EPT_MISCONFIGURATION => end(EndKind::EptMisconfiguration),
        er::XSETBV => ctx.xsetbv(),
        _ => end(EndKind::Fatal),
    }
}

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // Guest state helpers

    pub(super) fn read(&self, f: VmcsField) -> u64 {
        self.vmcs.read(f)
    }

    /// IA32_EFER.LMA, from the "IA-32e mode guest" entry control.
    pub(super) fn lma(&self) -> bool {
        guest_lma(&*self.vmcs)
    }

    /// 64-bit mode: IA-32e mode with CS.L set.
    pub(super) fn long_mode(&self) -> bool {
        guest_long_mode(&*self.vmcs)
    }

    pub(super) fn cpl(&self) -> u8 {
        guest_cpl(&*self.vmcs)
    }

    pub(super) fn efer(&self) -> u64 {
        guest_efer(&*self.vmcs)
    }

    pub(super) fn paging(&self) -> PagingContext {
        guest_paging(&*self.vmcs)
    }

    /// CR0 as the guest sees it: shadow bits where the mask owns them.
    pub(super) fn visible_cr0(&self) -> u64 {
        let mask = self.read(VmcsField::Cr0GuestHostMask);
        (self.read(VmcsField::GuestCr0) & !mask) | (self.read(VmcsField::Cr0ReadShadow) & mask)
    }

    pub(super) fn visible_cr4(&self) -> u64 {
        let mask = self.read(VmcsField::Cr4GuestHostMask);
        (self.read(VmcsField::GuestCr4) & !mask) | (self.read(VmcsField::Cr4ReadShadow) & mask)
    }

    /// A general-purpose register by encoding; 4 is RSP in the VMCS.
    pub(super) fn gpr(&self, n: u8) -> u64 {
        match n {
            4 => self.read(VmcsField::GuestRsp),
            n => self.regs.get(n).unwrap_or(0),
        }
    }

    pub(super) fn set_gpr(&mut self, n: u8, v: u64) {
        if n == 4 {
            self.vmcs.write(VmcsField::GuestRsp, v);
        } else {
            self.regs.set(n, v);
        }
    }

    /// Retires the exiting instruction: RIP += its length (wrapping at the
    /// code size outside 64-bit mode) and clears blocking by STI / MOV SS.
    pub fn advance_rip(&mut self) {
        let len = self.exit.instruction_length;
        let rip = self.read(VmcsField::GuestRip).wrapping_add(len);
        let rip = if self.long_mode() {
            rip
        } else if self.read(VmcsField::GuestCsAccessRights) & u64::from(access_rights::DB) != 0 {
            rip & 0xFFFF_FFFF
        } else {
            rip & 0xFFFF
        };
        self.vmcs.write(VmcsField::GuestRip, rip);
        retire_interrupt_shadow(self.vmcs);
    }

    /// Injects a hardware exception; the error code is dropped in real mode.
    pub(super) fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let protected = self.read(VmcsField::GuestCr0) & Cr0::PE.bits() != 0;
        let code = if protected { error_code } else { None };
        inject_event(self.vmcs, hardware_exception(vector, code), code, 0);
        self.stats.injected_exceptions = self.stats.injected_exceptions.saturating_add(1);
    }

    pub(super) fn inject(&mut self, f: Fault) {
        match f {
            Fault::Gp => self.inject_exception(exception::GP, Some(0)),
            Fault::Ud => self.inject_exception(exception::UD, None),
        }
    }

    /// Retire on success, inject on failure; resume either way.
    pub(super) fn complete(&mut self, r: Result<(), Fault>) -> ExitAction {
        match r {
            Ok(()) => self.advance_rip(),
            Err(f) => self.inject(f),
        }
        ExitAction::Resume
    }

    /// INVD is emulated as WBINVD: discarding the host's dirty cache lines
    /// would corrupt the host.
    pub(super) fn wbinvd(&mut self) -> ExitAction {
        self.host.wbinvd();
        self.complete(Ok(()))
    }

    /// VMX instructions are not offered (nested VMX is not emulated): #UD,
    /// as on a processor without VMX.
    pub(super) fn vmx_instruction(&mut self) -> ExitAction {
        self.complete(Err(Fault::Ud))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

    #[test]
    fn invd_and_wbinvd_flush_on_the_host() {
        for r in [er::INVD, er::WBINVD] {
            let mut h = Harness::long();
            h.exit_on(r, 0);
            let a = h.run();
            h.assert_retired(a);
            assert_eq!(h.host.wbinvd, 1);
        }
    }

    #[test]
    fn vmx_instructions_raise_ud() {
        let reasons = [
            19,
            20,
            21,
            22,
            23,
            24,
            25,
            26,
            27,
            er::INVEPT,
            er::INVVPID,
            er::VMFUNC,
        ];
        for r in reasons {
            let mut h = Harness::long();
            h.exit_on(r, 0);
            let a = h.run();
            h.assert_faulted(a, UD_INFO);
            assert_eq!(h.stats.injected_exceptions, 1);
        }
    }

    #[test]
    fn resume_only_exits() {
        for r in [
            er::EXTERNAL_INTERRUPT,
            er::INTERRUPT_WINDOW,
            er::PREEMPTION_TIMER,
        ] {
            let mut h = Harness::long();
            h.exit_on(r, 0);
            assert_eq!(h.run(), ExitAction::Resume);
            assert_eq!((h.rip(), h.injected()), (RIP, 0));
        }
        // An NMI exit.
        let mut h = Harness::long();
        h.vmcs.write(
            VmcsField::ExitInterruptionInfo,
            u64::from(crate::vmx::event::nmi()),
        );
        h.exit_on(er::EXCEPTION_OR_NMI, 0);
        assert_eq!(h.run(), ExitAction::Resume);
        assert_eq!(h.injected(), 0);
    }

    #[test]
    fn triple_fault_ends_the_guest() {
        let mut h = Harness::long();
        h.exit_on(er::TRIPLE_FAULT, 0);
        assert_eq!(h.run(), end(EndKind::TripleFault));
        assert_eq!(
            h.describe(EndKind::TripleFault),
            "sluice: guest stopped: triple fault at rip=0x7000\n"
        );
    }

    #[test]
    fn unhandled_exits_are_fatal_and_named() {
        let mut h = Harness::long();
        h.exit_on(er::RDTSC, 0x42);
        assert_eq!(h.run(), end(EndKind::Fatal));
        assert_eq!(
            h.describe(EndKind::Fatal),
            "sluice: guest stopped: unhandled VM exit rdtsc (reason 16) at rip=0x7000 qualification=0x42\n"
        );
    }

    /// Accepts everything, remembers nothing.
    struct NullDevice;

    impl PortDevice for NullDevice {
        fn read(&mut self, port: u16, _size: u8) -> u32 {
            u32::from(port)
        }
        fn write(&mut self, _port: u16, _size: u8, _value: u32) {}
    }

    /// Random exits, qualifications, registers and guest state never panic.
    #[test]
    fn random_exits_never_panic() {
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut dev = NullDevice;
        let mut bus = IoBus::new();
        bus.register(0x0..=0x7FFF, &mut dev).unwrap();
        let interesting = [
            0u16, 1, 2, 7, 10, 12, 13, 18, 19, 28, 30, 31, 32, 33, 48, 49, 52, 54, 55, 59, 99,
        ];
        let mut harnesses = [Harness::long(), Harness::real()];
        let templates = [harnesses[0].vmcs.clone(), harnesses[1].vmcs.clone()];
        for i in 0..20_000usize {
            let h = &mut harnesses[i % 2];
            h.vmcs = templates[i % 2].clone();
            let reason = interesting[(next() % interesting.len() as u64) as usize];
            h.vmcs.write(
                VmcsField::ExitReason,
                u64::from(reason) | (next() & (1 << 31)),
            );
            h.vmcs.write(VmcsField::ExitQualification, next());
            h.vmcs.write(VmcsField::ExitInstructionInfo, next());
            h.vmcs.write(VmcsField::ExitInterruptionInfo, next());
            h.vmcs.write(VmcsField::GuestRflags, next());
            h.vmcs.write(VmcsField::ExitInstructionLength, next() % 16);
            h.regs.rax = if next() % 2 == 0 { next() % 4 } else { next() };
            h.regs.rbx = next();
            h.regs.rcx = if next() % 2 == 0 { next() % 64 } else { next() };
            h.regs.rdx = next();
            h.regs.rsi = next() % (RAM as u64 * 2);
            h.regs.rdi = next();
            if next() % 4 == 0 {
                h.vmcs.write(VmcsField::GuestCr3, next());
                h.vmcs.write(VmcsField::GuestCr4, next());
                h.vmcs.write(VmcsField::GuestCr0, next());
            }
            let _ = h.run_with(&mut bus);
            let mut s = String::new();
            for k in [EndKind::Fatal, EndKind::EptViolation, EndKind::EntryFailure] {
                describe_end(&h.vmcs, k, &mut s).unwrap();
            }
        }
    }
}
