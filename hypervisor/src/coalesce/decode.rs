//! x86 machine code -> the coalescer's instruction form ([`Insn`]), through zydis.
//!
//! zydis (the C library, built freestanding, no heap) does the hard part of x86
//! decoding: prefixes and their interactions (REX placement, 66h/67h, REX.W over 66h,
//! LOCK legality), instruction length, register selection (AH..BH without REX versus
//! SPL..DIL with any REX) and immediate sign extension. This file then accepts only the
//! small subset the emulator implements, checked by opcode map, opcode byte and ModRM
//! fields (SDM Vol. 2D Appendix A "Opcode Map"), and maps zydis's operands to [`Op`].
//!
//! Everything outside the subset, and every form of a subset instruction with a memory
//! operand, is [`DecodeError::Unsupported`] with the instruction's length; bytes that do
//! not form an instruction (including `#UD` encodings such as LOCK on a register
//! destination) are [`DecodeError::Undecodable`]; bytes that end inside an instruction
//! are [`DecodeError::Truncated`]. No guest bytes can make this code panic.

use zydis::ffi::{DecodedOperand, DecodedOperandKind};
use zydis::{
    Decoder, Instruction, InstructionAttributes, MachineMode, Mnemonic, OpcodeMap, Register,
    StackWidth, Status, VisibleOperands,
};

use super::insn::{
    AluOp, CodeMode, Cond, FlagOp, Insn, LoopKind, MemRef, MulOp, Op, Operand, PortSrc, RegRef,
    Repeat, Rm, Seg, StrKind,
};
use crate::x86::Width;

/// The longest x86 instruction (SDM Vol. 2A 2.3.11 "AVX Instruction Length": 15 bytes):
/// longer ones raise #GP (SDM Vol. 3A 6.15 "Exception and Interrupt Reference",
/// "Interrupt 13—General Protection Exception (#GP)").
pub const MAX_INSN_LEN: usize = 15;

/// Why bytes did not become an [`Insn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Not an instruction (the CPU raises #UD, or #GP for more than 15 bytes).
    Undecodable,
    /// A valid instruction of `len` bytes that the emulator does not implement.
    Unsupported { len: u8 },
    /// The bytes end inside the instruction: more bytes are needed to decide.
    Truncated,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            DecodeError::Undecodable => f.write_str(
                "the bytes are not a valid x86 instruction (#UD, or longer than 15 bytes)",
            ),
            DecodeError::Unsupported { len } => {
                write!(f, "a {len}-byte instruction the coalescer does not emulate")
            }
            DecodeError::Truncated => {
                f.write_str("the bytes end inside an instruction: more are needed to decode it")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Decodes the instruction at the start of `bytes` for code of size `mode`.
///
/// `mode` selects zydis's machine mode and stack width: 16-bit (real mode and 16-bit
/// protected mode share every encoding the subset uses), 32-bit (legacy and
/// compatibility mode), 64-bit. zydis runs with its default decoder modes, i.e. Intel
/// branch semantics (66h does not shorten near branches in 64-bit mode).
pub fn decode(bytes: &[u8], mode: CodeMode) -> Result<Insn, DecodeError> {
    let (machine, stack) = match mode {
        CodeMode::Bits16 => (MachineMode::LEGACY_16, StackWidth::_16),
        CodeMode::Bits32 => (MachineMode::LEGACY_32, StackWidth::_32),
        CodeMode::Bits64 => (MachineMode::LONG_64, StackWidth::_64),
    };
    let decoder = Decoder::new(machine, stack).map_err(|_| DecodeError::Undecodable)?;
    let window = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let insn: Instruction<VisibleOperands> = match decoder.decode_first(window) {
        Ok(Some(insn)) => insn,
        // zydis reports running out of bytes as `Ok(None)` (NoMoreData).
        Ok(None) | Err(Status::NoMoreData) => {
            return Err(if window.len() == MAX_INSN_LEN {
                // 15 bytes are not enough: too long for the CPU (#GP).
                DecodeError::Undecodable
            } else {
                DecodeError::Truncated
            });
        }
        Err(_) => return Err(DecodeError::Undecodable),
    };
    let len = insn.length;
    match map(&insn, window, mode) {
        Some(op) => Ok(Insn { op, len }),
        None => Err(DecodeError::Unsupported { len }),
    }
}

/// The mnemonic of the instruction at the start of `bytes` (lower case, as zydis
/// names it) and its length, for statistics; `None` if the bytes do not decode.
pub fn mnemonic(bytes: &[u8], mode: CodeMode) -> Option<(&'static str, u8)> {
    let (machine, stack) = match mode {
        CodeMode::Bits16 => (MachineMode::LEGACY_16, StackWidth::_16),
        CodeMode::Bits32 => (MachineMode::LEGACY_32, StackWidth::_32),
        CodeMode::Bits64 => (MachineMode::LONG_64, StackWidth::_64),
    };
    let decoder = Decoder::new(machine, stack).ok()?;
    let window = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let insn: Instruction<VisibleOperands> = decoder.decode_first(window).ok()??;
    Some((insn.mnemonic.static_string()?, insn.length))
}

/// The legacy and REX prefix bytes of `insn`, in order.
fn prefixes(insn: &Instruction<VisibleOperands>) -> impl Iterator<Item = u8> + '_ {
    let n = usize::from(insn.raw.prefix_count).min(insn.raw.prefixes.len());
    insn.raw.prefixes[..n].iter().map(|p| p.value)
}

fn has_prefix(insn: &Instruction<VisibleOperands>, byte: u8) -> bool {
    prefixes(insn).any(|p| p == byte)
}

/// The segment a string instruction's source uses: the last segment-override prefix,
/// or DS. In 64-bit mode CS/SS/DS/ES overrides are ignored (SDM Vol. 3A 3.2.4
/// "Segmentation in IA-32e Mode": their segment bases are treated as zero).
fn source_segment(insn: &Instruction<VisibleOperands>, mode: CodeMode) -> Seg {
    let mut seg = Seg::Ds;
    for p in prefixes(insn) {
        let s = match p {
            0x26 => Seg::Es,
            0x2E => Seg::Cs,
            0x36 => Seg::Ss,
            0x3E => Seg::Ds,
            0x64 => Seg::Fs,
            0x65 => Seg::Gs,
            _ => continue,
        };
        if mode != CodeMode::Bits64 || matches!(s, Seg::Fs | Seg::Gs) {
            seg = s;
        }
    }
    seg
}

/// A general-purpose register operand, in encoding order (SDM Vol. 2A Table 3-1
/// "Register Codes Associated With +rb, +rw, +rd, +ro").
fn gpr(reg: Register) -> Option<RegRef> {
    let n = reg as u32;
    let (first, width) = match n {
        _ if (Register::AH as u32..=Register::BH as u32).contains(&n) => {
            return Some(RegRef::high((n - Register::AH as u32) as u8));
        }
        _ if (Register::AL as u32..=Register::BL as u32).contains(&n) => (Register::AL, Width::W8),
        _ if (Register::SPL as u32..=Register::R15B as u32).contains(&n) => {
            // SPL..DIL and R8B..R15B are encodings 4..15.
            return Some(RegRef::new((n - Register::SPL as u32 + 4) as u8, Width::W8));
        }
        _ if (Register::AX as u32..=Register::R15W as u32).contains(&n) => {
            (Register::AX, Width::W16)
        }
        _ if (Register::EAX as u32..=Register::R15D as u32).contains(&n) => {
            (Register::EAX, Width::W32)
        }
        _ if (Register::RAX as u32..=Register::R15 as u32).contains(&n) => {
            (Register::RAX, Width::W64)
        }
        _ => return None,
    };
    Some(RegRef::new((n - first as u32) as u8, width))
}

fn reg_operand(op: Option<&DecodedOperand>) -> Option<RegRef> {
    match op?.kind {
        DecodedOperandKind::Reg(r) => gpr(r),
        _ => None,
    }
}

/// An immediate operand's value: zydis has sign-extended it to 64 bits where the
/// encoding says so; it is masked to `width`.
fn imm_operand(op: Option<&DecodedOperand>, width: Width) -> Option<u64> {
    match &op?.kind {
        DecodedOperandKind::Imm(imm) => Some(imm.value & width.mask()),
        _ => None,
    }
}

/// A register or immediate source operand of width `width`.
fn source(op: Option<&DecodedOperand>, width: Width) -> Option<Operand> {
    if let Some(r) = reg_operand(op) {
        return (r.width == width).then_some(Operand::Reg(r));
    }
    imm_operand(op, width).map(Operand::Imm)
}

/// A relative branch displacement (sign-extended by zydis).
fn rel_operand(op: Option<&DecodedOperand>) -> Option<i32> {
    match &op?.kind {
        DecodedOperandKind::Imm(imm) if imm.is_relative => i32::try_from(imm.value as i64).ok(),
        _ => None,
    }
}

fn width_bits(bits: u8) -> Option<Width> {
    match bits {
        8 => Some(Width::W8),
        16 => Some(Width::W16),
        32 => Some(Width::W32),
        64 => Some(Width::W64),
        _ => None,
    }
}

/// The width a near branch truncates the new instruction pointer to: the operand
/// size, which 66h cannot change in 64-bit mode on Intel processors (SDM Vol. 2A
/// "JMP—Jump" and "Jcc—Jump if Condition Is Met": "In 64-bit mode, operand size is
/// fixed at 64 bits").
fn branch_width(insn: &Instruction<VisibleOperands>, mode: CodeMode) -> Option<Width> {
    match mode {
        CodeMode::Bits64 => Some(Width::W64),
        _ => match insn.operand_width {
            16 => Some(Width::W16),
            32 => Some(Width::W32),
            _ => None,
        },
    }
}

fn alu_op(m: Mnemonic) -> Option<AluOp> {
    Some(match m {
        Mnemonic::ADD => AluOp::Add,
        Mnemonic::ADC => AluOp::Adc,
        Mnemonic::SBB => AluOp::Sbb,
        Mnemonic::NEG => AluOp::Neg,
        Mnemonic::NOT => AluOp::Not,
        Mnemonic::SAR => AluOp::Sar,
        Mnemonic::ROL => AluOp::Rol,
        Mnemonic::ROR => AluOp::Ror,
        Mnemonic::RCL => AluOp::Rcl,
        Mnemonic::RCR => AluOp::Rcr,
        Mnemonic::OR => AluOp::Or,
        Mnemonic::AND => AluOp::And,
        Mnemonic::SUB => AluOp::Sub,
        Mnemonic::XOR => AluOp::Xor,
        Mnemonic::CMP => AluOp::Cmp,
        Mnemonic::TEST => AluOp::Test,
        Mnemonic::INC => AluOp::Inc,
        Mnemonic::DEC => AluOp::Dec,
        Mnemonic::SHL => AluOp::Shl,
        Mnemonic::SHR => AluOp::Shr,
        Mnemonic::BT => AluOp::Bt,
        Mnemonic::BTS => AluOp::Bts,
        Mnemonic::BTR => AluOp::Btr,
        Mnemonic::BTC => AluOp::Btc,
        Mnemonic::IMUL => AluOp::Imul,
        _ => return None,
    })
}

/// `Op::Alu` with a register destination and a register/immediate source of the same
/// width taken from operands 0 and 1.
fn alu_two(insn: &Instruction<VisibleOperands>) -> Option<Op> {
    let op = alu_op(insn.mnemonic)?;
    let ops = insn.operands();
    let dst = reg_operand(ops.first())?;
    let src = source(ops.get(1), dst.width)?;
    Some(Op::Alu { op, dst, src })
}

/// `Op::Alu` with a register destination and a fixed immediate source (INC/DEC: the
/// source is ignored; shift by one).
fn alu_one(insn: &Instruction<VisibleOperands>, imm: u64) -> Option<Op> {
    let op = alu_op(insn.mnemonic)?;
    let dst = reg_operand(insn.operands().first())?;
    Some(Op::Alu {
        op,
        dst,
        src: Operand::Imm(imm),
    })
}

fn mov(insn: &Instruction<VisibleOperands>) -> Option<Op> {
    if insn.mnemonic != Mnemonic::MOV {
        return None;
    }
    let ops = insn.operands();
    let dst = reg_operand(ops.first())?;
    let src = source(ops.get(1), dst.width)?;
    Some(Op::Mov { dst, src })
}

fn port(op: Option<&DecodedOperand>) -> Option<PortSrc> {
    match &op?.kind {
        DecodedOperandKind::Reg(Register::DX) => Some(PortSrc::Dx),
        DecodedOperandKind::Imm(imm) => u8::try_from(imm.value).ok().map(PortSrc::Imm),
        _ => None,
    }
}

/// IN/OUT's accumulator operand: AL, AX or EAX.
fn accumulator(op: Option<&DecodedOperand>) -> Option<Width> {
    let r = reg_operand(op)?;
    (r.index == 0 && !r.high8 && r.width != Width::W64).then_some(r.width)
}

fn string_width(m: Mnemonic) -> Option<Width> {
    match m {
        Mnemonic::INSB | Mnemonic::OUTSB => Some(Width::W8),
        Mnemonic::INSW | Mnemonic::OUTSW => Some(Width::W16),
        Mnemonic::INSD | Mnemonic::OUTSD => Some(Width::W32),
        _ => None,
    }
}

/// ModRM's `mod` and `reg` fields, read from the instruction bytes: the opcode follows
/// the prefixes (one byte in the default map, 0F and one byte in map 0F), then ModRM.
/// (zydis-rs 4.1.1's `RawInfo` does not match the C layout after its `kind_specific`
/// union: `raw.modrm` of `03 C3` reads mod 0, reg 3, rm 1 — the C fields one byte
/// over — so only `prefix_count` and `prefixes` of `raw` are used here.) `None` if the bytes do not
/// show the opcode zydis reported where it should be.
fn modrm(insn: &Instruction<VisibleOperands>, bytes: &[u8]) -> Option<(u8, u8)> {
    let mut at = usize::from(insn.raw.prefix_count);
    match insn.opcode_map {
        OpcodeMap::DEFAULT => {}
        OpcodeMap::_0F if *bytes.get(at)? == 0x0F => at += 1,
        _ => return None,
    }
    if *bytes.get(at)? != insn.opcode {
        return None;
    }
    if !insn.attributes.contains(InstructionAttributes::HAS_MODRM) {
        return Some((0, 0));
    }
    let m = *bytes.get(at + 1)?;
    Some((m >> 6, (m >> 3) & 7))
}

/// Whether the instruction has a SIB byte whose base field says "no base" (mod 00,
/// base 101: a disp32 without base, whatever REX.B says; SDM Vol. 2A 2.2.1.2 "More
/// on REX Prefix Fields", Table 2-3 "32-Bit Addressing Forms with the SIB Byte") while
/// zydis reports a base register for it. zydis 4.1 does that for 67h + REX.B forms; such
/// an instruction is left to the CPU.
fn sib_base_misread(insn: &Instruction<VisibleOperands>, bytes: &[u8]) -> bool {
    let mut at = usize::from(insn.raw.prefix_count);
    if insn.opcode_map == OpcodeMap::_0F {
        at += 1;
    }
    let (Some(&m), Some(&sib)) = (bytes.get(at + 1), bytes.get(at + 2)) else {
        return false;
    };
    let no_base = m >> 6 == 0 && m & 7 == 4 && sib & 7 == 5;
    no_base
        && insn.attributes.contains(InstructionAttributes::HAS_SIB)
        && insn
            .operands()
            .iter()
            .any(|o| matches!(&o.kind, DecodedOperandKind::Mem(mem) if mem.base != Register::NONE))
}

/// Whether the byte before the opcode is a REX prefix with B set (64-bit mode).
fn rex_b(insn: &Instruction<VisibleOperands>, bytes: &[u8]) -> bool {
    let n = usize::from(insn.raw.prefix_count);
    insn.machine_mode == MachineMode::LONG_64
        && n > 0
        && matches!(bytes.get(n - 1), Some(&b) if b & 0xF1 == 0x41)
}

/// A memory operand (SDM Vol. 2A 2.1.5 "Addressing-Mode Encoding of ModR/M and SIB
/// Bytes": the 16-bit forms `[bx+si]` .. `[bx]` of Table 2-1 and the 32-bit ModRM/SIB
/// forms; 2.2.1 "REX Prefixes" in 64-bit code; 2.2.1.6 "RIP-Relative Addressing": mod
/// 00 r/m 101). The segment is the one the processor uses: an override, else SS for a
/// BP/EBP/ESP base, else DS (zydis resolves it); in 64-bit mode only FS and GS matter
/// (the others are DS here). `None` for anything but a plain memory operand.
fn mem_operand(op: Option<&DecodedOperand>, mode: CodeMode, addr_bits: u8) -> Option<MemRef> {
    let long = mode == CodeMode::Bits64;
    let addr = width_bits(addr_bits)?;
    let DecodedOperandKind::Mem(m) = &op?.kind else {
        return None;
    };
    let seg = match m.segment {
        Register::FS => Seg::Fs,
        Register::GS => Seg::Gs,
        Register::DS | Register::SS | Register::ES | Register::CS if long => Seg::Ds,
        Register::DS => Seg::Ds,
        Register::SS => Seg::Ss,
        Register::ES => Seg::Es,
        Register::CS => Seg::Cs,
        _ => return None,
    };
    let (base, rip_rel, base_w) = match m.base {
        Register::NONE => (None, false, None),
        Register::RIP => (None, true, Some(Width::W64)),
        Register::EIP => (None, true, Some(Width::W32)),
        r => {
            let g = gpr(r)?;
            (Some(g.index), false, Some(g.width))
        }
    };
    let (index, index_w) = match m.index {
        Register::NONE => (None, None),
        r => {
            let g = gpr(r)?;
            (Some(g.index), Some(g.width))
        }
    };
    // The address size (67h makes it 32): the registers must have it.
    if base_w.is_some_and(|w| w != addr) || index_w.is_some_and(|w| w != addr) {
        return None;
    }
    // 16-bit addressing outside 64-bit mode, 32-bit everywhere, 64-bit in 64-bit mode.
    let sizes_ok = match addr {
        Width::W16 => !long,
        Width::W32 => true,
        Width::W64 => long,
        Width::W8 => false,
    };
    if !sizes_ok || index == Some(4) {
        return None;
    }
    let scale = match (index, m.scale) {
        (None, _) => 1,
        (Some(_), s @ (1 | 2 | 4 | 8)) => s,
        (Some(_), 0) => 1,
        _ => return None,
    };
    let disp = if m.disp.has_displacement {
        i32::try_from(m.disp.displacement).ok()?
    } else {
        0
    };
    Some(MemRef {
        base,
        index,
        scale,
        disp,
        rip_rel,
        seg,
        addr,
    })
}

/// Forms with a memory operand (64-bit mode): MOV, MOVZX/MOVSX/MOVSXD, LEA, the ALU
/// group with a memory destination or source, and the register forms of MOVZX/MOVSX.
/// REP/REPNE, LOCK on anything but a read-modify-write of memory, and an operand of
/// another width than the instruction's make it unsupported.
fn map_mem(insn: &Instruction<VisibleOperands>, mode: CodeMode, modrm_reg: u8) -> Option<Op> {
    if has_prefix(insn, 0xF2) || has_prefix(insn, 0xF3) {
        return None;
    }
    let op = map_mem_forms(insn, mode, modrm_reg)?;
    if has_prefix(insn, 0xF0) && !lockable(&op) {
        return None;
    }
    Some(op)
}

fn map_mem_forms(insn: &Instruction<VisibleOperands>, mode: CodeMode, modrm_reg: u8) -> Option<Op> {
    let ops = insn.operands();
    let opw = width_bits(insn.operand_width)?;
    let m0 = || mem_operand(ops.first(), mode, insn.address_width);
    let m1 = || mem_operand(ops.get(1), mode, insn.address_width);
    let opc = insn.opcode;
    match insn.opcode_map {
        OpcodeMap::_0F => {
            // MOVZX 0F B6/B7, MOVSX 0F BE/BF (register or memory source).
            let signed = match opc {
                0xB6 | 0xB7 => false,
                0xBE | 0xBF => true,
                _ => return None,
            };
            let dst = reg_operand(ops.first())?;
            let width = if opc & 1 == 0 { Width::W8 } else { Width::W16 };
            let src = match reg_operand(ops.get(1)) {
                Some(r) if r.width == width => Rm::Reg(r),
                Some(_) => return None,
                None => Rm::Mem(m1()?),
            };
            return Some(Op::Load {
                dst,
                src,
                width,
                signed,
            });
        }
        OpcodeMap::DEFAULT => {}
        _ => return None,
    }
    let alu_mem = |src: Operand, op: AluOp| {
        Some(Op::AluMem {
            op,
            mem: m0()?,
            src,
            width: opw,
        })
    };
    match opc {
        // ALU r/m, r (memory destination) and r, r/m (memory source): ADD, OR, ADC,
        // SBB, AND, SUB, XOR, CMP.
        0x00..=0x3B if opc & 7 <= 3 => {
            let op = alu_op(insn.mnemonic)?;
            let w = if opc & 1 == 0 { Width::W8 } else { opw };
            if opc & 2 == 0 {
                let r = reg_operand(ops.get(1)).filter(|r| r.width == w)?;
                Some(Op::AluMem {
                    op,
                    mem: m0()?,
                    src: Operand::Reg(r),
                    width: w,
                })
            } else {
                let dst = reg_operand(ops.first()).filter(|r| r.width == w)?;
                Some(Op::AluLoad {
                    op,
                    dst,
                    mem: m1()?,
                })
            }
        }
        // MOVSXD r, r/m32 (without REX.W a plain 32-bit MOV; Intel discourages it).
        0x63 => {
            let dst = reg_operand(ops.first())?;
            let src = match reg_operand(ops.get(1)) {
                Some(r) if r.width == Width::W32 => Rm::Reg(r),
                Some(_) => return None,
                None => Rm::Mem(m1()?),
            };
            (dst.width != Width::W16).then_some(Op::Load {
                dst,
                src,
                width: Width::W32,
                signed: true,
            })
        }
        // Group 1 on memory.
        0x80 | 0x81 | 0x83 => {
            let w = if opc == 0x80 { Width::W8 } else { opw };
            alu_mem(
                Operand::Imm(imm_operand(ops.get(1), w)?),
                alu_op(insn.mnemonic)?,
            )
            .map(|o| with_width(o, w))
        }
        0x84 | 0x85 => {
            let w = if opc == 0x84 { Width::W8 } else { opw };
            let r = reg_operand(ops.get(1)).filter(|r| r.width == w)?;
            alu_mem(Operand::Reg(r), AluOp::Test).map(|o| with_width(o, w))
        }
        0x88 | 0x89 => {
            let w = if opc == 0x88 { Width::W8 } else { opw };
            let r = reg_operand(ops.get(1)).filter(|r| r.width == w)?;
            Some(Op::Store {
                mem: m0()?,
                src: Operand::Reg(r),
                width: w,
            })
        }
        0x8A | 0x8B => {
            let dst = reg_operand(ops.first())?;
            let w = if opc == 0x8A { Width::W8 } else { opw };
            (dst.width == w).then_some(Op::Load {
                dst,
                src: Rm::Mem(m1()?),
                width: w,
                signed: false,
            })
        }
        0x8D => {
            let dst = reg_operand(ops.first())?;
            let DecodedOperandKind::Mem(_) = &ops.get(1)?.kind else {
                return None;
            };
            // LEA's operand is an address, not an access: no segment, no fault.
            let mut mem = mem_operand(ops.get(1), mode, insn.address_width)?;
            mem.seg = Seg::Ds;
            Some(Op::Lea { dst, mem })
        }
        // Group 2 (ROL ROR RCL RCR SHL SHR SAR; the /6 SAL alias is left to the CPU)
        // by 1, by an immediate or by CL.
        0xC0 | 0xC1 | 0xD0..=0xD3 if modrm_reg != 6 => {
            let w = if opc & 1 == 0 { Width::W8 } else { opw };
            let count = match opc {
                0xD0 | 0xD1 => Operand::Imm(1),
                0xD2 | 0xD3 => {
                    (reg_operand(ops.get(1))? == RegRef::new(1, Width::W8)).then_some(())?;
                    Operand::Reg(RegRef::new(1, Width::W8))
                }
                _ => Operand::Imm(imm_operand(ops.get(1), Width::W8)?),
            };
            alu_mem(count, alu_op(insn.mnemonic)?).map(|o| with_width(o, w))
        }
        0xC6 | 0xC7 if modrm_reg == 0 => {
            let w = if opc == 0xC6 { Width::W8 } else { opw };
            Some(Op::Store {
                mem: m0()?,
                src: Operand::Imm(imm_operand(ops.get(1), w)?),
                width: w,
            })
        }
        0xF6 | 0xF7 if modrm_reg == 0 => {
            let w = if opc == 0xF6 { Width::W8 } else { opw };
            alu_mem(Operand::Imm(imm_operand(ops.get(1), w)?), AluOp::Test)
                .map(|o| with_width(o, w))
        }
        // Group 3 /2 NOT, /3 NEG on memory.
        0xF6 | 0xF7 if matches!(modrm_reg, 2 | 3) => {
            let w = if opc == 0xF6 { Width::W8 } else { opw };
            alu_mem(Operand::Imm(0), alu_op(insn.mnemonic)?).map(|o| with_width(o, w))
        }
        0xFE | 0xFF if modrm_reg <= 1 => {
            let w = if opc == 0xFE { Width::W8 } else { opw };
            alu_mem(Operand::Imm(1), alu_op(insn.mnemonic)?).map(|o| with_width(o, w))
        }
        _ => None,
    }
}

fn with_width(op: Op, w: Width) -> Op {
    match op {
        Op::AluMem { op, mem, src, .. } => Op::AluMem {
            op,
            mem,
            src,
            width: w,
        },
        o => o,
    }
}

/// The stack forms: PUSH r / imm, POP r, CALL rel, RET [imm16], LEAVE, PUSHF/POPF
/// (SDM Vol. 2B "PUSH—Push Word, Doubleword, or Quadword Onto the Stack", "POP—Pop a
/// Value From the Stack", "RET—Return From Procedure", "PUSHF/PUSHFD/PUSHFQ—Push
/// EFLAGS Register Onto the Stack", "POPF/POPFD/POPFQ—Pop Stack Into EFLAGS
/// Register"; Vol. 2A "CALL—Call Procedure", "LEAVE—High Level Procedure Exit"). The
/// operand size is the slot size: 8 bytes in 64-bit mode (its 66h forms, 2-byte slots,
/// are left to the CPU), 2 or 4 otherwise.
fn map_stack(insn: &Instruction<VisibleOperands>, mode: CodeMode) -> Option<Op> {
    let long = mode == CodeMode::Bits64;
    if insn.opcode_map != OpcodeMap::DEFAULT
        || (long && has_prefix(insn, 0x66))
        || has_prefix(insn, 0xF0)
        || has_prefix(insn, 0xF2)
        || has_prefix(insn, 0xF3)
    {
        return None;
    }
    let ops = insn.operands();
    let w = width_bits(insn.operand_width)?;
    let slot_ok = if long {
        w == Width::W64
    } else {
        matches!(w, Width::W16 | Width::W32)
    };
    if !slot_ok && matches!(insn.opcode, 0x50..=0x5F | 0x68 | 0x6A | 0x9C | 0x9D | 0xC9) {
        return None;
    }
    match insn.opcode {
        0x50..=0x57 => {
            let r = reg_operand(ops.first()).filter(|r| r.width == w)?;
            Some(Op::Push {
                src: Operand::Reg(r),
                width: w,
            })
        }
        0x58..=0x5F => {
            let r = reg_operand(ops.first()).filter(|r| r.width == w)?;
            Some(Op::Pop { dst: r })
        }
        // PUSH imm8/imm16/imm32, sign-extended to the operand size.
        0x68 | 0x6A => Some(Op::Push {
            src: Operand::Imm(imm_operand(ops.first(), w)?),
            width: w,
        }),
        0x9C => Some(Op::Pushf { width: w }),
        0x9D => Some(Op::Popf { width: w }),
        0xC9 => Some(Op::Leave { width: w }),
        0xE8 => Some(Op::Call {
            rel: rel_operand(ops.first())?,
            width: branch_width(insn, mode)?,
        }),
        0xC3 => Some(Op::Ret {
            pop: 0,
            width: branch_width(insn, mode)?,
        }),
        0xC2 => Some(Op::Ret {
            pop: u16::try_from(imm_operand(ops.first(), Width::W16)?).ok()?,
            width: branch_width(insn, mode)?,
        }),
        _ => None,
    }
}

/// A register or (64-bit mode) memory operand whose size is the instruction's
/// operand `width`.
fn rm_operand(
    op: Option<&DecodedOperand>,
    mode: CodeMode,
    addr_bits: u8,
    width: Width,
) -> Option<Rm> {
    if let Some(r) = reg_operand(op) {
        return (r.width == width).then_some(Rm::Reg(r));
    }
    let o = op?;
    if width_bits(u8::try_from(o.size).ok()?)? != width {
        return None;
    }
    mem_operand(Some(o), mode, addr_bits).map(Rm::Mem)
}

/// Instructions whose register and memory forms are decoded together: CMOVcc, SETcc,
/// XCHG, BSWAP, CBW/CWDE/CDQE, CWD/CDQ/CQO, the one-flag instructions, the bit tests,
/// IMUL (two and three operands), MUL/IMUL/DIV/IDIV, and the indirect near CALL/JMP
/// of 64-bit code (SDM Vol. 2D Table A-2 "One-byte Opcode Map" and Table A-3 "Two-byte
/// Opcode Map"; groups 3, 5 and 8 in Table A-6 "Opcode Extensions for One- and
/// Two-byte Opcodes by Group Number").
/// The memory forms exist in 64-bit code only (see [`mem_operand`]). REP and REPNE make
/// them unsupported; LOCK is accepted on the memory read-modify-writes (XCHG with
/// memory locks itself; why an emulated locked access is atomic: docs/COALESCING.md).
/// Also CMPXCHG, XADD, CLI and STI.
fn map_more(
    insn: &Instruction<VisibleOperands>,
    bytes: &[u8],
    mode: CodeMode,
    modrm_reg: u8,
) -> Option<Op> {
    if has_prefix(insn, 0xF2) || has_prefix(insn, 0xF3) {
        return None;
    }
    let lock = has_prefix(insn, 0xF0);
    let op = map_more_forms(insn, bytes, mode, modrm_reg)?;
    // LOCK on a memory read-modify-write (SDM Vol. 2A "LOCK—Assert LOCK# Signal
    // Prefix"); zydis has already refused it everywhere else (#UD).
    if lock && !lockable(&op) {
        return None;
    }
    Some(op)
}

/// Whether `op` is a memory read-modify-write that LOCK may prefix.
fn lockable(op: &Op) -> bool {
    match *op {
        Op::Xchg { other, .. } => matches!(other, Rm::Mem(_)),
        Op::Cmpxchg { dst, .. } | Op::Xadd { dst, .. } => matches!(dst, Rm::Mem(_)),
        Op::AluMem { op, .. } => matches!(
            op,
            AluOp::Add
                | AluOp::Adc
                | AluOp::Sub
                | AluOp::Sbb
                | AluOp::And
                | AluOp::Or
                | AluOp::Xor
                | AluOp::Inc
                | AluOp::Dec
                | AluOp::Neg
                | AluOp::Not
                | AluOp::Bts
                | AluOp::Btr
                | AluOp::Btc
        ),
        _ => false,
    }
}

fn map_more_forms(
    insn: &Instruction<VisibleOperands>,
    bytes: &[u8],
    mode: CodeMode,
    modrm_reg: u8,
) -> Option<Op> {
    let ops = insn.operands();
    let opw = width_bits(insn.operand_width);
    let rm = |n: usize, w: Width| rm_operand(ops.get(n), mode, insn.address_width, w);
    let opc = insn.opcode;
    match insn.opcode_map {
        OpcodeMap::_0F => match opc {
            0x40..=0x4F => {
                let dst = reg_operand(ops.first())?;
                Some(Op::Cmov {
                    cond: Cond::from_nibble(opc),
                    dst,
                    src: rm(1, dst.width)?,
                })
            }
            0x90..=0x9F => Some(Op::Setcc {
                cond: Cond::from_nibble(opc),
                dst: rm(0, Width::W8)?,
            }),
            // BT/BTS/BTR/BTC r/m, r.
            0xA3 | 0xAB | 0xB3 | 0xBB => {
                let w = opw?;
                let src = reg_operand(ops.get(1)).filter(|r| r.width == w)?;
                bit_op(insn.mnemonic, rm(0, w)?, Operand::Reg(src), w)
            }
            // Group 8: BT/BTS/BTR/BTC r/m, imm8 (/4 to /7).
            0xBA if modrm_reg >= 4 => {
                let w = opw?;
                let imm = imm_operand(ops.get(1), Width::W8)?;
                bit_op(insn.mnemonic, rm(0, w)?, Operand::Imm(imm), w)
            }
            // IMUL r, r/m.
            0xAF => {
                let dst = reg_operand(ops.first())?;
                match rm(1, dst.width)? {
                    Rm::Reg(r) => Some(Op::Alu {
                        op: AluOp::Imul,
                        dst,
                        src: Operand::Reg(r),
                    }),
                    Rm::Mem(m) => Some(Op::AluLoad {
                        op: AluOp::Imul,
                        dst,
                        mem: m,
                    }),
                }
            }
            // CMPXCHG r/m, r (B0, B1) and XADD r/m, r (C0, C1).
            0xB0 | 0xB1 | 0xC0 | 0xC1 => {
                let w = if opc & 1 == 0 { Width::W8 } else { opw? };
                let src = reg_operand(ops.get(1)).filter(|r| r.width == w)?;
                let dst = rm(0, w)?;
                Some(if opc <= 0xB1 {
                    Op::Cmpxchg { dst, src }
                } else {
                    Op::Xadd { dst, src }
                })
            }
            // BSWAP of a 16-bit register is undefined: left to the CPU.
            0xC8..=0xCF => {
                let reg = reg_operand(ops.first())?;
                matches!(reg.width, Width::W32 | Width::W64).then_some(Op::Bswap { reg })
            }
            _ => None,
        },
        OpcodeMap::DEFAULT => match opc {
            // IMUL r, r/m, imm16/32 (69) or imm8 sign-extended (6B).
            0x69 | 0x6B => {
                let dst = reg_operand(ops.first())?;
                Some(Op::Imul3 {
                    dst,
                    src: rm(1, dst.width)?,
                    imm: imm_operand(ops.get(2), dst.width)?,
                })
            }
            // XCHG r/m, r; XCHG rAX, r (91-97, and 90 with REX.B: R8).
            0x86 | 0x87 | 0x91..=0x97 => xchg(insn, mode),
            0x90 if rex_b(insn, bytes) && insn.mnemonic == Mnemonic::XCHG => xchg(insn, mode),
            0x98 => Some(Op::Widen { width: opw? }),
            0x99 => Some(Op::SignDx { width: opw? }),
            0xF5 => Some(Op::Flag { op: FlagOp::Cmc }),
            0xFA => Some(Op::Cli),
            0xFB => Some(Op::Sti),
            0xF8 => Some(Op::Flag { op: FlagOp::Clc }),
            0xF9 => Some(Op::Flag { op: FlagOp::Stc }),
            0xFC => Some(Op::Flag { op: FlagOp::Cld }),
            0xFD => Some(Op::Flag { op: FlagOp::Std }),
            // Group 3 /4 MUL, /5 IMUL, /6 DIV, /7 IDIV.
            0xF6 | 0xF7 if modrm_reg >= 4 => {
                let w = if opc == 0xF6 { Width::W8 } else { opw? };
                let op = match modrm_reg {
                    4 => MulOp::Mul,
                    5 => MulOp::Imul,
                    6 => MulOp::Div,
                    _ => MulOp::Idiv,
                };
                Some(Op::MulDiv {
                    op,
                    src: rm(0, w)?,
                    width: w,
                })
            }
            // Group 5 /2 CALL r/m, /4 JMP r/m (near; in 64-bit mode with a 64-bit
            // operand only: the 66h forms differ between vendors, left to the CPU).
            0xFF if matches!(modrm_reg, 2 | 4)
                && !(mode == CodeMode::Bits64 && has_prefix(insn, 0x66)) =>
            {
                let width = branch_width(insn, mode)?;
                let src = rm(0, width)?;
                Some(if modrm_reg == 2 {
                    Op::CallInd { src, width }
                } else {
                    Op::JmpInd { src, width }
                })
            }
            _ => None,
        },
        _ => None,
    }
}

/// BT/BTS/BTR/BTC on a register (`Op::Alu`) or memory (`Op::AluMem`) bit base.
fn bit_op(m: Mnemonic, dst: Rm, src: Operand, width: Width) -> Option<Op> {
    let op = alu_op(m).filter(|o| o.is_bit())?;
    Some(match dst {
        Rm::Reg(r) => Op::Alu { op, dst: r, src },
        Rm::Mem(mem) => Op::AluMem {
            op,
            mem,
            src,
            width,
        },
    })
}

/// XCHG: one operand a register, the other a register or memory, of one width.
fn xchg(insn: &Instruction<VisibleOperands>, mode: CodeMode) -> Option<Op> {
    if insn.mnemonic != Mnemonic::XCHG {
        return None;
    }
    let ops = insn.operands();
    let w = width_bits(insn.operand_width)?;
    let a = rm_operand(ops.first(), mode, insn.address_width, w)?;
    let b = rm_operand(ops.get(1), mode, insn.address_width, w)?;
    match (a, b) {
        (other, Rm::Reg(r)) | (Rm::Reg(r), other) => Some(Op::Xchg { reg: r, other }),
        _ => None,
    }
}

/// The subset, by opcode (SDM Vol. 2D Table A-2 "One-byte Opcode Map" and Table A-3
/// "Two-byte Opcode Map"; group encodings Table A-6 "Opcode Extensions for One- and
/// Two-byte Opcodes by Group Number").
fn map(insn: &Instruction<VisibleOperands>, bytes: &[u8], mode: CodeMode) -> Option<Op> {
    let (mod_, modrm_reg) = modrm(insn, bytes)?;
    if sib_base_misread(insn, bytes) {
        return None;
    }
    let reg_form = mod_ == 3;
    let ops = insn.operands();
    // F2 (REPNE/BND) is only meaningful on string compares and MPX branches; where the
    // SDM leaves it undefined (INS/OUTS) or it has MPX side effects (BND branches),
    // leave the instruction to the CPU.
    let f2 = has_prefix(insn, 0xF2);
    if let Some(op) = map_stack(insn, mode) {
        return Some(op);
    }
    if let Some(op) = map_more(insn, bytes, mode, modrm_reg) {
        return Some(op);
    }
    let movx =
        insn.opcode_map == OpcodeMap::_0F && matches!(insn.opcode, 0xB6 | 0xB7 | 0xBE | 0xBF);
    let movsxd = insn.opcode_map == OpcodeMap::DEFAULT && insn.opcode == 0x63;
    let lea = insn.opcode_map == OpcodeMap::DEFAULT && insn.opcode == 0x8D;
    if !reg_form || movx || movsxd || lea {
        if let Some(op) = map_mem(insn, mode, modrm_reg) {
            return Some(op);
        }
        if movx || movsxd || lea {
            return None;
        }
    }
    match insn.opcode_map {
        OpcodeMap::DEFAULT => {}
        OpcodeMap::_0F => {
            return match insn.opcode {
                // Multi-byte NOP: the ModRM operand is never accessed.
                0x1F if modrm_reg == 0 && insn.mnemonic == Mnemonic::NOP => Some(Op::Nop),
                0x80..=0x8F if !f2 => Some(Op::Jcc {
                    cond: Cond::from_nibble(insn.opcode),
                    rel: rel_operand(ops.first())?,
                    width: branch_width(insn, mode)?,
                }),
                _ => None,
            };
        }
        _ => return None,
    }
    let opc = insn.opcode;
    match opc {
        // ADD/OR/ADC/SBB/AND/SUB/XOR/CMP: r/m,r and r,r/m (register form) and rAX,imm.
        0x00..=0x3D if opc & 7 <= 5 => {
            if opc & 7 <= 3 && !reg_form {
                return None;
            }
            alu_two(insn)
        }
        // INC/DEC r16/r32 (16/32-bit modes only: in 64-bit mode these are REX).
        0x40..=0x4F if mode != CodeMode::Bits64 => alu_one(insn, 1),
        0x6C..=0x6F => {
            if f2 {
                return None;
            }
            let width = string_width(insn.mnemonic)?;
            let rep = has_prefix(insn, 0xF3);
            let addr = width_bits(insn.address_width)?;
            Some(if opc <= 0x6D {
                Op::Ins { width, rep, addr }
            } else {
                Op::Outs {
                    width,
                    rep,
                    addr,
                    seg: source_segment(insn, mode),
                }
            })
        }
        0x70..=0x7F if !f2 => Some(Op::Jcc {
            cond: Cond::from_nibble(opc),
            rel: rel_operand(ops.first())?,
            width: branch_width(insn, mode)?,
        }),
        // MOVS A4/A5, CMPS A6/A7, STOS AA/AB, LODS AC/AD, SCAS AE/AF.
        0xA4..=0xA7 | 0xAA..=0xAF => {
            let kind = match opc {
                0xA4 | 0xA5 => StrKind::Movs,
                0xA6 | 0xA7 => StrKind::Cmps,
                0xAA | 0xAB => StrKind::Stos,
                0xAC | 0xAD => StrKind::Lods,
                _ => StrKind::Scas,
            };
            let width = if opc & 1 == 0 {
                Width::W8
            } else {
                width_bits(insn.operand_width)?
            };
            let compares = matches!(kind, StrKind::Cmps | StrKind::Scas);
            // F2 on MOVS/STOS/LODS is not defined: left to the CPU. The last of F2/F3
            // counts (zydis reports both; the processor uses the last one).
            let rep = match prefixes(insn).filter(|&p| p == 0xF2 || p == 0xF3).last() {
                None => Repeat::Once,
                Some(0xF3) => Repeat::Rep,
                Some(_) if compares => Repeat::Repne,
                Some(_) => return None,
            };
            Some(Op::Str {
                kind,
                width,
                rep,
                addr: width_bits(insn.address_width)?,
                seg: source_segment(insn, mode),
            })
        }
        // Group 1 with a register operand.
        0x80 | 0x81 | 0x83 if reg_form => alu_two(insn),
        0x84 | 0x85 if reg_form => alu_two(insn),
        0x88..=0x8B if reg_form => mov(insn),
        // NOP and PAUSE; with REX.B 90 is XCHG r8, rAX (zydis says XCHG; F3 REX.B 90
        // is left to the CPU too).
        0x90 if matches!(insn.mnemonic, Mnemonic::NOP | Mnemonic::PAUSE) && !rex_b(insn, bytes) => {
            Some(Op::Nop)
        }
        0xA8 | 0xA9 => alu_two(insn),
        0xB0..=0xBF => mov(insn),
        // Group 2: ROL, ROR, RCL, RCR, SHL, SHR, SAR (the /6 SAL alias is left to the
        // CPU).
        0xC0 | 0xC1 if reg_form && modrm_reg != 6 => alu_two(insn),
        0xD0 | 0xD1 if reg_form && modrm_reg != 6 => alu_one(insn, 1),
        // Group 2 r/m, CL (register destination): the count is CL, masked by the CPU.
        0xD2 | 0xD3 if reg_form && modrm_reg != 6 => {
            let dst = reg_operand(ops.first())?;
            (reg_operand(ops.get(1))? == RegRef::new(1, Width::W8)).then_some(Op::Alu {
                op: alu_op(insn.mnemonic)?,
                dst,
                src: Operand::Reg(RegRef::new(1, Width::W8)),
            })
        }
        // Group 11: MOV r/m, imm (/0), register destination only.
        0xC6 | 0xC7 if reg_form && modrm_reg == 0 => mov(insn),
        0xE0..=0xE2 => Some(Op::Loop {
            kind: match opc {
                0xE0 => LoopKind::Loopne,
                0xE1 => LoopKind::Loope,
                _ => LoopKind::Loop,
            },
            rel: rel_operand(ops.first())?,
            addr: width_bits(insn.address_width)?,
            width: branch_width(insn, mode)?,
        }),
        0xE4 | 0xE5 | 0xEC | 0xED if insn.mnemonic == Mnemonic::IN => Some(Op::In {
            width: accumulator(ops.first())?,
            port: port(ops.get(1))?,
        }),
        0xE6 | 0xE7 | 0xEE | 0xEF if insn.mnemonic == Mnemonic::OUT => Some(Op::Out {
            width: accumulator(ops.get(1))?,
            port: port(ops.first())?,
        }),
        0xE9 | 0xEB if !f2 => Some(Op::Jmp {
            rel: rel_operand(ops.first())?,
            width: branch_width(insn, mode)?,
        }),
        // Group 3 /0 TEST r/m, imm, /2 NOT, /3 NEG with a register operand.
        0xF6 | 0xF7 if reg_form && modrm_reg == 0 => alu_two(insn),
        0xF6 | 0xF7 if reg_form && matches!(modrm_reg, 2 | 3) => alu_one(insn, 0),
        // Group 4/5 /0 INC, /1 DEC with a register operand.
        0xFE | 0xFF if reg_form && modrm_reg <= 1 => alu_one(insn, 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodeMode::{Bits16, Bits32, Bits64};

    const ALL: [CodeMode; 3] = [Bits16, Bits32, Bits64];

    fn op(bytes: &[u8], mode: CodeMode) -> Op {
        let insn = decode(bytes, mode).unwrap_or_else(|e| panic!("{bytes:02x?} {mode:?}: {e}"));
        assert_eq!(
            usize::from(insn.len),
            bytes.len(),
            "{bytes:02x?} in {mode:?}"
        );
        insn.op
    }

    fn unsupported(bytes: &[u8], mode: CodeMode) {
        assert_eq!(
            decode(bytes, mode),
            Err(DecodeError::Unsupported {
                len: bytes.len() as u8
            }),
            "{bytes:02x?} in {mode:?}"
        );
    }

    /// `bytes` decode (in `mode`) to an instruction with a memory operand.
    fn mem_form(bytes: &[u8], mode: CodeMode) {
        let o = op(bytes, mode);
        assert!(
            matches!(
                o,
                Op::Load {
                    src: Rm::Mem(_),
                    ..
                } | Op::Store { .. }
                    | Op::AluMem { .. }
                    | Op::AluLoad { .. }
            ),
            "{bytes:02x?} in {mode:?}: {o:?}"
        );
    }

    fn r(index: u8, width: Width) -> RegRef {
        RegRef::new(index, width)
    }

    fn alu(op: AluOp, dst: RegRef, src: Operand) -> Op {
        Op::Alu { op, dst, src }
    }

    #[test]
    fn in_out_immediate_and_dx() {
        for m in ALL {
            // in al, 0x60
            assert_eq!(
                op(&[0xE4, 0x60], m),
                Op::In {
                    width: Width::W8,
                    port: PortSrc::Imm(0x60)
                }
            );
            // out 0x80, al
            assert_eq!(
                op(&[0xE6, 0x80], m),
                Op::Out {
                    width: Width::W8,
                    port: PortSrc::Imm(0x80)
                }
            );
            // in al, dx / out dx, al
            assert_eq!(
                op(&[0xEC], m),
                Op::In {
                    width: Width::W8,
                    port: PortSrc::Dx
                }
            );
            assert_eq!(
                op(&[0xEE], m),
                Op::Out {
                    width: Width::W8,
                    port: PortSrc::Dx
                }
            );
        }
        // E5/ED/E7/EF: eAX by operand size; 66h toggles it.
        assert_eq!(
            op(&[0xE5, 0x40], Bits16),
            Op::In {
                width: Width::W16,
                port: PortSrc::Imm(0x40)
            }
        );
        assert_eq!(
            op(&[0xE5, 0x40], Bits32),
            Op::In {
                width: Width::W32,
                port: PortSrc::Imm(0x40)
            }
        );
        assert_eq!(
            op(&[0x66, 0xED], Bits16),
            Op::In {
                width: Width::W32,
                port: PortSrc::Dx
            }
        );
        assert_eq!(
            op(&[0x66, 0xED], Bits32),
            Op::In {
                width: Width::W16,
                port: PortSrc::Dx
            }
        );
        assert_eq!(
            op(&[0xEF], Bits64),
            Op::Out {
                width: Width::W32,
                port: PortSrc::Dx
            }
        );
        assert_eq!(
            op(&[0x66, 0xE7, 0x70], Bits64),
            Op::Out {
                width: Width::W16,
                port: PortSrc::Imm(0x70)
            }
        );
        // REX.W does not make IN 64-bit: out dx, eax.
        assert_eq!(
            op(&[0x48, 0xEF], Bits64),
            Op::Out {
                width: Width::W32,
                port: PortSrc::Dx
            }
        );
        // A port above 0x7F in the immediate is not sign-extended: in al, 0xF0.
        assert_eq!(
            op(&[0xE4, 0xF0], Bits64),
            Op::In {
                width: Width::W8,
                port: PortSrc::Imm(0xF0)
            }
        );
    }

    #[test]
    fn string_io() {
        // insb / rep insw in 16-bit code: ES:DI, CX.
        assert_eq!(
            op(&[0x6C], Bits16),
            Op::Ins {
                width: Width::W8,
                rep: false,
                addr: Width::W16
            }
        );
        assert_eq!(
            op(&[0xF3, 0x6D], Bits16),
            Op::Ins {
                width: Width::W16,
                rep: true,
                addr: Width::W16
            }
        );
        // rep outsd in 32-bit code; 67h selects 16-bit addressing.
        let outs = |width, rep, addr, seg| Op::Outs {
            width,
            rep,
            addr,
            seg,
        };
        assert_eq!(
            op(&[0xF3, 0x6F], Bits32),
            outs(Width::W32, true, Width::W32, Seg::Ds)
        );
        assert_eq!(
            op(&[0x67, 0x6E], Bits32),
            outs(Width::W8, false, Width::W16, Seg::Ds)
        );
        assert_eq!(
            op(&[0x67, 0x6E], Bits16),
            outs(Width::W8, false, Width::W32, Seg::Ds)
        );
        // 64-bit: RSI by default, ESI with 67h; 66h gives outsw.
        assert_eq!(
            op(&[0xF3, 0x6E], Bits64),
            outs(Width::W8, true, Width::W64, Seg::Ds)
        );
        assert_eq!(
            op(&[0x67, 0xF3, 0x6F], Bits64),
            outs(Width::W32, true, Width::W32, Seg::Ds)
        );
        assert_eq!(
            op(&[0x66, 0x6F], Bits64),
            outs(Width::W16, false, Width::W64, Seg::Ds)
        );
        // REX.W 6D is still insd.
        assert_eq!(
            op(&[0x48, 0x6D], Bits64),
            Op::Ins {
                width: Width::W32,
                rep: false,
                addr: Width::W64
            }
        );
    }

    #[test]
    fn outs_segment_override() {
        // es rep outsb (26 F3 6E), fs outsb (64 6E), cs outsw in 16-bit code (2E 6F).
        let seg = |bytes: &[u8], m| match op(bytes, m) {
            Op::Outs { seg, .. } => seg,
            o => panic!("{o:?}"),
        };
        assert_eq!(seg(&[0x26, 0xF3, 0x6E], Bits32), Seg::Es);
        assert_eq!(seg(&[0x64, 0x6E], Bits32), Seg::Fs);
        assert_eq!(seg(&[0x2E, 0x6F], Bits16), Seg::Cs);
        assert_eq!(seg(&[0x36, 0x6F], Bits16), Seg::Ss);
        // The last of two overrides wins.
        assert_eq!(seg(&[0x26, 0x65, 0x6E], Bits32), Seg::Gs);
        // 64-bit mode ignores ES/CS/SS/DS overrides but honours FS/GS.
        assert_eq!(seg(&[0x26, 0x6E], Bits64), Seg::Ds);
        assert_eq!(seg(&[0x65, 0x6E], Bits64), Seg::Gs);
        // INS always writes ES:rDI; an override does not change the IR.
        assert_eq!(
            op(&[0x2E, 0x6C], Bits32),
            Op::Ins {
                width: Width::W8,
                rep: false,
                addr: Width::W32
            }
        );
    }

    #[test]
    fn repne_string_io_is_left_to_the_cpu() {
        // F2 6E: REPNE on OUTS is not defined by the SDM.
        unsupported(&[0xF2, 0x6E], Bits32);
        unsupported(&[0xF2, 0x6D], Bits64);
    }

    #[test]
    fn nops() {
        for m in ALL {
            assert_eq!(op(&[0x90], m), Op::Nop);
            // pause
            assert_eq!(op(&[0xF3, 0x90], m), Op::Nop);
            // 66 90: xchg ax, ax
            assert_eq!(op(&[0x66, 0x90], m), Op::Nop);
        }
        // nop dword [eax+eax*1+0x0] (0F 1F 44 00 00) in 32- and 64-bit code.
        assert_eq!(op(&[0x0F, 0x1F, 0x44, 0x00, 0x00], Bits32), Op::Nop);
        assert_eq!(op(&[0x0F, 0x1F, 0x44, 0x00, 0x00], Bits64), Op::Nop);
        // 66 0F 1F 84 00 00 00 00 00: nop word [rax+rax*1+0x0]
        assert_eq!(
            op(
                &[0x66, 0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
                Bits64
            ),
            Op::Nop
        );
        // 0F 1F C0: nop eax (register form).
        assert_eq!(op(&[0x0F, 0x1F, 0xC0], Bits32), Op::Nop);
        // 0F 1F /0 in 16-bit code: nop word [bx+si] (0F 1F 00).
        assert_eq!(op(&[0x0F, 0x1F, 0x00], Bits16), Op::Nop);
        // 41 90: xchg r8d, eax is not a NOP. 48 90 (xchg rax, rax) is.
        assert_eq!(
            op(&[0x41, 0x90], Bits64),
            Op::Xchg {
                reg: RegRef::new(0, Width::W32),
                other: Rm::Reg(RegRef::new(8, Width::W32))
            }
        );
        assert_eq!(op(&[0x48, 0x90], Bits64), Op::Nop);
        assert!(decode(&[0xF3, 0x41, 0x90], Bits64).is_err());
        // In 32-bit code 41 is inc ecx, not a prefix.
        assert_eq!(decode(&[0x41, 0x90], Bits32).map(|i| i.len), Ok(1));
        // 0F 1F /1 is a reserved NOP, not the documented one.
        assert!(decode(&[0x0F, 0x1F, 0xC8], Bits64).is_err());
    }

    #[test]
    fn mov_reg_imm() {
        // mov al, 0x12 / mov ah, 0x34 (B4) / mov bh, 0x01 (B7) without REX.
        for m in ALL {
            assert_eq!(
                op(&[0xB0, 0x12], m),
                Op::Mov {
                    dst: RegRef::AL,
                    src: Operand::Imm(0x12)
                }
            );
            assert_eq!(
                op(&[0xB4, 0x34], m),
                Op::Mov {
                    dst: RegRef::high(0),
                    src: Operand::Imm(0x34)
                }
            );
            assert_eq!(
                op(&[0xB7, 0x01], m),
                Op::Mov {
                    dst: RegRef::high(3),
                    src: Operand::Imm(1)
                }
            );
        }
        // 16-bit: mov dx, 0x3F8 (BA F8 03); 66h: mov edx, 0x3F8.
        assert_eq!(
            op(&[0xBA, 0xF8, 0x03], Bits16),
            Op::Mov {
                dst: r(2, Width::W16),
                src: Operand::Imm(0x3F8)
            }
        );
        assert_eq!(
            op(&[0x66, 0xBA, 0xF8, 0x03, 0, 0], Bits16),
            Op::Mov {
                dst: r(2, Width::W32),
                src: Operand::Imm(0x3F8)
            }
        );
        // 32-bit: mov edx, 0x3F8 (BA F8 03 00 00); 66h: mov dx, 0x3F8.
        assert_eq!(
            op(&[0xBA, 0xF8, 0x03, 0, 0], Bits32),
            Op::Mov {
                dst: r(2, Width::W32),
                src: Operand::Imm(0x3F8)
            }
        );
        assert_eq!(
            op(&[0x66, 0xBA, 0xF8, 0x03], Bits32),
            Op::Mov {
                dst: r(2, Width::W16),
                src: Operand::Imm(0x3F8)
            }
        );
        // 64-bit: mov r9d, 0xFFFFFFFF (41 B9 FF FF FF FF) is not sign-extended.
        assert_eq!(
            op(&[0x41, 0xB9, 0xFF, 0xFF, 0xFF, 0xFF], Bits64),
            Op::Mov {
                dst: r(9, Width::W32),
                src: Operand::Imm(0xFFFF_FFFF)
            }
        );
        // REX.W: mov rax, 0x1122334455667788 (48 B8 imm64).
        assert_eq!(
            op(
                &[0x48, 0xB8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
                Bits64
            ),
            Op::Mov {
                dst: r(0, Width::W64),
                src: Operand::Imm(0x1122_3344_5566_7788)
            }
        );
        // 49 BF imm64: mov r15, -1
        assert_eq!(
            op(
                &[0x49, 0xBF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
                Bits64
            ),
            Op::Mov {
                dst: r(15, Width::W64),
                src: Operand::Imm(u64::MAX)
            }
        );
    }

    #[test]
    fn high8_versus_rex_low8() {
        // Without REX B4..B7 are AH..BH; with any REX (40) they are SPL..DIL.
        assert_eq!(
            op(&[0xB4, 1], Bits64),
            Op::Mov {
                dst: RegRef::high(0),
                src: Operand::Imm(1)
            }
        );
        assert_eq!(
            op(&[0x40, 0xB4, 1], Bits64),
            Op::Mov {
                dst: r(4, Width::W8),
                src: Operand::Imm(1)
            }
        );
        assert_eq!(
            op(&[0x40, 0xB7, 1], Bits64),
            Op::Mov {
                dst: r(7, Width::W8),
                src: Operand::Imm(1)
            }
        );
        // 41 B4: mov r12b, 1
        assert_eq!(
            op(&[0x41, 0xB4, 1], Bits64),
            Op::Mov {
                dst: r(12, Width::W8),
                src: Operand::Imm(1)
            }
        );
        // 88 E0: mov al, ah; 40 88 E0: mov al, spl
        assert_eq!(
            op(&[0x88, 0xE0], Bits64),
            Op::Mov {
                dst: RegRef::AL,
                src: Operand::Reg(RegRef::high(0))
            }
        );
        assert_eq!(
            op(&[0x40, 0x88, 0xE0], Bits64),
            Op::Mov {
                dst: RegRef::AL,
                src: Operand::Reg(r(4, Width::W8))
            }
        );
        // 88 C4 mov ah, al; 44 88 C4 mov spl, r8b.
        assert_eq!(
            op(&[0x88, 0xC4], Bits32),
            Op::Mov {
                dst: RegRef::high(0),
                src: Operand::Reg(RegRef::AL)
            }
        );
        assert_eq!(
            op(&[0x44, 0x88, 0xC4], Bits64),
            Op::Mov {
                dst: r(4, Width::W8),
                src: Operand::Reg(r(8, Width::W8))
            }
        );
    }

    #[test]
    fn mov_rm_imm_register_only() {
        // C6 C0 05: mov al, 5; C7 C1 imm32: mov ecx, 0x12345678.
        assert_eq!(
            op(&[0xC6, 0xC0, 5], Bits32),
            Op::Mov {
                dst: RegRef::AL,
                src: Operand::Imm(5)
            }
        );
        assert_eq!(
            op(&[0xC7, 0xC1, 0x78, 0x56, 0x34, 0x12], Bits32),
            Op::Mov {
                dst: r(1, Width::W32),
                src: Operand::Imm(0x1234_5678)
            }
        );
        // 16-bit: C7 C3 34 12: mov bx, 0x1234.
        assert_eq!(
            op(&[0xC7, 0xC3, 0x34, 0x12], Bits16),
            Op::Mov {
                dst: r(3, Width::W16),
                src: Operand::Imm(0x1234)
            }
        );
        // 48 C7 C0 FF FF FF FF: mov rax, -1 (imm32 sign-extended).
        assert_eq!(
            op(&[0x48, 0xC7, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF], Bits64),
            Op::Mov {
                dst: r(0, Width::W64),
                src: Operand::Imm(u64::MAX)
            }
        );
        // 48 C7 C0 00 00 00 80: mov rax, 0xFFFFFFFF80000000.
        assert_eq!(
            op(&[0x48, 0xC7, 0xC0, 0, 0, 0, 0x80], Bits64),
            Op::Mov {
                dst: r(0, Width::W64),
                src: Operand::Imm(0xFFFF_FFFF_8000_0000)
            }
        );
        // Memory destinations: C6 00 05 mov byte [eax], 5; C7 03 imm32 mov dword [ebx], imm.
        mem_form(&[0xC6, 0x00, 5], Bits32);
        mem_form(&[0xC7, 0x03, 1, 0, 0, 0], Bits32);
    }

    #[test]
    fn mov_reg_reg() {
        // 89 D8: mov eax, ebx; 8B C3: mov eax, ebx; 8A C3 mov al, bl; 66 89 D8 mov ax, bx.
        let eax_ebx = Op::Mov {
            dst: r(0, Width::W32),
            src: Operand::Reg(r(3, Width::W32)),
        };
        assert_eq!(op(&[0x89, 0xD8], Bits32), eax_ebx);
        assert_eq!(op(&[0x8B, 0xC3], Bits32), eax_ebx);
        assert_eq!(
            op(&[0x8A, 0xC3], Bits16),
            Op::Mov {
                dst: RegRef::AL,
                src: Operand::Reg(r(3, Width::W8))
            }
        );
        assert_eq!(
            op(&[0x66, 0x89, 0xD8], Bits32),
            Op::Mov {
                dst: r(0, Width::W16),
                src: Operand::Reg(r(3, Width::W16))
            }
        );
        assert_eq!(
            op(&[0x89, 0xD8], Bits16),
            Op::Mov {
                dst: r(0, Width::W16),
                src: Operand::Reg(r(3, Width::W16))
            }
        );
        // 4C 89 C0: mov rax, r8; 45 89 C8: mov r8d, r9d.
        assert_eq!(
            op(&[0x4C, 0x89, 0xC0], Bits64),
            Op::Mov {
                dst: r(0, Width::W64),
                src: Operand::Reg(r(8, Width::W64))
            }
        );
        assert_eq!(
            op(&[0x45, 0x89, 0xC8], Bits64),
            Op::Mov {
                dst: r(8, Width::W32),
                src: Operand::Reg(r(9, Width::W32))
            }
        );
        // mov eax, [rbx] (8B 03) is a memory read: supported in 64-bit mode only.
        assert!(matches!(
            decode(&[0x8B, 0x03], Bits64),
            Ok(Insn {
                op: Op::Load { .. },
                len: 2
            })
        ));
        mem_form(&[0x8B, 0x03], Bits32);
        // mov [ebx], eax (89 03); mov ax, es (8C C0); mov eax, cr0 (0F 20 C0).
        mem_form(&[0x89, 0x03], Bits32);
        unsupported(&[0x8C, 0xC0], Bits16);
        unsupported(&[0x0F, 0x20, 0xC0], Bits64);
        // mov al, [0x1234] (A0 moffs16).
        unsupported(&[0xA0, 0x34, 0x12], Bits16);
    }

    #[test]
    fn alu_register_forms() {
        let eax = r(0, Width::W32);
        let ebx = r(3, Width::W32);
        // 01 D8 add eax, ebx; 03 C3 add eax, ebx; 09 D8 or; 21 D8 and; 29 D8 sub; 31 D8 xor; 39 D8 cmp.
        for (opc, aop) in [
            (0x01, AluOp::Add),
            (0x09, AluOp::Or),
            (0x21, AluOp::And),
            (0x29, AluOp::Sub),
            (0x31, AluOp::Xor),
            (0x39, AluOp::Cmp),
        ] {
            assert_eq!(op(&[opc, 0xD8], Bits32), alu(aop, eax, Operand::Reg(ebx)));
            assert_eq!(
                op(&[opc + 2, 0xC3], Bits32),
                alu(aop, eax, Operand::Reg(ebx))
            );
            // 8-bit forms: 00 D8 add al, bl etc.
            assert_eq!(
                op(&[opc - 1, 0xD8], Bits16),
                alu(aop, RegRef::AL, Operand::Reg(r(3, Width::W8)))
            );
        }
        // 48 31 C0: xor rax, rax; 66 31 C0 in 64-bit: xor ax, ax.
        assert_eq!(
            op(&[0x48, 0x31, 0xC0], Bits64),
            alu(AluOp::Xor, r(0, Width::W64), Operand::Reg(r(0, Width::W64)))
        );
        assert_eq!(
            op(&[0x66, 0x31, 0xC0], Bits64),
            alu(AluOp::Xor, r(0, Width::W16), Operand::Reg(r(0, Width::W16)))
        );
        // add eax, [ebx] (03 03), add [ebx], eax (01 03): memory forms.
        mem_form(&[0x03, 0x03], Bits32);
        mem_form(&[0x01, 0x03], Bits32);
        // adc eax, ebx (11 D8) and sbb eax, ebx (19 D8).
        assert_eq!(
            op(&[0x11, 0xD8], Bits32),
            alu(AluOp::Adc, r(0, Width::W32), Operand::Reg(r(3, Width::W32)))
        );
        assert_eq!(
            op(&[0x19, 0xD8], Bits32),
            alu(AluOp::Sbb, r(0, Width::W32), Operand::Reg(r(3, Width::W32)))
        );
    }

    #[test]
    fn alu_accumulator_immediates() {
        // 04 05 add al, 5; 0C 80 or al, 0x80; 24 0F and al, 0x0F; 2C 01 sub al, 1;
        // 34 FF xor al, 0xFF; 3C 20 cmp al, 0x20.
        for (bytes, aop, v) in [
            ([0x04, 0x05], AluOp::Add, 5),
            ([0x0C, 0x80], AluOp::Or, 0x80),
            ([0x24, 0x0F], AluOp::And, 0x0F),
            ([0x2C, 0x01], AluOp::Sub, 1),
            ([0x34, 0xFF], AluOp::Xor, 0xFF),
            ([0x3C, 0x20], AluOp::Cmp, 0x20),
        ] {
            for m in ALL {
                assert_eq!(op(&bytes, m), alu(aop, RegRef::AL, Operand::Imm(v)));
            }
        }
        // 05 imm16 in 16-bit code: add ax, 0x8000; 66 25 imm32: and eax, 0xFFFF0000.
        assert_eq!(
            op(&[0x05, 0x00, 0x80], Bits16),
            alu(AluOp::Add, r(0, Width::W16), Operand::Imm(0x8000))
        );
        assert_eq!(
            op(&[0x66, 0x25, 0, 0, 0xFF, 0xFF], Bits16),
            alu(AluOp::And, r(0, Width::W32), Operand::Imm(0xFFFF_0000))
        );
        // 0D/2D/35/3D imm32 in 32-bit code.
        assert_eq!(
            op(&[0x3D, 1, 0, 0, 0], Bits32),
            alu(AluOp::Cmp, r(0, Width::W32), Operand::Imm(1))
        );
        // 48 2D FF FF FF FF: sub rax, -1 (imm32 sign-extended to 64 bits).
        assert_eq!(
            op(&[0x48, 0x2D, 0xFF, 0xFF, 0xFF, 0xFF], Bits64),
            alu(AluOp::Sub, r(0, Width::W64), Operand::Imm(u64::MAX))
        );
        // 0D imm32 in 64-bit without REX.W: or eax, 0x80000000.
        assert_eq!(
            op(&[0x0D, 0, 0, 0, 0x80], Bits64),
            alu(AluOp::Or, r(0, Width::W32), Operand::Imm(0x8000_0000))
        );
    }

    #[test]
    fn alu_group1_register_operand() {
        // 80 C3 10: add bl, 0x10; 80 FC 01 cmp ah, 1.
        assert_eq!(
            op(&[0x80, 0xC3, 0x10], Bits32),
            alu(AluOp::Add, r(3, Width::W8), Operand::Imm(0x10))
        );
        assert_eq!(
            op(&[0x80, 0xFC, 0x01], Bits16),
            alu(AluOp::Cmp, RegRef::high(0), Operand::Imm(1))
        );
        // 81 E1 imm32: and ecx, 0xFF00FF00; 81 C9 imm16 in 16-bit code: or cx, 0x8001.
        assert_eq!(
            op(&[0x81, 0xE1, 0x00, 0xFF, 0x00, 0xFF], Bits32),
            alu(AluOp::And, r(1, Width::W32), Operand::Imm(0xFF00_FF00))
        );
        assert_eq!(
            op(&[0x81, 0xC9, 0x01, 0x80], Bits16),
            alu(AluOp::Or, r(1, Width::W16), Operand::Imm(0x8001))
        );
        // 83 sign-extends imm8: 83 E8 FF sub eax, -1 -> 0xFFFFFFFF; 83 F2 80 in 16-bit: xor dx, 0xFF80.
        assert_eq!(
            op(&[0x83, 0xE8, 0xFF], Bits32),
            alu(AluOp::Sub, r(0, Width::W32), Operand::Imm(0xFFFF_FFFF))
        );
        assert_eq!(
            op(&[0x83, 0xF2, 0x80], Bits16),
            alu(AluOp::Xor, r(2, Width::W16), Operand::Imm(0xFF80))
        );
        // 49 83 C7 F0: add r15, -16.
        assert_eq!(
            op(&[0x49, 0x83, 0xC7, 0xF0], Bits64),
            alu(
                AluOp::Add,
                r(15, Width::W64),
                Operand::Imm(0xFFFF_FFFF_FFFF_FFF0)
            )
        );
        // 83 D0 01 adc eax, 1 and 83 D8 01 sbb eax, 1.
        assert_eq!(
            op(&[0x83, 0xD0, 0x01], Bits32),
            alu(AluOp::Adc, r(0, Width::W32), Operand::Imm(1))
        );
        assert_eq!(
            op(&[0x83, 0xD8, 0x01], Bits32),
            alu(AluOp::Sbb, r(0, Width::W32), Operand::Imm(1))
        );
        // 83 00 01: add dword [eax], 1 (memory).
        mem_form(&[0x83, 0x00, 0x01], Bits32);
    }

    #[test]
    fn test_forms() {
        // 84 C0 test al, al; 85 DB test ebx, ebx; A8 20 test al, 0x20; A9 imm16 test ax, 0x100.
        assert_eq!(
            op(&[0x84, 0xC0], Bits16),
            alu(AluOp::Test, RegRef::AL, Operand::Reg(RegRef::AL))
        );
        assert_eq!(
            op(&[0x85, 0xDB], Bits32),
            alu(
                AluOp::Test,
                r(3, Width::W32),
                Operand::Reg(r(3, Width::W32))
            )
        );
        for m in ALL {
            assert_eq!(
                op(&[0xA8, 0x20], m),
                alu(AluOp::Test, RegRef::AL, Operand::Imm(0x20))
            );
        }
        assert_eq!(
            op(&[0xA9, 0x00, 0x01], Bits16),
            alu(AluOp::Test, r(0, Width::W16), Operand::Imm(0x100))
        );
        // F6 C2 01: test dl, 1; F7 C1 imm32 test ecx, 0x80000000; 48 F7 C1 imm32 sign-extends.
        assert_eq!(
            op(&[0xF6, 0xC2, 0x01], Bits32),
            alu(AluOp::Test, r(2, Width::W8), Operand::Imm(1))
        );
        assert_eq!(
            op(&[0xF7, 0xC1, 0, 0, 0, 0x80], Bits32),
            alu(AluOp::Test, r(1, Width::W32), Operand::Imm(0x8000_0000))
        );
        assert_eq!(
            op(&[0x48, 0xF7, 0xC1, 0, 0, 0, 0x80], Bits64),
            alu(
                AluOp::Test,
                r(1, Width::W64),
                Operand::Imm(0xFFFF_FFFF_8000_0000)
            )
        );
        // 84 03 test [ebx], al (memory, 32-bit code); F6 D0 not al; F7 D8 neg eax.
        mem_form(&[0x84, 0x03], Bits32);
        assert_eq!(
            op(&[0xF6, 0xD0], Bits32),
            alu(AluOp::Not, RegRef::AL, Operand::Imm(0))
        );
        assert_eq!(
            op(&[0xF7, 0xD8], Bits32),
            alu(AluOp::Neg, r(0, Width::W32), Operand::Imm(0))
        );
    }

    #[test]
    fn inc_dec() {
        let one = Operand::Imm(1);
        // 16/32-bit: 40 inc ax/eax, 4F dec di/edi.
        assert_eq!(op(&[0x40], Bits16), alu(AluOp::Inc, r(0, Width::W16), one));
        assert_eq!(op(&[0x40], Bits32), alu(AluOp::Inc, r(0, Width::W32), one));
        assert_eq!(op(&[0x4F], Bits32), alu(AluOp::Dec, r(7, Width::W32), one));
        assert_eq!(
            op(&[0x66, 0x49], Bits32),
            alu(AluOp::Dec, r(1, Width::W16), one)
        );
        // 64-bit: 40-4F are REX prefixes. 48 FF C0 inc rax; 41 FF C9 dec r9d.
        assert_eq!(
            op(&[0x48, 0xFF, 0xC0], Bits64),
            alu(AluOp::Inc, r(0, Width::W64), one)
        );
        assert_eq!(
            op(&[0x41, 0xFF, 0xC9], Bits64),
            alu(AluOp::Dec, r(9, Width::W32), one)
        );
        // A lone 40 in 64-bit code is a REX prefix with nothing after it.
        assert_eq!(decode(&[0x40], Bits64), Err(DecodeError::Truncated));
        // 40 90: an empty REX before 90 leaves it a NOP.
        assert_eq!(decode(&[0x40, 0x90], Bits64).map(|i| i.op), Ok(Op::Nop));
        // FE C4 inc ah; FE CB dec bl; FF C3 inc bx (16-bit).
        assert_eq!(
            op(&[0xFE, 0xC4], Bits32),
            alu(AluOp::Inc, RegRef::high(0), one)
        );
        assert_eq!(
            op(&[0xFE, 0xCB], Bits64),
            alu(AluOp::Dec, r(3, Width::W8), one)
        );
        assert_eq!(
            op(&[0xFF, 0xC3], Bits16),
            alu(AluOp::Inc, r(3, Width::W16), one)
        );
        // FF 00 inc dword [eax]; FF D0 call eax.
        mem_form(&[0xFF, 0x00], Bits32);
        assert!(matches!(op(&[0xFF, 0xD0], Bits32), Op::CallInd { .. }));
    }

    #[test]
    fn shifts() {
        // C0 E0 04 shl al, 4; C1 E8 08 shr eax, 8; D0 E0 shl al, 1; D1 EA shr edx, 1.
        assert_eq!(
            op(&[0xC0, 0xE0, 0x04], Bits32),
            alu(AluOp::Shl, RegRef::AL, Operand::Imm(4))
        );
        assert_eq!(
            op(&[0xC1, 0xE8, 0x08], Bits32),
            alu(AluOp::Shr, r(0, Width::W32), Operand::Imm(8))
        );
        assert_eq!(
            op(&[0xD0, 0xE0], Bits16),
            alu(AluOp::Shl, RegRef::AL, Operand::Imm(1))
        );
        assert_eq!(
            op(&[0xD1, 0xEA], Bits32),
            alu(AluOp::Shr, r(2, Width::W32), Operand::Imm(1))
        );
        // 16-bit: C1 E3 04 shl bx, 4; 64-bit: 48 C1 E0 20 shl rax, 32.
        assert_eq!(
            op(&[0xC1, 0xE3, 0x04], Bits16),
            alu(AluOp::Shl, r(3, Width::W16), Operand::Imm(4))
        );
        assert_eq!(
            op(&[0x48, 0xC1, 0xE0, 0x20], Bits64),
            alu(AluOp::Shl, r(0, Width::W64), Operand::Imm(32))
        );
        // Counts are passed unmasked: C1 E0 FF shl eax, 0xFF.
        assert_eq!(
            op(&[0xC1, 0xE0, 0xFF], Bits32),
            alu(AluOp::Shl, r(0, Width::W32), Operand::Imm(0xFF))
        );
        // D3 E0 shl eax, cl (supported: `shifts_by_cl`); C1 /7 SAR, /0 ROL, /1 ROR,
        // /2 RCL, /3 RCR by an immediate; C1 F0 01 (/6 SAL alias); C1 20 01 memory
        // (32-bit code).
        assert!(decode(&[0xD3, 0xE0], Bits32).is_ok());
        for (modrm, o) in [
            (0xF8, AluOp::Sar),
            (0xC0, AluOp::Rol),
            (0xC8, AluOp::Ror),
            (0xD0, AluOp::Rcl),
            (0xD8, AluOp::Rcr),
        ] {
            assert_eq!(
                op(&[0xC1, modrm, 0x03], Bits32),
                alu(o, r(0, Width::W32), Operand::Imm(3))
            );
            assert_eq!(
                op(&[0xD0, modrm], Bits16),
                alu(o, RegRef::AL, Operand::Imm(1))
            );
        }
        assert!(decode(&[0xC1, 0xF0, 0x01], Bits32).is_err());
        mem_form(&[0xC1, 0x20, 0x01], Bits32);
    }

    #[test]
    fn jumps() {
        // EB FE: jmp $ (rel -2); EB 10.
        assert_eq!(
            op(&[0xEB, 0xFE], Bits16),
            Op::Jmp {
                rel: -2,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0xEB, 0x10], Bits32),
            Op::Jmp {
                rel: 16,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0xEB, 0x80], Bits64),
            Op::Jmp {
                rel: -128,
                width: Width::W64
            }
        );
        // E9 rel16 in 16-bit code, rel32 in 32/64-bit code.
        assert_eq!(
            op(&[0xE9, 0x00, 0x80], Bits16),
            Op::Jmp {
                rel: -0x8000,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0xE9, 0x00, 0x01, 0x00, 0x00], Bits32),
            Op::Jmp {
                rel: 0x100,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0xE9, 0xFB, 0xFF, 0xFF, 0xFF], Bits64),
            Op::Jmp {
                rel: -5,
                width: Width::W64
            }
        );
        // 66h: 66 E9 rel32 in 16-bit code; 66 E9 rel16 in 32-bit code truncates EIP to 16 bits;
        // 66 EB in 32-bit code too.
        assert_eq!(
            op(&[0x66, 0xE9, 0, 0, 1, 0], Bits16),
            Op::Jmp {
                rel: 0x1_0000,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x66, 0xE9, 0x10, 0x00], Bits32),
            Op::Jmp {
                rel: 0x10,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0x66, 0xEB, 0x10], Bits32),
            Op::Jmp {
                rel: 0x10,
                width: Width::W16
            }
        );
        // 64-bit: Intel ignores 66h on near branches: 66 E9 still takes rel32.
        assert_eq!(
            op(&[0x66, 0xE9, 0x10, 0, 0, 0], Bits64),
            Op::Jmp {
                rel: 0x10,
                width: Width::W64
            }
        );
        assert_eq!(
            op(&[0x66, 0xEB, 0x10], Bits64),
            Op::Jmp {
                rel: 0x10,
                width: Width::W64
            }
        );
        // F2 E9 (BND jmp) is left to the CPU.
        unsupported(&[0xF2, 0xE9, 0, 0, 0, 0], Bits64);
        // Far and indirect jumps: EA ptr16:16, FF E0 jmp eax.
        unsupported(&[0xEA, 0, 0, 0, 0], Bits16);
        assert!(matches!(op(&[0xFF, 0xE0], Bits32), Op::JmpInd { .. }));
    }

    #[test]
    fn conditional_jumps() {
        // 74 FC: je -4; 75 05: jne +5; 7F 00 jg.
        assert_eq!(
            op(&[0x74, 0xFC], Bits16),
            Op::Jcc {
                cond: Cond::E,
                rel: -4,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0x75, 0x05], Bits32),
            Op::Jcc {
                cond: Cond::Ne,
                rel: 5,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x7F, 0x00], Bits64),
            Op::Jcc {
                cond: Cond::G,
                rel: 0,
                width: Width::W64
            }
        );
        // 0F 84 rel16 (16-bit), rel32 (32/64).
        assert_eq!(
            op(&[0x0F, 0x84, 0xFE, 0xFF], Bits16),
            Op::Jcc {
                cond: Cond::E,
                rel: -2,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0x0F, 0x82, 0x00, 0x10, 0, 0], Bits32),
            Op::Jcc {
                cond: Cond::B,
                rel: 0x1000,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x0F, 0x8F, 0xF0, 0xFF, 0xFF, 0xFF], Bits64),
            Op::Jcc {
                cond: Cond::G,
                rel: -16,
                width: Width::W64
            }
        );
        // 66h: 66 0F 85 rel32 in 16-bit code; 66 75 in 32-bit code: 16-bit truncation;
        // 64-bit: 66 0F 85 still rel32 and 64-bit.
        assert_eq!(
            op(&[0x66, 0x0F, 0x85, 1, 0, 0, 0], Bits16),
            Op::Jcc {
                cond: Cond::Ne,
                rel: 1,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x66, 0x75, 0x02], Bits32),
            Op::Jcc {
                cond: Cond::Ne,
                rel: 2,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0x66, 0x0F, 0x85, 1, 0, 0, 0], Bits64),
            Op::Jcc {
                cond: Cond::Ne,
                rel: 1,
                width: Width::W64
            }
        );
        // Branch-hint prefixes (2E/3E) change nothing.
        assert_eq!(
            op(&[0x3E, 0x74, 0x02], Bits32),
            Op::Jcc {
                cond: Cond::E,
                rel: 2,
                width: Width::W32
            }
        );
        // Every condition nibble.
        for n in 0..16u8 {
            assert_eq!(
                op(&[0x70 + n, 0], Bits32),
                Op::Jcc {
                    cond: Cond::from_nibble(n),
                    rel: 0,
                    width: Width::W32
                }
            );
        }
        // E3 jecxz is not in the subset.
        unsupported(&[0xE3, 0x00], Bits32);
    }

    #[test]
    fn loops() {
        // E2 FE: loop $ with CX in 16-bit code; 67h: ECX.
        assert_eq!(
            op(&[0xE2, 0xFE], Bits16),
            Op::Loop {
                kind: LoopKind::Loop,
                rel: -2,
                addr: Width::W16,
                width: Width::W16
            }
        );
        assert_eq!(
            op(&[0x67, 0xE2, 0xFD], Bits16),
            Op::Loop {
                kind: LoopKind::Loop,
                rel: -3,
                addr: Width::W32,
                width: Width::W16
            }
        );
        // E1 loope with ECX; 67 E0 loopne with CX in 32-bit code; 66 E2 truncates to 16 bits.
        assert_eq!(
            op(&[0xE1, 0x04], Bits32),
            Op::Loop {
                kind: LoopKind::Loope,
                rel: 4,
                addr: Width::W32,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x67, 0xE0, 0x04], Bits32),
            Op::Loop {
                kind: LoopKind::Loopne,
                rel: 4,
                addr: Width::W16,
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x66, 0xE2, 0x04], Bits32),
            Op::Loop {
                kind: LoopKind::Loop,
                rel: 4,
                addr: Width::W32,
                width: Width::W16
            }
        );
        // 64-bit: RCX, or ECX with 67h; operand size is always 64.
        assert_eq!(
            op(&[0xE2, 0xF0], Bits64),
            Op::Loop {
                kind: LoopKind::Loop,
                rel: -16,
                addr: Width::W64,
                width: Width::W64
            }
        );
        assert_eq!(
            op(&[0x67, 0xE2, 0xF0], Bits64),
            Op::Loop {
                kind: LoopKind::Loop,
                rel: -16,
                addr: Width::W32,
                width: Width::W64
            }
        );
    }

    #[test]
    fn lock_prefix_is_undecodable_on_register_forms() {
        // F0 01 C0: lock add eax, eax (#UD); F0 FE C0 lock inc al; F0 90; F0 EE lock out dx, al.
        for bytes in [
            &[0xF0, 0x01, 0xC0][..],
            &[0xF0, 0xFE, 0xC0],
            &[0xF0, 0x90],
            &[0xF0, 0xEE],
            &[0xF0, 0xB0, 0x01],
        ] {
            assert_eq!(
                decode(bytes, Bits32),
                Err(DecodeError::Undecodable),
                "{bytes:02x?}"
            );
        }
        // F0 01 03: lock add [ebx], eax is a locked memory read-modify-write.
        mem_form(&[0xF0, 0x01, 0x03], Bits32);
    }

    #[test]
    fn segment_override_on_register_forms_is_harmless() {
        // 2E 89 D8: cs mov eax, ebx; 64 90: fs nop.
        assert_eq!(
            op(&[0x2E, 0x89, 0xD8], Bits32),
            Op::Mov {
                dst: r(0, Width::W32),
                src: Operand::Reg(r(3, Width::W32))
            }
        );
        assert_eq!(op(&[0x64, 0x90], Bits64), Op::Nop);
    }

    #[test]
    fn errors_say_why_the_bytes_did_not_decode() {
        let e = decode(&[0x0F, 0x0B], Bits64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a 2-byte instruction the coalescer does not emulate"
        );
        let e = decode(&[0x06], Bits64).unwrap_err();
        assert!(e.to_string().contains("not a valid x86 instruction"), "{e}");
        let e = decode(&[0xB8, 0x01], Bits32).unwrap_err();
        assert!(e.to_string().contains("end inside an instruction"), "{e}");
    }

    #[test]
    fn undecodable_and_truncated() {
        // 0F 0B: ud2 is an instruction (unsupported); 0F FF: ud0 without ModRM; 06 (push es)
        // is invalid in 64-bit mode; 8 segment prefixes + 7 more bytes exceed 15 bytes.
        unsupported(&[0x0F, 0x0B], Bits64);
        assert_eq!(decode(&[0x06], Bits64), Err(DecodeError::Undecodable));
        let too_long = [0x2E; 16];
        assert_eq!(decode(&too_long, Bits32), Err(DecodeError::Undecodable));
        assert_eq!(
            decode(&too_long[..15], Bits32),
            Err(DecodeError::Undecodable)
        );
        // 66 x 14 then 90: 15 bytes, valid.
        let mut long_nop = [0x66u8; 15];
        long_nop[14] = 0x90;
        assert_eq!(
            decode(&long_nop, Bits32),
            Ok(Insn {
                op: Op::Nop,
                len: 15
            })
        );
        // Cut short: B8 01 (mov eax, imm32 needs 5 bytes); empty input.
        assert_eq!(decode(&[0xB8, 0x01], Bits32), Err(DecodeError::Truncated));
        assert_eq!(decode(&[], Bits32), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x0F], Bits16), Err(DecodeError::Truncated));
        // Instructions after the first are ignored: EE EE.
        assert_eq!(
            decode(&[0xEE, 0xEE], Bits16),
            Ok(Insn {
                op: Op::Out {
                    width: Width::W8,
                    port: PortSrc::Dx
                },
                len: 1
            })
        );
    }

    #[test]
    fn other_instructions_are_unsupported_with_their_length() {
        // hlt; 66h pushf in 64-bit code (a 2-byte slot); iret; int 0x10 (CD 10); cpuid
        // (0F A2); lgdt [eax] (0F 01 10); rep ret; push word 1 in 64-bit code (66 6A 01);
        // rdtsc (0F 31); movsxd ax, eax (66 63 C0); call ax with 66h in 64-bit code (66
        // FF D0); bswap ax (66 0F C8).
        for (bytes, m) in [
            (&[0xF4][..], Bits16),
            (&[0x66, 0x9C], Bits64),
            (&[0xCF], Bits32),
            (&[0xCD, 0x10], Bits16),
            (&[0x0F, 0xA2], Bits64),
            (&[0x0F, 0x01, 0x10], Bits32),
            (&[0xF3, 0xC3], Bits64),
            (&[0x66, 0xFF, 0xD0], Bits64),
            (&[0x66, 0x0F, 0xC8], Bits32),
            (&[0x66, 0x6A, 0x01], Bits64),
            (&[0x0F, 0x31], Bits64),
            (&[0x66, 0x63, 0xC0], Bits64),
        ] {
            unsupported(bytes, m);
        }
    }

    #[test]
    fn a_sib_without_base_is_never_read_with_one() {
        // adc [r10*8 + disp32], r11b with 67h: SIB base 101 with mod 00 has no base
        // even with REX.B; zydis reads R13D there, so the instruction is left to the
        // CPU. Without 67h zydis reads it right.
        unsupported(
            &[0x67, 0x4F, 0x10, 0x1C, 0xD5, 0x5A, 0x32, 0xA0, 0xE7],
            Bits64,
        );
        assert!(matches!(
            op(&[0x4F, 0x10, 0x1C, 0xD5, 0x5A, 0x32, 0xA0, 0xE7], Bits64),
            Op::AluMem {
                mem: MemRef { base: None, .. },
                ..
            }
        ));
    }

    #[test]
    fn moves_bit_tests_multiplies_and_flag_instructions() {
        let r = RegRef::new;
        use Width::{W16, W32, W64, W8};
        for m in ALL {
            // cmovz eax, ecx (0F 44 C1; 66h-toggled in 16-bit code)
            let (pfx, w): (&[u8], Width) = if m == Bits16 {
                (&[0x66], W32)
            } else {
                (&[], W32)
            };
            let with = |b: &[u8]| [pfx, b].concat();
            assert_eq!(
                op(&with(&[0x0F, 0x44, 0xC1]), m),
                Op::Cmov {
                    cond: Cond::E,
                    dst: r(0, w),
                    src: Rm::Reg(r(1, w))
                }
            );
            // setnz bl (0F 95 C3)
            assert_eq!(
                op(&[0x0F, 0x95, 0xC3], m),
                Op::Setcc {
                    cond: Cond::Ne,
                    dst: Rm::Reg(r(3, W8))
                }
            );
            // xchg ecx, edx (87 D1 : r/m = ecx, reg = edx); xchg eax, ebx (93)
            assert_eq!(
                op(&with(&[0x87, 0xD1]), m),
                Op::Xchg {
                    reg: r(2, w),
                    other: Rm::Reg(r(1, w))
                }
            );
            assert!(matches!(op(&with(&[0x93]), m), Op::Xchg { .. }));
            // bswap esi (0F CE)
            assert_eq!(op(&with(&[0x0F, 0xCE]), m), Op::Bswap { reg: r(6, w) });
            // cwde / cdq in 32-bit terms
            assert_eq!(op(&with(&[0x98]), m), Op::Widen { width: w });
            assert_eq!(op(&with(&[0x99]), m), Op::SignDx { width: w });
            // bt ecx, edx (0F A3 D1); bts eax, 5 (0F BA E8 05)
            assert_eq!(
                op(&with(&[0x0F, 0xA3, 0xD1]), m),
                alu(AluOp::Bt, r(1, w), Operand::Reg(r(2, w)))
            );
            assert_eq!(
                op(&with(&[0x0F, 0xBA, 0xE8, 0x05]), m),
                alu(AluOp::Bts, r(0, w), Operand::Imm(5))
            );
            // imul eax, ecx (0F AF C1); imul edx, ebx, -2 (6B D3 FE)
            assert_eq!(
                op(&with(&[0x0F, 0xAF, 0xC1]), m),
                alu(AluOp::Imul, r(0, w), Operand::Reg(r(1, w)))
            );
            assert_eq!(
                op(&with(&[0x6B, 0xD3, 0xFE]), m),
                Op::Imul3 {
                    dst: r(2, w),
                    src: Rm::Reg(r(3, w)),
                    imm: 0xFFFF_FFFE
                }
            );
            // mul cl (F6 E1); div ebx (F7 F3); idiv word si (66/none F7 FE)
            assert_eq!(
                op(&[0xF6, 0xE1], m),
                Op::MulDiv {
                    op: MulOp::Mul,
                    src: Rm::Reg(r(1, W8)),
                    width: W8
                }
            );
            assert_eq!(
                op(&with(&[0xF7, 0xF3]), m),
                Op::MulDiv {
                    op: MulOp::Div,
                    src: Rm::Reg(r(3, w)),
                    width: w
                }
            );
            // clc stc cmc cld std
            for (b, f) in [
                (0xF8, FlagOp::Clc),
                (0xF9, FlagOp::Stc),
                (0xF5, FlagOp::Cmc),
                (0xFC, FlagOp::Cld),
                (0xFD, FlagOp::Std),
            ] {
                assert_eq!(op(&[b], m), Op::Flag { op: f });
            }
        }
        // 16-bit operands in 16-bit code: cbw, cwd.
        assert_eq!(op(&[0x98], Bits16), Op::Widen { width: W16 });
        assert_eq!(op(&[0x99], Bits16), Op::SignDx { width: W16 });
        // 64-bit: cdqe, cqo, call rax, jmp [rip + 8], call [rbx + 0x10], bt [rbx], rcx.
        assert_eq!(op(&[0x48, 0x98], Bits64), Op::Widen { width: W64 });
        assert_eq!(op(&[0x48, 0x99], Bits64), Op::SignDx { width: W64 });
        assert_eq!(
            op(&[0xFF, 0xD0], Bits64),
            Op::CallInd {
                src: Rm::Reg(r(0, W64)),
                width: W64
            }
        );
        let mut rip = mem(None, None, 1, 8);
        rip.rip_rel = true;
        assert_eq!(
            op(&[0xFF, 0x25, 8, 0, 0, 0], Bits64),
            Op::JmpInd {
                src: Rm::Mem(rip),
                width: W64
            }
        );
        assert_eq!(
            op(&[0xFF, 0x53, 0x10], Bits64),
            Op::CallInd {
                src: Rm::Mem(mem(Some(3), None, 1, 0x10)),
                width: W64
            }
        );
        assert_eq!(
            op(&[0x48, 0x0F, 0xA3, 0x0B], Bits64),
            Op::AluMem {
                op: AluOp::Bt,
                mem: mem(Some(3), None, 1, 0),
                src: Operand::Reg(r(1, W64)),
                width: W64
            }
        );
        // cmovs rdx, [rbx] (48 0F 48 13); xchg [rbx], al (86 03)
        assert_eq!(
            op(&[0x48, 0x0F, 0x48, 0x13], Bits64),
            Op::Cmov {
                cond: Cond::S,
                dst: r(2, W64),
                src: Rm::Mem(mem(Some(3), None, 1, 0))
            }
        );
        assert_eq!(
            op(&[0x86, 0x03], Bits64),
            Op::Xchg {
                reg: r(0, W8),
                other: Rm::Mem(mem(Some(3), None, 1, 0))
            }
        );
        // LOCK on memory read-modify-writes: lock bts [rax], eax; lock cmpxchg [rbx],
        // ecx (F0 0F B1 0B); lock xadd [rbx], rax (F0 48 0F C1 03); lock add [rax], eax.
        assert!(matches!(
            op(&[0xF0, 0x0F, 0xAB, 0x00], Bits64),
            Op::AluMem { op: AluOp::Bts, .. }
        ));
        assert_eq!(
            op(&[0xF0, 0x0F, 0xB1, 0x0B], Bits64),
            Op::Cmpxchg {
                dst: Rm::Mem(mem(Some(3), None, 1, 0)),
                src: r(1, W32)
            }
        );
        assert_eq!(
            op(&[0xF0, 0x48, 0x0F, 0xC1, 0x03], Bits64),
            Op::Xadd {
                dst: Rm::Mem(mem(Some(3), None, 1, 0)),
                src: r(0, W64)
            }
        );
        assert!(matches!(
            op(&[0xF0, 0x01, 0x00], Bits64),
            Op::AluMem { op: AluOp::Add, .. }
        ));
        // cli, sti in every mode; pushfq/popfq in 64-bit code.
        for m in ALL {
            assert_eq!(op(&[0xFA], m), Op::Cli);
            assert_eq!(op(&[0xFB], m), Op::Sti);
        }
        assert_eq!(op(&[0x9C], Bits64), Op::Pushf { width: W64 });
        assert_eq!(op(&[0x9D], Bits64), Op::Popf { width: W64 });
        assert_eq!(op(&[0x9C], Bits16), Op::Pushf { width: W16 });
        assert_eq!(op(&[0x66, 0x9D], Bits16), Op::Popf { width: W32 });
        // Memory forms in 16-bit code: cmovz ax, [bx] (DS), mov ax, [bp+si+2] (SS:
        // the BP base), mov eax, es:[bx+di] (the override), add [si-1], dx.
        assert_eq!(
            op(&[0x0F, 0x44, 0x07], Bits16),
            Op::Cmov {
                cond: Cond::E,
                dst: r(0, W16),
                src: Rm::Mem(MemRef {
                    addr: W16,
                    ..mem(Some(3), None, 1, 0)
                })
            }
        );
        assert_eq!(
            op(&[0x8B, 0x42, 0x02], Bits16),
            Op::Load {
                dst: r(0, W16),
                src: Rm::Mem(MemRef {
                    addr: W16,
                    seg: Seg::Ss,
                    ..mem(Some(5), Some(6), 1, 2)
                }),
                width: W16,
                signed: false
            }
        );
        assert!(matches!(
            op(&[0x26, 0x66, 0x8B, 0x01], Bits16),
            Op::Load {
                src: Rm::Mem(MemRef { seg: Seg::Es, .. }),
                ..
            }
        ));
        mem_form(&[0x01, 0x54, 0xFF], Bits16);
        // 32-bit addressing in 16-bit code (67h): mov ax, [esp+4] (SS).
        assert!(matches!(
            op(&[0x67, 0x8B, 0x44, 0x24, 0x04], Bits16),
            Op::Load {
                src: Rm::Mem(MemRef {
                    seg: Seg::Ss,
                    addr: W32,
                    ..
                }),
                ..
            }
        ));
    }

    fn mem(base: Option<u8>, index: Option<u8>, scale: u8, disp: i32) -> MemRef {
        MemRef {
            base,
            index,
            scale,
            disp,
            rip_rel: false,
            seg: Seg::Ds,
            addr: Width::W64,
        }
    }

    #[test]
    fn memory_operand_forms_in_64_bit_code() {
        let r = RegRef::new;
        // mov rax, [rbx + rcx*4 + 0x10] (48 8B 44 8B 10).
        assert_eq!(
            op(&[0x48, 0x8B, 0x44, 0x8B, 0x10], Bits64),
            Op::Load {
                dst: r(0, Width::W64),
                src: Rm::Mem(mem(Some(3), Some(1), 4, 0x10)),
                width: Width::W64,
                signed: false
            }
        );
        // movzx eax, byte [rip - 2] (0F B6 05 FE FF FF FF): RIP-relative.
        let mut rip = mem(None, None, 1, -2);
        rip.rip_rel = true;
        assert_eq!(
            op(&[0x0F, 0xB6, 0x05, 0xFE, 0xFF, 0xFF, 0xFF], Bits64),
            Op::Load {
                dst: r(0, Width::W32),
                src: Rm::Mem(rip),
                width: Width::W8,
                signed: false
            }
        );
        // movzx eax, al (0F B6 C0) in every mode; movsx ecx, dx (0F BF CA).
        for m in ALL {
            assert_eq!(
                op(&[0x0F, 0xB6, 0xC0], m),
                Op::Load {
                    dst: r(0, if m == Bits16 { Width::W16 } else { Width::W32 }),
                    src: Rm::Reg(RegRef::AL),
                    width: Width::W8,
                    signed: false
                }
            );
        }
        assert_eq!(
            op(&[0x0F, 0xBF, 0xCA], Bits32),
            Op::Load {
                dst: r(1, Width::W32),
                src: Rm::Reg(r(2, Width::W16)),
                width: Width::W16,
                signed: true
            }
        );
        // movsxd rax, dword [rsp + 8] (48 63 44 24 08): RSP as base.
        assert_eq!(
            op(&[0x48, 0x63, 0x44, 0x24, 0x08], Bits64),
            Op::Load {
                dst: r(0, Width::W64),
                src: Rm::Mem(mem(Some(4), None, 1, 8)),
                width: Width::W32,
                signed: true
            }
        );
        // mov [rdi], sil (40 88 37); mov dword fs:[rax], 7 (64 C7 00 07 00 00 00).
        assert_eq!(
            op(&[0x40, 0x88, 0x37], Bits64),
            Op::Store {
                mem: mem(Some(7), None, 1, 0),
                src: Operand::Reg(r(6, Width::W8)),
                width: Width::W8
            }
        );
        let mut fs = mem(Some(0), None, 1, 0);
        fs.seg = Seg::Fs;
        assert_eq!(
            op(&[0x64, 0xC7, 0x00, 0x07, 0, 0, 0], Bits64),
            Op::Store {
                mem: fs,
                src: Operand::Imm(7),
                width: Width::W32
            }
        );
        // add [rbx], ecx (01 0B); cmp byte [rbx+1], 0x80 (80 7B 01 80); test [rax], edx
        // (85 10); inc qword [rax] (48 FF 00); shl word [rax], 3 (66 C1 20 03).
        assert_eq!(
            op(&[0x01, 0x0B], Bits64),
            Op::AluMem {
                op: AluOp::Add,
                mem: mem(Some(3), None, 1, 0),
                src: Operand::Reg(r(1, Width::W32)),
                width: Width::W32
            }
        );
        assert_eq!(
            op(&[0x80, 0x7B, 0x01, 0x80], Bits64),
            Op::AluMem {
                op: AluOp::Cmp,
                mem: mem(Some(3), None, 1, 1),
                src: Operand::Imm(0x80),
                width: Width::W8
            }
        );
        assert_eq!(
            op(&[0x85, 0x10], Bits64),
            Op::AluMem {
                op: AluOp::Test,
                mem: mem(Some(0), None, 1, 0),
                src: Operand::Reg(r(2, Width::W32)),
                width: Width::W32
            }
        );
        assert!(matches!(
            op(&[0x48, 0xFF, 0x00], Bits64),
            Op::AluMem {
                op: AluOp::Inc,
                width: Width::W64,
                ..
            }
        ));
        assert_eq!(
            op(&[0x66, 0xC1, 0x20, 0x03], Bits64),
            Op::AluMem {
                op: AluOp::Shl,
                mem: mem(Some(0), None, 1, 0),
                src: Operand::Imm(3),
                width: Width::W16
            }
        );
        // sub rax, [r12 + 0x100] (49 2B 84 24 00 01 00 00).
        assert_eq!(
            op(&[0x49, 0x2B, 0x84, 0x24, 0x00, 0x01, 0, 0], Bits64),
            Op::AluLoad {
                op: AluOp::Sub,
                dst: r(0, Width::W64),
                mem: mem(Some(12), None, 1, 0x100)
            }
        );
        // lea eax, [rbx + 0x60] (8D 43 60); 67h: lea eax, [ebx + 0x60].
        assert_eq!(
            op(&[0x8D, 0x43, 0x60], Bits64),
            Op::Lea {
                dst: r(0, Width::W32),
                mem: mem(Some(3), None, 1, 0x60)
            }
        );
        let mut m32 = mem(Some(3), None, 1, 0x60);
        m32.addr = Width::W32;
        assert_eq!(
            op(&[0x67, 0x8D, 0x43, 0x60], Bits64),
            Op::Lea {
                dst: r(0, Width::W32),
                mem: m32
            }
        );
    }

    #[test]
    fn shifts_by_cl() {
        // shl esi, cl (D3 E6); shr al, cl (D2 E8); sar (D3 FE) stays unsupported.
        assert_eq!(
            op(&[0xD3, 0xE6], Bits64),
            Op::Alu {
                op: AluOp::Shl,
                dst: RegRef::new(6, Width::W32),
                src: Operand::Reg(RegRef::new(1, Width::W8))
            }
        );
        assert_eq!(
            op(&[0xD2, 0xE8], Bits16),
            Op::Alu {
                op: AluOp::Shr,
                dst: RegRef::AL,
                src: Operand::Reg(RegRef::new(1, Width::W8))
            }
        );
        // D3 FE sar esi, cl.
        assert_eq!(
            op(&[0xD3, 0xFE], Bits64),
            alu(
                AluOp::Sar,
                r(6, Width::W32),
                Operand::Reg(RegRef::new(1, Width::W8))
            )
        );
    }

    #[test]
    fn stack_forms_in_every_mode() {
        let r = RegRef::new;
        use Width::{W16, W32, W64};
        assert_eq!(
            op(&[0x53], Bits64),
            Op::Push {
                src: Operand::Reg(r(3, W64)),
                width: W64
            }
        );
        assert_eq!(op(&[0x41, 0x5C], Bits64), Op::Pop { dst: r(12, W64) });
        assert_eq!(
            op(&[0x6A, 0xFF], Bits64),
            Op::Push {
                src: Operand::Imm(u64::MAX),
                width: W64
            }
        );
        assert_eq!(
            op(&[0xE8, 0x10, 0, 0, 0], Bits64),
            Op::Call {
                rel: 0x10,
                width: W64
            }
        );
        assert_eq!(op(&[0xC3], Bits64), Op::Ret { pop: 0, width: W64 });
        assert_eq!(
            op(&[0xC2, 0x08, 0x00], Bits64),
            Op::Ret { pop: 8, width: W64 }
        );
        // 16-bit code: push bx, pop ax, push 0x1234, call rel16, ret, leave; with 66h
        // the 32-bit forms.
        assert_eq!(
            op(&[0x53], Bits16),
            Op::Push {
                src: Operand::Reg(r(3, W16)),
                width: W16
            }
        );
        assert_eq!(op(&[0x58], Bits16), Op::Pop { dst: r(0, W16) });
        assert_eq!(op(&[0x66, 0x58], Bits16), Op::Pop { dst: r(0, W32) });
        assert_eq!(
            op(&[0x68, 0x34, 0x12], Bits16),
            Op::Push {
                src: Operand::Imm(0x1234),
                width: W16
            }
        );
        assert_eq!(
            op(&[0xE8, 0x10, 0x00], Bits16),
            Op::Call {
                rel: 0x10,
                width: W16
            }
        );
        assert_eq!(op(&[0xC3], Bits16), Op::Ret { pop: 0, width: W16 });
        assert_eq!(op(&[0xC9], Bits16), Op::Leave { width: W16 });
        assert_eq!(op(&[0xC9], Bits32), Op::Leave { width: W32 });
        assert_eq!(op(&[0x66, 0xC3], Bits32), Op::Ret { pop: 0, width: W16 });
        assert_eq!(
            op(&[0xFF, 0xD3], Bits32),
            Op::CallInd {
                src: Rm::Reg(r(3, W32)),
                width: W32
            }
        );
        // 64-bit code: the 66h (2-byte slot) forms are left to the CPU.
        unsupported(&[0x66, 0x53], Bits64);
        unsupported(&[0x66, 0xC9], Bits64);
    }

    /// Every byte pattern of a few lengths decodes to something without panicking.
    #[test]
    fn no_panic_on_arbitrary_bytes() {
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let mut bytes = [0u8; 16];
        for _ in 0..20_000 {
            for b in bytes.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let n = (seed >> 60) as usize + 1;
            for m in ALL {
                if let Ok(insn) = decode(&bytes[..n], m) {
                    assert!(usize::from(insn.len) <= n);
                }
            }
        }
        for a in 0..=255u8 {
            for m in ALL {
                let _ = decode(&[a], m);
                let _ = decode(&[0x0F, a], m);
                let _ = decode(&[a, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0], m);
            }
        }
    }
}
