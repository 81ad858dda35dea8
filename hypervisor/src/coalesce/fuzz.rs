//! Bounded, deterministic fuzzing of the coalescer over raw bytes.
//!
//! - [`decode::decode`] on random, prefix-heavy and mutated byte strings in every code
//!   mode: never panics, lengths are sane, and every instruction it accepts decodes to
//!   the same length and the same meaning (registers, widths, immediates, ports,
//!   address size, segment, branch target) with a second decoder (iced-x86, as read
//!   by the differential checker in `difftest`).
//! - [`block::scan`] over code with random holes, page sizes, CS room and extents:
//!   instructions are contiguous, mapped, inside the extent, at most the policy's
//!   count, each re-decodes to itself, and the hash is the hash of their bytes.
//! - [`Coalescer::handle`] on mutated valid programs (a valid exiting IO instruction
//!   first) and on garbage at RIP with arbitrary exit fields, with random limits,
//!   extents, flags, privilege and unmapped pages: never panics, respects the
//!   instruction, element and port-access budgets, leaves the guest untouched on a
//!   fallback, and leaves RIP inside the extent after a coalesced run.

use iced_x86::{Decoder, DecoderOptions, Instruction};

use super::block::tests::FakeCode;
use super::block::{fnv1a, scan, Extent, MAX_BLOCK_INSNS};
use super::cache::BlockCache;
use super::decode::{decode, DecodeError, MAX_INSN_LEN};
use super::difftest::board::{COM1, PIC_INIT_IRQ4};
use super::difftest::case::{bitness, linear_ip, Case};
use super::difftest::compare::first_exit_fields;
use super::difftest::generate::gen_program;
use super::difftest::ref_decode::{ref_op, BranchKind, GReg, RefMem, RefOp, RefRm, Src};
use super::difftest::rng::Rng;
use super::engine::{Coalescer, Outcome, Settings};
use super::exec::Limits;
use super::insn::{CodeMode, Insn, LoopKind, MemRef, Op, Operand, PortSrc, RegRef, Rm, StrKind};
use crate::stats::Stats;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::SliceMemory;
use crate::x86::Width;

const MODES: [CodeMode; 3] = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64];

// ---------------------------------------------------------------------------
// Byte generators
// ---------------------------------------------------------------------------

const PREFIXES: [u8; 13] = [
    0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x48, 0x41,
];
/// Opcodes of the subset and their neighbours.
const OPCODES: [u8; 66] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x09, 0x10, 0x13, 0x15, 0x18, 0x1B, 0x1D, 0x20, 0x21,
    0x28, 0x2B, 0x30, 0x31, 0x38, 0x3B, 0x3D, 0x40, 0x48, 0x4F, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x7F,
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x88, 0x8B, 0x90, 0xA4, 0xA5, 0xA6, 0xA8, 0xA9, 0xAA, 0xAB,
    0xAC, 0xAE, 0xAF, 0xB0, 0xBF, 0xC0, 0xC1, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3, 0xE0, 0xE2, 0xEF,
    0xF6, 0xF7,
];

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Prefixes, an opcode near the subset (sometimes 0F-map), then random bytes.
fn prefix_heavy(rng: &mut Rng) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..rng.below(5) {
        b.push(rng.pick(&PREFIXES));
    }
    if rng.chance(1, 5) {
        b.push(0x40 | rng.below(16) as u8);
    }
    match rng.below(6) {
        0 => b.extend_from_slice(&[0x0F, rng.pick(&[0x1F, 0x80, 0x85, 0x8F, 0x0B, 0xA2])]),
        1 => b.push(0xE4 + rng.below(12) as u8),
        2 => b.push(rng.next() as u8),
        _ => b.push(rng.pick(&OPCODES)),
    }
    let k = rng.below(8) as usize;
    b.extend(random_bytes(rng, k));
    b
}

/// A generated program with a few random edits.
fn mutated_program(mode: CodeMode, rng: &mut Rng) -> Vec<u8> {
    let (mut code, _) = gen_program(mode, rng);
    for _ in 0..rng.below(4) {
        if code.is_empty() {
            break;
        }
        let at = rng.below(code.len() as u64) as usize;
        match rng.below(4) {
            0 => code[at] = rng.next() as u8,
            1 => code[at] ^= 1 << rng.below(8),
            2 => code.insert(at, rng.pick(&PREFIXES)),
            _ => {
                code.remove(at);
            }
        }
    }
    code
}

// ---------------------------------------------------------------------------
// decode vs iced
// ---------------------------------------------------------------------------

fn reg_eq(r: RegRef, g: GReg) -> bool {
    r.index == g.index && r.width.bytes() == g.size && r.high8 == g.high
}

/// The target of a relative branch as the executor computes it.
fn target(mode: CodeMode, ip: u64, len: u8, rel: i32, width: Width) -> u64 {
    let mask = super::difftest::case::ip_mask(mode);
    let next = ip.wrapping_add(u64::from(len)) & mask;
    next.wrapping_add(rel as i64 as u64) & width.mask()
}

/// Whether the coalescer's reading `insn` of the bytes means what iced's does.
fn same_meaning(insn: &Insn, i: &Instruction, r: &RefOp, mode: CodeMode, ip: u64) -> bool {
    let long = mode == CodeMode::Bits64;
    let src_eq = |o: Operand, s: Src, shift: Option<Width>| match (o, s) {
        (Operand::Reg(a), Src::Reg(b)) => reg_eq(a, b),
        (Operand::Imm(a), Src::Imm(b)) => match shift {
            // Only the masked count matters.
            Some(w) => {
                let m = if w == Width::W64 { 63 } else { 31 };
                a & m == b & m
            }
            None => a == b,
        },
        _ => false,
    };
    match (insn.op, *r) {
        (Op::In { width, port }, RefOp::Io { is_in, size, imm })
        | (Op::Out { width, port }, RefOp::Io { is_in, size, imm }) => {
            is_in == matches!(insn.op, Op::In { .. })
                && width.bytes() == size
                && match port {
                    PortSrc::Imm(p) => imm == Some(p),
                    PortSrc::Dx => imm.is_none(),
                }
        }
        (
            Op::Ins { width, rep, addr },
            RefOp::Str {
                is_in,
                size,
                rep: r2,
                addr: a2,
                ..
            },
        ) => is_in && width.bytes() == size && rep == r2 && addr.bytes() == a2,
        (
            Op::Outs {
                width,
                rep,
                addr,
                seg,
            },
            RefOp::Str {
                is_in,
                size,
                rep: r2,
                addr: a2,
                seg: s2,
            },
        ) => {
            // 64-bit mode ignores ES/CS/SS/DS overrides.
            let s2 = if long && s2 < 4 { 3 } else { s2 };
            !is_in && width.bytes() == size && rep == r2 && addr.bytes() == a2 && seg as u8 == s2
        }
        (Op::Nop, RefOp::Nop) => true,
        (Op::Mov { dst, src }, RefOp::Mov { dst: d2, src: s2 }) => {
            reg_eq(dst, d2) && src_eq(src, s2, None)
        }
        (
            Op::Alu { op, dst, src },
            RefOp::Alu {
                op: o2,
                dst: d2,
                src: s2,
            },
        ) => {
            let shift = op.is_shift().then_some(dst.width);
            // The source of INC/DEC/NEG/NOT is ignored.
            let src_ok = op.is_unary() || src_eq(src, s2, shift);
            op == o2 && reg_eq(dst, d2) && src_ok
        }
        (Op::Jmp { rel, width }, RefOp::Branch { kind, target: t }) => {
            kind == BranchKind::Always && target(mode, ip, insn.len, rel, width) == t
        }
        (Op::Jcc { cond, rel, width }, RefOp::Branch { kind, target: t }) => {
            kind == BranchKind::Cond(cond as u8) && target(mode, ip, insn.len, rel, width) == t
        }
        (
            Op::Loop {
                kind,
                rel,
                addr,
                width,
            },
            RefOp::Branch {
                kind: k2,
                target: t,
            },
        ) => {
            let k = match kind {
                LoopKind::Loop => 0,
                LoopKind::Loope => 1,
                LoopKind::Loopne => 2,
            };
            k2 == BranchKind::Loop(k, addr.bytes()) && target(mode, ip, insn.len, rel, width) == t
        }
        (
            Op::Load {
                dst,
                src,
                width,
                signed,
            },
            RefOp::Load {
                dst: d2,
                src: s2,
                size,
                signed: g2,
            },
        ) => {
            let src_ok = match (src, s2) {
                (Rm::Reg(a), RefRm::Reg(b)) => reg_eq(a, b),
                (Rm::Mem(a), RefRm::Mem(b)) => mem_eq(a, b, ip, insn.len),
                _ => false,
            };
            // A same-width MOVSXD is a plain MOV: the sign does not matter.
            let sign_ok = signed == g2 || width == dst.width;
            reg_eq(dst, d2) && src_ok && width.bytes() == size && sign_ok
        }
        (
            Op::Store { mem, src, width },
            RefOp::Store {
                mem: m2,
                src: s2,
                size,
            },
        ) => mem_eq(mem, m2, ip, insn.len) && src_eq(src, s2, None) && width.bytes() == size,
        (
            Op::AluMem {
                op,
                mem,
                src,
                width,
            },
            RefOp::AluMem {
                op: o2,
                mem: m2,
                src: s2,
                size,
            },
        ) => {
            let shift = op.is_shift().then_some(width);
            let src_ok = op.is_unary() || src_eq(src, s2, shift);
            op == o2 && mem_eq(mem, m2, ip, insn.len) && src_ok && width.bytes() == size
        }
        (
            Op::AluLoad { op, dst, mem },
            RefOp::AluLoad {
                op: o2,
                dst: d2,
                mem: m2,
            },
        ) => op == o2 && reg_eq(dst, d2) && mem_eq(mem, m2, ip, insn.len),
        (Op::Lea { dst, mem }, RefOp::Lea { dst: d2, mem: m2 }) => {
            reg_eq(dst, d2) && mem_eq(mem, m2, ip, insn.len)
        }
        (Op::Push { src, width }, RefOp::Push { src: s2, size: z2 }) => {
            src_eq(src, s2, None) && width.bytes() == z2
        }
        (Op::Pop { dst }, RefOp::Pop { dst: d2 }) => reg_eq(dst, d2),
        (Op::Call { rel, width }, RefOp::Call { target: t, size }) => {
            target(mode, ip, insn.len, rel, width) == t && width.bytes() == size
        }
        (Op::Ret { pop, width }, RefOp::Ret { pop: p2, size }) => {
            pop == p2 && width.bytes() == size
        }
        (Op::Leave { width }, RefOp::Leave { size }) => width.bytes() == size,
        (Op::CallInd { src, width }, RefOp::CallInd { src: s2, size })
        | (Op::JmpInd { src, width }, RefOp::JmpInd { src: s2, size }) => {
            rm_eq(src, s2, ip, insn.len) && width.bytes() == size
        }
        (Op::Flag { op }, RefOp::Flag { op: o2 }) => op == o2,
        (
            Op::Str {
                kind,
                width,
                rep,
                addr,
                seg,
            },
            RefOp::MemStr {
                kind: k2,
                size,
                rep: r2,
                addr: a2,
                seg: s2,
            },
        ) => {
            // The segment only matters for the instructions that read seg:rSI.
            let src = matches!(kind, StrKind::Movs | StrKind::Lods | StrKind::Cmps);
            let s1 = if long && (seg as u8) < 4 {
                3
            } else {
                seg as u8
            };
            kind == k2
                && width.bytes() == size
                && rep == r2
                && addr.bytes() == a2
                && (!src || s1 == s2)
        }
        (Op::Cli, RefOp::Cli) | (Op::Sti, RefOp::Sti) => true,
        (Op::Pushf { width }, RefOp::Pushf { size })
        | (Op::Popf { width }, RefOp::Popf { size }) => width.bytes() == size,
        (Op::Cmpxchg { dst, src }, RefOp::Cmpxchg { dst: d2, src: s2 })
        | (Op::Xadd { dst, src }, RefOp::Xadd { dst: d2, src: s2 }) => {
            rm_eq(dst, d2, ip, insn.len) && reg_eq(src, s2)
        }
        (
            Op::Cmov { cond, dst, src },
            RefOp::Cmov {
                cond: c2,
                dst: d2,
                src: s2,
            },
        ) => cond as u8 == c2 && reg_eq(dst, d2) && rm_eq(src, s2, ip, insn.len),
        (Op::Setcc { cond, dst }, RefOp::Setcc { cond: c2, dst: d2 }) => {
            cond as u8 == c2 && rm_eq(dst, d2, ip, insn.len)
        }
        (Op::Xchg { reg, other }, RefOp::Xchg { a, b }) => {
            // Either order: the exchange is symmetric.
            let r = Rm::Reg(reg);
            (rm_eq(r, a, ip, insn.len) && rm_eq(other, b, ip, insn.len))
                || (rm_eq(r, b, ip, insn.len) && rm_eq(other, a, ip, insn.len))
        }
        (Op::Bswap { reg }, RefOp::Bswap { reg: r2 }) => reg_eq(reg, r2),
        (Op::Widen { width }, RefOp::Widen { size })
        | (Op::SignDx { width }, RefOp::SignDx { size }) => width.bytes() == size,
        (
            Op::MulDiv { op, src, width },
            RefOp::MulDiv {
                op: o2,
                src: s2,
                size,
            },
        ) => op == o2 && width.bytes() == size && rm_eq(src, s2, ip, insn.len),
        (
            Op::Imul3 { dst, src, imm },
            RefOp::Imul3 {
                dst: d2,
                src: s2,
                imm: i2,
            },
        ) => reg_eq(dst, d2) && rm_eq(src, s2, ip, insn.len) && imm == i2,
        _ => {
            let _ = i;
            false
        }
    }
}

fn rm_eq(a: Rm, b: RefRm, ip: u64, len: u8) -> bool {
    match (a, b) {
        (Rm::Reg(x), RefRm::Reg(y)) => reg_eq(x, y),
        (Rm::Mem(x), RefRm::Mem(y)) => mem_eq(x, y, ip, len),
        _ => false,
    }
}

/// Whether the coalescer's memory operand is iced's (RIP-relative: iced has added the
/// address of the next instruction to the displacement).
fn mem_eq(a: MemRef, b: RefMem, ip: u64, len: u8) -> bool {
    let mask = a.addr.mask();
    let disp = a.disp as i64 as u64;
    let disp = if a.rip_rel {
        ip.wrapping_add(u64::from(len)).wrapping_add(disp)
    } else {
        disp
    };
    let seg = a.seg as u8;
    a.base == b.base
        && a.index == b.index
        && (a.index.is_none() || a.scale == b.scale)
        && disp & mask == b.disp & mask
        && seg == b.seg
        && a.addr.bytes() == b.addr
}

/// Checks `decode` on `bytes` against iced; `Err` describes a disagreement.
fn check_decode(bytes: &[u8], mode: CodeMode, ip: u64) -> Result<(), String> {
    let r = decode(bytes, mode);
    let n = bytes.len();
    let window = n.min(MAX_INSN_LEN);
    match r {
        Ok(insn) => {
            let len = usize::from(insn.len);
            if len == 0 || len > window {
                return Err(format!("length {len} of {n} bytes"));
            }
            let mut d = Decoder::with_ip(bitness(mode), &bytes[..window], ip, DecoderOptions::NONE);
            let i = d.decode();
            if i.is_invalid() {
                return Err(format!(
                    "accepted {insn:?}, iced: invalid ({:?})",
                    d.last_error()
                ));
            }
            if i.len() != len {
                return Err(format!(
                    "accepted {insn:?} of {len} bytes, iced: {} bytes",
                    i.len()
                ));
            }
            let Some(r) = ref_op(&i) else {
                return Err(format!("accepted {insn:?}, outside the reference's subset"));
            };
            if !same_meaning(&insn, &i, &r, mode, ip) {
                return Err(format!("decoded {insn:?}, iced reads {r:?}"));
            }
        }
        Err(DecodeError::Unsupported { len }) => {
            if len == 0 || usize::from(len) > window {
                return Err(format!("unsupported with length {len} of {n} bytes"));
            }
        }
        Err(DecodeError::Truncated) => {
            if n >= MAX_INSN_LEN {
                return Err("truncated with 15 bytes available".into());
            }
        }
        Err(DecodeError::Undecodable) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The engine under fuzzing
// ---------------------------------------------------------------------------

/// A random case around `code`: random registers, flags, privilege, settings.
fn fuzz_case(mode: CodeMode, code: Vec<u8>, rng: &mut Rng, seed: u64) -> Case {
    let mut c = Case::new(mode, code);
    c.seed = seed;
    c.ip += if rng.chance(1, 4) {
        0xFFF - rng.below(24)
    } else {
        rng.below(0x200)
    };
    for k in 0..16 {
        let v = if rng.chance(1, 2) {
            rng.below(0x40)
        } else {
            rng.next()
        };
        c.regs.set(k, v);
    }
    c.regs.rsi = super::difftest::case::DATA + rng.below(0x9000);
    c.regs.rdi = super::difftest::case::DATA + rng.below(0x9000);
    c.regs.rdx = if rng.chance(1, 2) {
        u64::from(COM1) + rng.below(8)
    } else {
        0xE0 + rng.below(8)
    };
    if mode == CodeMode::Bits16 {
        c.regs.rsi &= 0x3FFF;
        c.regs.rdi &= 0x3FFF;
    }
    c.rflags = 0x2 | (rng.next() & 0x8D5) | (rng.below(4) << 12);
    if rng.chance(1, 20) {
        c.rflags |= 1 << 8;
    }
    if mode != CodeMode::Bits16 && rng.chance(1, 5) {
        c.cpl = 3;
    }
    if rng.chance(1, 20) {
        c.dr7 |= 1 << rng.below(8);
    }
    if mode == CodeMode::Bits64 && rng.chance(1, 4) {
        let page = (rng.below(0x20) * 0x1000) & !0xFFF;
        if page >= 0x5000 {
            c.unmap.push(page);
        }
    }
    if rng.chance(1, 3) {
        c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
        c.board_init.push((COM1 + 4, 0x08));
        c.board_init.push((COM1 + 1, rng.below(16) as u8));
    }
    c.settings = Settings {
        enabled: true,
        extent: match rng.below(5) {
            0 => Extent::Line(1 << (3 + rng.below(10))),
            1 => Extent::Bytes(1 + rng.below(4096) as u32),
            2 => Extent::Insns(1 + rng.below(MAX_BLOCK_INSNS as u64) as u32),
            _ => Extent::Page,
        },
        limits: Limits {
            max_insns: rng.below(80) as u32,
            max_string_elements: rng.below(40) as u32,
            max_quiet: rng.below(60) as u32,
        },
    };
    c
}

/// The extent's linear range for the exiting instruction at `lin` (the end is
/// inclusive: RIP may stop right after the last instruction).
fn extent_range(extent: Extent, lin: u64) -> (u64, u64) {
    match extent {
        Extent::Page | Extent::Insns(_) => (lin & !0xFFF, (lin & !0xFFF) + 0x1000),
        Extent::Line(n) => {
            let n = u64::from(n);
            (lin / n * n, lin / n * n + n)
        }
        Extent::Bytes(n) => (lin, lin + u64::from(n)),
    }
}

/// Runs the coalescer once and checks the invariants; `exit` are the exit fields.
fn check_engine(
    case: &Case,
    exit: (u64, u64, u64),
    cache: &mut BlockCache,
) -> Result<(Outcome, u64), String> {
    let (mut v, mut regs, mut ram) = case.build();
    let (q, len, info) = exit;
    v.write(VmcsField::ExitReason, 30);
    v.write(VmcsField::ExitQualification, q);
    v.write(VmcsField::ExitInstructionLength, len);
    v.write(VmcsField::ExitInstructionInfo, info);
    let (v0, regs0, ram0) = (v.clone(), regs, ram.clone());
    let board = super::difftest::board::Board::new(case.seed);
    board.init(&case.board_init);
    board.trace.borrow_mut().clear();
    let mut stats = Stats::new();
    let (outcome, _) = board.with_bus(|bus| {
        let mut host = super::difftest::board::NullHost;
        let mut env = super::difftest::board::board_io(bus, &board, &mut host);
        let mut mem = SliceMemory::new(&mut ram);
        let exit = crate::vcpu::exit::VmExit::read(&v);
        let io = exit.io().expect("the case exits on an IO instruction");
        Coalescer::new(case.settings, cache).handle(
            &io,
            exit.instruction_length,
            &mut v,
            &mut regs,
            &mut mem,
            &mut env,
            &mut stats.io,
        )
    });
    let limits = case.settings.limits;
    let accesses = board.trace.borrow().len() as u64;
    let io = stats.io;
    let max_insns = u64::from(limits.max_insns.max(1));
    if io.emulated > max_insns {
        return Err(format!(
            "{} instructions, max_insns {}",
            io.emulated, limits.max_insns
        ));
    }
    if io.string_elements > u64::from(limits.max_string_elements) {
        return Err(format!(
            "{} elements, max_string_elements {}",
            io.string_elements, limits.max_string_elements
        ));
    }
    if accesses > max_insns + u64::from(limits.max_string_elements) {
        return Err(format!("{accesses} port accesses"));
    }
    let rip = v.read(VmcsField::GuestRip);
    match outcome {
        Outcome::Fallback(_) => {
            if regs != regs0
                || ram != ram0
                || accesses != 0
                || rip != v0.read(VmcsField::GuestRip)
                || v.read(VmcsField::GuestRflags) != v0.read(VmcsField::GuestRflags)
            {
                return Err(format!("{outcome:?} changed the guest"));
            }
        }
        Outcome::Done => {
            if io.emulated == 0 {
                return Err("Done without executing anything".into());
            }
            let cs = case.seg_base[1];
            let start = linear_ip(case.mode, cs, case.ip);
            let (lo, hi) = extent_range(case.settings.extent, start);
            let end = linear_ip(case.mode, cs, rip);
            // 64-bit code may leave the extent by a taken transfer (engine::MAX_HOPS).
            let may_leave = case.mode == CodeMode::Bits64
                && matches!(case.settings.extent, Extent::Page | Extent::Line(_));
            if !may_leave && (end < lo || end > hi) {
                return Err(format!(
                    "RIP {rip:#x} (linear {end:#x}) outside the extent {lo:#x}..={hi:#x}"
                ));
            }
            // VM, VIF, VIP and the reserved bits are never changed by an emulated run
            // (POPF keeps them; RF only ever goes to 0).
            let fixed = !(0x8D5
                | 0x100
                | 0x200
                | 0x400
                | 0x3000
                | 0x4000
                | 0x1_0000
                | 0x4_0000
                | 0x20_0000);
            if v.read(VmcsField::GuestRflags) & fixed != case.rflags & fixed {
                return Err("a flag no emulated instruction may change changed".into());
            }
        }
    }
    Ok((outcome, io.emulated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_agrees_with_a_second_decoder_on_random_bytes() {
        let mut rng = Rng::new(0xDEC0DE);
        let mut accepted = 0u32;
        for k in 0..50_000u32 {
            let bytes = match k % 3 {
                0 => {
                    let n = 1 + rng.below(16) as usize;
                    random_bytes(&mut rng, n)
                }
                1 => prefix_heavy(&mut rng),
                _ => {
                    let mode = MODES[(k / 3 % 3) as usize];
                    let p = mutated_program(mode, &mut rng);
                    let at = rng.below(p.len() as u64 / 2 + 1) as usize;
                    p[at..].to_vec()
                }
            };
            let ip = rng.pick(&[0x1000u64, 0xFFF0, 0x7FFF_FFF0, 0xFFFF_FFFF_FFFF_FF00]);
            for mode in MODES {
                let ip = ip & super::super::difftest::case::ip_mask(mode);
                if let Err(e) = check_decode(&bytes, mode, ip) {
                    panic!("decode {bytes:02x?} in {mode:?} at ip {ip:#x}: {e}");
                }
                accepted += u32::from(decode(&bytes, mode).is_ok());
            }
        }
        println!("decode fuzz: {accepted} of 150000 decodes accepted and matched");
        assert!(accepted > 10_000, "only {accepted} accepted");
    }

    #[test]
    fn scan_with_random_holes_pages_and_extents() {
        let mut rng = Rng::new(0x5CA9);
        for k in 0..20_000u64 {
            let mode = MODES[(k % 3) as usize];
            let mut bytes = if rng.chance(1, 2) {
                mutated_program(mode, &mut rng)
            } else {
                let mut b = Vec::new();
                while b.len() < 64 {
                    b.extend(prefix_heavy(&mut rng));
                }
                b
            };
            if rng.chance(1, 2) {
                bytes.extend(std::iter::repeat_n(0x90, rng.below(64) as usize));
            }
            let base = 0x1000 + rng.below(0x2000);
            let mut f = FakeCode::new(base, &bytes);
            let n = bytes.len() as u64;
            if rng.chance(1, 2) {
                let h = base + rng.below(n);
                f.hole = h..h + 1 + rng.below(8);
            }
            f.page = 1 << (4 + rng.below(9));
            f.room = if rng.chance(1, 3) {
                rng.below(80)
            } else {
                u64::MAX
            };
            let start = base + if rng.chance(1, 4) { rng.below(n) } else { 0 };
            let extent = match rng.below(4) {
                0 => Extent::Line(1 << (3 + rng.below(6))),
                1 => Extent::Bytes(rng.below(100) as u32),
                2 => Extent::Insns(rng.below(40) as u32),
                _ => Extent::Page,
            };
            let b = scan(&mut f, start, mode, &extent);
            let ctx = || {
                format!("{mode:?} {extent:?} start {start:#x} base {base:#x} hole {:x?} page {} room {} bytes {bytes:02x?} -> {b:?}", f.hole, f.page, f.room)
            };
            let (lo, hi) = extent_range(
                match extent {
                    Extent::Page | Extent::Insns(_) => Extent::Line(f.page as u32),
                    e => e,
                },
                start,
            );
            let _ = lo;
            let max = match extent {
                Extent::Insns(n) => (n as usize).min(MAX_BLOCK_INSNS),
                _ => MAX_BLOCK_INSNS,
            };
            assert!(b.len() <= max, "{}", ctx());
            let code_len = u64::from(b.code_len());
            assert!(start + code_len <= hi, "past the extent: {}", ctx());
            assert!(code_len <= f.room, "past the CS room: {}", ctx());
            let mut off = 0u16;
            let mut code = Vec::new();
            for (k, insn) in b.insns().iter().enumerate() {
                assert_eq!(b.offset_of(k), Some(off), "{}", ctx());
                let at = start + u64::from(off);
                for l in at..at + u64::from(insn.len) {
                    assert!(
                        f.hole.is_empty() || !f.hole.contains(&l),
                        "unmapped byte: {}",
                        ctx()
                    );
                }
                let s = (at - base) as usize;
                let ib = &bytes[s..s + usize::from(insn.len)];
                assert_eq!(decode(ib, mode), Ok(*insn), "{}", ctx());
                code.extend_from_slice(ib);
                off += u16::from(insn.len);
            }
            assert_eq!(b.code_len(), off);
            assert_eq!(b.hash(), fnv1a(&code), "{}", ctx());
        }
    }

    #[test]
    fn engine_on_mutated_programs_and_garbage() {
        let mut rng = Rng::new(0xF022);
        let mut cache = Box::new(BlockCache::new());
        let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
        let mut insns = 0;
        for k in 0..50_000u64 {
            let mode = MODES[(k % 3) as usize];
            let seed = 0xF000_0000 + k;
            let garbage = k % 4 == 3;
            let code = if garbage {
                let n = rng.below(64) as usize;
                random_bytes(&mut rng, n)
            } else {
                mutated_program(mode, &mut rng)
            };
            let case = fuzz_case(mode, code, &mut rng, seed);
            let exit = if garbage || rng.chance(1, 20) {
                (
                    rng.next() & 0xFFFF_007F,
                    rng.below(16),
                    rng.next() & 0x3_8380,
                )
            } else {
                first_exit_fields(&case).unwrap_or((0, 1, 0))
            };
            // A shared cache, sometimes cleared: hits on stale and aliased entries.
            if rng.chance(1, 50) {
                cache.clear();
            }
            match check_engine(&case, exit, &mut cache) {
                Ok((o, n)) => {
                    *outcomes.entry(format!("{o:?}")).or_default() += 1;
                    insns += n;
                }
                Err(e) => panic!(
                    "engine fuzz case {k} (exit fields {exit:x?}): {e}\n{}",
                    super::super::difftest::compare::describe(&case)
                ),
            }
        }
        println!("engine fuzz: {insns} instructions coalesced; outcomes {outcomes:?}");
        assert!(outcomes.get("Done").copied().unwrap_or(0) > 20_000);
    }
}
