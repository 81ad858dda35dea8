//! pic64: checks the 8259A's mask register, its priority rules and the in-service
//! bookkeeping, with the two interrupt sources the machine has: IRQ0 from the PIT
//! (highest priority) and IRQ4 from the UART's THRE interrupt (lower priority).
//!
//! 1. The IMR reads back what was written, and nothing is in service after ICW1-4.
//! 2. Nesting: the IRQ4 handler (ISR bit 4 set) enables interrupts and halts; the next
//!    timer tick must interrupt it, because IRQ0 outranks IRQ4. Order recorded:
//!    "4 begin, 0, 4 end".
//! 3. Priority: the IRQ0 handler arms the UART's THRE interrupt, so IRQ4 is requested
//!    (IRR bit 4) while IRQ0 is in service, and enables interrupts for 2 ms: IRQ4 must
//!    not be delivered before the IRQ0 handler's EOI, and must be right after it.
//!    Order recorded: "0 begin, 0 eoi, 4".
//! 4. Masking: with IRQ0 masked and interrupts enabled, no tick arrives for 5 ms; once
//!    unmasked, ticks come again.
//!
//! Every wait is bounded: by a number of wake-ups from HLT while ticks keep coming, or by
//! a channel 2 deadline (port 0x61 bit 5) where no interrupt may arrive.
//! Exit status 0 when everything holds, 1 and a line naming the failed check otherwise.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use guest::pit::{self, Deadline};
use guest::uart::{self, COM1_IRQ, IER, IIR_FCR, MCR};
use guest::{idt, interrupts, pic, println};

use guest::fail;

guest::entry!(main);

const TIMER_IRQ: u8 = 0;
/// Channel 0 count for 1000 Hz.
const TICK_COUNT: u16 = 1193;
/// Wake-ups from HLT allowed while waiting for something the 1 kHz tick leads to.
const MAX_WAKEUPS: u32 = 200;
/// How long the IRQ0 handler holds IRQ0 in service with IRQ4 pending, and how long
/// IRQ0 stays masked.
const HOLD_US: u32 = 2_000;
const MASKED_US: u32 = 5_000;
/// Port reads allowed while polling a channel 2 deadline: a safety net for a channel 2
/// that never runs out. Each read is a VM exit under sluice, a few microseconds at
/// least, but without exits (other hypervisors, emulators) a read can take well under
/// a microsecond, so the limit is far above the polls a 5 ms deadline needs.
const MAX_POLLS: u32 = 200_000;

// What the test is doing; set by `main` with interrupts off, read by the handlers.
const IDLE: u8 = 0;
const NEST: u8 = 1;
const NEST_DONE: u8 = 2;
const LOWER: u8 = 3;
const LOWER_DONE: u8 = 4;
const MASKED: u8 = 5;
const UNMASKED: u8 = 6;
static PHASE: AtomicU8 = AtomicU8::new(IDLE);

// Events, in the order the handlers see them.
const IRQ4_BEGIN: u8 = 1;
const IRQ0_NESTED: u8 = 2;
const IRQ4_END: u8 = 3;
const IRQ0_BEGIN: u8 = 4;
const IRQ0_EOI: u8 = 5;
const IRQ4: u8 = 6;

fn event_name(e: u8) -> &'static str {
    match e {
        IRQ4_BEGIN => "4 begin",
        IRQ0_NESTED => "0",
        IRQ4_END => "4 end",
        IRQ0_BEGIN => "0 begin",
        IRQ0_EOI => "0 eoi",
        IRQ4 => "4",
        _ => "?",
    }
}

const LOG_LEN: usize = 8;
static LOG: [AtomicU8; LOG_LEN] = [const { AtomicU8::new(0) }; LOG_LEN];
static LOGGED: AtomicUsize = AtomicUsize::new(0);

fn log(event: u8) {
    let i = LOGGED.fetch_add(1, Ordering::SeqCst);
    if i < LOG_LEN {
        LOG[i].store(event, Ordering::SeqCst);
    }
}

fn clear_log() {
    LOGGED.store(0, Ordering::SeqCst);
}

/// `first`, then one or more `middle`, then `last`: more than one timer tick may nest
/// while the lower-priority handler runs (each costs the hypervisor exits, so how many
/// fit depends on how fast the host emulates the handler).
fn log_is_nested(first: u8, middle: u8, last: u8) -> bool {
    let n = LOGGED.load(Ordering::SeqCst).min(LOG_LEN);
    let at = |i: usize| LOG[i].load(Ordering::SeqCst);
    LOGGED.load(Ordering::SeqCst) <= LOG_LEN
        && n >= 3
        && at(0) == first
        && at(n - 1) == last
        && (1..n - 1).all(|i| at(i) == middle)
}

fn log_is(expected: &[u8]) -> bool {
    let n = LOGGED.load(Ordering::SeqCst);
    n == expected.len() && (0..n).all(|i| LOG[i].load(Ordering::SeqCst) == expected[i])
}

/// The log as "a, b, c", for failure reports.
struct LogText;

impl core::fmt::Display for LogText {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let n = LOGGED.load(Ordering::SeqCst);
        for (i, event) in LOG.iter().take(n).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(event_name(event.load(Ordering::SeqCst)))?;
        }
        if n > LOG_LEN {
            write!(f, ", ... ({n} events)")?;
        }
        if n == 0 {
            f.write_str("nothing")?;
        }
        Ok(())
    }
}

/// IRQ0 interrupts, all phases.
static TICKS: AtomicU32 = AtomicU32::new(0);
/// Phase NEST: set while the IRQ4 handler waits for a tick; ticks that nested in it.
static IN_IRQ4: AtomicBool = AtomicBool::new(false);
static NESTED_TICKS: AtomicU32 = AtomicU32::new(0);
/// ISR as read in the IRQ4 handler of phase NEST, and in the tick nested in it.
static ISR_IN_IRQ4: AtomicU16 = AtomicU16::new(0);
static ISR_IN_NESTED_IRQ0: AtomicU16 = AtomicU16::new(0);
/// Phase NEST: the IRQ4 handler ran out of wake-ups waiting for the tick.
static NEST_TIMEOUT: AtomicBool = AtomicBool::new(false);
/// IIR read by the IRQ4 handler (last one).
static IIR_IN_IRQ4: AtomicU8 = AtomicU8::new(0);
/// Phase LOWER: the IRQ0 handler that holds IRQ0 in service has started.
static LOWER_STARTED: AtomicBool = AtomicBool::new(false);
/// IRR read in that handler after arming the THRE interrupt, and ISR read by the IRQ4
/// handler that follows.
static IRR_IN_IRQ0: AtomicU16 = AtomicU16::new(0);
static ISR_IN_LOWER_IRQ4: AtomicU16 = AtomicU16::new(0);
/// Phase LOWER: the 2 ms deadline ran out (false: the poll limit came first).
static HOLD_EXPIRED: AtomicBool = AtomicBool::new(false);
/// Ticks while IRQ0 was masked, and after it was unmasked again.
static MASKED_TICKS: AtomicU32 = AtomicU32::new(0);
static UNMASKED_TICKS: AtomicU32 = AtomicU32::new(0);
/// IRQ4 outside the phases that arm it, other IRQs, and the last such vector.
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
    match irq {
        TIMER_IRQ => on_timer(),
        COM1_IRQ => on_uart(),
        _ => {
            OTHER.fetch_add(1, Ordering::SeqCst);
            OTHER_VECTOR.store(u32::from(vector), Ordering::SeqCst);
            pic::eoi(irq);
        }
    }
}

fn on_timer() {
    TICKS.fetch_add(1, Ordering::SeqCst);
    match PHASE.load(Ordering::SeqCst) {
        NEST if IN_IRQ4.load(Ordering::SeqCst) => {
            log(IRQ0_NESTED);
            ISR_IN_NESTED_IRQ0.store(pic::isr(), Ordering::SeqCst);
            NESTED_TICKS.fetch_add(1, Ordering::SeqCst);
        }
        LOWER if !LOWER_STARTED.swap(true, Ordering::SeqCst) => hold_irq0_with_irq4_pending(),
        MASKED => {
            MASKED_TICKS.fetch_add(1, Ordering::SeqCst);
        }
        UNMASKED => {
            UNMASKED_TICKS.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
    pic::eoi(TIMER_IRQ);
}

/// Phase LOWER, in the IRQ0 handler: request IRQ4 and give the hypervisor 2 ms with
/// IF = 1 to (wrongly) deliver it. Each deadline poll is a port read, i.e. a VM exit at
/// which a pending interrupt could be injected. The caller sends the EOI.
fn hold_irq0_with_irq4_pending() {
    log(IRQ0_BEGIN);
    // THR is empty, so enabling ETBEI raises the THRE interrupt, and IRQ4, at once.
    uart::write_reg(IER, uart::IER_ETBEI);
    IRR_IN_IRQ0.store(pic::irr(), Ordering::SeqCst);
    let end = poll_with_interrupts(HOLD_US, || false);
    HOLD_EXPIRED.store(end == PollEnd::Expired, Ordering::SeqCst);
    log(IRQ0_EOI);
}

fn on_uart() {
    // Reading IIR clears the THRE interrupt; with ETBEI off it cannot come back.
    let iir = uart::read(IIR_FCR);
    uart::write_reg(IER, 0);
    IIR_IN_IRQ4.store(iir, Ordering::SeqCst);
    match PHASE.load(Ordering::SeqCst) {
        NEST => {
            log(IRQ4_BEGIN);
            ISR_IN_IRQ4.store(pic::isr(), Ordering::SeqCst);
            // Let a tick in: it outranks IRQ4, so the PIC must pass it on.
            IN_IRQ4.store(true, Ordering::SeqCst);
            let mut wakeups = 0;
            while NESTED_TICKS.load(Ordering::SeqCst) == 0 && wakeups < MAX_WAKEUPS {
                wakeups += 1;
                interrupts::enable_and_halt();
                interrupts::disable();
            }
            IN_IRQ4.store(false, Ordering::SeqCst);
            NEST_TIMEOUT.store(NESTED_TICKS.load(Ordering::SeqCst) == 0, Ordering::SeqCst);
            log(IRQ4_END);
            PHASE.store(NEST_DONE, Ordering::SeqCst);
        }
        LOWER => {
            log(IRQ4);
            ISR_IN_LOWER_IRQ4.store(pic::isr(), Ordering::SeqCst);
            PHASE.store(LOWER_DONE, Ordering::SeqCst);
        }
        _ => {
            OTHER.fetch_add(1, Ordering::SeqCst);
            OTHER_VECTOR.store(u32::from(pic::MASTER_BASE + COM1_IRQ), Ordering::SeqCst);
        }
    }
    pic::eoi(COM1_IRQ);
}

/// Sleeps (STI; HLT) until `done`, at most [`MAX_WAKEUPS`] times; returns with
/// interrupts off and whether `done` came true.
fn wait_halted(done: impl Fn() -> bool) -> bool {
    interrupts::disable();
    for _ in 0..MAX_WAKEUPS {
        if done() {
            return true;
        }
        interrupts::enable_and_halt();
        interrupts::disable();
    }
    done()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PollEnd {
    /// `stop` came true.
    Stopped,
    /// The deadline ran out first.
    Expired,
    /// Channel 2 never ran out ([`MAX_POLLS`] reads of port 0x61).
    PollLimit,
}

/// Runs with interrupts enabled, without HLT, until `stop` or `us` microseconds
/// (channel 2) have passed; returns with interrupts off. For waits where HLT could
/// sleep forever: when no interrupt should come, or when the one awaited might not.
/// Every poll reads port 0x61, a VM exit at which the hypervisor can inject.
fn poll_with_interrupts(us: u32, stop: impl Fn() -> bool) -> PollEnd {
    let deadline = Deadline::start_us(us);
    interrupts::enable();
    let mut end = PollEnd::PollLimit;
    for _ in 0..MAX_POLLS {
        if stop() {
            end = PollEnd::Stopped;
            break;
        }
        if deadline.expired() {
            end = PollEnd::Expired;
            break;
        }
    }
    interrupts::disable();
    end
}

fn phase_is(p: u8) -> impl Fn() -> bool {
    move || PHASE.load(Ordering::SeqCst) == p
}

fn main() -> u32 {
    idt::install(idt::unexpected);
    pic::init_default();

    // 1. IMR read-back, and a clean in-service register after initialization.
    let masks = pic::masks();
    if masks != 0xffff {
        fail!("pic: IMR reads {masks:#06x} after masking every IRQ (master in the low byte), expected 0xffff");
    }
    for pattern in [0xa55au16, 0x5aa5, 0xffff] {
        pic::set_masks(pattern);
        let got = pic::masks();
        if got != pattern {
            fail!(
                "pic: IMR reads {got:#06x} after writing {pattern:#06x} (master in the low byte)"
            );
        }
    }
    let isr = pic::isr();
    if isr != 0 {
        fail!("pic: ISR is {isr:#06x} right after initialization, expected 0");
    }
    println!("pic: imr ok");

    // The sources: a 1 kHz tick on IRQ0, and the UART's THRE interrupt on IRQ4 (armed
    // by the phases that want it; OUT2 connects the UART to the PIC).
    idt::set_irq_handler(on_irq);
    uart::write_reg(IER, 0);
    uart::write_reg(MCR, uart::MCR_DTR | uart::MCR_RTS | uart::MCR_OUT2);
    pit::program(0, pit::MODE_RATE, TICK_COUNT);
    pic::unmask(TIMER_IRQ);
    pic::unmask(COM1_IRQ);

    // 2. IRQ0 nests in IRQ4.
    clear_log();
    PHASE.store(NEST, Ordering::SeqCst);
    uart::write_reg(IER, uart::IER_ETBEI);
    if !wait_halted(phase_is(NEST_DONE)) {
        fail!(
            "pic: no IRQ4 after arming the UART's THRE interrupt ({MAX_WAKEUPS} wake-ups from HLT, {} ticks; IRR {:#06x} ISR {:#06x} IMR {:#06x}, IIR {:#04x})",
            TICKS.load(Ordering::SeqCst),
            pic::irr(),
            pic::isr(),
            pic::masks(),
            uart::read(IIR_FCR)
        );
    }
    let iir = IIR_IN_IRQ4.load(Ordering::SeqCst);
    if iir & 0x0f != uart::IIR_THRE {
        fail!("pic: IIR in the IRQ4 handler is {iir:#04x}, expected a THRE interrupt (bits 3:0 = 0x2)");
    }
    let isr = ISR_IN_IRQ4.load(Ordering::SeqCst);
    if isr != 1 << COM1_IRQ {
        fail!("pic: ISR in the IRQ4 handler is {isr:#06x}, expected 0x0010 (IRQ4 only)");
    }
    if NEST_TIMEOUT.load(Ordering::SeqCst) {
        fail!("pic: no IRQ0 reached the IRQ4 handler ({MAX_WAKEUPS} wake-ups from HLT with IF = 1); IRQ0 outranks IRQ4 and must nest");
    }
    if !log_is_nested(IRQ4_BEGIN, IRQ0_NESTED, IRQ4_END) {
        fail!(
            "pic: expected the order 4 begin, 0 (one or more), 4 end; got {}",
            LogText
        );
    }
    let isr = ISR_IN_NESTED_IRQ0.load(Ordering::SeqCst);
    if isr != (1 << TIMER_IRQ | 1 << COM1_IRQ) {
        fail!("pic: ISR in the IRQ0 nested in IRQ4 is {isr:#06x}, expected 0x0011 (IRQ0 and IRQ4)");
    }
    println!("pic: nested priority ok (4 begin, 0, 4 end)");

    // 3. IRQ4 requested while IRQ0 is in service waits for IRQ0's EOI.
    clear_log();
    PHASE.store(LOWER, Ordering::SeqCst);
    if !wait_halted(phase_is(LOWER_DONE)) {
        fail!(
            "pic: IRQ4 never came after the IRQ0 handler's EOI ({MAX_WAKEUPS} wake-ups from HLT; events: {}; IRR {:#06x} ISR {:#06x})",
            LogText,
            pic::irr(),
            pic::isr()
        );
    }
    if !HOLD_EXPIRED.load(Ordering::SeqCst) {
        fail!("pic: the {HOLD_US} us channel 2 deadline (port 0x61 bit 5) never ran out in the IRQ0 handler ({MAX_POLLS} polls)");
    }
    let irr = IRR_IN_IRQ0.load(Ordering::SeqCst);
    if irr & (1 << COM1_IRQ) == 0 {
        fail!("pic: IRR in the IRQ0 handler is {irr:#06x} after arming the THRE interrupt; bit 4 (IRQ4 requested) should be set");
    }
    if !log_is(&[IRQ0_BEGIN, IRQ0_EOI, IRQ4]) {
        fail!(
            "pic: expected the order 0 begin, 0 eoi, 4 (IRQ4 held back while IRQ0 is in service); got {}",
            LogText
        );
    }
    let isr = ISR_IN_LOWER_IRQ4.load(Ordering::SeqCst);
    if isr != 1 << COM1_IRQ {
        fail!("pic: ISR in the IRQ4 handler after IRQ0's EOI is {isr:#06x}, expected 0x0010 (IRQ4 only)");
    }
    println!("pic: lower priority waits for EOI");

    // 4. A masked IRQ0 stays away; unmasked, it comes back.
    pic::mask(COM1_IRQ);
    PHASE.store(MASKED, Ordering::SeqCst);
    pic::mask(TIMER_IRQ);
    let end = poll_with_interrupts(MASKED_US, || MASKED_TICKS.load(Ordering::SeqCst) != 0);
    if end == PollEnd::PollLimit {
        fail!("pic: the {MASKED_US} us channel 2 deadline (port 0x61 bit 5) never ran out ({MAX_POLLS} polls)");
    }
    if end == PollEnd::Stopped {
        fail!(
            "pic: IRQ0 delivered while masked (IMR {:#06x})",
            pic::masks()
        );
    }
    // Polling rather than HLT: if the tick never comes back, HLT would never return.
    PHASE.store(UNMASKED, Ordering::SeqCst);
    pic::unmask(TIMER_IRQ);
    match poll_with_interrupts(MASKED_US, || UNMASKED_TICKS.load(Ordering::SeqCst) != 0) {
        PollEnd::Stopped => {}
        _ => fail!("pic: no IRQ0 within {MASKED_US} us of unmasking it again"),
    }
    println!("pic: mask ok");

    pic::set_masks(0xffff);
    let isr = pic::isr();
    if isr != 0 {
        fail!("pic: ISR is {isr:#06x} after every handler sent its EOI, expected 0");
    }
    let other = OTHER.load(Ordering::SeqCst);
    if other != 0 {
        fail!(
            "pic: {other} unexpected interrupt(s) (last vector {:#x})",
            OTHER_VECTOR.load(Ordering::SeqCst)
        );
    }
    let spurious = SPURIOUS.load(Ordering::SeqCst);
    if spurious != 0 {
        println!("pic: note: {spurious} spurious IRQ7/IRQ15 ignored");
    }
    0
}
