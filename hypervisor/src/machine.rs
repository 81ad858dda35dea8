//! The virtual PC around the guest: the 16550A UART (COM1, IRQ4), the 8254 PIT (IRQ0,
//! port 0x61) and the 8259A pair, plus the wiring between them that no single chip
//! owns: device outputs onto PIC inputs, PIC output into the CPU (via `irq`), and the
//! next moment a timer needs the CPU (for the VMX-preemption timer).
//!
//! Devices sit in `RefCell`s so the IO bus and the run loop can both reach them (see
//! `impl PortDevice for &RefCell<T>` in `iobus`). Nothing here touches hardware; the
//! kernel passes the time in PIT ticks and the VMCS.

use core::cell::RefCell;

use crate::iobus::{BusError, ConsoleSink, IoBus};
use crate::irq::{self, Delivery, InterruptController};
use crate::pic8259::PicPair;
use crate::pit8254::{Pit, PIT_PORTS, PORT_B};
use crate::stats::Stats;
use crate::uart16550::Uart16550;
use crate::vmcs::Vmcs;

/// COM1 (PC/AT I/O map) and its IRQ.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
/// The PIT's channel 0 drives IRQ0.
pub const TIMER_IRQ: u8 = 0;

pub struct Machine<S: ConsoleSink> {
    pub uart: RefCell<Uart16550<S>>,
    pub pit: RefCell<Pit>,
    pub pic: RefCell<PicPair>,
}

/// Timer edges seen by one [`Machine::poll`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    pub raised: u64,
    pub lost: u64,
}

/// The `&RefCell`s the IO bus holds `&mut` to; they must outlive the bus, so the run
/// loop keeps them next to it.
pub struct BusHandles<'m, S: ConsoleSink> {
    uart: &'m RefCell<Uart16550<S>>,
    pit: &'m RefCell<Pit>,
    port_b: &'m RefCell<Pit>,
    pic: [&'m RefCell<PicPair>; 3],
}

impl<S: ConsoleSink> Machine<S> {
    pub fn new(sink: S) -> Self {
        let pit = Pit::new();
        let mut pic = PicPair::new();
        // The PIC's IRQ0 input starts at the level the PIT drives, so the first look
        // does not mistake power-on for a rising edge.
        pic.set_irq(TIMER_IRQ, pit.out(0, 0));
        Machine {
            uart: RefCell::new(Uart16550::new(COM1_BASE, sink)),
            pit: RefCell::new(pit),
            pic: RefCell::new(pic),
        }
    }

    pub fn handles(&self) -> BusHandles<'_, S> {
        BusHandles {
            uart: &self.uart,
            pit: &self.pit,
            port_b: &self.pit,
            pic: [&self.pic; 3],
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
        bus.register(rc, c)
    }

    /// Brings the devices to time `now` (PIT ticks) and their interrupt outputs onto
    /// the PIC's inputs, counting timer ticks in `stats`.
    pub fn sync(&self, now: u64, stats: &mut Stats) {
        let t = self.poll(now);
        stats.timer_ticks = stats.timer_ticks.saturating_add(t.raised);
        stats.timer_ticks_lost = stats.timer_ticks_lost.saturating_add(t.lost);
    }

    /// [`Machine::sync`] without the statistics, for callers that hold them elsewhere
    /// (the coalescer's device accesses): PIT OUT0 on IRQ0 (edge-triggered: each rising
    /// edge since the last look raises a request), the UART's interrupt line on IRQ4.
    pub fn poll(&self, now: u64) -> Ticks {
        let mut pit = self.pit.borrow_mut();
        let mut pic = self.pic.borrow_mut();
        let edges = pit.irq0_edges(now);
        let mut ticks = Ticks::default();
        if edges > 0 {
            // The 8259A latches one request per line: a tick that finds IRQ0 still
            // requested, and all but one of several ticks between two looks, are lost
            // (as on hardware whose CPU kept interrupts off that long).
            let already = pic.master().irr() & (1 << TIMER_IRQ) != 0;
            ticks = Ticks {
                raised: edges,
                lost: edges - 1 + u64::from(already),
            };
            pic.set_irq(TIMER_IRQ, false);
            pic.set_irq(TIMER_IRQ, true);
        }
        pic.set_irq(TIMER_IRQ, pit.out(0, now));
        pic.set_irq(COM1_IRQ, self.uart.borrow().irq_line());
        ticks
    }

    /// Whether the PIC has an interrupt for the CPU right now.
    pub fn interrupt_pending(&self) -> bool {
        self.pic.borrow().pending_vector().is_some()
    }

    /// Injects the PIC's pending interrupt if the guest can take it (else asks for an
    /// interrupt window), counting it by IRQ line.
    pub fn deliver(&self, vmcs: &mut impl Vmcs, stats: &mut Stats) -> Delivery {
        let mut pic = self.pic.borrow_mut();
        let mut counted = Counted {
            pic: &mut pic,
            irq: None,
        };
        let d = irq::deliver(vmcs, &mut counted);
        if let Delivery::Injected(_) = d {
            match counted.irq {
                Some(irq) => {
                    let slot = &mut stats.irq_injected[usize::from(irq & 15)];
                    *slot = slot.saturating_add(1);
                }
                None => stats.irq_spurious = stats.irq_spurious.saturating_add(1),
            }
        }
        d
    }

    /// When (PIT ticks) the guest next needs the CPU for a timer interrupt, if ever.
    pub fn next_timer_event(&self, now: u64) -> Option<u64> {
        self.pit.borrow().next_irq0_edge(now)
    }

    /// Whether a halted guest could still be woken: an interrupt is pending at the PIC
    /// or the timer will produce another edge.
    pub fn can_wake(&self, now: u64) -> bool {
        self.pic.borrow().pending_vector().is_some() || self.next_timer_event(now).is_some()
    }
}

/// Wraps the PIC for one delivery so the acknowledged IRQ line is known: the vector
/// maps back to a line through the chips' vector bases; a vector that maps to no line
/// in service is spurious.
struct Counted<'a> {
    pic: &'a mut PicPair,
    irq: Option<u8>,
}

impl InterruptController for Counted<'_> {
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
    use crate::vmcs::{SoftVmcs, VmcsField};

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

    fn guest_with_if() -> SoftVmcs {
        let mut v = SoftVmcs::new();
        v.write(VmcsField::GuestRflags, 0x202);
        v
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
        m.sync(100, &mut stats);
        assert_eq!(m.deliver(&mut v, &mut stats), Delivery::Idle);
        m.sync(101, &mut stats);
        let next = m
            .next_timer_event(101)
            .expect("a periodic timer has a next edge");
        assert!(next > 101 && next <= 101 + 1193, "{next}");
        m.sync(next, &mut stats);
        assert_eq!(m.deliver(&mut v, &mut stats), Delivery::Injected(0x20));
        assert_eq!(stats.irq_injected[0], 1);
        assert_eq!(stats.timer_ticks, 1);
        assert_eq!(stats.timer_ticks_lost, 0);
    }

    #[test]
    fn ticks_that_find_irq0_still_requested_are_counted_lost() {
        let m = Machine::new(Sink::default());
        bus_io(&m, |bus| {
            init_pic(bus, 0x01);
            bus.write(0x43, 1, 0x34);
            bus.write(0x40, 1, 100);
            bus.write(0x40, 1, 0);
        });
        let mut stats = Stats::new();
        // Ten periods pass without the guest taking an interrupt.
        m.sync(1000 + 5, &mut stats);
        assert!(stats.timer_ticks >= 9);
        assert_eq!(stats.timer_ticks_lost, stats.timer_ticks - 1);
        let mut v = guest_with_if();
        assert_eq!(m.deliver(&mut v, &mut stats), Delivery::Injected(0x20));
        assert_eq!(stats.irq_injected[0], 1);
    }

    #[test]
    fn uart_thre_interrupt_reaches_irq4_only_with_out2() {
        let m = Machine::new(Sink::default());
        let mut stats = Stats::new();
        bus_io(&m, |bus| {
            init_pic(bus, 1 << 4);
            bus.write(0x3f9, 1, 0x02); // IER: THR empty
        });
        m.sync(0, &mut stats);
        assert_eq!(
            m.pic.borrow().pending_vector(),
            None,
            "OUT2 off: line not on the bus"
        );
        bus_io(&m, |bus| bus.write(0x3fc, 1, 0x08)); // MCR.OUT2
        m.sync(0, &mut stats);
        let mut v = guest_with_if();
        assert_eq!(m.deliver(&mut v, &mut stats), Delivery::Injected(0x24));
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
            assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
        });
        assert_eq!(m.uart.borrow().sink().0, b"x");
    }
}
