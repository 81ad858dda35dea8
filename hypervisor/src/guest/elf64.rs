//! Just enough of ELF64 to load a guest executable: the file header, the
//! program header table and its `PT_LOAD` segments.
//!
//! Defined by the System V ABI generic spec (gABI, "Object Files" chapter)
//! and the x86-64 psABI (`EM_X86_64`, little endian, ELFCLASS64). Sections,
//! symbols and relocations are not needed by a loader and are not read.
//! The kernel runs this on untrusted bytes, so every offset and size is
//! checked (no panics, no overflow) when the image is parsed; afterwards the
//! accessors only hand out already-validated data.

use core::fmt;
use core::ops::Range;

use bitflags::bitflags;

/// `e_ident` bytes 0..4.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
pub const ELFCLASS64: u8 = 2;
pub const ELFDATA2LSB: u8 = 1;
pub const EV_CURRENT: u32 = 1;
pub const ET_REL: u16 = 1;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const PT_LOAD: u32 = 1;
/// `e_phnum` escape meaning "real count is in section header 0"; not supported.
pub const PN_XNUM: u16 = 0xFFFF;

/// Size of the ELF64 file header.
pub const EHDR_LEN: usize = 64;
/// Size of one ELF64 program header.
pub const PHDR_LEN: usize = 56;

bitflags! {
    /// `p_flags` permission bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SegmentFlags: u32 {
        const X = 1;
        const W = 2;
        const R = 4;
    }
}

/// A validated `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    /// Index in the program header table (used in error messages).
    pub index: usize,
    pub vaddr: u64,
    pub paddr: u64,
    /// The `p_filesz` bytes from the file; the rest up to `mem_size` is zero.
    pub file_bytes: &'a [u8],
    pub mem_size: u64,
    pub flags: SegmentFlags,
}

impl LoadSegment<'_> {
    /// Guest-physical range the segment occupies.
    pub fn phys_range(&self) -> Range<u64> {
        // Overflow was excluded by `parse`.
        self.paddr..self.paddr + self.mem_size
    }

    /// Virtual range the segment occupies.
    pub fn virt_range(&self) -> Range<u64> {
        self.vaddr..self.vaddr + self.mem_size
    }
}

/// A parsed ELF64 x86-64 executable.
#[derive(Clone, Copy, Debug)]
pub struct Elf64<'a> {
    bytes: &'a [u8],
    entry: u64,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

/// Why a file is not a loadable guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort {
        len: usize,
    },
    BadMagic,
    WrongClass {
        class: u8,
    },
    WrongEndian {
        data: u8,
    },
    WrongVersion {
        version: u32,
    },
    WrongMachine {
        machine: u16,
    },
    PositionIndependent,
    WrongType {
        e_type: u16,
    },
    BadPhentsize {
        size: u16,
    },
    TooManyPhdrs,
    PhdrsOutsideFile {
        phoff: u64,
        phnum: u16,
        file_len: usize,
    },
    NoLoadSegments,
    FileSizeExceedsMemSize {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: usize,
    },
    AddressOverflow {
        index: usize,
        addr: u64,
        memsz: u64,
    },
    SegmentOutsideRam {
        index: usize,
        start: u64,
        end: u64,
        ram_bytes: u64,
    },
    SegmentOverlapsReserved {
        index: usize,
        start: u64,
        end: u64,
        reserved_start: u64,
        reserved_end: u64,
    },
    EntryNotExecutable {
        entry: u64,
    },
}

/// Names of a few machines a guest is likely to be mistakenly built for.
fn machine_name(machine: u16) -> Option<&'static str> {
    Some(match machine {
        0 => "none",
        2 => "SPARC",
        3 => "Intel 80386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "IBM S/390",
        40 => "ARM",
        50 => "IA-64",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => return None,
    })
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElfError::*;
        match *self {
            TooShort { len } => write!(
                f,
                "ELF file is {len} bytes, shorter than the {EHDR_LEN}-byte ELF64 header"
            ),
            BadMagic => write!(f, "not an ELF file (magic is not 7f 45 4c 46)"),
            WrongClass { class } => write!(
                f,
                "ELF class is {class}, expected 2 (ELFCLASS64); build a 64-bit guest"
            ),
            WrongEndian { data } => write!(
                f,
                "ELF data encoding is {data}, expected 1 (little endian)"
            ),
            WrongVersion { version } => write!(f, "ELF version is {version}, expected 1"),
            WrongMachine { machine } => {
                write!(f, "ELF machine is {machine}")?;
                if let Some(name) = machine_name(machine) {
                    write!(f, " ({name})")?;
                }
                write!(f, ", expected 62 (x86-64)")
            }
            PositionIndependent => write!(
                f,
                "position-independent ELF (ET_DYN) is not supported; link the guest at a fixed address"
            ),
            WrongType { e_type } => {
                write!(f, "ELF type is {e_type}")?;
                if e_type == ET_REL {
                    write!(f, " (ET_REL, an unlinked object file)")?;
                }
                write!(f, ", expected 2 (ET_EXEC)")
            }
            BadPhentsize { size } => write!(
                f,
                "ELF program header entry size is {size}, expected at least {PHDR_LEN}"
            ),
            TooManyPhdrs => write!(
                f,
                "ELF uses extended program header numbering (e_phnum = PN_XNUM), not supported"
            ),
            PhdrsOutsideFile {
                phoff,
                phnum,
                file_len,
            } => write!(
                f,
                "ELF program header table ({phnum} entries at offset {phoff:#x}) extends past the end of the {file_len}-byte file"
            ),
            NoLoadSegments => write!(f, "ELF has no PT_LOAD segments; nothing to load"),
            FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "ELF segment {index}: file size {filesz:#x} exceeds memory size {memsz:#x}"
            ),
            SegmentOutsideFile {
                index,
                offset,
                filesz,
                file_len,
            } => write!(
                f,
                "ELF segment {index}: file bytes {offset:#x}+{filesz:#x} extend past the end of the {file_len}-byte file"
            ),
            AddressOverflow { index, addr, memsz } => write!(
                f,
                "ELF segment {index}: address {addr:#x} + size {memsz:#x} overflows 64 bits"
            ),
            SegmentOutsideRam {
                index,
                start,
                end,
                ram_bytes,
            } => write!(
                f,
                "ELF segment {index}: physical range {start:#x}..{end:#x} is outside guest RAM 0x0..{ram_bytes:#x}"
            ),
            SegmentOverlapsReserved {
                index,
                start,
                end,
                reserved_start,
                reserved_end,
            } => write!(
                f,
                "ELF segment {index}: physical range {start:#x}..{end:#x} overlaps the hypervisor-reserved range {reserved_start:#x}..{reserved_end:#x}"
            ),
            EntryNotExecutable { entry } => write!(
                f,
                "ELF entry point {entry:#x} is not inside an executable PT_LOAD segment"
            ),
        }
    }
}

impl core::error::Error for ElfError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = at.checked_add(2).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = at.checked_add(4).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = at.checked_add(8).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// The raw fields of one program header.
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn read_phdr(b: &[u8]) -> Phdr {
    Phdr {
        p_type: u32_at(b, 0),
        flags: u32_at(b, 4),
        offset: u64_at(b, 8),
        vaddr: u64_at(b, 16),
        paddr: u64_at(b, 24),
        filesz: u64_at(b, 32),
        memsz: u64_at(b, 40),
    }
}

/// Checks one `PT_LOAD` header and resolves its file bytes.
fn validate_load<'a>(bytes: &'a [u8], index: usize, p: &Phdr) -> Result<LoadSegment<'a>, ElfError> {
    if p.filesz > p.memsz {
        return Err(ElfError::FileSizeExceedsMemSize {
            index,
            filesz: p.filesz,
            memsz: p.memsz,
        });
    }
    let outside = ElfError::SegmentOutsideFile {
        index,
        offset: p.offset,
        filesz: p.filesz,
        file_len: bytes.len(),
    };
    let file_bytes = usize::try_from(p.offset)
        .ok()
        .zip(usize::try_from(p.filesz).ok())
        .and_then(|(off, len)| bytes.get(off..off.checked_add(len)?))
        .ok_or(outside)?;
    for addr in [p.vaddr, p.paddr] {
        if addr.checked_add(p.memsz).is_none() {
            return Err(ElfError::AddressOverflow {
                index,
                addr,
                memsz: p.memsz,
            });
        }
    }
    Ok(LoadSegment {
        index,
        vaddr: p.vaddr,
        paddr: p.paddr,
        file_bytes,
        mem_size: p.memsz,
        flags: SegmentFlags::from_bits_retain(p.flags),
    })
}

/// Parses and validates an ELF64 x86-64 executable. Never panics.
pub fn parse(bytes: &[u8]) -> Result<Elf64<'_>, ElfError> {
    if bytes.len() < EHDR_LEN {
        // Still say "not ELF" for short non-ELF input: a clearer message.
        if bytes.get(..4) != Some(&ELF_MAGIC[..]) && bytes.len() >= 4 {
            return Err(ElfError::BadMagic);
        }
        return Err(ElfError::TooShort { len: bytes.len() });
    }
    if bytes[..4] != ELF_MAGIC {
        return Err(ElfError::BadMagic);
    }
    if bytes[4] != ELFCLASS64 {
        return Err(ElfError::WrongClass { class: bytes[4] });
    }
    if bytes[5] != ELFDATA2LSB {
        return Err(ElfError::WrongEndian { data: bytes[5] });
    }
    // e_ident[EI_VERSION] and e_version must both be EV_CURRENT.
    let version = u32_at(bytes, 20);
    if bytes[6] != EV_CURRENT as u8 || version != EV_CURRENT {
        let version = if bytes[6] != EV_CURRENT as u8 {
            u32::from(bytes[6])
        } else {
            version
        };
        return Err(ElfError::WrongVersion { version });
    }
    let machine = u16_at(bytes, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine { machine });
    }
    match u16_at(bytes, 16) {
        ET_EXEC => {}
        ET_DYN => return Err(ElfError::PositionIndependent),
        e_type => return Err(ElfError::WrongType { e_type }),
    }
    let entry = u64_at(bytes, 24);
    let phoff = u64_at(bytes, 32);
    let phentsize = u16_at(bytes, 54);
    let phnum = u16_at(bytes, 56);
    if phnum == PN_XNUM {
        return Err(ElfError::TooManyPhdrs);
    }
    // Larger entries are allowed by the gABI (we read the first 56 bytes).
    if usize::from(phentsize) < PHDR_LEN {
        return Err(ElfError::BadPhentsize { size: phentsize });
    }
    let table_end = usize::try_from(phoff).ok().and_then(|off| {
        usize::from(phentsize)
            .checked_mul(usize::from(phnum))?
            .checked_add(off)
    });
    let phoff = match (usize::try_from(phoff), table_end) {
        (Ok(off), Some(end)) if end <= bytes.len() => off,
        _ => {
            return Err(ElfError::PhdrsOutsideFile {
                phoff,
                phnum,
                file_len: bytes.len(),
            })
        }
    };

    let elf = Elf64 {
        bytes,
        entry,
        phoff,
        phentsize: usize::from(phentsize),
        phnum: usize::from(phnum),
    };
    let mut loads = 0usize;
    for (index, p) in elf.phdrs() {
        if p.p_type == PT_LOAD {
            validate_load(bytes, index, &p)?;
            loads += 1;
        }
    }
    if loads == 0 {
        return Err(ElfError::NoLoadSegments);
    }
    Ok(elf)
}

impl<'a> Elf64<'a> {
    /// Entry point (a virtual address, `e_entry`).
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn phdrs(&self) -> impl Iterator<Item = (usize, Phdr)> + 'a {
        let (bytes, phoff, size) = (self.bytes, self.phoff, self.phentsize);
        (0..self.phnum).filter_map(move |i| {
            // In bounds: `parse` checked the whole table.
            let start = phoff.checked_add(i.checked_mul(size)?)?;
            let raw = bytes.get(start..start.checked_add(PHDR_LEN)?)?;
            Some((i, read_phdr(raw)))
        })
    }

    /// The `PT_LOAD` segments in program header order, all validated by `parse`.
    pub fn load_segments(&self) -> impl Iterator<Item = LoadSegment<'a>> + 'a {
        let bytes = self.bytes;
        self.phdrs().filter_map(move |(i, p)| {
            (p.p_type == PT_LOAD)
                .then(|| validate_load(bytes, i, &p).ok())
                .flatten()
        })
    }
}

/// Checks that the image can be loaded into a guest with `ram_bytes` of RAM
/// at guest-physical 0, without touching `reserved` (for example where the
/// hypervisor puts the guest's page tables), and that execution starts
/// inside an executable segment.
pub fn check_fits(elf: &Elf64, ram_bytes: u64, reserved: &[Range<u64>]) -> Result<(), ElfError> {
    for seg in elf.load_segments() {
        let Range { start, end } = seg.phys_range();
        if end > ram_bytes {
            return Err(ElfError::SegmentOutsideRam {
                index: seg.index,
                start,
                end,
                ram_bytes,
            });
        }
        if let Some(r) = reserved.iter().find(|r| start < r.end && r.start < end) {
            return Err(ElfError::SegmentOverlapsReserved {
                index: seg.index,
                start,
                end,
                reserved_start: r.start,
                reserved_end: r.end,
            });
        }
    }
    let entry = elf.entry();
    let entry_ok = elf
        .load_segments()
        .any(|s| s.flags.contains(SegmentFlags::X) && s.virt_range().contains(&entry));
    if !entry_ok {
        return Err(ElfError::EntryNotExecutable { entry });
    }
    Ok(())
}

#[cfg(test)]
// `&[a..b]` is exactly the one-reserved-range slice meant here.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// A test program header.
    #[derive(Clone, Copy)]
    struct Ph {
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(offset: u64, addr: u64, filesz: u64, memsz: u64, flags: u32) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr: addr,
            paddr: addr,
            filesz,
            memsz,
        }
    }

    /// Assembles header + program headers at offset 64, then `body` after
    /// them, padded to `min_len`.
    fn build(entry: u64, phdrs: &[Ph], min_len: usize) -> Vec<u8> {
        let mut v = vec![0u8; EHDR_LEN];
        v[..4].copy_from_slice(&ELF_MAGIC);
        v[4] = ELFCLASS64;
        v[5] = ELFDATA2LSB;
        v[6] = 1;
        v[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        v[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
        v[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        v[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for p in phdrs {
            let mut h = [0u8; PHDR_LEN];
            h[0..4].copy_from_slice(&p.p_type.to_le_bytes());
            h[4..8].copy_from_slice(&p.flags.to_le_bytes());
            h[8..16].copy_from_slice(&p.offset.to_le_bytes());
            h[16..24].copy_from_slice(&p.vaddr.to_le_bytes());
            h[24..32].copy_from_slice(&p.paddr.to_le_bytes());
            h[32..40].copy_from_slice(&p.filesz.to_le_bytes());
            h[40..48].copy_from_slice(&p.memsz.to_le_bytes());
            h[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            v.extend_from_slice(&h);
        }
        if v.len() < min_len {
            v.resize(min_len, 0);
        }
        v
    }

    /// Code at file offset 0x1000 loaded at 1 MiB, plus a bss-style segment.
    fn good() -> Vec<u8> {
        let mut v = build(
            0x10_0010,
            &[
                load(0x1000, 0x10_0000, 0x20, 0x20, 5),
                Ph {
                    p_type: 4, // PT_NOTE: ignored
                    ..load(0, 0, 0, 0, 0)
                },
                load(0x1020, 0x20_0000, 0x10, 0x3000, 6),
            ],
            0x1030,
        );
        v[0x1000] = 0xF4; // hlt
        v
    }

    fn err(v: &[u8]) -> ElfError {
        parse(v).unwrap_err()
    }

    #[test]
    fn happy_path() {
        let v = good();
        let elf = parse(&v).unwrap();
        assert_eq!(elf.entry(), 0x10_0010);
        let segs: Vec<_> = elf.load_segments().collect();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].index, 0);
        assert_eq!(segs[0].paddr, 0x10_0000);
        assert_eq!(segs[0].file_bytes.len(), 0x20);
        assert_eq!(segs[0].file_bytes[0], 0xF4);
        assert_eq!(segs[0].flags, SegmentFlags::R | SegmentFlags::X);
        assert_eq!(segs[1].index, 2);
        assert_eq!(segs[1].mem_size, 0x3000);
        assert_eq!(segs[1].file_bytes.len(), 0x10);
        assert_eq!(segs[1].phys_range(), 0x20_0000..0x20_3000);
        check_fits(&elf, 64 << 20, &[0x1000..0x8000]).unwrap();
    }

    #[test]
    fn header_errors() {
        assert_eq!(err(&[]), ElfError::TooShort { len: 0 });
        assert_eq!(err(&good()[..63]), ElfError::TooShort { len: 63 });
        assert_eq!(err(b"MZ\x90\x00"), ElfError::BadMagic);
        let mut v = good();
        v[0] = 0;
        assert_eq!(err(&v), ElfError::BadMagic);
        let mut v = good();
        v[4] = 1;
        assert_eq!(err(&v), ElfError::WrongClass { class: 1 });
        let mut v = good();
        v[5] = 2;
        assert_eq!(err(&v), ElfError::WrongEndian { data: 2 });
        let mut v = good();
        v[20] = 0;
        assert_eq!(err(&v), ElfError::WrongVersion { version: 0 });
        let mut v = good();
        v[6] = 7;
        assert_eq!(err(&v), ElfError::WrongVersion { version: 7 });
    }

    #[test]
    fn wrong_machine() {
        let mut v = good();
        v[18..20].copy_from_slice(&3u16.to_le_bytes());
        let e = err(&v);
        assert_eq!(e, ElfError::WrongMachine { machine: 3 });
        assert_eq!(
            e.to_string(),
            "ELF machine is 3 (Intel 80386), expected 62 (x86-64)"
        );
        v[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert!(err(&v).to_string().contains("183 (AArch64)"));
        v[18..20].copy_from_slice(&9999u16.to_le_bytes());
        assert_eq!(
            err(&v).to_string(),
            "ELF machine is 9999, expected 62 (x86-64)"
        );
    }

    #[test]
    fn wrong_type() {
        let mut v = good();
        v[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        let e = err(&v);
        assert_eq!(e, ElfError::PositionIndependent);
        assert_eq!(
            e.to_string(),
            "position-independent ELF (ET_DYN) is not supported; link the guest at a fixed address"
        );
        v[16..18].copy_from_slice(&ET_REL.to_le_bytes());
        assert!(err(&v).to_string().contains("ET_REL"));
    }

    #[test]
    fn phdr_table_errors() {
        let mut v = good();
        v[54..56].copy_from_slice(&32u16.to_le_bytes());
        assert_eq!(err(&v), ElfError::BadPhentsize { size: 32 });
        let mut v = good();
        v[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
        assert_eq!(err(&v), ElfError::TooManyPhdrs);
        let mut v = good();
        let near_end = v.len() as u64 - 100;
        v[32..40].copy_from_slice(&near_end.to_le_bytes());
        assert!(matches!(err(&v), ElfError::PhdrsOutsideFile { .. }));
        let mut v = good();
        v[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(err(&v), ElfError::PhdrsOutsideFile { .. }));
        let v = build(0, &[], 64);
        assert_eq!(err(&v), ElfError::NoLoadSegments);
        // A non-LOAD header alone is still "nothing to load".
        let v = build(
            0,
            &[Ph {
                p_type: 6,
                ..load(0, 0, 0, 0, 0)
            }],
            0,
        );
        assert_eq!(err(&v), ElfError::NoLoadSegments);
    }

    #[test]
    fn segment_errors() {
        let v = build(0, &[load(0, 0, 0x20, 0x10, 5)], 0x100);
        assert_eq!(
            err(&v),
            ElfError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 0x20,
                memsz: 0x10
            }
        );
        let v = build(
            0,
            &[load(0, 0, 0, 0, 5), load(0xF0, 0, 0x20, 0x20, 5)],
            0x100,
        );
        let e = err(&v);
        assert!(matches!(e, ElfError::SegmentOutsideFile { index: 1, .. }));
        assert!(e
            .to_string()
            .starts_with("ELF segment 1: file bytes 0xf0+0x20"));
        let v = build(0, &[load(u64::MAX, 0, 2, 2, 5)], 0x100);
        assert!(matches!(err(&v), ElfError::SegmentOutsideFile { .. }));
        let v = build(0, &[load(0, u64::MAX - 4, 0, 0x10, 5)], 0x100);
        assert!(matches!(
            err(&v),
            ElfError::AddressOverflow { index: 0, .. }
        ));
    }

    #[test]
    fn fits_checks() {
        let v = good();
        let elf = parse(&v).unwrap();
        // RAM too small for segment 2 (ends at 0x203000).
        let e = check_fits(&elf, 0x20_2000, &[]).unwrap_err();
        assert_eq!(
            e,
            ElfError::SegmentOutsideRam {
                index: 2,
                start: 0x20_0000,
                end: 0x20_3000,
                ram_bytes: 0x20_2000
            }
        );
        assert_eq!(
            e.to_string(),
            "ELF segment 2: physical range 0x200000..0x203000 is outside guest RAM 0x0..0x202000"
        );
        check_fits(&elf, 0x20_3000, &[]).unwrap();
        // Reserved range touching segment 0's last byte.
        let e = check_fits(&elf, 64 << 20, &[0..0x1000, 0x10_001F..0x10_1000]).unwrap_err();
        assert_eq!(
            e,
            ElfError::SegmentOverlapsReserved {
                index: 0,
                start: 0x10_0000,
                end: 0x10_0020,
                reserved_start: 0x10_001F,
                reserved_end: 0x10_1000
            }
        );
        assert!(e
            .to_string()
            .contains("overlaps the hypervisor-reserved range"));
        // Adjacent ranges do not overlap.
        check_fits(
            &elf,
            64 << 20,
            &[0x10_0020..0x20_0000, 0x20_3000..0x30_0000],
        )
        .unwrap();
    }

    #[test]
    fn entry_checks() {
        // Entry in the non-executable segment.
        let mut v = good();
        v[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        let elf = parse(&v).unwrap();
        assert_eq!(
            check_fits(&elf, 64 << 20, &[]),
            Err(ElfError::EntryNotExecutable { entry: 0x20_0000 })
        );
        // Entry just past the executable segment.
        v[24..32].copy_from_slice(&0x10_0020u64.to_le_bytes());
        let elf = parse(&v).unwrap();
        assert!(check_fits(&elf, 64 << 20, &[]).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let template = good();
        for _ in 0..10_000 {
            let mut v = template.clone();
            for _ in 0..(1 + next() % 8) {
                // Bias corruption towards the headers, where the checks are.
                let at = (next() % 200) as usize;
                v[at] = next() as u8;
            }
            v.truncate((next() % template.len() as u64) as usize + 1);
            if let Ok(elf) = parse(&v) {
                let _ = elf.load_segments().count();
                let _ = check_fits(&elf, 64 << 20, &[0..0x1000]);
            }
        }
    }
}
