//! The coalescer's instruction form: a small decoded representation of the subset of
//! x86 it emulates, independent of the decoder (zydis) so cached blocks replay without
//! decoding and the semantics (`exec`) can be tested on their own.
//!
//! Everything here is position-independent: branch targets are displacements from the
//! end of the instruction, so a block cached by guest-physical address replays
//! correctly whatever linear address maps it.

use crate::x86::Width;

/// A general register as an operand: encoding number 0-15 (RAX, RCX, RDX, RBX, RSP,
/// RBP, RSI, RDI, R8-R15; SDM Vol. 2A Table 3-1
/// "Register Codes Associated With +rb, +rw, +rd, +ro"), its width, and for 8-bit operands
/// whether it is one of AH, CH, DH, BH (bits 15:8 of registers 0-3, only without REX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegRef {
    pub index: u8,
    pub width: Width,
    pub high8: bool,
}

impl RegRef {
    pub const fn new(index: u8, width: Width) -> Self {
        RegRef {
            index,
            width,
            high8: false,
        }
    }

    /// AH (index 0), CH (1), DH (2), BH (3).
    pub const fn high(index: u8) -> Self {
        RegRef {
            index,
            width: Width::W8,
            high8: true,
        }
    }

    pub const AL: RegRef = RegRef::new(0, Width::W8);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    Reg(RegRef),
    /// Already sign- or zero-extended to the operation width as the encoding says,
    /// and masked to that width.
    Imm(u64),
}

/// Where IN/OUT take the port from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortSrc {
    Imm(u8),
    Dx,
}

/// Segment registers (SDM encoding order: Vol. 2D Table B-8 "Encoding of the Segment
/// Register (sreg) Field").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// A memory operand `seg:[base + index * scale + disp]` (SDM Vol. 1 3.7.5 "Specifying
/// an Offset"). `base` and `index` are register encodings 0-15 (`index` never 4);
/// `rip_rel` makes the base the address of the next instruction (RIP-relative, 64-bit
/// mode), so the form stays position-independent. `seg` is the segment the processor
/// uses (in 64-bit mode DS for all but FS/GS, whose bases alone count); `addr` is the
/// address size: the effective address is computed with the full registers and
/// truncated to it (16-bit addressing: `[bx+si+disp]` wraps at 64 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemRef {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: i32,
    pub rip_rel: bool,
    pub seg: Seg,
    pub addr: Width,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    /// ADD with the carry in (SDM Vol. 2A "ADC—Add With Carry").
    Adc,
    Sub,
    /// SUB with the borrow in (SDM Vol. 2B "SBB—Integer Subtraction With Borrow").
    Sbb,
    And,
    Or,
    Xor,
    /// Like Sub without writing the destination.
    Cmp,
    /// Like And without writing the destination.
    Test,
    /// Source ignored; CF unchanged.
    Inc,
    Dec,
    /// Two's complement negation; source ignored (SDM Vol. 2B "NEG—Two's Complement
    /// Negation").
    Neg,
    /// One's complement; source ignored, no flag changes (SDM Vol. 2B "NOT—One's
    /// Complement Negation").
    Not,
    /// Shift count in the source (masked to 5 bits, 6 for 64-bit, as the CPU does).
    Shl,
    Shr,
    /// Arithmetic right shift (SDM Vol. 2B "SAL/SAR/SHL/SHR—Shift").
    Sar,
    /// Rotates by the masked count in the source (SDM Vol. 2B
    /// "RCL/RCR/ROL/ROR—Rotate"); RCL
    /// and RCR rotate through CF.
    Rol,
    Ror,
    Rcl,
    Rcr,
    /// Bit test, and set / reset / complement (SDM Vol. 2A "BT—Bit Test", "BTS—Bit Test
    /// and Set", "BTR—Bit Test and Reset", "BTC—Bit Test and Complement"):
    /// the source is the bit offset, taken modulo the width for a register operand.
    /// CF = the bit; ZF unchanged. No 8-bit form.
    Bt,
    Bts,
    Btr,
    Btc,
    /// Two-operand IMUL (SDM Vol. 2A "IMUL—Signed Multiply", `0F AF /r`): the low half
    /// of the signed
    /// product; CF = OF = the product does not fit. No 8-bit form.
    Imul,
}

impl AluOp {
    /// Every operation, for tests that sweep them all.
    pub const ALL: [AluOp; 25] = [
        AluOp::Add,
        AluOp::Adc,
        AluOp::Sub,
        AluOp::Sbb,
        AluOp::And,
        AluOp::Or,
        AluOp::Xor,
        AluOp::Cmp,
        AluOp::Test,
        AluOp::Inc,
        AluOp::Dec,
        AluOp::Neg,
        AluOp::Not,
        AluOp::Shl,
        AluOp::Shr,
        AluOp::Sar,
        AluOp::Rol,
        AluOp::Ror,
        AluOp::Rcl,
        AluOp::Rcr,
        AluOp::Bt,
        AluOp::Bts,
        AluOp::Btr,
        AluOp::Btc,
        AluOp::Imul,
    ];

    /// Shifts and rotates: the source is a count (an immediate or CL).
    pub const fn is_shift(self) -> bool {
        matches!(
            self,
            AluOp::Shl
                | AluOp::Shr
                | AluOp::Sar
                | AluOp::Rol
                | AluOp::Ror
                | AluOp::Rcl
                | AluOp::Rcr
        )
    }

    /// One-operand operations: the source is ignored.
    pub const fn is_unary(self) -> bool {
        matches!(self, AluOp::Inc | AluOp::Dec | AluOp::Neg | AluOp::Not)
    }

    /// BT, BTS, BTR, BTC: the source is a bit offset.
    pub const fn is_bit(self) -> bool {
        matches!(self, AluOp::Bt | AluOp::Bts | AluOp::Btr | AluOp::Btc)
    }

    /// Whether the operation exists at `width` (the bit tests and IMUL have no 8-bit
    /// form).
    pub const fn has_width(self, width: Width) -> bool {
        !(matches!(width, Width::W8) && (self.is_bit() || matches!(self, AluOp::Imul)))
    }
}

/// One-flag instructions (SDM Vol. 2A "CLC—Clear Carry Flag", "CMC—Complement Carry
/// Flag", "CLD—Clear Direction Flag"; Vol. 2B "STC—Set Carry Flag", "STD—Set Direction
/// Flag").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlagOp {
    Clc,
    Stc,
    Cmc,
    Cld,
    Std,
}

/// The one-operand multiply and divide group (SDM Vol. 2B "MUL—Unsigned Multiply";
/// Vol. 2A "IMUL—Signed Multiply", "DIV—Unsigned Divide", "IDIV—Signed Divide";
/// group 3 /4 to /7): rDX:rAX (AX for bytes) against the operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MulOp {
    Mul,
    Imul,
    Div,
    Idiv,
}

/// Condition codes of Jcc (SDM Vol. 1 Table B-1 "EFLAGS Condition Codes"), in encoding
/// order (the low nibble
/// of 0x70-0x7F / 0x0F 0x80-0x8F).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    O,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

impl Cond {
    pub const fn from_nibble(n: u8) -> Cond {
        match n & 15 {
            0 => Cond::O,
            1 => Cond::No,
            2 => Cond::B,
            3 => Cond::Ae,
            4 => Cond::E,
            5 => Cond::Ne,
            6 => Cond::Be,
            7 => Cond::A,
            8 => Cond::S,
            9 => Cond::Ns,
            10 => Cond::P,
            11 => Cond::Np,
            12 => Cond::L,
            13 => Cond::Ge,
            14 => Cond::Le,
            _ => Cond::G,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoopKind {
    /// LOOP: decrement rCX, jump if rCX != 0.
    Loop,
    /// LOOPE/LOOPZ: ... and ZF = 1.
    Loope,
    /// LOOPNE/LOOPNZ: ... and ZF = 0.
    Loopne,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// IN AL/AX/EAX, imm8|DX.
    In {
        width: Width,
        port: PortSrc,
    },
    /// OUT imm8|DX, AL/AX/EAX.
    Out {
        width: Width,
        port: PortSrc,
    },
    /// INS: ES:[rDI] <- port DX; `addr` is the address size (rDI, rCX width).
    Ins {
        width: Width,
        rep: bool,
        addr: Width,
    },
    /// OUTS: port DX <- seg:[rSI]; `seg` is DS unless overridden.
    Outs {
        width: Width,
        rep: bool,
        addr: Width,
        seg: Seg,
    },
    /// NOP, PAUSE, multi-byte NOP (0F 1F /0: its ModRM operand is never accessed).
    Nop,
    /// MOV reg, reg|imm. A 32-bit destination zero-extends into the 64-bit register;
    /// 8- and 16-bit destinations leave the other bits alone.
    Mov {
        dst: RegRef,
        src: Operand,
    },
    /// ALU op on a register with a register or immediate source.
    Alu {
        op: AluOp,
        dst: RegRef,
        src: Operand,
    },
    /// JMP rel8/rel16/rel32: `width` is the operand size the new IP is truncated to
    /// (16-bit operand size wraps IP at 64 KiB).
    Jmp {
        rel: i32,
        width: Width,
    },
    Jcc {
        cond: Cond,
        rel: i32,
        width: Width,
    },
    /// LOOP/LOOPE/LOOPNE rel8; `addr` selects CX, ECX or RCX.
    Loop {
        kind: LoopKind,
        rel: i32,
        addr: Width,
        width: Width,
    },
    /// MOV/MOVZX/MOVSX/MOVSXD reg, r/m: `src` bytes of `width` from a register or
    /// memory, zero- or sign-extended (`signed`) to the destination's width.
    Load {
        dst: RegRef,
        src: Rm,
        width: Width,
        signed: bool,
    },
    /// MOV m, reg|imm (`width` = operand size).
    Store {
        mem: MemRef,
        src: Operand,
        width: Width,
    },
    /// ALU op on a memory destination (CMP/TEST only read it).
    AluMem {
        op: AluOp,
        mem: MemRef,
        src: Operand,
        width: Width,
    },
    /// ALU op reg, m (a register destination, memory source).
    AluLoad {
        op: AluOp,
        dst: RegRef,
        mem: MemRef,
    },
    /// LEA reg, m: the effective address, truncated to the destination width.
    Lea {
        dst: RegRef,
        mem: MemRef,
    },
    /// PUSH r / imm of `width` (the operand size: 8 bytes in 64-bit mode, 2 or 4
    /// otherwise) through SS:rSP at the stack's address size.
    Push {
        src: Operand,
        width: Width,
    },
    /// POP r (the register's width is the operand size).
    Pop {
        dst: RegRef,
    },
    /// CALL rel16/rel32: pushes the return address (`width` bytes), IP at `width`.
    Call {
        rel: i32,
        width: Width,
    },
    /// RET / RET imm16 (near): pops the return address (`width` bytes), then `pop`
    /// bytes.
    Ret {
        pop: u16,
        width: Width,
    },
    /// CALL r/m (FF /2): pushes the return address, jumps to the value (`width`).
    CallInd {
        src: Rm,
        width: Width,
    },
    /// JMP r/m (FF /4).
    JmpInd {
        src: Rm,
        width: Width,
    },
    /// LEAVE: rSP <- rBP (at the stack's address size), then POP rBP of `width`.
    Leave {
        width: Width,
    },
    /// CLC, STC, CMC, CLD, STD.
    Flag {
        op: FlagOp,
    },
    /// CMOVcc r, r/m (SDM Vol. 2A "CMOVcc—Conditional Move"): the source is read
    /// whatever the
    /// condition, and a 32-bit destination is zero-extended even when it is false.
    Cmov {
        cond: Cond,
        dst: RegRef,
        src: Rm,
    },
    /// SETcc r/m8.
    Setcc {
        cond: Cond,
        dst: Rm,
    },
    /// XCHG r, r/m (and 90+r): with memory, implicitly locked (one vCPU: see
    /// docs/COALESCING.md).
    Xchg {
        reg: RegRef,
        other: Rm,
    },
    /// BSWAP r32/r64.
    Bswap {
        reg: RegRef,
    },
    /// CBW / CWDE / CDQE: rAX at `width` <- the sign-extended lower half.
    Widen {
        width: Width,
    },
    /// CWD / CDQ / CQO: rDX at `width` <- the sign of rAX at `width`.
    SignDx {
        width: Width,
    },
    /// MUL, IMUL, DIV, IDIV r/m (one operand, rDX:rAX implicit).
    MulDiv {
        op: MulOp,
        src: Rm,
        width: Width,
    },
    /// IMUL r, r/m, imm (69, 6B): `dst` <- the low half of `src` x `imm` (`imm` already
    /// sign-extended and masked to the width).
    Imul3 {
        dst: RegRef,
        src: Rm,
        imm: u64,
    },
    /// CMPXCHG r/m, r (SDM Vol. 2A "CMPXCHG—Compare and Exchange"): compares rAX with `dst`; equal: `dst`
    /// <- `src`, else rAX <- `dst`. Flags as CMP rAX, `dst`.
    Cmpxchg {
        dst: Rm,
        src: RegRef,
    },
    /// XADD r/m, r (SDM Vol. 2C "XADD—Exchange and Add"): `src` <- `dst`, `dst` <- the
    /// sum.
    Xadd {
        dst: Rm,
        src: RegRef,
    },
    /// PUSHF/PUSHFD/PUSHFQ: (E/R)FLAGS with VM and RF cleared, `width` bytes (SDM Vol.
    /// 2B "PUSHF/PUSHFD/PUSHFQ—Push EFLAGS Register Onto the Stack").
    Pushf {
        width: Width,
    },
    /// POPF/POPFD/POPFQ, with the CPL/IOPL rules for IF and IOPL (SDM Vol. 2B
    /// "POPF/POPFD/POPFQ—Pop Stack Into EFLAGS Register"); a 16-bit POPF changes FLAGS
    /// (bits 15:0) only.
    Popf {
        width: Width,
    },
    /// CLI / STI (SDM Vol. 2A "CLI—Clear Interrupt Flag", Vol. 2B "STI—Set Interrupt
    /// Flag"); CPL > IOPL faults (#GP).
    Cli,
    Sti,
    /// MOVS, STOS, LODS, CMPS, SCAS of `width` at address size `addr`; `seg` is the
    /// source's segment (DS unless overridden; the destination is always ES).
    Str {
        kind: StrKind,
        width: Width,
        rep: Repeat,
        addr: Width,
        seg: Seg,
    },
}

/// The string instructions that move or compare memory (SDM Vol. 2B "MOVS/MOVSB/MOVSW/
/// MOVSD/MOVSQ—Move Data From String to String", "STOS/STOSB/STOSW/STOSD/STOSQ—Store
/// String", "LODS/LODSB/LODSW/LODSD/LODSQ—Load String"; Vol. 2A "CMPS/CMPSB/CMPSW/
/// CMPSD/CMPSQ—Compare String Operands", Vol. 2B "SCAS/SCASB/SCASW/SCASD—Scan String").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrKind {
    /// ES:[rDI] <- seg:[rSI].
    Movs,
    /// ES:[rDI] <- rAX.
    Stos,
    /// rAX <- seg:[rSI].
    Lods,
    /// Flags of CMP seg:[rSI], ES:[rDI].
    Cmps,
    /// Flags of CMP rAX, ES:[rDI].
    Scas,
}

/// The repeat prefix of a string instruction (SDM Vol. 2B "REP/REPE/REPZ/REPNE/REPNZ—
/// Repeat String Operation Prefix").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repeat {
    Once,
    /// F3: REP (MOVS/STOS/LODS), REPE (CMPS/SCAS: also while ZF = 1).
    Rep,
    /// F2 on CMPS/SCAS: REPNE (while ZF = 0).
    Repne,
}

/// A register-or-memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rm {
    Reg(RegRef),
    Mem(MemRef),
}

impl Op {
    pub const fn is_io(&self) -> bool {
        matches!(
            self,
            Op::In { .. } | Op::Out { .. } | Op::Ins { .. } | Op::Outs { .. }
        )
    }

    pub const fn is_branch(&self) -> bool {
        matches!(
            self,
            Op::Jmp { .. }
                | Op::Jcc { .. }
                | Op::Loop { .. }
                | Op::Call { .. }
                | Op::Ret { .. }
                | Op::CallInd { .. }
                | Op::JmpInd { .. }
        )
    }
}

/// One decoded instruction: its operation and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Insn {
    pub op: Op,
    pub len: u8,
}

/// The code size the decoder and the emulator work in (from CS.L/CS.D and CR0.PE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeMode {
    /// Real mode or 16-bit protected mode (CS.D = 0).
    Bits16,
    /// 32-bit protected or compatibility mode (CS.D = 1).
    Bits32,
    /// 64-bit mode (CS.L = 1 with EFER.LMA).
    Bits64,
}

/// Why a coalesced run ended where it did; counted in `sluice-stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The next instruction is outside the supported subset.
    Unsupported,
    /// The next bytes do not decode.
    Undecodable,
    /// The extent ends (or the next instruction crosses it).
    ExtentEnd,
    /// The next code bytes are not in guest RAM or do not translate.
    CodeUnmapped,
    /// A branch leaves the block.
    BranchOut,
    /// An interrupt became deliverable through a device access in the run.
    InterruptPending,
    /// Instructions are observable one at a time (RFLAGS.TF, DR7 breakpoints).
    SingleStep,
    /// CPL > IOPL or virtual-8086 mode: the CPU must check each port.
    IoPermission,
    /// A memory operand that does not translate to guest RAM, or a write into the
    /// block's own code.
    Memory,
    /// The per-exit instruction or string-element limit.
    Limit,
    /// The next instruction raises an exception that is not about memory (#DE of a
    /// divide): the CPU executes it and delivers the fault.
    Fault,
    /// A timer event the guest can take (IRQ0 or IRQ8 unmasked) fell due while the run
    /// was being emulated: it ends at the next block so the guest takes it on time.
    TimerDue,
    /// Coalescing is off, or the exiting instruction itself could not be matched.
    Off,
    /// The exit site's last full run emulated more instructions than the exits it
    /// saved were worth (typically: no IO instruction after the exiting one), so the
    /// exit went to the one-instruction handler (the engine's site memory,
    /// `engine::EXIT_COST_IN_INSNS`).
    Learned,
}

impl StopReason {
    pub const ALL: [StopReason; 14] = [
        StopReason::Unsupported,
        StopReason::Undecodable,
        StopReason::ExtentEnd,
        StopReason::CodeUnmapped,
        StopReason::BranchOut,
        StopReason::InterruptPending,
        StopReason::SingleStep,
        StopReason::IoPermission,
        StopReason::Memory,
        StopReason::Limit,
        StopReason::Fault,
        StopReason::TimerDue,
        StopReason::Off,
        StopReason::Learned,
    ];

    /// Name used as a key in `sluice-stats`.
    pub const fn name(self) -> &'static str {
        match self {
            StopReason::Unsupported => "unsupported",
            StopReason::Undecodable => "undecodable",
            StopReason::ExtentEnd => "extent_end",
            StopReason::CodeUnmapped => "code_unmapped",
            StopReason::BranchOut => "branch_out",
            StopReason::InterruptPending => "interrupt_pending",
            StopReason::SingleStep => "single_step",
            StopReason::IoPermission => "io_permission",
            StopReason::Memory => "memory",
            StopReason::Fault => "fault",
            StopReason::TimerDue => "timer_due",
            StopReason::Limit => "limit",
            StopReason::Off => "off",
            StopReason::Learned => "learned",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_masks() {
        assert_eq!(Width::W8.mask(), 0xFF);
        assert_eq!(Width::W32.mask(), 0xFFFF_FFFF);
        assert_eq!(Width::W64.mask(), u64::MAX);
        assert_eq!(Width::from_bytes(2), Some(Width::W16));
        assert_eq!(Width::from_bytes(3), None);
    }

    #[test]
    fn condition_nibbles_follow_the_encoding() {
        assert_eq!(Cond::from_nibble(0x4), Cond::E);
        assert_eq!(Cond::from_nibble(0x75), Cond::Ne);
        assert_eq!(Cond::from_nibble(0xF), Cond::G);
    }

    #[test]
    fn stop_reason_names_are_unique_and_indexed_in_order() {
        for (i, r) in StopReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(
                StopReason::ALL
                    .iter()
                    .filter(|o| o.name() == r.name())
                    .count(),
                1
            );
        }
    }
}
