//! The coalescer as the VM-exit path uses it: on an IO-instruction exit, find the
//! block at the exiting RIP (block cache, else decode), check that its first
//! instruction is the one the CPU reported, emulate the block against the devices and
//! the register file, and write RIP, RFLAGS and the registers back in one go.
//!
//! When anything makes the block unusable (single-stepping, a mismatch with the VMCS,
//! code that does not translate), the caller falls back to the one-instruction IO
//! handler in `exits`, which is always correct; the fallback is counted as a stop.

use crate::coalesce::block::{self, Extent, GuestCode};
use crate::coalesce::cache::BlockCache;
use crate::coalesce::exec::{self, CpuState, IoEnv, Limits};
use crate::coalesce::insn::{CodeMode, Op, PortSrc, Seg, StopReason, Width};
use crate::exits::{guest_cpl, guest_cs_32bit, guest_long_mode, guest_paging};
use crate::guest_mem::{translate, Access, GuestMemory};
use crate::regs::GuestRegs;
use crate::stats::{IoStats, Stats};
use crate::vmcs::{IoQualification, Vmcs, VmcsField};

/// RFLAGS.TF (single-step), RFLAGS.VM; DR7 L0-L3/G0-G3 (enabled breakpoints).
const RFLAGS_TF: u64 = 1 << 8;
const DR7_ENABLED: u64 = 0xFF;
const CR0_PE: u64 = 1;
/// Interruptibility state: blocking by STI (bit 0) and MOV SS (bit 1).
const BLOCKING_STI_MOVSS: u64 = 0b11;

/// Coalescing settings (from the run configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub extent: Extent,
    pub limits: Limits,
}

/// What the coalescer did with an IO exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The block ran; the guest state in the VMCS and `regs` is complete.
    Done,
    /// Nothing was changed; handle the exit one instruction at a time.
    Fallback(StopReason),
}

/// The coalescer of one vCPU. The block cache is borrowed: at about 70 KiB it lives
/// in a static of the kernel (`BlockCache::new` is const), not on its stack.
pub struct Coalescer<'c> {
    pub settings: Settings,
    cache: &'c mut BlockCache,
}

impl<'c> Coalescer<'c> {
    pub fn new(settings: Settings, cache: &'c mut BlockCache) -> Self {
        Coalescer { settings, cache }
    }

    /// The guest's code mode from CR0.PE, EFER.LMA/CS.L and CS.D (SDM Vol. 3A 3.4.5).
    fn code_mode(vmcs: &impl Vmcs) -> CodeMode {
        if guest_long_mode(vmcs) {
            CodeMode::Bits64
        } else if vmcs.read(VmcsField::GuestCr0) & CR0_PE != 0 && guest_cs_32bit(vmcs) {
            CodeMode::Bits32
        } else {
            CodeMode::Bits16
        }
    }

    fn cpu_state(vmcs: &impl Vmcs, regs: &GuestRegs) -> CpuState {
        let mode = Self::code_mode(vmcs);
        let base = |f| vmcs.read(f);
        let mut seg_base = [
            base(VmcsField::GuestEsBase),
            base(VmcsField::GuestCsBase),
            base(VmcsField::GuestSsBase),
            base(VmcsField::GuestDsBase),
            base(VmcsField::GuestFsBase),
            base(VmcsField::GuestGsBase),
        ];
        if mode == CodeMode::Bits64 {
            // Only FS and GS have bases in 64-bit mode (SDM Vol. 3A 3.4.4).
            for b in &mut seg_base[..4] {
                *b = 0;
            }
        }
        CpuState {
            regs: *regs,
            rip: vmcs.read(VmcsField::GuestRip),
            rflags: vmcs.read(VmcsField::GuestRflags),
            mode,
            seg_base,
            cpl: guest_cpl(vmcs),
            paging: guest_paging(vmcs),
        }
    }

    /// Handles an IO-instruction exit if coalescing applies.
    pub fn handle<V: Vmcs, M: GuestMemory, E: IoEnv>(
        &mut self,
        vmcs: &mut V,
        regs: &mut GuestRegs,
        mem: &mut M,
        env: &mut E,
        stats: &mut Stats,
    ) -> Outcome {
        let outcome = self.try_handle(vmcs, regs, mem, env, &mut stats.io);
        if let Outcome::Fallback(reason) = outcome {
            let slot = &mut stats.io.stops[reason.index()];
            *slot = slot.saturating_add(1);
        }
        outcome
    }

    fn try_handle<V: Vmcs, M: GuestMemory, E: IoEnv>(
        &mut self,
        vmcs: &mut V,
        regs: &mut GuestRegs,
        mem: &mut M,
        env: &mut E,
        io: &mut IoStats,
    ) -> Outcome {
        if !self.settings.enabled {
            return Outcome::Fallback(StopReason::Off);
        }
        // Instructions observable one at a time: leave them to the CPU.
        if vmcs.read(VmcsField::GuestRflags) & RFLAGS_TF != 0
            || vmcs.read(VmcsField::GuestDr7) & DR7_ENABLED != 0
        {
            return Outcome::Fallback(StopReason::SingleStep);
        }
        let mut state = Self::cpu_state(vmcs, regs);
        let rip_linear = if state.mode == CodeMode::Bits64 {
            state.rip
        } else {
            state.seg_base[Seg::Cs as usize].wrapping_add(state.rip) & 0xFFFF_FFFF
        };
        let Ok(gpa) = translate(&*mem, &state.paging, rip_linear, Access::fetch(state.cpl)) else {
            return Outcome::Fallback(StopReason::CodeUnmapped);
        };
        let mode = state.mode;
        let extent = self.settings.extent;
        let mut code = GuestCode::new(&*mem, state.paging, state.cpl);
        if mode != CodeMode::Bits64 {
            // IP wraps at 64 KiB (16-bit) or 4 GiB and must stay inside CS: the scan
            // never runs past what the CPU could fetch.
            code = code.with_cs(
                state.seg_base[Seg::Cs as usize],
                vmcs.read(VmcsField::GuestCsLimit) as u32,
            );
        }
        let block = match self.cache.lookup(gpa, mode, &extent, &mut code, rip_linear) {
            Some(b) => {
                io.cache_hits = io.cache_hits.saturating_add(1);
                *b
            }
            None => {
                io.cache_misses = io.cache_misses.saturating_add(1);
                let b = block::scan(&mut code, rip_linear, mode, &extent);
                self.cache.insert(gpa, mode, &extent, b);
                b
            }
        };
        // The first instruction must be exactly the one the CPU exited on.
        let q = IoQualification::from_qualification(vmcs.read(VmcsField::ExitQualification));
        let len = vmcs.read(VmcsField::ExitInstructionLength);
        match block.insns().first() {
            Some(first) if u64::from(first.len) == len && matches_exit(&first.op, &q) => {}
            _ => return Outcome::Fallback(StopReason::Off),
        }
        let r = exec::run(
            block.insns(),
            block.offsets(),
            block.code_len(),
            state.rip,
            gpa,
            block.end_reason(),
            &mut state,
            mem,
            env,
            &self.settings.limits,
        );
        if r.executed == 0 {
            return Outcome::Fallback(r.stop);
        }
        // Write everything back in one go.
        *regs = state.regs;
        vmcs.write(VmcsField::GuestRip, state.rip);
        vmcs.write(VmcsField::GuestRflags, state.rflags);
        // At least one instruction retired: STI/MOV-SS blocking is over (SDM 25.4.2).
        let irq = vmcs.read(VmcsField::GuestInterruptibilityState);
        if irq & BLOCKING_STI_MOVSS != 0 {
            vmcs.write(
                VmcsField::GuestInterruptibilityState,
                irq & !BLOCKING_STI_MOVSS,
            );
        }
        io.instructions = io.instructions.saturating_add(u64::from(r.io_insns));
        io.string_elements = io
            .string_elements
            .saturating_add(u64::from(r.string_elements));
        io.emulated = io.emulated.saturating_add(u64::from(r.executed));
        let bucket = &mut io.blocks[IoStats::bucket(u64::from(r.executed))];
        *bucket = bucket.saturating_add(1);
        let stop = &mut io.stops[r.stop.index()];
        *stop = stop.saturating_add(1);
        Outcome::Done
    }
}

/// Whether a decoded IO instruction is the one the exit qualification describes
/// (SDM Table 28-5): direction, size, string, REP, port encoding and port.
fn matches_exit(op: &Op, q: &IoQualification) -> bool {
    let size = |w: Width| w.bytes() == q.size;
    match *op {
        Op::In { width, port } => q.is_in && !q.string && size(width) && port_matches(port, q),
        Op::Out { width, port } => !q.is_in && !q.string && size(width) && port_matches(port, q),
        Op::Ins { width, rep, .. } => q.is_in && q.string && q.rep == rep && size(width),
        Op::Outs { width, rep, .. } => !q.is_in && q.string && q.rep == rep && size(width),
        _ => false,
    }
}

fn port_matches(port: PortSrc, q: &IoQualification) -> bool {
    match port {
        PortSrc::Imm(p) => q.immediate && u16::from(p) == q.port,
        PortSrc::Dx => !q.immediate,
    }
}
