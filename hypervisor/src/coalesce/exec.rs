//! Executing a decoded block exactly as the CPU would (docs/COALESCING.md, "The
//! contract").
//!
//! [`run`] follows RIP through the decoded instructions of one block, starting at the
//! exiting IO instruction, and stops *before* anything it cannot prove it executes
//! exactly as the processor would; the CPU then executes that natively. Every stop
//! leaves [`CpuState`] as the CPU would have left it at an instruction boundary (or
//! between two iterations of a REP string instruction, with RIP still on it).
//!
//! Architectural rules followed (Intel SDM):
//! - Register writes (Vol. 1 3.4.1.1 "General-Purpose Registers in 64-Bit Mode"):
//!   8- and 16-bit destinations (AL..R15B, AH..BH,
//!   AX..R15W) merge into the register; 32-bit destinations zero-extend to 64 bits;
//!   64-bit ones are written whole. Outside 64-bit mode the upper 32 bits are not
//!   visible and are undefined after a mode switch; they are zeroed there too, which is
//!   what the processor does and what `exits.rs` does for IN EAX.
//! - IN EAX zero-extends into RAX in every mode, for the same reason and to match the
//!   single-instruction handler in `exits.rs` (one exit per IO instruction must leave
//!   the same registers). IN AL / IN AX merge.
//! - INS/OUTS (Vol. 2A "INS/INSB/INSW/INSD—Input from Port to String"; Vol. 2B
//!   "OUTS/OUTSB/OUTSW/OUTSD—Output String to Port",
//!   "REP/REPE/REPZ/REPNE/REPNZ—Repeat String Operation Prefix"): the address is the
//!   segment base plus rSI
//!   or rDI truncated to the address size (ES:rDI for INS, `seg`:rSI for OUTS; in
//!   64-bit mode only FS and GS have a base), and is truncated to 32 bits outside
//!   64-bit mode. rSI/rDI step by the element size, down if RFLAGS.DF. Register updates
//!   at a 16-bit address size keep bits 63:16; at a 32-bit address size they are
//!   32-bit register writes and zero-extend (also in 64-bit mode with an 0x67 prefix).
//!   REP tests rCX before each element (rCX = 0 at the start does nothing and
//!   retires the instruction) and decrements it after each one.
//! - LOOP/LOOPE/LOOPNE decrement rCX of the address size (same masking rules), flags
//!   untouched; Jcc conditions follow Vol. 1 Table B-1 "EFLAGS Condition Codes".
//! - ALU status flags (Vol. 1 3.4.3.1 "Status Flags"; Vols. 2A-2C, "Flags Affected"
//!   on each instruction's page), computed at the
//!   operation width; PF is the even parity of the low result byte; AF is the carry
//!   or borrow out of bit 3.
//!
//! Architecturally undefined flags, and what this module produces (the processor's
//! value may differ; the differential tests mask these out, see [`defined_flags`]):
//! - AND, OR, XOR, TEST: AF = 0 (Intel processors clear it).
//! - SHL/SHR with a non-zero masked count: AF = 0, like the logic instructions (an
//!   AMD EPYC host was seen to set AF = 1 here; guests cannot rely on either).
//! - SHL/SHR with a masked count > 1: OF by the count-1 formula written in terms of
//!   the final result: SHL OF = MSB(result) XOR CF; SHR OF = MSB(result) XOR the bit
//!   below it (equal to MSB(original) for a count of 1), hence 0 for counts > 1. Both
//!   agree with an AMD EPYC host (probed) and with what Bochs models for Intel.
//! - SHL/SHR of an 8- or 16-bit operand with a count >= the width: CF is the last bit
//!   a wide shift moves out of the operand: SHL CF = bit (width - count) of the
//!   operand, i.e. bit 0 for count = width and 0 beyond; SHR CF = bit (count - 1),
//!   i.e. the MSB for count = width and 0 beyond. The result is 0 either way.
//!   (32- and 64-bit counts are masked to width - 1 at most, so CF is always defined.)
//! - A masked shift count of 0 changes no flag at all (defined).
//!
//! Stops (the [`StopReason`] of the returned [`RunResult`]):
//! - `BranchOut`: a taken branch (or LOOP) whose target is not an instruction boundary
//!   of this block, or beyond the code size's IP range; RIP reaching anything else that
//!   is not a boundary (e.g. the IP wrapping at 64 KiB). State is left before the branch.
//! - `scan_end` (the caller's reason): falling through past the last decoded
//!   instruction.
//! - `Limit`: `max_insns` instructions were executed (the first one always runs), or
//!   `max_string_elements` INS/OUTS elements were done in this run (RIP stays on a REP
//!   instruction with elements left; with a budget of 0 nothing is done at all).
//! - `IoPermission`: an IO instruction other than the first (which the processor
//!   permission-checked before the VM exit, SDM Vol. 3C 26.1.1 "Relative Priority of
//!   Faults and VM Exits") with CPL > IOPL or
//!   RFLAGS.VM = 1.
//! - `InterruptPending`: after an IO access, RFLAGS.IF = 1 and [`IoEnv::interrupt_pending`]
//!   says yes. The instruction is completed (a REP instruction only up to the element
//!   just done: the CPU takes interrupts between iterations).
//! - `Memory`: an INS/OUTS element whose bytes do not translate for the access at the
//!   current CPL or are not guest RAM (page fault, non-canonical address, MMIO); or an
//!   INS element that would write into the block's own code bytes. Nothing of that
//!   element is done, no port is accessed.
//! - `SingleStep`: RFLAGS.TF = 1, before any instruction after the first.
//! - `Unsupported`: an instruction the executor cannot carry out exactly: a register
//!   or width that does not exist in the code mode, a 64-bit IO width, a form left
//!   to the CPU (see docs/COALESCING.md).
//! - `Fault`: the instruction would raise an exception that is not about memory
//!   (#DE, CLI/STI at CPL > IOPL).
//!
//! Memory operands, the stack and the non-IO string instructions go through the
//! segment checks of `segment` and the paging rules of `memory`. String IO, like the
//! one-instruction handler in `exits.rs`, does not check data-segment limits.
//!
//! Counting: [`RunResult::executed`] counts instructions executed wholly or in part (a
//! REP instruction stopped between elements counts once; one stopped before its first
//! element does not), so `executed == 0` means the state was not changed at all.

use super::insn::{
    AluOp, CodeMode, Cond, FlagOp, Insn, LoopKind, MemRef, MulOp, Op, Operand, PortSrc, RegRef,
    Repeat, Rm, Seg, StopReason, StrKind,
};
use super::memory::{self, Pieces};
use super::segment::{self, AddressingMode, SegRegs};
use crate::x86::guest_mem::{
    check_linear, read_linear_as, translate, write_linear, Access, GuestMemory, PagingContext,
    PAGE_SIZE,
};
use crate::x86::regs::GuestRegs;
use crate::x86::Width;

// The status flags by their short names, for the ALU code below.
const CF: u64 = Rflags::CF.bits();
const PF: u64 = Rflags::PF.bits();
const AF: u64 = Rflags::AF.bits();
const ZF: u64 = Rflags::ZF.bits();
const SF: u64 = Rflags::SF.bits();
const OF: u64 = Rflags::OF.bits();
const STATUS: u64 = Rflags::STATUS;
use crate::x86::{update_addr_reg, Cr4, Rflags};

/// The guest state a run reads and changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub regs: GuestRegs,
    /// RSP (the VMCS guest RSP field, not in [`GuestRegs`]): the stack pointer and an
    /// ordinary register operand (index 4) too.
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
    pub mode: CodeMode,
    /// Segment bases, limits and access rights indexed by `Seg as usize` (ES, CS, SS,
    /// DS, FS, GS). In 64-bit mode the ES, CS, SS and DS bases are ignored (treated as
    /// 0, SDM Vol. 3A 3.2.4 "Segmentation in IA-32e Mode") and no limit applies.
    pub segs: SegRegs,
    /// Current privilege level (SS.DPL).
    pub cpl: u8,
    /// For the string-IO memory accesses.
    pub paging: PagingContext,
    /// Instructions executed since the last IO instruction of this exit (a run stops
    /// with `Limit` at [`Limits::max_quiet`]: nothing is gained by emulating code
    /// without IO).
    pub quiet: u32,
    /// The last instruction executed was an STI that set IF: the next one runs with
    /// interrupts blocked (SDM Vol. 2B "STI—Set Interrupt Flag"). A run that stops here
    /// leaves blocking by STI in the VMCS interruptibility state (SDM Vol. 3C 25.4.2
    /// "Guest Non-Register State").
    pub sti_shadow: bool,
}

/// The devices and the interrupt controller as the executor sees them.
pub trait IoEnv {
    fn io_read(&mut self, port: u16, width: Width) -> u32;
    fn io_write(&mut self, port: u16, width: Width, value: u32);
    /// After a device access: does the interrupt controller now have an interrupt
    /// pending? (The executor combines this with RFLAGS.IF.)
    fn interrupt_pending(&mut self) -> bool;
    /// Whether a timer event fell due since the exit (the engine asks between blocks).
    /// On hardware a run lasts microseconds; in an emulator it can outlast a timer
    /// period, and a tick the PIC cannot latch in time is lost to the guest.
    fn timer_due(&mut self) -> bool {
        false
    }
}

/// Bounded work per exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Instructions per run; the first instruction runs even if this is 0.
    pub max_insns: u32,
    /// INS/OUTS elements per run, over all string instructions of the run.
    pub max_string_elements: u32,
    /// Instructions a run executes after its last IO instruction at most: ordinary
    /// code runs faster natively than emulated, and only the exits saved count.
    pub max_quiet: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// Instructions executed wholly or in part (see the module documentation).
    pub executed: u32,
    /// Of those, IO instructions (a partly done REP INS/OUTS counts).
    pub io_insns: u32,
    /// INS/OUTS elements transferred.
    pub string_elements: u32,
    pub stop: StopReason,
}

/// The IP range of a code size: IP, EIP or RIP.
/// CPL <= IOPL outside virtual-8086 mode: IO needs no TSS bitmap check (SDM Vol. 1
/// 19.5 "Protected-Mode I/O"), so the emulator may perform it without asking the CPU.
pub fn io_permitted(state: &CpuState) -> bool {
    let iopl = ((state.rflags & Rflags::IOPL.bits()) >> Rflags::IOPL_SHIFT) as u8;
    state.rflags & Rflags::VM.bits() == 0 && state.cpl <= iopl
}

pub const fn ip_mask(mode: CodeMode) -> u64 {
    match mode {
        CodeMode::Bits16 => 0xFFFF,
        CodeMode::Bits32 => 0xFFFF_FFFF,
        CodeMode::Bits64 => u64::MAX,
    }
}

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

/// Whether the operation writes its destination (CMP and TEST do not).
pub const fn writes_dst(op: AluOp) -> bool {
    !matches!(op, AluOp::Cmp | AluOp::Test | AluOp::Bt)
}

/// The shift count as the processor uses it: 5 bits, 6 for 64-bit operands.
pub const fn shift_count(width: Width, src: u64) -> u32 {
    let mask = if matches!(width, Width::W64) {
        0x3F
    } else {
        0x1F
    };
    (src & mask) as u32
}

/// The rotate count as the processor uses it: the masked count, reduced modulo the
/// width for ROL/ROR and modulo width + 1 for RCL/RCR on 8- and 16-bit operands (SDM
/// Vol. 2B "RCL/RCR/ROL/ROR—Rotate", the tempCOUNT of the operation).
pub const fn rotate_count(op: AluOp, width: Width, src: u64) -> u32 {
    let count = shift_count(width, src);
    match (op, width) {
        (AluOp::Rol | AluOp::Ror, Width::W8 | Width::W16) => count % width.bits(),
        (AluOp::Rcl | AluOp::Rcr, Width::W8 | Width::W16) => count % (width.bits() + 1),
        _ => count,
    }
}

/// The status flags whose value after `op` is architecturally defined (unchanged
/// flags count as defined: their defined value is the old one). A differential
/// checker compares `flags & defined_flags(..)`.
pub const fn defined_flags(op: AluOp, width: Width, src: u64) -> u64 {
    match op {
        AluOp::Add
        | AluOp::Adc
        | AluOp::Sub
        | AluOp::Sbb
        | AluOp::Cmp
        | AluOp::Inc
        | AluOp::Dec
        | AluOp::Neg
        | AluOp::Not => STATUS,
        AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => STATUS & !AF,
        AluOp::Shl | AluOp::Shr | AluOp::Sar => {
            let count = shift_count(width, src);
            if count == 0 {
                return STATUS;
            }
            let mut d = STATUS & !AF;
            if count > 1 {
                d &= !OF;
            }
            // SHL/SHR leave CF undefined for counts of the width or more (8/16-bit
            // operands); SAR's CF is the sign bit then, defined.
            if count >= width.bits() && !matches!(op, AluOp::Sar) {
                d &= !CF;
            }
            d
        }
        // Rotates change CF and OF only; OF is defined for a masked count of 1.
        AluOp::Rol | AluOp::Ror | AluOp::Rcl | AluOp::Rcr => {
            if shift_count(width, src) > 1 {
                STATUS & !OF
            } else {
                STATUS
            }
        }
        // CF is the bit, ZF is unchanged; OF, SF, AF, PF are undefined.
        AluOp::Bt | AluOp::Bts | AluOp::Btr | AluOp::Btc => CF | ZF,
        // CF = OF = overflow; SF, ZF, AF, PF are undefined.
        AluOp::Imul => CF | OF,
    }
}

/// SF, ZF and PF of a `width`-bit result.
const fn szp(width: Width, r: u64) -> u64 {
    let mut f = 0;
    if r & width.mask() == 0 {
        f |= ZF;
    }
    if (r >> (width.bits() - 1)) & 1 != 0 {
        f |= SF;
    }
    if (r as u8).count_ones() % 2 == 0 {
        f |= PF;
    }
    f
}

const fn bit(cond: bool, flag: u64) -> u64 {
    if cond {
        flag
    } else {
        0
    }
}

/// Executes an ALU operation at `width` on `dst` and `src` with the incoming
/// `rflags`: returns the result (what the destination receives if [`writes_dst`]) and
/// the new RFLAGS (only status flags change). Operands are masked to the width. The
/// architecturally undefined flags are produced as the module documentation says.
pub const fn alu(op: AluOp, width: Width, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    let m = width.mask();
    let top = width.bits() - 1;
    let a = dst & m;
    let b = src & m;
    let keep = rflags & !STATUS;
    let carry_in = rflags & CF;
    match op {
        AluOp::Add | AluOp::Adc | AluOp::Inc => {
            let b = if matches!(op, AluOp::Inc) { 1 } else { b };
            let c = if matches!(op, AluOp::Adc) {
                carry_in
            } else {
                0
            };
            // The carry out of the width: in 128 bits nothing overflows.
            let wide = a as u128 + b as u128 + c as u128;
            let r = (wide as u64) & m;
            let cf = if matches!(op, AluOp::Inc) {
                carry_in
            } else {
                bit(wide > m as u128, CF)
            };
            let of = bit(((a ^ r) & (b ^ r)) >> top & 1 != 0, OF);
            let af = bit((a ^ b ^ r) & 0x10 != 0, AF);
            (r, keep | cf | of | af | szp(width, r))
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp | AluOp::Dec | AluOp::Neg => {
            // NEG is 0 - a (SDM Vol. 2B "NEG—Two's Complement Negation": CF = (a != 0),
            // flags as for SUB).
            let (a, b) = match op {
                AluOp::Dec => (a, 1),
                AluOp::Neg => (0, a),
                _ => (a, b),
            };
            let c = if matches!(op, AluOp::Sbb) {
                carry_in
            } else {
                0
            };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            let cf = if matches!(op, AluOp::Dec) {
                carry_in
            } else {
                bit((a as u128) < b as u128 + c as u128, CF)
            };
            let of = bit(((a ^ b) & (a ^ r)) >> top & 1 != 0, OF);
            let af = bit((a ^ b ^ r) & 0x10 != 0, AF);
            (r, keep | cf | of | af | szp(width, r))
        }
        AluOp::Not => (!a & m, rflags),
        AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => {
            let r = match op {
                AluOp::Or => a | b,
                AluOp::Xor => a ^ b,
                _ => a & b,
            };
            // CF = OF = 0; AF undefined: 0.
            (r, keep | szp(width, r))
        }
        AluOp::Shl | AluOp::Shr | AluOp::Sar => {
            let count = shift_count(width, src);
            if count == 0 {
                return (a, rflags);
            }
            let bits = width.bits();
            let (r, cf, of) = match op {
                AluOp::Shl => {
                    // count <= 63 and, for 64-bit operands, < bits: no shift overflows.
                    let r = (a << count) & m;
                    let cf = count <= bits && (a >> (bits - count)) & 1 != 0;
                    let of = ((r >> top) & 1 != 0) != cf;
                    (r, cf, of)
                }
                AluOp::Shr => {
                    let r = a >> count;
                    let cf = (a >> (count - 1)) & 1 != 0;
                    // MSB(result) XOR the bit below it: the original MSB for a count
                    // of 1 (the defined case), 0 for larger counts.
                    let of = ((r >> top) ^ (r >> (top - 1))) & 1 != 0;
                    (r, cf, of)
                }
                _ => {
                    // The sign fills in from the left; past the width every bit is the
                    // sign, and so is the last bit shifted out. OF = 0 (defined for a
                    // count of 1, chosen for larger counts).
                    let s = sign_extend(a, width) as i64;
                    let r = (s >> if count > 63 { 63 } else { count }) as u64 & m;
                    let cf = if count > top {
                        (a >> top) & 1 != 0
                    } else {
                        (a >> (count - 1)) & 1 != 0
                    };
                    (r, cf, false)
                }
            };
            // AF undefined: 0.
            (r, keep | bit(cf, CF) | bit(of, OF) | szp(width, r))
        }
        AluOp::Rol | AluOp::Ror | AluOp::Rcl | AluOp::Rcr => {
            if shift_count(width, src) == 0 {
                return (a, rflags);
            }
            let t = rotate_count(op, width, src);
            // RCL/RCR of an 8/16-bit operand by a multiple of width + 1 rotate nothing
            // and keep CF; OF is undefined (a masked count above 1) and kept, as the
            // emulated CPU (Bochs) keeps it. ROL/ROR by a multiple of the width still
            // set CF and OF from the operand (SDM Vol. 2B "RCL/RCR/ROL/ROR—Rotate").
            if t == 0 && matches!(op, AluOp::Rcl | AluOp::Rcr) {
                return (a, rflags);
            }
            let bits = width.bits();
            let (r, cf) = match op {
                AluOp::Rol => {
                    let r = if t == 0 {
                        a
                    } else {
                        ((a << t) | (a >> (bits - t))) & m
                    };
                    (r, r & 1 != 0)
                }
                AluOp::Ror => {
                    let r = if t == 0 {
                        a
                    } else {
                        ((a >> t) | (a << (bits - t))) & m
                    };
                    (r, (r >> top) & 1 != 0)
                }
                _ => {
                    // CF:a as one (width + 1)-bit value, rotated within it.
                    let n = bits + 1;
                    let mask = (1u128 << n) - 1;
                    let v = ((carry_in as u128) << bits) | a as u128;
                    let v = if t == 0 {
                        v
                    } else if matches!(op, AluOp::Rcl) {
                        ((v << t) | (v >> (n - t))) & mask
                    } else {
                        ((v >> t) | (v << (n - t))) & mask
                    };
                    ((v as u64) & m, (v >> bits) & 1 != 0)
                }
            };
            // OF (defined for a masked count of 1, the same formula otherwise): ROL
            // and RCL MSB(result) XOR CF; ROR and RCR the two top bits of the result.
            let of = match op {
                AluOp::Rol | AluOp::Rcl => ((r >> top) & 1 != 0) != cf,
                _ => ((r >> top) ^ (r >> (top - 1))) & 1 != 0,
            };
            (r, (rflags & !(CF | OF)) | bit(cf, CF) | bit(of, OF))
        }
        AluOp::Bt | AluOp::Bts | AluOp::Btr | AluOp::Btc => {
            // The offset modulo the width (a register bit base; a memory base has its
            // address adjusted by the caller first).
            let mask = 1u64 << (src & (width.bits() - 1) as u64);
            let r = match op {
                AluOp::Bts => a | mask,
                AluOp::Btr => a & !mask,
                AluOp::Btc => a ^ mask,
                _ => a,
            };
            // Only CF changes: the undefined OF, SF, AF and PF keep their values, as
            // in Bochs.
            ((r & m), (rflags & !CF) | bit(a & mask != 0, CF))
        }
        AluOp::Imul => {
            let p = (sign_extend(a, width) as i64 as i128) * (sign_extend(b, width) as i64 as i128);
            let r = (p as u64) & m;
            let over = sign_extend(r, width) as i64 as i128 != p;
            // SF, ZF and PF from the low half, AF = 0 (undefined; as Bochs does).
            (r, keep | bit(over, CF | OF) | szp(width, r))
        }
    }
}

/// The one-operand MUL/IMUL/DIV/IDIV at `width`: from `(rdx, rax)` (only AX for
/// bytes) and the operand, the new `(rdx, rax)` values at the width (for bytes: the
/// new AX in `rax`, `rdx` unchanged) and RFLAGS; `None` where the CPU raises #DE (a
/// zero divisor, a quotient that does not fit). MUL/IMUL: CF = OF = the upper half is
/// needed; SF, ZF, PF of the lower half and AF = 0 (undefined; what Bochs produces).
/// DIV/IDIV: all six status flags undefined, left unchanged (as in Bochs).
pub fn mul_div(
    op: MulOp,
    width: Width,
    rdx: u64,
    rax: u64,
    src: u64,
    rflags: u64,
) -> Option<(u64, u64, u64)> {
    let m = width.mask();
    let bits = width.bits();
    let keep = rflags & !STATUS;
    let b = src & m;
    // The double-width dividend / the two product halves, as u128.
    let (lo_in, hi_in) = if width == Width::W8 {
        (rax & 0xFF, (rax >> 8) & 0xFF)
    } else {
        (rax & m, rdx & m)
    };
    let join = |lo: u64, hi: u64| -> (u64, u64) {
        if width == Width::W8 {
            (rdx, (lo & 0xFF) | ((hi & 0xFF) << 8))
        } else {
            (hi & m, lo & m)
        }
    };
    match op {
        MulOp::Mul | MulOp::Imul => {
            let (lo, hi, over) = if op == MulOp::Mul {
                let p = u128::from(lo_in) * u128::from(b);
                let hi = (p >> bits) as u64 & m;
                (p as u64 & m, hi, hi != 0)
            } else {
                let p = i128::from(sign_extend(lo_in, width) as i64)
                    * i128::from(sign_extend(b, width) as i64);
                let lo = p as u64 & m;
                let hi = (p >> bits) as u64 & m;
                (lo, hi, i128::from(sign_extend(lo, width) as i64) != p)
            };
            let (d, a) = join(lo, hi);
            Some((d, a, keep | bit(over, CF | OF) | szp(width, lo)))
        }
        MulOp::Div => {
            if b == 0 {
                return None;
            }
            let n = (u128::from(hi_in) << bits) | u128::from(lo_in);
            let q = n / u128::from(b);
            let r = (n % u128::from(b)) as u64;
            if q > u128::from(m) {
                return None;
            }
            let (d, a) = join(q as u64, r);
            Some((d, a, rflags))
        }
        MulOp::Idiv => {
            let d = sign_extend(b, width) as i64 as i128;
            if d == 0 {
                return None;
            }
            let n = ((u128::from(hi_in) << bits) | u128::from(lo_in)) as i128;
            // Sign-extend the 2*bits-wide dividend.
            let sh = 128 - 2 * bits;
            let n = (n << sh) >> sh;
            let q = n / d;
            let r = n % d;
            let lim = 1i128 << (bits - 1);
            if q < -lim || q >= lim {
                return None;
            }
            let (dd, a) = join(q as u64, r as u64);
            Some((dd, a, rflags))
        }
    }
}

/// [`alu`] from all-clear flags, returning only the status flags: the result and the
/// flags an operation produces (for INC/DEC the CF bit is the incoming 0, and a shift
/// count of 0 produces no flags).
pub const fn flags_of(op: AluOp, width: Width, dst: u64, src: u64) -> (u64, u64) {
    let (r, f) = alu(op, width, dst, src, 0);
    (r, f & STATUS)
}

/// Jcc / SETcc / CMOVcc condition (SDM Vol. 1 Table B-1 "EFLAGS Condition Codes").
pub const fn condition(cond: Cond, rflags: u64) -> bool {
    let cf = rflags & CF != 0;
    let zf = rflags & ZF != 0;
    let sf = rflags & SF != 0;
    let of = rflags & OF != 0;
    let pf = rflags & PF != 0;
    match cond {
        Cond::O => of,
        Cond::No => !of,
        Cond::B => cf,
        Cond::Ae => !cf,
        Cond::E => zf,
        Cond::Ne => !zf,
        Cond::Be => cf || zf,
        Cond::A => !cf && !zf,
        Cond::S => sf,
        Cond::Ns => !sf,
        Cond::P => pf,
        Cond::Np => !pf,
        Cond::L => sf != of,
        Cond::Ge => sf == of,
        Cond::Le => zf || sf != of,
        Cond::G => !zf && sf == of,
    }
}

// ---------------------------------------------------------------------------
// Registers
// ---------------------------------------------------------------------------

/// Whether `r` names a register that exists in `mode`: R8-R15, 64-bit registers and
/// SPL..DIL-style byte registers only in 64-bit mode, AH..BH only as bits 15:8 of
/// registers 0-3. RSP (index 4) lives in [`CpuState::rsp`] (the VMCS guest RSP),
/// the others in [`GuestRegs`].
fn reg_ok(mode: CodeMode, r: RegRef) -> bool {
    let long = mode == CodeMode::Bits64;
    if r.high8 {
        return r.index <= 3 && r.width == Width::W8;
    }
    if r.index > 15 || (r.index >= 8 && !long) {
        return false;
    }
    match r.width {
        Width::W8 => long || r.index < 4,
        Width::W64 => long,
        _ => true,
    }
}

fn operand_ok(mode: CodeMode, o: Operand) -> bool {
    match o {
        Operand::Reg(r) => reg_ok(mode, r),
        Operand::Imm(_) => true,
    }
}

/// The full 64-bit register `index` (RSP from the run state).
fn full_reg(st: &CpuState, index: u8) -> u64 {
    if index == 4 {
        st.rsp
    } else {
        st.regs.get(index).unwrap_or(0)
    }
}

fn read_reg(st: &CpuState, r: RegRef) -> u64 {
    let v = full_reg(st, r.index);
    if r.high8 {
        (v >> 8) & 0xFF
    } else {
        v & r.width.mask()
    }
}

fn read_operand(st: &CpuState, o: Operand) -> u64 {
    match o {
        Operand::Reg(r) => read_reg(st, r),
        Operand::Imm(v) => v,
    }
}

/// Writes `value` to `r` with the merge / zero-extension rules of SDM Vol. 1 3.4.1.1
/// "General-Purpose Registers in 64-Bit Mode".
fn write_reg(st: &mut CpuState, r: RegRef, value: u64) {
    let old = full_reg(st, r.index);
    let new = if r.high8 {
        (old & !0xFF00) | ((value & 0xFF) << 8)
    } else {
        match r.width {
            Width::W8 | Width::W16 => (old & !r.width.mask()) | (value & r.width.mask()),
            Width::W32 | Width::W64 => value & r.width.mask(),
        }
    };
    if r.index == 4 && !r.high8 {
        st.rsp = new;
    } else {
        st.regs.set(r.index, new);
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Code bytes spanning more pages than this make every INS stop (Memory).
const MAX_CODE_PIECES: usize = 4;

/// The guest-physical pieces of the block's code bytes, for the self-modifying-code
/// check. `n == usize::MAX`: unknown (too many pages, or one did not translate).
#[derive(Clone, Copy)]
struct CodePieces {
    pieces: [(u64, u64); MAX_CODE_PIECES],
    n: usize,
}

impl CodePieces {
    fn overlaps(&self, gpa: u64, len: u64) -> bool {
        if self.n > MAX_CODE_PIECES {
            return true;
        }
        let end = gpa.saturating_add(len);
        self.pieces[..self.n]
            .iter()
            .any(|&(start, n)| gpa < start.saturating_add(n) && start < end)
    }
}

#[derive(Clone, Copy)]
enum Dest {
    Here(usize),
    Follow,
}

/// RFLAGS after POPFD/POPFQ pops `v` at privilege level `cpl` from `old` (SDM Vol. 2B
/// "POPF/POPFD/POPFQ—Pop Stack Into EFLAGS Register", outside virtual-8086 mode; real
/// mode is CPL 0): CF PF AF ZF SF TF DF OF NT AC ID come from `v`; IOPL only at CPL 0;
/// IF only at CPL <= IOPL; RF is cleared; VM, VIF, VIP and the reserved bits keep their
/// values (bit 1 is always set). A 16-bit POPF takes bits 15:0 of this.
pub const fn popf_rflags(old: u64, v: u64, cpl: u8) -> u64 {
    let iopl = (old & Rflags::IOPL.bits()) >> 12;
    let mut take = STATUS
        | Rflags::TF.bits()
        | Rflags::DF.bits()
        | Rflags::NT.bits()
        | Rflags::AC.bits()
        | Rflags::ID.bits();
    if cpl == 0 {
        take |= Rflags::IOPL.bits();
    }
    if cpl as u64 <= iopl {
        take |= Rflags::IF.bits();
    }
    ((old & !take) | (v & take)) & !Rflags::RF.bits()
}

/// The width whose sign-extension CBW/CWDE/CDQE make `width` of.
const fn half_width(width: Width) -> Option<Width> {
    match width {
        Width::W16 => Some(Width::W8),
        Width::W32 => Some(Width::W16),
        Width::W64 => Some(Width::W32),
        Width::W8 => None,
    }
}

/// Sign-extends the low `width` bits of `v` to 64 bits.
const fn sign_extend(v: u64, width: Width) -> u64 {
    let shift = 64 - width.bits();
    (((v << shift) as i64) >> shift) as u64
}

enum Flow {
    /// Retired; RIP already advanced to the fall-through address.
    Next,
    /// Retired as a taken branch to the instruction at this index.
    Goto(usize),
    Stop(StopReason),
}

struct Exec<'a, M: GuestMemory, E: IoEnv> {
    insns: &'a [Insn],
    offsets: &'a [u16],
    code_len: u16,
    block_rip: u64,
    block_gpa: u64,
    state: &'a mut CpuState,
    mem: &'a mut M,
    env: &'a mut E,
    limits: &'a Limits,
    res: RunResult,
    code: Option<CodePieces>,
    follow: Option<(u64, u64)>,
    /// Taken transfers may also leave the follow range (see `may_follow`).
    leave: bool,
}

/// Executes the block: `insns[i]` starts at byte `offsets[i]` (ascending) of the
/// `code_len` code bytes at `block_rip`, whose guest-physical address is `block_gpa`;
/// `scan_end` is why the decoder stopped after the last instruction. Execution starts
/// with `state.rip = block_rip` (index 0, the exiting IO instruction) and follows RIP
/// until a stop; see the module documentation. Never panics.
#[allow(clippy::too_many_arguments)]
pub fn run(
    insns: &[Insn],
    offsets: &[u16],
    code_len: u16,
    block_rip: u64,
    block_gpa: u64,
    scan_end: StopReason,
    state: &mut CpuState,
    mem: &mut impl GuestMemory,
    env: &mut impl IoEnv,
    limits: &Limits,
) -> RunResult {
    run_following(
        insns, offsets, code_len, block_rip, block_gpa, scan_end, state, mem, env, limits, None,
        false,
    )
}

/// [`run`], except that a taken branch (or LOOP) to a target outside the block but
/// inside `follow` (a RIP range `[start, end)` the caller knows to be in the extent,
/// hence fetchable code) is executed, and the run stops there with `BranchOut` and
/// RIP at the target, so the caller can continue with the block at the target. A
/// followed branch is recognisable by RIP lying outside the block after the run.
#[allow(clippy::too_many_arguments)]
pub fn run_following(
    insns: &[Insn],
    offsets: &[u16],
    code_len: u16,
    block_rip: u64,
    block_gpa: u64,
    scan_end: StopReason,
    state: &mut CpuState,
    mem: &mut impl GuestMemory,
    env: &mut impl IoEnv,
    limits: &Limits,
    follow: Option<(u64, u64)>,
    leave: bool,
) -> RunResult {
    let n = insns.len().min(offsets.len());
    state.rip = block_rip;
    let mut ex = Exec {
        insns: &insns[..n],
        offsets: &offsets[..n],
        code_len,
        block_rip,
        block_gpa,
        state,
        mem,
        env,
        limits,
        res: RunResult {
            executed: 0,
            io_insns: 0,
            string_elements: 0,
            stop: scan_end,
        },
        code: None,
        follow,
        leave,
    };
    let Some(mut idx) = ex.locate(block_rip) else {
        return ex.res;
    };
    let mut first = true;
    loop {
        if !first {
            if ex.state.rflags & Rflags::TF.bits() != 0 {
                return ex.stop(StopReason::SingleStep);
            }
            if ex.res.executed >= ex.limits.max_insns || ex.state.quiet >= ex.limits.max_quiet {
                return ex.stop(StopReason::Limit);
            }
        }
        let insn = ex.insns[idx];
        let (before, io_before) = (ex.res.executed, ex.res.io_insns);
        let shadowed = ex.state.sti_shadow;
        // A string instruction in the STI shadow: where the CPU may first take an
        // interrupt (after its first iteration or only after it completes) is not
        // worth modelling; the CPU runs it.
        if shadowed && matches!(insn.op, Op::Ins { .. } | Op::Outs { .. } | Op::Str { .. }) {
            return ex.stop(StopReason::Unsupported);
        }
        let mut flow = ex.step(insn, first);
        if shadowed && ex.res.executed != before {
            // The instruction in the shadow retired: interrupts can be taken now.
            ex.state.sti_shadow = false;
            if !matches!(flow, Flow::Stop(_)) && ex.interrupt_now() {
                flow = Flow::Stop(StopReason::InterruptPending);
            }
        }
        if ex.res.io_insns != io_before {
            ex.state.quiet = 0;
        } else {
            ex.state.quiet = ex.state.quiet.saturating_add(ex.res.executed - before);
        }
        match flow {
            Flow::Goto(next) => idx = next,
            Flow::Next => match ex.locate(ex.state.rip) {
                Some(next) => idx = next,
                None if idx + 1 >= ex.insns.len() => return ex.res,
                None => return ex.stop(StopReason::BranchOut),
            },
            Flow::Stop(reason) => return ex.stop(reason),
        }
        first = false;
    }
}

impl<M: GuestMemory, E: IoEnv> Exec<'_, M, E> {
    fn stop(&mut self, reason: StopReason) -> RunResult {
        self.res.stop = reason;
        self.res
    }

    fn mode(&self) -> CodeMode {
        self.state.mode
    }

    /// Index of the instruction at `rip`, if `rip` is an instruction boundary inside
    /// the block's code.
    fn locate(&self, rip: u64) -> Option<usize> {
        if rip > ip_mask(self.mode()) {
            return None;
        }
        let off = rip.wrapping_sub(self.block_rip);
        if off >= u64::from(self.code_len) {
            return None;
        }
        self.offsets.binary_search(&(off as u16)).ok()
    }

    /// Retires a non-branch instruction: RIP past it, wrapping at the code size.
    fn retire(&mut self, insn: Insn) -> Flow {
        self.state.rip = self.state.rip.wrapping_add(u64::from(insn.len)) & ip_mask(self.mode());
        self.res.executed += 1;
        Flow::Next
    }

    fn step(&mut self, insn: Insn, first: bool) -> Flow {
        let mode = self.mode();
        match insn.op {
            Op::Nop => self.retire(insn),
            Op::Mov { dst, src } => {
                if !reg_ok(mode, dst) || !operand_ok(mode, src) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = read_operand(self.state, src);
                write_reg(self.state, dst, v);
                self.retire(insn)
            }
            Op::Alu { op, dst, src } => {
                if !reg_ok(mode, dst) || !operand_ok(mode, src) || !op.has_width(dst.width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let a = read_reg(self.state, dst);
                let b = read_operand(self.state, src);
                let (r, f) = alu(op, dst.width, a, b, self.state.rflags);
                if writes_dst(op) {
                    write_reg(self.state, dst, r);
                }
                self.state.rflags = f;
                self.retire(insn)
            }
            Op::Jmp { rel, width } => self.branch(insn, true, rel, width, None),
            Op::Jcc { cond, rel, width } => {
                let taken = condition(cond, self.state.rflags);
                self.branch(insn, taken, rel, width, None)
            }
            Op::Loop {
                kind,
                rel,
                addr,
                width,
            } => {
                if !addr_ok(mode, addr) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let count = self.state.regs.rcx.wrapping_sub(1) & addr.mask();
                let zf = self.state.rflags & ZF != 0;
                let taken = count != 0
                    && match kind {
                        LoopKind::Loop => true,
                        LoopKind::Loope => zf,
                        LoopKind::Loopne => !zf,
                    };
                self.branch(insn, taken, rel, width, Some(addr))
            }
            Op::In { width, port } | Op::Out { width, port } => {
                if !io_width_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                if !first && !self.io_allowed() {
                    return Flow::Stop(StopReason::IoPermission);
                }
                let port = self.port(port);
                if matches!(insn.op, Op::In { .. }) {
                    let v = u64::from(self.env.io_read(port, width)) & width.mask();
                    let r = RegRef::new(0, width);
                    write_reg(self.state, r, v);
                } else {
                    let v = (self.state.regs.rax & width.mask()) as u32;
                    self.env.io_write(port, width, v);
                }
                self.res.io_insns += 1;
                let flow = self.retire(insn);
                if self.interrupt_now() {
                    return Flow::Stop(StopReason::InterruptPending);
                }
                flow
            }
            Op::Load {
                dst,
                src,
                width,
                signed,
            } => {
                if !reg_ok(mode, dst) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = match src {
                    Rm::Reg(r) => {
                        if !reg_ok(mode, r) {
                            return Flow::Stop(StopReason::Unsupported);
                        }
                        read_reg(self.state, r)
                    }
                    Rm::Mem(m) => match self.load(insn, m, width) {
                        Ok(v) => v,
                        Err(stop) => return Flow::Stop(stop),
                    },
                };
                let v = if signed { sign_extend(v, width) } else { v };
                write_reg(self.state, dst, v);
                self.retire(insn)
            }
            Op::Store { mem, src, width } => {
                if !operand_ok(mode, src) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = read_operand(self.state, src);
                match self.access(insn, mem, width, true) {
                    Ok(p) => {
                        if !memory::write_pieces(&mut *self.mem, &p, v) {
                            return Flow::Stop(StopReason::Memory);
                        }
                    }
                    Err(stop) => return Flow::Stop(stop),
                }
                self.retire(insn)
            }
            Op::AluMem {
                op,
                mem,
                src,
                width,
            } => {
                if !operand_ok(mode, src) || !op.has_width(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                // BT* m, r: the register is a signed bit offset from the operand's
                // address, so the accessed unit is `offset DIV width` units away (SDM
                // Vol. 2A "BT—Bit Test": bit-string addressing); an immediate offset
                // stays in
                // the operand (taken modulo the width).
                let shift = match (op.is_bit(), src) {
                    (true, Operand::Reg(r)) => {
                        let off = sign_extend(read_reg(self.state, r), r.width) as i64;
                        let units = off.div_euclid(i64::from(width.bits()));
                        units.wrapping_mul(i64::from(width.bytes())) as u64
                    }
                    _ => 0,
                };
                let p = match self.access_shifted(insn, mem, width, writes_dst(op), shift) {
                    Ok(p) => p,
                    Err(stop) => return Flow::Stop(stop),
                };
                let Some(a) = memory::read_pieces(&*self.mem, &p) else {
                    return Flow::Stop(StopReason::Memory);
                };
                let b = read_operand(self.state, src);
                let (r, f) = alu(op, width, a, b, self.state.rflags);
                if writes_dst(op) && !memory::write_pieces(&mut *self.mem, &p, r) {
                    return Flow::Stop(StopReason::Memory);
                }
                self.state.rflags = f;
                self.retire(insn)
            }
            Op::AluLoad { op, dst, mem } => {
                if !reg_ok(mode, dst) || !op.has_width(dst.width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let b = match self.load(insn, mem, dst.width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                let a = read_reg(self.state, dst);
                let (r, f) = alu(op, dst.width, a, b, self.state.rflags);
                if writes_dst(op) {
                    write_reg(self.state, dst, r);
                }
                self.state.rflags = f;
                self.retire(insn)
            }
            Op::Lea { dst, mem } => {
                if !reg_ok(mode, dst) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let ea = self.effective_address(insn, mem);
                write_reg(self.state, dst, ea);
                self.retire(insn)
            }
            Op::Push { src, width } => {
                if !operand_ok(mode, src) || !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = read_operand(self.state, src);
                if let Err(stop) = self.push(v, width) {
                    return Flow::Stop(stop);
                }
                self.retire(insn)
            }
            Op::Pop { dst } => {
                if !reg_ok(mode, dst) || !self.slot_ok(dst.width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = match self.stack_read(dst.width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                self.stack_pop(u64::from(dst.width.bytes()));
                write_reg(self.state, dst, v);
                self.retire(insn)
            }
            Op::Leave { width } => {
                if !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                // rSP <- rBP at the stack's address size, then POP rBP.
                let saved = self.state.rsp;
                let sw = self.stack_width();
                self.state.rsp = (saved & !sw.mask()) | (self.state.regs.rbp & sw.mask());
                if sw == Width::W32 {
                    self.state.rsp &= sw.mask();
                }
                let v = match self.stack_read(width) {
                    Ok(v) => v,
                    Err(stop) => {
                        self.state.rsp = saved;
                        return Flow::Stop(stop);
                    }
                };
                self.stack_pop(u64::from(width.bytes()));
                write_reg(self.state, RegRef::new(5, width), v);
                self.retire(insn)
            }
            Op::Call { rel, width } => {
                if self.shadow_stack() || !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let next = self.state.rip.wrapping_add(u64::from(insn.len)) & ip_mask(mode);
                let target = next.wrapping_add(rel as i64 as u64) & width.mask();
                let Some(dest) = self.destination(target) else {
                    return Flow::Stop(StopReason::BranchOut);
                };
                if let Err(stop) = self.push(next, width) {
                    return Flow::Stop(stop);
                }
                self.jump(target, dest)
            }
            Op::Ret { pop, width } => {
                if self.shadow_stack() || !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let target = match self.stack_read(width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                let Some(dest) = self.destination(target) else {
                    return Flow::Stop(StopReason::BranchOut);
                };
                self.stack_pop(u64::from(width.bytes()) + u64::from(pop));
                self.jump(target, dest)
            }
            Op::CallInd { src, width } | Op::JmpInd { src, width } => {
                if self.shadow_stack() || !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let target = match src {
                    Rm::Reg(r) if r.width == width && reg_ok(mode, r) => read_reg(self.state, r),
                    Rm::Reg(_) => return Flow::Stop(StopReason::Unsupported),
                    Rm::Mem(m) => match self.load(insn, m, width) {
                        Ok(v) => v,
                        Err(stop) => return Flow::Stop(stop),
                    },
                };
                let Some(dest) = self.destination(target) else {
                    return Flow::Stop(StopReason::BranchOut);
                };
                if matches!(insn.op, Op::CallInd { .. }) {
                    let next = self.state.rip.wrapping_add(u64::from(insn.len)) & ip_mask(mode);
                    if let Err(stop) = self.push(next, width) {
                        return Flow::Stop(stop);
                    }
                }
                self.jump(target, dest)
            }
            Op::Flag { op } => {
                let f = self.state.rflags;
                let df = Rflags::DF.bits();
                self.state.rflags = match op {
                    FlagOp::Clc => f & !CF,
                    FlagOp::Stc => f | CF,
                    FlagOp::Cmc => f ^ CF,
                    FlagOp::Cld => f & !df,
                    FlagOp::Std => f | df,
                };
                self.retire(insn)
            }
            Op::Cmov { cond, dst, src } => {
                if !reg_ok(mode, dst) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                // The source is read (and may fault) whatever the condition.
                let v = match self.read_rm(insn, src, dst.width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                let v = if condition(cond, self.state.rflags) {
                    v
                } else {
                    read_reg(self.state, dst)
                };
                // A false condition still writes a 32-bit destination (zero-extends).
                write_reg(self.state, dst, v);
                self.retire(insn)
            }
            Op::Setcc { cond, dst } => {
                let v = u64::from(condition(cond, self.state.rflags));
                if let Err(stop) = self.write_rm(insn, dst, Width::W8, v) {
                    return Flow::Stop(stop);
                }
                self.retire(insn)
            }
            Op::Xchg { reg, other } => {
                if !reg_ok(mode, reg) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let a = read_reg(self.state, reg);
                match other {
                    Rm::Reg(o) => {
                        if !reg_ok(mode, o) || o.width != reg.width {
                            return Flow::Stop(StopReason::Unsupported);
                        }
                        let b = read_reg(self.state, o);
                        write_reg(self.state, o, a);
                        write_reg(self.state, reg, b);
                    }
                    Rm::Mem(m) => {
                        let p = match self.access(insn, m, reg.width, true) {
                            Ok(p) => p,
                            Err(stop) => return Flow::Stop(stop),
                        };
                        let Some(b) = memory::read_pieces(&*self.mem, &p) else {
                            return Flow::Stop(StopReason::Memory);
                        };
                        if !memory::write_pieces(&mut *self.mem, &p, a) {
                            return Flow::Stop(StopReason::Memory);
                        }
                        write_reg(self.state, reg, b);
                    }
                }
                self.retire(insn)
            }
            Op::Bswap { reg } => {
                if !reg_ok(mode, reg) || !matches!(reg.width, Width::W32 | Width::W64) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = read_reg(self.state, reg);
                let v = if reg.width == Width::W32 {
                    u64::from((v as u32).swap_bytes())
                } else {
                    v.swap_bytes()
                };
                write_reg(self.state, reg, v);
                self.retire(insn)
            }
            Op::Widen { width } => {
                let Some(half) = half_width(width) else {
                    return Flow::Stop(StopReason::Unsupported);
                };
                if width == Width::W64 && mode != CodeMode::Bits64 {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = sign_extend(self.state.regs.rax, half);
                write_reg(self.state, RegRef::new(0, width), v);
                self.retire(insn)
            }
            Op::SignDx { width } => {
                if width == Width::W8 || (width == Width::W64 && mode != CodeMode::Bits64) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let negative = (self.state.regs.rax >> (width.bits() - 1)) & 1 != 0;
                let v = if negative { u64::MAX } else { 0 };
                write_reg(self.state, RegRef::new(2, width), v);
                self.retire(insn)
            }
            Op::MulDiv { op, src, width } => {
                if width == Width::W64 && mode != CodeMode::Bits64 {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let b = match self.read_rm(insn, src, width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                let st = &mut *self.state;
                let Some((d, a, f)) = mul_div(op, width, st.regs.rdx, st.regs.rax, b, st.rflags)
                else {
                    // #DE: the CPU raises it.
                    return Flow::Stop(StopReason::Fault);
                };
                if width == Width::W8 {
                    write_reg(st, RegRef::new(0, Width::W16), a);
                } else {
                    write_reg(st, RegRef::new(0, width), a);
                    write_reg(st, RegRef::new(2, width), d);
                }
                self.state.rflags = f;
                self.retire(insn)
            }
            Op::Imul3 { dst, src, imm } => {
                if !reg_ok(mode, dst) || dst.width == Width::W8 {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = match self.read_rm(insn, src, dst.width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                let (r, f) = alu(AluOp::Imul, dst.width, v, imm, self.state.rflags);
                write_reg(self.state, dst, r);
                self.state.rflags = f;
                self.retire(insn)
            }
            Op::Cli | Op::Sti => {
                // CPL > IOPL: #GP (or, with CR4.PVI at CPL 3, a VIF update); in
                // virtual-8086 mode the VME rules apply: the CPU does those.
                let iopl = (self.state.rflags & Rflags::IOPL.bits()) >> 12;
                if u64::from(self.state.cpl) > iopl || self.state.rflags & Rflags::VM.bits() != 0 {
                    return Flow::Stop(StopReason::Fault);
                }
                let if_ = Rflags::IF.bits();
                if matches!(insn.op, Op::Cli) {
                    self.state.rflags &= !if_;
                } else if self.state.rflags & if_ == 0 {
                    self.state.rflags |= if_;
                    self.state.sti_shadow = true;
                }
                self.retire(insn)
            }
            Op::Pushf { width } => {
                if !self.slot_ok(width) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                // The image has VM and RF cleared (SDM Vol. 2B "PUSHF/PUSHFD/PUSHFQ—Push
                // EFLAGS Register Onto the Stack"); a 16-bit PUSHF stores FLAGS.
                let v = self.state.rflags & !(Rflags::VM.bits() | Rflags::RF.bits());
                if let Err(stop) = self.push(v & width.mask(), width) {
                    return Flow::Stop(stop);
                }
                self.retire(insn)
            }
            Op::Popf { width } => {
                if !self.slot_ok(width) || self.state.rflags & Rflags::VM.bits() != 0 {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let v = match self.stack_read(width) {
                    Ok(v) => v,
                    Err(stop) => return Flow::Stop(stop),
                };
                self.stack_pop(u64::from(width.bytes()));
                let old = self.state.rflags;
                let new = popf_rflags(old, v & width.mask(), self.state.cpl);
                // A 16-bit POPF loads FLAGS only: bits 63:16 (RF included) stay.
                self.state.rflags = if width == Width::W16 {
                    (old & !0xFFFF) | (new & 0xFFFF)
                } else {
                    new
                };
                let flow = self.retire(insn);
                let if_ = Rflags::IF.bits();
                // IF set by POPF: an interrupt may be taken right after it (no shadow).
                if old & if_ == 0 && self.interrupt_now() {
                    return Flow::Stop(StopReason::InterruptPending);
                }
                flow
            }
            Op::Cmpxchg { dst, src } => {
                let w = src.width;
                if !reg_ok(mode, src) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let acc = RegRef::new(0, w);
                match dst {
                    // The register form's 32-bit destination on the not-equal path: the
                    // SDM says the destination is written back (zero-extending it),
                    // Bochs leaves it; left to the CPU.
                    Rm::Reg(d) if w == Width::W32 && mode == CodeMode::Bits64 => {
                        let _ = d;
                        return Flow::Stop(StopReason::Unsupported);
                    }
                    Rm::Reg(d) => {
                        if !reg_ok(mode, d) || d.width != w {
                            return Flow::Stop(StopReason::Unsupported);
                        }
                        let a = read_reg(self.state, acc);
                        let old = read_reg(self.state, d);
                        let (_, f) = alu(AluOp::Cmp, w, a, old, self.state.rflags);
                        if a == old {
                            let v = read_reg(self.state, src);
                            write_reg(self.state, d, v);
                        } else {
                            write_reg(self.state, acc, old);
                        }
                        self.state.rflags = f;
                    }
                    Rm::Mem(m) => {
                        // A write access either way (the processor writes the old value
                        // back when they differ).
                        let p = match self.access(insn, m, w, true) {
                            Ok(p) => p,
                            Err(stop) => return Flow::Stop(stop),
                        };
                        let Some(old) = memory::read_pieces(&*self.mem, &p) else {
                            return Flow::Stop(StopReason::Memory);
                        };
                        let a = read_reg(self.state, acc);
                        let (_, f) = alu(AluOp::Cmp, w, a, old, self.state.rflags);
                        if a == old {
                            let v = read_reg(self.state, src);
                            if !memory::write_pieces(&mut *self.mem, &p, v) {
                                return Flow::Stop(StopReason::Memory);
                            }
                        } else {
                            write_reg(self.state, acc, old);
                        }
                        self.state.rflags = f;
                    }
                }
                self.retire(insn)
            }
            Op::Xadd { dst, src } => {
                let w = src.width;
                if !reg_ok(mode, src) {
                    return Flow::Stop(StopReason::Unsupported);
                }
                let b = read_reg(self.state, src);
                match dst {
                    Rm::Reg(d) => {
                        if !reg_ok(mode, d) || d.width != w {
                            return Flow::Stop(StopReason::Unsupported);
                        }
                        let a = read_reg(self.state, d);
                        let (r, f) = alu(AluOp::Add, w, a, b, self.state.rflags);
                        // The sum is written last: `xadd eax, eax` leaves the sum.
                        write_reg(self.state, src, a);
                        write_reg(self.state, d, r);
                        self.state.rflags = f;
                    }
                    Rm::Mem(m) => {
                        let p = match self.access(insn, m, w, true) {
                            Ok(p) => p,
                            Err(stop) => return Flow::Stop(stop),
                        };
                        let Some(a) = memory::read_pieces(&*self.mem, &p) else {
                            return Flow::Stop(StopReason::Memory);
                        };
                        let (r, f) = alu(AluOp::Add, w, a, b, self.state.rflags);
                        if !memory::write_pieces(&mut *self.mem, &p, r) {
                            return Flow::Stop(StopReason::Memory);
                        }
                        write_reg(self.state, src, a);
                        self.state.rflags = f;
                    }
                }
                self.retire(insn)
            }
            Op::Str {
                kind,
                width,
                rep,
                addr,
                seg,
            } => self.mem_string(insn, kind, width, rep, addr, seg),
            Op::Ins { width, rep, addr } => self.string(insn, first, width, rep, addr, None),
            Op::Outs {
                width,
                rep,
                addr,
                seg,
            } => self.string(insn, first, width, rep, addr, Some(seg)),
        }
    }

    /// A branch (`loop_addr`: LOOP with its address size). Not taken: falls through
    /// (LOOP still decrements). Taken out of the block: stops before it, unchanged.
    fn branch(
        &mut self,
        insn: Insn,
        taken: bool,
        rel: i32,
        width: Width,
        loop_addr: Option<Width>,
    ) -> Flow {
        let mode = self.mode();
        if !branch_width_ok(mode, width) {
            return Flow::Stop(StopReason::Unsupported);
        }
        let next_ip = self.state.rip.wrapping_add(u64::from(insn.len)) & ip_mask(mode);
        let target = next_ip.wrapping_add(rel as i64 as u64) & width.mask();
        if taken && self.beyond_cs_limit(target) {
            return Flow::Stop(StopReason::BranchOut);
        }
        let dest = if taken {
            match self.locate(target) {
                Some(i) => Some(i),
                None if self.may_follow(target) => {
                    // Taken into code the caller will run next: execute the branch.
                    if let Some(addr) = loop_addr {
                        self.state.regs.rcx = update_addr_reg(self.state.regs.rcx, u64::MAX, addr);
                    }
                    self.state.rip = target;
                    self.res.executed += 1;
                    return Flow::Stop(StopReason::BranchOut);
                }
                None => return Flow::Stop(StopReason::BranchOut),
            }
        } else {
            None
        };
        if let Some(addr) = loop_addr {
            self.state.regs.rcx = update_addr_reg(self.state.regs.rcx, u64::MAX, addr);
        }
        match dest {
            Some(i) => {
                self.state.rip = target;
                self.res.executed += 1;
                Flow::Goto(i)
            }
            None => self.retire(insn),
        }
    }

    /// Where a taken CALL or RET to `target` goes: an instruction of this block, or
    /// code in the follow range (the caller continues there); `None`: out of reach.
    fn destination(&self, target: u64) -> Option<Dest> {
        if self.beyond_cs_limit(target) {
            return None;
        }
        match self.locate(target) {
            Some(i) => Some(Dest::Here(i)),
            None if self.may_follow(target) => Some(Dest::Follow),
            None => None,
        }
    }

    /// Outside 64-bit mode a transfer beyond the CS limit raises #GP on the branch
    /// (SDM Vol. 2A "JMP—Jump", "CALL—Call Procedure": "If the target address is beyond
    /// the code segment limit").
    fn beyond_cs_limit(&self, target: u64) -> bool {
        self.mode() != CodeMode::Bits64
            && target > u64::from(self.state.segs.limit[Seg::Cs as usize])
    }

    /// Whether a taken transfer to `target` outside this block may be executed, the
    /// caller continuing at the target: inside the follow range, or (with `leave`)
    /// anywhere a 64-bit transfer can go without faulting on the branch itself, i.e. a
    /// canonical target (SDM Vol. 1 3.3.7.1 "Canonical Addressing": a non-canonical
    /// target raises #GP at the
    /// branch). Fetching at the target is the caller's business: a target that does
    /// not translate faults there on the CPU too, after the branch retired.
    fn may_follow(&self, target: u64) -> bool {
        let Some((lo, hi)) = self.follow else {
            return false;
        };
        if (lo..hi).contains(&target) {
            return true;
        }
        let bits = if self.state.paging.cr4 & Cr4::LA57.bits() != 0 {
            57
        } else {
            48
        };
        self.leave && self.mode() == CodeMode::Bits64 && crate::x86::is_canonical(target, bits)
    }

    /// Retires a taken CALL/RET whose stack work is done.
    fn jump(&mut self, target: u64, dest: Dest) -> Flow {
        self.state.rip = target;
        self.res.executed += 1;
        match dest {
            Dest::Here(i) => Flow::Goto(i),
            Dest::Follow => Flow::Stop(StopReason::BranchOut),
        }
    }

    /// CET shadow stacks (CR4.CET) change what CALL and RET do: not emulated.
    fn shadow_stack(&self) -> bool {
        self.state.paging.cr4 & (1 << 23) != 0
    }

    /// A 64-bit register by encoding, RSP included (address computation).
    fn gpr64(&self, index: u8) -> u64 {
        if index == 4 {
            self.state.rsp
        } else {
            self.state.regs.get(index).unwrap_or(0)
        }
    }

    /// The effective address of `m` (SDM Vol. 1 3.7.5 "Specifying an Offset"), truncated
    /// to the address
    /// size; RIP-relative addresses count from the end of the instruction.
    fn effective_address(&self, insn: Insn, m: MemRef) -> u64 {
        let mut a = m.disp as i64 as u64;
        if let Some(b) = m.base {
            a = a.wrapping_add(self.gpr64(b));
        }
        if m.rip_rel {
            let next = self.state.rip.wrapping_add(u64::from(insn.len));
            a = a.wrapping_add(next);
        }
        if let Some(i) = m.index {
            a = a.wrapping_add(self.gpr64(i).wrapping_mul(u64::from(m.scale)));
        }
        a & m.addr.mask()
    }

    /// Checks a data access of `width` at `m` (64-bit mode): the pieces to read or
    /// write, or why the run stops before the instruction.
    fn access(
        &mut self,
        insn: Insn,
        m: MemRef,
        width: Width,
        write: bool,
    ) -> Result<Pieces, StopReason> {
        self.access_shifted(insn, m, width, write, 0)
    }

    /// [`Self::access`] at the effective address plus `shift` (within the address
    /// size).
    fn access_shifted(
        &mut self,
        insn: Insn,
        m: MemRef,
        width: Width,
        write: bool,
        shift: u64,
    ) -> Result<Pieces, StopReason> {
        let ea = self.effective_address(insn, m).wrapping_add(shift) & m.addr.mask();
        let n = width.bytes();
        let lin = self
            .seg_linear(m.seg, ea, u64::from(n), write)
            .ok_or(StopReason::Memory)?;
        self.checked(lin, usize::from(n), write)
    }

    /// How the processor addresses memory now (for the segment checks).
    fn addressing(&self) -> AddressingMode {
        AddressingMode {
            mode: self.mode(),
            real: self.state.paging.cr0 & crate::x86::Cr0::PE.bits() == 0,
            v86: self.state.rflags & Rflags::VM.bits() != 0,
        }
    }

    /// The linear address of an `n`-byte access at offset `ea` through `seg`, if the
    /// segment allows it (`segment::data_linear`).
    fn seg_linear(&self, seg: Seg, ea: u64, n: u64, write: bool) -> Option<u64> {
        segment::data_linear(self.addressing(), &self.state.segs, seg, ea, n, write)
    }

    fn checked(&mut self, lin: u64, n: usize, write: bool) -> Result<Pieces, StopReason> {
        // Outside 64-bit mode linear addresses wrap at 4 GiB; an access across the wrap
        // is left to the CPU.
        if self.mode() != CodeMode::Bits64 && lin.saturating_add(n as u64) > 1 << 32 {
            return Err(StopReason::Memory);
        }
        let st = &*self.state;
        let p = memory::data_access(&*self.mem, &st.paging, st.cpl, st.rflags, lin, n, write)
            .ok_or(StopReason::Memory)?;
        if write {
            // Self-modifying code: a write into this block's code stops before it.
            let code = self.code_pieces();
            if p.iter().any(|(gpa, len)| code.overlaps(gpa, len as u64)) {
                return Err(StopReason::Memory);
            }
        }
        Ok(p)
    }

    fn load(&mut self, insn: Insn, m: MemRef, width: Width) -> Result<u64, StopReason> {
        let p = self.access(insn, m, width, false)?;
        memory::read_pieces(&*self.mem, &p)
            .map(|v| v & width.mask())
            .ok_or(StopReason::Memory)
    }

    /// A register (that the executor can access) or memory operand of `width`.
    fn read_rm(&mut self, insn: Insn, rm: Rm, width: Width) -> Result<u64, StopReason> {
        match rm {
            Rm::Reg(r) if reg_ok(self.mode(), r) && r.width == width => Ok(read_reg(self.state, r)),
            Rm::Reg(_) => Err(StopReason::Unsupported),
            Rm::Mem(m) => self.load(insn, m, width),
        }
    }

    /// Writes `v` to a register or memory operand of `width`.
    fn write_rm(&mut self, insn: Insn, rm: Rm, width: Width, v: u64) -> Result<(), StopReason> {
        match rm {
            Rm::Reg(r) if reg_ok(self.mode(), r) && r.width == width => {
                write_reg(self.state, r, v);
                Ok(())
            }
            Rm::Reg(_) => Err(StopReason::Unsupported),
            Rm::Mem(m) => {
                let p = self.access(insn, m, width, true)?;
                if memory::write_pieces(&mut *self.mem, &p, v) {
                    Ok(())
                } else {
                    Err(StopReason::Memory)
                }
            }
        }
    }

    /// The stack's address size: 64 bits in 64-bit mode, else SS.B (SDM Vol. 3A 3.4.5
    /// "Segment Descriptors", the D/B flag of a stack segment).
    fn stack_width(&self) -> Width {
        if self.mode() == CodeMode::Bits64 {
            Width::W64
        } else if self.state.segs.ar[Seg::Ss as usize] & crate::x86::segment::access_rights::DB != 0
        {
            Width::W32
        } else {
            Width::W16
        }
    }

    /// Stack slots of `width` exist: 8 bytes in 64-bit mode (the 66h forms are never
    /// decoded), 2 or 4 otherwise.
    fn slot_ok(&self, width: Width) -> bool {
        if self.mode() == CodeMode::Bits64 {
            width == Width::W64
        } else {
            matches!(width, Width::W16 | Width::W32)
        }
    }

    /// PUSH of `width` bytes at SS:rSP - `width` (the stack's address size wraps rSP; a
    /// 16-bit stack keeps bits 63:16 of RSP).
    fn push(&mut self, v: u64, width: Width) -> Result<(), StopReason> {
        let n = width.bytes();
        let sw = self.stack_width();
        let sp = update_addr_reg(self.state.rsp, u64::from(n).wrapping_neg(), sw);
        let lin = self
            .seg_linear(Seg::Ss, sp & sw.mask(), u64::from(n), true)
            .ok_or(StopReason::Memory)?;
        let p = self.checked(lin, usize::from(n), true)?;
        if !memory::write_pieces(&mut *self.mem, &p, v) {
            return Err(StopReason::Memory);
        }
        self.state.rsp = sp;
        Ok(())
    }

    /// The `width` bytes at SS:rSP.
    fn stack_read(&mut self, width: Width) -> Result<u64, StopReason> {
        let n = width.bytes();
        let sw = self.stack_width();
        let lin = self
            .seg_linear(Seg::Ss, self.state.rsp & sw.mask(), u64::from(n), false)
            .ok_or(StopReason::Memory)?;
        let p = self.checked(lin, usize::from(n), false)?;
        memory::read_pieces(&*self.mem, &p)
            .map(|v| v & width.mask())
            .ok_or(StopReason::Memory)
    }

    /// rSP += `n` at the stack's address size.
    fn stack_pop(&mut self, n: u64) {
        self.state.rsp = update_addr_reg(self.state.rsp, n, self.stack_width());
    }

    /// CPL <= IOPL outside virtual-8086 mode: IO needs no TSS bitmap check.
    fn io_allowed(&self) -> bool {
        io_permitted(self.state)
    }

    fn port(&self, p: PortSrc) -> u16 {
        match p {
            PortSrc::Imm(n) => u16::from(n),
            PortSrc::Dx => self.state.regs.rdx as u16,
        }
    }

    /// After an IO access: an interrupt is deliverable.
    /// After every device access: the environment brings the devices' interrupt lines
    /// onto the PIC (always, so a later PIC read in the same block sees what it would
    /// after one exit per instruction, even with IF = 0), then the run stops if the
    /// guest could take the interrupt now.
    fn interrupt_now(&mut self) -> bool {
        let pending = self.env.interrupt_pending();
        self.state.rflags & Rflags::IF.bits() != 0 && pending
    }

    /// Linear address of `seg`:`reg` at address size `addr`.
    fn linear(&self, seg: Seg, reg: u64, addr: Width) -> u64 {
        let long = self.mode() == CodeMode::Bits64;
        let base = if long && !matches!(seg, Seg::Fs | Seg::Gs) {
            0
        } else {
            self.state.segs.base[seg as usize]
        };
        let lin = base.wrapping_add(reg & addr.mask());
        if long {
            lin
        } else {
            lin & 0xFFFF_FFFF
        }
    }

    /// INS (`outs_seg` None) or OUTS, element by element.
    fn string(
        &mut self,
        insn: Insn,
        first: bool,
        width: Width,
        rep: bool,
        addr: Width,
        outs_seg: Option<Seg>,
    ) -> Flow {
        if !io_width_ok(width) || !addr_ok(self.mode(), addr) {
            return Flow::Stop(StopReason::Unsupported);
        }
        if !first && !self.io_allowed() {
            return Flow::Stop(StopReason::IoPermission);
        }
        let size = u64::from(width.bytes());
        let step = if self.state.rflags & Rflags::DF.bits() != 0 {
            size.wrapping_neg()
        } else {
            size
        };
        let port = self.state.regs.rdx as u16;
        let mut started = false;
        // Stops with RIP still on the instruction; counted if an element was done.
        let partial = |ex: &mut Self, started: bool, reason: StopReason| {
            if started {
                ex.res.executed += 1;
                ex.res.io_insns += 1;
            }
            Flow::Stop(reason)
        };
        loop {
            if rep && self.state.regs.rcx & addr.mask() == 0 {
                break;
            }
            if self.res.string_elements >= self.limits.max_string_elements {
                return partial(self, started, StopReason::Limit);
            }
            let done = match outs_seg {
                None => {
                    let lin = self.linear(Seg::Es, self.state.regs.rdi, addr);
                    self.ins_element(lin, port, width)
                }
                Some(seg) => {
                    let lin = self.linear(seg, self.state.regs.rsi, addr);
                    self.outs_element(lin, port, width)
                }
            };
            if !done {
                return partial(self, started, StopReason::Memory);
            }
            started = true;
            self.res.string_elements += 1;
            let regs = &mut self.state.regs;
            if outs_seg.is_none() {
                regs.rdi = update_addr_reg(regs.rdi, step, addr);
            } else {
                regs.rsi = update_addr_reg(regs.rsi, step, addr);
            }
            if rep {
                regs.rcx = update_addr_reg(regs.rcx, u64::MAX, addr);
            }
            let finished = !rep || self.state.regs.rcx & addr.mask() == 0;
            if self.interrupt_now() {
                if finished {
                    self.res.io_insns += 1;
                    self.retire(insn);
                    return Flow::Stop(StopReason::InterruptPending);
                }
                return partial(self, true, StopReason::InterruptPending);
            }
            if !rep {
                break;
            }
        }
        self.res.io_insns += 1;
        self.retire(insn)
    }

    /// MOVS, STOS, LODS, CMPS or SCAS, element by element: each element's accesses go
    /// through the segment and paging checks of any data access (a fault, or an A/D
    /// flag the CPU would set, ends the run before that element with RIP on the
    /// instruction); REP tests rCX before each element and decrements it after, REPE /
    /// REPNE also stop on ZF; the element budget is the one string IO uses.
    fn mem_string(
        &mut self,
        insn: Insn,
        kind: StrKind,
        width: Width,
        rep: Repeat,
        addr: Width,
        seg: Seg,
    ) -> Flow {
        let mode = self.mode();
        if !addr_ok(mode, addr) || (width == Width::W64 && mode != CodeMode::Bits64) {
            return Flow::Stop(StopReason::Unsupported);
        }
        let n = width.bytes();
        let size = u64::from(n);
        let step = if self.state.rflags & Rflags::DF.bits() != 0 {
            size.wrapping_neg()
        } else {
            size
        };
        let repeats = rep != Repeat::Once;
        let reads_src = matches!(kind, StrKind::Movs | StrKind::Lods | StrKind::Cmps);
        let uses_dst = !matches!(kind, StrKind::Lods);
        let mut started = false;
        let partial = |ex: &mut Self, started: bool, reason: StopReason| {
            if started {
                ex.res.executed += 1;
            }
            Flow::Stop(reason)
        };
        loop {
            if repeats && self.state.regs.rcx & addr.mask() == 0 {
                break;
            }
            if self.res.string_elements >= self.limits.max_string_elements {
                return partial(self, started, StopReason::Limit);
            }
            let regs = self.state.regs;
            // The source (seg:rSI) and destination (ES:rDI) of this element.
            let src = if reads_src {
                let Some(v) = self.string_read(seg, regs.rsi & addr.mask(), width) else {
                    return partial(self, started, StopReason::Memory);
                };
                Some(v)
            } else {
                None
            };
            let dst_write = matches!(kind, StrKind::Movs | StrKind::Stos);
            let dst_pieces = if uses_dst {
                let ea = regs.rdi & addr.mask();
                let Some(lin) = self.seg_linear(Seg::Es, ea, size, dst_write) else {
                    return partial(self, started, StopReason::Memory);
                };
                match self.checked(lin, usize::from(n), dst_write) {
                    Ok(p) => Some(p),
                    Err(stop) => return partial(self, started, stop),
                }
            } else {
                None
            };
            let acc = regs.rax & width.mask();
            match kind {
                StrKind::Movs | StrKind::Stos => {
                    let v = if kind == StrKind::Movs {
                        src.unwrap_or(0)
                    } else {
                        acc
                    };
                    let Some(p) = dst_pieces else {
                        return partial(self, started, StopReason::Memory);
                    };
                    if !memory::write_pieces(&mut *self.mem, &p, v) {
                        return partial(self, started, StopReason::Memory);
                    }
                }
                StrKind::Lods => {
                    write_reg(self.state, RegRef::new(0, width), src.unwrap_or(0));
                }
                StrKind::Cmps | StrKind::Scas => {
                    let Some(b) = dst_pieces.and_then(|p| memory::read_pieces(&*self.mem, &p))
                    else {
                        return partial(self, started, StopReason::Memory);
                    };
                    let a = if kind == StrKind::Cmps {
                        src.unwrap_or(0)
                    } else {
                        acc
                    };
                    let (_, f) = alu(AluOp::Cmp, width, a, b & width.mask(), self.state.rflags);
                    self.state.rflags = f;
                }
            }
            started = true;
            self.res.string_elements += 1;
            let regs = &mut self.state.regs;
            if reads_src {
                regs.rsi = update_addr_reg(regs.rsi, step, addr);
            }
            if uses_dst {
                regs.rdi = update_addr_reg(regs.rdi, step, addr);
            }
            if !repeats {
                break;
            }
            regs.rcx = update_addr_reg(regs.rcx, u64::MAX, addr);
            let zf = self.state.rflags & ZF != 0;
            let ended = match (kind, rep) {
                (StrKind::Cmps | StrKind::Scas, Repeat::Rep) => !zf,
                (StrKind::Cmps | StrKind::Scas, Repeat::Repne) => zf,
                _ => false,
            };
            if ended {
                break;
            }
        }
        self.retire(insn)
    }

    /// A string element's read of `width` bytes at `seg`:`ea` (checked like any data
    /// access), or `None`.
    fn string_read(&mut self, seg: Seg, ea: u64, width: Width) -> Option<u64> {
        let n = width.bytes();
        let lin = self.seg_linear(seg, ea, u64::from(n), false)?;
        let p = self.checked(lin, usize::from(n), false).ok()?;
        memory::read_pieces(&*self.mem, &p).map(|v| v & width.mask())
    }

    /// One INS element to `lin`; false (nothing done, no port read) if the destination
    /// does not translate for a write at the CPL, is not RAM, or overlaps the code.
    fn ins_element(&mut self, lin: u64, port: u16, width: Width) -> bool {
        let n = usize::from(width.bytes());
        let cpl = self.state.cpl;
        let paging = self.state.paging;
        if check_linear(&*self.mem, &paging, lin, n, Access::write(cpl)).is_err() {
            return false;
        }
        // The element's guest-physical pieces (at most two pages).
        let in_page = PAGE_SIZE - (lin & (PAGE_SIZE - 1));
        let first_len = in_page.min(n as u64);
        let code = self.code_pieces();
        let pieces = [
            (lin, first_len),
            (lin.wrapping_add(first_len), n as u64 - first_len),
        ];
        for (piece_lin, len) in pieces {
            if len == 0 {
                continue;
            }
            match translate(&*self.mem, &paging, piece_lin, Access::write(cpl)) {
                Ok(gpa) if !code.overlaps(gpa, len) => {}
                _ => return false,
            }
        }
        let v = self.env.io_read(port, width);
        let bytes = v.to_le_bytes();
        write_linear(&mut *self.mem, &paging, lin, &bytes[..n], cpl).is_ok()
    }

    /// One OUTS element from `lin`; false (nothing done) if it does not translate for a
    /// read at the CPL or is not RAM.
    fn outs_element(&mut self, lin: u64, port: u16, width: Width) -> bool {
        let n = usize::from(width.bytes());
        let mut bytes = [0u8; 4];
        let access = Access::read(self.state.cpl);
        let paging = self.state.paging;
        if read_linear_as(&*self.mem, &paging, lin, &mut bytes[..n], access).is_err() {
            return false;
        }
        self.env.io_write(port, width, u32::from_le_bytes(bytes));
        true
    }

    /// The guest-physical pieces of the block's code, computed once: the first page
    /// from `block_gpa`, the others through the current translation.
    fn code_pieces(&mut self) -> CodePieces {
        if let Some(c) = self.code {
            return c;
        }
        let mut c = CodePieces {
            pieces: [(0, 0); MAX_CODE_PIECES],
            n: 0,
        };
        let long = self.mode() == CodeMode::Bits64;
        let cs_base = if long {
            0
        } else {
            self.state.segs.base[Seg::Cs as usize]
        };
        let mut lin = cs_base.wrapping_add(self.block_rip);
        if !long {
            lin &= 0xFFFF_FFFF;
        }
        let mut left = u64::from(self.code_len);
        let mut gpa = self.block_gpa;
        while left > 0 {
            if c.n == MAX_CODE_PIECES {
                c.n = usize::MAX;
                break;
            }
            let len = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))).min(left);
            c.pieces[c.n] = (gpa, len);
            c.n += 1;
            left -= len;
            lin = lin.wrapping_add(len);
            if !long {
                lin &= 0xFFFF_FFFF;
            }
            if left > 0 {
                match translate(&*self.mem, &self.state.paging, lin, Access::read(0)) {
                    Ok(g) => gpa = g,
                    Err(_) => {
                        c.n = usize::MAX;
                        break;
                    }
                }
            }
        }
        self.code = Some(c);
        c
    }
}

const fn io_width_ok(w: Width) -> bool {
    !matches!(w, Width::W64)
}

/// Address sizes that exist in `mode` (SDM Vol. 1 3.6 "Operand-Size and Address-Size
/// Attributes"): 16/32 outside 64-bit mode,
/// 32/64 in it.
fn addr_ok(mode: CodeMode, w: Width) -> bool {
    match mode {
        CodeMode::Bits64 => matches!(w, Width::W32 | Width::W64),
        _ => matches!(w, Width::W16 | Width::W32),
    }
}

/// Operand sizes a near branch can have in `mode`.
fn branch_width_ok(mode: CodeMode, w: Width) -> bool {
    match mode {
        CodeMode::Bits64 => !matches!(w, Width::W8),
        _ => matches!(w, Width::W16 | Width::W32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The default of [`Limits::max_quiet`] (configuration key `coalesce.max_quiet`).
    pub(crate) const MAX_QUIET: u32 = crate::config::COALESCE_MAX_QUIET_DEFAULT;
    use crate::x86::guest_mem::SliceMemory;
    use crate::x86::{Cr0, Efer};
    use Width::{W16, W32, W64, W8};

    const WIDTHS: [Width; 4] = [W8, W16, W32, W64];
    const RAM: usize = 2 << 20;

    // -----------------------------------------------------------------------
    // Harness
    // -----------------------------------------------------------------------

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Io {
        In(u16, Width),
        Out(u16, Width, u32),
    }

    #[derive(Default)]
    struct Env {
        log: Vec<Io>,
        reads: u32,
        /// An interrupt is pending once this many accesses were made.
        irq_after: Option<usize>,
    }

    impl Env {
        /// The value of the k-th port read.
        fn val(k: u32) -> u32 {
            0x4433_2210u32.wrapping_add(k.wrapping_mul(0x0101_0101))
        }
    }

    impl IoEnv for Env {
        fn io_read(&mut self, port: u16, width: Width) -> u32 {
            self.log.push(Io::In(port, width));
            let v = Env::val(self.reads);
            self.reads += 1;
            v
        }
        fn io_write(&mut self, port: u16, width: Width, value: u32) {
            self.log.push(Io::Out(port, width, value));
        }
        fn interrupt_pending(&mut self) -> bool {
            self.irq_after.is_some_and(|n| self.log.len() >= n)
        }
    }

    struct T {
        st: CpuState,
        ram: Vec<u8>,
        env: Env,
        limits: Limits,
        /// Guest-physical address of the block; default: its linear address.
        gpa: Option<u64>,
        scan_end: StopReason,
    }

    impl T {
        fn new(mode: CodeMode) -> T {
            T {
                st: CpuState {
                    regs: GuestRegs::default(),
                    rsp: 0,
                    rip: 0,
                    rflags: 0x2,
                    mode,
                    segs: SegRegs::FLAT,
                    cpl: 0,
                    paging: PagingContext::default(),
                    quiet: 0,
                    sti_shadow: false,
                },
                ram: vec![0; RAM],
                env: Env::default(),
                limits: Limits {
                    max_insns: 1000,
                    max_string_elements: 10_000,
                    max_quiet: MAX_QUIET,
                },
                gpa: None,
                scan_end: StopReason::ExtentEnd,
            }
        }

        fn run(&mut self, insns: &[Insn], rip: u64) -> RunResult {
            let (offsets, len) = layout(insns);
            self.run_raw(insns, &offsets, len, rip)
        }

        fn run_raw(&mut self, insns: &[Insn], offsets: &[u16], len: u16, rip: u64) -> RunResult {
            let gpa = self.gpa.unwrap_or_else(|| {
                let lin = self.st.segs.base[Seg::Cs as usize].wrapping_add(rip);
                lin & 0xFFFF_FFFF
            });
            let mut mem = SliceMemory::new(&mut self.ram);
            run(
                insns,
                offsets,
                len,
                rip,
                gpa,
                self.scan_end,
                &mut self.st,
                &mut mem,
                &mut self.env,
                &self.limits,
            )
        }

        fn set_status(&mut self, f: u64) {
            self.st.rflags = (self.st.rflags & !STATUS) | f;
        }
    }

    fn layout(insns: &[Insn]) -> (Vec<u16>, u16) {
        let mut offsets = Vec::new();
        let mut at = 0u16;
        for i in insns {
            offsets.push(at);
            at += u16::from(i.len);
        }
        (offsets, at)
    }

    fn res(executed: u32, io_insns: u32, string_elements: u32, stop: StopReason) -> RunResult {
        RunResult {
            executed,
            io_insns,
            string_elements,
            stop,
        }
    }

    fn i(op: Op, len: u8) -> Insn {
        Insn { op, len }
    }
    fn nop() -> Insn {
        i(Op::Nop, 1)
    }
    fn out_dx(width: Width) -> Insn {
        i(
            Op::Out {
                width,
                port: PortSrc::Dx,
            },
            1,
        )
    }
    fn out_imm(width: Width, port: u8) -> Insn {
        i(
            Op::Out {
                width,
                port: PortSrc::Imm(port),
            },
            2,
        )
    }
    fn in_dx(width: Width) -> Insn {
        i(
            Op::In {
                width,
                port: PortSrc::Dx,
            },
            1,
        )
    }
    fn in_imm(width: Width, port: u8) -> Insn {
        i(
            Op::In {
                width,
                port: PortSrc::Imm(port),
            },
            2,
        )
    }
    fn mov(dst: RegRef, src: Operand) -> Insn {
        i(Op::Mov { dst, src }, 3)
    }
    fn alu_i(op: AluOp, dst: RegRef, src: Operand) -> Insn {
        i(Op::Alu { op, dst, src }, 3)
    }
    fn jmp(rel: i32) -> Insn {
        i(Op::Jmp { rel, width: W64 }, 2)
    }
    fn jcc(cond: Cond, rel: i32) -> Insn {
        i(
            Op::Jcc {
                cond,
                rel,
                width: W64,
            },
            2,
        )
    }
    fn lp(kind: LoopKind, rel: i32, addr: Width) -> Insn {
        i(
            Op::Loop {
                kind,
                rel,
                addr,
                width: W64,
            },
            2,
        )
    }
    fn outs(width: Width, rep: bool, addr: Width, seg: Seg) -> Insn {
        i(
            Op::Outs {
                width,
                rep,
                addr,
                seg,
            },
            2,
        )
    }
    fn ins(width: Width, rep: bool, addr: Width) -> Insn {
        i(Op::Ins { width, rep, addr }, 2)
    }
    fn r(index: u8, w: Width) -> RegRef {
        RegRef::new(index, w)
    }
    fn imm(v: u64) -> Operand {
        Operand::Imm(v)
    }
    fn reg(index: u8, w: Width) -> Operand {
        Operand::Reg(RegRef::new(index, w))
    }

    fn parity(v: u64) -> u64 {
        if (v as u8).count_ones() % 2 == 0 {
            PF
        } else {
            0
        }
    }

    /// 4-level paging for linear 0..2 MiB, identity, user RW 4 KiB pages, except
    /// 0x50000 not present, 0x51000 read-only and 0x52000 supervisor-only.
    fn paging_4level(ram: &mut [u8]) -> PagingContext {
        let put =
            |ram: &mut [u8], at: usize, v: u64| ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(ram, 0x1000, 0x2000 | 7);
        put(ram, 0x2000, 0x3000 | 7);
        put(ram, 0x3000, 0x4000 | 7);
        for page in 0..512u64 {
            let flags = match page {
                0x50 => 0,
                0x51 => 0x5,
                0x52 => 0x3,
                _ => 0x7,
            };
            put(ram, 0x4000 + page as usize * 8, (page << 12) | flags);
        }
        PagingContext {
            cr0: Cr0::PG.bits() | Cr0::PE.bits() | Cr0::WP.bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: Efer::LME.bits() | Efer::LMA.bits(),
        }
    }

    // -----------------------------------------------------------------------
    // MOV and register writes
    // -----------------------------------------------------------------------

    #[test]
    fn mov_merges_8_and_16_bit_and_zero_extends_32_bit() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0x1111_2222_3333_4444;
        t.st.regs.rbx = 0x5555_6666_7777_8888;
        t.st.regs.rcx = 0x9999_AAAA_BBBB_CCCC;
        t.st.regs.rdx = 0xDDDD_EEEE_FFFF_0000;
        t.st.regs.r9 = 0x0123_4567_89AB_CDEF;
        let b = [
            out_dx(W8),
            mov(r(0, W8), imm(0x5A)),
            mov(r(3, W16), imm(0xBEEF)),
            mov(r(1, W32), imm(0x8000_0001)),
            mov(r(2, W64), imm(0xFEDC_BA98_7654_3210)),
            mov(r(9, W8), imm(0x77)),
            mov(r(5, W8), reg(9, W8)),
        ];
        let res_ = t.run(&b, 0x1000);
        assert_eq!(res_, res(7, 1, 0, StopReason::ExtentEnd));
        assert_eq!(t.st.regs.rax, 0x1111_2222_3333_445A);
        assert_eq!(t.st.regs.rbx, 0x5555_6666_7777_BEEF);
        assert_eq!(t.st.regs.rcx, 0x0000_0000_8000_0001);
        assert_eq!(t.st.regs.rdx, 0xFEDC_BA98_7654_3210);
        assert_eq!(t.st.regs.r9, 0x0123_4567_89AB_CD77);
        assert_eq!(t.st.regs.rbp & 0xFF, 0x77);
        assert_eq!(t.st.rip, 0x1000 + 1 + 6 * 3);
    }

    #[test]
    fn mov_to_32_bit_register_zero_extends_in_16_and_32_bit_modes_too() {
        for mode in [CodeMode::Bits16, CodeMode::Bits32] {
            let mut t = T::new(mode);
            t.st.regs.rsi = 0xFFFF_FFFF_0000_0000;
            t.run(&[out_dx(W8), mov(r(6, W32), imm(0x1234_5678))], 0x100);
            assert_eq!(t.st.regs.rsi, 0x1234_5678, "{mode:?}");
        }
    }

    #[test]
    fn ah_ch_dh_bh_merge_into_bits_15_8() {
        let mut t = T::new(CodeMode::Bits32);
        t.st.regs.rax = 0xFFFF_FFFF_AAAA_AAAA;
        t.st.regs.rcx = 0x1234;
        t.st.regs.rdx = 0x5678;
        t.st.regs.rbx = 0x9ABC;
        let b = [
            out_dx(W8),
            mov(RegRef::high(0), imm(0x11)),
            mov(RegRef::high(1), Operand::Reg(RegRef::high(3))),
            mov(RegRef::high(2), reg(0, W8)),
            mov(RegRef::high(3), imm(0x1FF)),
            alu_i(AluOp::Add, RegRef::high(0), imm(1)),
        ];
        assert_eq!(t.run(&b, 0).stop, StopReason::ExtentEnd);
        assert_eq!(t.st.regs.rax, 0xFFFF_FFFF_AAAA_12AA);
        assert_eq!(t.st.regs.rcx, 0x9A34);
        assert_eq!(t.st.regs.rdx, 0xAA78);
        assert_eq!(t.st.regs.rbx, 0xFFBC);
    }

    #[test]
    fn alu_32_bit_destination_zero_extends_and_cmp_test_do_not_write() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0xFFFF_FFFF_0000_0001;
        t.st.regs.rbx = 0xFFFF_FFFF_FFFF_FFFF;
        t.st.regs.rcx = 0xFFFF_FFFF_FFFF_FFFF;
        let b = [
            out_dx(W8),
            alu_i(AluOp::Add, r(0, W32), imm(1)),
            alu_i(AluOp::Cmp, r(3, W32), imm(1)),
            alu_i(AluOp::Test, r(1, W64), imm(0)),
            alu_i(AluOp::Or, r(1, W16), imm(0)),
        ];
        t.run(&b, 0);
        assert_eq!(t.st.regs.rax, 2);
        assert_eq!(t.st.regs.rbx, u64::MAX);
        assert_eq!(t.st.regs.rcx, u64::MAX);
        assert_eq!(t.st.rflags & STATUS, SF | PF);
    }

    #[test]
    fn registers_that_do_not_exist_are_unsupported_and_rsp_is_a_register() {
        let cases: [(CodeMode, Insn); 5] = [
            (CodeMode::Bits32, mov(r(8, W32), imm(0))),
            (CodeMode::Bits32, mov(r(0, W64), imm(0))),
            (CodeMode::Bits32, mov(r(5, W8), imm(0))),
            (CodeMode::Bits64, alu_i(AluOp::Add, RegRef::high(5), imm(0))),
            (CodeMode::Bits64, alu_i(AluOp::Add, r(16, W8), imm(0))),
        ];
        for (mode, insn) in cases {
            let mut t = T::new(mode);
            let before = t.st.regs;
            assert_eq!(
                t.run(&[out_dx(W8), insn, nop()], 0x10),
                res(1, 1, 0, StopReason::Unsupported),
                "{insn:?}"
            );
            assert_eq!(t.st.rip, 0x11);
            assert_eq!(t.st.regs, before);
        }
        // RSP is a register like the others: mov rbp, rsp; mov esp, 0x10 (zero-extends);
        // add sp, 2 in 16-bit code keeps bits 63:16.
        let mut t = T::new(CodeMode::Bits64);
        t.st.rsp = 0xFFFF_8000_0000_1000;
        t.run(
            &[
                out_dx(W8),
                mov(r(5, W64), reg(4, W64)),
                mov(r(4, W32), imm(0x10)),
            ],
            0,
        );
        assert_eq!((t.st.regs.rbp, t.st.rsp), (0xFFFF_8000_0000_1000, 0x10));
        let mut t = T::new(CodeMode::Bits16);
        t.st.rsp = 0x1234_FFFF;
        t.run(&[out_dx(W8), alu_i(AluOp::Add, r(4, W16), imm(2))], 0);
        assert_eq!(t.st.rsp, 0x1234_0001);
        let mut t = T::new(CodeMode::Bits64);
        assert_eq!(
            t.run(&[in_dx(W64)], 0),
            res(0, 0, 0, StopReason::Unsupported)
        );
        assert_eq!(
            t.run(&[outs(W8, true, W16, Seg::Ds)], 0),
            res(0, 0, 0, StopReason::Unsupported)
        );
    }

    #[test]
    fn nop_only_moves_rip() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 7;
        t.set_status(CF | OF);
        let before = t.st;
        assert_eq!(
            t.run(&[out_dx(W8), i(Op::Nop, 4), nop()], 0x500).executed,
            3
        );
        assert_eq!(t.st.rip, 0x506);
        assert_eq!(t.st.regs, before.regs);
        assert_eq!(t.st.rflags, before.rflags);
    }

    // -----------------------------------------------------------------------
    // ALU flags
    // -----------------------------------------------------------------------

    #[test]
    fn add_flags_at_every_width_edge() {
        for w in WIDTHS {
            let m = w.mask();
            let h = 1u64 << (w.bits() - 1);
            // MAX_SIGNED + 1: signed overflow, no carry, AF from 0xF + 1.
            assert_eq!(
                flags_of(AluOp::Add, w, h - 1, 1),
                (h, OF | SF | AF | parity(h)),
                "{w:?}"
            );
            // MAX_UNSIGNED + 1: carry, zero.
            assert_eq!(
                flags_of(AluOp::Add, w, m, 1),
                (0, CF | ZF | AF | PF),
                "{w:?}"
            );
            // MIN_SIGNED + MIN_SIGNED: carry and overflow.
            assert_eq!(flags_of(AluOp::Add, w, h, h), (0, CF | OF | ZF | PF));
            // -1 + -1 = -2: carry, no overflow.
            assert_eq!(
                flags_of(AluOp::Add, w, m, m),
                (m - 1, CF | SF | AF | parity(m - 1))
            );
            // No AF when the low nibble does not carry.
            assert_eq!(flags_of(AluOp::Add, w, 0x10, 0x20), (0x30, PF));
        }
    }

    #[test]
    fn sub_and_cmp_flags_at_every_width_edge() {
        for w in WIDTHS {
            let m = w.mask();
            let h = 1u64 << (w.bits() - 1);
            for op in [AluOp::Sub, AluOp::Cmp] {
                // MIN_SIGNED - 1: overflow, borrow out of bit 3.
                assert_eq!(
                    flags_of(op, w, h, 1),
                    (h - 1, OF | AF | parity(h - 1)),
                    "{w:?}"
                );
                // 0 - 1: borrow.
                assert_eq!(flags_of(op, w, 0, 1), (m, CF | SF | AF | PF));
                // Equal.
                assert_eq!(flags_of(op, w, 0x42, 0x42), (0, ZF | PF));
                // MAX_SIGNED - (-1): overflow and borrow.
                assert_eq!(flags_of(op, w, h - 1, m), (h, CF | OF | SF | parity(h)));
                // 0x10 - 1: AF only (+ parity of 0x0F).
                assert_eq!(flags_of(op, w, 0x10, 1), (0xF, AF | PF));
            }
        }
    }

    #[test]
    fn inc_dec_preserve_cf_and_set_the_rest() {
        for w in WIDTHS {
            let m = w.mask();
            let h = 1u64 << (w.bits() - 1);
            for cf in [0, CF] {
                let f = 0x2 | cf;
                assert_eq!(alu(AluOp::Inc, w, m, 0, f), (0, f | ZF | AF | PF));
                assert_eq!(
                    alu(AluOp::Inc, w, h - 1, 0, f),
                    (h, f | OF | SF | AF | parity(h))
                );
                assert_eq!(alu(AluOp::Dec, w, 0, 0, f), (m, f | SF | AF | PF));
                assert_eq!(
                    alu(AluOp::Dec, w, h, 0, f),
                    (h - 1, f | OF | AF | parity(h - 1))
                );
                assert_eq!(alu(AluOp::Dec, w, 1, 0xFFFF, f), (0, f | ZF | PF));
            }
        }
    }

    #[test]
    fn logic_ops_clear_cf_of_af_and_set_szp() {
        for w in WIDTHS {
            let m = w.mask();
            let h = 1u64 << (w.bits() - 1);
            let all = 0x2 | STATUS;
            assert_eq!(alu(AluOp::And, w, m, h, all), (h, 0x2 | SF | parity(h)));
            assert_eq!(alu(AluOp::Test, w, m, 0, all), (0, 0x2 | ZF | PF));
            assert_eq!(alu(AluOp::Or, w, 0x01, 0x02, all), (3, 0x2 | PF));
            assert_eq!(alu(AluOp::Xor, w, m, m, all), (0, 0x2 | ZF | PF));
            assert_eq!(
                alu(AluOp::Xor, w, 0x80, 0x01, all),
                (0x81, 0x2 | PF | bit(w == W8, SF))
            );
        }
    }

    #[test]
    fn alu_leaves_non_status_flags_alone_and_masks_operands() {
        let f =
            0x2 | Rflags::IF.bits() | Rflags::DF.bits() | Rflags::IOPL.bits() | Rflags::TF.bits();
        let (r_, nf) = alu(AluOp::Add, W8, 0x1FF, 0x101, f);
        assert_eq!(r_, 0);
        assert_eq!(nf & !STATUS, f);
        assert_eq!(nf & STATUS, CF | ZF | AF | PF);
    }

    /// (count, result, status flags) of SHL and SHR on `msb | 1` at each width for
    /// counts 0, 1, 2, width - 1, width, 31, 63 (masked by the processor's rule).
    #[test]
    fn shl_shr_counts_at_every_width() {
        for w in WIDTHS {
            let bits = w.bits();
            let m = w.mask();
            let h = 1u64 << (bits - 1);
            let a = h | 1;
            let all = 0x2 | STATUS;
            // Count 0 (also the masked 32 for 8/16/32-bit and 64 for 64-bit): unchanged.
            for c in [0u64, if w == W64 { 64 } else { 32 }] {
                assert_eq!(alu(AluOp::Shl, w, a, c, all), (a, all));
                assert_eq!(alu(AluOp::Shr, w, a, c, 0x2), (a, 0x2));
            }
            // Count 1: SHL CF = old MSB, OF = MSB(r) ^ CF; SHR CF = old bit 0, OF = old MSB.
            assert_eq!(flags_of(AluOp::Shl, w, a, 1), (2, CF | OF));
            assert_eq!(
                flags_of(AluOp::Shr, w, a, 1),
                (h >> 1, CF | OF | parity(h >> 1))
            );
            // Count 2.
            assert_eq!(flags_of(AluOp::Shl, w, a, 2), (4, 0));
            assert_eq!(
                flags_of(AluOp::Shr, w, a, 2),
                (h >> 2, parity(h >> 2)) // CF = old bit 1 = 0; OF 0 by our rule
            );
            // Count width - 1.
            let c = u64::from(bits - 1);
            assert_eq!(
                flags_of(AluOp::Shl, w, a, c),
                (h, SF | OF | parity(h)) // CF = old bit 1 = 0
            );
            assert_eq!(flags_of(AluOp::Shr, w, a, c), (1, 0)); // CF = old bit w-2 = 0
            assert_eq!(flags_of(AluOp::Shr, w, m, c), (1, CF));
            if bits <= 16 {
                // Count = width: result 0; CF the last bit a wide shift moves out.
                let c = u64::from(bits);
                assert_eq!(flags_of(AluOp::Shl, w, a, c), (0, CF | OF | ZF | PF));
                assert_eq!(flags_of(AluOp::Shr, w, a, c), (0, CF | ZF | PF));
                // Count 31 (> width): 0, nothing left to shift out.
                assert_eq!(flags_of(AluOp::Shl, w, a, 31), (0, ZF | PF));
                assert_eq!(flags_of(AluOp::Shr, w, a, 31), (0, ZF | PF));
                // 63 masks to 31.
                assert_eq!(flags_of(AluOp::Shl, w, m, 63), (0, ZF | PF));
            } else if w == W32 {
                // 31 = width - 1 (above); 63 masks to 31.
                assert_eq!(
                    flags_of(AluOp::Shl, w, a, 63),
                    flags_of(AluOp::Shl, w, a, 31)
                );
                assert_eq!(flags_of(AluOp::Shr, w, m, 63), (1, CF));
            } else {
                assert_eq!(flags_of(AluOp::Shl, w, a, 31), (1 << 31, PF));
                assert_eq!(flags_of(AluOp::Shr, w, a, 31), (1 << 32, PF));
                assert_eq!(flags_of(AluOp::Shl, w, 3, 63), (h, CF | SF | PF));
                assert_eq!(flags_of(AluOp::Shr, w, m, 63), (1, CF));
            }
        }
    }

    #[test]
    fn adc_sbb_take_the_carry_in() {
        // ADC: 0x7F + 0 + CF = 0x80 overflows; 0xFF + 0 + CF carries to 0.
        assert_eq!(alu(AluOp::Adc, W8, 0x7F, 0, CF), (0x80, OF | SF | AF));
        assert_eq!(alu(AluOp::Adc, W8, 0xFF, 0, CF), (0, CF | ZF | AF | PF));
        assert_eq!(alu(AluOp::Adc, W8, 0xFF, 0, 0), (0xFF, SF | PF));
        // 64 bits: all ones + all ones + 1 = all ones with a carry.
        assert_eq!(
            alu(AluOp::Adc, W64, u64::MAX, u64::MAX, CF),
            (u64::MAX, CF | SF | AF | PF)
        );
        // SBB: 0x80 - 0 - CF = 0x7F overflows; 0 - 0 - CF borrows to all ones.
        assert_eq!(alu(AluOp::Sbb, W8, 0x80, 0, CF), (0x7F, OF | AF));
        assert_eq!(alu(AluOp::Sbb, W16, 0, 0, CF), (0xFFFF, CF | SF | AF | PF));
        // sbb r, r: 0 or all ones from CF alone.
        assert_eq!(alu(AluOp::Sbb, W32, 7, 7, CF).0, 0xFFFF_FFFF);
        assert_eq!(alu(AluOp::Sbb, W32, 7, 7, 0), (0, ZF | PF));
    }

    #[test]
    fn neg_and_not() {
        assert_eq!(flags_of(AluOp::Neg, W8, 0, 0), (0, ZF | PF));
        assert_eq!(flags_of(AluOp::Neg, W8, 0x80, 0), (0x80, CF | OF | SF));
        assert_eq!(flags_of(AluOp::Neg, W16, 1, 0), (0xFFFF, CF | SF | AF | PF));
        assert_eq!(
            flags_of(AluOp::Neg, W64, 0x10, 0),
            (0xFFFF_FFFF_FFFF_FFF0, CF | SF | PF)
        );
        // NOT changes no flag.
        let all = 0x2 | STATUS;
        assert_eq!(
            alu(AluOp::Not, W32, 0x0F0F_0F0F, 0, all),
            (0xF0F0_F0F0, all)
        );
        assert_eq!(alu(AluOp::Not, W8, 0xFF, 0, 0x2), (0, 0x2));
    }

    #[test]
    fn sar_fills_with_the_sign() {
        assert_eq!(flags_of(AluOp::Sar, W8, 0x81, 1), (0xC0, CF | SF | PF));
        assert_eq!(flags_of(AluOp::Sar, W8, 0x7F, 1), (0x3F, CF | PF));
        // Past the width the result is all sign bits and CF is the sign.
        assert_eq!(flags_of(AluOp::Sar, W8, 0x80, 31), (0xFF, CF | SF | PF));
        assert_eq!(flags_of(AluOp::Sar, W16, 0x4000, 16), (0, ZF | PF));
        // By 63 the last bit out is bit 62.
        assert_eq!(flags_of(AluOp::Sar, W64, 1 << 63, 63), (u64::MAX, SF | PF));
        assert_eq!(
            flags_of(AluOp::Sar, W64, 3 << 62, 63),
            (u64::MAX, CF | SF | PF)
        );
        // Count 0 (masked): nothing changes.
        assert_eq!(
            alu(AluOp::Sar, W32, 0x8000_0000, 32, 0x2 | OF),
            (0x8000_0000, 0x2 | OF)
        );
        // SAR's CF stays defined past the width; SHR's does not.
        assert_eq!(defined_flags(AluOp::Sar, W8, 9), STATUS & !AF & !OF);
    }

    #[test]
    fn rotates_change_only_cf_and_of() {
        let keep = 0x2 | ZF | SF | PF | AF;
        // ROL/ROR by 1: OF defined.
        assert_eq!(alu(AluOp::Rol, W8, 0x81, 1, keep), (0x03, keep | CF | OF));
        assert_eq!(alu(AluOp::Ror, W8, 0x81, 1, keep), (0xC0, keep | CF));
        assert_eq!(alu(AluOp::Rol, W8, 0x41, 1, 0x2), (0x82, 0x2 | OF));
        // By a multiple of the width: the value stays, CF and OF come from it.
        assert_eq!(alu(AluOp::Rol, W8, 0x81, 8, 0x2), (0x81, 0x2 | CF));
        assert_eq!(alu(AluOp::Ror, W16, 0x1234, 16, 0x2 | CF), (0x1234, 0x2));
        assert_eq!(
            alu(AluOp::Rol, W64, 3, 63, 0x2),
            (0x8000_0000_0000_0001, 0x2 | CF)
        );
        // RCL/RCR rotate through CF.
        assert_eq!(alu(AluOp::Rcl, W8, 0x80, 1, CF), (0x01, CF | OF));
        assert_eq!(alu(AluOp::Rcr, W8, 0x01, 1, CF), (0x80, CF | OF));
        // CF:0x4000_0000 by 2: bit 30 into CF, the old CF into bit 1.
        assert_eq!(alu(AluOp::Rcl, W32, 0x4000_0000, 2, CF), (0x2, CF | OF));
        // 8/16-bit RCL/RCR by a multiple of width + 1 rotate nothing and keep every
        // flag, OF included (masked count 9 or 17: OF undefined, kept as Bochs keeps
        // it).
        assert_eq!(alu(AluOp::Rcl, W8, 0x81, 9, 0x2 | OF), (0x81, 0x2 | OF));
        assert_eq!(
            alu(AluOp::Rcr, W16, 0x8000, 17, 0x2 | CF),
            (0x8000, 0x2 | CF)
        );
        // A masked count of 0 changes nothing at all.
        assert_eq!(alu(AluOp::Rcr, W64, 5, 64, 0x2 | OF), (5, 0x2 | OF));
        assert_eq!(rotate_count(AluOp::Rcl, W8, 10), 1);
        assert_eq!(rotate_count(AluOp::Rol, W16, 0x1F), 15);
        assert_eq!(rotate_count(AluOp::Rcr, W32, 0x3F), 31);
    }

    #[test]
    fn mul_and_div_at_every_width_and_the_divides_that_fault() {
        // mul: AX = AL * 0x10 (the new AX; the caller merges it); CF = OF = 0, SF
        // from the low half.
        assert_eq!(
            mul_div(MulOp::Mul, W8, 7, 0x1234_0008, 0x10, 0x2),
            Some((7, 0x80, 0x2 | SF))
        );
        // mul r8 with a product above 0xFF: AH non-zero, CF = OF = 1.
        let (_, a, f) = mul_div(MulOp::Mul, W8, 0, 0x80, 2, 0x2).unwrap();
        assert_eq!((a, f & (CF | OF)), (0x100, CF | OF));
        // imul r8: -1 * -1 = 1 fits, CF = OF = 0; 0x40 * 2 = 0x80 does not fit.
        assert_eq!(mul_div(MulOp::Imul, W8, 0, 0xFF, 0xFF, 0x2).unwrap().1, 1);
        let (_, a, f) = mul_div(MulOp::Imul, W8, 0, 0x40, 2, 0x2).unwrap();
        assert_eq!((a, f & (CF | OF)), (0x80, CF | OF));
        // 64 bits: all ones * all ones = 0xFFF..FE:00..01.
        let (d, a, _) = mul_div(MulOp::Mul, W64, 0, u64::MAX, u64::MAX, 0x2).unwrap();
        assert_eq!((d, a), (u64::MAX - 1, 1));
        // div: EDX:EAX = 1:0 / 2 = 0x8000_0000 rem 0; div by 0 and overflow fault.
        assert_eq!(
            mul_div(MulOp::Div, W32, 1, 0, 2, 0x2),
            Some((0, 0x8000_0000, 0x2))
        );
        assert_eq!(mul_div(MulOp::Div, W32, 0, 5, 0, 0x2), None);
        assert_eq!(mul_div(MulOp::Div, W32, 2, 0, 2, 0x2), None);
        // div r8: AX = 0x0107 / 0x10 -> AL = 0x10, AH = 7; the flags stay.
        assert_eq!(
            mul_div(MulOp::Div, W8, 9, 0x0107, 0x10, 0x2 | CF),
            Some((9, 0x0710, 0x2 | CF))
        );
        // idiv: -7 / 2 = -3 rem -1 (truncating); -128 / -1 overflows 8 bits.
        assert_eq!(
            mul_div(MulOp::Idiv, W16, 0xFFFF, 0xFFF9, 2, 0x2),
            Some((0xFFFF, 0xFFFD, 0x2))
        );
        assert_eq!(mul_div(MulOp::Idiv, W8, 0, 0xFF80, 0xFF, 0x2), None);
        // idiv r64: the 128-bit dividend -2^64 / 2^32... stays in range only if it fits.
        assert_eq!(
            mul_div(MulOp::Idiv, W64, u64::MAX, 0, 2, 0x2),
            Some((0, 1 << 63, 0x2))
        );
        assert_eq!(mul_div(MulOp::Idiv, W64, 0, 1 << 63, 1, 0x2), None);
    }

    #[test]
    fn mul_div_matches_the_host_cpu() {
        let edges = [
            0u64,
            1,
            2,
            0x7F,
            0x80,
            0xFF,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0xFFFF_FFFF,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX,
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0u32;
        for op in [MulOp::Mul, MulOp::Imul, MulOp::Div, MulOp::Idiv] {
            for w in WIDTHS {
                let mut cases = Vec::new();
                for &a in &edges {
                    for &b in &edges {
                        cases.push((0, a, b));
                        cases.push((u64::MAX, a, b));
                    }
                }
                for _ in 0..3000 {
                    let d = if rnd() & 1 == 0 { rnd() & 0xFF } else { rnd() };
                    cases.push((d, rnd(), rnd()));
                }
                for (rdx, rax, src) in cases {
                    // Only what the CPU executes without #DE: exactly where ours is Some.
                    let Some((d, a, f)) = mul_div(op, w, rdx, rax, src, 0x2) else {
                        continue;
                    };
                    let (hd, ha, hf) = crate::coalesce::host_alu::mul_div(op, w, rdx, rax, src);
                    let m = if w == W8 { 0xFFFF } else { w.mask() };
                    assert_eq!(a & m, ha & m, "{op:?} {w:?} {rdx:#x}:{rax:#x} / {src:#x}");
                    if w != W8 {
                        assert_eq!(d & w.mask(), hd & w.mask(), "{op:?} {w:?} rdx");
                    }
                    if matches!(op, MulOp::Mul | MulOp::Imul) {
                        assert_eq!(f & (CF | OF), hf & (CF | OF), "{op:?} {w:?} CF/OF");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000, "{checked}");
    }

    #[test]
    fn data_moves_flag_instructions_and_conversions() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0xFFFF_FFFF_0000_8081;
        t.st.regs.rcx = 0x1111_2222_3333_4444;
        t.st.regs.rdx = 7;
        t.set_status(ZF);
        let b = [
            out_dx(W8),
            // cmovne ecx, eax (ZF set: false, still zero-extends ECX)
            i(
                Op::Cmov {
                    cond: Cond::Ne,
                    dst: r(1, W32),
                    src: Rm::Reg(r(0, W32)),
                },
                3,
            ),
            // xchg rax, rdx
            i(
                Op::Xchg {
                    reg: r(0, W64),
                    other: Rm::Reg(r(2, W64)),
                },
                3,
            ),
            // stc; cmc; std
            i(Op::Flag { op: FlagOp::Stc }, 1),
            i(Op::Flag { op: FlagOp::Cmc }, 1),
            i(Op::Flag { op: FlagOp::Std }, 1),
            // setz bl
            i(
                Op::Setcc {
                    cond: Cond::E,
                    dst: Rm::Reg(r(3, W8)),
                },
                3,
            ),
            // bswap edx
            i(Op::Bswap { reg: r(2, W32) }, 2),
        ];
        t.run(&b, 0);
        assert_eq!(t.st.regs.rcx, 0x3333_4444);
        assert_eq!(t.st.regs.rax, 7);
        assert_eq!(t.st.regs.rdx, 0x8180_0000);
        assert_eq!(t.st.regs.rbx & 0xFF, 1);
        assert_eq!(t.st.rflags & (CF | Rflags::DF.bits()), Rflags::DF.bits());
        // cbw, cwde, cdqe and cwd/cdq/cqo of a negative byte.
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0x1234_5680;
        let b = [
            out_dx(W8),
            i(Op::Widen { width: W16 }, 2),
            i(Op::Widen { width: W32 }, 1),
            i(Op::Widen { width: W64 }, 2),
            i(Op::SignDx { width: W64 }, 2),
        ];
        t.run(&b, 0);
        assert_eq!((t.st.regs.rax, t.st.regs.rdx), (u64::MAX - 0x7F, u64::MAX));
        // A divide that would fault stops before it, with nothing changed.
        let mut t = T::new(CodeMode::Bits32);
        let b = [
            out_dx(W8),
            i(
                Op::MulDiv {
                    op: MulOp::Div,
                    src: Rm::Reg(r(3, W32)),
                    width: W32,
                },
                2,
            ),
        ];
        t.st.regs.rax = 5;
        let res = t.run(&b, 0);
        assert_eq!((res.executed, res.stop), (1, StopReason::Fault));
        assert_eq!((t.st.regs.rax, t.st.rip), (5, 1));
    }

    #[test]
    fn sti_shadow_popf_rules_and_cli_sti_privilege() {
        let if_ = Rflags::IF.bits();
        // out; sti; nop; nop with an interrupt pending: the nop in the shadow runs,
        // then the run stops for the interrupt.
        let mut t = T::new(CodeMode::Bits64);
        t.env.irq_after = Some(0);
        let b = [out_dx(W8), i(Op::Sti, 1), nop(), nop()];
        assert_eq!(t.run(&b, 0), res(3, 1, 0, StopReason::InterruptPending));
        assert!(!t.st.sti_shadow && t.st.rflags & if_ != 0);
        // A run that ends right after the STI keeps the shadow for the CPU.
        let mut t = T::new(CodeMode::Bits32);
        let b = [out_dx(W8), i(Op::Sti, 1)];
        assert_eq!(t.run(&b, 0).executed, 2);
        assert!(t.st.sti_shadow);
        // STI with IF already set opens no shadow.
        let mut t = T::new(CodeMode::Bits32);
        t.st.rflags |= if_;
        t.run(&b, 0);
        assert!(!t.st.sti_shadow);
        // CPL 3 with IOPL 0: CLI faults (#GP): the run stops before it.
        let mut t = T::new(CodeMode::Bits64);
        t.st.cpl = 3;
        t.st.rflags |= if_;
        let b = [out_dx(W8), i(Op::Cli, 1)];
        // (The exiting OUT itself was permission-checked by the CPU.)
        assert_eq!(t.run(&b, 0).stop, StopReason::Fault);
        assert!(t.st.rflags & if_ != 0);
        // POPF: IOPL only at CPL 0, IF only at CPL <= IOPL, RF cleared, VM kept.
        let all = STATUS | Rflags::TF.bits() | if_ | Rflags::IOPL.bits() | Rflags::AC.bits();
        assert_eq!(popf_rflags(0x2, all, 0), 0x2 | all);
        assert_eq!(
            popf_rflags(0x2 | 0x1000, all, 1),
            0x2 | 0x1000 | (all & !0x3000)
        );
        assert_eq!(popf_rflags(0x2, all, 3), 0x2 | (all & !0x3000 & !if_));
        assert_eq!(
            popf_rflags(0x2 | Rflags::VM.bits() | Rflags::RF.bits(), 0, 0),
            0x2 | Rflags::VM.bits()
        );
    }

    #[test]
    fn real_mode_stack_wraps_sp_and_keeps_the_upper_bits() {
        // Real mode: SS base 0x1000, a 16-bit stack; SP = 2 with garbage above bit 15.
        let mut t = T::new(CodeMode::Bits16);
        t.st.paging.cr0 = 0;
        t.st.segs.base[Seg::Ss as usize] = 0x1000;
        t.st.segs.limit = [0xFFFF; 6];
        t.st.segs.ar = [0x93; 6];
        t.st.rsp = 0xABCD_0000_0000_0002;
        t.st.regs.rax = 0x1111;
        t.st.regs.rbx = 0x2222;
        let push = |r| {
            i(
                Op::Push {
                    src: Operand::Reg(RegRef::new(r, W16)),
                    width: W16,
                },
                1,
            )
        };
        let b = [
            out_dx(W8),
            push(0),
            push(3),
            i(Op::Pop { dst: r(1, W16) }, 1),
        ];
        t.run(&b, 0);
        // AX at SS:0000, BX at SS:FFFE (SP wrapped), popped into CX.
        assert_eq!(&t.ram[0x1000..0x1002], &[0x11, 0x11]);
        assert_eq!(&t.ram[0x10FFE..0x11000], &[0x22, 0x22]);
        assert_eq!(t.st.regs.rcx & 0xFFFF, 0x2222);
        assert_eq!(t.st.rsp, 0xABCD_0000_0000_0000);
        // call +1 (over a nop) pushes IP 4, ret comes back to it; leave restores BP.
        let mut t = T::new(CodeMode::Bits16);
        t.st.paging.cr0 = 0;
        t.st.segs.limit = [0xFFFF; 6];
        t.st.segs.ar = [0x93; 6];
        t.st.rsp = 0x8000;
        t.st.regs.rbp = 0x7FF0;
        let b = [
            out_dx(W8),
            i(Op::Call { rel: 1, width: W16 }, 3),
            nop(),
            i(Op::Ret { pop: 0, width: W16 }, 1),
        ];
        // out(1) call(3) -> ret at 5; ret -> 4 (the nop); nop; ret again pops 0.
        let res = t.run(&b, 0);
        assert!(res.executed >= 4, "{res:?}");
        let mut t = T::new(CodeMode::Bits16);
        t.st.paging.cr0 = 0;
        t.st.segs.limit = [0xFFFF; 6];
        t.st.segs.ar = [0x93; 6];
        t.st.regs.rbp = 0x1234_0000_0000_7FF0;
        t.ram[0x7FF0] = 0x55;
        t.ram[0x7FF1] = 0x66;
        t.run(&[out_dx(W8), i(Op::Leave { width: W16 }, 1)], 0);
        assert_eq!(
            (t.st.rsp & 0xFFFF, t.st.regs.rbp),
            (0x7FF2, 0x1234_0000_0000_6655)
        );
        // A push beyond the SS limit (SP = 0 with a limit below 0xFFFE): #SS, stop.
        let mut t = T::new(CodeMode::Bits16);
        t.st.paging.cr0 = 0;
        t.st.segs.limit = [0xFFF; 6];
        t.st.segs.ar = [0x93; 6];
        t.st.rsp = 0;
        let res = t.run(&[out_dx(W8), push(0)], 0);
        assert_eq!((res.executed, res.stop), (1, StopReason::Memory));
    }

    #[test]
    fn cmpxchg_and_xadd() {
        let mut t = T::new(CodeMode::Bits64);
        // cmpxchg cl, dl: AL == CL -> CL = DL, ZF; then AL != CL -> AL = CL.
        t.st.regs.rax = 0x11;
        t.st.regs.rcx = 0x11;
        t.st.regs.rdx = 0x22;
        let cx = |d: u8, s: u8| {
            i(
                Op::Cmpxchg {
                    dst: Rm::Reg(r(d, W8)),
                    src: r(s, W8),
                },
                3,
            )
        };
        t.run(&[out_dx(W8), cx(1, 2)], 0);
        assert_eq!((t.st.regs.rcx, t.st.rflags & ZF), (0x22, ZF));
        t.run(&[out_dx(W8), cx(1, 2)], 0);
        assert_eq!((t.st.regs.rax, t.st.rflags & ZF), (0x22, 0));
        // xadd eax, eax: the sum is what stays.
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0xFFFF_FFFF_0000_0003;
        let b = [
            out_dx(W8),
            i(
                Op::Xadd {
                    dst: Rm::Reg(r(0, W32)),
                    src: r(0, W32),
                },
                3,
            ),
        ];
        t.run(&b, 0);
        assert_eq!(t.st.regs.rax, 6);
        // A 32-bit register CMPXCHG in 64-bit code is left to the CPU.
        let b = [
            out_dx(W8),
            i(
                Op::Cmpxchg {
                    dst: Rm::Reg(r(1, W32)),
                    src: r(2, W32),
                },
                3,
            ),
        ];
        assert_eq!(t.run(&b, 0).stop, StopReason::Unsupported);
    }

    #[test]
    fn bit_tests_take_the_offset_modulo_the_width() {
        // bt eax, 33 tests bit 1; bts/btr/btc write; ZF and the other flags stay.
        assert_eq!(alu(AluOp::Bt, W32, 2, 33, 0x2 | ZF), (2, 0x2 | ZF | CF));
        assert_eq!(alu(AluOp::Bts, W16, 0, 15, 0x2 | CF), (0x8000, 0x2));
        assert_eq!(
            alu(AluOp::Btr, W64, u64::MAX, 63, 0x2 | SF),
            (u64::MAX >> 1, 0x2 | SF | CF)
        );
        assert_eq!(alu(AluOp::Btc, W32, 0, 0xFF, 0x2), (0x8000_0000, 0x2));
        assert!(!writes_dst(AluOp::Bt) && writes_dst(AluOp::Bts));
        assert!(!AluOp::Bt.has_width(W8) && !AluOp::Imul.has_width(W8) && AluOp::Add.has_width(W8));
        // imul: 0x4000 * 4 overflows 16 bits; -2 * 3 fits.
        assert_eq!(alu(AluOp::Imul, W16, 0x4000, 4, 0x2).1 & (CF | OF), CF | OF);
        assert_eq!(
            alu(AluOp::Imul, W32, 0xFFFF_FFFE, 3, 0x2),
            (0xFFFF_FFFA, 0x2 | SF | PF)
        );
    }

    #[test]
    fn shift_count_comes_from_cl_and_is_masked() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 0x81;
        t.st.regs.rcx = 0x1_0000_0021; // CL = 0x21: masked to 1 for 8 bits
        t.st.regs.rbx = 1;
        let b = [
            out_dx(W8),
            alu_i(AluOp::Shl, r(0, W8), reg(1, W8)),
            alu_i(AluOp::Shl, r(3, W64), reg(1, W8)), // 0x21 = 33 for 64-bit
        ];
        t.run(&b, 0);
        assert_eq!(t.st.regs.rax, 0x02);
        assert_eq!(t.st.regs.rbx, 1 << 33);
    }

    #[test]
    fn defined_flags_mask_follows_the_sdm() {
        assert_eq!(defined_flags(AluOp::Add, W8, 5), STATUS);
        assert_eq!(defined_flags(AluOp::Xor, W64, 5), STATUS & !AF);
        assert_eq!(defined_flags(AluOp::Shl, W16, 0x20), STATUS);
        assert_eq!(defined_flags(AluOp::Shl, W16, 1), STATUS & !AF);
        assert_eq!(defined_flags(AluOp::Shr, W32, 2), STATUS & !AF & !OF);
        assert_eq!(defined_flags(AluOp::Shr, W8, 8), STATUS & !AF & !OF & !CF);
        assert_eq!(defined_flags(AluOp::Shl, W64, 63), STATUS & !AF & !OF);
        assert!(writes_dst(AluOp::Sub) && !writes_dst(AluOp::Cmp) && !writes_dst(AluOp::Test));
    }

    #[test]
    fn conditions_follow_table_b1() {
        use Cond::*;
        let cases: [(Cond, u64, bool); 22] = [
            (O, OF, true),
            (No, OF, false),
            (B, CF, true),
            (Ae, CF, false),
            (E, ZF, true),
            (Ne, 0, true),
            (Be, ZF, true),
            (Be, CF, true),
            (A, 0, true),
            (A, CF, false),
            (S, SF, true),
            (Ns, SF, false),
            (P, PF, true),
            (Np, 0, true),
            (L, SF, true),
            (L, SF | OF, false),
            (Ge, SF | OF, true),
            (Ge, OF, false),
            (Le, ZF | SF | OF, true),
            (Le, OF, true),
            (G, SF | OF, true),
            (G, ZF, false),
        ];
        for (c, f, want) in cases {
            assert_eq!(condition(c, f | 0x2), want, "{c:?} {f:#x}");
        }
        // Every condition and its negation (odd encodings) disagree.
        for n in (0..16).step_by(2) {
            for f in 0..0x1000u64 {
                assert_ne!(
                    condition(Cond::from_nibble(n), f),
                    condition(Cond::from_nibble(n + 1), f)
                );
            }
        }
    }

    // -----------------------------------------------------------------------
    // The host CPU as oracle
    // -----------------------------------------------------------------------

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn alu_matches_the_host_cpu_on_defined_flags() {
        let edges: [u64; 18] = [
            0,
            1,
            2,
            0x0F,
            0x10,
            0x7F,
            0x80,
            0xFF,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0xFFFF_FFFF,
            i64::MAX as u64,
            i64::MIN as u64,
            u64::MAX,
            0xDEAD_BEEF_F00D_CAFE,
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0u32;
        for op in AluOp::ALL {
            for w in WIDTHS.into_iter().filter(|&w| op.has_width(w)) {
                let shift = op.is_shift() || op.is_bit();
                let mut pairs: Vec<(u64, u64)> = Vec::new();
                for &a in &edges {
                    if shift {
                        pairs.extend((0..=70u64).map(|c| (a, c)));
                    } else {
                        pairs.extend(edges.iter().map(|&b| (a, b)));
                    }
                }
                for _ in 0..4000 {
                    let (a, b) = (rnd(), rnd());
                    pairs.push((a, if shift { b & 0xFF } else { b }));
                    // Small and sign-boundary values are where flags change.
                    pairs.push((a & 0xFF, b & 0x8F));
                }
                for (k, &(a, b)) in pairs.iter().enumerate() {
                    let fin = 0x2 | (rnd() & STATUS);
                    let (na, nf) = crate::coalesce::host_alu::exec(op, w, a, b, fin);
                    let (ma, mf) = alu(op, w, a, b, fin);
                    let defined = defined_flags(op, w, b);
                    assert_eq!(
                        mf & defined,
                        nf & defined,
                        "{op:?} {w:?} a={a:#x} b={b:#x} flags in {fin:#x} (case {k})"
                    );
                    assert_eq!(mf & !STATUS, fin & !STATUS);
                    let m = w.mask();
                    if writes_dst(op) {
                        assert_eq!(ma & m, na & m, "{op:?} {w:?} a={a:#x} b={b:#x}");
                    } else {
                        assert_eq!(na, a);
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 300_000);
    }

    // -----------------------------------------------------------------------
    // Control flow
    // -----------------------------------------------------------------------

    #[test]
    fn a_run_ends_max_quiet_instructions_after_its_last_io() {
        let mut t = T::new(CodeMode::Bits64);
        // out; 10 nops; out; 60 nops: the second out restarts the count.
        let mut b = vec![out_dx(W8)];
        b.extend(std::iter::repeat_n(nop(), 10));
        b.push(out_dx(W8));
        b.extend(std::iter::repeat_n(nop(), 60));
        let executed = 1 + 10 + 1 + MAX_QUIET;
        assert_eq!(t.run(&b, 0x2000), res(executed, 2, 0, StopReason::Limit));
        assert_eq!(t.st.rip, 0x2000 + u64::from(executed));
        // A run that starts quiet (continued from a previous block) stops sooner.
        t.st.quiet = MAX_QUIET - 3;
        let b = [out_dx(W8), nop(), nop(), nop(), nop()];
        assert_eq!(t.run(&b, 0x2000), res(5, 1, 0, StopReason::ExtentEnd));
        t.st.quiet = MAX_QUIET - 3;
        let b = [nop(), nop(), nop(), nop(), nop()];
        assert_eq!(t.run(&b, 0x2000), res(3, 0, 0, StopReason::Limit));
    }

    #[test]
    fn jmp_inside_the_block_is_followed() {
        let mut t = T::new(CodeMode::Bits64);
        // 0: out; 1: jmp +1 (over the nop); 3: nop; 4: mov al, 9
        let b = [out_dx(W8), jmp(1), nop(), mov(r(0, W8), imm(9))];
        assert_eq!(t.run(&b, 0x2000), res(3, 1, 0, StopReason::ExtentEnd));
        assert_eq!(t.st.rip, 0x2007);
        assert_eq!(t.st.regs.rax, 9);
    }

    #[test]
    fn jcc_taken_out_of_the_block_stops_before_it() {
        let mut t = T::new(CodeMode::Bits64);
        t.set_status(ZF);
        let b = [out_dx(W8), jcc(Cond::E, 0x40), nop()];
        let before = t.st.regs;
        assert_eq!(t.run(&b, 0x2000), res(1, 1, 0, StopReason::BranchOut));
        assert_eq!(t.st.rip, 0x2001);
        assert_eq!(t.st.regs, before);
        // Into the middle of an instruction: also out.
        let b = [out_dx(W8), jcc(Cond::E, 2), mov(r(0, W8), imm(1))];
        assert_eq!(t.run(&b, 0x2000).stop, StopReason::BranchOut);
        assert_eq!(t.st.rip, 0x2001);
        // To the end of the code (the instruction the scanner could not take): out.
        let b = [out_dx(W8), jcc(Cond::E, 1), nop()];
        assert_eq!(t.run(&b, 0x2000).stop, StopReason::BranchOut);
    }

    #[test]
    fn jcc_not_taken_falls_through_and_taken_inside_is_followed() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rax = 5;
        // 0 out; 1 cmp al,5 (3); 4 jne +0x40 (not taken); 6 je +1 (taken, over nop); 8 nop; 9 inc al
        let b = [
            out_dx(W8),
            alu_i(AluOp::Cmp, r(0, W8), imm(5)),
            jcc(Cond::Ne, 0x40),
            jcc(Cond::E, 1),
            nop(),
            alu_i(AluOp::Inc, r(0, W8), imm(0)),
        ];
        assert_eq!(t.run(&b, 0), res(5, 1, 0, StopReason::ExtentEnd));
        assert_eq!(t.st.regs.rax, 6);
        assert_eq!(t.st.rip, 12);
    }

    #[test]
    fn ip_is_truncated_to_the_branch_width() {
        // 16-bit code at 0xFFF0: a jump forward by 0x20 wraps IP to 0x0012: not in block.
        let mut t = T::new(CodeMode::Bits16);
        let j = i(
            Op::Jmp {
                rel: 0x20,
                width: W16,
            },
            2,
        );
        assert_eq!(t.run(&[out_dx(W8), j], 0xFFF0).stop, StopReason::BranchOut);
        // A 16-bit jump in 32-bit code drops the upper half of EIP.
        let mut t = T::new(CodeMode::Bits32);
        let j = i(
            Op::Jmp {
                rel: -3,
                width: W16,
            },
            2,
        ); // back to the out, masked
        t.limits.max_insns = 5;
        assert_eq!(
            t.run(&[out_dx(W8), j], 0x1_0000).stop,
            StopReason::BranchOut
        );
        assert_eq!(t.run(&[out_dx(W8), j], 0x1000).stop, StopReason::Limit);
        assert_eq!(t.st.rip, 0x1001);
    }

    #[test]
    fn ip_wraps_at_64k_in_16_bit_code() {
        let mut t = T::new(CodeMode::Bits16);
        // out at 0xFFFD, 2-byte nop ending at 0x10000: IP wraps to 0, outside the block.
        let b = [out_dx(W8), i(Op::Nop, 2), nop()];
        assert_eq!(t.run(&b, 0xFFFD), res(2, 1, 0, StopReason::BranchOut));
        assert_eq!(t.st.rip, 0);
        // Same at the last instruction: the scanner's reason.
        let b = [out_dx(W8), i(Op::Nop, 2)];
        assert_eq!(t.run(&b, 0xFFFD), res(2, 1, 0, StopReason::ExtentEnd));
        assert_eq!(t.st.rip, 0);
    }

    #[test]
    fn falling_off_the_end_reports_the_scanners_reason() {
        let mut t = T::new(CodeMode::Bits32);
        t.scan_end = StopReason::Unsupported;
        assert_eq!(
            t.run(&[out_dx(W8), nop()], 0x40),
            res(2, 1, 0, StopReason::Unsupported)
        );
        assert_eq!(t.st.rip, 0x42);
        t.scan_end = StopReason::Undecodable;
        assert_eq!(t.run(&[], 0x40), res(0, 0, 0, StopReason::Undecodable));
        assert_eq!(t.st.rip, 0x40);
    }

    #[test]
    fn loop_with_cx_ecx_rcx() {
        for (mode, addr, rcx, after) in [
            (
                CodeMode::Bits16,
                W16,
                0xABCD_0000_0003u64,
                0xABCD_0000_0000u64,
            ),
            (CodeMode::Bits32, W32, 0x0000_0000_0000_0003, 0),
            (CodeMode::Bits64, W32, 0xFFFF_FFFF_0000_0003, 0),
            (CodeMode::Bits64, W64, 3, 0),
        ] {
            let mut t = T::new(mode);
            t.st.regs.rcx = rcx;
            let mut l = lp(LoopKind::Loop, -3, addr);
            if mode != CodeMode::Bits64 {
                l.op = Op::Loop {
                    kind: LoopKind::Loop,
                    rel: -3,
                    addr,
                    width: if mode == CodeMode::Bits16 { W16 } else { W32 },
                };
            }
            // 0: out dx, al; 1: loop 0
            assert_eq!(
                t.run(&[out_dx(W8), l], 0x300),
                res(6, 3, 0, StopReason::ExtentEnd),
                "{mode:?} {addr:?}"
            );
            assert_eq!(t.env.log.len(), 3);
            assert_eq!(t.st.regs.rcx, after, "{mode:?} {addr:?}");
            assert_eq!(t.st.rip, 0x303);
        }
    }

    #[test]
    fn loop_count_wraps_and_uses_only_the_address_size() {
        // CX = 0 with upper bits set: 0xFFFF iterations, upper bits preserved; the
        // instruction limit ends it part-way.
        let mut t = T::new(CodeMode::Bits16);
        t.st.regs.rcx = 0x1_0000;
        t.limits.max_insns = 10;
        let l = i(
            Op::Loop {
                kind: LoopKind::Loop,
                rel: -3,
                addr: W16,
                width: W16,
            },
            2,
        );
        assert_eq!(t.run(&[out_dx(W8), l], 0), res(10, 5, 0, StopReason::Limit));
        assert_eq!(t.st.regs.rcx, 0x1_FFFB);
        assert_eq!(t.st.rip, 0);
    }

    #[test]
    fn loope_loopne_test_zf_and_never_change_flags() {
        for (kind, zf, taken) in [
            (LoopKind::Loope, ZF, true),
            (LoopKind::Loope, 0, false),
            (LoopKind::Loopne, 0, true),
            (LoopKind::Loopne, ZF, false),
        ] {
            let mut t = T::new(CodeMode::Bits64);
            t.st.regs.rcx = 5;
            t.set_status(zf | CF);
            t.limits.max_insns = 2;
            let r_ = t.run(&[out_dx(W8), lp(kind, -3, W64), nop()], 0);
            assert_eq!(t.st.regs.rcx, 4);
            assert_eq!(t.st.rflags & STATUS, zf | CF);
            if taken {
                assert_eq!((r_.stop, t.st.rip), (StopReason::Limit, 0));
            } else {
                assert_eq!((r_.stop, t.st.rip), (StopReason::Limit, 3));
            }
        }
    }

    #[test]
    fn loop_taken_out_of_the_block_does_not_decrement() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 5;
        assert_eq!(
            t.run(&[out_dx(W8), lp(LoopKind::Loop, 0x30, W64)], 0),
            res(1, 1, 0, StopReason::BranchOut)
        );
        assert_eq!(t.st.regs.rcx, 5);
        assert_eq!(t.st.rip, 1);
        // Count reaching 0: not taken, decremented, falls through.
        t.st.regs.rcx = 1;
        assert_eq!(
            t.run(&[out_dx(W8), lp(LoopKind::Loop, 0x30, W64)], 0),
            res(2, 1, 0, StopReason::ExtentEnd)
        );
        assert_eq!(t.st.regs.rcx, 0);
    }

    #[test]
    fn max_insns_bounds_a_backward_loop_but_the_first_always_runs() {
        let mut t = T::new(CodeMode::Bits64);
        t.limits.max_insns = 7;
        let b = [out_dx(W8), nop(), jmp(-4)];
        assert_eq!(t.run(&b, 0), res(7, 3, 0, StopReason::Limit));
        assert_eq!(t.st.rip, 1);
        t.limits.max_insns = 0;
        assert_eq!(t.run(&b, 0), res(1, 1, 0, StopReason::Limit));
        assert_eq!(t.st.rip, 1);
    }

    #[test]
    fn trap_flag_stops_after_the_first_instruction() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.rflags |= Rflags::TF.bits();
        assert_eq!(
            t.run(&[out_dx(W8), out_dx(W8)], 0),
            res(1, 1, 0, StopReason::SingleStep)
        );
        assert_eq!(t.env.log.len(), 1);
    }

    // -----------------------------------------------------------------------
    // IN / OUT
    // -----------------------------------------------------------------------

    #[test]
    fn in_and_out_with_imm8_and_dx_at_each_width() {
        for mode in [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64] {
            let mut t = T::new(mode);
            t.st.regs.rax = 0xAAAA_BBBB_CCCC_DDEE;
            t.st.regs.rdx = 0xFFFF_0000_0000_03F8;
            let b = [
                out_imm(W8, 0x80),
                out_dx(W16),
                out_imm(W32, 0x70),
                in_dx(W8),
                in_imm(W16, 0x61),
            ];
            assert_eq!(t.run(&b, 0), res(5, 5, 0, StopReason::ExtentEnd));
            assert_eq!(
                t.env.log,
                [
                    Io::Out(0x80, W8, 0xEE),
                    Io::Out(0x3F8, W16, 0xDDEE),
                    Io::Out(0x70, W32, 0xCCCC_DDEE),
                    Io::In(0x3F8, W8),
                    Io::In(0x61, W16),
                ]
            );
            let v0 = u64::from(Env::val(0)) & 0xFF;
            let v1 = u64::from(Env::val(1)) & 0xFFFF;
            // IN AL then IN AX: both merge.
            assert_eq!(t.st.regs.rax, 0xAAAA_BBBB_CCCC_0000 | v1);
            assert_ne!(v0, 0);
            // IN EAX zero-extends into RAX in every mode.
            t.run(&[in_dx(W32)], 0);
            assert_eq!(t.st.regs.rax, u64::from(Env::val(2)), "{mode:?}");
            t.st.regs.rax = u64::MAX;
            t.run(&[in_imm(W8, 0x60)], 0);
            assert_eq!(
                t.st.regs.rax,
                0xFFFF_FFFF_FFFF_FF00 | u64::from(Env::val(3) & 0xFF)
            );
        }
    }

    #[test]
    fn io_permission_stops_before_later_io_when_cpl_exceeds_iopl() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.cpl = 3;
        t.st.rflags = 0x2 | (1 << Rflags::IOPL_SHIFT);
        let b = [out_dx(W8), nop(), out_dx(W8)];
        assert_eq!(t.run(&b, 0), res(2, 1, 0, StopReason::IoPermission));
        assert_eq!(t.st.rip, 2);
        // String IO too.
        assert_eq!(
            t.run(&[out_dx(W8), ins(W8, true, W64)], 0).stop,
            StopReason::IoPermission
        );
        // IOPL 3 allows it.
        t.st.rflags |= Rflags::IOPL.bits();
        assert_eq!(t.run(&b, 0), res(3, 2, 0, StopReason::ExtentEnd));
        // Virtual-8086 mode never.
        let mut t = T::new(CodeMode::Bits16);
        t.st.rflags = 0x2 | Rflags::IOPL.bits() | Rflags::VM.bits();
        t.st.cpl = 3;
        assert_eq!(t.run(&b, 0), res(2, 1, 0, StopReason::IoPermission));
    }

    #[test]
    fn interrupt_after_in_or_out_stops_after_it() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.rflags |= Rflags::IF.bits();
        t.env.irq_after = Some(2);
        let b = [out_dx(W8), nop(), in_dx(W8), nop()];
        assert_eq!(t.run(&b, 0), res(3, 2, 0, StopReason::InterruptPending));
        assert_eq!(t.st.rip, 3);
        // The first instruction counts too.
        t.env = Env::default();
        t.env.irq_after = Some(1);
        assert_eq!(t.run(&b, 0), res(1, 1, 0, StopReason::InterruptPending));
        assert_eq!(t.st.rip, 1);
        // With IF = 0 the interrupt is not deliverable.
        t.st.rflags &= !Rflags::IF.bits();
        assert_eq!(t.run(&b, 0), res(4, 2, 0, StopReason::ExtentEnd));
    }

    // -----------------------------------------------------------------------
    // String IO
    // -----------------------------------------------------------------------

    #[test]
    fn rep_outsb_forward_and_backward() {
        for df in [false, true] {
            let mut t = T::new(CodeMode::Bits64);
            t.ram[0x8000..0x8005].copy_from_slice(b"hello");
            t.st.regs.rdx = 0x3F8;
            t.st.regs.rcx = 5;
            t.st.regs.rsi = if df { 0x8004 } else { 0x8000 };
            if df {
                t.st.rflags |= Rflags::DF.bits();
            }
            let b = [outs(W8, true, W64, Seg::Ds), nop()];
            assert_eq!(t.run(&b, 0x100), res(2, 1, 5, StopReason::ExtentEnd));
            let mut got: Vec<u8> = t
                .env
                .log
                .iter()
                .map(|e| match e {
                    Io::Out(0x3F8, W8, v) => *v as u8,
                    other => panic!("{other:?}"),
                })
                .collect();
            if df {
                got.reverse();
            }
            assert_eq!(got, b"hello");
            assert_eq!(t.st.regs.rsi, if df { 0x7FFF } else { 0x8005 });
            assert_eq!(t.st.regs.rcx, 0);
            assert_eq!(t.st.rip, 0x103);
        }
    }

    #[test]
    fn rep_insw_forward_and_backward() {
        for df in [false, true] {
            let mut t = T::new(CodeMode::Bits32);
            t.st.regs.rdx = 0x1F0;
            t.st.regs.rcx = 3;
            t.st.regs.rdi = 0x9000;
            if df {
                t.st.rflags |= Rflags::DF.bits();
            }
            assert_eq!(
                t.run(&[ins(W16, true, W32)], 0x100),
                res(1, 1, 3, StopReason::ExtentEnd)
            );
            assert_eq!(t.env.log, [Io::In(0x1F0, W16); 3]);
            for k in 0..3u32 {
                let at = if df {
                    0x9000 - 2 * k as usize
                } else {
                    0x9000 + 2 * k as usize
                };
                assert_eq!(
                    u16::from_le_bytes([t.ram[at], t.ram[at + 1]]),
                    Env::val(k) as u16
                );
            }
            assert_eq!(t.st.regs.rdi, if df { 0x8FFA } else { 0x9006 });
        }
    }

    #[test]
    fn string_io_16_bit_address_size_wraps_and_keeps_upper_bits_with_segment_base() {
        let mut t = T::new(CodeMode::Bits16);
        t.st.segs.base[Seg::Es as usize] = 0x2000 << 4;
        t.st.regs.rdi = 0xDEAD_0000_0000_FFFE;
        t.st.regs.rcx = 0xBEEF_0000_0000_0002;
        t.st.regs.rdx = 0x60;
        assert_eq!(
            t.run(&[ins(W16, true, W16)], 0x10),
            res(1, 1, 2, StopReason::ExtentEnd)
        );
        // Elements at ES:FFFE and ES:0000 (DI wrapped).
        let v0 = Env::val(0) as u16;
        let v1 = Env::val(1) as u16;
        assert_eq!(u16::from_le_bytes([t.ram[0x2FFFE], t.ram[0x2FFFF]]), v0);
        assert_eq!(u16::from_le_bytes([t.ram[0x20000], t.ram[0x20001]]), v1);
        assert_eq!(t.st.regs.rdi, 0xDEAD_0000_0000_0002);
        assert_eq!(t.st.regs.rcx, 0xBEEF_0000_0000_0000);
    }

    #[test]
    fn string_io_32_bit_address_size_in_64_bit_mode_zero_extends() {
        let mut t = T::new(CodeMode::Bits64);
        t.ram[0x1234] = 0x5A;
        t.st.regs.rsi = 0xFFFF_FFFF_0000_1234;
        t.st.regs.rcx = 0x7777_7777_0000_0001;
        t.st.regs.rdx = 0xE9;
        assert_eq!(
            t.run(&[outs(W8, true, W32, Seg::Ds)], 0),
            res(1, 1, 1, StopReason::ExtentEnd)
        );
        assert_eq!(t.env.log, [Io::Out(0xE9, W8, 0x5A)]);
        assert_eq!(t.st.regs.rsi, 0x1235);
        assert_eq!(t.st.regs.rcx, 0);
        // The 32-bit offset ignores RSI's upper half, then the 64-bit FS base is
        // added; stepping down from 0 wraps ESI and zero-extends.
        let mut t = T::new(CodeMode::Bits64);
        t.st.segs.base[Seg::Fs as usize] = 0x10_0000;
        t.ram[0x10_0000] = 0x11;
        t.st.regs.rsi = 0xFFFF_FFFF_0000_0000;
        t.st.rflags |= Rflags::DF.bits();
        t.st.regs.rcx = 2;
        assert_eq!(
            t.run(&[outs(W8, false, W32, Seg::Fs)], 0),
            res(1, 1, 1, StopReason::ExtentEnd)
        );
        assert_eq!(t.env.log, [Io::Out(0, W8, 0x11)]);
        assert_eq!(t.st.regs.rsi, 0xFFFF_FFFF);
        assert_eq!(t.st.regs.rcx, 2); // no REP: RCX untouched
    }

    #[test]
    fn string_io_64_bit_address_size_uses_full_registers() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rdi = 0x1_0000;
        t.st.regs.rcx = 0x1_0000_0002;
        t.limits.max_string_elements = 4;
        assert_eq!(
            t.run(&[ins(W32, true, W64)], 0),
            res(1, 1, 4, StopReason::Limit)
        );
        assert_eq!(t.st.regs.rcx, 0xFFFF_FFFE);
        assert_eq!(t.st.regs.rdi, 0x1_0010);
        assert_eq!(t.st.rip, 0);
    }

    #[test]
    fn outs_segment_override_and_64_bit_mode_base_rules() {
        // 32-bit code: DS base and an FS override both apply.
        let mut t = T::new(CodeMode::Bits32);
        t.st.segs.base[Seg::Ds as usize] = 0x4_0000;
        t.st.segs.base[Seg::Fs as usize] = 0x5_0000;
        t.ram[0x4_0010] = 0xD5;
        t.ram[0x5_0010] = 0xF5;
        t.st.regs.rsi = 0x10;
        t.run(&[outs(W8, false, W32, Seg::Ds)], 0);
        t.st.regs.rsi = 0x10;
        t.run(&[outs(W8, false, W32, Seg::Fs)], 0);
        assert_eq!(t.env.log, [Io::Out(0, W8, 0xD5), Io::Out(0, W8, 0xF5)]);
        // 64-bit code: the DS (and ES) base is ignored, GS applies.
        let mut t = T::new(CodeMode::Bits64);
        t.st.segs.base = [0x1_0000; 6];
        t.st.segs.base[Seg::Gs as usize] = 0x6_0000;
        t.ram[0x10] = 0x0D;
        t.ram[0x6_0010] = 0x6D;
        t.st.regs.rsi = 0x10;
        t.run(&[outs(W8, false, W64, Seg::Ds)], 0);
        t.st.regs.rsi = 0x10;
        t.run(&[outs(W8, false, W64, Seg::Gs)], 0);
        t.st.regs.rdi = 0x20;
        t.run(&[ins(W8, false, W64)], 0x100);
        assert_eq!(t.env.log[..2], [Io::Out(0, W8, 0x0D), Io::Out(0, W8, 0x6D)]);
        assert_eq!(t.ram[0x20], Env::val(0) as u8);
    }

    #[test]
    fn rep_with_zero_count_does_nothing_and_retires() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 0xFFFF_FFFF_0000_0000; // ECX = 0
        t.st.regs.rsi = 0x55;
        let b = [outs(W8, true, W32, Seg::Ds), ins(W8, true, W32)];
        assert_eq!(t.run(&b, 0), res(2, 2, 0, StopReason::ExtentEnd));
        assert!(t.env.log.is_empty());
        assert_eq!(t.st.regs.rcx, 0xFFFF_FFFF_0000_0000);
        assert_eq!(t.st.regs.rsi, 0x55);
        assert_eq!(t.st.rip, 4);
    }

    #[test]
    fn element_limit_stops_part_way_with_rip_on_the_instruction() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 10;
        t.st.regs.rsi = 0x8000;
        t.limits.max_string_elements = 4;
        let b = [outs(W8, true, W64, Seg::Ds), nop()];
        assert_eq!(t.run(&b, 0x40), res(1, 1, 4, StopReason::Limit));
        assert_eq!((t.st.rip, t.st.regs.rcx, t.st.regs.rsi), (0x40, 6, 0x8004));
        // The budget is per run, over all string instructions.
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 3;
        t.limits.max_string_elements = 5;
        let b = [
            outs(W8, true, W64, Seg::Ds),
            mov(r(1, W32), imm(3)),
            ins(W8, true, W64),
        ];
        assert_eq!(t.run(&b, 0x40), res(3, 2, 5, StopReason::Limit));
        assert_eq!((t.st.rip, t.st.regs.rcx), (0x45, 1));
        // A budget of 0: nothing at all, even for the first instruction.
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 3;
        t.limits.max_string_elements = 0;
        assert_eq!(t.run(&b, 0x40), res(0, 0, 0, StopReason::Limit));
        assert_eq!((t.st.rip, t.st.regs.rcx), (0x40, 3));
        // Exactly enough: the instruction completes and the run goes on.
        t.limits.max_string_elements = 3;
        t.st.regs.rcx = 3;
        assert_eq!(
            t.run(&[outs(W8, true, W64, Seg::Ds), nop()], 0x40),
            res(2, 1, 3, StopReason::ExtentEnd)
        );
    }

    #[test]
    fn interrupt_pending_mid_rep_stops_between_elements() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.rflags |= Rflags::IF.bits();
        t.st.regs.rcx = 8;
        t.st.regs.rdi = 0x9000;
        t.env.irq_after = Some(3);
        let b = [ins(W8, true, W64), nop()];
        assert_eq!(t.run(&b, 0x40), res(1, 1, 3, StopReason::InterruptPending));
        assert_eq!((t.st.rip, t.st.regs.rcx, t.st.regs.rdi), (0x40, 5, 0x9003));
        // On the last element the instruction completes first.
        let mut t = T::new(CodeMode::Bits64);
        t.st.rflags |= Rflags::IF.bits();
        t.st.regs.rcx = 3;
        t.env.irq_after = Some(3);
        assert_eq!(t.run(&b, 0x40), res(1, 1, 3, StopReason::InterruptPending));
        assert_eq!((t.st.rip, t.st.regs.rcx), (0x42, 0));
        // Non-REP: completes.
        let mut t = T::new(CodeMode::Bits64);
        t.st.rflags |= Rflags::IF.bits();
        t.env.irq_after = Some(1);
        assert_eq!(
            t.run(&[outs(W16, false, W64, Seg::Ds), nop()], 0x40),
            res(1, 1, 1, StopReason::InterruptPending)
        );
        assert_eq!((t.st.rip, t.st.regs.rsi), (0x42, 2));
    }

    #[test]
    fn unmapped_page_mid_rep_stops_before_that_element() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.paging = paging_4level(&mut t.ram);
        // REP OUTSB from 0x4FFFE: two bytes, then page 0x50000 is not present.
        t.ram[0x4_FFFE] = 0xA1;
        t.ram[0x4_FFFF] = 0xA2;
        t.st.regs.rsi = 0x4_FFFE;
        t.st.regs.rcx = 5;
        t.st.regs.rdx = 0x3F8;
        let b = [outs(W8, true, W64, Seg::Ds), nop()];
        assert_eq!(t.run(&b, 0x100), res(1, 1, 2, StopReason::Memory));
        assert_eq!(
            t.env.log,
            [Io::Out(0x3F8, W8, 0xA1), Io::Out(0x3F8, W8, 0xA2)]
        );
        assert_eq!(
            (t.st.rip, t.st.regs.rcx, t.st.regs.rsi),
            (0x100, 3, 0x5_0000)
        );
        // The first element already unmapped: nothing happened at all.
        t.env = Env::default();
        assert_eq!(t.run(&b, 0x100), res(0, 0, 0, StopReason::Memory));
        assert!(t.env.log.is_empty());
        // A word straddling into the unmapped page: no port access.
        t.st.regs.rsi = 0x4_FFFF;
        assert_eq!(
            t.run(&[outs(W16, true, W64, Seg::Ds)], 0x100),
            res(0, 0, 0, StopReason::Memory)
        );
        // INS into it: the port is not read.
        t.st.regs.rdi = 0x5_0000;
        assert_eq!(
            t.run(&[out_dx(W8), ins(W8, true, W64)], 0x100),
            res(1, 1, 0, StopReason::Memory)
        );
        assert_eq!(t.env.log, [Io::Out(0x3F8, W8, 0)]);
        // Outside guest RAM (MMIO) and non-canonical: Memory as well.
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rsi = RAM as u64;
        assert_eq!(
            t.run(&[outs(W8, false, W64, Seg::Ds)], 0).stop,
            StopReason::Memory
        );
        t.st.paging = paging_4level(&mut t.ram);
        t.st.regs.rsi = 0x8000_0000_0000_0000;
        assert_eq!(
            t.run(&[outs(W8, false, W64, Seg::Ds)], 0).stop,
            StopReason::Memory
        );
    }

    #[test]
    fn string_io_honours_page_rights_at_the_cpl() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.paging = paging_4level(&mut t.ram);
        t.st.rflags |= Rflags::IOPL.bits();
        // INS into the read-only page: CPL 3 and, with CR0.WP, CPL 0 too.
        for cpl in [0, 3] {
            t.st.cpl = cpl;
            t.st.regs.rdi = 0x5_1000;
            assert_eq!(t.run(&[ins(W8, false, W64)], 0).stop, StopReason::Memory);
            // Reading it is fine.
            t.st.regs.rsi = 0x5_1000;
            assert_eq!(
                t.run(&[outs(W8, false, W64, Seg::Ds)], 0).stop,
                StopReason::ExtentEnd
            );
        }
        // The supervisor page: CPL 3 cannot read it, CPL 0 can.
        t.st.regs.rsi = 0x5_2000;
        t.st.cpl = 3;
        assert_eq!(
            t.run(&[outs(W8, false, W64, Seg::Ds)], 0).stop,
            StopReason::Memory
        );
        t.st.cpl = 0;
        t.st.regs.rsi = 0x5_2000;
        assert_eq!(
            t.run(&[outs(W8, false, W64, Seg::Ds)], 0).stop,
            StopReason::ExtentEnd
        );
    }

    #[test]
    fn ins_into_the_blocks_own_code_stops() {
        let mut t = T::new(CodeMode::Bits64);
        t.st.regs.rcx = 10;
        // Code at 0x7000..0x7003 (ins, nop); INS from 0x6FFE upwards hits it at 0x7000.
        t.st.regs.rdi = 0x6FFE;
        let b = [ins(W8, true, W64), nop()];
        assert_eq!(t.run(&b, 0x7000), res(1, 1, 2, StopReason::Memory));
        assert_eq!(
            (t.st.regs.rdi, t.st.regs.rcx, t.env.log.len()),
            (0x7000, 8, 2)
        );
        // A word whose second byte is the code's first byte.
        t.st.regs.rdi = 0x6FFF;
        assert_eq!(
            t.run(&[ins(W16, true, W64), nop()], 0x7000),
            res(0, 0, 0, StopReason::Memory)
        );
        // Right after the code is fine.
        t.st.regs.rdi = 0x7003;
        t.st.regs.rcx = 1;
        assert_eq!(t.run(&b, 0x7000).stop, StopReason::ExtentEnd);
        // Through another linear mapping of the same physical page (block_gpa).
        let mut t = T::new(CodeMode::Bits64);
        t.gpa = Some(0x3_0010);
        t.st.regs.rdi = 0x3_0011;
        assert_eq!(
            t.run(&[ins(W8, false, W64), nop()], 0x7010),
            res(0, 0, 0, StopReason::Memory)
        );
    }

    #[test]
    fn ins_into_code_on_the_blocks_second_page_stops() {
        // Linear code 0x4_FFFE..: the block crosses into page 0x50000, unmapped here,
        // so its second page is unknown and every INS stops.
        let mut t = T::new(CodeMode::Bits64);
        t.st.paging = paging_4level(&mut t.ram);
        t.st.regs.rdi = 0x9000;
        let b = [out_dx(W8), ins(W8, false, W64), i(Op::Nop, 4)];
        assert_eq!(t.run(&b, 0x4_FFFD), res(1, 1, 0, StopReason::Memory));
        // Crossing into a mapped page: INS into that second page stops, elsewhere not.
        let mut t = T::new(CodeMode::Bits64);
        t.st.paging = paging_4level(&mut t.ram);
        t.st.regs.rdi = 0x4_F002; // the code's second page, byte 2
        assert_eq!(t.run(&b, 0x4_EFFD), res(1, 1, 0, StopReason::Memory));
        t.st.regs.rdi = 0x9000;
        assert_eq!(t.run(&b, 0x4_EFFD), res(3, 2, 1, StopReason::ExtentEnd));
    }

    #[test]
    fn exiting_instruction_is_not_permission_checked_but_later_ones_are() {
        let mut t = T::new(CodeMode::Bits32);
        t.st.cpl = 3;
        t.st.regs.rcx = 2;
        let b = [outs(W8, true, W32, Seg::Ds), outs(W8, true, W32, Seg::Ds)];
        assert_eq!(t.run(&b, 0), res(1, 1, 2, StopReason::IoPermission));
        assert_eq!(t.st.rip, 2);
    }

    #[test]
    fn flags_of_matches_alu_from_clear_flags() {
        assert_eq!(flags_of(AluOp::Add, W8, 0xFF, 1), (0, CF | ZF | AF | PF));
        assert_eq!(flags_of(AluOp::Inc, W8, 0xFF, 0), (0, ZF | AF | PF));
        assert_eq!(flags_of(AluOp::Shl, W8, 0xFF, 0), (0xFF, 0));
        assert_eq!(
            update_addr_reg(0xFFFF_0000_0000_FFFF, 1, W16),
            0xFFFF_0000_0000_0000
        );
        assert_eq!(update_addr_reg(0xFFFF_0000_FFFF_FFFF, 1, W32), 0);
        assert_eq!(update_addr_reg(0xFFFF_FFFF_FFFF_FFFF, 1, W64), 0);
        assert_eq!(ip_mask(CodeMode::Bits16), 0xFFFF);
    }

    #[test]
    fn arbitrary_blocks_never_panic() {
        let mut seed = 0x1234_5678_9ABC_DEF1u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let regs = |x: u64| RegRef {
            index: (x & 31) as u8,
            width: WIDTHS[(x >> 5) as usize & 3],
            high8: x & 0x80 != 0,
        };
        for _ in 0..3000 {
            let n = (rnd() % 8) as usize;
            let mut insns = Vec::new();
            for _ in 0..n {
                let x = rnd();
                let w = WIDTHS[(x & 3) as usize];
                let a = WIDTHS[((x >> 2) & 3) as usize];
                let rel = ((x >> 8) as i8) as i32;
                let op = match (x >> 16) % 9 {
                    0 => Op::In {
                        width: w,
                        port: PortSrc::Dx,
                    },
                    1 => Op::Out {
                        width: w,
                        port: PortSrc::Imm(x as u8),
                    },
                    2 => Op::Ins {
                        width: w,
                        rep: x & 64 != 0,
                        addr: a,
                    },
                    3 => Op::Outs {
                        width: w,
                        rep: x & 64 != 0,
                        addr: a,
                        seg: Seg::Gs,
                    },
                    4 => Op::Mov {
                        dst: regs(x >> 24),
                        src: Operand::Reg(regs(x >> 32)),
                    },
                    5 => Op::Alu {
                        op: AluOp::Shl,
                        dst: regs(x >> 24),
                        src: Operand::Imm(x >> 40),
                    },
                    6 => Op::Jmp { rel, width: a },
                    7 => Op::Jcc {
                        cond: Cond::from_nibble(x as u8),
                        rel,
                        width: a,
                    },
                    _ => Op::Loop {
                        kind: LoopKind::Loopne,
                        rel,
                        addr: a,
                        width: w,
                    },
                };
                insns.push(i(op, (rnd() % 16) as u8));
            }
            let mut offsets: Vec<u16> = (0..rnd() % 9).map(|_| (rnd() % 40) as u16).collect();
            offsets.sort();
            let mode = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64][(rnd() % 3) as usize];
            let mut t = T::new(mode);
            t.st.regs.rcx = rnd() % 5;
            t.st.regs.rsi = rnd();
            t.st.regs.rdi = rnd() % (RAM as u64 + 100);
            t.st.rflags = 0x2
                | (rnd() & (STATUS | Rflags::DF.bits() | Rflags::IF.bits() | Rflags::IOPL.bits()));
            t.st.cpl = (rnd() % 4) as u8;
            t.st.segs.base = [rnd(), rnd(), rnd(), rnd(), rnd(), rnd()];
            if rnd() % 2 == 0 {
                t.st.paging = paging_4level(&mut t.ram);
            }
            t.env.irq_after = Some((rnd() % 6) as usize);
            t.limits = Limits {
                max_insns: 50,
                max_string_elements: 20,
                max_quiet: MAX_QUIET,
            };
            t.gpa = Some(rnd());
            let rip = rnd();
            let len = (rnd() % 50) as u16;
            let r_ = t.run_raw(&insns, &offsets, len, rip);
            assert!(r_.executed <= 51 && r_.string_elements <= 20);
        }
    }
}
