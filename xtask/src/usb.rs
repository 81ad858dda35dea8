//! `cargo xtask usb`: writes a bootable sluice image to a USB stick (or to a file).
//!
//! Writing a disk image to the wrong device destroys someone's data, so the target is
//! inspected before anything is built, and the checks come in two strengths:
//! - hard refusals, which no flag overrides: the device (or one of its partitions, or
//!   something stacked on it such as LVM or dm-crypt) is mounted or used as swap, holds
//!   the running system, is a partition rather than a whole disk, is read-only, is not a
//!   block device or regular file, or is smaller than the image;
//! - soft refusals, which `--force` overrides: the disk does not say it is removable (USB
//!   enclosures of SSDs often claim not to be, so a disk attached over USB counts as
//!   removable), or it is larger than `--max-size` (a USB stick is rarely bigger; an
//!   internal disk usually is).
//!
//! Then the model and size are shown and the user types `yes` (unless `--yes`). The
//! image is written, flushed to the medium, and read back bypassing the page cache
//! (`O_DIRECT` on block devices) and compared.
//!
//! Everything that decides is a pure function of what sysfs and `/proc` say, so the
//! decisions are unit-tested against synthetic sysfs trees; `cargo xtask test` also runs
//! the real command against a loop device and a file.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::cli::UsbArgs;
use crate::image::Firmware;
use crate::{guest_input, image};
use hypervisor::config::Platform;

/// Linux `open(2)` flags (x86_64 values, asm-generic/fcntl.h).
const O_DIRECT: i32 = 0o40000;
const O_EXCL: i32 = 0o200;

const GIB: u64 = 1 << 30;

/// A major:minor device number.
pub type DevNum = (u32, u32);

/// Splits a Linux `dev_t` (glibc's encoding, `gnu_dev_major`/`gnu_dev_minor`).
pub fn split_dev(rdev: u64) -> DevNum {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// What sysfs says about a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub name: String,
    pub dev: DevNum,
    pub size_bytes: u64,
    pub removable: bool,
    /// Attached over USB (its sysfs device path runs through a USB controller).
    pub usb: bool,
    pub read_only: bool,
    pub partition: bool,
    /// "vendor model" as the device reports it, or "unknown model".
    pub model: String,
    /// The disk itself, its partitions and everything stacked on them (holders).
    pub related: BTreeSet<DevNum>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A regular file (created if missing): an image to copy with another tool later.
    File(PathBuf),
    Block(BlockInfo),
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Devices stacked on `dir` (its `holders/`), recursively: LVM, dm-crypt, md RAID.
fn holders(dir: &Path, out: &mut BTreeSet<DevNum>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir.join("holders")) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(h) = fs::canonicalize(e.path()) else {
            continue;
        };
        if let Some(d) = read_trim(&h.join("dev")).as_deref().and_then(parse_devnum) {
            if out.insert(d) {
                holders(&h, out, depth + 1);
            }
        }
    }
}

/// Reads the block device `dev` from a sysfs mounted at `sys` (normally `/sys`).
pub fn block_info(sys: &Path, dev: DevNum) -> Result<BlockInfo, String> {
    let link = sys.join(format!("dev/block/{}:{}", dev.0, dev.1));
    let dir = fs::canonicalize(&link)
        .map_err(|e| format!("no sysfs entry for block device {}:{} ({e})", dev.0, dev.1))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let num = |file: &str| read_trim(&dir.join(file)).and_then(|s| s.parse::<u64>().ok());
    // sysfs `size` counts 512-byte sectors whatever the logical block size
    // (Documentation/ABI/stable/sysfs-block).
    let size_bytes = num("size").ok_or_else(|| format!("{name}: sysfs has no size"))? * 512;
    let partition = dir.join("partition").exists();
    // A partition's removable flag and model live on its disk (the parent directory).
    let disk_dir = if partition {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir.clone())
    } else {
        dir.clone()
    };
    let removable = read_trim(&disk_dir.join("removable")).as_deref() == Some("1");
    let usb = disk_dir.to_string_lossy().contains("/usb");
    let vendor = read_trim(&disk_dir.join("device/vendor")).unwrap_or_default();
    let model = read_trim(&disk_dir.join("device/model")).unwrap_or_default();
    let model = match (vendor.is_empty(), model.is_empty()) {
        (true, true) => "unknown model".to_string(),
        (false, true) => vendor,
        (true, false) => model,
        (false, false) => format!("{vendor} {model}"),
    };
    let mut related = BTreeSet::from([dev]);
    holders(&dir, &mut related, 0);
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_trim(&p.join("dev")).as_deref().and_then(parse_devnum) {
                    related.insert(d);
                    holders(&p, &mut related, 0);
                }
            }
        }
    }
    Ok(BlockInfo {
        name,
        dev,
        size_bytes,
        removable,
        usb,
        read_only: num("ro") == Some(1),
        partition,
        model,
        related,
    })
}

/// One line of `/proc/self/mountinfo` that matters here: the filesystem's device and
/// where it is mounted (proc(5): field 3 is major:minor, field 5 the mount point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: String,
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Mount {
                dev: parse_devnum(f.get(2)?)?,
                // Spaces and friends are octal-escaped (\040); only "/" matters exactly.
                mount_point: f.get(4)?.to_string(),
            })
        })
        .collect()
}

/// The swap areas of `/proc/swaps` (first column; header skipped).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Mount points that mean "the running system lives here".
const SYSTEM_MOUNTS: [&str; 5] = ["/", "/boot", "/boot/efi", "/usr", "/var"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Hard(String),
    Soft(String),
}

pub struct Checks<'a> {
    pub mounts: &'a [Mount],
    /// Device numbers of block devices in use as swap.
    pub swaps: &'a BTreeSet<DevNum>,
    pub max_size_bytes: u64,
    pub image_bytes: Option<u64>,
}

/// Every reason not to write `info`, hard ones first.
pub fn refusals(info: &BlockInfo, c: &Checks) -> Vec<Refusal> {
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    let n = &info.name;
    if info.partition {
        hard.push(Refusal::Hard(format!(
            "{n} is a partition; give the whole disk (the image has its own partition table)"
        )));
    }
    let mounted: Vec<&Mount> = c
        .mounts
        .iter()
        .filter(|m| info.related.contains(&m.dev))
        .collect();
    if let Some(m) = mounted
        .iter()
        .find(|m| SYSTEM_MOUNTS.contains(&m.mount_point.as_str()))
    {
        hard.push(Refusal::Hard(format!(
            "{n} holds the running system ({} is on it)",
            m.mount_point
        )));
    } else if !mounted.is_empty() {
        let points: Vec<&str> = mounted.iter().map(|m| m.mount_point.as_str()).collect();
        hard.push(Refusal::Hard(format!(
            "{n} is mounted ({}); unmount it first",
            points.join(", ")
        )));
    }
    if info.related.iter().any(|d| c.swaps.contains(d)) {
        hard.push(Refusal::Hard(format!("{n} is in use as swap")));
    }
    if info.read_only {
        hard.push(Refusal::Hard(format!("{n} is read-only")));
    }
    if let Some(len) = c.image_bytes {
        if len > info.size_bytes {
            hard.push(Refusal::Hard(format!(
                "{n} holds {} but the image needs {}",
                human(info.size_bytes),
                human(len)
            )));
        }
    }
    if !info.removable && !info.usb {
        soft.push(Refusal::Soft(format!(
            "{n} is not a removable or USB disk (it may be an internal disk)"
        )));
    }
    if info.size_bytes > c.max_size_bytes {
        soft.push(Refusal::Soft(format!(
            "{n} is {}, larger than --max-size {}",
            human(info.size_bytes),
            human(c.max_size_bytes)
        )));
    }
    hard.extend(soft);
    hard
}

/// "29.8 GiB (32,010,928,128 bytes)"-style, decimal grouping left out for brevity.
pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// What `path` is: a block device (looked up in sysfs), a regular file, or a path for a
/// new file in an existing folder.
pub fn inspect(path: &Path, sys: &Path) -> Result<Target, String> {
    match fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => {
            block_info(sys, split_dev(m.rdev())).map(Target::Block)
        }
        Ok(m) if m.is_file() => Ok(Target::File(path.to_path_buf())),
        Ok(_) => Err(format!(
            "{} is neither a block device nor a regular file",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_none_or(Path::is_dir) && !path.starts_with("/dev") {
                Ok(Target::File(path.to_path_buf()))
            } else {
                Err(format!("{}: no such device or folder", path.display()))
            }
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The system's mounts and swap devices, for [`refusals`].
fn system_state() -> Result<(Vec<Mount>, BTreeSet<DevNum>), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let swaps_text = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let swaps = parse_swaps(&swaps_text)
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| split_dev(m.rdev()))
        .collect();
    Ok((parse_mountinfo(&mountinfo), swaps))
}

/// Writes `image` to `out` and flushes it to the medium.
fn write_all(out: &mut File, image: &[u8]) -> Result<(), String> {
    out.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seek: {e}"))?;
    for (i, chunk) in image.chunks(4 << 20).enumerate() {
        out.write_all(chunk)
            .map_err(|e| format!("write failed at {}: {e}", human((i as u64) * (4 << 20))))?;
    }
    out.sync_all()
        .map_err(|e| format!("flushing to the device failed: {e}"))
}

/// A 4 KiB-aligned buffer for `O_DIRECT` reads (the kernel requires the buffer, offset
/// and length to be aligned to the logical block size; 4096 covers every common disk).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        Aligned { raw, start, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Reads the first `image.len()` bytes of `path` back and compares. Block devices are
/// read with `O_DIRECT` so the bytes come from the medium, not from the page cache the
/// write just filled.
pub fn verify(path: &Path, image: &[u8], direct: bool) -> Result<(), String> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    if direct {
        opts.custom_flags(O_DIRECT);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("reopening {} to verify: {e}", path.display()))?;
    const CHUNK: usize = 1 << 20;
    let mut buf = Aligned::new(CHUNK);
    let mut done = 0usize;
    while done < image.len() {
        let want = (image.len() - done).min(CHUNK);
        // O_DIRECT lengths must be block multiples; read whole blocks, compare `want`.
        let read_len = if direct {
            want.div_ceil(4096) * 4096
        } else {
            want
        };
        let b = &mut buf.buf()[..read_len];
        let mut got = 0;
        while got < want {
            match f.read(&mut b[got..]) {
                Ok(0) => {
                    return Err(format!(
                        "verify: {} ends after {} of {} bytes",
                        path.display(),
                        done + got,
                        image.len()
                    ))
                }
                Ok(n) => got += n,
                Err(e) => return Err(format!("verify: read failed at byte {}: {e}", done + got)),
            }
        }
        if let Some(i) = (0..want).find(|&i| b[i] != image[done + i]) {
            return Err(format!(
                "verify: byte {} reads back {:#04x}, wrote {:#04x}",
                done + i,
                b[i],
                image[done + i]
            ));
        }
        done += want;
    }
    Ok(())
}

fn confirm(prompt: &str) -> Result<bool, String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    if n == 0 {
        return Err("no answer (stdin closed); pass --yes to write without asking".into());
    }
    Ok(line.trim() == "yes")
}

pub fn run(args: &UsbArgs) -> Result<u8, String> {
    let path = Path::new(&args.device);
    // The target is checked before anything is built: a wrong device is the mistake that
    // matters, and it should not wait for a kernel build to be reported.
    let target = inspect(path, Path::new("/sys"))?;
    let (mounts, swaps) = system_state()?;
    let max_size_bytes = args.max_size_gib.saturating_mul(GIB);
    let check = |image_bytes| -> Result<(), String> {
        let Target::Block(info) = &target else {
            return Ok(());
        };
        let found = refusals(
            info,
            &Checks {
                mounts: &mounts,
                swaps: &swaps,
                max_size_bytes,
                image_bytes,
            },
        );
        let hard: Vec<&str> = found
            .iter()
            .filter_map(|r| match r {
                Refusal::Hard(s) => Some(s.as_str()),
                Refusal::Soft(_) => None,
            })
            .collect();
        if !hard.is_empty() {
            return Err(format!("refusing {}: {}", path.display(), hard.join("; ")));
        }
        let soft: Vec<&str> = found
            .iter()
            .filter_map(|r| match r {
                Refusal::Soft(s) => Some(s.as_str()),
                Refusal::Hard(_) => None,
            })
            .collect();
        if !soft.is_empty() && !args.force {
            return Err(format!(
                "refusing {}: {} (pass --force if you are sure)",
                path.display(),
                soft.join("; ")
            ));
        }
        Ok(())
    };
    check(None)?;

    // The image: the chosen guest, configured for a real machine (print and halt at the
    // end instead of an emulator's exit port).
    let run = &args.run;
    let mut guest = guest_input::prepare_with(
        run.guest.as_deref(),
        run.entry.as_deref(),
        run.ram_mib,
        run.release,
        &run.linux,
    )?;
    guest.arg = run.arg.unwrap_or(0);
    let kernel = image::build_kernel(run.release)?;
    let mut config = crate::run_config::run_config(&guest, &crate::Emulator::Bochs, &run.coalesce);
    config.platform = Platform::Hardware;
    let payload = image::payload_bytes(&config, &guest.bytes);
    let dir = image::output_dir(run.release).join("usb");
    let images = image::make_images(&kernel, &payload, &dir)?;
    let image_path = match args.firmware {
        Firmware::Uefi => images.uefi,
        Firmware::Bios => images.bios,
    };
    let bytes =
        fs::read(&image_path).map_err(|e| format!("reading {}: {e}", image_path.display()))?;
    check(Some(bytes.len() as u64))?;

    let firmware = match args.firmware {
        Firmware::Uefi => "UEFI",
        Firmware::Bios => "BIOS",
    };
    let what = match &target {
        Target::File(p) => format!("file {}", p.display()),
        Target::Block(i) => format!(
            "{} ({}, {}{})",
            path.display(),
            i.model,
            human(i.size_bytes),
            if i.usb { ", USB" } else { "" }
        ),
    };
    eprintln!(
        "xtask: {firmware} image with guest '{}' ({}) -> {what}",
        guest.name,
        human(bytes.len() as u64)
    );
    if matches!(target, Target::Block(_)) && !args.yes {
        let prompt = format!("xtask: everything on {what} will be erased. Type 'yes' to write: ");
        if !confirm(&prompt)? {
            eprintln!("xtask: nothing written");
            return Ok(1);
        }
    }

    let direct = matches!(target, Target::Block(_));
    let mut opts = OpenOptions::new();
    opts.write(true);
    if direct {
        // O_EXCL on a block device (without O_CREAT) makes the open fail with EBUSY if
        // the kernel has it in use (mounted, swap, device-mapper): the last line of
        // defence against a mount that appeared after the checks.
        opts.custom_flags(O_EXCL);
    } else {
        opts.create(true).truncate(true);
    }
    let mut out = opts
        .open(path)
        .map_err(|e| format!("opening {} for writing: {e}", path.display()))?;
    write_all(&mut out, &bytes)?;
    drop(out);
    verify(path, &bytes, direct)?;
    eprintln!(
        "xtask: wrote and verified {} on {}; {}",
        human(bytes.len() as u64),
        path.display(),
        if direct {
            "safe to unplug (see docs/HARDWARE.md for firmware settings)"
        } else {
            "copy it to a stick later with this command or any image writer"
        }
    );
    Ok(0)
}

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path) -> Result<Loop, String> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("running losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed (the check needs root and loop devices): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Loop {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.dev])
            .status();
    }
}

/// Runs `cargo xtask usb` (this very binary) with `args`; returns success and stderr.
fn xtask_usb(release: bool, args: &[&str]) -> Result<(bool, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding xtask itself: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("usb").args(args);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running xtask usb: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The end-to-end check of `cargo xtask test`: the real command against a loop device
/// (refused as not removable, refused without an answer to the question, written with
/// `--force --yes` and compared byte for byte with the image), a regular file, and the
/// disk holding `/` when that is a block device.
pub fn end_to_end(release: bool) -> Result<String, String> {
    let dir = crate::emulator::run_dir("usb-writer");
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = end_to_end_in(&dir, release);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn end_to_end_in(dir: &Path, release: bool) -> Result<String, String> {
    let backing = dir.join("stick.raw");
    let f = File::create(&backing).map_err(|e| format!("creating the loop file: {e}"))?;
    f.set_len(48 << 20)
        .map_err(|e| format!("sizing the loop file: {e}"))?;
    drop(f);
    let lo = Loop::attach(&backing)?;
    let expect_refusal = |args: &[&str], why: &str| -> Result<(), String> {
        let (ok, err) = xtask_usb(release, args)?;
        if ok || !err.contains(why) {
            return Err(format!(
                "`xtask usb {}` should have been refused with '{why}'; it said:\n{err}",
                args.join(" ")
            ));
        }
        Ok(())
    };
    expect_refusal(
        &["--device", &lo.dev, "--yes"],
        "not a removable or USB disk",
    )?;
    expect_refusal(
        &["--device", &lo.dev, "--yes", "--force", "--max-size", "0"],
        "--max-size",
    )?;
    // Forced, but nobody answers the question (stdin is closed).
    expect_refusal(&["--device", &lo.dev, "--force"], "no answer")?;
    let untouched = fs::read(&backing).map_err(|e| e.to_string())?;
    if untouched.iter().any(|&b| b != 0) {
        return Err("a refused write changed the device".into());
    }
    let (ok, err) = xtask_usb(release, &["--device", &lo.dev, "--force", "--yes"])?;
    if !ok || !err.contains("wrote and verified") {
        return Err(format!("writing the loop device failed:\n{err}"));
    }
    let uefi = image::output_dir(release).join("usb/sluice-uefi.img");
    let image = fs::read(&uefi).map_err(|e| format!("reading {}: {e}", uefi.display()))?;
    let written = fs::read(&backing).map_err(|e| e.to_string())?;
    if written.len() < image.len() || written[..image.len()] != image[..] {
        return Err("the loop device does not hold the UEFI image after the write".into());
    }
    // The image must be a GPT disk: protective MBR signature and the "EFI PART" header
    // at LBA 1 (UEFI spec 2.10, 5.2.3 and 5.3.2).
    if written[510..512] != [0x55, 0xaa] || &written[512..520] != b"EFI PART" {
        return Err("the written UEFI image has no GPT header".into());
    }
    let file = dir.join("bios.img");
    let file_s = file.to_string_lossy().into_owned();
    let (ok, err) = xtask_usb(release, &["--device", &file_s, "--firmware", "bios"])?;
    let bios = image::output_dir(release).join("usb/sluice-bios.img");
    if !ok || fs::read(&file).ok() != fs::read(&bios).ok() {
        return Err(format!("writing the BIOS image to a file failed:\n{err}"));
    }
    let mut summary = format!(
        "loop device: refused 3 ways, then {} written and read back; file written",
        human(image.len() as u64)
    );
    // The disk of the running system, when "/" is on a real block device here.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = parse_mountinfo(&mountinfo)
        .into_iter()
        .find(|m| m.mount_point == "/")
        .and_then(|m| block_info(Path::new("/sys"), m.dev).ok());
    if let Some(root) = root.filter(|r| !r.partition) {
        let dev = format!("/dev/{}", root.name);
        if Path::new(&dev).exists() {
            expect_refusal(
                &["--device", &dev, "--force", "--yes"],
                "holds the running system",
            )?;
            summary.push_str(&format!("; {dev} (holds /) refused"));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A throwaway sysfs tree: `dev/block/M:m` links to the device folders, as in /sys.
    struct FakeSys {
        root: PathBuf,
    }

    impl FakeSys {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("sluice-usb-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("dev/block")).unwrap();
            FakeSys { root }
        }
        /// Adds a device folder at `rel` (under devices/) with its dev number and files.
        fn add(&self, rel: &str, dev: DevNum, files: &[(&str, &str)]) -> PathBuf {
            let dir = self.root.join("devices").join(rel);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("dev"), format!("{}:{}\n", dev.0, dev.1)).unwrap();
            for (name, text) in files {
                let p = dir.join(name);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, text).unwrap();
            }
            symlink(
                &dir,
                self.root.join(format!("dev/block/{}:{}", dev.0, dev.1)),
            )
            .unwrap();
            dir
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const STICK: &str =
        "pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb";

    fn stick(sys: &FakeSys) -> BlockInfo {
        sys.add(
            STICK,
            (8, 16),
            &[
                ("size", "60063744\n"), // 30.75 GB
                ("removable", "1\n"),
                ("ro", "0\n"),
                ("device/vendor", "SanDisk \n"),
                ("device/model", "Ultra\n"),
            ],
        );
        sys.add(
            &format!("{STICK}/sdb1"),
            (8, 17),
            &[("partition", "1\n"), ("size", "2048\n")],
        );
        block_info(&sys.root, (8, 16)).unwrap()
    }

    fn checks<'a>(mounts: &'a [Mount], swaps: &'a BTreeSet<DevNum>) -> Checks<'a> {
        Checks {
            mounts,
            swaps,
            max_size_bytes: crate::cli::MAX_SIZE_GIB_DEFAULT * GIB,
            image_bytes: Some(64 << 20),
        }
    }

    #[test]
    fn dev_t_splits_like_glibc() {
        assert_eq!(split_dev(0x0810), (8, 16));
        assert_eq!(split_dev(0x0701), (7, 1));
        // Large minors (e.g. nvme partitions) use the high bits.
        assert_eq!(
            split_dev((259 << 8) | (0x12345 & 0xff) | ((0x12345 & !0xff) << 12)),
            (259, 0x12345)
        );
    }

    #[test]
    fn a_usb_stick_is_read_from_sysfs() {
        let sys = FakeSys::new("stick");
        let info = stick(&sys);
        assert_eq!(info.name, "sdb");
        assert_eq!(info.size_bytes, 60063744 * 512);
        assert!(info.removable && info.usb && !info.partition && !info.read_only);
        assert_eq!(info.model, "SanDisk Ultra");
        assert_eq!(info.related, BTreeSet::from([(8, 16), (8, 17)]));
        assert_eq!(refusals(&info, &checks(&[], &BTreeSet::new())), vec![]);
    }

    #[test]
    fn a_mounted_partition_refuses_the_disk_even_with_force() {
        let sys = FakeSys::new("mounted");
        let info = stick(&sys);
        let mounts = parse_mountinfo(
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
             90 22 8:17 / /media/user/STICK rw shared:50 - vfat /dev/sdb1 rw\n",
        );
        let r = refusals(&info, &checks(&mounts, &BTreeSet::new()));
        assert_eq!(
            r,
            vec![Refusal::Hard(
                "sdb is mounted (/media/user/STICK); unmount it first".into()
            )]
        );
    }

    #[test]
    fn the_disk_of_the_running_system_is_named_as_such() {
        let sys = FakeSys::new("system");
        sys.add(
            "pci0000:00/0000:00:04.0/virtio2/block/vda",
            (254, 0),
            &[("size", "536870912\n"), ("removable", "0\n"), ("ro", "0\n")],
        );
        let info = block_info(&sys.root, (254, 0)).unwrap();
        let mounts = parse_mountinfo("22 1 254:0 / / rw - ext4 /dev/vda rw\n");
        let r = refusals(&info, &checks(&mounts, &BTreeSet::new()));
        assert_eq!(
            r[0],
            Refusal::Hard("vda holds the running system (/ is on it)".into())
        );
        // Not removable and 256 GiB: both soft refusals are listed after the hard one.
        assert_eq!(r.len(), 3);
        assert!(matches!(&r[1], Refusal::Soft(s) if s.contains("not a removable")));
        assert!(matches!(&r[2], Refusal::Soft(s) if s.contains("larger than --max-size")));
    }

    #[test]
    fn a_system_on_lvm_is_found_through_holders() {
        let sys = FakeSys::new("lvm");
        let disk = sys.add(
            "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
            (8, 0),
            &[("size", "1000215216\n"), ("removable", "0\n")],
        );
        let part = sys.add(
            "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2",
            (8, 2),
            &[("partition", "2\n"), ("size", "1000000000\n")],
        );
        let dm = sys.add("virtual/block/dm-0", (253, 0), &[("size", "1000000000\n")]);
        fs::create_dir_all(part.join("holders")).unwrap();
        symlink(&dm, part.join("holders/dm-0")).unwrap();
        let _ = disk;
        let info = block_info(&sys.root, (8, 0)).unwrap();
        assert!(info.related.contains(&(253, 0)));
        let mounts = parse_mountinfo("22 1 253:0 / / rw - ext4 /dev/mapper/vg-root rw\n");
        let r = refusals(&info, &checks(&mounts, &BTreeSet::new()));
        assert_eq!(
            r[0],
            Refusal::Hard("sda holds the running system (/ is on it)".into())
        );
    }

    #[test]
    fn partitions_swap_read_only_and_small_disks_are_hard_refusals() {
        let sys = FakeSys::new("hard");
        let info = stick(&sys);
        let part = block_info(&sys.root, (8, 17)).unwrap();
        assert!(part.partition);
        // A partition inherits removable/model from its disk.
        assert!(part.removable && part.usb);
        let r = refusals(&part, &checks(&[], &BTreeSet::new()));
        assert!(matches!(&r[0], Refusal::Hard(s) if s.contains("is a partition")));
        let swaps = BTreeSet::from([(8, 17)]);
        let r = refusals(&info, &checks(&[], &swaps));
        assert_eq!(r, vec![Refusal::Hard("sdb is in use as swap".into())]);
        let mut ro = info.clone();
        ro.read_only = true;
        assert_eq!(
            refusals(&ro, &checks(&[], &BTreeSet::new())),
            vec![Refusal::Hard("sdb is read-only".into())]
        );
        let none = BTreeSet::new();
        let mut c = checks(&[], &none);
        c.image_bytes = Some(info.size_bytes + 1);
        assert!(
            matches!(&refusals(&info, &c)[0], Refusal::Hard(s) if s.contains("the image needs"))
        );
    }

    #[test]
    fn a_usb_disk_that_claims_fixed_is_accepted_but_a_fixed_sata_disk_is_not() {
        let sys = FakeSys::new("soft");
        let original = stick(&sys);
        let mut info = original.clone();
        info.removable = false;
        assert_eq!(refusals(&info, &checks(&[], &BTreeSet::new())), vec![]);
        info.usb = false;
        let r = refusals(&info, &checks(&[], &BTreeSet::new()));
        assert_eq!(r.len(), 1);
        assert!(matches!(&r[0], Refusal::Soft(s) if s.contains("not a removable")));
        let mut big = original;
        big.size_bytes = 128 * GIB;
        let r = refusals(&big, &checks(&[], &BTreeSet::new()));
        assert_eq!(
            r,
            vec![Refusal::Soft(
                "sdb is 128.0 GiB, larger than --max-size 64.0 GiB".into()
            )]
        );
    }

    #[test]
    fn mountinfo_and_swaps_parse() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw\nbad\n",
        );
        assert_eq!(
            m,
            vec![Mount {
                dev: (98, 0),
                mount_point: "/mnt/parent".into()
            }]
        );
        let s = parse_swaps("Filename\tType\tSize\tUsed\tPriority\n/dev/sda3 partition 100 0 -2\n");
        assert_eq!(s, vec!["/dev/sda3".to_string()]);
    }

    #[test]
    fn inspect_tells_files_from_devices() {
        let dir = std::env::temp_dir().join(format!("sluice-usb-inspect-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("stick.img");
        assert_eq!(inspect(&f, Path::new("/sys")), Ok(Target::File(f.clone())));
        fs::write(&f, b"x").unwrap();
        assert_eq!(inspect(&f, Path::new("/sys")), Ok(Target::File(f.clone())));
        assert!(inspect(&dir, Path::new("/sys"))
            .unwrap_err()
            .contains("neither"));
        assert!(inspect(Path::new("/dev/sdzz9"), Path::new("/sys"))
            .unwrap_err()
            .contains("no such device"));
        assert!(inspect(Path::new("/nonexistent-dir/x.img"), Path::new("/sys")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verify_finds_a_changed_byte() {
        let p = std::env::temp_dir().join(format!("sluice-usb-verify-{}", std::process::id()));
        let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        let mut f = File::create(&p).unwrap();
        write_all(&mut f, &image).unwrap();
        drop(f);
        assert_eq!(verify(&p, &image, false), Ok(()));
        let mut bad = image.clone();
        bad[2_500_001] ^= 1;
        let e = verify(&p, &bad, false).unwrap_err();
        assert!(e.contains("byte 2500001"), "{e}");
        let e = verify(&p, &[image.clone(), vec![0]].concat(), false).unwrap_err();
        assert!(e.contains("ends after 3000000"), "{e}");
        fs::remove_file(&p).unwrap();
    }
}
