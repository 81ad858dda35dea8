//! Building the built-in test guests in `guest/`: real-mode flat binaries assembled with
//! NASM from `guest/real/*.asm`, and 64-bit ELF executables from the `sluice-guests`
//! crate (one `[[bin]]` each). Everything lands below `target/guests/` so the guests'
//! build flags never invalidate the kernel's build cache.

use std::path::PathBuf;
use std::process::Command;

use hypervisor::config::RAM_MIB_MIN;
use hypervisor::guest::elf64;

use crate::host::{self, Requirement};
use crate::image::{profile, workspace_root};

pub const NASM: Requirement = Requirement {
    what: "the NASM assembler",
    probe: "nasm",
    packages: &["nasm"],
};

/// Real-mode guests: `guest/real/<name>.asm`, entered at 0000:7C00.
pub const REAL_GUESTS: &[&str] = &[
    "hello-real",
    "triple-real",
    "bursts-real",
    "bench-real",
    "reset-rom",
];
/// Real-mode guests that are firmware images started at the reset vector
/// (`guest.entry = firmware`) rather than boot sectors at 0x7c00.
pub const FIRMWARE_GUESTS: &[&str] = &["reset-rom"];
/// `guest.entry` of the firmware guests.
pub const FIRMWARE_ENTRY: &str = "firmware";
/// 64-bit guests: the `[[bin]]` targets of `guest/Cargo.toml`.
pub const ELF_GUESTS: &[&str] = &[
    "hello64", "vmxon64", "badmsr64", "triple64", "ept64", "uart64", "pit64", "pic64", "bursts64",
    "bench64",
];

/// `guest.entry` of the real-mode guests (the boot-sector convention).
pub const REAL_ENTRY: &str = "real:0x7c00";
/// `guest.entry` of the 64-bit guests.
pub const ELF_ENTRY: &str = "elf64";

const GUEST_PACKAGE: &str = "sluice-guests";
const GUEST_TARGET: &str = "x86_64-unknown-none";

/// A guest image on disk and how to enter it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltGuest {
    pub name: &'static str,
    pub path: PathBuf,
    /// `guest.entry` value: [`REAL_ENTRY`] or [`ELF_ENTRY`].
    pub entry: &'static str,
}

/// Whether `name` is one of the built-in guests.
pub fn is_builtin(name: &str) -> bool {
    REAL_GUESTS.contains(&name) || ELF_GUESTS.contains(&name)
}

/// `<target>/guests`, where `<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`
/// (the same rule the kernel build follows).
pub fn output_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guests")
}

/// Builds one guest by name.
pub fn build(name: &str, release: bool) -> Result<BuiltGuest, String> {
    if let Some(real) = REAL_GUESTS.iter().find(|g| **g == name) {
        return build_real(real);
    }
    if let Some(elf) = ELF_GUESTS.iter().find(|g| **g == name) {
        return Ok(build_elf64(&[elf], release)?.remove(0));
    }
    Err(unknown_guest(name))
}

/// Builds every guest: all 64-bit ones in a single cargo invocation, then the real-mode
/// ones. Returned in the order of [`ELF_GUESTS`] followed by [`REAL_GUESTS`].
pub fn build_all(release: bool) -> Result<Vec<BuiltGuest>, String> {
    let mut built = build_elf64(ELF_GUESTS, release)?;
    for name in REAL_GUESTS {
        built.push(build_real(name)?);
    }
    Ok(built)
}

fn unknown_guest(name: &str) -> String {
    let known: Vec<&str> = ELF_GUESTS.iter().chain(REAL_GUESTS).copied().collect();
    format!(
        "unknown guest '{name}' (built-in guests: {})",
        known.join(", ")
    )
}

/// `nasm -f bin -o <out>/real/<name>.bin guest/real/<name>.asm`.
fn build_real(name: &'static str) -> Result<BuiltGuest, String> {
    host::ensure(&[NASM])?;
    let source = workspace_root()
        .join("guest")
        .join("real")
        .join(format!("{name}.asm"));
    let out_dir = output_root().join("real");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let path = out_dir.join(format!("{name}.bin"));
    let status = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&path)
        .arg(&source)
        .status()
        .map_err(|e| format!("could not run nasm: {e}"))?;
    if !status.success() {
        return Err(format!("assembling {} failed", source.display()));
    }
    let len = std::fs::metadata(&path)
        .map_err(|e| format!("nasm produced no {}: {e}", path.display()))?
        .len();
    if len == 0 {
        return Err(format!("nasm produced an empty {}", path.display()));
    }
    let entry = if FIRMWARE_GUESTS.contains(&name) {
        FIRMWARE_ENTRY
    } else {
        REAL_ENTRY
    };
    Ok(BuiltGuest { name, path, entry })
}

/// The flags the 64-bit guests are compiled with, in `CARGO_ENCODED_RUSTFLAGS` form
/// (separated by 0x1f). The linker script comes from `guest/build.rs`.
///
/// - `-Crelocation-model=static`: x86_64-unknown-none links static PIE (ET_DYN) by
///   default; sluice loads guests at their fixed physical addresses and wants ET_EXEC.
/// - `-Cstrip=debuginfo`: the ELF travels whole in the boot payload, and `core`'s debug
///   info would make each guest ~1.6 MB instead of a few dozen KB. Symbols stay, so
///   `objdump -d` still names functions.
pub fn rustflags() -> String {
    ["-Crelocation-model=static", "-Cstrip=debuginfo"].join("\x1f")
}

fn build_elf64(names: &[&'static str], release: bool) -> Result<Vec<BuiltGuest>, String> {
    let root = workspace_root();
    let target_dir = output_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--package",
            GUEST_PACKAGE,
            "--target",
            GUEST_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host (xtask's own build) must not reach the guests.
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags());
    if release {
        cmd.arg("--release");
    }
    for name in names {
        cmd.args(["--bin", name]);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err("building the 64-bit test guests (guest/) failed".into());
    }
    let dir = target_dir.join(GUEST_TARGET).join(profile(release));
    names
        .iter()
        .map(|&name| {
            let path = dir.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("guest build produced no {}: {e}", path.display()))?;
            check_elf(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(BuiltGuest {
                name,
                path,
                entry: ELF_ENTRY,
            })
        })
        .collect()
}

/// What `guest/link.ld` promises, checked so a change to the script or the flags cannot
/// silently produce a guest sluice would refuse: an ET_EXEC (the parser rejects PIE)
/// whose segments are identity-placed (vaddr == paddr, as the hypervisor's identity
/// paging needs), above the first MiB and clear of the reserved top MiB even with the
/// smallest accepted RAM size.
pub fn check_elf(bytes: &[u8]) -> Result<(), String> {
    let elf = elf64::parse(bytes).map_err(|e| e.to_string())?;
    if let Some(seg) = elf.load_segments().find(|s| s.vaddr != s.paddr) {
        return Err(format!(
            "segment {} has vaddr {:#x} != paddr {:#x}",
            seg.index, seg.vaddr, seg.paddr
        ));
    }
    let ram = u64::from(RAM_MIB_MIN) << 20;
    let reserved = [0..1 << 20, ram - (1 << 20)..ram];
    elf64::check_fits(&elf, ram, &reserved).map_err(|e| e.to_string())
}

/// Path of the file `rel` in the guest sources (for the consistency tests).
#[cfg(test)]
fn guest_source(rel: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("guest")
        .join(rel)
}

/// The `name = "..."` values of the `[[bin]]` tables in a Cargo manifest.
#[cfg(test)]
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if !in_bin {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "name" {
                names.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn every_elf_guest_is_a_bin_of_the_guest_crate_and_back() {
        let manifest = std::fs::read_to_string(guest_source("Cargo.toml")).unwrap();
        let bins = sorted(bin_names(&manifest));
        let listed = sorted(ELF_GUESTS.iter().map(|s| s.to_string()).collect());
        assert_eq!(bins, listed);
        for name in ELF_GUESTS {
            let source = guest_source(&format!("src/bin/{name}.rs"));
            assert!(source.is_file(), "{} is missing", source.display());
        }
    }

    #[test]
    fn every_real_guest_has_its_asm_file_and_back() {
        for name in REAL_GUESTS {
            let source = guest_source(&format!("real/{name}.asm"));
            assert!(source.is_file(), "{} is missing", source.display());
        }
        let on_disk: Vec<String> = std::fs::read_dir(guest_source("real"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".asm").map(str::to_string)
            })
            .collect();
        let listed = sorted(REAL_GUESTS.iter().map(|s| s.to_string()).collect());
        assert_eq!(sorted(on_disk), listed);
    }

    #[test]
    fn names_are_unique_and_builtin() {
        let all: Vec<&str> = ELF_GUESTS.iter().chain(REAL_GUESTS).copied().collect();
        for (i, name) in all.iter().enumerate() {
            assert!(is_builtin(name));
            assert!(!all[i + 1..].contains(name), "{name} is listed twice");
        }
        assert!(!is_builtin("hello"));
        assert!(!is_builtin("guest/real/hello-real.asm"));
    }

    #[test]
    fn unknown_names_fail_before_building_and_list_the_guests() {
        let err = build("no-such-guest", false).unwrap_err();
        assert!(err.contains("unknown guest 'no-such-guest'"), "{err}");
        assert!(
            err.contains("hello64") && err.contains("hello-real"),
            "{err}"
        );
    }

    #[test]
    fn entries_are_valid_configuration_values() {
        use hypervisor::config::{parse_entry, EntryMode};
        assert_eq!(parse_entry(ELF_ENTRY), Ok(EntryMode::Elf64));
        assert_eq!(
            parse_entry(REAL_ENTRY).map(|e| e.real_cs_ip()),
            Ok(Some((0, 0x7c00)))
        );
    }

    #[test]
    fn guests_are_linked_where_the_script_says() {
        let script = std::fs::read_to_string(guest_source("link.ld")).unwrap();
        assert!(script.contains("ENTRY(_start)"));
        assert!(script.contains(". = 0x200000;"));
        assert!(rustflags()
            .split('\x1f')
            .any(|f| f == "-Crelocation-model=static"));
    }

    #[test]
    fn bin_names_reads_only_bin_tables() {
        let manifest = "[package]\nname = \"pkg\"\n[[bin]]\nname = \"a\"\npath = \"x\"\n\
                        [lib]\nname = \"l\"\n[[bin]]\n name = \"b\" \n";
        assert_eq!(bin_names(manifest), ["a", "b"]);
    }

    #[test]
    fn check_elf_rejects_what_sluice_would_refuse() {
        assert!(
            check_elf(b"not an elf at all, not even close, definitely not 64 bytes of header")
                .is_err()
        );
    }
}
