//! `cargo xtask`: every sluice workflow (build, run, test) in one host tool.

mod bench;
mod cli;
mod e2e;
mod emulator;
mod guest_input;
mod guests;
mod host;
mod image;
mod linux;
mod run_config;
mod screen;
mod stats_line;
mod usb;

use std::process::ExitCode;
use std::time::Duration;

use cli::{Command, Emulator as EmulatorChoice, Firmware, RunArgs};
use emulator::{Emulator, Ending, Machine};
use hypervisor::config::Config;

fn main() -> ExitCode {
    emulator::catch_interrupts();
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            // Either a usage error (stderr, status 2) or the help --help asked for
            // (stdout, status 0).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match command {
        Command::Help => cli::print_help().map(|()| 0),
        Command::Build { release } => build(release).map(|_| 0),
        Command::Run(args) => run(&args),
        Command::Test(args) => e2e::test(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Usb(args) => usb::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn build(release: bool) -> Result<image::Images, String> {
    let kernel = image::build_kernel(release)?;
    let payload = image::payload_bytes(&Config::default(), &[]);
    let images = image::make_images(&kernel, &payload, &image::output_dir(release))?;
    println!("xtask: kernel  {}", kernel.display());
    println!("xtask: BIOS image {}", images.bios.display());
    println!("xtask: UEFI image {}", images.uefi.display());
    Ok(images)
}

fn choose_emulator(args: &RunArgs) -> Emulator {
    match args.emulator {
        EmulatorChoice::Bochs => Emulator::Bochs,
        EmulatorChoice::Qemu => match host::detect_nested_kvm() {
            host::NestedKvm::Available => Emulator::Qemu { kvm: true },
            host::NestedKvm::Unavailable(why) => {
                eprintln!("xtask: QEMU without KVM (TCG): {why}; TCG has no VMX, so sluice will report that");
                Emulator::Qemu { kvm: false }
            }
        },
        EmulatorChoice::Auto => match host::detect_nested_kvm() {
            host::NestedKvm::Available => {
                eprintln!(
                    "xtask: emulator: QEMU with KVM (the host has Intel VMX with nested KVM)"
                );
                Emulator::Qemu { kvm: true }
            }
            host::NestedKvm::Unavailable(why) => {
                let firmware = match args.firmware {
                    Firmware::Bios => "",
                    Firmware::Uefi => ", with OVMF",
                };
                eprintln!("xtask: emulator: Bochs{firmware}, which emulates VMX with EPT ({why})");
                Emulator::Bochs
            }
        },
    }
}

fn run(args: &RunArgs) -> Result<u8, String> {
    // Everything the user passed is checked before anything is built or booted.
    let mut guest = guest_input::prepare_with(
        args.guest.as_deref(),
        args.entry.as_deref(),
        args.ram_mib,
        args.release,
        &args.linux,
    )?;
    guest.arg = args.arg.unwrap_or(0);
    let emulator = choose_emulator(args);
    let kernel = image::build_kernel(args.release)?;
    let config = run_config::run_config(&guest, &emulator, &args.coalesce);
    let machine = Machine {
        emulator,
        firmware: args.firmware,
        cpu: args.cpu.clone(),
        ram_mib: guest.ram_mib,
        silence: Duration::from_secs(args.timeout_s),
        max_time: Duration::from_secs(args.max_time_s),
        echo: true,
    };
    let payload = image::payload_bytes(&config, &guest.bytes);
    let outcome = emulator::boot("run", &kernel, &payload, machine)?;
    match outcome.ending {
        Ending::Status(s) => {
            eprintln!(
                "xtask: run ended with status {s} after {:.1} s",
                outcome.elapsed.as_secs_f64()
            );
            Ok(u8::try_from(s).unwrap_or(u8::MAX))
        }
        Ending::Hang(hang) => Err(hang.to_string()),
        Ending::EmulatorExited(why) => Err(why),
        Ending::Interrupted => {
            eprintln!("xtask: interrupted; the emulator was stopped");
            Ok(130)
        }
    }
}
