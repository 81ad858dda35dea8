//! The hypervisor's own console: COM1 (I/O port 0x3f8) driven by `uart_16550`, and the
//! boot framebuffer through `hypervisor::console::fbcon`.
//!
//! Everything sluice prints, and everything the guest writes to its virtual UART, goes
//! to both. A PC without a serial port is normal (most laptops), so a UART that fails
//! its presence check just leaves the screen; a machine without a framebuffer (or one
//! in a format the console cannot draw) just leaves the serial port.

use core::fmt::{self, Write};
use hypervisor::console::fbcon::{Cell, Console, FbInfo, GlyphCache, Report, RunNumbers};
use hypervisor::stats::{EndKind, Stats};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

/// Base port of COM1 (PC/AT I/O map).
const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Serial>> = Mutex::new(None);

/// Bytes queued for COM1. At 115200 baud a byte takes 87 us on the line; writing each
/// one through to an empty transmitter, as a plain driver does, stops the guest for
/// that long on every byte it prints (the whole exit waits for the host's UART). The
/// queue lets the line drain while the guest runs: the run loop tops up the UART's
/// 16-byte FIFO on every exit (`pump`), and only a full queue, a line of sluice's own
/// (`print` drains the queue) or the end of the run waits for the line.
const TX_QUEUE: usize = 64 * 1024;

/// Spins without the UART taking a byte after which it is taken for dead and what is
/// queued is dropped (a missing or wedged UART must not hang the machine). At 115200
/// baud a full 16-byte FIFO drains in 1.4 ms, a few thousand spins.
const DEAD_UART_SPINS: u32 = 10_000_000;

static mut QUEUE: [u8; TX_QUEUE] = [0; TX_QUEUE];

struct Serial {
    uart: Uart16550<PioBackend>,
    /// `QUEUE`, taken once by `init`.
    queue: &'static mut [u8; TX_QUEUE],
    /// Index of the oldest queued byte, and how many are queued.
    head: usize,
    len: usize,
}

impl Serial {
    /// Queues `bytes` and hands the UART what it takes now.
    fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // A terminal expects CR LF; the serial log is read by people and by xtask.
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        self.pump();
    }

    /// Queues `b`, waiting for the line while the queue is full.
    fn put(&mut self, b: u8) {
        if self.len == TX_QUEUE {
            self.drain_to(TX_QUEUE / 2);
        }
        if self.len < TX_QUEUE {
            self.queue[(self.head + self.len) % TX_QUEUE] = b;
            self.len += 1;
        }
    }

    /// Hands the UART what its FIFO takes now (nothing unless it is empty, up to 16
    /// bytes when it is: `send_bytes`). Never waits.
    fn pump(&mut self) {
        if self.len == 0 {
            return;
        }
        let end = (self.head + self.len).min(TX_QUEUE);
        let n = self.uart.send_bytes(&self.queue[self.head..end]);
        self.head = (self.head + n) % TX_QUEUE;
        self.len -= n;
    }

    /// Waits until at most `left` bytes are queued.
    fn drain_to(&mut self, left: usize) {
        let mut idle = 0u32;
        while self.len > left {
            let before = self.len;
            self.pump();
            if self.len == before {
                idle += 1;
                if idle == DEAD_UART_SPINS {
                    self.len = 0;
                    return;
                }
                core::hint::spin_loop();
            } else {
                idle = 0;
            }
        }
    }
}

static SCREEN: Mutex<Option<Console<'static>>> = Mutex::new(None);

/// Text cells of the screen console: 256 x 160 covers 2304 x 2560 pixels at 9 x 16
/// per cell; a bigger screen uses the rows this allows (see `Console::new`).
const MAX_CELLS: usize = 256 * 160;
static mut CELLS: [Cell; MAX_CELLS] = [Cell::BLANK; MAX_CELLS];
static mut GLYPHS: GlyphCache = GlyphCache::new();

/// How the guest run ended and what the user can do, for the final screen.
static RUN_END: Mutex<Option<(EndKind, u32, RunNumbers)>> = Mutex::new(None);
static HINT: Mutex<Option<&'static str>> = Mutex::new(None);

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
    let mut console = CONSOLE.lock();
    if console.is_some() {
        return true;
    }
    // SAFETY: the only reference to QUEUE is taken here, once (CONSOLE is empty until
    // this store, under its lock).
    let queue = unsafe { &mut *core::ptr::addr_of_mut!(QUEUE) };
    *console = Some(Serial {
        uart,
        queue,
        head: 0,
        len: 0,
    });
    true
}

/// Takes over the bootloader's framebuffer for the screen console. Returns the
/// framebuffer's description, or why there is no screen console.
pub fn init_screen(fb: Option<bootloader_api::info::FrameBuffer>) -> Result<FbInfo, &'static str> {
    let fb = fb.ok_or("no framebuffer")?;
    let info =
        FbInfo::from_bootloader(&fb.info()).map_err(|_| "framebuffer format not drawable")?;
    // SAFETY: called once at boot, before anything else can reach CELLS and GLYPHS;
    // from here on the console behind SCREEN owns them.
    let (cells, glyphs) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(CELLS),
            &mut *core::ptr::addr_of_mut!(GLYPHS),
        )
    };
    let mut console =
        Console::new(fb.into_buffer(), info, cells, glyphs).map_err(|_| "framebuffer too small")?;
    // Scrolling redraws every changed cell; jumping a quarter of the screen at a time
    // keeps a chatty guest (a Linux boot log) from spending its time redrawing.
    console.set_scroll_step(console.rows() / 4);
    *SCREEN.lock() = Some(console);
    Ok(info)
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(serial) = CONSOLE.lock().as_mut() {
            let _ = serial.write_fmt(args);
            // sluice's own lines are few and are what a hang would need to show: they
            // (and the guest output queued before them) go out before printing returns.
            serial.drain_to(0);
        }
        if let Some(screen) = SCREEN.lock().as_mut() {
            let _ = screen.write_fmt(args);
        }
    });
}

/// Printing from an exception or panic handler: a lock may be held by the code that
/// faulted, and waiting for it would hang the machine instead of reporting.
pub fn print_emergency(args: fmt::Arguments) {
    // SAFETY: we are on the way to stopping the machine; no other printer resumes. A
    // screen console interrupted mid-glyph is still consistent (every index it uses is
    // bounds-checked), it only leaves that glyph half drawn.
    unsafe {
        CONSOLE.force_unlock();
        SCREEN.force_unlock();
    }
    print(args);
}

/// Remembers how the guest run ended, for the final screen.
pub fn set_run_end(kind: EndKind, exit_code: u32, stats: &Stats) {
    *RUN_END.lock() = Some((kind, exit_code, RunNumbers::from_stats(stats)));
}

/// Remembers what the user can do about an error, for the final screen.
pub fn set_hint(hint: &'static str) {
    *HINT.lock() = Some(hint);
}

/// Draws the final screen. Called once, on the way to stopping the machine (possibly
/// from a panic or exception while a lock was held, so the locks are taken by force).
pub fn final_screen(status: u32, meaning: &str) {
    // SAFETY: as in print_emergency; nothing else runs after this.
    unsafe {
        SCREEN.force_unlock();
        RUN_END.force_unlock();
        HINT.force_unlock();
    }
    let run = *RUN_END.lock();
    // A guest that ended through its exit hypercall passes its own code as the status,
    // which may collide with sluice's numbers.
    let meaning = match run {
        Some((EndKind::Hypercall, code, _)) if code == status && status != 0 => {
            "the guest's own exit code"
        }
        _ => meaning,
    };
    let report = Report {
        status,
        meaning,
        ok: status == 0,
        end: run.map(|(kind, code, _)| (kind, code)),
        numbers: run.map(|(_, _, n)| n),
        hint: *HINT.lock(),
    };
    if let Some(screen) = SCREEN.lock().as_mut() {
        screen.final_screen(&report);
    }
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

/// Hands the UART what it can take of the queued output, without waiting (the run
/// loop calls this on every exit).
pub fn pump() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(serial) = CONSOLE.lock().as_mut() {
            serial.pump();
        }
    });
}

/// Sends everything queued and waits (bounded) until the UART has shifted out every
/// byte (LSR.TEMT, bit 6 of the 16550A line status register), so the last line
/// reaches the other end before the machine stops.
pub fn flush() {
    // SAFETY: called on the way to stopping the machine; no other printer resumes.
    unsafe { CONSOLE.force_unlock() };
    if let Some(serial) = CONSOLE.lock().as_mut() {
        serial.drain_to(0);
        let uart = &mut serial.uart;
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
        if let Some(serial) = CONSOLE.lock().as_mut() {
            serial.write_bytes(bytes);
        }
        if let Some(screen) = SCREEN.lock().as_mut() {
            screen.write_bytes(bytes);
        }
    });
}

/// One byte typed on the host's serial line, if any (fed to the guest's UART).
pub fn try_read() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        CONSOLE
            .lock()
            .as_mut()
            .and_then(|serial| serial.uart.try_receive_byte().ok())
    })
}
