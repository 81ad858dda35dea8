//! The PC's real-time clock and CMOS RAM: a Motorola MC146818A (as on the IBM PC/AT,
//! ports 0x70/0x71, IRQ8), modelled from the MC146818A datasheet and the PC AT
//! Technical Reference's CMOS map.
//!
//! - Port 0x70 selects a register (bits 6-0); bit 7 is the PC/AT's NMI mask, which is
//!   not part of the chip: it is remembered and selects nothing. Port 0x71 reads or
//!   writes the selected register.
//! - Registers 0-9 hold the time (seconds, alarm seconds, minutes, alarm minutes,
//!   hours, alarm hours, day of week, day of month, month, year) in BCD or binary and
//!   12- or 24-hour form as register B says; the chip keeps the bytes as written and
//!   interprets them in the current mode (datasheet: changing DM does not convert the
//!   stored time). Registers A-D control the divider, the periodic rate, interrupts and
//!   status. Bytes 0x0E-0x7F are battery-backed RAM; the PC uses 0x10-0x2D (checksummed
//!   at 0x2E/0x2F), the memory sizes and the century byte 0x32.
//!
//! Time-based like the PIT model: the divider chain is a 32.768 kHz count derived from
//! PIT ticks (1,193,182 Hz) since the divider was last released from reset, so every
//! event (the once-a-second update, the periodic flag, the update-in-progress window)
//! is a closed-form function of "now". The kernel passes now with [`Rtc::set_now`]
//! before each access and each look at the interrupt line.
//!
//! Not modelled: daylight-saving adjustment (DSE is stored; PCs keep it off), the
//! square-wave output pin (SQWE is stored), the 4.194304 and 1.048576 MHz time bases
//! (only DV = 010, the PC's 32.768 kHz crystal, runs the clock), and the chip's
//! undefined behaviour for time bytes that are not valid dates (they stop advancing).

use core::ops::RangeInclusive;

use crate::devices::bus::PortDevice;
use crate::devices::pit8254::PIT_HZ;

/// PC/AT index and data ports.
pub const RTC_PORTS: RangeInclusive<u16> = 0x70..=0x71;
pub const RTC_INDEX_PORT: u16 = 0x70;
pub const RTC_DATA_PORT: u16 = 0x71;
/// The RTC's IRQ line on the PC/AT (slave 8259A input 0).
pub const RTC_IRQ: u8 = 8;

// Register indices (datasheet "Address map").
pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_DAY_OF_WEEK: u8 = 0x06;
pub const REG_DAY_OF_MONTH: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0A;
pub const REG_B: u8 = 0x0B;
pub const REG_C: u8 = 0x0C;
pub const REG_D: u8 = 0x0D;
/// PC CMOS map (PC AT Technical Reference, "CMOS RAM address map").
pub const CMOS_BASE_MEM_LO: u8 = 0x15;
pub const CMOS_BASE_MEM_HI: u8 = 0x16;
pub const CMOS_EXT_MEM_LO: u8 = 0x17;
pub const CMOS_EXT_MEM_HI: u8 = 0x18;
pub const CMOS_CHECKSUM_HI: u8 = 0x2E;
pub const CMOS_CHECKSUM_LO: u8 = 0x2F;
/// Extended memory as counted by POST (same value as 0x17/0x18).
pub const CMOS_EXT_MEM2_LO: u8 = 0x30;
pub const CMOS_EXT_MEM2_HI: u8 = 0x31;
pub const CMOS_CENTURY: u8 = 0x32;
/// Memory above 16 MiB in 64 KiB units (the BIOS convention QEMU and Bochs follow).
pub const CMOS_MEM_ABOVE_16M_LO: u8 = 0x34;
pub const CMOS_MEM_ABOVE_16M_HI: u8 = 0x35;
/// The checksummed range of the PC CMOS map.
pub const CHECKSUM_RANGE: RangeInclusive<u8> = 0x10..=0x2D;

// Register A.
pub const A_UIP: u8 = 0x80;
const A_DV_MASK: u8 = 0x70;
/// DV2-0 = 010: 32.768 kHz time base, divider running.
const A_DV_32K: u8 = 0x20;
const A_RS_MASK: u8 = 0x0F;
// Register B.
pub const B_SET: u8 = 0x80;
pub const B_PIE: u8 = 0x40;
pub const B_AIE: u8 = 0x20;
pub const B_UIE: u8 = 0x10;
pub const B_SQWE: u8 = 0x08;
/// 1 = binary, 0 = BCD.
pub const B_DM: u8 = 0x04;
/// 1 = 24-hour, 0 = 12-hour.
pub const B_24H: u8 = 0x02;
pub const B_DSE: u8 = 0x01;
// Register C.
pub const C_IRQF: u8 = 0x80;
pub const C_PF: u8 = 0x40;
pub const C_AF: u8 = 0x20;
pub const C_UF: u8 = 0x10;
// Register D.
pub const D_VRT: u8 = 0x80;
/// Hours register bit 7 in 12-hour mode: PM.
const HOUR_PM: u8 = 0x80;

/// PIT ticks in one second (the PIT's input clock), for callers converting guest time.
pub const PIT_SECOND: u64 = PIT_HZ;
/// The time base the divider chain counts.
pub const RTC_HZ: u64 = 32_768;
/// 32 kHz cycles from releasing the divider to the end of the first update: the
/// datasheet says the first update begins half a second after the divider leaves
/// reset (DV 11x -> 010).
const FIRST_UPDATE: u64 = RTC_HZ / 2;
/// UIP goes high t_BUC = 244 µs (8 cycles of 32.768 kHz) before the update cycle
/// starts and stays high through the update cycle itself, t_UC = 1984 µs (65 cycles):
/// datasheet "Update cycle" and register A's UIP description. A reader that sees UIP
/// = 0 therefore has at least 244 µs before the time bytes change.
pub const UIP_BEFORE_CYCLES: u64 = 8;
pub const UPDATE_CYCLES: u64 = 65;
/// Whole UIP-high window before the moment the new time becomes visible.
const UIP_WINDOW: u64 = UIP_BEFORE_CYCLES + UPDATE_CYCLES;

/// Used when the machine's own clock cannot be read: 2026-01-01 00:00:00 UTC.
pub const DEFAULT_EPOCH: u64 = 1_767_225_600;

/// A calendar time (UTC; the PC's RTC conventionally holds local time, which sluice
/// takes as it finds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

pub const fn is_leap_year(year: u16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub const fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to the first day of `year` (years from 1970 on).
fn days_before_year(year: u16) -> u64 {
    let y = u64::from(year) - 1;
    let leaps = |y: u64| y / 4 - y / 100 + y / 400;
    (u64::from(year) - 1970) * 365 + leaps(y) - leaps(1969)
}

impl DateTime {
    /// Whether every field is in range (years 1970-9999).
    pub fn is_valid(&self) -> bool {
        (1970..=9999).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }

    /// Days since 1970-01-01.
    fn days(&self) -> u64 {
        let mut d = days_before_year(self.year);
        for m in 1..self.month {
            d += u64::from(days_in_month(self.year, m));
        }
        d + u64::from(self.day) - 1
    }

    /// Seconds since 1970-01-01 00:00:00; `None` for an invalid date.
    pub fn to_unix(&self) -> Option<u64> {
        if !self.is_valid() {
            return None;
        }
        Some(
            self.days() * 86_400
                + u64::from(self.hour) * 3600
                + u64::from(self.minute) * 60
                + u64::from(self.second),
        )
    }

    /// The date and time `secs` seconds after 1970-01-01 00:00:00 (years past 9999
    /// saturate at 9999-12-31 23:59:59).
    pub fn from_unix(secs: u64) -> DateTime {
        let max = DateTime {
            year: 9999,
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            second: 59,
        };
        if secs > max.to_unix().unwrap_or(0) {
            return max;
        }
        let mut days = secs / 86_400;
        let rem = secs % 86_400;
        // Whole 400-year cycles (146,097 days each) first, then year by year.
        let mut year = 1970u16;
        if days >= days_before_year(2370) {
            let cycles = (days - days_before_year(2370)) / 146_097;
            year = 2370 + (cycles * 400) as u16;
            days -= days_before_year(year);
        }
        loop {
            let len = if is_leap_year(year) { 366 } else { 365 };
            if days < len {
                break;
            }
            days -= len;
            year += 1;
        }
        let mut month = 1u8;
        loop {
            let len = u64::from(days_in_month(year, month));
            if days < len {
                break;
            }
            days -= len;
            month += 1;
        }
        DateTime {
            year,
            month,
            day: days as u8 + 1,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// Day of the week as the PC's RTC counts it: 1 = Sunday ... 7 = Saturday
    /// (1970-01-01 was a Thursday).
    pub fn day_of_week(&self) -> u8 {
        ((self.days() + 4) % 7) as u8 + 1
    }
}

pub const fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A BCD byte's value, `None` if a digit is above 9.
pub const fn from_bcd(b: u8) -> Option<u8> {
    if b >> 4 > 9 || b & 0x0F > 9 {
        None
    } else {
        Some((b >> 4) * 10 + (b & 0x0F))
    }
}

/// One time byte in the format register B selects.
const fn encode(v: u8, b: u8) -> u8 {
    if b & B_DM != 0 {
        v
    } else {
        to_bcd(v)
    }
}

const fn decode(raw: u8, b: u8) -> Option<u8> {
    if b & B_DM != 0 {
        Some(raw)
    } else {
        from_bcd(raw)
    }
}

/// An hours byte: 0-23, or in 12-hour mode 1-12 with bit 7 = PM (datasheet Table 3).
pub const fn encode_hour(hour: u8, b: u8) -> u8 {
    if b & B_24H != 0 {
        return encode(hour, b);
    }
    let pm = if hour >= 12 { HOUR_PM } else { 0 };
    let h12 = match hour % 12 {
        0 => 12,
        h => h,
    };
    encode(h12, b) | pm
}

pub fn decode_hour(raw: u8, b: u8) -> Option<u8> {
    if b & B_24H != 0 {
        return match decode(raw, b) {
            Some(h) if h < 24 => Some(h),
            _ => None,
        };
    }
    let pm = raw & HOUR_PM != 0;
    match decode(raw & !HOUR_PM, b) {
        Some(h) if (1..=12).contains(&h) => Some(h % 12 + if pm { 12 } else { 0 }),
        _ => None,
    }
}

/// Reads a date and time out of raw RTC bytes 0-9 as register `b` says they are coded,
/// with `century` (the PC's byte 0x32, same coding) giving the hundreds; a century byte
/// that does not decode to 19-99 is taken as 20. `None` if the bytes are not a date.
pub fn decode_registers(regs: &[u8; 10], b: u8, century: u8) -> Option<DateTime> {
    let century = match decode(century, b) {
        Some(c) if (19..=99).contains(&c) => c,
        _ => 20,
    };
    let year = decode(regs[usize::from(REG_YEAR)], b)?;
    if year > 99 {
        return None;
    }
    let dt = DateTime {
        year: u16::from(century) * 100 + u16::from(year),
        month: decode(regs[usize::from(REG_MONTH)], b)?,
        day: decode(regs[usize::from(REG_DAY_OF_MONTH)], b)?,
        hour: decode_hour(regs[usize::from(REG_HOURS)], b)?,
        minute: decode(regs[usize::from(REG_MINUTES)], b)?,
        second: decode(regs[usize::from(REG_SECONDS)], b)?,
    };
    dt.is_valid().then_some(dt)
}

/// Periodic-interrupt period in 32.768 kHz cycles for rate select `rs` (datasheet
/// Table 5): 0 is off; 1 and 2 repeat rates 8 and 9 (256 and 128 Hz); 3-15 give
/// 8192 Hz down to 2 Hz, i.e. 2^(rs-1) cycles.
pub const fn periodic_cycles(rs: u8) -> Option<u64> {
    match rs & A_RS_MASK {
        0 => None,
        1 => Some(1 << 7),
        2 => Some(1 << 8),
        rs => Some(1 << (rs - 1)),
    }
}

/// The MC146818A with the PC's 128 bytes of CMOS RAM.
pub struct Rtc {
    /// Registers 0-0x0D and RAM 0x0E-0x7F. Register C's flags live in `ram[0x0C]`
    /// (IRQF is computed); register D always reads VRT.
    ram: [u8; 128],
    index: u8,
    nmi_masked: bool,
    /// PIT ticks of the latest `set_now`.
    now: u64,
    /// PIT tick at which the 32 kHz count was `phase`.
    origin: u64,
    /// The 32 kHz count at `origin`: 0 when the guest released the divider, half a
    /// second (an update just ended) when the machine started.
    phase: u64,
    /// 32 kHz cycles since `origin` already accounted for.
    done: u64,
    /// The first PIT tick at which `set_now` has anything to do (the next periodic
    /// edge or update end), so the per-access call is a comparison most of the time.
    due: u64,
    /// The IRQ line went from asserted to deasserted (register C read) since the
    /// interrupt wiring last looked, so the next assertion is a new edge.
    fell: bool,
}

impl Rtc {
    /// A running clock showing `start` (seconds since 1970, see [`DateTime`]) at PIT
    /// tick `now`, in the PC's usual mode (BCD, 24-hour, 1024 Hz periodic rate off),
    /// with the CMOS memory-size bytes for `ram_bytes` of guest RAM.
    pub fn new(start: u64, ram_bytes: u64, now: u64) -> Self {
        let mut rtc = Rtc {
            ram: [0; 128],
            index: 0,
            nmi_masked: false,
            now,
            origin: now,
            // An update has just ended: the seconds start now and the next update
            // ends one second later.
            phase: FIRST_UPDATE,
            done: FIRST_UPDATE,
            due: now,
            fell: false,
        };
        rtc.ram[usize::from(REG_A)] = A_DV_32K | 0x06;
        rtc.ram[usize::from(REG_B)] = B_24H;
        rtc.store_time(DateTime::from_unix(start));
        rtc.set_memory_size(ram_bytes);
        rtc.due = rtc.next_due();
        rtc
    }

    /// The first PIT tick at which [`Rtc::set_now`] has work to do.
    pub fn due(&self) -> u64 {
        self.due
    }

    /// The first PIT tick at which the chip's state changes on its own: the next
    /// periodic edge or update end after `done`.
    fn next_due(&self) -> u64 {
        if !self.running() {
            return u64::MAX;
        }
        let mut next = FIRST_UPDATE + Self::updates_by(self.done) * RTC_HZ;
        if let Some(p) = periodic_cycles(self.reg(REG_A)) {
            next = next.min((self.done / p + 1) * p);
        }
        self.tick_of(next)
    }

    /// The PC CMOS memory-size bytes (PC AT Technical Reference; the 0x34/0x35 pair as
    /// Bochs and SeaBIOS use it) and the checksum over 0x10-0x2D.
    fn set_memory_size(&mut self, ram_bytes: u64) {
        let base_kib: u16 = 640;
        let ext_kib = (ram_bytes.saturating_sub(1 << 20) >> 10).min(0xFFFF) as u16;
        let above_16m = (ram_bytes.saturating_sub(16 << 20) >> 16).min(0xFFFF) as u16;
        let pairs = [
            (CMOS_BASE_MEM_LO, base_kib),
            (CMOS_EXT_MEM_LO, ext_kib),
            (CMOS_EXT_MEM2_LO, ext_kib),
            (CMOS_MEM_ABOVE_16M_LO, above_16m),
        ];
        for (lo, v) in pairs {
            let [l, h] = v.to_le_bytes();
            self.ram[usize::from(lo)] = l;
            self.ram[usize::from(lo) + 1] = h;
        }
        self.update_checksum();
    }

    /// The PC's CMOS checksum: the 16-bit sum of bytes 0x10-0x2D, high byte at 0x2E.
    pub fn checksum(&self) -> u16 {
        CHECKSUM_RANGE.fold(0u16, |s, i| {
            s.wrapping_add(u16::from(self.ram[usize::from(i)]))
        })
    }

    fn update_checksum(&mut self) {
        let [h, l] = self.checksum().to_be_bytes();
        self.ram[usize::from(CMOS_CHECKSUM_HI)] = h;
        self.ram[usize::from(CMOS_CHECKSUM_LO)] = l;
    }

    fn reg(&self, r: u8) -> u8 {
        self.ram[usize::from(r & 0x7F)]
    }

    /// Writes `dt` into the time bytes in the current format, day of week included.
    fn store_time(&mut self, dt: DateTime) {
        let b = self.reg(REG_B);
        let r = &mut self.ram;
        r[usize::from(REG_SECONDS)] = encode(dt.second, b);
        r[usize::from(REG_MINUTES)] = encode(dt.minute, b);
        r[usize::from(REG_HOURS)] = encode_hour(dt.hour, b);
        r[usize::from(REG_DAY_OF_WEEK)] = encode(dt.day_of_week(), b);
        r[usize::from(REG_DAY_OF_MONTH)] = encode(dt.day, b);
        r[usize::from(REG_MONTH)] = encode(dt.month, b);
        r[usize::from(REG_YEAR)] = encode((dt.year % 100) as u8, b);
        r[usize::from(CMOS_CENTURY)] = encode((dt.year / 100) as u8, b);
    }

    /// The time the registers show, if they hold a valid date.
    pub fn time(&self) -> Option<DateTime> {
        let mut regs = [0u8; 10];
        regs.copy_from_slice(&self.ram[..10]);
        decode_registers(&regs, self.reg(REG_B), self.reg(CMOS_CENTURY))
    }

    /// The NMI-mask bit last written to port 0x70 (bit 7).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    #[cfg(test)]
    fn ticks_for(cycles: u64) -> u64 {
        u64::try_from(u128::from(cycles) * u128::from(PIT_HZ) / u128::from(RTC_HZ))
            .unwrap_or(u64::MAX)
    }

    /// 32 kHz cycles since the divider was released, at PIT tick `now`.
    fn cycles_at(&self, now: u64) -> u64 {
        let t = u128::from(now.saturating_sub(self.origin));
        let c = t * u128::from(RTC_HZ) / u128::from(PIT_HZ) + u128::from(self.phase);
        u64::try_from(c).unwrap_or(u64::MAX)
    }

    /// First PIT tick at which the cycle count reaches `cycles` (rounded up).
    fn tick_of(&self, cycles: u64) -> u64 {
        let cycles = cycles.saturating_sub(self.phase);
        let t = (u128::from(cycles) * u128::from(PIT_HZ)).div_ceil(u128::from(RTC_HZ));
        u64::try_from(t).map_or(u64::MAX, |t| t.saturating_add(self.origin))
    }

    fn running(&self) -> bool {
        self.reg(REG_A) & A_DV_MASK == A_DV_32K
    }

    fn updating(&self) -> bool {
        self.running() && self.reg(REG_B) & B_SET == 0
    }

    /// Updates that end within the first `c` cycles (at FIRST_UPDATE + k seconds).
    fn updates_by(c: u64) -> u64 {
        if c < FIRST_UPDATE {
            0
        } else {
            (c - FIRST_UPDATE) / RTC_HZ + 1
        }
    }

    /// Brings the chip to PIT tick `now`: periodic flags, update cycles, alarms.
    pub fn set_now(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.now < self.due || !self.running() {
            return;
        }
        let c = self.cycles_at(self.now);
        if c <= self.done {
            return;
        }
        if let Some(p) = periodic_cycles(self.reg(REG_A)) {
            // PF is set at each period whether or not PIE enables the interrupt
            // (datasheet register C: "PF ... set independent of the PIE bit").
            if c / p != self.done / p {
                self.ram[usize::from(REG_C)] |= C_PF;
            }
        }
        let updates = Self::updates_by(c) - Self::updates_by(self.done);
        if updates > 0 && self.reg(REG_B) & B_SET == 0 {
            self.advance_seconds(updates);
        }
        self.done = c;
        self.due = self.next_due();
    }

    /// `n` update cycles: the time advances `n` seconds, UF is set, and AF if the
    /// alarm bytes matched at any of them (0xC0-0xFF in an alarm byte is "don't care",
    /// datasheet "Alarm"). Time bytes that are not a valid date do not advance.
    fn advance_seconds(&mut self, n: u64) {
        self.ram[usize::from(REG_C)] |= C_UF;
        let Some(now) = self.time() else {
            return;
        };
        let Some(start) = now.to_unix() else {
            return;
        };
        let b = self.reg(REG_B);
        let old_dow = self.reg(REG_DAY_OF_WEEK);
        // The alarm can only match once per second and matches at least daily when it
        // matches at all, so the last day's worth of seconds decides AF.
        let first_checked = n.saturating_sub(86_400).max(1);
        let alarm = [
            self.reg(REG_SECONDS_ALARM),
            self.reg(REG_MINUTES_ALARM),
            self.reg(REG_HOURS_ALARM),
        ];
        let mut matched = false;
        for k in first_checked..=n {
            if self.reg(REG_C) & C_AF != 0 || matched {
                break;
            }
            let t = DateTime::from_unix(start.saturating_add(k));
            let cur = [
                encode(t.second, b),
                encode(t.minute, b),
                encode_hour(t.hour, b),
            ];
            matched = alarm
                .iter()
                .zip(cur)
                .all(|(&a, v)| a & 0xC0 == 0xC0 || a == v);
        }
        if matched {
            self.ram[usize::from(REG_C)] |= C_AF;
        }
        let end = DateTime::from_unix(start.saturating_add(n));
        let days = end.days() - now.days();
        self.store_time(end);
        // The day-of-week counter runs on its own (1-7, datasheet Table 3): it moves by
        // the days that passed, whatever the guest set it to.
        let dow = decode(old_dow, b).unwrap_or(1);
        let dow = ((u64::from(dow.clamp(1, 7)) - 1 + days) % 7) as u8 + 1;
        self.ram[usize::from(REG_DAY_OF_WEEK)] = encode(dow, b);
    }

    /// Register A's UIP bit at the current time: high for the 244 µs before each update
    /// cycle and during it; never while SET holds updates off or the divider is reset.
    fn uip(&self) -> bool {
        if !self.updating() {
            return false;
        }
        let c = self.cycles_at(self.now);
        // The next update to end after `c`.
        let next_end = FIRST_UPDATE + Self::updates_by(c) * RTC_HZ;
        next_end - c <= UIP_WINDOW
    }

    /// The IRQ output (active when IRQF would read 1; the chip's pin is active low, the
    /// PC inverts nothing that matters here: the 8259A sees a request).
    pub fn irq_line(&self) -> bool {
        let c = self.reg(REG_C);
        let b = self.reg(REG_B);
        (c & C_PF != 0 && b & B_PIE != 0)
            || (c & C_AF != 0 && b & B_AIE != 0)
            || (c & C_UF != 0 && b & B_UIE != 0)
    }

    /// Whether the line fell since the last call (so the next rise is a new edge).
    pub fn take_fell(&mut self) -> bool {
        core::mem::take(&mut self.fell)
    }

    /// The first PIT tick after `now` at which an enabled interrupt flag would be set,
    /// if the line is not already up (the run loop wakes a halted guest then).
    pub fn next_event(&self, now: u64) -> Option<u64> {
        let b = self.reg(REG_B);
        if b & (B_PIE | B_UIE | B_AIE) == 0 || !self.running() || self.irq_line() {
            return None;
        }
        let c = self.cycles_at(now.max(self.now)).max(self.done);
        let mut next: Option<u64> = None;
        let mut take = |cycles: u64| {
            let t = self.tick_of(cycles);
            next = Some(next.map_or(t, |n: u64| n.min(t)));
        };
        if b & B_PIE != 0 {
            if let Some(p) = periodic_cycles(self.reg(REG_A)) {
                take((c / p + 1) * p);
            }
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            take(FIRST_UPDATE + Self::updates_by(c) * RTC_HZ);
        }
        next
    }

    fn read_data(&mut self) -> u8 {
        match self.index {
            REG_A => {
                let uip = if self.uip() { A_UIP } else { 0 };
                (self.reg(REG_A) & !A_UIP) | uip
            }
            REG_C => {
                // Reading C returns the flags with IRQF and clears them all, which
                // also releases the IRQ line (datasheet register C).
                let up = self.irq_line();
                let v = self.reg(REG_C) | if up { C_IRQF } else { 0 };
                self.ram[usize::from(REG_C)] = 0;
                if up {
                    self.fell = true;
                }
                v
            }
            REG_D => D_VRT,
            i => self.reg(i),
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.index {
            REG_A => {
                let was_running = self.running();
                // UIP is read-only.
                self.ram[usize::from(REG_A)] = (v & !A_UIP) | (self.reg(REG_A) & A_UIP);
                if self.running() && !was_running {
                    // Leaving divider reset: the first update ends half a second
                    // later, the periodic chain starts from zero.
                    self.origin = self.now;
                    self.phase = 0;
                    self.done = 0;
                }
            }
            REG_B => {
                let mut v = v;
                if v & B_SET != 0 {
                    // SET going high aborts any update and clears UIE (datasheet
                    // register B, SET and UIE).
                    v &= !B_UIE;
                }
                let was_up = self.irq_line();
                self.ram[usize::from(REG_B)] = v;
                if was_up && !self.irq_line() {
                    self.fell = true;
                }
            }
            // C and D are read-only.
            REG_C | REG_D => {}
            i => self.ram[usize::from(i)] = v,
        }
        self.due = self.next_due();
    }
}

impl PortDevice for Rtc {
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        let now = self.now;
        self.set_now(now);
        match port {
            RTC_DATA_PORT => u32::from(self.read_data()),
            // The PC/AT's index register is write-only: reads float.
            _ => 0xFF,
        }
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) {
        let now = self.now;
        self.set_now(now);
        let v = value as u8;
        match port {
            RTC_INDEX_PORT => {
                self.nmi_masked = v & 0x80 != 0;
                self.index = v & 0x7F;
            }
            _ => self.write_data(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-28 23:59:58 UTC, a Wednesday.
    const T0: u64 = 1_709_164_798;
    const SEC: u64 = PIT_HZ;

    fn rtc() -> Rtc {
        Rtc::new(T0, 256 << 20, 1000)
    }

    fn rd(r: &mut Rtc, now: u64, reg: u8) -> u8 {
        r.set_now(now);
        r.write(RTC_INDEX_PORT, 1, u32::from(reg));
        r.read(RTC_DATA_PORT, 1) as u8
    }

    fn wr(r: &mut Rtc, now: u64, reg: u8, v: u8) {
        r.set_now(now);
        r.write(RTC_INDEX_PORT, 1, u32::from(reg));
        r.write(RTC_DATA_PORT, 1, u32::from(v));
    }

    #[test]
    fn unix_conversions_round_trip_and_know_leap_years() {
        let dt = DateTime::from_unix(T0);
        assert_eq!(
            dt,
            DateTime {
                year: 2024,
                month: 2,
                day: 28,
                hour: 23,
                minute: 59,
                second: 58
            }
        );
        assert_eq!(dt.to_unix(), Some(T0));
        assert_eq!(dt.day_of_week(), 4, "Wednesday");
        assert_eq!(DateTime::from_unix(0).day_of_week(), 5, "Thursday");
        assert_eq!(DateTime::from_unix(DEFAULT_EPOCH).year, 2026);
        assert_eq!(DateTime::from_unix(951_782_400).day, 29, "2000-02-29");
        assert_eq!(DateTime::from_unix(4_107_542_400).month, 3, "2100 not leap");
        for s in [
            0,
            59,
            86_399,
            951_868_799,
            4_102_444_800,
            13_569_465_600,
            253_402_300_799,
        ] {
            assert_eq!(DateTime::from_unix(s).to_unix(), Some(s), "{s}");
        }
        assert_eq!(DateTime::from_unix(u64::MAX).year, 9999);
        let bad = DateTime { day: 30, ..dt };
        assert_eq!(bad.to_unix(), None);
    }

    #[test]
    fn bcd_and_hour_codings() {
        assert_eq!(to_bcd(59), 0x59);
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x5A), None);
        // 12-hour: midnight is 12 AM, noon 12 PM, 13:00 is 1 PM.
        assert_eq!(encode_hour(0, 0), 0x12);
        assert_eq!(encode_hour(12, 0), 0x92);
        assert_eq!(encode_hour(13, 0), 0x81);
        assert_eq!(encode_hour(13, B_DM), 0x81);
        assert_eq!(encode_hour(23, B_DM | B_24H), 23);
        for h in 0..24 {
            for b in [0, B_DM, B_24H, B_DM | B_24H] {
                assert_eq!(decode_hour(encode_hour(h, b), b), Some(h), "{h} {b:#x}");
            }
        }
        assert_eq!(decode_hour(0x13, 0), None);
        assert_eq!(decode_hour(0x00, 0), None);
    }

    #[test]
    fn reads_the_start_time_in_bcd_24h() {
        let mut r = rtc();
        let t = 1000;
        assert_eq!(rd(&mut r, t, REG_SECONDS), 0x58);
        assert_eq!(rd(&mut r, t, REG_MINUTES), 0x59);
        assert_eq!(rd(&mut r, t, REG_HOURS), 0x23);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_WEEK), 4);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_MONTH), 0x28);
        assert_eq!(rd(&mut r, t, REG_MONTH), 0x02);
        assert_eq!(rd(&mut r, t, REG_YEAR), 0x24);
        assert_eq!(rd(&mut r, t, CMOS_CENTURY), 0x20);
        assert_eq!(rd(&mut r, t, REG_B), B_24H);
        assert_eq!(rd(&mut r, t, REG_A), 0x26);
        assert_eq!(rd(&mut r, t, REG_D), D_VRT);
    }

    #[test]
    fn the_leap_day_and_month_and_year_roll_over() {
        let mut r = rtc();
        // Two seconds later: 2024-02-29 00:00:00, Thursday.
        let t = 1000 + 2 * SEC;
        assert_eq!(rd(&mut r, t, REG_DAY_OF_MONTH), 0x29);
        assert_eq!(rd(&mut r, t, REG_MONTH), 0x02);
        assert_eq!(rd(&mut r, t, REG_HOURS), 0x00);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_WEEK), 5);
        // One more day: March 1st.
        let t = t + 86_400 * SEC;
        assert_eq!(rd(&mut r, t, REG_DAY_OF_MONTH), 0x01);
        assert_eq!(rd(&mut r, t, REG_MONTH), 0x03);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_WEEK), 6);

        // 1999-12-31 23:59:59 -> 2000-01-01, century byte too.
        let mut r = Rtc::new(946_684_799, 64 << 20, 0);
        assert_eq!(rd(&mut r, 0, CMOS_CENTURY), 0x19);
        let t = SEC;
        assert_eq!(rd(&mut r, t, REG_YEAR), 0x00);
        assert_eq!(rd(&mut r, t, CMOS_CENTURY), 0x20);
        assert_eq!(rd(&mut r, t, REG_MONTH), 0x01);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_MONTH), 0x01);
        assert_eq!(rd(&mut r, t, REG_SECONDS), 0x00);
        // 2023 is not a leap year: Feb 28 -> Mar 1.
        let mut r = Rtc::new(1_677_628_799, 64 << 20, 0);
        assert_eq!(rd(&mut r, SEC, REG_MONTH), 0x03);
        assert_eq!(rd(&mut r, SEC, REG_DAY_OF_MONTH), 0x01);
    }

    #[test]
    fn the_second_changes_exactly_once_per_second() {
        let mut r = rtc();
        assert_eq!(rd(&mut r, 1000 + SEC - 1, REG_SECONDS), 0x58);
        assert_eq!(rd(&mut r, 1000 + SEC + 1, REG_SECONDS), 0x59);
        assert_eq!(rd(&mut r, 1000 + 2 * SEC - 2, REG_SECONDS), 0x59);
    }

    #[test]
    fn binary_and_12_hour_modes_are_used_after_the_guest_sets_the_time() {
        let mut r = rtc();
        // Linux-style set: SET, write the bytes, binary 12-hour, release.
        wr(&mut r, 1000, REG_B, B_SET | B_DM);
        for (reg, v) in [
            (REG_SECONDS, 59),
            (REG_MINUTES, 59),
            (REG_HOURS, 11 | HOUR_PM),
            (REG_DAY_OF_MONTH, 31),
            (REG_MONTH, 12),
            (REG_YEAR, 99),
            (REG_DAY_OF_WEEK, 6),
            (CMOS_CENTURY, 20),
        ] {
            wr(&mut r, 1000, reg, v);
        }
        // Held by SET: no update however long.
        assert_eq!(rd(&mut r, 1000 + 5 * SEC, REG_SECONDS), 59);
        wr(&mut r, 1000 + 5 * SEC, REG_B, B_DM);
        // The next update (phase unchanged) rolls into 2100-01-01 12 AM, a Friday.
        let t = 1000 + 6 * SEC + 10;
        assert_eq!(rd(&mut r, t, REG_SECONDS), 0);
        assert_eq!(rd(&mut r, t, REG_HOURS), 12);
        assert_eq!(rd(&mut r, t, REG_YEAR), 0);
        assert_eq!(rd(&mut r, t, CMOS_CENTURY), 21);
        assert_eq!(rd(&mut r, t, REG_MONTH), 1);
        assert_eq!(rd(&mut r, t, REG_DAY_OF_WEEK), 7);
        assert_eq!(r.time().unwrap().year, 2100);
        // Noon in 12-hour binary is 12 | PM.
        wr(&mut r, t, REG_B, B_SET | B_DM);
        wr(&mut r, t, REG_HOURS, 11);
        wr(&mut r, t, REG_MINUTES, 59);
        wr(&mut r, t, REG_SECONDS, 59);
        wr(&mut r, t, REG_B, B_DM);
        assert_eq!(rd(&mut r, t + SEC, REG_HOURS), 12 | HOUR_PM);
    }

    #[test]
    fn set_clears_uie_and_stops_uip() {
        let mut r = rtc();
        wr(&mut r, 1000, REG_B, B_24H | B_UIE);
        wr(&mut r, 1000, REG_B, B_24H | B_UIE | B_SET);
        assert_eq!(rd(&mut r, 1000, REG_B), B_24H | B_SET);
        assert_eq!(rd(&mut r, 1000 + SEC - 5, REG_A) & A_UIP, 0);
    }

    /// Tick at which the k-th update after `Rtc::new(.., 1000)` ends.
    fn update_end(r: &Rtc, k: u64) -> u64 {
        r.tick_of(FIRST_UPDATE + k * RTC_HZ)
    }

    #[test]
    fn uip_is_high_for_244us_before_and_during_the_update() {
        let mut r = rtc();
        let end = update_end(&r, 1);
        let window = Rtc::ticks_for(UIP_WINDOW); // 2228 µs
        assert!((2655..=2661).contains(&window), "{window}");
        assert_eq!(rd(&mut r, end - window - 40, REG_A) & A_UIP, 0);
        assert_eq!(rd(&mut r, end - window + 2, REG_A) & A_UIP, A_UIP);
        assert_eq!(rd(&mut r, end - 2, REG_A) & A_UIP, A_UIP);
        assert_eq!(
            rd(&mut r, end - 2, REG_SECONDS),
            0x58,
            "old time during update"
        );
        assert_eq!(rd(&mut r, end, REG_A) & A_UIP, 0);
        assert_eq!(rd(&mut r, end, REG_SECONDS), 0x59);

        // Linux's wait for the UIP edge: poll every ~10 µs; both loops end within a
        // second of guest time and the seconds byte has changed after the fall.
        let mut r = rtc();
        let mut t = 1000;
        let mut polls = 0;
        while rd(&mut r, t, REG_A) & A_UIP == 0 {
            t += 12;
            polls += 1;
            assert!(polls < 200_000);
        }
        let rose = t;
        while rd(&mut r, t, REG_A) & A_UIP != 0 {
            t += 12;
        }
        let fell = t;
        assert!(
            fell - rose >= 2600 && fell - rose <= 2700,
            "{}",
            fell - rose
        );
        assert_eq!(rd(&mut r, t, REG_SECONDS), 0x59);
    }

    #[test]
    fn uip_is_never_set_with_the_divider_in_reset() {
        let mut r = rtc();
        wr(&mut r, 1000, REG_A, 0x70 | 0x06);
        for k in 0..2000 {
            assert_eq!(rd(&mut r, 1000 + k * 1000, REG_A) & A_UIP, 0);
        }
        assert_eq!(rd(&mut r, 1000 + 2_000_000, REG_SECONDS), 0x58, "stopped");
        // Releasing it: first update half a second later.
        let t = 1000 + 2_000_000;
        wr(&mut r, t, REG_A, 0x26);
        assert_eq!(rd(&mut r, t + SEC / 2 - 10, REG_SECONDS), 0x58);
        assert_eq!(rd(&mut r, t + SEC / 2 + 10, REG_SECONDS), 0x59);
    }

    #[test]
    fn periodic_interrupt_at_the_selected_rate_until_c_is_read() {
        let mut r = rtc();
        // 1024 Hz (RS = 6): 32 cycles of 32 kHz = 1165.2 PIT ticks.
        wr(&mut r, 1000, REG_B, B_24H | B_PIE);
        assert!(!r.irq_line());
        let next = r.next_event(1000).unwrap();
        let period = PIT_HZ / 1024;
        assert!(next > 1000 && next <= 1000 + period + 1, "{next}");
        r.set_now(next - 1);
        assert!(!r.irq_line());
        r.set_now(next);
        assert!(r.irq_line());
        assert_eq!(r.next_event(next), None, "line already up");
        assert_eq!(rd(&mut r, next, REG_C), C_IRQF | C_PF);
        assert!(!r.irq_line());
        assert!(r.take_fell());
        assert!(!r.take_fell());
        assert_eq!(rd(&mut r, next, REG_C), 0, "read clears");
        // Ten periods later: flag set once (it is a flag, not a counter).
        r.set_now(next + 10 * period + 10);
        assert!(r.irq_line());
        // 2 Hz (RS = 15).
        wr(&mut r, next, REG_A, 0x2F);
        let _ = rd(&mut r, next + 10 * period + 10, REG_C);
        let t = r.next_event(next + 10 * period + 10).unwrap();
        assert!(t - (next + 10 * period + 10) <= PIT_HZ / 2 + 1);
        assert_eq!(periodic_cycles(1), periodic_cycles(8));
        assert_eq!(periodic_cycles(3), Some(4), "8192 Hz");
        assert_eq!(periodic_cycles(0), None);
    }

    #[test]
    fn pf_is_set_without_pie_but_raises_nothing() {
        let mut r = rtc();
        r.set_now(1000 + PIT_HZ / 100);
        assert!(!r.irq_line());
        assert_eq!(rd(&mut r, 1000 + PIT_HZ / 100, REG_C), C_PF);
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let mut r = rtc();
        wr(&mut r, 1000, REG_A, 0x20); // no periodic flag noise
        wr(&mut r, 1000, REG_B, B_24H | B_UIE);
        let end = r.next_event(1000).unwrap();
        assert_eq!(end, update_end(&r, 1));
        r.set_now(end - 1);
        assert!(!r.irq_line());
        r.set_now(end);
        assert!(r.irq_line());
        assert_eq!(rd(&mut r, end, REG_C), C_IRQF | C_UF);

        // Alarm at 00:00:01 BCD (2 s away), AIE only.
        wr(&mut r, end, REG_B, B_24H | B_AIE);
        wr(&mut r, end, REG_SECONDS_ALARM, 0x01);
        wr(&mut r, end, REG_MINUTES_ALARM, 0x00);
        wr(&mut r, end, REG_HOURS_ALARM, 0x00);
        r.set_now(end + SEC + 5);
        assert!(!r.irq_line(), "00:00:00 does not match");
        assert_eq!(rd(&mut r, end + SEC + 5, REG_C), C_UF);
        r.set_now(end + 2 * SEC + 5);
        assert!(r.irq_line());
        assert_eq!(rd(&mut r, end + 2 * SEC + 5, REG_C), C_IRQF | C_AF | C_UF);
        // Don't-care seconds and minutes: every update matches hour 00.
        wr(&mut r, end, REG_SECONDS_ALARM, 0xC0);
        wr(&mut r, end, REG_MINUTES_ALARM, 0xFF);
        r.set_now(end + 3 * SEC + 5);
        assert_eq!(rd(&mut r, end + 3 * SEC + 5, REG_C), C_IRQF | C_AF | C_UF);
    }

    #[test]
    fn memory_size_bytes_and_checksum() {
        let r = Rtc::new(T0, 32 << 20, 0);
        let b = |i: u8| r.ram[usize::from(i)];
        assert_eq!(u16::from_le_bytes([b(0x15), b(0x16)]), 640);
        assert_eq!(u16::from_le_bytes([b(0x17), b(0x18)]), 31 * 1024);
        assert_eq!(u16::from_le_bytes([b(0x30), b(0x31)]), 31 * 1024);
        assert_eq!(u16::from_le_bytes([b(0x34), b(0x35)]), 256);
        let sum: u16 = (0x10..=0x2D).map(|i| u16::from(b(i))).sum();
        assert_eq!(u16::from_be_bytes([b(0x2E), b(0x2F)]), sum);
        assert_ne!(sum, 0);
        // 256 MiB: extended memory in KiB caps at 0xFFFF, 64 KiB units do not.
        let r = Rtc::new(T0, 256 << 20, 0);
        let b = |i: u8| r.ram[usize::from(i)];
        assert_eq!(u16::from_le_bytes([b(0x17), b(0x18)]), 0xFFFF);
        assert_eq!(u16::from_le_bytes([b(0x34), b(0x35)]), 240 * 16);
        // Beyond 4 GiB both cap.
        let r = Rtc::new(T0, 8 << 30, 0);
        let b = |i: u8| r.ram[usize::from(i)];
        assert_eq!(u16::from_le_bytes([b(0x34), b(0x35)]), 0xFFFF);
    }

    #[test]
    fn index_port_masks_nmi_bit_and_ram_is_writable() {
        let mut r = rtc();
        r.write(RTC_INDEX_PORT, 1, 0x80 | 0x40);
        assert!(r.nmi_masked());
        r.write(RTC_DATA_PORT, 1, 0xA5);
        r.write(RTC_INDEX_PORT, 1, 0x40);
        assert!(!r.nmi_masked());
        assert_eq!(r.read(RTC_DATA_PORT, 1), 0xA5);
        assert_eq!(r.read(RTC_INDEX_PORT, 1), 0xFF);
        // C and D ignore writes; UIP cannot be written.
        wr(&mut r, 1000, REG_D, 0);
        assert_eq!(rd(&mut r, 1000, REG_D), D_VRT);
        wr(&mut r, 1000, REG_A, 0xA6);
        assert_eq!(rd(&mut r, 1000, REG_A), 0x26);
    }

    #[test]
    fn decode_registers_reads_any_coding() {
        let mut regs = [0u8; 10];
        regs[0] = 0x30;
        regs[2] = 0x15;
        regs[4] = 0x87; // 7 PM, BCD 12h
        regs[7] = 0x31;
        regs[8] = 0x12;
        regs[9] = 0x25;
        let dt = decode_registers(&regs, 0, 0x20).unwrap();
        assert_eq!((dt.year, dt.month, dt.day, dt.hour), (2025, 12, 31, 19));
        // Binary 24h, century byte garbage -> 20xx.
        let regs = [5, 0, 6, 0, 21, 0, 1, 1, 1, 26];
        let dt = decode_registers(&regs, B_DM | B_24H, 0xFF).unwrap();
        assert_eq!(dt.to_unix(), Some(DEFAULT_EPOCH + 21 * 3600 + 6 * 60 + 5));
        // Month 13 or 0xFF bytes (no RTC) do not decode.
        assert_eq!(decode_registers(&[0xFF; 10], 0xFF, 0xFF), None);
        let regs = [0, 0, 0, 0, 0, 0, 1, 1, 0x13, 0x26];
        assert_eq!(decode_registers(&regs, B_24H, 0x20), None);
    }
}
