//! Polled output on COM1, the 16550 UART sluice emulates at port 0x3f8, and the
//! register map the UART test guest (`uart64`) probes.

use crate::port::{inb, outb};

/// Base port of COM1; the registers below are offsets from it.
pub const COM1: u16 = 0x3f8;
/// IRQ line of COM1 on the PC (reaches the PIC only while MCR.OUT2 is set).
pub const COM1_IRQ: u8 = 4;

/// Receive buffer (read) / transmit holding register (write); divisor latch low byte
/// while LCR.DLAB is set.
pub const RBR_THR: u16 = 0;
/// Interrupt enable register; divisor latch high byte while LCR.DLAB is set.
pub const IER: u16 = 1;
/// Interrupt identification (read) / FIFO control (write).
pub const IIR_FCR: u16 = 2;
/// Line control register.
pub const LCR: u16 = 3;
/// Modem control register.
pub const MCR: u16 = 4;
/// Line status register.
pub const LSR: u16 = 5;
/// Modem status register.
pub const MSR: u16 = 6;
/// Scratch register.
pub const SCR: u16 = 7;

/// IER bit 1: interrupt while the transmit holding register is empty.
pub const IER_ETBEI: u8 = 1 << 1;
/// IIR bit 0 clear: an interrupt is pending. Bits 3:1 name it.
pub const IIR_NO_INTERRUPT: u8 = 1 << 0;
/// IIR bits 3:0 for "transmit holding register empty".
pub const IIR_THRE: u8 = 0x2;
/// IIR bits 7:6: 0b11 when the FIFOs are enabled on a 16550A.
pub const IIR_FIFO_MASK: u8 = 0xc0;
/// LCR bit 7: divisor latch access.
pub const LCR_DLAB: u8 = 1 << 7;
/// LCR: 8 data bits, no parity, 1 stop bit.
pub const LCR_8N1: u8 = 0x03;
pub const MCR_DTR: u8 = 1 << 0;
pub const MCR_RTS: u8 = 1 << 1;
/// MCR bit 3: OUT2, which on the PC gates the UART's interrupt line to the PIC.
pub const MCR_OUT2: u8 = 1 << 3;
/// MCR bit 4: internal loopback.
pub const MCR_LOOP: u8 = 1 << 4;
/// LSR bit 0: a received byte is waiting in RBR.
pub const LSR_DATA_READY: u8 = 1 << 0;
/// LSR bit 5: the transmit holding register is empty, a byte may be written.
pub const LSR_THR_EMPTY: u8 = 1 << 5;

/// How often to poll LSR before sending anyway. A missing UART reads all-ones (THR
/// empty), so this only matters if an emulation never reports an empty THR; then a
/// guest still makes progress instead of hanging the test.
pub const POLL_LIMIT: u32 = 100_000;

/// Reads COM1 register `reg` (an offset above).
pub fn read(reg: u16) -> u8 {
    inb(COM1 + reg)
}

/// Writes COM1 register `reg` (an offset above).
pub fn write_reg(reg: u16, value: u8) {
    outb(COM1 + reg, value)
}

/// Sends one byte as is.
pub fn write_byte(byte: u8) {
    for _ in 0..POLL_LIMIT {
        if read(LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    write_reg(RBR_THR, byte);
}

/// Sends `bytes`, turning each `\n` into CR LF as a serial terminal expects.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// Like [`write`], for `core::fmt`.
pub struct Uart;

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}
