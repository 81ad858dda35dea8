//! Running an image in an emulator: QEMU (TCG, or KVM with nested VMX on an Intel host)
//! or Bochs (which emulates VMX with EPT, driven headless under Xvfb). The console
//! streams live; the run ends with the status the kernel reported, a hang (the console
//! silent for too long, or the run over its overall cap) or an emulator failure. Every
//! run works in its own folder, removed afterwards.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::host;
use crate::image::Firmware;

pub const DEFAULT_BOCHS_CPU: &str = "corei7_skylake_x";

/// How long a run's console may stay silent before the run counts as hung
/// (`--timeout`): longer than any quiet stretch of a Linux boot in Bochs.
pub const SILENCE_DEFAULT: Duration = Duration::from_secs(120);
/// The overall cap of a run (`--max-time`), printing or not: a guest that prints
/// forever still ends, well inside CI's time.
pub const MAX_TIME_DEFAULT: Duration = Duration::from_secs(1800);

/// Memory the emulated machine has beyond guest RAM (firmware, bootloader, sluice's
/// kernel, VMX structures, EPT).
const HOST_OVERHEAD_MIB: u32 = 128;

/// A folder of its own for each run: images, bochsrc, logs; removed when it ends.
pub fn run_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    crate::image::workspace_root()
        .join("target/sluice/runs")
        .join(format!("{name}-{}-{n}", std::process::id()))
}

pub fn machine_mib(spec: &RunSpec) -> u32 {
    spec.machine.ram_mib.saturating_add(HOST_OVERHEAD_MIB)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emulator {
    Qemu { kvm: bool },
    Bochs,
}

/// The emulated machine a run uses.
#[derive(Clone, Debug)]
pub struct Machine {
    pub emulator: Emulator,
    pub firmware: Firmware,
    pub cpu: Option<String>,
    /// Guest RAM; the machine gets this plus room for the firmware, bootloader and
    /// sluice itself.
    pub ram_mib: u32,
    /// The run is hung when the console has been silent this long (a guest that is
    /// still printing is not hung, however slow the machine).
    pub silence: Duration,
    /// The overall cap, printing or not.
    pub max_time: Duration,
    /// Copy the console to our stdout as it arrives.
    pub echo: bool,
}

#[derive(Clone, Debug)]
pub struct RunSpec {
    pub machine: Machine,
    pub image: PathBuf,
    /// A fresh folder for this run (bochsrc, serial log, firmware variables); removed
    /// when the run ends.
    pub workdir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The kernel reported `sluice: exit status N`.
    Status(u32),
    /// Nothing ended the run: the console fell silent, or the run hit its cap.
    Hang(Hang),
    /// The emulator stopped without a status from the kernel.
    EmulatorExited(String),
    /// The user interrupted the run (Ctrl-C) or xtask was asked to terminate.
    Interrupted,
}

/// How a run was found hung, and the last thing it printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hang {
    pub why: HangKind,
    /// The console's last non-empty line (at most 200 characters), if it printed any.
    pub last_line: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangKind {
    /// Nothing new on the console for this long.
    Silent(Duration),
    /// Still printing, but running longer than the overall cap.
    OverTime(Duration),
}

impl std::fmt::Display for Hang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.why {
            HangKind::Silent(d) => write!(
                f,
                "hang: the console has been silent for {} s (raise with --timeout)",
                d.as_secs()
            )?,
            HangKind::OverTime(d) => write!(
                f,
                "hang: the run was still going after {} s, its overall cap (raise with --max-time)",
                d.as_secs()
            )?,
        }
        match &self.last_line {
            Some(line) => write!(f, "; the last line it printed: {line:?}"),
            None => write!(f, "; it printed nothing"),
        }
    }
}

/// Decides when a run is hung: when the console has been silent for `silence`, or the
/// run has gone on for `max_time` in all.
#[derive(Clone, Copy, Debug)]
pub struct Watchdog {
    start: Instant,
    last_output: Instant,
    silence: Duration,
    max_time: Duration,
}

impl Watchdog {
    pub fn new(start: Instant, machine: &Machine) -> Self {
        Watchdog {
            start,
            last_output: start,
            silence: machine.silence,
            max_time: machine.max_time,
        }
    }

    /// The console printed something at `now`.
    pub fn output(&mut self, now: Instant) {
        self.last_output = now;
    }

    /// `Some` once the run counts as hung at `now`; `console` gives the last line.
    pub fn check(&self, now: Instant, console: &str) -> Option<Hang> {
        let why = if now.duration_since(self.start) >= self.max_time {
            HangKind::OverTime(self.max_time)
        } else if now.duration_since(self.last_output) >= self.silence {
            HangKind::Silent(now.duration_since(self.last_output))
        } else {
            return None;
        };
        Some(Hang {
            why,
            last_line: last_line(console),
        })
    }
}

/// The last non-empty console line, shortened to 200 characters.
pub fn last_line(console: &str) -> Option<String> {
    let line = console
        .lines()
        .map(|l| l.trim_end_matches('\r').trim_end())
        .rfind(|l| !l.is_empty())?;
    Some(match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_string(),
    })
}

/// Set by SIGINT/SIGTERM. The emulator runs in a process group of its own (so a hang
/// can be stopped with everything it started), which also means the terminal's Ctrl-C
/// does not reach it: xtask catches the signal and stops the group itself.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signum: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

extern "C" {
    // POSIX signal(2) from the C library std already links; the handler only stores
    // an atomic, which is async-signal-safe.
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

/// Routes SIGINT and SIGTERM to [`INTERRUPTED`] for the rest of the process.
pub fn catch_interrupts() {
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug)]
pub struct Outcome {
    pub ending: Ending,
    pub console: String,
    pub elapsed: Duration,
}

/// The last `sluice: exit status N` line in the console, if any.
pub fn reported_status(console: &str) -> Option<u32> {
    console
        .lines()
        .rev()
        .find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix("sluice: exit status ")
        })
        .and_then(|n| n.trim().parse().ok())
}

/// QEMU's isa-debug-exit makes QEMU exit with `(value << 1) | 1`.
pub fn qemu_debug_exit_status(code: i32) -> Option<u32> {
    (code & 1 == 1).then_some((code as u32) >> 1)
}

pub fn bochsrc(spec: &RunSpec, disk: &Path, serial: &Path) -> String {
    let cpu = spec.machine.cpu.as_deref().unwrap_or(DEFAULT_BOCHS_CPU);
    // BIOS: Bochs's own ROM at the top of the first MiB and its ISA VGA with the Bochs
    // VBE extension (the bootloader's BIOS stage sets a VESA mode through the VGA BIOS).
    // UEFI: OVMF's single flash image at the top of 4 GiB (Bochs maps a 2 MiB ROM at
    // 0xffe00000) on the i440FX host bridge (OVMF's PlatformPei knows i440FX and Q35
    // only), with a Cirrus CL-GD5446 in a PCI slot: OVMF's QemuVideoDxe sets a mode on it
    // and publishes the GOP framebuffer the screen console draws on. Bochs's own PCI VGA
    // (`pcivga`, 1234:1111) gets no GOP from OVMF (docs/HARDWARE.md).
    let (firmware, display) = match spec.machine.firmware {
        Firmware::Bios => (
            format!("romimage: file={}\n", host::BOCHS_BIOS.probe),
            format!(
                "vgaromimage: file={}\nvga: extension=vbe\n",
                host::VGABIOS.probe
            ),
        ),
        Firmware::Uefi => (
            format!(
                "romimage: file={}, address=0xffe00000\n\
                 pci: enabled=1, chipset=i440fx, slot1=cirrus\n",
                host::BOCHS_OVMF_FD
            ),
            format!(
                "vgaromimage: file={}\nvga: extension=cirrus\n",
                host::VGABIOS_CIRRUS.probe
            ),
        ),
    };
    format!(
        "# written by cargo xtask for one run\n\
         {firmware}\
         {display}\
         display_library: x\n\
         cpu: model={cpu}, count=1, ips=200000000, reset_on_triple_fault=0\n\
         memory: guest={mem}, host={mem}\n\
         ata0-master: type=disk, path={disk}, mode=flat\n\
         boot: disk\n\
         clock: sync=none, time0=local\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         magic_break: enabled=1\n\
         mouse: enabled=0\n\
         log: bochs.log\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n",
        disk = disk.display(),
        serial = serial.display(),
        mem = machine_mib(spec),
    )
}

pub fn qemu_args(spec: &RunSpec, vars: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "-machine",
        "q35",
        "-m",
        "256M",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("-m".into());
    args.push(format!("{}M", machine_mib(spec)));
    args.push("-drive".into());
    args.push(format!("format=raw,file={}", spec.image.display()));
    if let Emulator::Qemu { kvm: true } = spec.machine.emulator {
        args.extend(["-accel".into(), "kvm".into()]);
        args.extend([
            "-cpu".into(),
            spec.machine.cpu.clone().unwrap_or_else(|| "host".into()),
        ]);
    } else if let Some(cpu) = &spec.machine.cpu {
        args.extend(["-cpu".into(), cpu.clone()]);
    }
    if let Some(vars) = vars {
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            host::OVMF_CODE
        ));
        args.push("-drive".into());
        args.push(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    args
}

/// Makes the disk images for `payload` in a run folder of its own (`name` in
/// target/sluice/runs), boots the one `machine.firmware` needs and removes the folder.
pub fn boot(
    name: &str,
    kernel: &Path,
    payload: &[u8],
    machine: Machine,
) -> Result<Outcome, String> {
    let dir = run_dir(name);
    let result =
        crate::image::make_images(kernel, payload, &dir.join("image")).and_then(|images| {
            let image = match machine.firmware {
                Firmware::Bios => images.bios,
                Firmware::Uefi => images.uefi,
            };
            run(&RunSpec {
                machine,
                image,
                workdir: dir.join("emulator"),
            })
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub fn run(spec: &RunSpec) -> Result<Outcome, String> {
    let _ = std::fs::remove_dir_all(&spec.workdir);
    std::fs::create_dir_all(&spec.workdir)
        .map_err(|e| format!("creating {}: {e}", spec.workdir.display()))?;
    let result = match spec.machine.emulator {
        Emulator::Bochs => run_bochs(spec),
        Emulator::Qemu { .. } => run_qemu(spec),
    };
    let _ = std::fs::remove_dir_all(&spec.workdir);
    result
}

pub fn spawn_group(cmd: &mut Command) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    // Own process group, so a hung run is stopped with everything it started
    // (xvfb-run starts Xvfb next to Bochs).
    cmd.process_group(0)
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", cmd.get_program()))
}

/// SIGTERM first so xvfb-run removes its temporary files, then SIGKILL.
pub fn stop_group(child: &mut Child) {
    let pgid = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
    let _ = child.wait();
}

/// Echoes new console bytes and keeps them.
struct Console {
    text: Vec<u8>,
    echo: bool,
}

impl Console {
    fn push(&mut self, bytes: &[u8]) {
        if self.echo {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        self.text.extend_from_slice(bytes);
    }
    fn string(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

fn run_bochs(spec: &RunSpec) -> Result<Outcome, String> {
    host::ensure(match spec.machine.firmware {
        Firmware::Bios => host::BOCHS_ALL,
        Firmware::Uefi => host::BOCHS_UEFI,
    })?;
    let dir = &spec.workdir;
    // Bochs leaves `<disk>.lock` beside the disk; a private copy keeps that inside the
    // run folder, which is removed afterwards.
    let disk = dir.join("disk.img");
    std::fs::copy(&spec.image, &disk).map_err(|e| format!("copying the image: {e}"))?;
    let serial = dir.join("serial.log");
    std::fs::write(&serial, b"").map_err(|e| format!("creating the serial log: {e}"))?;
    std::fs::write(dir.join("bochsrc"), bochsrc(spec, &disk, &serial))
        .map_err(|e| format!("writing bochsrc: {e}"))?;
    // Bochs' built-in debugger stops before the first instruction: continue, and quit
    // when the kernel's magic breakpoint (`xchg bx, bx`) drops back into it.
    std::fs::write(dir.join("debugger.rc"), "c\nquit\n")
        .map_err(|e| format!("writing the debugger commands: {e}"))?;
    let out = std::fs::File::create(dir.join("bochs.out")).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = spawn_group(
        Command::new("xvfb-run")
            .args(["-a", "bochs", "-q", "-f", "bochsrc", "-rc", "debugger.rc"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    )?;
    let mut console = Console {
        text: Vec::new(),
        echo: spec.machine.echo,
    };
    let mut log = std::fs::File::open(&serial).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut status_seen: Option<Instant> = None;
    let mut watchdog = Watchdog::new(start, &spec.machine);
    let ending = loop {
        let n = log.read(&mut buf).unwrap_or(0);
        if n > 0 {
            watchdog.output(Instant::now());
            console.push(&buf[..n]);
            if status_seen.is_none() && reported_status(&console.string()).is_some() {
                status_seen = Some(Instant::now());
            }
            continue;
        }
        if let Ok(Some(exit)) = child.try_wait() {
            // Drain whatever Bochs wrote last.
            while let Ok(n) = log.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console.push(&buf[..n]);
            }
            break match reported_status(&console.string()) {
                Some(s) => Ending::Status(s),
                None => Ending::EmulatorExited(format!(
                    "bochs exited ({exit}) {}",
                    tail(dir, "bochs.out")
                )),
            };
        }
        if let Some(seen) = status_seen {
            // The kernel is done; Bochs normally quits through the debugger at once.
            if seen.elapsed() > Duration::from_secs(5) {
                stop_group(&mut child);
                break Ending::Status(reported_status(&console.string()).unwrap_or(0));
            }
        }
        if interrupted() {
            stop_group(&mut child);
            break Ending::Interrupted;
        }
        if let Some(hang) = watchdog.check(Instant::now(), &console.string()) {
            stop_group(&mut child);
            break Ending::Hang(hang);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Outcome {
        ending,
        console: console.string(),
        elapsed: start.elapsed(),
    })
}

/// The last lines of a file in the run folder, for error messages.
fn tail(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n{}", lines[start..].join("\n"))
    }
}

/// Checks QEMU (and OVMF for UEFI) are installed; for UEFI, the run's private copy of
/// the variable store (OVMF writes it).
pub fn qemu_firmware_vars(spec: &RunSpec) -> Result<Option<PathBuf>, String> {
    Ok(match spec.machine.firmware {
        Firmware::Bios => {
            host::ensure(host::QEMU_BIOS)?;
            None
        }
        Firmware::Uefi => {
            host::ensure(host::QEMU_UEFI)?;
            let vars = spec.workdir.join("OVMF_VARS.fd");
            std::fs::copy(host::OVMF_VARS, &vars)
                .map_err(|e| format!("copying {}: {e}", host::OVMF_VARS))?;
            Some(vars)
        }
    })
}

fn run_qemu(spec: &RunSpec) -> Result<Outcome, String> {
    let vars = qemu_firmware_vars(spec)?;
    let start = Instant::now();
    let mut child = spawn_group(
        Command::new("qemu-system-x86_64")
            .args(qemu_args(spec, vars.as_deref()))
            .current_dir(&spec.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut console = Console {
        text: Vec::new(),
        echo: spec.machine.echo,
    };
    let mut watchdog = Watchdog::new(start, &spec.machine);
    let ending = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(bytes) => {
                watchdog.output(Instant::now());
                console.push(&bytes);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(exit)) = child.try_wait() {
            let _ = reader.join();
            while let Ok(bytes) = rx.try_recv() {
                console.push(&bytes);
            }
            let stderr = err_reader.join().unwrap_or_default();
            let from_device = exit.code().and_then(qemu_debug_exit_status);
            break match (from_device, reported_status(&console.string())) {
                (Some(s), _) => Ending::Status(s),
                (None, Some(s)) => Ending::Status(s),
                (None, None) => {
                    Ending::EmulatorExited(format!("qemu exited ({exit}) {}", stderr.trim()))
                }
            };
        }
        if interrupted() {
            stop_group(&mut child);
            break Ending::Interrupted;
        }
        if let Some(hang) = watchdog.check(Instant::now(), &console.string()) {
            stop_group(&mut child);
            break Ending::Hang(hang);
        }
    };
    Ok(Outcome {
        ending,
        console: console.string(),
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(emulator: Emulator, firmware: Firmware, cpu: Option<&str>) -> RunSpec {
        RunSpec {
            machine: Machine {
                emulator,
                firmware,
                cpu: cpu.map(String::from),
                ram_mib: 64,
                silence: Duration::from_secs(1),
                max_time: Duration::from_secs(10),
                echo: false,
            },
            image: PathBuf::from("/img/sluice-bios.img"),
            workdir: PathBuf::from("/run"),
        }
    }

    #[test]
    fn a_run_that_keeps_printing_is_not_hung_until_its_cap() {
        let m = spec(Emulator::Bochs, Firmware::Bios, None).machine;
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let mut w = Watchdog::new(t0, &m);
        assert_eq!(w.check(s(999), ""), None);
        // Output every 900 ms keeps it alive past the 1 s silence limit...
        for n in 1..=10 {
            w.output(s(900 * n));
            assert_eq!(w.check(s(900 * n + 899), "line\n"), None, "at {n}");
        }
        // ...until the 10 s cap.
        let hang = w
            .check(s(10_000), "boot\r\nstill printing\r\n\r\n")
            .unwrap();
        assert_eq!(hang.why, HangKind::OverTime(Duration::from_secs(10)));
        assert_eq!(hang.last_line.as_deref(), Some("still printing"));
        assert!(hang.to_string().contains("--max-time"), "{hang}");
    }

    #[test]
    fn a_silent_run_is_hung_and_the_message_says_for_how_long_and_what_came_last() {
        let m = spec(Emulator::Bochs, Firmware::Bios, None).machine;
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0, &m);
        assert!(matches!(
            w.check(t0 + Duration::from_secs(1), ""),
            Some(Hang {
                why: HangKind::Silent(_),
                last_line: None
            })
        ));
        w.output(t0 + Duration::from_secs(3));
        let hang = w
            .check(t0 + Duration::from_millis(5500), "sluice: guest running\n")
            .unwrap();
        assert_eq!(hang.why, HangKind::Silent(Duration::from_millis(2500)));
        let msg = hang.to_string();
        assert!(
            msg.contains("silent for 2 s") && msg.contains("\"sluice: guest running\""),
            "{msg}"
        );
        assert!(Hang {
            why: HangKind::Silent(Duration::ZERO),
            last_line: None
        }
        .to_string()
        .contains("printed nothing"));
        let long = "x".repeat(300);
        assert_eq!(last_line(&long).unwrap().len(), 203);
    }

    #[test]
    fn status_line_is_found_last_one_wins() {
        let console = "boot\r\nsluice: exit status 1\r\nmore\nsluice: exit status 7\r\n";
        assert_eq!(reported_status(console), Some(7));
        assert_eq!(reported_status("sluice: exit status x\n"), None);
        assert_eq!(reported_status("no status\n"), None);
    }

    #[test]
    fn qemu_debug_exit_codes_map_back_to_the_status() {
        assert_eq!(qemu_debug_exit_status(1), Some(0));
        assert_eq!(qemu_debug_exit_status(3), Some(1));
        assert_eq!(qemu_debug_exit_status(7), Some(3));
        assert_eq!(qemu_debug_exit_status(0), None);
        assert_eq!(qemu_debug_exit_status(2), None);
    }

    #[test]
    fn bochsrc_names_the_cpu_disk_serial_and_magic_break() {
        let rc = bochsrc(
            &spec(Emulator::Bochs, Firmware::Bios, None),
            Path::new("/r/disk.img"),
            Path::new("/r/s.log"),
        );
        assert!(rc.contains("cpu: model=corei7_skylake_x,"));
        assert!(rc.contains("path=/r/disk.img, mode=flat"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/r/s.log"));
        assert!(rc.contains("magic_break: enabled=1"));
        assert!(rc.contains("reset_on_triple_fault=0"));
        assert!(rc.contains("memory: guest=192, host=192"));
        let rc = bochsrc(
            &spec(Emulator::Bochs, Firmware::Bios, Some("ryzen")),
            Path::new("d"),
            Path::new("s"),
        );
        assert!(rc.contains("cpu: model=ryzen,"));
        // The BIOS run keeps Bochs's BIOS and its ISA VBE adapter.
        assert!(rc.contains("romimage: file=/usr/share/bochs/BIOS-bochs-latest\n"));
        assert!(rc.contains("vga: extension=vbe\n"));
        assert!(!rc.contains("OVMF") && !rc.contains("pci:"));
    }

    #[test]
    fn bochsrc_for_uefi_maps_ovmf_below_4g_with_a_pci_cirrus() {
        let rc = bochsrc(
            &spec(Emulator::Bochs, Firmware::Uefi, None),
            Path::new("/r/disk.img"),
            Path::new("/r/s.log"),
        );
        assert!(rc.contains("romimage: file=/usr/share/ovmf/OVMF.fd, address=0xffe00000\n"));
        assert!(rc.contains("pci: enabled=1, chipset=i440fx, slot1=cirrus\n"));
        assert!(rc.contains("vgaromimage: file=/usr/share/vgabios/vgabios.cirrus.bin\n"));
        assert!(rc.contains("vga: extension=cirrus\n"));
        assert!(!rc.contains("BIOS-bochs"));
        // Everything else is as for the BIOS: the platform exit and the serial log.
        assert!(rc.contains("magic_break: enabled=1"));
        assert!(rc.contains("com1: enabled=1, mode=file, dev=/r/s.log"));
        assert!(rc.contains("path=/r/disk.img, mode=flat"));
    }

    #[test]
    fn qemu_command_lines() {
        let tcg = qemu_args(
            &spec(Emulator::Qemu { kvm: false }, Firmware::Bios, None),
            None,
        );
        let s = tcg.join(" ");
        assert!(s.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(s.contains("-m 192M"));
        assert!(s.contains("format=raw,file=/img/sluice-bios.img"));
        assert!(!s.contains("kvm") && !s.contains("pflash"));
        let kvm = qemu_args(
            &spec(Emulator::Qemu { kvm: true }, Firmware::Uefi, None),
            Some(Path::new("/run/VARS.fd")),
        );
        let s = kvm.join(" ");
        assert!(s.contains("-accel kvm -cpu host"));
        assert!(s.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert!(s.contains("if=pflash,format=raw,file=/run/VARS.fd"));
    }
}
