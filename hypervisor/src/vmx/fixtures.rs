//! Test fixtures shared by the VMCS-building modules' tests: the Skylake capabilities
//! of `caps::test_cpus` (with and without the TRUE control MSRs), bitmap and EPT
//! addresses, a plausible kernel host state, and complete VMCSs (controls, host state
//! and guest state) for a real-mode and a 64-bit start.

use crate::guest::long_mode::LongModeLayout;
use crate::vmx::caps::test_cpus::skylake as skylake_raw;
use crate::vmx::caps::VmxCaps;
use crate::vmx::controls::{compute_controls, write_controls, ControlAddrs};
use crate::vmx::ept::Eptp;
use crate::vmx::guest_state::{write_guest_long_mode, write_guest_real_mode, PAT_DEFAULT};
use crate::vmx::host_state::{write_host_state, HostState};
use crate::vmx::vmcs::SoftVmcs;

const MIB: u64 = 1 << 20;

/// The Skylake of `caps::test_cpus`, with the TRUE control MSRs.
pub fn caps() -> VmxCaps {
    VmxCaps::decode(&skylake_raw(), true, 0x5)
}

/// The same CPU as seen without the TRUE MSRs: default1 controls stay forced.
pub fn caps_without_true() -> VmxCaps {
    let mut raw = skylake_raw();
    raw.basic &= !(1 << 55);
    VmxCaps::decode(&raw, true, 0x5)
}

/// Bitmap and EPT addresses and a VPID for [`write_controls`].
pub fn addrs() -> ControlAddrs {
    ControlAddrs {
        io_bitmap_a: 0x10_0000,
        io_bitmap_b: 0x10_1000,
        msr_bitmap: 0x10_2000,
        eptp: Eptp::new(0x20_0000, false),
        vpid: Some(1),
    }
}

/// A complete VMCS for each kind of start: controls, host, guest.
pub fn vmcs_for(caps: &VmxCaps, long_mode: bool) -> SoftVmcs {
    let mut v = SoftVmcs::new();
    let c = compute_controls(caps, long_mode).unwrap();
    write_controls(&mut v, &c, &addrs());
    write_host_state(&mut v, &host());
    v
}

/// A boot sector's start: real mode at 0000:7C00.
pub fn real_vmcs() -> SoftVmcs {
    let c = caps();
    let mut v = vmcs_for(&c, false);
    write_guest_real_mode(&mut v, &c, 0, 0x7C00, 0, 0x7C00);
    v
}

/// A 64-bit start at 2 MiB in 64 MiB of RAM, laid out by [`LongModeLayout`].
pub fn long_vmcs() -> SoftVmcs {
    let c = caps();
    let mut v = vmcs_for(&c, true);
    let l = LongModeLayout::for_ram(64 * MIB).unwrap();
    write_guest_long_mode(&mut v, &c, 0x20_0000, l.stack_top, l.tables_gpa, l.gdt_gpa);
    v
}

/// A plausible kernel host state (high-half bases, ring-0 selectors).
pub fn host() -> HostState {
    HostState {
        cr0: 0x8005_0033,
        cr3: 0x1000,
        cr4: 0x2020,
        cs: 0x08,
        ss: 0x10,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        tr: 0x18,
        tr_base: 0xFFFF_8000_0001_0000,
        gdtr_base: 0xFFFF_8000_0002_0000,
        idtr_base: 0xFFFF_8000_0003_0000,
        efer: 0xD01,
        pat: PAT_DEFAULT,
        rsp: 0xFFFF_8000_0010_0000,
        rip: 0xFFFF_8000_0000_4000,
        ..HostState::default()
    }
}
