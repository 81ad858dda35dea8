//! TSC frequency, measured at boot against the platform's 8254 channel 2 (the PC/AT
//! speaker timer: gate = port 0x61 bit 0, OUT2 readable at port 0x61 bit 5). Guest
//! time (the virtual PIT) is derived from the TSC, so this one measurement makes
//! guest-visible time advance like a 1.193182 MHz clock on any machine, and in Bochs,
//! where both the TSC and the PIT follow emulated instructions, consistently with them.

use x86_64::instructions::port::Port;

/// Input clock of the 8254 (PC/AT): 1.193182 MHz.
const PIT_HZ: u64 = 1_193_182;
/// 10 ms of PIT clocks: long enough for a precise ratio, short enough for boot.
const CALIBRATION_TICKS: u16 = 11_932;
/// Bound on the polling loop, so a machine without a working PIT cannot hang boot.
const MAX_POLLS: u64 = 50_000_000;

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available and unprivileged for the kernel (CR4.TSD clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency in Hz, or `None` if channel 2 never reached terminal
/// count (no PIT).
pub fn calibrate() -> Option<u64> {
    let mut ctrl_b = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut ch2 = Port::<u8>::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PC timer and system control port B; channel
    // 2 only drives the speaker, which stays disabled (bit 1 clear).
    unsafe {
        let saved = ctrl_b.read();
        ctrl_b.write((saved & !0x02) & !0x01);
        // Channel 2, LSB then MSB, mode 0 (interrupt on terminal count), binary.
        command.write(0xB0);
        ch2.write((CALIBRATION_TICKS & 0xff) as u8);
        ch2.write((CALIBRATION_TICKS >> 8) as u8);
        // Gate rising edge starts the count (mode 0 counts while the gate is high).
        ctrl_b.write((saved & !0x02) | 0x01);
        let start = rdtsc();
        let mut polls = 0;
        while ctrl_b.read() & 0x20 == 0 {
            polls += 1;
            if polls > MAX_POLLS {
                ctrl_b.write(saved);
                return None;
            }
        }
        let elapsed = rdtsc().wrapping_sub(start);
        ctrl_b.write(saved);
        let hz = u128::from(elapsed) * u128::from(PIT_HZ) / u128::from(CALIBRATION_TICKS);
        u64::try_from(hz).ok().filter(|&hz| hz > 0)
    }
}
