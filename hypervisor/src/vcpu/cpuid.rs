//! CPUID as the guest sees it, and XSETBV: what the virtual CPU offers (SDM Vol. 2A
//! "CPUID—CPU Identification", the leaves cited at each item), the TSC-rate leaves from
//! the rate sluice measured, and the processor extended state (XCR0, SDM Vol. 1 13.3
//! "Enabling the XSAVE Feature Set and XSAVE-Enabled Features").

use crate::vcpu::exits::{ExitAction, ExitContext, Fault, HostOps};
use crate::vmx::vmcs::Vmcs;
use crate::x86::guest_mem::GuestMemory;
use crate::x86::Cr4;

/// CPUID leaves 15H and 16H (SDM Vol. 2A "CPUID—CPU Identification", its "Time Stamp
/// Counter and Nominal Core Crystal Clock Information Leaf" and "Processor Frequency
/// Information Leaf") for a guest whose TSC runs at `tsc_hz`, the rate sluice measured:
/// what the guest really gets. 15H says TSC = ECX * EBX / EAX with ECX the crystal in
/// Hz; a crystal of half the TSC rate and a ratio of 2/1 keep ECX within 32 bits up to
/// 8.5 GHz. With it a guest knows its TSC rate without timing the 8254 through exits
/// (Linux marks the frequency as known and skips its PIT calibration loops, whose
/// timing checks an exit per port read can fail). 16H gives the same rate in MHz as
/// base and maximum frequency; the bus frequency (ECX) is left 0, "not enumerated".
/// Unknown or unrepresentable rates leave both leaves at 0, which the SDM defines as
/// "not enumerated".
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
            // MONITOR/MWAIT: sluice does not intercept MWAIT, and a guest idling in it
            // sits in a C-state where the VMX-preemption timer may stop counting
            // (SDM Vol. 3C 26.5.1 "VMX-Preemption Timer": it counts in C0-C2 only), so
            // timer interrupts could come late. Without it the guest idles in HLT,
            // which sluice handles; and Linux's intel_idle, which writes the
            // model-specific MSR_POWER_CTL (0x1FC), stays out.
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
        // Thermal and power management (SDM Vol. 2A "CPUID—CPU Identification", leaf
        // 06H): nearly every bit announces MSRs sluice does not offer: ECX[0]
        // IA32_MPERF/IA32_APERF (which Linux reads for frequency scaling), ECX[3]
        // IA32_ENERGY_PERF_BIAS, EAX[0] and [6] the thermal status MSRs, EAX[4]
        // power-limit notification, EAX[7-11] HWP. Only ARAT (EAX[2], the APIC timer
        // keeps running in deep C-states) names no MSR; EBX (interrupt thresholds) goes
        // with the thermal MSRs.
        6 => [eax & LEAF6_EAX_ARAT, 0, 0, 0],
        // MONITOR/MWAIT parameters go with the hidden MONITOR bit (SDM Vol. 2A
        // "CPUID—CPU Identification", leaf 05H).
        5 => [0; 4],
        // Architectural performance monitoring (SDM Vol. 2A "CPUID—CPU Identification",
        // leaf 0AH; SDM Vol. 3B 20.2 "Architectural Performance Monitoring"):
        // version 0 = none. The counters' MSRs (IA32_PMCx, IA32_PERFEVTSELx, the fixed
        // counters) are not offered, so Linux runs software events only.
        0xA => [0; 4],
        // Processor extended state, sub-leaf 1 (SDM Vol. 2A "CPUID—CPU Identification",
        // leaf 0DH; SDM Vol. 1 13.2 "Enumeration of CPU Support for XSAVE Instructions
        // and XSAVE-Supported Features"): EAX[3] announces XSAVES/XRSTORS and IA32_XSS,
        // ECX:EDX the IA32_XSS bits. IA32_XSS is not switched between host and guest by
        // VMX and sluice refuses it (#GP), so XSAVES is hidden and Linux uses
        // XSAVEC/XSAVEOPT with user states only. EBX (size for XCR0 | IA32_XSS) stays:
        // the host's IA32_XSS is 0.
        0xD if subleaf == 1 => [eax & !LEAFD1_EAX_XSAVES, ebx, 0, 0],
        // RDTSCP needs IA32_TSC_AUX, which is not offered.
        0x8000_0001 => [eax, ebx, ecx, edx & !EXT_EDX_RDTSCP],
        _ => [eax, ebx, ecx, edx],
    }
}

/// CPUID.(EAX=0DH,ECX=1):EAX[1], XSAVEC (compacted XSAVE format).
const LEAFD1_EAX_XSAVEC: u32 = 1 << 1;

/// CPUID.(EAX=0DH,ECX=1):EBX, the size of an XSAVE area in the compacted format for the
/// state components enabled in XCR0 | IA32_XSS (IA32_XSS is 0 for sluice's guests),
/// computed as SDM Vol. 1 13.4.3 "Extended Region of an XSAVE Area" lays the compacted
/// format out: the legacy region and header (576 bytes), then each enabled component
/// from 2 up in order, starting on a 64-byte boundary when CPUID.(EAX=0DH,ECX=i):ECX[1]
/// says it is aligned. `component(i)` gives CPUID.(EAX=0DH,ECX=i) EAX (size) and ECX
/// (flags). A processor reports this itself; sluice computes it because an emulator
/// (Bochs) reports the standard-format size there, which Linux then flags as an XSAVE
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

/// Whether an XCR0 value is one XSETBV accepts (SDM Vol. 1 13.3 "Enabling the XSAVE
/// Feature Set and XSAVE-Enabled Features" and SDM Vol. 2C "XSETBV—Set Extended Control
/// Register"): x87 set, only bits CPUID.(EAX=0DH,ECX=0) reports, AVX needs SSE, the
/// AVX-512 trio all or nothing and only with AVX, AMX TILECFG/TILEDATA together.
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

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // CPUID (10), HLT (12), INVD/WBINVD (13/54), VMX instructions

    pub(super) fn cpuid(&mut self) -> ExitAction {
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

    // XSETBV (55)

    pub(super) fn xsetbv(&mut self) -> ExitAction {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

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
}
