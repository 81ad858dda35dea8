//! The `sluice-stats: {json}` line the kernel prints when a guest ends, written by
//! `hypervisor::stats::write_stats_line`, read into types. Every field the writer always
//! emits is required, so a changed format is an error naming the field instead of a
//! silent zero. Fields this reader does not know are accepted: the kernel may add some
//! before xtask learns about them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What starts the line on the console.
pub const PREFIX: &str = "sluice-stats: ";

/// The whole line.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StatsLine {
    pub guest: String,
    /// How the run ended (`hypervisor::stats::EndKind::name`: `hypercall`, `halt`, ...).
    pub end: String,
    pub exit_code: u32,
    /// VM exits by reason name; the writer leaves out reasons that never exited.
    pub exits: BTreeMap<String, u64>,
    pub unknown_ports: UnknownPorts,
    pub injected_exceptions: u64,
    pub unknown_msrs: u64,
    pub msr_gp: MsrGp,
    pub interrupts: Interrupts,
    pub io: Io,
}

impl StatsLine {
    /// Exits counted for a reason name (0 when the line leaves it out: none happened).
    pub fn exit_count(&self, reason: &str) -> u64 {
        self.exits.get(reason).copied().unwrap_or(0)
    }

    /// Interrupts injected on a line named `irqN` (0 when left out).
    pub fn irq_count(&self, irq: &str) -> u64 {
        self.interrupts.injected.get(irq).copied().unwrap_or(0)
    }
}

/// Accesses to ports no device claimed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct UnknownPorts {
    pub reads: u64,
    pub writes: u64,
    /// Busiest first.
    pub top: Vec<UnknownPort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct UnknownPort {
    pub port: Hex,
    pub reads: u64,
    pub writes: u64,
}

/// MSRs whose RDMSR or WRMSR ended in #GP, busiest first.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MsrGp {
    pub rdmsr: Vec<MsrCount>,
    pub wrmsr: Vec<MsrCount>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MsrCount {
    pub msr: Hex,
    pub count: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Interrupts {
    /// External interrupts injected, keyed `irq0`..`irq15`; lines never raised are left out.
    pub injected: BTreeMap<String, u64>,
    pub spurious: u64,
    pub timer_ticks: u64,
    pub timer_ticks_lost: u64,
    pub timer_ticks_reinjected: u64,
}

/// Port IO and coalescing (docs/COALESCING.md, "Statistics").
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Io {
    /// IO-instruction VM exits.
    pub exits: u64,
    /// IO instructions the guest executed, coalesced or not.
    pub instructions: u64,
    pub string_elements: u64,
    /// Instructions of any kind the coalescer ran.
    pub emulated: u64,
    /// Coalesced exits by instructions per exit, keyed by bucket (`1`, `3-4`, `65+`, ...).
    pub blocks: BTreeMap<String, u64>,
    /// Why coalesced runs stopped, by reason name; reasons that never happened are left out.
    pub stops: BTreeMap<String, u64>,
    pub cache: Cache,
    /// TSC cycles spent handling IO exits.
    pub cycles: u64,
    /// The busiest places runs ended; the writer leaves both arrays out when it
    /// recorded no site.
    #[serde(default)]
    pub stop_sites: Option<Vec<StopSite>>,
    #[serde(default)]
    pub stop_insns: Option<Vec<StopInsn>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Cache {
    pub hits: u64,
    pub misses: u64,
}

/// One place runs ended at. Field order is the writer's, so results/bench.json keeps
/// the kernel's layout.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StopSite {
    /// Guest-linear address of the instruction the run stopped before.
    pub rip: Hex,
    pub reason: String,
    /// Its mnemonic.
    pub insn: String,
    /// Its first code bytes as the kernel prints them (`eb fe`).
    pub bytes: String,
    pub count: u64,
}

/// Stop sites summed by mnemonic and reason.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct StopInsn {
    pub insn: String,
    pub reason: String,
    pub count: u64,
}

/// A number the line writes as a `"0x..."` string (ports, MSRs, addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hex(pub u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that table columns (`{:<20}`) line up.
        f.pad(&format!("{:#x}", self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_prefix("0x")
            // from_str_radix alone would take a sign (`0x+5`).
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|digits| u64::from_str_radix(digits, 16).ok())
            .map(Hex)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a 0x-prefixed hex number"))
            })
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How many `sluice-stats` lines the caller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// The first one counts (a benchmark or a coalescing pair reads its run's numbers).
    First,
    /// Exactly one: a second line means the kernel ended a guest twice.
    One,
}

/// Finds the `sluice-stats` line in a console (lines may end in `\r\n`) and parses it.
pub fn from_console(console: &str, lines: Lines) -> Result<StatsLine, String> {
    let mut found = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(PREFIX));
    let json = match lines {
        Lines::First => found.next().ok_or("no sluice-stats line")?,
        Lines::One => {
            let all: Vec<&str> = found.collect();
            match all[..] {
                [json] => json,
                _ => {
                    return Err(format!(
                        "expected one sluice-stats line, found {}",
                        all.len()
                    ))
                }
            }
        }
    };
    parse(json)
}

/// Parses the JSON after the prefix.
pub fn parse(json: &str) -> Result<StatsLine, String> {
    serde_json::from_str(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            format!("sluice-stats does not have the kernel's format: {e}")
        }
        _ => format!("sluice-stats is not valid JSON: {e}"),
    })
}

/// A line as the kernel writes it, for tests of the readers: `stats`, no unknown ports.
#[cfg(test)]
pub fn kernel_line(
    guest: &str,
    end: hypervisor::stats::EndKind,
    exit_code: u32,
    stats: &hypervisor::stats::Stats,
) -> String {
    let mut line = String::new();
    hypervisor::stats::write_stats_line(
        &mut line,
        guest,
        end,
        exit_code,
        stats,
        &hypervisor::devices::bus::IoBus::new(),
    )
    .expect("writing to a String cannot fail");
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::coalesce::insn::StopReason;
    use hypervisor::coalesce::stats::IoStats;
    use hypervisor::devices::bus::IoBus;
    use hypervisor::stats::{write_stats_line, EndKind, Stats};
    use hypervisor::vmx::exit::exit_reason;

    /// A run with every section of the line populated.
    fn full_line() -> String {
        let mut s = Stats::new();
        for _ in 0..5 {
            s.count_exit(exit_reason::IO_INSTRUCTION.into());
        }
        s.count_exit(exit_reason::CPUID.into());
        s.count_exit(exit_reason::CPUID.into());
        s.count_exit(exit_reason::VMCALL.into());
        s.count_exit(35); // no name: `reason_35`
        s.count_exit(200); // past the table: `other`
        s.injected_exceptions = 3;
        s.unknown_msrs = 4;
        s.note_msr_gp(0xE8, false);
        s.note_msr_gp(0xE8, false);
        s.note_msr_gp(0xDA0, false);
        s.note_msr_gp(0x1B, true);
        s.irq_injected[0] = 9;
        s.irq_injected[4] = 2;
        s.irq_spurious = 1;
        s.timer_ticks = 12;
        s.timer_ticks_lost = 3;
        s.timer_ticks_reinjected = 2;
        s.io.instructions = 9;
        s.io.string_elements = 4;
        s.io.emulated = 14;
        s.io.blocks[IoStats::bucket(1)] = 1;
        s.io.blocks[IoStats::bucket(13)] = 2;
        s.io.stops[StopReason::Unsupported.index()] = 6;
        s.io.stops[StopReason::Limit.index()] = 1;
        s.io.cache_hits = 3;
        s.io.cache_misses = 2;
        s.io.cycles = 777;
        let unsupported = StopReason::Unsupported.index() as u8;
        let branch_out = StopReason::BranchOut.index() as u8;
        for _ in 0..2 {
            s.io.sites
                .record(0xffff_ffff_8100_0010, unsupported, || ("ret", [0xC3; 8], 1));
        }
        s.io.sites.record(0x20, branch_out, || {
            ("jmp", [0xEB, 0xFE, 0, 0, 0, 0, 0, 0], 2)
        });
        s.io.sites
            .record(0x30, unsupported, || ("ret", [0xC3; 8], 1));
        let mut bus = IoBus::new();
        bus.read(0x1234, 1);
        bus.write(0x70, 1, 0);
        bus.write(0x70, 1, 0);
        let mut line = String::new();
        write_stats_line(&mut line, "linux", EndKind::Hypercall, 7, &s, &bus).unwrap();
        line
    }

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(k, n)| (k.to_string(), n)).collect()
    }

    #[test]
    fn the_kernels_line_reads_back() {
        let console = format!("sluice 0.1.0\r\n{}sluice: exit status 7\n", full_line());
        let l = from_console(&console, Lines::One).unwrap();
        assert_eq!(
            (l.guest.as_str(), l.end.as_str(), l.exit_code),
            ("linux", "hypercall", 7)
        );
        assert_eq!(
            l.exits,
            counts(&[
                ("cpuid", 2),
                ("vmcall", 1),
                ("io_instruction", 5),
                ("reason_35", 1),
                ("other", 1)
            ])
        );
        assert_eq!((l.exit_count("cpuid"), l.exit_count("hlt")), (2, 0));
        assert_eq!(
            l.unknown_ports,
            UnknownPorts {
                reads: 1,
                writes: 2,
                top: vec![
                    UnknownPort {
                        port: Hex(0x70),
                        reads: 0,
                        writes: 2
                    },
                    UnknownPort {
                        port: Hex(0x1234),
                        reads: 1,
                        writes: 0
                    },
                ],
            }
        );
        assert_eq!((l.injected_exceptions, l.unknown_msrs), (3, 4));
        assert_eq!(
            l.msr_gp,
            MsrGp {
                rdmsr: vec![
                    MsrCount {
                        msr: Hex(0xE8),
                        count: 2
                    },
                    MsrCount {
                        msr: Hex(0xDA0),
                        count: 1
                    },
                ],
                wrmsr: vec![MsrCount {
                    msr: Hex(0x1B),
                    count: 1
                }],
            }
        );
        assert_eq!(
            l.interrupts,
            Interrupts {
                injected: counts(&[("irq0", 9), ("irq4", 2)]),
                spurious: 1,
                timer_ticks: 12,
                timer_ticks_lost: 3,
                timer_ticks_reinjected: 2,
            }
        );
        assert_eq!((l.irq_count("irq4"), l.irq_count("irq1")), (2, 0));
        let io = &l.io;
        assert_eq!(
            (
                io.exits,
                io.instructions,
                io.string_elements,
                io.emulated,
                io.cycles
            ),
            (5, 9, 4, 14, 777)
        );
        assert_eq!(
            io.blocks,
            counts(&[
                ("1", 1),
                ("2", 0),
                ("3-4", 0),
                ("5-8", 0),
                ("9-16", 2),
                ("17-32", 0),
                ("33-64", 0),
                ("65+", 0)
            ])
        );
        assert_eq!(io.stops, counts(&[("unsupported", 6), ("limit", 1)]));
        assert_eq!(io.cache, Cache { hits: 3, misses: 2 });
        let site = |rip, reason: &str, insn: &str, bytes: &str, count| StopSite {
            rip: Hex(rip),
            reason: reason.into(),
            insn: insn.into(),
            bytes: bytes.into(),
            count,
        };
        assert_eq!(
            io.stop_sites.as_deref(),
            Some(
                &[
                    site(0xffff_ffff_8100_0010, "unsupported", "ret", "c3", 2),
                    site(0x20, "branch_out", "jmp", "eb fe", 1),
                    site(0x30, "unsupported", "ret", "c3", 1),
                ][..]
            )
        );
        let insn = |insn: &str, reason: &str, count| StopInsn {
            insn: insn.into(),
            reason: reason.into(),
            count,
        };
        assert_eq!(
            io.stop_insns.as_deref(),
            Some(&[insn("ret", "unsupported", 3), insn("jmp", "branch_out", 1)][..])
        );
    }

    #[test]
    fn a_run_without_stop_sites_has_none() {
        let l = from_console(
            &kernel_line("g", EndKind::Halt, 0, &Stats::new()),
            Lines::One,
        )
        .unwrap();
        assert_eq!((l.io.stop_sites, l.io.stop_insns), (None, None));
        assert!(l.exits.is_empty() && l.io.stops.is_empty());
    }

    /// Every object key of `v` with its parent path, skipping the entries of the maps
    /// keyed by name (they are left out when zero) and the optional stop arrays.
    fn required_keys(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
        const MAPS: [&str; 4] = ["exits", "interrupts.injected", "io.stops", "io.blocks"];
        const OPTIONAL: [&str; 2] = ["io.stop_sites", "io.stop_insns"];
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if !MAPS.contains(&path) && !OPTIONAL.contains(&p.as_str()) {
                        out.push((path.to_string(), k.clone()));
                    }
                    required_keys(child, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for child in a {
                    required_keys(child, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }

    /// The object at a path built by `required_keys` (`[]`: every element).
    fn objects_at<'a>(
        v: &'a mut serde_json::Value,
        path: &str,
    ) -> Vec<&'a mut serde_json::Map<String, serde_json::Value>> {
        let Some(step) = path.split('.').next().filter(|s| !s.is_empty()) else {
            return v.as_object_mut().into_iter().collect();
        };
        let rest = path.split_once('.').map_or("", |(_, r)| r);
        let (key, all) = match step.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (step, false),
        };
        let child = &mut v[key];
        if all {
            child
                .as_array_mut()
                .expect("an array")
                .iter_mut()
                .flat_map(|e| objects_at(e, rest))
                .collect()
        } else {
            objects_at(child, rest)
        }
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it() {
        let line = full_line();
        let json = line.strip_prefix(PREFIX).unwrap().trim_end();
        let full: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut keys = Vec::new();
        required_keys(&full, "", &mut keys);
        // Each section of the line took part.
        for k in [
            "guest",
            "port",
            "msr",
            "timer_ticks_lost",
            "hits",
            "rip",
            "insn",
        ] {
            assert!(keys.iter().any(|(_, key)| key == k), "{k} not in {keys:?}");
        }
        for (parent, key) in &keys {
            let mut v = full.clone();
            for o in objects_at(&mut v, parent) {
                o.remove(key);
            }
            let Err(e) = parse(&v.to_string()) else {
                panic!("the line parsed without {parent}.{key}");
            };
            assert!(
                e.contains(&format!("missing field `{key}`")) && e.contains("kernel's format"),
                "{parent}.{key}: {e}"
            );
        }
        // Entries of the name-keyed maps and the stop arrays may be left out.
        let mut v = full.clone();
        v["exits"].as_object_mut().unwrap().remove("cpuid");
        v["io"].as_object_mut().unwrap().remove("stop_sites");
        let l = parse(&v.to_string()).unwrap();
        assert_eq!((l.exit_count("cpuid"), l.io.stop_sites), (0, None));
        assert!(l.io.stop_insns.is_some());
    }

    #[test]
    fn unknown_fields_are_accepted() {
        let line = full_line();
        let json = line.strip_prefix(PREFIX).unwrap().trim_end();
        let want = parse(json).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["later"] = serde_json::json!({"x": [1, 2]});
        v["io"]["later"] = serde_json::json!(5);
        v["io"]["stop_sites"][0]["later"] = serde_json::json!("y");
        v["unknown_ports"]["top"][0]["later"] = serde_json::json!(null);
        assert_eq!(parse(&v.to_string()), Ok(want));
    }

    #[test]
    fn a_wrong_type_is_an_error() {
        let line = kernel_line("g", EndKind::Halt, 0, &Stats::new());
        let e = from_console(
            &line.replace("\"cycles\":0", "\"cycles\":\"0\""),
            Lines::One,
        )
        .unwrap_err();
        assert!(e.contains("kernel's format") && e.contains("u64"), "{e}");
        let mut s = Stats::new();
        s.note_msr_gp(0xE8, true);
        let line = kernel_line("g", EndKind::Halt, 0, &s);
        for bad in ["\"e8\"", "\"0x\"", "\"0xzz\"", "\"0x+e8\"", "232"] {
            let e = from_console(&line.replace("\"0xe8\"", bad), Lines::One).unwrap_err();
            assert!(e.contains("kernel's format"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_line_is_found_or_the_error_says_why() {
        let line = kernel_line("first", EndKind::Halt, 0, &Stats::new());
        let second = line.replace("first", "second");
        let crlf = line.replace('\n', "\r\n");
        assert_eq!(
            from_console(&format!("x\r\n{crlf}y\r\n"), Lines::One)
                .unwrap()
                .guest,
            "first"
        );
        let twice = format!("{line}{second}");
        assert_eq!(from_console(&twice, Lines::First).unwrap().guest, "first");
        assert_eq!(
            from_console(&twice, Lines::One).unwrap_err(),
            "expected one sluice-stats line, found 2"
        );
        assert_eq!(
            from_console("nothing\n", Lines::One).unwrap_err(),
            "expected one sluice-stats line, found 0"
        );
        assert_eq!(
            from_console("nothing\n", Lines::First).unwrap_err(),
            "no sluice-stats line"
        );
        let e = from_console("sluice-stats: {oops\n", Lines::First).unwrap_err();
        assert!(e.starts_with("sluice-stats is not valid JSON: "), "{e}");
        // Only a line that starts with the prefix counts.
        assert!(from_console(&format!("> {line}"), Lines::First).is_err());
    }

    #[test]
    fn hex_writes_back_as_the_kernel_does() {
        assert_eq!(
            serde_json::to_string(&Hex(0xffff_ffff_8100_0010)).unwrap(),
            "\"0xffffffff81000010\""
        );
        assert_eq!(
            serde_json::from_str::<Hex>("\"0x0070\"").unwrap(),
            Hex(0x70)
        );
        assert_eq!(format!("[{:<6}]", Hex(0x70)), "[0x70  ]");
    }
}
