//! `cargo xtask bench`: the exit-reduction report. Every workload of the benchmark
//! guests (`bench64`, 64-bit; `bench-real`, firmware-style 16-bit code) runs in Bochs
//! with coalescing off and on, for each extent policy; the run's
//! `sluice-stats` line gives the exits, instructions, block lengths, stop reasons, cache
//! behaviour and the TSC cycles sluice spent on IO exits. Bochs counts emulated
//! instructions, so those cycles are stable path lengths, not wall time. A modeled
//! hardware cost (exits x a per-exit round trip) shows what the reduction is worth on a
//! real CPU. Results go to the terminal, and as JSON and an SVG chart to `results/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{BenchArgs, CoalesceArgs};
use crate::emulator::{self, Emulator, Ending, Machine};
use crate::image::Firmware;
use crate::stats_line::{self, Lines, StopInsn, StopSite};
use crate::{guest_input, image};

/// A workload of a benchmark guest: its number (bits 7:0 of `guest.arg`), name, and how
/// many iterations the benchmark runs (bits 31:8).
pub type Workload = (u8, &'static str, u32);

/// The `bench64` workloads.
pub const WORKLOADS: &[Workload] = &[
    (1, "pic-init", 20),
    (2, "pit-program", 50),
    (3, "pit-poll", 20),
    (4, "uart-init", 50),
    (5, "uart-puts", 4),
    (6, "rep-outsb", 20),
    (7, "cmos-read", 20),
    (8, "pci-scan", 10),
    (9, "vga-crtc", 20),
    (10, "driver-init", 10),
    (11, "rust-uart-init", 50),
    (12, "rust-uart-puts", 4),
    (13, "rust-cmos-read", 20),
];

/// The `bench-real` workloads: the same kinds of IO in 16-bit code as firmware writes it
/// (tables and buffers in memory, CALL/RET, PUSH/POP, string instructions).
pub const REAL_WORKLOADS: &[Workload] = &[
    (1, "fw-init-table", 20),
    (2, "fw-kbc", 20),
    (3, "fw-cmos-read", 10),
    (4, "fw-pci-scan", 10),
    (5, "fw-vga-setup", 10),
    (6, "fw-uart-puts", 4),
    (7, "fw-post", 2),
];

/// A benchmark guest and its workloads; each workload is one boot of the guest per
/// policy, with `guest.arg` selecting it.
pub struct BenchGuest {
    pub guest: &'static str,
    pub workloads: &'static [Workload],
    /// What `--quick` runs without `--workload`: every workload (`None`) or these.
    pub quick: Option<&'static [&'static str]>,
}

/// The benchmark guests, in the order of the tables.
pub const GUESTS: &[BenchGuest] = &[
    BenchGuest {
        guest: "bench64",
        workloads: WORKLOADS,
        quick: None,
    },
    BenchGuest {
        guest: "bench-real",
        workloads: REAL_WORKLOADS,
        // fw-post runs every other workload once: five boots instead of thirty-five.
        quick: Some(&["fw-post"]),
    },
];

/// Every workload with the guest it runs in, in table order.
fn all_workloads() -> impl Iterator<Item = (&'static str, &'static Workload)> {
    GUESTS
        .iter()
        .flat_map(|g| g.workloads.iter().map(move |w| (g.guest, w)))
}

/// The Linux boot (Debian's kernel to the initramfs marker): measured with coalescing
/// off and with the main policy only, since one boot takes minutes in Bochs.
pub const LINUX: &str = "linux-boot";

/// Coalescing off, then each extent policy.
pub const POLICIES: &[&str] = &["off", "page", "line", "bytes:64", "insns:8"];

/// One workload under one policy, per iteration where it says so.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    /// The guest as the stats line names it.
    pub guest: String,
    pub workload: String,
    pub policy: String,
    pub iterations: u32,
    pub io_instructions: u64,
    pub io_exits: u64,
    pub emulated: u64,
    pub string_elements: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cycles: u64,
    /// Stop reasons, most frequent first.
    pub stops: Vec<(String, u64)>,
    /// The `io.stop_sites` and `io.stop_insns` arrays as the kernel wrote them
    /// (busiest first), or `None` when the line has none.
    pub stop_sites: Option<Vec<StopSite>>,
    pub stop_insns: Option<Vec<StopInsn>>,
}

impl Measurement {
    /// Reads the `sluice-stats` line of a run.
    pub fn from_console(
        workload: &str,
        policy: &str,
        iterations: u32,
        console: &str,
    ) -> Result<Self, String> {
        let stats = stats_line::from_console(console, Lines::First)
            .map_err(|e| format!("{workload} ({policy}): {e}"))?;
        // The bench guests end through the exit hypercall, Linux by halting (poweroff -f).
        let clean = (stats.end == "hypercall" || stats.end == "halt") && stats.exit_code == 0;
        if !clean {
            return Err(format!(
                "{workload} ({policy}): the guest did not end cleanly: {}, exit code {}",
                stats.end, stats.exit_code
            ));
        }
        let io = stats.io;
        let mut stops: Vec<(String, u64)> = io.stops.into_iter().collect();
        stops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(Measurement {
            guest: stats.guest,
            workload: workload.into(),
            policy: policy.into(),
            iterations,
            io_instructions: io.instructions,
            io_exits: io.exits,
            emulated: io.emulated,
            string_elements: io.string_elements,
            cache_hits: io.cache.hits,
            cache_misses: io.cache.misses,
            cycles: io.cycles,
            stops,
            stop_sites: io.stop_sites,
            stop_insns: io.stop_insns,
        })
    }

    fn per_iter(&self, x: u64) -> f64 {
        x as f64 / f64::from(self.iterations.max(1))
    }

    /// Instructions emulated per coalesced exit.
    pub fn mean_block(&self) -> f64 {
        if self.io_exits == 0 {
            0.0
        } else {
            self.emulated as f64 / self.io_exits as f64
        }
    }

    pub fn hit_rate(&self) -> f64 {
        let total = self.cache_hits + self.cache_misses;
        if total == 0 {
            0.0
        } else {
            self.cache_hits as f64 / total as f64
        }
    }

    /// TSC cycles sluice spent per IO instruction (Bochs: emulated-instruction time).
    pub fn cycles_per_io(&self) -> f64 {
        if self.io_instructions == 0 {
            0.0
        } else {
            self.cycles as f64 / self.io_instructions as f64
        }
    }

    /// Where runs stopped: the busiest stop instructions and sites, `n` of each.
    pub fn stop_report(&self, n: usize) -> String {
        let mut out = String::new();
        for g in self.stop_insns.iter().flatten().take(n) {
            let _ = writeln!(out, "  {:>9}  {:<18} {}", g.count, g.reason, g.insn);
        }
        for s in self.stop_sites.iter().flatten().take(n) {
            let _ = writeln!(
                out,
                "  {:>9}  {:<18} {:<20} {:<8} {}",
                s.count, s.reason, s.rip, s.insn, s.bytes
            );
        }
        out
    }

    fn top_stops(&self) -> String {
        let s: Vec<String> = self
            .stops
            .iter()
            .take(2)
            .map(|(k, n)| format!("{k}:{n}"))
            .collect();
        if s.is_empty() {
            "-".into()
        } else {
            s.join(" ")
        }
    }
}

/// `guest.arg` for a workload: number in bits 7:0, iterations in bits 31:8.
pub fn workload_arg(number: u8, iterations: u32) -> u64 {
    u64::from(number) | u64::from(iterations) << 8
}

fn coalesce_for(policy: &str) -> CoalesceArgs {
    if policy == "off" {
        CoalesceArgs {
            coalesce: Some(false),
            ..CoalesceArgs::default()
        }
    } else {
        CoalesceArgs {
            coalesce: Some(true),
            extent: Some(policy.into()),
            ..CoalesceArgs::default()
        }
    }
}

/// Boots `guest` once for one of its workloads and a policy.
fn measure(
    kernel: &Path,
    guest: &str,
    number: u8,
    name: &str,
    iterations: u32,
    policy: &str,
    release: bool,
) -> Result<Measurement, String> {
    let mut guest = guest_input::prepare(Some(guest), None, None, release)?;
    guest.arg = workload_arg(number, iterations);
    let flags = coalesce_for(policy);
    let payload = image::payload_bytes(
        &crate::run_config::run_config(&guest, &Emulator::Bochs, &flags),
        &guest.bytes,
    );
    let machine = Machine {
        emulator: Emulator::Bochs,
        firmware: Firmware::Bios,
        cpu: None,
        ram_mib: guest.ram_mib,
        silence: emulator::SILENCE_DEFAULT,
        max_time: emulator::MAX_TIME_DEFAULT,
        echo: false,
    };
    let run_name = format!("bench-{name}-{}", policy.replace(':', "-"));
    let o = emulator::boot(&run_name, kernel, &payload, machine)?;
    if name == LINUX {
        // The boot log is worth keeping next to the numbers it produced.
        let log = image::workspace_root()
            .join("results")
            .join(format!("{run_name}.log"));
        let _ = std::fs::create_dir_all(log.parent().expect("results/ has a parent"));
        let _ = std::fs::write(&log, &o.console);
    }
    match o.ending {
        Ending::Status(0) => Measurement::from_console(name, policy, iterations, &o.console),
        other => Err(format!(
            "{name} ({policy}) ended with {other:?}:\n{}",
            o.console
        )),
    }
}

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(image::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The main table: each workload with coalescing off against `policy`.
pub fn table(results: &[Measurement], policy: &str, exit_cost: u64, emulate_cost: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>8} {:>9} {:>8} {:>7} {:>7} {:>6} {:>9} {:>9} {:>10} {:>10}  top stops",
        "workload",
        "IO/iter",
        "exits off",
        "exits on",
        "factor",
        "block",
        "hits",
        "cyc/IO off",
        "cyc/IO on",
        "model off",
        "model on",
    );
    for off in results.iter().filter(|m| m.policy == "off") {
        let Some(on) = results
            .iter()
            .find(|m| m.policy == policy && m.workload == off.workload)
        else {
            continue;
        };
        let factor = if on.io_exits == 0 {
            0.0
        } else {
            off.io_exits as f64 / on.io_exits as f64
        };
        // What one iteration would cost on a real CPU: every exit a round trip, every
        // emulated instruction the coalescer's measured cache-hit cost.
        let model_off = off.per_iter(off.io_exits) * exit_cost as f64;
        let model_on = on.per_iter(on.io_exits) * exit_cost as f64
            + on.per_iter(on.emulated) * emulate_cost as f64;
        let _ = writeln!(
            out,
            "{:<15} {:>8.1} {:>9.1} {:>8.1} {:>6.1}x {:>7.1} {:>5.0}% {:>9.0} {:>9.0} {:>10.0} {:>10.0}  {}",
            off.workload,
            off.per_iter(off.io_instructions),
            off.per_iter(off.io_exits),
            on.per_iter(on.io_exits),
            factor,
            on.mean_block(),
            on.hit_rate() * 100.0,
            off.cycles_per_io(),
            on.cycles_per_io(),
            model_off,
            model_on,
            on.top_stops()
        );
    }
    out
}

/// IO exits per iteration of every workload under every policy.
pub fn policy_table(results: &[Measurement], policies: &[&str]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<15}", "exits/iter");
    for p in policies {
        let _ = write!(out, " {p:>9}");
    }
    out.push('\n');
    let mut names: Vec<&str> = results.iter().map(|m| m.workload.as_str()).collect();
    names.dedup();
    for name in names {
        let _ = write!(out, "{name:<15}");
        for p in policies {
            match results
                .iter()
                .find(|m| m.workload == name && m.policy == *p)
            {
                Some(m) => {
                    let _ = write!(out, " {:>9.1}", m.per_iter(m.io_exits));
                }
                None => {
                    let _ = write!(out, " {:>9}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Total IO exits per policy over the workloads of one bench guest (lower is better):
/// bench64's pick the default. The Linux boot runs under two policies only and is never
/// totalled; it would skew the comparison.
pub fn totals(results: &[Measurement], policies: &[&str], guest: &str) -> Vec<(String, f64)> {
    policies
        .iter()
        .map(|p| {
            let sum = results
                .iter()
                .filter(|m| m.policy == *p && m.guest == guest && m.workload != LINUX)
                .map(|m| m.per_iter(m.io_exits))
                .sum();
            (p.to_string(), sum)
        })
        .collect()
}

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A bar chart: IO exits per iteration, coalescing off against `policy`, per workload,
/// on a log scale so one-exit bursts stay visible next to hundreds.
pub fn svg(results: &[Measurement], policy: &str, title: &str) -> String {
    let rows: Vec<(&Measurement, &Measurement)> = results
        .iter()
        .filter(|m| m.policy == "off")
        .filter_map(|off| {
            results
                .iter()
                .find(|m| m.policy == policy && m.workload == off.workload)
                .map(|on| (off, on))
        })
        .collect();
    let (label_w, bar_w, row_h) = (130.0, 520.0, 34.0);
    let height = 70.0 + row_h * rows.len() as f64 + 30.0;
    let max = rows
        .iter()
        .map(|(off, _)| off.per_iter(off.io_exits))
        .fold(1.0f64, f64::max);
    let scale = |x: f64| {
        if x <= 0.0 {
            0.0
        } else {
            bar_w * (1.0 + x).log10() / (1.0 + max).log10()
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = label_w + bar_w + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape_xml(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="10" y="32" width="12" height="10" fill="#c0504d"/><text x="26" y="41">coalescing off (one exit per IO instruction)</text><rect x="300" y="32" width="12" height="10" fill="#4f81bd"/><text x="316" y="41">coalescing on ({})</text>"##,
        escape_xml(policy)
    );
    for (i, (off, on)) in rows.iter().enumerate() {
        let y = 60.0 + row_h * i as f64;
        let (a, b) = (off.per_iter(off.io_exits), on.per_iter(on.io_exits));
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + 18.0,
            escape_xml(&off.workload)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{label_w}" y="{y}" width="{:.1}" height="13" fill="#c0504d"/><text x="{:.1}" y="{}">{a:.1}</text>"##,
            scale(a),
            label_w + scale(a) + 4.0,
            y + 11.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{label_w}" y="{}" width="{:.1}" height="13" fill="#4f81bd"/><text x="{:.1}" y="{}">{b:.1}</text>"##,
            y + 15.0,
            scale(b),
            label_w + scale(b) + 4.0,
            y + 26.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="10" y="{}" fill="gray">IO exits per iteration, log scale</text>"#,
        height - 10.0
    );
    s.push_str("</svg>\n");
    s
}

fn json(
    results: &[Measurement],
    args: &BenchArgs,
    commit: &str,
    micro: Option<serde_json::Value>,
) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|m| {
            serde_json::json!({
                "guest": m.guest, "workload": m.workload, "policy": m.policy, "iterations": m.iterations,
                "io_instructions": m.io_instructions, "io_exits": m.io_exits,
                "emulated": m.emulated, "string_elements": m.string_elements,
                "cache_hits": m.cache_hits, "cache_misses": m.cache_misses,
                "cycles": m.cycles, "mean_block": m.mean_block(),
                "cycles_per_io": m.cycles_per_io(),
                "stops": m.stops.iter().map(|(k, n)| serde_json::json!({"reason": k, "count": n})).collect::<Vec<_>>(),
                "stop_insns": m.stop_insns, "stop_sites": m.stop_sites,
            })
        })
        .collect();
    serde_json::json!({
        "commit": commit,
        "emulator": "bochs corei7_skylake_x (VMX emulated; cycles are emulated-instruction time)",
        "settings": {
            "exit_cost_cycles": args.exit_cost,
            "emulate_cost_cycles": args.emulate_cost,
            "max_insns": hypervisor::config::COALESCE_MAX_INSNS_DEFAULT,
            "max_string": hypervisor::config::COALESCE_MAX_STRING_DEFAULT,
            "max_quiet": hypervisor::config::COALESCE_MAX_QUIET_DEFAULT,
            "release": args.release,
        },
        "results": rows,
        "microbench": micro,
    })
}

/// Runs the host micro-benchmark of the coalescer (hypervisor/benches/coalescer.rs).
fn microbench(out: &Path, quick: bool) -> Result<serde_json::Value, String> {
    crate::host::ensure(crate::host::NATIVE_BUILD)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(image::workspace_root())
        .args([
            "bench",
            "--quiet",
            "-p",
            "sluice-hypervisor",
            "--bench",
            "coalescer",
            "--",
            "--json",
        ])
        .arg(out);
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo bench: {e}"))?;
    if !status.success() {
        return Err("the coalescer micro-benchmark failed".into());
    }
    let text =
        std::fs::read_to_string(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", out.display()))
}

pub fn run(args: &BenchArgs) -> Result<u8, String> {
    let workloads = selected(args.workload.as_deref(), args.quick);
    let with_linux = !args.quick && args.workload.as_deref().is_none_or(|w| w == LINUX);
    if workloads.is_empty() && !with_linux {
        let names: Vec<&str> = all_workloads().map(|(_, w)| w.1).chain([LINUX]).collect();
        return Err(format!(
            "--workload: no workload named that (workloads: {})",
            names.join(", ")
        ));
    }
    let mut policies: Vec<&str> = vec!["off"];
    match &args.policy {
        Some(p) => policies.push(p),
        None => policies.extend(POLICIES.iter().skip(1)),
    }
    let default_policy = hypervisor::config::COALESCE_EXTENT_DEFAULT;
    let main_policy = args.policy.as_deref().unwrap_or(default_policy);
    let kernel = image::build_kernel(args.release)?;
    let mut guests: Vec<&str> = workloads.iter().map(|(g, _)| *g).collect();
    guests.dedup();
    for guest in guests {
        crate::guests::build(guest, args.release)?;
    }

    // Two boots at a time: this machine has two cores and Bochs uses one.
    let mut jobs: Vec<(&str, u8, &str, u32, &str)> = Vec::new();
    if with_linux {
        // First, so the two long boots overlap with the short runs.
        jobs.push((crate::cli::LINUX_GUEST, 0, LINUX, 1, "off"));
        jobs.push((crate::cli::LINUX_GUEST, 0, LINUX, 1, main_policy));
    }
    jobs.extend(workloads.iter().flat_map(|(guest, (n, name, it))| {
        policies
            .iter()
            .map(move |p| (*guest, *n, *name, if args.quick { 1 } else { *it }, *p))
    }));
    println!(
        "xtask: bench: {} runs in Bochs ({} workloads x {} policies)",
        jobs.len(),
        workloads.len(),
        policies.len()
    );
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&(guest, n, name, it, policy)) = jobs.get(i) else {
                    break;
                };
                match measure(&kernel, guest, n, name, it, policy, args.release) {
                    Ok(m) => {
                        println!(
                            "  {name:<15} {policy:<9} {:>8} IO instructions, {:>8} IO exits",
                            m.io_instructions, m.io_exits
                        );
                        results.lock().expect("results").push(m);
                    }
                    Err(e) => errors.lock().expect("errors").push(e),
                }
            });
        }
    });
    let errors = errors.into_inner().expect("errors");
    if let Some(e) = errors.first() {
        return Err(format!(
            "{} benchmark runs failed; the first: {e}",
            errors.len()
        ));
    }
    let mut results = results.into_inner().expect("results");
    let order = |m: &Measurement| {
        (
            all_workloads()
                .position(|(_, w)| w.1 == m.workload)
                .unwrap_or(usize::MAX),
            policies
                .iter()
                .position(|p| *p == m.policy)
                .unwrap_or(usize::MAX),
        )
    };
    results.sort_by_key(order);

    let out_dir = image::workspace_root().join("results");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    // A filtered run writes its own files, so it never replaces the full results.
    let stem = match (&args.workload, &args.policy) {
        (None, None) if !args.quick => "bench".to_string(),
        (w, p) => format!(
            "bench{}{}{}",
            w.as_deref().map(|w| format!("-{w}")).unwrap_or_default(),
            p.as_deref()
                .map(|p| format!("-{}", p.replace(':', "-")))
                .unwrap_or_default(),
            if args.quick { "-quick" } else { "" }
        ),
    };
    let micro = if args.no_micro {
        None
    } else {
        // A quick or filtered run's figures never replace the full run's.
        Some(microbench(
            &out_dir.join(format!("micro{stem}.json")),
            args.quick,
        )?)
    };
    let commit = commit();
    println!();
    println!(
        "IO exits per iteration, coalescing off vs on ({main_policy}); modeled cycles per iteration at {} cycles per exit and {} per emulated instruction:",
        args.exit_cost, args.emulate_cost
    );
    print!(
        "{}",
        table(&results, main_policy, args.exit_cost, args.emulate_cost)
    );
    for m in results
        .iter()
        .filter(|m| m.policy == main_policy && m.stop_sites.is_some())
    {
        println!(
            "\nwhere {} runs stop ({main_policy}): by instruction, then by site",
            m.workload
        );
        print!("{}", m.stop_report(8));
    }
    println!();
    print!("{}", policy_table(&results, &policies));
    println!();
    // Each bench guest's workloads are totalled on their own (see `totals`); a Linux-only
    // run has none.
    for guest in GUESTS
        .iter()
        .filter(|g| results.iter().any(|m| m.guest == g.guest))
    {
        for (p, sum) in totals(&results, &policies, guest.guest) {
            println!(
                "total exits per iteration of the {} workloads, {p:<9}: {sum:.1}",
                guest.guest
            );
        }
    }
    let data = json(&results, args, &commit, micro);
    let json_path = out_dir.join(format!("{stem}.json"));
    let svg_path = out_dir.join(format!("{stem}.svg"));
    write(
        &json_path,
        &serde_json::to_string_pretty(&data).unwrap_or_default(),
    )?;
    write(
        &svg_path,
        &svg(
            &results,
            main_policy,
            &format!("sluice IO exits per iteration, commit {commit}"),
        ),
    )?;
    println!(
        "\nxtask: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(0)
}

/// The workloads a run measures, with their guests: the one `--workload` names (none
/// when it names the Linux boot or nothing known), else with `--quick` each guest's
/// quick set, else all.
fn selected(workload: Option<&str>, quick: bool) -> Vec<(&'static str, &'static Workload)> {
    GUESTS
        .iter()
        .flat_map(|g| {
            g.workloads
                .iter()
                .filter(move |w| match (workload, g.quick) {
                    (Some(name), _) => w.1 == name,
                    (None, Some(set)) if quick => set.contains(&w.1),
                    (None, _) => true,
                })
                .map(move |w| (g.guest, w))
        })
        .collect()
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats_line::kernel_line;
    use hypervisor::coalesce::insn::StopReason;
    use hypervisor::stats::{EndKind, Stats};
    use hypervisor::vmx::exit::exit_reason;

    fn console(exits: u64, insns: u64, emulated: u64) -> String {
        let mut stats = Stats::new();
        stats.exits[usize::from(exit_reason::IO_INSTRUCTION)] = exits;
        stats.io.instructions = insns;
        stats.io.emulated = emulated;
        stats.io.stops[StopReason::Limit.index()] = 2;
        stats.io.stops[StopReason::Unsupported.index()] = 5;
        stats.io.cache_hits = 3;
        stats.io.cache_misses = 1;
        stats.io.cycles = 4000;
        format!(
            "x\n{}",
            kernel_line("bench64", EndKind::Hypercall, 0, &stats)
        )
    }

    #[test]
    fn measurement_reads_the_stats_line() {
        let m = Measurement::from_console("pic-init", "page", 10, &console(10, 240, 340)).unwrap();
        assert_eq!((m.io_exits, m.io_instructions, m.emulated), (10, 240, 340));
        assert_eq!(m.stops[0], ("unsupported".to_string(), 5));
        assert!((m.mean_block() - 34.0).abs() < 1e-9);
        assert!((m.hit_rate() - 0.75).abs() < 1e-9);
        assert!((m.cycles_per_io() - 4000.0 / 240.0).abs() < 1e-9);
    }

    /// `console` with stop sites recorded the kernel's way.
    fn console_with_sites() -> String {
        let mut stats = Stats::new();
        stats.exits[usize::from(exit_reason::IO_INSTRUCTION)] = 10;
        stats.io.instructions = 240;
        let unsupported = StopReason::Unsupported.index() as u8;
        for _ in 0..7 {
            stats
                .io
                .sites
                .record(0xffff_ffff_8100_0010, unsupported, || ("ret", [0xC3; 8], 1));
        }
        kernel_line("linux", EndKind::Halt, 0, &stats)
    }

    #[test]
    fn stop_sites_are_read_and_reported() {
        let m = Measurement::from_console("linux-boot", "page", 1, &console_with_sites()).unwrap();
        let r = m.stop_report(8);
        assert!(r.contains("0xffffffff81000010"), "{r}");
        assert!(r.contains("unsupported") && r.contains(" c3"), "{r}");
        assert!(r.lines().all(|l| l.trim_start().starts_with("7 ")), "{r}");
        assert_eq!(r.lines().count(), 2, "{r}");
        // The kernel leaves the arrays out when it recorded no site: nothing to report.
        let none = Measurement::from_console("w", "page", 1, &console(1, 1, 1)).unwrap();
        assert!(none.stop_sites.is_none() && none.stop_report(8).is_empty());
    }

    #[test]
    fn bench_json_keeps_the_kernels_stop_arrays() {
        let c = console_with_sites();
        let m = Measurement::from_console("linux-boot", "page", 1, &c).unwrap();
        let none = Measurement::from_console("w", "page", 1, &console(1, 1, 1)).unwrap();
        let data = json(&[m, none], &BenchArgs::default(), "abc", None);
        let kernel: serde_json::Value =
            serde_json::from_str(c.strip_prefix(stats_line::PREFIX).unwrap()).unwrap();
        for key in ["stop_sites", "stop_insns"] {
            assert!(kernel["io"][key].is_array(), "{key}");
            assert_eq!(data["results"][0][key], kernel["io"][key], "{key}");
            assert!(data["results"][1][key].is_null(), "{key}");
        }
        assert_eq!(
            data["results"][0]["stop_sites"][0]["rip"],
            "0xffffffff81000010"
        );
    }

    #[test]
    fn a_failed_guest_or_missing_line_is_an_error() {
        let e = Measurement::from_console("w", "off", 1, "nothing").unwrap_err();
        assert!(e.contains("no sluice-stats line"), "{e}");
        let failed = console(1, 1, 0).replace("\"exit_code\":0", "\"exit_code\":1");
        let e = Measurement::from_console("w", "off", 1, &failed).unwrap_err();
        assert!(
            e.contains("did not end cleanly") && e.contains("exit code 1"),
            "{e}"
        );
        // A line missing what the kernel always writes is a changed format, not zeros.
        let partial = console(1, 1, 0).replace("\"cycles\":4000", "\"later\":1");
        let e = Measurement::from_console("w", "off", 1, &partial).unwrap_err();
        assert!(e.contains("missing field `cycles`"), "{e}");
    }

    #[test]
    fn tables_compare_off_with_the_policy() {
        let off = Measurement::from_console("pic-init", "off", 10, &console(240, 240, 0)).unwrap();
        let on = Measurement::from_console("pic-init", "page", 10, &console(10, 240, 340)).unwrap();
        let rows = [off, on];
        let t = table(&rows, "page", 2000, 50);
        assert!(t.contains("pic-init"), "{t}");
        assert!(t.contains("24.0x"), "{t}");
        // Off: 24 exits x 2000; on: 1 exit x 2000 + 34 emulated x 50 = 3700.
        assert!(t.contains("48000") && t.contains("3700"), "{t}");
        let p = policy_table(&rows, &["off", "page"]);
        assert!(p.contains("24.0") && p.contains("1.0"), "{p}");
        assert_eq!(
            totals(&rows, &["off", "page"], "bench64"),
            vec![("off".into(), 24.0), ("page".into(), 1.0)]
        );
        // Another guest's workloads are totalled on their own.
        assert_eq!(
            totals(&rows, &["off"], "bench-real"),
            vec![("off".into(), 0.0)]
        );
        let chart = svg(&rows, "page", "t <&>");
        assert!(
            chart.starts_with("<svg")
                && chart.contains("t &lt;&amp;&gt;")
                && chart.contains("pic-init")
        );
    }

    #[test]
    fn workload_arg_packs_number_and_iterations() {
        assert_eq!(workload_arg(5, 4), 0x405);
        // `--workload` selects by name alone, so names are unique across the guests.
        let mut names: Vec<&str> = all_workloads().map(|(_, w)| w.1).collect();
        names.push(LINUX);
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        // A guest numbers its workloads 1.. in table order (its arg's bits 7:0).
        for g in GUESTS {
            for (i, w) in g.workloads.iter().enumerate() {
                assert_eq!(usize::from(w.0), i + 1, "{} {}", g.guest, w.1);
                assert!(w.2 > 0, "{}: iterations", w.1);
            }
        }
    }

    fn guest_source(rel: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../guest")
            .join(rel);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The first double-quoted string in `line`.
    fn quoted(line: &str) -> Option<&str> {
        let (_, rest) = line.split_once('"')?;
        rest.split_once('"').map(|(s, _)| s)
    }

    /// The workload names as bench64.rs lists them, in number order.
    fn bench64_names() -> Vec<String> {
        let src = guest_source("src/bin/bench64.rs");
        let table = src
            .split_once("const WORKLOADS")
            .expect("bench64 has a WORKLOADS table")
            .1;
        let table = table.split_once("];").expect("the table ends").0;
        table
            .lines()
            .filter(|l| l.contains("Workload::new("))
            .filter_map(quoted)
            .map(str::to_string)
            .collect()
    }

    /// The workload names as bench-real.asm's `workloads` table lists them: each entry's
    /// first word is the label of its name string.
    fn bench_real_names() -> Vec<String> {
        let src = guest_source("real/bench-real.asm");
        let mut lines = src.lines().map(str::trim);
        lines
            .by_ref()
            .find(|l| *l == "workloads:")
            .expect("bench-real has a workloads table");
        let labels: Vec<&str> = lines
            .map_while(|l| l.strip_prefix("dw "))
            .filter_map(|l| l.split(',').next())
            .map(str::trim)
            .collect();
        labels
            .iter()
            .map(|label| {
                let line = src
                    .lines()
                    .find(|l| l.starts_with(&format!("{label}:")))
                    .unwrap_or_else(|| panic!("no string {label}"));
                quoted(line).expect("a quoted name").to_string()
            })
            .collect()
    }

    #[test]
    fn the_tables_match_the_guests_own() {
        let names = |ws: &[Workload]| ws.iter().map(|w| w.1.to_string()).collect::<Vec<_>>();
        assert_eq!(bench64_names(), names(WORKLOADS));
        assert_eq!(bench_real_names(), names(REAL_WORKLOADS));
        for g in GUESTS {
            assert!(crate::guests::is_builtin(g.guest), "{}", g.guest);
            for q in g.quick.into_iter().flatten() {
                assert!(g.workloads.iter().any(|w| w.1 == *q), "quick {q}");
            }
        }
    }

    #[test]
    fn selection_by_name_quick_and_all() {
        let picked = |w: Option<&str>, quick: bool| -> Vec<(&str, &str)> {
            selected(w, quick)
                .into_iter()
                .map(|(g, w)| (g, w.1))
                .collect()
        };
        let every = WORKLOADS.len() + REAL_WORKLOADS.len();
        assert_eq!(picked(None, false).len(), every);
        // --quick: every bench64 workload, of bench-real only the one that runs them all.
        let quick = picked(None, true);
        assert_eq!(quick.len(), WORKLOADS.len() + 1);
        assert_eq!(quick.last(), Some(&("bench-real", "fw-post")));
        assert!(quick[..WORKLOADS.len()]
            .iter()
            .all(|(g, _)| *g == "bench64"));
        // A named workload runs with or without --quick, in its own guest.
        for quick in [false, true] {
            assert_eq!(picked(Some("fw-kbc"), quick), [("bench-real", "fw-kbc")]);
            assert_eq!(picked(Some("pic-init"), quick), [("bench64", "pic-init")]);
        }
        assert!(picked(Some(LINUX), false).is_empty());
        assert!(picked(Some("no-such"), false).is_empty());
    }
}
