//! A 64-bit IDT: the 32 exception vectors routed to one Rust handler, and the 16 PIC
//! vectors 0x20-0x2F routed to another.
//!
//! The test guests use it to prove that an exception the hypervisor injects (#UD for a
//! VMX instruction, #GP for an unknown MSR) really arrives in the guest, at the right
//! instruction. Each vector has a small naked stub that makes the stack look the same
//! whether or not the CPU pushed an error code, then calls [`Handler`] with a [`Frame`].
//! Exception handlers never return: a test has learned what it wanted and ends the run.
//!
//! Interrupts are different: the interrupted code must go on as if nothing happened.
//! Their stubs save every register the SysV ABI lets a called function clobber, call
//! the [`IrqHandler`] registered with [`set_irq_handler`] with the vector number, restore
//! the registers and return with IRETQ. Callee-saved registers need no saving: the Rust
//! handler preserves them itself. The guests are built without SSE (x86_64-unknown-none
//! uses soft float), so there is no vector state to save, and without a red zone, so an
//! interrupt pushing its frame below RSP destroys nothing.

use core::arch::{asm, naked_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Exit status when an exception nobody expected reaches [`unexpected`].
pub const UNEXPECTED_STATUS: u32 = 98;

pub const UD: u8 = 6;
pub const DF: u8 = 8;
pub const GP: u8 = 13;
pub const PF: u8 = 14;

/// What the stubs and the CPU leave on the stack, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub vector: u64,
    /// 0 for vectors without an error code.
    pub error_code: u64,
    /// Address of the faulting instruction (for faults) or of the next one (for traps).
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

pub type Handler = fn(&Frame) -> !;

/// The installed [`Handler`] as an address; 0 = none yet.
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// A 64-bit IDT gate descriptor (SDM Vol. 3A 6.14.1 "64-Bit Mode IDT", Figure 6-8
/// "64-Bit IDT Gate Descriptors").
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// P = 1, DPL = 0, type 0xE (64-bit interrupt gate: IF is cleared on entry).
const INTERRUPT_GATE: u8 = 0x8E;

const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

/// Exception vectors 0-31 and the PIC's vectors [`IRQ_BASE`]..[`IRQ_END`].
const GATES: usize = 48;
/// First vector routed to the [`IrqHandler`]: IRQ0 once the PIC is remapped
/// (`pic::MASTER_BASE`).
pub const IRQ_BASE: u8 = 0x20;
/// One past the last vector routed to the [`IrqHandler`] (IRQ15 at 0x2F).
pub const IRQ_END: u8 = 0x30;

struct Table(UnsafeCell<[Gate; GATES]>);
// SAFETY: guests are single-threaded; the table is written only by `install`.
unsafe impl Sync for Table {}

static IDT: Table = Table(UnsafeCell::new([EMPTY_GATE; GATES]));

/// Handler for the interrupt vectors [`IRQ_BASE`]..[`IRQ_END`]: called with the vector,
/// with interrupts disabled (interrupt gates clear IF); it may enable them again to let
/// other interrupts nest. It returns to the interrupted code.
pub type IrqHandler = fn(vector: u8);

/// The registered [`IrqHandler`] as an address; 0 = none yet.
static IRQ_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Routes the interrupt vectors to `handler` from now on (the IDT itself comes from
/// [`install`]). Call it before enabling interrupts.
pub fn set_irq_handler(handler: IrqHandler) {
    IRQ_HANDLER.store(handler as usize, Ordering::SeqCst);
}

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

/// Loads IDTR with `base` and `limit` as given.
///
/// # Safety
/// Every exception after this is delivered through that table; a bogus one (as
/// `triple64` wants) turns the next exception into a triple fault.
pub unsafe fn load_raw(base: u64, limit: u16) {
    let idtr = Idtr { limit, base };
    // SAFETY: per the caller.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

/// Fills the IDT with the exception and interrupt stubs, loads it, and routes every
/// exception vector (0-31) to `handler`. Interrupts stay off; vectors 0x20-0x2F go to
/// the handler of [`set_irq_handler`] (until there is one, an interrupt is reported as
/// unexpected and ends the run with [`UNEXPECTED_STATUS`]); vectors 0x30 and up are
/// beyond the IDT limit, so one delivered anyway raises #GP.
pub fn install(handler: Handler) {
    HANDLER.store(handler as usize, Ordering::SeqCst);
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let table = IDT.0.get();
    let stubs = STUBS.iter().chain(IRQ_STUBS.iter());
    for (vector, stub) in stubs.enumerate() {
        let addr = *stub as usize as u64;
        let gate = Gate {
            offset_low: addr as u16,
            selector: cs,
            ist: 0,
            type_attr: INTERRUPT_GATE,
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: in bounds (32 + 16 stubs, 48 gates); nothing else accesses the table
        // now (interrupts are off).
        unsafe { (*table)[vector] = gate };
    }
    // SAFETY: every gate now points at a stub that ends in `dispatch` or
    // `irq_dispatch`.
    unsafe {
        load_raw(
            table as u64,
            (core::mem::size_of::<[Gate; GATES]>() - 1) as u16,
        )
    };
}

/// Short names of the exception vectors (SDM Vol. 3A Table 6-1 "Protected-Mode
/// Exceptions and Interrupts").
pub fn name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE",
        "#DB",
        "NMI",
        "#BP",
        "#OF",
        "#BR",
        "#UD",
        "#NM",
        "#DF",
        "coprocessor overrun",
        "#TS",
        "#NP",
        "#SS",
        "#GP",
        "#PF",
        "vector 15",
        "#MF",
        "#AC",
        "#MC",
        "#XM",
        "#VE",
        "#CP",
        "vector 22",
        "vector 23",
        "vector 24",
        "vector 25",
        "vector 26",
        "vector 27",
        "#HV",
        "#VC",
        "#SX",
        "vector 31",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("?")
}

/// Reports an exception the test did not expect and ends the run with
/// [`UNEXPECTED_STATUS`].
pub fn unexpected(frame: &Frame) -> ! {
    crate::println!(
        "guest: unexpected exception {} (vector {}, error code {:#x}) at rip {:#x}",
        name(frame.vector),
        frame.vector,
        frame.error_code,
        frame.rip
    );
    crate::hypercall::exit(UNEXPECTED_STATUS)
}

extern "C" fn dispatch(frame: &Frame) -> ! {
    match HANDLER.load(Ordering::SeqCst) {
        0 => unexpected(frame),
        addr => {
            // SAFETY: the only non-zero value ever stored is a `Handler` (see `install`).
            let handler = unsafe { core::mem::transmute::<usize, Handler>(addr) };
            handler(frame)
        }
    }
}

/// Common tail of the stubs: RSP points at a [`Frame`]. Pass it as the first argument
/// and realign the stack for the call (handlers never return, so the old RSP is not
/// needed again).
#[unsafe(naked)]
extern "C" fn common() {
    naked_asm!(
        "mov rdi, rsp",
        "and rsp, -16",
        "call {dispatch}",
        "ud2",
        dispatch = sym dispatch,
    )
}

/// A stub for a vector the CPU pushes no error code for: push a 0 in its place.
macro_rules! stub {
    ($vector:literal) => {{
        #[unsafe(naked)]
        extern "C" fn stub() {
            naked_asm!("push 0", "push {v}", "jmp {c}", v = const $vector, c = sym common)
        }
        stub as extern "C" fn()
    }};
    ($vector:literal, error_code) => {{
        #[unsafe(naked)]
        extern "C" fn stub() {
            naked_asm!("push {v}", "jmp {c}", v = const $vector, c = sym common)
        }
        stub as extern "C" fn()
    }};
}

/// Vectors 8, 10-14, 17, 21, 29 and 30 come with an error code (SDM Vol. 3A 6.13 "Error
/// Code").
static STUBS: [extern "C" fn(); 32] = [
    stub!(0),
    stub!(1),
    stub!(2),
    stub!(3),
    stub!(4),
    stub!(5),
    stub!(6),
    stub!(7),
    stub!(8, error_code),
    stub!(9),
    stub!(10, error_code),
    stub!(11, error_code),
    stub!(12, error_code),
    stub!(13, error_code),
    stub!(14, error_code),
    stub!(15),
    stub!(16),
    stub!(17, error_code),
    stub!(18),
    stub!(19),
    stub!(20),
    stub!(21, error_code),
    stub!(22),
    stub!(23),
    stub!(24),
    stub!(25),
    stub!(26),
    stub!(27),
    stub!(28),
    stub!(29, error_code),
    stub!(30, error_code),
    stub!(31),
];

/// Called by the interrupt stubs with the vector.
extern "C" fn irq_dispatch(vector: u64) {
    match IRQ_HANDLER.load(Ordering::SeqCst) {
        0 => {
            crate::println!("guest: unexpected interrupt, vector {:#x}", vector);
            crate::hypercall::exit(UNEXPECTED_STATUS)
        }
        addr => {
            // SAFETY: the only non-zero value ever stored is an `IrqHandler` (see
            // `set_irq_handler`).
            let handler = unsafe { core::mem::transmute::<usize, IrqHandler>(addr) };
            handler(vector as u8)
        }
    }
}

/// Common part of the interrupt stubs, entered with the interrupted RDI saved on the
/// stack and the vector in EDI. Saves the other caller-saved registers, calls
/// [`irq_dispatch`] on a 16-byte aligned stack, restores everything and returns to the
/// interrupted code.
///
/// In 64-bit mode the CPU aligns RSP to 16 before pushing the interrupt frame, so the
/// alignment here would come out right by counting pushes; RBP is used to realign
/// explicitly anyway, which keeps the stub correct whatever it pushes. RBP is
/// callee-saved, so `irq_dispatch` gives it back unchanged for the restore. CLD because
/// the Rust code assumes DF = 0 and an interrupt gate does not clear it.
#[unsafe(naked)]
extern "C" fn irq_common() {
    naked_asm!(
        "push rax",
        "push rcx",
        "push rdx",
        "push rsi",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "push rbp",
        "mov rbp, rsp",
        "and rsp, -16",
        "cld",
        "call {dispatch}",
        "mov rsp, rbp",
        "pop rbp",
        "pop r11",
        "pop r10",
        "pop r9",
        "pop r8",
        "pop rsi",
        "pop rdx",
        "pop rcx",
        "pop rax",
        "pop rdi",
        "iretq",
        dispatch = sym irq_dispatch,
    )
}

/// A stub for interrupt vector `$vector`: frees RDI for the argument, then the common
/// part.
macro_rules! irq_stub {
    ($vector:literal) => {{
        #[unsafe(naked)]
        extern "C" fn stub() {
            naked_asm!("push rdi", "mov edi, {v}", "jmp {c}", v = const $vector, c = sym irq_common)
        }
        stub as extern "C" fn()
    }};
}

/// Vectors 0x20-0x2F, in order.
static IRQ_STUBS: [extern "C" fn(); (IRQ_END - IRQ_BASE) as usize] = [
    irq_stub!(0x20),
    irq_stub!(0x21),
    irq_stub!(0x22),
    irq_stub!(0x23),
    irq_stub!(0x24),
    irq_stub!(0x25),
    irq_stub!(0x26),
    irq_stub!(0x27),
    irq_stub!(0x28),
    irq_stub!(0x29),
    irq_stub!(0x2a),
    irq_stub!(0x2b),
    irq_stub!(0x2c),
    irq_stub!(0x2d),
    irq_stub!(0x2e),
    irq_stub!(0x2f),
];
