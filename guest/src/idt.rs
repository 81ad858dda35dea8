//! A 64-bit IDT for the 32 exception vectors, all routed to one Rust handler.
//!
//! The test guests use it to prove that an exception the hypervisor injects (#UD for a
//! VMX instruction, #GP for an unknown MSR) really arrives in the guest, at the right
//! instruction. Each vector has a small naked stub that makes the stack look the same
//! whether or not the CPU pushed an error code, then calls [`Handler`] with a [`Frame`].
//! Handlers never return: a test has learned what it wanted and ends the run.

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

/// A 64-bit IDT gate descriptor (SDM Vol. 3A 6.14.1, Figure 6-8).
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

struct Table(UnsafeCell<[Gate; 32]>);
// SAFETY: guests are single-threaded; the table is written only by `install`.
unsafe impl Sync for Table {}

static IDT: Table = Table(UnsafeCell::new([EMPTY_GATE; 32]));

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

/// Fills the IDT with the exception stubs, loads it, and routes every exception vector
/// (0-31) to `handler`. Interrupts stay off; vectors 32 and up are not present.
pub fn install(handler: Handler) {
    HANDLER.store(handler as usize, Ordering::SeqCst);
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    let table = IDT.0.get();
    for (vector, stub) in STUBS.iter().enumerate() {
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
        // SAFETY: in bounds (32 stubs, 32 gates); nothing else accesses the table now.
        unsafe { (*table)[vector] = gate };
    }
    // SAFETY: every gate now points at a stub that ends in `dispatch`.
    unsafe {
        load_raw(
            table as u64,
            (core::mem::size_of::<[Gate; 32]>() - 1) as u16,
        )
    };
}

/// Short names of the exception vectors (SDM Vol. 3A Table 6-1).
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

/// Vectors 8, 10-14, 17, 21, 29 and 30 come with an error code (SDM Vol. 3A 6.13).
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
