//! Test-only: the host CPU as the flag oracle. Runs one ALU instruction natively with
//! chosen operands and flags and returns the destination and RFLAGS afterwards; the
//! executor's unit tests and the differential checker compare against it.

use super::insn::AluOp;
use crate::x86::Width;
use core::arch::asm;

macro_rules! bin {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut f: u64 = $f;
        let b: u64 = $b;
        // SAFETY: only touches the named registers, the flags and the stack.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                b = in(reg) b,
                f = inout(reg) f,
            );
        }
        (a, f)
    }};
}
macro_rules! una {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut f: u64 = $f;
        let _ = $b;
        // SAFETY: as above.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {a:", $m, "}"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                f = inout(reg) f,
            );
        }
        (a, f)
    }};
}
macro_rules! sh {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut a: u64 = $a;
        let mut f: u64 = $f;
        let c: u8 = $b as u8;
        // SAFETY: as above.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($insn, " {a:", $m, "}, cl"),
                "pushfq",
                "pop {f}",
                a = inout(reg) a,
                f = inout(reg) f,
                in("cl") c,
            );
        }
        (a, f)
    }};
}
macro_rules! by_width {
    ($mac:ident, $insn:literal, $w:expr, $a:expr, $b:expr, $f:expr) => {
        match $w {
            Width::W8 => $mac!($insn, "l", $a, $b, $f),
            Width::W16 => $mac!($insn, "x", $a, $b, $f),
            Width::W32 => $mac!($insn, "e", $a, $b, $f),
            Width::W64 => $mac!($insn, "r", $a, $b, $f),
        }
    };
}

/// [`by_width`] for the instructions without an 8-bit form (the caller never asks).
macro_rules! by_wide_width {
    ($mac:ident, $insn:literal, $w:expr, $a:expr, $b:expr, $f:expr) => {
        match $w {
            Width::W8 => panic!("{} has no 8-bit form", $insn),
            Width::W16 => $mac!($insn, "x", $a, $b, $f),
            Width::W32 => $mac!($insn, "e", $a, $b, $f),
            Width::W64 => $mac!($insn, "r", $a, $b, $f),
        }
    };
}

/// Runs `op` on the host CPU: (destination register afterwards, RFLAGS). `op` must
/// exist at `w` ([`AluOp::has_width`]).
pub fn exec(op: AluOp, w: Width, a: u64, b: u64, f: u64) -> (u64, u64) {
    match op {
        AluOp::Bt => by_wide_width!(bin, "bt", w, a, b, f),
        AluOp::Bts => by_wide_width!(bin, "bts", w, a, b, f),
        AluOp::Btr => by_wide_width!(bin, "btr", w, a, b, f),
        AluOp::Btc => by_wide_width!(bin, "btc", w, a, b, f),
        AluOp::Imul => by_wide_width!(bin, "imul", w, a, b, f),
        AluOp::Add => by_width!(bin, "add", w, a, b, f),
        AluOp::Adc => by_width!(bin, "adc", w, a, b, f),
        AluOp::Sub => by_width!(bin, "sub", w, a, b, f),
        AluOp::Sbb => by_width!(bin, "sbb", w, a, b, f),
        AluOp::Neg => by_width!(una, "neg", w, a, b, f),
        AluOp::Not => by_width!(una, "not", w, a, b, f),
        AluOp::Sar => by_width!(sh, "sar", w, a, b, f),
        AluOp::Rol => by_width!(sh, "rol", w, a, b, f),
        AluOp::Ror => by_width!(sh, "ror", w, a, b, f),
        AluOp::Rcl => by_width!(sh, "rcl", w, a, b, f),
        AluOp::Rcr => by_width!(sh, "rcr", w, a, b, f),
        AluOp::And => by_width!(bin, "and", w, a, b, f),
        AluOp::Or => by_width!(bin, "or", w, a, b, f),
        AluOp::Xor => by_width!(bin, "xor", w, a, b, f),
        AluOp::Cmp => by_width!(bin, "cmp", w, a, b, f),
        AluOp::Test => by_width!(bin, "test", w, a, b, f),
        AluOp::Inc => by_width!(una, "inc", w, a, b, f),
        AluOp::Dec => by_width!(una, "dec", w, a, b, f),
        AluOp::Shl => by_width!(sh, "shl", w, a, b, f),
        AluOp::Shr => by_width!(sh, "shr", w, a, b, f),
    }
}

macro_rules! muldiv {
    ($insn:literal, $w:expr, $rdx:expr, $rax:expr, $src:expr) => {{
        let mut rax: u64 = $rax;
        let mut rdx: u64 = $rdx;
        let mut f: u64 = 0x2;
        let src: u64 = $src;
        // SAFETY: only touches RAX, RDX, the source register, the flags and the stack;
        // the caller never asks for a divide that raises #DE.
        unsafe {
            match $w {
                Width::W8 => asm!(
                    "push {f}",
                    "popfq",
                    concat!($insn, " {s}"),
                    "pushfq",
                    "pop {f}",
                    s = in(reg_byte) src as u8,
                    f = inout(reg) f,
                    inout("rax") rax,
                    inout("rdx") rdx,
                ),
                Width::W16 => asm!(
                    "push {f}",
                    "popfq",
                    concat!($insn, " {s:x}"),
                    "pushfq",
                    "pop {f}",
                    s = in(reg) src,
                    f = inout(reg) f,
                    inout("rax") rax,
                    inout("rdx") rdx,
                ),
                Width::W32 => asm!(
                    "push {f}",
                    "popfq",
                    concat!($insn, " {s:e}"),
                    "pushfq",
                    "pop {f}",
                    s = in(reg) src,
                    f = inout(reg) f,
                    inout("rax") rax,
                    inout("rdx") rdx,
                ),
                Width::W64 => asm!(
                    "push {f}",
                    "popfq",
                    concat!($insn, " {s:r}"),
                    "pushfq",
                    "pop {f}",
                    s = in(reg) src,
                    f = inout(reg) f,
                    inout("rax") rax,
                    inout("rdx") rdx,
                ),
            }
        }
        (rdx, rax, f)
    }};
}

/// Runs the one-operand MUL/IMUL/DIV/IDIV on the host CPU: (RDX, RAX, RFLAGS) after
/// it. The caller must not ask for a divide that faults.
pub fn mul_div(op: super::insn::MulOp, w: Width, rdx: u64, rax: u64, src: u64) -> (u64, u64, u64) {
    use super::insn::MulOp;
    match op {
        MulOp::Mul => muldiv!("mul", w, rdx, rax, src),
        MulOp::Imul => muldiv!("imul", w, rdx, rax, src),
        MulOp::Div => muldiv!("div", w, rdx, rax, src),
        MulOp::Idiv => muldiv!("idiv", w, rdx, rax, src),
    }
}
