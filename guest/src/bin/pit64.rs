//! pit64: checks the rate of the 8254's channel 0 (IRQ0) against channel 2, and the
//! counter latch and read-back commands.
//!
//! Channel 0 runs in mode 2 at 1000 Hz (count 1193) and its IRQ0 goes through the
//! remapped 8259A to vector 0x20; the handler counts ticks. The reference is channel 2
//! as a 50 ms one-shot (mode 0, count 59659): its OUT, readable in port 0x61 bit 5,
//! goes high when the count runs out, with no interrupt involved. The guest waits with
//! HLT (interrupts on) and looks at OUT2 after each wake-up, so the hypervisor must wake
//! a halted guest for each timer interrupt. About 50 ticks fit in 50 ms; 45 to 55 are
//! accepted, since the emulated clock (it follows executed instructions in Bochs) and
//! the delivery latency blur the edges.
//!
//! Exit status 0 when everything holds, 1 and a line naming the failed check otherwise.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use guest::pit::{self, Status};
use guest::{idt, interrupts, pic, println};

use guest::fail;

guest::entry!(main);

/// Channel 0 count for 1000 Hz: 1193182 / 1193 = 1000.15 Hz.
const TICK_COUNT: u16 = 1193;
/// Channel 2 count for 50 ms: 1193182 * 0.05 = 59659.
const REFERENCE_COUNT: u16 = 59659;
const REFERENCE_MS: u32 = 50;
/// Ticks expected in the reference interval, and the accepted range.
const EXPECTED_TICKS: u32 = 50;
const MIN_TICKS: u32 = 45;
const MAX_TICKS: u32 = 55;
/// Wake-ups from HLT allowed before giving up on OUT2 (ten times the ticks expected).
const MAX_WAKEUPS: u32 = 500;

const TIMER_IRQ: u8 = 0;

/// IRQ0 interrupts taken.
static TICKS: AtomicU32 = AtomicU32::new(0);
/// Interrupts from other IRQs (all masked); the last vector.
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
    if irq == TIMER_IRQ {
        TICKS.fetch_add(1, Ordering::SeqCst);
    } else {
        OTHER.fetch_add(1, Ordering::SeqCst);
        OTHER_VECTOR.store(u32::from(vector), Ordering::SeqCst);
    }
    pic::eoi(irq);
}

fn main() -> u32 {
    idt::install(idt::unexpected);
    pic::init_default();
    idt::set_irq_handler(on_irq);

    // Channel 0: mode 2, LSB then MSB (control word 0x34).
    pit::program(0, pit::MODE_RATE, TICK_COUNT);
    pic::unmask(TIMER_IRQ);

    // Wait for a first tick before starting the reference: a tick latched while IRQ0
    // was still masked is delivered at the first STI and would count one too many, and
    // starting right after a tick puts the reference in phase with the timer.
    let mut wakeups = 0;
    interrupts::disable();
    while TICKS.load(Ordering::SeqCst) == 0 {
        if wakeups == MAX_WAKEUPS {
            interrupts::disable();
            fail!("pit: timed out waiting for the first IRQ0 ({MAX_WAKEUPS} wake-ups from HLT without one)");
        }
        wakeups += 1;
        interrupts::enable_and_halt();
        interrupts::disable();
    }

    // The reference: channel 2, mode 0 (control word 0xB0), gate on, speaker off.
    pit::start_channel2(REFERENCE_COUNT);
    if pit::channel2_out() {
        fail!("pit: channel 2 OUT (port 0x61 bit 5) is high right after programming mode 0; it must stay low until the count runs out");
    }
    TICKS.store(0, Ordering::SeqCst);
    interrupts::enable();
    let mut wakeups = 0;
    loop {
        interrupts::halt();
        if pit::channel2_out() {
            break;
        }
        wakeups += 1;
        if wakeups == MAX_WAKEUPS {
            interrupts::disable();
            fail!(
                "pit: channel 2 OUT (port 0x61 bit 5) still low after {MAX_WAKEUPS} wake-ups from HLT ({} IRQ0 ticks); the {REFERENCE_MS} ms reference never ran out",
                TICKS.load(Ordering::SeqCst)
            );
        }
    }
    interrupts::disable();
    let ticks = TICKS.load(Ordering::SeqCst);
    println!(
        "pit: {ticks} ticks in {REFERENCE_MS} ms (expected {EXPECTED_TICKS}, accepted {MIN_TICKS}..={MAX_TICKS})"
    );
    if !(MIN_TICKS..=MAX_TICKS).contains(&ticks) {
        fail!("pit: the IRQ0 rate is off: {ticks} ticks instead of {MIN_TICKS}..={MAX_TICKS}");
    }
    let other = OTHER.load(Ordering::SeqCst);
    if other != 0 {
        fail!(
            "pit: {other} interrupt(s) from masked IRQs (last vector {:#x})",
            OTHER_VECTOR.load(Ordering::SeqCst)
        );
    }

    // Counter latch: channel 0 counts TICK_COUNT..=1 in mode 2.
    let latched = pit::latch_count(0);
    if !(1..=TICK_COUNT).contains(&latched) {
        fail!("pit: channel 0 latched count is {latched}, expected 1..={TICK_COUNT} in mode 2");
    }
    // Read-back of the status alone, then of status and count together.
    let expect_status = |byte: u8| {
        let s = Status::decode(byte);
        s.mode == pit::MODE_RATE && s.rw == 3 && !s.bcd
    };
    let status = pit::read_back_status(0);
    if !expect_status(status) {
        fail!(
            "pit: channel 0 read-back status {status:#04x} ({:?}), expected mode 2, RW 3 (LSB then MSB), binary",
            Status::decode(status)
        );
    }
    let (status2, count) = pit::read_back_status_and_count(0);
    if !expect_status(status2) {
        fail!(
            "pit: channel 0 read-back of status and count: status {status2:#04x} ({:?}), expected mode 2, RW 3, binary",
            Status::decode(status2)
        );
    }
    if !(1..=TICK_COUNT).contains(&count) {
        fail!("pit: channel 0 read-back count is {count}, expected 1..={TICK_COUNT}");
    }
    println!("pit: readback ok (latched {latched}, status {status:#04x}, read-back count {count})");

    pic::mask(TIMER_IRQ);
    let spurious = SPURIOUS.load(Ordering::SeqCst);
    if spurious != 0 {
        println!("pit: note: {spurious} spurious IRQ7/IRQ15 ignored");
    }
    0
}
