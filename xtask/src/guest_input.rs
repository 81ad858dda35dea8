//! Choosing and validating the guest of a run before anything is built or booted: a
//! built-in test guest by name or a user's file, its entry mode and the RAM size. Every
//! problem is one clear error naming the file, the flag or the value at fault.

use std::path::Path;

use hypervisor::config::{
    self, EntryMode, RAM_MIB_DEFAULT, RAM_MIB_MAX, RAM_MIB_MIN, REAL_MODE_LIMIT,
};
use hypervisor::guest::elf64;
use hypervisor::guest::loader::{self, LongModeLayout};

use crate::cli::{LinuxArgs, LINUX_GUEST};
use crate::{guests, linux};

/// The guest `cargo xtask run` boots when no `--guest` is given.
pub const DEMO_GUEST: &str = "hello64";

#[derive(Debug)]
pub struct PreparedGuest {
    pub name: String,
    pub bytes: Vec<u8>,
    pub entry: EntryMode,
    pub ram_mib: u32,
    /// `guest.arg`: handed to the guest in RDI.
    pub arg: u64,
}

fn entry_flag(value: &str) -> Result<EntryMode, String> {
    config::parse_entry(value).map_err(|e| format!("--entry: {e}"))
}

pub fn prepare(
    guest: Option<&str>,
    entry: Option<&str>,
    ram_mib: Option<u32>,
    release: bool,
) -> Result<PreparedGuest, String> {
    prepare_with(guest, entry, ram_mib, release, &LinuxArgs::default())
}

/// [`prepare`] with the Linux options (`--kernel`, `--initrd`, `--cmdline`), which apply
/// to `--guest linux` only.
pub fn prepare_with(
    guest: Option<&str>,
    entry: Option<&str>,
    ram_mib: Option<u32>,
    release: bool,
    linux_args: &LinuxArgs,
) -> Result<PreparedGuest, String> {
    let explicit_entry = entry.map(entry_flag).transpose()?;
    let name = guest.unwrap_or(DEMO_GUEST);
    let is_linux = name == LINUX_GUEST || explicit_entry == Some(EntryMode::Linux);
    let ram_mib = ram_mib.unwrap_or(if is_linux {
        linux::RAM_MIB_DEFAULT
    } else {
        RAM_MIB_DEFAULT
    });
    if !(RAM_MIB_MIN..=RAM_MIB_MAX).contains(&ram_mib) {
        return Err(format!(
            "--ram must be {RAM_MIB_MIN}..={RAM_MIB_MAX} MiB, got {ram_mib}"
        ));
    }
    if is_linux && ram_mib < linux::RAM_MIB_MIN {
        return Err(format!(
            "Linux needs at least {} MiB of guest RAM, got --ram {ram_mib}",
            linux::RAM_MIB_MIN
        ));
    }
    if name == LINUX_GUEST {
        if explicit_entry.is_some_and(|e| e != EntryMode::Linux) {
            return Err(format!(
                "--entry: the Linux guest starts only with --entry linux (the default for --guest {LINUX_GUEST})"
            ));
        }
        return prepare_linux(linux_args, ram_mib);
    }
    let (display_name, bytes, default_entry) = if guests::is_builtin(name) {
        let built = guests::build(name, release)?;
        let bytes = std::fs::read(&built.path)
            .map_err(|e| format!("reading built guest {}: {e}", built.path.display()))?;
        (name.to_string(), bytes, Some(entry_flag(built.entry)?))
    } else {
        let path = Path::new(name);
        if !path.exists() {
            return Err(format!(
                "guest file '{name}' not found (built-in guests: {})",
                guests::ELF_GUESTS
                    .iter()
                    .chain(guests::REAL_GUESTS)
                    .chain(&[LINUX_GUEST])
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("reading guest file '{name}': {e}"))?;
        let stem = path
            .file_name()
            .map(|s| safe_name(&s.to_string_lossy()))
            .unwrap_or_default();
        let default = bytes
            .starts_with(&elf64::ELF_MAGIC)
            .then_some(EntryMode::Elf64);
        (stem, bytes, default)
    };
    let entry = match explicit_entry.or(default_entry) {
        Some(e) => e,
        None => {
            return Err(format!(
            "--entry is required for '{name}' (not an ELF file): real:0x7c00 for a boot sector, \
                 real:SEG:OFF or real:ADDR for a flat binary, firmware for a ROM image"
        ))
        }
    };
    validate(&bytes, entry, ram_mib).map_err(|e| format!("guest '{name}': {e}"))?;
    Ok(PreparedGuest {
        name: display_name,
        bytes,
        entry,
        ram_mib,
        arg: 0,
    })
}

/// The Linux guest: the kernel (`--kernel` or Debian's, cached), the initrd (`--initrd`
/// or the generated busybox initramfs) and the command line in one bundle, checked by a
/// dry run of the hypervisor's loader in `ram_mib` MiB.
fn prepare_linux(args: &LinuxArgs, ram_mib: u32) -> Result<PreparedGuest, String> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| format!("{flag} '{}': {e}", path.display()))
    };
    let (name, kernel_path) = match &args.kernel {
        Some(k) => {
            let path = Path::new(k);
            let name = path
                .file_name()
                .map(|s| safe_name(&s.to_string_lossy()))
                .unwrap_or_else(|| LINUX_GUEST.into());
            (name, path.to_path_buf())
        }
        None => (LINUX_GUEST.to_string(), linux::default_kernel()?),
    };
    let kernel = read("--kernel", &kernel_path)?;
    // The kernel is checked before an initramfs is fetched or built for it.
    linux::bundle(&kernel, &[], "")
        .map_err(|e| format!("kernel {}: {e}", kernel_path.display()))?;
    let initrd = match &args.initrd {
        Some(path) => read("--initrd", Path::new(path))?,
        None => linux::default_initramfs()?,
    };
    let cmdline = args.cmdline.as_deref().unwrap_or(linux::DEFAULT_CMDLINE);
    let bytes = linux::bundle(&kernel, &initrd, cmdline)
        .map_err(|e| format!("kernel {}: {e}", kernel_path.display()))?;
    validate(&bytes, EntryMode::Linux, ram_mib)
        .map_err(|e| format!("Linux guest in {ram_mib} MiB: {e}"))?;
    eprintln!(
        "xtask: Linux guest: {} ({}), initrd {} bytes{}, cmdline \"{cmdline}\", {ram_mib} MiB",
        kernel_path.display(),
        linux::describe(&kernel),
        initrd.len(),
        if args.initrd.is_none() {
            " (generated busybox initramfs)"
        } else {
            ""
        },
    );
    Ok(PreparedGuest {
        name,
        bytes,
        entry: EntryMode::Linux,
        ram_mib,
        arg: 0,
    })
}

/// The guest's name as it appears in the configuration and the stats line: the file
/// name with anything outside `[A-Za-z0-9._+-]` replaced by `_`.
pub fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "guest".into()
    } else {
        s
    }
}

/// Checks that `bytes` can run with `entry` in `ram_mib` MiB of guest RAM.
pub fn validate(bytes: &[u8], entry: EntryMode, ram_mib: u32) -> Result<(), String> {
    let ram = u64::from(ram_mib) << 20;
    let len = bytes.len() as u64;
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    match entry {
        EntryMode::None => Err("entry mode 'none' cannot start a guest".into()),
        EntryMode::RealSegOff { .. } | EntryMode::RealAddr(_) => {
            let load = u64::from(entry.real_linear().unwrap_or(0));
            if load + len > u64::from(REAL_MODE_LIMIT) {
                return Err(format!(
                    "{len} bytes loaded at {load:#x} do not fit below 1 MiB (real mode reaches 0x{REAL_MODE_LIMIT:x})"
                ));
            }
            Ok(())
        }
        EntryMode::Firmware => {
            if len > u64::from(REAL_MODE_LIMIT) || len % 4096 != 0 {
                return Err(format!(
                    "a firmware image must be a multiple of 4 KiB and at most 1 MiB (it ends at 1 MiB and at 4 GiB), got {len} bytes"
                ));
            }
            Ok(())
        }
        EntryMode::Elf64 => {
            let elf = elf64::parse(bytes).map_err(|e| e.to_string())?;
            if ram_mib % 2 != 0 {
                return Err(format!(
                    "a 64-bit guest needs RAM in whole 2 MiB pages; --ram {ram_mib} is odd"
                ));
            }
            // The top MiB of guest RAM holds what sluice builds for a 64-bit guest (GDT,
            // page tables, stack); ELF segments must stay out of it.
            let layout =
                LongModeLayout::for_ram(ram).ok_or("guest RAM too small for a 64-bit guest")?;
            elf64::check_fits(&elf, ram, std::slice::from_ref(&layout.reserved))
                .map_err(|e| e.to_string())
        }
        EntryMode::Linux => {
            // A dry run of what sluice does at boot (bundle, bzImage, command line,
            // kernel and initrd placement, page tables) in RAM of the run's size.
            // Zeroed pages cost nothing until written; the loader writes the kernel, the
            // initrd and a few pages of tables.
            let ram_len = usize::try_from(ram).map_err(|_| "--ram too large for this host")?;
            let mut buf = vec![0u8; ram_len + 8];
            let at = buf.as_ptr().align_offset(8);
            loader::load(&mut buf[at..at + ram_len], EntryMode::Linux, bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_for_the_config_and_json() {
        assert_eq!(safe_name("my boot#1.bin"), "my_boot_1.bin");
        assert_eq!(safe_name("\"q\"\n"), "_q__");
        assert_eq!(safe_name(""), "guest");
    }

    #[test]
    fn real_mode_images_must_fit_below_1mib() {
        assert!(validate(&[0x90; 512], EntryMode::RealAddr(0x7c00), 64).is_ok());
        let e = validate(&vec![0x90; 0x10_0000], EntryMode::RealAddr(0x7c00), 64).unwrap_err();
        assert!(e.contains("do not fit below 1 MiB"), "{e}");
        assert!(validate(
            &[0x90; 16],
            EntryMode::RealSegOff {
                seg: 0xffff,
                off: 0x0
            },
            64
        )
        .is_ok());
    }

    #[test]
    fn empty_files_and_entry_none_are_refused() {
        assert!(validate(&[], EntryMode::RealAddr(0x7c00), 64)
            .unwrap_err()
            .contains("empty"));
        assert!(validate(&[1], EntryMode::None, 64)
            .unwrap_err()
            .contains("none"));
    }

    #[test]
    fn firmware_images_are_whole_pages_up_to_1mib() {
        assert!(validate(&vec![0; 0x2_0000], EntryMode::Firmware, 64).is_ok());
        assert!(validate(&vec![0; 0x2_0001], EntryMode::Firmware, 64).is_err());
        assert!(validate(&vec![0; 0x20_0000], EntryMode::Firmware, 64).is_err());
    }

    #[test]
    fn elf_of_another_machine_is_refused_by_name() {
        // A minimal 32-bit-machine ELF64 header: the machine check names it.
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&elf64::ELF_MAGIC);
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little endian
        h[6] = 1; // EV_CURRENT
        h[16] = 2; // ET_EXEC
        h[18] = 3; // EM_386
        h[20] = 1;
        let e = validate(&h, EntryMode::Elf64, 64).unwrap_err();
        assert!(e.contains("expected 62 (x86-64)"), "{e}");
        assert!(validate(b"not an elf at all", EntryMode::Elf64, 64).is_err());
    }

    #[test]
    fn entry_flag_errors_name_the_flag() {
        assert!(entry_flag("real:0x7c00").is_ok());
        assert!(entry_flag("protected").unwrap_err().starts_with("--entry:"));
        assert!(entry_flag("real:0x100000").unwrap_err().contains("--entry"));
    }

    #[test]
    fn ram_and_missing_files_are_checked_before_building() {
        let e = prepare(Some("/nonexistent/guest.bin"), None, None, false).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        let e = prepare(Some("/nonexistent/guest.bin"), None, Some(8), false).unwrap_err();
        assert!(e.contains("--ram"), "{e}");
        let e = prepare(Some("/nonexistent/guest.bin"), Some("bogus"), None, false).unwrap_err();
        assert!(e.contains("--entry"), "{e}");
    }

    #[test]
    fn linux_ram_and_entry_are_checked_before_fetching_anything() {
        let linux =
            |entry, ram| prepare_with(Some("linux"), entry, ram, false, &LinuxArgs::default());
        let e = linux(None, Some(64)).unwrap_err();
        assert!(e.contains("Linux needs at least 128 MiB"), "{e}");
        let e = linux(Some("elf64"), None).unwrap_err();
        assert!(e.contains("--entry linux"), "{e}");
        let e = linux(None, Some(8192)).unwrap_err();
        assert!(e.contains("--ram"), "{e}");
        let e = prepare(Some("/nonexistent/bundle"), Some("linux"), Some(64), false).unwrap_err();
        assert!(e.contains("at least 128 MiB"), "{e}");
        let e = prepare(Some("/nonexistent/guest.bin"), None, None, false).unwrap_err();
        assert!(e.contains("linux"), "{e}");
    }

    #[test]
    fn user_kernels_are_checked_before_the_initrd_is_read() {
        let dir = std::env::temp_dir().join(format!("sluice-xtask-linux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("bzImage");
        std::fs::write(&kernel, b"MZ this is no kernel").unwrap();
        let args = LinuxArgs {
            kernel: Some(kernel.to_str().unwrap().into()),
            initrd: Some("/nonexistent/initrd".into()),
            cmdline: None,
        };
        let e = prepare_with(Some("linux"), None, None, false, &args).unwrap_err();
        assert!(e.contains("bzImage: not a Linux bzImage"), "{e}");
        let args = LinuxArgs {
            kernel: Some("/nonexistent/bzImage".into()),
            ..args
        };
        let e = prepare_with(Some("linux"), None, None, false, &args).unwrap_err();
        assert!(e.starts_with("--kernel '/nonexistent/bzImage'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn linux_bundles_that_do_not_fit_fail_the_dry_run() {
        assert!(validate(b"not a bundle", EntryMode::Linux, 128)
            .unwrap_err()
            .contains("SLXLINUX"));
    }

    #[test]
    fn flat_files_need_an_entry() {
        let dir = std::env::temp_dir().join(format!("sluice-xtask-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("boot.bin");
        std::fs::write(&file, [0xf4u8; 512]).unwrap();
        let path = file.to_str().unwrap();
        let e = prepare(Some(path), None, None, false).unwrap_err();
        assert!(e.contains("--entry is required"), "{e}");
        let g = prepare(Some(path), Some("real:0x7c00"), Some(32), false).unwrap();
        assert_eq!(
            (g.name.as_str(), g.ram_mib, g.bytes.len()),
            ("boot.bin", 32, 512)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
