//! The 8254 programmable interval timer at ports 0x40-0x43, and port 0x61, which gates
//! channel 2 and shows its output.
//!
//! Besides programming channel 0 (the timer on IRQ0), the guests use channel 2 as a
//! clock that needs no interrupt: in mode 0 its OUT goes high once the count has run
//! down, and port 0x61 bit 5 shows OUT. That is how [`Deadline`] bounds the guests'
//! waits, and how `pit64` checks the tick rate against an independent reference (the
//! way Linux calibrates the TSC against the PIT).

use crate::port::{inb, outb};

/// Input clock of every channel, in Hz.
pub const INPUT_HZ: u32 = 1_193_182;

pub const CH0_DATA: u16 = 0x40;
pub const CH2_DATA: u16 = 0x42;
pub const CONTROL: u16 = 0x43;
/// "System control port B" of the PC.
pub const PORT_B: u16 = 0x61;
/// Port B bit 0 (read/write): channel 2 GATE.
pub const PORT_B_GATE2: u8 = 1 << 0;
/// Port B bit 1 (read/write): speaker data enable; kept off so the tests stay silent.
pub const PORT_B_SPEAKER: u8 = 1 << 1;
/// Port B bit 5 (read only): channel 2 OUT.
pub const PORT_B_OUT2: u8 = 1 << 5;

/// Mode 0: interrupt on terminal count (one shot; OUT goes high at the end).
pub const MODE_TERMINAL_COUNT: u8 = 0;
/// Mode 2: rate generator (periodic; OUT pulses low once per period).
pub const MODE_RATE: u8 = 2;

/// Control word RW field: read/write the least significant byte, then the most.
const RW_LSB_MSB: u8 = 0b11;
/// Control word: SC = 0b11 selects the read-back command.
const READ_BACK: u8 = 0b11 << 6;
/// Read-back bit 5, active low: latch the counts of the selected channels. (Bit 4,
/// also active low, latches their status; the commands here always leave it 0.)
const READ_BACK_NO_COUNT: u8 = 1 << 5;

/// The count that makes a channel's period `us` microseconds (rounded; at most 54925).
pub const fn count_for_us(us: u32) -> u16 {
    let count = (INPUT_HZ as u64 * us as u64 + 500_000) / 1_000_000;
    if count > 0xffff {
        0
    } else {
        count as u16
    }
}

fn data_port(channel: u8) -> u16 {
    CH0_DATA + u16::from(channel)
}

/// Control word for `channel` in `mode`, binary counting, LSB then MSB
/// (0x34 for channel 0 in mode 2, 0xB0 for channel 2 in mode 0).
pub const fn control_word(channel: u8, mode: u8) -> u8 {
    channel << 6 | RW_LSB_MSB << 4 | mode << 1
}

/// Programs `channel` in `mode` with `count` (0 stands for 65536).
pub fn program(channel: u8, mode: u8, count: u16) {
    outb(CONTROL, control_word(channel, mode));
    outb(data_port(channel), count as u8);
    outb(data_port(channel), (count >> 8) as u8);
}

/// Counter latch command, then the latched count (LSB, MSB) of `channel`, which must
/// be programmed for LSB-then-MSB access.
pub fn latch_count(channel: u8) -> u16 {
    outb(CONTROL, channel << 6);
    read_count(channel)
}

fn read_count(channel: u8) -> u16 {
    let lsb = inb(data_port(channel));
    let msb = inb(data_port(channel));
    u16::from(lsb) | u16::from(msb) << 8
}

/// Read-back command latching only the status byte of `channel`; returns it.
pub fn read_back_status(channel: u8) -> u8 {
    outb(CONTROL, READ_BACK | READ_BACK_NO_COUNT | 1 << (channel + 1));
    inb(data_port(channel))
}

/// Read-back command latching status and count of `channel`: the first read returns
/// the status, the next two the count.
pub fn read_back_status_and_count(channel: u8) -> (u8, u16) {
    outb(CONTROL, READ_BACK | 1 << (channel + 1));
    let status = inb(data_port(channel));
    (status, read_count(channel))
}

/// The fields of a read-back status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Bit 7: the channel's OUT pin.
    pub out: bool,
    /// Bit 6: a count was written but not yet loaded into the counting element.
    pub null_count: bool,
    /// Bits 5:4: the RW field of the last control word.
    pub rw: u8,
    /// Bits 3:1: the mode.
    pub mode: u8,
    /// Bit 0: BCD counting.
    pub bcd: bool,
}

impl Status {
    pub fn decode(byte: u8) -> Self {
        Status {
            out: byte & 0x80 != 0,
            null_count: byte & 0x40 != 0,
            rw: (byte >> 4) & 3,
            mode: (byte >> 1) & 7,
            bcd: byte & 1 != 0,
        }
    }
}

/// Starts channel 2 as a one-shot of `count` input clocks: gate on, speaker off, mode 0.
/// OUT (port B bit 5) is low from the control word on and goes high when the count
/// runs out.
pub fn start_channel2(count: u16) {
    // Bits 7:4 of port B are read-only status; write back only the control bits.
    let b = inb(PORT_B) & 0x0f;
    outb(PORT_B, (b & !PORT_B_SPEAKER) | PORT_B_GATE2);
    program(2, MODE_TERMINAL_COUNT, count);
}

/// Channel 2 OUT as seen in port B.
pub fn channel2_out() -> bool {
    inb(PORT_B) & PORT_B_OUT2 != 0
}

/// A time limit measured by channel 2 (so only one can run at a time).
pub struct Deadline;

impl Deadline {
    /// Starts a deadline `us` microseconds from now (at most 54925).
    pub fn start_us(us: u32) -> Self {
        start_channel2(count_for_us(us));
        Deadline
    }

    /// Whether the time is up. Every call is a port read, which also gives the
    /// hypervisor an exit at which it can deliver pending interrupts.
    pub fn expired(&self) -> bool {
        channel2_out()
    }
}
