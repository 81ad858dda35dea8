//! The kernel's own GDT and TSS (SDM Vol. 3A 3.4.5 "Segment Descriptors", 8.7 "Task
//! Management in 64-Bit Mode" for the 64-bit TSS). The bootloader's GDT lives in memory
//! we do not own; ours also gives the double-fault handler its own stack through IST1
//! (SDM Vol. 3A 6.14.5 "Interrupt Stack Table") so a kernel stack overflow is reported
//! instead of becoming a triple fault.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const DOUBLE_FAULT_IST: u16 = 0;
const IST_STACK_SIZE: usize = 16 * 1024;

// Only its address is used: the CPU switches to it through IST1.
#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; IST_STACK_SIZE]);
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// Selectors of the kernel's segments; the VMCS host-state area needs them.
#[derive(Clone, Copy, Debug)]
pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let top = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK) + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = top;
        tss
    });
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        (gdt, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded.
    unsafe {
        CS::set_reg(sel.code);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        SS::set_reg(sel.data);
        load_tss(sel.tss);
    }
}

pub fn selectors() -> Selectors {
    GDT.get().expect("gdt::init runs first").1
}

/// Linear address of the TSS, for the VMCS host TR base (SDM Vol. 3C 25.5 "Host-State
/// Area").
pub fn tss_base() -> u64 {
    TSS.get().map_or(0, |t| t as *const TaskStateSegment as u64)
}
