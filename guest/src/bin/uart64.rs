//! uart64: probes the virtual COM1 the way an OS driver does, then drives it by polling
//! and by interrupts.
//!
//! The probe follows the order of a PC serial driver's autodetection (Linux's 8250
//! driver does the same checks): the scratch register, the interrupt enable register,
//! the modem-control loopback (RTS and OUT2 looped back show up as CTS and DCD in the
//! modem status register), FIFO detection (a 16550A reports IIR bits 7:6 = 11 once the
//! FIFOs are enabled), the divisor latch, and a byte sent and received in loopback.
//! Then a line goes out by polling LSR, and a last one from the THRE interrupt handler,
//! one byte per interrupt, through the remapped 8259A (IRQ4 at vector 0x24).
//!
//! The interrupt-driven part waits by spinning with IF = 1, not with HLT: the THRE
//! interrupt becomes pending while the guest runs with interrupts off (in the handler, or
//! before the STI), so the hypervisor must deliver it through interrupt-window exiting
//! as soon as IF is set again. (`pit64` and `pic64` cover waking up from HLT.)
//!
//! Exit status 0 when everything holds, 1 and a line naming the failed check otherwise.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use guest::uart::{self, COM1_IRQ};
use guest::uart::{IER, IIR_FCR, LCR, LSR, MCR, MSR, RBR_THR, SCR};
use guest::{idt, interrupts, pic, println};

use guest::fail;

guest::entry!(main);

/// FCR: enable the FIFOs, clear both, receive trigger at 14 bytes, and bit 5 (the
/// 64-byte FIFO of a 16750, ignored by a 16550A). The value Linux probes with.
const FCR_ENABLE_CLEAR_ALL: u8 = 0xe7;
/// The 16550A datasheet's IER bits; the upper nibble is always 0.
const IER_ALL: u8 = 0x0f;
/// MSR bits 7:4 in loopback with RTS and OUT2 set: DCD (from OUT2) and CTS (from RTS).
const MSR_LOOPBACK_RTS_OUT2: u8 = 0x90;
/// Divisor for 115200 baud (1.8432 MHz / 16 / 115200).
const DIVISOR_115200: u16 = 1;
/// Bytes sent through the loopback: every bit at 0 and at 1.
const LOOPBACK_BYTES: [u8; 4] = [0x55, 0xaa, 0x00, 0xff];

/// Sent by the THRE interrupt handler, one byte per interrupt.
const MESSAGE: &[u8] = b"uart: this line was sent one byte per THRE interrupt\r\n";
/// How long to spin for the next THRE interrupt before giving up.
const SPIN_LIMIT: u32 = 2_000_000;

/// THRE interrupts taken.
static THRE_INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// Index in MESSAGE of the next byte to send.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Set by the handler once the whole message is out and ETBEI is off again.
static DONE: AtomicBool = AtomicBool::new(false);
/// IRQ4 interrupts whose IIR did not say THRE; the last such IIR value.
static NOT_THRE: AtomicU32 = AtomicU32::new(0);
static NOT_THRE_IIR: AtomicU32 = AtomicU32::new(0);
/// Interrupts from other IRQs (none is unmasked); the last vector.
static OTHER: AtomicU32 = AtomicU32::new(0);
static OTHER_VECTOR: AtomicU32 = AtomicU32::new(0);
/// Spurious IRQ7/IRQ15 (tolerated, as by any PC OS, but reported).
static SPURIOUS: AtomicU32 = AtomicU32::new(0);

fn on_irq(vector: u8) {
    let irq = match pic::irq_of(vector) {
        Some(irq) => irq,
        None => return,
    };
    if pic::spurious(irq) {
        SPURIOUS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if irq != COM1_IRQ {
        OTHER.fetch_add(1, Ordering::SeqCst);
        OTHER_VECTOR.store(u32::from(vector), Ordering::SeqCst);
        pic::eoi(irq);
        return;
    }
    // Reading IIR identifies the interrupt and, for THRE, clears it: the IRQ line drops,
    // so the THR write below raises it again (a new edge for the edge-triggered PIC).
    let iir = uart::read(IIR_FCR);
    if iir & 0x0f == uart::IIR_THRE {
        THRE_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        let next = NEXT.load(Ordering::SeqCst);
        if next < MESSAGE.len() {
            uart::write_reg(RBR_THR, MESSAGE[next]);
            NEXT.store(next + 1, Ordering::SeqCst);
        } else {
            uart::write_reg(IER, 0);
            DONE.store(true, Ordering::SeqCst);
        }
    } else {
        NOT_THRE.fetch_add(1, Ordering::SeqCst);
        NOT_THRE_IIR.store(u32::from(iir), Ordering::SeqCst);
    }
    pic::eoi(irq);
}

/// Polls LSR until all of `bits` are set; false if they never are.
fn wait_lsr(bits: u8) -> bool {
    (0..uart::POLL_LIMIT).any(|_| uart::read(LSR) & bits == bits)
}

fn main() -> u32 {
    idt::install(idt::unexpected);

    // Scratch register: any 16450 or later keeps what is written there.
    for pattern in [0xa5u8, 0x5a] {
        uart::write_reg(SCR, pattern);
        let got = uart::read(SCR);
        if got != pattern {
            fail!("uart: scratch register reads {got:#04x} after writing {pattern:#04x}");
        }
    }
    println!("uart: scratch ok");

    // IER: all four enable bits are writable.
    uart::write_reg(IER, 0);
    let cleared = uart::read(IER) & IER_ALL;
    uart::write_reg(IER, IER_ALL);
    let set = uart::read(IER) & IER_ALL;
    uart::write_reg(IER, 0);
    if cleared != 0 || set != IER_ALL {
        fail!("uart: IER reads {cleared:#04x} after writing 0 and {set:#04x} after writing 0x0f (low nibble)");
    }
    println!("uart: ier ok");

    // Modem-control loopback: RTS -> CTS and OUT2 -> DCD.
    let saved_mcr = uart::read(MCR);
    uart::write_reg(MCR, uart::MCR_LOOP | uart::MCR_OUT2 | uart::MCR_RTS);
    let status = uart::read(MSR) & 0xf0;
    uart::write_reg(MCR, saved_mcr);
    if status != MSR_LOOPBACK_RTS_OUT2 {
        fail!("uart: in loopback with RTS and OUT2, MSR bits 7:4 are {status:#04x}, expected 0x90");
    }
    println!("uart: loopback ok");

    // FIFO detection.
    uart::write_reg(IIR_FCR, FCR_ENABLE_CLEAR_ALL);
    let iir = uart::read(IIR_FCR);
    match iir & uart::IIR_FIFO_MASK {
        uart::IIR_FIFO_MASK => println!("uart: 16550A detected"),
        0 => fail!(
            "uart: IIR is {iir:#04x} with FIFOs enabled: no FIFO (8250/16450), expected a 16550A"
        ),
        _ => fail!("uart: IIR is {iir:#04x} with FIFOs enabled, expected bits 7:6 = 11 (16550A)"),
    }

    // Divisor latch (115200 baud) and line format 8N1, read back.
    uart::write_reg(LCR, uart::LCR_DLAB);
    uart::write_reg(RBR_THR, DIVISOR_115200 as u8);
    uart::write_reg(IER, (DIVISOR_115200 >> 8) as u8);
    let divisor = u16::from(uart::read(RBR_THR)) | u16::from(uart::read(IER)) << 8;
    uart::write_reg(LCR, uart::LCR_8N1);
    let lcr = uart::read(LCR);
    if divisor != DIVISOR_115200 {
        fail!("uart: divisor latch reads {divisor:#06x}, wrote {DIVISOR_115200:#06x}");
    }
    if lcr != uart::LCR_8N1 {
        fail!("uart: LCR reads {lcr:#04x}, wrote 0x03");
    }
    println!("uart: divisor latch ok");

    // Data through the loopback. Nothing sent here may reach the console.
    uart::write_reg(MCR, uart::MCR_LOOP);
    for _ in 0..64 {
        if uart::read(LSR) & uart::LSR_DATA_READY == 0 {
            break;
        }
        uart::read(RBR_THR);
    }
    for byte in LOOPBACK_BYTES {
        if !wait_lsr(uart::LSR_THR_EMPTY) {
            fail!(
                "uart: LSR never showed THR empty in loopback (LSR {:#04x})",
                uart::read(LSR)
            );
        }
        uart::write_reg(RBR_THR, byte);
        if !wait_lsr(uart::LSR_DATA_READY) {
            fail!(
                "uart: byte {byte:#04x} sent in loopback never arrived (LSR {:#04x})",
                uart::read(LSR)
            );
        }
        let got = uart::read(RBR_THR);
        if got != byte {
            fail!("uart: loopback received {got:#04x}, sent {byte:#04x}");
        }
    }
    let lsr = uart::read(LSR);
    uart::write_reg(MCR, uart::MCR_DTR | uart::MCR_RTS);
    if lsr & uart::LSR_DATA_READY != 0 {
        fail!("uart: LSR {lsr:#04x} still shows data ready after every looped-back byte was read");
    }
    println!("uart: loopback data ok");

    // Polled output: every byte waits for LSR.THRE (no fallback as in uart::write_byte).
    for &byte in b"uart: polled output works\r\n" {
        if !wait_lsr(uart::LSR_THR_EMPTY) {
            fail!(
                "uart: LSR never showed THR empty (LSR {:#04x})",
                uart::read(LSR)
            );
        }
        uart::write_reg(RBR_THR, byte);
    }

    // Interrupt-driven output.
    pic::init_default();
    idt::set_irq_handler(on_irq);
    pic::unmask(COM1_IRQ);
    // OUT2 first (the line stays low: no interrupt is enabled), then ETBEI: THR is
    // empty, so the THRE interrupt is pending at once and the line rises.
    uart::write_reg(MCR, uart::MCR_DTR | uart::MCR_RTS | uart::MCR_OUT2);
    uart::write_reg(IER, uart::IER_ETBEI);
    interrupts::enable();
    let mut seen = 0;
    let mut idle = 0;
    while !DONE.load(Ordering::SeqCst) {
        let now = THRE_INTERRUPTS.load(Ordering::SeqCst);
        if now != seen {
            seen = now;
            idle = 0;
        } else if idle == SPIN_LIMIT {
            interrupts::disable();
            uart::write_reg(IER, 0);
            fail!(
                "uart: timed out waiting for THRE interrupt {} (IRQ4, vector 0x24) after {} of {} bytes; IIR {:#04x}, PIC IRR {:#06x} ISR {:#06x} IMR {:#06x}",
                now + 1,
                NEXT.load(Ordering::SeqCst),
                MESSAGE.len(),
                uart::read(IIR_FCR),
                pic::irr(),
                pic::isr(),
                pic::masks()
            );
        }
        idle += 1;
        core::hint::spin_loop();
    }
    // ETBEI is off: no further IRQ4 may come.
    let at_done = THRE_INTERRUPTS.load(Ordering::SeqCst);
    for _ in 0..SPIN_LIMIT / 10 {
        core::hint::spin_loop();
    }
    interrupts::disable();
    pic::mask(COM1_IRQ);
    let taken = THRE_INTERRUPTS.load(Ordering::SeqCst);

    if taken != at_done {
        fail!(
            "uart: {} THRE interrupt(s) after ETBEI was cleared",
            taken - at_done
        );
    }
    let not_thre = NOT_THRE.load(Ordering::SeqCst);
    if not_thre != 0 {
        fail!(
            "uart: {not_thre} IRQ4 interrupt(s) without a THRE interrupt pending (last IIR {:#04x})",
            NOT_THRE_IIR.load(Ordering::SeqCst)
        );
    }
    let other = OTHER.load(Ordering::SeqCst);
    if other != 0 {
        fail!(
            "uart: {other} interrupt(s) from masked IRQs (last vector {:#x})",
            OTHER_VECTOR.load(Ordering::SeqCst)
        );
    }
    if (taken as usize) < MESSAGE.len() {
        fail!(
            "uart: only {taken} THRE interrupts for {} bytes",
            MESSAGE.len()
        );
    }
    let spurious = SPURIOUS.load(Ordering::SeqCst);
    if spurious != 0 {
        println!("uart: note: {spurious} spurious IRQ7/IRQ15 ignored");
    }
    println!("uart: interrupt-driven output done ({taken} interrupts)");
    0
}
