//! The port-IO bus: routes the guest's IN/OUT accesses (SDM Vol. 1 chapter 19
//! "Input/Output") to device models by port range, and accounts for accesses
//! to ports no device claims.
//!
//! Unclaimed ports behave like an empty ISA bus: reads float to all ones of
//! the access size, writes vanish. They are counted (totals plus the busiest
//! [`TOP_UNKNOWN`] ports) so a run's `sluice-stats` line shows what a guest
//! probed. Port 0x80 (the POST-code / IO-delay port written by firmware and
//! Linux's `outb_p`) is accepted silently unless a device claims it.
//!
//! Also here: [`ConsoleUart`], a minimal polled-output stand-in for the COM1
//! 16550A until the full device model replaces it.

use core::ops::RangeInclusive;

/// Most devices one bus can hold.
pub const MAX_DEVICES: usize = 16;
/// Unknown ports tracked individually.
pub const TOP_UNKNOWN: usize = 16;
/// POST-code / IO-delay port.
pub const POST_PORT: u16 = 0x80;

/// A device model reachable through port IO. `size` is 1, 2 or 4 bytes; reads
/// return the value in the low `size` bytes (the bus masks the rest).
pub trait PortDevice {
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32);
}

/// All-ones / value mask for an access size (anything but 1 and 2 is a dword).
pub const fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range overlaps one registered earlier (given).
    Overlap { first: u16, last: u16 },
    /// All [`MAX_DEVICES`] slots are taken.
    Full,
    /// An empty range (start after end).
    EmptyRange,
}

/// Access counts of one unclaimed port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownPort {
    pub port: u16,
    pub reads: u64,
    pub writes: u64,
}

impl UnknownPort {
    pub const fn total(&self) -> u64 {
        self.reads.saturating_add(self.writes)
    }
}

struct Slot<'a> {
    first: u16,
    last: u16,
    device: &'a mut dyn PortDevice,
}

/// Port-IO routing for one guest. Devices are borrowed for the bus's lifetime;
/// an access goes to the device whose range holds its *first* port (a 16- or
/// 32-bit access straddling two ranges is the first device's to split).
pub struct IoBus<'a> {
    slots: [Option<Slot<'a>>; MAX_DEVICES],
    unknown_reads: u64,
    unknown_writes: u64,
    top: [Option<UnknownPort>; TOP_UNKNOWN],
}

impl Default for IoBus<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> IoBus<'a> {
    pub const fn new() -> Self {
        IoBus {
            slots: [const { None }; MAX_DEVICES],
            unknown_reads: 0,
            unknown_writes: 0,
            top: [None; TOP_UNKNOWN],
        }
    }

    /// Claims `ports` for `device`.
    pub fn register(
        &mut self,
        ports: RangeInclusive<u16>,
        device: &'a mut dyn PortDevice,
    ) -> Result<(), BusError> {
        let (first, last) = (*ports.start(), *ports.end());
        if first > last {
            return Err(BusError::EmptyRange);
        }
        for s in self.slots.iter().flatten() {
            if first <= s.last && s.first <= last {
                return Err(BusError::Overlap {
                    first: s.first,
                    last: s.last,
                });
            }
        }
        let free = self
            .slots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(BusError::Full)?;
        *free = Some(Slot {
            first,
            last,
            device,
        });
        Ok(())
    }

    fn device(&mut self, port: u16) -> Option<&mut (dyn PortDevice + 'a)> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|s| s.first <= port && port <= s.last)
            .map(|s| &mut *s.device)
    }

    /// IN of `size` bytes from `port`; the result has only the low `size` bytes set
    /// by the device, higher bits are zero.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let mask = size_mask(size);
        if let Some(d) = self.device(port) {
            return d.read(port, size) & mask;
        }
        if port != POST_PORT {
            self.unknown_reads = self.unknown_reads.saturating_add(1);
            self.note_unknown(port, true);
        }
        mask
    }

    /// OUT of the low `size` bytes of `value` to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        let mask = size_mask(size);
        if let Some(d) = self.device(port) {
            d.write(port, size, value & mask);
            return;
        }
        if port != POST_PORT {
            self.unknown_writes = self.unknown_writes.saturating_add(1);
            self.note_unknown(port, false);
        }
    }

    /// Counts an access in the top table. A port not yet in a full table
    /// replaces the entry with the smallest total only if that entry has been
    /// seen just once, so ports with a history stay and one-off probes churn
    /// among themselves (the totals count every access regardless).
    fn note_unknown(&mut self, port: u16, read: bool) {
        let bump = |e: &mut UnknownPort| {
            if read {
                e.reads = e.reads.saturating_add(1);
            } else {
                e.writes = e.writes.saturating_add(1);
            }
        };
        if let Some(e) = self.top.iter_mut().flatten().find(|e| e.port == port) {
            bump(e);
            return;
        }
        let slot = match self.top.iter().position(|e| e.is_none()) {
            Some(i) => i,
            None => {
                let smallest = self
                    .top
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| e.map(|e| (i, e.total())))
                    .min_by_key(|&(_, t)| t);
                match smallest {
                    Some((i, t)) if t <= 1 => i,
                    _ => return,
                }
            }
        };
        let mut e = UnknownPort {
            port,
            reads: 0,
            writes: 0,
        };
        bump(&mut e);
        self.top[slot] = Some(e);
    }

    /// Reads of unclaimed ports (0x80 excluded).
    pub const fn unknown_reads(&self) -> u64 {
        self.unknown_reads
    }

    /// Writes to unclaimed ports (0x80 excluded).
    pub const fn unknown_writes(&self) -> u64 {
        self.unknown_writes
    }

    /// The tracked unknown ports, busiest first (ties by port number), then `None`s.
    pub fn unknown_top(&self) -> [Option<UnknownPort>; TOP_UNKNOWN] {
        let mut out = self.top;
        // `None` sorts last; among entries, by descending total then ascending port.
        out.sort_unstable_by_key(|e| match e {
            Some(e) => (0u8, u64::MAX - e.total(), e.port),
            None => (1, 0, 0),
        });
        out
    }
}

/// Where [`ConsoleUart`] sends transmitted bytes.
pub trait ConsoleSink {
    fn write_bytes(&mut self, bytes: &[u8]);
}

/// COM1's base port.
pub const COM1_BASE: u16 = 0x3F8;

// 16550A register offsets and bits (PC16550D datasheet; the register set is
// the one every PC UART driver polls).
const THR_RBR_DLL: u16 = 0;
const IER_DLM: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;
const LCR_DLAB: u8 = 1 << 7;
const MCR_LOOP: u8 = 1 << 4;
/// LSR: transmit holding register empty | transmitter empty.
const LSR_IDLE: u8 = 0x60;
/// IIR: no interrupt pending.
const IIR_NONE: u8 = 0x01;
/// MSR: DCD | DSR | CTS — a connected, ready terminal.
const MSR_READY: u8 = 0xB0;

/// A 16550A stand-in for polled console output. Transmitted bytes go straight
/// to the sink, the line is always idle, nothing is ever received and no
/// interrupt is raised. Divisor, IER, LCR, MCR and scratch hold what the guest
/// writes so drivers' probes (scratch and loopback tests) pass. Only the low
/// byte of wider accesses is used; the rest of a read is zero.
pub struct ConsoleUart<S: ConsoleSink> {
    base: u16,
    sink: S,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
}

impl<S: ConsoleSink> ConsoleUart<S> {
    /// A UART at COM1 (0x3F8..=0x3FF).
    pub fn new(sink: S) -> Self {
        Self::at(COM1_BASE, sink)
    }

    /// A UART at `base..=base + 7`.
    pub fn at(base: u16, sink: S) -> Self {
        ConsoleUart {
            base,
            sink,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            // 115200 baud divisor, as firmware leaves it.
            dll: 1,
            dlm: 0,
        }
    }

    /// The port range to register on an [`IoBus`].
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.base..=self.base.saturating_add(7)
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn offset(&self, port: u16) -> u16 {
        port.wrapping_sub(self.base) & 7
    }

    fn read_reg(&self, offset: u16) -> u8 {
        match offset {
            THR_RBR_DLL if self.dlab() => self.dll,
            // No received data.
            THR_RBR_DLL => 0,
            IER_DLM if self.dlab() => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => IIR_NONE,
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_IDLE,
            MSR if self.mcr & MCR_LOOP != 0 => {
                // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let m = self.mcr;
                ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            MSR => MSR_READY,
            _ => self.scr,
        }
    }

    fn write_reg(&mut self, offset: u16, v: u8) {
        match offset {
            THR_RBR_DLL if self.dlab() => self.dll = v,
            // In loopback the byte would come back to the receiver, not the line.
            THR_RBR_DLL if self.mcr & MCR_LOOP == 0 => self.sink.write_bytes(&[v]),
            THR_RBR_DLL => {}
            IER_DLM if self.dlab() => self.dlm = v,
            IER_DLM => self.ier = v & 0x0F,
            LCR => self.lcr = v,
            MCR => self.mcr = v & 0x1F,
            SCR => self.scr = v,
            // FCR, LSR and MSR writes have no effect here.
            _ => {}
        }
    }
}

impl<S: ConsoleSink> PortDevice for ConsoleUart<S> {
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        u32::from(self.read_reg(self.offset(port)))
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) {
        self.write_reg(self.offset(port), value as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers every access.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u16, u8, u32)>,
        next_read: u32,
    }

    impl PortDevice for Probe {
        fn read(&mut self, _port: u16, _size: u8) -> u32 {
            self.next_read
        }
        fn write(&mut self, port: u16, size: u8, value: u32) {
            self.writes.push((port, size, value));
        }
    }

    #[derive(Default)]
    struct VecSink(Vec<u8>);

    impl ConsoleSink for VecSink {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    #[test]
    fn routes_by_range_and_masks_values() {
        let mut a = Probe {
            next_read: 0xDEAD_BEEF,
            ..Probe::default()
        };
        let mut b = Probe::default();
        {
            let mut bus = IoBus::new();
            bus.register(0x60..=0x64, &mut a).unwrap();
            bus.register(0x70..=0x71, &mut b).unwrap();
            assert_eq!(bus.read(0x64, 1), 0xEF);
            assert_eq!(bus.read(0x60, 2), 0xBEEF);
            assert_eq!(bus.read(0x60, 4), 0xDEAD_BEEF);
            bus.write(0x70, 1, 0x1_0080);
            bus.write(0x71, 2, 0xFFFF_1234);
            bus.write(0x61, 4, 0xFFFF_1234);
            assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
        }
        assert_eq!(b.writes, vec![(0x70, 1, 0x80), (0x71, 2, 0x1234)]);
        assert_eq!(a.writes, vec![(0x61, 4, 0xFFFF_1234)]);
    }

    #[test]
    fn registration_errors() {
        let mut devs: Vec<Probe> = (0..MAX_DEVICES + 1).map(|_| Probe::default()).collect();
        let mut it = devs.iter_mut();
        let mut bus = IoBus::new();
        bus.register(0x10..=0x1F, it.next().unwrap()).unwrap();
        assert_eq!(
            bus.register(0x1F..=0x20, it.next().unwrap()),
            Err(BusError::Overlap {
                first: 0x10,
                last: 0x1F
            })
        );
        assert_eq!(
            bus.register(0x0..=0x10, it.next().unwrap()),
            Err(BusError::Overlap {
                first: 0x10,
                last: 0x1F
            })
        );
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert_eq!(
            bus.register(empty, it.next().unwrap()),
            Err(BusError::EmptyRange)
        );
        let mut extra: Vec<Probe> = (0..MAX_DEVICES).map(|_| Probe::default()).collect();
        let mut results = Vec::new();
        for (port, d) in (0x100u16..).zip(extra.iter_mut()) {
            results.push(bus.register(port..=port, d));
        }
        assert!(results[..MAX_DEVICES - 1].iter().all(|r| r.is_ok()));
        assert_eq!(results[MAX_DEVICES - 1], Err(BusError::Full));
    }

    #[test]
    fn unknown_ports_float_and_are_counted() {
        let mut bus = IoBus::new();
        assert_eq!(bus.read(0x1234, 1), 0xFF);
        assert_eq!(bus.read(0x1234, 2), 0xFFFF);
        assert_eq!(bus.read(0x5000, 4), 0xFFFF_FFFF);
        bus.write(0x1234, 1, 0);
        assert_eq!((bus.unknown_reads(), bus.unknown_writes()), (3, 1));
        let top = bus.unknown_top();
        assert_eq!(
            top[0],
            Some(UnknownPort {
                port: 0x1234,
                reads: 2,
                writes: 1
            })
        );
        assert_eq!(
            top[1],
            Some(UnknownPort {
                port: 0x5000,
                reads: 1,
                writes: 0
            })
        );
        assert_eq!(top[2], None);
    }

    #[test]
    fn post_port_is_silent_unless_claimed() {
        let mut bus = IoBus::new();
        bus.write(POST_PORT, 1, 0x12);
        assert_eq!(bus.read(POST_PORT, 1), 0xFF);
        assert_eq!((bus.unknown_reads(), bus.unknown_writes()), (0, 0));
        assert_eq!(bus.unknown_top()[0], None);
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(POST_PORT..=POST_PORT, &mut p).unwrap();
        bus.write(POST_PORT, 1, 0x12);
        assert_eq!(p.writes, vec![(0x80, 1, 0x12)]);
    }

    #[test]
    fn top_table_keeps_the_busiest() {
        let mut bus = IoBus::new();
        // 16 ports seen twice each fill the table.
        for p in 0..TOP_UNKNOWN as u16 {
            bus.write(0x200 + p, 1, 0);
            bus.read(0x200 + p, 1);
        }
        // A heavy port 0x200 gets more.
        for _ in 0..10 {
            bus.read(0x200, 1);
        }
        // One-off probes do not displace established ports.
        for p in 0..50u16 {
            bus.read(0x1000 + p, 1);
        }
        assert_eq!(bus.unknown_reads(), 16 + 10 + 50);
        let top = bus.unknown_top();
        assert!(top
            .iter()
            .all(|e| e.is_some_and(|e| (0x200..0x210).contains(&e.port))));
        assert_eq!(top[0].unwrap().port, 0x200);
        assert_eq!(top[0].unwrap().reads, 11);
        assert_eq!(top[1].unwrap().port, 0x201);

        // Once-seen entries are replaced by newcomers.
        let mut bus = IoBus::new();
        for p in 0..TOP_UNKNOWN as u16 {
            bus.read(0x300 + p, 1);
        }
        bus.read(0x300, 1);
        bus.write(0x999, 2, 0);
        bus.write(0x999, 2, 0);
        let top = bus.unknown_top();
        assert_eq!(top[0].unwrap().port, 0x300);
        assert_eq!(
            top[1].unwrap(),
            UnknownPort {
                port: 0x999,
                reads: 0,
                writes: 2
            }
        );
        assert_eq!(top.iter().flatten().count(), TOP_UNKNOWN);
    }

    #[test]
    fn uart_transmits_to_the_sink() {
        let mut uart = ConsoleUart::new(VecSink::default());
        let mut bus = IoBus::new();
        let range = uart.ports();
        assert_eq!(range, 0x3F8..=0x3FF);
        bus.register(range, &mut uart).unwrap();
        for &b in b"hi\n" {
            assert_eq!(bus.read(0x3FD, 1) & 0x20, 0x20);
            bus.write(0x3F8, 1, u32::from(b));
        }
        assert_eq!(uart.sink().0, b"hi\n");
        assert_eq!(uart.into_sink().0, b"hi\n");
    }

    #[test]
    fn uart_status_registers() {
        let mut u = ConsoleUart::new(VecSink::default());
        assert_eq!(u.read(0x3FD, 1), 0x60);
        assert_eq!(u.read(0x3FA, 1), 0x01);
        assert_eq!(u.read(0x3FE, 1), 0xB0);
        assert_eq!(u.read(0x3F8, 1), 0);
        // Writes to read-only registers change nothing.
        u.write(0x3FD, 1, 0);
        u.write(0x3FA, 1, 0xC7); // FCR
        assert_eq!(u.read(0x3FD, 1), 0x60);
        assert_eq!(u.read(0x3FA, 1), 0x01);
    }

    #[test]
    fn uart_stores_control_registers() {
        let mut u = ConsoleUart::new(VecSink::default());
        u.write(0x3FF, 1, 0x5A);
        assert_eq!(u.read(0x3FF, 1), 0x5A);
        u.write(0x3FB, 1, 0x03);
        assert_eq!(u.read(0x3FB, 1), 0x03);
        u.write(0x3F9, 1, 0xFF);
        assert_eq!(u.read(0x3F9, 1), 0x0F);
        u.write(0x3FC, 1, 0x0B);
        assert_eq!(u.read(0x3FC, 1), 0x0B);
        assert!(u.sink().0.is_empty());
    }

    #[test]
    fn uart_divisor_latch() {
        let mut u = ConsoleUart::new(VecSink::default());
        u.write(0x3F9, 1, 0x05); // IER
        u.write(0x3FB, 1, 0x83); // DLAB on, 8N1
        u.write(0x3F8, 1, 0x0C); // DLL: not transmitted
        u.write(0x3F9, 1, 0x00); // DLM
        assert_eq!(u.read(0x3F8, 1), 0x0C);
        assert_eq!(u.read(0x3F9, 1), 0x00);
        u.write(0x3FB, 1, 0x03); // DLAB off
        assert_eq!(u.read(0x3F9, 1), 0x05);
        u.write(0x3F8, 1, u32::from(b'x'));
        assert_eq!(u.sink().0, b"x");
    }

    #[test]
    fn uart_loopback_probe() {
        // Linux's 8250 probe: MCR = LOOP | OUT2 | RTS, expect MSR & 0xF0 == 0x90.
        let mut u = ConsoleUart::new(VecSink::default());
        u.write(0x3FC, 1, 0x1A);
        assert_eq!(u.read(0x3FE, 1) & 0xF0, 0x90);
        u.write(0x3FC, 1, 0x1F);
        assert_eq!(u.read(0x3FE, 1), 0xF0);
        // Loopback bytes do not reach the line.
        u.write(0x3F8, 1, u32::from(b'z'));
        assert!(u.sink().0.is_empty());
        u.write(0x3FC, 1, 0x03);
        assert_eq!(u.read(0x3FE, 1), 0xB0);
    }

    #[test]
    fn uart_at_other_base() {
        let mut u = ConsoleUart::at(0x2F8, VecSink::default());
        assert_eq!(u.ports(), 0x2F8..=0x2FF);
        u.write(0x2F8, 1, u32::from(b'k'));
        assert_eq!(u.read(0x2FD, 1), 0x60);
        assert_eq!(u.sink_mut().0, b"k");
    }
}
