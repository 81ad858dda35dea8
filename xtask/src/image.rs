//! Building sluice: the kernel (cargo, target x86_64-unknown-none), the payload that
//! travels in the bootloader's ramdisk (run configuration + guest, see
//! `hypervisor::payload`), and the BIOS/UEFI disk images (`bootloader` crate).

use std::path::{Path, PathBuf};
use std::process::Command;

use hypervisor::config::Config;
use hypervisor::payload;

/// Which image a run boots: the BIOS image (the bootloader's MBR and stages) or the
/// UEFI one (its EFI application); also the firmware the emulator starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub fn profile(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

/// Where `cargo xtask build` puts images: `target/sluice/<profile>/`.
pub fn output_dir(release: bool) -> PathBuf {
    workspace_root()
        .join("target")
        .join("sluice")
        .join(profile(release))
}

/// Builds the kernel ELF and returns its path.
pub fn build_kernel(release: bool) -> Result<PathBuf, String> {
    crate::host::ensure(crate::host::NATIVE_BUILD)?;
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args([
        "build",
        "--quiet",
        "--package",
        "sluice-boot",
        "--target",
        "x86_64-unknown-none",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel (boot/) failed".into());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let elf = target_dir
        .join("x86_64-unknown-none")
        .join(profile(release))
        .join("sluice");
    if !elf.exists() {
        return Err(format!("kernel build produced no {}", elf.display()));
    }
    Ok(elf)
}

/// Serialises a run configuration and guest into the ramdisk payload format.
pub fn payload_bytes(config: &Config, guest: &[u8]) -> Vec<u8> {
    let mut text = String::new();
    config
        .write_to(&mut text)
        .expect("writing into a String cannot fail");
    let header = payload::encode_header(text.as_bytes(), guest);
    let mut out = Vec::with_capacity(payload::guest_offset(text.len()) + guest.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(text.as_bytes());
    out.resize(payload::guest_offset(text.len()), 0);
    out.extend_from_slice(guest);
    out
}

#[derive(Clone, Debug)]
pub struct Images {
    pub bios: PathBuf,
    pub uefi: PathBuf,
}

/// Writes `<dir>/sluice-bios.img` and `<dir>/sluice-uefi.img` carrying `payload`.
pub fn make_images(kernel: &Path, payload: &[u8], dir: &Path) -> Result<Images, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ramdisk = dir.join("payload.bin");
    std::fs::write(&ramdisk, payload).map_err(|e| format!("writing {}: {e}", ramdisk.display()))?;
    let mut builder = bootloader::DiskImageBuilder::new(kernel.to_path_buf());
    builder.set_ramdisk(ramdisk.clone());
    // The bootloader's own log lines are useful when a boot fails; keep them to warnings
    // so the console starts with sluice's banner.
    let mut boot_config = bootloader::BootConfig::default();
    boot_config.log_level = bootloader_boot_config::LevelFilter::Warn;
    builder.set_boot_config(&boot_config);
    let images = Images {
        bios: dir.join("sluice-bios.img"),
        uefi: dir.join("sluice-uefi.img"),
    };
    builder
        .create_bios_image(&images.bios)
        .map_err(|e| format!("creating the BIOS image: {e:#}"))?;
    builder
        .create_uefi_image(&images.uefi)
        .map_err(|e| format!("creating the UEFI image: {e:#}"))?;
    let _ = std::fs::remove_file(&ramdisk);
    Ok(images)
}
