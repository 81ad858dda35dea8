//! bursts64: the classic IO bursts of PC device drivers, each written as one block of
//! the instructions sluice's coalescer emulates, with the guest's register state
//! reported after each one.
//!
//! Every burst is a single `asm!` block made only of the supported subset (IN/OUT in
//! all forms, INS/OUTS, NOP/PAUSE, MOV reg<-imm/reg, ADD/SUB/AND/OR/XOR/CMP/TEST/INC/
//! DEC/SHL/SHR on registers, JMP/Jcc/LOOP inside the block), so a coalescing
//! hypervisor can emulate it from its first IO instruction to its end in one exit. No
//! instruction of a burst touches memory (except `rep outsb`, which is string IO), so
//! nothing in a burst can stop a run early except the coalescer's own limits.
//!
//! After each burst the block stores all 15 general registers but RSP, and RFLAGS, and
//! the guest prints `burst <name>: regs <checksum>` (FNV-1a over the 16 values, RFLAGS
//! masked to CF PF AF ZF SF OF, IF and DF). The coalescing contract says a burst must
//! leave exactly the registers the CPU would have left, so the lines must be the same
//! with coalescing on and off; the checksums of one build must also be the same on
//! every run, so nothing time-dependent (PIT counts, TSC, port 0x61's refresh bit)
//! reaches a register that is checksummed.
//!
//! Exit status 0 after `bursts: done`. Interrupts stay disabled throughout: no
//! interrupt can split a burst, and the PIC init leaves every IRQ but the cascade
//! masked anyway.
#![no_std]
#![no_main]

use core::arch::asm;

use guest::println;

guest::entry!(main);

/// What the capture leaves: the registers in encoding order without RSP (RAX, RCX,
/// RDX, RBX, RBP, RSI, RDI, R8-R15), then RFLAGS.
type Regs = [u64; 16];
const RFLAGS: usize = 15;
const R14: usize = 13;

/// RFLAGS bits a burst defines: CF, PF, AF, ZF, SF, IF, DF, OF. The rest (the reserved
/// bit 1, TF, IOPL, NT, RF, AC, ...) say nothing about the burst.
const FLAGS_CHECKED: u64 = 0x0ed5;
const AF: u64 = 1 << 4;

/// Opens every burst's block, before its first instruction.
///
/// RBX and RBP cannot be asm operands (LLVM reserves them), so they are saved here
/// and restored by [`epilogue!`]. The result pointer is pushed too, because the burst
/// may use every register. Then RFLAGS and all 15 registers get fixed values: a burst
/// that leaves a register or flag alone must still checksum the same in every build
/// and every run, whatever the compiler left there. The flag seed has every
/// arithmetic flag set (0x8d5 plus the reserved bit 1), so a burst whose last
/// flag-writing instruction runs before its IO keeps visibly different flags from one
/// that clears them; IF stays 0 and DF 0.
macro_rules! prologue {
    () => {
        concat!(
            "push rbx\n",
            "push rbp\n",
            "push {regs}\n",
            "push 0x8d7\n",
            "popfq\n",
            "mov rax, 0xa0a1a2a3a4a5a6a7\n",
            "mov rcx, 0xc0c1c2c3c4c5c6c7\n",
            "mov rdx, 0xd0d1d2d3d4d5d6d7\n",
            "mov rbx, 0xb0b1b2b3b4b5b6b7\n",
            "mov rbp, 0x5051525354555657\n",
            "mov rsi, 0x6061626364656667\n",
            "mov rdi, 0x7071727374757677\n",
            "mov r8, 0x0801020304050607\n",
            "mov r9, 0x0911121314151617\n",
            "mov r10, 0x1021222324252627\n",
            "mov r11, 0x1131323334353637\n",
            "mov r12, 0x1241424344454647\n",
            "mov r13, 0x1351525354555657\n",
            "mov r14, 0x1461626364656667\n",
            "mov r15, 0x1571727374757677\n",
        )
    };
}

/// Closes every burst's block. PUSHFQ is the first instruction after the burst and is
/// outside the coalescer's subset, so a coalesced run ends right there. The 16 values
/// go onto the stack in `Regs` order (RAX at the lowest address), are copied to the
/// result array whose address the prologue pushed, and RBP and RBX are restored.
///
/// The values could not all be register outputs of the block: with RBX and RBP
/// reserved only 13 registers can be, and the burst itself needs all 15. Capturing
/// through the stack after the burst keeps every memory access out of the burst.
macro_rules! epilogue {
    () => {
        concat!(
            "pushfq\n",
            "push r15\n",
            "push r14\n",
            "push r13\n",
            "push r12\n",
            "push r11\n",
            "push r10\n",
            "push r9\n",
            "push r8\n",
            "push rdi\n",
            "push rsi\n",
            "push rbp\n",
            "push rbx\n",
            "push rdx\n",
            "push rcx\n",
            "push rax\n",
            "mov rdi, [rsp + 128]\n",
            "mov rsi, rsp\n",
            "mov ecx, 16\n",
            "cld\n",
            "rep movsq\n",
            "add rsp, 136\n",
            "pop rbp\n",
            "pop rbx\n",
        )
    };
}

/// Runs one burst (the template strings) between [`prologue!`] and [`epilogue!`] and
/// returns the registers it left. Extra operands (a `sym`) may follow after `;`.
///
/// Every allocatable register is declared clobbered (`lateout`, so the result
/// pointer may share one of them: the prologue pushes it before anything is written).
macro_rules! burst {
    ($($line:expr),+ $(,)? $(; $($operand:tt)*)?) => {{
        let mut regs: Regs = [0; 16];
        // SAFETY: the block restores RBX, RBP and RSP, leaves DF clear, writes only
        // `regs` (16 u64) and the stack below RSP, and its port IO reaches devices
        // that have no access to memory. IF stays 0 (the seed RFLAGS has IF clear).
        unsafe {
            asm!(
                prologue!(),
                $($line,)+
                epilogue!(),
                regs = in(reg) regs.as_mut_ptr(),
                $($($operand)*)?
                lateout("rax") _, lateout("rcx") _, lateout("rdx") _,
                lateout("rsi") _, lateout("rdi") _,
                lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            );
        }
        regs
    }};
}

/// FNV-1a (64-bit) over the little-endian bytes of the registers, RFLAGS masked with
/// `flags_mask`.
fn checksum(regs: &Regs, flags_mask: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &value) in regs.iter().enumerate() {
        let value = if i == RFLAGS {
            value & flags_mask
        } else {
            value
        };
        for byte in value.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

fn report(name: &str, regs: &Regs) {
    println!("burst {name}: regs {:016x}", checksum(regs, FLAGS_CHECKED));
}

/// The 8259A pair initialized as Linux's `init_8259A` does: both masks closed, the
/// master's ICW1-ICW4 (IRQ0-7 at vector 0x20, slave on input 2), the slave's
/// (IRQ8-15 at 0x28, cascade identity 2), then the masks (all closed but the cascade).
/// Every PIC write is followed by `out 0x80, al`, the io delay of Linux's `outb_p`
/// (which writes whatever AL holds): 12 PIC writes, 12 delays, all OUT imm8 as the
/// compiler emits for constant ports. No flag changes: RFLAGS is the seed's.
#[inline(never)]
fn pic_init() -> Regs {
    burst!(
        "mov al, 0xff",
        "out 0x21, al",
        "out 0x80, al",
        "out 0xa1, al",
        "out 0x80, al",
        "mov al, 0x11",
        "out 0x20, al",
        "out 0x80, al",
        "mov al, 0x20",
        "out 0x21, al",
        "out 0x80, al",
        "mov al, 0x04",
        "out 0x21, al",
        "out 0x80, al",
        "mov al, 0x01",
        "out 0x21, al",
        "out 0x80, al",
        "mov al, 0x11",
        "out 0xa0, al",
        "out 0x80, al",
        "mov al, 0x28",
        "out 0xa1, al",
        "out 0x80, al",
        "mov al, 0x02",
        "out 0xa1, al",
        "out 0x80, al",
        "mov al, 0x01",
        "out 0xa1, al",
        "out 0x80, al",
        "mov al, 0xfb",
        "out 0x21, al",
        "out 0x80, al",
        "mov al, 0xff",
        "out 0xa1, al",
        "out 0x80, al",
    )
}

/// The 8254: channel 0 as the 1 kHz system tick (control word 0x34: mode 2, LSB then
/// MSB, count 1193 taken apart with CL/CH as a driver's `outb(count & 0xff)` /
/// `outb(count >> 8)` does), then channel 2 as a one-shot reference the way Linux's
/// PIT calibration sets it up: port 0x61 read-modify-written to gate channel 2 on with
/// the speaker off, control word 0xB0 (mode 0, LSB then MSB) and the 50 ms count
/// 59659 from BL/BH. 8 IO instructions.
///
/// Port 0x61 bits 4 (refresh toggle) and 5 (channel 2 OUT) change with time, so they
/// are masked off right after the IN; writing them has no effect on the chip anyway.
/// Bit 0 is then known to be clear, so the gate is set with INC rather than OR: INC
/// defines AF (OR leaves it undefined), and that instruction decides the burst's final
/// flags, which this checksum wants architecturally defined.
#[inline(never)]
fn pit_program() -> Regs {
    burst!(
        "mov al, 0x34",
        "out 0x43, al",
        "mov ecx, 1193",
        "mov al, cl",
        "out 0x40, al",
        "mov al, ch",
        "out 0x40, al",
        "in al, 0x61",
        "and al, 0x0c",
        "inc al",
        "out 0x61, al",
        "mov al, 0xb0",
        "out 0x43, al",
        "mov ebx, 59659",
        "mov al, bl",
        "out 0x42, al",
        "mov al, bh",
        "out 0x42, al",
    )
}

/// COM1 set up as every PC serial driver does: IER = 0, LCR = DLAB, divisor 1
/// (115200 baud) in DLL/DLM, LCR = 8N1, FCR = 0xC7 (FIFOs on and cleared, 14-byte
/// trigger), MCR = DTR|RTS|OUT2. 7 OUTs through DX, the port computed as base +
/// offset with 16-bit ADD/SUB/INC/DEC as a driver's `serial_out(port + reg)` does.
/// The last ADD defines every flag.
#[inline(never)]
fn uart_init() -> Regs {
    burst!(
        "mov dx, 0x3f9",
        "mov al, 0",
        "out dx, al",
        "add dx, 2",
        "mov al, 0x80",
        "out dx, al",
        "sub dx, 3",
        "mov al, 1",
        "out dx, al",
        "inc dx",
        "mov al, 0",
        "out dx, al",
        "add dx, 2",
        "mov al, 0x03",
        "out dx, al",
        "dec dx",
        "mov al, 0xc7",
        "out dx, al",
        "add dx, 2",
        "mov al, 0x0b",
        "out dx, al",
    )
}

/// Polled output of 64 bytes and a newline: for each byte, poll LSR until THRE, then
/// write THR. The byte comes from registers only: 'a' + BL with BL counting 0..25,
/// and '\n' when ECX says it is the last of the 65. So the console shows
/// `abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl`.
/// 65 LSR reads and 65 THR writes when THRE is always set (sluice's UART transmits
/// instantly); more reads would change nothing checksummed. The last flag writer is
/// `dec ecx` (all flags defined; CF from the last CMP).
#[inline(never)]
fn uart_write_64() -> Regs {
    burst!(
        "mov ecx, 65",
        "mov bl, 0",
        "2:",
        "mov dx, 0x3fd",
        "3:",
        "in al, dx",
        "test al, 0x20",
        "jz 3b",
        "mov al, 10",
        "cmp ecx, 1",
        "je 4f",
        "mov al, bl",
        "add al, 0x61",
        "inc bl",
        "cmp bl, 26",
        "jne 4f",
        "mov bl, 0",
        "4:",
        "mov dx, 0x3f8",
        "out dx, al",
        "dec ecx",
        "jnz 2b",
    )
}

/// 16 CMOS reads, index to 0x70 and data from 0x71 (OUT/IN imm8 as `CMOS_READ`
/// compiles), each folded into EBX with `add ebx, ebx; add ebx, eax` (a shift by one
/// written as ADD so the final flags are all defined). The indices avoid the clock
/// (0x00-0x09) and the update-in-progress bit (0x0A) and the read-to-clear status C
/// (0x0C): status B, status D, then the configuration bytes 0x0E-0x1B, so the result
/// stays deterministic even once sluice emulates an RTC. 32 IO instructions. Today
/// the ports are unclaimed and every read gives 0xFF.
#[inline(never)]
fn cmos_read() -> Regs {
    macro_rules! cmos {
        ($index:literal) => {
            concat!(
                "mov al, ",
                $index,
                "\n",
                "out 0x70, al\n",
                "in al, 0x71\n",
                "add ebx, ebx\n",
                "add ebx, eax\n",
            )
        };
    }
    burst!(
        "mov ebx, 0",
        cmos!("0x0b"),
        cmos!("0x0d"),
        cmos!("0x0e"),
        cmos!("0x0f"),
        cmos!("0x10"),
        cmos!("0x11"),
        cmos!("0x12"),
        cmos!("0x13"),
        cmos!("0x14"),
        cmos!("0x15"),
        cmos!("0x16"),
        cmos!("0x17"),
        cmos!("0x18"),
        cmos!("0x19"),
        cmos!("0x1a"),
        cmos!("0x1b"),
    )
}

/// PCI configuration mechanism 1: the vendor/device dword of bus 0, devices 0-7,
/// function 0 (address 0x80000000 | dev << 11 to 0xCF8, data from 0xCFC), as a bus
/// scan starts. Each dword is folded into RDI (64-bit ADDs, so IN EAX's zero-extension
/// of RAX counts). 16 IO instructions; today every read gives 0xFFFFFFFF.
#[inline(never)]
fn pci_scan() -> Regs {
    macro_rules! pci {
        ($address:literal) => {
            concat!(
                "mov eax, ",
                $address,
                "\n",
                "mov dx, 0xcf8\n",
                "out dx, eax\n",
                "mov dx, 0xcfc\n",
                "in eax, dx\n",
                "add rdi, rdi\n",
                "add rdi, rax\n",
            )
        };
    }
    burst!(
        "mov edi, 0",
        pci!("0x80000000"),
        pci!("0x80000800"),
        pci!("0x80001000"),
        pci!("0x80001800"),
        pci!("0x80002000"),
        pci!("0x80002800"),
        pci!("0x80003000"),
        pci!("0x80003800"),
    )
}

/// VGA CRTC registers through the index/data pair 0x3D4/0x3D5: cursor shape, start
/// address, cursor location, overflow and maximum scan line, as a console driver reads
/// them. The data port is reached with `inc dx`; each byte is folded into BL and BH
/// (high-byte register) with XOR and ADD, the ADD last so the flags are defined.
/// 16 IO instructions; today every read gives 0xFF.
#[inline(never)]
fn vga_crtc() -> Regs {
    macro_rules! crtc {
        ($index:literal) => {
            concat!(
                "mov dx, 0x3d4\n",
                "mov al, ",
                $index,
                "\n",
                "out dx, al\n",
                "inc dx\n",
                "in al, dx\n",
                "xor bl, al\n",
                "add bh, bl\n",
            )
        };
    }
    burst!(
        "mov ebx, 0",
        crtc!("0x0a"),
        crtc!("0x0b"),
        crtc!("0x0c"),
        crtc!("0x0d"),
        crtc!("0x0e"),
        crtc!("0x0f"),
        crtc!("0x07"),
        crtc!("0x09"),
    )
}

/// The buffer `rep outsb` sends.
static OUTS_BUFFER: [u8; 32] = *b"sluice rep outsb: 32 bytes to 80";

/// `rep outsb` of a 32-byte buffer to port 0x80 (accepted and silent, so nothing
/// shows): one instruction, 32 port writes, RSI and RCX updated per element. The
/// buffer's address is set before the IO (so it runs natively in any case); after it,
/// `sub rsi, rdi` turns RSI into the distance moved (32) and RDI is overwritten, so the
/// checksum does not depend on where the linker put the buffer.
#[inline(never)]
fn rep_outsb() -> Regs {
    burst!(
        "lea rdi, [rip + {buffer}]",
        "mov rsi, rdi",
        "mov edx, 0x80",
        "mov ecx, 32",
        "rep outsb",
        "sub rsi, rdi",
        "mov rdi, rdx";
        buffer = sym OUTS_BUFFER,
    )
}

// --- alu-mix ------------------------------------------------------------------------
//
// The coalescer's emulator has to reproduce every register result and every flag of
// the instructions between IO instructions. The checksum at the end only sees the
// final RFLAGS, so after each tested instruction the flags are copied into registers
// with the only flag-reading instructions of the subset, Jcc, and with MOV, which
// writes no flags: R8D-R12D get CF, PF, ZF, SF, OF as their RFLAGS bit values (0 when
// clear). Then the destination register (all 64 bits, so a wrong zero-extension or a
// clobbered upper byte shows) and the flags are mixed into R15. AF cannot be read by
// any Jcc; only the final RFLAGS shows it.
//
// Flags the shifts leave undefined (SDM Vol. 2B "SAL/SAR/SHL/SHR—Shift": OF after a
// shift by more than 1, CF after an 8- or 16-bit shift by at least the operand width)
// go into R14 instead of R15, so `alu-mix-defined` (R14 zeroed, AF masked) tells a
// difference in undefined flags from a real one. Each check starts with `out 0x80, al`,
// so even a coalescer with a short extent (a cache line) gets an exit, and emulates,
// all through the block.

/// Copies CF, PF, ZF, SF and OF to R8D-R12D without changing any flag.
macro_rules! capture {
    () => {
        concat!(
            "mov r8d, 0\n jnc 2f\n mov r8d, 0x1\n 2:\n",
            "mov r9d, 0\n jnp 2f\n mov r9d, 0x4\n 2:\n",
            "mov r10d, 0\n jnz 2f\n mov r10d, 0x40\n 2:\n",
            "mov r11d, 0\n jns 2f\n mov r11d, 0x80\n 2:\n",
            "mov r12d, 0\n jno 2f\n mov r12d, 0x800\n 2:\n",
        )
    };
}

/// acc = (acc ^ value) * 33, with R13 as scratch (value may be R13: it is read first).
macro_rules! mix {
    ($acc:literal, $value:literal) => {
        concat!(
            "xor ",
            $acc,
            ", ",
            $value,
            "\n",
            "mov r13, ",
            $acc,
            "\n",
            "shl ",
            $acc,
            ", 5\n",
            "add ",
            $acc,
            ", r13\n",
        )
    };
}

/// One check: io, the instruction(s) under test, the flag capture, and the mix of the
/// 64-bit destination register and the flags. The third argument says which flags the
/// last instruction leaves undefined besides AF: none, OF (`of`), or CF and OF (`cf_of`).
macro_rules! check {
    ($op:literal, $dst:literal) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r8d, r9d\n or r8d, r10d\n or r8d, r11d\n or r8d, r12d\n",
            mix!("r15", "r8"),
        )
    };
    ($op:literal, $dst:literal, of) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r8d, r9d\n or r8d, r10d\n or r8d, r11d\n",
            mix!("r15", "r8"),
            mix!("r14", "r12"),
        )
    };
    ($op:literal, $dst:literal, cf_of) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r9d, r10d\n or r9d, r11d\n or r8d, r12d\n",
            mix!("r15", "r9"),
            mix!("r14", "r8"),
        )
    };
}

/// More variants of [`check!`] by what the last instruction leaves undefined:
/// `bt` (only CF and ZF defined: the bit tests), `mul` (only CF and OF: MUL and
/// IMUL), `div` (no status flag defined: DIV and IDIV). The undefined ones go to R14.
macro_rules! check_some {
    ($op:literal, $dst:literal, bt) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r8d, r10d\n or r9d, r11d\n or r9d, r12d\n",
            mix!("r15", "r8"),
            mix!("r14", "r9"),
        )
    };
    ($op:literal, $dst:literal, mul) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r8d, r12d\n or r9d, r10d\n or r9d, r11d\n",
            mix!("r15", "r8"),
            mix!("r14", "r9"),
        )
    };
    ($op:literal, $dst:literal, div) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            capture!(),
            mix!("r15", $dst),
            "or r8d, r9d\n or r8d, r10d\n or r8d, r11d\n or r8d, r12d\n",
            mix!("r14", "r8"),
        )
    };
}

/// Which Jcc are taken after `$op` (a CMP or other flag setter): the eleven condition
/// codes the flag capture does not use (JB JBE JL JLE JO JP JGE JS JE JA JG), as bits
/// of R8D-R13D mixed into R15. `$op` runs twice, as there are not enough registers to
/// hold all eleven answers while the flags must stay untouched.
macro_rules! conditions {
    ($op:literal) => {
        concat!(
            "out 0x80, al\n",
            $op,
            "\n",
            "mov r8d, 0x1\n jb 2f\n mov r8d, 0\n 2:\n",
            "mov r9d, 0x2\n jbe 2f\n mov r9d, 0\n 2:\n",
            "mov r10d, 0x4\n jl 2f\n mov r10d, 0\n 2:\n",
            "mov r11d, 0x8\n jle 2f\n mov r11d, 0\n 2:\n",
            "mov r12d, 0x10\n jo 2f\n mov r12d, 0\n 2:\n",
            "mov r13d, 0x20\n jp 2f\n mov r13d, 0\n 2:\n",
            "jnl 2f\n or r13d, 0x40\n 2:\n",
            "out 0x80, al\n",
            $op,
            "\n",
            "mov r8d, 0x100\n js 2f\n mov r8d, 0\n 2:\n",
            "mov r9d, 0x200\n je 2f\n mov r9d, 0\n 2:\n",
            "mov r10d, 0x400\n ja 2f\n mov r10d, 0\n 2:\n",
            "mov r11d, 0x800\n jg 2f\n mov r11d, 0\n 2:\n",
            "or r8d, r9d\n or r8d, r10d\n or r8d, r11d\n or r8d, r12d\n or r8d, r13d\n",
            mix!("r15", "r8"),
        )
    };
}

/// An IO instruction, then a long run of every supported ALU operation at every width
/// (8-bit including AH-BH and the REX-only SIL/DIL/BPL/R13B, 16, 32, 64) with
/// immediate (imm8 sign-extended, imm16/32, accumulator short forms) and register
/// sources, at the edges where flags flip (0x7F+1, 0xFF+1, 0x8000-1, 0x80000000-1,
/// ...), shifts by 0, 1, 2, 7, 8, 31 (and CL counts that the CPU masks: 32, 33, 64),
/// alternative encodings spelled out in bytes, every Jcc condition taken and not
/// taken, near (rel32) Jcc and JMP, and LOOP/LOOPE/LOOPNE with RCX and ECX.
///
/// The first IO instruction reads PCI config data (0xCFC) into EAX with RAX's upper half
/// set: IN EAX must zero-extend, as every 32-bit register write in 64-bit mode does.
/// The block ends with an AND, which leaves AF undefined in the final RFLAGS.
#[inline(never)]
fn alu_mix() -> Regs {
    burst!(
        "mov dx, 0xcfc",
        "in eax, dx",
        "in al, 0x21",
        "mov r15, rax",
        "mov r14, 0",
        // MOV: every width and form; flags stay as IN left them (the seed's).
        check!("mov rax, 0x8000000000000001", "rax"),
        check!("mov eax, 0xffffffff", "rax"),
        check!("mov ax, 0x7fff", "rax"),
        check!("mov al, 0x7f", "rax"),
        check!("mov ah, 0x80", "rax"),
        check!("mov rbx, -2", "rbx"),
        check!("mov bl, ah", "rbx"),
        check!("mov bh, al", "rbx"),
        check!("mov ecx, ebx", "rcx"),
        check!("mov cx, ax", "rcx"),
        check!("mov rdx, rax", "rdx"),
        check!("mov dh, ch", "rdx"),
        check!("mov sil, 0x81", "rsi"),
        check!("mov dil, sil", "rdi"),
        check!("mov si, 0x8000", "rsi"),
        check!("mov r13, rbx", "r13"),
        check!("mov r13d, 0x12345678", "r13"),
        check!("mov bpl, 0x55", "rbp"),
        check!("mov ebp, r11d", "rbp"),
        check!(".byte 0xc6, 0xc0, 0x5a  // mov al, 0x5a (C6 /0 ib)", "rax"),
        check!(".byte 0x8b, 0xd8  // mov ebx, eax (8B /r)", "rbx"),
        check!(".byte 0x88, 0xe7  // mov bh, ah (88 /r)", "rbx"),
        // ADD
        check!("mov al, 0x7f\n add al, 1", "rax"),
        check!("mov bl, 0xff\n add bl, 1", "rbx"),
        check!("mov ah, 0xf0\n mov bh, 0x10\n add ah, bh", "rax"),
        check!("mov ax, 0x7fff\n add ax, 1", "rax"),
        check!("mov cx, 0xffff\n add cx, 1", "rcx"),
        check!("add si, -1", "rsi"),
        check!("mov eax, 0x7fffffff\n add eax, 1", "rax"),
        check!("mov edx, 0xffffffff\n add edx, 1", "rdx"),
        check!("add eax, 0x80000000", "rax"),
        check!("mov rax, 0x7fffffffffffffff\n add rax, 1", "rax"),
        check!("add rbx, -0x80000000", "rbx"),
        check!("add rcx, rdx", "rcx"),
        check!("add r13d, eax", "r13"),
        check!("add dil, 0x7f", "rdi"),
        check!("add bpl, sil", "rbp"),
        check!("add al, 0x80", "rax"),
        check!("add cx, 0x1234", "rcx"),
        check!("mov al, 0x0f\n add al, 0x01", "rax"),
        check!(".byte 0x03, 0xc1  // add eax, ecx (03 /r)", "rax"),
        check!(".byte 0x80, 0xc4, 0x01  // add ah, 1 (80 /0 ib)", "rax"),
        // SUB
        check!("mov al, 0\n sub al, 1", "rax"),
        check!("mov al, 0x80\n sub al, 1", "rax"),
        check!("mov ch, 0x10\n mov dh, 0x20\n sub ch, dh", "rcx"),
        check!("mov ax, 0x8000\n sub ax, 1", "rax"),
        check!("sub bx, 0x7fff", "rbx"),
        check!("mov eax, 0x80000000\n sub eax, 1", "rax"),
        check!("sub ecx, 0x12345678", "rcx"),
        check!("mov rdx, 0x8000000000000000\n sub rdx, 1", "rdx"),
        check!("sub rsi, rdi", "rsi"),
        check!("sub rdi, -1", "rdi"),
        check!("sub r13w, bx", "r13"),
        check!("sub bpl, 0x80", "rbp"),
        check!("mov al, 0x10\n sub al, 0x01", "rax"),
        check!("sub eax, eax", "rax"),
        check!(".byte 0x2b, 0xca  // sub ecx, edx (2B /r)", "rcx"),
        // AND
        check!("mov al, 0xf0\n and al, 0x0f", "rax"),
        check!("mov ah, 0xc3\n and ah, 0x80", "rax"),
        check!("and bh, ch", "rbx"),
        check!("mov ax, 0xffff\n and ax, 0x8001", "rax"),
        check!("and cx, dx", "rcx"),
        check!("mov rax, -1\n and eax, 0x7fffffff", "rax"),
        check!("mov rax, -1\n and eax, -1", "rax"),
        check!("and rbx, -16", "rbx"),
        check!("mov rdx, -1\n and rdx, 0x7fffffff", "rdx"),
        check!("and rsi, rdi", "rsi"),
        check!("mov sil, 0xff\n and sil, 0x3c", "rsi"),
        check!("and r13, rax", "r13"),
        // OR
        check!("mov al, 0\n or al, 0", "rax"),
        check!("or al, 0x80", "rax"),
        check!("or dh, bh", "rdx"),
        check!("mov ax, 0\n or ax, 0x7fff", "rax"),
        check!("or si, di", "rsi"),
        check!("mov rax, -1\n mov eax, 0\n or eax, 0x80000000", "rax"),
        check!("or ecx, edx", "rcx"),
        check!("or rbx, -0x80000000", "rbx"),
        check!("or rdi, rsi", "rdi"),
        check!("or bpl, 1", "rbp"),
        check!("or r13b, al", "r13"),
        // XOR
        check!("xor al, al", "rax"),
        check!("xor ah, 0xff", "rax"),
        check!("mov bx, 0x3c5a\n xor bl, bh", "rbx"),
        check!("xor cx, 0x8000", "rcx"),
        check!("xor dx, cx", "rdx"),
        check!("mov rax, -1\n xor eax, eax", "rax"),
        check!("xor esi, 0xdeadbeef", "rsi"),
        check!("xor rdi, -1", "rdi"),
        check!("xor rbx, rcx", "rbx"),
        check!("xor r13d, r13d", "r13"),
        check!("xor dil, 0x80", "rdi"),
        check!(".byte 0x32, 0xe0  // xor ah, al (32 /r)", "rax"),
        // CMP
        check!("mov al, 0x80\n cmp al, 0x7f", "rax"),
        check!("cmp al, 0x80", "rax"),
        check!("mov ah, 1\n mov bh, 2\n cmp ah, bh", "rax"),
        check!("mov ax, 0x7fff\n cmp ax, 0x8000", "rax"),
        check!("mov bx, 5\n mov cx, 5\n cmp bx, cx", "rbx"),
        check!("mov eax, 0x80000000\n cmp eax, 0x7fffffff", "rax"),
        check!("mov ecx, 1\n mov edx, 2\n cmp ecx, edx", "rcx"),
        check!("mov rdx, 0\n cmp rdx, -1", "rdx"),
        check!("mov rsi, -1\n mov rdi, 0x7fffffffffffffff\n cmp rsi, rdi", "rsi"),
        check!("cmp r13, rax", "r13"),
        check!("mov bpl, 0x7f\n cmp bpl, 0x80", "rbp"),
        check!("cmp dil, sil", "rdi"),
        check!("mov al, 0x10\n cmp al, 0x01", "rax"),
        // TEST
        check!("mov al, 0x80\n test al, 0x80", "rax"),
        check!("mov ah, 0\n test ah, ah", "rax"),
        check!("test bh, 0x01", "rbx"),
        check!("mov ax, 0x8000\n test ax, 0x8000", "rax"),
        check!("test cx, dx", "rcx"),
        check!("mov eax, 0x80000000\n test eax, 0x80000000", "rax"),
        check!("test esi, esi", "rsi"),
        check!("test rdi, rdi", "rdi"),
        check!("mov rbx, -1\n test rbx, 0x7fffffff", "rbx"),
        check!("test r13, rdx", "r13"),
        check!("mov sil, 0x0f\n mov dil, 0xf0\n test sil, dil", "rsi"),
        // INC/DEC (CF is left alone: set or cleared by the ADD/SUB before them)
        check!("mov al, 0x7f\n inc al", "rax"),
        check!("mov ah, 0xff\n inc ah", "rax"),
        check!("mov bl, 0xff\n add bl, 1\n inc bl", "rbx"),
        check!("mov bh, 0x80\n dec bh", "rbx"),
        check!("mov cx, 0x7fff\n inc cx", "rcx"),
        check!("mov dx, 0\n dec dx", "rdx"),
        check!("mov rsi, -1\n mov esi, 0xffffffff\n inc esi", "rsi"),
        check!("mov rdi, -1\n mov edi, 0\n dec edi", "rdi"),
        check!("mov rax, 0x7fffffffffffffff\n inc rax", "rax"),
        check!("mov rbx, 0\n dec rbx", "rbx"),
        check!("inc r13w", "r13"),
        check!("dec bpl", "rbp"),
        check!("mov al, 0\n sub al, 1\n dec al", "rax"),
        check!("mov al, 0x0f\n inc al", "rax"),
        check!(".byte 0xfe, 0xc4  // inc ah (FE /0)", "rax"),
        // SHL/SHR, 8-bit
        check!("mov al, 0x81\n shl al, 1", "rax"),
        check!("mov al, 0x81\n shr al, 1", "rax"),
        check!("mov al, 0x41\n shl al, 2", "rax", of),
        check!("mov al, 0xc3\n shr al, 7", "rax", of),
        check!("mov al, 0xff\n shl al, 8", "rax", cf_of),
        check!("mov al, 0xff\n shr al, 31", "rax", cf_of),
        check!("mov al, 0x80\n cmp al, 0x7f\n shl al, 0", "rax"),
        check!("mov ah, 0x81\n shl ah, 1", "rax"),
        check!("mov bh, 0xc0\n shr bh, 2", "rbx", of),
        check!("mov cl, 1\n mov dl, 0x80\n shl dl, cl", "rdx"),
        check!("mov cl, 7\n mov dil, 0x81\n shr dil, cl", "rdi", of),
        check!("mov sil, 0x40\n add sil, sil\n mov cl, 0\n shl sil, cl", "rsi"),
        check!("mov cl, 33\n mov al, 0x81\n shl al, cl", "rax"),
        check!("mov cl, 32\n mov al, 0x40\n add al, al\n shr al, cl", "rax"),
        check!("mov r13b, 0x80\n shr r13b, 1", "r13"),
        check!(".byte 0xc0, 0xe0, 0x01  // shl al, 1 (C0 /4 ib)", "rax"),
        // 16-bit
        check!("mov ax, 0x8001\n shl ax, 1", "rax"),
        check!("mov ax, 0x4001\n shl ax, 2", "rax", of),
        check!("mov bx, 0x8000\n shr bx, 7", "rbx", of),
        check!("mov cx, 0xffff\n shl cx, 8", "rcx", of),
        check!("mov dx, 0xffff\n shr dx, 31", "rdx", cf_of),
        check!("mov si, 0xffff\n shl si, 16", "rsi", cf_of),
        check!("mov cl, 2\n mov di, 0x8003\n shr di, cl", "rdi", of),
        check!("mov bp, 0x8000\n shr bp, 1", "rbp"),
        // 32-bit
        check!("mov eax, 0x80000001\n shl eax, 1", "rax"),
        check!("mov eax, 0x80000000\n shr eax, 31", "rax", of),
        check!("mov ebx, 0xff\n shl ebx, 31", "rbx", of),
        check!("mov edx, 0x12345678\n shl edx, 8", "rdx", of),
        check!("mov esi, 0x7f\n shr esi, 7", "rsi", of),
        check!("mov edi, 0x80000000\n shr edi, 1", "rdi"),
        check!("mov rdi, -1\n mov edi, 0x40000000\n shl edi, 1", "rdi"),
        check!("mov cl, 33\n mov ebp, 0x40000001\n shl ebp, cl", "rbp"),
        check!("mov cl, 31\n mov r13d, 0xffffffff\n shr r13d, cl", "r13", of),
        check!(".byte 0xc1, 0xe0, 0x01  // shl eax, 1 (C1 /4 ib)", "rax"),
        // 64-bit
        check!("mov rax, 0x8000000000000001\n shl rax, 1", "rax"),
        check!("mov rbx, 0x8000000000000000\n shr rbx, 1", "rbx"),
        check!("mov rcx, 0x4000000000000001\n shl rcx, 2", "rcx", of),
        check!("mov rdx, -1\n shr rdx, 7", "rdx", of),
        check!("mov rsi, -1\n shl rsi, 8", "rsi", of),
        check!("mov rdi, -1\n shr rdi, 31", "rdi", of),
        check!("mov cl, 63\n mov rbp, 1\n shl rbp, cl", "rbp", of),
        check!("mov rax, -1\n mov cl, 64\n cmp cl, 0x7f\n shl rax, cl", "rax"),
        check!("mov r13, -1\n cmp r13, 0\n shr r13, 0", "r13"),
        // Shifts by 0 on a 32-bit register: flags untouched; whether the CPU still
        // writes the register (zero-extending RAX) is what this compares.
        check!("mov rax, -1\n cmp eax, 0\n shl eax, 0", "rax"),
        check!("mov rax, -1\n mov cl, 32\n cmp eax, 0\n shr eax, cl", "rax"),
        // Jcc: each condition after CMPs that cover every combination of CF/ZF/SF/OF.
        conditions!("mov eax, 5\n cmp eax, 5"),
        conditions!("mov eax, 4\n cmp eax, 5"),
        conditions!("mov eax, 6\n cmp eax, 5"),
        conditions!("mov eax, -1\n cmp eax, 5"),
        conditions!("mov eax, 5\n cmp eax, -1"),
        conditions!("mov eax, 0x80000000\n cmp eax, 1"),
        conditions!("mov eax, 0x7fffffff\n cmp eax, -1"),
        conditions!("mov al, 3\n test al, al"),
        // Near Jcc and JMP (rel32: the code between is longer than 127 bytes). The
        // skipped checks would change R15 if a taken branch fell through.
        "out 0x80, al",
        "mov eax, 1",
        "cmp eax, 1",
        "je 5f",
        check!("mov rax, 0x5a5a5a5a5a5a5a5a", "rax"),
        check!("mov rbx, 0x5a5a5a5a5a5a5a5a", "rbx"),
        "5:",
        "mov r12d, 0",
        "jne 5f",
        check!("mov rcx, 0x1111111111111111", "rcx"),
        check!("mov rdx, 0x2222222222222222", "rdx"),
        "5:",
        "jmp 6f",
        check!("mov rsi, 0x3333333333333333", "rsi"),
        check!("mov rdi, 0x4444444444444444", "rdi"),
        "6:",
        "jmp 6f",
        "mov r15, 0",
        "6:",
        check!("nop", "rax"),
        // LOOP with RCX, LOOP with ECX (address-size prefix), LOOPNE, LOOPE.
        check!("mov ecx, 5\n mov eax, 0\n 7:\n add eax, ecx\n loop 7b", "rax"),
        check!("mov rcx, 1\n mov edx, 9\n 7:\n inc edx\n loop 7b", "rcx"),
        check!("mov ecx, 3\n mov ebx, 0\n 7:\n add ebx, 2\n .byte 0x67\n loop 7b  // loop with ECX", "rbx"),
        check!("mov ecx, 10\n mov edx, 0\n 7:\n inc edx\n cmp edx, 4\n loopne 7b", "rdx"),
        check!("mov ecx, 8\n mov esi, 0\n 7:\n inc esi\n test esi, 4\n loope 7b", "rsi"),
        check!("mov ecx, 8\n mov edi, 0\n 7:\n inc edi\n cmp edi, edi\n loope 7b", "rcx"),
        // NOP, PAUSE, multi-byte NOPs (their ModRM operand is never accessed).
        check!("nop\n pause\n .byte 0x0f, 0x1f, 0x44, 0x00, 0x00\n .byte 0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0", "rax"),
        // A last fully defined check, so R8-R12 hold defined flags, then the AND.
        check!("mov eax, 0x12345678\n cmp eax, 0x12345679", "rax"),
        "out 0x80, al",
        "and eax, ebx",
    )
}

/// The ALU operations beyond `alu-mix`, with the same checks: ADC and SBB (carry in
/// set by a CMP that borrows, or cleared), NEG, NOT, SAR, and the rotates ROL, ROR,
/// RCL, RCR by 1 (OF defined), by immediates and CL counts past the width (the masked
/// and the modulo-(width+1) counts of RCL/RCR on 8/16-bit operands) and by a masked
/// count of 0, at every width, with alternative encodings as bytes. Ends with an AND.
#[inline(never)]
fn alu_ext() -> Regs {
    burst!(
        "in al, 0x21",
        "mov r15, rax",
        "mov r14, 0",
        // ADC (CF = 1 from `cmp x, 1` with x = 0; CF = 0 from `cmp x, 0`)
        check!("mov al, 0\n cmp al, 1\n mov al, 0x7f\n adc al, 0", "rax"),
        check!("mov bl, 0\n cmp bl, 1\n mov bl, 0xff\n adc bl, 0", "rbx"),
        check!("mov al, 0\n cmp al, 1\n mov al, 0x0e\n adc al, 1", "rax"),
        check!("mov ah, 0\n cmp ah, 1\n mov bh, 0x7f\n adc ah, bh", "rax"),
        check!("mov ax, 0\n cmp ax, 1\n mov ax, 0xfffe\n adc ax, 1", "rax"),
        check!(
            "mov ecx, 0\n cmp ecx, 1\n mov ecx, 0x7fffffff\n adc ecx, 0",
            "rcx"
        ),
        check!("mov eax, 1\n cmp eax, 0\n adc eax, 0x7fffffff", "rax"),
        check!(
            "mov rdx, -1\n mov rsi, -1\n add rdx, rsi\n adc rsi, rdx",
            "rsi"
        ),
        check!("mov rbx, 0\n cmp rbx, 1\n adc rbx, -1", "rbx"),
        check!("mov r13d, 0\n cmp r13d, 1\n adc r13d, 0x12345678", "r13"),
        check!("mov dil, 0\n cmp dil, 1\n adc dil, sil", "rdi"),
        check!("mov eax, 0\n cmp eax, 1\n adc eax, 0x80000000", "rax"),
        check!(
            "mov ecx, 3\n cmp ecx, 4\n .byte 0x13, 0xc1  // adc eax, ecx (13 /r)",
            "rax"
        ),
        // SBB
        check!("mov al, 0\n cmp al, 1\n mov al, 0x80\n sbb al, 0", "rax"),
        check!("mov bl, 0\n cmp bl, 1\n mov bl, 0\n sbb bl, 0", "rbx"),
        check!(
            "mov al, 0x10\n cmp al, 0x11\n mov al, 0x10\n sbb al, 0",
            "rax"
        ),
        check!("mov cx, 0\n cmp cx, 1\n mov cx, 1\n sbb cx, 0", "rcx"),
        check!("mov edx, 5\n cmp edx, 1\n sbb edx, 5", "rdx"),
        check!("mov rsi, 0\n cmp rsi, 1\n sbb rsi, rsi", "rsi"),
        check!("mov r13, 0\n cmp r13, 1\n sbb r13, -0x80000000", "r13"),
        check!("mov dil, 0x80\n cmp dil, 0x81\n sbb dil, sil", "rdi"),
        check!("mov ch, 0\n cmp ch, 1\n sbb ch, 0x7f", "rcx"),
        check!(
            "mov eax, 1\n cmp eax, 2\n .byte 0x1b, 0xd0  // sbb edx, eax (1B /r)",
            "rdx"
        ),
        // NEG (CF = operand != 0)
        check!("mov al, 0\n neg al", "rax"),
        check!("mov al, 0x80\n neg al", "rax"),
        check!("mov ah, 0x01\n neg ah", "rax"),
        check!("mov bx, 1\n neg bx", "rbx"),
        check!("mov cx, 0x8000\n neg cx", "rcx"),
        check!("mov ecx, 0x80000000\n neg ecx", "rcx"),
        check!("mov rsi, -1\n mov esi, 5\n neg esi", "rsi"),
        check!("mov rdx, 0x10\n neg rdx", "rdx"),
        check!("mov r13b, 0x10\n neg r13b", "r13"),
        check!("mov rdi, 0x8000000000000000\n neg rdi", "rdi"),
        // NOT (no flags: the CMP's stay)
        check!("mov al, 0x0f\n cmp al, 0x10\n not al", "rax"),
        check!("mov bh, 0x80\n cmp bh, 0\n not bh", "rbx"),
        check!("mov cx, 0x8000\n not cx", "rcx"),
        check!("mov rdx, -1\n mov edx, 0\n not edx", "rdx"),
        check!("not rsi", "rsi"),
        check!("not r13w", "r13"),
        check!("not bpl", "rbp"),
        // SAR (OF = 0 for a count of 1; CF is the sign past the width)
        check!("mov al, 0x81\n sar al, 1", "rax"),
        check!("mov al, 0x7f\n sar al, 1", "rax"),
        check!("mov al, 0x80\n sar al, 7", "rax", of),
        check!("mov al, 0x80\n sar al, 8", "rax", of),
        check!("mov al, 0x40\n sar al, 31", "rax", of),
        check!("mov ah, 0xc1\n sar ah, 1", "rax"),
        check!("mov ax, 0x8001\n sar ax, 15", "rax", of),
        check!("mov bx, 0x4000\n sar bx, 16", "rbx", of),
        check!("mov ecx, 0x80000000\n sar ecx, 31", "rcx", of),
        check!("mov cl, 33\n mov edx, 0x80000003\n sar edx, cl", "rdx"),
        check!("mov rsi, 0x8000000000000000\n sar rsi, 63", "rsi", of),
        check!("mov cl, 0\n mov rdi, -1\n cmp rdi, 1\n sar rdi, cl", "rdi"),
        check!(
            "mov eax, 0x87654321\n .byte 0xc1, 0xf8, 0x04  // sar eax, 4 (C1 /7 ib)",
            "rax",
            of
        ),
        check!(
            "mov r13, -2\n .byte 0x49, 0xd1, 0xfd  // sar r13, 1 (D1 /7)",
            "r13"
        ),
        // ROL/ROR (only CF and OF change; OF defined for a count of 1)
        check!("mov al, 0x81\n rol al, 1", "rax"),
        check!("mov al, 0x81\n ror al, 1", "rax"),
        check!("mov al, 0x41\n rol al, 1", "rax"),
        check!("mov al, 0x81\n rol al, 4", "rax", of),
        check!("mov al, 0x81\n rol al, 8", "rax", of),
        check!("mov al, 0x01\n ror al, 9", "rax", of),
        check!("mov bh, 0x80\n ror bh, 1", "rbx"),
        check!("mov bx, 0x8001\n rol bx, 1", "rbx"),
        check!("mov cx, 0x1234\n ror cx, 16", "rcx", of),
        check!("mov edx, 0x80000001\n rol edx, 31", "rdx", of),
        check!("mov cl, 33\n mov esi, 0x80000000\n rol esi, cl", "rsi"),
        check!("mov rdi, 0x8000000000000001\n ror rdi, 1", "rdi"),
        check!("mov cl, 63\n mov rbp, 3\n rol rbp, cl", "rbp", of),
        check!("mov rax, -1\n mov cl, 32\n cmp eax, 1\n ror eax, cl", "rax"),
        check!(
            "mov eax, 0x12345678\n .byte 0xd1, 0xc0  // rol eax, 1 (D1 /0)",
            "rax"
        ),
        check!("mov cl, 4\n mov r13w, 0xf00f\n ror r13w, cl", "r13", of),
        // RCL/RCR (through CF; counts modulo 9 and 17 on 8- and 16-bit operands)
        check!("mov al, 0\n cmp al, 1\n mov al, 0x80\n rcl al, 1", "rax"),
        check!("mov al, 0\n cmp al, 1\n mov al, 0x01\n rcr al, 1", "rax"),
        check!("mov al, 0x40\n cmp al, 0\n rcl al, 1", "rax"),
        check!("mov bl, 0x81\n cmp bl, 0\n rcl bl, 9", "rbx", of),
        check!(
            "mov bl, 0\n cmp bl, 1\n mov bl, 0x81\n rcr bl, 10",
            "rbx",
            of
        ),
        check!(
            "mov cx, 0\n cmp cx, 1\n mov cx, 0x8000\n rcl cx, 17",
            "rcx",
            of
        ),
        check!("mov dx, 0x0001\n cmp dx, 0\n rcr dx, 3", "rdx", of),
        check!(
            "mov esi, 0\n cmp esi, 1\n mov esi, 0x40000000\n rcl esi, 2",
            "rsi",
            of
        ),
        check!("mov cl, 31\n mov edi, 1\n rcr edi, cl", "rdi", of),
        check!(
            "mov rbp, 0\n cmp rbp, 1\n mov rbp, 0x4000000000000000\n rcl rbp, 1",
            "rbp"
        ),
        check!("mov cl, 64\n mov r13, 5\n cmp r13, 6\n rcr r13, cl", "r13"),
        check!(
            "mov ah, 0\n cmp ah, 1\n mov ah, 0x55\n .byte 0xd0, 0xd4  // rcl ah, 1 (D0 /2)",
            "rax"
        ),
        // A last fully defined check, so R8-R12 hold defined flags, then the AND.
        check!("mov eax, 0x12345678\n cmp eax, 0x12345679", "rax"),
        "out 0x80, al",
        "and eax, ebx",
    )
}

/// The data moves, bit tests, multiplies, divides, conversions, one-flag instructions
/// and indirect branches the emulator gained after `alu-ext`, with the same checks:
/// CMOVcc taken and not (a not-taken 32-bit CMOV still zero-extends), SETcc, XCHG
/// (register pairs, 90+r, byte registers), BSWAP, BT/BTS/BTR/BTC by register and
/// immediate offsets past the width, IMUL with two and three operands, MUL/IMUL/DIV/
/// IDIV at every width (the double-width results folded with a flag-neutral LEA),
/// CBW..CQO, CLC/STC/CMC/CLD/STD, PUSHFQ/POPFQ, STI (its shadow covering a CLI, so no
/// interrupt can come), CMPXCHG and XADD on registers and, locked, on a stack slot,
/// LOCK ADD/NEG/BTS on memory, and CALL/JMP through a register and through memory (a
/// stack slot, like a function pointer). Ends with an AND.
#[inline(never)]
fn alu_more() -> Regs {
    burst!(
        "in al, 0x21",
        "mov r15, rax",
        "mov r14, 0",
        // CMOVcc
        check!("mov eax, 5\n cmp eax, 5\n mov ecx, 7\n cmove eax, ecx", "rax"),
        check!("mov rax, -1\n mov ecx, 7\n cmp ecx, 7\n cmovne eax, ecx", "rax"),
        check!("mov rdx, 0x123456789\n cmp edx, 0\n cmovl rdx, rax", "rdx"),
        check!("mov si, 0x8000\n cmp si, 1\n mov di, 3\n cmovs si, di", "rsi"),
        check!("mov r13, 5\n cmp r13, 6\n cmovb r13, rcx", "r13"),
        // SETcc
        check!("mov eax, 0x1234\n cmp eax, 0x1234\n sete al", "rax"),
        check!("mov ebx, -1\n cmp ebx, 1\n setg bh", "rbx"),
        check!("mov rcx, -1\n cmp rcx, 1\n setb cl", "rcx"),
        check!("mov edi, 0\n cmp edi, 1\n seto dil", "rdi"),
        check!("mov r13, -1\n add r13, 1\n setnc r13b", "r13"),
        // XCHG
        check!("mov rax, 1\n mov rdx, 2\n xchg rax, rdx\n lea rax, [rax + rdx*4]", "rax"),
        check!("mov rbx, -1\n mov ecx, 3\n xchg ebx, ecx\n lea rbx, [rbx + rcx*2]", "rbx"),
        check!("mov eax, 0x1122\n xchg ah, al", "rax"),
        check!("mov rsi, 5\n mov rax, 9\n xchg rsi, rax\n lea rsi, [rsi + rax*8]", "rsi"),
        check!("mov rax, -1\n .byte 0x87, 0xc0  // xchg eax, eax (87 /r: zero-extends)", "rax"),
        // BSWAP
        check!("mov eax, 0x11223344\n bswap eax", "rax"),
        check!("mov rdx, 0x0102030405060708\n bswap rdx", "rdx"),
        check!("mov r13, -1\n mov r13d, 0x80\n bswap r13d", "r13"),
        // BT/BTS/BTR/BTC
        check_some!("mov eax, 0x80000001\n mov ecx, 31\n bt eax, ecx", "rax", bt),
        check_some!("mov eax, 2\n cmp eax, 2\n bt eax, 33", "rax", bt),
        check_some!("mov rdx, 0\n mov rcx, 63\n bts rdx, rcx", "rdx", bt),
        check_some!("mov si, -1\n btr si, 15", "rsi", bt),
        check_some!("mov edi, 0x10\n btc edi, 4", "rdi", bt),
        check_some!("mov r13, 1\n mov ecx, 100\n btc r13, rcx", "r13", bt),
        // IMUL (two and three operands)
        check_some!("mov eax, 7\n mov ecx, -3\n imul eax, ecx", "rax", mul),
        check_some!("mov ax, 0x4000\n mov cx, 4\n imul ax, cx", "rax", mul),
        check_some!("mov rdx, 0x100000000\n imul rdx, rdx", "rdx", mul),
        check_some!("mov ecx, 0x10000\n imul ebx, ecx, 0x10000", "rbx", mul),
        check_some!("mov esi, -5\n imul edi, esi, -7", "rdi", mul),
        // MUL/IMUL one operand: rDX:rAX folded into RAX with LEA (no flags)
        check_some!("mov eax, 0x90\n mov cl, 2\n mul cl", "rax", mul),
        check_some!("mov eax, 0x40\n mov cl, 2\n imul cl", "rax", mul),
        check_some!("mov eax, 0xffff\n mov ecx, 0xffff\n mul cx\n lea rax, [rax + rdx*2]", "rax", mul),
        check_some!("mov eax, 0x80000000\n mov ecx, 2\n mul ecx\n lea rax, [rax + rdx*2]", "rax", mul),
        check_some!("mov rax, -1\n mov rcx, -1\n mul rcx\n lea rax, [rax + rdx*2]", "rax", mul),
        check_some!("mov rax, -1\n mov rcx, 3\n imul rcx\n lea rax, [rax + rdx*2]", "rax", mul),
        // DIV/IDIV (no faults here)
        check_some!("mov eax, 0x107\n mov cl, 0x10\n div cl", "rax", div),
        check_some!("mov eax, 0xfff9\n mov cl, 2\n idiv cl", "rax", div),
        check_some!("mov edx, 1\n mov eax, 0\n mov ecx, 2\n div ecx\n lea rax, [rax + rdx*2]", "rax", div),
        check_some!("mov rdx, -1\n mov rax, -7\n mov rcx, 2\n idiv rcx\n lea rax, [rax + rdx*2]", "rax", div),
        check_some!("mov dx, 0\n mov ax, 1000\n mov cx, 7\n div cx\n lea rax, [rax + rdx*2]", "rax", div),
        // CBW .. CQO
        check!("mov eax, 0x80\n cbw", "rax"),
        check!("mov rax, -1\n mov eax, 0x8000\n cwde", "rax"),
        check!("mov eax, 0x80000000\n cdqe", "rax"),
        check!("mov ax, 0x8000\n cwd", "rdx"),
        check!("mov eax, 0x7fffffff\n cdq", "rdx"),
        check!("mov rax, -2\n cqo", "rdx"),
        // CLC/STC/CMC/CLD/STD (DF cleared again: the burst leaves it clear)
        check!("mov eax, 1\n cmp eax, 1\n stc", "rax"),
        check!("stc\n cmc", "rax"),
        check!("cmp eax, eax\n clc", "rax"),
        check!("std\n cld", "rax"),
        // PUSHFQ/POPFQ, STI (its shadow covers the CLI: no interrupt window), CLI
        check!("mov eax, 1\n cmp eax, 2\n pushfq\n pop rax", "rax"),
        check!("mov rax, 0x8d7\n push rax\n popfq", "rax"),
        check!("mov rax, 0x2\n push rax\n popfq\n pushfq\n pop rdx", "rdx"),
        check!("sti\n cli", "rax"),
        // CMPXCHG and XADD, on registers and (locked) on a stack slot
        check!("mov rax, 5\n mov rcx, 5\n mov rdx, 9\n cmpxchg rcx, rdx", "rcx"),
        check!("mov rax, 6\n mov rcx, 5\n mov rdx, 9\n cmpxchg rcx, rdx", "rax"),
        check!("mov ax, 0x8000\n mov bx, 1\n cmpxchg bx, cx", "rax"),
        check!("mov qword ptr [rsp - 16], 7\n mov rax, 7\n mov rcx, 3\n lock cmpxchg [rsp - 16], rcx\n mov rdx, [rsp - 16]", "rdx"),
        check!("mov dword ptr [rsp - 16], 8\n mov eax, 7\n mov ecx, 3\n lock cmpxchg [rsp - 16], ecx", "rax"),
        check!("mov eax, 1\n mov ecx, 2\n xadd eax, ecx\n lea rax, [rax + rcx*4]", "rax"),
        check!("mov qword ptr [rsp - 16], -1\n mov rcx, 1\n lock xadd [rsp - 16], rcx\n mov rdx, [rsp - 16]\n lea rdx, [rdx + rcx*2]", "rdx"),
        check!("mov qword ptr [rsp - 16], 0x7f\n lock add byte ptr [rsp - 16], 1\n mov rdx, [rsp - 16]", "rdx"),
        check!("mov qword ptr [rsp - 16], 1\n lock neg qword ptr [rsp - 16]\n mov rdx, [rsp - 16]", "rdx"),
        check_some!("mov qword ptr [rsp - 16], 0\n mov ecx, 70\n lock bts [rsp - 16], rcx\n mov rdx, [rsp - 8]", "rdx", bt),
        // CALL/JMP through a register and through memory (a stack slot)
        check!("mov ecx, 1\n lea rax, [rip + 8f]\n call rax\n jmp 9f\n 8:\n add ecx, 2\n ret\n 9:", "rcx"),
        check!("mov ecx, 1\n lea rax, [rip + 8f]\n mov [rsp - 16], rax\n call qword ptr [rsp - 16]\n jmp 9f\n 8:\n add ecx, 4\n ret\n 9:", "rcx"),
        check!("mov ecx, 1\n lea rdx, [rip + 8f]\n jmp rdx\n add ecx, 8\n 8:\n add ecx, 16", "rcx"),
        // A last fully defined check, so R8-R12 hold defined flags, then the AND.
        check!("mov eax, 0x12345678\n cmp eax, 0x12345679", "rax"),
        "out 0x80, al",
        "and eax, ebx",
    )
}

/// [`measured`] for a burst whose R14 and final AF hold flags the SDM leaves
/// undefined (SDM Vol. 2B "SAL/SAR/SHL/SHR—Shift" and each instruction's "Flags
/// Affected"; AF after the final AND: SDM Vol. 2A "AND—Logical AND"): a second line,
/// `<name>-defined`, sums the registers without them.
fn measured_alu(name: &str, burst: fn() -> Regs) {
    let mut regs = measured(name, burst);
    regs[R14] = 0;
    println!(
        "burst {name}-defined: regs {:016x}",
        checksum(&regs, FLAGS_CHECKED & !AF)
    );
}

/// Runs one burst between two reads of sluice's IO counters, reports its register
/// checksum (identical with coalescing on and off) and, on a line of its own that the
/// on/off comparison leaves out, what the burst cost in exits.
fn measured(name: &str, burst: fn() -> Regs) -> Regs {
    let before = guest::hypercall::counters();
    let regs = burst();
    let d = before.delta(guest::hypercall::counters());
    report(name, &regs);
    println!(
        "exits {name}: {} IO exits for {} IO instructions ({} instructions emulated)",
        d.io_exits, d.io_instructions, d.emulated
    );
    regs
}

fn main() -> u32 {
    measured("pic-init", pic_init);
    measured("pit-program", pit_program);
    measured("uart-init", uart_init);
    measured("uart-write-64", uart_write_64);
    measured("cmos-read", cmos_read);
    measured("pci-scan", pci_scan);
    measured("vga-crtc", vga_crtc);
    measured("rep-outsb", rep_outsb);
    measured_alu("alu-mix", alu_mix);
    measured_alu("alu-ext", alu_ext);
    measured_alu("alu-more", alu_more);
    println!("bursts: done");
    0
}
