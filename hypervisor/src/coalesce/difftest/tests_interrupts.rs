//! Device interrupt lines inside a block: the PIC sees every line change as with one
//! exit per IO instruction, and a run stops as soon as an interrupt is deliverable
//! (also between string elements).

use super::board::{COM1, PIC_INIT_IRQ4};
use super::case::{Case, DATA, RF_IF};
use super::fixtures::{expect_ok, MODES};
use crate::coalesce::insn::{CodeMode, StopReason};

/// The stale-PIC case the checker once found. Before the exit the UART (OUT2, IER =
/// THRE) drives IRQ4 high and the PIC has latched it (IRR = 0x11 with the PIT's
/// IRQ0). IF = 0. The block: `out dx, al` (DX = 0x3F9, AL = 0: IER = 0, IRQ4 goes
/// low), `in al, 0x20` (reads IRR), `hlt`. One exit per IO instruction: the run
/// loop syncs the lines after the OUT, the 8259A drops the request, AL = 0x01.
/// Coalesced: the PIC never sees IRQ4 fall, AL = 0x11.
#[test]
fn pic_irr_inside_a_block_with_if_clear_sees_device_line_changes() {
    for mode in MODES {
        let mut c = Case::new(mode, vec![0xEE, 0xE4, 0x20, 0xF4]);
        c.regs.rdx = 0x3F9;
        c.regs.rax = 0;
        c.board_init = vec![(COM1 + 4, 0x08), (COM1 + 1, 0x02)];
        let co = expect_ok(&c);
        assert_eq!(co.final_.regs.rax & 0xFF, 0x01, "{mode:?}");
    }
}

/// The same block with IF = 1: the executor syncs the lines after each access.
#[test]
fn pic_irr_inside_a_block_with_if_set_is_current() {
    for mode in MODES {
        let mut c = Case::new(mode, vec![0xEE, 0xE4, 0x20, 0xF4]);
        c.regs.rdx = 0x3F9;
        c.regs.rax = 0;
        c.rflags |= RF_IF;
        c.board_init = vec![(COM1 + 4, 0x08), (COM1 + 1, 0x02)];
        let co = expect_ok(&c);
        assert_eq!(co.final_.regs.rax & 0xFF, 0x01, "{mode:?}");
    }
}

/// UART set-up that raises IRQ4 with the PIC initialised and IF = 1: the run
/// must stop right after the instruction that makes the interrupt deliverable.
#[test]
fn an_interrupt_becoming_deliverable_stops_right_after_that_instruction() {
    for mode in MODES {
        // mov dx,0x3fc; mov al,0x08; out dx,al   (MCR.OUT2)
        // mov dx,0x3f9; mov al,0x02; out dx,al   (IER.ETBEI: THRE interrupt now)
        // mov al,0x55; out 0xe0,al; hlt
        let mut code = Vec::new();
        let dx = |code: &mut Vec<u8>, p: u16| {
            if mode != CodeMode::Bits16 {
                code.push(0x66);
            }
            code.push(0xBA);
            code.extend_from_slice(&p.to_le_bytes());
        };
        code.extend_from_slice(&[0xE6, 0xE1]); // out 0xe1, al (the exiting one)
        dx(&mut code, 0x3FC);
        code.extend_from_slice(&[0xB0, 0x08, 0xEE]);
        dx(&mut code, 0x3F9);
        code.extend_from_slice(&[0xB0, 0x02, 0xEE]);
        let stop_at = code.len() as u64;
        code.extend_from_slice(&[0xB0, 0x55, 0xE6, 0xE0, 0xF4]);
        let mut c = Case::new(mode, code);
        c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
        c.rflags |= RF_IF;
        let co = expect_ok(&c);
        assert_eq!(co.stop, Some(StopReason::InterruptPending), "{mode:?}");
        assert_eq!(co.final_.rip, c.ip + stop_at);
        assert_eq!(co.executed, 7);
        // With IF = 0 the same code runs on to the HLT.
        c.rflags &= !RF_IF;
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (9, Some(StopReason::Unsupported)));
    }
}

/// With IF = 0 the coalescer does not look at the PIC during a block, while one
/// exit per IO instruction brings the lines onto it after every exit: an IRQ line
/// that rises and falls inside the block must leave the PIC the same either way
/// (the 8259A drops an edge request whose line falls before it is acknowledged).
#[test]
fn an_irq_pulse_inside_a_block_with_if_clear_reaches_the_pic() {
    for mode in MODES {
        let mut code = Vec::new();
        let dx = |code: &mut Vec<u8>, p: u16| {
            if mode != CodeMode::Bits16 {
                code.push(0x66);
            }
            code.push(0xBA);
            code.extend_from_slice(&p.to_le_bytes());
        };
        // out 0xe0,al (exiting); IER = ETBEI (THRE interrupt: IRQ4 high);
        // in al, IIR (THRE cleared: IRQ4 low); hlt.
        code.extend_from_slice(&[0xE6, 0xE0]);
        dx(&mut code, 0x3F9);
        code.extend_from_slice(&[0xB0, 0x02, 0xEE]);
        dx(&mut code, 0x3FA);
        code.extend_from_slice(&[0xEC, 0xF4]);
        let mut c = Case::new(mode, code);
        c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
        c.board_init.push((COM1 + 4, 0x08));
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (6, Some(StopReason::Unsupported)));
    }
}

#[test]
fn an_interrupt_mid_rep_outsb_stops_between_elements() {
    // UART IER = ETBEI written by rep outsb to 0x3f9 from a buffer [2, 2, 2].
    for mode in MODES {
        let mut c = Case::new(mode, vec![0xF3, 0x6E, 0xF4]);
        c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
        c.board_init.push((COM1 + 4, 0x08));
        c.rflags |= RF_IF;
        c.regs.rdx = 0x3F9;
        c.regs.rcx = 3;
        c.regs.rsi = 0x100;
        c.seg_base[3] = if mode == CodeMode::Bits64 { 0 } else { DATA };
        let mut case = c.clone();
        // Put the buffer in the code so it is in RAM for every mode: write via
        // the code bytes is awkward; use DATA + 0x100 = 0x10100 instead.
        case.regs.rsi = if mode == CodeMode::Bits64 {
            DATA + 0x100
        } else {
            0x100
        };
        let co = expect_ok(&case);
        // RAM is zero there: IER = 0 -> no interrupt; the REP runs out.
        assert_eq!(co.elements, 3);
        assert_eq!(co.final_.regs.rcx & 0xFFFF, 0);
    }
}
