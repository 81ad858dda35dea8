//! The devices of one run: the virtual PC (UART, PIT, PIC pair) and a tracing device,
//! every port access recorded; the device state compared after a run; and the host
//! and IO environment ([`BoardIo`], [`NullHost`]) the coalescer and the single-exit
//! handler run with.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::ops::RangeInclusive;

use crate::devices::board::{Machine, Ticks};
use crate::devices::bus::{ConsoleSink, IoBus, PortDevice, UnknownPort, TOP_UNKNOWN};
use crate::devices::pic8259::PicPair;
use crate::devices::pit8254::{PIT_PORTS, PORT_B};
use crate::timebase::Timebase;
use crate::vcpu::exits::HostOps;
use crate::vcpu::run::BoardIo;

/// One port access as a device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) struct PortAccess {
    is_in: bool,
    port: u16,
    size: u8,
    pub(super) value: u32,
}

/// Ports of the tracing device: reads return a deterministic pseudo-random sequence
/// that also depends on every value written, so order and values both matter.
const NOISE_PORTS: RangeInclusive<u16> = 0xE0..=0xE7;
pub(in crate::coalesce) const COM1: u16 = 0x3F8;

struct Noise {
    state: u64,
}

impl Noise {
    fn read(&mut self, port: u16) -> u32 {
        self.state = (self.state ^ u64::from(port))
            .wrapping_mul(0x5851_F42D_4C95_7F2D)
            .wrapping_add(0x1405_7B7E_F767_814F);
        (self.state >> 29) as u32
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.state ^= (u64::from(value) << 16) ^ (u64::from(size) << 8) ^ u64::from(port);
        self.state = self.state.rotate_left(17);
    }
}

#[derive(Default)]
pub(in crate::coalesce) struct Sink(pub Vec<u8>);

impl ConsoleSink for Sink {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// The device set of one run: the virtual PC (UART at 0x3F8, PIT, PIC pair) and the
/// tracing device, every access recorded in `trace`.
pub(in crate::coalesce) struct Board {
    machine: Machine<Sink>,
    noise: RefCell<Noise>,
    pub trace: RefCell<Vec<PortAccess>>,
}

/// The bus's view of the board for one port range.
struct BoardPort<'a> {
    board: &'a Board,
}

impl PortDevice for BoardPort<'_> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let v = self.board.dispatch_read(port, size);
        self.board.trace.borrow_mut().push(PortAccess {
            is_in: true,
            port,
            size,
            value: v,
        });
        v
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.board.trace.borrow_mut().push(PortAccess {
            is_in: false,
            port,
            size,
            value,
        });
        self.board.dispatch_write(port, size, value);
    }
}

/// What the bus counted for unclaimed ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::coalesce) struct Unknown {
    reads: u64,
    writes: u64,
    top: [Option<UnknownPort>; TOP_UNKNOWN],
}

impl Board {
    pub(in crate::coalesce) fn new(seed: u64) -> Board {
        Board {
            machine: Machine::new(Sink::default()),
            noise: RefCell::new(Noise {
                state: seed ^ 0xA5A5_5A5A_0F0F_F0F0,
            }),
            trace: RefCell::new(Vec::new()),
        }
    }

    fn ranges(&self) -> Vec<RangeInclusive<u16>> {
        let [a, b, c] = PicPair::ports();
        vec![
            self.machine.uart.borrow().ports(),
            PIT_PORTS,
            PORT_B..=PORT_B,
            a,
            b,
            c,
            NOISE_PORTS,
        ]
    }

    fn dispatch_read(&self, port: u16, size: u8) -> u32 {
        let m = &self.machine;
        if self.machine.uart.borrow().ports().contains(&port) {
            let mut d = &m.uart;
            d.read(port, size)
        } else if PIT_PORTS.contains(&port) || port == PORT_B {
            let mut d = &m.pit;
            d.read(port, size)
        } else if NOISE_PORTS.contains(&port) {
            self.noise.borrow_mut().read(port)
        } else {
            let mut d = &m.pic;
            d.read(port, size)
        }
    }

    fn dispatch_write(&self, port: u16, size: u8, value: u32) {
        let m = &self.machine;
        if self.machine.uart.borrow().ports().contains(&port) {
            let mut d = &m.uart;
            d.write(port, size, value)
        } else if PIT_PORTS.contains(&port) || port == PORT_B {
            let mut d = &m.pit;
            d.write(port, size, value)
        } else if NOISE_PORTS.contains(&port) {
            self.noise.borrow_mut().write(port, size, value)
        } else {
            let mut d = &m.pic;
            d.write(port, size, value)
        }
    }

    /// Runs `f` with an IO bus over this board; also returns the bus's unknown-port
    /// counters afterwards.
    pub(in crate::coalesce) fn with_bus<R>(
        &self,
        f: impl FnOnce(&mut IoBus<'_>) -> R,
    ) -> (R, Unknown) {
        let ranges = self.ranges();
        let mut ports: Vec<BoardPort<'_>> =
            ranges.iter().map(|_| BoardPort { board: self }).collect();
        let mut bus = IoBus::new();
        for (r, p) in ranges.iter().zip(ports.iter_mut()) {
            bus.register(r.clone(), p).expect("board port ranges");
        }
        let r = f(&mut bus);
        let unknown = Unknown {
            reads: bus.unknown_reads(),
            writes: bus.unknown_writes(),
            top: bus.unknown_top(),
        };
        (r, unknown)
    }

    /// Device lines onto the PIC (the kernel's `Machine::sync` before each entry);
    /// the guest-visible clock never moves in these tests.
    pub(super) fn poll(&self) -> bool {
        self.machine.poll(0);
        self.machine.interrupt_pending()
    }

    /// Writes done before the run (device set-up), then forgotten by the trace.
    pub(in crate::coalesce) fn init(&self, writes: &[(u16, u8)]) {
        for &(port, v) in writes {
            self.dispatch_write(port, 1, u32::from(v));
        }
        self.poll();
    }

    /// Device state after a run, read through side channels (getters, Debug) and
    /// then by reading every UART register back (the same destructive reads on both
    /// sides).
    pub(super) fn snapshot(&self, unknown: Unknown) -> BoardSnap {
        self.poll();
        let m = &self.machine;
        let mut uart = String::new();
        {
            let u = m.uart.borrow();
            let _ = write!(
                uart,
                "stats {:?} divisor {:#x} mcr {:#x} rx_len {} pending {:?} irq {} sent {:02x?}",
                u.stats(),
                u.divisor(),
                u.modem_control(),
                u.rx_len(),
                u.pending_interrupt(),
                u.irq_line(),
                u.sink().0
            );
        }
        {
            let mut u = m.uart.borrow_mut();
            for off in [3u16, 1, 2, 4, 5, 6, 7, 0] {
                let _ = write!(uart, " r{off}={:#04x}", u.read(COM1 + off, 1));
            }
        }
        BoardSnap {
            trace: self.trace.borrow().clone(),
            uart,
            pic: format!("{:?}", m.pic.borrow()),
            pit: format!("{:?}", m.pit.borrow()),
            noise: self.noise.borrow().state,
            unknown,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BoardSnap {
    pub(super) trace: Vec<PortAccess>,
    pub(super) uart: String,
    pub(super) pic: String,
    pub(super) pit: String,
    pub(super) noise: u64,
    pub(super) unknown: Unknown,
}

/// The devices as the run loop hands them to the coalescer ([`BoardIo`]), over this
/// board's traced bus, with a clock that never moves (a host whose TSC stays at 0).
pub(in crate::coalesce) fn board_io<'a, 'b>(
    bus: &'a mut IoBus<'b>,
    board: &'a Board,
    host: &'a mut NullHost,
) -> BoardIo<'a, 'b, Sink, NullHost> {
    BoardIo {
        bus,
        machine: &board.machine,
        host,
        timebase: Timebase::new(0, 1),
        ticks: Ticks::default(),
        // Guest time does not pass in the checker: no timer falls due.
        exit_now: None,
        deadline: None,
    }
}

/// PIC pair initialised (vectors 0x20/0x28, edge-triggered, cascade on IRQ2), only
/// IRQ4 (COM1) unmasked.
pub(in crate::coalesce) const PIC_INIT_IRQ4: [(u16, u8); 10] = [
    (0x20, 0x11),
    (0x21, 0x20),
    (0x21, 0x04),
    (0x21, 0x01),
    (0x21, 0xEF),
    (0xA0, 0x11),
    (0xA1, 0x28),
    (0xA1, 0x02),
    (0xA1, 0x01),
    (0xA1, 0xFF),
];

/// The host under the single-exit handler and [`board_io`]: every CPUID leaf zero, a
/// TSC that stays at 0, nothing done for console output, XSETBV or WBINVD.
pub(in crate::coalesce) struct NullHost;

impl HostOps for NullHost {
    fn cpuid(&mut self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn console(&mut self, _: &[u8]) {}
    fn xsetbv(&mut self, _: u32, _: u64) {}
    fn wbinvd(&mut self) {}
    fn rdtsc(&mut self) -> u64 {
        0
    }
}
