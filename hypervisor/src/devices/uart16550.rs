//! A 16550A UART (the PC's COM port) modelled register by register after the
//! National Semiconductor / TI PC16550D datasheet ("PC16550D Universal
//! Asynchronous Receiver/Transmitter with FIFOs"):
//!
//! - Table II "Summary of Registers": the eight ports, the DLAB-selected
//!   divisor latch at offsets 0/1 and the register bits used below.
//! - Table III "UART Reset Configuration": the values [`Uart16550::reset`]
//!   loads (IER = 0, IIR = 0x01, FCR = 0, LCR = 0, MCR = 0, LSR = 0x60,
//!   MSR bits 3:0 = 0 and bits 7:4 = the modem inputs). The divisor latch,
//!   RBR and SCR are not touched by a reset.
//! - Table IV "Interrupt Control Functions" and section 8 "Interrupt
//!   Identification Register": the four prioritized interrupt sources, what
//!   sets and what resets each.
//! - Section 8 "FIFO Control Register", "Line Status Register", "Modem Control
//!   Register" (loopback), "Modem Status Register", "Scratchpad Register",
//!   "FIFO Interrupt Mode Operation".
//!
//! # Modelling decisions
//!
//! - **Instantaneous transmission.** A byte written to THR goes to the
//!   [`ConsoleSink`] at once and the transmitter is idle again before the
//!   guest's next access, so LSR.THRE and LSR.TEMT always read 1 and the
//!   transmit FIFO is always empty (FCR bit 2 has nothing to clear). The THRE
//!   interrupt follows the datasheet's set/reset rules around that: a THR
//!   write resets it and the emptying transmitter sets it again right away,
//!   which is what a fast line looks like one character time after the write.
//!   Reading IIR while THRE is the reported source resets it. Setting
//!   IER.ETBEI (0 -> 1) while THR is empty raises it, the 8250 behaviour
//!   drivers rely on to start transmission.
//! - **Character timeout without a clock.** There is no notion of character
//!   times, so the "no FIFO activity for four character times" condition is
//!   collapsed to zero: in FIFO mode the timeout interrupt (IIR 0xC) is
//!   pending whenever 0 < RX count < trigger level (and IER.ERBFI is set).
//!   Reading RBR resets it in the datasheet and here, but if bytes below the
//!   trigger remain it is pending again at once, as if the guest had then
//!   waited four character times.
//! - **Overrun.** FIFO mode: a byte arriving at a full 16-byte FIFO is lost,
//!   the FIFO keeps its contents, LSR.OE is set. Character (16450) mode: the
//!   new byte overwrites the unread one in RBR (the datasheet's "destroying
//!   the previous character") and LSR.OE is set. Either way
//!   [`Uart16550::receive`] returns `false` and the overrun counter counts it;
//!   a host feeding console input should ask [`Uart16550::can_receive`] first.
//! - **Line format is not applied.** LCR word length/parity/stop bits, the
//!   break-control bit and the divisor are stored and read back but do not
//!   change data: the host console is not a wire. (A guest that never
//!   programs LCR, leaving the reset 5-bit format, still prints 8-bit bytes.)
//! - **Divisor reset value.** The datasheet leaves the divisor latch
//!   undefined after power-up; the model starts it at 0x0001 (115200 baud
//!   from the PC's 1.8432 MHz clock), what firmware leaves for a console.
//! - **Modem inputs.** Outside loopback MSR bits 7:4 come from
//!   [`Uart16550::set_modem_inputs`]; the default is CTS, DSR and DCD
//!   asserted and RI not, a connected and ready terminal, so drivers that
//!   wait for carrier or clear-to-send see a usable line.
//! - **The interrupt line, PC wiring.** On PCs the UART's INTR output reaches
//!   the ISA IRQ line only through a gate driven by OUT2, and in loopback OUT2
//!   is disconnected from its pin (it is looped to DCD instead). So
//!   [`Uart16550::irq_line`] is high only when an enabled interrupt is
//!   pending, MCR.OUT2 = 1 and MCR.LOOP = 0. Linux's IRQ autoprobe relies on
//!   OUT2 gating; it probes with loopback off. The IIR still reports pending
//!   interrupts in loopback (the datasheet's interrupts stay operational).
//! - **Loopback.** THR writes go into the receiver (subject to the same
//!   FIFO/overrun rules), never to the sink; DTR/RTS/OUT1/OUT2 drive
//!   DSR/CTS/RI/DCD with delta bits following the mirrored levels (entering
//!   or leaving loopback is itself a modem-input change). The serial input is
//!   disconnected: [`Uart16550::can_receive`] is `false` and bytes handed to
//!   [`Uart16550::receive`] are dropped (counted, OE not set).
//! - **Wide accesses.** The UART is an 8-bit ISA device; a 16- or 32-bit IN/OUT
//!   to it is split by the bus into consecutive byte cycles, so a 2- or 4-byte
//!   access here reads or writes the registers at `port`, `port + 1`, ...
//!   byte by byte, lowest port in the lowest byte, with each byte's usual side
//!   effects. Bytes that fall past the UART's last port float (read 0xFF) or
//!   are dropped on write. Access sizes other than 1 and 2 count as 4, as in
//!   [`crate::devices::bus::size_mask`].
//! - **Reading an empty RBR** returns the last byte that was read out of it
//!   (RBR keeps its content; reset does not clear it), 0 before any.
//! - **Receive errors.** Host input has no parity or framing errors, but
//!   [`Uart16550::receive_with_errors`] and [`Uart16550::receive_break`]
//!   accept them so PE/FE/BI and LSR bit 7 behave as the datasheet says: in
//!   FIFO mode each byte carries its error bits, which appear in LSR when that
//!   byte reaches the top of the FIFO.
//!
//! Nothing in here panics on any guest access: offsets are range-checked and
//! all FIFO indexing is modular.

use core::ops::RangeInclusive;

use crate::devices::bus::{ConsoleSink, PortDevice};

/// Ports a UART decodes (offsets 0..=7).
pub const PORT_COUNT: u16 = 8;
/// Depth of the receive FIFO (and of the transmit FIFO, which never fills here).
pub const FIFO_SIZE: usize = 16;
/// Divisor latch value after construction: 115200 baud at 1.8432 MHz.
pub const DEFAULT_DIVISOR: u16 = 0x0001;

// Register offsets (Table II). Offsets 0 and 1 select the divisor latch when LCR.DLAB = 1.
/// Receiver buffer (read, DLAB = 0).
pub const RBR: u16 = 0;
/// Transmitter holding register (write, DLAB = 0).
pub const THR: u16 = 0;
/// Divisor latch, low byte (DLAB = 1).
pub const DLL: u16 = 0;
/// Interrupt enable (DLAB = 0).
pub const IER: u16 = 1;
/// Divisor latch, high byte (DLAB = 1).
pub const DLM: u16 = 1;
/// Interrupt identification (read).
pub const IIR: u16 = 2;
/// FIFO control (write).
pub const FCR: u16 = 2;
/// Line control.
pub const LCR: u16 = 3;
/// Modem control.
pub const MCR: u16 = 4;
/// Line status.
pub const LSR: u16 = 5;
/// Modem status.
pub const MSR: u16 = 6;
/// Scratch.
pub const SCR: u16 = 7;

// IER bits.
/// Enable received data available (and character timeout) interrupt.
pub const IER_ERBFI: u8 = 1 << 0;
/// Enable transmitter holding register empty interrupt.
pub const IER_ETBEI: u8 = 1 << 1;
/// Enable receiver line status interrupt.
pub const IER_ELSI: u8 = 1 << 2;
/// Enable modem status interrupt.
pub const IER_EDSSI: u8 = 1 << 3;
/// Implemented IER bits; bits 7:4 read 0.
pub const IER_MASK: u8 = 0x0F;

// IIR values (Table IV).
/// Bit 0: no interrupt pending.
pub const IIR_NO_INT: u8 = 0x01;
/// Bits 3:1: interrupt identification.
pub const IIR_ID_MASK: u8 = 0x0E;
/// Receiver line status (highest priority).
pub const IIR_RLS: u8 = 0x06;
/// Received data available.
pub const IIR_RDA: u8 = 0x04;
/// Character timeout (FIFO mode only).
pub const IIR_TIMEOUT: u8 = 0x0C;
/// Transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// Modem status (lowest priority).
pub const IIR_MODEM: u8 = 0x00;
/// Bits 7:6: set when FCR bit 0 (FIFO enable) is set.
pub const IIR_FIFOS: u8 = 0xC0;

// FCR bits.
/// Enable both FIFOs; other bits are only programmed when this one is written as 1.
pub const FCR_ENABLE: u8 = 1 << 0;
/// Clear the receive FIFO (self-clearing).
pub const FCR_CLEAR_RX: u8 = 1 << 1;
/// Clear the transmit FIFO (self-clearing).
pub const FCR_CLEAR_TX: u8 = 1 << 2;
/// DMA mode select (RXRDY/TXRDY pin behaviour; stored, no effect here).
pub const FCR_DMA_MODE: u8 = 1 << 3;
/// Receive trigger level field (bits 7:6): 1, 4, 8, 14 bytes.
pub const FCR_TRIGGER_MASK: u8 = 0xC0;
const FCR_TRIGGER_SHIFT: u8 = 6;
const RX_TRIGGERS: [usize; 4] = [1, 4, 8, 14];

// LCR bits.
/// Word length select (bits 1:0).
pub const LCR_WORD_LENGTH: u8 = 0x03;
/// Number of stop bits.
pub const LCR_STOP_BITS: u8 = 1 << 2;
/// Parity enable.
pub const LCR_PARITY_ENABLE: u8 = 1 << 3;
/// Even parity select.
pub const LCR_EVEN_PARITY: u8 = 1 << 4;
/// Stick parity.
pub const LCR_STICK_PARITY: u8 = 1 << 5;
/// Set break.
pub const LCR_BREAK: u8 = 1 << 6;
/// Divisor latch access bit.
pub const LCR_DLAB: u8 = 1 << 7;

// MCR bits.
/// Data terminal ready.
pub const MCR_DTR: u8 = 1 << 0;
/// Request to send.
pub const MCR_RTS: u8 = 1 << 1;
/// OUT1 output.
pub const MCR_OUT1: u8 = 1 << 2;
/// OUT2 output (gates INTR onto the ISA bus on PCs).
pub const MCR_OUT2: u8 = 1 << 3;
/// Local loopback.
pub const MCR_LOOP: u8 = 1 << 4;
/// Implemented MCR bits; bits 7:5 read 0.
pub const MCR_MASK: u8 = 0x1F;

// LSR bits.
/// Data ready.
pub const LSR_DR: u8 = 1 << 0;
/// Overrun error.
pub const LSR_OE: u8 = 1 << 1;
/// Parity error.
pub const LSR_PE: u8 = 1 << 2;
/// Framing error.
pub const LSR_FE: u8 = 1 << 3;
/// Break interrupt.
pub const LSR_BI: u8 = 1 << 4;
/// Transmitter holding register (FIFO) empty.
pub const LSR_THRE: u8 = 1 << 5;
/// Transmitter empty (THR and shift register).
pub const LSR_TEMT: u8 = 1 << 6;
/// FIFO mode: at least one parity/framing/break error in the receive FIFO.
pub const LSR_RX_FIFO_ERROR: u8 = 1 << 7;
/// Errors carried by a received character.
pub const LSR_CHAR_ERRORS: u8 = LSR_PE | LSR_FE | LSR_BI;
/// Error bits cleared by reading LSR (the line-status interrupt sources).
pub const LSR_ERRORS: u8 = LSR_OE | LSR_CHAR_ERRORS;

// MSR bits.
/// Delta clear to send.
pub const MSR_DCTS: u8 = 1 << 0;
/// Delta data set ready.
pub const MSR_DDSR: u8 = 1 << 1;
/// Trailing edge ring indicator (RI went from asserted to not asserted).
pub const MSR_TERI: u8 = 1 << 2;
/// Delta data carrier detect.
pub const MSR_DDCD: u8 = 1 << 3;
/// Clear to send.
pub const MSR_CTS: u8 = 1 << 4;
/// Data set ready.
pub const MSR_DSR: u8 = 1 << 5;
/// Ring indicator.
pub const MSR_RI: u8 = 1 << 6;
/// Data carrier detect.
pub const MSR_DCD: u8 = 1 << 7;
/// The delta bits, cleared by reading MSR.
pub const MSR_DELTAS: u8 = 0x0F;
/// The modem input levels.
pub const MSR_STATUS: u8 = 0xF0;
/// Modem inputs after construction: CTS, DSR and DCD asserted, RI not.
pub const DEFAULT_MODEM_INPUTS: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// An interrupt source, highest priority first (Table IV).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Overrun, parity, framing error or break (reset by reading LSR).
    LineStatus,
    /// Receive count reached the trigger level (1 in character mode).
    ReceivedData,
    /// FIFO mode: data below the trigger level (reset by reading RBR).
    CharacterTimeout,
    /// THR empty (reset by reading IIR while reported, or writing THR).
    ThrEmpty,
    /// A modem-status delta bit is set (reset by reading MSR).
    ModemStatus,
}

impl Interrupt {
    /// The IIR bits 3:0 identifying this source.
    pub const fn iir_id(self) -> u8 {
        match self {
            Interrupt::LineStatus => IIR_RLS,
            Interrupt::ReceivedData => IIR_RDA,
            Interrupt::CharacterTimeout => IIR_TIMEOUT,
            Interrupt::ThrEmpty => IIR_THRE,
            Interrupt::ModemStatus => IIR_MODEM,
        }
    }
}

/// Traffic counters for the run statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UartStats {
    /// Bytes written to THR that went to the sink.
    pub transmitted: u64,
    /// Bytes from the host that entered the receiver (an overwriting byte in
    /// character mode counts; one dropped at a full FIFO does not).
    pub received: u64,
    /// Overrun events (a byte lost to a full receiver, host or loopback).
    pub overruns: u64,
    /// Bytes written to THR in loopback (sent to the receiver, not the sink).
    pub looped: u64,
    /// Host bytes offered while loopback disconnected the serial input.
    pub dropped: u64,
}

/// The receive FIFO: data bytes with the PE/FE/BI bits each one carries.
/// In character mode only its first slot is used (the RBR).
struct RxFifo {
    data: [u8; FIFO_SIZE],
    errors: [u8; FIFO_SIZE],
    head: usize,
    len: usize,
}

impl RxFifo {
    const fn new() -> Self {
        RxFifo {
            data: [0; FIFO_SIZE],
            errors: [0; FIFO_SIZE],
            head: 0,
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.errors = [0; FIFO_SIZE];
    }

    /// Appends unless full; returns whether it did.
    fn push(&mut self, byte: u8, errors: u8) -> bool {
        if self.len >= FIFO_SIZE {
            return false;
        }
        let i = (self.head + self.len) % FIFO_SIZE;
        self.data[i] = byte;
        self.errors[i] = errors;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.data[self.head];
        self.errors[self.head] = 0;
        self.head = (self.head + 1) % FIFO_SIZE;
        self.len -= 1;
        Some(byte)
    }

    /// Takes the error bits of the byte at the top (they are then in LSR).
    fn take_top_errors(&mut self) -> u8 {
        if self.len == 0 {
            return 0;
        }
        core::mem::take(&mut self.errors[self.head % FIFO_SIZE])
    }

    /// Whether any byte still carries error bits not yet moved to LSR.
    fn has_errors(&self) -> bool {
        (0..self.len).any(|k| self.errors[(self.head + k) % FIFO_SIZE] != 0)
    }
}

/// A 16550A UART decoding `base..=base + 7`. See the module documentation for
/// what is modelled and how.
pub struct Uart16550<S: ConsoleSink> {
    base: u16,
    sink: S,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    /// FCR bit 0.
    fifo_enabled: bool,
    /// FCR bit 3 (stored only).
    dma_mode: bool,
    /// Receive trigger level in bytes (FCR bits 7:6).
    rx_trigger: usize,
    /// LSR OE/PE/FE/BI as latched, cleared by reading LSR.
    lsr_errors: u8,
    /// THRE interrupt latch.
    thre_pending: bool,
    /// MSR bits 3:0.
    msr_deltas: u8,
    /// External modem input levels, in MSR bit positions 7:4.
    modem_inputs: u8,
    /// Last byte read from RBR (what an empty RBR reads back).
    last_rbr: u8,
    rx: RxFifo,
    stats: UartStats,
}

impl<S: ConsoleSink> Uart16550<S> {
    /// A UART at `base..=base + 7` (COM1 is [`crate::devices::board::COM1_BASE`]),
    /// in its reset state with the modem inputs at [`DEFAULT_MODEM_INPUTS`]
    /// and the divisor at [`DEFAULT_DIVISOR`].
    pub fn new(base: u16, sink: S) -> Self {
        let mut uart = Uart16550 {
            base,
            sink,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: DEFAULT_DIVISOR,
            fifo_enabled: false,
            dma_mode: false,
            rx_trigger: 1,
            lsr_errors: 0,
            thre_pending: false,
            msr_deltas: 0,
            modem_inputs: DEFAULT_MODEM_INPUTS,
            last_rbr: 0,
            rx: RxFifo::new(),
            stats: UartStats::default(),
        };
        uart.reset();
        uart
    }

    /// Master reset (Table III): IER, FCR, LCR, MCR to 0, FIFOs empty, LSR
    /// errors and MSR deltas cleared, no interrupt pending. The divisor latch,
    /// RBR, scratch register, modem inputs and counters are kept.
    pub fn reset(&mut self) {
        self.ier = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.fifo_enabled = false;
        self.dma_mode = false;
        self.rx_trigger = 1;
        self.lsr_errors = 0;
        self.thre_pending = false;
        self.msr_deltas = 0;
        self.rx.clear();
    }

    /// The port range to register on an [`crate::devices::bus::IoBus`].
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.base..=self.base.saturating_add(PORT_COUNT - 1)
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Traffic counters.
    pub fn stats(&self) -> UartStats {
        self.stats
    }

    /// The divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// The modem control register (DTR, RTS, OUT1, OUT2, LOOP).
    pub fn modem_control(&self) -> u8 {
        self.mcr
    }

    /// Bytes waiting in the receiver.
    pub fn rx_len(&self) -> usize {
        self.rx.len
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Whether a host byte would be accepted without overrun: the receiver has
    /// room and loopback is not disconnecting the serial input.
    pub fn can_receive(&self) -> bool {
        !self.loopback() && self.rx.len < self.rx_capacity()
    }

    /// Feeds one byte of host console input. `false` when a byte was lost:
    /// overrun (LSR.OE set; see the module docs for which byte) or loopback.
    pub fn receive(&mut self, byte: u8) -> bool {
        self.receive_with_errors(byte, 0)
    }

    /// Feeds one byte carrying receive errors (any of [`LSR_PE`], [`LSR_FE`],
    /// [`LSR_BI`]; other bits are ignored). Same result as [`Self::receive`].
    pub fn receive_with_errors(&mut self, byte: u8, errors: u8) -> bool {
        if self.loopback() {
            self.stats.dropped = self.stats.dropped.saturating_add(1);
            return false;
        }
        let ok = self.rx_in(byte, errors & LSR_CHAR_ERRORS);
        if ok || !self.fifo_enabled {
            self.stats.received = self.stats.received.saturating_add(1);
        }
        ok
    }

    /// A break condition on the line: one zero character with BI set.
    pub fn receive_break(&mut self) -> bool {
        self.receive_with_errors(0, LSR_BI)
    }

    /// Sets the external modem inputs (used outside loopback). Changes set
    /// the MSR delta bits (TERI only when RI goes from asserted to not).
    pub fn set_modem_inputs(&mut self, cts: bool, dsr: bool, ri: bool, dcd: bool) {
        let before = self.msr_status();
        let bit = |on: bool, b: u8| if on { b } else { 0 };
        self.modem_inputs =
            bit(cts, MSR_CTS) | bit(dsr, MSR_DSR) | bit(ri, MSR_RI) | bit(dcd, MSR_DCD);
        self.note_modem_change(before);
    }

    /// The highest-priority enabled interrupt pending, if any (what IIR would
    /// report), without side effects.
    pub fn pending_interrupt(&self) -> Option<Interrupt> {
        let ier = self.ier;
        if ier & IER_ELSI != 0 && self.lsr_errors != 0 {
            return Some(Interrupt::LineStatus);
        }
        if ier & IER_ERBFI != 0 && self.rx.len > 0 {
            let trigger = if self.fifo_enabled {
                self.rx_trigger
            } else {
                1
            };
            return Some(if self.rx.len >= trigger {
                Interrupt::ReceivedData
            } else {
                Interrupt::CharacterTimeout
            });
        }
        if ier & IER_ETBEI != 0 && self.thre_pending {
            return Some(Interrupt::ThrEmpty);
        }
        if ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            return Some(Interrupt::ModemStatus);
        }
        None
    }

    /// The level of the IRQ line on the ISA bus: an interrupt is pending,
    /// OUT2 is set and loopback is off (PC wiring; see the module docs).
    pub fn irq_line(&self) -> bool {
        self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2 && self.pending_interrupt().is_some()
    }

    /// Puts a byte into the receiver; `false` on overrun.
    fn rx_in(&mut self, byte: u8, errors: u8) -> bool {
        if self.rx.len >= self.rx_capacity() {
            self.lsr_errors |= LSR_OE;
            self.stats.overruns = self.stats.overruns.saturating_add(1);
            if !self.fifo_enabled {
                // Character mode: the new character replaces the unread one.
                self.rx.clear();
                self.rx.push(byte, errors);
                self.lsr_errors |= self.rx.take_top_errors();
            }
            return false;
        }
        self.rx.push(byte, errors);
        if self.rx.len == 1 {
            self.lsr_errors |= self.rx.take_top_errors();
        }
        true
    }

    /// MSR bits 7:4 as the chip sees them.
    fn msr_status(&self) -> u8 {
        if !self.loopback() {
            return self.modem_inputs & MSR_STATUS;
        }
        let m = self.mcr;
        let bit = |mask: u8, out: u8| if m & mask != 0 { out } else { 0 };
        bit(MCR_DTR, MSR_DSR)
            | bit(MCR_RTS, MSR_CTS)
            | bit(MCR_OUT1, MSR_RI)
            | bit(MCR_OUT2, MSR_DCD)
    }

    /// Latches delta bits for the difference between `before` and now.
    fn note_modem_change(&mut self, before: u8) {
        let after = self.msr_status();
        let changed = before ^ after;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
    }

    fn lsr_value(&self) -> u8 {
        let mut v = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if self.rx.len > 0 {
            v |= LSR_DR;
        }
        if self.fifo_enabled && (self.lsr_errors & LSR_CHAR_ERRORS != 0 || self.rx.has_errors()) {
            v |= LSR_RX_FIFO_ERROR;
        }
        v
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// Reads the register at `offset` (0..=7) with its side effects.
    fn read_reg(&mut self, offset: u16) -> u8 {
        match offset {
            DLL if self.dlab() => self.divisor.to_le_bytes()[0],
            RBR => {
                if let Some(b) = self.rx.pop() {
                    self.last_rbr = b;
                    self.lsr_errors |= self.rx.take_top_errors();
                }
                self.last_rbr
            }
            DLM if self.dlab() => self.divisor.to_le_bytes()[1],
            IER => self.ier,
            IIR => {
                let pending = self.pending_interrupt();
                if pending == Some(Interrupt::ThrEmpty) {
                    self.thre_pending = false;
                }
                let fifos = if self.fifo_enabled { IIR_FIFOS } else { 0 };
                fifos | pending.map_or(IIR_NO_INT, Interrupt::iir_id)
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr_value();
                self.lsr_errors = 0;
                v
            }
            MSR => {
                let v = self.msr_status() | self.msr_deltas;
                self.msr_deltas = 0;
                v
            }
            SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Writes the register at `offset` (0..=7).
    fn write_reg(&mut self, offset: u16, v: u8) {
        match offset {
            DLL if self.dlab() => {
                self.divisor = u16::from_le_bytes([v, self.divisor.to_le_bytes()[1]]);
            }
            THR => self.transmit(v),
            DLM if self.dlab() => {
                self.divisor = u16::from_le_bytes([self.divisor.to_le_bytes()[0], v]);
            }
            IER => {
                let new = v & IER_MASK;
                // THR is always empty: enabling ETBEI raises THRE at once.
                if new & IER_ETBEI != 0 && self.ier & IER_ETBEI == 0 {
                    self.thre_pending = true;
                }
                self.ier = new;
            }
            FCR => self.write_fcr(v),
            LCR => self.lcr = v,
            MCR => {
                let before = self.msr_status();
                self.mcr = v & MCR_MASK;
                self.note_modem_change(before);
            }
            SCR => self.scr = v,
            // LSR and MSR are read-only (writes are for factory test).
            _ => {}
        }
    }

    fn transmit(&mut self, v: u8) {
        // Writing THR resets the THRE interrupt ...
        self.thre_pending = false;
        if self.loopback() {
            self.stats.looped = self.stats.looped.saturating_add(1);
            self.rx_in(v, 0);
        } else {
            self.sink.write_bytes(&[v]);
            self.stats.transmitted = self.stats.transmitted.saturating_add(1);
        }
        // ... and the transmitter, done at once, empties THR again.
        self.thre_pending = true;
    }

    fn write_fcr(&mut self, v: u8) {
        if v & FCR_ENABLE == 0 {
            // Other bits are not programmed unless bit 0 is written as 1.
            if self.fifo_enabled {
                self.fifo_enabled = false;
                self.rx.clear();
            }
            return;
        }
        if !self.fifo_enabled {
            self.fifo_enabled = true;
            self.rx.clear();
        }
        if v & FCR_CLEAR_RX != 0 {
            self.rx.clear();
        }
        // FCR_CLEAR_TX: the transmit FIFO is always empty.
        self.dma_mode = v & FCR_DMA_MODE != 0;
        self.rx_trigger = RX_TRIGGERS[usize::from((v & FCR_TRIGGER_MASK) >> FCR_TRIGGER_SHIFT)];
    }

    fn offset(&self, port: u16) -> Option<u16> {
        port.checked_sub(self.base).filter(|&o| o < PORT_COUNT)
    }

    fn access_width(size: u8) -> u16 {
        match size {
            1 => 1,
            2 => 2,
            _ => 4,
        }
    }
}

impl<S: ConsoleSink> PortDevice for Uart16550<S> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let mut value = 0;
        for i in 0..Self::access_width(size) {
            let byte = match port.checked_add(i).and_then(|p| self.offset(p)) {
                Some(offset) => self.read_reg(offset),
                None => 0xFF,
            };
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        let bytes = value.to_le_bytes();
        for i in 0..Self::access_width(size) {
            if let Some(offset) = port.checked_add(i).and_then(|p| self.offset(p)) {
                self.write_reg(offset, bytes[usize::from(i)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::board::COM1_BASE;
    use crate::devices::bus::IoBus;

    #[derive(Default)]
    struct VecSink(Vec<u8>);

    impl ConsoleSink for VecSink {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    type Uart = Uart16550<VecSink>;

    fn com1() -> Uart {
        Uart16550::new(COM1_BASE, VecSink::default())
    }

    fn rd(u: &mut Uart, offset: u16) -> u8 {
        u.read(COM1_BASE + offset, 1) as u8
    }

    fn wr(u: &mut Uart, offset: u16, v: u8) {
        u.write(COM1_BASE + offset, 1, u32::from(v));
    }

    #[test]
    fn reset_values_match_datasheet() {
        let mut u = com1();
        assert_eq!(u.ports(), 0x3F8..=0x3FF);
        assert_eq!(rd(&mut u, IER), 0);
        assert_eq!(rd(&mut u, IIR), 0x01);
        assert_eq!(rd(&mut u, LCR), 0);
        assert_eq!(rd(&mut u, MCR), 0);
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(rd(&mut u, MSR), 0xB0);
        assert_eq!(u.divisor(), DEFAULT_DIVISOR);
        assert!(!u.irq_line());
        assert_eq!(u.pending_interrupt(), None);
    }

    #[test]
    fn master_reset_keeps_divisor_scratch_and_rbr() {
        let mut u = com1();
        wr(&mut u, LCR, LCR_DLAB);
        wr(&mut u, DLL, 0x0C);
        wr(&mut u, LCR, 0x03);
        wr(&mut u, SCR, 0x42);
        wr(&mut u, IER, 0x0F);
        wr(&mut u, FCR, 0xC1);
        wr(&mut u, MCR, 0x0B);
        u.receive(b'q');
        assert_eq!(rd(&mut u, RBR), b'q');
        u.receive(b'r');
        u.set_modem_inputs(false, true, false, true);
        u.reset();
        assert_eq!(u.divisor(), 0x0C);
        assert_eq!(rd(&mut u, SCR), 0x42);
        assert_eq!(rd(&mut u, IIR), 0x01);
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(rd(&mut u, MSR), MSR_DSR | MSR_DCD);
        assert_eq!(rd(&mut u, RBR), b'q');
        assert_eq!(
            (rd(&mut u, IER), rd(&mut u, LCR), rd(&mut u, MCR)),
            (0, 0, 0)
        );
    }

    #[test]
    fn scratch_register_stores_any_byte() {
        let mut u = com1();
        for v in [0x00, 0xA5, 0x5A, 0xFF] {
            wr(&mut u, SCR, v);
            assert_eq!(rd(&mut u, SCR), v);
        }
    }

    #[test]
    fn thr_write_goes_to_sink_at_once() {
        let mut u = com1();
        for &b in b"ok\n" {
            assert_eq!(rd(&mut u, LSR) & LSR_THRE, LSR_THRE);
            wr(&mut u, THR, b);
        }
        assert_eq!(u.sink().0, b"ok\n");
        assert_eq!(u.stats().transmitted, 3);
    }

    #[test]
    fn line_format_does_not_alter_transmitted_bytes() {
        // Reset LCR selects 5-bit words; the byte still reaches the sink whole.
        let mut u = com1();
        wr(&mut u, THR, 0xE9);
        wr(&mut u, LCR, 0x1F);
        assert_eq!(rd(&mut u, LCR), 0x1F);
        wr(&mut u, THR, 0xFF);
        assert_eq!(u.sink().0, [0xE9, 0xFF]);
    }

    #[test]
    fn thre_and_temt_always_set_with_instant_transmit() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        for b in 0..40u8 {
            wr(&mut u, THR, b);
            assert_eq!(rd(&mut u, LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        }
        assert_eq!(u.sink().0.len(), 40);
    }

    #[test]
    fn divisor_latch_replaces_rbr_thr_and_ier_when_dlab_set() {
        let mut u = com1();
        wr(&mut u, IER, IER_ERBFI | IER_ELSI);
        wr(&mut u, LCR, LCR_DLAB | 0x03);
        wr(&mut u, DLL, 0x0C);
        wr(&mut u, DLM, 0x01);
        assert_eq!(rd(&mut u, DLL), 0x0C);
        assert_eq!(rd(&mut u, DLM), 0x01);
        assert_eq!(u.divisor(), 0x010C);
        assert!(u.sink().0.is_empty());
        wr(&mut u, LCR, 0x03);
        assert_eq!(rd(&mut u, IER), IER_ERBFI | IER_ELSI);
        wr(&mut u, THR, b'x');
        assert_eq!(u.sink().0, b"x");
        assert_eq!(u.divisor(), 0x010C);
    }

    #[test]
    fn divisor_latch_does_not_consume_received_data() {
        let mut u = com1();
        u.receive(b'z');
        wr(&mut u, LCR, LCR_DLAB);
        assert_eq!(rd(&mut u, DLL), DEFAULT_DIVISOR as u8);
        wr(&mut u, LCR, 0);
        assert_eq!(rd(&mut u, RBR), b'z');
    }

    #[test]
    fn ier_keeps_only_low_four_bits() {
        let mut u = com1();
        wr(&mut u, IER, 0xFF);
        assert_eq!(rd(&mut u, IER), 0x0F);
    }

    #[test]
    fn mcr_upper_bits_read_zero() {
        let mut u = com1();
        wr(&mut u, MCR, 0xEF);
        assert_eq!(rd(&mut u, MCR), 0x0F);
    }

    #[test]
    fn lcr_reads_back_all_bits() {
        let mut u = com1();
        wr(&mut u, LCR, 0x7B);
        assert_eq!(rd(&mut u, LCR), 0x7B);
    }

    #[test]
    fn setting_etbei_with_thr_empty_raises_thre_interrupt() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_OUT2);
        assert!(!u.irq_line());
        wr(&mut u, IER, IER_ETBEI);
        assert!(u.irq_line());
        assert_eq!(u.pending_interrupt(), Some(Interrupt::ThrEmpty));
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
    }

    #[test]
    fn iir_read_clears_thre_interrupt() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER, IER_ETBEI);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
        assert!(!u.irq_line());
        // Rewriting IER with ETBEI already set is no new 0 -> 1 edge.
        wr(&mut u, IER, IER_ETBEI);
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
        // Clearing and setting it again is.
        wr(&mut u, IER, 0);
        wr(&mut u, IER, IER_ETBEI);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
    }

    #[test]
    fn iir_read_does_not_clear_thre_when_another_source_is_reported() {
        let mut u = com1();
        wr(&mut u, IER, IER_ETBEI | IER_ERBFI);
        u.receive(b'a');
        assert_eq!(rd(&mut u, IIR), IIR_RDA);
        rd(&mut u, RBR);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
    }

    #[test]
    fn thr_write_rearms_thre_interrupt() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER, IER_ETBEI);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
        assert!(!u.irq_line());
        wr(&mut u, THR, b'!');
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
    }

    #[test]
    fn thre_latch_set_by_polled_transmit_shows_when_enabled() {
        let mut u = com1();
        wr(&mut u, THR, b'p');
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
        wr(&mut u, IER, IER_ETBEI);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
    }

    #[test]
    fn iir_reports_interrupts_in_priority_order() {
        let mut u = com1();
        wr(&mut u, IER, IER_MASK);
        // THRE (set by enabling ETBEI), data, overrun and a modem delta all pending.
        u.set_modem_inputs(false, true, false, true);
        u.receive(1);
        u.receive(2);
        assert_eq!(u.pending_interrupt(), Some(Interrupt::LineStatus));
        assert_eq!(rd(&mut u, IIR), IIR_RLS);
        rd(&mut u, LSR);
        assert_eq!(rd(&mut u, IIR), IIR_RDA);
        rd(&mut u, RBR);
        assert_eq!(rd(&mut u, IIR), IIR_THRE);
        assert_eq!(rd(&mut u, IIR), IIR_MODEM);
        rd(&mut u, MSR);
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
    }

    #[test]
    fn disabled_sources_are_not_reported() {
        let mut u = com1();
        u.receive(1);
        u.receive(2);
        u.set_modem_inputs(false, false, false, false);
        wr(&mut u, THR, b'x');
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
        wr(&mut u, IER, IER_EDSSI);
        assert_eq!(rd(&mut u, IIR), IIR_MODEM);
    }

    #[test]
    fn received_data_interrupt_at_one_byte_without_fifos() {
        let mut u = com1();
        wr(&mut u, IER, IER_ERBFI);
        wr(&mut u, MCR, MCR_OUT2);
        assert!(!u.irq_line());
        assert!(u.receive(b'k'));
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_RDA);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, RBR), b'k');
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        assert!(!u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
    }

    #[test]
    fn received_data_interrupt_at_fifo_trigger_level() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE | 0x80); // trigger 8
        wr(&mut u, IER, IER_ERBFI);
        for b in 0..7 {
            u.receive(b);
            assert_ne!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
        }
        u.receive(7);
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_RDA);
    }

    #[test]
    fn rx_trigger_levels_are_1_4_8_14() {
        for (bits, level) in [(0x00u8, 1usize), (0x40, 4), (0x80, 8), (0xC0, 14)] {
            let mut u = com1();
            wr(&mut u, FCR, FCR_ENABLE | bits);
            wr(&mut u, IER, IER_ERBFI);
            for b in 0..level - 1 {
                u.receive(b as u8);
            }
            assert_ne!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
            u.receive(0);
            assert_eq!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
        }
    }

    #[test]
    fn rda_interrupt_clears_when_fifo_drops_below_trigger() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE | 0x40); // trigger 4
        wr(&mut u, IER, IER_ERBFI);
        for b in 0..5 {
            u.receive(b);
        }
        assert_eq!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
        rd(&mut u, RBR);
        assert_eq!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
        rd(&mut u, RBR);
        // 3 left, below the trigger: the timeout source takes over.
        assert_eq!(u.pending_interrupt(), Some(Interrupt::CharacterTimeout));
    }

    #[test]
    fn character_timeout_below_trigger_level() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE | 0xC0); // trigger 14
        wr(&mut u, IER, IER_ERBFI);
        wr(&mut u, MCR, MCR_OUT2);
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_NO_INT);
        u.receive(b'a');
        u.receive(b'b');
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_TIMEOUT);
        assert_eq!(rd(&mut u, RBR), b'a');
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_TIMEOUT);
        assert_eq!(rd(&mut u, RBR), b'b');
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_NO_INT);
        assert!(!u.irq_line());
    }

    #[test]
    fn iir_fifo_bits_set_when_fifos_enabled() {
        let mut u = com1();
        assert_eq!(rd(&mut u, IIR) & IIR_FIFOS, 0);
        wr(&mut u, FCR, FCR_ENABLE);
        assert_eq!(rd(&mut u, IIR), 0xC1);
        wr(&mut u, FCR, 0);
        assert_eq!(rd(&mut u, IIR), 0x01);
    }

    #[test]
    fn fcr_bits_ignored_unless_fifo_enable_set() {
        // FIFOs off: a clear-RX request without bit 0 is not programmed.
        let mut u = com1();
        u.receive(9);
        wr(&mut u, FCR, FCR_CLEAR_RX | 0xC0);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, IIR) & IIR_FIFOS, 0);
        assert_eq!(rd(&mut u, RBR), 9);
    }

    #[test]
    fn toggling_fifo_enable_clears_rx_fifo() {
        let mut u = com1();
        u.receive(1);
        wr(&mut u, FCR, FCR_ENABLE);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        u.receive(2);
        u.receive(3);
        // Rewriting bit 0 as 1 is no change and keeps the data.
        wr(&mut u, FCR, FCR_ENABLE);
        assert_eq!(u.rx_len(), 2);
        wr(&mut u, FCR, 0);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        assert_eq!(u.rx_len(), 0);
    }

    #[test]
    fn fcr_clear_rx_empties_fifo_and_self_clears() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        for b in 0..5 {
            u.receive(b);
        }
        wr(&mut u, FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        assert_eq!(rd(&mut u, IIR), 0xC1);
        // Self-clearing: later data stays until read.
        u.receive(b'n');
        assert_eq!(rd(&mut u, RBR), b'n');
    }

    #[test]
    fn rx_fifo_holds_sixteen_bytes_in_order() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        for b in 0..FIFO_SIZE as u8 {
            assert!(u.can_receive());
            assert!(u.receive(b + 0x40));
        }
        assert!(!u.can_receive());
        for b in 0..FIFO_SIZE as u8 {
            assert_eq!(rd(&mut u, RBR), b + 0x40);
        }
        assert_eq!(rd(&mut u, LSR) & (LSR_DR | LSR_OE), 0);
        // Wraps around the ring.
        for b in 0..10 {
            u.receive(b);
        }
        for b in 0..10 {
            assert_eq!(rd(&mut u, RBR), b);
        }
    }

    #[test]
    fn fifo_overrun_sets_oe_and_drops_new_byte() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        for b in 0..FIFO_SIZE as u8 {
            u.receive(b);
        }
        assert!(!u.receive(0xEE));
        assert_eq!(u.stats().overruns, 1);
        assert_eq!(u.stats().received, FIFO_SIZE as u64);
        assert_eq!(rd(&mut u, LSR) & LSR_OE, LSR_OE);
        for b in 0..FIFO_SIZE as u8 {
            assert_eq!(rd(&mut u, RBR), b);
        }
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
    }

    #[test]
    fn non_fifo_overrun_overwrites_holding_register() {
        let mut u = com1();
        assert!(u.receive(b'1'));
        assert!(!u.can_receive());
        assert!(!u.receive(b'2'));
        assert_eq!(rd(&mut u, LSR) & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert_eq!(rd(&mut u, RBR), b'2');
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
        assert_eq!(u.stats().overruns, 1);
    }

    #[test]
    fn lsr_read_clears_error_bits() {
        let mut u = com1();
        u.receive_with_errors(b'x', LSR_PE | LSR_FE);
        u.receive(b'y');
        let lsr = rd(&mut u, LSR);
        assert_eq!(lsr & LSR_ERRORS, LSR_OE | LSR_PE | LSR_FE);
        assert_eq!(lsr & LSR_RX_FIFO_ERROR, 0); // character mode
        assert_eq!(rd(&mut u, LSR) & LSR_ERRORS, 0);
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
    }

    #[test]
    fn line_status_interrupt_on_overrun_when_elsi() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_OUT2);
        u.receive(1);
        u.receive(2);
        assert!(!u.irq_line());
        wr(&mut u, IER, IER_ELSI);
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_RLS);
        rd(&mut u, LSR);
        assert!(!u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_NO_INT);
    }

    #[test]
    fn fifo_error_bits_revealed_when_character_reaches_top() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        wr(&mut u, IER, IER_ELSI);
        u.receive(b'a');
        u.receive_with_errors(b'b', LSR_PE);
        // 'b' is not at the top yet: only the FIFO error summary shows.
        assert_eq!(
            rd(&mut u, LSR) & (LSR_PE | LSR_RX_FIFO_ERROR),
            LSR_RX_FIFO_ERROR
        );
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_NO_INT);
        assert_eq!(rd(&mut u, RBR), b'a');
        assert_eq!(rd(&mut u, IIR), IIR_FIFOS | IIR_RLS);
        assert_eq!(
            rd(&mut u, LSR) & (LSR_PE | LSR_RX_FIFO_ERROR | LSR_DR),
            0x85
        );
        assert_eq!(rd(&mut u, RBR), b'b');
    }

    #[test]
    fn lsr_fifo_error_bit_clears_when_no_errored_characters_remain() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        u.receive_with_errors(b'a', LSR_FE);
        u.receive_with_errors(b'b', LSR_FE);
        assert_eq!(rd(&mut u, LSR) & (LSR_FE | LSR_RX_FIFO_ERROR), 0x88);
        // 'b' still carries an error: bit 7 stays.
        assert_eq!(rd(&mut u, LSR) & (LSR_FE | LSR_RX_FIFO_ERROR), 0x80);
        rd(&mut u, RBR);
        assert_eq!(rd(&mut u, LSR) & (LSR_FE | LSR_RX_FIFO_ERROR), 0x88);
        assert_eq!(rd(&mut u, LSR) & (LSR_FE | LSR_RX_FIFO_ERROR), 0);
    }

    #[test]
    fn break_loads_one_zero_character_with_bi() {
        let mut u = com1();
        wr(&mut u, FCR, FCR_ENABLE);
        assert!(u.receive_break());
        assert_eq!(u.rx_len(), 1);
        assert_eq!(rd(&mut u, LSR) & (LSR_BI | LSR_DR), LSR_BI | LSR_DR);
        assert_eq!(rd(&mut u, RBR), 0);
    }

    #[test]
    fn rbr_read_when_empty_returns_last_byte() {
        let mut u = com1();
        assert_eq!(rd(&mut u, RBR), 0);
        u.receive(b'm');
        assert_eq!(rd(&mut u, RBR), b'm');
        assert_eq!(rd(&mut u, RBR), b'm');
        assert_eq!(rd(&mut u, LSR) & LSR_DR, 0);
    }

    #[test]
    fn msr_reflects_modem_inputs_default_connected() {
        let mut u = com1();
        assert_eq!(rd(&mut u, MSR), MSR_CTS | MSR_DSR | MSR_DCD);
        u.set_modem_inputs(true, true, true, true);
        assert_eq!(rd(&mut u, MSR) & MSR_STATUS, 0xF0);
    }

    #[test]
    fn modem_input_change_sets_delta_bits_and_msr_read_clears_them() {
        let mut u = com1();
        u.set_modem_inputs(false, true, false, false);
        assert_eq!(rd(&mut u, MSR), MSR_DSR | MSR_DCTS | MSR_DDCD);
        assert_eq!(rd(&mut u, MSR), MSR_DSR);
        u.set_modem_inputs(false, false, false, false);
        assert_eq!(rd(&mut u, MSR), MSR_DDSR);
        // Unchanged inputs set nothing.
        u.set_modem_inputs(false, false, false, false);
        assert_eq!(rd(&mut u, MSR), 0);
    }

    #[test]
    fn teri_set_only_on_trailing_edge_of_ri() {
        let mut u = com1();
        u.set_modem_inputs(true, true, true, true);
        assert_eq!(rd(&mut u, MSR) & MSR_DELTAS, 0);
        u.set_modem_inputs(true, true, false, true);
        assert_eq!(rd(&mut u, MSR) & MSR_DELTAS, MSR_TERI);
    }

    #[test]
    fn modem_status_interrupt_when_edssi_and_delta() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_OUT2);
        wr(&mut u, IER, IER_EDSSI);
        assert!(!u.irq_line());
        u.set_modem_inputs(true, true, false, false);
        assert!(u.irq_line());
        assert_eq!(rd(&mut u, IIR), IIR_MODEM);
        rd(&mut u, MSR);
        assert!(!u.irq_line());
    }

    #[test]
    fn loopback_mirrors_mcr_into_msr() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_LOOP);
        // Entering loopback drops CTS/DSR/DCD: deltas follow.
        assert_eq!(rd(&mut u, MSR), MSR_DCTS | MSR_DDSR | MSR_DDCD);
        for (mcr, msr) in [
            (MCR_DTR, MSR_DSR),
            (MCR_RTS, MSR_CTS),
            (MCR_OUT1, MSR_RI),
            (MCR_OUT2, MSR_DCD),
        ] {
            wr(&mut u, MCR, MCR_LOOP | mcr);
            assert_eq!(rd(&mut u, MSR) & MSR_STATUS, msr);
        }
        wr(&mut u, MCR, MCR_LOOP | 0x0F);
        let msr = rd(&mut u, MSR);
        assert_eq!(msr & MSR_STATUS, 0xF0);
        // DCD was already on; RI rising is no trailing edge.
        assert_eq!(msr & MSR_DELTAS, MSR_DCTS | MSR_DDSR);
        // OUT1 (RI) falling is the trailing edge.
        wr(&mut u, MCR, MCR_LOOP | 0x0B);
        assert_eq!(rd(&mut u, MSR), 0xB0 | MSR_TERI);
    }

    #[test]
    fn modem_inputs_ignored_in_loopback_until_loop_cleared() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_LOOP | MCR_DTR);
        rd(&mut u, MSR);
        u.set_modem_inputs(false, false, true, false);
        assert_eq!(rd(&mut u, MSR), MSR_DSR);
        wr(&mut u, MCR, 0);
        assert_eq!(rd(&mut u, MSR), MSR_RI | MSR_DDSR);
    }

    #[test]
    fn loopback_routes_thr_to_receiver_not_sink() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_LOOP);
        wr(&mut u, THR, b'L');
        assert!(u.sink().0.is_empty());
        assert_eq!(rd(&mut u, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut u, RBR), b'L');
        // Character mode: a second unread byte overruns.
        wr(&mut u, THR, b'1');
        wr(&mut u, THR, b'2');
        assert_eq!(rd(&mut u, LSR) & LSR_OE, LSR_OE);
        assert_eq!(rd(&mut u, RBR), b'2');
        let s = u.stats();
        assert_eq!((s.looped, s.transmitted, s.overruns), (3, 0, 1));
    }

    #[test]
    fn loopback_disconnects_host_input() {
        let mut u = com1();
        wr(&mut u, MCR, MCR_LOOP);
        assert!(!u.can_receive());
        assert!(!u.receive(b'h'));
        assert_eq!(rd(&mut u, LSR), 0x60);
        assert_eq!(u.stats().dropped, 1);
        wr(&mut u, MCR, 0);
        assert!(u.can_receive());
    }

    #[test]
    fn irq_line_needs_out2() {
        let mut u = com1();
        wr(&mut u, IER, IER_ERBFI);
        u.receive(b'i');
        assert_eq!(u.pending_interrupt(), Some(Interrupt::ReceivedData));
        assert!(!u.irq_line());
        wr(&mut u, MCR, MCR_DTR | MCR_RTS | MCR_OUT1);
        assert!(!u.irq_line());
        wr(&mut u, MCR, MCR_OUT2);
        assert!(u.irq_line());
    }

    #[test]
    fn irq_line_is_low_in_loopback() {
        let mut u = com1();
        wr(&mut u, IER, IER_ERBFI);
        wr(&mut u, MCR, MCR_LOOP | MCR_OUT2);
        wr(&mut u, THR, b'l');
        // The interrupt is pending inside the chip but OUT2 is off the pin.
        assert_eq!(rd(&mut u, IIR), IIR_RDA);
        assert!(!u.irq_line());
        wr(&mut u, MCR, MCR_OUT2);
        assert!(u.irq_line());
    }

    #[test]
    fn wide_access_reads_consecutive_registers() {
        let mut u = com1();
        wr(&mut u, SCR, 0x77);
        wr(&mut u, MCR, 0x03);
        wr(&mut u, LCR, 0x1B);
        // LCR, MCR, LSR, MSR.
        assert_eq!(u.read(0x3FB, 4), 0xB060_031B);
        // MCR, LSR as a word.
        assert_eq!(u.read(0x3FC, 2), 0x6003);
        // A dword from MSR: MSR, SCR, then two bytes past the UART float.
        assert_eq!(u.read(0x3FE, 4), 0xFFFF_77B0);
    }

    #[test]
    fn wide_write_writes_consecutive_registers() {
        let mut u = com1();
        // DLAB on via LCR inside a dword at offset 0: THR gets 'A' first
        // (DLAB still 0), IER 0x05, FCR 0x01, LCR 0x83.
        u.write(0x3F8, 4, 0x8301_0541);
        assert_eq!(u.sink().0, b"A");
        assert_eq!(rd(&mut u, IIR) & IIR_FIFOS, IIR_FIFOS);
        // DLL/DLM as one word.
        u.write(0x3F8, 2, 0x0180);
        assert_eq!(u.divisor(), 0x0180);
        wr(&mut u, LCR, 0x03);
        assert_eq!(rd(&mut u, IER), 0x05);
        // Past the last port: SCR gets the low byte, the rest vanishes.
        u.write(0x3FF, 4, 0xAABB_CC5A);
        assert_eq!(rd(&mut u, SCR), 0x5A);
    }

    #[test]
    fn ports_outside_the_uart_float() {
        let mut u = com1();
        assert_eq!(u.read(0x3F7, 1), 0xFF);
        assert_eq!(u.read(0x400, 2), 0xFFFF);
        u.write(0x3F7, 1, 0x41);
        assert!(u.sink().0.is_empty());
        let mut top = Uart16550::new(0xFFFC, VecSink::default());
        assert_eq!(top.ports(), 0xFFFC..=0xFFFF);
        assert_eq!(top.read(0xFFFF, 4), 0xFFFF_FF00);
    }

    #[test]
    fn stats_count_transmitted_received_overruns() {
        let mut u = com1();
        wr(&mut u, THR, b'a');
        wr(&mut u, THR, b'b');
        u.receive(1);
        u.receive(2);
        assert_eq!(
            u.stats(),
            UartStats {
                transmitted: 2,
                received: 2,
                overruns: 1,
                looped: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn can_receive_reflects_room() {
        let mut u = com1();
        assert!(u.can_receive());
        u.receive(0);
        assert!(!u.can_receive());
        rd(&mut u, RBR);
        assert!(u.can_receive());
    }

    #[test]
    fn works_through_the_io_bus_at_com1() {
        let mut u = com1();
        {
            let mut bus = IoBus::new();
            let range = u.ports();
            bus.register(range, &mut u).unwrap();
            for &b in b"hi" {
                assert_eq!(bus.read(0x3FD, 1) & 0x20, 0x20);
                bus.write(0x3F8, 1, u32::from(b));
            }
            assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
        }
        assert_eq!(u.into_sink().0, b"hi");
    }

    #[test]
    fn linux_style_probe_detects_16550a() {
        let mut u = com1();
        // Scratch test (IER must read back with the upper nibble clear).
        wr(&mut u, IER, 0);
        assert_eq!(rd(&mut u, IER) & 0x0F, 0);
        wr(&mut u, IER, 0x0F);
        assert_eq!(rd(&mut u, IER) & 0x0F, 0x0F);
        wr(&mut u, IER, 0);
        for v in [0xA5, 0x5A] {
            wr(&mut u, SCR, v);
            assert_eq!(rd(&mut u, SCR), v);
        }
        // Loopback test: LOOP | OUT2 | RTS => CTS | DCD.
        let saved_mcr = rd(&mut u, MCR);
        wr(&mut u, MCR, MCR_LOOP | 0x0A);
        assert_eq!(rd(&mut u, MSR) & 0xF0, 0x90);
        wr(&mut u, MCR, saved_mcr);
        // FIFO detection: IIR bits 7:6 = 11 is a 16550A (10 would be a
        // buggy 16550, 00 a 16450 or older).
        wr(&mut u, FCR, FCR_ENABLE);
        assert_eq!(rd(&mut u, IIR) >> 6, 3);
        wr(&mut u, FCR, 0xE7);
        assert_eq!(rd(&mut u, IIR) >> 6, 3);
        // Not a 16750: enabling the 64-byte FIFO bit (FCR bit 5 with DLAB)
        // changes nothing.
        wr(&mut u, LCR, LCR_DLAB);
        wr(&mut u, FCR, 0xE7);
        wr(&mut u, LCR, 0);
        assert_eq!(rd(&mut u, IIR) >> 5, 0b110);
        // Clean up as the driver does.
        wr(&mut u, FCR, 0);
        assert_eq!(rd(&mut u, IIR), 0x01);
        assert!(u.sink().0.is_empty());
    }

    #[test]
    fn never_panics_on_arbitrary_access_sequences() {
        // A small LCG drives random accesses (any size, ports around the
        // UART) interleaved with host input and modem changes.
        let mut u = Uart16550::new(0xFFF8, VecSink::default());
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u32
        };
        for _ in 0..200_000 {
            let r = next();
            let port = 0xFFF0u16.wrapping_add((r & 0x1F) as u16);
            let size = [1u8, 2, 4, 0, 3, 255][((r >> 5) % 6) as usize];
            let value = next();
            match (r >> 8) % 8 {
                0..=2 => {
                    u.read(port, size);
                }
                3..=5 => u.write(port, size, value),
                6 => {
                    u.receive_with_errors(value as u8, (value >> 8) as u8);
                }
                _ => u.set_modem_inputs(value & 1 != 0, value & 2 != 0, value & 4 != 0, false),
            }
            assert!(u.rx_len() <= FIFO_SIZE);
            let lsr = u.lsr_value();
            assert_eq!(lsr & LSR_DR != 0, u.rx_len() > 0);
            assert_eq!(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        }
    }
}
