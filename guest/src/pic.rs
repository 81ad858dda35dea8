//! The cascaded 8259A pair of the PC: master at 0x20/0x21, slave at 0xA0/0xA1 on the
//! master's IRQ2.
//!
//! The guests reprogram it the way every PC operating system does (ICW1-ICW4), moving
//! the IRQs off the exception vectors: IRQ n arrives at vector `MASTER_BASE + n` for
//! n < 8 and `SLAVE_BASE + n - 8` above. Masks, IRR and ISR are 16-bit values here, bit
//! n for IRQ n (the master in the low byte).

use crate::port::{inb, outb};

pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xa0;
pub const SLAVE_DATA: u16 = 0xa1;

/// Vector of IRQ0 after [`init`] with the default bases.
pub const MASTER_BASE: u8 = 0x20;
/// Vector of IRQ8 after [`init`] with the default bases.
pub const SLAVE_BASE: u8 = 0x28;
/// The master input the slave is wired to.
pub const CASCADE_IRQ: u8 = 2;

/// ICW1: initialization, edge triggered, cascade mode, ICW4 follows.
const ICW1_INIT_ICW4: u8 = 0x11;
/// ICW3 of the master: a slave on input 2 (bit mask).
const ICW3_MASTER: u8 = 1 << CASCADE_IRQ;
/// ICW3 of the slave: its cascade identity, 2 (a number).
const ICW3_SLAVE: u8 = CASCADE_IRQ;
/// ICW4: 8086/8088 mode, normal (not automatic) EOI, not buffered, not fully nested.
const ICW4_8086: u8 = 0x01;
/// OCW2: non-specific end of interrupt.
const OCW2_EOI: u8 = 0x20;
/// OCW3: the next read of the command port returns IRR.
const OCW3_READ_IRR: u8 = 0x0a;
/// OCW3: the next read of the command port returns ISR.
const OCW3_READ_ISR: u8 = 0x0b;

/// Initializes both controllers with IRQ0-7 at `master_base` and IRQ8-15 at
/// `slave_base` (both multiples of 8), then masks every IRQ line.
///
/// ICW1 clears the mask register, so without the final mask write every line would be
/// live as soon as interrupts are enabled; the guests unmask only what they test.
pub fn init(master_base: u8, slave_base: u8) {
    outb(MASTER_CMD, ICW1_INIT_ICW4);
    outb(SLAVE_CMD, ICW1_INIT_ICW4);
    outb(MASTER_DATA, master_base);
    outb(SLAVE_DATA, slave_base);
    outb(MASTER_DATA, ICW3_MASTER);
    outb(SLAVE_DATA, ICW3_SLAVE);
    outb(MASTER_DATA, ICW4_8086);
    outb(SLAVE_DATA, ICW4_8086);
    set_masks(0xffff);
}

/// [`init`] with the conventional bases 0x20 and 0x28.
pub fn init_default() {
    init(MASTER_BASE, SLAVE_BASE)
}

/// Writes both interrupt mask registers (OCW1); a set bit masks the IRQ.
pub fn set_masks(masks: u16) {
    outb(MASTER_DATA, masks as u8);
    outb(SLAVE_DATA, (masks >> 8) as u8);
}

/// Reads both interrupt mask registers back.
pub fn masks() -> u16 {
    u16::from(inb(MASTER_DATA)) | u16::from(inb(SLAVE_DATA)) << 8
}

/// Masks IRQ `irq`.
pub fn mask(irq: u8) {
    set_masks(masks() | 1 << irq);
}

/// Unmasks IRQ `irq`, and the cascade input too for a slave IRQ (it cannot reach the
/// CPU otherwise).
pub fn unmask(irq: u8) {
    let mut m = masks() & !(1 << irq);
    if irq >= 8 {
        m &= !(1 << CASCADE_IRQ);
    }
    set_masks(m);
}

/// Ends the interrupt being serviced for `irq`: a non-specific EOI to the slave (for
/// IRQ 8-15) and to the master, which clears the highest-priority in-service bit, i.e.
/// the one being handled in the fully nested mode the guests use.
pub fn eoi(irq: u8) {
    if irq >= 8 {
        outb(SLAVE_CMD, OCW2_EOI);
    }
    outb(MASTER_CMD, OCW2_EOI);
}

/// The interrupt request registers: lines asking for service, masked or not.
pub fn irr() -> u16 {
    read_status(OCW3_READ_IRR)
}

/// The in-service registers: interrupts delivered and not yet ended with an EOI.
pub fn isr() -> u16 {
    read_status(OCW3_READ_ISR)
}

fn read_status(ocw3: u8) -> u16 {
    outb(MASTER_CMD, ocw3);
    outb(SLAVE_CMD, ocw3);
    u16::from(inb(MASTER_CMD)) | u16::from(inb(SLAVE_CMD)) << 8
}

/// The IRQ a PIC vector stands for, if it is one (with the default bases).
pub fn irq_of(vector: u8) -> Option<u8> {
    match vector {
        v if (MASTER_BASE..MASTER_BASE + 8).contains(&v) => Some(v - MASTER_BASE),
        v if (SLAVE_BASE..SLAVE_BASE + 8).contains(&v) => Some(v - SLAVE_BASE + 8),
        _ => None,
    }
}

/// Whether an interrupt on IRQ7 or IRQ15 is spurious: the 8259A answers the
/// acknowledge cycle with the vector of its lowest-priority input when the request
/// went away in between, without setting the in-service bit. A spurious IRQ must not
/// be acknowledged on its own controller; a spurious IRQ15 still needs an EOI to the
/// master, whose IRQ2 did go in service. This handles that EOI, so a handler that gets
/// `true` just returns.
pub fn spurious(irq: u8) -> bool {
    match irq {
        7 if isr() & (1 << 7) == 0 => true,
        15 if isr() & (1 << 15) == 0 => {
            outb(MASTER_CMD, OCW2_EOI);
            true
        }
        _ => false,
    }
}
