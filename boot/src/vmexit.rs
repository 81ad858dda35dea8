//! The world switch: the assembly stub that enters the guest (VMLAUNCH/VMRESUME) and
//! the VM-exit entry point it returns through, plus `HwVmcs`, the `Vmcs` trait over
//! the real VMREAD/VMWRITE instructions.
//!
//! A VM exit loads RSP and RIP from the host-state area (SDM Vol. 3C 28.5.3 "Loading
//! Host RIP, RSP, RFLAGS, and SSP") and saves nothing of the guest's general registers:
//! the stub stores them into `GuestRegs` (layout in `hypervisor::x86::regs`) and
//! returns to the Rust caller of `vm_run` as if the call had simply finished.

use core::arch::{asm, global_asm};

use hypervisor::vcpu::report::EntryFailure;
use hypervisor::vmx::vmcs::{Vmcs, VmcsField};
use hypervisor::x86::regs::GuestRegs;

/// The VMCS that VMPTRLD made current on this CPU.
pub struct HwVmcs;

impl Vmcs for HwVmcs {
    fn read(&self, field: VmcsField) -> u64 {
        let value: u64;
        // SAFETY: a VMCS is current whenever an HwVmcs is used (vmx::launch makes it
        // so); VMREAD of a supported field has no other effect.
        unsafe {
            asm!("vmread {v}, {f}", v = out(reg) value, f = in(reg) u64::from(field.encoding()),
                 options(nostack));
        }
        value
    }

    fn write(&mut self, field: VmcsField, value: u64) {
        // SAFETY: as above; a failed VMWRITE (unsupported field) leaves the VMCS as it
        // was and is caught by the guest-state check and VM-entry diagnosis.
        unsafe {
            asm!("vmwrite {f}, {v}", f = in(reg) u64::from(field.encoding()), v = in(reg) value,
                 options(nostack));
        }
    }
}

extern "C" {
    fn sluice_vm_run(regs: *mut GuestRegs, launched: u64) -> u64;
    fn sluice_vm_exit();
}

/// Address for the VMCS host-RIP field.
pub fn exit_entry_point() -> u64 {
    sluice_vm_exit as *const () as u64
}

/// Enters the guest with `regs` and returns at its next VM exit with `regs` updated.
pub fn vm_run(regs: &mut GuestRegs, launched: bool) -> Result<(), EntryFailure> {
    // SAFETY: the current VMCS has host RIP = sluice_vm_exit and valid host state; the
    // stub saves and restores every callee-saved register around the guest.
    match unsafe { sluice_vm_run(regs, u64::from(launched)) } {
        0 => Ok(()),
        1 => Err(EntryFailure::Invalid),
        _ => Err(EntryFailure::Valid),
    }
}

// sluice_vm_run(rdi = &mut GuestRegs, rsi = launched) -> rax = 0 exit, 1 VMfailInvalid,
// 2 VMfailValid. GuestRegs offsets: rax 0, rbx 8, rcx 16, rdx 24, rsi 32, rdi 40,
// rbp 48, r8 56 ... r15 112.
global_asm!(
    ".global sluice_vm_run",
    ".global sluice_vm_exit",
    "sluice_vm_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    // Host RSP for the exit: this stack, with the GuestRegs pointer on top.
    "mov rax, 0x6C14",
    "vmwrite rax, rsp",
    "test rsi, rsi",
    // MOVs below leave RFLAGS (and so the test above) alone.
    "mov rax, [rdi + 0]",
    "mov rbx, [rdi + 8]",
    "mov rcx, [rdi + 16]",
    "mov rdx, [rdi + 24]",
    "mov rsi, [rdi + 32]",
    "mov rbp, [rdi + 48]",
    "mov r8, [rdi + 56]",
    "mov r9, [rdi + 64]",
    "mov r10, [rdi + 72]",
    "mov r11, [rdi + 80]",
    "mov r12, [rdi + 88]",
    "mov r13, [rdi + 96]",
    "mov r14, [rdi + 104]",
    "mov r15, [rdi + 112]",
    "mov rdi, [rdi + 40]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    "3:",
    // Only reached when the entry failed: CF=1 VMfailInvalid, ZF=1 VMfailValid.
    "mov eax, 1",
    "mov ecx, 2",
    "cmovz eax, ecx",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    "sluice_vm_exit:",
    // RSP = host RSP from the VMCS: [rsp] = GuestRegs pointer.
    "push rdi",
    "mov rdi, [rsp + 8]",
    "mov [rdi + 0], rax",
    "mov [rdi + 8], rbx",
    "mov [rdi + 16], rcx",
    "mov [rdi + 24], rdx",
    "mov [rdi + 32], rsi",
    "mov [rdi + 48], rbp",
    "mov [rdi + 56], r8",
    "mov [rdi + 64], r9",
    "mov [rdi + 72], r10",
    "mov [rdi + 80], r11",
    "mov [rdi + 88], r12",
    "mov [rdi + 96], r13",
    "mov [rdi + 104], r14",
    "mov [rdi + 112], r15",
    "pop rax",
    "mov [rdi + 40], rax",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "xor eax, eax",
    "ret",
);
