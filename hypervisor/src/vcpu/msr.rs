//! RDMSR and WRMSR: the MSRs the virtual CPU has (SDM Vol. 4 chapter 2 "Model-Specific
//! Registers (MSRs)"), backed by VMCS guest-state fields or by [`MsrFile`](super::exits::MsrFile); every other
//! MSR raises #GP as on a processor without it, and is counted.

use crate::vcpu::exits::{ExitAction, ExitContext, Fault, HostOps};
use crate::vmx::caps::PrimaryControls;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::GuestMemory;
use crate::x86::{is_canonical, msr, Cr0, Cr4, Efer};

/// Every PAT entry must be a valid memory type: 0, 1, 4, 5, 6 or 7 (SDM Vol. 3A 12.12.2
/// "IA32_PAT MSR").
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

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // RDMSR (31), WRMSR (32)

    pub(super) fn note_unknown_msr(&mut self) -> Result<u64, Fault> {
        self.stats.unknown_msrs = self.stats.unknown_msrs.saturating_add(1);
        Err(Fault::Gp)
    }

    pub(super) fn rdmsr(&mut self) -> ExitAction {
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

    pub(super) fn read_msr(&mut self, index: u32) -> Result<u64, Fault> {
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

    pub(super) fn wrmsr(&mut self) -> ExitAction {
        let value = (self.regs.rdx << 32) | (self.regs.rax & 0xFFFF_FFFF);
        let index = self.regs.rcx as u32;
        let r = self.write_msr(index, value);
        if r == Err(Fault::Gp) {
            self.stats.note_msr_gp(index, true);
        }
        self.complete(r)
    }

    /// Canonical for the guest's linear-address width (57 bits with CR4.LA57).
    pub(super) fn canonical(&self, v: u64) -> Result<(), Fault> {
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

    pub(super) fn write_msr(&mut self, index: u32, v: u64) -> Result<(), Fault> {
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
            // VM entry requires these to be canonical (SDM Vol. 3C 27.3.1.1 "Checks on
            // Guest Control Registers, Debug Registers, and MSRs" for the SYSENTER
            // ESP/EIP, 27.3.1.2 "Checks on Guest Segment Registers" for the FS/GS
            // bases).
            self.canonical(v)?;
        }
        self.vmcs.write(field, v);
        Ok(())
    }

    /// WRMSR IA32_EFER: SCE, LME, NXE are writable when the host CPU has them;
    /// LMA is kept as it is (the processor sets it from LME and CR0.PG); LME
    /// cannot change while paging is on (SDM Vol. 3A 10.8.5 "Initializing IA-32e Mode",
    /// 2.2.1 "Extended Feature Enable Register").
    pub(super) fn write_efer(&mut self, v: u64) -> Result<(), Fault> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

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

    #[test]
    fn pat_entries_must_be_memory_types() {
        assert!(pat_valid(0x0007_0406_0007_0406));
        assert!(!pat_valid(0x0000_0000_0000_0002));
        assert!(!pat_valid(0x0800_0000_0000_0000));
    }
}
