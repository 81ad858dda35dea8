//! A writer for "newc" cpio archives (magic `070701`), the format the Linux kernel
//! unpacks an initramfs from (Linux `Documentation/driver-api/early-userspace/
//! buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header, the NUL-terminated path, zero padding to a
//! multiple of 4 bytes, then the file data, zero-padded to a multiple of 4. The header
//! is the magic followed by 13 fields of 8 hexadecimal digits:
//!
//! ```text
//! ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
//! ```
//!
//! (namesize counts the NUL; check is 0 in the newc format). The archive ends with an
//! entry named `TRAILER!!!`. A symlink's data is its target, without a NUL.
//!
//! The archive is reproducible: uid, gid and mtime are 0, inode numbers count up from 1
//! in the order entries are added, and paths are stored without a leading `/`, relative
//! to the root the kernel unpacks into. Pure logic: bytes go to a caller-provided sink,
//! nothing is allocated, nothing panics.

use core::fmt;

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// Length of the fixed header.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (as in `st_mode`).
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
/// Permission bits a caller may pass (including setuid/setgid/sticky).
pub const PERMISSION_BITS: u32 = 0o7777;

/// Bytes one entry takes: header and name (with its NUL) padded to 4, data padded to
/// 4. `None` on overflow.
pub const fn entry_len(path_len: usize, data_len: usize) -> Option<usize> {
    let Some(head) = (HEADER_LEN + 1).checked_add(path_len) else {
        return None;
    };
    let Some(head) = head.checked_next_multiple_of(4) else {
        return None;
    };
    let Some(data) = data_len.checked_next_multiple_of(4) else {
        return None;
    };
    head.checked_add(data)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpioError {
    /// The path is empty (or only slashes).
    EmptyPath,
    /// The path contains a NUL byte, which would end the stored name early.
    NulInPath,
    /// The path is `TRAILER!!!`, which would end the archive.
    ReservedName,
    /// `mode` has bits outside the permission bits (the type comes from the method).
    BadMode { mode: u32 },
    /// The data (or path) is longer than the 32-bit size field can say.
    TooLarge { len: usize },
    /// More entries than 32-bit inode numbers can count.
    TooManyEntries,
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CpioError::EmptyPath => write!(f, "cpio: empty path"),
            CpioError::NulInPath => write!(f, "cpio: path contains a NUL byte"),
            CpioError::ReservedName => write!(f, "cpio: {TRAILER} is reserved for the trailer"),
            CpioError::BadMode { mode } => {
                write!(
                    f,
                    "cpio: mode {mode:#o} has bits outside {PERMISSION_BITS:#o}"
                )
            }
            CpioError::TooLarge { len } => {
                write!(f, "cpio: {len} bytes do not fit a 32-bit size field")
            }
            CpioError::TooManyEntries => write!(f, "cpio: too many entries for 32-bit inodes"),
        }
    }
}

/// Writes a newc archive entry by entry to `sink`, which receives the bytes in order.
pub struct CpioWriter<F: FnMut(&[u8])> {
    sink: F,
    written: u64,
    next_ino: u32,
}

/// What one header says besides name and size.
struct Meta {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

impl<F: FnMut(&[u8])> CpioWriter<F> {
    pub fn new(sink: F) -> Self {
        CpioWriter {
            sink,
            written: 0,
            next_ino: 1,
        }
    }

    /// Bytes handed to the sink so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// A directory (nlink 2, no data).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(path, S_IFDIR, mode, 2, (0, 0), &[])
    }

    /// A regular file with `data`.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        self.add(path, S_IFREG, mode, 1, (0, 0), data)
    }

    /// A symbolic link to `target` (mode 0777, as symlink permissions are unused).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(path, S_IFLNK, 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node, e.g. `dev/console` (5, 1).
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, S_IFCHR, mode, 1, (major, minor), &[])
    }

    /// A block device node.
    pub fn add_block_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, S_IFBLK, mode, 1, (major, minor), &[])
    }

    /// Writes the `TRAILER!!!` entry (inode 0, mode 0, nlink 1) and returns the
    /// archive's length in bytes (a multiple of 4).
    pub fn finish(mut self) -> u64 {
        let meta = Meta {
            ino: 0,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
        };
        // The trailer's name and size are constants that fit the header.
        self.entry(TRAILER.as_bytes(), &meta, &[]);
        self.written
    }

    fn add(
        &mut self,
        path: &str,
        kind: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<(), CpioError> {
        let name = path.trim_start_matches('/');
        if name.is_empty() {
            return Err(CpioError::EmptyPath);
        }
        if name.bytes().any(|b| b == 0) {
            return Err(CpioError::NulInPath);
        }
        if name == TRAILER {
            return Err(CpioError::ReservedName);
        }
        if mode & !PERMISSION_BITS != 0 {
            return Err(CpioError::BadMode { mode });
        }
        for len in [name.len() + 1, data.len()] {
            if u32::try_from(len).is_err() {
                return Err(CpioError::TooLarge { len });
            }
        }
        let ino = self.next_ino;
        self.next_ino = ino.checked_add(1).ok_or(CpioError::TooManyEntries)?;
        let meta = Meta {
            ino,
            mode: kind | mode,
            nlink,
            rdev,
        };
        self.entry(name.as_bytes(), &meta, data);
        Ok(())
    }

    /// Emits one entry; `name` and `data` lengths were checked to fit in u32.
    fn entry(&mut self, name: &[u8], meta: &Meta, data: &[u8]) {
        let fields = [
            meta.ino,
            meta.mode,
            0, // uid
            0, // gid
            meta.nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            meta.rdev.0,
            meta.rdev.1,
            (name.len() + 1) as u32,
            0, // check
        ];
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(MAGIC);
        for (chunk, value) in header[6..].as_chunks_mut::<8>().0.iter_mut().zip(fields) {
            hex8(chunk, value);
        }
        self.emit(&header);
        self.emit(name);
        self.emit(&[0]);
        self.pad();
        self.emit(data);
        self.pad();
    }

    fn emit(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            (self.sink)(bytes);
            self.written += bytes.len() as u64;
        }
    }

    /// Zero bytes up to the next multiple of 4 from the start of the archive.
    fn pad(&mut self) {
        let n = self.written.next_multiple_of(4) - self.written;
        self.emit(&[0; 3][..n as usize]);
    }
}

/// Eight uppercase hexadecimal digits of `value`.
fn hex8(out: &mut [u8; 8], value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((value >> (28 - 4 * i)) & 0xF) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry.
    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        dev: (u32, u32),
        rdev: (u32, u32),
        check: u32,
        data: Vec<u8>,
    }

    /// A strict newc reader: checks the magic, the hex fields, the NUL after the name,
    /// that every padding byte is zero and every entry starts 4-byte aligned, and that
    /// the archive ends right after the trailer.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry at {at} not aligned");
            assert!(b.len() >= HEADER_LEN, "truncated header at {at}");
            assert_eq!(&b[..6], MAGIC);
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(s.bytes().all(|c| c.is_ascii_hexdigit()), "{s:?}");
                u32::from_str_radix(s, 16).unwrap()
            };
            let f: Vec<u32> = (0..13).map(field).collect();
            let namesize = f[11] as usize;
            let name_end = HEADER_LEN + namesize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&b[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_string();
            assert!(!name.contains('\0'));
            let data_start = name_end.next_multiple_of(4);
            assert!(b[name_end..data_start].iter().all(|&x| x == 0));
            let size = f[6] as usize;
            let data_end = data_start + size;
            let next = data_end.next_multiple_of(4);
            assert!(b[data_end..next].iter().all(|&x| x == 0));
            out.push(Entry {
                name,
                ino: f[0],
                mode: f[1],
                uid: f[2],
                gid: f[3],
                nlink: f[4],
                mtime: f[5],
                dev: (f[7], f[8]),
                rdev: (f[9], f[10]),
                check: f[12],
                data: b[data_start..data_end].to_vec(),
            });
            b = &b[next..];
            if out.last().unwrap().name == TRAILER {
                assert!(b.is_empty(), "{} bytes after the trailer", b.len());
                return out;
            }
        }
    }

    fn archive(build: impl FnOnce(&mut CpioWriter<&mut dyn FnMut(&[u8])>)) -> Vec<u8> {
        let mut v = Vec::new();
        let mut sink = |b: &[u8]| v.extend_from_slice(b);
        let mut w = CpioWriter::new(&mut sink as &mut dyn FnMut(&[u8]));
        build(&mut w);
        let len = w.finish();
        assert_eq!(len as usize, v.len());
        v
    }

    #[test]
    fn round_trip_of_an_initramfs() {
        type Summary<'a> = (&'a str, u32, u32, u32, (u32, u32), &'a [u8]);
        let init = b"#!/bin/sh\necho hello\npoweroff -f\n";
        let busybox = vec![0x7Fu8; 1001];
        let bytes = archive(|w| {
            w.add_dir("/bin", 0o755).unwrap();
            w.add_dir("dev", 0o755).unwrap();
            w.add_char_device("dev/console", 0o600, 5, 1).unwrap();
            w.add_block_device("dev/ram0", 0o660, 1, 0).unwrap();
            w.add_file("bin/busybox", 0o755, &busybox).unwrap();
            w.add_symlink("bin/sh", "busybox").unwrap();
            w.add_file("/init", 0o755, init).unwrap();
        });
        let e = parse(&bytes);
        let summary: Vec<Summary> = e
            .iter()
            .map(|e| (e.name.as_str(), e.ino, e.mode, e.nlink, e.rdev, &e.data[..]))
            .collect();
        assert_eq!(
            summary,
            [
                ("bin", 1, 0o40755, 2, (0, 0), &b""[..]),
                ("dev", 2, 0o40755, 2, (0, 0), b""),
                ("dev/console", 3, 0o20600, 1, (5, 1), b""),
                ("dev/ram0", 4, 0o60660, 1, (1, 0), b""),
                ("bin/busybox", 5, 0o100755, 1, (0, 0), &busybox),
                ("bin/sh", 6, 0o120777, 1, (0, 0), b"busybox"),
                ("init", 7, 0o100755, 1, (0, 0), init),
                (TRAILER, 0, 0, 1, (0, 0), b""),
            ]
        );
        for e in &e {
            assert_eq!(
                (e.uid, e.gid, e.mtime, e.dev, e.check),
                (0, 0, 0, (0, 0), 0)
            );
        }
    }

    #[test]
    fn exact_bytes_of_one_entry() {
        let bytes = archive(|w| w.add_file("init", 0o755, b"hi").unwrap());
        let header = "070701\
                      00000001000081ED000000000000000000000001\
                      00000000000000020000000000000000\
                      00000000000000000000000500000000";
        assert_eq!(&bytes[..HEADER_LEN], header.as_bytes());
        // 110 + "init\0" = 115 -> padded to 116; "hi" padded to 4.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..120], b"hi\0\0");
        assert_eq!(&bytes[120..126], MAGIC);
        assert_eq!(bytes.len(), 120 + 124);
    }

    #[test]
    fn alignment_for_every_name_and_data_length_mod_4() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xA5; data_len];
                let bytes = archive(|w| {
                    w.add_file(&name, 0o644, &data).unwrap();
                    w.add_file("x", 0o644, &data).unwrap();
                });
                assert_eq!(bytes.len() % 4, 0);
                let e = parse(&bytes);
                assert_eq!(e.len(), 3);
                assert_eq!(e[0].name, name);
                assert_eq!(e[0].data, data);
                let first = entry_len(name_len, data_len).unwrap();
                assert_eq!(&bytes[first..first + 6], MAGIC);
                assert_eq!(
                    bytes.len(),
                    first + entry_len(1, data_len).unwrap() + entry_len(TRAILER.len(), 0).unwrap()
                );
            }
        }
        assert_eq!(entry_len(usize::MAX, 0), None);
        assert_eq!(entry_len(0, usize::MAX), None);
    }

    #[test]
    fn trailer_alone_is_an_empty_archive() {
        let bytes = archive(|_| {});
        let e = parse(&bytes);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, "TRAILER!!!");
        assert_eq!(
            (e[0].ino, e[0].mode, e[0].nlink, e[0].data.len()),
            (0, 0, 1, 0)
        );
        // 110 + 11 = 121 -> 124.
        assert_eq!(bytes.len(), 124);
        assert_eq!(entry_len(TRAILER.len(), 0), Some(124));
    }

    #[test]
    fn bad_entries_are_refused_and_write_nothing() {
        let mut v = Vec::new();
        let mut w = CpioWriter::new(|b: &[u8]| v.extend_from_slice(b));
        assert_eq!(w.add_file("", 0o644, b""), Err(CpioError::EmptyPath));
        assert_eq!(w.add_dir("///", 0o755), Err(CpioError::EmptyPath));
        assert_eq!(w.add_file("a\0b", 0o644, b""), Err(CpioError::NulInPath));
        assert_eq!(
            w.add_symlink("/TRAILER!!!", "x"),
            Err(CpioError::ReservedName)
        );
        assert_eq!(
            w.add_file("f", 0o100644, b""),
            Err(CpioError::BadMode { mode: 0o100644 })
        );
        assert_eq!(w.bytes_written(), 0);
        // Inode numbers are only used by entries that were written.
        w.add_dir("ok", 0o4755).unwrap();
        assert_eq!(w.finish(), 116 + 124);
        let e = parse(&v);
        assert_eq!((e[0].ino, e[0].mode), (1, 0o44755));
        assert_eq!(
            CpioError::BadMode { mode: 0o100644 }.to_string(),
            "cpio: mode 0o100644 has bits outside 0o7777"
        );
        assert_eq!(
            CpioError::ReservedName.to_string(),
            "cpio: TRAILER!!! is reserved for the trailer"
        );
    }

    #[test]
    fn inode_numbers_run_out_cleanly() {
        let mut v = Vec::new();
        let mut w = CpioWriter::new(|b: &[u8]| v.extend_from_slice(b));
        w.next_ino = u32::MAX - 1;
        w.add_dir("a", 0o755).unwrap();
        assert_eq!(w.add_dir("b", 0o755), Err(CpioError::TooManyEntries));
        let written = w.bytes_written();
        w.finish();
        assert_eq!(parse(&v)[0].ino, u32::MAX - 1);
        assert_eq!(written, 112); // 110 + "a\0", already aligned
    }

    #[test]
    fn hex_fields() {
        let mut b = [0u8; 8];
        hex8(&mut b, 0);
        assert_eq!(&b, b"00000000");
        hex8(&mut b, 0xDEAD_BEEF);
        assert_eq!(&b, b"DEADBEEF");
        hex8(&mut b, 0x0102_0A0F);
        assert_eq!(&b, b"01020A0F");
    }
}
