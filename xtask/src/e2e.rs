//! `cargo xtask test`: host unit tests, then end-to-end boots of the real image in Bochs
//! (VMX emulated, several CPU models; BIOS, and UEFI through OVMF) and QEMU (BIOS and
//! UEFI, no VMX), each judged by its exit status and its console output.

use std::process::Command;
use std::time::{Duration, Instant};

use hypervisor::config::Config;

use crate::cli::TestArgs;
use crate::emulator::{self, Emulator, Ending, Machine};
use crate::image::Firmware;
use crate::stats_line::{self, Lines};
use crate::{guest_input, guests, host, image};

/// One end-to-end case: boot, then require a status and console lines.
/// A check of a whole console; the error says what is wrong.
pub type ConsoleCheck = fn(&str) -> Result<(), String>;

pub struct Case {
    pub name: &'static str,
    pub emulator: Emulator,
    pub firmware: Firmware,
    pub cpu: Option<&'static str>,
    pub expect_status: u32,
    /// Each must appear in the console, in this order.
    pub expect_lines: &'static [&'static str],
    /// None of these may appear.
    pub forbid: &'static [&'static str],
    /// The guest to run; `None` boots without one (the capability probe only).
    pub guest: Option<GuestSpec>,
    /// What the `sluice-stats` line must say, for runs with a guest.
    pub stats: Option<StatsExpect>,
    /// Coalescing for this case regardless of the command line (`None`: as given).
    pub coalesce: Option<bool>,
    /// A check of the whole console beyond lines in order.
    pub check: Option<ConsoleCheck>,
    /// The boot counts as hung when its console is silent this long (its overall cap
    /// is `emulator::MAX_TIME_DEFAULT`).
    pub timeout_s: u64,
}

/// A built-in guest, booted by name, or — with `entry` — as a user's file would be
/// (the built binary's path plus an explicit `--entry`).
pub struct GuestSpec {
    pub name: &'static str,
    pub entry: Option<&'static str>,
}

pub struct StatsExpect {
    pub end: &'static str,
    pub exit_code: u32,
    /// `exits.<reason>` must be at least this.
    pub exits_at_least: &'static [(&'static str, u64)],
    /// `interrupts.injected.<irqN>` must be at least this.
    pub irqs_at_least: &'static [(&'static str, u64)],
    /// `io.instructions` (IO instructions the guest executed, however many exits
    /// coalescing made of them) must be at least this.
    pub io_instructions_at_least: u64,
}

const fn guest(name: &'static str) -> Option<GuestSpec> {
    Some(GuestSpec { name, entry: None })
}

const BOCHS: Emulator = Emulator::Bochs;
const QEMU: Emulator = Emulator::Qemu { kvm: false };

/// Lines every boot prints before anything CPU-specific.
const BANNER: &str = "sluice 0.1.0 -- a type-1 hypervisor for Intel VMX";
const NO_VMX: &str = "sluice: error: no VMX on this CPU (CPUID.1:ECX.VMX[bit 5] is clear)";
/// The advice after the error (QEMU's TCG CPU models say "AuthenticAMD" too).
const AMD_HINT: &str = "sluice: what to do: sluice needs Intel VMX (VT-x); this is an AMD CPU";
const OLD_CPU_HINT: &str = "sluice: what to do: this CPU lacks EPT / unrestricted guest: \
                            sluice needs a Westmere-or-newer Intel CPU";

pub const CASES: &[Case] = &[
    Case {
        name: "bochs-skylake-vmx-report",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: Some("corei7_skylake_x"),
        expect_status: 0,
        expect_lines: &[
            BANNER,
            "sluice: platform=bochs",
            "vmx: present",
            "vmx: feature-control locked=yes vmx-outside-smx=yes",
            "vmx: vmcs revision=0x2b",
            "vmx: true-controls=yes",
            "vmx: ept=yes walk4=yes wb=yes 2m=yes 1g=yes ad=yes",
            "vmx: vpid=yes",
            "vmx: unrestricted-guest=yes",
            "vmx: preemption-timer=yes",
            "vmx: ready (VMXON and VMCS load succeeded)",
            "sluice: exit status 0",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-penryn-no-ept",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: Some("core2_penryn_t9600"),
        expect_status: 1,
        expect_lines: &[
            BANNER,
            "vmx: present",
            "vmx: ept=no",
            "vmx: unrestricted-guest=no",
            "sluice: error: no EPT",
            OLD_CPU_HINT,
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        // Nehalem: EPT and VPID, but unrestricted guest came with Westmere.
        name: "bochs-lynnfield-no-unrestricted-guest",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: Some("corei5_lynnfield_750"),
        expect_status: 1,
        expect_lines: &[
            BANNER,
            "vmx: ept=yes",
            "vmx: unrestricted-guest=no",
            "sluice: error: no unrestricted guest",
            OLD_CPU_HINT,
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-ryzen-no-vmx",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: Some("ryzen"),
        expect_status: 1,
        expect_lines: &[BANNER, NO_VMX, AMD_HINT, "sluice: exit status 1"],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    // The UEFI image in Bochs through OVMF: the path every Intel PC of the last decade
    // takes. OVMF leaves IA32_FEATURE_CONTROL unlocked (Bochs's BIOS locks it), so sluice
    // locks it itself; the GOP framebuffer comes from OVMF's driver for the PCI Cirrus.
    Case {
        name: "bochs-uefi-skylake-vmx-report",
        emulator: BOCHS,
        firmware: Firmware::Uefi,
        cpu: Some("corei7_skylake_x"),
        expect_status: 0,
        expect_lines: &[
            BANNER,
            "sluice: screen 800x600 (Bgr, 4 bytes per pixel)",
            "sluice: platform=bochs",
            "vmx: IA32_FEATURE_CONTROL was unlocked; locked it with VMX enabled",
            "vmx: present",
            "vmx: feature-control locked=yes vmx-outside-smx=yes",
            "vmx: vmcs revision=0x2b",
            "vmx: true-controls=yes",
            "vmx: ept=yes walk4=yes wb=yes 2m=yes 1g=yes ad=yes",
            "vmx: vpid=yes",
            "vmx: unrestricted-guest=yes",
            "vmx: preemption-timer=yes",
            "vmx: ready (VMXON and VMCS load succeeded)",
            "sluice: exit status 0",
        ],
        forbid: &["error", "EXCEPTION", "PANIC", "no screen console"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 180,
    },
    Case {
        name: "bochs-uefi-penryn-no-ept",
        emulator: BOCHS,
        firmware: Firmware::Uefi,
        cpu: Some("core2_penryn_t9600"),
        expect_status: 1,
        expect_lines: &[
            BANNER,
            "vmx: IA32_FEATURE_CONTROL was unlocked; locked it with VMX enabled",
            "vmx: present",
            "vmx: ept=no",
            "vmx: unrestricted-guest=no",
            "sluice: error: no EPT",
            OLD_CPU_HINT,
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 180,
    },
    Case {
        name: "bochs-uefi-hello64",
        emulator: BOCHS,
        firmware: Firmware::Uefi,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "vmx: ready",
            "sluice: guest hello64 (elf64",
            // OVMF's MTRRs leave RAM write-back too.
            "host MTRRs: default WB",
            "guest RAM at host 0x",
            " is WB",
            "hello from a 64-bit guest",
            "hypercall print works",
            "cpuid: hypervisor sluicesluice",
            "cpuid: vmx hidden",
            "guest: done",
            "sluice-stats: ",
            "sluice: exit status 0",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: guest("hello64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("io_instruction", 1), ("vmcall", 2), ("cpuid", 2)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: Some(memory_map_merged),
        timeout_s: 180,
    },
    Case {
        name: "qemu-bios-no-vmx",
        emulator: QEMU,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 1,
        expect_lines: &[
            BANNER,
            "sluice: platform=qemu",
            NO_VMX,
            AMD_HINT,
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "qemu-uefi-no-vmx",
        emulator: QEMU,
        firmware: Firmware::Uefi,
        cpu: None,
        expect_status: 1,
        expect_lines: &[
            BANNER,
            "sluice: platform=qemu",
            NO_VMX,
            AMD_HINT,
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-hello64",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "vmx: ready",
            "sluice: guest hello64 (elf64",
            // Bochs' firmware leaves RAM write-back; the EPT must say the same.
            "host MTRRs: default WB, fixed ranges on",
            "guest RAM at host 0x",
            " is WB",
            "hello from a 64-bit guest",
            "hypercall print works",
            "cpuid: hypervisor sluicesluice",
            "cpuid: vmx hidden",
            "guest: done",
            "sluice-stats: ",
            "sluice: summary: ",
            " VM exits (coalescing on); one exit per IO instruction would have taken ",
            "sluice: summary: handling the IO exits took ",
            "sluice: exit status 0",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: guest("hello64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("io_instruction", 1), ("vmcall", 2), ("cpuid", 2)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        // What `cargo xtask run` shows a new user: coalescing on, as by default.
        coalesce: Some(true),
        check: Some(demo_coalesces),
        timeout_s: 120,
    },
    Case {
        name: "bochs-hello-real",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "hello from real mode",
            "real-mode hypercall works",
            "sluicesluice",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: guest("hello-real"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            // The UART lines are IO instructions, most of them coalesced.
            exits_at_least: &[("io_instruction", 1), ("vmcall", 2), ("cpuid", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 100,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        // The user's-boot-sector path: a file plus `--entry real:0x7c00`.
        name: "bochs-user-boot-sector",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "sluice: guest hello-real.bin (real:0x7c00",
            "hello from real mode",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: Some(GuestSpec {
            name: "hello-real",
            entry: Some("real:0x7c00"),
        }),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        // A 4 KiB ROM started like a PC's BIOS: the reset vector runs from the alias
        // below 4 GiB, the far jump continues in the copy that ends at 1 MiB.
        name: "bochs-firmware-reset-vector",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "sluice: guest reset-rom (firmware",
            "hello from the reset vector (F000:FFF0 via 0xFFFFFFF0, then F000:F000)",
        ],
        forbid: &["error", "EXCEPTION", "PANIC"],
        guest: guest("reset-rom"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("io_instruction", 1), ("vmcall", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 10,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-vmxon-gets-ud",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &["guest: caught #UD"],
        forbid: &["vmxon did not fault", "EXCEPTION", "PANIC"],
        guest: guest("vmxon64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("vmxon", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-unknown-msr-gets-gp",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &["guest: caught #GP"],
        forbid: &["EXCEPTION", "PANIC"],
        guest: guest("badmsr64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("rdmsr", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-triple-fault-64",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "guest: about to triple-fault",
            "sluice: guest stopped: triple fault at rip=",
        ],
        forbid: &["EXCEPTION", "PANIC"],
        guest: guest("triple64"),
        stats: Some(StatsExpect {
            end: "triple-fault",
            exit_code: 0,
            exits_at_least: &[("triple_fault", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-triple-fault-real",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "real: about to triple-fault",
            "sluice: guest stopped: triple fault at rip=",
        ],
        forbid: &["EXCEPTION", "PANIC"],
        guest: guest("triple-real"),
        stats: Some(StatsExpect {
            end: "triple-fault",
            exit_code: 0,
            exits_at_least: &[("triple_fault", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-memory-outside-ram",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 4,
        expect_lines: &[
            "guest: touching 0x3fe00000",
            "EPT violation",
            "gpa=0x3fe00000",
        ],
        forbid: &["no EPT violation", "EXCEPTION", "PANIC"],
        guest: guest("ept64"),
        stats: Some(StatsExpect {
            end: "ept-violation",
            exit_code: 0,
            exits_at_least: &[("ept_violation", 1)],
            irqs_at_least: &[],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-uart-probe-and-interrupts",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "uart: scratch ok",
            "uart: loopback ok",
            "uart: 16550A detected",
            "uart: loopback data ok",
            "uart: polled output works",
            "uart: this line was sent one byte per THRE interrupt",
            "uart: interrupt-driven output done",
        ],
        forbid: &["EXCEPTION", "PANIC", "failed"],
        guest: guest("uart64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            // One THRE interrupt per byte of the interrupt-driven line (52 bytes).
            exits_at_least: &[("io_instruction", 100)],
            irqs_at_least: &[("irq4", 52)],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        // pit64 counts IRQ0 ticks of a 1000 Hz channel-0 timer over 50 ms measured by
        // channel 2, and accepts 45..=55 (10%).
        name: "bochs-pit-timer-rate",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "ticks in 50 ms (expected 50, accepted 45..=55)",
            "pit: readback ok",
        ],
        forbid: &["EXCEPTION", "PANIC", "failed"],
        guest: guest("pit64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[("hlt", 45), ("preemption_timer", 1)],
            irqs_at_least: &[("irq0", 45)],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    Case {
        name: "bochs-pic-nesting-mask-eoi",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 0,
        expect_lines: &[
            "pic: imr ok",
            "pic: nested priority ok (4 begin, 0, 4 end)",
            "pic: lower priority waits for EOI",
            "pic: mask ok",
        ],
        forbid: &["EXCEPTION", "PANIC", "failed"],
        guest: guest("pic64"),
        stats: Some(StatsExpect {
            end: "hypercall",
            exit_code: 0,
            exits_at_least: &[],
            irqs_at_least: &[("irq0", 2), ("irq4", 2)],
            io_instructions_at_least: 0,
        }),
        coalesce: None,
        check: None,
        timeout_s: 120,
    },
    // Debian's stock kernel and a busybox initramfs (fetched with apt): the kernel's own
    // drivers find the 16550A on IRQ4 and run the timer on IRQ0 through the 8259A;
    // /init prints its marker and powers off (HLT with interrupts off).
    linux_case("bochs-linux-coalesce-on", Firmware::Bios, true),
    linux_case("bochs-linux-coalesce-off", Firmware::Bios, false),
    // The same kernel started from the UEFI image: guest RAM comes from OVMF's memory map.
    linux_case("bochs-uefi-linux-coalesce-on", Firmware::Uefi, true),
];

/// OVMF's memory map lists free memory in many neighbouring entries; the frame
/// allocator must have merged them (fewer ranges than entries) into a block that holds
/// guest RAM (hello64's 64 MiB).
pub fn memory_map_merged(console: &str) -> Result<(), String> {
    let line = console
        .lines()
        .find(|l| l.contains(" map entries, "))
        .ok_or("no \"sluice: ... memory: ... map entries\" line")?;
    let number_before = |text: &str| -> Option<u64> {
        let head = &line[..line.find(text)?];
        let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    let (Some(entries), Some(ranges), Some(largest)) = (
        number_before(" map entries, "),
        number_before(" ranges (largest "),
        number_before(" MiB), firmware="),
    ) else {
        return Err(format!("cannot read the memory line: {line:?}"));
    };
    if ranges >= entries {
        return Err(format!(
            "{entries} usable map entries became {ranges} ranges: nothing was merged"
        ));
    }
    if largest < 64 {
        return Err(format!(
            "the largest range is {largest} MiB, guest RAM needs 64"
        ));
    }
    Ok(())
}

/// A Linux boot with coalescing on or off; both must reach the same marker.
const fn linux_case(name: &'static str, firmware: Firmware, coalesce: bool) -> Case {
    Case {
        name,
        emulator: BOCHS,
        firmware,
        cpu: None,
        expect_status: 0,
        expect_lines: LINUX_LINES,
        // Any PIT calibration (it prints "Fast TSC calibration using PIT" or "... failed")
        // means the kernel did not take the rate from CPUID 15H/16H; an MSR the kernel
        // trusted CPUID about raising #GP would mean CPUID describes something sluice
        // lacks.
        forbid: &[
            "Kernel panic",
            "EXCEPTION",
            "PANIC",
            "Fast TSC calibration",
            "unchecked MSR access",
            // Its clocksource watchdog checks the TSC against jiffies: timer ticks the
            // guest never saw would make the TSC look fast (`timer.lost_ticks`).
            "Marking TSC unstable",
        ],
        guest: guest("linux"),
        stats: Some(StatsExpect {
            end: "halt",
            exit_code: 0,
            exits_at_least: &[("io_instruction", 1000)],
            irqs_at_least: &[("irq0", 100), ("irq1", 1), ("irq4", 1)],
            io_instructions_at_least: 0,
        }),
        coalesce: Some(coalesce),
        check: Some(linux_clock),
        timeout_s: 120,
    }
}

/// The kernel keeps time with the TSC (`tsc-early` is replaced by `tsc` once its
/// watchdog has trusted it), at the rate sluice measured.
pub fn linux_clock(console: &str) -> Result<(), String> {
    linux_tsc_matches(console)?;
    let switched = console.lines().any(|l| {
        l.trim_end()
            .ends_with("clocksource: Switched to clocksource tsc")
    });
    if !switched {
        return Err("the kernel never switched to the tsc clocksource".into());
    }
    Ok(())
}

/// The TSC rate the kernel reports is the one sluice measured (it can only have come
/// from CPUID 15H/16H). Linux prints "Detected N MHz processor" (16H, whole MHz, or the
/// TSC rate when that is within 10%) and, only when the two differ, "Detected N MHz
/// TSC" (15H: crystal x 2, the crystal in whole kHz, so within 1 kHz of sluice's).
pub fn linux_tsc_matches(console: &str) -> Result<(), String> {
    let khz = |line: &str, prefix: &str, suffix: &str| -> Option<u64> {
        let rest = &line[line.find(prefix)? + prefix.len()..];
        let (mhz, frac) = rest[..rest.find(suffix)?].split_once('.')?;
        Some(mhz.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?)
    };
    let find = |prefix: &str, suffix: &str| console.lines().find_map(|l| khz(l, prefix, suffix));
    let measured = find("sluice: TSC ", " MHz (measured")
        .ok_or("no \"sluice: TSC ... MHz (measured\" line")?;
    let kernel = find("tsc: Detected ", " MHz TSC")
        .or_else(|| find("tsc: Detected ", " MHz processor"))
        .ok_or("the kernel printed no \"tsc: Detected ... MHz\" line")?;
    if kernel.abs_diff(measured) > 1 {
        return Err(format!(
            "the kernel's TSC is {kernel} kHz, sluice measured {measured} kHz"
        ));
    }
    Ok(())
}

/// What a Linux boot must print, in order.
const LINUX_LINES: &[&str] = &[
    "sluice: guest linux (linux,",
    "Command line: console=ttyS0 acpi=off pci=off nolapic noapic",
    // The rate from CPUID 15H/16H. Linux prints a second "Detected ... MHz TSC" line
    // only when the TSC rate (15H) differs from the processor's (16H, whole MHz), i.e.
    // when sluice's measurement is not a whole number of MHz: not required.
    "tsc: Detected ",
    "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
    "serio: i8042 KBD port at 0x60,0x64 irq 1",
    "serio: i8042 AUX port at 0x60,0x64 irq 12",
    "rtc_cmos rtc_cmos: registered as rtc0",
    "rtc_cmos rtc_cmos: setting system clock to 20",
    "Run /init as init process",
    "sluice-linux: init started",
    "sluice-linux: uname Linux",
    "XT-PIC      timer",
    "XT-PIC      i8042",
    "XT-PIC      ttyS0",
    "XT-PIC      rtc0",
    "uart:16550A port:000003F8 irq:4",
    "sluice-linux: done",
    "reboot: System halted",
    "sluice: guest stopped: HLT at",
];

/// A guest booted twice in Bochs, with coalescing off and on: its own console lines
/// (everything but sluice's) must be identical, register checksums included, the IO
/// instructions executed the same, and the IO exits must drop.
pub struct PairCase {
    pub name: &'static str,
    pub guest: &'static str,
    /// The image both runs boot (BIOS or UEFI, in Bochs).
    pub firmware: Firmware,
    /// Guest lines starting with one of these are compared; lines whose content
    /// depends on timing (tick counts) are left out by not listing them.
    pub compare: &'static [&'static str],
    /// Coalescing on must take at most this many IO exits (a burst is one exit).
    pub max_exits_on: Option<u64>,
    /// The guest's IO instruction count does not depend on timing.
    pub same_io_count: bool,
    /// Lines the coalescing-on run must print (per-burst exit counts the guest reads
    /// through the counters hypercall).
    pub on_lines: &'static [&'static str],
}

/// bursts64 with coalescing on: each classic driver burst is one exit.
const BURSTS64_ONE_EXIT: &[&str] = &[
    "exits pic-init: 1 IO exits for 24 IO instructions",
    "exits pit-program: 1 IO exits for 8 IO instructions",
    "exits uart-init: 1 IO exits for 7 IO instructions",
    "exits cmos-read: 1 IO exits for 32 IO instructions",
    "exits pci-scan: 1 IO exits for 16 IO instructions",
    "exits vga-crtc: 1 IO exits for 16 IO instructions",
    "exits rep-outsb: 1 IO exits for 1 IO instructions",
];

pub const PAIRS: &[PairCase] = &[
    PairCase {
        name: "coalesce-hello64",
        guest: "hello64",
        firmware: Firmware::Bios,
        compare: &[""],
        max_exits_on: None,
        same_io_count: true,
        on_lines: &[],
    },
    PairCase {
        name: "coalesce-hello-real",
        guest: "hello-real",
        firmware: Firmware::Bios,
        compare: &[""],
        max_exits_on: None,
        same_io_count: true,
        on_lines: &[],
    },
    PairCase {
        name: "coalesce-uart64",
        guest: "uart64",
        firmware: Firmware::Bios,
        compare: &[""],
        max_exits_on: None,
        same_io_count: true,
        on_lines: &[],
    },
    PairCase {
        name: "coalesce-pic64",
        guest: "pic64",
        firmware: Firmware::Bios,
        compare: &["pic: "],
        max_exits_on: None,
        same_io_count: false,
        on_lines: &[],
    },
    PairCase {
        // Each classic driver burst, one asm block each, with register checksums; the
        // contract lets every one of them be a single exit. uart-write-64 and the alu-*
        // bursts run longer than the per-exit instruction limit (51 exits in all on
        // Bochs).
        name: "coalesce-bursts64",
        guest: "bursts64",
        firmware: Firmware::Bios,
        compare: &["burst ", "bursts: done"],
        max_exits_on: Some(54),
        same_io_count: true,
        on_lines: BURSTS64_ONE_EXIT,
    },
    PairCase {
        // The same bursts from the UEFI image: guest RAM at another host address, the
        // host's page tables and MTRRs from OVMF.
        name: "coalesce-uefi-bursts64",
        guest: "bursts64",
        firmware: Firmware::Uefi,
        compare: &["burst ", "bursts: done"],
        max_exits_on: Some(54),
        same_io_count: true,
        on_lines: BURSTS64_ONE_EXIT,
    },
    PairCase {
        // The benchmark workloads once each (bench64 with guest.arg 0): the smoke
        // version of `cargo xtask bench`, so a coalescing regression fails CI. The
        // numbers come from the guest reading sluice's counters around each workload.
        name: "coalesce-bench-smoke",
        guest: "bench64",
        firmware: Firmware::Bios,
        compare: &["bench: done"],
        max_exits_on: None,
        same_io_count: false,
        on_lines: &[
            "workload pic-init: iterations 1, io instructions 24, io exits 1,",
            "workload pit-program: iterations 1, io instructions 3, io exits 1,",
            "workload uart-init: iterations 1, io instructions 7, io exits 1,",
            "workload uart-puts: iterations 1, io instructions 128, io exits 4,",
            "workload rep-outsb: iterations 1, io instructions 1, io exits 1,",
            "workload cmos-read: iterations 1, io instructions 32, io exits 1,",
            "workload pci-scan: iterations 1, io instructions 64, io exits 2,",
            "workload vga-crtc: iterations 1, io instructions 32, io exits 1,",
            "workload driver-init: iterations 1, io instructions 58, io exits 1,",
            // CALL/RET and stack memory are in the subset: the compiled driver's whole
            // init sequence is one exit.
            "workload rust-uart-init: iterations 1, io instructions 7, io exits 1,",
        ],
    },
    PairCase {
        name: "coalesce-bursts-real",
        guest: "bursts-real",
        firmware: Firmware::Bios,
        compare: &["real bursts:", "ABCD"],
        max_exits_on: None,
        same_io_count: true,
        on_lines: &[],
    },
    PairCase {
        // The firmware-style workloads once each (bench-real with guest.arg 0): register
        // and result-buffer checksums and the putc banner must not change with coalescing.
        // The coalescer emulates memory operands, the stack and CALL/RET in 64-bit code
        // only (and LODS/STOS/MOVS in no mode), so no exit count is required of 16-bit
        // firmware code (beyond not more than off); the IO each workload executes is
        // fixed by its tables, and is.
        name: "coalesce-bench-real",
        guest: "bench-real",
        firmware: Firmware::Bios,
        compare: &["checksum ", "bench-real"],
        max_exits_on: None,
        same_io_count: true,
        on_lines: &[
            "workload fw-init-table: iterations 1, io instructions 48, io exits ",
            "workload fw-kbc: iterations 1, io instructions 37, io exits ",
            "workload fw-cmos-read: iterations 1, io instructions 95, io exits ",
            "workload fw-pci-scan: iterations 1, io instructions 64, io exits ",
            "workload fw-vga-setup: iterations 1, io instructions 89, io exits ",
            "workload fw-uart-puts: iterations 1, io instructions 128, io exits ",
            "workload fw-post: iterations 1, io instructions 461, io exits ",
            "bench-real: done",
        ],
    },
];

/// The guest's own lines: what is not sluice's, the capability report or xtask's.
pub fn guest_lines<'a>(console: &'a str, compare: &[&str]) -> Vec<&'a str> {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.starts_with("sluice") && !l.starts_with("vmx:") && !l.is_empty())
        .filter(|l| compare.iter().any(|p| l.starts_with(p)))
        .collect()
}

/// The `io` numbers of a run's stats line: (exits, instructions).
fn io_counts(console: &str) -> Result<(u64, u64), String> {
    let io = stats_line::from_console(console, Lines::First)?.io;
    Ok((io.exits, io.instructions))
}

/// The default run shows what sluice is for: its IO takes at most half as many exits
/// as it has IO instructions (the UART burst and the polled line of hello64).
pub fn demo_coalesces(console: &str) -> Result<(), String> {
    let (exits, instructions) = io_counts(console)?;
    if exits.saturating_mul(2) > instructions {
        return Err(format!(
            "the demo guest took {exits} IO exits for {instructions} IO instructions: \
             coalescing should take at most half as many exits"
        ));
    }
    Ok(())
}

/// Judges the two runs of a pair.
pub fn judge_pair(pair: &PairCase, off: &str, on: &str) -> Result<String, String> {
    for (what, console) in [("off", off), ("on", on)] {
        if crate::emulator::reported_status(console) != Some(0) {
            return Err(format!(
                "coalescing {what}: the run did not end with status 0"
            ));
        }
    }
    let (a, b) = (
        guest_lines(off, pair.compare),
        guest_lines(on, pair.compare),
    );
    if a.is_empty() {
        return Err("no guest lines to compare".into());
    }
    if a != b {
        let diff = a
            .iter()
            .zip(&b)
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("off: {x:?}\n on: {y:?}"))
            .unwrap_or_else(|| format!("{} lines off, {} lines on", a.len(), b.len()));
        return Err(format!("guest output differs with coalescing on:\n{diff}"));
    }
    let (exits_off, insns_off) = io_counts(off)?;
    let (exits_on, insns_on) = io_counts(on)?;
    if exits_off != insns_off {
        return Err(format!(
            "coalescing off must take one exit per IO instruction: {exits_off} exits, {insns_off} instructions"
        ));
    }
    if pair.same_io_count && insns_on != insns_off {
        return Err(format!(
            "IO instructions differ: {insns_off} off, {insns_on} on"
        ));
    }
    if exits_on > exits_off {
        return Err(format!(
            "more IO exits with coalescing on: {exits_on} > {exits_off}"
        ));
    }
    for line in pair.on_lines {
        if !on.contains(line) {
            return Err(format!("coalescing on: missing {line:?}"));
        }
    }
    if let Some(max) = pair.max_exits_on {
        if exits_on > max {
            return Err(format!(
                "coalescing on took {exits_on} IO exits, expected at most {max}"
            ));
        }
    }
    Ok(format!(
        "{} lines identical, IO exits {exits_off} -> {exits_on}",
        a.len()
    ))
}

/// Checks a finished run against a case; the error says what was missing or wrong.
pub fn judge(case: &Case, ending: &Ending, console: &str) -> Result<(), String> {
    match ending {
        Ending::Status(s) if *s == case.expect_status => {}
        Ending::Status(s) => {
            return Err(format!("exit status {s}, expected {}", case.expect_status))
        }
        Ending::Hang(hang) => return Err(hang.to_string()),
        Ending::EmulatorExited(why) => {
            return Err(format!("emulator stopped without a status: {why}"))
        }
        Ending::Interrupted => return Err("interrupted".into()),
    }
    let mut rest = console;
    for line in case.expect_lines {
        match rest.find(line) {
            Some(at) => rest = &rest[at + line.len()..],
            None => {
                let why = if console.contains(line) {
                    "out of order"
                } else {
                    "missing"
                };
                return Err(format!("console line {why}: {line:?}"));
            }
        }
    }
    for bad in case.forbid {
        if let Some(line) = console.lines().find(|l| l.contains(bad)) {
            return Err(format!(
                "console has forbidden {bad:?}: {:?}",
                line.trim_end()
            ));
        }
    }
    if let (Some(want), Some(spec)) = (&case.stats, &case.guest) {
        check_stats(console, spec, want)?;
    }
    case.check.map_or(Ok(()), |check| check(console))
}

/// Parses the one `sluice-stats: {json}` line and checks it against `want`.
pub fn check_stats(console: &str, spec: &GuestSpec, want: &StatsExpect) -> Result<(), String> {
    let stats = stats_line::from_console(console, Lines::One)?;
    if !stats.guest.starts_with(spec.name) {
        return Err(format!(
            "sluice-stats guest is {:?}, expected {:?}",
            stats.guest, spec.name
        ));
    }
    if stats.end != want.end {
        return Err(format!(
            "sluice-stats end is {:?}, expected {:?}",
            stats.end, want.end
        ));
    }
    if stats.exit_code != want.exit_code {
        return Err(format!(
            "sluice-stats exit_code is {}, expected {}",
            stats.exit_code, want.exit_code
        ));
    }
    for (irq, min) in want.irqs_at_least {
        let n = stats.irq_count(irq);
        if n < *min {
            return Err(format!(
                "sluice-stats interrupts.injected.{irq} is {n}, expected at least {min}: {:?}",
                stats.interrupts.injected
            ));
        }
    }
    if stats.io.instructions < want.io_instructions_at_least {
        return Err(format!(
            "sluice-stats io.instructions is {}, expected at least {}",
            stats.io.instructions, want.io_instructions_at_least
        ));
    }
    for (reason, min) in want.exits_at_least {
        let n = stats.exit_count(reason);
        if n < *min {
            return Err(format!(
                "sluice-stats exits.{reason} is {n}, expected at least {min}: {:?}",
                stats.exits
            ));
        }
    }
    Ok(())
}

pub fn test(args: &TestArgs) -> Result<u8, String> {
    let root = image::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::host::ensure(crate::host::NATIVE_BUILD)?;
    println!("xtask: host unit tests");
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "test",
            "--workspace",
            "--exclude",
            "sluice-boot",
            "--exclude",
            "sluice-guests",
        ])
        .status()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    if !status.success() {
        return Ok(1);
    }
    if args.host_only {
        return Ok(0);
    }

    let kernel = image::build_kernel(args.release)?;
    guests::build_all(args.release)?;
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    println!("xtask: {} end-to-end cases", cases.len());
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        let started = Instant::now();
        let (payload, ram_mib) = case_payload(case, args)?;
        let machine = Machine {
            emulator: case.emulator.clone(),
            firmware: case.firmware,
            cpu: case.cpu.map(String::from),
            ram_mib,
            silence: Duration::from_secs(case.timeout_s),
            max_time: emulator::MAX_TIME_DEFAULT,
            echo: false,
        };
        let outcome = emulator::boot(case.name, &kernel, &payload, machine);
        let verdict = outcome.and_then(|o| {
            judge(case, &o.ending, &o.console)
                .map_err(|e| (e, o.console))
                .map_err(|(e, c)| format!("{e}\n--- console ---\n{c}\n--- end ---"))
        });
        match verdict {
            Ok(()) => {
                passed += 1;
                println!(
                    "test e2e::{} ... ok ({:.1} s)",
                    case.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test e2e::{} ... FAILED ({:.1} s)\n{e}",
                    case.name,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    // The screen console, read back from QEMU screenshots (crate::screen).
    let screens = crate::screen::CASES
        .iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)));
    for case in screens {
        let started = Instant::now();
        let result = crate::screen::run_case(case, &kernel);
        report(case.name, started, result, &mut passed, &mut failed);
    }
    let pairs: Vec<&PairCase> = PAIRS
        .iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    for pair in pairs {
        let started = Instant::now();
        let result = run_pair(pair, &kernel, args);
        report(pair.name, started, result, &mut passed, &mut failed);
    }
    // Host-side end-to-end checks: real commands against real devices, no emulator.
    let host_checks: [(&str, HostCheck); 2] = [
        ("usb-writer-loop-device", crate::usb::end_to_end),
        ("xtask-needs-only-rust", xtask_needs_only_rust),
    ];
    for (name, check) in host_checks
        .into_iter()
        .filter(|(n, _)| args.filter.as_deref().is_none_or(|f| n.contains(f)))
    {
        let started = Instant::now();
        report(name, started, check(args.release), &mut passed, &mut failed);
    }
    println!("e2e: {passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The end-to-end check that xtask builds with nothing but the Rust toolchain: its
/// normal and build dependencies, as cargo resolves them, include no crate that
/// compiles C.
pub fn xtask_needs_only_rust(_release: bool) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(image::workspace_root())
        .args(["tree", "--package", "xtask", "--edges", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .map_err(|e| format!("could not run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates = tree.lines().count();
    match host::native_build_crates(&tree)[..] {
        [] if crates > 1 => Ok(format!(
            "{crates} crates in xtask's graph, none builds C (no {})",
            host::NATIVE_BUILD_CRATES.join(", ")
        )),
        [] => Err(format!("cargo tree listed no dependencies of xtask: {tree:?}")),
        ref found => Err(format!(
            "xtask depends on {}, which build C: `cargo xtask` would need cmake or a C \
             toolchain before it could install them (keep the hypervisor's `decoder` feature off in xtask)",
            found.join(", ")
        )),
    }
}

/// Prints one case's verdict (its one-line summary or its failure) and counts it.
fn report(
    name: &str,
    started: Instant,
    result: Result<String, String>,
    passed: &mut u32,
    failed: &mut u32,
) {
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(summary) => {
            *passed += 1;
            println!("test e2e::{name} ... ok ({secs:.1} s; {summary})");
        }
        Err(e) => {
            *failed += 1;
            println!("test e2e::{name} ... FAILED ({secs:.1} s)\n{e}");
        }
    }
}

/// A host-side end-to-end check: takes `--release`, returns a one-line summary.
type HostCheck = fn(bool) -> Result<String, String>;

/// The payload a case boots: its guest (or none) and the run configuration.
fn case_payload(case: &Case, args: &TestArgs) -> Result<(Vec<u8>, u32), String> {
    let prepared = match &case.guest {
        None => None,
        Some(GuestSpec { name, entry: None }) => {
            Some(guest_input::prepare(Some(name), None, None, args.release)?)
        }
        Some(GuestSpec {
            name,
            entry: Some(entry),
        }) => {
            let path = guests::build(name, args.release)?.path;
            let path = path.to_str().ok_or("non-UTF-8 guest path")?.to_string();
            Some(guest_input::prepare(
                Some(&path),
                Some(entry),
                None,
                args.release,
            )?)
        }
    };
    let flags = crate::cli::CoalesceArgs {
        coalesce: case.coalesce.or(args.coalesce.coalesce),
        ..args.coalesce.clone()
    };
    Ok(match &prepared {
        None => {
            let config = Config {
                platform: crate::run_config::platform_of(&case.emulator),
                ..Config::default()
            };
            (image::payload_bytes(&config, &[]), 64)
        }
        Some(g) => (
            image::payload_bytes(
                &crate::run_config::run_config(g, &case.emulator, &flags),
                &g.bytes,
            ),
            g.ram_mib,
        ),
    })
}

/// Boots a pair's guest with coalescing off, then on (other coalescing flags from the
/// command line apply to the "on" run), and judges them.
fn run_pair(pair: &PairCase, kernel: &std::path::Path, args: &TestArgs) -> Result<String, String> {
    let guest = guest_input::prepare(Some(pair.guest), None, None, args.release)?;
    let mut consoles = Vec::new();
    for on in [false, true] {
        let flags = crate::cli::CoalesceArgs {
            coalesce: Some(on),
            ..args.coalesce.clone()
        };
        let payload = image::payload_bytes(
            &crate::run_config::run_config(&guest, &BOCHS, &flags),
            &guest.bytes,
        );
        let machine = Machine {
            emulator: BOCHS,
            firmware: pair.firmware,
            cpu: None,
            ram_mib: guest.ram_mib,
            silence: emulator::SILENCE_DEFAULT,
            max_time: emulator::MAX_TIME_DEFAULT,
            echo: false,
        };
        let name = format!("{}-{}", pair.name, if on { "on" } else { "off" });
        let o = emulator::boot(&name, kernel, &payload, machine)?;
        consoles.push(o.console);
    }
    judge_pair(pair, &consoles[0], &consoles[1]).map_err(|e| {
        format!(
            "{e}\n--- console, coalescing off ---\n{}\n--- console, coalescing on ---\n{}\n--- end ---",
            consoles[0], consoles[1]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats_line::kernel_line;
    use hypervisor::stats::{EndKind, Stats};
    use hypervisor::vmx::exit::exit_reason;

    const CASE: Case = Case {
        name: "t",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 1,
        expect_lines: &["a", "b"],
        forbid: &["PANIC"],
        guest: None,
        stats: None,
        coalesce: None,
        check: None,
        timeout_s: 1,
    };

    #[test]
    fn linux_tsc_rate_must_be_sluices() {
        let sluice = "sluice: TSC 200.009 MHz (measured against the 8254)\n";
        let both = "[    0.0] tsc: Detected 200.000 MHz processor\n\
                    [    0.0] tsc: Detected 200.008 MHz TSC\n";
        assert_eq!(linux_tsc_matches(&format!("{sluice}{both}")), Ok(()));
        // A whole number of MHz: the processor line alone.
        let whole = "sluice: TSC 200.000 MHz (measured against the 8254)\n\
                     [    0.0] tsc: Detected 200.000 MHz processor\n";
        assert_eq!(linux_tsc_matches(whole), Ok(()));
        // The kernel calibrated on its own (or CPUID said something else).
        let other = "sluice: TSC 200.009 MHz (measured against the 8254)\n\
                     [    0.0] tsc: Detected 199.412 MHz processor\n";
        assert!(linux_tsc_matches(other).unwrap_err().contains("199412 kHz"));
        assert!(linux_tsc_matches(sluice).is_err());
        assert!(linux_tsc_matches(both).is_err());
        // tsc-early alone is not enough.
        let early = format!("{whole}[    3.0] clocksource: Switched to clocksource tsc-early\r\n");
        assert!(linux_clock(&early).unwrap_err().contains("never switched"));
        let tsc = format!("{early}[    3.5] clocksource: Switched to clocksource tsc\r\n");
        assert_eq!(linux_clock(&tsc), Ok(()));
    }

    #[test]
    fn uefi_memory_map_must_have_been_merged() {
        let line = |e, r, l| {
            format!("sluice: platform=bochs memory: 179 MiB usable in {e} map entries, {r} ranges (largest {l} MiB), firmware=acpi\r\n")
        };
        assert_eq!(memory_map_merged(&line(113, 6, 151)), Ok(()));
        assert!(memory_map_merged(&line(113, 113, 151))
            .unwrap_err()
            .contains("nothing was merged"));
        assert!(memory_map_merged(&line(113, 6, 40))
            .unwrap_err()
            .contains("40 MiB"));
        assert!(memory_map_merged("sluice: memory: 179 MiB usable\n").is_err());
    }

    #[test]
    fn judge_accepts_status_and_ordered_lines() {
        assert_eq!(judge(&CASE, &Ending::Status(1), "x a y\nb\n"), Ok(()));
    }

    #[test]
    fn judge_rejects_wrong_status_hang_and_emulator_failure() {
        assert!(judge(&CASE, &Ending::Status(0), "a b")
            .unwrap_err()
            .contains("exit status 0"));
        let hang = Ending::Hang(emulator::Hang {
            why: emulator::HangKind::Silent(Duration::from_secs(120)),
            last_line: Some("a b".into()),
        });
        let e = judge(&CASE, &hang, "a b").unwrap_err();
        assert!(e.contains("hang") && e.contains("silent for 120 s"), "{e}");
        assert!(judge(&CASE, &Ending::EmulatorExited("boom".into()), "a b")
            .unwrap_err()
            .contains("boom"));
    }

    #[test]
    fn judge_rejects_missing_out_of_order_and_forbidden_lines() {
        assert!(judge(&CASE, &Ending::Status(1), "a")
            .unwrap_err()
            .contains("missing"));
        assert!(judge(&CASE, &Ending::Status(1), "b a")
            .unwrap_err()
            .contains("out of order"));
        assert!(judge(&CASE, &Ending::Status(1), "a b\nPANIC x")
            .unwrap_err()
            .contains("forbidden"));
    }

    const SPEC: GuestSpec = GuestSpec {
        name: "hello64",
        entry: None,
    };
    const WANT: StatsExpect = StatsExpect {
        end: "hypercall",
        exit_code: 0,
        exits_at_least: &[("cpuid", 2)],
        irqs_at_least: &[],
        io_instructions_at_least: 0,
    };

    #[test]
    fn stats_line_is_parsed_and_checked() {
        let mut stats = Stats::new();
        stats.exits[usize::from(exit_reason::CPUID)] = 3;
        let line = kernel_line("hello64", EndKind::Hypercall, 0, &stats);
        let ok = format!("x\n{}", line.replace('\n', "\r\n"));
        assert!(ok.contains("\"cpuid\":3"), "{ok}");
        assert_eq!(check_stats(&ok, &SPEC, &WANT), Ok(()));
        let few = ok.replace("\"cpuid\":3", "\"cpuid\":1");
        assert!(check_stats(&few, &SPEC, &WANT)
            .unwrap_err()
            .contains("at least 2"));
        let end = ok.replace("hypercall", "halt");
        assert!(check_stats(&end, &SPEC, &WANT).unwrap_err().contains("end"));
        let code = ok.replace("\"exit_code\":0", "\"exit_code\":1");
        assert!(check_stats(&code, &SPEC, &WANT)
            .unwrap_err()
            .contains("exit_code"));
        assert!(check_stats("sluice-stats: {oops", &SPEC, &WANT)
            .unwrap_err()
            .contains("not valid JSON"));
        // A line missing what the kernel always writes is a changed format, not zeros.
        let partial = "sluice-stats: {\"guest\":\"hello64\",\"end\":\"hypercall\",\"exit_code\":0,\"exits\":{\"cpuid\":3}}";
        assert!(check_stats(partial, &SPEC, &WANT)
            .unwrap_err()
            .contains("missing field `unknown_ports`"));
        assert!(check_stats("nothing", &SPEC, &WANT)
            .unwrap_err()
            .contains("found 0"));
        let twice = format!("{ok}{ok}");
        assert!(check_stats(&twice, &SPEC, &WANT)
            .unwrap_err()
            .contains("found 2"));
    }

    fn run_console(lines: &[&str], exits: u64, insns: u64) -> String {
        let mut s = String::from("sluice 0.1.0\nvmx: present\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        let mut stats = Stats::new();
        stats.exits[usize::from(exit_reason::IO_INSTRUCTION)] = exits;
        stats.io.instructions = insns;
        s.push_str(&kernel_line("g", EndKind::Hypercall, 0, &stats));
        s.push_str("sluice: exit status 0\n");
        s
    }

    const PAIR: PairCase = PairCase {
        name: "p",
        guest: "g",
        firmware: Firmware::Bios,
        compare: &["burst "],
        max_exits_on: Some(3),
        same_io_count: true,
        on_lines: &["burst a"],
    };

    #[test]
    fn pair_passes_when_lines_match_and_exits_drop() {
        let off = run_console(&["burst a: regs 1", "noise 1"], 40, 40);
        let on = run_console(&["burst a: regs 1", "noise 2"], 3, 40);
        assert!(judge_pair(&PAIR, &off, &on).unwrap().contains("40 -> 3"));
    }

    #[test]
    fn pair_fails_on_any_difference_the_contract_forbids() {
        let off = run_console(&["burst a: regs 1"], 40, 40);
        let differs = run_console(&["burst a: regs 2"], 3, 40);
        assert!(judge_pair(&PAIR, &off, &differs)
            .unwrap_err()
            .contains("differs"));
        let more_io = run_console(&["burst a: regs 1"], 3, 41);
        assert!(judge_pair(&PAIR, &off, &more_io)
            .unwrap_err()
            .contains("IO instructions differ"));
        let too_many = run_console(&["burst a: regs 1"], 4, 40);
        assert!(judge_pair(&PAIR, &off, &too_many)
            .unwrap_err()
            .contains("at most 3"));
        let off_coalesced = run_console(&["burst a: regs 1"], 39, 40);
        assert!(judge_pair(&PAIR, &off_coalesced, &too_many)
            .unwrap_err()
            .contains("one exit per IO"));
        let failed = differs.replace("exit status 0", "exit status 1");
        assert!(judge_pair(&PAIR, &off, &failed)
            .unwrap_err()
            .contains("status 0"));
        let empty = run_console(&[], 1, 1);
        assert!(judge_pair(&PAIR, &empty, &empty)
            .unwrap_err()
            .contains("no guest lines"));
    }

    #[test]
    fn the_demo_must_take_at_most_half_an_exit_per_io_instruction() {
        assert_eq!(demo_coalesces(&run_console(&["x"], 4, 145)), Ok(()));
        assert_eq!(demo_coalesces(&run_console(&["x"], 72, 145)), Ok(()));
        let e = demo_coalesces(&run_console(&["x"], 73, 145)).unwrap_err();
        assert!(e.contains("73 IO exits for 145"), "{e}");
        assert!(demo_coalesces("no stats").is_err());
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
