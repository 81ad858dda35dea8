//! The virtual PC around the guest: the 16550A UART (COM1, IRQ4), the 8254 PIT (IRQ0,
//! port 0x61), the 8259A pair, the MC146818A RTC with CMOS RAM (0x70/0x71, IRQ8) and
//! the 8042 keyboard controller (0x60/0x64, IRQ1/IRQ12) with port 0x92, plus the
//! wiring between them that no single chip owns: device outputs onto PIC inputs, the
//! PIC's INTR output and INTA cycle ([`Intr`], which `vcpu::irq` injects from), the
//! next moment a timer needs the CPU (for the VMX-preemption timer), and reset
//! requests for the run loop.
//!
//! Devices sit in `RefCell`s so the IO bus and the run loop can both reach them (see
//! `impl PortDevice for &RefCell<T>` in `devices::bus`). Nothing here touches hardware
//! or VMX; the run loop passes the time in PIT ticks.

use core::cell::{Cell, RefCell};

use crate::devices::bus::{size_mask, BusError, ConsoleSink, IoBus, PortDevice};
use crate::devices::i8042::{
    Port92, AUX_IRQ, I8042, I8042_CMD_PORTS, I8042_DATA_PORTS, KEYBOARD_IRQ, PORT_92,
};
use crate::devices::pic8259::PicPair;
use crate::devices::pit8254::{Pit, PIT_PORTS, PORT_B};
use crate::devices::rtc::{Rtc, DEFAULT_EPOCH, RTC_IRQ, RTC_PORTS};
use crate::devices::uart16550::Uart16550;
use crate::devices::InterruptController;

/// Bits of `Machine::lines` for the lines the PIT and UART drive.
const LINE_IRQ0: u8 = 3;
const LINE_IRQ4: u8 = 4;

/// COM1 (PC/AT I/O map) and its IRQ.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
/// The PIT's channel 0 drives IRQ0.
pub const TIMER_IRQ: u8 = 0;

/// Timer ticks owed to the guest under [`LostTicks::Delay`] at most: a guest that kept
/// interrupts off longer than this many periods loses the rest (1,000 ticks are 4 s
/// at Linux's HZ=250).
pub const MAX_OWED_TICKS: u64 = 1000;

/// What happens to a timer tick whose edge finds IRQ0 still requested (the guest kept
/// interrupts off, or was slow to take the last one): the 8259A latches one request
/// per line, so on hardware the tick is gone. A guest that counts time in ticks (Linux
/// counts jiffies, and with no HPET or ACPI PM timer it checks the TSC against them)
/// then sees its clock run slow, and a hypervisor takes guest time away far more
/// often than hardware does (every exit handled in the host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LostTicks {
    /// The tick is owed and raised on IRQ0 as soon as the previous one has been
    /// handled (acknowledged and, without AEOI, ended by EOI), as KVM's PIT does by
    /// default (reinject): the guest sees every tick, some later than due, and a
    /// backlog arrives back to back. Only ticks the CPU did not take are owed; ones
    /// the guest held back (IRQ0 masked or in service) are lost as on hardware.
    Delay,
    /// The tick is dropped, as on hardware.
    #[default]
    Discard,
}

impl LostTicks {
    pub fn parse(s: &str) -> Option<LostTicks> {
        match s {
            "delay" => Some(LostTicks::Delay),
            "discard" => Some(LostTicks::Discard),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            LostTicks::Delay => "delay",
            LostTicks::Discard => "discard",
        }
    }
}

pub struct Machine<S: ConsoleSink> {
    pub uart: RefCell<Uart16550<S>>,
    pub pit: RefCell<Pit>,
    pub pic: RefCell<PicPair>,
    pub rtc: RefCell<Rtc>,
    pub kbc: RefCell<I8042>,
    pub port92: RefCell<Port92>,
    /// The levels last put on IRQ1, IRQ8, IRQ12, IRQ0 and IRQ4 (bits 0-4), so `poll`
    /// only touches the PIC when a line changes: it runs after every coalesced device
    /// access. Driving an 8259A input to the level it already has changes nothing, and
    /// `poll` is the only code that drives them.
    lines: Cell<u8>,
    /// Guest time of the latest `set_now`/`poll`, for the RTC's accesses.
    now: Cell<u64>,
    /// The RTC, the 8042 or port 0x92 was accessed since `poll` last looked at them:
    /// only an access or the RTC's next event (`rtc_due`) can move their lines, so
    /// `poll` skips them otherwise and stays as cheap as before they existed.
    touched: Cell<bool>,
    rtc_due: Cell<u64>,
    reset: Cell<Option<ResetSource>>,
    lost_ticks: LostTicks,
    /// Ticks owed to the guest ([`LostTicks::Delay`]).
    owed: Cell<u64>,
    /// `Pit::counter0_programmings` when `owed` was last looked at.
    timer_setup: Cell<u32>,
}

/// A device on the bus that marks the machine's `touched` flag and, for the RTC,
/// brings it to the machine's time before each access.
pub struct Watched<'m, T> {
    dev: &'m RefCell<T>,
    touched: &'m Cell<bool>,
    now: Option<&'m Cell<u64>>,
}

/// Devices that can be brought to a time before an access.
pub trait Timed {
    fn set_now(&mut self, now: u64);
}

impl Timed for Rtc {
    fn set_now(&mut self, now: u64) {
        Rtc::set_now(self, now)
    }
}

impl Timed for I8042 {
    fn set_now(&mut self, _now: u64) {}
}

impl Timed for Port92 {
    fn set_now(&mut self, _now: u64) {}
}

impl<T: PortDevice + Timed> PortDevice for Watched<'_, T> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        self.touched.set(true);
        match self.dev.try_borrow_mut() {
            Ok(mut d) => {
                if let Some(now) = self.now {
                    d.set_now(now.get());
                }
                d.read(port, size)
            }
            Err(_) => size_mask(size),
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.touched.set(true);
        if let Ok(mut d) = self.dev.try_borrow_mut() {
            if let Some(now) = self.now {
                d.set_now(now.get());
            }
            d.write(port, size, value);
        }
    }
}

/// What the machine is built from beyond its chips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcConfig {
    /// The RTC's time at PIT tick 0, seconds since 1970 (the host's clock, read once
    /// at boot).
    pub wall_clock: u64,
    /// Guest RAM, for the CMOS memory-size bytes.
    pub ram_bytes: u64,
    /// Timer ticks that find IRQ0 still requested.
    pub lost_ticks: LostTicks,
}

impl Default for PcConfig {
    fn default() -> Self {
        PcConfig {
            wall_clock: DEFAULT_EPOCH,
            ram_bytes: 64 << 20,
            lost_ticks: LostTicks::default(),
        }
    }
}

/// Who asked for a system reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The keyboard controller (pulse command or output-port bit 0).
    I8042,
    /// System control port A (0x92) bit 0.
    Port92,
}

/// Timer edges seen by one [`Machine::poll`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    /// PIT OUT0 rising edges.
    pub raised: u64,
    /// Ticks the guest will never see.
    pub lost: u64,
    /// Owed ticks raised on IRQ0 late ([`LostTicks::Delay`]).
    pub reinjected: u64,
}

impl Ticks {
    pub fn add(&mut self, t: Ticks) {
        self.raised = self.raised.saturating_add(t.raised);
        self.lost = self.lost.saturating_add(t.lost);
        self.reinjected = self.reinjected.saturating_add(t.reinjected);
    }
}

/// The `&RefCell`s the IO bus holds `&mut` to; they must outlive the bus, so the run
/// loop keeps them next to it.
pub struct BusHandles<'m, S: ConsoleSink> {
    uart: &'m RefCell<Uart16550<S>>,
    pit: &'m RefCell<Pit>,
    port_b: &'m RefCell<Pit>,
    pic: [&'m RefCell<PicPair>; 3],
    rtc: Watched<'m, Rtc>,
    kbc: [Watched<'m, I8042>; 2],
    port92: Watched<'m, Port92>,
}

impl<S: ConsoleSink> Machine<S> {
    /// A machine with [`PcConfig::default`].
    pub fn new(sink: S) -> Self {
        Self::with_config(sink, PcConfig::default())
    }

    pub fn with_config(sink: S, config: PcConfig) -> Self {
        let pit = Pit::new();
        let mut pic = PicPair::new();
        // The PIC's IRQ0 input starts at the level the PIT drives, so the first look
        // does not mistake power-on for a rising edge.
        let out0 = pit.out(0, 0);
        pic.set_irq(TIMER_IRQ, out0);
        Machine {
            uart: RefCell::new(Uart16550::new(COM1_BASE, sink)),
            pit: RefCell::new(pit),
            pic: RefCell::new(pic),
            rtc: RefCell::new(Rtc::new(config.wall_clock, config.ram_bytes, 0)),
            kbc: RefCell::new(I8042::new()),
            port92: RefCell::new(Port92::new()),
            lines: Cell::new(u8::from(out0) << LINE_IRQ0),
            now: Cell::new(0),
            touched: Cell::new(true),
            rtc_due: Cell::new(0),
            reset: Cell::new(None),
            lost_ticks: config.lost_ticks,
            owed: Cell::new(0),
            timer_setup: Cell::new(0),
        }
    }

    pub fn handles(&self) -> BusHandles<'_, S> {
        BusHandles {
            uart: &self.uart,
            pit: &self.pit,
            port_b: &self.pit,
            pic: [&self.pic; 3],
            rtc: self.watched(&self.rtc, true),
            kbc: [
                self.watched(&self.kbc, false),
                self.watched(&self.kbc, false),
            ],
            port92: self.watched(&self.port92, false),
        }
    }

    fn watched<'m, T>(&'m self, dev: &'m RefCell<T>, timed: bool) -> Watched<'m, T> {
        Watched {
            dev,
            touched: &self.touched,
            now: timed.then_some(&self.now),
        }
    }

    /// Puts every device on `bus`.
    pub fn register<'a>(
        handles: &'a mut BusHandles<'_, S>,
        bus: &mut IoBus<'a>,
    ) -> Result<(), BusError> {
        let uart_ports = handles.uart.borrow().ports();
        let pic_ports = PicPair::ports();
        bus.register(uart_ports, &mut handles.uart)?;
        bus.register(PIT_PORTS, &mut handles.pit)?;
        bus.register(PORT_B..=PORT_B, &mut handles.port_b)?;
        let [a, b, c] = &mut handles.pic;
        let [ra, rb, rc] = pic_ports;
        bus.register(ra, a)?;
        bus.register(rb, b)?;
        bus.register(rc, c)?;
        bus.register(RTC_PORTS, &mut handles.rtc)?;
        let [data, cmd] = &mut handles.kbc;
        bus.register(I8042_DATA_PORTS, data)?;
        bus.register(I8042_CMD_PORTS, cmd)?;
        bus.register(PORT_92..=PORT_92, &mut handles.port92)
    }

    /// Brings the time-based devices (PIT, RTC) to `now` (PIT ticks) before a device
    /// access, without looking at interrupt lines.
    pub fn set_now(&self, now: u64) {
        self.pit.borrow_mut().set_now(now);
        self.now.set(self.now.get().max(now));
    }

    /// Whether the guest asked for a system reset, and how (latched).
    pub fn reset_request(&self) -> Option<ResetSource> {
        if self.reset.get().is_none() && self.touched.get() {
            self.reset.set(if self.kbc.borrow().reset_requested() {
                Some(ResetSource::I8042)
            } else if self.port92.borrow().reset_requested() {
                Some(ResetSource::Port92)
            } else {
                None
            });
        }
        self.reset.get()
    }

    /// Ticks owed to the guest right now ([`LostTicks::Delay`]).
    pub fn owed_ticks(&self) -> u64 {
        self.owed.get()
    }

    /// Brings the devices to time `now` (PIT ticks) and their interrupt outputs onto
    /// the PIC's inputs, returning the timer edges seen (the caller counts them): PIT OUT0 on IRQ0 (edge-triggered: each rising
    /// edge since the last look raises a request), the UART's interrupt line on IRQ4,
    /// the 8042's IRQ1/IRQ12 and the RTC's IRQ8. Those three hold their line up until
    /// the guest reads the device; a line the guest dropped and the device raised again
    /// between two looks is lowered first, so the edge-triggered 8259A sees the new
    /// request (on the chips the line does go low in between).
    pub fn poll(&self, now: u64) -> Ticks {
        let mut pit = self.pit.borrow_mut();
        let mut pic = self.pic.borrow_mut();
        let mut ticks = Ticks::default();
        let setup = pit.counter0_programmings();
        if setup != self.timer_setup.replace(setup) {
            // The guest set its timer up anew (a new mode, a one-shot): ticks owed by
            // the old setup are not wanted any more. (Masking IRQ0 says nothing: Linux
            // masks it around every timer interrupt it handles.)
            ticks.lost = self.owed.replace(0);
        }
        let edges = pit.irq0_edges(now);
        if edges > 0 {
            // The 8259A latches one request per line: a tick that finds IRQ0 still
            // requested, and all but one of several ticks between two looks, miss it
            // (as on hardware whose CPU kept interrupts off that long).
            let m = pic.master();
            let bit = 1u8 << TIMER_IRQ;
            let missed = edges - 1 + u64::from(m.irr() & bit != 0);
            // Only ticks missed because the CPU did not take the pending one (the
            // guest had interrupts off, or sluice was handling an exit) are owed.
            // With IRQ0 masked or in service the guest's own PIC state holds ticks
            // back, and they are lost as on hardware.
            let held_back = (m.imr() | m.isr()) & bit != 0;
            ticks.raised = edges;
            if self.lost_ticks == LostTicks::Delay && !held_back {
                let owed = self.owed.get().saturating_add(missed);
                let kept = owed.min(MAX_OWED_TICKS);
                ticks.lost += owed - kept;
                self.owed.set(kept);
            } else {
                ticks.lost += missed;
            }
            timer_edge(&mut pic);
            self.lines.set(self.lines.get() | 1 << LINE_IRQ0);
        }
        let mut lines = self.lines.get();
        for (bit, irq, level) in [
            (LINE_IRQ0, TIMER_IRQ, pit.out(0, now)),
            (LINE_IRQ4, COM1_IRQ, self.uart.borrow().irq_line()),
        ] {
            if level != (lines & 1 << bit != 0) {
                pic.set_irq(irq, level);
                lines ^= 1 << bit;
            }
        }
        self.lines.set(lines);
        if self.owed.get() > 0 {
            let m = pic.master();
            let bit = 1u8 << TIMER_IRQ;
            if (m.irr() | m.isr() | m.imr()) & bit == 0 && lines & 1 << LINE_IRQ0 != 0 {
                // The last tick is handled, IRQ0 is unmasked and OUT0 is high (a
                // request raised while it is low would be withdrawn at once: 8259A edge
                // mode is edge AND level).
                timer_edge(&mut pic);
                self.owed.set(self.owed.get() - 1);
                ticks.reinjected += 1;
            }
        }
        self.now.set(self.now.get().max(now));
        if !self.touched.get() && now < self.rtc_due.get() {
            return ticks;
        }
        // Before `touched` is cleared: a reset request must not go unseen.
        self.reset_request();
        self.touched.set(false);
        let (rtc_fell, rtc_level) = {
            let mut rtc = self.rtc.borrow_mut();
            rtc.set_now(now);
            self.rtc_due.set(rtc.due());
            (rtc.take_fell(), rtc.irq_line())
        };
        let ([kbd_fell, aux_fell], kbd_level, aux_level) = {
            let mut kbc = self.kbc.borrow_mut();
            (kbc.take_fell(), kbc.irq1(), kbc.irq12())
        };
        let level = u8::from(kbd_level) | u8::from(rtc_level) << 1 | u8::from(aux_level) << 2;
        let fell = u8::from(kbd_fell) | u8::from(rtc_fell) << 1 | u8::from(aux_fell) << 2;
        let mut lines = self.lines.get();
        // The common case, nothing moved, costs two comparisons (this runs after every
        // coalesced access).
        if level == lines & 0b111 && fell & lines == 0 {
            return ticks;
        }
        for (bit, irq) in [(0, KEYBOARD_IRQ), (1, RTC_IRQ), (2, AUX_IRQ)] {
            let mask = 1u8 << bit;
            if fell & lines & mask != 0 {
                pic.set_irq(irq, false);
                lines &= !mask;
            }
            if (level ^ lines) & mask != 0 {
                pic.set_irq(irq, level & mask != 0);
                lines ^= mask;
            }
        }
        self.lines.set(lines);
        ticks
    }

    /// Whether the PIC has an interrupt for the CPU right now.
    pub fn interrupt_pending(&self) -> bool {
        self.pic.borrow().pending_vector().is_some()
    }

    /// The PIC pair's INTR output and INTA cycle, as the CPU sees them.
    pub fn intr(&self) -> Intr<'_> {
        Intr {
            pic: self.pic.borrow_mut(),
            irq: None,
        }
    }

    /// When (PIT ticks) the guest next needs the CPU for a timer interrupt (PIT IRQ0
    /// edge or an enabled RTC flag), if ever.
    pub fn next_timer_event(&self, now: u64) -> Option<u64> {
        let pit = self.pit.borrow().next_irq0_edge(now);
        let rtc = self.rtc.borrow().next_event(now);
        match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// [`Self::next_timer_event`] without the events the guest cannot take now: a PIT
    /// edge while IRQ0 is masked, an RTC interrupt while IRQ8 is.
    pub fn next_unmasked_timer_event(&self, now: u64) -> Option<u64> {
        let pic = self.pic.borrow();
        let pit = if pic.irq_masked(TIMER_IRQ) {
            None
        } else {
            self.pit.borrow().next_irq0_edge(now)
        };
        let rtc = if pic.irq_masked(8) {
            None
        } else {
            self.rtc.borrow().next_event(now)
        };
        match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a halted guest could still be woken: an interrupt is pending at the PIC
    /// or the timer will produce another edge.
    pub fn can_wake(&self, now: u64) -> bool {
        self.pic.borrow().pending_vector().is_some() || self.next_timer_event(now).is_some()
    }
}

/// A rising edge on IRQ0 (the 8259A's edge-triggered inputs latch a request on it).
fn timer_edge(pic: &mut PicPair) {
    pic.set_irq(TIMER_IRQ, false);
    pic.set_irq(TIMER_IRQ, true);
}

/// The board's INTR line: the PIC pair's pending vector and the INTA cycle, which
/// also records the IRQ line the acknowledged vector came from (`None` for a spurious
/// IRQ7/IRQ15), so the run loop can count injections by line.
pub struct Intr<'a> {
    pic: core::cell::RefMut<'a, PicPair>,
    /// The IRQ line of the last acknowledged vector.
    pub irq: Option<u8>,
}

impl InterruptController for Intr<'_> {
    fn pending_vector(&self) -> Option<u8> {
        self.pic.pending_vector()
    }

    fn acknowledge(&mut self) -> u8 {
        let vector = self.pic.acknowledge();
        let (m, s) = (self.pic.master(), self.pic.slave());
        let in_service = |isr: u8, line: u8| isr & (1 << line) != 0;
        self.irq = if vector.wrapping_sub(m.vector_base()) < 8 {
            let line = vector - m.vector_base();
            (in_service(m.isr(), line) || m.icw4() & 0x02 != 0).then_some(line)
        } else if vector.wrapping_sub(s.vector_base()) < 8 {
            let line = vector - s.vector_base();
            (in_service(s.isr(), line) || s.icw4() & 0x02 != 0).then_some(8 + line)
        } else {
            None
        };
        vector
    }
}

impl InterruptController for PicPair {
    fn pending_vector(&self) -> Option<u8> {
        PicPair::pending_vector(self)
    }

    fn acknowledge(&mut self) -> u8 {
        PicPair::acknowledge(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pit8254::PIT_HZ;
    use crate::stats::Stats;
    use crate::vcpu::irq::Delivery;
    use crate::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};

    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl ConsoleSink for Sink {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    fn bus_io(m: &Machine<Sink>, f: impl FnOnce(&mut IoBus)) {
        let mut h = m.handles();
        let mut bus = IoBus::new();
        Machine::register(&mut h, &mut bus).unwrap();
        f(&mut bus);
    }

    /// Linux-style PIC init (bases 0x20/0x28), everything masked but `unmasked`.
    fn init_pic(bus: &mut IoBus, unmasked: u8) {
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            bus.write(port, 1, v);
        }
        for (port, v) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            bus.write(port, 1, v);
        }
        bus.write(0x21, 1, u32::from(!unmasked));
        bus.write(0xa1, 1, 0xff);
    }

    /// What the run loop does before an entry: the devices to `now`, ticks counted.
    fn sync(m: &Machine<Sink>, now: u64, stats: &mut Stats) {
        stats.count_ticks(m.poll(now));
    }

    /// What the run loop does next: inject the pending interrupt (counted by line).
    fn deliver(m: &Machine<Sink>, v: &mut SoftVmcs, stats: &mut Stats) -> Delivery {
        crate::vcpu::irq::deliver_from(v, m, stats)
    }

    fn guest_with_if() -> SoftVmcs {
        let mut v = SoftVmcs::new();
        v.write(VmcsField::GuestRflags, 0x202);
        v
    }

    #[test]
    fn unmasked_timer_events_leave_out_a_masked_irq0() {
        let m = Machine::new(Sink::default());
        bus_io(&m, |bus| {
            init_pic(bus, 0x00); // every IRQ masked
            bus.write(0x43, 1, 0x34);
            bus.write(0x40, 1, 1193 & 0xff);
            bus.write(0x40, 1, 1193 >> 8);
        });
        let mut stats = Stats::new();
        sync(&m, 101, &mut stats);
        assert!(m.next_timer_event(101).is_some());
        assert_eq!(m.next_unmasked_timer_event(101), None);
        bus_io(&m, |bus| bus.write(0x21, 1, 0xFE)); // unmask IRQ0
        assert_eq!(m.next_unmasked_timer_event(101), m.next_timer_event(101));
    }

    #[test]
    fn pit_rate_generator_raises_irq0_which_is_injected_and_counted() {
        let m = Machine::new(Sink::default());
        bus_io(&m, |bus| {
            init_pic(bus, 0x01);
            bus.write(0x43, 1, 0x34); // channel 0, LSB/MSB, mode 2
            bus.write(0x40, 1, 1193 & 0xff);
            bus.write(0x40, 1, 1193 >> 8);
        });
        let mut stats = Stats::new();
        let mut v = guest_with_if();
        sync(&m, 100, &mut stats);
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Idle);
        sync(&m, 101, &mut stats);
        let next = m
            .next_timer_event(101)
            .expect("a periodic timer has a next edge");
        assert!(next > 101 && next <= 101 + 1193, "{next}");
        sync(&m, next, &mut stats);
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x20));
        assert_eq!(stats.irq_injected[0], 1);
        assert_eq!(stats.timer_ticks, 1);
        assert_eq!(stats.timer_ticks_lost, 0);
    }

    /// A machine with the PIT in mode 2 at 100 PIT clocks per tick, only IRQ0 unmasked.
    fn ticking(lost_ticks: LostTicks) -> Machine<Sink> {
        let m = Machine::with_config(
            Sink::default(),
            PcConfig {
                lost_ticks,
                ..PcConfig::default()
            },
        );
        bus_io(&m, |bus| {
            init_pic(bus, 0x01);
            bus.write(0x43, 1, 0x34);
            bus.write(0x40, 1, 100);
            bus.write(0x40, 1, 0);
        });
        m
    }

    /// The guest's timer handler: takes the interrupt if one is pending and sends a
    /// non-specific EOI. Whether it took one.
    fn take_tick(m: &Machine<Sink>, now: u64, stats: &mut Stats) -> bool {
        sync(m, now, stats);
        let mut v = guest_with_if();
        let took = deliver(m, &mut v, stats) == Delivery::Injected(0x20);
        bus_io(m, |bus| bus.write(0x20, 1, 0x20));
        took
    }

    #[test]
    fn ticks_that_find_irq0_still_requested_are_counted_lost_when_discarded() {
        let m = ticking(LostTicks::Discard);
        let mut stats = Stats::new();
        // Ten periods pass without the guest taking an interrupt.
        sync(&m, 1000 + 5, &mut stats);
        assert!(stats.timer_ticks >= 9);
        assert_eq!(stats.timer_ticks_lost, stats.timer_ticks - 1);
        assert!(take_tick(&m, 1006, &mut stats));
        assert_eq!(stats.irq_injected[0], 1);
        // Nothing is owed: the next interrupt comes with the next edge.
        assert!(!take_tick(&m, 1007, &mut stats));
        assert_eq!(m.owed_ticks(), 0);
        assert_eq!(stats.timer_ticks_reinjected, 0);
    }

    #[test]
    fn delayed_ticks_are_raised_one_by_one_after_each_eoi() {
        let m = ticking(LostTicks::Delay);
        let mut stats = Stats::new();
        sync(&m, 1000 + 5, &mut stats);
        let raised = stats.timer_ticks;
        assert!(raised >= 9, "{raised}");
        assert_eq!(stats.timer_ticks_lost, 0);
        assert_eq!(m.owed_ticks(), raised - 1);
        // Before the guest ends the interrupt in service, no second request.
        sync(&m, 1006, &mut stats);
        let mut v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x20));
        sync(&m, 1007, &mut stats);
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Idle);
        assert_eq!(stats.timer_ticks_reinjected, 0);
        bus_io(&m, |bus| bus.write(0x20, 1, 0x20));
        // Then one owed tick per EOI, all within the same period: every tick arrives.
        let mut taken = 1;
        while take_tick(&m, 1008, &mut stats) {
            taken += 1;
        }
        assert_eq!(taken, raised);
        assert_eq!(stats.timer_ticks_reinjected, raised - 1);
        assert_eq!(stats.irq_injected[0], raised);
        assert_eq!(m.owed_ticks(), 0);
    }

    #[test]
    fn ticks_the_guest_holds_back_by_mask_or_in_service_are_not_owed() {
        let m = ticking(LostTicks::Delay);
        let mut stats = Stats::new();
        // In service (acknowledged, no EOI yet) for ten periods: lost, as on hardware.
        sync(&m, 101, &mut stats);
        let mut v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x20));
        sync(&m, 1105, &mut stats);
        assert_eq!(m.owed_ticks(), 0);
        assert!(stats.timer_ticks_lost >= 9, "{stats:?}");
        bus_io(&m, |bus| bus.write(0x20, 1, 0x20));
        // Masked: the same.
        bus_io(&m, |bus| bus.write(0x21, 1, 0xff));
        let lost = stats.timer_ticks_lost;
        sync(&m, 2105, &mut stats);
        assert_eq!(m.owed_ticks(), 0);
        assert!(stats.timer_ticks_lost >= lost + 9, "{stats:?}");
        // Unmasked, the CPU not taking the request: owed.
        bus_io(&m, |bus| bus.write(0x21, 1, 0xfe));
        sync(&m, 3105, &mut stats);
        assert!(m.owed_ticks() >= 9);
    }

    #[test]
    fn owed_ticks_wait_while_masked_and_are_dropped_when_the_timer_is_set_up_anew() {
        let m = ticking(LostTicks::Delay);
        let mut stats = Stats::new();
        sync(&m, 1000 + 5, &mut stats);
        let owed = m.owed_ticks();
        assert!(owed >= 8);
        // Linux masks IRQ0 while it handles a tick: nothing owed is dropped.
        bus_io(&m, |bus| bus.write(0x21, 1, 0xff));
        assert!(!take_tick(&m, 1006, &mut stats));
        assert_eq!(m.owed_ticks(), owed);
        bus_io(&m, |bus| bus.write(0x21, 1, 0xfe));
        assert!(take_tick(&m, 1007, &mut stats));
        assert!(take_tick(&m, 1008, &mut stats));
        assert_eq!(m.owed_ticks(), owed - 1);
        assert_eq!(stats.timer_ticks_lost, 0);
        // A new control word for counter 0 (here: the same mode again).
        bus_io(&m, |bus| {
            bus.write(0x43, 1, 0x34);
            bus.write(0x40, 1, 100);
            bus.write(0x40, 1, 0);
        });
        sync(&m, 1009, &mut stats);
        assert_eq!(m.owed_ticks(), 0);
        assert_eq!(stats.timer_ticks_lost, owed - 1);
        // Far more periods than can be owed pass at once.
        let mut stats = Stats::new();
        sync(&m, 1009 + 100 * (MAX_OWED_TICKS + 50), &mut stats);
        assert_eq!(m.owed_ticks(), MAX_OWED_TICKS);
        // The first edge is latched, the rest missed it; the excess is lost.
        assert_eq!(
            stats.timer_ticks_lost + MAX_OWED_TICKS + 1,
            stats.timer_ticks
        );
        assert!(stats.timer_ticks_lost >= 49, "{stats:?}");
    }

    #[test]
    fn uart_thre_interrupt_reaches_irq4_only_with_out2() {
        let m = Machine::new(Sink::default());
        let mut stats = Stats::new();
        bus_io(&m, |bus| {
            init_pic(bus, 1 << 4);
            bus.write(0x3f9, 1, 0x02); // IER: THR empty
        });
        sync(&m, 0, &mut stats);
        assert_eq!(
            m.pic.borrow().pending_vector(),
            None,
            "OUT2 off: line not on the bus"
        );
        bus_io(&m, |bus| bus.write(0x3fc, 1, 0x08)); // MCR.OUT2
        sync(&m, 0, &mut stats);
        let mut v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x24));
        assert_eq!(stats.irq_injected[4], 1);
    }

    #[test]
    fn halted_guest_without_sources_cannot_wake() {
        let m = Machine::new(Sink::default());
        assert!(!m.can_wake(0));
        bus_io(&m, |bus| {
            bus.write(0x43, 1, 0x34);
            bus.write(0x40, 1, 0x10);
            bus.write(0x40, 1, 0);
        });
        assert!(m.can_wake(0));
    }

    /// Linux-style PIC init with the slave's lines unmasked too.
    fn init_pic_both(bus: &mut IoBus, master_unmasked: u8, slave_unmasked: u8) {
        init_pic(bus, master_unmasked | 1 << 2);
        bus.write(0xa1, 1, u32::from(!slave_unmasked));
    }

    #[test]
    fn rtc_periodic_interrupt_reaches_irq8_each_time_register_c_is_read() {
        let m = Machine::new(Sink::default());
        let mut stats = Stats::new();
        bus_io(&m, |bus| {
            init_pic_both(bus, 0, 0x01);
            bus.write(0x70, 1, 0x0b);
            let b = bus.read(0x71, 1);
            bus.write(0x71, 1, b | 0x40); // PIE at the default 1024 Hz
        });
        let first = m.next_timer_event(0).expect("PIE makes an RTC event");
        assert!(first <= PIT_HZ / 1024 + 1, "{first}");
        let mut v = guest_with_if();
        sync(&m, first, &mut stats);
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x28));
        assert_eq!(stats.irq_injected[8], 1);
        // The handler reads C (line drops), EOIs both PICs; by the next look the RTC
        // has raised the line again: that is a new edge.
        bus_io(&m, |bus| {
            bus.write(0x70, 1, 0x0c);
            assert_eq!(bus.read(0x71, 1), 0xc0);
            bus.write(0xa0, 1, 0x20);
            bus.write(0x20, 1, 0x20);
        });
        let second = m.next_timer_event(first).unwrap();
        m.set_now(second + 5);
        sync(&m, second + 5, &mut stats);
        v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x28));
        // Without reading C, no further interrupt however long.
        bus_io(&m, |bus| {
            bus.write(0xa0, 1, 0x20);
            bus.write(0x20, 1, 0x20);
        });
        sync(&m, second + PIT_HZ, &mut stats);
        v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Idle);
        assert_eq!(stats.irq_injected[8], 2);
    }

    #[test]
    fn keyboard_bytes_raise_irq1_one_edge_per_byte() {
        let m = Machine::new(Sink::default());
        let mut stats = Stats::new();
        let mut v = guest_with_if();
        bus_io(&m, |bus| {
            init_pic(bus, 0x02);
            bus.write(0x60, 1, 0xf2); // identify: FA AB 83
        });
        for want in [0xfa, 0xab, 0x83] {
            sync(&m, 0, &mut stats);
            v = guest_with_if();
            assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x21));
            bus_io(&m, |bus| {
                assert_eq!(bus.read(0x64, 1) & 1, 1);
                assert_eq!(bus.read(0x60, 1), want);
                bus.write(0x20, 1, 0x20);
            });
        }
        sync(&m, 0, &mut stats);
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Idle);
        assert_eq!(stats.irq_injected[1], 3);
    }

    #[test]
    fn aux_loopback_raises_irq12_through_the_slave() {
        let m = Machine::new(Sink::default());
        let mut stats = Stats::new();
        bus_io(&m, |bus| {
            init_pic_both(bus, 0, 1 << 4);
            bus.write(0x64, 1, 0x60);
            bus.write(0x60, 1, 0x47); // KBDINT | AUXINT | SYS | XLATE
            bus.write(0x64, 1, 0xd3);
            bus.write(0x60, 1, 0xa5);
        });
        sync(&m, 0, &mut stats);
        let mut v = guest_with_if();
        assert_eq!(deliver(&m, &mut v, &mut stats), Delivery::Injected(0x2c));
        assert_eq!(stats.irq_injected[12], 1);
    }

    #[test]
    fn reset_requests_are_reported_with_their_source() {
        let m = Machine::new(Sink::default());
        assert_eq!(m.reset_request(), None);
        bus_io(&m, |bus| bus.write(0x64, 1, 0xfe));
        // A poll in between (which clears the accessed-device flag) must not hide it.
        sync(&m, 10, &mut Stats::new());
        assert_eq!(m.reset_request(), Some(ResetSource::I8042));
        let m = Machine::new(Sink::default());
        bus_io(&m, |bus| {
            assert_eq!(bus.read(0x92, 1), 0x02);
            bus.write(0x92, 1, 0x03);
        });
        assert_eq!(m.reset_request(), Some(ResetSource::Port92));
    }

    #[test]
    fn cmos_memory_size_follows_the_configuration() {
        let m = Machine::with_config(
            Sink::default(),
            PcConfig {
                ram_bytes: 48 << 20,
                ..PcConfig::default()
            },
        );
        bus_io(&m, |bus| {
            let mut cmos = |i: u32| {
                bus.write(0x70, 1, i);
                bus.read(0x71, 1)
            };
            assert_eq!(cmos(0x17) | cmos(0x18) << 8, 47 * 1024);
            assert_eq!(cmos(0x34) | cmos(0x35) << 8, 32 * 16);
            assert_eq!(cmos(0x09), 0x26);
            assert_eq!(cmos(0x32), 0x20);
        });
    }

    #[test]
    fn devices_answer_on_the_bus() {
        let m = Machine::new(Sink::default());
        bus_io(&m, |bus| {
            bus.write(0x3ff, 1, 0x5a);
            assert_eq!(bus.read(0x3ff, 1), 0x5a);
            assert_eq!(bus.read(0x3fd, 1) & 0x60, 0x60);
            bus.write(0x3f8, 1, u32::from(b'x'));
            bus.write(0x61, 1, 0x01);
            assert_eq!(bus.read(0x61, 1) & 0x01, 0x01);
            bus.write(0x4d0, 1, 0xf8);
            assert_eq!(bus.read(0x4d0, 1), 0xf8);
            assert_ne!(bus.read(0x64, 1), 0xff);
            bus.write(0x70, 1, 0x0d);
            assert_eq!(bus.read(0x71, 1), 0x80);
            assert_eq!(bus.read(0x92, 1), 0x02);
            assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
        });
        assert_eq!(m.uart.borrow().sink().0, b"x");
    }
}
