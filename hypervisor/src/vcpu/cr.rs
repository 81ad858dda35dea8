//! Control-register accesses: MOV to and from CR0, CR3, CR4 and CR8, CLTS and LMSW
//! (SDM Vol. 3C Table 28-3 "Exit Qualification for Control-Register Accesses";
//! SDM Vol. 2B "MOV—Move to/from Control Registers"; SDM Vol. 3A 2.5 "Control
//! Registers"), with the VMX fixed bits applied to the real registers and the guest's
//! values in the read shadows, IA-32e mode entered and left as the processor would, and
//! the PAE PDPTEs loaded into the VMCS.

use crate::vcpu::exits::{ExitAction, ExitContext, Fault, HostOps};
use crate::vmx::caps::EntryControls;
use crate::vmx::exit::{CrAccessQualification, CrAccessType};
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::{pdpte_reserved, GuestMemory};
use crate::x86::{Cr0, Cr4, Efer};

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // Control-register accesses (28)

    /// MOV to/from CR0/CR3/CR4/CR8, CLTS, LMSW (SDM Vol. 3C 28.2.1 "Basic VM-Exit
    /// Information", Table 28-3 "Exit Qualification for Control-Register Accesses").
    pub(super) fn cr_access(&mut self) -> ExitAction {
        let q = CrAccessQualification::from_qualification(self.exit.qualification);
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

    /// Reads the four PAE PDPTEs at `cr3` (SDM Vol. 3A 4.4.1 "PDPTE Registers"); invalid
    /// ones make the MOV that loads them fail with #GP.
    pub(super) fn read_pdptes(&self, cr3: u64) -> Result<[u64; 4], Fault> {
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

    /// With EPT the processor loads the PDPTEs from the VMCS on VM entry when the guest
    /// uses PAE paging (SDM Vol. 3C 27.3.2.4 "Loading Page-Directory-Pointer-Table
    /// Entries"), so a MOV that enters or refreshes PAE paging must put them there.
    pub(super) fn pae_pdptes(
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

    pub(super) fn store_pdptes(&mut self, p: Option<[u64; 4]>) {
        if let Some([a, b, c, d]) = p {
            self.vmcs.write(VmcsField::GuestPdpte0, a);
            self.vmcs.write(VmcsField::GuestPdpte1, b);
            self.vmcs.write(VmcsField::GuestPdpte2, c);
            self.vmcs.write(VmcsField::GuestPdpte3, d);
        }
    }

    /// MOV to CR0 (SDM Vol. 2B "MOV—Move to/from Control Registers"; SDM Vol. 3A 2.5
    /// "Control Registers", 10.8.5 "Initializing IA-32e Mode"): the guest's value goes
    /// to the read shadow, the value with the VMX fixed bits applied to the real CR0
    /// (PE/PG exempt with unrestricted guest). Turning PG on with EFER.LME activates
    /// IA-32e mode (EFER.LMA and the "IA-32e mode guest" entry control), turning it off
    /// deactivates it.
    pub(super) fn set_cr0(&mut self, v: u64) -> Result<(), Fault> {
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

    pub(super) fn set_lma(&mut self, lma: bool) {
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
    pub(super) fn set_cr4(&mut self, v: u64) -> Result<(), Fault> {
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
    pub(super) fn set_cr3(&mut self, v: u64) -> Result<(), Fault> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

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
}
