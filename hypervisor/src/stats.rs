//! Run statistics — VM exits by basic exit reason (SDM Vol. 3D Appendix C "VMX Basic
//! Exit Reasons"), injected exceptions, refused MSR accesses — how a guest run ended,
//! and the one-line `sluice-stats: {json}` record the kernel prints at the end of a run
//! for xtask and benchmarks to parse.
//!
//! The JSON is written by hand (no heap, no serde): keys are fixed ASCII, the
//! only free text is the guest name, which is escaped per RFC 8259 section 7.

use core::fmt::{self, Write};

use crate::coalesce::stats::{IoStats, StopSites, BLOCK_BUCKETS, SITES_PRINTED, SITE_SLOTS};
use crate::devices::board::{ResetSource, Ticks};
use crate::devices::bus::IoBus;
use crate::vmx::exit::exit_reason_name;

/// Basic exit reasons counted individually (0..=79 covers every reason the
/// SDM defines, up to WRMSRLIST); higher numbers land in `exits_other`.
pub const EXIT_SLOTS: usize = 80;

/// Counters kept by the exit dispatcher. Unknown-port counters live in the
/// [`IoBus`] that saw the accesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// VM exits by basic exit reason.
    pub exits: [u64; EXIT_SLOTS],
    /// VM exits with a basic reason ≥ [`EXIT_SLOTS`].
    pub exits_other: u64,
    /// Exceptions the hypervisor injected into the guest (#GP, #UD, re-injected faults).
    pub injected_exceptions: u64,
    /// RDMSR/WRMSR of MSRs outside the allow-list (answered with #GP).
    pub unknown_msrs: u64,
    /// The MSRs whose RDMSR ended in #GP, busiest kept (unknown MSRs, MSRs sluice
    /// refuses on purpose).
    pub msr_gp_reads: MsrTop,
    /// The same for WRMSR (unknown MSRs and refused values).
    pub msr_gp_writes: MsrTop,
    /// External interrupts injected, by IRQ line (0-15).
    pub irq_injected: [u64; 16],
    /// Spurious vectors (IRQ7/IRQ15 with nothing in service) handed to the guest.
    pub irq_spurious: u64,
    /// Rising edges of PIT OUT0 raised on IRQ0.
    pub timer_ticks: u64,
    /// Timer ticks the guest never saw: with `timer.lost_ticks = discard`, edges that
    /// came while IRQ0 was still requested, or several edges between two looks; with
    /// `delay`, owed ticks dropped because the guest masked IRQ0 or owed too many.
    pub timer_ticks_lost: u64,
    /// Owed ticks raised late, after the guest handled the previous one (`delay`).
    pub timer_ticks_reinjected: u64,
    /// Port IO and coalescing.
    pub io: IoStats,
}

/// MSRs tracked individually per direction in [`MsrTop`].
pub const TOP_MSRS: usize = 8;

/// #GP count of one MSR number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrCount {
    pub msr: u32,
    pub count: u64,
}

/// The busiest MSR numbers of one direction that ended in #GP. Like the unknown-port
/// table: a newcomer to a full table replaces an entry seen only once, so MSRs a guest
/// keeps trying stay and one-off probes churn among themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrTop {
    entries: [Option<MsrCount>; TOP_MSRS],
}

impl MsrTop {
    pub const fn new() -> Self {
        MsrTop {
            entries: [None; TOP_MSRS],
        }
    }

    pub fn note(&mut self, msr: u32) {
        if let Some(e) = self.entries.iter_mut().flatten().find(|e| e.msr == msr) {
            e.count = e.count.saturating_add(1);
            return;
        }
        let slot = match self.entries.iter().position(|e| e.is_none()) {
            Some(i) => i,
            None => match self
                .entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.map(|e| (i, e.count)))
                .min_by_key(|&(_, c)| c)
            {
                Some((i, c)) if c <= 1 => i,
                _ => return,
            },
        };
        self.entries[slot] = Some(MsrCount { msr, count: 1 });
    }

    /// Busiest first (ties by MSR number), then `None`s.
    pub fn sorted(&self) -> [Option<MsrCount>; TOP_MSRS] {
        let mut out = self.entries;
        out.sort_unstable_by_key(|e| match e {
            Some(e) => (0u8, u64::MAX - e.count, e.msr),
            None => (1, 0, 0),
        });
        out
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub const fn new() -> Self {
        Stats {
            exits: [0; EXIT_SLOTS],
            exits_other: 0,
            injected_exceptions: 0,
            unknown_msrs: 0,
            msr_gp_reads: MsrTop::new(),
            msr_gp_writes: MsrTop::new(),
            irq_injected: [0; 16],
            irq_spurious: 0,
            timer_ticks: 0,
            timer_ticks_lost: 0,
            timer_ticks_reinjected: 0,
            io: IoStats::new(),
        }
    }

    /// Counts one exit; takes the raw exit-reason field (only bits 15:0 matter).
    pub fn count_exit(&mut self, raw_reason: u32) {
        let basic = (raw_reason & 0xFFFF) as usize;
        let slot = match self.exits.get_mut(basic) {
            Some(s) => s,
            None => &mut self.exits_other,
        };
        *slot = slot.saturating_add(1);
    }

    /// Counts the timer edges one look at the devices saw.
    pub fn count_ticks(&mut self, t: Ticks) {
        self.timer_ticks = self.timer_ticks.saturating_add(t.raised);
        self.timer_ticks_lost = self.timer_ticks_lost.saturating_add(t.lost);
        self.timer_ticks_reinjected = self.timer_ticks_reinjected.saturating_add(t.reinjected);
    }

    /// Counts an RDMSR (`write` false) or WRMSR of `msr` that ended in #GP.
    pub fn note_msr_gp(&mut self, msr: u32, write: bool) {
        if write {
            self.msr_gp_writes.note(msr);
        } else {
            self.msr_gp_reads.note(msr);
        }
    }

    /// Exits counted for a basic reason.
    pub fn exit_count(&self, basic: u16) -> u64 {
        match self.exits.get(usize::from(basic)) {
            Some(&n) => n,
            None => 0,
        }
    }

    pub fn total_exits(&self) -> u64 {
        self.exits
            .iter()
            .fold(self.exits_other, |a, &n| a.saturating_add(n))
    }
}

/// How a guest run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// The guest asked to end (hypercall EXIT).
    Hypercall,
    TripleFault,
    EptViolation,
    EptMisconfiguration,
    /// HLT with nothing that could wake the guest.
    Halt,
    /// VM entry failed (the guest state or MSR-load area was rejected).
    EntryFailure,
    /// An exit the hypervisor does not handle.
    Fatal,
    /// The guest asked for a system reset; sluice stops it instead.
    Reset(ResetSource),
}

impl EndKind {
    /// Kebab-case name used in the stats line.
    pub const fn name(self) -> &'static str {
        match self {
            EndKind::Hypercall => "hypercall",
            EndKind::TripleFault => "triple-fault",
            EndKind::EptViolation => "ept-violation",
            EndKind::EptMisconfiguration => "ept-misconfiguration",
            EndKind::Halt => "halt",
            EndKind::EntryFailure => "entry-failure",
            EndKind::Fatal => "fatal",
            EndKind::Reset(_) => "reset",
        }
    }
}

impl fmt::Display for EndKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes `s` as a JSON string literal (quotes included).
pub fn write_json_string(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(w, "\\u{:04x}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    w.write_char('"')
}

/// Writes the run's statistics as exactly one line:
///
/// ```text
/// sluice-stats: {"guest":"hello","end":"hypercall","exit_code":0,
///   "exits":{"cpuid":2,"io_instruction":5},
///   "unknown_ports":{"reads":1,"writes":0,"top":[{"port":"0x0070","reads":1,"writes":0}]},
///   "injected_exceptions":0,"unknown_msrs":0}
/// ```
/// (shown wrapped; the real line has no breaks). `exits` lists reasons with a
/// non-zero count in reason order, keyed by [`exit_reason_name`]; reasons
/// without a name appear as `reason_N`, reasons past the table as `other`.
/// `top` is busiest first.
pub fn write_stats_line(
    w: &mut impl Write,
    guest: &str,
    end: EndKind,
    exit_code: u32,
    stats: &Stats,
    bus: &IoBus,
) -> fmt::Result {
    w.write_str("sluice-stats: {\"guest\":")?;
    write_json_string(w, guest)?;
    write!(
        w,
        ",\"end\":\"{}\",\"exit_code\":{},\"exits\":{{",
        end.name(),
        exit_code
    )?;
    let mut first = true;
    let mut sep = |w: &mut _| -> fmt::Result {
        if !core::mem::take(&mut first) {
            Write::write_char(w, ',')?;
        }
        Ok(())
    };
    for (reason, &n) in stats.exits.iter().enumerate() {
        if n == 0 {
            continue;
        }
        sep(w)?;
        match exit_reason_name(reason as u32) {
            "unknown" => write!(w, "\"reason_{reason}\":{n}")?,
            name => write!(w, "\"{name}\":{n}")?,
        }
    }
    if stats.exits_other != 0 {
        sep(w)?;
        write!(w, "\"other\":{}", stats.exits_other)?;
    }
    write!(
        w,
        "}},\"unknown_ports\":{{\"reads\":{},\"writes\":{},\"top\":[",
        bus.unknown_reads(),
        bus.unknown_writes()
    )?;
    for (i, p) in bus.unknown_top().iter().flatten().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(
            w,
            "{{\"port\":\"{:#06x}\",\"reads\":{},\"writes\":{}}}",
            p.port, p.reads, p.writes
        )?;
    }
    write!(
        w,
        "]}},\"injected_exceptions\":{},\"unknown_msrs\":{},\"msr_gp\":{{\"rdmsr\":",
        stats.injected_exceptions, stats.unknown_msrs
    )?;
    write_msr_top(w, &stats.msr_gp_reads)?;
    w.write_str(",\"wrmsr\":")?;
    write_msr_top(w, &stats.msr_gp_writes)?;
    w.write_str("},\"interrupts\":{\"injected\":{")?;
    let mut first = true;
    for (irq, &n) in stats.irq_injected.iter().enumerate() {
        if n != 0 {
            if !core::mem::take(&mut first) {
                w.write_char(',')?;
            }
            write!(w, "\"irq{irq}\":{n}")?;
        }
    }
    write!(
        w,
        "}},\"spurious\":{},\"timer_ticks\":{},\"timer_ticks_lost\":{},\"timer_ticks_reinjected\":{}}},",
        stats.irq_spurious, stats.timer_ticks, stats.timer_ticks_lost, stats.timer_ticks_reinjected
    )?;
    write_io(w, stats)?;
    w.write_str("}\n")
}

/// `[{"msr":"0xe8","count":3},...]`, busiest first.
fn write_msr_top(w: &mut impl Write, top: &MsrTop) -> fmt::Result {
    w.write_char('[')?;
    for (i, e) in top.sorted().iter().flatten().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(w, "{{\"msr\":\"{:#x}\",\"count\":{}}}", e.msr, e.count)?;
    }
    w.write_char(']')
}

/// The `"io"` object: exits, instructions, the block histogram, stop reasons, cache.
fn write_io(w: &mut impl Write, stats: &Stats) -> fmt::Result {
    let io = &stats.io;
    write!(
        w,
        "\"io\":{{\"exits\":{},\"instructions\":{},\"string_elements\":{},\"emulated\":{},\"blocks\":{{",
        stats.exit_count(crate::vmx::exit::exit_reason::IO_INSTRUCTION),
        io.instructions,
        io.string_elements,
        io.emulated
    )?;
    for (i, (name, n)) in BLOCK_BUCKETS.iter().zip(io.blocks).enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(w, "\"{name}\":{n}")?;
    }
    w.write_str("},\"stops\":{")?;
    let mut first = true;
    for reason in crate::coalesce::insn::StopReason::ALL {
        let n = io.stops[reason.index()];
        if n != 0 {
            if !core::mem::take(&mut first) {
                w.write_char(',')?;
            }
            write!(w, "\"{}\":{n}", reason.name())?;
        }
    }
    write!(
        w,
        "}},\"cache\":{{\"hits\":{},\"misses\":{}}},\"cycles\":{}",
        io.cache_hits, io.cache_misses, io.cycles
    )?;
    write_sites(w, &io.sites)?;
    w.write_char('}')
}

/// `"stop_sites"`: the busiest sites, and `"stop_insns"`: the same sites summed by
/// (mnemonic, reason), busiest first. Omitted when no site was recorded.
fn write_sites(w: &mut impl Write, sites: &StopSites) -> fmt::Result {
    if sites.used == 0 {
        return Ok(());
    }
    let reason_name = |r: u8| {
        crate::coalesce::insn::StopReason::ALL
            .get(usize::from(r))
            .map_or("unknown", |r| r.name())
    };
    let (top, n) = sites.top::<SITES_PRINTED>();
    w.write_str(",\"stop_sites\":[")?;
    for (i, &k) in top[..n].iter().enumerate() {
        let s = &sites.slots[k];
        if i > 0 {
            w.write_char(',')?;
        }
        write!(
            w,
            "{{\"rip\":\"{:#x}\",\"reason\":\"{}\",\"insn\":",
            s.rip,
            reason_name(s.reason)
        )?;
        write_json_string(w, s.mnemonic)?;
        w.write_str(",\"bytes\":\"")?;
        for (j, b) in s.bytes[..usize::from(s.nbytes.min(8))].iter().enumerate() {
            if j > 0 {
                w.write_char(' ')?;
            }
            write!(w, "{b:02x}")?;
        }
        write!(w, "\",\"count\":{}}}", s.count)?;
    }
    // Sum by (mnemonic, reason): at most SITE_SLOTS groups.
    let mut groups = [("", 0u8, 0u64); SITE_SLOTS];
    let mut ng = 0;
    for s in sites.slots.iter().filter(|s| s.count != 0) {
        match groups[..ng]
            .iter_mut()
            .find(|g| g.0 == s.mnemonic && g.1 == s.reason)
        {
            Some(g) => g.2 = g.2.saturating_add(s.count),
            None => {
                groups[ng] = (s.mnemonic, s.reason, s.count);
                ng += 1;
            }
        }
    }
    let groups = &mut groups[..ng];
    groups.sort_unstable_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)).then(a.1.cmp(&b.1)));
    w.write_str("],\"stop_insns\":[")?;
    for (i, g) in groups.iter().take(SITES_PRINTED).enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        w.write_str("{\"insn\":")?;
        write_json_string(w, g.0)?;
        write!(
            w,
            ",\"reason\":\"{}\",\"count\":{}}}",
            reason_name(g.1),
            g.2
        )?;
    }
    w.write_char(']')
}

/// The round trip of one port-IO VM exit on bare-metal Intel, in cycles: an in-kernel
/// exit as kvm-unit-tests' `outl_to_kernel` measures it (about 2,000 cycles, 2022). The
/// summary prices the exits coalescing saved with it; it is a published figure, not a
/// measurement of this machine.
pub const BARE_METAL_EXIT_CYCLES: u64 = 2_000;

/// `n` with thousands separators (`1,234,567`).
pub struct Grouped(pub u64);

impl fmt::Display for Grouped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 20];
        let (mut n, mut len) = (self.0, 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in (0..len).rev() {
            f.write_char(char::from(digits[i]))?;
            if i > 0 && i % 3 == 0 {
                f.write_char(',')?;
            }
        }
        Ok(())
    }
}

/// What the run's IO cost, for people (the `sluice-stats` line is for tools): the IO
/// instructions and the exits they took, what one exit per IO instruction (what other
/// hypervisors do) would have taken and its price at [`BARE_METAL_EXIT_CYCLES`], and the
/// TSC cycles spent handling IO exits here. Two lines, each starting `sluice: summary:`.
pub fn write_summary(w: &mut impl Write, stats: &Stats, coalescing: bool) -> fmt::Result {
    let insns = stats.io.instructions;
    let exits = stats.exit_count(crate::vmx::exit::exit_reason::IO_INSTRUCTION);
    if insns == 0 && exits == 0 {
        return w.write_str("sluice: summary: the guest executed no IO instructions\n");
    }
    write!(
        w,
        "sluice: summary: {} IO instructions took {} VM exits (coalescing {})",
        Grouped(insns),
        Grouped(exits),
        if coalescing { "on" } else { "off" }
    )?;
    let saved = insns.saturating_sub(exits);
    if saved > 0 {
        // One decimal of the reduction factor, in integers (no floating point here).
        let tenths = insns.saturating_mul(10) / exits.max(1);
        write!(
            w,
            "; one exit per IO instruction would have taken {}: {} fewer ({}.{}x), \
             about {} cycles saved at {} cycles per exit on bare-metal Intel",
            Grouped(insns),
            Grouped(saved),
            tenths / 10,
            tenths % 10,
            Grouped(saved.saturating_mul(BARE_METAL_EXIT_CYCLES)),
            Grouped(BARE_METAL_EXIT_CYCLES),
        )?;
    } else if coalescing {
        w.write_str("; no IO burst to coalesce")?;
    } else {
        w.write_str(", one per IO instruction, as other hypervisors take them")?;
    }
    writeln!(
        w,
        "\nsluice: summary: handling the IO exits took {} TSC cycles ({} per exit)",
        Grouped(stats.io.cycles),
        Grouped(stats.io.cycles / exits.max(1))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::exit::exit_reason;

    fn line(guest: &str, end: EndKind, code: u32, stats: &Stats, bus: &IoBus) -> String {
        let mut s = String::new();
        write_stats_line(&mut s, guest, end, code, stats, bus).unwrap();
        s
    }

    fn summary(stats: &Stats, coalescing: bool) -> String {
        let mut s = String::new();
        write_summary(&mut s, stats, coalescing).unwrap();
        s
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (282_000, "282,000"),
            (1_234_567, "1,234,567"),
            (u64::MAX, "18,446,744,073,709,551,615"),
        ] {
            assert_eq!(format!("{}", Grouped(n)), text);
        }
    }

    #[test]
    fn the_summary_prices_the_exits_coalescing_saved() {
        let mut s = Stats::new();
        s.io.instructions = 147;
        for _ in 0..6 {
            s.count_exit(exit_reason::IO_INSTRUCTION.into());
        }
        s.io.cycles = 1_200_000;
        assert_eq!(
            summary(&s, true),
            "sluice: summary: 147 IO instructions took 6 VM exits (coalescing on); one exit \
             per IO instruction would have taken 147: 141 fewer (24.5x), about 282,000 cycles \
             saved at 2,000 cycles per exit on bare-metal Intel\n\
             sluice: summary: handling the IO exits took 1,200,000 TSC cycles (200,000 per exit)\n"
        );
    }

    #[test]
    fn the_summary_of_a_run_without_savings_says_why() {
        let mut s = Stats::new();
        s.io.instructions = 3;
        for _ in 0..3 {
            s.count_exit(exit_reason::IO_INSTRUCTION.into());
        }
        let off = summary(&s, false);
        assert!(
            off.starts_with("sluice: summary: 3 IO instructions took 3 VM exits (coalescing off), one per IO instruction"),
            "{off}"
        );
        assert!(summary(&s, true).contains("no IO burst to coalesce"));
        assert_eq!(
            summary(&Stats::new(), true),
            "sluice: summary: the guest executed no IO instructions\n"
        );
    }

    #[test]
    fn end_kind_names() {
        let all = [
            (EndKind::Hypercall, "hypercall"),
            (EndKind::TripleFault, "triple-fault"),
            (EndKind::EptViolation, "ept-violation"),
            (EndKind::EptMisconfiguration, "ept-misconfiguration"),
            (EndKind::Halt, "halt"),
            (EndKind::EntryFailure, "entry-failure"),
            (EndKind::Fatal, "fatal"),
            (EndKind::Reset(ResetSource::I8042), "reset"),
        ];
        for (k, n) in all {
            assert_eq!(k.name(), n);
            assert_eq!(format!("{k}"), n);
        }
    }

    #[test]
    fn counting() {
        let mut s = Stats::new();
        s.count_exit(exit_reason::CPUID as u32);
        s.count_exit(0x8000_0000 | exit_reason::ENTRY_FAILURE_INVALID_GUEST_STATE as u32);
        s.count_exit(79);
        s.count_exit(80);
        s.count_exit(0xFFFF);
        assert_eq!(s.exit_count(exit_reason::CPUID), 1);
        assert_eq!(s.exit_count(33), 1);
        assert_eq!(s.exit_count(79), 1);
        assert_eq!(s.exit_count(80), 0);
        assert_eq!(s.exits_other, 2);
        assert_eq!(s.total_exits(), 5);
        s.exits[0] = u64::MAX;
        s.count_exit(0);
        assert_eq!(s.exits[0], u64::MAX);
    }

    #[test]
    fn empty_run() {
        let bus = IoBus::new();
        assert_eq!(
            line("g", EndKind::Halt, 0, &Stats::new(), &bus),
            "sluice-stats: {\"guest\":\"g\",\"end\":\"halt\",\"exit_code\":0,\"exits\":{},\
             \"unknown_ports\":{\"reads\":0,\"writes\":0,\"top\":[]},\
             \"injected_exceptions\":0,\"unknown_msrs\":0,\"msr_gp\":{\"rdmsr\":[],\"wrmsr\":[]},\"interrupts\":{\"injected\":{},\"spurious\":0,\"timer_ticks\":0,\"timer_ticks_lost\":0,\"timer_ticks_reinjected\":0},\"io\":{\"exits\":0,\"instructions\":0,\"string_elements\":0,\"emulated\":0,\"blocks\":{\"1\":0,\"2\":0,\"3-4\":0,\"5-8\":0,\"9-16\":0,\"17-32\":0,\"33-64\":0,\"65+\":0},\"stops\":{},\"cache\":{\"hits\":0,\"misses\":0},\"cycles\":0}}\n"
        );
    }

    #[test]
    fn full_line() {
        let mut s = Stats::new();
        for _ in 0..5 {
            s.count_exit(exit_reason::IO_INSTRUCTION as u32);
        }
        s.count_exit(exit_reason::CPUID as u32);
        s.count_exit(exit_reason::CPUID as u32);
        s.count_exit(35); // unnamed reason
        s.count_exit(200);
        s.count_exit(exit_reason::VMCALL as u32);
        s.injected_exceptions = 3;
        s.unknown_msrs = 1;
        s.note_msr_gp(0xDA0, false);
        s.note_msr_gp(0xE8, false);
        s.note_msr_gp(0xE8, false);
        s.note_msr_gp(0x1B, true);
        s.irq_injected[0] = 9;
        s.irq_injected[4] = 2;
        s.irq_spurious = 1;
        s.timer_ticks = 12;
        s.timer_ticks_lost = 3;
        s.timer_ticks_reinjected = 2;
        s.io.instructions = 9;
        s.io.string_elements = 4;
        s.io.emulated = 14;
        s.io.blocks[IoStats::bucket(1)] = 1;
        s.io.blocks[IoStats::bucket(13)] = 1;
        s.io.stops[crate::coalesce::insn::StopReason::Unsupported.index()] = 1;
        s.io.stops[crate::coalesce::insn::StopReason::Limit.index()] = 1;
        s.io.cache_hits = 3;
        s.io.cache_misses = 2;
        s.io.cycles = 777;
        let mut bus = IoBus::new();
        bus.read(0x1234, 1);
        bus.write(0x70, 1, 0);
        bus.write(0x70, 1, 0);
        let l = line("linux", EndKind::Hypercall, 7, &s, &bus);
        assert_eq!(
            l,
            "sluice-stats: {\"guest\":\"linux\",\"end\":\"hypercall\",\"exit_code\":7,\
             \"exits\":{\"cpuid\":2,\"vmcall\":1,\"io_instruction\":5,\"reason_35\":1,\"other\":1},\
             \"unknown_ports\":{\"reads\":1,\"writes\":2,\"top\":[\
             {\"port\":\"0x0070\",\"reads\":0,\"writes\":2},\
             {\"port\":\"0x1234\",\"reads\":1,\"writes\":0}]},\
             \"injected_exceptions\":3,\"unknown_msrs\":1,\"msr_gp\":{\"rdmsr\":[{\"msr\":\"0xe8\",\"count\":2},{\"msr\":\"0xda0\",\"count\":1}],\"wrmsr\":[{\"msr\":\"0x1b\",\"count\":1}]},\"interrupts\":{\"injected\":{\"irq0\":9,\"irq4\":2},\"spurious\":1,\"timer_ticks\":12,\"timer_ticks_lost\":3,\"timer_ticks_reinjected\":2},\"io\":{\"exits\":5,\"instructions\":9,\"string_elements\":4,\"emulated\":14,\"blocks\":{\"1\":1,\"2\":0,\"3-4\":0,\"5-8\":0,\"9-16\":1,\"17-32\":0,\"33-64\":0,\"65+\":0},\"stops\":{\"unsupported\":1,\"limit\":1},\"cache\":{\"hits\":3,\"misses\":2},\"cycles\":777}}\n"
        );
        assert_eq!(l.matches('\n').count(), 1);
        assert!(balanced(&l));
    }

    /// A tiny structural check: braces/brackets balance outside strings.
    fn balanced(l: &str) -> bool {
        let json = l.strip_prefix("sluice-stats: ").unwrap().trim_end();
        let (mut depth, mut in_str, mut esc) = (0i32, false, false);
        for c in json.chars() {
            if in_str {
                match (esc, c) {
                    (true, _) => esc = false,
                    (false, '\\') => esc = true,
                    (false, '"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_str = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            }
            if depth < 0 {
                return false;
            }
        }
        depth == 0 && !in_str
    }

    #[test]
    fn msr_top_keeps_the_busiest_and_lets_one_offs_churn() {
        let mut t = MsrTop::new();
        for m in 0..TOP_MSRS as u32 {
            t.note(0x100 + m);
            t.note(0x100 + m);
        }
        for _ in 0..5 {
            t.note(0x103);
        }
        // A full table of twice-seen MSRs keeps them.
        for m in 0..20 {
            t.note(0x9000 + m);
        }
        let s = t.sorted();
        assert_eq!(
            s[0],
            Some(MsrCount {
                msr: 0x103,
                count: 7
            })
        );
        assert_eq!(
            s[1],
            Some(MsrCount {
                msr: 0x100,
                count: 2
            })
        );
        assert!(s.iter().flatten().all(|e| (0x100..0x108).contains(&e.msr)));
        // Once-seen entries give way.
        let mut t = MsrTop::new();
        for m in 0..TOP_MSRS as u32 {
            t.note(m);
        }
        t.note(0xE8);
        assert!(t.sorted().iter().flatten().any(|e| e.msr == 0xE8));
        assert_eq!(t.sorted().iter().flatten().count(), TOP_MSRS);
    }

    #[test]
    fn stop_sites_keep_the_busiest_and_describe_once() {
        let mut sites = StopSites::new();
        let mut described = 0;
        let mut rec = |s: &mut StopSites, rip: u64, reason: u8| {
            s.record(rip, reason, || {
                described += 1;
                ("ret", [0xC3, 0, 0, 0, 0, 0, 0, 0], 1)
            })
        };
        for _ in 0..50 {
            rec(&mut sites, 0x1000, 0);
        }
        for _ in 0..3 {
            rec(&mut sites, 0x1000, 4);
        }
        // Many one-off sites fill the table and evict each other, not the hot one.
        for i in 0..(SITE_SLOTS as u64 * 3) {
            rec(&mut sites, 0x2000 + i, 0);
        }
        assert_eq!(sites.used, SITE_SLOTS);
        let (top, n) = sites.top::<2>();
        assert_eq!(n, 2);
        assert_eq!(
            (sites.slots[top[0]].rip, sites.slots[top[0]].count),
            (0x1000, 50)
        );
        assert!(sites.slots[top[1]].count <= 50);
        assert_eq!(described, 2 + SITE_SLOTS * 3);
    }

    #[test]
    fn stop_sites_in_the_line() {
        let mut s = Stats::new();
        s.io.sites
            .record(0xffff_ffff_8100_0010, 0, || ("ret", [0xC3; 8], 1));
        s.io.sites
            .record(0xffff_ffff_8100_0010, 0, || ("ret", [0xC3; 8], 1));
        s.io.sites
            .record(0x20, 4, || ("jmp", [0xEB, 0xFE, 0, 0, 0, 0, 0, 0], 2));
        s.io.sites.record(0x30, 0, || ("ret", [0xC3; 8], 1));
        let l = line("g", EndKind::Halt, 0, &s, &IoBus::new());
        assert!(
            l.contains(
                "\"stop_sites\":[{\"rip\":\"0xffffffff81000010\",\"reason\":\"unsupported\",\"insn\":\"ret\",\"bytes\":\"c3\",\"count\":2},\
                 {\"rip\":\"0x20\",\"reason\":\"branch_out\",\"insn\":\"jmp\",\"bytes\":\"eb fe\",\"count\":1},"
            ),
            "{l}"
        );
        assert!(
            l.contains(
                "\"stop_insns\":[{\"insn\":\"ret\",\"reason\":\"unsupported\",\"count\":3},\
                 {\"insn\":\"jmp\",\"reason\":\"branch_out\",\"count\":1}]}}"
            ),
            "{l}"
        );
        assert!(balanced(&l));
    }

    #[test]
    fn guest_name_is_escaped() {
        let mut s = String::new();
        write_json_string(&mut s, "a\"b\\c\nd\te\u{1}f\u{7f}é").unwrap();
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\te\\u0001f\\u007fé\"");
        let bus = IoBus::new();
        let l = line("we\"ird}\n", EndKind::Fatal, 0, &Stats::new(), &bus);
        assert!(l.starts_with("sluice-stats: {\"guest\":\"we\\\"ird}\\n\",\"end\":\"fatal\""));
        assert_eq!(l.matches('\n').count(), 1);
        assert!(balanced(&l));
    }
}
