//! Command-line parsing for `cargo xtask`. Hand-written (no extra crates) and strict:
//! an unknown command, an unknown flag or a bad value is a usage error naming it.

use std::fmt;

/// `--guest linux`: the Linux guest (`--kernel`, `--initrd`, `--cmdline`).
pub const LINUX_GUEST: &str = "linux";

pub const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--release]             build the kernel and the BIOS and UEFI disk images
                                (target/sluice/<profile>/sluice-{bios,uefi}.img)
  run   [options]               boot sluice with its default guest and stream its console;
                                the exit status is the run's status
  test  [--release] [--host-only] [--filter TEXT]
                                host unit tests, then end-to-end boots in Bochs and QEMU
  usb   --device PATH [options] write a bootable image for a real Intel PC to a USB stick
                                (or to a file); see docs/HARDWARE.md
  bench [options]               the exit-reduction report: every workload of the bench64
                                guest in Bochs, coalescing off and on per extent policy,
                                plus the host micro-benchmark of the coalescer; writes
                                results/bench.json and results/bench.svg
  help                          this text

bench options:
  --workload NAME               one workload only (see guest/README.md)
  --policy POLICY               coalescing off against this extent policy only
  --exit-cost CYCLES            modeled cost of one exit round trip (default 2000)
  --emulate-cost CYCLES         modeled cost of one emulated instruction (default 60,
                                the cache-hit cost the micro-benchmark measures)
  --quick                       one iteration per workload, short micro-benchmark
  --no-micro                    skip the host micro-benchmark
  --release                     optimized kernel and guests

run options:
  --release                     build with optimizations
  --emulator auto|qemu|bochs    auto (default): QEMU with KVM on an Intel host with nested
                                VMX, otherwise Bochs (which emulates VMX with EPT)
  --firmware bios|uefi          boot firmware (default bios): Bochs's BIOS or OVMF in Bochs,
                                SeaBIOS or OVMF in QEMU
  --cpu MODEL                   Bochs CPU model (default corei7_skylake_x) or QEMU -cpu value
  --timeout SECONDS             stop a hung run after this long (default 120)
  --guest NAME|PATH             the guest to run: a built-in test guest (see guest/README.md),
                                `linux` (an unmodified Linux kernel, options below) or a file
                                (ELF64, boot sector, flat binary, firmware image);
                                default: the demo guest hello64
  --entry MODE                  how to start a guest file: elf64 | real:SEG:OFF | real:ADDR |
                                firmware (reset vector F000:FFF0, image ending at 1 MiB and
                                at 4 GiB) | linux (a kernel bundle); ELF files default to elf64
  --ram MIB                     guest RAM in MiB (16..=4096, default 64; Linux: default 256,
                                at least 128)
  --arg N                       a number handed to the guest in RDI (decimal or 0x hex)

Linux options (run, with --guest linux only):
  --kernel PATH                 a bzImage (boot protocol 2.12+ with the 64-bit entry);
                                default: Debian's stock kernel (the package behind
                                linux-image-amd64), downloaded once into target/linux/
  --initrd PATH                 an initramfs (cpio, optionally compressed); default: a
                                generated busybox initramfs whose /init prints the kernel
                                version, /proc/interrupts and the serial ports, then
                                powers off
  --cmdline TEXT                the kernel command line (default
                                \"console=ttyS0 acpi=off pci=off nolapic noapic\": serial
                                console, no ACPI/PCI/APIC, so the kernel needs only the UART,
                                the PIT and the 8259 PIC sluice emulates)

usb options (plus the guest, Linux, coalescing and timer options of run):
  --device PATH                 the whole disk to write (/dev/sdX) or an image file
  --firmware uefi|bios          which image to write (default uefi: every PC since ~2012)
  --yes                         do not ask before erasing the device
  --force                       write a disk that does not look removable or is larger
                                than --max-size (mounted disks, partitions and the disk
                                of the running system are always refused)
  --max-size GIB                largest disk written without --force (default 64)

coalescing and timer options (run and test):
  --coalesce on|off             emulate each IO burst in one exit (default on) or take
                                one exit per IO instruction, as other hypervisors do
  --extent POLICY               where the scan for a burst may look (policies below)
  --max-insns N                 instructions emulated per exit at most (1..=4096, default 256)
  --max-string N                string-IO elements per exit at most (1..=65536, default 4096)
  --max-quiet N                 instructions emulated after the last IO instruction of an
                                exit at most (0..=4096, default 48)
  --lost-ticks delay|discard    a PIT tick that finds the last one not yet taken: raised
                                again once the guest has handled that one (delay: the
                                default for --guest linux, whose clock counts ticks) or
                                dropped as on hardware (discard: the default otherwise)
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    Auto,
    Qemu,
    Bochs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// Coalescing (and timer) flags; `None` keeps the run configuration's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoalesceArgs {
    pub coalesce: Option<bool>,
    pub extent: Option<String>,
    pub max_insns: Option<u32>,
    pub max_string: Option<u32>,
    pub max_quiet: Option<u32>,
    pub lost_ticks: Option<hypervisor::machine::LostTicks>,
}

impl CoalesceArgs {
    /// Takes one coalescing flag; `Ok(false)` if `flag` is not one.
    fn take<'a>(
        &mut self,
        flag: &str,
        inline: Option<&'a str>,
        rest: &mut impl Iterator<Item = &'a str>,
    ) -> Result<bool, UsageError> {
        match flag {
            "--coalesce" => {
                self.coalesce = Some(match value(flag, inline, rest)? {
                    "on" => true,
                    "off" => false,
                    v => return err(format!("--coalesce: expected on or off, got '{v}'")),
                })
            }
            "--extent" => {
                let v = value(flag, inline, rest)?;
                if hypervisor::coalesce::block::Extent::parse(v).is_none() {
                    return err(format!(
                        "--extent: unknown policy '{v}' (see `cargo xtask help` for the policies)"
                    ));
                }
                self.extent = Some(v.to_string());
            }
            "--max-insns" | "--max-string" | "--max-quiet" => {
                use hypervisor::config as c;
                let v = value(flag, inline, rest)?;
                let (range, slot) = match flag {
                    "--max-insns" => (c::COALESCE_MAX_INSNS_RANGE, &mut self.max_insns),
                    "--max-string" => (c::COALESCE_MAX_STRING_RANGE, &mut self.max_string),
                    _ => (c::COALESCE_MAX_QUIET_RANGE, &mut self.max_quiet),
                };
                match v.parse::<u32>() {
                    Ok(n) if range.contains(&n) => *slot = Some(n),
                    _ => {
                        return err(format!(
                            "{flag}: expected a number in {}..={}, got '{v}'",
                            range.start(),
                            range.end()
                        ))
                    }
                }
            }
            "--lost-ticks" => {
                let v = value(flag, inline, rest)?;
                let Some(policy) = hypervisor::machine::LostTicks::parse(v) else {
                    return err(format!(
                        "--lost-ticks: expected delay or discard, got '{v}'"
                    ));
                };
                self.lost_ticks = Some(policy);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub release: bool,
    pub emulator: Emulator,
    pub firmware: Firmware,
    pub cpu: Option<String>,
    pub timeout_s: u64,
    pub guest: Option<String>,
    pub entry: Option<String>,
    pub ram_mib: Option<u32>,
    pub arg: Option<u64>,
    pub coalesce: CoalesceArgs,
    pub linux: LinuxArgs,
}

/// `--kernel`, `--initrd`, `--cmdline`: the parts of a Linux guest (`--guest linux`);
/// `None` takes the default (see `linux.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinuxArgs {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

impl LinuxArgs {
    /// The flags given, for the "only with --guest linux" usage error.
    fn given(&self) -> Vec<&'static str> {
        [
            (self.kernel.is_some(), "--kernel"),
            (self.initrd.is_some(), "--initrd"),
            (self.cmdline.is_some(), "--cmdline"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            release: false,
            emulator: Emulator::Auto,
            firmware: Firmware::Bios,
            cpu: None,
            timeout_s: 120,
            guest: None,
            entry: None,
            ram_mib: None,
            arg: None,
            coalesce: CoalesceArgs::default(),
            linux: LinuxArgs::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestArgs {
    pub release: bool,
    pub host_only: bool,
    pub filter: Option<String>,
    /// Applies to every end-to-end case that does not set coalescing itself.
    pub coalesce: CoalesceArgs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchArgs {
    pub release: bool,
    pub workload: Option<String>,
    pub policy: Option<String>,
    pub exit_cost: u64,
    pub emulate_cost: u64,
    pub quick: bool,
    pub no_micro: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            release: false,
            workload: None,
            policy: None,
            exit_cost: 2000,
            emulate_cost: 60,
            quick: false,
            no_micro: false,
        }
    }
}

/// `cargo xtask usb`: the image options of `run` plus the target device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbArgs {
    pub device: String,
    pub firmware: Firmware,
    pub yes: bool,
    pub force: bool,
    pub max_size_gib: u64,
    /// Guest, RAM, Linux and coalescing choices (the emulator fields are unused).
    pub run: RunArgs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Build { release: bool },
    Usb(UsbArgs),
    Bench(BenchArgs),
    Run(RunArgs),
    Test(TestArgs),
    Help,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Takes the value of `flag` from the argument list, which may be `--flag VALUE` or
/// `--flag=VALUE`.
fn value<'a>(
    flag: &str,
    inline: Option<&'a str>,
    rest: &mut impl Iterator<Item = &'a str>,
) -> Result<&'a str, UsageError> {
    match inline.or_else(|| rest.next()) {
        Some(v) if !v.is_empty() && !(inline.is_none() && v.starts_with("--")) => Ok(v),
        _ => err(format!("{flag} needs a value")),
    }
}

/// `--kernel`/`--initrd`/`--cmdline` make sense only with `--guest linux`.
fn linux_flags_need_linux(run: &RunArgs) -> Result<(), UsageError> {
    let linux_flags = run.linux.given();
    if !linux_flags.is_empty() && run.guest.as_deref() != Some(LINUX_GUEST) {
        return err(format!(
            "{}: only for a Linux guest (add --guest {LINUX_GUEST})",
            linux_flags.join(", ")
        ));
    }
    Ok(())
}

pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let command = match args.next() {
        None | Some("help" | "--help" | "-h") => return Ok(Command::Help),
        Some(c) => c,
    };
    let mut run = RunArgs::default();
    let mut test = TestArgs::default();
    let mut bench = BenchArgs::default();
    let mut release = false;
    let mut usb_device = None;
    let (mut usb_yes, mut usb_force, mut usb_max_gib) = (false, false, None);
    let mut usb_firmware = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        match (command, flag) {
            (_, "--help" | "-h") => return Ok(Command::Help),
            ("build" | "run" | "test" | "bench" | "usb", "--release") if inline.is_none() => {
                release = true
            }
            ("bench", "--workload") => {
                bench.workload = Some(value(flag, inline, &mut args)?.to_string())
            }
            ("bench", "--policy") => {
                let v = value(flag, inline, &mut args)?;
                if hypervisor::coalesce::block::Extent::parse(v).is_none() {
                    return err(format!("--policy: unknown extent policy '{v}'"));
                }
                bench.policy = Some(v.to_string());
            }
            ("bench", "--exit-cost") => {
                let v = value(flag, inline, &mut args)?;
                bench.exit_cost = match v.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => return err(format!("--exit-cost: expected cycles, got '{v}'")),
                }
            }
            ("bench", "--emulate-cost") => {
                let v = value(flag, inline, &mut args)?;
                bench.emulate_cost = match v.parse::<u64>() {
                    Ok(n) => n,
                    _ => return err(format!("--emulate-cost: expected cycles, got '{v}'")),
                }
            }
            ("bench", "--quick") if inline.is_none() => bench.quick = true,
            ("bench", "--no-micro") if inline.is_none() => bench.no_micro = true,
            ("run", "--emulator") => {
                run.emulator = match value(flag, inline, &mut args)? {
                    "auto" => Emulator::Auto,
                    "qemu" => Emulator::Qemu,
                    "bochs" => Emulator::Bochs,
                    v => {
                        return err(format!(
                            "--emulator: expected auto, qemu or bochs, got '{v}'"
                        ))
                    }
                }
            }
            ("usb", "--device") => usb_device = Some(value(flag, inline, &mut args)?.to_string()),
            ("usb", "--yes") if inline.is_none() => usb_yes = true,
            ("usb", "--force") if inline.is_none() => usb_force = true,
            ("usb", "--max-size") => {
                let v = value(flag, inline, &mut args)?;
                usb_max_gib = match v.parse::<u64>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => return err(format!("--max-size: expected a size in GiB, got '{v}'")),
                }
            }
            ("run" | "usb", "--firmware") => {
                run.firmware = match value(flag, inline, &mut args)? {
                    "bios" => Firmware::Bios,
                    "uefi" => Firmware::Uefi,
                    v => return err(format!("--firmware: expected bios or uefi, got '{v}'")),
                };
                usb_firmware = Some(run.firmware);
            }
            ("run", "--cpu") => run.cpu = Some(value(flag, inline, &mut args)?.to_string()),
            ("run", "--timeout") => {
                let v = value(flag, inline, &mut args)?;
                run.timeout_s = match v.parse::<u64>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return err(format!(
                            "--timeout: expected a number of seconds, got '{v}'"
                        ))
                    }
                }
            }
            ("run" | "usb", "--guest") => {
                run.guest = Some(value(flag, inline, &mut args)?.to_string())
            }
            ("run" | "usb", "--entry") => {
                run.entry = Some(value(flag, inline, &mut args)?.to_string())
            }
            ("run" | "usb", "--arg") => {
                let v = value(flag, inline, &mut args)?;
                let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => v.parse::<u64>().ok(),
                };
                run.arg = match n {
                    Some(n) => Some(n),
                    None => return err(format!("--arg: expected a number, got '{v}'")),
                }
            }
            ("run" | "usb", "--ram") => {
                let v = value(flag, inline, &mut args)?;
                run.ram_mib = match v.parse::<u32>() {
                    Ok(n) => Some(n),
                    _ => return err(format!("--ram: expected a size in MiB, got '{v}'")),
                }
            }
            ("run" | "usb", "--kernel") => {
                run.linux.kernel = Some(value(flag, inline, &mut args)?.to_string())
            }
            ("run" | "usb", "--initrd") => {
                run.linux.initrd = Some(value(flag, inline, &mut args)?.to_string())
            }
            ("run" | "usb", "--cmdline") => {
                // May be empty (`--cmdline=` or `--cmdline ""`) and may contain spaces
                // (one shell word).
                run.linux.cmdline = match inline.or_else(|| args.next()) {
                    Some(v) => Some(v.to_string()),
                    None => return err("--cmdline needs a value"),
                }
            }
            ("test", "--host-only") if inline.is_none() => test.host_only = true,
            ("test", "--filter") => test.filter = Some(value(flag, inline, &mut args)?.to_string()),
            ("run" | "usb", f) if run.coalesce.take(f, inline, &mut args)? => {}
            ("test", f) if test.coalesce.take(f, inline, &mut args)? => {}
            ("build" | "run" | "test" | "bench" | "usb", _) => {
                return err(format!("unknown option '{arg}' for '{command}'"))
            }
            _ => return err(format!("unknown command '{command}'")),
        }
    }
    match command {
        "build" => Ok(Command::Build { release }),
        "run" => {
            linux_flags_need_linux(&run)?;
            run.release = release;
            Ok(Command::Run(run))
        }
        "usb" => {
            let Some(device) = usb_device else {
                return err(
                    "usb: --device PATH is required (the whole disk, e.g. /dev/sdb, or a file)",
                );
            };
            linux_flags_need_linux(&run)?;
            run.release = release;
            Ok(Command::Usb(UsbArgs {
                device,
                firmware: usb_firmware.unwrap_or(Firmware::Uefi),
                yes: usb_yes,
                force: usb_force,
                max_size_gib: usb_max_gib.unwrap_or(crate::usb::MAX_SIZE_GIB_DEFAULT),
                run,
            }))
        }
        "test" => {
            test.release = release;
            Ok(Command::Test(test))
        }
        "bench" => {
            bench.release = release;
            Ok(Command::Bench(bench))
        }
        _ => err(format!("unknown command '{command}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, UsageError> {
        parse(s.split_whitespace())
    }

    #[test]
    fn no_command_or_help_prints_usage() {
        assert_eq!(p(""), Ok(Command::Help));
        assert_eq!(p("help"), Ok(Command::Help));
        assert_eq!(p("run --help"), Ok(Command::Help));
    }

    #[test]
    fn run_defaults_to_auto_bios() {
        assert_eq!(p("run"), Ok(Command::Run(RunArgs::default())));
    }

    #[test]
    fn run_takes_every_option_in_both_spellings() {
        let want = RunArgs {
            release: true,
            emulator: Emulator::Qemu,
            firmware: Firmware::Uefi,
            cpu: Some("host".into()),
            timeout_s: 30,
            guest: None,
            entry: None,
            ram_mib: None,
            arg: None,
            coalesce: CoalesceArgs::default(),
            linux: LinuxArgs::default(),
        };
        assert_eq!(
            p("run --release --emulator qemu --firmware uefi --cpu host --timeout 30"),
            Ok(Command::Run(want.clone()))
        );
        assert_eq!(
            p("run --emulator=qemu --firmware=uefi --cpu=host --timeout=30 --release"),
            Ok(Command::Run(want))
        );
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        let e = p("run --emulator vmware").unwrap_err();
        assert!(e.0.contains("--emulator") && e.0.contains("vmware"), "{e}");
        assert!(p("run --firmware coreboot")
            .unwrap_err()
            .0
            .contains("--firmware"));
        assert!(p("run --timeout soon").unwrap_err().0.contains("--timeout"));
        assert!(p("run --timeout 0").is_err());
        assert!(p("run --cpu").unwrap_err().0.contains("needs a value"));
        assert!(p("run --cpu --release")
            .unwrap_err()
            .0
            .contains("needs a value"));
    }

    #[test]
    fn unknown_commands_and_options_are_rejected() {
        assert!(p("frobnicate")
            .unwrap_err()
            .0
            .contains("unknown command 'frobnicate'"));
        assert!(p("build --emulator qemu")
            .unwrap_err()
            .0
            .contains("unknown option"));
        assert!(p("test --cpu x").unwrap_err().0.contains("unknown option"));
        assert!(p("run --release=yes")
            .unwrap_err()
            .0
            .contains("unknown option"));
    }

    #[test]
    fn run_takes_a_guest_entry_and_ram() {
        let Ok(Command::Run(r)) = p("run --guest boot.bin --entry real:0x7c00 --ram 32") else {
            panic!("expected run");
        };
        assert_eq!(r.guest.as_deref(), Some("boot.bin"));
        assert_eq!(r.entry.as_deref(), Some("real:0x7c00"));
        assert_eq!(r.ram_mib, Some(32));
        assert!(p("run --ram lots").unwrap_err().0.contains("--ram"));
        let Ok(Command::Run(r)) = p("run --arg 0x105") else {
            panic!("expected run");
        };
        assert_eq!(r.arg, Some(0x105));
        assert!(p("run --arg five").unwrap_err().0.contains("--arg"));
        assert!(p("run --guest").unwrap_err().0.contains("needs a value"));
    }

    #[test]
    fn coalescing_flags_for_run_and_test() {
        let Ok(Command::Run(r)) = p(
            "run --coalesce off --extent bytes:32 --max-insns 16 --max-string 100 --max-quiet 0 --lost-ticks discard",
        ) else {
            panic!("expected run");
        };
        assert_eq!(
            r.coalesce,
            CoalesceArgs {
                coalesce: Some(false),
                extent: Some("bytes:32".into()),
                max_insns: Some(16),
                max_string: Some(100),
                max_quiet: Some(0),
                lost_ticks: Some(hypervisor::machine::LostTicks::Discard),
            }
        );
        assert!(p("run --lost-ticks catch-up")
            .unwrap_err()
            .0
            .contains("expected delay or discard"));
        let Ok(Command::Test(t)) = p("test --coalesce=on --extent=page") else {
            panic!("expected test");
        };
        assert_eq!(t.coalesce.coalesce, Some(true));
        assert!(p("run --coalesce maybe")
            .unwrap_err()
            .0
            .contains("--coalesce"));
        assert!(p("run --extent galaxy")
            .unwrap_err()
            .0
            .contains("unknown policy 'galaxy'"));
        assert!(p("run --max-insns 0").unwrap_err().0.contains("1..=4096"));
        assert!(p("run --max-quiet 5000")
            .unwrap_err()
            .0
            .contains("0..=4096"));
        assert!(p("test --max-string x")
            .unwrap_err()
            .0
            .contains("--max-string"));
        assert!(p("build --coalesce on")
            .unwrap_err()
            .0
            .contains("unknown option"));
    }

    #[test]
    fn bench_options() {
        assert_eq!(p("bench"), Ok(Command::Bench(BenchArgs::default())));
        let Ok(Command::Bench(b)) = p(
            "bench --workload pic-init --policy line --exit-cost 5000 --quick --no-micro --release",
        ) else {
            panic!("expected bench");
        };
        assert_eq!(
            b,
            BenchArgs {
                release: true,
                workload: Some("pic-init".into()),
                policy: Some("line".into()),
                exit_cost: 5000,
                emulate_cost: 60,
                quick: true,
                no_micro: true
            }
        );
        assert!(p("bench --policy nowhere")
            .unwrap_err()
            .0
            .contains("--policy"));
        assert!(p("bench --exit-cost 0")
            .unwrap_err()
            .0
            .contains("--exit-cost"));
        assert!(p("bench --coalesce on")
            .unwrap_err()
            .0
            .contains("unknown option"));
    }

    #[test]
    fn usb_needs_a_device_and_defaults_to_uefi() {
        assert!(p("usb")
            .unwrap_err()
            .0
            .contains("--device PATH is required"));
        let Ok(Command::Usb(u)) = p("usb --device /dev/sdb") else {
            panic!("expected usb");
        };
        assert_eq!(u.device, "/dev/sdb");
        assert_eq!(u.firmware, Firmware::Uefi);
        assert!(!u.yes && !u.force);
        assert_eq!(u.max_size_gib, crate::usb::MAX_SIZE_GIB_DEFAULT);
        assert_eq!(u.run, RunArgs::default());
    }

    #[test]
    fn usb_takes_guest_and_safety_flags() {
        let Ok(Command::Usb(u)) = p(
            "usb --device=stick.img --firmware bios --yes --force --max-size 256 --release \
             --guest bench64 --arg 3 --ram 128 --coalesce off",
        ) else {
            panic!("expected usb");
        };
        assert_eq!(u.firmware, Firmware::Bios);
        assert!(u.yes && u.force && u.run.release);
        assert_eq!(u.max_size_gib, 256);
        assert_eq!(u.run.guest.as_deref(), Some("bench64"));
        assert_eq!((u.run.arg, u.run.ram_mib), (Some(3), Some(128)));
        assert_eq!(u.run.coalesce.coalesce, Some(false));
        assert!(p("usb --device x --max-size 0")
            .unwrap_err()
            .0
            .contains("--max-size"));
        assert!(p("usb --device x --emulator qemu")
            .unwrap_err()
            .0
            .contains("unknown option"));
        assert!(p("usb --device x --kernel bz")
            .unwrap_err()
            .0
            .contains("only for a Linux guest"));
        assert!(p("run --device x")
            .unwrap_err()
            .0
            .contains("unknown option"));
    }

    #[test]
    fn linux_flags_need_the_linux_guest() {
        let Ok(Command::Run(r)) = parse([
            "run",
            "--guest",
            "linux",
            "--kernel",
            "bzImage",
            "--initrd=rd.cpio",
            "--cmdline",
            "console=ttyS0 quiet",
        ]) else {
            panic!("expected run");
        };
        assert_eq!(
            r.linux,
            LinuxArgs {
                kernel: Some("bzImage".into()),
                initrd: Some("rd.cpio".into()),
                cmdline: Some("console=ttyS0 quiet".into()),
            }
        );
        let Ok(Command::Run(r)) = p("run --guest linux --cmdline=") else {
            panic!("expected run");
        };
        assert_eq!(r.linux.cmdline.as_deref(), Some(""));
        assert_eq!(
            p("run --guest linux"),
            Ok(Command::Run(RunArgs {
                guest: Some("linux".into()),
                ..RunArgs::default()
            }))
        );
        let e = p("run --kernel bzImage --initrd rd").unwrap_err();
        assert!(
            e.0.contains("--kernel, --initrd: only for a Linux guest")
                && e.0.contains("--guest linux"),
            "{e}"
        );
        assert!(p("run --guest hello64 --cmdline=x")
            .unwrap_err()
            .0
            .contains("--cmdline"));
        assert!(p("run --guest linux --kernel")
            .unwrap_err()
            .0
            .contains("needs a value"));
        assert!(p("run --guest linux --cmdline")
            .unwrap_err()
            .0
            .contains("needs a value"));
        assert!(p("test --kernel x")
            .unwrap_err()
            .0
            .contains("unknown option"));
    }

    #[test]
    fn test_options() {
        assert_eq!(
            p("test --release --host-only --filter qemu"),
            Ok(Command::Test(TestArgs {
                release: true,
                host_only: true,
                filter: Some("qemu".into()),
                coalesce: CoalesceArgs::default(),
            }))
        );
        assert_eq!(p("build --release"), Ok(Command::Build { release: true }));
    }
}
