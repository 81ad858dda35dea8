//! Running a case on both sides and comparing: the coalescer on the IO exit, the
//! reference to the coalescer's stop, the diff of the final states, the replay from
//! the warm block cache, and the description that reproduces a failing case.

use std::fmt::Write as _;

use super::board::{board_io, Board, BoardSnap, NullHost};
use super::case::{ip_mask, Case, RAM};
use super::ref_decode::disasm;
use super::reference::{exit_fields, fetch_decode, fmt_insn, Reference, Target};
use crate::coalesce::cache::BlockCache;
use crate::coalesce::engine::{Coalescer, Outcome};
use crate::coalesce::insn::StopReason;
use crate::stats::Stats;
use crate::vcpu::exit::VmExit;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::SliceMemory;
use crate::x86::regs::GuestRegs;

/// Guest state at the end of a run, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Final {
    pub(super) regs: GuestRegs,
    pub(super) rip: u64,
    pub(super) rsp: u64,
    rflags: u64,
    ram: Vec<u8>,
    pub(super) board: BoardSnap,
    /// The run ended right after an STI that set IF: blocking by STI (coalesced side:
    /// in the VMCS after a coalesced run).
    sti_blocking: bool,
    /// Reference only: see `Reference::wrote_page_tables`.
    wrote_page_tables: bool,
}

/// What the coalesced side did.
#[derive(Clone, Debug)]
pub(super) struct CoRun {
    pub outcome: Outcome,
    pub stop: Option<StopReason>,
    pub executed: u64,
    pub elements: u64,
    io_insns: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub(super) final_: Final,
    interruptibility: u64,
    /// The reference could not decide (see [`INCONCLUSIVE`]).
    pub inconclusive: bool,
}

/// The exit fields of the instruction at the case's RIP, if it is an IO instruction.
pub(in crate::coalesce) fn first_exit_fields(case: &Case) -> Option<(u64, u64, u64)> {
    let (v, regs, mut ram) = case.build();
    let (i, _, op) = fetch_decode(&v, &mut ram).ok()?;
    exit_fields(&op?, i.len(), regs.rdx as u16)
}

/// Runs the coalescer on `case` (with `cache`); `exit` overrides the exit fields.
pub(super) fn run_coalesced(
    case: &Case,
    cache: &mut BlockCache,
    exit: Option<(u64, u64, u64)>,
) -> CoRun {
    let mut c = Coalescer::new(case.settings, cache);
    run_coalesced_by(case, &mut c, exit)
}

/// [`run_coalesced`] with a coalescer that lives across exits (its site memory).
pub(super) fn run_coalesced_by(
    case: &Case,
    c: &mut Coalescer<'_>,
    exit: Option<(u64, u64, u64)>,
) -> CoRun {
    let (mut v, mut regs, mut ram) = case.build();
    let (q, len, info) = exit
        .or_else(|| first_exit_fields(case))
        .unwrap_or((0, 1, 0));
    v.write(VmcsField::ExitReason, 30);
    v.write(VmcsField::ExitQualification, q);
    v.write(VmcsField::ExitInstructionLength, len);
    v.write(VmcsField::ExitInstructionInfo, info);
    v.write(VmcsField::GuestInterruptibilityState, 1);
    let board = Board::new(case.seed);
    board.init(&case.board_init);
    let mut stats = Stats::new();
    let (outcome, unknown) = board.with_bus(|bus| {
        let mut host = NullHost;
        let mut env = board_io(bus, &board, &mut host);
        let mut mem = SliceMemory::new(&mut ram);
        let exit = VmExit::read(&v);
        let io = exit.io().expect("the case exits on an IO instruction");
        c.handle(
            &io,
            exit.instruction_length,
            &mut v,
            &mut regs,
            &mut mem,
            &mut env,
            &mut stats.io,
        )
    });
    let stop = StopReason::ALL
        .iter()
        .copied()
        .find(|r| stats.io.stops[r.index()] != 0);
    CoRun {
        outcome,
        stop,
        executed: stats.io.emulated,
        elements: stats.io.string_elements,
        io_insns: stats.io.instructions,
        cache_hits: stats.io.cache_hits,
        cache_misses: stats.io.cache_misses,
        interruptibility: v.read(VmcsField::GuestInterruptibilityState),
        inconclusive: false,
        final_: Final {
            sti_blocking: outcome == Outcome::Done
                && v.read(VmcsField::GuestInterruptibilityState) & 1 != 0,
            regs,
            rip: v.read(VmcsField::GuestRip),
            rsp: v.read(VmcsField::GuestRsp),
            rflags: v.read(VmcsField::GuestRflags),
            ram,
            board: board.snapshot(unknown),
            wrote_page_tables: false,
        },
    }
}

/// Runs the reference on `case` to the coalescer's stop `co`.
pub(super) fn run_reference(
    case: &Case,
    co: &CoRun,
    stale_pic_if_clear: bool,
) -> Result<Final, String> {
    let (v, regs, ram) = case.build();
    let board = Board::new(case.seed);
    board.init(&case.board_init);
    let target = Target {
        executed: co.executed,
        elements: co.elements,
        rip: co.final_.rip,
    };
    let (r, unknown) = board.with_bus(|bus| {
        let mut r = Reference {
            mode: case.mode,
            vmcs: v,
            regs,
            ram,
            bus,
            board: &board,
            limits: case.settings.limits,
            executed: 0,
            elements: 0,
            io_insns: 0,
            in_rep: false,
            pending: None,
            shadow: false,
            stale_pic_if_clear,
            wrote_page_tables: false,
            log: Vec::new(),
        };
        let res = r.run_to(target).and_then(|()| {
            if r.io_insns == co.io_insns {
                Ok(())
            } else {
                Err(format!(
                    "IO instructions: coalescer counted {}, reference {}",
                    co.io_insns, r.io_insns
                ))
            }
        });
        (
            res,
            r.vmcs,
            r.regs,
            r.ram,
            r.log,
            r.wrote_page_tables,
            r.shadow,
        )
    });
    let (res, v, regs, ram, log, wrote_page_tables, shadow) = r;
    res.map_err(|e| {
        if wrote_page_tables {
            return INCONCLUSIVE.to_string();
        }
        let mut steps = String::new();
        for i in &log {
            let _ = writeln!(steps, "  ref {:#06x}: {}", i.ip(), fmt_insn(i));
        }
        format!("{e}\nreference steps:\n{steps}")
    })?;
    Ok(Final {
        regs,
        rip: v.read(VmcsField::GuestRip),
        rsp: v.read(VmcsField::GuestRsp),
        rflags: v.read(VmcsField::GuestRflags),
        ram,
        board: board.snapshot(unknown),
        sti_blocking: shadow,
        wrote_page_tables,
    })
}

const INCONCLUSIVE: &str = "inconclusive: the guest wrote its live page tables";

pub(super) fn diff_finals(co: &Final, re: &Final) -> String {
    let mut s = String::new();
    if co.regs != re.regs {
        let _ = writeln!(
            s,
            "registers:\n  coalesced {:x?}\n  reference {:x?}",
            co.regs, re.regs
        );
    }
    if co.sti_blocking != re.sti_blocking {
        let _ = writeln!(
            s,
            "blocking by STI: coalesced {}, reference {}",
            co.sti_blocking, re.sti_blocking
        );
    }
    for (name, a, b) in [
        ("RIP", co.rip, re.rip),
        ("RSP", co.rsp, re.rsp),
        ("RFLAGS", co.rflags, re.rflags),
    ] {
        if a != b {
            let _ = writeln!(s, "{name}: coalesced {a:#x}, reference {b:#x}");
        }
    }
    if co.ram != re.ram {
        let at = co
            .ram
            .iter()
            .zip(&re.ram)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "guest RAM differs first at {at:#x}: coalesced {:02x?}, reference {:02x?}",
            &co.ram[at..(at + 8).min(co.ram.len())],
            &re.ram[at..(at + 8).min(re.ram.len())]
        );
    }
    let (a, b) = (&co.board, &re.board);
    if a.trace != b.trace {
        let _ = writeln!(
            s,
            "port trace:\n  coalesced {:x?}\n  reference {:x?}",
            a.trace, b.trace
        );
    }
    for (name, x, y) in [
        ("UART", &a.uart, &b.uart),
        ("PIC", &a.pic, &b.pic),
        ("PIT", &a.pit, &b.pit),
    ] {
        if x != y {
            let _ = writeln!(s, "{name}:\n  coalesced {x}\n  reference {y}");
        }
    }
    if a.noise != b.noise {
        let _ = writeln!(s, "tracing device state differs");
    }
    if a.unknown != b.unknown {
        let _ = writeln!(
            s,
            "unknown ports:\n  coalesced {:?}\n  reference {:?}",
            a.unknown, b.unknown
        );
    }
    s
}

/// Everything needed to reproduce a case.
pub(in crate::coalesce) fn describe(case: &Case) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mode {:?} seed {:#x} ip {:#x} seg_base {:x?} cpl {} rflags {:#x} rsp {:#x} dr7 {:#x}\n\
         settings {:?}\nunmap {:x?} board_init {:x?}\nregs {:x?}",
        case.mode,
        case.seed,
        case.ip,
        case.seg_base,
        case.cpl,
        case.rflags,
        case.rsp,
        case.dr7,
        case.settings,
        case.unmap,
        case.board_init,
        case.regs
    );
    let _ = writeln!(s, "code {:02x?}", case.code);
    s.push_str(&disasm(case.mode, case.ip, &case.code));
    s
}

/// Runs `case` on both sides and compares; also replays it with the now warm block
/// cache, which must do exactly the same. Returns the (first) coalesced run.
pub(super) fn check(case: &Case) -> Result<CoRun, String> {
    check_with(case, false)
}

fn check_with(case: &Case, stale_pic_if_clear: bool) -> Result<CoRun, String> {
    let mut cache = Box::new(BlockCache::new());
    let exit = Some(first_exit_fields(case).unwrap_or((0, 1, 0)));
    let co = run_coalesced(case, &mut cache, exit);
    let fail = |what: String, co: &CoRun| {
        Err(format!(
            "{what}\ncoalescer: {:?} stop {:?} executed {} elements {} rip {:#x}\n{}",
            co.outcome,
            co.stop,
            co.executed,
            co.elements,
            co.final_.rip,
            describe(case)
        ))
    };
    if co.executed > u64::from(case.settings.limits.max_insns.max(1)) {
        return fail("more instructions than max_insns".into(), &co);
    }
    if co.elements > u64::from(case.settings.limits.max_string_elements) {
        return fail("more string elements than max_string_elements".into(), &co);
    }
    if let Outcome::Fallback(_) = co.outcome {
        if co.executed != 0 || co.elements != 0 {
            return fail("a fallback that counted work".into(), &co);
        }
    }
    if co.outcome == Outcome::Done && co.interruptibility & 2 != 0 {
        return fail(
            "MOV-SS blocking not cleared after a coalesced run".into(),
            &co,
        );
    }
    let re = match run_reference(case, &co, stale_pic_if_clear) {
        Ok(re) => re,
        Err(e) if e == INCONCLUSIVE => {
            return Ok(CoRun {
                inconclusive: true,
                ..co
            })
        }
        Err(e) => return fail(e, &co),
    };
    let d = diff_finals(&co.final_, &re);
    if !d.is_empty() {
        if re.wrote_page_tables {
            return Ok(CoRun {
                inconclusive: true,
                ..co
            });
        }
        return fail(format!("final states differ:\n{d}"), &co);
    }
    // The coalescer must not reject an instruction of the subset (unless the
    // program overwrote its own code).
    let code_intact = || {
        let (_, _, ram0) = case.build();
        let at = case.code_linear() as usize;
        let end = (at + case.code.len()).min(RAM);
        ram0[at..end] == co.final_.ram[at..end]
    };
    if co.outcome == Outcome::Done
        && matches!(
            co.stop,
            Some(StopReason::Unsupported | StopReason::Undecodable)
        )
        && code_intact()
    {
        let off = co.final_.rip.wrapping_sub(case.ip) & ip_mask(case.mode);
        if case.must_support.contains(&off) {
            return fail(
                format!(
                    "stopped as {:?} at a supported instruction (offset {off:#x})",
                    co.stop
                ),
                &co,
            );
        }
    }
    // Replay from the warm cache.
    let again = run_coalesced(case, &mut cache, exit);
    if co.cache_misses == 1 && co.outcome == Outcome::Done && again.cache_hits != 1 {
        return fail("no cache hit on the replay".into(), &again);
    }
    if again.final_ != co.final_
        || again.outcome != co.outcome
        || again.executed != co.executed
        || again.elements != co.elements
    {
        return fail(
            format!(
                "the cached replay differs ({:?}, {} insns):\n{}",
                again.outcome,
                again.executed,
                diff_finals(&again.final_, &co.final_)
            ),
            &co,
        );
    }
    Ok(co)
}
