//! `cargo xtask test`: host unit tests, then end-to-end boots of the real image in Bochs
//! (VMX emulated, several CPU models) and QEMU (BIOS and UEFI, no VMX), each judged by
//! its exit status and its console output.

use std::process::Command;
use std::time::{Duration, Instant};

use hypervisor::config::Config;

use crate::cli::{Firmware, TestArgs};
use crate::emulator::{self, Emulator, Ending, RunSpec};
use crate::image;

/// One end-to-end case: boot, then require a status and console lines.
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
}

const BOCHS: Emulator = Emulator::Bochs;
const QEMU: Emulator = Emulator::Qemu { kvm: false };

/// Lines every boot prints before anything CPU-specific.
const BANNER: &str = "sluice 0.1.0 -- a type-1 hypervisor for Intel VMX";
const NO_VMX: &str = "sluice: error: no VMX on this CPU (CPUID.1:ECX.VMX[bit 5] is clear)";

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
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
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
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
    },
    Case {
        name: "bochs-ryzen-no-vmx",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: Some("ryzen"),
        expect_status: 1,
        expect_lines: &[BANNER, NO_VMX, "sluice: exit status 1"],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
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
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
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
            "sluice: exit status 1",
        ],
        forbid: &["vmx: ready", "EXCEPTION", "PANIC"],
    },
];

/// Checks a finished run against a case; the error says what was missing or wrong.
pub fn judge(case: &Case, ending: &Ending, console: &str) -> Result<(), String> {
    match ending {
        Ending::Status(s) if *s == case.expect_status => {}
        Ending::Status(s) => {
            return Err(format!("exit status {s}, expected {}", case.expect_status))
        }
        Ending::Hang => return Err("hang: no exit status before the time limit".into()),
        Ending::EmulatorExited(why) => {
            return Err(format!("emulator stopped without a status: {why}"))
        }
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
    Ok(())
}

pub fn test(args: &TestArgs) -> Result<u8, String> {
    let root = image::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask: host unit tests");
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["test", "--workspace", "--exclude", "sluice-boot"])
        .status()
        .map_err(|e| format!("could not run cargo test: {e}"))?;
    if !status.success() {
        return Ok(1);
    }
    if args.host_only {
        return Ok(0);
    }

    let kernel = image::build_kernel(args.release)?;
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| args.filter.as_deref().is_none_or(|f| c.name.contains(f)))
        .collect();
    println!("xtask: {} end-to-end cases", cases.len());
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        let started = Instant::now();
        let dir = crate::run_dir(case.name);
        let config = Config {
            platform: crate::platform_of(&case.emulator),
            ..Config::default()
        };
        let images = image::make_images(
            &kernel,
            &image::payload_bytes(&config, &[]),
            &dir.join("image"),
        )?;
        let spec = RunSpec {
            emulator: case.emulator.clone(),
            firmware: case.firmware,
            cpu: case.cpu.map(String::from),
            timeout: Duration::from_secs(120),
            image: match case.firmware {
                Firmware::Bios => images.bios,
                Firmware::Uefi => images.uefi,
            },
            workdir: dir.join("emulator"),
            echo: false,
        };
        let outcome = emulator::run(&spec);
        let _ = std::fs::remove_dir_all(&dir);
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
    println!("e2e: {passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: Case = Case {
        name: "t",
        emulator: BOCHS,
        firmware: Firmware::Bios,
        cpu: None,
        expect_status: 1,
        expect_lines: &["a", "b"],
        forbid: &["PANIC"],
    };

    #[test]
    fn judge_accepts_status_and_ordered_lines() {
        assert_eq!(judge(&CASE, &Ending::Status(1), "x a y\nb\n"), Ok(()));
    }

    #[test]
    fn judge_rejects_wrong_status_hang_and_emulator_failure() {
        assert!(judge(&CASE, &Ending::Status(0), "a b")
            .unwrap_err()
            .contains("exit status 0"));
        assert!(judge(&CASE, &Ending::Hang, "a b")
            .unwrap_err()
            .contains("hang"));
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

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
