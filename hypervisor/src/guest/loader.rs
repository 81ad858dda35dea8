//! Putting a guest image into guest RAM and deciding where it starts, for each entry
//! mode of `guest::EntryMode`. Pure logic over a byte slice (the kernel passes its
//! guest-RAM block, tests a Vec), so every placement rule is host-tested.
//!
//! - Real mode (`real:SEG:OFF`, `real:ADDR`): the flat image is copied to its load
//!   address below 1 MiB; the guest starts at CS:IP with SS:SP = 0000:7C00 (the stack
//!   a PC BIOS hands a boot sector).
//! - Firmware: the image ends at 1 MiB (the legacy BIOS area) and, as on a PC, the same
//!   bytes also appear just below 4 GiB; the guest starts at the reset vector
//!   F000:FFF0 with CS.base = 0xFFFF0000 (SDM Vol. 3A 10.1.4 "First Instruction
//!   Executed").
//! - ELF64: PT_LOAD segments at their physical addresses, the rest of RAM zero; the
//!   top MiB of RAM holds the GDT and identity page tables sluice builds
//!   (`guest_paging`), and the initial stack just below the tables.

use crate::guest::elf64::{self, ElfError};
use crate::guest::long_mode::{self, GuestPagingError, GuestTableMemory};
use crate::guest::{EntryMode, REAL_MODE_LIMIT};

pub use crate::guest::long_mode::{LongModeLayout, LONG_MODE_RESERVED};

/// How the guest starts; the kernel turns this into VMCS guest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Real {
        cs: u16,
        ip: u16,
        ss: u16,
        sp: u16,
    },
    ResetVector,
    Long {
        entry: u64,
        rsp: u64,
        cr3: u64,
        gdt_base: u64,
    },
    /// Linux's 64-bit boot protocol: like `Long`, with the kernel's GDT selectors
    /// (`linux_boot::BOOT_CS`/`BOOT_DS`) and RSI pointing at the zero page.
    Linux {
        entry: u64,
        rsp: u64,
        cr3: u64,
        gdt_base: u64,
        rsi: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub start: Start,
    /// A firmware image's second home below 4 GiB: map guest-physical `high` to the
    /// same RAM as guest-physical `low`, `len` bytes (4 KiB multiples).
    pub firmware_alias: Option<FirmwareAlias>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareAlias {
    pub low: u64,
    pub high: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    NoEntry,
    Empty,
    DoesNotFit { load: u64, len: u64, limit: u64 },
    BadFirmwareSize { len: u64 },
    Elf(ElfError),
    RamTooSmall { ram_bytes: u64 },
    Paging(GuestPagingError),
    Linux(crate::guest::linux_boot::BootError),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::NoEntry => write!(f, "the configuration names no entry mode for the guest"),
            LoadError::Empty => write!(f, "the guest image is empty"),
            LoadError::DoesNotFit { load, len, limit } => {
                write!(f, "{len} bytes loaded at {load:#x} go past {limit:#x}")
            }
            LoadError::BadFirmwareSize { len } => write!(
                f,
                "a firmware image must be a multiple of 4 KiB and at most 1 MiB, got {len} bytes"
            ),
            LoadError::Elf(e) => write!(f, "{e}"),
            LoadError::RamTooSmall { ram_bytes } => {
                write!(
                    f,
                    "{ram_bytes} bytes of guest RAM cannot hold a 64-bit guest"
                )
            }
            LoadError::Paging(e) => write!(f, "building the guest page tables: {e}"),
            LoadError::Linux(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            LoadError::Elf(e) => Some(e),
            LoadError::Paging(e) => Some(e),
            LoadError::Linux(e) => Some(e),
            LoadError::NoEntry
            | LoadError::Empty
            | LoadError::DoesNotFit { .. }
            | LoadError::BadFirmwareSize { .. }
            | LoadError::RamTooSmall { .. } => None,
        }
    }
}

struct RamTables<'a>(&'a mut [u8]);

impl GuestTableMemory for RamTables<'_> {
    fn table_mut(&mut self, gpa: u64) -> &mut [u64; 512] {
        // build_guest_identity_4level only asks for frames inside the range it checked
        // against ram_bytes (= self.0.len()), 4 KiB aligned.
        let start = gpa as usize;
        let bytes: &mut [u8; 4096] = (&mut self.0[start..start + 4096])
            .try_into()
            .expect("a 4 KiB slice");
        // SAFETY: [u8; 4096] and [u64; 512] have the same size; `load` requires guest
        // RAM to be 8-byte aligned (the kernel's block is page-aligned), and gpa is a
        // multiple of 4 KiB, so the u64 alignment holds.
        unsafe { &mut *(bytes as *mut [u8; 4096] as *mut [u64; 512]) }
    }
}

fn copy_into(ram: &mut [u8], at: u64, bytes: &[u8], limit: u64) -> Result<(), LoadError> {
    let len = bytes.len() as u64;
    let end = at
        .checked_add(len)
        .filter(|&e| e <= limit && e <= ram.len() as u64);
    let Some(end) = end else {
        return Err(LoadError::DoesNotFit {
            load: at,
            len,
            limit: limit.min(ram.len() as u64),
        });
    };
    ram[at as usize..end as usize].copy_from_slice(bytes);
    Ok(())
}

/// Loads `image` into `ram` (guest-physical 0 = `ram[0]`, expected zeroed, 8-byte
/// aligned) for `entry`.
pub fn load(ram: &mut [u8], entry: EntryMode, image: &[u8]) -> Result<Loaded, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    let limit_1m = u64::from(REAL_MODE_LIMIT);
    match entry {
        EntryMode::None => Err(LoadError::NoEntry),
        EntryMode::RealSegOff { .. } | EntryMode::RealAddr(_) => {
            let (cs, ip) = entry.real_cs_ip().ok_or(LoadError::NoEntry)?;
            let load = u64::from(entry.real_linear().ok_or(LoadError::NoEntry)?);
            copy_into(ram, load, image, limit_1m)?;
            Ok(Loaded {
                start: Start::Real {
                    cs,
                    ip,
                    ss: 0,
                    sp: 0x7c00,
                },
                firmware_alias: None,
            })
        }
        EntryMode::Firmware => {
            let len = image.len() as u64;
            if len > limit_1m || len % 4096 != 0 {
                return Err(LoadError::BadFirmwareSize { len });
            }
            let low = limit_1m - len;
            copy_into(ram, low, image, limit_1m)?;
            Ok(Loaded {
                start: Start::ResetVector,
                firmware_alias: Some(FirmwareAlias {
                    low,
                    high: (1u64 << 32) - len,
                    len,
                }),
            })
        }
        EntryMode::Linux => {
            use crate::guest::linux_boot::{decode_bundle, load_linux, parse_bzimage, LinuxLayout};
            let ram_bytes = ram.len() as u64;
            let bundle = decode_bundle(image).map_err(LoadError::Linux)?;
            let kernel = parse_bzimage(bundle.kernel).map_err(LoadError::Linux)?;
            let initrd = (!bundle.initrd.is_empty()).then_some(bundle.initrd);
            let s = load_linux(
                ram,
                &kernel,
                bundle.cmdline,
                initrd,
                LinuxLayout::default_for(ram_bytes),
            )
            .map_err(LoadError::Linux)?;
            Ok(Loaded {
                start: Start::Linux {
                    entry: s.entry,
                    rsp: s.rsp,
                    cr3: s.cr3,
                    gdt_base: s.gdt_base,
                    rsi: s.rsi,
                },
                firmware_alias: None,
            })
        }
        EntryMode::Elf64 => {
            if ram.as_ptr().align_offset(8) != 0 {
                return Err(LoadError::RamTooSmall { ram_bytes: 0 });
            }
            let ram_bytes = ram.len() as u64;
            let layout =
                LongModeLayout::for_ram(ram_bytes).ok_or(LoadError::RamTooSmall { ram_bytes })?;
            let elf = elf64::parse(image).map_err(LoadError::Elf)?;
            elf64::check_fits(&elf, ram_bytes, core::slice::from_ref(&layout.reserved))
                .map_err(LoadError::Elf)?;
            for seg in elf.load_segments() {
                // check_fits proved [paddr, paddr + mem_size) lies in RAM.
                copy_into(ram, seg.paddr, seg.file_bytes, ram_bytes)?;
                let bss = seg.paddr + seg.file_bytes.len() as u64..seg.paddr + seg.mem_size;
                ram[bss.start as usize..bss.end as usize].fill(0);
            }
            let cr3 = long_mode::build_guest_identity_4level(
                &mut RamTables(ram),
                layout.tables_gpa,
                ram_bytes,
            )
            .map_err(LoadError::Paging)?;
            let gdt = long_mode::long_mode_gdt();
            for (i, d) in gdt.iter().enumerate() {
                let at = layout.gdt_gpa as usize + i * 8;
                ram[at..at + 8].copy_from_slice(&d.to_le_bytes());
            }
            Ok(Loaded {
                start: Start::Long {
                    entry: elf.entry(),
                    rsp: layout.stack_top,
                    cr3,
                    gdt_base: layout.gdt_gpa,
                },
                firmware_alias: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest RAM for tests, 8-byte aligned like the kernel's page-aligned block (the
    /// page-table view needs u64 alignment).
    struct Ram(Vec<u64>);

    impl Ram {
        fn new(mib: usize) -> Self {
            Ram(vec![0; mib << 17])
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the same memory viewed as bytes; u8 has weaker alignment.
            unsafe { core::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
        }
    }

    #[test]
    fn boot_sector_lands_at_7c00_with_the_bios_stack() {
        let mut r = vec![0u8; 16 << 20];
        let l = load(&mut r, EntryMode::RealAddr(0x7c00), &[0xeb, 0xfe]).unwrap();
        assert_eq!(
            l.start,
            Start::Real {
                cs: 0,
                ip: 0x7c00,
                ss: 0,
                sp: 0x7c00
            }
        );
        assert_eq!(&r[0x7c00..0x7c02], &[0xeb, 0xfe]);
        let l = load(
            &mut r,
            EntryMode::RealSegOff {
                seg: 0x1000,
                off: 0x10,
            },
            &[1, 2],
        )
        .unwrap();
        assert_eq!(
            l.start,
            Start::Real {
                cs: 0x1000,
                ip: 0x10,
                ss: 0,
                sp: 0x7c00
            }
        );
        assert_eq!(&r[0x10010..0x10012], &[1, 2]);
    }

    #[test]
    fn real_mode_images_stop_at_1mib() {
        let mut r = vec![0u8; 16 << 20];
        let e = load(&mut r, EntryMode::RealAddr(0xF_F000), &[0; 0x2000]).unwrap_err();
        assert!(matches!(
            e,
            LoadError::DoesNotFit {
                limit: 0x10_0000,
                ..
            }
        ));
        assert_eq!(load(&mut r, EntryMode::None, &[1]), Err(LoadError::NoEntry));
        assert_eq!(
            load(&mut r, EntryMode::RealAddr(0x7c00), &[]),
            Err(LoadError::Empty)
        );
    }

    #[test]
    fn firmware_ends_at_1mib_and_is_aliased_below_4gib() {
        let mut r = vec![0u8; 16 << 20];
        let mut image = vec![0u8; 0x1_0000];
        image[0xfff0] = 0xea; // what the reset vector executes first
        let l = load(&mut r, EntryMode::Firmware, &image).unwrap();
        assert_eq!(l.start, Start::ResetVector);
        assert_eq!(r[0xf_fff0], 0xea);
        assert_eq!(
            l.firmware_alias,
            Some(FirmwareAlias {
                low: 0xf_0000,
                high: 0xffff_0000,
                len: 0x1_0000
            })
        );
        assert_eq!(
            load(&mut r, EntryMode::Firmware, &[0; 100]),
            Err(LoadError::BadFirmwareSize { len: 100 })
        );
    }

    /// A minimal ELF64 executable: one RX segment at 2 MiB with `code`, memsz = filesz + bss.
    fn elf(code: &[u8], bss: u64, entry: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(&elf64::ELF_MAGIC);
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn elf_segments_page_tables_and_gdt_are_placed() {
        let mut ram = Ram::new(64);
        let r = ram.bytes();
        r[0x20_0004] = 0xaa; // bss must come out zeroed
        let l = load(r, EntryMode::Elf64, &elf(&[0xf4, 0x90], 16, 0x20_0000)).unwrap();
        let layout = LongModeLayout::for_ram(64 << 20).unwrap();
        assert_eq!(
            l.start,
            Start::Long {
                entry: 0x20_0000,
                rsp: layout.stack_top,
                cr3: layout.tables_gpa,
                gdt_base: 63 << 20
            }
        );
        assert_eq!(&r[0x20_0000..0x20_0002], &[0xf4, 0x90]);
        assert_eq!(r[0x20_0004], 0);
        let gdt1 = u64::from_le_bytes(r[(63 << 20) + 8..(63 << 20) + 16].try_into().unwrap());
        assert_eq!(gdt1, long_mode::long_mode_gdt()[1]);
        let pml4e = u64::from_le_bytes(r[layout.tables_gpa as usize..][..8].try_into().unwrap());
        assert_eq!(pml4e & !0xfff, layout.tables_gpa + 0x1000);
    }

    #[test]
    fn elf_errors_come_through() {
        let mut ram = Ram::new(64);
        let r = ram.bytes();
        let e = load(r, EntryMode::Elf64, b"nope").unwrap_err();
        let LoadError::Elf(inner) = e else {
            panic!("expected an ELF error, got {e}");
        };
        // The ELF error is the loader error's source, and its message is the loader's.
        let source = core::error::Error::source(&e).expect("an ELF error has a source");
        assert_eq!(source.downcast_ref::<ElfError>(), Some(&inner));
        assert_eq!(e.to_string(), source.to_string());
        assert!(core::error::Error::source(&LoadError::Empty).is_none());
        // Entry outside the executable segment.
        assert!(matches!(
            load(r, EntryMode::Elf64, &elf(&[0x90], 0, 0x30_0000)),
            Err(LoadError::Elf(_))
        ));
    }
}
