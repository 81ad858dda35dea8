//! The PC's Intel 8254 programmable interval timer (ports 0x40-0x43) and the
//! timer/speaker bits of PC/AT system control port B (0x61).
//!
//! Behaviour follows the Intel 82C54 CHMOS Programmable Interval Timer
//! datasheet (order no. 231244): control word format, the six counting modes,
//! counter latch and read-back commands, the status byte and its null-count
//! flag, binary and BCD counting. Port B follows the IBM PC/AT Technical
//! Reference (system board IO port 61h).
//!
//! # Time model
//!
//! The chip is *time-based*, not stepped: every operation sees `now`, the time
//! in PIT input-clock ticks ([`PIT_HZ`]; the kernel converts from the TSC).
//! Time `t` means "just after CLK pulse number `t`"; a write at `t` happens
//! between pulses `t` and `t + 1`, so a count written at `t` is loaded into the
//! counting element (CE) by pulse `t + 1`, exactly the datasheet's "loaded on
//! the next CLK pulse". Counter values and OUT levels are closed-form functions
//! of the programmed state, the pulses counted since the load and the gate:
//! there is no per-tick work, a guest may poll at any time and arbitrarily
//! large jumps of `now` cost the same as small ones (no loops over elapsed
//! time, no overflow). Time never runs backwards inside the model: a `now`
//! smaller than the latest one seen is taken as the latest one.
//!
//! # Bus wiring
//!
//! [`Pit`] implements [`PortDevice`] with an internal clock that the kernel
//! advances with [`Pit::set_now`] before handling each VM exit (every access of
//! one coalesced IO burst therefore happens at the same instant). Because the
//! PIT answers two port ranges ([`PIT_PORTS`] and [`PORT_B`], with the keyboard
//! controller's 0x60 between them) and the kernel must keep calling
//! [`Pit::set_now`] and [`Pit::irq0_edges`] while the bus holds its devices,
//! the kernel puts the chip in a `RefCell` and registers `&RefCell<Pit>` (a
//! [`PortDevice`] through the bus's shared-device impl) once per range.
//!
//! # IRQ0
//!
//! OUT0 drives IRQ0, edge-triggered. [`Pit::irq0_edges`] returns the rising
//! edges of OUT0 since its previous call, counted in closed form (a mode 2
//! or 3 period is one edge; a control word that lifts OUT0 is one too); the
//! kernel raises IRQ0 once if there were any (the 8259 latches one edge) and
//! counts the rest as lost ticks. [`Pit::next_irq0_edge`] is the time of the
//! next rising edge, for arming the VMX-preemption timer before HLT.
//!
//! # Power-on state
//!
//! The datasheet leaves mode, count and OUT undefined at power-on. Here every
//! counter starts as if it had just been sent a control word for LSB-then-MSB
//! access, mode 2, binary, with no count written: reads return 0x00 then
//! 0x00 (the CE holds 0) and do not change, OUT is high, the status byte
//! reads 0xF4 (OUT, null count, RW = 11, mode 2, binary) and writing two count
//! bytes starts a rate generator. OUT high means a guest's first control
//! word never makes a phantom IRQ0 edge (mode 0 lowers OUT; other modes keep
//! it high). Port B reads 0x20 (OUT2 high; gate 2 and speaker off), plus the
//! refresh toggle.
//!
//! # Modelling decisions the datasheet leaves open
//!
//! - A control word freezes the CE at its current value until a count is
//!   loaded; it also drops any latched count or status.
//! - Mode 0, two-byte count: writing the LSB stops counting and sets OUT low;
//!   the MSB loads the new count on the next pulse. (Revisions of the
//!   datasheet differ on whether the LSB stops counting; the 8254's wording
//!   is followed.)
//! - Mode 3, count rewritten while counting: loaded at the end of the current
//!   *half-cycle*, as the 82C54 datasheet says, so the new count begins with
//!   the half that follows (mode 2: at the end of the current period).
//! - A count written while the gate is low is loaded on the next pulse (null
//!   count clears) but not counted until the gate rises; in modes 2 and 3 a
//!   rewrite while counting is suspended waits for the gate's rising edge,
//!   which reloads the CE anyway.
//! - Counts below a mode's minimum (1 in modes 2 and 3) are accepted: mode 2
//!   with count 1 holds OUT low (the CE reaches 1 on every pulse), mode 3
//!   with count 1 holds OUT high (a one-pulse high half and an empty low half).
//! - BCD counts with non-decimal digits take each nibble's face value
//!   (A = 10 ...) and are reduced modulo 10000.
//! - Port 0x43 is write-only (the datasheet's "no-operation, 3-state"): reads
//!   float to 0xFF.

use core::ops::RangeInclusive;

use crate::devices::bus::PortDevice;

/// Input clock of the PC's 8254: 14.31818 MHz / 12.
pub const PIT_HZ: u64 = 1_193_182;
/// Counter 0's data port (OUT0 drives IRQ0).
pub const COUNTER0_PORT: u16 = 0x40;
/// Counter 1's data port (DRAM refresh on the AT).
pub const COUNTER1_PORT: u16 = 0x41;
/// Counter 2's data port (speaker; gate is port B bit 0).
pub const COUNTER2_PORT: u16 = 0x42;
/// Control word register (write-only).
pub const CONTROL_PORT: u16 = 0x43;
/// The 8254's port range.
pub const PIT_PORTS: RangeInclusive<u16> = COUNTER0_PORT..=CONTROL_PORT;
/// PC/AT system control port B.
pub const PORT_B: u16 = 0x61;
/// Port B bit 4 toggles every this many PIT ticks: the 15.085 us refresh
/// period (BIOS programs counter 1 with count 18: 18 / 1.193182 MHz =
/// 15.0857 us). Modelled as a free-running toggle derived from `now`,
/// independent of how the guest programs counter 1.
pub const REFRESH_TOGGLE_TICKS: u64 = 18;

// Control word (datasheet "Control Word Format").
const CW_SC_SHIFT: u8 = 6;
/// SC1:SC0 = 11: read-back command.
const CW_SC_READBACK: u8 = 3;
const CW_RW_SHIFT: u8 = 4;
const CW_RW_MASK: u8 = 3;
const CW_MODE_SHIFT: u8 = 1;
const CW_MODE_MASK: u8 = 7;
const CW_BCD: u8 = 1;
/// Bits 5:0 (RW1 RW0 M2 M1 M0 BCD), kept for the status byte.
const CW_PROGRAM_MASK: u8 = 0x3F;

// RW1:RW0.
const RW_LATCH: u8 = 0;
const RW_LSB: u8 = 1;
const RW_MSB: u8 = 2;
const RW_LSB_MSB: u8 = 3;

// Modes (M2:M0; 6 and 7 alias 2 and 3).
const MODE_INTERRUPT_ON_TC: u8 = 0;
const MODE_ONE_SHOT: u8 = 1;
const MODE_RATE: u8 = 2;
const MODE_SQUARE: u8 = 3;
const MODE_SW_STROBE: u8 = 4;
const MODE_HW_STROBE: u8 = 5;

// Read-back command (SC1:SC0 = 11): bits are active low.
const RB_NO_COUNT: u8 = 1 << 5;
const RB_NO_STATUS: u8 = 1 << 4;
/// Counter `i` is selected by bit `1 + i`.
const RB_COUNTER_SHIFT: u8 = 1;

// Status byte.
const STATUS_OUT: u8 = 1 << 7;
const STATUS_NULL_COUNT: u8 = 1 << 6;

// Port B.
const PB_GATE2: u8 = 1 << 0;
const PB_SPEAKER: u8 = 1 << 1;
/// Bits 0-3 are read/write: gate 2, speaker data, parity and IO check enables.
const PB_WRITABLE: u8 = 0x0F;
const PB_REFRESH: u8 = 1 << 4;
const PB_OUT2: u8 = 1 << 5;

/// Power-on program: RW = LSB then MSB, mode 2, binary.
const POWER_ON_PROGRAM: u8 = (RW_LSB_MSB << CW_RW_SHIFT) | (MODE_RATE << CW_MODE_SHIFT);

const BINARY_MODULUS: u32 = 0x1_0000;
const BCD_MODULUS: u32 = 10_000;

/// A counting element run: loaded with `n` by the pulse at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    /// Time of the loading pulse: CE = initial value at `start`, one pulse
    /// counted at `start + 1`.
    start: u64,
    /// Initial count, 1..=65536 (binary) or 1..=10000 (BCD).
    n: u32,
    /// Mode 3: the run starts with the low half-cycle (a count rewrite loaded
    /// at the end of a high half-cycle).
    low_first: bool,
    /// CE value (numeric) and OUT before `start`.
    before: u32,
    before_out: bool,
    /// Gate went low at this time: counting stops (modes 0, 2, 3, 4).
    suspended_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not counting: CE holds `ce` (numeric), OUT is fixed.
    Idle {
        ce: u32,
        out: bool,
    },
    Counting(Seg),
}

/// Mode 2/3 count rewrite: loaded at the end of the current period or
/// half-cycle, at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    at: u64,
    low_first: bool,
}

/// Rising edges of OUT inside a run: first `r0` pulses after the load, then
/// every `period` pulses (`None`: only once).
#[derive(Clone, Copy)]
struct Rises {
    r0: u64,
    period: Option<u64>,
}

impl Rises {
    /// Rises at pulse counts `1..=k`.
    fn upto(self, k: u64) -> u64 {
        if k < self.r0 {
            return 0;
        }
        match self.period {
            None => 1,
            Some(p) => (k - self.r0) / p + 1,
        }
    }

    /// The first rise at a pulse count greater than `k`.
    fn after(self, k: u64) -> Option<u64> {
        if self.r0 > k {
            return Some(self.r0);
        }
        let p = self.period?;
        let periods = (k - self.r0) / p + 1;
        self.r0.checked_add(periods.checked_mul(p)?)
    }
}

/// One of the three counters.
#[derive(Clone, Debug)]
struct Counter {
    /// Bits 5:0 of the last control word.
    program: u8,
    /// Count register: the last complete count written (raw).
    cr: u16,
    /// A complete count has been written since the control word.
    has_count: bool,
    /// Write flip-flop of LSB-then-MSB access: the LSB waiting for its MSB.
    lsb_written: Option<u8>,
    /// Read flip-flop of LSB-then-MSB access: the next byte is the MSB.
    read_msb: bool,
    /// Output latch frozen by a latch command (encoded as read out).
    latched: Option<u16>,
    /// Latched status byte.
    status: Option<u8>,
    /// Null count: set by a control word or count write ...
    null: bool,
    /// ... and cleared when the count is loaded into the CE at this time.
    null_clear_at: Option<u64>,
    gate: bool,
    run: Run,
    pending: Option<Pending>,
    /// Rising edges of OUT up to `edges_to`, not yet taken.
    edges: u64,
    edges_to: u64,
}

const fn effective_mode(program: u8) -> u8 {
    let m = (program >> CW_MODE_SHIFT) & CW_MODE_MASK;
    if m >= 6 {
        m - 4
    } else {
        m
    }
}

fn from_bcd(raw: u16) -> u32 {
    let d = |shift: u32| u32::from((raw >> shift) & 0xF);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

fn to_bcd(v: u32) -> u16 {
    let v = v % BCD_MODULUS;
    (((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)) as u16
}

impl Counter {
    fn new(gate: bool) -> Self {
        Counter {
            program: POWER_ON_PROGRAM,
            cr: 0,
            has_count: false,
            lsb_written: None,
            read_msb: false,
            latched: None,
            status: None,
            null: true,
            null_clear_at: None,
            gate,
            run: Run::Idle { ce: 0, out: true },
            pending: None,
            edges: 0,
            edges_to: 0,
        }
    }

    fn mode(&self) -> u8 {
        effective_mode(self.program)
    }

    fn rw(&self) -> u8 {
        (self.program >> CW_RW_SHIFT) & CW_RW_MASK
    }

    fn bcd(&self) -> bool {
        self.program & CW_BCD != 0
    }

    fn modulus(&self) -> u32 {
        if self.bcd() {
            BCD_MODULUS
        } else {
            BINARY_MODULUS
        }
    }

    /// The initial count a raw count register value stands for (0 = maximum).
    fn count_n(&self, raw: u16) -> u32 {
        let m = self.modulus();
        let v = if self.bcd() {
            from_bcd(raw) % m
        } else {
            u32::from(raw)
        };
        if v == 0 {
            m
        } else {
            v
        }
    }

    /// Pulses counted at `t` (only for `t >= s.start`).
    fn pulses(s: &Seg, t: u64) -> u64 {
        let end = match s.suspended_at {
            Some(g) => t.min(g),
            None => t,
        };
        end.saturating_sub(s.start)
    }

    /// Mode 3 half-cycle lengths: (high, low).
    fn halves(n: u32) -> (u64, u64) {
        let n = u64::from(n);
        (n.div_ceil(2), n / 2)
    }

    /// Mode 3 position `k` pulses into a run: (OUT high, pulses into the half).
    fn square_phase(s: &Seg, k: u64) -> (bool, u64) {
        let (high, low) = Self::halves(s.n);
        let q = k % u64::from(s.n);
        let (first_len, first_high) = if s.low_first {
            (low, false)
        } else {
            (high, true)
        };
        if q < first_len {
            (first_high, q)
        } else {
            (!first_high, q - first_len)
        }
    }

    /// CE value (numeric, below the modulus) `k` pulses into a run.
    fn ce_in(&self, s: &Seg, k: u64) -> u32 {
        let m = u64::from(self.modulus());
        let n = u64::from(s.n);
        let v = match self.mode() {
            MODE_RATE => n - k % n,
            MODE_SQUARE => {
                if s.n == 1 {
                    0
                } else {
                    // Even counts load N, odd counts N - 1; both step by two.
                    let (_, j) = Self::square_phase(s, k);
                    (n & !1).saturating_sub(2 * j)
                }
            }
            // Modes 0, 1, 4, 5 count down and wrap past zero.
            _ => (n % m + m - k % m) % m,
        };
        (v % m) as u32
    }

    /// OUT `k` pulses into an unsuspended run.
    fn out_in(&self, s: &Seg, k: u64) -> bool {
        let n = u64::from(s.n);
        match self.mode() {
            MODE_INTERRUPT_ON_TC | MODE_ONE_SHOT => k >= n,
            MODE_RATE => n != 1 && k % n != n - 1,
            MODE_SQUARE => s.n == 1 || Self::square_phase(s, k).0,
            _ => k != n,
        }
    }

    /// Where OUT rises inside an unsuspended run (pulse counts >= 1).
    fn rises(&self, s: &Seg) -> Option<Rises> {
        let n = u64::from(s.n);
        match self.mode() {
            MODE_INTERRUPT_ON_TC | MODE_ONE_SHOT => Some(Rises {
                r0: n,
                period: None,
            }),
            MODE_RATE | MODE_SQUARE if s.n == 1 => None,
            MODE_RATE => Some(Rises {
                r0: n,
                period: Some(n),
            }),
            MODE_SQUARE => Some(Rises {
                r0: if s.low_first { Self::halves(s.n).1 } else { n },
                period: Some(n),
            }),
            _ => Some(Rises {
                r0: n + 1,
                period: None,
            }),
        }
    }

    fn ce_of(&self, run: &Run, t: u64) -> u32 {
        match run {
            Run::Idle { ce, .. } => *ce,
            Run::Counting(s) if t < s.start => s.before,
            Run::Counting(s) => self.ce_in(s, Self::pulses(s, t)),
        }
    }

    fn out_of(&self, run: &Run, t: u64) -> bool {
        match run {
            Run::Idle { out, .. } => *out,
            Run::Counting(s) if t < s.start => s.before_out,
            Run::Counting(s) if s.suspended_at.is_some() && self.forces_high_when_gated() => true,
            Run::Counting(s) => self.out_in(s, Self::pulses(s, t)),
        }
    }

    /// Modes 2 and 3 set OUT high while the gate is low.
    fn forces_high_when_gated(&self) -> bool {
        matches!(self.mode(), MODE_RATE | MODE_SQUARE)
    }

    /// Rising edges of OUT at times in `(from, to]` within one run.
    fn rises_in(&self, run: &Run, from: u64, to: u64) -> u64 {
        let Run::Counting(s) = run else {
            return 0;
        };
        if to <= from {
            return 0;
        }
        let mut count = 0;
        if from < s.start && s.start <= to && !s.before_out && self.out_of(run, s.start) {
            count += 1;
        }
        if to > s.start {
            let Some(r) = self.rises(s) else {
                return count;
            };
            let mut k1 = from.max(s.start) - s.start;
            let mut k2 = to - s.start;
            if let Some(g) = s.suspended_at {
                if self.forces_high_when_gated() {
                    return count;
                }
                let kg = g.saturating_sub(s.start);
                k1 = k1.min(kg);
                k2 = k2.min(kg);
            }
            count += r.upto(k2) - r.upto(k1);
        }
        count
    }

    /// The first time after `after` at which OUT rises within one run.
    fn next_rise_in(&self, run: &Run, after: u64) -> Option<u64> {
        let Run::Counting(s) = run else {
            return None;
        };
        if after < s.start && !s.before_out && self.out_of(run, s.start) {
            return Some(s.start);
        }
        let r = self.rises(s)?;
        let k = r.after(after.saturating_sub(s.start))?;
        if let Some(g) = s.suspended_at {
            if self.forces_high_when_gated() || k > g.saturating_sub(s.start) {
                return None;
            }
        }
        s.start.checked_add(k)
    }

    /// The run a pending rewrite starts when it is loaded.
    fn settled(&self, p: Pending) -> Run {
        let last = p.at.saturating_sub(1);
        Run::Counting(Seg {
            start: p.at,
            n: self.count_n(self.cr),
            low_first: p.low_first,
            before: self.ce_of(&self.run, last),
            before_out: self.out_of(&self.run, last),
            suspended_at: None,
        })
    }

    /// The run in effect at `t`.
    fn run_at(&self, t: u64) -> Run {
        match self.pending {
            Some(p) if p.at <= t => self.settled(p),
            _ => self.run,
        }
    }

    fn ce(&self, t: u64) -> u32 {
        self.ce_of(&self.run_at(t), t)
    }

    fn out(&self, t: u64) -> bool {
        self.out_of(&self.run_at(t), t)
    }

    fn null_count(&self, t: u64) -> bool {
        self.null && self.null_clear_at.is_none_or(|at| t < at)
    }

    /// The CE as a read returns it (BCD-encoded in BCD mode).
    fn read_value(&self, t: u64) -> u16 {
        let v = self.ce(t) % self.modulus();
        if self.bcd() {
            to_bcd(v)
        } else {
            v as u16
        }
    }

    fn status_byte(&self, t: u64) -> u8 {
        let mut s = self.program & CW_PROGRAM_MASK;
        if self.out(t) {
            s |= STATUS_OUT;
        }
        if self.null_count(t) {
            s |= STATUS_NULL_COUNT;
        }
        s
    }

    /// The first rising edge of OUT after `t`.
    fn next_rise(&self, t: u64) -> Option<u64> {
        match self.pending {
            Some(p) if p.at > t => {
                if let Some(e) = self.next_rise_in(&self.run, t) {
                    if e < p.at {
                        return Some(e);
                    }
                }
                self.next_rise_in(&self.settled(p), p.at - 1)
            }
            _ => self.next_rise_in(&self.run_at(t), t),
        }
    }

    fn add_edges(&mut self, run: Run, to: u64) {
        if to > self.edges_to {
            let n = self.rises_in(&run, self.edges_to, to);
            self.edges = self.edges.saturating_add(n);
            self.edges_to = to;
        }
    }

    /// Brings the counter to `t`: counts OUT's rising edges and loads a
    /// pending rewrite whose time has come.
    fn sync(&mut self, t: u64) {
        if let Some(p) = self.pending {
            if p.at <= t {
                self.add_edges(self.run, p.at.saturating_sub(1));
                self.run = self.settled(p);
                self.pending = None;
            }
        }
        self.add_edges(self.run, t);
    }

    /// Starts a state change at `t`; returns OUT before it.
    fn begin(&mut self, t: u64) -> bool {
        self.sync(t);
        self.out(t)
    }

    /// Ends a state change at `t`: OUT going from low to high on the spot is
    /// an edge too.
    fn end(&mut self, t: u64, out_before: bool) {
        if !out_before && self.out(t) {
            self.edges = self.edges.saturating_add(1);
        }
    }

    fn control_word(&mut self, t: u64, cw: u8) {
        let before = self.begin(t);
        let ce = self.ce(t);
        self.program = cw & CW_PROGRAM_MASK;
        self.run = Run::Idle {
            ce,
            out: self.mode() != MODE_INTERRUPT_ON_TC,
        };
        self.pending = None;
        self.has_count = false;
        self.lsb_written = None;
        self.read_msb = false;
        self.latched = None;
        self.status = None;
        self.null = true;
        self.null_clear_at = None;
        self.end(t, before);
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched.is_none() {
            self.latched = Some(self.read_value(t));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(t));
        }
    }

    fn read_data(&mut self, t: u64) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let value = self.latched.unwrap_or_else(|| self.read_value(t));
        let [lsb, msb] = value.to_le_bytes();
        let byte = match self.rw() {
            RW_LSB => lsb,
            RW_MSB => msb,
            _ if self.read_msb => msb,
            _ => {
                // First half of an LSB-then-MSB read: a latch stays for the MSB.
                self.read_msb = true;
                return lsb;
            }
        };
        self.read_msb = false;
        self.latched = None;
        byte
    }

    fn write_data(&mut self, t: u64, v: u8) {
        match self.rw() {
            RW_LSB => self.write_count(t, u16::from(v)),
            RW_MSB => self.write_count(t, u16::from(v) << 8),
            _ => match self.lsb_written.take() {
                Some(lsb) => self.write_count(t, u16::from_le_bytes([lsb, v])),
                None => {
                    self.lsb_written = Some(v);
                    if self.mode() == MODE_INTERRUPT_ON_TC {
                        // The first byte stops counting and sets OUT low.
                        self.sync(t);
                        self.run = Run::Idle {
                            ce: self.ce(t),
                            out: false,
                        };
                    }
                }
            },
        }
    }

    /// A run loaded by the pulse after `t`.
    fn fresh_run(&self, t: u64, n: u32, before_out: bool) -> Run {
        Run::Counting(Seg {
            start: t.saturating_add(1),
            n,
            low_first: false,
            before: self.ce(t),
            before_out,
            suspended_at: None,
        })
    }

    /// The end of the current period (mode 2) or half-cycle (mode 3) of a
    /// running `s` at `t >= s.start`: when a rewritten count is loaded.
    fn next_reload(&self, s: &Seg, t: u64) -> Pending {
        let k = t - s.start;
        let n = u64::from(s.n);
        let base = k - k % n;
        let (k_at, low_first) = if self.mode() == MODE_SQUARE {
            let (high, low) = Self::halves(s.n);
            let first = if s.low_first { low } else { high };
            if k % n < first {
                // Ends the first half; the new run starts with the other one.
                (base + first, !s.low_first)
            } else {
                (base + n, s.low_first)
            }
        } else {
            (base + n, false)
        };
        Pending {
            at: s.start.saturating_add(k_at),
            low_first,
        }
    }

    fn write_count(&mut self, t: u64, raw: u16) {
        let before = self.begin(t);
        self.cr = raw;
        self.has_count = true;
        self.null = true;
        let n = self.count_n(raw);
        let load_next = t.saturating_add(1);
        match self.mode() {
            MODE_ONE_SHOT | MODE_HW_STROBE => {
                // Loaded by the next trigger; the current run is unaffected.
                self.null_clear_at = None;
            }
            MODE_RATE | MODE_SQUARE => match self.run {
                Run::Counting(mut s) if t < s.start => {
                    // Not loaded yet: the load takes the newest count.
                    s.n = n;
                    self.run = Run::Counting(s);
                    self.null_clear_at = Some(s.start);
                }
                Run::Counting(s) if s.suspended_at.is_some() => {
                    // Gate low: loaded by the trigger that raises it.
                    self.null_clear_at = None;
                }
                Run::Counting(s) => {
                    let p = self.next_reload(&s, t);
                    self.pending = Some(p);
                    self.null_clear_at = Some(p.at);
                }
                Run::Idle { .. } => {
                    self.run = self.fresh_run(t, n, true);
                    self.suspend_if_gated(t);
                    self.null_clear_at = Some(load_next);
                }
            },
            mode => {
                // Modes 0 and 4: loaded on the next pulse, counting restarts.
                let out = mode != MODE_INTERRUPT_ON_TC && before;
                self.run = self.fresh_run(t, n, out);
                self.suspend_if_gated(t);
                self.null_clear_at = Some(load_next);
            }
        }
        self.end(t, before);
    }

    fn suspend_if_gated(&mut self, t: u64) {
        if let Run::Counting(s) = &mut self.run {
            if !self.gate {
                s.suspended_at = Some(t);
            }
        }
    }

    fn set_gate(&mut self, t: u64, gate: bool) {
        if gate == self.gate {
            return;
        }
        let before = self.begin(t);
        self.gate = gate;
        let mode = self.mode();
        match (mode, gate, &mut self.run) {
            (MODE_INTERRUPT_ON_TC | MODE_SW_STROBE, false, Run::Counting(s)) => {
                s.suspended_at = Some(t);
            }
            (MODE_INTERRUPT_ON_TC | MODE_SW_STROBE, true, Run::Counting(s)) => {
                if let Some(g) = s.suspended_at.take() {
                    let counted = g.saturating_sub(s.start);
                    s.start = t.max(s.start) - counted;
                }
            }
            (MODE_RATE | MODE_SQUARE, false, Run::Counting(s)) => {
                s.suspended_at = Some(t);
                if self.pending.take().is_some() {
                    self.null_clear_at = None;
                }
            }
            (MODE_ONE_SHOT | MODE_RATE | MODE_SQUARE | MODE_HW_STROBE, true, _) => {
                // Trigger: the CR is loaded on the next pulse.
                if self.has_count {
                    let n = self.count_n(self.cr);
                    self.run = self.fresh_run(t, n, before);
                    self.pending = None;
                    if self.null_count(t) {
                        self.null_clear_at = Some(t.saturating_add(1));
                    }
                }
            }
            _ => {}
        }
        self.end(t, before);
    }
}

/// The 8254 and port B. See the module documentation for the time model.
#[derive(Clone, Debug)]
pub struct Pit {
    counters: [Counter; 3],
    /// Port B bits 0-3 as written.
    port_b: u8,
    /// The clock [`PortDevice`] accesses use; never decreases.
    now: u64,
    /// Control words written for counter 0 (mode changes), wrapping.
    programmed0: u32,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// The power-on state (see the module documentation); time 0.
    pub fn new() -> Self {
        Pit {
            // Gates of counters 0 and 1 are tied high; counter 2's is port B
            // bit 0, clear at power-on.
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
            now: 0,
            programmed0: 0,
        }
    }

    /// Advances the clock of [`PortDevice`] accesses to `now` (PIT ticks). A
    /// value smaller than the current one is ignored.
    pub fn set_now(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// The latest time seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn advance(&mut self, now: u64) -> u64 {
        self.set_now(now);
        self.now
    }

    /// A byte read from `port` (0x40-0x43 or 0x61) at `now`; other ports
    /// float to 0xFF. Advances the clock like [`Pit::set_now`].
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        let t = self.advance(now);
        match port {
            COUNTER0_PORT..=COUNTER2_PORT => {
                self.counters[usize::from(port - COUNTER0_PORT)].read_data(t)
            }
            PORT_B => self.port_b_value(t),
            _ => 0xFF,
        }
    }

    /// A byte write to `port` (0x40-0x43 or 0x61) at `now`; other ports are
    /// ignored. Advances the clock like [`Pit::set_now`].
    pub fn write(&mut self, port: u16, value: u8, now: u64) {
        let t = self.advance(now);
        match port {
            COUNTER0_PORT..=COUNTER2_PORT => {
                self.counters[usize::from(port - COUNTER0_PORT)].write_data(t, value)
            }
            CONTROL_PORT => self.control(t, value),
            PORT_B => {
                self.port_b = value & PB_WRITABLE;
                self.counters[2].set_gate(t, value & PB_GATE2 != 0);
            }
            _ => {}
        }
    }

    fn control(&mut self, t: u64, cw: u8) {
        let sc = cw >> CW_SC_SHIFT;
        if sc == CW_SC_READBACK {
            for (i, c) in self.counters.iter_mut().enumerate() {
                if cw & (1 << (RB_COUNTER_SHIFT as usize + i)) == 0 {
                    continue;
                }
                // Status first: a count latched by this command is the CE at `t`
                // either way, and the status reads first regardless.
                if cw & RB_NO_STATUS == 0 {
                    c.latch_status(t);
                }
                if cw & RB_NO_COUNT == 0 {
                    c.latch_count(t);
                }
            }
            return;
        }
        let c = &mut self.counters[usize::from(sc)];
        if (cw >> CW_RW_SHIFT) & CW_RW_MASK == RW_LATCH {
            c.latch_count(t);
        } else {
            c.control_word(t, cw);
            if sc == 0 {
                self.programmed0 = self.programmed0.wrapping_add(1);
            }
        }
    }

    fn port_b_value(&self, t: u64) -> u8 {
        let mut v = self.port_b & PB_WRITABLE;
        if (t / REFRESH_TOGGLE_TICKS) & 1 != 0 {
            v |= PB_REFRESH;
        }
        if self.counters[2].out(t) {
            v |= PB_OUT2;
        }
        v
    }

    /// Port B bit 1 (speaker data enable) and OUT2: the speaker sounds.
    pub fn speaker_on(&self, now: u64) -> bool {
        self.port_b & PB_SPEAKER != 0 && self.out(2, now)
    }

    /// How many control words counter 0 has been given (wrapping): a change tells
    /// that the guest set up its timer anew.
    pub fn counter0_programmings(&self) -> u32 {
        self.programmed0
    }

    /// OUT of `channel` (0-2; others read low) at `now`, or at the latest
    /// time seen if that is later.
    pub fn out(&self, channel: usize, now: u64) -> bool {
        let t = self.now.max(now);
        self.counters.get(channel).is_some_and(|c| c.out(t))
    }

    /// Rising edges of OUT0 (IRQ0) since the previous call, up to `now`
    /// (saturating). Edges are counted in closed form, whatever the interval.
    /// Advances the clock like [`Pit::set_now`].
    pub fn irq0_edges(&mut self, now: u64) -> u64 {
        let t = self.advance(now);
        let c = &mut self.counters[0];
        c.sync(t);
        core::mem::take(&mut c.edges)
    }

    /// The time (PIT ticks) of the next rising edge of OUT0 after `now` (or
    /// after the latest time seen, if later); `None` if OUT0 will not rise
    /// again without the guest reprogramming counter 0.
    pub fn next_irq0_edge(&self, now: u64) -> Option<u64> {
        self.counters[0].next_rise(self.now.max(now))
    }

    /// Whether the 8254 or port B answers `port`.
    pub fn claims(port: u16) -> bool {
        PIT_PORTS.contains(&port) || port == PORT_B
    }

    /// Bus access of `size` bytes: split into byte accesses at consecutive
    /// ports like an 8-bit ISA device; bytes of ports not answered float.
    fn bus_read(&mut self, port: u16, size: u8) -> u32 {
        let now = self.now;
        (0..access_bytes(size)).fold(0, |acc, i| {
            let p = port.wrapping_add(i);
            let b = if Self::claims(p) {
                self.read(p, now)
            } else {
                0xFF
            };
            acc | (u32::from(b) << (8 * i))
        })
    }

    fn bus_write(&mut self, port: u16, size: u8, value: u32) {
        let now = self.now;
        for i in 0..access_bytes(size) {
            let p = port.wrapping_add(i);
            if Self::claims(p) {
                self.write(p, (value >> (8 * i)) as u8, now);
            }
        }
    }
}

/// Bytes of an access of `size` (as [`crate::devices::bus::size_mask`] reads it).
fn access_bytes(size: u8) -> u16 {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

/// Bus accesses happen at the time of the last [`Pit::set_now`]. (The bus's
/// `read`/`write` are distinct from the inherent [`Pit::read`]/[`Pit::write`],
/// which take an explicit time.)
impl PortDevice for Pit {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        self.bus_read(port, size)
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.bus_write(port, size, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::IoBus;
    use core::cell::RefCell;

    const CH: [u16; 3] = [COUNTER0_PORT, COUNTER1_PORT, COUNTER2_PORT];

    /// Control word: counter `ch`, access `rw`, `mode`, binary or BCD.
    fn cw(ch: u8, rw: u8, mode: u8, bcd: bool) -> u8 {
        (ch << 6) | (rw << 4) | (mode << 1) | u8::from(bcd)
    }

    /// Programs counter `ch` for LSB-then-MSB binary counting in `mode` with `count`.
    fn program(p: &mut Pit, ch: u8, mode: u8, count: u16, t: u64) {
        p.write(CONTROL_PORT, cw(ch, RW_LSB_MSB, mode, false), t);
        write_count(p, ch, count, t);
    }

    fn write_count(p: &mut Pit, ch: u8, count: u16, t: u64) {
        let [lsb, msb] = count.to_le_bytes();
        p.write(CH[usize::from(ch)], lsb, t);
        p.write(CH[usize::from(ch)], msb, t);
    }

    /// Counter latch command, then the two bytes of an LSB-then-MSB counter.
    fn latched(p: &mut Pit, ch: u8, t: u64) -> u16 {
        p.write(CONTROL_PORT, ch << 6, t);
        let lsb = p.read(CH[usize::from(ch)], t);
        let msb = p.read(CH[usize::from(ch)], t);
        u16::from_le_bytes([lsb, msb])
    }

    /// Read-back of the status of counter `ch` alone.
    fn status(p: &mut Pit, ch: u8, t: u64) -> u8 {
        p.write(CONTROL_PORT, 0xC0 | RB_NO_COUNT | (2 << ch), t);
        p.read(CH[usize::from(ch)], t)
    }

    /// OUT over `times`, evaluated without the monotonic clamp (the state
    /// is a pure function of time once the last event has happened).
    fn outs(p: &Pit, ch: usize, times: core::ops::RangeInclusive<u64>) -> Vec<bool> {
        times.map(|t| p.counters[ch].out(t)).collect()
    }

    fn counts(p: &mut Pit, ch: u8, times: core::ops::RangeInclusive<u64>) -> Vec<u16> {
        times.map(|t| latched(p, ch, t)).collect()
    }

    fn gate2(p: &mut Pit, high: bool, t: u64) {
        p.write(PORT_B, u8::from(high), t);
    }

    const H: bool = true;
    const L: bool = false;

    #[test]
    fn power_on_counters_read_zero_with_null_count_and_out_high() {
        let mut p = Pit::new();
        for ch in 0..3u8 {
            assert_eq!(p.read(CH[usize::from(ch)], 0), 0);
            assert_eq!(p.read(CH[usize::from(ch)], 0), 0);
            assert_eq!(status(&mut p, ch, 0), 0xF4);
            assert!(p.out(usize::from(ch), 1_000_000));
            assert_eq!(p.read(CH[usize::from(ch)], 1_000_000), 0);
        }
        assert_eq!(p.read(CONTROL_PORT, 0), 0xFF);
        assert_eq!(p.read(PORT_B, 1_000_008), PB_OUT2);
        assert_eq!(p.next_irq0_edge(0), None);
        assert_eq!(p.irq0_edges(5_000_000), 0);
        assert!(!p.out(3, 0));
    }

    #[test]
    fn control_word_sets_out_low_for_mode0_and_high_for_other_modes() {
        let mut p = Pit::new();
        for mode in 0..8u8 {
            p.write(CONTROL_PORT, cw(1, RW_LSB_MSB, mode, false), 10);
            assert_eq!(p.out(1, 10), mode != 0, "mode {mode}");
            // No count yet: nothing changes with time.
            assert_eq!(p.out(1, 10_000), mode != 0, "mode {mode}");
            assert_ne!(status(&mut p, 1, 10) & STATUS_NULL_COUNT, 0);
        }
    }

    #[test]
    fn mode0_out_goes_high_n_plus_one_clocks_after_the_count_is_written() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 4, 100);
        assert_eq!(counts(&mut p, 0, 101..=105), [4, 3, 2, 1, 0]);
        assert_eq!(outs(&p, 0, 100..=106), [L, L, L, L, L, H, H]);
        assert!(p.out(0, 1 << 40));
    }

    #[test]
    fn mode0_counter_wraps_past_zero_and_out_stays_high() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 2, 0);
        assert_eq!(counts(&mut p, 0, 3..=5), [0, 0xFFFF, 0xFFFE]);
        assert!(p.out(0, 5));
        assert_eq!(latched(&mut p, 0, 3 + 0x1_0000), 0);
        assert!(p.out(0, 3 + 0x1_0000));
    }

    #[test]
    fn mode0_first_byte_of_a_two_byte_count_stops_counting_and_sets_out_low() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 3, 0);
        assert!(p.out(0, 10));
        assert_eq!(latched(&mut p, 0, 10), 0xFFFA);
        p.write(COUNTER0_PORT, 5, 10);
        assert!(!p.out(0, 10));
        assert_eq!(latched(&mut p, 0, 20), 0xFFFA);
        p.write(COUNTER0_PORT, 0, 20);
        assert_eq!(latched(&mut p, 0, 21), 5);
        assert_eq!(outs(&p, 0, 20..=26), [L, L, L, L, L, L, H]);
    }

    #[test]
    fn mode0_new_count_is_loaded_on_the_next_clock_and_restarts_counting() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 100, 0);
        write_count(&mut p, 0, 10, 50);
        assert_eq!(latched(&mut p, 0, 51), 10);
        assert!(!p.out(0, 60));
        assert!(p.out(0, 61));
        // Rewriting after terminal count drops OUT again.
        write_count(&mut p, 0, 2, 70);
        assert_eq!(outs(&p, 0, 70..=73), [L, L, L, H]);
    }

    #[test]
    fn mode0_gate_low_suspends_counting() {
        let mut p = Pit::new();
        gate2(&mut p, H, 0);
        program(&mut p, 2, 0, 10, 0);
        assert_eq!(latched(&mut p, 2, 5), 6);
        gate2(&mut p, L, 5);
        assert_eq!(latched(&mut p, 2, 100), 6);
        assert!(!p.out(2, 100));
        gate2(&mut p, H, 100);
        assert_eq!(latched(&mut p, 2, 101), 5);
        assert_eq!(outs(&p, 2, 105..=106), [L, H]);
        assert_eq!(p.read(PORT_B, 106) & PB_OUT2, PB_OUT2);
    }

    #[test]
    fn mode0_count_written_with_gate_low_is_loaded_but_not_counted() {
        let mut p = Pit::new();
        program(&mut p, 2, 0, 7, 0);
        assert_ne!(status(&mut p, 2, 0) & STATUS_NULL_COUNT, 0);
        assert_eq!(status(&mut p, 2, 1) & STATUS_NULL_COUNT, 0);
        assert_eq!(latched(&mut p, 2, 50), 7);
        gate2(&mut p, H, 50);
        assert_eq!(latched(&mut p, 2, 51), 6);
        assert_eq!(outs(&p, 2, 56..=57), [L, H]);
    }

    #[test]
    fn mode1_gate_rising_edge_triggers_a_one_shot_of_n_clocks() {
        let mut p = Pit::new();
        program(&mut p, 2, 1, 3, 0);
        assert!(p.out(2, 9));
        assert_ne!(status(&mut p, 2, 9) & STATUS_NULL_COUNT, 0);
        gate2(&mut p, H, 10);
        assert_ne!(status(&mut p, 2, 10) & STATUS_NULL_COUNT, 0);
        assert_eq!(status(&mut p, 2, 11) & STATUS_NULL_COUNT, 0);
        assert_eq!(outs(&p, 2, 10..=15), [H, L, L, L, H, H]);
        assert_eq!(counts(&mut p, 2, 11..=15), [3, 2, 1, 0, 0xFFFF]);
        // Gate falling has no effect in mode 1.
        gate2(&mut p, L, 16);
        assert!(p.out(2, 20));
    }

    #[test]
    fn mode1_retrigger_restarts_the_one_shot() {
        let mut p = Pit::new();
        program(&mut p, 2, 1, 5, 0);
        gate2(&mut p, H, 10);
        gate2(&mut p, L, 13);
        assert!(!p.out(2, 13));
        gate2(&mut p, H, 14);
        assert_eq!(latched(&mut p, 2, 15), 5);
        assert_eq!(outs(&p, 2, 15..=21), [L, L, L, L, L, H, H]);
    }

    #[test]
    fn mode1_new_count_waits_for_the_next_trigger() {
        let mut p = Pit::new();
        program(&mut p, 2, 1, 5, 0);
        gate2(&mut p, H, 10);
        write_count(&mut p, 2, 2, 12);
        assert_eq!(outs(&p, 2, 15..=16), [L, H]);
        assert_ne!(status(&mut p, 2, 16) & STATUS_NULL_COUNT, 0);
        gate2(&mut p, L, 19);
        gate2(&mut p, H, 20);
        assert_eq!(outs(&p, 2, 20..=23), [H, L, L, H]);
        assert_eq!(status(&mut p, 2, 21) & STATUS_NULL_COUNT, 0);
    }

    #[test]
    fn modes_1_and_5_never_trigger_on_channel0_whose_gate_is_tied_high() {
        for mode in [1, 5] {
            let mut p = Pit::new();
            program(&mut p, 0, mode, 5, 0);
            p.write(PORT_B, 0, 3);
            p.write(PORT_B, 1, 4);
            assert!(p.out(0, 1000));
            assert_eq!(p.next_irq0_edge(0), None);
            assert_eq!(p.irq0_edges(1000), 0);
            assert_ne!(status(&mut p, 0, 1000) & STATUS_NULL_COUNT, 0);
        }
    }

    #[test]
    fn mode2_rate_generator_pulses_out_low_for_one_clock() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 4, 0);
        assert_eq!(outs(&p, 0, 0..=12), [H, H, H, H, L, H, H, H, L, H, H, H, L]);
        assert_eq!(counts(&mut p, 0, 1..=9), [4, 3, 2, 1, 4, 3, 2, 1, 4]);
    }

    #[test]
    fn mode2_new_count_takes_effect_at_the_end_of_the_current_period() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 10, 0);
        write_count(&mut p, 0, 4, 13);
        assert_ne!(status(&mut p, 0, 20) & STATUS_NULL_COUNT, 0);
        assert_eq!(latched(&mut p, 0, 20), 1);
        assert_eq!(status(&mut p, 0, 21) & STATUS_NULL_COUNT, 0);
        assert_eq!(counts(&mut p, 0, 21..=25), [4, 3, 2, 1, 4]);
        assert_eq!(outs(&p, 0, 19..=30), [H, L, H, H, H, L, H, H, H, L, H, H]);
    }

    #[test]
    fn mode2_gate_low_forces_out_high_and_gate_rising_edge_reloads() {
        let mut p = Pit::new();
        gate2(&mut p, H, 0);
        program(&mut p, 2, 2, 5, 0);
        assert!(!p.out(2, 10));
        gate2(&mut p, L, 10);
        assert!(p.out(2, 10));
        assert_eq!(latched(&mut p, 2, 50), 1);
        assert!(p.out(2, 50));
        gate2(&mut p, H, 50);
        assert_eq!(counts(&mut p, 2, 51..=52), [5, 4]);
        assert_eq!(outs(&p, 2, 54..=56), [H, L, H]);
    }

    #[test]
    fn mode2_count_1_holds_out_low() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1, 0);
        assert_eq!(outs(&p, 0, 0..=3), [H, L, L, L]);
        assert_eq!(p.next_irq0_edge(0), None);
        assert_eq!(p.irq0_edges(1 << 50), 0);
    }

    #[test]
    fn mode3_even_count_is_high_for_half_and_low_for_half_counting_by_two() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, 4, 0);
        assert_eq!(outs(&p, 0, 1..=9), [H, H, L, L, H, H, L, L, H]);
        assert_eq!(counts(&mut p, 0, 1..=5), [4, 2, 4, 2, 4]);
    }

    #[test]
    fn mode3_odd_count_is_high_for_n_plus_1_over_2_and_low_for_n_minus_1_over_2() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, 5, 0);
        assert_eq!(outs(&p, 0, 1..=11), [H, H, H, L, L, H, H, H, L, L, H]);
        // N - 1 is loaded and counted down by two (datasheet figure 18).
        assert_eq!(counts(&mut p, 0, 1..=8), [4, 2, 0, 4, 2, 4, 2, 0]);
    }

    #[test]
    fn mode3_count_1_holds_out_high() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, 1, 0);
        assert!(outs(&p, 0, 0..=20).into_iter().all(|o| o));
        assert_eq!(p.next_irq0_edge(0), None);
    }

    #[test]
    fn mode3_new_count_is_loaded_at_the_end_of_the_current_half_cycle() {
        // Rewrite in the high half: the new count starts with its low half.
        let mut p = Pit::new();
        program(&mut p, 0, 3, 10, 0);
        write_count(&mut p, 0, 4, 3);
        assert_eq!(outs(&p, 0, 1..=13), [H, H, H, H, H, L, L, H, H, L, L, H, H]);
        assert_eq!(latched(&mut p, 0, 6), 4);
        // Rewrite in the low half: the new count starts with its high half.
        let mut p = Pit::new();
        program(&mut p, 0, 3, 10, 0);
        write_count(&mut p, 0, 6, 7);
        assert_eq!(
            outs(&p, 0, 5..=18),
            [H, L, L, L, L, L, H, H, H, L, L, L, H, H]
        );
    }

    #[test]
    fn mode3_gate_low_forces_out_high_and_gate_rising_edge_reloads() {
        let mut p = Pit::new();
        gate2(&mut p, H, 0);
        program(&mut p, 2, 3, 6, 0);
        assert!(!p.out(2, 5));
        gate2(&mut p, L, 5);
        assert!(p.out(2, 5));
        assert_eq!(p.read(PORT_B, 30) & PB_OUT2, PB_OUT2);
        gate2(&mut p, H, 30);
        assert_eq!(outs(&p, 2, 30..=37), [H, H, H, H, L, L, L, H]);
    }

    #[test]
    fn mode4_software_strobe_goes_low_for_one_clock_n_plus_one_clocks_after_the_write() {
        let mut p = Pit::new();
        program(&mut p, 0, 4, 3, 0);
        assert_eq!(outs(&p, 0, 0..=6), [H, H, H, H, L, H, H]);
        assert_eq!(p.next_irq0_edge(0), Some(5));
        assert_eq!(counts(&mut p, 0, 1..=5), [3, 2, 1, 0, 0xFFFF]);
        assert_eq!(p.next_irq0_edge(5), None);
    }

    #[test]
    fn mode4_new_count_retriggers_the_strobe() {
        let mut p = Pit::new();
        program(&mut p, 0, 4, 10, 0);
        write_count(&mut p, 0, 3, 5);
        assert_eq!(outs(&p, 0, 8..=12), [H, L, H, H, H]);
    }

    #[test]
    fn mode4_gate_low_suspends_counting() {
        let mut p = Pit::new();
        gate2(&mut p, H, 0);
        program(&mut p, 2, 4, 5, 0);
        gate2(&mut p, L, 2);
        assert!(p.out(2, 100));
        gate2(&mut p, H, 100);
        // One pulse counted before the gate fell; four more to reach zero.
        assert_eq!(outs(&p, 2, 103..=105), [H, L, H]);
    }

    #[test]
    fn mode5_gate_rising_edge_triggers_a_strobe_n_plus_one_clocks_later() {
        let mut p = Pit::new();
        program(&mut p, 2, 5, 3, 0);
        assert!(p.out(2, 9));
        gate2(&mut p, H, 10);
        assert_eq!(outs(&p, 2, 10..=15), [H, H, H, H, L, H]);
        // Retriggerable.
        gate2(&mut p, L, 20);
        gate2(&mut p, H, 21);
        gate2(&mut p, L, 23);
        gate2(&mut p, H, 24);
        assert_eq!(outs(&p, 2, 24..=29), [H, H, H, H, L, H]);
    }

    #[test]
    fn modes_6_and_7_alias_2_and_3_and_status_shows_the_bits_written() {
        let mut p = Pit::new();
        program(&mut p, 0, 6, 4, 0);
        program(&mut p, 1, 7, 4, 0);
        assert_eq!(outs(&p, 0, 3..=5), [H, L, H]);
        assert_eq!(outs(&p, 1, 1..=5), [H, H, L, L, H]);
        assert_eq!(status(&mut p, 0, 5) & 0x3F, 0x3C);
        assert_eq!(status(&mut p, 1, 5) & 0x3F, 0x3E);
    }

    #[test]
    fn count_zero_means_65536_in_binary_and_10000_in_bcd() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0, 0);
        p.write(CONTROL_PORT, cw(1, RW_LSB_MSB, 2, true), 0);
        write_count(&mut p, 1, 0, 0);
        assert_eq!(latched(&mut p, 0, 1), 0);
        assert_eq!(latched(&mut p, 1, 1), 0);
        assert_eq!(latched(&mut p, 0, 2), 0xFFFF);
        assert_eq!(latched(&mut p, 1, 2), 0x9999);
        assert_eq!(outs(&p, 0, 65535..=65537), [H, L, H]);
        assert_eq!(outs(&p, 1, 9999..=10001), [H, L, H]);
    }

    #[test]
    fn bcd_counting_reads_back_decimal_digits() {
        let mut p = Pit::new();
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 0, true), 0);
        write_count(&mut p, 0, 0x0100, 0);
        assert_eq!(counts(&mut p, 0, 1..=2), [0x0100, 0x0099]);
        assert_eq!(latched(&mut p, 0, 11), 0x0090);
        assert_eq!(outs(&p, 0, 100..=101), [L, H]);
        assert_eq!(latched(&mut p, 0, 102), 0x9999);
        assert_eq!(status(&mut p, 0, 102) & 0x3F, 0x31);
    }

    #[test]
    fn bcd_count_with_non_decimal_digits_does_not_panic() {
        let mut p = Pit::new();
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 2, true), 0);
        write_count(&mut p, 0, 0xFFFF, 0);
        // 15*1111 = 16665, reduced to 6665.
        assert_eq!(latched(&mut p, 0, 1), 0x6665);
        // Rises 6666, 13331, 19996.
        assert_eq!(p.irq0_edges(6666 * 3), 3);
    }

    #[test]
    fn lsb_only_and_msb_only_access_use_one_byte() {
        let mut p = Pit::new();
        p.write(CONTROL_PORT, cw(0, RW_LSB, 2, false), 0);
        p.write(COUNTER0_PORT, 0x20, 0);
        assert_eq!(p.read(COUNTER0_PORT, 1), 0x20);
        assert_eq!(p.read(COUNTER0_PORT, 2), 0x1F);
        assert_eq!(outs(&p, 0, 32..=33), [L, H]);
        p.write(CONTROL_PORT, cw(1, RW_MSB, 2, false), 2);
        p.write(COUNTER1_PORT, 0x01, 2);
        assert_eq!(p.read(COUNTER1_PORT, 3), 0x01); // 256
        assert_eq!(p.read(COUNTER1_PORT, 4), 0x00); // 255
        assert_eq!(p.read(COUNTER1_PORT, 4), 0x00);
        assert_eq!(outs(&p, 1, 258..=259), [L, H]);
    }

    #[test]
    fn lsb_then_msb_reads_alternate_with_the_read_flip_flop() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0x1234, 0);
        assert_eq!(p.read(COUNTER0_PORT, 1), 0x34);
        assert_eq!(p.read(COUNTER0_PORT, 1), 0x12);
        assert_eq!(p.read(COUNTER0_PORT, 2), 0x33);
        assert_eq!(p.read(COUNTER0_PORT, 0x101), 0x11);
    }

    #[test]
    fn reads_and_writes_interleave_with_separate_flip_flops() {
        // Datasheet: read LSB, write new LSB, read MSB, write new MSB.
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0xABCD, 0);
        assert_eq!(p.read(COUNTER0_PORT, 1), 0xCD);
        p.write(COUNTER0_PORT, 0x10, 1);
        assert_eq!(p.read(COUNTER0_PORT, 1), 0xAB);
        p.write(COUNTER0_PORT, 0x00, 1);
        // The new count 0x0010 is loaded at the end of the current period.
        assert_eq!(latched(&mut p, 0, 0xABCD + 1), 0x0010);
    }

    #[test]
    fn counter_latch_holds_the_value_until_read() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000, 0);
        p.write(CONTROL_PORT, 0x00, 5);
        assert_eq!(p.read(COUNTER0_PORT, 100), 0xE4); // 996
        assert_eq!(p.read(COUNTER0_PORT, 200), 0x03);
        // Released: reads follow the counter again.
        assert_eq!(p.read(COUNTER0_PORT, 300), 0xBD); // 701
        assert_eq!(p.read(COUNTER0_PORT, 300), 0x02);
    }

    #[test]
    fn second_latch_command_is_ignored_until_the_latch_is_read() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000, 0);
        p.write(CONTROL_PORT, 0x00, 5);
        p.write(CONTROL_PORT, 0x00, 50);
        p.write(CONTROL_PORT, 0xC0 | RB_NO_STATUS | 2, 60);
        assert_eq!(latched(&mut p, 0, 70), 996);
        assert_eq!(latched(&mut p, 0, 80), 921);
    }

    #[test]
    fn readback_latches_status_with_null_count() {
        let mut p = Pit::new();
        p.write(CONTROL_PORT, cw(1, RW_LSB_MSB, 3, false), 0);
        assert_eq!(status(&mut p, 1, 0), 0x80 | 0x40 | 0x36);
        write_count(&mut p, 1, 8, 0);
        assert_eq!(status(&mut p, 1, 0), 0xC0 | 0x36);
        assert_eq!(status(&mut p, 1, 1), 0x80 | 0x36);
        assert_eq!(status(&mut p, 1, 5), 0x36);
        // A status latched earlier is what a later read returns.
        p.write(CONTROL_PORT, 0xC0 | RB_NO_COUNT | 4, 6);
        assert!(p.out(1, 9));
        assert_eq!(p.read(COUNTER1_PORT, 9), 0x36);
    }

    #[test]
    fn readback_status_is_read_before_the_count_when_both_are_latched() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0x1234, 0);
        // Count latched first by a latch command, status by read-back later.
        p.write(CONTROL_PORT, 0x00, 2);
        p.write(CONTROL_PORT, 0xC0 | RB_NO_COUNT | 2, 3);
        assert_eq!(p.read(COUNTER0_PORT, 9), 0xB4);
        assert_eq!(p.read(COUNTER0_PORT, 9), 0x33);
        assert_eq!(p.read(COUNTER0_PORT, 9), 0x12);
        // Both by one read-back command.
        p.write(CONTROL_PORT, 0xC2, 10);
        assert_eq!(p.read(COUNTER0_PORT, 20), 0xB4);
        assert_eq!(p.read(COUNTER0_PORT, 20), 0x2B);
        assert_eq!(p.read(COUNTER0_PORT, 20), 0x12);
    }

    #[test]
    fn readback_selects_counters_and_ignores_repeated_status_latches() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 100, 0);
        program(&mut p, 1, 2, 200, 0);
        program(&mut p, 2, 0, 300, 0);
        // Counters 0 and 2, count only.
        p.write(CONTROL_PORT, 0xC0 | RB_NO_STATUS | 0b1010, 10);
        assert_eq!(p.read(COUNTER1_PORT, 20), 181); // live, not latched
        p.read(COUNTER1_PORT, 20);
        assert_eq!(latched(&mut p, 0, 30), 91);
        // Counter 2 was latched while its gate was low: count held at 300.
        assert_eq!(p.read(COUNTER2_PORT, 30), 0x2C);
        assert_eq!(p.read(COUNTER2_PORT, 30), 0x01);
        // Status latched twice: the first wins.
        p.write(CONTROL_PORT, cw(2, RW_LSB, 4, false), 31);
        p.write(CONTROL_PORT, 0xC0 | RB_NO_COUNT | 0b1000, 31);
        p.write(CONTROL_PORT, cw(2, RW_LSB, 1, false), 32);
        p.write(CONTROL_PORT, 0xC0 | RB_NO_COUNT | 0b1000, 32);
        assert_eq!(p.read(COUNTER2_PORT, 33) & 0x3F, 0x12);
    }

    #[test]
    fn null_count_is_set_by_writes_and_cleared_when_the_count_is_loaded() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 50, 10);
        assert_ne!(status(&mut p, 0, 10) & STATUS_NULL_COUNT, 0);
        assert_eq!(status(&mut p, 0, 11) & STATUS_NULL_COUNT, 0);
        write_count(&mut p, 0, 50, 20);
        assert_ne!(status(&mut p, 0, 20) & STATUS_NULL_COUNT, 0);
        assert_eq!(status(&mut p, 0, 21) & STATUS_NULL_COUNT, 0);
        // The first byte of a two-byte count does not set it.
        p.write(COUNTER0_PORT, 1, 30);
        assert_eq!(status(&mut p, 0, 30) & STATUS_NULL_COUNT, 0);
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 0, false), 40);
        assert_ne!(status(&mut p, 0, 1000) & STATUS_NULL_COUNT, 0);
    }

    #[test]
    fn control_word_drops_latches_and_resets_the_flip_flops() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 0x1234, 0);
        p.write(CONTROL_PORT, 0xC2, 1);
        p.read(COUNTER0_PORT, 1); // status
        p.read(COUNTER0_PORT, 1); // LSB of the latch
        p.write(COUNTER0_PORT, 0x99, 1); // half a count
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 2, false), 5);
        write_count(&mut p, 0, 0x0102, 5);
        assert_eq!(p.read(COUNTER0_PORT, 6), 0x02);
        assert_eq!(p.read(COUNTER0_PORT, 6), 0x01);
    }

    #[test]
    fn control_word_freezes_the_counting_element_until_a_count_is_loaded() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000, 0);
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 2, false), 100);
        assert_eq!(latched(&mut p, 0, 500), 901);
        write_count(&mut p, 0, 10, 500);
        // Not loaded until the next pulse.
        assert_eq!(latched(&mut p, 0, 500), 901);
        assert_eq!(latched(&mut p, 0, 501), 10);
    }

    #[test]
    fn port_b_stores_bits_0_to_3_and_reads_bits_6_and_7_as_zero() {
        let mut p = Pit::new();
        p.write(PORT_B, 0xFF, 0);
        assert_eq!(p.read(PORT_B, 0), 0x0F | PB_OUT2);
        p.write(PORT_B, 0x0C, 0);
        assert_eq!(p.read(PORT_B, 0), 0x0C | PB_OUT2);
        // Bits 4-7 are not writable; 6 and 7 read 0.
        p.write(PORT_B, 0xF2, 0);
        assert_eq!(p.read(PORT_B, 0), 0x02 | PB_OUT2);
        assert_eq!(p.read(PORT_B, 18) & 0xC0, 0);
    }

    #[test]
    fn port_b_refresh_bit_toggles_every_18_ticks() {
        let mut p = Pit::new();
        let bit = |p: &mut Pit, t| p.read(PORT_B, t) & PB_REFRESH != 0;
        assert!(!bit(&mut p, 0));
        assert!(!bit(&mut p, 17));
        assert!(bit(&mut p, 18));
        assert!(bit(&mut p, 35));
        assert!(!bit(&mut p, 36));
        assert!(bit(&mut p, 18 * 1_000_001));
        assert!(bit(&mut p, u64::MAX) == ((u64::MAX / 18) & 1 == 1));
    }

    #[test]
    fn port_b_bit5_follows_out2_for_tsc_calibration() {
        // Linux's PIT calibration: gate on, speaker off, mode 0 on counter 2, poll.
        let mut p = Pit::new();
        let v = p.read(PORT_B, 0);
        p.write(PORT_B, (v & !PB_SPEAKER) | PB_GATE2, 0);
        p.write(CONTROL_PORT, 0xB0, 0);
        write_count(&mut p, 2, 1000, 0);
        assert_eq!(p.read(PORT_B, 1000) & PB_OUT2, 0);
        assert_eq!(p.read(PORT_B, 1001) & PB_OUT2, PB_OUT2);
        assert!(!p.speaker_on(1001));
        p.write(PORT_B, PB_GATE2 | PB_SPEAKER, 1002);
        assert!(p.speaker_on(1002));
    }

    #[test]
    fn irq0_edges_counts_rising_edges_of_out0_since_the_previous_call() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 4, 0);
        // Rises at 5, 9, 13, ...
        assert_eq!(p.irq0_edges(4), 0);
        assert_eq!(p.irq0_edges(5), 1);
        assert_eq!(p.irq0_edges(5), 0);
        assert_eq!(p.irq0_edges(12), 1);
        assert_eq!(p.irq0_edges(13 + 4 * 99), 100);
        // An earlier time counts nothing and does not rewind.
        assert_eq!(p.irq0_edges(3), 0);
        assert_eq!(p.next_irq0_edge(0), Some(13 + 4 * 100));
    }

    #[test]
    fn irq0_edges_mode0_counts_the_terminal_count_once() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 100, 0);
        assert_eq!(p.next_irq0_edge(0), Some(101));
        assert_eq!(p.irq0_edges(100), 0);
        assert_eq!(p.irq0_edges(1 << 60), 1);
        assert_eq!(p.next_irq0_edge(1 << 60), None);
        // A new count restarts it.
        write_count(&mut p, 0, 10, 1 << 60);
        assert_eq!(p.next_irq0_edge(1 << 60), Some((1 << 60) + 11));
        assert_eq!(p.irq0_edges(u64::MAX), 1);
    }

    #[test]
    fn irq0_edges_mode3_counts_one_per_period() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, 11932, 0); // ~100 Hz
        assert_eq!(p.next_irq0_edge(0), Some(11933));
        assert_eq!(p.irq0_edges(11932), 0);
        assert_eq!(p.irq0_edges(PIT_HZ * 3600), (PIT_HZ * 3600 - 1) / 11932);
        let next = p.next_irq0_edge(PIT_HZ * 3600).unwrap();
        assert_eq!((next - 1) % 11932, 0);
        assert!(next > PIT_HZ * 3600 && next <= PIT_HZ * 3600 + 11932);
    }

    #[test]
    fn irq0_edges_follow_a_count_rewrite_mid_period() {
        // Mode 2: period 10 until the end of the current period, then 4.
        let mut p = Pit::new();
        program(&mut p, 0, 2, 10, 0);
        write_count(&mut p, 0, 4, 13);
        assert_eq!(p.next_irq0_edge(13), Some(21));
        assert_eq!(p.next_irq0_edge(21), Some(25));
        assert_eq!(p.irq0_edges(40), 6); // 11, 21, 25, 29, 33, 37
                                         // Mode 3: rewrite in the high half; new count's low half comes first.
        let mut p = Pit::new();
        program(&mut p, 0, 3, 10, 0);
        write_count(&mut p, 0, 4, 3);
        assert_eq!(p.next_irq0_edge(3), Some(8));
        assert_eq!(p.irq0_edges(20), 4); // 8, 12, 16, 20
                                         // Rewrite before the pending count is loaded: only the newest counts.
        let mut p = Pit::new();
        program(&mut p, 0, 2, 100, 0);
        write_count(&mut p, 0, 7, 50);
        write_count(&mut p, 0, 20, 60);
        assert_eq!(p.next_irq0_edge(60), Some(101));
        assert_eq!(p.next_irq0_edge(101), Some(121));
    }

    #[test]
    fn control_word_raising_out0_is_an_irq0_edge() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 1000, 0);
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 2, false), 10);
        assert!(p.out(0, 10));
        assert_eq!(p.irq0_edges(10), 1);
        assert_eq!(p.next_irq0_edge(10), None);
    }

    #[test]
    fn next_irq0_edge_is_none_until_counter0_can_rise() {
        let mut p = Pit::new();
        assert_eq!(p.next_irq0_edge(0), None);
        p.write(CONTROL_PORT, cw(0, RW_LSB_MSB, 2, false), 0);
        assert_eq!(p.next_irq0_edge(0), None);
        write_count(&mut p, 0, 3, 0);
        assert_eq!(p.next_irq0_edge(0), Some(4));
        assert_eq!(p.next_irq0_edge(4), Some(7));
        assert_eq!(p.next_irq0_edge(1_000_000), Some(1_000_003));
    }

    #[test]
    fn huge_time_jumps_neither_overflow_nor_loop() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 2, 0);
        assert_eq!(p.irq0_edges(u64::MAX), (u64::MAX - 1) / 2);
        assert_eq!(p.next_irq0_edge(u64::MAX), None);
        let mut p = Pit::new();
        p.set_now(u64::MAX - 3);
        for mode in 0..6 {
            program(&mut p, 0, mode, 0, u64::MAX - 3);
            program(&mut p, 2, mode, 1, u64::MAX - 3);
            gate2(&mut p, mode % 2 == 0, u64::MAX - 2);
            let _ = p.next_irq0_edge(u64::MAX);
            let _ = p.irq0_edges(u64::MAX);
            let _ = latched(&mut p, 0, u64::MAX);
            let _ = p.read(PORT_B, u64::MAX);
        }
        let mut p = Pit::new();
        program(&mut p, 0, 3, 7, u64::MAX - 20);
        write_count(&mut p, 0, 5, u64::MAX - 15);
        assert!(p.irq0_edges(u64::MAX) >= 2);
        assert_eq!(p.next_irq0_edge(u64::MAX), None);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut p = Pit::new();
        p.set_now(100);
        p.set_now(50);
        assert_eq!(p.now(), 100);
        program(&mut p, 0, 0, 5, 10); // taken as time 100
        assert!(!p.out(0, 105));
        assert!(p.out(0, 106));
        assert_eq!(p.now(), 100);
        // Loaded by the pulse after 100, not after 10.
        assert_eq!(latched(&mut p, 0, 0), 0);
        assert_eq!(latched(&mut p, 0, 101), 5);
    }

    #[test]
    fn port_device_accesses_use_the_set_now_clock_and_split_wide_accesses() {
        let mut p = Pit::new();
        p.set_now(1000);
        PortDevice::write(&mut p, CONTROL_PORT, 1, 0x34);
        PortDevice::write(&mut p, COUNTER0_PORT, 1, 100);
        PortDevice::write(&mut p, COUNTER0_PORT, 1, 0);
        p.set_now(1011);
        PortDevice::write(&mut p, CONTROL_PORT, 1, 0x00);
        assert_eq!(PortDevice::read(&mut p, COUNTER0_PORT, 1), 90);
        assert_eq!(PortDevice::read(&mut p, COUNTER0_PORT, 1), 0);
        // A word read of 0x42/0x43: counter 2's LSB and the floating control port.
        assert_eq!(PortDevice::read(&mut p, COUNTER2_PORT, 2), 0xFF00);
        // A dword at 0x43 covers 0x44-0x46, which are not the PIT's.
        assert_eq!(PortDevice::read(&mut p, CONTROL_PORT, 4), 0xFFFF_FFFF);
        // A word write to 0x40: LSB to counter 0, MSB to counter 1.
        PortDevice::write(&mut p, COUNTER0_PORT, 2, 0x0305);
        PortDevice::write(&mut p, COUNTER0_PORT, 1, 0);
        assert_eq!(p.counters[0].cr, 5);
        assert!(p.counters[1].lsb_written == Some(3));
    }

    #[test]
    fn refcell_pit_serves_both_port_ranges_on_the_bus() {
        let pit = RefCell::new(Pit::new());
        let mut main = &pit;
        let mut port_b = &pit;
        let mut bus = IoBus::new();
        bus.register(PIT_PORTS, &mut main).unwrap();
        bus.register(PORT_B..=PORT_B, &mut port_b).unwrap();
        bus.write(PORT_B, 1, u32::from(PB_GATE2));
        bus.write(CONTROL_PORT, 1, 0xB0);
        bus.write(COUNTER2_PORT, 1, 10);
        bus.write(COUNTER2_PORT, 1, 0);
        bus.write(CONTROL_PORT, 1, 0x34);
        bus.write(COUNTER0_PORT, 1, 5);
        bus.write(COUNTER0_PORT, 1, 0);
        assert_eq!(bus.read(PORT_B, 1) & u32::from(PB_OUT2), 0);
        pit.borrow_mut().set_now(11);
        assert_eq!(bus.read(PORT_B, 1), u32::from(PB_GATE2 | PB_OUT2));
        assert_eq!(pit.borrow_mut().irq0_edges(11), 2);
        assert_eq!(pit.borrow().next_irq0_edge(11), Some(16));
        // A chip borrowed elsewhere floats instead of panicking.
        let held = pit.borrow_mut();
        assert_eq!(bus.read(COUNTER0_PORT, 1), 0xFF);
        bus.write(CONTROL_PORT, 1, 0x30);
        drop(held);
        assert!(pit.borrow().out(0, 11));
        assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
    }

    /// xorshift64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random guest action at `t`.
    fn random_action(p: &mut Pit, r: &mut Rng, t: u64, small_counts: bool) {
        let ch = r.below(3) as u8;
        match r.below(10) {
            0 | 1 => {
                let rw = 1 + r.below(3) as u8;
                let v = cw(ch, rw, r.below(8) as u8, r.below(4) == 0);
                p.write(CONTROL_PORT, v, t);
            }
            2..=4 => {
                let b = if small_counts {
                    r.below(12) as u8
                } else {
                    r.next() as u8
                };
                p.write(CH[usize::from(ch)], b, t);
            }
            5 | 6 => p.write(PORT_B, r.next() as u8, t),
            7 => p.write(CONTROL_PORT, 0xC0 | (r.next() as u8 & 0x3F), t),
            8 => p.write(CONTROL_PORT, ch << 6, t),
            _ => {
                p.read(CH[usize::from(ch)], t);
            }
        }
    }

    /// Closed-form edge counts and next-edge times agree with OUT sampled
    /// on every tick, for random programming of all counters.
    #[test]
    fn edge_accounting_matches_out_sampled_every_tick() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..400 {
            let mut p = Pit::new();
            let mut t = r.below(50);
            let mut expected = [0u64; 3];
            for _ in 0..25 {
                let before: Vec<bool> = (0..3).map(|c| p.out(c, t)).collect();
                for c in p.counters.iter_mut() {
                    c.sync(t);
                }
                let synced: Vec<u64> = p.counters.iter().map(|c| c.edges).collect();
                random_action(&mut p, &mut r, t, true);
                for c in 0..3 {
                    let during = p.counters[c].edges - synced[c];
                    assert_eq!(during, u64::from(!before[c] && p.out(c, t)));
                    expected[c] += during;
                }
                let dt = r.below(40);
                for c in 0..3 {
                    let mut first = None;
                    for s in t + 1..=t + dt {
                        if !p.out(c, s - 1) && p.out(c, s) {
                            expected[c] += 1;
                            first.get_or_insert(s);
                        }
                    }
                    let next = p.counters[c].next_rise(t);
                    match first {
                        Some(s) => assert_eq!(next, Some(s), "counter {c} at {t}"),
                        None => assert!(next.is_none_or(|n| n > t + dt)),
                    }
                }
                t += dt;
                p.set_now(t);
                for c in 0..3 {
                    p.counters[c].sync(t);
                    assert_eq!(p.counters[c].edges, expected[c], "counter {c} at {t}");
                }
            }
        }
    }

    #[test]
    fn random_guest_input_never_panics() {
        let mut r = Rng(0x1234_5678_9ABC_DEF0);
        let mut p = Pit::new();
        let mut t = 0u64;
        for i in 0..200_000u64 {
            t = match r.below(100) {
                0 => t.saturating_add(r.next()),
                1..=10 => t.saturating_add(r.below(1 << 20)),
                _ => t.saturating_add(r.below(4)),
            }
            .min(u64::MAX - r.below(2));
            random_action(&mut p, &mut r, t, i % 2 == 0);
            let _ = p.read(r.below(0x70) as u16, t);
            let _ = p.out(r.below(4) as usize, t);
            let _ = p.next_irq0_edge(t);
            if r.below(8) == 0 {
                let _ = p.irq0_edges(t);
            }
            let size = [1u8, 2, 4, 3][r.below(4) as usize];
            let _ = PortDevice::read(&mut p, 0x3E + r.below(0x30) as u16, size);
            if t > u64::MAX / 2 && r.below(1000) == 0 {
                p = Pit::new();
                t = 0;
            }
        }
    }
}
