//! Command-line parsing for `cargo xtask`, declared with clap's derive: the help text is
//! the doc comments below, so it cannot drift from the flags. Strict: an unknown
//! command, an unknown flag or a bad value is a usage error naming it (exit status 2).
//!
//! The parser's own structs (`Cli`, `Sub`, `RunCli`, `UsbCli`, `GuestArgs`) follow the
//! command line; `parse` turns them into the types the rest of xtask uses.

use std::ffi::OsString;
use std::ops::RangeInclusive;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// `--guest linux`: the Linux guest (`--kernel`, `--initrd`, `--cmdline`).
pub const LINUX_GUEST: &str = "linux";
/// `usb --max-size`: the largest disk written without `--force`, in GiB.
pub const MAX_SIZE_GIB_DEFAULT: u64 = 64;
pub use crate::image::Firmware;

/// `--timeout`: seconds of console silence after which a run is reported hung.
pub const TIMEOUT_S_DEFAULT: u64 = crate::emulator::SILENCE_DEFAULT.as_secs();
/// `--max-time`: the overall cap of a run, in seconds.
pub const MAX_TIME_S_DEFAULT: u64 = crate::emulator::MAX_TIME_DEFAULT.as_secs();
/// `--exit-cost`: cycles of one exit round trip on bare-metal Intel (about 2,000 for a
/// port-IO exit handled in the kernel, kvm-unit-tests `outl_to_kernel`).
pub const EXIT_COST_DEFAULT: u64 = 2000;
/// `--emulate-cost`: the cache-hit cost per instruction the micro-benchmark measures.
pub const EMULATE_COST_DEFAULT: u64 = 60;

/// The commands `cargo xtask help COMMAND` describes (every command but help itself).
const COMMANDS: [&str; 5] = ["build", "run", "test", "usb", "bench"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emulator {
    /// QEMU with KVM on an Intel host with nested VMX, otherwise Bochs
    Auto,
    /// QEMU: with KVM when the host has nested VMX, else TCG (which has no VMX)
    Qemu,
    /// Bochs, which emulates VMX with EPT
    Bochs,
}

/// Coalescing (and timer) flags of run, test and usb; `None` keeps the run
/// configuration's default.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "Coalescing and timer options")]
pub struct CoalesceArgs {
    /// Emulate each IO burst in one exit (on, the default) or take one exit per IO
    /// instruction, as other hypervisors do (off)
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub coalesce: Option<bool>,
    /// Where the scan for a burst may look (the policies are listed below)
    #[arg(long, value_name = "POLICY", value_parser = extent_policy)]
    pub extent: Option<String>,
    /// Instructions emulated per exit at most (1..=4096, default 256)
    #[arg(long, value_name = "N", value_parser = in_range(hypervisor::config::COALESCE_MAX_INSNS_RANGE))]
    pub max_insns: Option<u32>,
    /// String-IO elements per exit at most (1..=65536, default 4096)
    #[arg(long, value_name = "N", value_parser = in_range(hypervisor::config::COALESCE_MAX_STRING_RANGE))]
    pub max_string: Option<u32>,
    /// Instructions emulated after the last IO instruction of an exit at most (0..=4096,
    /// default 48)
    #[arg(long, value_name = "N", value_parser = in_range(hypervisor::config::COALESCE_MAX_QUIET_RANGE))]
    pub max_quiet: Option<u32>,
    /// A PIT tick that finds the last one not yet taken: raised again once the guest has
    /// handled that one (delay: the default for --guest linux, whose clock counts ticks)
    /// or dropped as on hardware (discard: the default otherwise)
    #[arg(long, value_name = "delay|discard", value_parser = lost_ticks)]
    pub lost_ticks: Option<hypervisor::devices::board::LostTicks>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub release: bool,
    pub emulator: Emulator,
    pub firmware: Firmware,
    pub cpu: Option<String>,
    /// Seconds of console silence after which the run is reported hung.
    pub timeout_s: u64,
    /// The overall cap of the run, in seconds, however busy its console.
    pub max_time_s: u64,
    pub guest: Option<String>,
    pub entry: Option<String>,
    pub ram_mib: Option<u32>,
    pub arg: Option<u64>,
    pub coalesce: CoalesceArgs,
    pub linux: LinuxArgs,
}

/// `--kernel`, `--initrd`, `--cmdline`: the parts of a Linux guest (`--guest linux`);
/// `None` takes the default (see `linux.rs`).
#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "Linux options (with --guest linux only)")]
pub struct LinuxArgs {
    /// A bzImage (boot protocol 2.12+ with the 64-bit entry); default: Debian's stock
    /// kernel (the package behind linux-image-amd64), downloaded once into target/linux/
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    pub kernel: Option<String>,
    /// An initramfs (cpio, optionally compressed); default: a generated busybox initramfs
    /// whose /init prints the kernel version, /proc/interrupts and the serial ports, then
    /// powers off
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    pub initrd: Option<String>,
    /// The kernel command line, one shell word, passed on as given (may be empty); default
    /// "console=ttyS0 acpi=off pci=off nolapic noapic": serial console, no ACPI/PCI/APIC,
    /// so the kernel needs only the UART, the PIT and the 8259 PIC sluice emulates
    // A command line is the kernel's business, so it is taken whole even when it starts
    // with a dash.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
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
            timeout_s: TIMEOUT_S_DEFAULT,
            max_time_s: MAX_TIME_S_DEFAULT,
            guest: None,
            entry: None,
            ram_mib: None,
            arg: None,
            coalesce: CoalesceArgs::default(),
            linux: LinuxArgs::default(),
        }
    }
}

#[derive(Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TestArgs {
    /// Build the kernel and the guests with optimizations
    #[arg(long)]
    pub release: bool,
    /// The host unit tests only, no end-to-end boots
    #[arg(long)]
    pub host_only: bool,
    /// Only the end-to-end cases whose name contains TEXT
    #[arg(long, value_name = "TEXT", value_parser = NonEmptyStringValueParser::new())]
    pub filter: Option<String>,
    // Applies to every end-to-end case that does not set coalescing itself.
    #[command(flatten)]
    pub coalesce: CoalesceArgs,
}

#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct BenchArgs {
    /// Optimized kernel and guests
    #[arg(long)]
    pub release: bool,
    /// One workload only (see guest/README.md)
    #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    pub workload: Option<String>,
    /// Coalescing off against this extent policy only (the policies are listed below)
    #[arg(long, value_name = "POLICY", value_parser = extent_policy)]
    pub policy: Option<String>,
    /// Modeled cost of one exit round trip
    #[arg(long, value_name = "CYCLES", default_value_t = EXIT_COST_DEFAULT, value_parser = positive)]
    pub exit_cost: u64,
    /// Modeled cost of one emulated instruction (the default is the cache-hit cost the
    /// micro-benchmark measures)
    #[arg(long, value_name = "CYCLES", default_value_t = EMULATE_COST_DEFAULT)]
    pub emulate_cost: u64,
    /// One iteration per workload (of bench-real only fw-post, which runs the others),
    /// no Linux boot, short micro-benchmark
    #[arg(long)]
    pub quick: bool,
    /// Skip the host micro-benchmark
    #[arg(long)]
    pub no_micro: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            release: false,
            workload: None,
            policy: None,
            exit_cost: EXIT_COST_DEFAULT,
            emulate_cost: EMULATE_COST_DEFAULT,
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
    /// Guest, RAM, Linux and coalescing choices (the emulator fields keep run's defaults
    /// and are unused).
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

/// Build, run, test and benchmark sluice, a type-1 hypervisor for Intel VMX, or write it
/// to a USB stick
#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    no_binary_name = true,
    disable_help_subcommand = true,
    // A flag given twice takes its last value, as `cargo xtask` always did.
    args_override_self = true,
    after_help = top_after_help(),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Build the kernel and the BIOS and UEFI disk images
    /// (target/sluice/<profile>/sluice-{bios,uefi}.img)
    Build(BuildArgs),
    /// Boot sluice with its default guest (or --guest) and stream its console; the exit
    /// status is the run's status
    #[command(after_help = extent_policies("--extent"))]
    Run(RunCli),
    /// Host unit tests, then end-to-end boots in Bochs and QEMU
    #[command(after_help = extent_policies("--extent"))]
    Test(TestArgs),
    /// Write a bootable image for a real Intel PC to a USB stick (or to a file); see
    /// docs/HARDWARE.md
    #[command(after_help = extent_policies("--extent"))]
    Usb(UsbCli),
    /// The exit-reduction report: every workload of the bench64 and bench-real guests in
    /// Bochs, coalescing off and on per extent policy, plus the host micro-benchmark of
    /// the coalescer; writes results/bench.json and results/bench.svg
    #[command(after_help = extent_policies("--policy"))]
    Bench(BenchArgs),
    /// This text, or the options of one command
    Help(HelpArgs),
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// Build with optimizations
    #[arg(long)]
    release: bool,
}

#[derive(Args, Debug)]
struct RunCli {
    /// Build with optimizations
    #[arg(long)]
    release: bool,
    /// The emulator to boot in
    #[arg(long, value_enum, default_value_t = Emulator::Auto)]
    emulator: Emulator,
    /// Boot firmware: Bochs's BIOS or OVMF in Bochs, SeaBIOS or OVMF in QEMU
    #[arg(long, value_enum, default_value_t = Firmware::Bios)]
    firmware: Firmware,
    /// Bochs CPU model (default corei7_skylake_x) or QEMU -cpu value
    #[arg(long, value_name = "MODEL", value_parser = NonEmptyStringValueParser::new())]
    cpu: Option<String>,
    /// Report a hang when the console has been silent this long
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = TIMEOUT_S_DEFAULT, value_parser = positive)]
    timeout_s: u64,
    /// Stop the run after this long however busy its console (the overall cap of a run)
    #[arg(long = "max-time", value_name = "SECONDS", default_value_t = MAX_TIME_S_DEFAULT, value_parser = positive)]
    max_time_s: u64,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    coalesce: CoalesceArgs,
}

#[derive(Args, Debug)]
struct UsbCli {
    /// The whole disk to write (/dev/sdX) or an image file
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    device: String,
    /// Which image to write (uefi: every PC since ~2012)
    #[arg(long, value_enum, default_value_t = Firmware::Uefi)]
    firmware: Firmware,
    /// Do not ask before erasing the device
    #[arg(long)]
    yes: bool,
    /// Write a disk that does not look removable or is larger than --max-size (mounted
    /// disks, partitions and the disk of the running system are always refused)
    #[arg(long)]
    force: bool,
    /// Largest disk written without --force
    #[arg(long = "max-size", value_name = "GIB", default_value_t = MAX_SIZE_GIB_DEFAULT, value_parser = positive)]
    max_size_gib: u64,
    /// Build with optimizations
    #[arg(long)]
    release: bool,
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    coalesce: CoalesceArgs,
}

/// The guest flags of run and usb.
#[derive(Args, Debug)]
#[command(next_help_heading = "Guest options")]
struct GuestArgs {
    /// The guest to run: a built-in test guest (see guest/README.md), `linux` (an
    /// unmodified Linux kernel, options below) or a file (ELF64, boot sector, flat binary,
    /// firmware image); default: the demo guest hello64
    #[arg(long, value_name = "NAME|PATH", value_parser = NonEmptyStringValueParser::new())]
    guest: Option<String>,
    /// How to start a guest file: elf64 | real:SEG:OFF | real:ADDR | firmware (reset
    /// vector F000:FFF0, image ending at 1 MiB and at 4 GiB) | linux (a kernel bundle);
    /// ELF files default to elf64
    #[arg(long, value_name = "MODE", value_parser = NonEmptyStringValueParser::new())]
    entry: Option<String>,
    /// Guest RAM in MiB (16..=4096, default 64; Linux: default 256, at least 128)
    #[arg(long = "ram", value_name = "MIB")]
    ram_mib: Option<u32>,
    /// A number handed to the guest in RDI (decimal or 0x hex)
    #[arg(long, value_name = "N", value_parser = number)]
    arg: Option<u64>,
    #[command(flatten)]
    linux: LinuxArgs,
}

impl GuestArgs {
    /// `--kernel`/`--initrd`/`--cmdline` make sense only with `--guest linux`.
    fn check(&self, command: &str) -> Result<(), clap::Error> {
        let linux_flags = self.linux.given();
        if !linux_flags.is_empty() && self.guest.as_deref() != Some(LINUX_GUEST) {
            return Err(usage_error(
                command,
                format!(
                    "{}: only for a Linux guest (add --guest {LINUX_GUEST})",
                    linux_flags.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The run arguments these guest flags describe, the others at run's defaults.
    fn into_run(self, release: bool, coalesce: CoalesceArgs) -> RunArgs {
        RunArgs {
            release,
            guest: self.guest,
            entry: self.entry,
            ram_mib: self.ram_mib,
            arg: self.arg,
            coalesce,
            linux: self.linux,
            ..RunArgs::default()
        }
    }
}

#[derive(Args, Debug)]
struct HelpArgs {
    /// The command whose options to print
    #[arg(value_name = "COMMAND", value_parser = COMMANDS)]
    command: Option<String>,
}

/// The extent policies, after the options of every command that takes one (`flags`:
/// the flags that take a policy).
fn extent_policies(flags: &str) -> String {
    // Indented here, line by line: `Extent::HELP`'s first line has lost its indentation
    // to the string continuation it starts with.
    let lines: Vec<String> = hypervisor::coalesce::block::Extent::HELP
        .lines()
        .map(|line| format!("  {}", line.trim_start()))
        .collect();
    format!("Extent policies ({flags}):\n{}", lines.join("\n"))
}

fn top_after_help() -> String {
    format!(
        "The options of a command: cargo xtask help COMMAND (or cargo xtask COMMAND --help).\n\n{}",
        extent_policies("--extent of run, test and usb; --policy of bench")
    )
}

/// Prints the help of `cargo xtask` and `cargo xtask help` to stdout, the text and
/// colours of `cargo xtask --help`.
pub fn print_help() -> Result<(), String> {
    Cli::command()
        .print_help()
        .map_err(|e| format!("writing the help: {e}"))
}

/// A usage error of `command` found after clap's parse, formatted like clap's own
/// (message, that command's usage line, status 2).
fn usage_error(command: &str, message: String) -> clap::Error {
    let mut cli = Cli::command();
    // Building gives the subcommand its full name (`cargo xtask run`) for the usage line.
    cli.build();
    cli.find_subcommand_mut(command)
        .expect("a command of Cli")
        .error(ErrorKind::ArgumentConflict, message)
}

/// Parses the arguments after the program name. The error is either a usage error
/// (printed to stderr, exit status 2) or the help `--help` or `help COMMAND` asked for
/// (stdout, status 0): `clap::Error::use_stderr` tells them apart, `print` prints either.
pub fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    Ok(match cli.command {
        None | Some(Sub::Help(HelpArgs { command: None })) => Command::Help,
        Some(Sub::Help(HelpArgs { command: Some(c) })) => {
            // clap renders a command's help, colours and terminal width included, as the
            // outcome of its --help.
            return Err(
                Cli::try_parse_from([c.as_str(), "--help"]).expect_err("--help ends every parse")
            );
        }
        Some(Sub::Build(b)) => Command::Build { release: b.release },
        Some(Sub::Run(r)) => {
            r.guest.check("run")?;
            Command::Run(RunArgs {
                emulator: r.emulator,
                firmware: r.firmware,
                cpu: r.cpu,
                timeout_s: r.timeout_s,
                max_time_s: r.max_time_s,
                ..r.guest.into_run(r.release, r.coalesce)
            })
        }
        Some(Sub::Usb(u)) => {
            u.guest.check("usb")?;
            Command::Usb(UsbArgs {
                device: u.device,
                firmware: u.firmware,
                yes: u.yes,
                force: u.force,
                max_size_gib: u.max_size_gib,
                run: u.guest.into_run(u.release, u.coalesce),
            })
        }
        Some(Sub::Test(t)) => Command::Test(t),
        Some(Sub::Bench(b)) => Command::Bench(b),
    })
}

// Value parsers: clap reports their error as "invalid value 'V' for '--flag <NAME>': ...".

fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected on or off".into()),
    }
}

fn extent_policy(v: &str) -> Result<String, String> {
    match hypervisor::coalesce::block::Extent::parse(v) {
        Some(_) => Ok(v.to_string()),
        None => Err("not an extent policy (see `cargo xtask help` for the policies)".into()),
    }
}

fn lost_ticks(v: &str) -> Result<hypervisor::devices::board::LostTicks, String> {
    hypervisor::devices::board::LostTicks::parse(v)
        .ok_or_else(|| "expected delay or discard".into())
}

/// A decimal number within `range` (one of `hypervisor::config::COALESCE_*_RANGE`).
fn in_range(
    range: RangeInclusive<u32>,
) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    move |v| match v.parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number in {}..={}",
            range.start(),
            range.end()
        )),
    }
}

/// A whole number greater than 0 (seconds, cycles, GiB).
fn positive(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number greater than 0".into()),
    }
}

/// A number in decimal or with a 0x prefix in hex.
fn number(v: &str) -> Result<u64, String> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse::<u64>(),
    }
    .map_err(|e| format!("expected a number in decimal or 0x hex ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, clap::Error> {
        parse(s.split_whitespace())
    }

    /// The text `print_help` prints.
    fn help() -> String {
        Cli::command().render_help().to_string()
    }

    /// The command `args` parse to.
    fn ok(args: &str) -> Command {
        p(args).unwrap_or_else(|e| panic!("{args}: {e}"))
    }

    /// The message of a usage error, which must end xtask with status 2 on stderr.
    fn usage(args: &str) -> String {
        let e = p(args).expect_err(args);
        assert_eq!(e.exit_code(), 2, "{args}: {e}");
        assert!(e.use_stderr(), "{args}: {e}");
        e.to_string()
    }

    /// Asserts `args` is a usage error whose message contains every one of `parts`.
    fn refused(args: &str, parts: &[&str]) {
        let msg = usage(args);
        for part in parts {
            assert!(msg.contains(part), "{args}: '{part}' not in: {msg}");
        }
    }

    /// The help text `args` asks for, which must end xtask with status 0 on stdout.
    fn help_of(args: &[&str]) -> String {
        let e = parse(args.iter().copied()).expect_err("help");
        assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}: {e}");
        assert_eq!(e.exit_code(), 0, "{args:?}");
        assert!(!e.use_stderr(), "{args:?}");
        e.to_string()
    }

    /// Asserts `help` lists every extent policy with its description, indented.
    fn lists_the_extent_policies(help: &str) {
        let policies = hypervisor::coalesce::block::Extent::HELP.lines();
        for line in policies {
            let want = format!("\n  {}\n", line.trim_start());
            assert!(
                help.contains(&want) || help.ends_with(want.trim_end()),
                "{want:?} not in:\n{help}"
            );
        }
    }

    #[test]
    fn clap_accepts_the_command_definition() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_or_help_prints_usage() {
        assert_eq!(ok(""), Command::Help);
        assert_eq!(ok("help"), Command::Help);
        let top = help();
        for command in COMMANDS {
            assert!(top.contains(command), "{command} missing from:\n{top}");
        }
        lists_the_extent_policies(&top);
        assert_eq!(help_of(&["--help"]), top);
        let run = help_of(&["run", "--help"]);
        assert!(
            run.contains("--max-time") && run.contains("--kernel"),
            "{run}"
        );
        lists_the_extent_policies(&run);
        lists_the_extent_policies(&help_of(&["bench", "--help"]));
        assert_eq!(help_of(&["help", "run"]), run);
        assert!(help_of(&["run", "-h"]).contains("--timeout"));
        assert!(help_of(&["usb", "--help"]).contains("--device"));
        refused("help frobnicate", &["frobnicate"]);
    }

    #[test]
    fn help_names_every_command() {
        let cli = Cli::command();
        let mut names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        names.sort_unstable();
        let mut want = COMMANDS.to_vec();
        want.push("help");
        want.sort_unstable();
        assert_eq!(names, want);
    }

    #[test]
    fn help_states_the_ranges_and_defaults_of_the_coalescing_limits() {
        use hypervisor::config as c;
        let d = c::Config::default();
        let mut cli = Cli::command();
        let run = cli.find_subcommand_mut("run").unwrap();
        for (flag, range, default) in [
            (
                "max_insns",
                c::COALESCE_MAX_INSNS_RANGE,
                d.coalesce_max_insns,
            ),
            (
                "max_string",
                c::COALESCE_MAX_STRING_RANGE,
                d.coalesce_max_string,
            ),
            (
                "max_quiet",
                c::COALESCE_MAX_QUIET_RANGE,
                d.coalesce_max_quiet,
            ),
        ] {
            let arg = run.get_arguments().find(|a| a.get_id() == flag).unwrap();
            let text = arg.get_help().unwrap().to_string();
            let want = format!("({}..={}, default {default})", range.start(), range.end());
            assert!(text.contains(&want), "{flag}: '{want}' not in '{text}'");
        }
    }

    #[test]
    fn run_defaults_to_auto_bios() {
        assert_eq!(ok("run"), Command::Run(RunArgs::default()));
        let r = RunArgs::default();
        assert_eq!((r.timeout_s, r.max_time_s), (120, 1800));
    }

    #[test]
    fn run_takes_every_option_in_both_spellings() {
        let want = RunArgs {
            release: true,
            emulator: Emulator::Qemu,
            firmware: Firmware::Uefi,
            cpu: Some("host".into()),
            timeout_s: 30,
            max_time_s: 600,
            guest: None,
            entry: None,
            ram_mib: None,
            arg: None,
            coalesce: CoalesceArgs::default(),
            linux: LinuxArgs::default(),
        };
        assert_eq!(ok("run --release --emulator qemu --firmware uefi --cpu host --timeout 30 --max-time 600"), Command::Run(want.clone()));
        assert_eq!(ok("run --emulator=qemu --firmware=uefi --cpu=host --timeout=30 --max-time=600 --release"), Command::Run(want));
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let Ok(Command::Run(r)) = p("run --timeout 5 --release --timeout=7 --release") else {
            panic!("expected run");
        };
        assert_eq!((r.timeout_s, r.release), (7, true));
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        refused("run --emulator vmware", &["--emulator", "vmware"]);
        refused("run --firmware coreboot", &["--firmware", "coreboot"]);
        refused("run --timeout soon", &["--timeout", "soon"]);
        refused("run --timeout 0", &["--timeout", "'0'"]);
        refused("run --max-time 0", &["--max-time", "'0'"]);
        refused("run --max-time=-5", &["--max-time", "'-5'"]);
        refused("run --max-time -5", &["'-5'"]);
        refused("run --cpu", &["--cpu", "a value is required"]);
        refused("run --cpu --release", &["--cpu", "a value is required"]);
        refused("run --cpu=", &["--cpu", "a value is required"]);
    }

    #[test]
    fn unknown_commands_and_options_are_rejected() {
        refused("frobnicate", &["unrecognized subcommand 'frobnicate'"]);
        refused(
            "build --emulator qemu",
            &["unexpected argument '--emulator'"],
        );
        refused("test --cpu x", &["unexpected argument '--cpu'"]);
        refused("run --release=yes", &["--release", "yes"]);
        refused("run --bogus", &["unexpected argument '--bogus'"]);
        refused("run stray", &["unexpected argument 'stray'"]);
    }

    #[test]
    fn run_takes_a_guest_entry_and_ram() {
        let Ok(Command::Run(r)) = p("run --guest boot.bin --entry real:0x7c00 --ram 32") else {
            panic!("expected run");
        };
        assert_eq!(r.guest.as_deref(), Some("boot.bin"));
        assert_eq!(r.entry.as_deref(), Some("real:0x7c00"));
        assert_eq!(r.ram_mib, Some(32));
        refused("run --ram lots", &["--ram", "lots"]);
        let Ok(Command::Run(r)) = p("run --arg 0x105") else {
            panic!("expected run");
        };
        assert_eq!(r.arg, Some(0x105));
        let Ok(Command::Run(r)) = p("run --arg=261") else {
            panic!("expected run");
        };
        assert_eq!(r.arg, Some(261));
        refused("run --arg five", &["--arg", "five"]);
        refused("run --arg 0xfg", &["--arg", "0xfg"]);
        refused("run --guest", &["--guest", "a value is required"]);
        refused("run --guest=", &["--guest", "a value is required"]);
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
                lost_ticks: Some(hypervisor::devices::board::LostTicks::Discard),
            }
        );
        let Ok(Command::Run(r)) = p("run --lost-ticks=delay") else {
            panic!("expected run");
        };
        assert_eq!(
            r.coalesce.lost_ticks,
            Some(hypervisor::devices::board::LostTicks::Delay)
        );
        refused(
            "run --lost-ticks catch-up",
            &["--lost-ticks", "catch-up", "expected delay or discard"],
        );
        let Ok(Command::Test(t)) = p("test --coalesce=on --extent=page") else {
            panic!("expected test");
        };
        assert_eq!(t.coalesce.coalesce, Some(true));
        assert_eq!(t.coalesce.extent.as_deref(), Some("page"));
        refused("run --coalesce maybe", &["--coalesce", "maybe"]);
        refused(
            "run --extent galaxy",
            &["--extent", "galaxy", "not an extent policy"],
        );
        refused("run --max-insns 0", &["--max-insns", "1..=4096"]);
        refused("run --max-insns 4097", &["--max-insns", "1..=4096"]);
        refused("run --max-quiet 5000", &["--max-quiet", "0..=4096"]);
        refused("test --max-string x", &["--max-string", "1..=65536"]);
        refused("build --coalesce on", &["unexpected argument '--coalesce'"]);
    }

    #[test]
    fn bench_options() {
        assert_eq!(ok("bench"), Command::Bench(BenchArgs::default()));
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
        let Ok(Command::Bench(b)) = p("bench --emulate-cost=0 --policy=insns:8") else {
            panic!("expected bench");
        };
        assert_eq!((b.emulate_cost, b.policy.as_deref()), (0, Some("insns:8")));
        refused("bench --policy nowhere", &["--policy", "nowhere"]);
        refused("bench --exit-cost 0", &["--exit-cost", "'0'"]);
        refused("bench --emulate-cost lots", &["--emulate-cost", "lots"]);
        refused("bench --coalesce on", &["unexpected argument '--coalesce'"]);
    }

    #[test]
    fn usb_needs_a_device_and_defaults_to_uefi() {
        refused("usb", &["required", "--device <PATH>"]);
        let Ok(Command::Usb(u)) = p("usb --device /dev/sdb") else {
            panic!("expected usb");
        };
        assert_eq!(u.device, "/dev/sdb");
        assert_eq!(u.firmware, Firmware::Uefi);
        assert!(!u.yes && !u.force);
        assert_eq!(u.max_size_gib, MAX_SIZE_GIB_DEFAULT);
        assert_eq!(u.run, RunArgs::default());
    }

    #[test]
    fn usb_takes_guest_and_safety_flags() {
        let Ok(Command::Usb(u)) = p(
            "usb --device=stick.img --firmware bios --yes --force --max-size 256 --release \
             --guest bench64 --entry elf64 --arg 3 --ram 128 --coalesce off",
        ) else {
            panic!("expected usb");
        };
        assert_eq!(u.firmware, Firmware::Bios);
        assert!(u.yes && u.force && u.run.release);
        assert_eq!(u.max_size_gib, 256);
        assert_eq!(u.run.guest.as_deref(), Some("bench64"));
        assert_eq!(u.run.entry.as_deref(), Some("elf64"));
        assert_eq!((u.run.arg, u.run.ram_mib), (Some(3), Some(128)));
        assert_eq!(u.run.coalesce.coalesce, Some(false));
        let Ok(Command::Usb(u)) = p("usb --device x --guest linux --kernel bz") else {
            panic!("expected usb");
        };
        assert_eq!(u.run.linux.kernel.as_deref(), Some("bz"));
        refused("usb --device x --max-size 0", &["--max-size", "'0'"]);
        refused(
            "usb --device x --emulator qemu",
            &["unexpected argument '--emulator'"],
        );
        refused(
            "usb --device x --timeout 5",
            &["unexpected argument '--timeout'"],
        );
        refused(
            "usb --device x --kernel bz",
            &["--kernel: only for a Linux guest", "cargo xtask usb"],
        );
        refused("run --device x", &["unexpected argument '--device'"]);
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
        let Ok(Command::Run(r)) = parse(["run", "--guest", "linux", "--cmdline", ""]) else {
            panic!("expected run");
        };
        assert_eq!(r.linux.cmdline.as_deref(), Some(""));
        let Ok(Command::Run(r)) = parse(["run", "--guest=linux", "--cmdline", "-v quiet"]) else {
            panic!("expected run");
        };
        assert_eq!(r.linux.cmdline.as_deref(), Some("-v quiet"));
        assert_eq!(
            ok("run --guest linux"),
            Command::Run(RunArgs {
                guest: Some("linux".into()),
                ..RunArgs::default()
            })
        );
        refused(
            "run --kernel bzImage --initrd rd",
            &[
                "--kernel, --initrd: only for a Linux guest",
                "--guest linux",
                "cargo xtask run",
            ],
        );
        refused("run --guest hello64 --cmdline=x", &["--cmdline"]);
        refused(
            "run --guest linux --kernel",
            &["--kernel", "a value is required"],
        );
        refused(
            "run --guest linux --cmdline",
            &["--cmdline", "a value is required"],
        );
        refused("test --kernel x", &["unexpected argument '--kernel'"]);
    }

    #[test]
    fn bochs_with_uefi_is_accepted() {
        let Ok(Command::Run(r)) = p("run --emulator bochs --firmware uefi") else {
            panic!("expected run");
        };
        assert_eq!((r.emulator, r.firmware), (Emulator::Bochs, Firmware::Uefi));
    }

    #[test]
    fn test_options() {
        assert_eq!(
            ok("test --release --host-only --filter qemu"),
            Command::Test(TestArgs {
                release: true,
                host_only: true,
                filter: Some("qemu".into()),
                coalesce: CoalesceArgs::default(),
            })
        );
        assert_eq!(ok("test"), Command::Test(TestArgs::default()));
        assert_eq!(ok("build --release"), Command::Build { release: true });
        assert_eq!(ok("build"), Command::Build { release: false });
    }
}
