//! The port-IO bus: routes the guest's IN/OUT accesses (SDM Vol. 1 chapter 19
//! "Input/Output") to device models by port range, and accounts for accesses
//! to ports no device claims.
//!
//! Unclaimed ports behave like an empty ISA bus: reads float to all ones of
//! the access size, writes vanish. They are counted (totals plus the busiest
//! [`TOP_UNKNOWN`] ports) so a run's `sluice-stats` line shows what a guest
//! probed. Port 0x80 (the POST-code / IO-delay port written by firmware and
//! Linux's `outb_p`) is accepted silently unless a device claims it.

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

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            BusError::Overlap { first, last } => write!(
                f,
                "the port range overlaps ports {first:#x}..={last:#x}, claimed by a device \
                 registered earlier"
            ),
            BusError::Full => write!(f, "all {MAX_DEVICES} device slots of the IO bus are taken"),
            BusError::EmptyRange => {
                f.write_str("the port range is empty (its first port is after its last)")
            }
        }
    }
}

impl core::error::Error for BusError {}

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

/// A device shared between the bus and the rest of the hypervisor: the bus holds
/// `&mut` to each registered device for its whole life, while the run loop also needs
/// the device between exits (the PIC to acknowledge interrupts, the UART's interrupt
/// line, the PIT's clock). A `&RefCell<T>` on the bus gives both, and one device can be
/// registered under several port ranges (the PIC's 0x20, 0xA0 and 0x4D0). Accesses
/// never overlap (one CPU, no re-entry); if the cell were busy anyway, a read returns
/// all-ones and a write is dropped, as for an absent device, instead of panicking.
impl<T: PortDevice> PortDevice for &core::cell::RefCell<T> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        match self.try_borrow_mut() {
            Ok(mut d) => d.read(port, size),
            Err(_) => size_mask(size),
        }
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        if let Ok(mut d) = self.try_borrow_mut() {
            d.write(port, size, value);
        }
    }
}

/// Where a UART model sends transmitted bytes (the kernel's console).
pub trait ConsoleSink {
    fn write_bytes(&mut self, bytes: &[u8]);
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
    fn registration_errors_name_the_ports() {
        let overlap = BusError::Overlap {
            first: 0x3F8,
            last: 0x3FF,
        };
        assert!(
            overlap.to_string().contains("overlaps ports 0x3f8..=0x3ff"),
            "{overlap}"
        );
        assert!(BusError::Full
            .to_string()
            .contains(&format!("all {MAX_DEVICES} device slots of the IO bus")));
        assert!(BusError::EmptyRange
            .to_string()
            .contains("port range is empty"));
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
}
