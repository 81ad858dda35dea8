//! The PC's cascaded pair of Intel 8259A programmable interrupt controllers
//! (master at 0x20/0x21, slave at 0xA0/0xA1, the slave's INT wired to master
//! IR2) plus the PIIX/ICH edge/level control registers ELCR1/ELCR2 at
//! 0x4D0/0x4D1.
//!
//! Sources: the Intel "8259A Programmable Interrupt Controller (8259A/8259A-2)"
//! datasheet (order no. 231468) for the chip, the IBM PC AT Technical
//! Reference for the wiring (two chips, slave on master IR2, IRQ2 of the ISA
//! bus routed to IRQ9), and the Intel 82371 PIIX/PIIX4 datasheets for ELCR.
//!
//! Model decisions (the datasheet leaves these to the system or to timing):
//!
//! - **Edge-triggered requests** are datasheet-faithful: an IRR bit is the
//!   edge-sense latch AND the current input level. A rising edge sets it; a
//!   line that falls before the acknowledge withdraws the request (the
//!   datasheet requires the input to stay high until after the first INTA and
//!   answers a request that vanished with a default IR7). An input must fall
//!   and rise again for a new request. (Emulators that keep the bit latched
//!   after the line falls differ here.)
//! - **Level-triggered requests** (ICW1 LTIM for the whole chip, or an ELCR
//!   bit per line; the two are OR'ed — a PIIX ignores LTIM, a discrete 8259A
//!   has no ELCR): the IRR bit follows the line.
//! - **INTA** is two pulses, as in 8086 mode. On the first the master freezes
//!   its priority resolver, sets the ISR bit and clears the IRR bit of the
//!   winning level (or picks IR7 without touching ISR if nothing requests:
//!   the spurious interrupt). If that level is a cascade input (master ICW3)
//!   the slave whose ICW3 ID matches answers on the second pulse with its own
//!   vector; if its request vanished in between, it answers with its IR7
//!   vector and sets no ISR bit while the master's ISR2 stays set: the PC's
//!   spurious IRQ15, which is why an IRQ15 handler must still EOI the master.
//!   If no slave has that ID, nobody drives the data bus and the vector reads
//!   0xFF. Automatic EOI happens at the end of the second pulse.
//!   [`PicPair::acknowledge`] runs both pulses; [`PicPair::inta_first_pulse`]
//!   and [`PicPair::inta_second_pulse`] expose the window between them.
//! - The slave's INT output is low during an INTA it answers (its new ISR bit
//!   blocks everything until the second pulse ends), so a slave that still
//!   has requests afterwards (automatic EOI) gives master IR2 a fresh edge.
//! - **Special mask mode**: in-service levels whose IMR bit is set neither
//!   block other levels nor are chosen by a non-specific EOI; unmasked
//!   in-service levels still block themselves and lower levels.
//! - **Special fully nested mode** (ICW4 SFNM) is implemented for the master:
//!   a cascade input that is in service is not blocked by its own ISR bit, so
//!   a higher-priority request within the slave gets through.
//! - **Poll**: the next read of either port of the chip (datasheet: "the next
//!   RD pulse") returns `0x80 | level` and acknowledges like an INTA
//!   (automatic EOI included), or 0 if nothing requests. The master's poll does
//!   not reach into the slave; software polls the slave itself.
//! - ICW1 clears IMR, ISR, the edge-sense latches, priority (IR7 lowest),
//!   special mask mode, rotate-in-AEOI and a pending poll, selects IRR for
//!   reads and sets the slave address to 7; without IC4 all ICW4 functions
//!   are cleared. Until the last ICW arrives the chip records requests but
//!   raises no INT. ICW1 bit 2 (ADI) and bits 7:5 (MCS-80/85 only) are
//!   ignored; ICW4 uPM = 0 (MCS-80/85 mode), BUF and M/S are recorded but the
//!   chip always answers in 8086 style and its role comes from the wiring
//!   (the SP/EN pin), as on the PC.
//! - Power-on state (the datasheet leaves it undefined): initialized as a PC
//!   BIOS leaves the chips (vector bases 0x08/0x70, cascade on IR2, 8086 mode)
//!   but with every input masked.
//! - IRQ2 is the cascade input: [`PicPair::set_irq`]`(2, ..)` is ignored (the
//!   AT bus routes its IRQ2 pin to IRQ9). Out-of-range IRQs are ignored.
//! - Wider port accesses are split into byte accesses at consecutive ports, as
//!   the ISA bus does for 8-bit devices; bytes at ports not ours read 0xFF.

use core::ops::RangeInclusive;

use crate::devices::bus::PortDevice;

/// Master command/status port (A0 = 0).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (A0 = 1).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command/status port (A0 = 0).
pub const SLAVE_CMD: u16 = 0xA0;
/// Slave data port (A0 = 1).
pub const SLAVE_DATA: u16 = 0xA1;
/// Edge/level control for IRQ0-7.
pub const ELCR1: u16 = 0x4D0;
/// Edge/level control for IRQ8-15.
pub const ELCR2: u16 = 0x4D1;
/// Writable ELCR1 bits: IRQ0, IRQ1 and IRQ2 are always edge-triggered.
pub const ELCR1_WRITABLE: u8 = 0xF8;
/// Writable ELCR2 bits: IRQ8 and IRQ13 are always edge-triggered.
pub const ELCR2_WRITABLE: u8 = 0xDE;
/// The master input the slave's INT drives.
pub const CASCADE_IR: u8 = 2;
/// The level a chip answers with when an INTA finds no request.
pub const SPURIOUS_LEVEL: u8 = 7;

/// ICW1 (even port, D4 = 1): ICW4 needed.
pub const ICW1_IC4: u8 = 1 << 0;
/// ICW1: single chip, no ICW3.
pub const ICW1_SNGL: u8 = 1 << 1;
/// ICW1: call address interval 4 (MCS-80/85 only; ignored).
pub const ICW1_ADI: u8 = 1 << 2;
/// ICW1: level-triggered mode for all inputs.
pub const ICW1_LTIM: u8 = 1 << 3;
/// ICW1 marker bit; also what tells ICW1 from OCW2/OCW3.
pub const ICW1_INIT: u8 = 1 << 4;
/// ICW2: the vector bits used in 8086 mode (T7-T3).
pub const ICW2_VECTOR_MASK: u8 = 0xF8;
/// ICW3 of a slave: its ID bits.
pub const ICW3_SLAVE_ID_MASK: u8 = 0x07;
/// ICW4: 8086/8088 mode.
pub const ICW4_UPM: u8 = 1 << 0;
/// ICW4: automatic end of interrupt.
pub const ICW4_AEOI: u8 = 1 << 1;
/// ICW4: buffered-mode master/slave select (recorded only).
pub const ICW4_MS: u8 = 1 << 2;
/// ICW4: buffered mode (recorded only).
pub const ICW4_BUF: u8 = 1 << 3;
/// ICW4: special fully nested mode.
pub const ICW4_SFNM: u8 = 1 << 4;
/// ICW4 bits that mean something.
pub const ICW4_MASK: u8 = 0x1F;
/// Even-port write with D4 = 0: D3 = 1 selects OCW3, 0 OCW2.
pub const OCW3_SELECT: u8 = 1 << 3;
/// OCW2: rotate.
pub const OCW2_R: u8 = 1 << 7;
/// OCW2: specific (level in L2-L0).
pub const OCW2_SL: u8 = 1 << 6;
/// OCW2: end of interrupt.
pub const OCW2_EOI: u8 = 1 << 5;
/// OCW2: the level field L2-L0.
pub const OCW2_LEVEL_MASK: u8 = 0x07;
/// OCW2 R/SL/EOI: non-specific EOI.
pub const OCW2_NON_SPECIFIC_EOI: u8 = OCW2_EOI;
/// OCW2 R/SL/EOI: specific EOI.
pub const OCW2_SPECIFIC_EOI: u8 = OCW2_SL | OCW2_EOI;
/// OCW2 R/SL/EOI: rotate on non-specific EOI.
pub const OCW2_ROTATE_NON_SPECIFIC_EOI: u8 = OCW2_R | OCW2_EOI;
/// OCW2 R/SL/EOI: set rotate in automatic EOI mode.
pub const OCW2_ROTATE_AEOI_SET: u8 = OCW2_R;
/// OCW2 R/SL/EOI: clear rotate in automatic EOI mode.
pub const OCW2_ROTATE_AEOI_CLEAR: u8 = 0;
/// OCW2 R/SL/EOI: rotate on specific EOI.
pub const OCW2_ROTATE_SPECIFIC_EOI: u8 = OCW2_R | OCW2_SL | OCW2_EOI;
/// OCW2 R/SL/EOI: set priority (L2-L0 becomes the lowest).
pub const OCW2_SET_PRIORITY: u8 = OCW2_R | OCW2_SL;
/// OCW2 R/SL/EOI: no operation.
pub const OCW2_NOP: u8 = OCW2_SL;
/// OCW3: read IS register (with RR) instead of IR register.
pub const OCW3_RIS: u8 = 1 << 0;
/// OCW3: read register command.
pub const OCW3_RR: u8 = 1 << 1;
/// OCW3: poll command.
pub const OCW3_P: u8 = 1 << 2;
/// OCW3: special mask mode (with ESMM).
pub const OCW3_SMM: u8 = 1 << 5;
/// OCW3: enable special mask mode change.
pub const OCW3_ESMM: u8 = 1 << 6;
/// Poll word: an interrupt is requesting (W2-W0 hold its level).
pub const POLL_INT: u8 = 1 << 7;
/// What an INTA reads when no chip drives the data bus.
pub const FLOATING_BUS: u8 = 0xFF;

/// Where a chip is in its initialization sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
pub struct Pic8259 {
    /// Wired as the master (SP/EN high).
    master: bool,
    irr: u8,
    isr: u8,
    imr: u8,
    /// Current input levels.
    lines: u8,
    /// ELCR bits for this chip's inputs.
    elcr: u8,
    ltim: bool,
    single: bool,
    ic4: bool,
    /// ICW2 & [`ICW2_VECTOR_MASK`].
    base: u8,
    icw3: u8,
    icw4: u8,
    init: InitStep,
    /// The input with the lowest priority; the next one up is the highest.
    lowest: u8,
    rotate_aeoi: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
}

impl Pic8259 {
    /// A chip wired as master (`true`) or slave, in the power-on state
    /// described in the module header.
    pub const fn new(master: bool) -> Self {
        Pic8259 {
            master,
            irr: 0,
            isr: 0,
            imr: 0xFF,
            lines: 0,
            elcr: 0,
            ltim: false,
            single: false,
            ic4: true,
            base: if master { 0x08 } else { 0x70 },
            icw3: if master { 1 << CASCADE_IR } else { CASCADE_IR },
            icw4: ICW4_UPM,
            init: InitStep::Ready,
            lowest: 7,
            rotate_aeoi: false,
            special_mask: false,
            read_isr: false,
            poll: false,
        }
    }

    /// Interrupt request register.
    pub const fn irr(&self) -> u8 {
        self.irr
    }

    /// In-service register.
    pub const fn isr(&self) -> u8 {
        self.isr
    }

    /// Interrupt mask register (OCW1).
    pub const fn imr(&self) -> u8 {
        self.imr
    }

    /// Vector of IR0 (ICW2 bits 7:3).
    pub const fn vector_base(&self) -> u8 {
        self.base
    }

    /// The input with the lowest priority (7 after initialization).
    pub const fn lowest_priority(&self) -> u8 {
        self.lowest
    }

    /// Special mask mode is on.
    pub const fn special_mask_mode(&self) -> bool {
        self.special_mask
    }

    /// ICW4 as last written (0 if ICW1 had no IC4).
    pub const fn icw4(&self) -> u8 {
        self.icw4
    }

    /// ICW3 as last written (slave address 7 right after ICW1).
    pub const fn icw3(&self) -> u8 {
        self.icw3
    }

    /// The initialization sequence is complete.
    pub fn is_ready(&self) -> bool {
        self.init == InitStep::Ready
    }

    /// Level-triggered inputs (LTIM or ELCR).
    pub const fn level_triggered(&self) -> u8 {
        if self.ltim {
            0xFF
        } else {
            self.elcr
        }
    }

    /// The INT output.
    pub fn interrupt_output(&self) -> bool {
        self.resolve().is_some()
    }

    /// Drives input `ir` (0-7; higher bits ignored) to `level`.
    pub fn set_input(&mut self, ir: u8, level: bool) {
        let bit = 1u8 << (ir & 7);
        let was_high = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.level_triggered() & bit != 0 {
            self.set_irr_bit(bit, level);
        } else if !level {
            // The request is edge latch AND level: a falling line withdraws it.
            self.irr &= !bit;
        } else if !was_high {
            self.irr |= bit;
        }
    }

    fn set_irr_bit(&mut self, bit: u8, on: bool) {
        if on {
            self.irr |= bit;
        } else {
            self.irr &= !bit;
        }
    }

    /// Sets this chip's ELCR bits (the caller applies the read-only mask).
    fn set_elcr(&mut self, elcr: u8) {
        self.elcr = elcr;
        self.refresh_irr();
    }

    /// Re-derives IRR after a trigger-mode change: level inputs follow their
    /// lines, edge inputs keep a latched request only while their line is high.
    fn refresh_irr(&mut self) {
        let level = self.level_triggered();
        self.irr = (self.irr & self.lines & !level) | (self.lines & level);
    }

    fn is_cascade_input(&self, level: u8) -> bool {
        self.master && !self.single && self.icw3 & (1 << (level & 7)) != 0
    }

    /// Whether this chip answers an INTA whose cascade address is `id`.
    fn answers_cascade(&self, id: u8) -> bool {
        !self.master && !self.single && self.icw3 & ICW3_SLAVE_ID_MASK == id
    }

    fn vector(&self, level: u8) -> u8 {
        self.base | (level & 7)
    }

    /// Levels from the highest priority to the lowest.
    fn priority_order(&self) -> impl Iterator<Item = u8> {
        let lowest = self.lowest;
        (1..=8u8).map(move |i| (lowest + i) & 7)
    }

    /// In-service levels that take part in priority decisions.
    fn effective_isr(&self) -> u8 {
        if self.special_mask {
            self.isr & !self.imr
        } else {
            self.isr
        }
    }

    /// The level INT is raised for, if any.
    fn resolve(&self) -> Option<u8> {
        if self.init != InitStep::Ready {
            return None;
        }
        let requests = self.irr & !self.imr;
        let in_service = self.effective_isr();
        let sfnm = self.icw4 & ICW4_SFNM != 0;
        for level in self.priority_order() {
            let bit = 1 << level;
            if requests & bit != 0 {
                let blocked = in_service & bit != 0 && !(sfnm && self.is_cascade_input(level));
                return if blocked { None } else { Some(level) };
            }
            if in_service & bit != 0 {
                return None;
            }
        }
        None
    }

    /// First INTA pulse (or a poll read): freezes the resolver, marks the
    /// winner in service and consumes its edge latch. `None` is the spurious
    /// case (the request went away).
    fn freeze_acknowledge(&mut self) -> Option<u8> {
        let level = self.resolve()?;
        let bit = 1 << level;
        self.isr |= bit;
        if self.level_triggered() & bit == 0 {
            self.irr &= !bit;
        }
        Some(level)
    }

    /// End of the last INTA pulse: automatic EOI.
    fn finish_acknowledge(&mut self, level: u8) {
        if self.icw4 & ICW4_AEOI != 0 {
            self.isr &= !(1 << level);
            if self.rotate_aeoi {
                self.lowest = level;
            }
        }
    }

    /// A complete INTA cycle on this chip alone (no cascade): the vector it
    /// drives, IR7's if nothing requests.
    pub fn acknowledge(&mut self) -> u8 {
        match self.freeze_acknowledge() {
            Some(level) => {
                self.finish_acknowledge(level);
                self.vector(level)
            }
            None => self.vector(SPURIOUS_LEVEL),
        }
    }

    /// A poll read: `0x80 | level` with the level acknowledged, or 0.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.freeze_acknowledge() {
            Some(level) => {
                self.finish_acknowledge(level);
                POLL_INT | level
            }
            None => 0,
        }
    }

    /// A read with A0 = `a0`.
    pub fn read(&mut self, a0: bool) -> u8 {
        if self.poll {
            self.poll_read()
        } else if a0 {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    /// A write with A0 = `a0`.
    pub fn write(&mut self, a0: bool, value: u8) {
        if !a0 {
            if value & ICW1_INIT != 0 {
                self.icw1(value);
            } else if value & OCW3_SELECT != 0 {
                self.ocw3(value);
            } else {
                self.ocw2(value);
            }
            return;
        }
        match self.init {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.base = value & ICW2_VECTOR_MASK;
                self.init = if !self.single {
                    InitStep::Icw3
                } else if self.ic4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                self.init = if self.ic4 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                self.icw4 = value & ICW4_MASK;
                self.init = InitStep::Ready;
            }
        }
    }

    fn icw1(&mut self, value: u8) {
        self.ltim = value & ICW1_LTIM != 0;
        self.single = value & ICW1_SNGL != 0;
        self.ic4 = value & ICW1_IC4 != 0;
        self.init = InitStep::Icw2;
        self.imr = 0;
        self.isr = 0;
        // Edge-sense latches reset; level inputs still follow their lines.
        self.irr = self.lines & self.level_triggered();
        self.lowest = 7;
        self.rotate_aeoi = false;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.icw3 = 7;
        if !self.ic4 {
            self.icw4 = 0;
        }
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & OCW2_LEVEL_MASK;
        match value & (OCW2_R | OCW2_SL | OCW2_EOI) {
            OCW2_NON_SPECIFIC_EOI => {
                self.non_specific_eoi();
            }
            OCW2_SPECIFIC_EOI => self.isr &= !(1 << level),
            OCW2_ROTATE_NON_SPECIFIC_EOI => {
                if let Some(l) = self.non_specific_eoi() {
                    self.lowest = l;
                }
            }
            OCW2_ROTATE_AEOI_SET => self.rotate_aeoi = true,
            OCW2_ROTATE_AEOI_CLEAR => self.rotate_aeoi = false,
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                self.lowest = level;
            }
            OCW2_SET_PRIORITY => self.lowest = level,
            // OCW2_NOP
            _ => {}
        }
    }

    /// Clears the highest-priority in-service bit (ignoring masked levels in
    /// special mask mode); returns its level.
    fn non_specific_eoi(&mut self) -> Option<u8> {
        let in_service = self.effective_isr();
        let level = self
            .priority_order()
            .find(|&l| in_service & (1 << l) != 0)?;
        self.isr &= !(1 << level);
        Some(level)
    }

    fn ocw3(&mut self, value: u8) {
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
        if value & OCW3_P != 0 {
            self.poll = true;
        }
    }
}

/// An INTA sequence between its two pulses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Inta {
    /// The master's frozen level; `None` if it answered spuriously.
    master_level: Option<u8>,
    /// The level whose vector (or cascade address) the master answers with.
    level: u8,
    /// Cascade address put on CAS2-0, if `level` is a cascade input.
    cascade: Option<u8>,
}

/// The PC/AT's two 8259As and the ELCR pair.
#[derive(Clone, Debug)]
pub struct PicPair {
    master: Pic8259,
    slave: Pic8259,
    inta: Option<Inta>,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Both chips in their power-on state, every IRQ edge-triggered.
    pub const fn new() -> Self {
        PicPair {
            master: Pic8259::new(true),
            slave: Pic8259::new(false),
            inta: None,
        }
    }

    /// The port ranges to register on an [`crate::devices::bus::IoBus`]; the device
    /// answers every one of its ports whatever range an access came through.
    pub const fn ports() -> [RangeInclusive<u16>; 3] {
        [
            RangeInclusive::new(MASTER_CMD, MASTER_DATA),
            RangeInclusive::new(SLAVE_CMD, SLAVE_DATA),
            RangeInclusive::new(ELCR1, ELCR2),
        ]
    }

    pub const fn master(&self) -> &Pic8259 {
        &self.master
    }

    pub const fn slave(&self) -> &Pic8259 {
        &self.slave
    }

    /// ELCR2:ELCR1 (bit n = IRQ n level-triggered).
    pub const fn elcr(&self) -> u16 {
        ((self.slave.elcr as u16) << 8) | (self.master.elcr as u16)
    }

    /// The master's INT output (the CPU's INTR line).
    pub fn interrupt_output(&self) -> bool {
        self.master.interrupt_output()
    }

    /// Whether IRQ `irq` (0-15) is masked: in the master's IMR, or for 8-15 in the
    /// slave's IMR or at the cascade input (IRQ2) of the master.
    pub fn irq_masked(&self, irq: u8) -> bool {
        if irq < 8 {
            self.master.imr() & (1 << irq) != 0
        } else {
            self.slave.imr() & (1 << (irq & 7)) != 0 || self.master.imr() & (1 << 2) != 0
        }
    }

    /// Drives IRQ `irq` (0-15) to `level`. IRQ2 (the cascade input) and
    /// numbers above 15 are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0 | 1 | 3..=7 => self.master.set_input(irq, level),
            8..=15 => self.slave.set_input(irq - 8, level),
            _ => {}
        }
        self.sync();
    }

    /// Carries the slave's INT to master IR2.
    fn sync(&mut self) {
        let int = self.slave.interrupt_output();
        self.master.set_input(CASCADE_IR, int);
    }

    /// The vector an INTA would return right now; `None` if INT is low.
    pub fn pending_vector(&self) -> Option<u8> {
        let level = self.master.resolve()?;
        if !self.master.is_cascade_input(level) {
            return Some(self.master.vector(level));
        }
        if !self.slave.answers_cascade(level) {
            return Some(FLOATING_BUS);
        }
        let slave_level = self.slave.resolve().unwrap_or(SPURIOUS_LEVEL);
        Some(self.slave.vector(slave_level))
    }

    /// A whole INTA cycle: marks the interrupt in service (unless automatic
    /// EOI) and returns its vector; the spurious vector (IR7 of the chip whose
    /// request vanished) if nothing requests.
    pub fn acknowledge(&mut self) -> u8 {
        self.inta_first_pulse();
        self.inta_second_pulse()
    }

    /// The first INTA pulse: the master freezes its priority decision. A
    /// second call before [`Self::inta_second_pulse`] does nothing.
    pub fn inta_first_pulse(&mut self) {
        if self.inta.is_some() {
            return;
        }
        let master_level = self.master.freeze_acknowledge();
        let level = master_level.unwrap_or(SPURIOUS_LEVEL);
        let cascade = self.master.is_cascade_input(level).then_some(level);
        self.inta = Some(Inta {
            master_level,
            level,
            cascade,
        });
        self.sync();
    }

    /// The second INTA pulse: the master, or the slave it addressed, drives
    /// the vector; automatic EOI follows. Runs the first pulse too if it has
    /// not happened.
    pub fn inta_second_pulse(&mut self) -> u8 {
        if self.inta.is_none() {
            self.inta_first_pulse();
        }
        let Some(inta) = self.inta.take() else {
            return FLOATING_BUS;
        };
        let vector = match inta.cascade {
            Some(id) if self.slave.answers_cascade(id) => {
                let v = self.slave.acknowledge();
                // The slave's INT was low during the cycle it answered.
                self.master.set_input(CASCADE_IR, false);
                v
            }
            Some(_) => FLOATING_BUS,
            None => self.master.vector(inta.level),
        };
        if let Some(level) = inta.master_level {
            self.master.finish_acknowledge(level);
        }
        self.sync();
        vector
    }

    /// One byte read of `port`.
    pub fn read_port(&mut self, port: u16) -> u8 {
        let v = match port {
            MASTER_CMD | MASTER_DATA => self.master.read(port == MASTER_DATA),
            SLAVE_CMD | SLAVE_DATA => self.slave.read(port == SLAVE_DATA),
            ELCR1 => self.master.elcr,
            ELCR2 => self.slave.elcr,
            _ => FLOATING_BUS,
        };
        self.sync();
        v
    }

    /// One byte write to `port`.
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD | MASTER_DATA => self.master.write(port == MASTER_DATA, value),
            SLAVE_CMD | SLAVE_DATA => self.slave.write(port == SLAVE_DATA, value),
            ELCR1 => self.master.set_elcr(value & ELCR1_WRITABLE),
            ELCR2 => self.slave.set_elcr(value & ELCR2_WRITABLE),
            _ => {}
        }
        self.sync();
    }
}

/// Bytes in an access of `size` (anything but 1 and 2 is a dword).
fn access_bytes(size: u8) -> u16 {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

impl PortDevice for PicPair {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        (0..access_bytes(size)).fold(0, |acc, i| {
            acc | (u32::from(self.read_port(port.wrapping_add(i))) << (8 * i))
        })
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        for i in 0..access_bytes(size) {
            self.write_port(port.wrapping_add(i), (value >> (8 * i)) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::IoBus;

    const MASTER_BASE: u8 = 0x30;
    const SLAVE_BASE: u8 = 0x38;

    fn out(p: &mut PicPair, port: u16, v: u8) {
        p.write_port(port, v);
    }

    /// Linux x86-64's sequence (`init_8259A`): ICW1 0x11, bases 0x30/0x38,
    /// cascade on IR2, 8086 mode, then everything masked.
    fn linux_init(p: &mut PicPair, icw4: u8) {
        out(p, MASTER_DATA, 0xFF);
        out(p, SLAVE_DATA, 0xFF);
        out(p, MASTER_CMD, 0x11);
        out(p, MASTER_DATA, MASTER_BASE);
        out(p, MASTER_DATA, 0x04);
        out(p, MASTER_DATA, icw4);
        out(p, SLAVE_CMD, 0x11);
        out(p, SLAVE_DATA, SLAVE_BASE);
        out(p, SLAVE_DATA, 0x02);
        out(p, SLAVE_DATA, icw4);
        out(p, MASTER_DATA, 0xFF);
        out(p, SLAVE_DATA, 0xFF);
    }

    /// Initialized with every IRQ unmasked.
    fn open_pair() -> PicPair {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_UPM);
        out(&mut p, MASTER_DATA, 0);
        out(&mut p, SLAVE_DATA, 0);
        p
    }

    fn pulse(p: &mut PicPair, irq: u8) {
        p.set_irq(irq, true);
        p.set_irq(irq, false);
    }

    fn eoi(p: &mut PicPair, port: u16) {
        out(p, port, OCW2_NON_SPECIFIC_EOI);
    }

    /// One chip, initialized (single mode, 8086) with base 0x40, unmasked.
    fn single_chip(icw4: u8) -> Pic8259 {
        let mut c = Pic8259::new(true);
        c.write(false, ICW1_INIT | ICW1_SNGL | ICW1_IC4);
        c.write(true, 0x40);
        c.write(true, icw4);
        assert!(c.is_ready());
        c
    }

    fn raise(c: &mut Pic8259, ir: u8) {
        c.set_input(ir, true);
    }

    #[test]
    fn power_on_state_masks_everything() {
        let mut p = PicPair::new();
        for irq in 0..16 {
            p.set_irq(irq, true);
        }
        assert_eq!(p.master().imr(), 0xFF);
        assert_eq!(p.slave().imr(), 0xFF);
        assert!(!p.interrupt_output());
        assert_eq!(p.pending_vector(), None);
        assert_eq!(p.master().vector_base(), 0x08);
        assert_eq!(p.slave().vector_base(), 0x70);
    }

    #[test]
    fn linux_init_sequence_then_irq0_delivery_and_eoi() {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_UPM);
        assert_eq!(p.master().vector_base(), 0x30);
        assert_eq!(p.slave().vector_base(), 0x38);
        assert_eq!(p.master().icw3(), 0x04);
        assert_eq!(p.slave().icw3(), 0x02);
        assert_eq!(p.master().icw4(), ICW4_UPM);
        assert_eq!(p.read_port(MASTER_DATA), 0xFF);
        // Masked: the timer's edge is recorded but not delivered.
        p.set_irq(0, true);
        assert_eq!(p.master().irr(), 0x01);
        assert!(!p.interrupt_output());
        // Linux unmasks IRQ0 and IRQ2 (cascade).
        out(&mut p, MASTER_DATA, 0xFA);
        assert_eq!(p.pending_vector(), Some(0x30));
        assert_eq!(p.acknowledge(), 0x30);
        assert_eq!(p.master().isr(), 0x01);
        assert_eq!(p.master().irr(), 0x00);
        assert!(!p.interrupt_output());
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.master().isr(), 0);
        // The next tick is a new edge.
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn icw1_resets_masks_latches_priority_and_modes() {
        let mut p = open_pair();
        out(&mut p, MASTER_DATA, 0x55);
        out(&mut p, MASTER_CMD, OCW2_SET_PRIORITY | 3);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_RR | OCW3_RIS);
        out(&mut p, MASTER_CMD, OCW2_ROTATE_AEOI_SET);
        p.set_irq(4, true);
        p.set_irq(5, true);
        out(&mut p, MASTER_DATA, 0x00);
        p.acknowledge();
        assert_ne!(p.master().isr(), 0);
        assert_ne!(p.master().irr(), 0);
        out(&mut p, MASTER_CMD, 0x11);
        assert_eq!(p.master().imr(), 0);
        assert_eq!(p.master().isr(), 0);
        assert_eq!(p.master().irr(), 0, "edge-sense latches reset");
        assert_eq!(p.master().lowest_priority(), 7);
        assert!(!p.master().special_mask_mode());
        assert_eq!(p.master().icw3(), 7, "slave address set to 7");
        // The read register is IRR again.
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert_eq!(p.read_port(MASTER_CMD), 0x10);
        // Lines still high must fall and rise again: IR5 stays quiet.
        out(&mut p, MASTER_DATA, MASTER_BASE);
        out(&mut p, MASTER_DATA, 0x04);
        out(&mut p, MASTER_DATA, 0x01);
        assert_eq!(p.acknowledge(), MASTER_BASE + 4);
        eoi(&mut p, MASTER_CMD);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn icw1_without_ic4_clears_icw4_functions() {
        let mut c = single_chip(ICW4_UPM | ICW4_AEOI);
        assert_eq!(c.icw4(), ICW4_UPM | ICW4_AEOI);
        c.write(false, ICW1_INIT | ICW1_SNGL);
        c.write(true, 0x48);
        assert!(c.is_ready(), "no ICW3 (single) and no ICW4");
        assert_eq!(c.icw4(), 0);
        raise(&mut c, 1);
        assert_eq!(c.acknowledge(), 0x49);
        assert_eq!(c.isr(), 0x02, "no automatic EOI any more");
    }

    #[test]
    fn single_mode_skips_icw3() {
        let mut c = Pic8259::new(true);
        c.write(false, ICW1_INIT | ICW1_SNGL | ICW1_IC4);
        c.write(true, 0x47);
        assert!(!c.is_ready());
        c.write(true, ICW4_UPM | ICW4_AEOI);
        assert!(c.is_ready());
        assert_eq!(c.vector_base(), 0x40, "only ICW2 bits 7:3 are used");
        assert_eq!(c.icw4(), ICW4_UPM | ICW4_AEOI);
        // The next odd write is OCW1.
        c.write(true, 0x12);
        assert_eq!(c.imr(), 0x12);
    }

    #[test]
    fn no_interrupt_output_during_initialization_sequence() {
        let mut p = open_pair();
        out(&mut p, MASTER_CMD, 0x11);
        out(&mut p, MASTER_DATA, MASTER_BASE);
        pulse(&mut p, 3);
        p.set_irq(3, true);
        assert_eq!(p.master().irr(), 0x08, "requests are recorded");
        assert!(!p.interrupt_output());
        out(&mut p, MASTER_DATA, 0x04);
        assert!(!p.interrupt_output());
        out(&mut p, MASTER_DATA, 0x01);
        assert_eq!(p.pending_vector(), Some(MASTER_BASE + 3));
    }

    #[test]
    fn ocw1_sets_and_reads_back_imr() {
        let mut p = open_pair();
        out(&mut p, MASTER_DATA, 0xA5);
        out(&mut p, SLAVE_DATA, 0x3C);
        assert_eq!(p.read_port(MASTER_DATA), 0xA5);
        assert_eq!(p.read_port(SLAVE_DATA), 0x3C);
        assert_eq!(p.master().imr(), 0xA5);
        assert_eq!(p.slave().imr(), 0x3C);
    }

    #[test]
    fn masked_irq_is_held_until_unmasked() {
        let mut p = open_pair();
        out(&mut p, MASTER_DATA, 0x02);
        p.set_irq(1, true);
        assert!(!p.interrupt_output());
        out(&mut p, MASTER_DATA, 0x00);
        assert_eq!(p.pending_vector(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn pending_vector_is_none_without_interrupt_output() {
        let p = open_pair();
        assert!(!p.interrupt_output());
        assert_eq!(p.pending_vector(), None);
    }

    #[test]
    fn slave_irq_is_delivered_through_cascade_and_needs_both_eois() {
        let mut p = open_pair();
        p.set_irq(12, true);
        assert_eq!(p.slave().irr(), 0x10);
        assert_eq!(p.master().irr(), 0x04, "slave INT drives master IR2");
        assert_eq!(p.pending_vector(), Some(SLAVE_BASE + 4));
        assert_eq!(p.acknowledge(), SLAVE_BASE + 4);
        assert_eq!(p.master().isr(), 0x04);
        assert_eq!(p.slave().isr(), 0x10);
        p.set_irq(12, false);
        // While IR2 is in service on the master, another slave IRQ waits.
        pulse(&mut p, 14);
        p.set_irq(14, true);
        assert!(!p.interrupt_output());
        eoi(&mut p, SLAVE_CMD);
        assert_eq!(p.slave().isr(), 0);
        assert!(!p.interrupt_output(), "master IR2 still in service");
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.master().isr(), 0);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 6);
    }

    #[test]
    fn higher_priority_irq_nests_over_lower_in_service() {
        let mut p = open_pair();
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 4);
        p.set_irq(1, true);
        assert_eq!(p.pending_vector(), Some(MASTER_BASE + 1));
        assert_eq!(p.acknowledge(), MASTER_BASE + 1);
        assert_eq!(p.master().isr(), 0x12);
        // A slave IRQ (master IR2) also outranks IR4.
        p.set_irq(9, true);
        assert!(!p.interrupt_output(), "IR2 is below in-service IR1");
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.master().isr(), 0x10);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 1);
    }

    #[test]
    fn lower_priority_irq_waits_until_eoi() {
        let mut p = open_pair();
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 3);
        p.set_irq(6, true);
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(!p.interrupt_output(), "IR6 below and IR3 itself in service");
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.acknowledge(), MASTER_BASE + 3);
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.acknowledge(), MASTER_BASE + 6);
    }

    #[test]
    fn non_specific_eoi_clears_highest_priority_isr_bit() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 5);
        c.acknowledge();
        raise(&mut c, 2);
        c.acknowledge();
        assert_eq!(c.isr(), 0x24);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0x20);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0);
    }

    #[test]
    fn specific_eoi_clears_named_isr_bit() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 5);
        c.acknowledge();
        raise(&mut c, 2);
        c.acknowledge();
        c.write(false, OCW2_SPECIFIC_EOI | 5);
        assert_eq!(c.isr(), 0x04);
        c.write(false, OCW2_SPECIFIC_EOI | 7);
        assert_eq!(c.isr(), 0x04);
    }

    #[test]
    fn ocw2_no_op_changes_nothing() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 5);
        c.acknowledge();
        c.write(false, OCW2_NOP | 5);
        assert_eq!(c.isr(), 0x20);
        assert_eq!(c.lowest_priority(), 7);
    }

    #[test]
    fn automatic_eoi_leaves_isr_clear() {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_UPM | ICW4_AEOI);
        out(&mut p, MASTER_DATA, 0);
        out(&mut p, SLAVE_DATA, 0);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 5);
        assert_eq!(p.master().isr(), 0);
        // Lower levels are not blocked afterwards.
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 6);
        // Through the cascade, both chips end the interrupt themselves.
        p.set_irq(10, true);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 2);
        assert_eq!((p.master().isr(), p.slave().isr()), (0, 0));
    }

    #[test]
    fn automatic_eoi_slave_delivers_every_pending_request() {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_UPM | ICW4_AEOI);
        out(&mut p, MASTER_DATA, 0);
        out(&mut p, SLAVE_DATA, 0);
        p.set_irq(8, true);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), SLAVE_BASE);
        // The slave's INT stayed asserted; master IR2 still sees a new request.
        assert_eq!(p.acknowledge(), SLAVE_BASE + 3);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn rotate_on_non_specific_eoi_makes_serviced_level_lowest() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 1);
        raise(&mut c, 4);
        assert_eq!(c.acknowledge(), 0x41);
        c.write(false, OCW2_ROTATE_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0);
        assert_eq!(c.lowest_priority(), 1);
        // IR1 is now the lowest: a new IR1 request loses to IR4.
        c.set_input(1, false);
        raise(&mut c, 1);
        assert_eq!(c.acknowledge(), 0x44);
        c.write(false, OCW2_ROTATE_NON_SPECIFIC_EOI);
        assert_eq!(c.lowest_priority(), 4);
        // Nothing in service: no EOI and no rotation.
        assert_eq!(c.acknowledge(), 0x41);
        c.write(false, OCW2_ROTATE_NON_SPECIFIC_EOI);
        assert_eq!(c.lowest_priority(), 1);
        c.write(false, OCW2_ROTATE_NON_SPECIFIC_EOI);
        assert_eq!(c.lowest_priority(), 1);
    }

    #[test]
    fn rotate_on_specific_eoi_makes_named_level_lowest() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 6);
        c.acknowledge();
        c.write(false, OCW2_ROTATE_SPECIFIC_EOI | 6);
        assert_eq!(c.isr(), 0);
        assert_eq!(c.lowest_priority(), 6);
        // IR7 is now the highest priority: it nests over an in-service IR0.
        raise(&mut c, 0);
        assert_eq!(c.acknowledge(), 0x40);
        raise(&mut c, 7);
        assert_eq!(c.acknowledge(), 0x47);
    }

    #[test]
    fn set_priority_command_sets_lowest_priority_level() {
        let mut c = single_chip(ICW4_UPM);
        c.write(false, OCW2_SET_PRIORITY | 2);
        assert_eq!(c.lowest_priority(), 2);
        raise(&mut c, 0);
        raise(&mut c, 5);
        raise(&mut c, 3);
        // Order is 3, 4, 5, 6, 7, 0, 1, 2.
        assert_eq!(c.acknowledge(), 0x43);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.acknowledge(), 0x45);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.acknowledge(), 0x40);
    }

    #[test]
    fn rotate_in_automatic_eoi_mode_rotates_on_each_acknowledge() {
        let mut c = single_chip(ICW4_UPM | ICW4_AEOI);
        c.write(false, OCW2_ROTATE_AEOI_SET);
        raise(&mut c, 0);
        raise(&mut c, 1);
        assert_eq!(c.acknowledge(), 0x40);
        assert_eq!(c.lowest_priority(), 0);
        c.set_input(0, false);
        raise(&mut c, 0);
        // IR0 is now lowest: IR1 goes first.
        assert_eq!(c.acknowledge(), 0x41);
        assert_eq!(c.lowest_priority(), 1);
        assert_eq!(c.acknowledge(), 0x40);
        assert_eq!(c.isr(), 0);
        // Clearing the mode stops rotation.
        c.write(false, OCW2_ROTATE_AEOI_CLEAR);
        c.set_input(5, true);
        assert_eq!(c.acknowledge(), 0x45);
        assert_eq!(c.lowest_priority(), 0);
    }

    #[test]
    fn read_register_command_selects_isr_or_irr() {
        let mut p = open_pair();
        p.set_irq(3, true);
        p.set_irq(5, true);
        p.acknowledge();
        assert_eq!(p.read_port(MASTER_CMD), 0x20, "IRR by default");
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_RR | OCW3_RIS);
        assert_eq!(p.read_port(MASTER_CMD), 0x08);
        assert_eq!(p.read_port(MASTER_CMD), 0x08, "the choice persists");
        // RIS without RR changes nothing.
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_RIS);
        assert_eq!(p.read_port(MASTER_CMD), 0x08);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_RR);
        assert_eq!(p.read_port(MASTER_CMD), 0x20);
        // The odd port still reads IMR.
        assert_eq!(p.read_port(MASTER_DATA), 0);
    }

    #[test]
    fn poll_command_returns_highest_request_and_acknowledges_it() {
        let mut p = open_pair();
        p.set_irq(6, true);
        p.set_irq(4, true);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_P);
        assert_eq!(p.read_port(MASTER_CMD), POLL_INT | 4);
        assert_eq!(p.master().isr(), 0x10);
        assert_eq!(p.master().irr(), 0x40);
        // Only the next read polls.
        assert_eq!(p.read_port(MASTER_CMD), 0x40);
        // Poll reads through the odd port as well, and overrides RR.
        out(
            &mut p,
            MASTER_CMD,
            OCW3_SELECT | OCW3_P | OCW3_RR | OCW3_RIS,
        );
        assert_eq!(p.read_port(MASTER_DATA), 0, "IR6 is below in-service IR4");
        eoi(&mut p, MASTER_CMD);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_P);
        assert_eq!(p.read_port(MASTER_DATA), POLL_INT | 6);
        assert_eq!(p.read_port(MASTER_CMD), 0x40, "RR/RIS took effect");
    }

    #[test]
    fn poll_with_nothing_pending_returns_zero() {
        let mut p = open_pair();
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_P);
        assert_eq!(p.read_port(MASTER_CMD), 0);
        assert_eq!(p.master().isr(), 0);
    }

    #[test]
    fn poll_on_master_reports_cascade_level_and_slave_is_polled_separately() {
        let mut p = open_pair();
        p.set_irq(13, true);
        out(&mut p, MASTER_CMD, OCW3_SELECT | OCW3_P);
        assert_eq!(p.read_port(MASTER_CMD), POLL_INT | 2);
        assert_eq!(p.slave().isr(), 0);
        out(&mut p, SLAVE_CMD, OCW3_SELECT | OCW3_P);
        assert_eq!(p.read_port(SLAVE_CMD), POLL_INT | 5);
        assert_eq!((p.master().isr(), p.slave().isr()), (0x04, 0x20));
    }

    #[test]
    fn special_mask_mode_allows_lower_priority() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 2);
        assert_eq!(c.acknowledge(), 0x42);
        raise(&mut c, 5);
        assert!(!c.interrupt_output(), "fully nested: IR5 waits");
        // The IR2 handler masks itself and enables special mask mode.
        c.write(true, 0x04);
        c.write(false, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        assert!(c.special_mask_mode());
        assert_eq!(c.acknowledge(), 0x45);
        assert_eq!(c.isr(), 0x24);
        // Unmasked IR5 in service still blocks lower IR6 but not higher IR0.
        raise(&mut c, 6);
        assert!(!c.interrupt_output());
        raise(&mut c, 0);
        assert_eq!(c.acknowledge(), 0x40);
    }

    #[test]
    fn special_mask_mode_reset_restores_fully_nested_mode() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 2);
        c.acknowledge();
        c.write(true, 0x04);
        c.write(false, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        // SMM without ESMM is ignored.
        c.write(false, OCW3_SELECT);
        assert!(c.special_mask_mode());
        c.write(false, OCW3_SELECT | OCW3_ESMM);
        assert!(!c.special_mask_mode());
        raise(&mut c, 5);
        assert!(!c.interrupt_output());
    }

    #[test]
    fn non_specific_eoi_in_special_mask_mode_skips_masked_levels() {
        let mut c = single_chip(ICW4_UPM);
        raise(&mut c, 2);
        c.acknowledge();
        c.write(true, 0x04);
        c.write(false, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        raise(&mut c, 5);
        c.acknowledge();
        assert_eq!(c.isr(), 0x24);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0x04, "masked IR2 is not the target");
        c.write(false, OCW3_SELECT | OCW3_ESMM);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.isr(), 0);
    }

    #[test]
    fn edge_triggered_irq_latches_on_rising_edge_only() {
        let mut p = open_pair();
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 4);
        eoi(&mut p, MASTER_CMD);
        // Still high, no new edge: no new request.
        p.set_irq(4, true);
        assert_eq!(p.master().irr(), 0);
        assert!(!p.interrupt_output());
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 4);
    }

    #[test]
    fn edge_request_withdrawn_before_acknowledge_is_lost() {
        let mut p = open_pair();
        pulse(&mut p, 3);
        assert_eq!(p.master().irr(), 0);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn spurious_irq7_when_request_vanishes_before_acknowledge() {
        let mut p = open_pair();
        p.set_irq(3, true);
        assert_eq!(p.pending_vector(), Some(MASTER_BASE + 3));
        p.set_irq(3, false);
        assert_eq!(p.acknowledge(), MASTER_BASE + 7);
        assert_eq!(p.master().isr(), 0, "a spurious IR7 sets no ISR bit");
        // Same for a slave request vanishing before INTA: the master answers.
        p.set_irq(9, true);
        p.set_irq(9, false);
        assert_eq!(p.acknowledge(), MASTER_BASE + 7);
        assert_eq!((p.master().isr(), p.slave().isr()), (0, 0));
    }

    #[test]
    fn spurious_irq15_sets_master_isr2_but_no_slave_isr_bit() {
        let mut p = open_pair();
        p.set_irq(11, true);
        p.inta_first_pulse();
        assert_eq!(p.master().isr(), 0x04);
        p.inta_first_pulse();
        p.set_irq(11, false);
        assert_eq!(p.inta_second_pulse(), SLAVE_BASE + 7);
        assert_eq!(
            p.master().isr(),
            0x04,
            "the IRQ15 handler must EOI the master"
        );
        assert_eq!(p.slave().isr(), 0);
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.master().isr(), 0);
    }

    #[test]
    fn inta_second_pulse_alone_runs_a_whole_cycle() {
        let mut p = open_pair();
        p.set_irq(5, true);
        assert_eq!(p.inta_second_pulse(), MASTER_BASE + 5);
        assert_eq!(p.master().isr(), 0x20);
    }

    #[test]
    fn level_triggered_irq_via_elcr_reasserts_after_eoi_while_line_high() {
        let mut p = open_pair();
        out(&mut p, ELCR2, 0x08); // IRQ11 level
        assert_eq!(p.elcr(), 0x0800);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 3);
        eoi(&mut p, SLAVE_CMD);
        eoi(&mut p, MASTER_CMD);
        // Line still high: the same IRQ again, no edge needed.
        assert_eq!(p.acknowledge(), SLAVE_BASE + 3);
        p.set_irq(11, false);
        eoi(&mut p, SLAVE_CMD);
        eoi(&mut p, MASTER_CMD);
        assert!(!p.interrupt_output());
        // Master lines too.
        out(&mut p, ELCR1, 0x20);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 5);
        eoi(&mut p, MASTER_CMD);
        assert_eq!(p.acknowledge(), MASTER_BASE + 5);
    }

    #[test]
    fn level_triggered_request_follows_the_line() {
        let mut p = open_pair();
        out(&mut p, ELCR1, 0x80);
        p.set_irq(7, true);
        assert_eq!(p.master().irr(), 0x80);
        p.set_irq(7, false);
        assert_eq!(p.master().irr(), 0);
        // A line already high when switched to level mode requests at once.
        out(&mut p, ELCR1, 0);
        p.set_irq(6, true);
        p.acknowledge();
        eoi(&mut p, MASTER_CMD);
        assert!(!p.interrupt_output());
        out(&mut p, ELCR1, 0x40);
        assert_eq!(p.pending_vector(), Some(MASTER_BASE + 6));
    }

    #[test]
    fn ltim_makes_all_chip_inputs_level_triggered() {
        let mut c = Pic8259::new(true);
        c.write(false, ICW1_INIT | ICW1_SNGL | ICW1_LTIM | ICW1_IC4);
        c.write(true, 0x40);
        c.write(true, ICW4_UPM);
        assert_eq!(c.level_triggered(), 0xFF);
        raise(&mut c, 3);
        assert_eq!(c.acknowledge(), 0x43);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        assert_eq!(c.acknowledge(), 0x43);
        c.write(false, OCW2_NON_SPECIFIC_EOI);
        c.set_input(3, false);
        assert!(!c.interrupt_output());
    }

    #[test]
    fn elcr_keeps_irq0_1_2_8_13_edge_triggered() {
        let mut p = open_pair();
        out(&mut p, ELCR1, 0xFF);
        out(&mut p, ELCR2, 0xFF);
        assert_eq!(p.read_port(ELCR1), ELCR1_WRITABLE);
        assert_eq!(p.read_port(ELCR2), ELCR2_WRITABLE);
        assert_eq!(PortDevice::read(&mut p, ELCR1, 2), 0xDEF8);
        PortDevice::write(&mut p, ELCR1, 2, 0x0000);
        assert_eq!(p.elcr(), 0);
    }

    #[test]
    fn special_fully_nested_mode_lets_higher_slave_request_through() {
        let mut p = PicPair::new();
        out(&mut p, MASTER_CMD, 0x11);
        out(&mut p, MASTER_DATA, MASTER_BASE);
        out(&mut p, MASTER_DATA, 0x04);
        out(&mut p, MASTER_DATA, ICW4_UPM | ICW4_SFNM);
        out(&mut p, SLAVE_CMD, 0x11);
        out(&mut p, SLAVE_DATA, SLAVE_BASE);
        out(&mut p, SLAVE_DATA, 0x02);
        out(&mut p, SLAVE_DATA, ICW4_UPM);
        p.set_irq(12, true);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 4);
        p.set_irq(10, true);
        assert_eq!(p.acknowledge(), SLAVE_BASE + 2, "higher slave level nests");
        assert_eq!(p.slave().isr(), 0x14);
        // Lower slave levels still wait for the slave's own EOI.
        p.set_irq(15, true);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn fully_nested_mode_blocks_slave_while_cascade_in_service() {
        let mut p = open_pair();
        p.set_irq(12, true);
        p.acknowledge();
        p.set_irq(10, true);
        assert!(!p.interrupt_output());
        assert_eq!(p.slave().irr(), 0x04);
    }

    #[test]
    fn master_without_cascade_bit_answers_ir2_itself() {
        let mut p = PicPair::new();
        out(&mut p, MASTER_CMD, 0x11);
        out(&mut p, MASTER_DATA, MASTER_BASE);
        out(&mut p, MASTER_DATA, 0x00);
        out(&mut p, MASTER_DATA, ICW4_UPM);
        out(&mut p, SLAVE_CMD, 0x11);
        out(&mut p, SLAVE_DATA, SLAVE_BASE);
        out(&mut p, SLAVE_DATA, 0x02);
        out(&mut p, SLAVE_DATA, ICW4_UPM);
        p.set_irq(9, true);
        assert_eq!(p.acknowledge(), MASTER_BASE + 2);
        assert_eq!(p.slave().isr(), 0, "the slave was never addressed");
    }

    #[test]
    fn slave_with_other_id_leaves_the_bus_floating() {
        let mut p = PicPair::new();
        linux_init(&mut p, ICW4_UPM);
        out(&mut p, SLAVE_CMD, 0x11);
        out(&mut p, SLAVE_DATA, SLAVE_BASE);
        out(&mut p, SLAVE_DATA, 0x05);
        out(&mut p, SLAVE_DATA, ICW4_UPM);
        out(&mut p, MASTER_DATA, 0);
        p.set_irq(8, true);
        assert_eq!(p.pending_vector(), Some(FLOATING_BUS));
        assert_eq!(p.acknowledge(), FLOATING_BUS);
        assert_eq!(p.slave().isr(), 0);
        assert_eq!(p.master().isr(), 0x04);
    }

    #[test]
    fn irq2_and_out_of_range_irqs_are_ignored() {
        let mut p = open_pair();
        p.set_irq(2, true);
        p.set_irq(16, true);
        p.set_irq(0xFF, true);
        assert_eq!((p.master().irr(), p.slave().irr()), (0, 0));
        assert!(!p.interrupt_output());
    }

    #[test]
    fn wide_accesses_split_into_byte_ports() {
        let mut p = open_pair();
        PortDevice::write(&mut p, MASTER_CMD, 2, 0x5A0B);
        assert_eq!(p.master().imr(), 0x5A);
        assert_eq!(PortDevice::read(&mut p, MASTER_CMD, 2), 0x5A00);
        // The bytes after 0xA1 are not ours.
        assert_eq!(PortDevice::read(&mut p, SLAVE_DATA, 4), 0xFFFF_FF00);
        assert_eq!(PortDevice::read(&mut p, 0x1234, 1), 0xFF);
        PortDevice::write(&mut p, 0x1234, 1, 0);
    }

    #[test]
    fn one_pair_registers_under_all_its_ranges() {
        let cell = core::cell::RefCell::new(PicPair::new());
        let [r0, r1, r2] = PicPair::ports();
        assert_eq!(
            (r0.clone(), r1.clone(), r2.clone()),
            (0x20..=0x21, 0xA0..=0xA1, 0x4D0..=0x4D1)
        );
        let (mut h0, mut h1, mut h2) = (&cell, &cell, &cell);
        let mut bus = IoBus::new();
        bus.register(r0, &mut h0).unwrap();
        bus.register(r1, &mut h1).unwrap();
        bus.register(r2, &mut h2).unwrap();
        for (port, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)] {
            bus.write(port, 1, v);
        }
        for (port, v) in [(0xA0, 0x11), (0xA1, 0x38), (0xA1, 0x02), (0xA1, 0x01)] {
            bus.write(port, 1, v);
        }
        bus.write(0x4D1, 1, 0x02);
        assert_eq!(bus.read(0x21, 1), 0);
        cell.borrow_mut().set_irq(9, true);
        assert_eq!(cell.borrow_mut().acknowledge(), 0x39);
        assert_eq!(bus.read(0x4D0, 2), 0x0200);
        // A handle whose cell is busy floats instead of panicking.
        let held = cell.borrow_mut();
        assert_eq!(bus.read(0x20, 1), 0xFF);
        bus.write(0x21, 1, 0xFF);
        drop(held);
        assert_eq!(bus.read(0x21, 1), 0);
        assert_eq!(bus.unknown_reads() + bus.unknown_writes(), 0);
    }

    #[test]
    fn arbitrary_guest_input_never_panics() {
        let mut p = PicPair::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22, 0x4CF];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = ports[(x & 7) as usize];
            let size = [1u8, 2, 4, 3][((x >> 3) & 3) as usize];
            let value = (x >> 8) as u32;
            match (x >> 40) % 6 {
                0 => {
                    PortDevice::read(&mut p, port, size);
                }
                1 | 2 => PortDevice::write(&mut p, port, size, value),
                3 => p.set_irq((x >> 48) as u8 % 20, x & (1 << 60) != 0),
                4 => {
                    let v = p.pending_vector().filter(|_| p.inta.is_none());
                    if x & (1 << 61) != 0 {
                        let got = p.acknowledge();
                        if let Some(v) = v {
                            assert_eq!(got, v, "pending_vector predicts the INTA");
                        }
                    }
                }
                _ => {
                    if x & (1 << 62) != 0 {
                        p.inta_first_pulse();
                    } else {
                        p.inta_second_pulse();
                    }
                }
            }
            assert_eq!(p.elcr() & !0xDEF8, 0);
        }
    }
}
