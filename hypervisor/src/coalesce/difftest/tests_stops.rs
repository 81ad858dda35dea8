//! The contract's stop conditions without interrupts or memory operands: RFLAGS.TF
//! and DR7 breakpoints, CPL > IOPL, the instruction and string-element limits, and
//! the end of the extent under each policy.

use super::case::{Case, CODE, DATA, RF_TF};
use super::fixtures::{burst, expect_ok, MODES};
use crate::coalesce::block::Extent;
use crate::coalesce::engine::Outcome;
use crate::coalesce::insn::{CodeMode, StopReason};

#[test]
fn a_burst_runs_to_the_unsupported_instruction_in_every_mode() {
    for mode in MODES {
        let co = expect_ok(&burst(mode));
        assert_eq!(co.outcome, Outcome::Done);
        assert_eq!(
            (co.executed, co.stop),
            (5, Some(StopReason::Unsupported)),
            "{mode:?}"
        );
    }
}

#[test]
fn trap_flag_falls_back() {
    for mode in MODES {
        let mut c = burst(mode);
        c.rflags |= RF_TF;
        let co = expect_ok(&c);
        assert_eq!(co.outcome, Outcome::Fallback(StopReason::SingleStep));
    }
}

#[test]
fn dr7_breakpoint_falls_back() {
    for mode in MODES {
        for dr7 in [0x401, 0x402, 0x480] {
            let mut c = burst(mode);
            c.dr7 = dr7;
            let co = expect_ok(&c);
            assert_eq!(
                co.outcome,
                Outcome::Fallback(StopReason::SingleStep),
                "{dr7:#x}"
            );
        }
    }
}

#[test]
fn cpl3_with_iopl0_runs_only_the_exiting_instruction() {
    for mode in [CodeMode::Bits32, CodeMode::Bits64] {
        for iopl in [0u64, 1, 2] {
            let mut c = burst(mode);
            c.cpl = 3;
            c.rflags |= iopl << 12;
            let co = expect_ok(&c);
            assert_eq!(co.outcome, Outcome::Done);
            // out; mov; then the second out is left to the CPU.
            assert_eq!((co.executed, co.stop), (2, Some(StopReason::IoPermission)));
        }
        let mut c = burst(mode);
        c.cpl = 3;
        c.rflags |= 3 << 12;
        assert_eq!(expect_ok(&c).executed, 5);
    }
}

#[test]
fn the_instruction_and_element_limits() {
    for mode in MODES {
        let mut c = burst(mode);
        for max in [0u32, 1, 2, 3, 4] {
            c.settings.limits.max_insns = max;
            let co = expect_ok(&c);
            assert_eq!(co.executed, u64::from(max.max(1)));
            assert_eq!(co.stop, Some(StopReason::Limit));
        }
        // rep outsb with 10 elements, budget 4: RIP stays on it.
        let mut c = Case::new(mode, vec![0xF3, 0x6E, 0xF4]);
        c.regs.rdx = 0xE0;
        c.regs.rcx = 10;
        c.regs.rsi = if mode == CodeMode::Bits64 { DATA } else { 0x10 };
        c.settings.limits.max_string_elements = 4;
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.elements), (1, 4));
        assert_eq!(co.final_.rip, c.ip);
        assert_eq!(co.final_.regs.rcx, 6);
        // A budget of 0: nothing at all.
        c.settings.limits.max_string_elements = 0;
        let co = expect_ok(&c);
        assert_eq!(co.outcome, Outcome::Fallback(StopReason::Limit));
    }
}

#[test]
fn extent_end_for_each_policy() {
    // 80 x `out dx, al` (1 byte each) then hlt, code 8 bytes before a line end.
    for mode in MODES {
        let mut code = vec![0xEE; 80];
        code.push(0xF4);
        let mut c = Case::new(mode, code);
        c.ip += 56; // 8 bytes before the end of a 64-byte line
        c.regs.rdx = 0xE0;
        for (extent, want) in [
            (Extent::Line(64), 8),
            (Extent::Line(16), 8),
            (Extent::Bytes(5), 5),
            (Extent::Insns(3), 3),
            // A page holds more than one block: full blocks chain.
            (Extent::Page, 80),
        ] {
            c.settings.extent = extent;
            let co = expect_ok(&c);
            assert_eq!(co.executed, want, "{mode:?} {extent:?}");
            let stop = if want == 80 {
                StopReason::Unsupported
            } else {
                StopReason::ExtentEnd
            };
            assert_eq!(co.stop, Some(stop), "{mode:?} {extent:?}");
        }
    }
}

#[test]
fn page_crossing_instruction_at_the_extent_end() {
    // 64-bit: code ends a page with `mov eax, imm32` crossing into the next page.
    let mut code = vec![0xEE; 1];
    code.extend_from_slice(&[0xB8, 1, 2, 3, 4, 0xEE, 0xF4]);
    let mut c = Case::new(CodeMode::Bits64, code);
    c.ip = CODE + 0xFFE; // out at 0xffe, mov eax at 0xfff..0x1003
    c.regs.rdx = 0xE0;
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (1, Some(StopReason::ExtentEnd)));
    // Unmapped next page: same stop point, reported as unmapped code.
    c.unmap.push(CODE + 0x1000);
    let co = expect_ok(&c);
    assert_eq!(co.executed, 1);
    assert!(matches!(
        co.stop,
        Some(StopReason::ExtentEnd | StopReason::CodeUnmapped)
    ));
    // With a byte extent the crossing instruction is fine when the page is mapped.
    c.unmap.clear();
    c.settings.extent = Extent::Bytes(64);
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (3, Some(StopReason::Unsupported)));
    // ... and not when the next page is unmapped.
    c.unmap.push(CODE + 0x1000);
    let co = expect_ok(&c);
    assert_eq!((co.executed, co.stop), (1, Some(StopReason::CodeUnmapped)));
}

#[test]
fn a_timer_falling_due_ends_the_run_at_the_next_block() {
    use super::board::{board_io, Board, NullHost};
    use crate::coalesce::cache::BlockCache;
    use crate::coalesce::engine::Coalescer;
    use crate::coalesce::exec::IoEnv;
    use crate::stats::Stats;
    use crate::vcpu::exit::VmExit;
    use crate::vmx::vmcs::{Vmcs, VmcsField};
    use crate::x86::guest_mem::SliceMemory;
    use crate::x86::Width;

    /// The board, with a timer that is always due.
    struct Due<E: IoEnv>(E);
    impl<E: IoEnv> IoEnv for Due<E> {
        fn io_read(&mut self, port: u16, width: Width) -> u32 {
            self.0.io_read(port, width)
        }
        fn io_write(&mut self, port: u16, width: Width, value: u32) {
            self.0.io_write(port, width, value)
        }
        fn interrupt_pending(&mut self) -> bool {
            self.0.interrupt_pending()
        }
        fn timer_due(&mut self) -> bool {
            true
        }
    }
    // out 0xE0, al; 40 x nop; out 0xE0, al; hlt: more than one block (32 instructions).
    let mut code = vec![0xE6, 0xE0];
    code.extend(std::iter::repeat_n(0x90, 40));
    code.extend_from_slice(&[0xE6, 0xE0, 0xF4]);
    let mut c = Case::new(CodeMode::Bits64, code);
    c.settings.limits.max_quiet = 1000;
    let (mut v, mut regs, mut ram) = c.build();
    v.write(VmcsField::ExitReason, 30);
    v.write(VmcsField::ExitQualification, (0xE0 << 16) | (1 << 6));
    v.write(VmcsField::ExitInstructionLength, 2);
    let board = Board::new(1);
    let mut cache = Box::new(BlockCache::new());
    let mut co = Coalescer::new(c.settings, &mut cache);
    let mut stats = Stats::new();
    let outcome = board.with_bus(|bus| {
        let mut host = NullHost;
        let mut env = Due(board_io(bus, &board, &mut host));
        let mut mem = SliceMemory::new(&mut ram);
        let exit = VmExit::read(&v);
        let io = exit.io().expect("an IO exit");
        co.handle(&io, 2, &mut v, &mut regs, &mut mem, &mut env, &mut stats.io)
    });
    let (outcome, _) = outcome;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(stats.io.stops[StopReason::TimerDue.index()], 1);
    // The first block's 32 instructions ran; RIP is at the next one.
    assert_eq!(stats.io.emulated, 32);
    assert_eq!(v.read(VmcsField::GuestRip), CODE + 2 + 31);
}
