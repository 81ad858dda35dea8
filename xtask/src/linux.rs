//! The Linux guest (`cargo xtask run --guest linux`): an unmodified bzImage, an initrd
//! and a command line packed into one guest payload (the bundle of
//! `hypervisor::guest::linux_boot`, started with `guest.entry = linux`).
//!
//! Defaults, fetched from Debian's archive once and cached below `<target>/linux/`:
//!
//! ```text
//! <target>/linux/
//!   linux-image-<abi>-amd64/boot/vmlinuz-<abi>-amd64    the kernel (only this file of
//!                                                        the package is unpacked)
//!   busybox-static/bin/busybox                          the only program of the initramfs
//!   initramfs.cpio                                      the generated initramfs, written
//!                                                        on each run for inspection
//! ```
//!
//! The kernel is the package `linux-image-amd64` depends on (`apt-cache depends`),
//! fetched with `apt-get download` (no installation, no root needed) and unpacked with
//! `dpkg-deb --fsys-tarfile | tar -x`. Once a kernel is cached it is reused without
//! asking apt; delete `<target>/linux/` to fetch the current one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hypervisor::guest::linux_boot::{self, BootError};

use crate::image::workspace_root;

/// `--cmdline` default: the serial console on the UART sluice emulates, and no ACPI,
/// PCI, local APIC or IO-APIC, so the kernel runs its timer on the PIT through the 8259
/// PIC. No `panic=`: after a panic the kernel waits (the run's timeout ends it) instead
/// of rebooting into a loop.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 acpi=off pci=off nolapic noapic";
/// `--ram` default for a Linux guest.
pub const RAM_MIB_DEFAULT: u32 = 256;
/// Smallest `--ram` accepted for a Linux guest: the stock kernel decompresses itself
/// into ~60 MiB and then needs room to run user space from the initramfs.
pub const RAM_MIB_MIN: u32 = 128;

/// The Debian metapackage whose dependency is the current kernel package.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// `/init` of the generated initramfs. Busybox's shell sets a default PATH, but the
/// kernel starts init with no PATH at all, so it is set explicitly.
pub const INIT_SCRIPT: &str = "\
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo \"sluice-linux: init started\"
echo \"sluice-linux: uname $(uname -sr)\"
cat /proc/interrupts
grep -i ttyS /proc/tty/driver/serial 2>/dev/null || cat /proc/tty/driver/serial
echo \"sluice-linux: done\"
poweroff -f
";

/// Busybox applets linked in `/bin` (next to `busybox`).
const BIN_APPLETS: &[&str] = &["sh", "mount", "cat", "uname", "echo", "grep"];

/// `<target>/linux`, where `<target>` is `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("linux")
}

// ---------------------------------------------------------------------------------------
// Bundle
// ---------------------------------------------------------------------------------------

/// Checks `kernel` and `cmdline` and packs the three parts into the bundle the
/// hypervisor's loader takes (`linux_boot::decode_bundle`).
pub fn bundle(kernel: &[u8], initrd: &[u8], cmdline: &str) -> Result<Vec<u8>, String> {
    let image = linux_boot::parse_bzimage(kernel).map_err(|e| e.to_string())?;
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineHasNul { at }.to_string());
    }
    if cmdline.len() as u64 > u64::from(image.cmdline_size()) {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: image.cmdline_size(),
        }
        .to_string());
    }
    let (c, k, i, end) = linux_boot::bundle_layout(cmdline.len(), kernel.len(), initrd.len());
    let mut out = vec![0u8; end];
    out[..linux_boot::BUNDLE_HEADER_LEN]
        .copy_from_slice(&linux_boot::encode_bundle_header(cmdline, kernel, initrd));
    out[c..c + cmdline.len()].copy_from_slice(cmdline.as_bytes());
    out[k..k + kernel.len()].copy_from_slice(kernel);
    out[i..i + initrd.len()].copy_from_slice(initrd);
    Ok(out)
}

/// One line about a kernel for the run's log: its version string when it has one.
pub fn describe(kernel: &[u8]) -> String {
    match linux_boot::parse_bzimage(kernel) {
        Ok(k) => {
            let v = k.version();
            let mut s = format!("boot protocol {}.{:02}", v >> 8, v & 0xFF);
            if let Some(name) = k.kernel_version() {
                s = format!("{name}, {s}");
            }
            s
        }
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Initramfs
// ---------------------------------------------------------------------------------------

/// The default initramfs: Debian's static busybox and [`INIT_SCRIPT`]. Also written to
/// `<target>/linux/initramfs.cpio`.
pub fn default_initramfs() -> Result<Vec<u8>, String> {
    let busybox = default_busybox()?;
    let bytes =
        std::fs::read(&busybox).map_err(|e| format!("reading {}: {e}", busybox.display()))?;
    let archive = initramfs_archive(&bytes)?;
    let out = cache_dir().join("initramfs.cpio");
    std::fs::write(&out, &archive).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(archive)
}

/// A newc cpio archive (the initramfs format, Linux's
/// `Documentation/driver-api/early-userspace/buffer-format.rst`) around `busybox`:
/// `/init`, busybox with its applet links, mount points and the console devices. Every
/// entry has uid, gid and mtime 0 and inode numbers count up from 1, so the same busybox
/// always gives the same bytes.
pub fn initramfs_archive(busybox: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = Initramfs::default();
    for dir in ["bin", "sbin", "proc", "sys", "dev", "etc"] {
        archive.add(dir, S_IFDIR | 0o755, (0, 0), &[]);
    }
    // Without /dev/console the kernel starts init with no stdin/stdout ("unable to open
    // an initial console"): devtmpfs is not mounted on an initramfs.
    archive.add("dev/console", S_IFCHR | 0o600, (5, 1), &[]);
    archive.add("dev/ttyS0", S_IFCHR | 0o660, (4, 64), &[]);
    archive.add("bin/busybox", S_IFREG | 0o755, (0, 0), busybox);
    for applet in BIN_APPLETS {
        archive.add(
            &format!("bin/{applet}"),
            S_IFLNK | 0o777,
            (0, 0),
            b"busybox",
        );
    }
    archive.add("sbin/poweroff", S_IFLNK | 0o777, (0, 0), b"../bin/busybox");
    archive.add("init", S_IFREG | 0o755, (0, 0), INIT_SCRIPT.as_bytes());
    archive
        .finish()
        .map_err(|e| format!("building the initramfs: {e}"))
}

/// File type bits of a newc entry's mode, as in `st_mode` (inode(7)).
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// An initramfs being written with the `cpio` crate's newc writer. The first error is
/// kept and reported by [`Initramfs::finish`].
#[derive(Default)]
struct Initramfs {
    out: Vec<u8>,
    entries: u32,
    error: Option<std::io::Error>,
}

impl Initramfs {
    /// One entry: a directory (nlink 2), a file, a symlink (its data is the target,
    /// without a NUL) or a device node (`rdev` is its major and minor number).
    fn add(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.entries += 1;
        let Ok(size) = u32::try_from(data.len()) else {
            self.error = Some(std::io::Error::other(format!(
                "{path}: {} bytes is more than a newc entry holds",
                data.len()
            )));
            return;
        };
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let mut writer = cpio::NewcBuilder::new(path)
            .ino(self.entries)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(0)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, size);
        let written = std::io::Write::write_all(&mut writer, data).and_then(|()| writer.finish());
        if let Err(e) = written {
            self.error = Some(e);
        }
    }

    /// The archive with its `TRAILER!!!` entry.
    fn finish(mut self) -> std::io::Result<Vec<u8>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        cpio::newc::trailer(&mut self.out)?;
        Ok(self.out)
    }
}

// ---------------------------------------------------------------------------------------
// Fetching from Debian's archive
// ---------------------------------------------------------------------------------------

/// The cached Debian kernel, downloaded first if there is none.
pub fn default_kernel() -> Result<PathBuf, String> {
    let cache = cache_dir();
    if let Some(found) = cached_kernel(&cache) {
        return Ok(found);
    }
    need_tools()?;
    let package = kernel_package()?;
    let dir = cache.join(&package);
    fetch(&package, &dir, "./boot/vmlinuz-*")?;
    cached_kernel(&cache).ok_or_else(|| {
        format!(
            "the package {package} has no boot/vmlinuz-* (looked in {})",
            dir.display()
        )
    })
}

/// `<target>/linux/busybox-static/bin/busybox`, downloaded first if absent.
fn default_busybox() -> Result<PathBuf, String> {
    let dir = cache_dir().join(BUSYBOX_PACKAGE);
    let path = dir.join("bin/busybox");
    if path.is_file() {
        return Ok(path);
    }
    need_tools()?;
    fetch(BUSYBOX_PACKAGE, &dir, "./bin/busybox")?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the package {BUSYBOX_PACKAGE} has no bin/busybox (looked in {})",
            dir.display()
        ))
    }
}

/// `<cache>/linux-image-*/boot/vmlinuz-*`; the last in name order if there are several.
fn cached_kernel(cache: &Path) -> Option<PathBuf> {
    let mut found = Vec::new();
    for pkg in std::fs::read_dir(cache).ok()?.flatten() {
        let name = pkg.file_name().to_string_lossy().into_owned();
        if !name.starts_with("linux-image-") || !pkg.path().is_dir() {
            continue;
        }
        let Ok(boot) = std::fs::read_dir(pkg.path().join("boot")) else {
            continue;
        };
        found.extend(
            boot.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                }),
        );
    }
    found.sort();
    found.pop()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// apt-get, apt-cache, dpkg-deb and tar, with the Debian package of each.
fn need_tools() -> Result<(), String> {
    let missing: Vec<String> = [
        ("apt-get", "apt"),
        ("apt-cache", "apt"),
        ("dpkg-deb", "dpkg"),
        ("tar", "tar"),
    ]
    .into_iter()
    .filter(|(program, _)| !on_path(program))
    .map(|(program, package)| format!("{program} (package {package})"))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "missing {}: the default Linux kernel and initramfs come from Debian's archive; \
         on Debian/Ubuntu install with `sudo apt-get install apt dpkg tar`, elsewhere pass \
         your own --kernel PATH and --initrd PATH",
        missing.join(", ")
    ))
}

/// The versioned kernel package behind `linux-image-amd64`, e.g.
/// `linux-image-6.1.0-56-amd64`.
fn kernel_package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .map_err(|e| format!("could not run apt-cache: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match kernel_dependency(&text) {
        Some(p) if out.status.success() => Ok(p),
        _ => Err(format!(
            "`apt-cache depends {KERNEL_METAPACKAGE}` names no kernel package ({}); \
             refresh the package lists with `sudo apt-get update`, or pass --kernel PATH",
            first_line(&String::from_utf8_lossy(&out.stderr)).unwrap_or("no Depends line")
        )),
    }
}

/// The `linux-image-<abi>-amd64` dependency in `apt-cache depends` output.
fn kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let (key, value) = line.trim().trim_start_matches('|').split_once(':')?;
        let value = value.trim();
        (key.trim() == "Depends"
            && value.starts_with("linux-image-")
            && value.ends_with("-amd64")
            && value != KERNEL_METAPACKAGE
            && !value.contains(char::is_whitespace))
        .then(|| value.to_string())
    })
}

fn first_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).find(|l| !l.is_empty())
}

/// `apt-get download <package>` into a scratch folder, then the members matching
/// `member` (a tar wildcard) unpacked into `dest`. The .deb is dropped afterwards (the
/// kernel package is ~70 MB for a ~8 MB vmlinuz). `dest` appears only when complete.
fn fetch(package: &str, dest: &Path, member: &str) -> Result<(), String> {
    let cache = cache_dir();
    fetch_with(&cache, package, dest, |scratch, unpacked| {
        eprintln!(
            "xtask: downloading {package} from Debian's archive into {}",
            cache.display()
        );
        let out = Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(scratch)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run apt-get: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
                .collect();
            return Err(format!(
                "`apt-get download {package}` failed (no network to the Debian mirrors?): {}; \
                 pass --kernel PATH and --initrd PATH to use local files",
                if why.is_empty() {
                    format!("exit status {}", out.status)
                } else {
                    why.join(" ")
                }
            ));
        }
        let deb = std::fs::read_dir(scratch)
            .map_err(|e| format!("reading {}: {e}", scratch.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("`apt-get download {package}` produced no .deb"))?;
        extract(&deb, unpacked, member)
    })
}

/// Runs `produce(scratch, unpacked)` and moves `unpacked` to `dest` in one rename, so
/// `dest` is either absent or complete. Several runs (or the bench's threads) may fetch
/// the same package at once: a lock file per package in `cache` lets one fetch at a
/// time, the others find `dest` complete once they get the lock and use it, and every
/// call has a scratch folder of its own (process id and a counter), removed afterwards.
fn fetch_with(
    cache: &Path,
    package: &str,
    dest: &Path,
    produce: impl FnOnce(&Path, &Path) -> Result<(), String>,
) -> Result<(), String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let lock_path = cache.join(format!(".fetch-{package}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if dest.is_dir() {
        return Ok(());
    }
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let scratch = cache.join(format!(".fetch-{package}-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let unpacked = scratch.join("root");
    let result = std::fs::create_dir_all(&unpacked)
        .map_err(|e| format!("creating {}: {e}", unpacked.display()))
        .and_then(|()| produce(&scratch, &unpacked))
        .and_then(|()| match std::fs::rename(&unpacked, dest) {
            Ok(()) => Ok(()),
            // Another fetch that did not take the lock (an older xtask) finished first.
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(format!(
                "moving {} to {}: {e}",
                unpacked.display(),
                dest.display()
            )),
        });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// `dpkg-deb --fsys-tarfile <deb> | tar -x -C <into> --wildcards <member>`.
fn extract(deb: &Path, into: &Path, member: &str) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run dpkg-deb: {e}"))?;
    let tar_in = dpkg.stdout.take().ok_or("dpkg-deb has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .args(["--wildcards", "--no-same-owner", member])
        .stdin(tar_in)
        .output()
        .map_err(|e| format!("could not run tar: {e}"))?;
    let mut dpkg_err = String::new();
    if let Some(mut e) = dpkg.stderr.take() {
        let _ = e.read_to_string(&mut dpkg_err);
    }
    let dpkg_status = dpkg
        .wait()
        .map_err(|e| format!("waiting for dpkg-deb: {e}"))?;
    if !dpkg_status.success() {
        return Err(format!(
            "`dpkg-deb --fsys-tarfile {}` failed: {}",
            deb.display(),
            dpkg_err.trim()
        ));
    }
    if !tar.status.success() {
        return Err(format!(
            "unpacking {member} from {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&tar.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newc format as the kernel reads it (buffer-format.rst), checked here
    /// independently of the writer: magic, a 110-byte header of 13 eight-digit hex
    /// fields, the NUL-terminated name and the data each padded to 4 bytes.
    const MAGIC: &[u8; 6] = b"070701";
    const HEADER_LEN: usize = 110;
    const TRAILER: &str = "TRAILER!!!";

    /// A bzImage header as Linux 6.x writes it (protocol 2.15, header ends at 0x26C,
    /// 64-bit entry, relocatable), with a 4 KiB protected-mode body.
    fn bzimage() -> Vec<u8> {
        let setup_sects = 3usize;
        let mut f = vec![0u8; (setup_sects + 1) * 512];
        let mut put = |off: usize, v: u64, len: usize| {
            f[off..off + len].copy_from_slice(&v.to_le_bytes()[..len]);
        };
        let body_len = 0x1000u64;
        put(0x1F1, setup_sects as u64, 1);
        put(0x1F4, body_len / 16, 4); // syssize
        put(0x1FE, 0xAA55, 2);
        put(0x200, 0xEB, 1);
        put(0x201, 0x6A, 1);
        put(0x206, 0x020F, 2);
        put(0x20E, 0x400, 2); // kernel_version string at 0x600
        put(0x211, u64::from(linux_boot::LOADED_HIGH), 1);
        put(0x22C, 0x7FFF_FFFF, 4); // initrd_addr_max
        put(0x230, 0x20_0000, 4); // kernel_alignment
        put(0x234, 1, 1); // relocatable
        put(
            0x236,
            u64::from(linux_boot::XLF_KERNEL_64 | linux_boot::XLF_CAN_BE_LOADED_ABOVE_4G),
            2,
        );
        put(0x238, 2047, 4); // cmdline_size
        put(0x258, 0x100_0000, 8); // pref_address
        put(0x260, 0x80_0000, 4); // init_size
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x600..0x60B].copy_from_slice(b"6.1.0-test\0");
        f.extend((0..body_len).map(|i| (i * 7 + 3) as u8));
        f
    }

    #[test]
    fn bundles_round_trip_through_the_hypervisors_decoder() {
        let kernel = bzimage();
        let initrd = initramfs_archive(b"busybox").unwrap();
        let b = bundle(&kernel, &initrd, DEFAULT_CMDLINE).unwrap();
        let d = linux_boot::decode_bundle(&b).unwrap();
        assert_eq!(d.cmdline, DEFAULT_CMDLINE);
        assert_eq!(d.kernel, &kernel[..]);
        assert_eq!(d.initrd, &initrd[..]);
        let empty = bundle(&kernel, &[], "").unwrap();
        let d = linux_boot::decode_bundle(&empty).unwrap();
        assert_eq!((d.cmdline, d.kernel, d.initrd.len()), ("", &kernel[..], 0));
        assert_eq!(
            describe(&kernel),
            "6.1.0-test, boot protocol 2.15".to_string()
        );
    }

    #[test]
    fn bad_kernels_and_command_lines_are_refused_before_booting() {
        let e = bundle(b"MZ not a kernel at all", &[], "").unwrap_err();
        assert!(e.starts_with("not a Linux bzImage"), "{e}");
        let mut old = bzimage();
        old[0x206] = 0x0B; // 2.11
        let e = bundle(&old, &[], "").unwrap_err();
        assert!(e.contains("boot protocol 2.11 is too old"), "{e}");
        let mut no64 = bzimage();
        no64[0x236] = 0;
        let e = bundle(&no64, &[], "").unwrap_err();
        assert!(e.contains("no 64-bit entry point"), "{e}");
        let mut short = bzimage();
        short.truncate(short.len() - 100);
        assert!(bundle(&short, &[], "").unwrap_err().contains("bytes"));
        let e = bundle(&bzimage(), &[], &"x".repeat(2048)).unwrap_err();
        assert!(
            e.contains("2048 bytes") && e.contains("at most 2047"),
            "{e}"
        );
        assert!(bundle(&bzimage(), &[], &"x".repeat(2047)).is_ok());
        let e = bundle(&bzimage(), &[], "console=ttyS0\0quiet").unwrap_err();
        assert!(e.contains("NUL byte at offset 13"), "{e}");
    }

    /// One newc entry: name, mode, (rdev major, minor), data.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    fn parse_newc(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - b.len()) % 4, 0);
            assert_eq!(&b[..6], MAGIC);
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, uid, gid, mtime) = (field(1), field(2), field(3), field(5));
            assert_eq!((uid, gid, mtime), (0, 0, 0), "not reproducible");
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name =
                String::from_utf8(b[HEADER_LEN..HEADER_LEN + namesize - 1].to_vec()).unwrap();
            let data_at = (HEADER_LEN + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).next_multiple_of(4)..];
            if name == TRAILER {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, (field(9), field(10)), data));
        }
    }

    #[test]
    fn initramfs_has_init_busybox_links_and_consoles() {
        let fake = b"\x7fELF fake busybox".as_slice();
        let archive = initramfs_archive(fake).unwrap();
        assert_eq!(archive, initramfs_archive(fake).unwrap(), "reproducible");
        let entries = parse_newc(&archive);
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.0 == name)
                .unwrap_or_else(|| panic!("no {name} in {entries:?}"))
        };
        for dir in ["bin", "sbin", "proc", "sys", "dev", "etc"] {
            assert_eq!(find(dir).1, S_IFDIR | 0o755, "{dir}");
        }
        let init = find("init");
        assert_eq!(init.1, S_IFREG | 0o755);
        let script = std::str::from_utf8(&init.3).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"));
        for line in [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "echo \"sluice-linux: init started\"",
            "echo \"sluice-linux: uname $(uname -sr)\"",
            "cat /proc/interrupts",
            "echo \"sluice-linux: done\"",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}");
        }
        assert!(script.trim_end().ends_with("poweroff -f"));
        assert_eq!(find("bin/busybox").1, S_IFREG | 0o755);
        assert_eq!(find("bin/busybox").3, fake);
        for applet in ["sh", "mount", "cat", "uname", "echo", "grep"] {
            let link = find(&format!("bin/{applet}"));
            assert_eq!((link.1, &link.3[..]), (S_IFLNK | 0o777, &b"busybox"[..]));
        }
        assert_eq!(find("sbin/poweroff").3, b"../bin/busybox");
        assert_eq!(find("dev/console").1 & !0o7777, S_IFCHR);
        assert_eq!(find("dev/console").2, (5, 1));
        assert_eq!(find("dev/ttyS0").2, (4, 64));
        // Every program the script runs is a link in /bin or /sbin.
        for word in ["mount", "echo", "uname", "cat", "grep", "poweroff"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e.0.ends_with(&format!("bin/{word}"))),
                "{word}"
            );
        }
    }

    #[test]
    fn the_kernel_package_comes_from_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        let alt = "linux-image-amd64\n  Recommends: firmware-linux-free\n \
                   |Depends: linux-image-6.12.9-amd64\n  Depends: linux-image-6.12.9-amd64-unsigned\n";
        assert_eq!(
            kernel_dependency(alt).as_deref(),
            Some("linux-image-6.12.9-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-amd64\n"), None);
        assert_eq!(kernel_dependency("  Depends: linux-image-amd64\n"), None);
        assert_eq!(kernel_dependency(""), None);
    }

    #[test]
    fn concurrent_fetches_of_one_package_produce_it_once_and_all_succeed() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::{Arc, Barrier};
        let cache = std::env::temp_dir().join(format!("sluice-fetch-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let dest = cache.join("busybox-static");
        let produced = Arc::new(AtomicU32::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, dest) = (cache.clone(), dest.clone());
                let (produced, start) = (Arc::clone(&produced), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    fetch_with(&cache, "busybox-static", &dest, |scratch, unpacked| {
                        produced.fetch_add(1, Ordering::SeqCst);
                        // Long enough for every other thread to reach the fetch.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        std::fs::write(scratch.join("package.deb"), b"deb").unwrap();
                        std::fs::create_dir_all(unpacked.join("bin")).unwrap();
                        std::fs::write(unpacked.join("bin/busybox"), b"busybox").unwrap();
                        Ok(())
                    })
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(()));
        }
        assert_eq!(
            produced.load(Ordering::SeqCst),
            1,
            "downloaded more than once"
        );
        assert_eq!(std::fs::read(dest.join("bin/busybox")).unwrap(), b"busybox");
        let left: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(left, ["busybox-static"], "scratch folders left behind");
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_failed_fetch_leaves_no_package_behind() {
        let cache = std::env::temp_dir().join(format!("sluice-fetch-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let dest = cache.join("pkg");
        let e = fetch_with(&cache, "pkg", &dest, |_, unpacked| {
            std::fs::write(unpacked.join("half"), b"x").unwrap();
            Err("network down".into())
        })
        .unwrap_err();
        assert_eq!(e, "network down");
        assert!(!dest.exists());
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn cached_kernels_are_found_without_apt() {
        let dir = std::env::temp_dir().join(format!("sluice-linux-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(cached_kernel(&dir), None);
        let boot = dir.join("linux-image-6.1.0-56-amd64/boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::create_dir_all(dir.join("busybox-static/bin")).unwrap();
        assert_eq!(cached_kernel(&dir), None);
        std::fs::write(boot.join("config-6.1.0-56-amd64"), "").unwrap();
        std::fs::write(boot.join("vmlinuz-6.1.0-56-amd64"), "").unwrap();
        assert_eq!(
            cached_kernel(&dir),
            Some(boot.join("vmlinuz-6.1.0-56-amd64"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
