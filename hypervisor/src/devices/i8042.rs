//! The PC's keyboard controller: an Intel 8042 running the IBM PC/AT keyboard-controller
//! firmware (PC AT Technical Reference, "Keyboard controller"; the PS/2 extensions for
//! the auxiliary port as in the IBM PS/2 Hardware Interface Technical Reference), with
//! an MF2 keyboard behind it, plus port 0x92 (PS/2 "system control port A": fast A20
//! and fast reset).
//!
//! - Port 0x64 reads the status register and takes controller commands; port 0x60 reads
//!   the output buffer and takes command arguments or bytes for the keyboard.
//! - The controller answers at once: the input buffer is never seen full (IBF = 0),
//!   and every response byte is queued and shown one at a time in the output buffer.
//! - The keyboard answers the commands Linux's atkbd and firmware use (reset, identify,
//!   LEDs, typematic, enable/disable, scan-code set, echo); nobody presses keys.
//!   Translation to scan-code set 1 (command-byte XLATE) is not applied to these
//!   responses: Linux accepts the untranslated ID 0xAB 0x83.
//! - The auxiliary port has no mouse attached: bytes sent to it (command 0xD4) are
//!   answered the way a controller reports a device that never clocks in, with 0xFE and
//!   the time-out bit in the status register. The controller's own aux commands (enable,
//!   disable, interface test, loopback 0xD3) work, so Linux's AUX probe passes and then
//!   finds no mouse.
//! - A reset request (command 0xFE or another pulse command with bit 0 clear, output
//!   port bit 0 written low, port 0x92 bit 0 rising) is latched for the run loop, which
//!   stops the guest: sluice does not restart guests.
//!
//! IRQ1 is the output buffer holding keyboard data with command-byte bit 0 set; IRQ12
//! the same for aux data with bit 1 set (the 8042 drives them from OBF, so they drop
//! when port 0x60 is read).

use core::ops::RangeInclusive;

use crate::devices::bus::PortDevice;

pub const DATA_PORT: u16 = 0x60;
pub const STATUS_PORT: u16 = 0x64;
/// PS/2 system control port A.
pub const PORT_92: u16 = 0x92;
pub const I8042_DATA_PORTS: RangeInclusive<u16> = DATA_PORT..=DATA_PORT;
pub const I8042_CMD_PORTS: RangeInclusive<u16> = STATUS_PORT..=STATUS_PORT;
pub const KEYBOARD_IRQ: u8 = 1;
pub const AUX_IRQ: u8 = 12;

// Status register (PC AT TR, "Status register").
pub const STR_OBF: u8 = 0x01;
pub const STR_IBF: u8 = 0x02;
/// System flag: set by a passed self-test or the command byte's SYS bit.
pub const STR_SYS: u8 = 0x04;
/// The last write went to port 0x64 (command) rather than 0x60 (data).
pub const STR_CMD: u8 = 0x08;
/// Keyboard not inhibited (the key-lock switch is open).
pub const STR_UNLOCKED: u8 = 0x10;
/// The output buffer holds a byte from the auxiliary device.
pub const STR_AUXDATA: u8 = 0x20;
pub const STR_TIMEOUT: u8 = 0x40;
pub const STR_PARITY: u8 = 0x80;

// Controller command byte (RAM byte 0).
pub const CTR_KBDINT: u8 = 0x01;
pub const CTR_AUXINT: u8 = 0x02;
pub const CTR_SYS: u8 = 0x04;
pub const CTR_KBDDIS: u8 = 0x10;
pub const CTR_AUXDIS: u8 = 0x20;
pub const CTR_XLATE: u8 = 0x40;
/// What a BIOS leaves behind: keyboard interrupt on, system flag, translation, aux
/// port disabled.
pub const CTR_DEFAULT: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;

// Output port (commands 0xD0/0xD1).
/// Bit 0 drives the CPU's reset line, active low.
pub const OUTPUT_RESET: u8 = 0x01;
pub const OUTPUT_A20: u8 = 0x02;

// Controller commands.
pub const CMD_READ_CTR: u8 = 0x20;
pub const CMD_WRITE_CTR: u8 = 0x60;
pub const CMD_AUX_DISABLE: u8 = 0xA7;
pub const CMD_AUX_ENABLE: u8 = 0xA8;
pub const CMD_AUX_TEST: u8 = 0xA9;
pub const CMD_SELF_TEST: u8 = 0xAA;
pub const CMD_KBD_TEST: u8 = 0xAB;
pub const CMD_KBD_DISABLE: u8 = 0xAD;
pub const CMD_KBD_ENABLE: u8 = 0xAE;
pub const CMD_READ_OUTPUT: u8 = 0xD0;
pub const CMD_WRITE_OUTPUT: u8 = 0xD1;
pub const CMD_KBD_LOOP: u8 = 0xD2;
pub const CMD_AUX_LOOP: u8 = 0xD3;
pub const CMD_AUX_SEND: u8 = 0xD4;
pub const CMD_PULSE_RESET: u8 = 0xFE;
/// Self-test passed.
pub const SELF_TEST_OK: u8 = 0x55;

// Keyboard commands and answers.
pub const KBD_ACK: u8 = 0xFA;
pub const KBD_RESEND: u8 = 0xFE;
pub const KBD_BAT_OK: u8 = 0xAA;
pub const KBD_ECHO: u8 = 0xEE;

/// Where an output-buffer byte came from, as the status register and the IRQ lines
/// see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
    Aux,
}

/// One byte waiting for the output buffer. `wire` marks bytes that really come over
/// the keyboard or aux interface, which a disabled interface holds back; the loopback
/// commands 0xD2/0xD3 put their byte in the buffer from inside the controller, so they
/// work with the interface disabled (Linux's AUX probe relies on that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    byte: u8,
    source: Source,
    wire: bool,
}

/// Bytes waiting for the output buffer.
const QUEUE: usize = 16;

#[derive(Clone, Copy)]
struct Queue {
    bytes: [Pending; QUEUE],
    len: usize,
}

impl Queue {
    const fn new() -> Self {
        Queue {
            bytes: [Pending {
                byte: 0,
                source: Source::Controller,
                wire: false,
            }; QUEUE],
            len: 0,
        }
    }

    /// A full queue drops the byte (the real devices would wait; nothing here sends
    /// more than three bytes at a time).
    fn push(&mut self, p: Pending) {
        if self.len < QUEUE {
            self.bytes[self.len] = p;
            self.len += 1;
        }
    }

    /// The first byte that `allowed` accepts, removed.
    fn take(&mut self, allowed: impl Fn(&Pending) -> bool) -> Option<(u8, Source)> {
        let i = self.bytes[..self.len].iter().position(allowed)?;
        let e = self.bytes[i];
        self.bytes.copy_within(i + 1..self.len, i);
        self.len -= 1;
        Some((e.byte, e.source))
    }
}

/// The MF2 keyboard: which command is waiting for its argument byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Keyboard {
    pending: Option<u8>,
    scan_set: u8,
    leds: u8,
    enabled: bool,
    last: u8,
}

/// What a write to port 0x60 is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    Ctr(u8),
    OutputPort,
    KbdLoop,
    AuxLoop,
    Aux,
}

pub struct I8042 {
    ram: [u8; 32],
    output_port: u8,
    /// The output buffer: the byte and its source while OBF is set.
    obf: Option<(u8, Source)>,
    latch: u8,
    queue: Queue,
    status_cmd: bool,
    sys: bool,
    timeout: bool,
    next_data: DataTarget,
    kbd: Keyboard,
    reset_requested: bool,
    /// IRQ1/IRQ12 dropped since the wiring last looked (a read of port 0x60).
    fell: [bool; 2],
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as a BIOS leaves it: self-test passed (SYS set), command byte
    /// [`CTR_DEFAULT`], A20 on, keyboard enabled and idle, nothing in the buffers.
    pub fn new() -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_DEFAULT;
        I8042 {
            ram,
            output_port: OUTPUT_RESET | OUTPUT_A20,
            obf: None,
            latch: 0,
            queue: Queue::new(),
            status_cmd: false,
            sys: true,
            timeout: false,
            next_data: DataTarget::Keyboard,
            kbd: Keyboard {
                scan_set: 2,
                enabled: true,
                ..Keyboard::default()
            },
            reset_requested: false,
            fell: [false; 2],
        }
    }

    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The A20 gate as the output port drives it.
    pub fn a20(&self) -> bool {
        self.output_port & OUTPUT_A20 != 0
    }

    /// Whether the guest asked for a system reset (latched).
    pub fn reset_requested(&self) -> bool {
        self.reset_requested
    }

    pub fn status(&self) -> u8 {
        let mut s = STR_UNLOCKED;
        if self.obf.is_some() {
            s |= STR_OBF;
        }
        if matches!(self.obf, Some((_, Source::Aux))) {
            s |= STR_AUXDATA;
        }
        if self.sys {
            s |= STR_SYS;
        }
        if self.status_cmd {
            s |= STR_CMD;
        }
        if self.timeout {
            s |= STR_TIMEOUT;
        }
        s
    }

    /// IRQ1: keyboard data in the output buffer with the keyboard interrupt enabled.
    pub fn irq1(&self) -> bool {
        matches!(self.obf, Some((_, Source::Keyboard))) && self.ram[0] & CTR_KBDINT != 0
    }

    /// IRQ12: aux data in the output buffer with the aux interrupt enabled.
    pub fn irq12(&self) -> bool {
        matches!(self.obf, Some((_, Source::Aux))) && self.ram[0] & CTR_AUXINT != 0
    }

    /// Whether IRQ1 / IRQ12 fell since the last call (so the next rise is an edge).
    pub fn take_fell(&mut self) -> [bool; 2] {
        core::mem::take(&mut self.fell)
    }

    /// Moves the next byte the enabled interfaces allow into an empty output buffer.
    /// A disabled interface's bytes wait (the 8042 holds its clock line low).
    fn refill(&mut self) {
        if self.obf.is_some() {
            return;
        }
        let ctr = self.ram[0];
        self.obf = self.queue.take(|p| match (p.wire, p.source) {
            (false, _) | (_, Source::Controller) => true,
            (true, Source::Keyboard) => ctr & CTR_KBDDIS == 0,
            (true, Source::Aux) => ctr & CTR_AUXDIS == 0,
        });
    }

    fn put(&mut self, byte: u8, source: Source, wire: bool) {
        self.queue.push(Pending { byte, source, wire });
        self.refill();
    }

    fn respond(&mut self, b: u8) {
        self.put(b, Source::Controller, false);
    }

    fn keyboard_sends(&mut self, b: u8) {
        self.put(b, Source::Keyboard, true);
    }

    fn read_data(&mut self) -> u8 {
        let was = [self.irq1(), self.irq12()];
        // Reading an empty output buffer returns the byte last there (the data
        // latch keeps it).
        let (b, _) = self.obf.take().unwrap_or((self.latch, Source::Controller));
        self.latch = b;
        self.timeout = false;
        self.refill();
        for (fell, up) in self.fell.iter_mut().zip(was) {
            *fell |= up;
        }
        b
    }

    fn command(&mut self, cmd: u8) {
        self.next_data = DataTarget::Keyboard;
        match cmd {
            0x20..=0x3F => {
                let v = self.ram[usize::from(cmd & 0x1F)];
                self.respond(v)
            }
            0x60..=0x7F => self.next_data = DataTarget::Ctr(cmd & 0x1F),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => {
                self.ram[0] &= !CTR_AUXDIS;
                self.refill();
            }
            // Interface tests: 0x00 = no clock or data line stuck.
            CMD_AUX_TEST | CMD_KBD_TEST => self.respond(0x00),
            CMD_SELF_TEST => {
                self.sys = true;
                self.respond(SELF_TEST_OK);
            }
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => {
                self.ram[0] &= !CTR_KBDDIS;
                self.refill();
            }
            CMD_READ_OUTPUT => {
                // Bits 4 and 5 mirror the IRQ1/IRQ12 outputs (PC AT TR output port).
                let mut v = self.output_port & !0x30;
                if self.irq1() {
                    v |= 0x10;
                }
                if self.irq12() {
                    v |= 0x20;
                }
                self.respond(v)
            }
            CMD_WRITE_OUTPUT => self.next_data = DataTarget::OutputPort,
            CMD_KBD_LOOP => self.next_data = DataTarget::KbdLoop,
            CMD_AUX_LOOP => self.next_data = DataTarget::AuxLoop,
            CMD_AUX_SEND => self.next_data = DataTarget::Aux,
            // Pulse output lines: bits 3-0 = 0 pulse; line 0 is the reset line.
            0xF0..=0xFF if cmd & OUTPUT_RESET == 0 => self.reset_requested = true,
            // Other commands (versions, input port, password) are not offered; the
            // 8042 firmware ignores codes it does not know.
            _ => {}
        }
    }

    fn write_data(&mut self, v: u8) {
        match core::mem::replace(&mut self.next_data, DataTarget::Keyboard) {
            DataTarget::Keyboard => self.keyboard_byte(v),
            DataTarget::Ctr(0) => {
                self.ram[0] = v;
                // The SYS bit of the command byte sets the status flag.
                self.sys = v & CTR_SYS != 0;
                self.refill();
            }
            DataTarget::Ctr(i) => self.ram[usize::from(i)] = v,
            DataTarget::OutputPort => {
                self.output_port = v;
                if v & OUTPUT_RESET == 0 {
                    self.reset_requested = true;
                }
            }
            DataTarget::KbdLoop => self.put(v, Source::Keyboard, false),
            DataTarget::AuxLoop => self.put(v, Source::Aux, false),
            DataTarget::Aux => {
                // No mouse: the transmission times out; the controller reports it
                // itself, so the answer is not held by a disabled aux interface.
                self.timeout = true;
                self.put(KBD_RESEND, Source::Aux, false);
            }
        }
    }

    /// A byte for the keyboard: an argument for the pending command or a new command.
    fn keyboard_byte(&mut self, v: u8) {
        // Sending to the keyboard enables its interface (the 8042 releases the clock
        // line to transmit), as AT controllers do.
        self.ram[0] &= !CTR_KBDDIS;
        if let Some(cmd) = self.kbd.pending.take() {
            match cmd {
                0xED => self.kbd.leds = v & 0x07,
                0xF0 if v == 0 => {
                    self.answer(&[KBD_ACK]);
                    let set = self.kbd.scan_set;
                    self.answer(&[set]);
                    return;
                }
                0xF0 if (1..=3).contains(&v) => self.kbd.scan_set = v,
                _ => {}
            }
            self.answer(&[KBD_ACK]);
            return;
        }
        match v {
            // Reset: acknowledge, then the basic assurance test passed.
            0xFF => {
                self.kbd = Keyboard {
                    scan_set: 2,
                    enabled: true,
                    ..Keyboard::default()
                };
                self.answer(&[KBD_ACK, KBD_BAT_OK]);
            }
            // Resend the last byte.
            0xFE => {
                let last = self.kbd.last;
                self.answer(&[last]);
            }
            // Identify: an MF2 keyboard.
            0xF2 => self.answer(&[KBD_ACK, 0xAB, 0x83]),
            // LEDs, typematic rate, scan-code set: an argument byte follows.
            0xED | 0xF3 | 0xF0 => {
                self.kbd.pending = Some(v);
                self.answer(&[KBD_ACK]);
            }
            0xF4 => {
                self.kbd.enabled = true;
                self.answer(&[KBD_ACK]);
            }
            // Disable (F5) and set defaults (F6) both restore the defaults.
            0xF5 | 0xF6 => {
                self.kbd.enabled = v == 0xF6;
                self.answer(&[KBD_ACK]);
            }
            // Scan-set-3 key type commands.
            0xF7..=0xFD => self.answer(&[KBD_ACK]),
            0xEE => self.answer(&[KBD_ECHO]),
            _ => self.answer(&[KBD_RESEND]),
        }
    }

    fn answer(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.kbd.last = b;
            self.keyboard_sends(b);
        }
    }
}

impl PortDevice for I8042 {
    fn read(&mut self, port: u16, _size: u8) -> u32 {
        match port {
            DATA_PORT => u32::from(self.read_data()),
            _ => u32::from(self.status()),
        }
    }

    fn write(&mut self, port: u16, _size: u8, value: u32) {
        let v = value as u8;
        match port {
            DATA_PORT => {
                self.status_cmd = false;
                self.write_data(v);
            }
            _ => {
                self.status_cmd = true;
                self.command(v);
            }
        }
    }
}

/// Port 0x92, PS/2 system control port A: bit 1 gates A20, a 0-to-1 transition of
/// bit 0 resets the processor ("fast reset"). Reads return the last value written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port92 {
    value: u8,
    reset_requested: bool,
}

impl Port92 {
    /// A20 on, as the BIOS leaves it.
    pub const fn new() -> Self {
        Port92 {
            value: OUTPUT_A20,
            reset_requested: false,
        }
    }

    pub fn reset_requested(&self) -> bool {
        self.reset_requested
    }
}

impl PortDevice for Port92 {
    fn read(&mut self, _port: u16, _size: u8) -> u32 {
        u32::from(self.value)
    }

    fn write(&mut self, _port: u16, _size: u8, value: u32) {
        let v = value as u8;
        if v & 1 != 0 && self.value & 1 == 0 {
            self.reset_requested = true;
        }
        self.value = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(c: &mut I8042) -> u8 {
        c.read(STATUS_PORT, 1) as u8
    }

    fn data(c: &mut I8042) -> u8 {
        c.read(DATA_PORT, 1) as u8
    }

    fn cmd(c: &mut I8042, v: u8) {
        assert_eq!(status(c) & STR_IBF, 0, "input buffer free before a write");
        c.write(STATUS_PORT, 1, u32::from(v));
    }

    fn put(c: &mut I8042, v: u8) {
        assert_eq!(status(c) & STR_IBF, 0);
        c.write(DATA_PORT, 1, u32::from(v));
    }

    /// Reads one byte the way Linux's i8042_wait_read + inb do.
    fn get(c: &mut I8042) -> Option<u8> {
        (status(c) & STR_OBF != 0).then(|| data(c))
    }

    #[test]
    fn linux_controller_check_and_selftest() {
        let mut c = I8042::new();
        // i8042_controller_check: the status is not 0xFF, and the flush finds nothing.
        let s = status(&mut c);
        assert_ne!(s, 0xFF);
        assert_eq!(s & STR_OBF, 0);
        assert_ne!(s & STR_SYS, 0);
        // i8042_controller_selftest.
        cmd(&mut c, CMD_SELF_TEST);
        assert_ne!(status(&mut c) & STR_CMD, 0);
        assert_eq!(get(&mut c), Some(SELF_TEST_OK));
        assert_eq!(get(&mut c), None);
    }

    #[test]
    fn command_byte_read_and_write() {
        let mut c = I8042::new();
        cmd(&mut c, CMD_READ_CTR);
        assert_eq!(get(&mut c), Some(CTR_DEFAULT));
        cmd(&mut c, CMD_WRITE_CTR);
        put(&mut c, 0x47);
        assert_eq!(status(&mut c) & STR_CMD, 0, "last write was data");
        assert_eq!(c.command_byte(), 0x47);
        cmd(&mut c, CMD_READ_CTR);
        assert_eq!(get(&mut c), Some(0x47));
        // Other RAM bytes.
        cmd(&mut c, 0x65);
        put(&mut c, 0x99);
        cmd(&mut c, 0x25);
        assert_eq!(get(&mut c), Some(0x99));
        // Clearing SYS in the command byte clears the status flag.
        cmd(&mut c, CMD_WRITE_CTR);
        put(&mut c, 0x00);
        assert_eq!(status(&mut c) & STR_SYS, 0);
    }

    #[test]
    fn linux_aux_probe_loopback_enable_disable_test() {
        let mut c = I8042::new();
        // i8042_controller_init: keyboard off, aux still disabled as the BIOS left it.
        cmd(&mut c, CMD_WRITE_CTR);
        put(&mut c, CTR_SYS | CTR_XLATE | CTR_KBDDIS | CTR_AUXDIS);
        // i8042_check_aux: loopback of 0x5A comes back as aux data.
        cmd(&mut c, CMD_AUX_LOOP);
        put(&mut c, 0x5A);
        let s = status(&mut c);
        assert_eq!(s & (STR_OBF | STR_AUXDATA), STR_OBF | STR_AUXDATA);
        assert!(!c.irq12(), "AUXINT off");
        assert_eq!(data(&mut c), 0x5A);
        // Disable/enable are visible in the command byte.
        cmd(&mut c, CMD_AUX_DISABLE);
        cmd(&mut c, CMD_READ_CTR);
        assert_ne!(get(&mut c).unwrap() & CTR_AUXDIS, 0);
        cmd(&mut c, CMD_AUX_ENABLE);
        cmd(&mut c, CMD_READ_CTR);
        assert_eq!(get(&mut c).unwrap() & CTR_AUXDIS, 0);
        cmd(&mut c, CMD_AUX_TEST);
        assert_eq!(get(&mut c), Some(0x00));
        // The IRQ test: loopback with AUXINT on raises IRQ12, reading drops it.
        cmd(&mut c, CMD_WRITE_CTR);
        put(&mut c, CTR_SYS | CTR_XLATE | CTR_KBDINT | CTR_AUXINT);
        cmd(&mut c, CMD_AUX_LOOP);
        put(&mut c, 0xA5);
        assert!(c.irq12());
        assert!(!c.irq1());
        assert_eq!(data(&mut c), 0xA5);
        assert!(!c.irq12());
        assert_eq!(c.take_fell(), [false, true]);
        assert_eq!(c.take_fell(), [false, false]);
        // No mouse: a byte for the device times out with 0xFE.
        cmd(&mut c, CMD_AUX_SEND);
        put(&mut c, 0xFF);
        let s = status(&mut c);
        assert_eq!(
            s & (STR_OBF | STR_AUXDATA | STR_TIMEOUT),
            STR_OBF | STR_AUXDATA | STR_TIMEOUT
        );
        assert_eq!(data(&mut c), KBD_RESEND);
        assert_eq!(status(&mut c) & STR_TIMEOUT, 0);
    }

    #[test]
    fn keyboard_reset_identify_and_commands_with_arguments() {
        let mut c = I8042::new();
        cmd(&mut c, CMD_KBD_TEST);
        assert_eq!(get(&mut c), Some(0x00));
        put(&mut c, 0xFF);
        assert!(c.irq1(), "KBDINT is on by default");
        assert_eq!(get(&mut c), Some(KBD_ACK));
        assert_eq!(get(&mut c), Some(KBD_BAT_OK));
        assert_eq!(get(&mut c), None);
        assert!(!c.irq1());
        put(&mut c, 0xF2);
        assert_eq!(get(&mut c), Some(KBD_ACK));
        assert_eq!(get(&mut c), Some(0xAB));
        assert_eq!(get(&mut c), Some(0x83));
        // Each byte dropped the line once: the next byte is a new edge.
        assert_eq!(c.take_fell(), [true, false]);
        for (a, b) in [(0xED, 0x07), (0xF3, 0x20)] {
            put(&mut c, a);
            assert_eq!(get(&mut c), Some(KBD_ACK));
            put(&mut c, b);
            assert_eq!(get(&mut c), Some(KBD_ACK));
        }
        assert_eq!(c.kbd.leds, 7);
        for v in [0xF5, 0xF4, 0xF6] {
            put(&mut c, v);
            assert_eq!(get(&mut c), Some(KBD_ACK), "{v:#x}");
        }
        put(&mut c, 0xF0);
        assert_eq!(get(&mut c), Some(KBD_ACK));
        put(&mut c, 0x00);
        assert_eq!(get(&mut c), Some(KBD_ACK));
        assert_eq!(get(&mut c), Some(0x02));
        put(&mut c, 0xEE);
        assert_eq!(get(&mut c), Some(KBD_ECHO));
        put(&mut c, 0x42);
        assert_eq!(get(&mut c), Some(KBD_RESEND));
    }

    #[test]
    fn disabled_keyboard_holds_its_bytes_and_interrupt_follows_ctr() {
        let mut c = I8042::new();
        cmd(&mut c, CMD_WRITE_CTR);
        put(&mut c, CTR_SYS | CTR_XLATE); // no KBDINT
        cmd(&mut c, CMD_KBD_LOOP);
        put(&mut c, 0x1C);
        assert!(!c.irq1());
        assert_eq!(get(&mut c), Some(0x1C));
        // Loopback works with the interface disabled; keyboard answers wait.
        cmd(&mut c, CMD_KBD_DISABLE);
        cmd(&mut c, CMD_KBD_LOOP);
        put(&mut c, 0x1D);
        assert_eq!(get(&mut c), Some(0x1D));
        c.keyboard_sends(0x1E);
        assert_eq!(status(&mut c) & STR_OBF, 0, "held while disabled");
        cmd(&mut c, CMD_KBD_ENABLE);
        assert_eq!(get(&mut c), Some(0x1E));
        // Controller answers are never held.
        cmd(&mut c, CMD_KBD_DISABLE);
        cmd(&mut c, CMD_SELF_TEST);
        assert_eq!(get(&mut c), Some(SELF_TEST_OK));
    }

    #[test]
    fn reset_requests_from_pulse_and_output_port() {
        let mut c = I8042::new();
        cmd(&mut c, CMD_READ_OUTPUT);
        let out = get(&mut c).unwrap();
        assert_eq!(out & (OUTPUT_RESET | OUTPUT_A20), OUTPUT_RESET | OUTPUT_A20);
        // Pulsing other lines (bit 0 set) is not a reset.
        cmd(&mut c, 0xFF);
        assert!(!c.reset_requested());
        // A20 off, reset line still high.
        cmd(&mut c, CMD_WRITE_OUTPUT);
        put(&mut c, OUTPUT_RESET);
        assert!(!c.a20());
        assert!(!c.reset_requested());
        cmd(&mut c, CMD_PULSE_RESET);
        assert!(c.reset_requested());

        let mut c = I8042::new();
        cmd(&mut c, CMD_WRITE_OUTPUT);
        put(&mut c, OUTPUT_A20);
        assert!(c.reset_requested());
    }

    #[test]
    fn port_92_resets_on_a_rising_bit_0() {
        let mut p = Port92::new();
        assert_eq!(p.read(PORT_92, 1), 0x02);
        p.write(PORT_92, 1, 0x00);
        assert!(!p.reset_requested());
        assert_eq!(p.read(PORT_92, 1), 0x00);
        p.write(PORT_92, 1, 0x03);
        assert!(p.reset_requested());
    }
}
