//! The host-state area: what the processor loads on every VM exit (control
//! registers, selectors, bases, MSRs, and the RSP/RIP the exit handler starts with).
//! SDM Vol. 3C 25.5 "Host-State Area"; VM entry checks it (SDM Vol. 3C 27.2.2 "Checks
//! on Host Control Registers, MSRs, and SSP", 27.2.3 "Checks on Host Segment and
//! Descriptor-Table Registers") and every VM exit loads it (28.5 "Loading Host
//! State").

use crate::vmx::vmcs::{Vmcs, VmcsField};

/// The host-state area: what the CPU loads on every VM exit. `rip` is the VM-exit
/// entry point and `rsp` the stack it starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub tr: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub efer: u64,
    pub pat: u64,
    pub rsp: u64,
    pub rip: u64,
}

/// Writes the host-state area. Selectors are written with RPL and TI cleared: VM entry
/// requires both to be 0 in every host selector field (SDM Vol. 3C 27.2.3 "Checks on
/// Host Segment and Descriptor-Table Registers"), and a VM exit loads the selectors as
/// ring-0 GDT selectors anyway, so a selector read from the running kernel (whose RPL
/// is 0 already) is unchanged. The host's LDTR is always null after a VM exit; there is
/// no field for it.
pub fn write_host_state(vmcs: &mut impl Vmcs, h: &HostState) {
    let sel = |s: u16| u64::from(s & !7);
    vmcs.write(VmcsField::HostCr0, h.cr0);
    vmcs.write(VmcsField::HostCr3, h.cr3);
    vmcs.write(VmcsField::HostCr4, h.cr4);
    vmcs.write(VmcsField::HostCsSelector, sel(h.cs));
    vmcs.write(VmcsField::HostSsSelector, sel(h.ss));
    vmcs.write(VmcsField::HostDsSelector, sel(h.ds));
    vmcs.write(VmcsField::HostEsSelector, sel(h.es));
    vmcs.write(VmcsField::HostFsSelector, sel(h.fs));
    vmcs.write(VmcsField::HostGsSelector, sel(h.gs));
    vmcs.write(VmcsField::HostTrSelector, sel(h.tr));
    vmcs.write(VmcsField::HostFsBase, h.fs_base);
    vmcs.write(VmcsField::HostGsBase, h.gs_base);
    vmcs.write(VmcsField::HostTrBase, h.tr_base);
    vmcs.write(VmcsField::HostGdtrBase, h.gdtr_base);
    vmcs.write(VmcsField::HostIdtrBase, h.idtr_base);
    vmcs.write(VmcsField::HostIa32SysenterCs, h.sysenter_cs);
    vmcs.write(VmcsField::HostIa32SysenterEsp, h.sysenter_esp);
    vmcs.write(VmcsField::HostIa32SysenterEip, h.sysenter_eip);
    vmcs.write(VmcsField::HostIa32Efer, h.efer);
    vmcs.write(VmcsField::HostIa32Pat, h.pat);
    vmcs.write(VmcsField::HostRsp, h.rsp);
    vmcs.write(VmcsField::HostRip, h.rip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fixtures::host;
    use crate::vmx::vmcs::SoftVmcs;

    #[test]
    fn host_selectors_lose_rpl_and_ti() {
        let mut v = SoftVmcs::new();
        let h = HostState {
            cs: 0x0B,
            ss: 0x17,
            ds: 0x2F,
            tr: 0x1C,
            ..host()
        };
        write_host_state(&mut v, &h);
        assert_eq!(v.read(VmcsField::HostCsSelector), 0x08);
        assert_eq!(v.read(VmcsField::HostSsSelector), 0x10);
        assert_eq!(v.read(VmcsField::HostDsSelector), 0x28);
        assert_eq!(v.read(VmcsField::HostTrSelector), 0x18);
        assert_eq!(v.read(VmcsField::HostRip), h.rip);
        assert_eq!(v.read(VmcsField::HostRsp), h.rsp);
        assert_eq!(v.read(VmcsField::HostIa32Efer), 0xD01);
        assert_eq!(v.read(VmcsField::HostTrBase), h.tr_base);
        assert_eq!(v.read(VmcsField::HostCr3), 0x1000);
    }
}
