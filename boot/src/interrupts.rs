//! The kernel's IDT (SDM Vol. 3A 6.10 "Interrupt Descriptor Table (IDT)" to 6.14
//! "Exception and Interrupt Handling in 64-Bit Mode"). sluice runs with interrupts off;
//! an exception here is a bug in sluice (never something a guest can cause: guest
//! faults become VM exits), so every vector prints a report and stops the machine with
//! `status::KERNEL_FAULT` instead of hanging silently.

use crate::platform::{self, status};
use spin::Once;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

static IDT: Once<InterruptDescriptorTable> = Once::new();

fn report(name: &str, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    crate::console::print_emergency(format_args!(
        "sluice: EXCEPTION {name} at rip={:#x} cs={:#x} rflags={:#x} rsp={:#x}\n",
        frame.instruction_pointer.as_u64(),
        frame.code_segment.0,
        frame.cpu_flags.bits(),
        frame.stack_pointer.as_u64(),
    ));
    if let Some(code) = error_code {
        crate::console::print_emergency(format_args!("sluice: error code {code:#x}\n"));
    }
    platform::exit(status::KERNEL_FAULT)
}

macro_rules! handler {
    ($fn:ident, $name:literal) => {
        extern "x86-interrupt" fn $fn(frame: InterruptStackFrame) {
            report($name, &frame, None)
        }
    };
    ($fn:ident, $name:literal, code) => {
        extern "x86-interrupt" fn $fn(frame: InterruptStackFrame, code: u64) {
            report($name, &frame, Some(code))
        }
    };
}

handler!(divide_error, "#DE divide error");
handler!(debug, "#DB debug");
handler!(nmi, "NMI");
handler!(breakpoint, "#BP breakpoint");
handler!(overflow, "#OF overflow");
handler!(bound_range, "#BR bound range exceeded");
handler!(invalid_opcode, "#UD invalid opcode");
handler!(device_not_available, "#NM device not available");
handler!(invalid_tss, "#TS invalid TSS", code);
handler!(segment_not_present, "#NP segment not present", code);
handler!(stack_segment, "#SS stack-segment fault", code);
handler!(general_protection, "#GP general protection", code);
handler!(x87_floating_point, "#MF x87 floating-point error");
handler!(alignment_check, "#AC alignment check", code);
handler!(simd_floating_point, "#XM SIMD floating-point");
handler!(virtualization, "#VE virtualization exception");
handler!(control_protection, "#CP control protection", code);

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let addr = Cr2::read_raw();
    crate::console::print_emergency(format_args!("sluice: page fault address {addr:#x}\n"));
    report("#PF page fault", &frame, Some(code.bits()))
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    report("#DF double fault", &frame, Some(code))
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    report("#MC machine check", &frame, None)
}

extern "x86-interrupt" fn unexpected_interrupt(frame: InterruptStackFrame) {
    report("unexpected interrupt", &frame, None)
}

pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        idt.divide_error.set_handler_fn(divide_error);
        idt.debug.set_handler_fn(debug);
        idt.non_maskable_interrupt.set_handler_fn(nmi);
        idt.breakpoint.set_handler_fn(breakpoint);
        idt.overflow.set_handler_fn(overflow);
        idt.bound_range_exceeded.set_handler_fn(bound_range);
        idt.invalid_opcode.set_handler_fn(invalid_opcode);
        idt.device_not_available
            .set_handler_fn(device_not_available);
        idt.invalid_tss.set_handler_fn(invalid_tss);
        idt.segment_not_present.set_handler_fn(segment_not_present);
        idt.stack_segment_fault.set_handler_fn(stack_segment);
        idt.general_protection_fault
            .set_handler_fn(general_protection);
        idt.page_fault.set_handler_fn(page_fault);
        idt.x87_floating_point.set_handler_fn(x87_floating_point);
        idt.alignment_check.set_handler_fn(alignment_check);
        idt.machine_check.set_handler_fn(machine_check);
        idt.simd_floating_point.set_handler_fn(simd_floating_point);
        idt.virtualization.set_handler_fn(virtualization);
        idt.cp_protection_exception
            .set_handler_fn(control_protection);
        // SAFETY: the IST index names the stack gdt::init put into the TSS.
        unsafe {
            idt.double_fault
                .set_handler_fn(double_fault)
                .set_stack_index(crate::gdt::DOUBLE_FAULT_IST);
        }
        // External interrupts stay masked in the kernel (RFLAGS.IF = 0, and with VM
        // exits acknowledging them); a stray one is still reported, not ignored.
        for vector in 32..=255u8 {
            idt[vector].set_handler_fn(unexpected_interrupt);
        }
        idt
    });
    idt.load();
}
