//! Cases and helpers shared by the hand-written tests.

use super::case::{Case, DATA};
use super::compare::{check, CoRun};
use crate::coalesce::insn::CodeMode;

pub(super) const MODES: [CodeMode; 3] = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64];

pub(super) fn expect_ok(case: &Case) -> CoRun {
    check(case).unwrap_or_else(|e| panic!("{e}"))
}

/// `out dx, al` x3 with moves between, in `mode`, DX = the tracing device.
pub(super) fn burst(mode: CodeMode) -> Case {
    // out dx,al; mov al,0x11; out dx,al; inc al (FE C0); out dx,al; hlt
    let mut c = Case::new(mode, vec![0xEE, 0xB0, 0x11, 0xEE, 0xFE, 0xC0, 0xEE, 0xF4]);
    c.regs.rdx = 0xE0;
    c.regs.rax = 0x42;
    c
}

/// `out 0xE0, al` then `code`, then hlt: a 64-bit case with RSP in the data area.
pub(super) fn after_out(code: &[u8]) -> Case {
    let mut bytes = vec![0xE6, 0xE0];
    bytes.extend_from_slice(code);
    bytes.push(0xF4);
    let mut c = Case::new(CodeMode::Bits64, bytes);
    c.rsp = DATA + 0x800;
    c.data_fill = Some(7);
    c.regs.rbx = DATA + 0x100;
    c.regs.rcx = 3;
    c.regs.rax = 0x8081_8283_8485_8687;
    c
}
