//! VMX on the boot CPU: capability probe (CPUID + the VMX capability MSRs, decoded by
//! `hypervisor::vmx::caps`), IA32_FEATURE_CONTROL, and the VMX instructions themselves.
//! SDM Vol. 3C chapter 24 "Introduction to Virtual Machine Extensions" (VMX operation),
//! 25.11.5 "VMXON Region", chapter 31 "VMX Instruction Reference"; SDM Vol. 3D
//! Appendix A "VMX Capability Reporting Facility" (the capability MSRs).

use core::arch::asm;
use core::fmt;

use hypervisor::vmx::caps::{
    check_platform, firmware_left_vmx_on, CpuVendor, FeatureControlAction, MissingFeature,
    RawVmxMsrs, VmxCaps, VmxonFailure,
};
use hypervisor::x86::msr::IA32_FEATURE_CONTROL;
use raw_cpuid::CpuId;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;

use crate::memory::Memory;

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: callers only name MSRs whose presence the capability bits establish.
    unsafe { Msr::new(msr).read() }
}

/// The CPU's maker, from the CPUID leaf 0 vendor string.
pub fn cpu_vendor() -> CpuVendor {
    CpuId::new()
        .get_vendor_info()
        .map_or(CpuVendor::Other, |v| {
            CpuVendor::from_vendor_string(v.as_str())
        })
}

/// What the probe found: the decoded capabilities (when the CPU has VMX at all, so the
/// report can show what is there even when something is missing) and the verdict.
pub struct Probe {
    pub caps: Option<VmxCaps>,
    pub verdict: Result<(), MissingFeature>,
}

/// Reads and checks everything sluice needs. When the verdict is Ok, VMX is enabled in
/// IA32_FEATURE_CONTROL (locking it ourselves when firmware left it unlocked, as an OS
/// would).
pub fn probe() -> Probe {
    let cpuid_vmx = CpuId::new().get_feature_info().is_some_and(|f| f.has_vmx());
    // IA32_FEATURE_CONTROL exists only on CPUs with VMX or SMX; without VMX it is not read.
    let feature_control = if cpuid_vmx {
        rdmsr(IA32_FEATURE_CONTROL)
    } else {
        0
    };
    let mut fc_now = feature_control;
    match check_platform(cpuid_vmx, feature_control) {
        Err(missing) => {
            return Probe {
                caps: None,
                verdict: Err(missing),
            }
        }
        Ok(FeatureControlAction::LockAndEnable { value }) => {
            // SAFETY: the MSR exists (CPUID reports VMX) and is unlocked, so the write is
            // legal.
            unsafe { Msr::new(IA32_FEATURE_CONTROL).write(value) };
            crate::println!("vmx: IA32_FEATURE_CONTROL was unlocked; locked it with VMX enabled");
            fc_now = value;
        }
        Ok(FeatureControlAction::AlreadyEnabled) => {}
    }
    let raw = RawVmxMsrs::read_with(rdmsr);
    let caps = VmxCaps::decode(&raw, cpuid_vmx, fc_now);
    let verdict = caps.check_requirements().map(|_| ());
    Probe {
        caps: Some(caps),
        verdict,
    }
}

/// A VMX instruction failed (SDM Vol. 3C 31.2 "Conventions": CF=1 VMfailInvalid, ZF=1
/// VMfailValid with the error number in the current VMCS).
#[derive(Debug)]
pub enum VmxError {
    OutOfMemory(&'static str),
    FailInvalid(&'static str),
    FailValid(&'static str, u64),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxError::OutOfMemory(what) => write!(f, "out of memory allocating the {what}"),
            VmxError::FailInvalid(insn) => write!(f, "{insn} failed (VMfailInvalid)"),
            VmxError::FailValid(insn, n) => {
                write!(f, "{insn} failed with VM-instruction error {n}")
            }
        }
    }
}

impl core::error::Error for VmxError {}

/// RFLAGS after a VMX instruction: CF (bit 0) and ZF (bit 6).
fn check(insn: &'static str, rflags: u64) -> Result<(), VmxError> {
    if rflags & 1 != 0 {
        Err(VmxError::FailInvalid(insn))
    } else if rflags & (1 << 6) != 0 {
        Err(VmxError::FailValid(insn, vmread(0x4400).unwrap_or(0)))
    } else {
        Ok(())
    }
}

fn vmread(field: u64) -> Result<u64, VmxError> {
    let value: u64;
    let rflags: u64;
    // SAFETY: VMREAD only reads the current VMCS; failure is reported through RFLAGS.
    unsafe {
        asm!("vmread {v}, {f}", "pushfq", "pop {r}", v = out(reg) value, f = in(reg) field,
             r = out(reg) rflags);
    }
    if rflags & 0x41 != 0 {
        return Err(VmxError::FailInvalid("vmread"));
    }
    Ok(value)
}

/// Executes `insn` with a pointer to a physical address operand (VMXON, VMCLEAR,
/// VMPTRLD all take an m64 holding the physical address).
macro_rules! vmx_ptr_insn {
    ($name:ident, $mnemonic:literal) => {
        pub fn $name(phys: u64) -> Result<(), VmxError> {
            let rflags: u64;
            // SAFETY: the operand is a valid 4-KiB aligned region with the VMCS revision
            // identifier; failure is reported through RFLAGS and checked.
            unsafe {
                asm!(concat!($mnemonic, " qword ptr [{p}]"), "pushfq", "pop {r}",
                     p = in(reg) &phys, r = out(reg) rflags);
            }
            check($mnemonic, rflags)
        }
    };
}
vmx_ptr_insn!(vmxon, "vmxon");
vmx_ptr_insn!(vmclear, "vmclear");
vmx_ptr_insn!(vmptrld, "vmptrld");

/// Allocates a VMXON/VMCS region: zeroed, with the revision identifier in bits 30:0 of
/// its first dword (SDM Vol. 3C 25.2 "Format of the VMCS Region", 25.11.5 "VMXON
/// Region").
pub fn region(mem: &mut Memory, revision: u32, what: &'static str) -> Result<u64, VmxError> {
    let frame = mem
        .alloc_zeroed_frame()
        .ok_or(VmxError::OutOfMemory(what))?;
    // SAFETY: freshly allocated frame mapped through the physical-memory window.
    unsafe { (mem.phys_to_virt(frame) as *mut u32).write(revision & 0x7fff_ffff) };
    Ok(frame)
}

/// VMXOFF (SDM Vol. 3C 31.3 "VMX Instructions", VMXOFF—Leave VMX Operation): leaves VMX
/// operation. Only legal in VMX root operation.
fn vmxoff() -> Result<(), VmxError> {
    let rflags: u64;
    // SAFETY: only called when VMXON has reported that the CPU is in VMX root operation.
    unsafe { asm!("vmxoff", "pushfq", "pop {r}", r = out(reg) rflags) };
    check("vmxoff", rflags)
}

/// Enters VMX root operation on this CPU (SDM Vol. 3C 24.7 "Enabling and Entering VMX
/// Operation") and proves the CPU accepts our VMCS revision by making a scratch VMCS
/// current once. sluice stays in VMX operation for the rest of the run. Firmware that
/// left the CPU in VMX operation (CR4.VMXE set and VMXON refused) is taken over with
/// VMXOFF and a second VMXON.
pub fn enable(mem: &mut Memory, caps: &VmxCaps) -> Result<(), VmxError> {
    let vmxe = Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
    let vmxe_from_firmware = Cr4::read_raw() & vmxe != 0;
    if vmxe_from_firmware {
        crate::println!("vmx: CR4.VMXE was already set by the firmware");
    }
    // CR0 and CR4 must honour the VMX fixed bits (SDM Vol. 3D A.7 "VMX-Fixed Bits in
    // CR0", A.8 "VMX-Fixed Bits in CR4"); CR4.VMXE enables VMXON.
    let cr0 = (Cr0::read_raw() | caps.cr0_fixed0) & caps.cr0_fixed1;
    let cr4 = (Cr4::read_raw() | caps.cr4_fixed0 | vmxe) & caps.cr4_fixed1;
    // SAFETY: only bits the VMX capability MSRs require are forced; paging and protection
    // stay on (they are among the CR0 fixed-1 bits).
    unsafe {
        Cr0::write_raw(cr0);
        Cr4::write_raw(cr4);
    }
    let vmxon_region = region(mem, caps.vmcs_revision, "VMXON region")?;
    let scratch = region(mem, caps.vmcs_revision, "VMCS")?;
    match vmxon(vmxon_region) {
        Ok(()) => {}
        Err(e) => {
            let failure = match e {
                VmxError::FailValid(_, n) => VmxonFailure::FailValid(n),
                _ => VmxonFailure::FailInvalid,
            };
            if !firmware_left_vmx_on(vmxe_from_firmware, failure) {
                return Err(e);
            }
            crate::println!(
                "vmx: the firmware left this CPU in VMX operation ({e}); VMXOFF, then VMXON"
            );
            vmxoff()?;
            vmxon(vmxon_region)?;
        }
    }
    vmclear(scratch)?;
    vmptrld(scratch)?;
    vmclear(scratch)
}
