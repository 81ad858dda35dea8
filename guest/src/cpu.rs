//! Small wrappers for the instructions the test guests inspect the machine with.

use core::arch::asm;

/// Result of CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID with EAX = `leaf`, ECX = `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx);
    // SAFETY: CPUID only writes the four registers. RBX is reserved by LLVM, so its
    // result is copied out through a scratch register and RBX restored.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// The 12 signature bytes of a vendor-style leaf: EBX, ECX, EDX in that order (the
/// convention of leaf 0 and of the hypervisor leaf 0x4000_0000).
pub fn signature(r: &Cpuid) -> [u8; 12] {
    let mut s = [0; 12];
    s[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    s[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    s[8..12].copy_from_slice(&r.edx.to_le_bytes());
    s
}

pub fn read_cr3() -> u64 {
    let v;
    // SAFETY: reading CR3 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_rsp() -> u64 {
    let v;
    // SAFETY: copies a register.
    unsafe { asm!("mov {}, rsp", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Drops the TLB entry for the page containing `addr`.
pub fn invlpg(addr: u64) {
    // SAFETY: invalidating a translation is always allowed at CPL 0; the next access
    // walks the (updated) tables again.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}
