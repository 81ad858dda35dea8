//! bench64: the IO workloads sluice's benchmarks measure, one guest for all of them.
//!
//! The run configuration's `guest.arg` (RDI at entry, see [`guest::entry!`]) selects
//! what runs:
//!
//! - bits 7:0: the workload number (table below and in guest/README.md); 0 runs every
//!   workload, in number order;
//! - bits 31:8: how many times the workload runs (0 means once);
//! - bits 63:32: must be 0.
//!
//! So `arg = 0` runs each workload once: the smoke run `cargo xtask test` uses. For each
//! workload the guest reads sluice's IO counters (hypercall 3) before the first and
//! after the last iteration and prints
//!
//! ```text
//! workload <name>: iterations <n>, io instructions <i>, io exits <e>, emulated <m>
//! ```
//!
//! and at the end `bench: done`, exit status 0. Nothing but the workloads does port IO
//! (lines go out through the print hypercall, never the UART), and interrupts stay off
//! throughout, so the counters, and the hypervisor's `sluice-stats`, count only the
//! workloads. A workload that sees a device answer it cannot go on with (the UART's LSR
//! never showing THRE, the PIT never counting down) prints why and the guest exits 1;
//! an `arg` it cannot decode exits 2.
//!
//! The `asm` workloads are each one `asm!` block whose IO part uses only instructions
//! sluice's coalescer emulates (IN/OUT, INS/OUTS, MOV reg<-imm/reg, the register ALU
//! subset, Jcc/JMP/LOOP inside the block) and no memory operand except string IO, so a
//! coalescing hypervisor may take the whole burst in the exit of its first IO
//! instruction. Every block ends with `pushfq; popfq`, outside the subset, so a
//! coalesced run stops at the end of the burst and never runs on into the Rust loop
//! that starts the next iteration. The `rust-*` workloads are the same kind of IO
//! written as ordinary Rust, so the code between the port accesses is whatever the
//! compiler makes of it (calls, returns, stack spills): the case coalescing cannot
//! take in one exit yet.
#![no_std]
#![no_main]

use core::arch::asm;
use core::hint::black_box;

use guest::hypercall::{self, Counters};
use guest::{interrupts, println};

guest::entry!(main);

/// Exit status when a workload saw a wrong device answer.
const FAILED: u32 = 1;
/// Exit status when `arg` names no workload or has reserved bits set.
const BAD_ARG: u32 = 2;

/// A workload could not go on: what it waited for, and a value that says more.
struct Fail {
    what: &'static str,
    value: u64,
}

type Run = fn() -> Result<(), Fail>;

struct Workload {
    /// Stable, kebab-case: the benchmark tables key on it.
    name: &'static str,
    run: Run,
}

impl Workload {
    const fn new(name: &'static str, run: Run) -> Self {
        Workload { name, run }
    }
}

/// Workload `n` is `WORKLOADS[n - 1]`. The numbers and names are an interface (the
/// benchmark scripts select by number and read the names): append, never reorder.
const WORKLOADS: [Workload; 13] = [
    Workload::new("pic-init", pic_init),
    Workload::new("pit-program", pit_program),
    Workload::new("pit-poll", pit_poll),
    Workload::new("uart-init", uart_init),
    Workload::new("uart-puts", uart_puts),
    Workload::new("rep-outsb", rep_outsb),
    Workload::new("cmos-read", cmos_read),
    Workload::new("pci-scan", pci_scan),
    Workload::new("vga-crtc", vga_crtc),
    Workload::new("driver-init", driver_init),
    Workload::new("rust-uart-init", rust_uart_init),
    Workload::new("rust-uart-puts", rust_uart_puts),
    Workload::new("rust-cmos-read", rust_cmos_read),
];

/// `arg` decoded: which workloads, how many iterations each.
struct Selection {
    /// 0 for all.
    number: u8,
    iterations: u32,
}

fn decode(arg: u64) -> Result<Selection, &'static str> {
    if arg >> 32 != 0 {
        return Err("bits 63:32 must be 0");
    }
    let number = (arg & 0xff) as u8;
    if usize::from(number) > WORKLOADS.len() {
        return Err("no such workload");
    }
    let iterations = ((arg >> 8) & 0xff_ffff) as u32;
    Ok(Selection {
        number,
        iterations: iterations.max(1),
    })
}

fn main(arg: u64) -> u32 {
    // The hypervisor starts the guest with IF = 0; make sure it stays that way, so no
    // interrupt can split a burst or add work to a measurement.
    interrupts::disable();
    let selection = match decode(arg) {
        Ok(s) => s,
        Err(why) => {
            println!(
                "bench: arg {arg:#x}: {why} (bits 7:0 workload 1..={} or 0 for all, bits 31:8 iterations)",
                WORKLOADS.len()
            );
            return BAD_ARG;
        }
    };
    let selected: &[Workload] = match selection.number {
        0 => &WORKLOADS,
        n => &WORKLOADS[usize::from(n) - 1..usize::from(n)],
    };
    for workload in selected {
        let before = hypercall::counters();
        for _ in 0..selection.iterations {
            if let Err(fail) = (workload.run)() {
                println!(
                    "workload {}: failed: {} ({:#x})",
                    workload.name, fail.what, fail.value
                );
                return FAILED;
            }
        }
        let spent: Counters = before.delta(hypercall::counters());
        println!(
            "workload {}: iterations {}, io instructions {}, io exits {}, emulated {}",
            workload.name,
            selection.iterations,
            spent.io_instructions,
            spent.io_exits,
            spent.emulated
        );
    }
    println!("bench: done");
    0
}

// --- the asm workloads --------------------------------------------------------------
//
// Each is one `asm!` block: `.p2align 6` (so where a burst starts within a cache line
// does not depend on how the guest happens to be linked, which matters for the `line`
// extent; the padding runs natively before the first IO instruction), the burst, and
// `pushfq; popfq` as the end marker. RBX and RBP are never used (LLVM reserves them).

/// The end of every asm workload: the first instruction outside the coalescer's subset.
macro_rules! end_of_burst {
    () => {
        "pushfq\npopfq\n"
    };
}

/// Both 8259As initialized as Linux's `init_8259A` does: masks closed, the master's
/// ICW1-ICW4 (0x11, vector base 0x20, slave on IR2, 8086 mode), the slave's (0x11,
/// 0x28, cascade identity 2, 8086 mode), then the masks (all closed but the cascade).
/// `out 0x80, al` (the `outb_p` io delay) after every write: 24 OUT imm8.
macro_rules! pic_init_asm {
    () => {
        concat!(
            "mov al, 0xff\n out 0x21, al\n out 0x80, al\n",
            "out 0xa1, al\n out 0x80, al\n",
            "mov al, 0x11\n out 0x20, al\n out 0x80, al\n",
            "mov al, 0x20\n out 0x21, al\n out 0x80, al\n",
            "mov al, 0x04\n out 0x21, al\n out 0x80, al\n",
            "mov al, 0x01\n out 0x21, al\n out 0x80, al\n",
            "mov al, 0x11\n out 0xa0, al\n out 0x80, al\n",
            "mov al, 0x28\n out 0xa1, al\n out 0x80, al\n",
            "mov al, 0x02\n out 0xa1, al\n out 0x80, al\n",
            "mov al, 0x01\n out 0xa1, al\n out 0x80, al\n",
            "mov al, 0xfb\n out 0x21, al\n out 0x80, al\n",
            "mov al, 0xff\n out 0xa1, al\n out 0x80, al\n",
        )
    };
}

/// PIT channel 0 as the 1 kHz tick: control word 0x34 (mode 2, LSB then MSB), count
/// 1193 taken apart with CL/CH. 3 OUT imm8. Clobbers RAX, RCX.
macro_rules! pit_program_asm {
    () => {
        concat!(
            "mov al, 0x34\n out 0x43, al\n",
            "mov ecx, 1193\n",
            "mov al, cl\n out 0x40, al\n",
            "mov al, ch\n out 0x40, al\n",
        )
    };
}

/// COM1: IER = 0, LCR = DLAB, divisor 1 (DLL, DLM), LCR = 8N1, FCR = 0xC7, MCR =
/// DTR|RTS|OUT2; OUT DX with the port computed as base + offset. 7 OUTs. Clobbers
/// RAX, RDX.
macro_rules! uart_init_asm {
    () => {
        concat!(
            "mov dx, 0x3f9\n mov al, 0\n out dx, al\n",
            "add dx, 2\n mov al, 0x80\n out dx, al\n",
            "sub dx, 3\n mov al, 1\n out dx, al\n",
            "inc dx\n mov al, 0\n out dx, al\n",
            "add dx, 2\n mov al, 0x03\n out dx, al\n",
            "dec dx\n mov al, 0xc7\n out dx, al\n",
            "add dx, 2\n mov al, 0x0b\n out dx, al\n",
        )
    };
}

/// One CMOS read (index to 0x70, data from 0x71) folded into R8D:
/// `r8d = 2 * r8d + al`. 2 IO. Clobbers RAX, R9.
macro_rules! cmos_pair_asm {
    ($index:literal) => {
        concat!(
            "mov al, ",
            $index,
            "\n out 0x70, al\n in al, 0x71\n",
            "mov r9d, 0\n mov r9b, al\n add r8d, r8d\n add r8d, r9d\n",
        )
    };
}

/// Workload 1, `pic-init`: 24 IO.
#[inline(never)]
fn pic_init() -> Result<(), Fail> {
    // SAFETY: port IO to devices that cannot reach memory; registers as declared; the
    // end marker pushes and pops RFLAGS (IF stays 0, DF stays 0).
    unsafe {
        asm!(
            ".p2align 6",
            pic_init_asm!(),
            end_of_burst!(),
            out("rax") _,
            options(nomem),
        );
    }
    Ok(())
}

/// Workload 2, `pit-program`: 3 IO.
#[inline(never)]
fn pit_program() -> Result<(), Fail> {
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            pit_program_asm!(),
            end_of_burst!(),
            out("rax") _, out("rcx") _,
            options(nomem),
        );
    }
    Ok(())
}

/// Channel 2 count for `pit-poll`: about 3.4 ms.
const PIT_POLL_COUNT: u16 = 0x1000;
/// `pit-poll` stops once the latched count is below this (about 1.7 ms after start)...
const PIT_POLL_THRESHOLD: u16 = 0x0800;
/// ... or OUT2 is high, and fails after this many polls without either.
const PIT_POLL_BOUND: u32 = 100_000;

/// Workload 3, `pit-poll`: the PIT used as a clock the way calibration loops do. Port
/// 0x61 read, speaker off and channel 2 gate on, written; channel 2 in mode 0 (0xB0)
/// with count 0x1000 (LSB, MSB); then each poll is: counter latch command (0x80) to
/// 0x43, LSB and MSB from 0x42, port 0x61 for OUT2, until the count is below 0x800 or
/// OUT2 is high. 5 IO, then 4 per poll; how many polls fit in the ~1.7 ms depends on
/// how fast the guest runs (that is the point: fewer exits, more polls per
/// millisecond). The loop head (`mov al, 0x80`) precedes the poll's first IO, so a
/// coalesced run follows the backward branch to code before the exiting instruction.
#[inline(never)]
fn pit_poll() -> Result<(), Fail> {
    let left: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "in al, 0x61",
            "and al, 0x0c",
            "or al, 0x01",
            "out 0x61, al",
            "mov al, 0xb0",
            "out 0x43, al",
            "mov al, {lsb}",
            "out 0x42, al",
            "mov al, {msb}",
            "out 0x42, al",
            "mov ecx, {bound}",
            "2:",
            "mov al, 0x80",
            "out 0x43, al",
            "in al, 0x42",
            "mov dl, al",
            "in al, 0x42",
            "mov dh, al",
            "in al, 0x61",
            "test al, 0x20",
            "jnz 3f",
            "cmp dx, {threshold}",
            "jb 3f",
            "dec ecx",
            "jnz 2b",
            "3:",
            end_of_burst!(),
            lsb = const PIT_POLL_COUNT & 0xff,
            msb = const PIT_POLL_COUNT >> 8,
            threshold = const PIT_POLL_THRESHOLD,
            bound = const PIT_POLL_BOUND,
            out("rax") _, out("ecx") left, out("rdx") _,
            options(nomem),
        );
    }
    if left == 0 {
        return Err(Fail {
            what: "PIT channel 2 neither counted below 0x800 nor raised OUT2 (polls)",
            value: u64::from(PIT_POLL_BOUND),
        });
    }
    Ok(())
}

/// Workload 4, `uart-init`: 7 IO.
#[inline(never)]
fn uart_init() -> Result<(), Fail> {
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            uart_init_asm!(),
            end_of_burst!(),
            out("rax") _, out("rdx") _,
            options(nomem),
        );
    }
    Ok(())
}

/// What `uart-puts` writes: 64 bytes ending in a newline. They reach the asm as eight
/// 64-bit immediates ([`qword`]), never through memory.
const UART_PUTS_TEXT: &[u8; 64] =
    b"bench64 uart-puts: 64 bytes polled out of registers, LSR + THR.\n";
/// LSR reads per byte before `uart-puts` and `rust-uart-puts` give up.
const LSR_POLL_BOUND: u32 = 100_000;

/// Bytes `8 * i .. 8 * i + 8` of `text` as a little-endian u64.
const fn qword(text: &[u8; 64], i: usize) -> u64 {
    let mut value = 0u64;
    let mut b = 8;
    while b > 0 {
        b -= 1;
        value = value << 8 | text[8 * i + b] as u64;
    }
    value
}

/// Workload 5, `uart-puts`: polled output of [`UART_PUTS_TEXT`] on COM1. Per byte: `mov
/// dx, 0x3fd; in al, dx; test al, 0x20; jz` (bounded), then the byte (the low byte of
/// RSI, shifted right after each one) to THR with `out dx, al`. RSI holds 8 bytes;
/// R8-R14 hold the other 56 and move down one register every 8 bytes. 128 IO when THRE
/// is always set (sluice's UART sends at once); a slower UART costs more LSR reads.
#[inline(never)]
fn uart_puts() -> Result<(), Fail> {
    let left: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "mov rsi, {q0}",
            "mov r8, {q1}",
            "mov r9, {q2}",
            "mov r10, {q3}",
            "mov r11, {q4}",
            "mov r12, {q5}",
            "mov r13, {q6}",
            "mov r14, {q7}",
            "mov ecx, 64",
            "2:",
            "mov dx, 0x3fd",
            "mov edi, {bound}",
            "3:",
            "in al, dx",
            "test al, 0x20",
            "jnz 4f",
            "dec edi",
            "jnz 3b",
            "jmp 5f",
            "4:",
            "mov al, sil",
            "mov dx, 0x3f8",
            "out dx, al",
            "shr rsi, 8",
            "dec ecx",
            "jz 5f",
            "test cl, 7",
            "jnz 2b",
            "mov rsi, r8",
            "mov r8, r9",
            "mov r9, r10",
            "mov r10, r11",
            "mov r11, r12",
            "mov r12, r13",
            "mov r13, r14",
            "jmp 2b",
            "5:",
            end_of_burst!(),
            q0 = const qword(UART_PUTS_TEXT, 0),
            q1 = const qword(UART_PUTS_TEXT, 1),
            q2 = const qword(UART_PUTS_TEXT, 2),
            q3 = const qword(UART_PUTS_TEXT, 3),
            q4 = const qword(UART_PUTS_TEXT, 4),
            q5 = const qword(UART_PUTS_TEXT, 5),
            q6 = const qword(UART_PUTS_TEXT, 6),
            q7 = const qword(UART_PUTS_TEXT, 7),
            bound = const LSR_POLL_BOUND,
            out("rax") _, out("ecx") left, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, out("r12") _,
            out("r13") _, out("r14") _,
            options(nomem),
        );
    }
    if left != 0 {
        return Err(Fail {
            what: "COM1 LSR never showed THRE (bytes left)",
            value: u64::from(left),
        });
    }
    Ok(())
}

/// The buffer `rep-outsb` sends: the bytes 0..=255.
static OUTSB_BUFFER: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// Workload 6, `rep-outsb`: `rep outsb` of [`OUTSB_BUFFER`] (256 bytes) to port 0x80,
/// which sluice accepts and drops. 1 IO instruction of 256 elements.
#[inline(never)]
fn rep_outsb() -> Result<(), Fail> {
    let left: u64;
    // SAFETY: reads the 256 bytes of OUTSB_BUFFER (DF is clear, as the ABI promises);
    // otherwise as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "lea rsi, [rip + {buffer}]",
            "mov edx, 0x80",
            "mov ecx, 256",
            "rep outsb",
            end_of_burst!(),
            buffer = sym OUTSB_BUFFER,
            out("rcx") left, out("rdx") _, out("rsi") _,
            options(readonly),
        );
    }
    if left != 0 {
        return Err(Fail {
            what: "rep outsb left RCX nonzero",
            value: left,
        });
    }
    Ok(())
}

/// Workload 7, `cmos-read`: 16 CMOS reads in a loop, indices 0x0E-0x1D (the
/// configuration bytes: no clock register, no read-to-clear status C), index in DL,
/// folded into R8D (`r8d = 2 * r8d + data`), `inc dl; dec ecx; jnz`. 32 IO.
#[inline(never)]
fn cmos_read() -> Result<(), Fail> {
    let fold: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "mov r8d, 0",
            "mov dl, 0x0e",
            "mov ecx, 16",
            "2:",
            "mov al, dl",
            "out 0x70, al",
            "in al, 0x71",
            "mov r9d, 0",
            "mov r9b, al",
            "add r8d, r8d",
            "add r8d, r9d",
            "inc dl",
            "dec ecx",
            "jnz 2b",
            end_of_burst!(),
            out("rax") _, out("rcx") _, out("rdx") _, out("r8d") fold, out("r9") _,
            options(nomem),
        );
    }
    black_box(fold);
    Ok(())
}

/// Workload 8, `pci-scan`: configuration mechanism 1 over bus 0, devices 0-31, function
/// 0: address `0x80000000 | dev << 11` to 0xCF8 (OUT DX, EAX), the vendor/device dword
/// from 0xCFC (IN EAX, DX); devices whose vendor ID is not 0xFFFF are counted in R8D.
/// `add esi, 0x800; dec ecx; jnz`. 64 IO.
#[inline(never)]
fn pci_scan() -> Result<(), Fail> {
    let found: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "mov r8d, 0",
            "mov esi, 0x80000000",
            "mov ecx, 32",
            "2:",
            "mov eax, esi",
            "mov dx, 0xcf8",
            "out dx, eax",
            "mov dx, 0xcfc",
            "in eax, dx",
            "cmp ax, 0xffff",
            "je 3f",
            "inc r8d",
            "3:",
            "add esi, 0x800",
            "dec ecx",
            "jnz 2b",
            end_of_burst!(),
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("r8d") found,
            options(nomem),
        );
    }
    black_box(found);
    Ok(())
}

/// Workload 9, `vga-crtc`: the VGA CRTC registers 0x00-0x0F read through the index/data
/// pair 0x3D4/0x3D5 (`mov dx, 0x3d4; mov al, i; out dx, al; inc dx; in al, dx`),
/// unrolled as a console driver's register dump is, folded into R8B. 32 IO.
#[inline(never)]
fn vga_crtc() -> Result<(), Fail> {
    macro_rules! crtc {
        ($index:literal) => {
            concat!(
                "mov dx, 0x3d4\n mov al, ",
                $index,
                "\n out dx, al\n inc dx\n in al, dx\n xor r8b, al\n add r8d, r8d\n",
            )
        };
    }
    let fold: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            "mov r8d, 0",
            crtc!("0x00"),
            crtc!("0x01"),
            crtc!("0x02"),
            crtc!("0x03"),
            crtc!("0x04"),
            crtc!("0x05"),
            crtc!("0x06"),
            crtc!("0x07"),
            crtc!("0x08"),
            crtc!("0x09"),
            crtc!("0x0a"),
            crtc!("0x0b"),
            crtc!("0x0c"),
            crtc!("0x0d"),
            crtc!("0x0e"),
            crtc!("0x0f"),
            end_of_burst!(),
            out("rax") _, out("rdx") _, out("r8d") fold,
            options(nomem),
        );
    }
    black_box(fold);
    Ok(())
}

/// Workload 10, `driver-init`: the start of a small kernel's device setup as one
/// sequence: PIC init (24, as `pic-init`), PIT channel 0 (3, as `pit-program`), UART
/// init (7, as `uart-init`), four CMOS reads (8: status B and the equipment/memory
/// bytes 0x10, 0x14, 0x15) and a PCI scan of bus 0 devices 0-7 (16, as `pci-scan`). 58
/// IO.
#[inline(never)]
fn driver_init() -> Result<(), Fail> {
    let found: u32;
    // SAFETY: as in `pic_init`.
    unsafe {
        asm!(
            ".p2align 6",
            pic_init_asm!(),
            pit_program_asm!(),
            uart_init_asm!(),
            "mov r8d, 0",
            cmos_pair_asm!("0x0b"),
            cmos_pair_asm!("0x10"),
            cmos_pair_asm!("0x14"),
            cmos_pair_asm!("0x15"),
            "mov r8d, 0",
            "mov esi, 0x80000000",
            "mov ecx, 8",
            "2:",
            "mov eax, esi",
            "mov dx, 0xcf8",
            "out dx, eax",
            "mov dx, 0xcfc",
            "in eax, dx",
            "cmp ax, 0xffff",
            "je 3f",
            "inc r8d",
            "3:",
            "add esi, 0x800",
            "dec ecx",
            "jnz 2b",
            end_of_burst!(),
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("r8d") found,
            out("r9") _,
            options(nomem),
        );
    }
    black_box(found);
    Ok(())
}

// --- the Rust workloads -------------------------------------------------------------

/// Port helpers as a driver library has them: real functions, so every port access is
/// a call, the value travels in argument registers and the caller's code between
/// accesses is compiler-generated.
mod called {
    use core::arch::asm;

    #[inline(never)]
    pub fn outb(port: u16, value: u8) {
        // SAFETY: port IO reaches devices that cannot touch memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }
}

/// Port helpers inlined into their callers: each access is one IN or OUT in the
/// middle of compiler-generated code.
mod inlined {
    use core::arch::asm;

    #[inline(always)]
    pub fn outb(port: u16, value: u8) {
        // SAFETY: port IO reaches devices that cannot touch memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }

    #[inline(always)]
    pub fn inb(port: u16) -> u8 {
        let value: u8;
        // SAFETY: as for `outb`.
        unsafe {
            asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        value
    }
}

/// A 16550 at `base`, written through [`called::outb`] as `serial_out` does.
struct Serial {
    base: u16,
}

impl Serial {
    fn write(&self, reg: u16, value: u8) {
        called::outb(self.base + reg, value);
    }
}

/// Workload 11, `rust-uart-init`: the `uart-init` sequence (7 OUTs) from Rust through
/// the out-of-line helper; the base port goes through `black_box`, as a driver's comes
/// from a device table.
#[inline(never)]
fn rust_uart_init() -> Result<(), Fail> {
    use guest::uart::{
        COM1, IER, IIR_FCR, LCR, LCR_8N1, LCR_DLAB, MCR, MCR_DTR, MCR_OUT2, MCR_RTS,
    };
    let port = Serial {
        base: black_box(COM1),
    };
    port.write(IER, 0);
    port.write(LCR, LCR_DLAB);
    port.write(0, 1); // DLL
    port.write(1, 0); // DLM
    port.write(LCR, LCR_8N1);
    port.write(IIR_FCR, 0xc7);
    port.write(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    Ok(())
}

/// What `rust-uart-puts` writes: 64 bytes ending in a newline, from memory.
static RUST_PUTS_TEXT: [u8; 64] =
    *b"bench64 rust-uart-puts: 64 bytes polled by a Rust loop, LSR+THR\n";

/// Workload 12, `rust-uart-puts`: [`RUST_PUTS_TEXT`] polled out through COM1 by a Rust
/// loop with the inlined helpers: per byte, read LSR until THRE (bounded), write THR.
/// 128 IO when THRE is always set.
#[inline(never)]
fn rust_uart_puts() -> Result<(), Fail> {
    use guest::uart::{COM1, LSR, LSR_THR_EMPTY};
    for (sent, &byte) in RUST_PUTS_TEXT.iter().enumerate() {
        let mut polls = 0;
        while inlined::inb(COM1 + LSR) & LSR_THR_EMPTY == 0 {
            polls += 1;
            if polls == LSR_POLL_BOUND {
                return Err(Fail {
                    what: "COM1 LSR never showed THRE (bytes left)",
                    value: (RUST_PUTS_TEXT.len() - sent) as u64,
                });
            }
        }
        inlined::outb(COM1, byte);
    }
    Ok(())
}

/// Workload 13, `rust-cmos-read`: the `cmos-read` loop (indices 0x0E-0x1D, folded as `2
/// * fold + data`) in Rust with the inlined helpers. 32 IO.
#[inline(never)]
fn rust_cmos_read() -> Result<(), Fail> {
    let mut fold: u32 = 0;
    for index in 0x0e..0x1e {
        inlined::outb(0x70, index);
        fold = fold
            .wrapping_mul(2)
            .wrapping_add(u32::from(inlined::inb(0x71)));
    }
    black_box(fold);
    Ok(())
}
