//! Polled output on COM1, the 16550 UART sluice emulates at port 0x3f8.

use core::arch::asm;

const COM1: u16 = 0x3f8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty, a byte may be written.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How often to poll LSR before sending anyway. A missing UART reads all-ones (THR
/// empty), so this only matters if an emulation never reports an empty THR; then a
/// guest still makes progress instead of hanging the test.
const POLL_LIMIT: u32 = 100_000;

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: reading the UART's status register has no side effects.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

fn outb(port: u16, value: u8) {
    // SAFETY: writing the UART's data register only transmits a byte.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Sends one byte as is.
pub fn write_byte(byte: u8) {
    for _ in 0..POLL_LIMIT {
        if inb(LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    outb(COM1, byte);
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
