//! Formatted output through the print hypercall: [`println!`](crate::println).
//!
//! Text is collected in a stack buffer and handed to the hypervisor a line (or a
//! buffer-full) at a time, so a line usually reaches the console in one VMCALL instead of
//! one exit per `format_args!` fragment. If the hypervisor refuses a print, the text goes
//! out through the UART instead, so a guest's report is never lost.

use core::fmt::{self, Write};

const BUF_LEN: usize = 256;

struct LineBuffer {
    buf: [u8; BUF_LEN],
    len: usize,
}

impl LineBuffer {
    fn flush(&mut self) {
        let text = &self.buf[..self.len];
        if !text.is_empty() && !crate::hypercall::print(text) {
            crate::uart::write(text);
        }
        self.len = 0;
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == BUF_LEN {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints `args` and a newline; used by [`println!`](crate::println).
pub fn print_line(args: fmt::Arguments) {
    let mut line = LineBuffer {
        buf: [0; BUF_LEN],
        len: 0,
    };
    // Writing into the buffer cannot fail; a failing Display impl just cuts the line.
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

/// `println!` for guests: one line through the print hypercall.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Reports a failed check on the console and returns status 1 from the enclosing
/// function (a guest's `main`).
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {{
        $crate::println!($($arg)*);
        return 1;
    }};
}
