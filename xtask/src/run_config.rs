//! The run configuration (`hypervisor::config::Config`) a prepared guest boots with on
//! an emulator: the platform the kernel ends the run on, the guest's entry, RAM and
//! argument, the coalescing and timer options.

use hypervisor::config::{Config, EntryMode, Platform};
use hypervisor::devices::board::LostTicks;

use crate::cli::CoalesceArgs;
use crate::emulator::Emulator;
use crate::guest_input::PreparedGuest;

pub fn platform_of(emulator: &Emulator) -> Platform {
    match emulator {
        Emulator::Bochs => Platform::Bochs,
        Emulator::Qemu { .. } => Platform::Qemu,
    }
}

/// Timer ticks the guest could not take: owed to a Linux kernel, whose clock counts
/// them (jiffies) and whose clocksource watchdog checks the TSC against that count;
/// dropped as on hardware for every other guest, so guests that test the chips see
/// hardware behaviour.
pub fn default_lost_ticks(entry: EntryMode) -> LostTicks {
    match entry {
        EntryMode::Linux => LostTicks::Delay,
        _ => LostTicks::Discard,
    }
}

/// The run configuration for a prepared guest on an emulator.
pub fn run_config<'a>(
    guest: &'a PreparedGuest,
    emulator: &Emulator,
    coalesce: &'a CoalesceArgs,
) -> Config<'a> {
    let d = Config::default();
    Config {
        platform: platform_of(emulator),
        guest_name: &guest.name,
        guest_entry: guest.entry,
        guest_load: None,
        guest_arg: guest.arg,
        ram_mib: guest.ram_mib,
        coalesce: coalesce.coalesce.unwrap_or(d.coalesce),
        coalesce_extent: coalesce.extent.as_deref().unwrap_or(d.coalesce_extent),
        coalesce_max_insns: coalesce.max_insns.unwrap_or(d.coalesce_max_insns),
        coalesce_max_string: coalesce.max_string.unwrap_or(d.coalesce_max_string),
        coalesce_max_quiet: coalesce.max_quiet.unwrap_or(d.coalesce_max_quiet),
        lost_ticks: coalesce
            .lost_ticks
            .unwrap_or(default_lost_ticks(guest.entry)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linux_is_owed_the_ticks_it_missed_by_default() {
        assert_eq!(default_lost_ticks(EntryMode::Linux), LostTicks::Delay);
        for entry in [
            EntryMode::Elf64,
            EntryMode::Firmware,
            EntryMode::RealAddr(0x7c00),
        ] {
            assert_eq!(default_lost_ticks(entry), LostTicks::Discard, "{entry:?}");
        }
    }
}
