//! Guest time from the TSC. The virtual 8254 counts a 1.193182 MHz input clock (PC/AT);
//! sluice derives that clock from the TSC, whose frequency the kernel measures at boot,
//! so guest-visible time advances at the real rate and costs nothing while nobody looks
//! (the device models are time-based, not stepped).

pub use crate::devices::pit8254::PIT_HZ;

/// Converts between TSC values and PIT input-clock ticks since `tsc0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timebase {
    tsc0: u64,
    tsc_hz: u64,
}

impl Timebase {
    /// `tsc_hz` of 0 is treated as 1 so no conversion can divide by zero.
    pub fn new(tsc0: u64, tsc_hz: u64) -> Self {
        Timebase {
            tsc0,
            tsc_hz: tsc_hz.max(1),
        }
    }

    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// PIT ticks elapsed at TSC value `tsc` (0 before `tsc0`).
    pub fn pit_ticks(&self, tsc: u64) -> u64 {
        let elapsed = u128::from(tsc.saturating_sub(self.tsc0));
        let ticks = elapsed * u128::from(PIT_HZ) / u128::from(self.tsc_hz);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The first TSC value at which `pit_ticks` reaches `ticks` (rounded up, so a timer
    /// armed for it never fires early).
    pub fn tsc_at(&self, ticks: u64) -> u64 {
        let t = (u128::from(ticks) * u128::from(self.tsc_hz)).div_ceil(u128::from(PIT_HZ));
        u64::try_from(t).map_or(u64::MAX, |t| t.saturating_add(self.tsc0))
    }

    /// VMX-preemption timer value for a deadline: the timer counts down by one each
    /// time bit `rate` of the TSC changes (SDM Vol. 3C 26.5.1 "VMX-Preemption Timer";
    /// `rate` is IA32_VMX_MISC[4:0], SDM Vol. 3D A.6 "Miscellaneous Data"), so the
    /// value is the TSC distance shifted right by `rate`, rounded up, and clamped to
    /// the field's 32 bits. A deadline in the past gives 0 (exit before the first guest
    /// instruction).
    pub fn preemption_timer_value(&self, now_tsc: u64, deadline_tsc: u64, rate: u8) -> u32 {
        let distance = deadline_tsc.saturating_sub(now_tsc);
        let shift = u32::from(rate.min(63));
        let value = distance.div_ceil(1u64 << shift);
        u32::try_from(value).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_of_tsc_is_one_second_of_pit_ticks() {
        let tb = Timebase::new(1000, 2_000_000_000);
        assert_eq!(tb.pit_ticks(1000), 0);
        assert_eq!(tb.pit_ticks(1000 + 2_000_000_000), PIT_HZ);
        assert_eq!(tb.pit_ticks(500), 0);
    }

    #[test]
    fn tsc_at_rounds_up_and_round_trips() {
        let tb = Timebase::new(7, 3_000_000_007);
        for ticks in [0, 1, 2, 1193, 59_659, PIT_HZ * 3600] {
            let tsc = tb.tsc_at(ticks);
            assert!(tb.pit_ticks(tsc) >= ticks, "{ticks}");
            assert!(tb.pit_ticks(tsc - 1) < ticks || ticks == 0, "{ticks}");
        }
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let tb = Timebase::new(0, 1);
        assert_eq!(tb.pit_ticks(u64::MAX), u64::MAX);
        assert_eq!(Timebase::new(0, u64::MAX).tsc_at(u64::MAX), u64::MAX);
        assert_eq!(Timebase::new(0, 0).tsc_hz(), 1);
    }

    #[test]
    fn preemption_timer_value_follows_the_rate_and_clamps() {
        let tb = Timebase::new(0, 1_000_000_000);
        assert_eq!(tb.preemption_timer_value(100, 100 + 64, 5), 2);
        assert_eq!(tb.preemption_timer_value(100, 100 + 65, 5), 3);
        assert_eq!(tb.preemption_timer_value(100, 50, 0), 0);
        assert_eq!(tb.preemption_timer_value(0, u64::MAX, 0), u32::MAX);
        assert_eq!(tb.preemption_timer_value(0, 1 << 40, 200), 1);
    }
}
