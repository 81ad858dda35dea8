//! What the host machine offers: the tools the kernel's build needs, emulator binaries
//! and firmware files (with the Debian package that provides each), and whether QEMU
//! can use KVM with nested VMX.

use std::path::Path;
use std::process::Command;

/// A host tool or file sluice's workflows need, and the Debian/Ubuntu package with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub what: &'static str,
    /// A program on PATH, or an absolute file path.
    pub probe: &'static str,
    pub packages: &'static [&'static str],
}

/// The coalescer's decoder (zydis) is C built with CMake and make: needed by every
/// build of the kernel and of the hypervisor's tests and benchmarks, never by xtask
/// itself (which builds with the Rust toolchain alone).
pub const CMAKE: Requirement = Requirement {
    what: "CMake (cmake)",
    probe: "cmake",
    packages: &["cmake"],
};
pub const MAKE: Requirement = Requirement {
    what: "make",
    probe: "make",
    packages: &["make"],
};
pub const CC: Requirement = Requirement {
    what: "a C compiler (cc)",
    probe: "cc",
    packages: &["gcc"],
};
/// What `cargo build` of the kernel, `cargo test` and `cargo bench` of the hypervisor
/// need besides the Rust toolchain.
pub const NATIVE_BUILD: &[Requirement] = &[CMAKE, MAKE, CC];

/// Crates that compile C (or drive a C build) from their build scripts: none may be in
/// xtask's own dependency graph, so README's first command needs the Rust toolchain
/// alone and xtask can install the rest before the first build that needs it.
pub const NATIVE_BUILD_CRATES: &[&str] = &["zydis", "cmake", "cc"];

/// The crates of `cargo tree --prefix none --format {p}` output that build C.
pub fn native_build_crates(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| NATIVE_BUILD_CRATES.contains(name))
        .map(String::from)
        .collect();
    found.sort();
    found.dedup();
    found
}

pub const QEMU: Requirement = Requirement {
    what: "QEMU (qemu-system-x86_64)",
    probe: "qemu-system-x86_64",
    packages: &["qemu-system-x86"],
};
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF: Requirement = Requirement {
    what: "UEFI firmware for QEMU (OVMF)",
    probe: OVMF_CODE,
    packages: &["ovmf"],
};
/// OVMF built as one flash image (code and variables together), which Bochs maps below
/// 4 GiB as its ROM: Bochs has no pflash device for the split OVMF_CODE/OVMF_VARS pair.
pub const BOCHS_OVMF_FD: &str = "/usr/share/ovmf/OVMF.fd";
pub const BOCHS_OVMF: Requirement = Requirement {
    what: "UEFI firmware for Bochs (OVMF.fd)",
    probe: BOCHS_OVMF_FD,
    packages: &["ovmf"],
};
pub const BOCHS: Requirement = Requirement {
    what: "Bochs (bochs)",
    probe: "bochs",
    packages: &["bochs", "bochsbios", "vgabios"],
};
pub const BOCHS_X: Requirement = Requirement {
    what: "Bochs X11 display plugin",
    probe: "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_x_gui.so.0.0.0",
    packages: &["bochs-x"],
};
pub const BOCHS_BIOS: Requirement = Requirement {
    what: "Bochs BIOS ROM",
    probe: "/usr/share/bochs/BIOS-bochs-latest",
    packages: &["bochsbios"],
};
pub const VGABIOS: Requirement = Requirement {
    what: "VGA BIOS ROM",
    probe: "/usr/share/vgabios/vgabios.bin",
    packages: &["vgabios"],
};
/// The VGA BIOS build for the Cirrus CL-GD5446, the PCI display adapter a UEFI run in
/// Bochs gets (OVMF's video driver can use it; see docs/HARDWARE.md).
pub const VGABIOS_CIRRUS: Requirement = Requirement {
    what: "Cirrus VGA BIOS ROM",
    probe: "/usr/share/vgabios/vgabios.cirrus.bin",
    packages: &["vgabios"],
};
pub const XVFB: Requirement = Requirement {
    what: "a virtual X server for headless Bochs (xvfb-run)",
    probe: "xvfb-run",
    packages: &["xvfb", "xauth"],
};

/// Bochs with its BIOS, and Bochs with OVMF.
pub const BOCHS_ALL: &[Requirement] = &[BOCHS, BOCHS_BIOS, VGABIOS, BOCHS_X, XVFB];
pub const BOCHS_UEFI: &[Requirement] = &[BOCHS, BOCHS_OVMF, VGABIOS_CIRRUS, BOCHS_X, XVFB];
pub const QEMU_BIOS: &[Requirement] = &[QEMU];
pub const QEMU_UEFI: &[Requirement] = &[QEMU, OVMF];

fn present(req: &Requirement) -> bool {
    if req.probe.starts_with('/') {
        return Path::new(req.probe).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(req.probe).is_file()))
        .unwrap_or(false)
}

/// Makes sure every requirement is there. Missing ones are installed with apt-get when
/// running as root on a Debian-like system; otherwise the error names the packages.
pub fn ensure(reqs: &[Requirement]) -> Result<(), String> {
    // The bench boots two emulators at once: one apt-get at a time (dpkg takes a lock
    // and a second install would fail on it), and the second caller sees the first's
    // packages installed.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let missing: Vec<&Requirement> = reqs.iter().filter(|r| !present(r)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing
        .iter()
        .flat_map(|r| r.packages.iter().copied())
        .collect();
    packages.dedup();
    let names: Vec<&str> = missing.iter().map(|r| r.what).collect();
    let can_install = is_root() && Path::new("/usr/bin/apt-get").exists();
    if !can_install {
        return Err(format!(
            "missing {}: install with `sudo apt-get install {}`",
            names.join(", "),
            packages.join(" ")
        ));
    }
    eprintln!(
        "xtask: installing {} (missing {})",
        packages.join(" "),
        names.join(", ")
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("could not run apt-get: {e}"))
    };
    let mut status = install()?;
    if !status.success() {
        // A fresh machine may have no package lists yet.
        eprintln!("xtask: apt-get install failed; refreshing the package lists and retrying");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        status = install()?;
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|r| !present(r))
        .map(|r| r.what)
        .collect();
    if !status.success() || !still.is_empty() {
        return Err(format!(
            "apt-get install {} failed; still missing: {}",
            packages.join(" "),
            still.join(", ")
        ));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether QEMU can give a guest real VMX: an Intel CPU with VMX, /dev/kvm, and the
/// kvm_intel module's `nested` parameter on. The reason is printed by `run`.
#[derive(Debug, PartialEq, Eq)]
pub enum NestedKvm {
    Available,
    Unavailable(String),
}

pub fn nested_kvm(cpuinfo: &str, dev_kvm_exists: bool, nested_param: Option<&str>) -> NestedKvm {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let vendor = field("vendor_id").unwrap_or_default();
    let flags = field("flags").unwrap_or_default();
    let has_vmx = flags.split_whitespace().any(|f| f == "vmx");
    if vendor != "GenuineIntel" {
        let vendor = if vendor.is_empty() {
            "unknown"
        } else {
            vendor.as_str()
        };
        return NestedKvm::Unavailable(format!(
            "the host CPU vendor is {vendor}, not Intel (sluice needs Intel VMX)"
        ));
    }
    if !has_vmx {
        return NestedKvm::Unavailable(
            "the host CPU does not expose VMX (enable VT-x in firmware setup, or this is a VM without nested VMX)"
                .into(),
        );
    }
    if !dev_kvm_exists {
        return NestedKvm::Unavailable(
            "/dev/kvm is missing (load kvm_intel: `sudo modprobe kvm_intel`)".into(),
        );
    }
    match nested_param.map(str::trim) {
        Some("Y" | "y" | "1") => NestedKvm::Available,
        Some(_) => NestedKvm::Unavailable(
            "kvm_intel nested virtualization is off (enable with `sudo modprobe -r kvm_intel && sudo modprobe kvm_intel nested=1`)"
                .into(),
        ),
        None => NestedKvm::Unavailable("kvm_intel is not loaded (/sys/module/kvm_intel/parameters/nested is missing)".into()),
    }
}

pub fn detect_nested_kvm() -> NestedKvm {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nested = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested").ok();
    nested_kvm(&cpuinfo, Path::new("/dev/kvm").exists(), nested.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx sse2\n";
    const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm sse2\n";
    const INTEL_NO_VMX: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 hypervisor\n";

    #[test]
    fn intel_with_vmx_kvm_and_nested_is_available() {
        assert_eq!(nested_kvm(INTEL, true, Some("Y\n")), NestedKvm::Available);
        assert_eq!(nested_kvm(INTEL, true, Some("1")), NestedKvm::Available);
    }

    #[test]
    fn each_missing_piece_is_named() {
        let why = |n| match n {
            NestedKvm::Unavailable(s) => s,
            NestedKvm::Available => panic!("expected unavailable"),
        };
        assert!(why(nested_kvm(AMD, true, Some("1"))).contains("AuthenticAMD"));
        assert!(why(nested_kvm(INTEL_NO_VMX, true, Some("Y"))).contains("does not expose VMX"));
        assert!(why(nested_kvm(INTEL, false, Some("Y"))).contains("/dev/kvm"));
        assert!(why(nested_kvm(INTEL, true, Some("N"))).contains("nested"));
        assert!(why(nested_kvm(INTEL, true, None)).contains("not loaded"));
        assert!(why(nested_kvm("", true, None)).contains("unknown"));
    }

    #[test]
    fn crates_that_build_c_are_found_in_a_dependency_tree() {
        let tree = "xtask v0.1.0 (/x)\nserde v1.0.0\nzydis v4.1.1\ncmake v0.1.54\nzydis v4.1.1\ncc-like v1.0.0\n";
        assert_eq!(native_build_crates(tree), ["cmake", "zydis"]);
        assert!(native_build_crates("xtask v0.1.0\nserde v1.0.0\n").is_empty());
    }

    #[test]
    fn bochs_with_uefi_needs_ovmf_fd_and_the_cirrus_rom_instead_of_the_bios() {
        let probes = |reqs: &[Requirement]| reqs.iter().map(|r| r.probe).collect::<Vec<_>>();
        let uefi = probes(BOCHS_UEFI);
        assert!(uefi.contains(&"/usr/share/ovmf/OVMF.fd"));
        assert!(uefi.contains(&"/usr/share/vgabios/vgabios.cirrus.bin"));
        assert!(!uefi.contains(&BOCHS_BIOS.probe));
        assert_eq!(BOCHS_OVMF.packages, ["ovmf"]);
        assert!(!probes(BOCHS_ALL).contains(&BOCHS_OVMF_FD));
        // Every requirement names a package to install it from.
        for r in BOCHS_ALL.iter().chain(BOCHS_UEFI).chain(QEMU_UEFI) {
            assert!(!r.packages.is_empty(), "{}", r.what);
        }
    }

    #[test]
    fn requirements_probe_programs_and_files() {
        assert!(present(&Requirement {
            what: "sh",
            probe: "sh",
            packages: &[]
        }));
        assert!(!present(&Requirement {
            what: "x",
            probe: "/nonexistent/sluice",
            packages: &[]
        }));
        assert!(!present(&Requirement {
            what: "x",
            probe: "no-such-program-sluice",
            packages: &[]
        }));
    }
}
