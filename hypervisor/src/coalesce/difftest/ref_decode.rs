//! The reference's decoding: iced-x86 decodes, and the reference reads the result into
//! its own instruction form ([`RefOp`]), written without the coalescer's `decode`.
//! Anything it does not read is outside its subset, a mandatory stop.

use std::fmt::Write as _;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind};

use super::case::bitness;
use crate::coalesce::insn::{AluOp, CodeMode, FlagOp, MulOp, Repeat, StrKind};

/// A general register operand: encoding 0-15, size in bytes, AH..BH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) struct GReg {
    pub index: u8,
    pub size: u8,
    pub high: bool,
}

fn greg(r: iced_x86::Register) -> Option<GReg> {
    use iced_x86::Register as R;
    let n = r as u32;
    let between = |a: R, b: R| (a as u32..=b as u32).contains(&n);
    let (index, size, high) = if between(R::AL, R::BL) {
        (n - R::AL as u32, 1, false)
    } else if between(R::AH, R::BH) {
        (n - R::AH as u32, 1, true)
    } else if between(R::SPL, R::R15L) {
        (n - R::SPL as u32 + 4, 1, false)
    } else if between(R::AX, R::R15W) {
        (n - R::AX as u32, 2, false)
    } else if between(R::EAX, R::R15D) {
        (n - R::EAX as u32, 4, false)
    } else if between(R::RAX, R::R15) {
        (n - R::RAX as u32, 8, false)
    } else {
        return None;
    };
    Some(GReg {
        index: index as u8,
        size,
        high,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) enum Src {
    Reg(GReg),
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) enum BranchKind {
    Always,
    /// Jcc: the condition's index in encoding order (0 = O ... 15 = G).
    Cond(u8),
    /// LOOP (0), LOOPE (1), LOOPNE (2) with the count register size.
    Loop(u8, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) enum RefOp {
    /// IN/OUT: size, immediate port (else DX).
    Io {
        is_in: bool,
        size: u8,
        imm: Option<u8>,
    },
    /// INS/OUTS: size, REP, address size in bytes, segment (0 ES .. 5 GS).
    Str {
        is_in: bool,
        size: u8,
        rep: bool,
        addr: u8,
        seg: u8,
    },
    Nop,
    Mov {
        dst: GReg,
        src: Src,
    },
    Alu {
        op: AluOp,
        dst: GReg,
        src: Src,
    },
    Branch {
        kind: BranchKind,
        target: u64,
    },
    /// MOV/MOVZX/MOVSX/MOVSXD reg, r/m: `size` source bytes, extended.
    Load {
        dst: GReg,
        src: RefRm,
        size: u8,
        signed: bool,
    },
    Store {
        mem: RefMem,
        src: Src,
        size: u8,
    },
    AluMem {
        op: AluOp,
        mem: RefMem,
        src: Src,
        size: u8,
    },
    AluLoad {
        op: AluOp,
        dst: GReg,
        mem: RefMem,
    },
    Lea {
        dst: GReg,
        mem: RefMem,
    },
    /// The stack forms with their slot size in bytes.
    Push {
        src: Src,
        size: u8,
    },
    Pop {
        dst: GReg,
    },
    Call {
        target: u64,
        size: u8,
    },
    Ret {
        pop: u16,
        size: u8,
    },
    /// CALL r/m, JMP r/m (near).
    CallInd {
        src: RefRm,
        size: u8,
    },
    JmpInd {
        src: RefRm,
        size: u8,
    },
    Leave {
        size: u8,
    },
    Flag {
        op: FlagOp,
    },
    /// CMOVcc / SETcc with the condition's index in encoding order.
    Cmov {
        cond: u8,
        dst: GReg,
        src: RefRm,
    },
    Setcc {
        cond: u8,
        dst: RefRm,
    },
    Xchg {
        a: RefRm,
        b: RefRm,
    },
    Bswap {
        reg: GReg,
    },
    /// CBW/CWDE/CDQE (`size` = the destination's), CWD/CDQ/CQO.
    Widen {
        size: u8,
    },
    SignDx {
        size: u8,
    },
    MulDiv {
        op: MulOp,
        src: RefRm,
        size: u8,
    },
    Imul3 {
        dst: GReg,
        src: RefRm,
        imm: u64,
    },
    Cmpxchg {
        dst: RefRm,
        src: GReg,
    },
    Xadd {
        dst: RefRm,
        src: GReg,
    },
    Cli,
    Sti,
    /// MOVS/STOS/LODS/CMPS/SCAS: element size, repeat, address size in bytes, source
    /// segment (0 ES .. 5 GS).
    MemStr {
        kind: StrKind,
        size: u8,
        rep: Repeat,
        addr: u8,
        seg: u8,
    },
    /// PUSHF/PUSHFD/PUSHFQ, POPF/POPFD/POPFQ.
    Pushf {
        size: u8,
    },
    Popf {
        size: u8,
    },
}

/// A memory operand as iced reads it: base, index, scale, displacement (for
/// RIP-relative operands iced has already added the next RIP: `base` is None and
/// `disp` the address), segment (0 ES .. 5 GS, as iced resolves the default: SS for a
/// BP/EBP/ESP base; in 64-bit code only 4 FS and 5 GS, else 3), address size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) struct RefMem {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: u64,
    pub seg: u8,
    pub addr: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) enum RefRm {
    Reg(GReg),
    Mem(RefMem),
}

/// iced's memory operand of `i`.
fn ref_mem(i: &Instruction) -> Option<RefMem> {
    use iced_x86::Register as R;
    let long = i.code_size() == iced_x86::CodeSize::Code64;
    let reg = |r: R| -> Option<Option<(u8, u8)>> {
        if r == R::None {
            return Some(None);
        }
        let g = greg(r)?;
        Some(Some((g.index, g.size)))
    };
    let rip = matches!(i.memory_base(), R::RIP | R::EIP);
    let base = if rip { None } else { reg(i.memory_base())? };
    let index = reg(i.memory_index())?;
    let addr = match i.memory_displ_size() {
        _ if rip => {
            if i.memory_base() == R::EIP {
                4
            } else {
                8
            }
        }
        // Without registers: iced reports a 32-bit displacement as 4 bytes only
        // under a 32-bit address size (67h), else as 8 (sign-extended), in 64-bit code;
        // outside it the displacement's size is the address size.
        4 if !long && base.is_none() && index.is_none() => 4,
        2 if !long && base.is_none() && index.is_none() => 2,
        4 if base.is_none() && index.is_none() => 4,
        _ => base.or(index).map_or(8, |(_, size)| size),
    };
    let seg = if long {
        match i.memory_segment() {
            R::FS => 4,
            R::GS => 5,
            _ => 3,
        }
    } else {
        seg_index(i.memory_segment())
    };
    Some(RefMem {
        base: base.map(|b| b.0),
        index: index.map(|x| x.0),
        scale: i.memory_index_scale() as u8,
        disp: i.memory_displacement64(),
        seg,
        addr,
    })
}

fn mem_bytes(m: iced_x86::MemorySize) -> u8 {
    use iced_x86::MemorySize as S;
    match m {
        S::UInt8 | S::Int8 => 1,
        S::UInt16 | S::Int16 => 2,
        S::UInt32 | S::Int32 => 4,
        S::UInt64 | S::Int64 => 8,
        _ => 0,
    }
}

fn host_op(m: Mnemonic) -> Option<AluOp> {
    use Mnemonic as M;
    Some(match m {
        M::Add => AluOp::Add,
        M::Adc => AluOp::Adc,
        M::Sbb => AluOp::Sbb,
        M::Neg => AluOp::Neg,
        M::Not => AluOp::Not,
        M::Sar => AluOp::Sar,
        M::Rol => AluOp::Rol,
        M::Ror => AluOp::Ror,
        M::Rcl => AluOp::Rcl,
        M::Rcr => AluOp::Rcr,
        M::Or => AluOp::Or,
        M::And => AluOp::And,
        M::Sub => AluOp::Sub,
        M::Xor => AluOp::Xor,
        M::Cmp => AluOp::Cmp,
        M::Test => AluOp::Test,
        M::Inc => AluOp::Inc,
        M::Dec => AluOp::Dec,
        M::Shl | M::Sal => AluOp::Shl,
        M::Shr => AluOp::Shr,
        M::Bt => AluOp::Bt,
        M::Bts => AluOp::Bts,
        M::Btr => AluOp::Btr,
        M::Btc => AluOp::Btc,
        _ => return None,
    })
}

/// A condition code from the mnemonic's suffix after `prefix` (`Cmovne` -> 5).
fn cc_suffix(m: Mnemonic, prefix: &str) -> Option<u8> {
    let name = format!("{m:?}");
    let suffix = name.strip_prefix(prefix)?;
    let all = [
        "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
    ];
    all.iter().position(|&c| c == suffix).map(|k| k as u8)
}

/// Operand `n` as a register or (64-bit code) memory operand.
fn ref_rm(i: &Instruction, n: u32) -> Option<RefRm> {
    match i.op_kind(n) {
        OpKind::Register => greg(i.op_register(n)).map(RefRm::Reg),
        OpKind::Memory => ref_mem(i).map(RefRm::Mem),
        _ => None,
    }
}

/// The reference's reading of CMOVcc, SETcc, XCHG, BSWAP, CBW..CQO, the one-flag
/// instructions, the bit tests, IMUL/MUL/DIV/IDIV and indirect CALL/JMP: `None` if
/// not one of them, `Some(None)` if one in a form outside the subset.
fn ref_more_op(i: &Instruction) -> Option<Option<RefOp>> {
    use Mnemonic as M;
    let m = i.mnemonic();
    let long = i.code_size() == iced_x86::CodeSize::Code64;
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    // LOCK is allowed on a memory destination of the instructions that may take it
    // (iced has refused it elsewhere).
    let lock_ok = i.op_count() > 0 && i.op_kind(0) == OpKind::Memory
        || (m == M::Xchg && i.op_count() > 1 && i.op_kind(1) == OpKind::Memory);
    let prefixed = rep || (i.has_lock_prefix() && !lock_ok);
    let size_of = |n: u32| -> u8 {
        if i.op_kind(n) == OpKind::Memory {
            mem_bytes(i.memory_size())
        } else {
            greg(i.op_register(n)).map_or(0, |g| g.size)
        }
    };
    let op = match m {
        M::Clc | M::Stc | M::Cmc | M::Cld | M::Std => RefOp::Flag {
            op: match m {
                M::Clc => FlagOp::Clc,
                M::Stc => FlagOp::Stc,
                M::Cmc => FlagOp::Cmc,
                M::Cld => FlagOp::Cld,
                _ => FlagOp::Std,
            },
        },
        M::Cbw | M::Cwde | M::Cdqe => RefOp::Widen {
            size: match m {
                M::Cbw => 2,
                M::Cwde => 4,
                _ => 8,
            },
        },
        M::Cwd | M::Cdq | M::Cqo => RefOp::SignDx {
            size: match m {
                M::Cwd => 2,
                M::Cdq => 4,
                _ => 8,
            },
        },
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
            if (0..i.op_count()).any(|k| is_string_operand(i.op_kind(k))) =>
        {
            let name = format!("{m:?}");
            let kind = match &name[..4] {
                "Movs" => StrKind::Movs,
                "Stos" => StrKind::Stos,
                "Lods" => StrKind::Lods,
                "Cmps" => StrKind::Cmps,
                _ => StrKind::Scas,
            };
            let size = match name.as_bytes()[4] {
                b'b' => 1,
                b'w' => 2,
                b'd' => 4,
                _ => 8,
            };
            let compares = matches!(kind, StrKind::Cmps | StrKind::Scas);
            let rep = if i.has_rep_prefix() {
                Repeat::Rep
            } else if i.has_repne_prefix() {
                if !compares {
                    return Some(None);
                }
                Repeat::Repne
            } else {
                Repeat::Once
            };
            if i.has_lock_prefix() {
                return Some(None);
            }
            // The address size from the string operand's registers.
            let k = if matches!(kind, StrKind::Stos | StrKind::Scas) {
                i.op_kind(if kind == StrKind::Stos { 0 } else { 1 })
            } else if kind == StrKind::Lods {
                i.op_kind(1)
            } else {
                i.op_kind(0)
            };
            let addr = match k {
                OpKind::MemoryESDI | OpKind::MemorySegSI => 2,
                OpKind::MemoryESEDI | OpKind::MemorySegESI => 4,
                _ => 8,
            };
            let seg = if matches!(kind, StrKind::Movs | StrKind::Lods | StrKind::Cmps) {
                seg_index(i.memory_segment())
            } else {
                3
            };
            RefOp::MemStr {
                kind,
                size,
                rep,
                addr,
                seg: if long && seg < 4 { 3 } else { seg },
            }
        }
        M::Cli => RefOp::Cli,
        M::Sti => RefOp::Sti,
        M::Pushf | M::Pushfd | M::Pushfq => RefOp::Pushf {
            size: match m {
                M::Pushf => 2,
                M::Pushfd => 4,
                _ => 8,
            },
        },
        M::Popf | M::Popfd | M::Popfq => RefOp::Popf {
            size: match m {
                M::Popf => 2,
                M::Popfd => 4,
                _ => 8,
            },
        },
        M::Leave => {
            use iced_x86::Code as C;
            RefOp::Leave {
                size: match i.code() {
                    C::Leavew => 2,
                    C::Leaved => 4,
                    _ => 8,
                },
            }
        }
        M::Cmpxchg | M::Xadd => {
            let dst = ref_rm(i, 0)?;
            let src = greg(i.op_register(1))?;
            if m == M::Cmpxchg {
                RefOp::Cmpxchg { dst, src }
            } else {
                RefOp::Xadd { dst, src }
            }
        }
        M::Bswap => {
            let reg = greg(i.op_register(0))?;
            if reg.size < 4 {
                return Some(None);
            }
            RefOp::Bswap { reg }
        }
        M::Xchg => RefOp::Xchg {
            a: ref_rm(i, 0)?,
            b: ref_rm(i, 1)?,
        },
        M::Bt | M::Bts | M::Btr | M::Btc => {
            let op = host_op(m)?;
            let size = size_of(0);
            let src = match i.op_kind(1) {
                OpKind::Register => Src::Reg(greg(i.op_register(1))?),
                k if is_imm(k) => Src::Imm(i.immediate(1) & 0xFF),
                _ => return Some(None),
            };
            match ref_rm(i, 0)? {
                RefRm::Reg(dst) => RefOp::Alu { op, dst, src },
                RefRm::Mem(mem) => RefOp::AluMem { op, mem, src, size },
            }
        }
        M::Imul if i.op_count() == 3 => {
            let dst = greg(i.op_register(0))?;
            RefOp::Imul3 {
                dst,
                src: ref_rm(i, 1)?,
                imm: i.immediate(2) & size_mask(dst.size),
            }
        }
        M::Imul if i.op_count() == 2 => {
            let dst = greg(i.op_register(0))?;
            match ref_rm(i, 1)? {
                RefRm::Reg(r) => RefOp::Alu {
                    op: AluOp::Imul,
                    dst,
                    src: Src::Reg(r),
                },
                RefRm::Mem(mem) => RefOp::AluLoad {
                    op: AluOp::Imul,
                    dst,
                    mem,
                },
            }
        }
        M::Mul | M::Imul | M::Div | M::Idiv => RefOp::MulDiv {
            op: match m {
                M::Mul => MulOp::Mul,
                M::Imul => MulOp::Imul,
                M::Div => MulOp::Div,
                _ => MulOp::Idiv,
            },
            src: ref_rm(i, 0)?,
            size: size_of(0),
        },
        M::Call | M::Jmp if matches!(i.op_kind(0), OpKind::Register | OpKind::Memory) => {
            use iced_x86::Code as C;
            // Near indirect branches; in 64-bit code with a 64-bit operand only.
            let size = match i.code() {
                C::Call_rm16 | C::Jmp_rm16 if !long => 2,
                C::Call_rm32 | C::Jmp_rm32 if !long => 4,
                C::Call_rm64 | C::Jmp_rm64 if long => 8,
                _ => return Some(None),
            };
            let src = ref_rm(i, 0)?;
            if m == M::Call {
                RefOp::CallInd { src, size }
            } else {
                RefOp::JmpInd { src, size }
            }
        }
        _ => {
            if let Some(cond) = cc_suffix(m, "Cmov") {
                RefOp::Cmov {
                    cond,
                    dst: greg(i.op_register(0))?,
                    src: ref_rm(i, 1)?,
                }
            } else {
                RefOp::Setcc {
                    cond: cc_suffix(m, "Set")?,
                    dst: ref_rm(i, 0)?,
                }
            }
        }
    };
    if prefixed && !matches!(op, RefOp::MemStr { .. }) {
        return Some(None);
    }
    Some(Some(op))
}

/// The reference's reading of the new forms with memory or stack operands (64-bit
/// code): `None` if not one of them.
fn ref_mem_op(i: &Instruction) -> Option<Option<RefOp>> {
    use Mnemonic as M;
    let m = i.mnemonic();
    let long = i.code_size() == iced_x86::CodeSize::Code64;
    let mem0 = i.op_count() > 0 && i.op_kind(0) == OpKind::Memory;
    let mem1 = i.op_count() > 1 && i.op_kind(1) == OpKind::Memory;
    let reg0 = || greg(i.op_register(0)).filter(|_| i.op_kind(0) == OpKind::Register);
    let size_of = |n: u32| -> u8 {
        if i.op_kind(n) == OpKind::Memory {
            mem_bytes(i.memory_size())
        } else {
            greg(i.op_register(n)).map_or(0, |g| g.size)
        }
    };
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    let locked = rep || i.has_lock_prefix();
    let op = match m {
        M::Movzx | M::Movsx | M::Movsxd => {
            let dst = reg0()?;
            let size = size_of(1);
            let src = if mem1 {
                RefRm::Mem(ref_mem(i)?)
            } else {
                RefRm::Reg(greg(i.op_register(1))?)
            };
            if locked || (dst.size == 2 && m == M::Movsxd) {
                return Some(None);
            }
            RefOp::Load {
                dst,
                src,
                size,
                signed: m != M::Movzx,
            }
        }
        M::Lea => {
            let dst = reg0()?;
            RefOp::Lea {
                dst,
                mem: RefMem {
                    seg: 3,
                    ..ref_mem(i)?
                },
            }
        }
        M::Mov if mem1 => {
            let dst = reg0()?;
            RefOp::Load {
                dst,
                src: RefRm::Mem(ref_mem(i)?),
                size: dst.size,
                signed: false,
            }
        }
        M::Mov if mem0 => {
            let size = size_of(0);
            RefOp::Store {
                mem: ref_mem(i)?,
                src: src_of(i, 1, size)?,
                size,
            }
        }
        _ if mem0 && host_op(m).is_some() => {
            let op = host_op(m)?;
            let size = size_of(0);
            let src = match op {
                AluOp::Inc | AluOp::Dec => Src::Imm(1),
                AluOp::Neg | AluOp::Not => Src::Imm(0),
                _ if op.is_shift() => {
                    if i.op_count() < 2 {
                        Src::Imm(1)
                    } else if is_imm(i.op_kind(1)) {
                        Src::Imm(i.immediate(1) & 0xFF)
                    } else if i.op_register(1) == iced_x86::Register::CL {
                        Src::Reg(greg(iced_x86::Register::CL)?)
                    } else {
                        return Some(None);
                    }
                }
                _ => src_of(i, 1, size)?,
            };
            // LOCK on a read-modify-write of memory is fine: one vCPU.
            let rmw = !matches!(op, AluOp::Cmp | AluOp::Test) && !op.is_shift();
            if rep || (i.has_lock_prefix() && !rmw) {
                return Some(None);
            }
            RefOp::AluMem {
                op,
                mem: ref_mem(i)?,
                src,
                size,
            }
        }
        _ if mem1 && host_op(m).is_some() => {
            let dst = reg0()?;
            if locked {
                return Some(None);
            }
            RefOp::AluLoad {
                op: host_op(m)?,
                dst,
                mem: ref_mem(i)?,
            }
        }
        M::Push if !mem0 => {
            use iced_x86::Code as C;
            // The slot size: 8 in 64-bit code (the 66h forms are outside the subset),
            // 2 or 4 otherwise.
            let slot_ok = |size: u8| {
                if long {
                    size == 8
                } else {
                    matches!(size, 2 | 4)
                }
            };
            if i.op_kind(0) == OpKind::Register {
                let r = greg(i.op_register(0))?;
                if !slot_ok(r.size) {
                    return Some(None);
                }
                RefOp::Push {
                    src: Src::Reg(r),
                    size: r.size,
                }
            } else if is_imm(i.op_kind(0)) {
                let size = match i.code() {
                    C::Pushw_imm8 | C::Push_imm16 => 2,
                    C::Pushd_imm8 | C::Pushd_imm32 => 4,
                    C::Pushq_imm8 | C::Pushq_imm32 => 8,
                    _ => return Some(None),
                };
                if !slot_ok(size) {
                    return Some(None);
                }
                RefOp::Push {
                    src: Src::Imm(i.immediate(0) & size_mask(size)),
                    size,
                }
            } else {
                return Some(None);
            }
        }
        M::Pop if !mem0 => {
            let r = reg0()?;
            if (long && r.size != 8) || (!long && !matches!(r.size, 2 | 4)) {
                return Some(None);
            }
            RefOp::Pop { dst: r }
        }
        M::Call
            if matches!(
                i.op_kind(0),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) =>
        {
            if i.has_repne_prefix() {
                return Some(None);
            }
            let size = match i.op_kind(0) {
                OpKind::NearBranch16 => 2,
                OpKind::NearBranch32 => 4,
                _ => 8,
            };
            RefOp::Call {
                target: i.near_branch_target(),
                size,
            }
        }
        M::Ret => {
            use iced_x86::Code as C;
            if i.has_repne_prefix() || i.has_rep_prefix() {
                return Some(None);
            }
            let size = match i.code() {
                C::Retnw | C::Retnw_imm16 => 2,
                C::Retnd | C::Retnd_imm16 => 4,
                C::Retnq | C::Retnq_imm16 => 8,
                _ => return Some(None),
            };
            if long && size != 8 {
                return Some(None);
            }
            RefOp::Ret {
                pop: if i.op_count() > 0 {
                    i.immediate(0) as u16
                } else {
                    0
                },
                size,
            }
        }
        _ => return None,
    };
    Some(Some(op))
}

fn seg_index(r: iced_x86::Register) -> u8 {
    use iced_x86::Register as R;
    match r {
        R::ES => 0,
        R::CS => 1,
        R::SS => 2,
        R::FS => 4,
        R::GS => 5,
        _ => 3,
    }
}

fn jcc_cond(m: Mnemonic) -> Option<u8> {
    use Mnemonic as M;
    Some(match m {
        M::Jo => 0,
        M::Jno => 1,
        M::Jb => 2,
        M::Jae => 3,
        M::Je => 4,
        M::Jne => 5,
        M::Jbe => 6,
        M::Ja => 7,
        M::Js => 8,
        M::Jns => 9,
        M::Jp => 10,
        M::Jnp => 11,
        M::Jl => 12,
        M::Jge => 13,
        M::Jle => 14,
        M::Jg => 15,
        _ => return None,
    })
}

/// The implicit memory operands of the string instructions (not SSE MOVSD/CMPSD).
fn is_string_operand(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::MemorySegSI
            | OpKind::MemorySegESI
            | OpKind::MemorySegRSI
            | OpKind::MemoryESDI
            | OpKind::MemoryESEDI
            | OpKind::MemoryESRDI
    )
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

fn src_of(i: &Instruction, n: u32, size: u8) -> Option<Src> {
    let k = i.op_kind(n);
    if k == OpKind::Register {
        let r = greg(i.op_register(n))?;
        let shift =
            host_op(i.mnemonic()).is_some_and(AluOp::is_shift) || i.mnemonic() == Mnemonic::Sal;
        return (r.size == size || shift).then_some(Src::Reg(r));
    }
    is_imm(k).then(|| Src::Imm(i.immediate(n) & size_mask(size)))
}

pub(super) fn size_mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        s => (1u64 << (8 * u32::from(s))) - 1,
    }
}

/// Our own reading of an iced instruction: `None` if it is outside the reference's
/// subset (a mandatory stop).
pub(in crate::coalesce) fn ref_op(i: &Instruction) -> Option<RefOp> {
    use Mnemonic as M;
    if let Some(op) = ref_more_op(i) {
        return op;
    }
    if let Some(op) = ref_mem_op(i) {
        return op;
    }
    let m = i.mnemonic();
    let reg0 = || greg(i.op_register(0)).filter(|_| i.op_kind(0) == OpKind::Register);
    Some(match m {
        M::In | M::Out => {
            let (acc, port) = if m == M::In { (0, 1) } else { (1, 0) };
            let a = greg(i.op_register(acc))?;
            let imm = match i.op_kind(port) {
                OpKind::Register => None,
                _ => Some(i.immediate(port) as u8),
            };
            RefOp::Io {
                is_in: m == M::In,
                size: a.size,
                imm,
            }
        }
        M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            let is_in = matches!(m, M::Insb | M::Insw | M::Insd);
            let size = match m {
                M::Insb | M::Outsb => 1,
                M::Insw | M::Outsw => 2,
                _ => 4,
            };
            let kind = i.op_kind(if is_in { 0 } else { 1 });
            let addr = match kind {
                OpKind::MemoryESDI | OpKind::MemorySegSI => 2,
                OpKind::MemoryESEDI | OpKind::MemorySegESI => 4,
                _ => 8,
            };
            // REPNE (F2) on INS/OUTS is not defined: leave it out of the subset.
            if i.has_repne_prefix() {
                return None;
            }
            RefOp::Str {
                is_in,
                size,
                rep: i.has_rep_prefix(),
                addr,
                seg: if is_in {
                    0
                } else {
                    seg_index(i.memory_segment())
                },
            }
        }
        M::Nop | M::Pause => RefOp::Nop,
        M::Mov => {
            let dst = reg0()?;
            RefOp::Mov {
                dst,
                src: src_of(i, 1, dst.size)?,
            }
        }
        M::Add | M::Adc | M::Sbb | M::Or | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            let op = host_op(m).expect("every two-operand ALU mnemonic has a host op");
            let dst = reg0()?;
            if i.has_lock_prefix() {
                return None;
            }
            RefOp::Alu {
                op,
                dst,
                src: src_of(i, 1, dst.size)?,
            }
        }
        M::Inc | M::Dec => RefOp::Alu {
            op: if m == M::Inc { AluOp::Inc } else { AluOp::Dec },
            dst: reg0()?,
            src: Src::Imm(1),
        },
        M::Neg | M::Not => {
            if i.has_lock_prefix() {
                return None;
            }
            RefOp::Alu {
                op: host_op(m)?,
                dst: reg0()?,
                src: Src::Imm(0),
            }
        }
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => {
            let dst = reg0()?;
            let src = match i.op_kind(1) {
                OpKind::Register if i.op_register(1) == iced_x86::Register::CL => {
                    Src::Reg(greg(iced_x86::Register::CL)?)
                }
                k if is_imm(k) => Src::Imm(i.immediate(1) & 0xFF),
                _ => return None,
            };
            RefOp::Alu {
                op: host_op(m)?,
                dst,
                src,
            }
        }
        M::Jmp
            if matches!(
                i.op_kind(0),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) =>
        {
            RefOp::Branch {
                kind: BranchKind::Always,
                target: i.near_branch_target(),
            }
        }
        M::Loop | M::Loope | M::Loopne => {
            let name = format!("{:?}", i.code());
            let count = if name.ends_with("_RCX") {
                8
            } else if name.ends_with("_ECX") {
                4
            } else {
                2
            };
            let k = match m {
                M::Loop => 0,
                M::Loope => 1,
                _ => 2,
            };
            RefOp::Branch {
                kind: BranchKind::Loop(k, count),
                target: i.near_branch_target(),
            }
        }
        _ => {
            let c = jcc_cond(m)?;
            // BND (F2) branches have MPX side effects: outside the subset.
            if i.has_repne_prefix() {
                return None;
            }
            RefOp::Branch {
                kind: BranchKind::Cond(c),
                target: i.near_branch_target(),
            }
        }
    })
}

pub(super) fn disasm(mode: CodeMode, ip: u64, bytes: &[u8]) -> String {
    let mut d = Decoder::with_ip(bitness(mode), bytes, ip, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    let mut i = Instruction::default();
    let mut n = 0;
    while d.can_decode() && n < 64 {
        d.decode_out(&mut i);
        let start = (i.ip() - ip) as usize;
        let mut text = String::new();
        f.format(&i, &mut text);
        let _ = writeln!(
            out,
            "  {:#06x}: {:<30} {:02x?}",
            i.ip(),
            text,
            &bytes[start..(start + i.len()).min(bytes.len())]
        );
        n += 1;
    }
    out
}
