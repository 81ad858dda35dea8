//! The VM-exit dispatcher: reads the exit reason (SDM Vol. 3C 28.2.1 "Basic
//! VM-Exit Information"), counts it, and hands it to one small handler per
//! basic exit reason (SDM Vol. 3D Appendix C). Each handler emulates the
//! instruction that exited, or injects the exception the instruction would
//! have raised, or ends the guest.
//!
//! Rules every handler follows:
//! - Nothing a guest does can panic the hypervisor: guest-controlled values are
//!   never used to index, arithmetic on them wraps or is checked, and an exit
//!   that cannot happen with a correct processor ends the guest as
//!   [`EndKind::Fatal`] instead of asserting.
//! - An emulated instruction retires through [`ExitContext::advance_rip`]
//!   (RIP += VM-exit instruction length, blocking by STI / MOV SS cleared, SDM
//!   25.4.2 "Guest Non-Register State"). An instruction that faults leaves RIP
//!   on itself and gets its exception injected (SDM 27.6 "Event Injection").
//!   Single-stepping (RFLAGS.TF) over an emulated instruction does not raise
//!   the #DB trap the processor would: not modelled yet.
//! - Exceptions injected in real mode carry no error code: VM entry requires
//!   that with unrestricted guest and CR0.PE = 0 (SDM 27.2.1.3).
//!
//! Assumptions about the VMCS the kernel sets up:
//! - Guest IA32_EFER is loaded on entry; RDMSR/WRMSR of IA32_EFER exit (or
//!   "save IA32_EFER" is on), so [`VmcsField::GuestIa32Efer`] is current. LMA
//!   is taken from the "IA-32e mode guest" entry control, which every VM exit
//!   updates (SDM 28.2 / 28.3).
//! - The CR0/CR4 guest/host masks cover the bits whose real value differs
//!   from what the guest wrote (the VMX fixed bits), so the read shadows are
//!   what the guest sees for them.
//! - The MSRs in [`MsrFile`] are loaded into the hardware before VM entry
//!   (MSR-load area) by the kernel; here they are only stored.

use core::fmt::{self, Write};

use crate::coalesce::exec::update_addr_reg;
use crate::coalesce::insn::Width;
use crate::devices::board::ResetSource;
use crate::devices::bus::{size_mask, IoBus};
use crate::stats::{EndKind, Stats};
use crate::vcpu::hypercall;
use crate::vmx::caps::{EntryControls, PrimaryControls};
use crate::vmx::event::{
    hardware_exception, inject_event, interruption_info, EventType,
    INTERRUPTION_INFO_DELIVER_ERROR_CODE, INTERRUPTION_INFO_VALID,
};
use crate::vmx::exit::{
    exit_reason as er, exit_reason_name, CrAccessQualification, CrAccessType,
    EptViolationQualification, ExitReason, IoQualification,
};
use crate::vmx::vmcs::{access_rights, activity, interruptibility};
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::{
    check_linear, pdpte_reserved, read_linear, read_linear_as, write_linear, Access, GuestMemory,
    PagingContext,
};
use crate::x86::regs::GuestRegs;
use crate::x86::Efer;
use crate::x86::{exception, is_canonical, msr, Cr0, Cr4, Rflags};

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
    /// (SDM 27.3.1.1 "Checks on Guest Control Registers ...").
    pub unrestricted_guest: bool,
    /// IA32_VMX_CR0_FIXED0/1 and IA32_VMX_CR4_FIXED0/1 (SDM Appendix A.7, A.8):
    /// bits set in FIXED0 must be 1, bits clear in FIXED1 must be 0.
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
}

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

/// What the kernel does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// VMRESUME.
    Resume,
    /// The guest is done; print [`describe_end`] and the stats line.
    End { kind: EndKind, exit_code: u32 },
}

const fn end(kind: EndKind) -> ExitAction {
    ExitAction::End { kind, exit_code: 0 }
}

/// String IO elements emulated in one exit; a longer REP re-executes.
pub const MAX_STRING_ELEMENTS: u64 = 4096;

/// Why an emulated instruction did not retire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Gp,
    Ud,
}

/// Handles one VM exit. Call after every VM exit; act on the result.
pub fn handle_exit<V: Vmcs, M: GuestMemory, H: HostOps>(
    ctx: &mut ExitContext<'_, '_, V, M, H>,
) -> ExitAction {
    let reason = ExitReason(ctx.vmcs.read(VmcsField::ExitReason) as u32);
    ctx.stats.count_exit(reason.0);
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

/// CPUID leaves 15H and 16H (SDM Vol. 2A CPUID, "Time Stamp Counter and Nominal Core
/// Crystal Clock Information Leaf" and "Processor Frequency Information Leaf") for a
/// guest whose TSC runs at `tsc_hz`, the rate sluice measured: what the guest really
/// gets. 15H says TSC = ECX * EBX / EAX with ECX the crystal in Hz; a crystal of half
/// the TSC rate and a ratio of 2/1 keep ECX within 32 bits up to 8.5 GHz. With it a
/// guest knows its TSC rate without timing the 8254 through exits (Linux marks the
/// frequency as known and skips its PIT calibration loops, whose timing checks an
/// exit per port read can fail). 16H gives the same rate in MHz as base and maximum
/// frequency; the bus frequency (ECX) is left 0, "not enumerated". Unknown or
/// unrepresentable rates leave both leaves at 0, which the SDM defines as "not
/// enumerated".
pub fn tsc_frequency_leaf(leaf: u32, tsc_hz: u64) -> [u32; 4] {
    let crystal = tsc_hz / 2;
    let mhz = tsc_hz / 1_000_000;
    match leaf {
        0x15 if crystal > 0 && crystal <= u64::from(u32::MAX) => [1, 2, crystal as u32, 0],
        0x16 if mhz > 0 && mhz <= 0xFFFF => [mhz as u32, mhz as u32, 0, 0],
        _ => [0; 4],
    }
}

/// CPUID result as the guest sees it: `raw` is the host's answer for
/// `leaf`/`subleaf` (ignored for the hypervisor range 0x4000_0000–0x4FFF_FFFF,
/// which sluice answers itself). `guest_cr4` is the CR4 value the guest sees.
pub fn filter_cpuid(
    leaf: u32,
    subleaf: u32,
    raw: [u32; 4],
    nested_vmx: bool,
    guest_cr4: u64,
) -> [u32; 4] {
    const ECX_MONITOR: u32 = 1 << 3;
    const ECX_VMX: u32 = 1 << 5;
    const ECX_PDCM: u32 = 1 << 15;
    const ECX_X2APIC: u32 = 1 << 21;
    const ECX_TSC_DEADLINE: u32 = 1 << 24;
    const ECX_XSAVE: u32 = 1 << 26;
    const ECX_OSXSAVE: u32 = 1 << 27;
    const ECX_HYPERVISOR: u32 = 1 << 31;
    const EDX_APIC: u32 = 1 << 9;
    const EDX_MCE: u32 = 1 << 7;
    const EDX_MCA: u32 = 1 << 14;
    const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;
    const LEAF7_ECX_OSPKE: u32 = 1 << 4;
    const LEAF7_ECX_RDPID: u32 = 1 << 22;
    const EXT_EDX_RDTSCP: u32 = 1 << 27;
    const LEAF6_EAX_ARAT: u32 = 1 << 2;
    const LEAFD1_EAX_XSAVES: u32 = 1 << 3;
    let [eax, ebx, mut ecx, mut edx] = raw;
    match leaf {
        // "sluicesluice" in EBX, ECX, EDX; highest hypervisor leaf in EAX.
        0x4000_0000 => [
            0x4000_0001,
            u32::from_le_bytes(*b"slui"),
            u32::from_le_bytes(*b"cesl"),
            u32::from_le_bytes(*b"uice"),
        ],
        0x4000_0001..=0x4FFF_FFFF => [0; 4],
        1 => {
            if !nested_vmx {
                ecx &= !ECX_VMX;
            }
            // No local APIC is offered (IA32_APIC_BASE raises #GP), so
            // neither is x2APIC nor the TSC-deadline timer.
            ecx &= !(ECX_X2APIC | ECX_TSC_DEADLINE);
            edx &= !EDX_APIC;
            // No machine-check architecture is offered: its MSRs (IA32_MCG_*, the bank
            // registers) raise #GP, and a guest that saw MCE/MCA would read them.
            edx &= !(EDX_MCE | EDX_MCA);
            // PDCM announces IA32_PERF_CAPABILITIES (0x345), which Linux's perf driver
            // reads unguarded; sluice offers no PMU (leaf 0AH below).
            ecx &= !ECX_PDCM;
            // MONITOR/MWAIT: sluice does not intercept MWAIT, and a guest idling in
            // it sits in a C-state where the VMX-preemption timer may stop counting
            // (SDM Vol. 3C 26.5.1: it counts in C0-C2 only), so timer interrupts could
            // come late. Without it the guest idles in HLT, which sluice handles; and
            // Linux's intel_idle, which writes the model-specific MSR_POWER_CTL
            // (0x1FC), stays out.
            ecx &= !ECX_MONITOR;
            // OSXSAVE mirrors the *guest's* CR4, not the host's.
            ecx &= !ECX_OSXSAVE;
            if ecx & ECX_XSAVE != 0 && guest_cr4 & Cr4::OSXSAVE.bits() != 0 {
                ecx |= ECX_OSXSAVE;
            }
            [eax, ebx, ecx | ECX_HYPERVISOR, edx]
        }
        7 if subleaf == 0 => {
            // IA32_TSC_ADJUST and IA32_TSC_AUX (RDPID) are not offered.
            let ebx = ebx & !LEAF7_EBX_TSC_ADJUST;
            ecx &= !(LEAF7_ECX_OSPKE | LEAF7_ECX_RDPID);
            if guest_cr4 & Cr4::PKE.bits() != 0 {
                ecx |= LEAF7_ECX_OSPKE;
            }
            [eax, ebx, ecx, edx]
        }
        // TSC/crystal ratio (0x15) and processor frequencies (0x16) of the physical
        // part are not passed on: an emulator's say 3.5 GHz while its TSC follows
        // emulated instructions. The exit handler answers them from the measured rate
        // instead (`tsc_frequency_leaf`).
        0x15 | 0x16 => [0; 4],
        // Thermal and power management (SDM Vol. 2A CPUID leaf 06H): nearly every bit
        // announces MSRs sluice does not offer: ECX[0] IA32_MPERF/IA32_APERF (which
        // Linux reads for frequency scaling), ECX[3] IA32_ENERGY_PERF_BIAS, EAX[0] and
        // [6] the thermal status MSRs, EAX[4] power-limit notification, EAX[7-11] HWP.
        // Only ARAT (EAX[2], the APIC timer keeps running in deep C-states) names no
        // MSR; EBX (interrupt thresholds) goes with the thermal MSRs.
        6 => [eax & LEAF6_EAX_ARAT, 0, 0, 0],
        // MONITOR/MWAIT parameters go with the hidden MONITOR bit (SDM Vol. 2A CPUID
        // leaf 05H).
        5 => [0; 4],
        // Architectural performance monitoring (SDM Vol. 2A CPUID leaf 0AH, Vol. 3B
        // 20.2): version 0 = none. The counters' MSRs (IA32_PMCx, IA32_PERFEVTSELx,
        // the fixed counters) are not offered, so Linux runs software events only.
        0xA => [0; 4],
        // Processor extended state, sub-leaf 1 (SDM Vol. 2A CPUID leaf 0DH; Vol. 1
        // 13.2): EAX[3] announces XSAVES/XRSTORS and IA32_XSS, ECX:EDX the IA32_XSS
        // bits. IA32_XSS is not switched between host and guest by VMX and sluice
        // refuses it (#GP), so XSAVES is hidden and Linux uses XSAVEC/XSAVEOPT with
        // user states only. EBX (size for XCR0 | IA32_XSS) stays: the host's IA32_XSS
        // is 0.
        0xD if subleaf == 1 => [eax & !LEAFD1_EAX_XSAVES, ebx, 0, 0],
        // RDTSCP needs IA32_TSC_AUX, which is not offered.
        0x8000_0001 => [eax, ebx, ecx, edx & !EXT_EDX_RDTSCP],
        _ => [eax, ebx, ecx, edx],
    }
}

/// CPUID.(EAX=0DH,ECX=1):EAX[1], XSAVEC (compacted XSAVE format).
const LEAFD1_EAX_XSAVEC: u32 = 1 << 1;

/// CPUID.(EAX=0DH,ECX=1):EBX, the size of an XSAVE area in the compacted format for
/// the state components enabled in XCR0 | IA32_XSS (IA32_XSS is 0 for sluice's
/// guests), computed as SDM Vol. 1 13.4.3 lays the compacted format out: the legacy
/// region and header (576 bytes), then each enabled component from 2 up in order,
/// starting on a 64-byte boundary when CPUID.(EAX=0DH,ECX=i):ECX[1] says it is
/// aligned. `component(i)` gives CPUID.(EAX=0DH,ECX=i) EAX (size) and ECX (flags).
/// A processor reports this itself; sluice computes it because an emulator (Bochs)
/// reports the standard-format size there, which Linux then flags as an XSAVE
/// consistency problem.
pub fn compacted_xsave_size(xcr0: u64, mut component: impl FnMut(u32) -> (u32, u32)) -> u32 {
    let mut size: u32 = 576;
    for i in 2..63u32 {
        if xcr0 & (1 << i) == 0 {
            continue;
        }
        let (len, flags) = component(i);
        if flags & 0b10 != 0 {
            size = size.next_multiple_of(64);
        }
        size = size.saturating_add(len);
    }
    size
}

/// Whether an XCR0 value is one XSETBV accepts (SDM Vol. 1 13.3 and the
/// XSETBV reference): x87 set, only bits CPUID.(EAX=0DH,ECX=0) reports, AVX
/// needs SSE, the AVX-512 trio all or nothing and only with AVX, AMX
/// TILECFG/TILEDATA together.
pub const fn xcr0_valid(value: u64, supported: u64) -> bool {
    const X87: u64 = 1;
    const SSE: u64 = 1 << 1;
    const AVX: u64 = 1 << 2;
    const AVX512: u64 = 0b111 << 5;
    const AMX: u64 = 0b11 << 17;
    if value & X87 == 0 || value & !supported != 0 {
        return false;
    }
    if value & AVX != 0 && value & SSE == 0 {
        return false;
    }
    let avx512 = value & AVX512;
    if avx512 != 0 && (avx512 != AVX512 || value & AVX == 0) {
        return false;
    }
    let amx = value & AMX;
    amx == 0 || amx == AMX
}

/// Every PAT entry must be a valid memory type: 0, 1, 4, 5, 6 or 7 (SDM Vol.
/// 3A 13.12.2).
pub const fn pat_valid(pat: u64) -> bool {
    let mut i = 0;
    while i < 8 {
        let t = (pat >> (i * 8)) & 0xFF;
        if !matches!(t, 0 | 1 | 4..=7) {
            return false;
        }
        i += 1;
    }
    true
}

/// An instruction retired: blocking by STI and by MOV SS ends with it (SDM 25.4.2).
/// Shared by every path that moves the guest past instructions (one-instruction
/// handlers here, the coalescer's write-back).
pub fn retire_interrupt_shadow(vmcs: &mut impl Vmcs) {
    let irq = vmcs.read(VmcsField::GuestInterruptibilityState);
    if irq & interruptibility::STI_MOV_SS != 0 {
        vmcs.write(
            VmcsField::GuestInterruptibilityState,
            irq & !interruptibility::STI_MOV_SS,
        );
    }
}

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // ---------------------------------------------------------------------
    // Guest state helpers
    // ---------------------------------------------------------------------

    fn read(&self, f: VmcsField) -> u64 {
        self.vmcs.read(f)
    }

    /// IA32_EFER.LMA, from the "IA-32e mode guest" entry control.
    fn lma(&self) -> bool {
        guest_lma(&*self.vmcs)
    }

    /// 64-bit mode: IA-32e mode with CS.L set.
    fn long_mode(&self) -> bool {
        guest_long_mode(&*self.vmcs)
    }

    fn cpl(&self) -> u8 {
        guest_cpl(&*self.vmcs)
    }

    fn efer(&self) -> u64 {
        guest_efer(&*self.vmcs)
    }

    fn paging(&self) -> PagingContext {
        guest_paging(&*self.vmcs)
    }

    /// CR0 as the guest sees it: shadow bits where the mask owns them.
    fn visible_cr0(&self) -> u64 {
        let mask = self.read(VmcsField::Cr0GuestHostMask);
        (self.read(VmcsField::GuestCr0) & !mask) | (self.read(VmcsField::Cr0ReadShadow) & mask)
    }

    fn visible_cr4(&self) -> u64 {
        let mask = self.read(VmcsField::Cr4GuestHostMask);
        (self.read(VmcsField::GuestCr4) & !mask) | (self.read(VmcsField::Cr4ReadShadow) & mask)
    }

    /// A general-purpose register by encoding; 4 is RSP in the VMCS.
    fn gpr(&self, n: u8) -> u64 {
        match n {
            4 => self.read(VmcsField::GuestRsp),
            n => self.regs.get(n).unwrap_or(0),
        }
    }

    fn set_gpr(&mut self, n: u8, v: u64) {
        if n == 4 {
            self.vmcs.write(VmcsField::GuestRsp, v);
        } else {
            self.regs.set(n, v);
        }
    }

    /// Retires the exiting instruction: RIP += its length (wrapping at the
    /// code size outside 64-bit mode) and clears blocking by STI / MOV SS.
    pub fn advance_rip(&mut self) {
        let len = self.read(VmcsField::ExitInstructionLength);
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
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let protected = self.read(VmcsField::GuestCr0) & Cr0::PE.bits() != 0;
        let code = if protected { error_code } else { None };
        inject_event(self.vmcs, hardware_exception(vector, code), code, 0);
        self.stats.injected_exceptions = self.stats.injected_exceptions.saturating_add(1);
    }

    fn inject(&mut self, f: Fault) {
        match f {
            Fault::Gp => self.inject_exception(exception::GP, Some(0)),
            Fault::Ud => self.inject_exception(exception::UD, None),
        }
    }

    /// Retire on success, inject on failure; resume either way.
    fn complete(&mut self, r: Result<(), Fault>) -> ExitAction {
        match r {
            Ok(()) => self.advance_rip(),
            Err(f) => self.inject(f),
        }
        ExitAction::Resume
    }

    // ---------------------------------------------------------------------
    // Exceptions, NMIs (reason 0)
    // ---------------------------------------------------------------------

    /// An exception the exception bitmap intercepted is delivered to the guest
    /// unchanged; an NMI belongs to the host and is only counted. Exits during
    /// event delivery (IDT-vectoring info) are not merged into #DF; a #PF is
    /// re-injected without CR2 (the kernel keeps #PF out of the bitmap).
    fn exception_or_nmi(&mut self) -> ExitAction {
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
        // Re-injecting a fault from IRET must restore NMI blocking (SDM
        // 28.2.3 "NMI unblocking due to IRET").
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
            let len = self.read(VmcsField::ExitInstructionLength) as u32;
            inject_event(self.vmcs, interruption_info(vector, kind, false), None, len);
            self.stats.injected_exceptions = self.stats.injected_exceptions.saturating_add(1);
        }
        ExitAction::Resume
    }

    // ---------------------------------------------------------------------
    // CPUID (10), HLT (12), INVD/WBINVD (13/54), VMX instructions
    // ---------------------------------------------------------------------

    fn cpuid(&mut self) -> ExitAction {
        let leaf = self.regs.rax as u32;
        let subleaf = self.regs.rcx as u32;
        let raw = if (0x4000_0000..=0x4FFF_FFFF).contains(&leaf) {
            [0; 4]
        } else {
            self.host.cpuid(leaf, subleaf)
        };
        let cr4 = self.visible_cr4();
        let [a, mut b, c, d] = match leaf {
            0x15 | 0x16 => tsc_frequency_leaf(leaf, self.config.tsc_hz),
            _ => filter_cpuid(leaf, subleaf, raw, self.config.nested_vmx, cr4),
        };
        if leaf == 0xD && subleaf == 1 && a & LEAFD1_EAX_XSAVEC != 0 {
            let xcr0 = self.msrs.xcr0;
            let host = &mut *self.host;
            b = compacted_xsave_size(xcr0, |i| {
                let [size, _, flags, _] = host.cpuid(0xD, i);
                (size, flags)
            });
        }
        self.regs.rax = u64::from(a);
        self.regs.rbx = u64::from(b);
        self.regs.rcx = u64::from(c);
        self.regs.rdx = u64::from(d);
        self.complete(Ok(()))
    }

    /// HLT ends the guest whether or not interrupts are enabled: no device
    /// raises interrupts yet. The device models add wake-ups (HLT with
    /// RFLAGS.IF = 1 then waits for the next interrupt).
    /// HLT with interrupts off stops the guest for good (nothing but an NMI could
    /// wake it, and sluice sends none): Linux's power-off ends this way. With
    /// interrupts on, the guest waits for one: RIP moves past the HLT and the guest
    /// goes into the HLT activity state (SDM 25.4.2); the run loop injects the next
    /// interrupt, which wakes it, or arms the preemption timer for the next timer
    /// event, or ends the guest if no interrupt source could ever wake it.
    fn hlt(&mut self) -> ExitAction {
        if self.read(VmcsField::GuestRflags) & Rflags::IF.bits() == 0 {
            return end(EndKind::Halt);
        }
        self.advance_rip();
        self.vmcs
            .write(VmcsField::GuestActivityState, activity::HLT);
        ExitAction::Resume
    }

    /// INVD is emulated as WBINVD: discarding the host's dirty cache lines
    /// would corrupt the host.
    fn wbinvd(&mut self) -> ExitAction {
        self.host.wbinvd();
        self.complete(Ok(()))
    }

    /// VMX instructions are not offered (nested VMX is not emulated): #UD,
    /// as on a processor without VMX.
    fn vmx_instruction(&mut self) -> ExitAction {
        self.complete(Err(Fault::Ud))
    }

    // ---------------------------------------------------------------------
    // VMCALL (18)
    // ---------------------------------------------------------------------

    /// The hypercall ABI of [`crate::vcpu::hypercall`]. Per that ABI, VMCALL at
    /// CPL > 0 returns `ERROR` in RAX (it is not a #UD).
    fn vmcall(&mut self) -> ExitAction {
        if self.cpl() != 0 {
            self.regs.rax = hypercall::ERROR;
            return self.complete(Ok(()));
        }
        match self.regs.rax {
            hypercall::PRINT => {
                self.regs.rax = match self.hypercall_print(self.regs.rbx, self.regs.rcx) {
                    Ok(()) => 0,
                    Err(()) => hypercall::ERROR,
                };
            }
            hypercall::EXIT => {
                self.advance_rip();
                return ExitAction::End {
                    kind: EndKind::Hypercall,
                    exit_code: self.regs.rbx as u32,
                };
            }
            hypercall::COUNTERS => {
                self.regs.rax = self.stats.exit_count(er::IO_INSTRUCTION);
                self.regs.rbx = self.stats.io.instructions;
                self.regs.rcx = self.stats.io.emulated;
            }
            _ => self.regs.rax = hypercall::ERROR,
        }
        self.complete(Ok(()))
    }

    /// Prints `len` bytes at guest-linear `addr`, all or nothing.
    fn hypercall_print(&mut self, addr: u64, len: u64) -> Result<(), ()> {
        if len > hypercall::PRINT_MAX {
            return Err(());
        }
        let len = len as usize;
        let pctx = self.paging();
        check_linear(&*self.mem, &pctx, addr, len, Access::read(0)).map_err(|_| ())?;
        let mut buf = [0u8; 256];
        let mut done = 0usize;
        while done < len {
            let n = buf.len().min(len - done);
            let chunk = &mut buf[..n];
            read_linear(&*self.mem, &pctx, addr.wrapping_add(done as u64), chunk)
                .map_err(|_| ())?;
            self.host.console(chunk);
            done += n;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------
    // IO instructions (30)
    // ---------------------------------------------------------------------

    fn io_instruction(&mut self) -> ExitAction {
        let q = IoQualification::from_qualification(self.read(VmcsField::ExitQualification));
        if !matches!(q.size, 1 | 2 | 4) {
            return end(EndKind::Fatal);
        }
        if q.string {
            return self.io_string(q);
        }
        let mask = size_mask(q.size);
        if q.is_in {
            let v = u64::from(self.bus.read(q.port, q.size));
            // IN AL/AX merges; IN EAX zero-extends into RAX (SDM Vol. 2 "IN").
            self.regs.rax = if q.size == 4 {
                v
            } else {
                (self.regs.rax & !u64::from(mask)) | v
            };
        } else {
            self.bus.write(q.port, q.size, self.regs.rax as u32 & mask);
        }
        self.stats.io.instructions = self.stats.io.instructions.saturating_add(1);
        self.complete(Ok(()))
    }

    /// INS/OUTS, with or without REP. Up to [`MAX_STRING_ELEMENTS`] elements
    /// per exit; if RCX is still non-zero then, RIP stays on the instruction so
    /// it exits again. The address size and (for OUTS) segment come from the
    /// VM-exit instruction-information field (SDM 28.2.5, Table 28-8); INS
    /// always writes ES:rDI. Segment limits are not checked. An element whose
    /// address does not translate to guest RAM gets #GP(0) with the elements
    /// before it done (RSI/RDI/RCX updated as far as the processor would).
    fn io_string(&mut self, q: IoQualification) -> ExitAction {
        let info = self.read(VmcsField::ExitInstructionInfo);
        let addr = match (info >> 7) & 7 {
            0 => Width::W16,
            1 => Width::W32,
            2 => Width::W64,
            _ => return end(EndKind::Fatal),
        };
        let addr_mask = addr.mask();
        let long = self.long_mode();
        let seg = if q.is_in { 0 } else { (info >> 15) & 7 };
        let base_field = match seg {
            0 => VmcsField::GuestEsBase,
            1 => VmcsField::GuestCsBase,
            2 => VmcsField::GuestSsBase,
            3 => VmcsField::GuestDsBase,
            4 => VmcsField::GuestFsBase,
            5 => VmcsField::GuestGsBase,
            _ => return end(EndKind::Fatal),
        };
        // In 64-bit mode only FS and GS have bases (SDM Vol. 3A 3.4.4).
        let base = if long && seg < 4 {
            0
        } else {
            self.read(base_field)
        };
        let size = u64::from(q.size);
        let step = if self.read(VmcsField::GuestRflags) & Rflags::DF.bits() != 0 {
            size.wrapping_neg()
        } else {
            size
        };
        let count = if q.rep { self.regs.rcx & addr_mask } else { 1 };
        let pctx = self.paging();
        let cpl = self.cpl();
        for _ in 0..count.min(MAX_STRING_ELEMENTS) {
            let reg = if q.is_in {
                self.regs.rdi
            } else {
                self.regs.rsi
            };
            let mut linear = base.wrapping_add(reg & addr_mask);
            if !long {
                linear &= 0xFFFF_FFFF;
            }
            if self.string_element(q, &pctx, linear, cpl).is_err() {
                self.inject(Fault::Gp);
                return ExitAction::Resume;
            }
            if q.is_in {
                self.regs.rdi = update_addr_reg(self.regs.rdi, step, addr);
            } else {
                self.regs.rsi = update_addr_reg(self.regs.rsi, step, addr);
            }
            if q.rep {
                self.regs.rcx = update_addr_reg(self.regs.rcx, u64::MAX, addr);
            }
            self.stats.io.string_elements = self.stats.io.string_elements.saturating_add(1);
        }
        if q.rep && self.regs.rcx & addr_mask != 0 {
            return ExitAction::Resume;
        }
        self.stats.io.instructions = self.stats.io.instructions.saturating_add(1);
        self.complete(Ok(()))
    }

    /// One INS/OUTS element. INS checks the destination before reading the
    /// port so a faulting INS has no device side effect.
    fn string_element(
        &mut self,
        q: IoQualification,
        pctx: &PagingContext,
        linear: u64,
        cpl: u8,
    ) -> Result<(), ()> {
        let n = usize::from(q.size);
        let mut bytes = [0u8; 4];
        if q.is_in {
            check_linear(&*self.mem, pctx, linear, n, Access::write(cpl)).map_err(|_| ())?;
            bytes = self.bus.read(q.port, q.size).to_le_bytes();
            write_linear(self.mem, pctx, linear, &bytes[..n], cpl).map_err(|_| ())
        } else {
            read_linear_as(&*self.mem, pctx, linear, &mut bytes[..n], Access::read(cpl))
                .map_err(|_| ())?;
            self.bus.write(q.port, q.size, u32::from_le_bytes(bytes));
            Ok(())
        }
    }

    // ---------------------------------------------------------------------
    // RDMSR (31), WRMSR (32)
    // ---------------------------------------------------------------------

    fn note_unknown_msr(&mut self) -> Result<u64, Fault> {
        self.stats.unknown_msrs = self.stats.unknown_msrs.saturating_add(1);
        Err(Fault::Gp)
    }

    fn rdmsr(&mut self) -> ExitAction {
        let index = self.regs.rcx as u32;
        let r = self.read_msr(index);
        match r {
            Ok(v) => {
                self.regs.rax = v & 0xFFFF_FFFF;
                self.regs.rdx = v >> 32;
            }
            Err(Fault::Gp) => self.stats.note_msr_gp(index, false),
            Err(_) => {}
        }
        self.complete(r.map(|_| ()))
    }

    fn read_msr(&mut self, index: u32) -> Result<u64, Fault> {
        use msr::*;
        Ok(match index {
            IA32_TIME_STAMP_COUNTER => {
                let tsc = self.host.rdtsc();
                let offsetting = u64::from(PrimaryControls::USE_TSC_OFFSETTING.bits());
                if self.read(VmcsField::PrimaryProcControls) & offsetting != 0 {
                    tsc.wrapping_add(self.read(VmcsField::TscOffset))
                } else {
                    tsc
                }
            }
            IA32_SYSENTER_CS => self.read(VmcsField::GuestIa32SysenterCs),
            IA32_SYSENTER_ESP => self.read(VmcsField::GuestIa32SysenterEsp),
            IA32_SYSENTER_EIP => self.read(VmcsField::GuestIa32SysenterEip),
            IA32_FS_BASE => self.read(VmcsField::GuestFsBase),
            IA32_GS_BASE => self.read(VmcsField::GuestGsBase),
            IA32_EFER => self.efer(),
            IA32_PAT => self.read(VmcsField::GuestIa32Pat),
            // Fast strings enabled, nothing else.
            IA32_MISC_ENABLE => 1,
            // No variable or fixed MTRRs, MTRRs disabled.
            IA32_MTRRCAP | IA32_MTRR_DEF_TYPE => 0,
            IA32_BIOS_SIGN_ID => 0,
            IA32_KERNEL_GS_BASE => self.msrs.kernel_gs_base,
            IA32_STAR => self.msrs.star,
            IA32_LSTAR => self.msrs.lstar,
            IA32_CSTAR => self.msrs.cstar,
            IA32_FMASK => self.msrs.sfmask,
            // No local APIC is offered.
            IA32_APIC_BASE => return Err(Fault::Gp),
            _ => return self.note_unknown_msr(),
        })
    }

    fn wrmsr(&mut self) -> ExitAction {
        let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
        let index = self.regs.rcx as u32;
        let r = self.write_msr(index, value);
        if r == Err(Fault::Gp) {
            self.stats.note_msr_gp(index, true);
        }
        self.complete(r)
    }

    /// Canonical for the guest's linear-address width (57 bits with CR4.LA57).
    fn canonical(&self, v: u64) -> Result<(), Fault> {
        let bits = if self.visible_cr4() & Cr4::LA57.bits() != 0 {
            57
        } else {
            48
        };
        if is_canonical(v, bits) {
            Ok(())
        } else {
            Err(Fault::Gp)
        }
    }

    fn write_msr(&mut self, index: u32, v: u64) -> Result<(), Fault> {
        use msr::*;
        let field = match index {
            IA32_SYSENTER_CS => VmcsField::GuestIa32SysenterCs,
            IA32_SYSENTER_ESP => VmcsField::GuestIa32SysenterEsp,
            IA32_SYSENTER_EIP => VmcsField::GuestIa32SysenterEip,
            IA32_FS_BASE => VmcsField::GuestFsBase,
            IA32_GS_BASE => VmcsField::GuestGsBase,
            IA32_EFER => return self.write_efer(v),
            IA32_PAT if pat_valid(v) => VmcsField::GuestIa32Pat,
            IA32_PAT => return Err(Fault::Gp),
            // Accepted and ignored: the TSC is the host's (no offset
            // management yet), MISC_ENABLE has nothing to change, a
            // BIOS_SIGN_ID write only precedes a microcode-revision CPUID.
            IA32_TIME_STAMP_COUNTER | IA32_MISC_ENABLE | IA32_BIOS_SIGN_ID => return Ok(()),
            IA32_MTRR_DEF_TYPE if v & !0xCFF == 0 => return Ok(()),
            IA32_KERNEL_GS_BASE | IA32_LSTAR | IA32_CSTAR => {
                self.canonical(v)?;
                let slot = match index {
                    IA32_KERNEL_GS_BASE => &mut self.msrs.kernel_gs_base,
                    IA32_LSTAR => &mut self.msrs.lstar,
                    _ => &mut self.msrs.cstar,
                };
                *slot = v;
                return Ok(());
            }
            IA32_STAR => {
                self.msrs.star = v;
                return Ok(());
            }
            IA32_FMASK => {
                self.msrs.sfmask = v;
                return Ok(());
            }
            IA32_APIC_BASE | IA32_MTRRCAP | IA32_MTRR_DEF_TYPE => return Err(Fault::Gp),
            _ => return self.note_unknown_msr().map(|_| ()),
        };
        if !matches!(
            field,
            VmcsField::GuestIa32SysenterCs | VmcsField::GuestIa32Pat
        ) {
            // VM entry requires these to be canonical (SDM 27.3.1.1/27.3.1.2).
            self.canonical(v)?;
        }
        self.vmcs.write(field, v);
        Ok(())
    }

    /// WRMSR IA32_EFER: SCE, LME, NXE are writable when the host CPU has them;
    /// LMA is kept as it is (the processor sets it from LME and CR0.PG); LME
    /// cannot change while paging is on (SDM Vol. 3A 10.8.5 / 2.2.1).
    fn write_efer(&mut self, v: u64) -> Result<(), Fault> {
        const SCE: u64 = 1;
        let ext = self.host.cpuid(0x8000_0001, 0)[3];
        let mut allowed = Efer::LMA.bits();
        for (cpuid_bit, efer_bit) in [(11, SCE), (29, Efer::LME.bits()), (20, Efer::NXE.bits())] {
            if ext & (1 << cpuid_bit) != 0 {
                allowed |= efer_bit;
            }
        }
        if v & !allowed != 0 {
            return Err(Fault::Gp);
        }
        let old = self.efer();
        if self.visible_cr0() & Cr0::PG.bits() != 0 && (old ^ v) & Efer::LME.bits() != 0 {
            return Err(Fault::Gp);
        }
        self.vmcs.write(
            VmcsField::GuestIa32Efer,
            (v & !Efer::LMA.bits()) | (old & Efer::LMA.bits()),
        );
        Ok(())
    }

    // ---------------------------------------------------------------------
    // XSETBV (55)
    // ---------------------------------------------------------------------

    fn xsetbv(&mut self) -> ExitAction {
        let xcr = self.regs.rcx as u32;
        let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
        let [a, _, _, d] = self.host.cpuid(0xD, 0);
        let supported = (u64::from(d) << 32) | u64::from(a);
        if xcr != 0 || !xcr0_valid(value, supported) {
            return self.complete(Err(Fault::Gp));
        }
        self.host.xsetbv(xcr, value);
        self.msrs.xcr0 = value;
        self.complete(Ok(()))
    }

    // ---------------------------------------------------------------------
    // Control-register accesses (28)
    // ---------------------------------------------------------------------

    /// MOV to/from CR0/CR3/CR4/CR8, CLTS, LMSW (SDM 28.2.1 Table 28-3).
    fn cr_access(&mut self) -> ExitAction {
        let q = CrAccessQualification::from_qualification(self.read(VmcsField::ExitQualification));
        let width = if self.long_mode() {
            u64::MAX
        } else {
            0xFFFF_FFFF
        };
        let r = match (q.access, q.cr) {
            (CrAccessType::MovToCr, cr) => {
                let v = self.gpr(q.gpr) & width;
                match cr {
                    0 => self.set_cr0(v),
                    3 => self.set_cr3(v),
                    4 => self.set_cr4(v),
                    // No local APIC: the TPR is not modelled.
                    8 => Ok(()),
                    _ => Err(Fault::Ud),
                }
            }
            (CrAccessType::MovFromCr, cr) => {
                let v = match cr {
                    0 => Ok(self.visible_cr0()),
                    3 => Ok(self.read(VmcsField::GuestCr3)),
                    4 => Ok(self.visible_cr4()),
                    8 => Ok(0),
                    _ => Err(Fault::Ud),
                };
                v.map(|v| self.set_gpr(q.gpr, v & width))
            }
            (CrAccessType::Clts, _) => self.set_cr0(self.visible_cr0() & !Cr0::TS.bits()),
            (CrAccessType::Lmsw, _) => {
                // LMSW loads PE, MP, EM, TS; it can set PE but not clear it.
                let old = self.visible_cr0();
                let src = u64::from(q.lmsw_source) & 0xF;
                self.set_cr0((old & !0xF) | src | (old & Cr0::PE.bits()))
            }
        };
        self.complete(r)
    }

    /// Reads the four PAE PDPTEs at `cr3` (SDM 4.4.1); invalid ones make the
    /// MOV that loads them fail with #GP.
    fn read_pdptes(&self, cr3: u64) -> Result<[u64; 4], Fault> {
        let mut out = [0u64; 4];
        let base = cr3 & 0xFFFF_FFE0;
        for (i, slot) in (0u64..).zip(out.iter_mut()) {
            let e = self.mem.read_u64(base + i * 8).map_err(|_| Fault::Gp)?;
            if e & 1 != 0 && pdpte_reserved(e) {
                return Err(Fault::Gp);
            }
            *slot = e;
        }
        Ok(out)
    }

    /// With EPT the processor loads the PDPTEs from the VMCS on VM entry when
    /// the guest uses PAE paging (SDM 27.3.2.4), so a MOV that enters or
    /// refreshes PAE paging must put them there.
    fn pae_pdptes(
        &self,
        cr0: u64,
        cr3: u64,
        cr4: u64,
        lma: bool,
    ) -> Result<Option<[u64; 4]>, Fault> {
        if cr0 & Cr0::PG.bits() != 0 && cr4 & Cr4::PAE.bits() != 0 && !lma {
            self.read_pdptes(cr3).map(Some)
        } else {
            Ok(None)
        }
    }

    fn store_pdptes(&mut self, p: Option<[u64; 4]>) {
        if let Some([a, b, c, d]) = p {
            self.vmcs.write(VmcsField::GuestPdpte0, a);
            self.vmcs.write(VmcsField::GuestPdpte1, b);
            self.vmcs.write(VmcsField::GuestPdpte2, c);
            self.vmcs.write(VmcsField::GuestPdpte3, d);
        }
    }

    /// MOV to CR0 (SDM Vol. 2 "MOV—Move to/from Control Registers", Vol. 3A
    /// 2.5, 10.8.5): the guest's value goes to the read shadow, the value
    /// with the VMX fixed bits applied to the real CR0 (PE/PG exempt with
    /// unrestricted guest). Turning PG on with EFER.LME activates IA-32e mode
    /// (EFER.LMA and the "IA-32e mode guest" entry control), turning it off
    /// deactivates it.
    fn set_cr0(&mut self, v: u64) -> Result<(), Fault> {
        if v >> 32 != 0 {
            return Err(Fault::Gp);
        }
        // Reserved bits 31:0 are ignored; ET is hardwired to 1.
        let v = (v & Cr0::all().bits()) | Cr0::ET.bits();
        if (v & Cr0::PG.bits() != 0 && v & Cr0::PE.bits() == 0)
            || (v & Cr0::NW.bits() != 0 && v & Cr0::CD.bits() == 0)
        {
            return Err(Fault::Gp);
        }
        let efer = self.efer();
        let cr4 = self.visible_cr4();
        let was_paging = self.visible_cr0() & Cr0::PG.bits() != 0;
        let paging = v & Cr0::PG.bits() != 0;
        if paging && !was_paging && efer & Efer::LME.bits() != 0 && cr4 & Cr4::PAE.bits() == 0 {
            return Err(Fault::Gp);
        }
        // Leaving IA-32e mode is only allowed from compatibility mode.
        if !paging && self.long_mode() {
            return Err(Fault::Gp);
        }
        let lma = paging && efer & Efer::LME.bits() != 0;
        let pdptes = self.pae_pdptes(v, self.read(VmcsField::GuestCr3), cr4, lma)?;
        let mut fixed0 = self.config.cr0_fixed0;
        if self.config.unrestricted_guest {
            fixed0 &= !(Cr0::PE.bits() | Cr0::PG.bits());
        }
        let real = (v | fixed0) & self.config.cr0_fixed1;
        self.vmcs.write(VmcsField::Cr0ReadShadow, v);
        self.vmcs.write(VmcsField::GuestCr0, real);
        self.store_pdptes(pdptes);
        self.set_lma(lma);
        Ok(())
    }

    fn set_lma(&mut self, lma: bool) {
        let efer = self.read(VmcsField::GuestIa32Efer) & !Efer::LMA.bits();
        let ia32e = u64::from(EntryControls::IA32E_MODE_GUEST.bits());
        let entry = self.read(VmcsField::EntryControls) & !ia32e;
        let (efer, entry) = if lma {
            (efer | Efer::LMA.bits(), entry | ia32e)
        } else {
            (efer, entry)
        };
        self.vmcs.write(VmcsField::GuestIa32Efer, efer);
        self.vmcs.write(VmcsField::EntryControls, entry);
    }

    /// MOV to CR4: reserved or unsupported bits (per Cr4::FIXED1.bits()), VMXE without
    /// nested VMX, clearing PAE or toggling LA57 in IA-32e mode, and setting
    /// PCIDE outside IA-32e mode or with CR3[11:0] ≠ 0 raise #GP.
    fn set_cr4(&mut self, v: u64) -> Result<(), Fault> {
        let old = self.visible_cr4();
        let lma = self.lma();
        let cr3 = self.read(VmcsField::GuestCr3);
        let bad = v & !Cr4::all().bits() != 0
            || v & !self.config.cr4_fixed1 != 0
            || (v & Cr4::VMXE.bits() != 0 && !self.config.nested_vmx)
            || (lma && v & Cr4::PAE.bits() == 0)
            || (lma && (v ^ old) & Cr4::LA57.bits() != 0)
            || (v & Cr4::PCIDE.bits() != 0
                && old & Cr4::PCIDE.bits() == 0
                && (!lma || cr3 & 0xFFF != 0));
        if bad {
            return Err(Fault::Gp);
        }
        let pdptes = self.pae_pdptes(self.visible_cr0(), cr3, v, lma)?;
        let real = (v | self.config.cr4_fixed0) & self.config.cr4_fixed1;
        self.vmcs.write(VmcsField::Cr4ReadShadow, v);
        self.vmcs.write(VmcsField::GuestCr4, real);
        self.store_pdptes(pdptes);
        Ok(())
    }

    /// MOV to CR3 (only exits with CR3-load exiting). Bit 63 with PCIDE is the
    /// no-flush hint and is not stored; bits 62:52 are reserved.
    fn set_cr3(&mut self, v: u64) -> Result<(), Fault> {
        let cr4 = self.visible_cr4();
        let v = if cr4 & Cr4::PCIDE.bits() != 0 {
            v & !(1 << 63)
        } else {
            v
        };
        if v >> 52 != 0 {
            return Err(Fault::Gp);
        }
        let pdptes = self.pae_pdptes(self.visible_cr0(), v, cr4, self.lma())?;
        self.vmcs.write(VmcsField::GuestCr3, v);
        self.store_pdptes(pdptes);
        Ok(())
    }
}

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

/// Exit qualification of a VM-entry failure due to invalid guest state (SDM
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::{ConsoleSink, PortDevice};
    use crate::devices::uart16550::Uart16550;
    use crate::vmx::vmcs::SoftVmcs;
    use crate::x86::guest_mem::SliceMemory;

    const RAM: usize = 4 << 20;
    const RIP: u64 = 0x7000;
    const LEN: u64 = 2;
    const IA32E: u64 = EntryControls::IA32E_MODE_GUEST.bits() as u64;
    /// Fixed bits as on a typical processor: PE, NE, PG must be 1 in CR0;
    /// VMXE in CR4; CR4 bits up to 23 may be 1.
    const CONFIG: VcpuConfig = VcpuConfig {
        nested_vmx: false,
        unrestricted_guest: true,
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xFFFF_FFFF,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0xFF_FFFF,
        tsc_hz: 0,
    };

    #[derive(Default)]
    struct FakeHost {
        console: Vec<u8>,
        xcr0: Option<u64>,
        wbinvd: u32,
        xsave_mask: u64,
    }

    impl HostOps for FakeHost {
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            match leaf {
                // VMX, XSAVE, x2APIC, TSC deadline, OSXSAVE (host CR4) in ECX; APIC in EDX.
                1 => [0x906EA, 0x0010_0800, 0x7FFA_FBFF, 0xBFEB_FBFF],
                7 => [0, 0x029C_6FBF, 0x10, 0],
                // Sub-leaf 1 as Bochs reports it: XSAVEOPT, XSAVEC, XGETBV1, XSAVES,
                // the standard-format size in EBX, PT in the IA32_XSS bits.
                0xD if subleaf == 1 => [0xF, 0xA80, 0x100, 0],
                0xD if subleaf == 2 => [256, 576, 0, 0],
                0xD if subleaf > 2 => [0; 4],
                0xD => [
                    self.xsave_mask as u32,
                    0x340,
                    0x340,
                    (self.xsave_mask >> 32) as u32,
                ],
                // SYSCALL, NX, LM.
                0x8000_0001 => [0, 0, 0x121, 0x2C10_0800],
                _ => [leaf, subleaf, 0xCCCC, 0xDDDD],
            }
        }
        fn console(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
        fn xsetbv(&mut self, xcr: u32, value: u64) {
            assert_eq!(xcr, 0);
            self.xcr0 = Some(value);
        }
        fn wbinvd(&mut self) {
            self.wbinvd += 1;
        }
        fn rdtsc(&mut self) -> u64 {
            0x1_0000_0000
        }
    }

    struct Harness {
        vmcs: SoftVmcs,
        regs: GuestRegs,
        ram: Vec<u8>,
        host: FakeHost,
        stats: Stats,
        msrs: MsrFile,
        config: VcpuConfig,
    }

    fn put64(r: &mut [u8], at: u64, v: u64) {
        r[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    impl Harness {
        /// A 64-bit guest at CPL 0 with 4-level paging: the first 2 MiB
        /// identity-mapped with 4 KiB pages except linear 0x10_1000, which maps
        /// to 0x30_0000, and 0x10_2000, which is not present; 2..4 MiB identity
        /// with one 2 MiB page.
        fn long() -> Self {
            let mut ram = vec![0u8; RAM];
            put64(&mut ram, 0x1000, 0x2000 | 7);
            put64(&mut ram, 0x2000, 0x3000 | 7);
            put64(&mut ram, 0x3000, 0x4000 | 7);
            put64(&mut ram, 0x3008, 0x20_0000 | 0x87);
            for i in 0..512u64 {
                let e = match i {
                    0x101 => 0x30_0000 | 7,
                    0x102 => 0,
                    _ => (i << 12) | 7,
                };
                put64(&mut ram, 0x4000 + i * 8, e);
            }
            let mut vmcs = SoftVmcs::new();
            vmcs.write(VmcsField::GuestCr0, 0x8000_0031 | (1 << 16));
            vmcs.write(VmcsField::Cr0ReadShadow, 0x8000_0031 | (1 << 16));
            vmcs.write(VmcsField::Cr0GuestHostMask, 0x8000_0021);
            vmcs.write(VmcsField::GuestCr3, 0x1000);
            vmcs.write(VmcsField::GuestCr4, 0x2020);
            vmcs.write(VmcsField::Cr4ReadShadow, 0x0020);
            vmcs.write(VmcsField::Cr4GuestHostMask, 0x2000);
            vmcs.write(
                VmcsField::GuestIa32Efer,
                Efer::LME.bits() | Efer::LMA.bits() | Efer::NXE.bits() | 1,
            );
            vmcs.write(VmcsField::EntryControls, IA32E);
            vmcs.write(VmcsField::GuestCsAccessRights, 0xA09B);
            vmcs.write(VmcsField::GuestSsAccessRights, 0xC093);
            vmcs.write(VmcsField::GuestRflags, 0x202);
            Self::with(vmcs, ram)
        }

        /// A real-mode guest (unrestricted guest, CR0.PE = 0).
        fn real() -> Self {
            let mut vmcs = SoftVmcs::new();
            vmcs.write(VmcsField::GuestCr0, 0x30);
            vmcs.write(VmcsField::Cr0ReadShadow, 0x10);
            vmcs.write(VmcsField::Cr0GuestHostMask, 0x8000_0021);
            vmcs.write(VmcsField::GuestCr4, 0x2000);
            vmcs.write(VmcsField::Cr4GuestHostMask, 0x2000);
            vmcs.write(VmcsField::GuestCsAccessRights, 0x9B);
            vmcs.write(VmcsField::GuestSsAccessRights, 0x93);
            vmcs.write(VmcsField::GuestRflags, 0x2);
            Self::with(vmcs, vec![0u8; RAM])
        }

        fn with(mut vmcs: SoftVmcs, ram: Vec<u8>) -> Self {
            vmcs.write(VmcsField::GuestRip, RIP);
            vmcs.write(VmcsField::ExitInstructionLength, LEN);
            Harness {
                vmcs,
                regs: GuestRegs::default(),
                ram,
                host: FakeHost {
                    xsave_mask: 0x2E7,
                    ..FakeHost::default()
                },
                stats: Stats::new(),
                msrs: MsrFile::default(),
                config: CONFIG,
            }
        }

        fn exit_on(&mut self, reason: u16, qualification: u64) -> &mut Self {
            self.vmcs.write(VmcsField::ExitReason, u64::from(reason));
            self.vmcs.write(VmcsField::ExitQualification, qualification);
            self.vmcs.write(VmcsField::EntryInterruptionInfo, 0);
            self
        }

        fn run_with(&mut self, bus: &mut IoBus) -> ExitAction {
            let mut mem = SliceMemory::new(&mut self.ram);
            let mut ctx = ExitContext {
                vmcs: &mut self.vmcs,
                regs: &mut self.regs,
                mem: &mut mem,
                host: &mut self.host,
                bus,
                stats: &mut self.stats,
                msrs: &mut self.msrs,
                config: self.config,
            };
            handle_exit(&mut ctx)
        }

        fn run(&mut self) -> ExitAction {
            self.run_with(&mut IoBus::new())
        }

        fn rip(&self) -> u64 {
            self.vmcs.read(VmcsField::GuestRip)
        }

        fn injected(&self) -> u64 {
            self.vmcs.read(VmcsField::EntryInterruptionInfo)
        }

        /// Resumed, RIP advanced, nothing injected.
        fn assert_retired(&self, a: ExitAction) {
            assert_eq!(a, ExitAction::Resume);
            assert_eq!(self.rip(), RIP + LEN);
            assert_eq!(self.injected(), 0);
        }

        /// Resumed with `info` injected and RIP unchanged.
        fn assert_faulted(&self, a: ExitAction, info: u32) {
            assert_eq!(a, ExitAction::Resume);
            assert_eq!(self.rip(), RIP);
            assert_eq!(self.injected(), u64::from(info));
        }

        fn describe(&self, kind: EndKind) -> String {
            let mut s = String::new();
            describe_end(&self.vmcs, kind, &mut s).unwrap();
            s
        }
    }

    const GP0: u32 = 0x8000_0B0D;
    const UD_INFO: u32 = 0x8000_0306;

    /// Records accesses; reads return `value`.
    #[derive(Default)]
    struct Probe {
        value: u32,
        reads: u32,
        writes: Vec<(u16, u8, u32)>,
    }

    impl PortDevice for Probe {
        fn read(&mut self, _port: u16, _size: u8) -> u32 {
            self.reads += 1;
            self.value
        }
        fn write(&mut self, port: u16, size: u8, value: u32) {
            self.writes.push((port, size, value));
        }
    }

    #[derive(Default)]
    struct VecSink(Vec<u8>);

    impl ConsoleSink for VecSink {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    /// IO exit qualification.
    fn ioq(port: u16, size: u8, is_in: bool, string: bool, rep: bool) -> u64 {
        let size_bits = u64::from(size - 1);
        (u64::from(port) << 16)
            | size_bits
            | (u64::from(is_in) << 3)
            | (u64::from(string) << 4)
            | (u64::from(rep) << 5)
    }

    /// Instruction information for INS/OUTS: address size (0/1/2) and segment.
    fn ioinfo(addr_size: u64, seg: u64) -> u64 {
        (addr_size << 7) | (seg << 15)
    }

    // ----- IO -----

    #[test]
    fn out_sizes_take_the_low_bits_of_rax() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x60..=0x6F, &mut p).unwrap();
        for size in [1u8, 2, 4] {
            let mut h = Harness::long();
            h.regs.rax = 0x1122_3344_5566_7788;
            h.vmcs.write(VmcsField::GuestInterruptibilityState, 0b1011);
            h.exit_on(er::IO_INSTRUCTION, ioq(0x60, size, false, false, false));
            let a = h.run_with(&mut bus);
            h.assert_retired(a);
            // Blocking by STI / MOV SS cleared, NMI blocking kept.
            assert_eq!(h.vmcs.read(VmcsField::GuestInterruptibilityState), 0b1000);
            assert_eq!(h.stats.exit_count(er::IO_INSTRUCTION), 1);
        }
        assert_eq!(
            p.writes,
            vec![(0x60, 1, 0x88), (0x60, 2, 0x7788), (0x60, 4, 0x5566_7788)]
        );
    }

    #[test]
    fn in_merges_or_zero_extends() {
        let mut p = Probe {
            value: 0xAABB_CCDD,
            ..Probe::default()
        };
        let mut bus = IoBus::new();
        bus.register(0x71..=0x71, &mut p).unwrap();
        for (size, want) in [
            (1u8, 0xFFFF_FFFF_FFFF_FFDD),
            (2, 0xFFFF_FFFF_FFFF_CCDD),
            (4, 0x0000_0000_AABB_CCDD),
        ] {
            let mut h = Harness::long();
            h.regs.rax = u64::MAX;
            h.exit_on(er::IO_INSTRUCTION, ioq(0x71, size, true, false, false));
            let a = h.run_with(&mut bus);
            h.assert_retired(a);
            assert_eq!(h.regs.rax, want, "size {size}");
        }
    }

    #[test]
    fn in_from_an_unknown_port_reads_all_ones_and_is_counted() {
        let mut h = Harness::long();
        h.regs.rax = 0;
        let mut bus = IoBus::new();
        h.exit_on(er::IO_INSTRUCTION, ioq(0x1234, 2, true, false, false));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!(h.regs.rax, 0xFFFF);
        assert_eq!(bus.unknown_reads(), 1);
    }

    #[test]
    fn rep_outsb_prints_through_the_uart() {
        let mut h = Harness::long();
        h.ram[0x10_0FF9..0x10_1000].copy_from_slice(b"hello, ");
        h.ram[0x30_0000..0x30_0006].copy_from_slice(b"world\n");
        // Linear 0x10_0FF9 + 13 bytes crosses into the remapped page.
        h.regs.rsi = 0x10_0FF9;
        h.regs.rcx = 13;
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.vmcs.write(VmcsField::GuestDsBase, 0xDEAD_0000); // ignored in 64-bit mode
        h.exit_on(er::IO_INSTRUCTION, ioq(0x3F8, 1, false, true, true));
        let mut uart = Uart16550::new(0x3F8, VecSink::default());
        let mut bus = IoBus::new();
        bus.register(uart.ports(), &mut uart).unwrap();
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rcx, h.regs.rsi), (0, 0x10_1006));
        assert_eq!(uart.sink().0, b"hello, world\n");
    }

    #[test]
    fn outs_without_rep_uses_fs_base_and_df() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x500..=0x503, &mut p).unwrap();
        let mut h = Harness::long();
        h.ram[0x5010..0x5014].copy_from_slice(&0xCAFE_F00Du32.to_le_bytes());
        h.vmcs.write(VmcsField::GuestFsBase, 0x5000);
        h.vmcs
            .write(VmcsField::GuestRflags, 0x202 | Rflags::DF.bits());
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 4));
        h.regs.rsi = 0x10;
        h.regs.rcx = 77; // not touched without REP
        h.exit_on(er::IO_INSTRUCTION, ioq(0x500, 4, false, true, false));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rsi, h.regs.rcx), (0xC, 77));
        assert_eq!(p.writes, vec![(0x500, 4, 0xCAFE_F00D)]);
    }

    #[test]
    fn rep_insw_in_real_mode_wraps_di_at_16_bits() {
        let mut p = Probe {
            value: 0xBEEF,
            ..Probe::default()
        };
        let mut bus = IoBus::new();
        bus.register(0x1F0..=0x1F7, &mut p).unwrap();
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::GuestEsBase, 0x2_0000);
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(0, 3));
        h.regs.rdi = 0x7777_0000_FFFE;
        h.regs.rcx = 0x5555_0000_0002;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x1F0, 2, true, true, true));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        // Upper bits of RDI/RCX kept; DI wrapped to 2.
        assert_eq!(h.regs.rdi, 0x7777_0000_0002);
        assert_eq!(h.regs.rcx, 0x5555_0000_0000);
        assert_eq!(&h.ram[0x2_FFFE..0x3_0000], &[0xEF, 0xBE]);
        assert_eq!(&h.ram[0x2_0000..0x2_0002], &[0xEF, 0xBE]);
        assert_eq!(p.reads, 2);
    }

    #[test]
    fn rep_with_zero_count_just_retires() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.regs.rcx = 0;
        h.regs.rsi = 0x5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x3F8, 1, false, true, true));
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rsi, 0x5000);
    }

    #[test]
    fn long_rep_is_split_across_exits() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x80..=0x80, &mut p).unwrap();
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.regs.rsi = 0x20_0000;
        h.regs.rcx = 5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x80, 1, false, true, true));
        assert_eq!(h.run_with(&mut bus), ExitAction::Resume);
        assert_eq!((h.regs.rcx, h.rip()), (5000 - 4096, RIP));
        assert_eq!(h.injected(), 0);
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rcx, h.regs.rsi), (0, 0x20_0000 + 5000));
        assert_eq!(p.writes.len(), 5000);
    }

    #[test]
    fn address_size_32_in_long_mode_zero_extends() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(1, 3));
        h.regs.rsi = 0xFFFF_FFFF_0000_5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x99, 2, false, true, false));
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rsi, 0x5002);
    }

    #[test]
    fn string_io_to_unmapped_memory_injects_gp_after_partial_progress() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x300..=0x300, &mut p).unwrap();
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 0));
        // Two bytes fit in the mapped page before 0x10_2000 (not present).
        h.regs.rdi = 0x10_1FFE;
        h.regs.rcx = 4;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x300, 1, true, true, true));
        let a = h.run_with(&mut bus);
        h.assert_faulted(a, GP0);
        assert_eq!(h.vmcs.read(VmcsField::EntryExceptionErrorCode), 0);
        assert_eq!((h.regs.rdi, h.regs.rcx), (0x10_2000, 2));
        assert_eq!(h.stats.injected_exceptions, 1);
        // The faulting element did not read the port.
        assert_eq!(p.reads, 2);
    }

    #[test]
    fn string_io_outside_ram_in_real_mode_injects_gp_without_error_code() {
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(1, 3));
        h.regs.rsi = 0x8000_0000; // 32-bit address size, beyond RAM
        h.exit_on(er::IO_INSTRUCTION, ioq(0x300, 1, false, true, false));
        let a = h.run();
        h.assert_faulted(a, 0x8000_030D);
    }

    #[test]
    fn bogus_io_qualifications_end_the_guest() {
        let mut h = Harness::long();
        h.exit_on(er::IO_INSTRUCTION, 2); // size encoding 2 is undefined
        assert_eq!(h.run(), end(EndKind::Fatal));
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(3, 3));
        h.exit_on(er::IO_INSTRUCTION, ioq(1, 1, false, true, false));
        assert_eq!(h.run(), end(EndKind::Fatal));
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 7));
        h.exit_on(er::IO_INSTRUCTION, ioq(1, 1, false, true, false));
        assert_eq!(h.run(), end(EndKind::Fatal));
    }

    // ----- CPUID -----

    fn cpuid(h: &mut Harness, leaf: u64, subleaf: u64) -> [u64; 4] {
        h.regs.rax = leaf | 0xFFFF_FFFF_0000_0000;
        h.regs.rcx = subleaf;
        h.regs.rbx = u64::MAX;
        h.regs.rdx = u64::MAX;
        h.exit_on(er::CPUID, 0);
        h.vmcs.write(VmcsField::GuestRip, RIP);
        let a = h.run();
        h.assert_retired(a);
        [h.regs.rax, h.regs.rbx, h.regs.rcx, h.regs.rdx]
    }

    #[test]
    fn cpuid_leaf1_hides_vmx_and_apic_and_sets_hypervisor_bit() {
        let mut h = Harness::long();
        let [_, _, c, d] = cpuid(&mut h, 1, 0);
        assert_eq!(c & (1 << 5), 0, "VMX hidden");
        assert_ne!(c & (1 << 31), 0, "hypervisor bit");
        assert_eq!(c & ((1 << 21) | (1 << 24)), 0, "x2APIC/TSC deadline hidden");
        assert_eq!(c & (1 << 27), 0, "guest CR4.OSXSAVE is 0");
        assert_eq!(d & (1 << 9), 0, "APIC hidden");
        assert_eq!(d, u64::from(0xBFEB_FBFFu32 & !(1 << 9 | 1 << 7 | 1 << 14)));
        // Guest sets OSXSAVE; nested VMX keeps the VMX bit.
        h.vmcs
            .write(VmcsField::GuestCr4, 0x2020 | Cr4::OSXSAVE.bits());
        h.config.nested_vmx = true;
        let [_, _, c, _] = cpuid(&mut h, 1, 0);
        assert_ne!(c & (1 << 5), 0);
        assert_ne!(c & (1 << 27), 0);
    }

    #[test]
    fn cpuid_hypervisor_leaves() {
        let mut h = Harness::long();
        let r = cpuid(&mut h, 0x4000_0000, 0);
        assert_eq!(r[0], 0x4000_0001);
        let mut sig = Vec::new();
        for v in &r[1..] {
            sig.extend_from_slice(&(*v as u32).to_le_bytes());
        }
        assert_eq!(sig, b"sluicesluice");
        assert_eq!(cpuid(&mut h, 0x4000_0001, 0), [0; 4]);
        assert_eq!(cpuid(&mut h, 0x4000_0100, 3), [0; 4]);
    }

    #[test]
    fn cpuid_other_leaves_pass_through_zero_extended() {
        let mut h = Harness::long();
        assert_eq!(
            cpuid(&mut h, 0x8000_0008, 5),
            [0x8000_0008, 5, 0xCCCC, 0xDDDD]
        );
        // Leaf 7: OSPKE follows the guest's CR4.PKE.
        assert_eq!(cpuid(&mut h, 7, 0)[2] & 0x10, 0);
        h.vmcs.write(VmcsField::GuestCr4, 0x2020 | Cr4::PKE.bits());
        assert_eq!(cpuid(&mut h, 7, 0)[2] & 0x10, 0x10);
    }

    // ----- HLT, INVD/WBINVD, VMX instructions -----

    #[test]
    fn counters_hypercall_reports_io_exits_instructions_and_emulated() {
        let mut h = Harness::long();
        h.stats.count_exit(u32::from(er::IO_INSTRUCTION));
        h.stats.count_exit(u32::from(er::IO_INSTRUCTION));
        h.stats.io.instructions = 7;
        h.stats.io.emulated = 9;
        h.regs.rax = hypercall::COUNTERS;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!((h.regs.rax, h.regs.rbx, h.regs.rcx), (2, 7, 9));
    }

    #[test]
    fn cpuid_hides_the_tsc_and_frequency_leaves() {
        for leaf in [0x15, 0x16] {
            assert_eq!(filter_cpuid(leaf, 0, [1, 2, 3, 4], false, 0), [0; 4]);
        }
        assert_eq!(filter_cpuid(0x14, 0, [1, 2, 3, 4], false, 0), [1, 2, 3, 4]);
    }

    #[test]
    fn tsc_leaves_report_the_measured_rate() {
        // 200.016 MHz (Bochs): ECX * EBX / EAX is the rate; Linux computes
        // (ECX / 1000) * EBX / EAX in kHz.
        let [a, b, c, d] = tsc_frequency_leaf(0x15, 200_016_000);
        assert_eq!((a, b, d), (1, 2, 0));
        assert_eq!(u64::from(c) * u64::from(b) / u64::from(a), 200_016_000);
        assert_eq!(u64::from(c / 1000) * 2, 200_016);
        assert_eq!(tsc_frequency_leaf(0x16, 3_600_000_000), [3600, 3600, 0, 0]);
        // 8.5 GHz still fits; unknown and absurd rates are "not enumerated".
        assert_ne!(tsc_frequency_leaf(0x15, 8_500_000_000), [0; 4]);
        assert_eq!(tsc_frequency_leaf(0x15, 9_000_000_000), [0; 4]);
        assert_eq!(tsc_frequency_leaf(0x15, 0), [0; 4]);
        assert_eq!(tsc_frequency_leaf(0x16, 999_999), [0; 4]);
        assert_eq!(tsc_frequency_leaf(0x16, 70_000_000_000), [0; 4]);
    }

    #[test]
    fn cpuid_exits_answer_the_tsc_leaves_from_the_configuration() {
        let mut h = Harness::long();
        assert_eq!(
            cpuid(&mut h, 0x15, 0),
            [0; 4],
            "rate unknown: not enumerated"
        );
        h.config.tsc_hz = 2_000_000_000;
        assert_eq!(cpuid(&mut h, 0x15, 0), [1, 2, 1_000_000_000, 0]);
        assert_eq!(cpuid(&mut h, 0x16, 0), [2000, 2000, 0, 0]);
    }

    #[test]
    fn cpuid_hides_what_sluice_does_not_offer() {
        let l1 = filter_cpuid(1, 0, [0, 0, 0, u32::MAX], false, 0);
        assert_eq!(l1[3] & (1 << 7 | 1 << 14 | 1 << 9), 0, "MCE, MCA, APIC");
        let l7 = filter_cpuid(7, 0, [0, u32::MAX, u32::MAX, 0], false, 0);
        assert_eq!(l7[1] & 1 << 1, 0, "TSC_ADJUST");
        assert_eq!(l7[2] & 1 << 22, 0, "RDPID");
        let ext = filter_cpuid(0x8000_0001, 0, [0, 0, 0, u32::MAX], false, 0);
        assert_eq!(ext[3] & 1 << 27, 0, "RDTSCP");
        assert_eq!(ext[3] | 1 << 27, u32::MAX);
    }

    #[test]
    fn compacted_xsave_size_follows_xcr0_and_alignment() {
        // Skylake-X sizes: AVX 256, opmask 64, ZMM_Hi256 512, Hi16_ZMM 1024.
        let sizes = |i: u32| match i {
            2 => (256, 0),
            5 => (64, 0),
            6 => (512, 0),
            7 => (1024, 0),
            9 => (8, 0),
            _ => (0, 0),
        };
        assert_eq!(compacted_xsave_size(0x3, sizes), 576);
        assert_eq!(compacted_xsave_size(0x7, sizes), 832);
        assert_eq!(compacted_xsave_size(0xE7, sizes), 2432);
        // An aligned component after an odd-sized one starts on 64 bytes.
        let aligned = |i: u32| match i {
            9 => (8, 0),
            10 => (64, 0b10),
            _ => (0, 0),
        };
        assert_eq!(compacted_xsave_size(0x603, aligned), 576 + 64 + 64);
    }

    #[test]
    fn cpuid_leaf_d1_reports_the_compacted_size_of_the_guests_xcr0() {
        let mut h = Harness::long();
        h.vmcs
            .write(VmcsField::GuestCr4, 0x2020 | Cr4::OSXSAVE.bits());
        h.regs.rcx = 0;
        h.regs.rax = 0x7;
        h.regs.rdx = 0;
        h.exit_on(er::XSETBV, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.msrs.xcr0, 0x7);
        let [eax, ebx, ..] = cpuid(&mut h, 0xD, 1);
        assert_eq!(eax & 0b1010, 0b0010, "XSAVEC stays, XSAVES hidden");
        assert_eq!(ebx, 576 + 256);
    }

    #[test]
    fn cpuid_hides_pmu_and_monitor_mwait() {
        let l1 = filter_cpuid(1, 0, [0, 0, u32::MAX, 0], false, 0);
        assert_eq!(l1[2] & (1 << 15 | 1 << 3), 0, "PDCM, MONITOR");
        assert_ne!(l1[2] & 1, 0, "SSE3 stays");
        assert_eq!(
            filter_cpuid(0xA, 0, [0x0703_0804, 0, 0, 0x603], false, 0),
            [0; 4]
        );
        assert_eq!(
            filter_cpuid(5, 0, [0x40, 0x40, 3, 0x1120], false, 0),
            [0; 4]
        );
    }

    #[test]
    fn cpuid_hides_aperf_mperf_and_xsaves() {
        let l6 = filter_cpuid(6, 0, [0x77, 2, 0x9, 0], false, 0);
        assert_eq!(l6, [0x4, 0, 0, 0], "only ARAT stays");
        let xd1 = filter_cpuid(0xD, 1, [0xF, 0x240, 0x100, 0x1], false, 0);
        assert_eq!(xd1, [0x7, 0x240, 0, 0], "XSAVES and IA32_XSS bits hidden");
        // Sub-leaf 0 is untouched.
        assert_eq!(filter_cpuid(0xD, 0, [7, 8, 9, 0], false, 0), [7, 8, 9, 0]);
    }

    #[test]
    fn msrs_that_raise_gp_are_counted_per_number() {
        let mut h = Harness::long();
        for (write, msr) in [(false, 0xE8), (false, 0xE8), (true, 0xDA0), (false, 0x1B)] {
            h.regs.rcx = msr;
            h.regs.rax = 0;
            h.regs.rdx = 0;
            h.exit_on(if write { er::WRMSR } else { er::RDMSR }, 0);
            let a = h.run();
            h.assert_faulted(a, 0x8000_0B0D);
            h.vmcs.write(VmcsField::EntryInterruptionInfo, 0);
        }
        // A readable MSR is not counted.
        h.regs.rcx = u64::from(msr::IA32_PAT);
        h.exit_on(er::RDMSR, 0);
        let a = h.run();
        h.assert_retired(a);
        let reads = h.stats.msr_gp_reads.sorted();
        assert_eq!(reads[0].map(|e| (e.msr, e.count)), Some((0xE8, 2)));
        assert_eq!(reads[1].map(|e| (e.msr, e.count)), Some((0x1B, 1)));
        assert_eq!(reads[2], None);
        let writes = h.stats.msr_gp_writes.sorted();
        assert_eq!(writes[0].map(|e| (e.msr, e.count)), Some((0xDA0, 1)));
        assert_eq!(h.stats.unknown_msrs, 3, "APIC_BASE is refused on purpose");
    }

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

    // ----- VMCALL -----

    #[test]
    fn hypercall_print_crosses_a_page_boundary() {
        let mut h = Harness::long();
        h.ram[0x10_0FFA..0x10_1000].copy_from_slice(b"hello ");
        h.ram[0x30_0000..0x30_0006].copy_from_slice(b"world!");
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x10_0FFA;
        h.regs.rcx = 12;
        h.vmcs.write(VmcsField::ExitInstructionLength, 3);
        h.exit_on(er::VMCALL, 0);
        assert_eq!(h.run(), ExitAction::Resume);
        assert_eq!(h.regs.rax, 0);
        assert_eq!(h.host.console, b"hello world!");
        assert_eq!(h.rip(), RIP + 3);
    }

    #[test]
    fn hypercall_print_long_buffer_in_chunks() {
        let mut h = Harness::long();
        for (i, b) in h.ram[0x20_0000..0x20_1000].iter_mut().enumerate() {
            *b = i as u8;
        }
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x20_0000;
        h.regs.rcx = hypercall::PRINT_MAX;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rax, 0);
        assert_eq!(h.host.console.len(), 4096);
        assert_eq!(&h.host.console[..], &h.ram[0x20_0000..0x20_1000]);
    }

    #[test]
    fn hypercall_errors() {
        // (rax, rbx, rcx): unmapped page, too long, non-canonical, unknown function.
        let cases = [
            (hypercall::PRINT, 0x10_1FFF, 2),
            (hypercall::PRINT, 0x20_0000, hypercall::PRINT_MAX + 1),
            (hypercall::PRINT, 0x8000_0000_0000, 1),
            (hypercall::PRINT, u64::MAX, u64::MAX),
            (99, 0, 0),
        ];
        for (rax, rbx, rcx) in cases {
            let mut h = Harness::long();
            h.regs.rax = rax;
            h.regs.rbx = rbx;
            h.regs.rcx = rcx;
            h.exit_on(er::VMCALL, 0);
            let a = h.run();
            h.assert_retired(a);
            assert_eq!(h.regs.rax, hypercall::ERROR);
            assert!(h.host.console.is_empty(), "nothing printed");
        }
    }

    #[test]
    fn hypercall_at_cpl3_is_refused() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestSsAccessRights, 0xC0F3); // DPL 3
        h.regs.rax = hypercall::EXIT;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rax, hypercall::ERROR);
    }

    #[test]
    fn hypercall_exit_ends_with_the_status() {
        let mut h = Harness::long();
        h.regs.rax = hypercall::EXIT;
        h.regs.rbx = 0xFFFF_FFFF_0000_002A;
        h.exit_on(er::VMCALL, 0);
        assert_eq!(
            h.run(),
            ExitAction::End {
                kind: EndKind::Hypercall,
                exit_code: 42
            }
        );
        assert_eq!(
            h.describe(EndKind::Hypercall),
            "sluice: guest ended by hypercall at rip=0x7002\n"
        );
    }

    #[test]
    fn hypercall_print_in_real_mode_uses_physical_addresses() {
        let mut h = Harness::real();
        h.ram[0x9_0000..0x9_0002].copy_from_slice(b"ok");
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x9_0000;
        h.regs.rcx = 2;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.host.console, b"ok");
    }

    // ----- MSRs -----

    fn rdmsr(h: &mut Harness, index: u32) -> ExitAction {
        h.vmcs.write(VmcsField::GuestRip, RIP);
        h.regs.rcx = 0xFFFF_FFFF_0000_0000 | u64::from(index);
        h.regs.rax = u64::MAX;
        h.regs.rdx = u64::MAX;
        h.exit_on(er::RDMSR, 0).run()
    }

    fn wrmsr(h: &mut Harness, index: u32, value: u64) -> ExitAction {
        h.vmcs.write(VmcsField::GuestRip, RIP);
        h.regs.rcx = u64::from(index);
        h.regs.rax = 0xFFFF_FFFF_0000_0000 | (value & 0xFFFF_FFFF);
        h.regs.rdx = value >> 32;
        h.exit_on(er::WRMSR, 0).run()
    }

    fn read_ok(h: &mut Harness, index: u32) -> u64 {
        let a = rdmsr(h, index);
        h.assert_retired(a);
        assert_eq!(h.regs.rax >> 32, 0);
        assert_eq!(h.regs.rdx >> 32, 0);
        (h.regs.rdx << 32) | h.regs.rax
    }

    fn write_ok(h: &mut Harness, index: u32, value: u64) {
        let a = wrmsr(h, index, value);
        h.assert_retired(a);
    }

    fn write_gp(h: &mut Harness, index: u32, value: u64) {
        let a = wrmsr(h, index, value);
        h.assert_faulted(a, GP0);
    }

    #[test]
    fn msr_tsc_reads_the_host_counter_with_offset() {
        let mut h = Harness::long();
        assert_eq!(read_ok(&mut h, msr::IA32_TIME_STAMP_COUNTER), 0x1_0000_0000);
        h.vmcs.write(VmcsField::PrimaryProcControls, 1 << 3);
        h.vmcs.write(VmcsField::TscOffset, 5u64.wrapping_neg());
        assert_eq!(read_ok(&mut h, msr::IA32_TIME_STAMP_COUNTER), 0xFFFF_FFFB);
        write_ok(&mut h, msr::IA32_TIME_STAMP_COUNTER, 0);
    }

    #[test]
    fn msr_vmcs_backed_round_trips() {
        let mut h = Harness::long();
        let cases = [
            (msr::IA32_SYSENTER_CS, 0x10, VmcsField::GuestIa32SysenterCs),
            (
                msr::IA32_SYSENTER_ESP,
                0xFFFF_8000_0000_1000,
                VmcsField::GuestIa32SysenterEsp,
            ),
            (
                msr::IA32_SYSENTER_EIP,
                0x40_1000,
                VmcsField::GuestIa32SysenterEip,
            ),
            (msr::IA32_FS_BASE, 0x7FFF_0000_0000, VmcsField::GuestFsBase),
            (
                msr::IA32_GS_BASE,
                0xFFFF_8880_0000_0000,
                VmcsField::GuestGsBase,
            ),
            (
                msr::IA32_PAT,
                0x0007_0406_0007_0406,
                VmcsField::GuestIa32Pat,
            ),
        ];
        for (index, value, field) in cases {
            write_ok(&mut h, index, value);
            assert_eq!(h.vmcs.read(field), value);
            assert_eq!(read_ok(&mut h, index), value);
        }
        // Non-canonical bases and invalid PAT types fault.
        write_gp(&mut h, msr::IA32_FS_BASE, 0x8000_0000_0000);
        write_gp(&mut h, msr::IA32_SYSENTER_EIP, 0x0001_0000_0000_0000);
        write_gp(&mut h, msr::IA32_PAT, 0x0007_0406_0007_0402);
        assert_eq!(h.vmcs.read(VmcsField::GuestFsBase), 0x7FFF_0000_0000);
        // With LA57 57-bit addresses are canonical.
        h.vmcs.write(VmcsField::GuestCr4, 0x2020 | Cr4::LA57.bits());
        write_ok(&mut h, msr::IA32_FS_BASE, 0x8000_0000_0000);
    }

    #[test]
    fn msr_syscall_msrs_live_in_the_msr_file() {
        let mut h = Harness::long();
        write_ok(&mut h, msr::IA32_KERNEL_GS_BASE, 0xFFFF_8880_1234_0000);
        write_ok(&mut h, msr::IA32_STAR, 0x0023_0010_0000_0000);
        write_ok(&mut h, msr::IA32_LSTAR, 0xFFFF_FFFF_8100_0000);
        write_ok(&mut h, msr::IA32_CSTAR, 0xFFFF_FFFF_8100_1000);
        write_ok(&mut h, msr::IA32_FMASK, 0x4_7700);
        assert_eq!(
            h.msrs,
            MsrFile {
                kernel_gs_base: 0xFFFF_8880_1234_0000,
                star: 0x0023_0010_0000_0000,
                lstar: 0xFFFF_FFFF_8100_0000,
                cstar: 0xFFFF_FFFF_8100_1000,
                sfmask: 0x4_7700,
                xcr0: 0,
            }
        );
        assert_eq!(read_ok(&mut h, msr::IA32_LSTAR), 0xFFFF_FFFF_8100_0000);
        assert_eq!(read_ok(&mut h, msr::IA32_STAR), 0x0023_0010_0000_0000);
        assert_eq!(read_ok(&mut h, msr::IA32_FMASK), 0x4_7700);
        write_gp(&mut h, msr::IA32_LSTAR, 0x0000_8000_0000_0000);
        assert_eq!(h.msrs.lstar, 0xFFFF_FFFF_8100_0000);
    }

    #[test]
    fn msr_fixed_values() {
        let mut h = Harness::long();
        assert_eq!(read_ok(&mut h, msr::IA32_MISC_ENABLE), 1);
        write_ok(&mut h, msr::IA32_MISC_ENABLE, 0x850089);
        assert_eq!(read_ok(&mut h, msr::IA32_MISC_ENABLE), 1);
        assert_eq!(read_ok(&mut h, msr::IA32_MTRRCAP), 0);
        assert_eq!(read_ok(&mut h, msr::IA32_MTRR_DEF_TYPE), 0);
        assert_eq!(read_ok(&mut h, msr::IA32_BIOS_SIGN_ID), 0);
        write_ok(&mut h, msr::IA32_BIOS_SIGN_ID, 0);
        write_gp(&mut h, msr::IA32_MTRRCAP, 0);
        assert_eq!(h.stats.unknown_msrs, 0);
    }

    #[test]
    fn msr_apic_base_and_unknown_msrs_raise_gp() {
        let mut h = Harness::long();
        let a = rdmsr(&mut h, msr::IA32_APIC_BASE);
        h.assert_faulted(a, GP0);
        // RAX/RDX untouched on a fault.
        assert_eq!((h.regs.rax, h.regs.rdx), (u64::MAX, u64::MAX));
        write_gp(&mut h, msr::IA32_APIC_BASE, 0xFEE0_0900);
        assert_eq!(h.stats.unknown_msrs, 0);
        let a = rdmsr(&mut h, 0x1234);
        h.assert_faulted(a, GP0);
        write_gp(&mut h, 0xC001_0015, 0);
        assert_eq!(h.stats.unknown_msrs, 2);
        assert_eq!(h.stats.injected_exceptions, 4);
    }

    #[test]
    fn msr_efer_writes_keep_lma_and_check_bits() {
        let mut h = Harness::long();
        let efer = Efer::LME.bits() | Efer::LMA.bits() | Efer::NXE.bits() | 1;
        assert_eq!(read_ok(&mut h, msr::IA32_EFER), efer);
        // Clearing SCE and NXE is fine; LMA in the written value is ignored.
        write_ok(&mut h, msr::IA32_EFER, Efer::LME.bits());
        assert_eq!(
            h.vmcs.read(VmcsField::GuestIa32Efer),
            Efer::LME.bits() | Efer::LMA.bits()
        );
        // Reserved bit, and LME change with paging on.
        write_gp(&mut h, msr::IA32_EFER, Efer::LME.bits() | (1 << 12));
        write_gp(&mut h, msr::IA32_EFER, 0);
        // With paging off LME may change.
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::GuestIa32Efer, 0);
        write_ok(
            &mut h,
            msr::IA32_EFER,
            Efer::LME.bits() | Efer::NXE.bits() | 1,
        );
        assert_eq!(
            h.vmcs.read(VmcsField::GuestIa32Efer),
            Efer::LME.bits() | Efer::NXE.bits() | 1
        );
        write_ok(&mut h, msr::IA32_EFER, Efer::LMA.bits());
        assert_eq!(h.vmcs.read(VmcsField::GuestIa32Efer), 0);
    }

    // ----- XSETBV -----

    fn xsetbv(h: &mut Harness, xcr: u64, value: u64) -> ExitAction {
        h.vmcs.write(VmcsField::GuestRip, RIP);
        h.regs.rcx = xcr;
        h.regs.rax = value & 0xFFFF_FFFF;
        h.regs.rdx = value >> 32;
        h.exit_on(er::XSETBV, 0).run()
    }

    #[test]
    fn xsetbv_valid_values_reach_the_host() {
        let mut h = Harness::long();
        let a = xsetbv(&mut h, 0, 0x7);
        h.assert_retired(a);
        assert_eq!(h.host.xcr0, Some(0x7));
        let a = xsetbv(&mut h, 0, 0xE7);
        h.assert_retired(a);
        assert_eq!(h.host.xcr0, Some(0xE7));
    }

    #[test]
    fn xsetbv_invalid_values_raise_gp() {
        // ECX != 0, no x87, unsupported bit (3), AVX without SSE, partial AVX-512,
        // AVX-512 without AVX.
        for (xcr, v) in [(1, 0x7), (0, 0x6), (0, 0xB), (0, 0x5), (0, 0x27), (0, 0xE3)] {
            let mut h = Harness::long();
            let a = xsetbv(&mut h, xcr, v);
            h.assert_faulted(a, GP0);
            assert_eq!(h.host.xcr0, None, "{xcr} {v:#x}");
        }
        assert!(xcr0_valid(0x6_0007, 0x6_0007));
        assert!(!xcr0_valid(0x2_0007, 0x6_0007));
    }

    // ----- Control registers -----

    /// MOV to CRn from register `gpr`.
    fn mov_to_cr(h: &mut Harness, cr: u64, gpr: u8, value: u64) -> ExitAction {
        h.vmcs.write(VmcsField::GuestRip, RIP);
        if !h.regs.set(gpr, value) {
            h.vmcs.write(VmcsField::GuestRsp, value);
        }
        h.exit_on(er::CR_ACCESS, cr | (u64::from(gpr) << 8)).run()
    }

    #[test]
    fn real_mode_to_protected_mode_keeps_fixed_bits_in_the_real_cr0() {
        let mut h = Harness::real();
        let a = mov_to_cr(&mut h, 0, 0, 0x11);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x11);
        // NE forced by Cr0::FIXED0.bits(); PG exempt with unrestricted guest.
        assert_eq!(h.vmcs.read(VmcsField::GuestCr0), 0x31);
        assert_eq!(h.vmcs.read(VmcsField::EntryControls), 0);
        // MOV from CR0 sees the shadow for the masked bits (NE clear).
        h.vmcs.write(VmcsField::GuestRip, RIP);
        h.regs.rbx = u64::MAX;
        let a = h.exit_on(er::CR_ACCESS, (1 << 4) | (3 << 8)).run();
        h.assert_retired(a);
        assert_eq!(h.regs.rbx, 0x11);
    }

    #[test]
    fn without_unrestricted_guest_pe_and_pg_stay_set() {
        let mut h = Harness::real();
        h.config.unrestricted_guest = false;
        let a = mov_to_cr(&mut h, 0, 0, 0x10);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestCr0), 0x8000_0031);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x10);
    }

    #[test]
    fn enabling_paging_with_lme_activates_ia32e_mode() {
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::GuestCr0, 0x31);
        h.vmcs.write(VmcsField::Cr0ReadShadow, 0x11);
        h.vmcs.write(VmcsField::GuestCr4, 0x2020);
        h.vmcs.write(VmcsField::Cr4ReadShadow, 0x20);
        h.vmcs.write(VmcsField::GuestIa32Efer, Efer::LME.bits());
        h.vmcs.write(VmcsField::GuestCsAccessRights, 0xC09B);
        let a = mov_to_cr(&mut h, 0, 1, 0x8000_0011);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestCr0), 0x8000_0031);
        assert_eq!(
            h.vmcs.read(VmcsField::GuestIa32Efer),
            Efer::LME.bits() | Efer::LMA.bits()
        );
        assert_eq!(h.vmcs.read(VmcsField::EntryControls), IA32E);
        // Back out from compatibility mode (CS.L = 0): LMA and the control clear.
        let a = mov_to_cr(&mut h, 0, 1, 0x11);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestIa32Efer), Efer::LME.bits());
        assert_eq!(h.vmcs.read(VmcsField::EntryControls), 0);
    }

    #[test]
    fn enabling_paging_without_lme_stays_legacy_and_loads_pae_pdptes() {
        let mut h = Harness::real();
        put64(&mut h.ram, 0x5000, 0x6001);
        put64(&mut h.ram, 0x5008, 0x7001);
        h.vmcs.write(VmcsField::GuestCr3, 0x5000);
        h.vmcs.write(VmcsField::GuestCr4, 0x2020);
        h.vmcs.write(VmcsField::Cr4ReadShadow, 0x20);
        let a = mov_to_cr(&mut h, 0, 0, 0x8000_0011);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::EntryControls), 0);
        assert_eq!(h.vmcs.read(VmcsField::GuestPdpte0), 0x6001);
        assert_eq!(h.vmcs.read(VmcsField::GuestPdpte1), 0x7001);
        // A reserved bit in a present PDPTE makes the next load fault.
        put64(&mut h.ram, 0x5010, 0x8001 | (1 << 5));
        let a = mov_to_cr(&mut h, 3, 0, 0x5000);
        h.assert_faulted(a, GP0);
        put64(&mut h.ram, 0x5010, 0x8001);
        let a = mov_to_cr(&mut h, 3, 0, 0x5000);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestPdpte2), 0x8001);
    }

    #[test]
    fn invalid_cr0_values_raise_gp() {
        // Upper bits in 64-bit mode.
        let mut h = Harness::long();
        let a = mov_to_cr(&mut h, 0, 0, (1 << 32) | 0x8000_0011);
        h.assert_faulted(a, GP0);
        // PG without PE, NW without CD (compatibility mode).
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestCsAccessRights, 0xC09B);
        let before = h.vmcs.read(VmcsField::GuestCr0);
        for v in [0x8000_0010, 0xA000_0011] {
            let a = mov_to_cr(&mut h, 0, 0, v);
            h.assert_faulted(a, GP0);
            assert_eq!(h.vmcs.read(VmcsField::GuestCr0), before);
        }
        // Clearing PG in 64-bit mode.
        let mut h = Harness::long();
        let a = mov_to_cr(&mut h, 0, 0, 0x11);
        h.assert_faulted(a, GP0);
        // PG with LME but without PAE.
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::GuestIa32Efer, Efer::LME.bits());
        let a = mov_to_cr(&mut h, 0, 0, 0x8000_0011);
        // Real mode: #GP without an error code.
        h.assert_faulted(a, 0x8000_030D);
    }

    #[test]
    fn cr4_writes_go_to_shadow_and_real_register() {
        let mut h = Harness::long();
        let a = mov_to_cr(&mut h, 4, 4, 0x20 | Cr4::OSXSAVE.bits()); // from RSP
        h.assert_retired(a);
        assert_eq!(
            h.vmcs.read(VmcsField::Cr4ReadShadow),
            0x20 | Cr4::OSXSAVE.bits()
        );
        assert_eq!(
            h.vmcs.read(VmcsField::GuestCr4),
            0x2020 | Cr4::OSXSAVE.bits()
        );
        // MOV from CR4 into R9 sees the shadow (VMXE clear).
        h.vmcs.write(VmcsField::GuestRip, RIP);
        let a = h.exit_on(er::CR_ACCESS, 4 | (1 << 4) | (9 << 8)).run();
        h.assert_retired(a);
        assert_eq!(h.regs.r9, 0x20 | Cr4::OSXSAVE.bits());
    }

    #[test]
    fn invalid_cr4_values_raise_gp() {
        // Reserved bit, unsupported (above FIXED1), VMXE without nested VMX,
        // clearing PAE in IA-32e mode, toggling LA57 in IA-32e mode.
        for v in [
            0x20 | (1 << 15),
            0x20 | (1 << 24),
            0x20 | Cr4::VMXE.bits(),
            0,
            0x20 | Cr4::LA57.bits(),
        ] {
            let mut h = Harness::long();
            let a = mov_to_cr(&mut h, 4, 0, v);
            h.assert_faulted(a, GP0);
            assert_eq!(h.vmcs.read(VmcsField::GuestCr4), 0x2020);
        }
        // Nested VMX allows VMXE.
        let mut h = Harness::long();
        h.config.nested_vmx = true;
        let a = mov_to_cr(&mut h, 4, 0, 0x20 | Cr4::VMXE.bits());
        h.assert_retired(a);
        // PCIDE needs CR3[11:0] = 0.
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestCr3, 0x1001);
        let a = mov_to_cr(&mut h, 4, 0, 0x20 | Cr4::PCIDE.bits());
        h.assert_faulted(a, GP0);
    }

    #[test]
    fn clts_and_lmsw() {
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::Cr0ReadShadow, 0x19);
        h.vmcs.write(VmcsField::GuestCr0, 0x39);
        h.vmcs.write(VmcsField::Cr0GuestHostMask, 0x8000_0029);
        let a = h.exit_on(er::CR_ACCESS, 2 << 4).run();
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x11);
        assert_eq!(h.vmcs.read(VmcsField::GuestCr0) & Cr0::TS.bits(), 0);
        // LMSW 0 cannot clear PE; LMSW 0xE sets MP, EM, TS.
        h.vmcs.write(VmcsField::GuestRip, RIP);
        let a = h.exit_on(er::CR_ACCESS, 3 << 4).run();
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x11);
        h.vmcs.write(VmcsField::GuestRip, RIP);
        let a = h
            .exit_on(er::CR_ACCESS, (0xE << 16) | (1 << 6) | (3 << 4))
            .run();
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x1F);
    }

    #[test]
    fn cr3_and_cr8_accesses() {
        let mut h = Harness::long();
        let a = mov_to_cr(&mut h, 3, 2, 0x5000);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::GuestCr3), 0x5000);
        let a = mov_to_cr(&mut h, 3, 2, 1 << 60);
        h.assert_faulted(a, GP0);
        h.vmcs.write(VmcsField::GuestRip, RIP);
        h.regs.rcx = 7;
        let a = h.exit_on(er::CR_ACCESS, 3 | (1 << 4) | (1 << 8)).run();
        h.assert_retired(a);
        assert_eq!(h.regs.rcx, 0x5000);
        let a = mov_to_cr(&mut h, 8, 0, 0xF);
        h.assert_retired(a);
        let a = mov_to_cr(&mut h, 5, 0, 0);
        h.assert_faulted(a, UD_INFO);
    }

    #[test]
    fn cr_writes_in_32bit_mode_use_the_low_half_of_the_register() {
        let mut h = Harness::real();
        let a = mov_to_cr(&mut h, 0, 0, 0xFFFF_FFFF_0000_0011);
        h.assert_retired(a);
        assert_eq!(h.vmcs.read(VmcsField::Cr0ReadShadow), 0x11);
    }

    // ----- Events, ends -----

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
        assert_eq!(h.stats.exit_count(33), 1);
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
    fn unhandled_exits_are_fatal_and_named() {
        let mut h = Harness::long();
        h.exit_on(er::RDTSC, 0x42);
        assert_eq!(h.run(), end(EndKind::Fatal));
        assert_eq!(
            h.describe(EndKind::Fatal),
            "sluice: guest stopped: unhandled VM exit rdtsc (reason 16) at rip=0x7000 qualification=0x42\n"
        );
        assert_eq!(h.stats.exit_count(er::RDTSC), 1);
    }

    #[test]
    fn helpers() {
        assert!(pat_valid(0x0007_0406_0007_0406));
        assert!(!pat_valid(0x0000_0000_0000_0002));
        assert!(!pat_valid(0x0800_0000_0000_0000));
        assert_eq!(
            update_addr_reg(0xAAAA_0000_FFFF, 1, Width::W16),
            0xAAAA_0000_0000
        );
        assert_eq!(update_addr_reg(0xAAAA_FFFF_FFFF, 1, Width::W32), 0);
        assert_eq!(update_addr_reg(0, u64::MAX, Width::W64), u64::MAX);
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
