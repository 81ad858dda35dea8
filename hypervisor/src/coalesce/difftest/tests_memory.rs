//! Memory and stack operands: the forms agree with the reference, and a fault, an
//! accessed or dirty flag the CPU would set, a store or INS into the block's own code
//! and a non-canonical return are stops before the instruction.

use super::case::{Case, CODE, DATA};
use super::compare::describe;
use super::fixtures::{after_out, expect_ok};
use crate::coalesce::engine::Outcome;
use crate::coalesce::insn::{CodeMode, StopReason};

#[test]
fn rep_ins_into_the_blocks_own_code_stops_before_writing_it() {
    // 32-bit flat: rep insb with ES:EDI pointing at the following nop.
    let mut c = Case::new(CodeMode::Bits32, vec![0xF3, 0x6C, 0x90, 0x90, 0xF4]);
    c.regs.rdx = 0xE0;
    c.regs.rcx = 2;
    c.regs.rdi = CODE + 2;
    let co = expect_ok(&c);
    assert_eq!(co.outcome, Outcome::Fallback(StopReason::Memory));
}

#[test]
fn string_element_that_faults_stops_before_it() {
    // 64-bit: rep outsb reading across into an unmapped page after 3 elements.
    let mut c = Case::new(CodeMode::Bits64, vec![0xF3, 0x6E, 0xF4]);
    c.unmap.push(DATA + 0x1000);
    c.regs.rdx = 0xE0;
    c.regs.rcx = 8;
    c.regs.rsi = DATA + 0xFFD;
    let co = expect_ok(&c);
    assert_eq!(
        (co.executed, co.elements, co.stop),
        (1, 3, Some(StopReason::Memory))
    );
    assert_eq!(co.final_.rip, c.ip);
}

#[test]
fn memory_forms_agree_with_the_reference() {
    let programs: &[&[u8]] = &[
        // movzx eax, byte [rbx]; movsx rdx, word [rbx + rcx*2 + 4]; mov [rbx+8], eax
        &[
            0x0F, 0xB6, 0x03, 0x48, 0x0F, 0xBF, 0x54, 0x4B, 0x04, 0x89, 0x43, 0x08,
        ],
        // add [rbx], rax; cmp byte [rbx+1], 0x80; sub rdx, [rbx]; test [rbx], edx
        &[
            0x48, 0x01, 0x03, 0x80, 0x7B, 0x01, 0x80, 0x48, 0x2B, 0x13, 0x85, 0x13,
        ],
        // inc dword [rbx]; shl word [rbx+2], 3; shr byte [rbx], 1; mov qword [rbx], -1
        &[
            0xFF, 0x03, 0x66, 0xC1, 0x63, 0x02, 0x03, 0xD0, 0x2B, 0x48, 0xC7, 0x03, 0xFF, 0xFF,
            0xFF, 0xFF,
        ],
        // lea eax, [rbx + rcx*8 + 0x60]; lea rdx, [rip + 0x10]; movsxd rsi, [rbx]
        &[
            0x8D, 0x44, 0xCB, 0x60, 0x48, 0x8D, 0x15, 0x10, 0, 0, 0, 0x48, 0x63, 0x33,
        ],
        // push rbx; push -2; pop rdx; pop rsi; mov eax, [rsp - 8]
        &[0x53, 0x6A, 0xFE, 0x5A, 0x5E, 0x8B, 0x44, 0x24, 0xF8],
        // A stack frame: sub rsp, 0x28; mov [rsp+8], rax; cmp rsp, 0x10;
        // sub rsp, 0x100; add rsp, rcx; xor rsp, 0 ... add rsp, 0x128 - rcx is not
        // expressible, so: and rsp, -16; add rsp, 0x28
        &[
            0x48, 0x83, 0xEC, 0x28, 0x48, 0x89, 0x44, 0x24, 0x08, 0x48, 0x83, 0xFC, 0x10, 0x48,
            0x81, 0xEC, 0x00, 0x01, 0x00, 0x00, 0x48, 0x01, 0xCC, 0x48, 0x83, 0xE4, 0xF0, 0x48,
            0x83, 0xC4, 0x28,
        ],
        // call +1 (to the out); ...: call rel32 over a byte, then ret back
        // call L; jmp E; L: out 0xE0, al; ret; E:
        &[0xE8, 0x02, 0, 0, 0, 0xEB, 0x03, 0xE6, 0xE0, 0xC3],
    ];
    for code in programs {
        let c = after_out(code);
        let co = expect_ok(&c);
        assert_eq!(
            co.stop,
            Some(StopReason::Unsupported),
            "{code:02x?}: ran to the hlt\n{}",
            describe(&c)
        );
        assert!(co.executed as usize >= 2, "{code:02x?}");
    }
}

#[test]
fn stack_frame_arithmetic_on_rsp_runs_to_the_end() {
    // out; sub rsp, 0x28; mov [rsp+8], rax; cmp rsp, 0x10; add rsp, 0x28; hlt
    let code = [
        0x48, 0x83, 0xEC, 0x28, 0x48, 0x89, 0x44, 0x24, 0x08, 0x48, 0x83, 0xFC, 0x10, 0x48, 0x83,
        0xC4, 0x28,
    ];
    let c = after_out(&code);
    let co = expect_ok(&c);
    assert_eq!(co.stop, Some(StopReason::Unsupported), "{}", describe(&c));
    // The out and all four: only the hlt is left to the CPU.
    assert_eq!(co.executed, 5, "{}", describe(&c));
}

#[test]
fn transfers_leave_the_extent_only_to_canonical_targets() {
    // out; jmp rel32 to the next 4 KiB page, which holds out; call back; hlt ...
    let mut code = vec![0xE6, 0xE0, 0xE9];
    let target = 0x1000i32 - 7;
    code.extend_from_slice(&target.to_le_bytes());
    code.resize(0x1000, 0xF4);
    // At CODE + 0x1000: out 0xE0, al; ret (to the return address pushed below).
    code.extend_from_slice(&[0xE6, 0xE0, 0xC3]);
    let mut c = Case::new(CodeMode::Bits64, code);
    c.rsp = DATA + 0x800;
    // Return to the first page's hlt at CODE + 7.
    c.data_fill = None;
    let (_, _, _) = c.build();
    // The stack holds zeros: RET goes to linear 0, canonical, a hop to page 0.
    let co = expect_ok(&c);
    assert!(co.executed >= 4, "out, jmp, out, ret: {}", co.executed);
    // A non-canonical return address: the RET is left to the CPU (#GP there).
    // out; mov rax, 0x8000_0000_0000_0000; push rax; ret
    let c = after_out(&[0x48, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x50, 0xC3]);
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (3, Some(StopReason::BranchOut)));
    assert_eq!(co.final_.rsp, c.rsp - 8);
}

#[test]
fn accesses_that_fault_or_would_set_a_d_stop_before_the_instruction() {
    // mov eax, [rbx] with RBX on an unmapped page; on a page without A/D; a write
    // to a page without A/D; a store across into an unmapped page.
    type Setup = fn(&mut Case);
    let cases: Vec<(Vec<u8>, Setup)> = vec![
        (vec![0x8B, 0x03], |c| c.unmap.push(DATA + 0x1000)),
        (vec![0x8B, 0x03], |c| c.ad_clear.push(DATA + 0x1000)),
        (vec![0x89, 0x03], |c| c.ad_clear.push(DATA + 0x1000)),
        (vec![0x48, 0x89, 0x43, 0xFC], |c| {
            c.unmap.push(DATA + 0x1000)
        }),
        // push with RSP on a page without A/D.
        (vec![0x53], |c| {
            c.rsp = DATA + 0x1800;
            c.ad_clear.push(DATA + 0x1000);
        }),
        // pop from a non-canonical RSP.
        (vec![0x5A], |c| c.rsp = 0x0000_8000_0000_0000),
    ];
    for (code, setup) in cases {
        let mut c = after_out(&code);
        c.regs.rbx = DATA + 0x1000;
        setup(&mut c);
        let co = expect_ok(&c);
        assert_eq!(
            (co.executed, co.stop),
            (1, Some(StopReason::Memory)),
            "{code:02x?}\n{}",
            describe(&c)
        );
        assert_eq!(co.final_.rip, c.ip + 2);
    }
    // The same load with A/D set runs on.
    let mut c = after_out(&[0x8B, 0x03]);
    c.regs.rbx = DATA + 0x1000;
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (2, Some(StopReason::Unsupported)));
}

#[test]
fn a_store_into_the_blocks_own_code_stops_before_it() {
    // mov byte [rip + 0], 0xF4 would overwrite the following nop with hlt.
    let c = after_out(&[0xC6, 0x05, 0x00, 0x00, 0x00, 0x00, 0xF4, 0x90, 0x90]);
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (1, Some(StopReason::Memory)));
    // A push into the code page (RSP just above the code) stops too.
    let mut c = after_out(&[0x53, 0x90]);
    c.rsp = CODE + 8;
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (1, Some(StopReason::Memory)));
}

#[test]
fn indirect_calls_and_jumps_through_memory_and_registers() {
    // The paravirt pattern: out; call [rip + slot]; jmp over; f: out; ret; slot: &f;
    // hlt.
    let f = CODE + 0xA;
    let mut code = vec![
        0xE6, 0xE0, // out 0xE0, al
        0xFF, 0x15, 0x05, 0, 0, 0, // call [rip + 5] (the slot at 0xD)
        0xEB, 0x0B, // jmp 0x15
        0xE6, 0xE0, // f: out 0xE0, al
        0xC3, // ret
    ];
    code.extend_from_slice(&f.to_le_bytes());
    code.push(0xF4);
    let mut c = Case::new(CodeMode::Bits64, code);
    c.rsp = DATA + 0x800;
    let co = expect_ok(&c);
    assert_eq!(
        (co.executed, co.stop),
        (5, Some(StopReason::Unsupported)),
        "{}",
        describe(&c)
    );
    assert_eq!(co.final_.rip, CODE + 0x15);
    assert_eq!(co.final_.rsp, c.rsp);
    // A function pointer in a register: out; lea rax, [rip + 3]; jmp rax; hlt; out;
    // hlt (the jump skips the first hlt).
    let c = after_out(&[
        0x48, 0x8D, 0x05, 0x03, 0, 0, 0, 0xFF, 0xE0, 0xF4, 0xE6, 0xE0,
    ]);
    let co = expect_ok(&c);
    assert_eq!(
        (co.executed, co.stop),
        (4, Some(StopReason::Unsupported)),
        "{}",
        describe(&c)
    );
    // A non-canonical pointer: the JMP is left to the CPU (#GP there).
    let mut c = after_out(&[0xFF, 0xE3]);
    c.regs.rbx = 0x8000_0000_0000_0000;
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (1, Some(StopReason::BranchOut)));
}

#[test]
fn string_moves_and_compares_agree_in_every_mode() {
    use super::fixtures::MODES;
    // out 0xE0, al; lodsb; stosb; rep movsw; repe cmpsb; repne scasw; lodsw; stosd;
    // cld; std; lodsb; hlt (the last LODS steps backwards).
    let code = [
        0xE6, 0xE0, 0xAC, 0xAA, 0xF3, 0xA5, 0xF3, 0xA6, 0xF2, 0xAF, 0xAD, 0x66, 0xAB, 0xFC, 0xFD,
        0xAC, 0xF4,
    ];
    for mode in MODES {
        let mut code = code.to_vec();
        if mode != CodeMode::Bits16 {
            // 16-bit operands are 66h there, 32-bit ones plain: swap the prefixes.
            code = vec![
                0xE6, 0xE0, 0xAC, 0xAA, 0xF3, 0x66, 0xA5, 0xF3, 0xA6, 0xF2, 0x66, 0xAF, 0x66, 0xAD,
                0xAB, 0xFC, 0xFD, 0xAC, 0xF4,
            ];
        }
        let mut c = Case::new(mode, code);
        c.data_fill = Some(3);
        c.regs.rax = 0x1122_3344_5566_7788;
        c.regs.rcx = 5;
        let (si, di) = match mode {
            CodeMode::Bits16 => (0x0100, 0x0200),
            _ => (DATA + 0x100, DATA + 0x200),
        };
        c.regs.rsi = si;
        c.regs.rdi = di;
        if mode == CodeMode::Bits16 {
            // Garbage above bit 15: 16-bit addressing ignores and keeps it.
            c.regs.rsi |= 0xFFFF_0000;
            c.regs.rdi |= 0x1234_0000_0000;
        }
        let co = expect_ok(&c);
        assert_eq!(
            co.stop,
            Some(StopReason::Unsupported),
            "{mode:?}: {}",
            describe(&c)
        );
        assert!(
            co.executed >= 11,
            "{mode:?}: {} {}",
            co.executed,
            describe(&c)
        );
        assert!(co.elements >= 8, "{mode:?}: {}", co.elements);
    }
}

#[test]
fn indirect_calls_and_jumps_in_16_and_32_bit_code() {
    // 16-bit real mode (CS base 0x7000, IP 0x1000): out; mov bx, f; call bx;
    // call [cs:si] (the table at t holds f); jmp e; f: out; ret; t: dw f; e: hlt.
    let ip = 0x1000u16;
    let f = ip + 0x0F;
    let t = ip + 0x12;
    let mut code = vec![0xE6, 0xE0, 0xBB];
    code.extend_from_slice(&f.to_le_bytes());
    code.extend_from_slice(&[0xFF, 0xD3, 0xBE]);
    code.extend_from_slice(&t.to_le_bytes());
    code.extend_from_slice(&[0x2E, 0xFF, 0x14, 0xEB, 0x05]);
    // f at +0x0F: out 0xE0, al; ret
    code.extend_from_slice(&[0xE6, 0xE0, 0xC3]);
    code.extend_from_slice(&f.to_le_bytes());
    code.extend_from_slice(&[0x90, 0x90, 0x90, 0xF4]);
    let mut c = Case::new(CodeMode::Bits16, code);
    assert_eq!(c.ip, u64::from(ip));
    c.rsp = 0x0800;
    let co = expect_ok(&c);
    // out, mov, call, out, ret, mov, call, out, ret, jmp, nop x3 -> hlt
    assert_eq!(
        (co.executed, co.stop),
        (13, Some(StopReason::Unsupported)),
        "{}",
        describe(&c)
    );
    // 32-bit flat: out; mov ebx, f; jmp ebx; hlt; f: out; jmp [esi] (to the hlt); hlt.
    let base = CODE as u32;
    let f = base + 0x0A;
    let mut code = vec![0xE6, 0xE0, 0xBB];
    code.extend_from_slice(&f.to_le_bytes());
    code.extend_from_slice(&[0xFF, 0xE3, 0xF4, 0xE6, 0xE0, 0xFF, 0x26, 0xF4]);
    let mut c = Case::new(CodeMode::Bits32, code);
    c.regs.rsi = DATA + 0x40;
    c.data_fill = None;
    let co = expect_ok(&c);
    // The table holds 0: jmp [esi] goes to 0, within the CS limit but outside the
    // block: the run stops before it.
    assert_eq!(
        (co.executed, co.stop),
        (4, Some(StopReason::BranchOut)),
        "{}",
        describe(&c)
    );
}
