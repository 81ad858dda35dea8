//! Structures the hypervisor builds *for* a 64-bit guest so it can start
//! directly in IA-32e mode: identity-mapping 4-level page tables placed in
//! guest RAM, a GDT image, and the matching VMCS segment state.
//!
//! Sources (Intel SDM, the edition `crate::vmx` pins):
//! - 4-level paging: SDM Vol. 3A 4.5 "4-Level Paging and 5-Level Paging", Table 4-15
//!   "Format of a PML4 Entry (PML4E) that References a Page-Directory-Pointer Table",
//!   Table 4-17 "Format of a Page-Directory-Pointer-Table Entry (PDPTE) that References
//!   a Page Directory" and Table 4-18 "Format of a Page-Directory Entry that Maps a
//!   2-MByte Page";
//! - segment descriptors: SDM Vol. 3A 3.4.5 "Segment Descriptors";
//! - the VMCS access-rights format: SDM Vol. 3C 25.4.1 "Guest Register State", Table
//!   25-2 "Format of Access Rights";
//! - the guest-state checks on segments: SDM Vol. 3C 27.3.1.2 "Checks on Guest Segment
//!   Registers".

/// Paging-entry bits (SDM Vol. 3A Tables 4-15, 4-17 and 4-18, listed above).
use core::ops::Range;

use crate::x86::segment::{descriptor_access_rights, SegmentState};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// PDE bit 7: maps a 2 MiB page.
const PAGE_SIZE: u64 = 1 << 7;

const TABLE_BYTES: u64 = 4096;
const PAGE_2M: u64 = 1 << 21;
const GIB: u64 = 1 << 30;
/// Span of one PML4 entry.
const PML4E_SPAN: u64 = 1 << 39;
/// 4-level paging with 2 MiB pages covers at most 256 TiB.
const MAX_RAM: u64 = 1 << 48;

/// Access to guest memory holding page tables. The guest tables hold
/// *guest*-physical addresses; only the caller knows where that memory lives
/// in the host (EPT identity does not make guest RAM's host address equal to
/// its guest address), so it resolves each table address for us.
pub trait GuestTableMemory {
    /// The 4 KiB frame at guest-physical `gpa` (4 KiB aligned, inside the
    /// region passed to [`build_guest_identity_4level`]).
    fn table_mut(&mut self, gpa: u64) -> &mut [u64; 512];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPagingError {
    /// `ram_bytes` is not a multiple of 2 MiB (the tables map RAM only with
    /// 2 MiB pages and never map past its end), or `tables_gpa` is not 4 KiB
    /// aligned.
    Misaligned,
    Empty,
    /// More RAM than 4-level paging can map.
    TooLarge,
    /// [tables_gpa, tables_gpa + tables_needed * 4 KiB) is not inside guest RAM.
    TablesOutsideRam,
}

impl core::fmt::Display for GuestPagingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            GuestPagingError::Misaligned => {
                "guest RAM is not a multiple of 2 MiB, or the page-table address is not 4 KiB \
                 aligned"
            }
            GuestPagingError::Empty => "guest RAM is 0 bytes: there is nothing to map",
            GuestPagingError::TooLarge => {
                "guest RAM is larger than the 256 TiB that 4-level paging can map"
            }
            GuestPagingError::TablesOutsideRam => {
                "the page tables would not lie inside guest RAM at the chosen address"
            }
        })
    }
}

impl core::error::Error for GuestPagingError {}

/// Number of 4 KiB table frames [`build_guest_identity_4level`] uses: one PML4,
/// one PDPT per 512 GiB and one PD per 1 GiB of RAM.
pub const fn tables_needed(ram_bytes: u64) -> u64 {
    1 + ram_bytes.div_ceil(PML4E_SPAN) + ram_bytes.div_ceil(GIB)
}

/// Default placement of the tables: the last `tables_needed(ram_bytes)` frames
/// of guest RAM (24 KiB for 4 GiB of RAM). The top of RAM is chosen because
/// low memory is where every boot protocol wants to put things (real-mode IVT
/// and BDA, the Linux zero page, kernels loaded at 1 or 2 MiB), while the top
/// can simply be reported as reserved in the memory map handed to the guest.
/// `None` if RAM is too small to hold them.
pub const fn default_tables_gpa(ram_bytes: u64) -> Option<u64> {
    ram_bytes.checked_sub(tables_needed(ram_bytes) * TABLE_BYTES)
}

/// Builds IA-32e 4-level page tables identity-mapping guest-physical
/// [0, `ram_bytes`) with present, writable, supervisor 2 MiB pages. The tables
/// occupy [`tables_gpa`, `tables_gpa + tables_needed(ram_bytes) * 4096`) in
/// guest RAM (PML4 first, then PDPTs, then PDs) and are fully overwritten, so
/// the region need not be zeroed beforehand. Returns the guest CR3 (the PML4
/// address, PWT/PCD clear).
pub fn build_guest_identity_4level(
    mem: &mut impl GuestTableMemory,
    tables_gpa: u64,
    ram_bytes: u64,
) -> Result<u64, GuestPagingError> {
    if ram_bytes == 0 {
        return Err(GuestPagingError::Empty);
    }
    if !ram_bytes.is_multiple_of(PAGE_2M) || !tables_gpa.is_multiple_of(TABLE_BYTES) {
        return Err(GuestPagingError::Misaligned);
    }
    if ram_bytes > MAX_RAM {
        return Err(GuestPagingError::TooLarge);
    }
    let pdpts = ram_bytes.div_ceil(PML4E_SPAN);
    let pds = ram_bytes.div_ceil(GIB);
    let tables_end = tables_gpa
        .checked_add(tables_needed(ram_bytes) * TABLE_BYTES)
        .ok_or(GuestPagingError::TablesOutsideRam)?;
    if tables_end > ram_bytes {
        return Err(GuestPagingError::TablesOutsideRam);
    }

    let pml4 = tables_gpa;
    let pdpt_at = |i: u64| tables_gpa + (1 + i) * TABLE_BYTES;
    let pd_at = |i: u64| tables_gpa + (1 + pdpts + i) * TABLE_BYTES;

    // Non-leaf entries are present + writable; the U/S bit stays clear so the
    // mapping is supervisor-only, which is all a kernel needs until it builds
    // its own tables.
    let pml4_table = mem.table_mut(pml4);
    *pml4_table = [0; 512];
    for i in 0..pdpts {
        pml4_table[i as usize] = pdpt_at(i) | PRESENT | WRITABLE;
    }
    for p in 0..pdpts {
        let table = mem.table_mut(pdpt_at(p));
        *table = [0; 512];
        for slot in 0..512 {
            let pd = p * 512 + slot;
            if pd >= pds {
                break;
            }
            table[slot as usize] = pd_at(pd) | PRESENT | WRITABLE;
        }
    }
    for d in 0..pds {
        let table = mem.table_mut(pd_at(d));
        *table = [0; 512];
        for slot in 0..512u64 {
            let addr = d * GIB + slot * PAGE_2M;
            if addr >= ram_bytes {
                break;
            }
            table[slot as usize] = addr | PRESENT | WRITABLE | PAGE_SIZE;
        }
    }
    Ok(pml4)
}

/// GDT selectors matching [`long_mode_gdt`].
pub const CODE64_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
/// GDTR limit for [`long_mode_gdt`]: size in bytes minus one.
pub const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;
pub const GDT_ENTRIES: usize = 3;

/// Descriptor access byte (bits 47:40) values: P=1, DPL=0, S=1, and the type with the
/// accessed bit already set — VM entry requires "accessed" on usable code/data segments
/// (SDM Vol. 3C 27.3.1.2 "Checks on Guest Segment Registers"), and a pre-set bit means
/// the CPU never writes the GDT.
const ACCESS_CODE: u64 = 0x9B; // execute/read, accessed
const ACCESS_DATA: u64 = 0x93; // read/write, accessed

/// A 64-bit GDT image: null, 64-bit code at 0x08 (L=1, D=0, G=1), flat data
/// at 0x10 (D/B=1, G=1). In 64-bit mode base and limit of code/data are
/// ignored, but they are flat 4 GiB so the same GDT also works for
/// compatibility-mode data accesses.
pub const fn long_mode_gdt() -> [u64; GDT_ENTRIES] {
    [
        0,
        descriptor(0, 0xF_FFFF, ACCESS_CODE, FLAG_G | FLAG_L),
        descriptor(0, 0xF_FFFF, ACCESS_DATA, FLAG_G | FLAG_DB),
    ]
}

/// Descriptor flags nibble (bits 55:52).
const FLAG_L: u64 = 1 << 1;
const FLAG_DB: u64 = 1 << 2;
const FLAG_G: u64 = 1 << 3;

/// Packs a legacy 8-byte segment descriptor (SDM Vol. 3A Figure 3-8 "Segment
/// Descriptor").
const fn descriptor(base: u32, limit: u32, access: u64, flags: u64) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (access << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (flags << 52)
        | (((base >> 24) & 0xFF) << 56)
}

/// CS for the GDT above: type 0xB, S, P, L, G = 0xA09B.
pub const CODE64_SEGMENT: SegmentState = SegmentState {
    selector: CODE64_SELECTOR,
    base: 0,
    limit: 0xFFFF_FFFF,
    access_rights: descriptor_access_rights(long_mode_gdt()[1]),
};

/// DS/ES/SS/FS/GS for the GDT above: type 3, S, P, D/B, G = 0xC093.
pub const DATA_SEGMENT: SegmentState = SegmentState {
    selector: DATA_SELECTOR,
    base: 0,
    limit: 0xFFFF_FFFF,
    access_rights: descriptor_access_rights(long_mode_gdt()[2]),
};

/// TR: VM entry into IA-32e mode requires a usable TR of type 11 (busy 64-bit TSS) even
/// if the guest never loaded one (SDM Vol. 3C 27.3.1.2 "Checks on Guest Segment
/// Registers"). A ring-0-only guest uses the TSS only for IST and privilege-change
/// stacks, so a null-selector, base-0 TSS of the minimum size (0x67) is enough until it
/// loads its own.
pub const TR_SEGMENT: SegmentState = SegmentState {
    selector: 0,
    base: 0,
    limit: 0x67,
    access_rights: 0xB | crate::x86::segment::access_rights::P,
};

/// LDTR: marked unusable; the guest has no LDT.
pub const LDTR_SEGMENT: SegmentState = SegmentState {
    selector: 0,
    base: 0,
    limit: 0,
    access_rights: crate::x86::segment::access_rights::UNUSABLE,
};

/// Size of the hypervisor-built area at the top of a 64-bit guest's RAM.
pub const LONG_MODE_RESERVED: u64 = 1 << 20;

/// Where the hypervisor puts what a 64-bit guest needs before its first instruction.
///
/// The top [`LONG_MODE_RESERVED`] (1 MiB) of guest RAM belongs to the hypervisor at
/// start-up; the guest may reuse it once it has its own GDT, page tables and stack,
/// and should report it as reserved in any memory map it builds:
///
/// ```text
/// ram - 1 MiB            GDT (long_mode_gdt, one 4 KiB page)
/// ram - 1 MiB + 4 KiB    .. stack, growing down from stack_top
/// tables_gpa = stack_top identity page tables (default_tables_gpa)
/// ram                    end of RAM
/// ```
///
/// ELF guests must not load anything into `reserved`; xtask refuses such images with
/// `elf64::check_fits(elf, ram, &[reserved])` before anything is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongModeLayout {
    pub gdt_gpa: u64,
    pub tables_gpa: u64,
    /// Initial RSP: 16-byte aligned, just below the page tables.
    pub stack_top: u64,
    /// [ram - 1 MiB, ram).
    pub reserved: Range<u64>,
}

impl LongModeLayout {
    /// The layout for `ram_bytes` of guest RAM, or `None` if RAM is smaller than the
    /// reserved area or the page tables leave no room for the GDT page and a stack
    /// inside it (more than about 250 GiB of RAM).
    pub fn for_ram(ram_bytes: u64) -> Option<Self> {
        let start = ram_bytes.checked_sub(LONG_MODE_RESERVED)?;
        let tables_gpa = default_tables_gpa(ram_bytes)?;
        // GDT page below, and at least one more page of stack.
        if tables_gpa <= start + 0x1000 {
            return None;
        }
        Some(LongModeLayout {
            gdt_gpa: start,
            tables_gpa,
            stack_top: tables_gpa & !0xF,
            reserved: start..ram_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Guest RAM region [base, base + n*4 KiB) backed by boxed frames, filled
    /// with garbage to prove the builder clears what it uses.
    struct Region {
        base: u64,
        frames: Vec<Box<[u64; 512]>>,
    }

    impl Region {
        fn new(base: u64, n: u64) -> Self {
            Region {
                base,
                frames: (0..n)
                    .map(|_| Box::new([0xDEAD_BEEF_DEAD_BEEF; 512]))
                    .collect(),
            }
        }
    }

    impl GuestTableMemory for Region {
        fn table_mut(&mut self, gpa: u64) -> &mut [u64; 512] {
            assert_eq!(gpa % 4096, 0);
            assert!(gpa >= self.base, "table {gpa:#x} below region");
            let i = ((gpa - self.base) / 4096) as usize;
            assert!(i < self.frames.len(), "table {gpa:#x} past region");
            &mut self.frames[i]
        }
    }

    /// Software 4-level walk: (physical address, entry flags ANDed over levels).
    fn walk(mem: &mut Region, cr3: u64, va: u64) -> Option<(u64, u64)> {
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
        let mut table = cr3 & ADDR;
        let mut rights = PRESENT | WRITABLE;
        for level in (2..=4).rev() {
            let e = mem.table_mut(table)[((va >> (12 + 9 * (level - 1))) & 0x1FF) as usize];
            if e & PRESENT == 0 {
                return None;
            }
            rights &= e;
            if level == 2 {
                assert_ne!(e & PAGE_SIZE, 0, "PDE without PS");
                assert_eq!(e & 0x1F_E000, 0, "reserved bits in 2M PDE");
                return Some(((e & ADDR & !(PAGE_2M - 1)) | (va & (PAGE_2M - 1)), rights));
            }
            assert_eq!(e & PAGE_SIZE, 0, "large page above PD level");
            table = e & ADDR;
        }
        unreachable!()
    }

    #[test]
    fn identity_64m_at_default_placement() {
        let ram = 64 * MIB;
        assert_eq!(tables_needed(ram), 3);
        let at = default_tables_gpa(ram).unwrap();
        assert_eq!(at, ram - 3 * 4096);
        let mut mem = Region::new(at, 3);
        let cr3 = build_guest_identity_4level(&mut mem, at, ram).unwrap();
        assert_eq!(cr3, at);
        for va in [0, 0x1234, 2 * MIB, 63 * MIB + 5, ram - 1, at] {
            assert_eq!(
                walk(&mut mem, cr3, va),
                Some((va, PRESENT | WRITABLE)),
                "{va:#x}"
            );
        }
        assert_eq!(walk(&mut mem, cr3, ram), None);
        assert_eq!(walk(&mut mem, cr3, 1 << 30), None);
        assert_eq!(walk(&mut mem, cr3, 1 << 39), None);
        // Only the entries in use are non-zero (garbage was cleared).
        assert_eq!(mem.frames[0].iter().filter(|&&e| e != 0).count(), 1);
        assert_eq!(mem.frames[1].iter().filter(|&&e| e != 0).count(), 1);
        assert_eq!(mem.frames[2].iter().filter(|&&e| e != 0).count(), 32);
        assert_eq!(mem.frames[2][1], (2 * MIB) | 0x83);
    }

    #[test]
    fn identity_above_4g_in_low_tables() {
        // 5 GiB + 2 MiB: one PDPT, six PDs, tables at 1 MiB.
        let ram = 5 * (1 << 30) + 2 * MIB;
        assert_eq!(tables_needed(ram), 8);
        let at = MIB;
        let mut mem = Region::new(at, 8);
        let cr3 = build_guest_identity_4level(&mut mem, at, ram).unwrap();
        for va in [0, (4 << 30) - 1, 4 << 30, (5 << 30) + 0x1000, ram - 1] {
            assert_eq!(
                walk(&mut mem, cr3, va).map(|(pa, _)| pa),
                Some(va),
                "{va:#x}"
            );
        }
        assert_eq!(walk(&mut mem, cr3, ram), None);
        assert_eq!(default_tables_gpa(ram), Some(ram - 8 * 4096));
    }

    #[test]
    fn errors() {
        let mut mem = Region::new(0, 3);
        assert_eq!(
            build_guest_identity_4level(&mut mem, 0, 0),
            Err(GuestPagingError::Empty)
        );
        assert_eq!(
            build_guest_identity_4level(&mut mem, 0, 3 * MIB),
            Err(GuestPagingError::Misaligned)
        );
        assert_eq!(
            build_guest_identity_4level(&mut mem, 0x800, 4 * MIB),
            Err(GuestPagingError::Misaligned)
        );
        assert_eq!(
            build_guest_identity_4level(&mut mem, 4 * MIB - 8192, 4 * MIB),
            Err(GuestPagingError::TablesOutsideRam)
        );
        assert_eq!(
            build_guest_identity_4level(&mut mem, 0, MAX_RAM + PAGE_2M),
            Err(GuestPagingError::TooLarge)
        );
        assert_eq!(default_tables_gpa(0), None);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let msg = |e: GuestPagingError| e.to_string();
        let m = msg(GuestPagingError::Misaligned);
        assert!(m.contains("2 MiB") && m.contains("4 KiB aligned"), "{m}");
        assert!(msg(GuestPagingError::Empty).contains("guest RAM is 0 bytes"));
        assert!(msg(GuestPagingError::TooLarge).contains("256 TiB"));
        assert!(msg(GuestPagingError::TablesOutsideRam).contains("page tables"));
        // The loader names the step and keeps the paging error as the source.
        let e = crate::guest::loader::LoadError::Paging(GuestPagingError::TooLarge);
        assert_eq!(
            e.to_string(),
            "building the guest page tables: guest RAM is larger than the 256 TiB that \
             4-level paging can map"
        );
        let source = core::error::Error::source(&e).expect("a paging error has a source");
        assert_eq!(source.to_string(), msg(GuestPagingError::TooLarge));
    }

    #[test]
    fn gdt_image() {
        let gdt = long_mode_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0x00AF_9B00_0000_FFFF);
        assert_eq!(gdt[2], 0x00CF_9300_0000_FFFF);
        assert_eq!(GDT_LIMIT, 23);
        assert_eq!(gdt[(CODE64_SELECTOR >> 3) as usize], gdt[1]);
        assert_eq!(gdt[(DATA_SELECTOR >> 3) as usize], gdt[2]);
    }

    #[test]
    fn vmcs_access_rights() {
        use crate::x86::segment::access_rights::*;
        assert_eq!(CODE64_SEGMENT.access_rights, 0xA09B);
        assert_eq!(DATA_SEGMENT.access_rights, 0xC093);
        assert_eq!(TR_SEGMENT.access_rights, 0x8B);
        assert_eq!(LDTR_SEGMENT.access_rights, 0x1_0000);
        // The properties VM entry checks for an IA-32e guest (SDM Vol. 3C 27.3.1.2
        // "Checks on Guest Segment Registers").
        let cs = CODE64_SEGMENT.access_rights;
        assert!(cs & L != 0 && cs & DB == 0, "64-bit CS needs L=1, D=0");
        assert!(matches!(cs & TYPE_MASK, 9 | 11 | 13 | 15));
        assert_eq!((cs >> DPL_SHIFT) & 3, 0);
        let ds = DATA_SEGMENT.access_rights;
        assert!(
            matches!(ds & TYPE_MASK, 3 | 7),
            "SS must be read/write, accessed"
        );
        for seg in [CODE64_SEGMENT, DATA_SEGMENT] {
            let ar = seg.access_rights;
            assert!(ar & P != 0 && ar & S != 0 && ar & UNUSABLE == 0 && ar & AVL == 0);
            // G=1 requires limit bits 11:0 all ones.
            assert!(ar & G != 0 && seg.limit & 0xFFF == 0xFFF);
        }
        let tr = TR_SEGMENT.access_rights;
        assert!(tr & S == 0 && tr & TYPE_MASK == 11 && tr & G == 0 && TR_SEGMENT.limit <= 0xF_FFFF);
        // Round trip through a hand-packed descriptor.
        assert_eq!(
            descriptor_access_rights(descriptor(0x1234_5678, 0x67, 0x89, 0)),
            0x89
        );
        let d = descriptor(0x1234_5678, 0xA_BCDE, 0x93, FLAG_G);
        assert_eq!(d, 0x128A_9334_5678_BCDE);
    }

    // --- layout -----------------------------------------------------------------------

    #[test]
    fn long_mode_layout_for_4_gib() {
        let ram = 4 * GIB;
        let l = LongModeLayout::for_ram(ram).unwrap();
        assert_eq!(l.reserved, ram - MIB..ram);
        assert_eq!(l.gdt_gpa, ram - MIB);
        assert_eq!(l.tables_gpa, ram - tables_needed(ram) * 4096);
        assert_eq!(l.stack_top, l.tables_gpa);
        assert_eq!(l.stack_top % 16, 0);
        assert!(l.gdt_gpa + (long_mode_gdt().len() as u64 * 8) <= l.stack_top - 0x1000);
        assert!(l.reserved.contains(&l.tables_gpa) && l.reserved.contains(&(l.stack_top - 1)));
    }

    #[test]
    fn long_mode_layout_limits() {
        assert_eq!(LongModeLayout::for_ram(0), None);
        assert_eq!(LongModeLayout::for_ram(MIB - 4096), None);
        assert!(LongModeLayout::for_ram(2 * MIB).is_some());
        assert!(LongModeLayout::for_ram(64 * GIB).is_some());
        // Tables for 256 TiB do not fit in 1 MiB.
        assert_eq!(LongModeLayout::for_ram(1 << 48), None);
    }
}
