//! The hypervisor's own console: COM1 (I/O port 0x3f8) driven by `uart_16550`.
//!
//! Everything sluice prints goes through here. A PC without a serial port is normal
//! (most laptops), so a UART that fails its presence check turns the console into a
//! sink instead of stopping the boot.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

/// Base port of COM1 (PC/AT I/O map).
const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Brings up COM1 at 115200 8N1. Returns whether a UART answered.
pub fn init() -> bool {
    // SAFETY: COM1 is a standard PC port; nothing else in the kernel drives it.
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return false;
    };
    let config = Config {
        baud_rate: uart_16550::BaudRate::Baud115200,
        ..Config::default()
    };
    if uart.init(config).is_err() {
        return false;
    }
    *CONSOLE.lock() = Some(uart);
    true
}

struct Writer<'a>(&'a mut Uart16550<PioBackend>);

impl Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            // A terminal expects CR LF; the serial log is read by people and by xtask.
            if b == b'\n' {
                self.0.send_bytes_exact(b"\r");
            }
            self.0.send_bytes_exact(&[b]);
        }
        Ok(())
    }
}

pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = CONSOLE.lock().as_mut() {
            let _ = Writer(uart).write_fmt(args);
        }
    });
}

/// Printing from an exception or panic handler: the lock may be held by the code that
/// faulted, and waiting for it would hang the machine instead of reporting.
pub fn print_emergency(args: fmt::Arguments) {
    // SAFETY: we are on the way to stopping the machine; no other printer resumes.
    unsafe { CONSOLE.force_unlock() };
    print(args);
}

#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `core::fmt::Write` onto the console, for code in `hypervisor` that writes reports.
pub struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print(format_args!("{s}"));
        Ok(())
    }
}

/// Waits (bounded) until the UART has shifted out every byte (LSR.TEMT, bit 6 of the
/// 16550A line status register), so the last line reaches the other end before the
/// machine stops.
pub fn flush() {
    // SAFETY: called on the way to stopping the machine; no other printer resumes.
    unsafe { CONSOLE.force_unlock() };
    if let Some(uart) = CONSOLE.lock().as_mut() {
        for _ in 0..1_000_000 {
            if uart
                .lsr()
                .contains(uart_16550::spec::registers::LSR::TRANSMITTER_EMPTY)
            {
                break;
            }
            core::hint::spin_loop();
        }
    }
}

/// Raw bytes from the guest (hypercall PRINT, the virtual UART), passed through as they
/// are apart from the LF -> CR LF a terminal needs.
pub fn write_bytes(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = CONSOLE.lock().as_mut() {
            for &b in bytes {
                if b == b'\n' {
                    uart.send_bytes_exact(b"\r");
                }
                uart.send_bytes_exact(&[b]);
            }
        }
    });
}

/// One byte typed on the host's serial line, if any (fed to the guest's UART).
pub fn try_read() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        CONSOLE
            .lock()
            .as_mut()
            .and_then(|uart| uart.try_receive_byte().ok())
    })
}
