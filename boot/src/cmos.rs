//! The machine's own real-time clock, read once at start so the guest's virtual RTC
//! (`hypervisor::devices::rtc`) begins at a plausible date. PC/AT CMOS ports 0x70 (index) and
//! 0x71 (data); the MC146818A datasheet's rule for a consistent read: wait until
//! register A's UIP bit is clear, after which the time bytes hold still for at least
//! 244 µs, and read twice to be sure no update slipped in between.

use hypervisor::devices::rtc::{self, REG_A, REG_B};
use x86_64::instructions::port::Port;

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;
/// Register-A polls before giving up on UIP clearing (an update lasts about 2 ms; a
/// port read takes about 1 µs on hardware, longer in emulators).
const UIP_POLLS: u32 = 1_000_000;
/// Dates before this year are taken as a clock that was never set (a dead battery
/// usually shows 2000-01-01 or earlier).
const EARLIEST_PLAUSIBLE_YEAR: u16 = 2020;

fn read(index: u8) -> u8 {
    // SAFETY: the PC/AT CMOS index/data pair; selecting a register and reading it
    // has no side effect except on register C, which is never read here. Bit 7 of
    // the index (NMI mask) is left clear, as firmware leaves it.
    unsafe {
        Port::<u8>::new(INDEX).write(index & 0x7F);
        Port::<u8>::new(DATA).read()
    }
}

/// Bytes 0-9, register B and the century byte, after UIP was seen clear.
fn snapshot() -> Option<([u8; 10], u8, u8)> {
    let mut polls = 0;
    loop {
        let a = read(REG_A);
        if a == 0xFF {
            return None; // nothing at 0x70/0x71
        }
        if a & rtc::A_UIP == 0 {
            break;
        }
        polls += 1;
        if polls >= UIP_POLLS {
            return None;
        }
    }
    let mut regs = [0u8; 10];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = read(i as u8);
    }
    Some((regs, read(REG_B), read(rtc::CMOS_CENTURY)))
}

/// The host clock in seconds since 1970 (the RTC's local time taken as is), or
/// `None` if there is no RTC, it never leaves its update, or it shows no valid date.
pub fn read_wall_clock() -> Option<u64> {
    for _ in 0..5 {
        let first = snapshot()?;
        let second = snapshot()?;
        if first != second {
            continue;
        }
        let (regs, b, century) = first;
        let dt = rtc::decode_registers(&regs, b, century)?;
        if dt.year < EARLIEST_PLAUSIBLE_YEAR {
            return None;
        }
        return dt.to_unix();
    }
    None
}
