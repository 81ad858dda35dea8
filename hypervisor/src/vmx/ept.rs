//! Extended Page Tables: builds the 4-level guest-physical → host-physical tables
//! and the EPT pointer (EPTP) that the VMCS field 0x201A holds, and walks them
//! back for tests and for EPT-violation reports.
//!
//! Sources (SDM Vol. 3C, the edition `crate::vmx` pins): 29.3 "The Extended Page Table
//! Mechanism (EPT)", its 29.3.2 "EPT Translation Mechanism" with the entry formats
//! from Table 29-1 "Format of an EPT PML4 Entry (PML4E) that References an EPT
//! Page-Directory-Pointer Table" to Table 29-6 "Format of an EPT Page-Table Entry that
//! Maps a 4-KByte Page", and 29.3.7 "EPT and Memory Typing" for the memory-type bits;
//! the EPTP is 25.6.11 "Extended-Page-Table Pointer (EPTP)".

use bitflags::bitflags;

/// Size of an EPT paging structure and of the smallest page.
pub const PAGE_4K: u64 = 1 << 12;
pub const PAGE_2M: u64 = 1 << 21;
pub const PAGE_1G: u64 = 1 << 30;

/// A 4-level EPT translates 48-bit guest-physical addresses.
pub const MAX_GPA: u64 = 1 << 48;
/// Entries hold physical addresses up to bit 51 (MAXPHYADDR ≤ 52).
pub const MAX_HPA: u64 = 1 << 52;

/// Physical-address bits 51:12 of an EPT entry or of the EPTP.
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Bit 7 of a PDPTE/PDE: the entry maps a 1 GiB / 2 MiB page instead of
/// referencing the next table.
const LARGE_PAGE: u64 = 1 << 7;
/// EPT memory type lives in bits 5:3 of leaf entries.
const MEMORY_TYPE_SHIFT: u64 = 3;
/// Bit 6 of a leaf: ignore the guest PAT when combining memory types.
const IGNORE_PAT: u64 = 1 << 6;

/// Page-table-frame seam. The kernel implements it over its physical-memory
/// mapping; tests over heap-backed arrays.
pub trait FrameSource {
    /// A fresh, zero-filled, 4 KiB-aligned frame, or `None` when out of memory.
    fn alloc_zeroed_frame(&mut self) -> Option<u64>;
    /// The 512 entries of the frame at physical address `phys` (one that this
    /// source handed out).
    fn frame_mut(&mut self, phys: u64) -> &mut [u64; 512];
}

bitflags! {
    /// Access-permission bits 2:0 of an EPT entry (SDM Vol. 3C Tables 29-1 to 29-6, the
    /// entry formats of 29.3.2 "EPT Translation Mechanism"). An entry with all three
    /// clear is not present.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EptAccess: u64 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        /// Supervisor-mode execute (or all execute without mode-based
        /// execute control).
        const EXECUTE = 1 << 2;
        const RWX = Self::READ.bits() | Self::WRITE.bits() | Self::EXECUTE.bits();
    }
}

/// EPT memory types (SDM Vol. 3C 29.3.7.2 "Memory Type Used for Translated
/// Guest-Physical Addresses"); the values 2, 3 and 7 are reserved and make a leaf
/// misconfigured (29.3.3.1 "EPT Misconfigurations").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemoryType {
    Uncacheable = 0,
    WriteCombining = 1,
    WriteThrough = 4,
    WriteProtected = 5,
    WriteBack = 6,
}

impl MemoryType {
    /// The EPT/MTRR encoding `bits` (SDM Vol. 3C 29.3.7.2 "Memory Type Used for
    /// Translated Guest-Physical Addresses"; SDM Vol. 3A Table 12-8 "Memory Types That
    /// Can Be Encoded in MTRRs"), or `None` for the reserved values 2, 3 and 7+.
    pub const fn from_bits(bits: u8) -> Option<MemoryType> {
        match bits {
            0 => Some(MemoryType::Uncacheable),
            1 => Some(MemoryType::WriteCombining),
            4 => Some(MemoryType::WriteThrough),
            5 => Some(MemoryType::WriteProtected),
            6 => Some(MemoryType::WriteBack),
            _ => None,
        }
    }
}

/// Size of the page a leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_4K,
            PageSize::Size2M => PAGE_2M,
            PageSize::Size1G => PAGE_1G,
        }
    }

    /// Paging level whose entry is the leaf: 1 = PT, 2 = PD, 3 = PDPT.
    const fn level(self) -> u32 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
}

/// What the builder may use. Fill from `IA32_VMX_EPT_VPID_CAP` (bits 16, 17,
/// 21), e.g. via [`EptCaps::from_vmx_caps`]; clear a field to opt out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EptCaps {
    /// 2 MiB pages (PDE with bit 7).
    pub large_2m: bool,
    /// 1 GiB pages (PDPTE with bit 7).
    pub large_1g: bool,
    /// Set EPTP bit 6 so the CPU maintains accessed/dirty flags.
    pub accessed_dirty: bool,
}

impl EptCaps {
    pub const fn from_vmx_caps(c: &crate::vmx::caps::EptCaps) -> Self {
        EptCaps {
            large_2m: c.pages_2m,
            large_1g: c.pages_1g,
            accessed_dirty: c.accessed_dirty,
        }
    }
}

/// The EPT pointer (SDM Vol. 3C 25.6.11 "Extended-Page-Table Pointer (EPTP)"): memory
/// type of the paging structures in bits 2:0 (always write-back here — the tables are
/// ordinary RAM), page-walk length minus one in bits 5:3 (3 for four levels), A/D
/// enable in bit 6, and the PML4 physical address in bits 51:12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eptp(pub u64);

impl Eptp {
    pub const fn new(pml4_phys: u64, accessed_dirty: bool) -> Self {
        let mut v = (pml4_phys & ADDR_MASK) | (3 << 3) | MemoryType::WriteBack as u64;
        if accessed_dirty {
            v |= 1 << 6;
        }
        Eptp(v)
    }
    pub const fn raw(self) -> u64 {
        self.0
    }
    pub const fn pml4(self) -> u64 {
        self.0 & ADDR_MASK
    }
    pub const fn memory_type(self) -> u8 {
        (self.0 & 7) as u8
    }
    pub const fn walk_length(self) -> u8 {
        ((self.0 >> 3) & 7) as u8 + 1
    }
    pub const fn accessed_dirty(self) -> bool {
        self.0 & (1 << 6) != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// An address or length is not a multiple of 4 KiB.
    Misaligned,
    /// `build_identity` was asked for zero bytes of RAM.
    Empty,
    /// The range does not fit a 48-bit guest-physical or 52-bit host-physical
    /// address space.
    AddressTooLarge,
    /// The frame source ran dry.
    OutOfFrames,
    /// The frame source returned an address that is not 4 KiB aligned or does
    /// not fit in an EPT entry.
    BadFrame(u64),
    /// A large-page mapping covers `gpa`, where a 4 KiB mapping was requested;
    /// splitting large pages is not supported.
    LargePageInTheWay { gpa: u64 },
    /// A large page was requested at `gpa` but a lower-level table is already
    /// there.
    TableInTheWay { gpa: u64 },
}

impl core::fmt::Display for EptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            EptError::Misaligned => f.write_str(
                "an address or length to map is not a multiple of 4 KiB (EPT maps whole pages)",
            ),
            EptError::Empty => f.write_str("guest RAM is 0 bytes: there is nothing to map"),
            EptError::AddressTooLarge => write!(
                f,
                "the range does not fit the 48-bit guest-physical address space of 4-level EPT \
                 (below {MAX_GPA:#x}) or the 52-bit host-physical one (below {MAX_HPA:#x})"
            ),
            EptError::OutOfFrames => {
                f.write_str("out of memory for EPT paging structures (no free 4 KiB frame)")
            }
            EptError::BadFrame(phys) => write!(
                f,
                "the frame allocator returned {phys:#x} for an EPT paging structure, which is \
                 not 4 KiB aligned or not below {MAX_HPA:#x}"
            ),
            EptError::LargePageInTheWay { gpa } => write!(
                f,
                "a 4 KiB mapping at guest-physical {gpa:#x} was requested, but a large page \
                 already maps it (splitting large pages is not supported)"
            ),
            EptError::TableInTheWay { gpa } => write!(
                f,
                "a large page at guest-physical {gpa:#x} was requested, but a lower-level EPT \
                 table is already there"
            ),
        }
    }
}

impl core::error::Error for EptError {}

/// A leaf found by [`translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptLeaf {
    pub access: EptAccess,
    /// Raw bits 5:3; compare with `MemoryType::X as u8`.
    pub memory_type: u8,
    pub ignore_pat: bool,
    pub size: PageSize,
    /// The whole entry, for diagnostics (A/D bits, user-execute, ...).
    pub entry: u64,
}

/// Index into the table at `level` (4 = PML4 .. 1 = PT) for `gpa`.
const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) as usize
}

const fn is_present(entry: u64) -> bool {
    entry & EptAccess::RWX.bits() != 0
}

fn alloc_table(src: &mut impl FrameSource) -> Result<u64, EptError> {
    let phys = src.alloc_zeroed_frame().ok_or(EptError::OutOfFrames)?;
    if phys & !ADDR_MASK != 0 {
        return Err(EptError::BadFrame(phys));
    }
    Ok(phys)
}

/// Walks from the PML4 down to the table holding the level-`leaf_level` entry
/// for `gpa`, creating missing tables. Returns (table phys, index).
fn walk_create(
    src: &mut impl FrameSource,
    pml4: u64,
    gpa: u64,
    leaf_level: u32,
) -> Result<(u64, usize), EptError> {
    let mut table = pml4;
    let mut level = 4;
    while level > leaf_level {
        let i = index(gpa, level);
        let entry = src.frame_mut(table)[i];
        table = if !is_present(entry) {
            let next = alloc_table(src)?;
            // Non-leaf entries grant everything; the leaf decides. Bits 7:3
            // must stay 0 in a non-leaf entry.
            src.frame_mut(table)[i] = next | EptAccess::RWX.bits();
            next
        } else if entry & LARGE_PAGE != 0 && level <= 3 {
            return Err(EptError::LargePageInTheWay { gpa });
        } else {
            entry & ADDR_MASK
        };
        level -= 1;
    }
    Ok((table, index(gpa, leaf_level)))
}

fn map_leaf(
    src: &mut impl FrameSource,
    pml4: u64,
    gpa: u64,
    hpa: u64,
    size: PageSize,
    access: EptAccess,
    mem_type: MemoryType,
) -> Result<(), EptError> {
    let level = size.level();
    let (table, i) = walk_create(src, pml4, gpa, level)?;
    let slot = &mut src.frame_mut(table)[i];
    if level > 1 && is_present(*slot) && *slot & LARGE_PAGE == 0 {
        return Err(EptError::TableInTheWay { gpa });
    }
    // Ignore-PAT stays 0 so the guest's PAT can still pick UC/WC for its own mappings
    // on top of the EPT write-back type (SDM Vol. 3C 29.3.7.2 "Memory Type Used for
    // Translated Guest-Physical Addresses").
    let mut entry = (hpa & ADDR_MASK) | access.bits() | ((mem_type as u64) << MEMORY_TYPE_SHIFT);
    if level > 1 {
        entry |= LARGE_PAGE;
    }
    *slot = entry;
    Ok(())
}

/// Identity-maps guest-physical [0, `ram_bytes`) read/write/execute,
/// write-back, with the largest pages `caps` allows at each aligned position,
/// and nothing above `ram_bytes` (so stray guest accesses there become EPT
/// violations the hypervisor can report).
pub fn build_identity(
    src: &mut impl FrameSource,
    ram_bytes: u64,
    caps: EptCaps,
) -> Result<Eptp, EptError> {
    build_guest_ram(src, ram_bytes, 0, caps)
}

/// Maps guest-physical [0, `ram_bytes`) to the host block [`host_base`,
/// `host_base + ram_bytes`), read/write/execute, write-back. The guest sees RAM at 0
/// while it really lives in a block the frame allocator handed out, so none of the
/// hypervisor's own memory is reachable from the guest. Large pages are used where
/// both the guest and the host address are aligned (SDM Vol. 3C 29.3.2 "EPT
/// Translation Mechanism": a 2 MiB/1 GiB leaf maps an aligned host region).
pub fn build_guest_ram(
    src: &mut impl FrameSource,
    ram_bytes: u64,
    host_base: u64,
    caps: EptCaps,
) -> Result<Eptp, EptError> {
    build_guest_ram_typed(src, ram_bytes, host_base, caps, &|_, _| {
        Some(MemoryType::WriteBack)
    })
}

/// [`build_guest_ram`] with each leaf's memory type taken from `type_of(host, len)`:
/// the one type of that host range, or `None` if the range is mixed, in which case a
/// smaller page is used (down to 4 KiB, which always has one type). The boot code
/// passes the host MTRRs here (see `mtrr.rs`) so guest RAM is cached as the firmware
/// set that memory up.
pub fn build_guest_ram_typed(
    src: &mut impl FrameSource,
    ram_bytes: u64,
    host_base: u64,
    caps: EptCaps,
    type_of: &dyn Fn(u64, u64) -> Option<MemoryType>,
) -> Result<Eptp, EptError> {
    if !ram_bytes.is_multiple_of(PAGE_4K) || !host_base.is_multiple_of(PAGE_4K) {
        return Err(EptError::Misaligned);
    }
    if ram_bytes == 0 {
        return Err(EptError::Empty);
    }
    let host_end = host_base
        .checked_add(ram_bytes)
        .ok_or(EptError::AddressTooLarge)?;
    if ram_bytes > MAX_GPA || host_end > MAX_HPA {
        return Err(EptError::AddressTooLarge);
    }
    let pml4 = alloc_table(src)?;
    let mut addr = 0;
    while addr < ram_bytes {
        let left = ram_bytes - addr;
        let host = host_base + addr;
        // The largest page that is aligned on both sides, fits, and has one type; the
        // type is asked for once per candidate.
        let fits = |size: PageSize| {
            let n = size.bytes();
            (addr.is_multiple_of(n) && host.is_multiple_of(n) && left >= n)
                .then(|| type_of(host, n))
                .flatten()
                .map(|t| (size, t))
        };
        let (size, mem_type) = [
            (caps.large_1g, PageSize::Size1G),
            (caps.large_2m, PageSize::Size2M),
        ]
        .into_iter()
        .filter(|&(offered, _)| offered)
        .find_map(|(_, size)| fits(size))
        // A 4 KiB range always has one type; `None` there would be a caller bug, and
        // UC is the type that can never be wrong.
        .unwrap_or_else(|| {
            let t = type_of(host, PAGE_4K).unwrap_or(MemoryType::Uncacheable);
            (PageSize::Size4K, t)
        });
        map_leaf(src, pml4, addr, host, size, EptAccess::RWX, mem_type)?;
        addr += size.bytes();
    }
    Ok(Eptp::new(pml4, caps.accessed_dirty))
}

/// Maps guest-physical [`gpa`, `gpa + len`) to host-physical [`hpa`, ...) with
/// 4 KiB pages, creating tables as needed. Existing 4 KiB mappings are
/// replaced (the caller must INVEPT if the EPT is live); a large page covering
/// part of the range is an error, since splitting is not implemented.
pub fn map_range(
    src: &mut impl FrameSource,
    eptp: Eptp,
    gpa: u64,
    hpa: u64,
    len: u64,
    access: EptAccess,
    mem_type: MemoryType,
) -> Result<(), EptError> {
    if !(gpa | hpa | len).is_multiple_of(PAGE_4K) {
        return Err(EptError::Misaligned);
    }
    let gpa_end = gpa.checked_add(len).ok_or(EptError::AddressTooLarge)?;
    let hpa_end = hpa.checked_add(len).ok_or(EptError::AddressTooLarge)?;
    if gpa_end > MAX_GPA || hpa_end > MAX_HPA {
        return Err(EptError::AddressTooLarge);
    }
    let mut off = 0;
    while off < len {
        map_leaf(
            src,
            eptp.pml4(),
            gpa + off,
            hpa + off,
            PageSize::Size4K,
            access,
            mem_type,
        )?;
        off += PAGE_4K;
    }
    Ok(())
}

/// Walks the EPT for `gpa`. Returns the host-physical address and the leaf,
/// or `None` if any level is not present (what would be an EPT violation).
pub fn translate(src: &mut impl FrameSource, eptp: Eptp, gpa: u64) -> Option<(u64, EptLeaf)> {
    if gpa >= MAX_GPA {
        return None;
    }
    let mut table = eptp.pml4();
    let mut level = 4;
    loop {
        let entry = src.frame_mut(table)[index(gpa, level)];
        if !is_present(entry) {
            return None;
        }
        let size = match level {
            1 => Some(PageSize::Size4K),
            2 if entry & LARGE_PAGE != 0 => Some(PageSize::Size2M),
            3 if entry & LARGE_PAGE != 0 => Some(PageSize::Size1G),
            _ => None,
        };
        if let Some(size) = size {
            let base = entry & ADDR_MASK & !(size.bytes() - 1);
            let leaf = EptLeaf {
                access: EptAccess::from_bits_truncate(entry),
                memory_type: ((entry >> MEMORY_TYPE_SHIFT) & 7) as u8,
                ignore_pat: entry & IGNORE_PAT != 0,
                size,
                entry,
            };
            return Some((base | (gpa & (size.bytes() - 1)), leaf));
        }
        table = entry & ADDR_MASK;
        level -= 1;
    }
}

#[cfg(test)]
pub(crate) mod test_frames {
    use super::FrameSource;

    /// Heap-backed frames at fake physical addresses `BASE + i * 4096`, far
    /// from the guest range so a confused gpa/hpa shows up in tests.
    pub struct TestFrames {
        pub frames: Vec<Box<[u64; 512]>>,
        pub limit: usize,
    }

    pub const BASE: u64 = 0x80_0000_0000;

    impl TestFrames {
        pub fn new() -> Self {
            TestFrames {
                frames: Vec::new(),
                limit: usize::MAX,
            }
        }
        pub fn with_limit(limit: usize) -> Self {
            TestFrames {
                frames: Vec::new(),
                limit,
            }
        }
    }

    impl FrameSource for TestFrames {
        fn alloc_zeroed_frame(&mut self) -> Option<u64> {
            if self.frames.len() >= self.limit {
                return None;
            }
            self.frames.push(Box::new([0; 512]));
            Some(BASE + (self.frames.len() as u64 - 1) * 4096)
        }
        fn frame_mut(&mut self, phys: u64) -> &mut [u64; 512] {
            assert_eq!(phys % 4096, 0, "unaligned table address {phys:#x}");
            &mut self.frames[((phys - BASE) / 4096) as usize]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_frames::TestFrames;
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn caps(large_2m: bool, large_1g: bool) -> EptCaps {
        EptCaps {
            large_2m,
            large_1g,
            accessed_dirty: false,
        }
    }

    fn assert_identity(src: &mut TestFrames, eptp: Eptp, gpa: u64, size: PageSize) {
        let (hpa, leaf) = translate(src, eptp, gpa).unwrap_or_else(|| panic!("{gpa:#x} unmapped"));
        assert_eq!(hpa, gpa);
        assert_eq!(leaf.size, size, "{gpa:#x}");
        assert_eq!(leaf.access, EptAccess::RWX);
        assert_eq!(leaf.memory_type, MemoryType::WriteBack as u8);
        assert_eq!(leaf.entry & 7, 7);
        assert_eq!((leaf.entry >> 3) & 7, 6);
        assert_eq!(leaf.entry & LARGE_PAGE != 0, size != PageSize::Size4K);
        assert!(!leaf.ignore_pat);
    }

    #[test]
    fn identity_64m_with_2m_pages_uses_three_frames() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 64 * MIB, caps(true, true)).unwrap();
        assert_eq!(src.frames.len(), 3);
        for gpa in [
            0,
            0xFFF,
            2 * MIB - 1,
            2 * MIB,
            32 * MIB + 0x1234,
            64 * MIB - 1,
        ] {
            assert_identity(&mut src, eptp, gpa, PageSize::Size2M);
        }
        assert_eq!(translate(&mut src, eptp, 64 * MIB), None);
        assert_eq!(translate(&mut src, eptp, 4 * GIB), None);
        assert_eq!(translate(&mut src, eptp, u64::MAX), None);
    }

    #[test]
    fn identity_with_4k_tail() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 64 * MIB + PAGE_4K, caps(true, false)).unwrap();
        assert_eq!(src.frames.len(), 4); // PML4, PDPT, PD, one PT
        assert_identity(&mut src, eptp, 64 * MIB - 1, PageSize::Size2M);
        assert_identity(&mut src, eptp, 64 * MIB, PageSize::Size4K);
        assert_identity(&mut src, eptp, 64 * MIB + 0xFFF, PageSize::Size4K);
        assert_eq!(translate(&mut src, eptp, 64 * MIB + PAGE_4K), None);
    }

    #[test]
    fn identity_4g_with_1g_pages() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 4 * GIB, caps(true, true)).unwrap();
        assert_eq!(src.frames.len(), 2); // PML4 + PDPT
        for gpa in [0, GIB - 1, GIB, 3 * GIB + 0x5000, 4 * GIB - 1] {
            assert_identity(&mut src, eptp, gpa, PageSize::Size1G);
        }
        assert_eq!(translate(&mut src, eptp, 4 * GIB), None);
    }

    #[test]
    fn mixed_page_sizes() {
        // 1 GiB + 2 MiB + 4 KiB: one of each leaf size.
        let mut src = TestFrames::new();
        let ram = GIB + 2 * MIB + PAGE_4K;
        let eptp = build_identity(&mut src, ram, caps(true, true)).unwrap();
        assert_eq!(src.frames.len(), 4); // PML4, PDPT, PD, PT
        assert_identity(&mut src, eptp, GIB - 1, PageSize::Size1G);
        assert_identity(&mut src, eptp, GIB, PageSize::Size2M);
        assert_identity(&mut src, eptp, GIB + 2 * MIB, PageSize::Size4K);
        assert_eq!(translate(&mut src, eptp, ram), None);
    }

    #[test]
    fn only_4k_pages_without_caps() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 4 * MIB, caps(false, false)).unwrap();
        assert_eq!(src.frames.len(), 3 + 2); // PML4, PDPT, PD, two PTs
        assert_identity(&mut src, eptp, 0, PageSize::Size4K);
        assert_identity(&mut src, eptp, 4 * MIB - 1, PageSize::Size4K);
        assert_eq!(translate(&mut src, eptp, 4 * MIB), None);
    }

    #[test]
    fn rejects_bad_sizes_and_reports_exhaustion() {
        let mut src = TestFrames::new();
        assert_eq!(
            build_identity(&mut src, 4097, caps(true, true)),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            build_identity(&mut src, 0, caps(true, true)),
            Err(EptError::Empty)
        );
        assert_eq!(
            build_identity(&mut src, MAX_GPA + PAGE_4K, caps(true, true)),
            Err(EptError::AddressTooLarge)
        );
        let mut small = TestFrames::with_limit(2);
        assert_eq!(
            build_identity(&mut small, 64 * MIB, caps(true, false)),
            Err(EptError::OutOfFrames)
        );
    }

    #[test]
    fn errors_name_what_failed_and_the_address() {
        let msg = |e: EptError| e.to_string();
        assert!(msg(EptError::Misaligned).contains("not a multiple of 4 KiB"));
        assert!(msg(EptError::Empty).contains("0 bytes"));
        let m = msg(EptError::AddressTooLarge);
        assert!(
            m.contains("48-bit guest-physical") && m.contains("0x1000000000000"),
            "{m}"
        );
        assert!(msg(EptError::OutOfFrames).contains("out of memory for EPT"));
        assert!(msg(EptError::BadFrame(0x1234_5678)).contains("returned 0x12345678"));
        let m = msg(EptError::LargePageInTheWay { gpa: 2 * MIB });
        assert!(
            m.contains("4 KiB mapping at guest-physical 0x200000"),
            "{m}"
        );
        assert!(m.contains("large page already maps it"), "{m}");
        let m = msg(EptError::TableInTheWay { gpa: GIB });
        assert!(m.contains("large page at guest-physical 0x40000000"), "{m}");
    }

    #[test]
    fn caps_from_vmx_caps() {
        let hw = crate::vmx::caps::EptCaps {
            pages_2m: true,
            pages_1g: false,
            accessed_dirty: true,
            ..Default::default()
        };
        assert_eq!(
            EptCaps::from_vmx_caps(&hw),
            EptCaps {
                large_2m: true,
                large_1g: false,
                accessed_dirty: true
            }
        );
    }

    #[test]
    fn eptp_bits() {
        let mut src = TestFrames::new();
        let eptp = build_identity(
            &mut src,
            2 * MIB,
            EptCaps {
                large_2m: true,
                large_1g: false,
                accessed_dirty: true,
            },
        )
        .unwrap();
        assert_eq!(eptp.raw() & 0xFFF, 0x5E); // WB (6) | (4-1) << 3 | A/D << 6
        assert_eq!(eptp.pml4(), test_frames::BASE);
        assert_eq!(eptp.memory_type(), 6);
        assert_eq!(eptp.walk_length(), 4);
        assert!(eptp.accessed_dirty());
        let plain = Eptp::new(0x1234_5000, false);
        assert_eq!(plain.raw(), 0x1234_501E);
        assert!(!plain.accessed_dirty());
    }

    #[test]
    fn non_leaf_entries_are_rwx_with_clear_reserved_bits() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 2 * MIB + PAGE_4K, caps(true, false)).unwrap();
        let pml4e = src.frame_mut(eptp.pml4())[0];
        assert_eq!(pml4e & 0xFFF, 7);
        let pdpte = src.frame_mut(pml4e & ADDR_MASK)[0];
        assert_eq!(pdpte & 0xFFF, 7);
        let pd = pdpte & ADDR_MASK;
        assert_eq!(src.frame_mut(pd)[0] & 0xFFF, 0xB7); // 2M leaf: RWX | WB<<3 | PS
        assert_eq!(src.frame_mut(pd)[1] & 0xFFF, 7); // PT pointer
    }

    #[test]
    fn map_range_aliases_high_frames() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 64 * MIB, caps(true, true)).unwrap();
        // Alias 64 KiB just below 4 GiB onto host frames elsewhere, read+execute, UC.
        let gpa = 4 * GIB - 0x1_0000;
        let hpa = 0x3_4560_0000;
        map_range(
            &mut src,
            eptp,
            gpa,
            hpa,
            0x1_0000,
            EptAccess::READ | EptAccess::EXECUTE,
            MemoryType::Uncacheable,
        )
        .unwrap();
        assert_eq!(src.frames.len(), 3 + 2); // new PD and PT under the existing PDPT
        let (h, leaf) = translate(&mut src, eptp, gpa + 0x1234).unwrap();
        assert_eq!(h, hpa + 0x1234);
        assert_eq!(leaf.access, EptAccess::READ | EptAccess::EXECUTE);
        assert_eq!(leaf.memory_type, MemoryType::Uncacheable as u8);
        assert_eq!(leaf.size, PageSize::Size4K);
        assert_eq!(translate(&mut src, eptp, gpa - 1), None);
        // RAM mapping is untouched.
        assert_identity(&mut src, eptp, 0, PageSize::Size2M);
        // Remapping a 4 KiB page replaces it.
        map_range(
            &mut src,
            eptp,
            gpa,
            0x5000,
            PAGE_4K,
            EptAccess::RWX,
            MemoryType::WriteBack,
        )
        .unwrap();
        assert_eq!(translate(&mut src, eptp, gpa).unwrap().0, 0x5000);
    }

    #[test]
    fn map_range_errors() {
        let mut src = TestFrames::new();
        let eptp = build_identity(&mut src, 64 * MIB, caps(true, true)).unwrap();
        let rw = EptAccess::READ | EptAccess::WRITE;
        let wb = MemoryType::WriteBack;
        assert_eq!(
            map_range(&mut src, eptp, 2 * MIB, 0x10_0000, PAGE_4K, rw, wb),
            Err(EptError::LargePageInTheWay { gpa: 2 * MIB })
        );
        assert_eq!(
            map_range(&mut src, eptp, 0x1000_0800, 0, PAGE_4K, rw, wb),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            map_range(&mut src, eptp, 0x1000_0000, 0, 100, rw, wb),
            Err(EptError::Misaligned)
        );
        assert_eq!(
            map_range(&mut src, eptp, MAX_GPA, 0, PAGE_4K, rw, wb),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(
            map_range(&mut src, eptp, 0, MAX_HPA, PAGE_4K, rw, wb),
            Err(EptError::AddressTooLarge)
        );
        assert_eq!(map_range(&mut src, eptp, 8 * GIB, 0, 0, rw, wb), Ok(()));
    }

    #[test]
    fn guest_ram_at_zero_maps_to_the_host_block() {
        let mut src = TestFrames::new();
        let caps = EptCaps {
            large_2m: true,
            large_1g: true,
            accessed_dirty: false,
        };
        let base = 0x1_0000_0000; // 4 GiB: 1 GiB-aligned on both sides
        let eptp = build_guest_ram(&mut src, 64 << 20, base, caps).unwrap();
        let (hpa, leaf) = translate(&mut src, eptp, 0x12_3456).unwrap();
        assert_eq!(hpa, base + 0x12_3456);
        assert_eq!(leaf.size, PageSize::Size2M);
        assert_eq!(
            translate(&mut src, eptp, (64 << 20) - 1).unwrap().0,
            base + (64 << 20) - 1
        );
        assert!(translate(&mut src, eptp, 64 << 20).is_none());
        // A host block aligned to 4 KiB only forces 4 KiB leaves.
        let mut src = TestFrames::new();
        let eptp = build_guest_ram(&mut src, 4 << 20, 0x20_1000, caps).unwrap();
        let (hpa, leaf) = translate(&mut src, eptp, 0x20_0000).unwrap();
        assert_eq!((hpa, leaf.size), (0x40_1000, PageSize::Size4K));
        assert_eq!(
            build_guest_ram(&mut src, 4096, 0x800, caps),
            Err(EptError::Misaligned)
        );
    }

    #[test]
    fn guest_ram_takes_the_host_mtrr_types() {
        use crate::vmx::mtrr::{Mtrrs, VariableRange, UC, WB};
        // Host RAM WB by default, with one 4 KiB UC page at host 0x120_3000.
        let mut m = Mtrrs::absent();
        m.present = true;
        m.enabled = true;
        m.default_type = WB;
        m.variable[0] = VariableRange {
            base: 0x120_3000,
            mask: (!0xFFFu64 & ((1 << 36) - 1)) | (1 << 11),
            mem_type: UC,
        };
        m.variable_count = 1;
        let mut src = TestFrames::new();
        let caps = EptCaps {
            large_2m: true,
            large_1g: true,
            accessed_dirty: false,
        };
        let types = |h: u64, len: u64| m.uniform_type(h, len).and_then(MemoryType::from_bits);
        let eptp = build_guest_ram_typed(&mut src, 8 << 20, 0x100_0000, caps, &types).unwrap();
        // The 2 MiB page holding the UC page is split; its neighbours stay large.
        let leaf = |src: &mut TestFrames, gpa| translate(src, eptp, gpa).unwrap().1;
        assert_eq!(leaf(&mut src, 0).size, PageSize::Size2M);
        assert_eq!(leaf(&mut src, 0).memory_type, WB);
        let uc = leaf(&mut src, 0x20_3000);
        assert_eq!((uc.size, uc.memory_type), (PageSize::Size4K, UC));
        let next = leaf(&mut src, 0x20_4000);
        assert_eq!((next.size, next.memory_type), (PageSize::Size4K, WB));
        assert_eq!(leaf(&mut src, 0x40_0000).size, PageSize::Size2M);
        // Every byte still maps to its host address.
        assert_eq!(translate(&mut src, eptp, 0x20_3abc).unwrap().0, 0x120_3abc);
    }
}
