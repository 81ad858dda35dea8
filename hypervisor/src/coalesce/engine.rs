//! The coalescer as the VM-exit path uses it: on an IO-instruction exit, find the
//! block at the exiting RIP (block cache, else decode), check that its first
//! instruction is the one the CPU reported, emulate the block against the devices and
//! the register file, and write RIP, RFLAGS and the registers back in one go.
//!
//! When anything makes the block unusable (single-stepping, a mismatch with the VMCS,
//! code that does not translate), the caller falls back to the one-instruction IO
//! handler in `exits`, which is always correct; the fallback is counted as a stop.

use crate::coalesce::block::{self, CodeFetch, Extent, GuestCode};
use crate::coalesce::cache::BlockCache;
use crate::coalesce::exec::{self, io_permitted, CpuState, IoEnv, Limits};
use crate::coalesce::insn::{CodeMode, Op, PortSrc, Seg, StopReason};
use crate::coalesce::segment::SegRegs;
use crate::coalesce::stats::IoStats;
use crate::vmx::exit::IoQualification;
use crate::vmx::guest_state::{
    guest_cpl, guest_cs_32bit, guest_long_mode, guest_paging, retire_interrupt_shadow,
};
use crate::vmx::vmcs::{interruptibility, Vmcs, VmcsField};
use crate::x86::guest_mem::{translate, Access, GuestMemory};
use crate::x86::regs::GuestRegs;
use crate::x86::Width;
use crate::x86::{Cr0, Rflags};

/// Taken transfers (JMP, Jcc, CALL, RET) out of the current extent one exit may follow
/// in 64-bit code with the `page` and `line` policies; each starts a new extent at
/// its target (docs/COALESCING.md, "Leaving the extent").
pub const MAX_HOPS: u32 = 8;

/// Exit sites the engine remembers (direct-mapped by linear RIP).
pub const SITE_MEMORY: usize = 256;
/// A barren site (its last full run did not pay: see [`EXIT_COST_IN_INSNS`]) sends its
/// exits to the one-instruction handler, except every this many exits, when it runs in
/// full again to notice a burst that appeared (a driver changing phase). Each re-probe
/// that does not pay either doubles the interval, up to [`REPROBE_MAX`]: a kernel's
/// `inb`/`outb` helpers exit tens of thousands of times and never pay.
pub const REPROBE_EVERY: u16 = 16;
pub const REPROBE_MAX: u16 = 1024;

/// What an exit round trip costs in emulated instructions: about 2,000 cycles per
/// in-kernel IO exit on current Intel hardware (kvm-unit-tests' `outl_to_kernel`)
/// against 40-60 cycles per instruction emulated from a cached block (the coalescer
/// micro-benchmark, docs/BENCHMARKS.md). A run that emulated `n` instructions to
/// take `k` IO instructions in one exit saved `k - 1` exits: it paid if
/// `(k - 1) * EXIT_COST_IN_INSNS >= n`.
pub const EXIT_COST_IN_INSNS: u32 = 32;

/// What the engine remembers of one exit site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Site {
    /// Linear RIP of the exiting instruction; 0 = empty slot.
    rip: u64,
    /// Exits between two full runs here: 0 while the last full run paid (every exit
    /// runs), else [`REPROBE_EVERY`] doubling up to [`REPROBE_MAX`].
    interval: u16,
    /// Exits sent to the one-instruction handler since the last full run.
    since: u16,
}

impl Site {
    /// Whether this exit goes to the handler (counting it) instead of running.
    fn skip(&mut self) -> bool {
        if self.interval == 0 || self.since + 1 >= self.interval {
            return false;
        }
        self.since += 1;
        true
    }

    /// Records a full run that paid or not.
    fn ran(&mut self, paid: bool) {
        self.since = 0;
        self.interval = match (paid, self.interval) {
            (true, _) => 0,
            (false, 0) => REPROBE_EVERY,
            (false, n) => n.saturating_mul(2).min(REPROBE_MAX),
        };
    }
}

/// RFLAGS.TF (single-step), RFLAGS.VM; DR7 L0-L3/G0-G3 (enabled breakpoints).
const DR7_ENABLED: u64 = 0xFF;

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

/// The coalescer of one vCPU. The block cache is borrowed: at about 90 KiB it lives
/// in a static of the kernel (`BlockCache::new` is const), not on its stack.
pub struct Coalescer<'c> {
    pub settings: Settings,
    cache: &'c mut BlockCache,
    /// Why the last coalesced run stopped and the RIP it stopped at (for the
    /// stop-site statistics).
    last_stop: (StopReason, u64),
    /// Per-site memory of whether coalescing paid off there. A run past the exiting
    /// instruction costs emulation of every instruction up to the quiet limit; at a
    /// site where no further IO instruction follows (most IO exits of a Linux boot:
    /// one `inb` or `outb` in a function, then ordinary code) that is pure cost.
    sites: [Site; SITE_MEMORY],
}

impl<'c> Coalescer<'c> {
    pub fn new(settings: Settings, cache: &'c mut BlockCache) -> Self {
        Coalescer {
            settings,
            cache,
            last_stop: (StopReason::Off, 0),
            sites: [Site::default(); SITE_MEMORY],
        }
    }

    fn site_slot(rip_linear: u64) -> usize {
        // Fibonacci hashing: kernel code addresses differ mostly in the low bits.
        (rip_linear.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % SITE_MEMORY
    }

    /// The guest's code mode from CR0.PE, EFER.LMA/CS.L and CS.D (SDM Vol. 3A 3.4.5
    /// "Segment Descriptors").
    fn code_mode(vmcs: &impl Vmcs) -> CodeMode {
        if guest_long_mode(vmcs) {
            CodeMode::Bits64
        } else if vmcs.read(VmcsField::GuestCr0) & Cr0::PE.bits() != 0 && guest_cs_32bit(vmcs) {
            CodeMode::Bits32
        } else {
            CodeMode::Bits16
        }
    }

    fn cpu_state(vmcs: &impl Vmcs, regs: &GuestRegs) -> CpuState {
        let mode = Self::code_mode(vmcs);
        let f = |x| vmcs.read(x);
        let fields = [
            (
                VmcsField::GuestEsBase,
                VmcsField::GuestEsLimit,
                VmcsField::GuestEsAccessRights,
            ),
            (
                VmcsField::GuestCsBase,
                VmcsField::GuestCsLimit,
                VmcsField::GuestCsAccessRights,
            ),
            (
                VmcsField::GuestSsBase,
                VmcsField::GuestSsLimit,
                VmcsField::GuestSsAccessRights,
            ),
            (
                VmcsField::GuestDsBase,
                VmcsField::GuestDsLimit,
                VmcsField::GuestDsAccessRights,
            ),
            (
                VmcsField::GuestFsBase,
                VmcsField::GuestFsLimit,
                VmcsField::GuestFsAccessRights,
            ),
            (
                VmcsField::GuestGsBase,
                VmcsField::GuestGsLimit,
                VmcsField::GuestGsAccessRights,
            ),
        ];
        let mut segs = SegRegs {
            base: [0; 6],
            limit: [0; 6],
            ar: [0; 6],
        };
        for (k, (b, l, a)) in fields.into_iter().enumerate() {
            segs.base[k] = f(b);
            segs.limit[k] = f(l) as u32;
            segs.ar[k] = f(a) as u32;
        }
        if mode == CodeMode::Bits64 {
            // Only FS and GS have bases in 64-bit mode (SDM Vol. 3A 3.2.4 "Segmentation
            // in IA-32e Mode").
            for b in &mut segs.base[..4] {
                *b = 0;
            }
        }
        CpuState {
            regs: *regs,
            rsp: vmcs.read(VmcsField::GuestRsp),
            rip: vmcs.read(VmcsField::GuestRip),
            rflags: vmcs.read(VmcsField::GuestRflags),
            mode,
            segs,
            cpl: guest_cpl(vmcs),
            paging: guest_paging(vmcs),
            quiet: 0,
            // Any shadow at the exit covered the exiting instruction, which retires.
            sti_shadow: false,
        }
    }

    /// Handles an IO-instruction exit if coalescing applies: `io` and `len` are the
    /// exit's qualification and instruction length, as the run loop read them.
    #[allow(clippy::too_many_arguments)]
    pub fn handle<V: Vmcs, M: GuestMemory, E: IoEnv>(
        &mut self,
        io: &IoQualification,
        len: u64,
        vmcs: &mut V,
        regs: &mut GuestRegs,
        mem: &mut M,
        env: &mut E,
        stats: &mut IoStats,
    ) -> Outcome {
        let mode = Self::code_mode(vmcs);
        let cs_base = vmcs.read(VmcsField::GuestCsBase);
        let exit_rip = vmcs.read(VmcsField::GuestRip);
        self.last_stop = (StopReason::Off, exit_rip);
        let exit_linear = code_linear(mode, cs_base, exit_rip);
        let outcome = self.try_handle(io, len, vmcs, regs, mem, env, stats, exit_linear);
        let (mut reason, rip) = self.last_stop;
        if let Outcome::Fallback(r) = outcome {
            let slot = &mut stats.stops[r.index()];
            *slot = slot.saturating_add(1);
            reason = r;
        }
        let stop_rip = code_linear(mode, cs_base, rip);
        let paging = guest_paging(vmcs);
        let cpl = guest_cpl(vmcs);
        stats.sites.record(stop_rip, reason.index() as u8, || {
            describe(&*mem, paging, cpl, stop_rip, mode)
        });
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn try_handle<V: Vmcs, M: GuestMemory, E: IoEnv>(
        &mut self,
        q: &IoQualification,
        len: u64,
        vmcs: &mut V,
        regs: &mut GuestRegs,
        mem: &mut M,
        env: &mut E,
        io: &mut IoStats,
        exit_linear: u64,
    ) -> Outcome {
        if !self.settings.enabled {
            return Outcome::Fallback(StopReason::Off);
        }
        // A barren site goes straight to the one-instruction handler, before any page
        // walk, cache lookup or register copy: there the coalescer must cost no more
        // than coalescing off (docs/COALESCING.md, "Site memory: coalescing only where
        // it pays").
        let slot = Self::site_slot(exit_linear);
        let site = &mut self.sites[slot];
        if site.rip == exit_linear && site.skip() {
            return Outcome::Fallback(StopReason::Learned);
        }
        // Instructions observable one at a time: leave them to the CPU.
        if vmcs.read(VmcsField::GuestRflags) & Rflags::TF.bits() != 0
            || vmcs.read(VmcsField::GuestDr7) & DR7_ENABLED != 0
        {
            return Outcome::Fallback(StopReason::SingleStep);
        }
        let mut state = Self::cpu_state(vmcs, regs);
        let rip_linear = exit_linear;
        let Ok(gpa) = translate(&*mem, &state.paging, rip_linear, Access::fetch(state.cpl)) else {
            return Outcome::Fallback(StopReason::CodeUnmapped);
        };
        let extent = self.settings.extent;
        let cs_limit = vmcs.read(VmcsField::GuestCsLimit) as u32;
        let limits = self.settings.limits;
        let mut block = self.block_at(&*mem, &state, cs_limit, gpa, rip_linear, io);
        // The first instruction must be exactly the one the CPU exited on.
        match block.insns().first() {
            Some(first) if u64::from(first.len) == len && matches_exit(&first.op, q) => {}
            // Not even the exiting instruction fits the extent (or its bytes).
            None => return Outcome::Fallback(block.end_reason()),
            Some(_) => return Outcome::Fallback(StopReason::Off),
        }
        let mut follow = follow_range(&*mem, &state, &extent, rip_linear, cs_limit);
        let mut hops = 0u32;
        let (mut executed, mut io_insns, mut elements) = (0u32, 0u32, 0u32);
        let mut block_gpa = gpa;
        let stop = loop {
            let block_rip = state.rip;
            let r = exec::run_following(
                block.insns(),
                block.offsets(),
                block.code_len(),
                block_rip,
                block_gpa,
                block.end_reason(),
                &mut state,
                mem,
                env,
                &Limits {
                    max_insns: limits.max_insns.saturating_sub(executed),
                    max_string_elements: limits.max_string_elements.saturating_sub(elements),
                    max_quiet: limits.max_quiet,
                },
                follow,
                hops < MAX_HOPS,
            );
            executed = executed.saturating_add(r.executed);
            io_insns = io_insns.saturating_add(r.io_insns);
            elements = elements.saturating_add(r.string_elements);
            // A block holds at most MAX_BLOCK_INSNS instructions: when the run simply
            // ran off the end of a full block, the burst goes on in the next one, as
            // long as the extent's end is fixed (page, line) and nothing else stops it.
            // The first instruction of each run is exempt from the IO-permission
            // check, so blocks are only chained where that check cannot matter.
            let block_end = block_rip.wrapping_add(u64::from(block.code_len()));
            let ran_off_full_block = r.stop == StopReason::Limit
                && block.end_reason() == StopReason::Limit
                && state.rip == block_end;
            // A branch into the extent but outside this block (typically the head of
            // the polling loop the exit happened in) was executed: go on there.
            let followed_branch =
                r.stop == StopReason::BranchOut && !(block_rip..block_end).contains(&state.rip);
            let chainable = follow.is_some()
                && executed < limits.max_insns
                && r.executed > 0
                && io_permitted(&state);
            if !((ran_off_full_block || followed_branch) && chainable) {
                break r.stop;
            }
            // Emulation must not hold a timer tick back (see `IoEnv::timer_due`).
            if env.timer_due() {
                break StopReason::TimerDue;
            }
            if let Some((lo, hi)) = follow {
                if !(lo..hi).contains(&state.rip) {
                    // A transfer left the extent: the target's extent is the new one.
                    hops += 1;
                    let target = linear_rip(&state);
                    follow = follow_range(&*mem, &state, &extent, target, cs_limit);
                }
            }
            let next_linear = linear_rip(&state);
            let Ok(next_gpa) =
                translate(&*mem, &state.paging, next_linear, Access::fetch(state.cpl))
            else {
                break StopReason::CodeUnmapped;
            };
            block = self.block_at(&*mem, &state, cs_limit, next_gpa, next_linear, io);
            block_gpa = next_gpa;
        };
        if executed == 0 {
            return Outcome::Fallback(stop);
        }
        let site = &mut self.sites[slot];
        if site.rip != rip_linear {
            *site = Site {
                rip: rip_linear,
                ..Site::default()
            };
        }
        let paid = io_insns
            .saturating_sub(1)
            .saturating_mul(EXIT_COST_IN_INSNS)
            >= executed;
        site.ran(paid && io_insns > 1);
        // Write everything back in one go.
        *regs = state.regs;
        vmcs.write(VmcsField::GuestRip, state.rip);
        vmcs.write(VmcsField::GuestRsp, state.rsp);
        vmcs.write(VmcsField::GuestRflags, state.rflags);
        // At least one instruction retired; a run that ends right after an STI that
        // set IF leaves the CPU in its shadow (blocking by STI, SDM Vol. 3C 25.4.2
        // "Guest Non-Register State").
        retire_interrupt_shadow(vmcs);
        if state.sti_shadow {
            let irq = vmcs.read(VmcsField::GuestInterruptibilityState);
            vmcs.write(
                VmcsField::GuestInterruptibilityState,
                irq | interruptibility::STI,
            );
        }
        io.instructions = io.instructions.saturating_add(u64::from(io_insns));
        io.string_elements = io.string_elements.saturating_add(u64::from(elements));
        io.emulated = io.emulated.saturating_add(u64::from(executed));
        let bucket = &mut io.blocks[IoStats::bucket(u64::from(executed))];
        *bucket = bucket.saturating_add(1);
        let slot = &mut io.stops[stop.index()];
        *slot = slot.saturating_add(1);
        self.last_stop = (stop, state.rip);
        Outcome::Done
    }

    /// The block at `rip_linear` (guest-physical `gpa`): from the cache when its code
    /// bytes are unchanged, else decoded and cached.
    fn block_at<M: GuestMemory>(
        &mut self,
        mem: &M,
        state: &CpuState,
        cs_limit: u32,
        gpa: u64,
        rip_linear: u64,
        io: &mut IoStats,
    ) -> &block::Block {
        let mode = state.mode;
        let extent = self.settings.extent;
        let mut code = GuestCode::new(mem, state.paging, state.cpl).with_known(rip_linear, gpa);
        if mode != CodeMode::Bits64 {
            // IP wraps at 64 KiB (16-bit) or 4 GiB and must stay inside CS: the scan
            // never runs past what the CPU could fetch.
            code = code.with_cs(state.segs.base[Seg::Cs as usize], cs_limit);
        }
        // By reference: a block is over a kilobyte, and a chained run looks up
        // several.
        let slot = match self
            .cache
            .lookup_slot(gpa, mode, &extent, &mut code, rip_linear)
        {
            Some(slot) => {
                io.cache_hits = io.cache_hits.saturating_add(1);
                slot
            }
            None => {
                io.cache_misses = io.cache_misses.saturating_add(1);
                let b = block::scan(&mut code, rip_linear, mode, &extent);
                self.cache.insert_slot(gpa, mode, &extent, b)
            }
        };
        self.cache.block(slot)
    }
}

/// Mnemonic and first code bytes of the instruction at `linear` (stop statistics).
fn describe<M: GuestMemory>(
    mem: &M,
    paging: crate::x86::guest_mem::PagingContext,
    cpl: u8,
    linear: u64,
    mode: CodeMode,
) -> (&'static str, [u8; 8], u8) {
    let mut buf = [0u8; crate::coalesce::decode::MAX_INSN_LEN];
    let got = GuestCode::new(mem, paging, cpl).fetch(linear, &mut buf);
    let got = got.min(buf.len());
    let (name, len) = crate::coalesce::decode::mnemonic(&buf[..got], mode).unwrap_or(("?", 8));
    let mut bytes = [0u8; 8];
    let n = got.min(8).min(usize::from(len));
    bytes[..n].copy_from_slice(&buf[..n]);
    (name, bytes, n as u8)
}

/// The RIP range a run may continue into: the extent around the exiting instruction
/// when its bounds are fixed (the page as the guest's paging maps it, or the aligned
/// line), clipped to what IP can reach inside CS outside 64-bit mode. `None` for the
/// policies measured from the exiting instruction (bytes, instructions), which never
/// chain.
fn follow_range<M: GuestMemory>(
    mem: &M,
    state: &CpuState,
    extent: &Extent,
    rip_linear: u64,
    cs_limit: u32,
) -> Option<(u64, u64)> {
    let size = match *extent {
        Extent::Page => block::leaf_page_size(mem, &state.paging, rip_linear),
        Extent::Line(n) => u64::from(n),
        Extent::Bytes(_) | Extent::Insns(_) => return None,
    };
    if !size.is_power_of_two() {
        return None;
    }
    let start = rip_linear & !(size - 1);
    let end = start.checked_add(size)?;
    if state.mode == CodeMode::Bits64 {
        return Some((start, end));
    }
    let base = state.segs.base[Seg::Cs as usize];
    let lo = start.wrapping_sub(base) & 0xFFFF_FFFF;
    let hi = lo + size;
    let ip_end = match state.mode {
        CodeMode::Bits16 => 0x1_0000,
        _ => 0x1_0000_0000,
    };
    let hi = hi.min(u64::from(cs_limit) + 1).min(ip_end);
    (lo < hi && (lo..hi).contains(&state.rip)).then_some((lo, hi))
}

/// The linear address of the instruction at `state.rip`.
fn linear_rip(state: &CpuState) -> u64 {
    code_linear(state.mode, state.segs.base[Seg::Cs as usize], state.rip)
}

/// The linear address of code at `rip` in `mode` with CS base `cs_base` (64-bit mode
/// ignores the base; elsewhere the sum wraps at 4 GiB).
fn code_linear(mode: CodeMode, cs_base: u64, rip: u64) -> u64 {
    if mode == CodeMode::Bits64 {
        rip
    } else {
        cs_base.wrapping_add(rip) & 0xFFFF_FFFF
    }
}

/// Whether a decoded IO instruction is the one the exit qualification describes
/// (SDM Vol. 3C Table 28-5 "Exit Qualification for I/O Instructions"): direction,
/// size, string, REP, port encoding and port.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Exits until the site's next full run (counting that run).
    fn exits_to_next_run(site: &mut Site) -> u32 {
        let mut n = 1;
        while site.skip() {
            n += 1;
        }
        n
    }

    #[test]
    fn reprobe_interval_doubles_to_its_cap_and_resets_when_a_run_pays() {
        let mut site = Site::default();
        assert!(!site.skip(), "a new site runs");
        let mut gaps = Vec::new();
        for _ in 0..9 {
            site.ran(false);
            gaps.push(exits_to_next_run(&mut site));
        }
        assert_eq!(gaps, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024]);
        site.ran(true);
        assert!(!site.skip() && !site.skip(), "a site that pays always runs");
        site.ran(false);
        assert_eq!(exits_to_next_run(&mut site), 16);
    }
}
