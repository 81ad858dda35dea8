//! Guest memory as the hypervisor sees it, and guest-linear → guest-physical
//! translation through the guest's own paging structures.
//!
//! [`GuestMemory`] is guest RAM addressed by guest-physical address (GPA);
//! [`SliceMemory`] implements it over one contiguous byte block (the kernel's
//! guest RAM is one host allocation identity-mapped by EPT; tests use a `Vec`).
//!
//! [`translate`] walks the guest's paging structures for every paging mode of SDM Vol.
//! 3A chapter 4 "Paging": no paging (4.1 "Paging Modes and Control Bits"), 32-bit
//! paging (4.3 "32-Bit Paging"), PAE paging (4.4 "PAE Paging") and 4-level / 5-level
//! paging (4.5 "4-Level Paging and 5-Level Paging"), with the access-rights rules of
//! 4.6 "Access Rights" and the page-fault error code of 4.7 "Page-Fault Exceptions".
//!
//! Known differences to the hardware walk (all deliberate, all documented):
//! - Accessed and dirty flags are never set. sluice's emulation (string IO,
//!   hypercall buffers, the coalescer's instruction reads) reads through the
//!   tables without the side effects a real access has. A guest that relies on
//!   A/D bits for memory the *hypervisor* touched on its behalf (swap-out
//!   heuristics) sees them as they were.
//! - PAE paging reads the four PDPTEs from memory at CR3 on every walk; the processor
//!   uses the copies it loaded at the last MOV to CR3/CR0/CR4 (SDM Vol. 3A 4.4.1 "PDPTE
//!   Registers"). They differ only if the guest edits its PDPT without reloading CR3.
//! - Reserved bits above MAXPHYADDR are not checked (MAXPHYADDR is not known
//!   here); addresses are taken from bits 51:12 and an address past guest RAM
//!   yields [`TranslateError::Memory`] instead of a reserved-bit fault.
//! - SMAP (needs RFLAGS.AC), protection keys, CET shadow-stack and HLAT rules
//!   are not modelled; SMEP is.

use crate::x86::is_canonical;
use crate::x86::{Cr0, Cr4, Efer};
use core::fmt;

/// Size of the smallest page and of every paging structure.
pub const PAGE_SIZE: u64 = 4096;

/// A guest-physical address outside guest RAM: the first byte of the access
/// that is not backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub gpa: u64,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest-physical address {:#x} is outside guest RAM",
            self.gpa
        )
    }
}

impl core::error::Error for MemError {}

/// Guest RAM, addressed by guest-physical address. An access fails as a whole
/// (nothing is read or written) if any of its bytes lies outside RAM.
pub trait GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    /// Bytes of guest RAM; valid GPAs are `0..size()`.
    fn size(&self) -> u64;

    fn read_u8(&self, gpa: u64) -> Result<u8, MemError> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }
    fn read_u16(&self, gpa: u64) -> Result<u16, MemError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn write_u8(&mut self, gpa: u64, v: u8) -> Result<(), MemError> {
        self.write(gpa, &[v])
    }
    fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    /// Whether `len` bytes from `gpa` all lie in guest RAM.
    fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        check_range(gpa, len, self.size())
    }
}

/// `Ok` if `[gpa, gpa + len)` lies in `[0, size)`; else the first byte that does not.
fn check_range(gpa: u64, len: u64, size: u64) -> Result<(), MemError> {
    match gpa.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MemError {
            gpa: if gpa >= size { gpa } else { size },
        }),
    }
}

/// Guest RAM as one contiguous block: GPA 0 is `bytes[0]`.
pub struct SliceMemory<'a> {
    bytes: &'a mut [u8],
}

impl<'a> SliceMemory<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        SliceMemory { bytes }
    }

    /// Offset range of an access, or the error naming the first bad GPA.
    fn span(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        check_range(gpa, len as u64, self.size())?;
        // Both fit in usize: they are bounded by the slice length.
        let start = gpa as usize;
        Ok(start..start + len)
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.span(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.span(gpa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The guest state that selects and drives the paging mode (SDM Vol. 3A 4.1.1 "Four
/// Paging Modes", Table 4-1 "Properties of Different Paging Modes"): guest CR0, CR3,
/// CR4 and IA32_EFER as held in the VMCS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingContext {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// IA32_EFER; LMA (bit 10) selects IA-32e paging, NXE (bit 11) enables XD.
    pub efer: u64,
}

/// Paging mode, SDM Vol. 3A Table 4-1 "Properties of Different Paging Modes".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    None,
    Bits32,
    Pae,
    Level4,
    Level5,
}

impl PagingContext {
    pub const fn mode(&self) -> PagingMode {
        if self.cr0 & Cr0::PG.bits() == 0 {
            PagingMode::None
        } else if self.cr4 & Cr4::PAE.bits() == 0 {
            PagingMode::Bits32
        } else if self.efer & Efer::LMA.bits() == 0 {
            PagingMode::Pae
        } else if self.cr4 & Cr4::LA57.bits() == 0 {
            PagingMode::Level4
        } else {
            PagingMode::Level5
        }
    }

    /// XD bits are honoured (SDM Vol. 3A 4.6 "Access Rights": only with PAE/IA-32e
    /// paging and EFER.NXE).
    const fn nx_enabled(&self) -> bool {
        self.cr4 & Cr4::PAE.bits() != 0 && self.efer & Efer::NXE.bits() != 0
    }
}

/// What kind of access a translation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
    Fetch,
}

/// An access: its kind and the privilege it is made with. CPL 3 is a user-mode
/// access, CPL 0–2 a supervisor-mode one (SDM Vol. 3A 4.6 "Access Rights").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub kind: AccessKind,
    pub cpl: u8,
}

impl Access {
    pub const fn read(cpl: u8) -> Self {
        Access {
            kind: AccessKind::Read,
            cpl,
        }
    }
    pub const fn write(cpl: u8) -> Self {
        Access {
            kind: AccessKind::Write,
            cpl,
        }
    }
    pub const fn fetch(cpl: u8) -> Self {
        Access {
            kind: AccessKind::Fetch,
            cpl,
        }
    }
    const fn user(&self) -> bool {
        self.cpl == 3
    }
}

/// Page-fault error code bits (SDM Vol. 3A 4.7 "Page-Fault Exceptions", Figure 4-12
/// "Page-Fault Error Code").
pub mod pf {
    /// 0: not-present page; 1: protection violation (or reserved bit).
    pub const PRESENT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const RESERVED: u32 = 1 << 3;
    pub const FETCH: u32 = 1 << 4;
}

/// Why a linear address could not be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// The access would page-fault: `linear` is what CR2 would hold.
    PageFault { linear: u64, error_code: u32 },
    /// Not canonical for the paging mode (the processor raises #GP or #SS, not #PF).
    NonCanonical { linear: u64 },
    /// A paging structure (or the final address) lies outside guest RAM.
    Memory(MemError),
}

impl From<MemError> for TranslateError {
    fn from(e: MemError) -> Self {
        TranslateError::Memory(e)
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::PageFault { linear, error_code } => {
                write!(f, "page fault at {linear:#x} (error code {error_code:#x})")
            }
            TranslateError::NonCanonical { linear } => {
                write!(f, "non-canonical address {linear:#x}")
            }
            TranslateError::Memory(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for TranslateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            TranslateError::Memory(e) => Some(e),
            TranslateError::PageFault { .. } | TranslateError::NonCanonical { .. } => None,
        }
    }
}

// Paging-entry bits common to all modes (SDM Vol. 3A Tables 4-4 to 4-6, 4-8 to 4-11
// and 4-14 to 4-20, the entry formats of 4.3 "32-Bit Paging", 4.4 "PAE Paging" and
// 4.5 "4-Level Paging and 5-Level Paging").
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Accessed and dirty flags (SDM Vol. 3A 4.8 "Accessed and Dirty Flags").
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
/// Physical-address bits 51:12 of a 64-bit entry.
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Rights accumulated along a walk (SDM Vol. 3A 4.6 "Access Rights": the effective
/// right is the AND of R/W and U/S, and the OR of XD, over every level), and the
/// accessed and dirty flags the walk found (4.8 "Accessed and Dirty Flags").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    pub writable: bool,
    /// User-mode accesses allowed (U/S set at every level).
    pub user: bool,
    pub xd: bool,
    /// A set in every entry used (PAE PDPTEs have none): the processor would set no
    /// accessed flag for this translation.
    pub accessed: bool,
    /// D set in the entry that maps the page: a write would set no dirty flag.
    pub dirty: bool,
}

impl Rights {
    /// No paging, or nothing restricted yet.
    const ALL: Rights = Rights {
        writable: true,
        user: true,
        xd: false,
        accessed: true,
        dirty: true,
    };
    fn add(&mut self, entry: u64, has_rw_us: bool) {
        if has_rw_us {
            self.writable &= entry & RW != 0;
            self.user &= entry & US != 0;
        }
        self.xd |= entry & XD != 0;
        self.accessed &= entry & ACCESSED != 0;
    }
    /// The entry that maps the page.
    fn leaf(&mut self, entry: u64) {
        self.dirty = entry & DIRTY != 0;
    }
}

/// Translates `linear` for `access` through the guest's paging mode.
///
/// Without paging the linear address is the physical address (truncated to
/// 32 bits; A20 masking is not modelled). The result is not checked against
/// guest RAM size, only the paging structures are read.
pub fn translate(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
) -> Result<u64, TranslateError> {
    translate_with_rights(mem, ctx, linear, access).map(|(gpa, _)| gpa)
}

/// [`translate`], also returning what the walk found: the effective rights and
/// whether the processor would have to set an accessed or dirty flag.
pub fn translate_with_rights(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
) -> Result<(u64, Rights), TranslateError> {
    match ctx.mode() {
        PagingMode::None => Ok((linear & 0xFFFF_FFFF, Rights::ALL)),
        PagingMode::Bits32 => walk_32bit(mem, ctx, linear & 0xFFFF_FFFF, access),
        PagingMode::Pae => walk_pae(mem, ctx, linear & 0xFFFF_FFFF, access),
        PagingMode::Level4 => walk_ia32e(mem, ctx, linear, access, 4),
        PagingMode::Level5 => walk_ia32e(mem, ctx, linear, access, 5),
    }
}

/// Page-fault error code for an access (SDM Vol. 3A 4.7 "Page-Fault Exceptions").
fn fault(ctx: &PagingContext, linear: u64, access: Access, bits: u32) -> TranslateError {
    let mut code = bits;
    match access.kind {
        AccessKind::Write => code |= pf::WRITE,
        AccessKind::Fetch if ctx.nx_enabled() || ctx.cr4 & Cr4::SMEP.bits() != 0 => {
            code |= pf::FETCH
        }
        _ => {}
    }
    if access.user() {
        code |= pf::USER;
    }
    TranslateError::PageFault {
        linear,
        error_code: code,
    }
}

/// The access-rights check after a successful walk (SDM Vol. 3A 4.6 "Access Rights").
fn check_rights(
    ctx: &PagingContext,
    linear: u64,
    access: Access,
    r: Rights,
) -> Result<(), TranslateError> {
    let denied = |_: ()| fault(ctx, linear, access, pf::PRESENT);
    if access.user() && !r.user {
        return Err(denied(()));
    }
    match access.kind {
        AccessKind::Read => {}
        AccessKind::Write => {
            // User writes always need R/W; supervisor writes only with CR0.WP.
            if !r.writable && (access.user() || ctx.cr0 & Cr0::WP.bits() != 0) {
                return Err(denied(()));
            }
        }
        AccessKind::Fetch => {
            if ctx.nx_enabled() && r.xd {
                return Err(denied(()));
            }
            // SMEP: no supervisor fetches from user-mode pages.
            if !access.user() && r.user && ctx.cr4 & Cr4::SMEP.bits() != 0 {
                return Err(denied(()));
            }
        }
    }
    Ok(())
}

/// 32-bit paging (SDM Vol. 3A 4.3 "32-Bit Paging"): 4-byte entries, 4 KiB pages or,
/// with CR4.PSE, 4 MiB pages (PSE-36: PDE bits 20:13 are physical bits 39:32).
fn walk_32bit(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
) -> Result<(u64, Rights), TranslateError> {
    let not_present = || fault(ctx, linear, access, 0);
    let mut rights = Rights::ALL;
    let pde_addr = (ctx.cr3 & 0xFFFF_F000) | ((linear >> 22) << 2);
    let pde = u64::from(mem.read_u32(pde_addr)?);
    if pde & P == 0 {
        return Err(not_present());
    }
    rights.add(pde, true);
    if pde & PS != 0 && ctx.cr4 & Cr4::PSE.bits() != 0 {
        // Bit 21 is reserved in a 4 MiB PDE (SDM Vol. 3A Table 4-4 "Format of a 32-Bit
        // Page-Directory Entry that Maps a 4-MByte Page").
        if pde & (1 << 21) != 0 {
            return Err(fault(ctx, linear, access, pf::PRESENT | pf::RESERVED));
        }
        check_rights(ctx, linear, access, rights)?;
        rights.leaf(pde);
        let high = ((pde >> 13) & 0xFF) << 32;
        return Ok((high | (pde & 0xFFC0_0000) | (linear & 0x3F_FFFF), rights));
    }
    let pte_addr = (pde & 0xFFFF_F000) | (((linear >> 12) & 0x3FF) << 2);
    let pte = u64::from(mem.read_u32(pte_addr)?);
    if pte & P == 0 {
        return Err(not_present());
    }
    rights.add(pte, true);
    check_rights(ctx, linear, access, rights)?;
    rights.leaf(pte);
    Ok(((pte & 0xFFFF_F000) | (linear & 0xFFF), rights))
}

/// Reserved bits of a present 64-bit entry at `level` (1 = PTE .. 5 = PML5E) that can
/// be checked without knowing MAXPHYADDR (SDM Vol. 3A Tables 4-8 to 4-11 and 4-14 to
/// 4-20, the entry formats of 4.4 "PAE Paging" and 4.5 "4-Level Paging and 5-Level
/// Paging"): XD without EFER.NXE, PS where it must be 0, and the low address bits of
/// large pages.
fn reserved_bits(ctx: &PagingContext, entry: u64, level: u8) -> bool {
    if !ctx.nx_enabled() && entry & XD != 0 {
        return true;
    }
    let large = entry & PS != 0;
    match level {
        // PML5E / PML4E: PS is reserved.
        4 | 5 => large,
        // 1 GiB page: bits 29:13 reserved.
        3 => large && entry & 0x3FFF_E000 != 0,
        // 2 MiB page: bits 20:13 reserved.
        2 => large && entry & 0x1F_E000 != 0,
        _ => false,
    }
}

/// Walks from a table at `table` starting at `level` down to the leaf, with
/// 9-bit indexes (PAE from the PD down, 4-/5-level from the top).
fn walk_from(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
    mut table: u64,
    mut level: u8,
    mut rights: Rights,
) -> Result<(u64, Rights), TranslateError> {
    loop {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (linear >> shift) & 0x1FF;
        let entry = mem.read_u64((table & ADDR_MASK) | (index << 3))?;
        if entry & P == 0 {
            return Err(fault(ctx, linear, access, 0));
        }
        if reserved_bits(ctx, entry, level) {
            return Err(fault(ctx, linear, access, pf::PRESENT | pf::RESERVED));
        }
        rights.add(entry, true);
        // A PS=1 PDPTE (1 GiB) or PDE (2 MiB) maps a page; so does every PTE.
        if level == 1 || (entry & PS != 0 && level <= 3) {
            check_rights(ctx, linear, access, rights)?;
            rights.leaf(entry);
            let page_mask = (1u64 << shift) - 1;
            return Ok((
                (entry & ADDR_MASK & !page_mask) | (linear & page_mask),
                rights,
            ));
        }
        table = entry;
        level -= 1;
    }
}

/// PAE paging (SDM Vol. 3A 4.4 "PAE Paging"): four PDPTEs at CR3 bits 31:5, then 2 MiB
/// or 4 KiB pages.
fn walk_pae(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
) -> Result<(u64, Rights), TranslateError> {
    let pdpte_addr = (ctx.cr3 & 0xFFFF_FFE0) | ((linear >> 30) << 3);
    let pdpte = mem.read_u64(pdpte_addr)?;
    if pdpte & P == 0 {
        return Err(fault(ctx, linear, access, 0));
    }
    if pdpte_reserved(pdpte) {
        return Err(fault(ctx, linear, access, pf::PRESENT | pf::RESERVED));
    }
    // PAE PDPTEs carry no R/W, U/S or XD (SDM Vol. 3A Table 4-8 "Format of a PAE
    // Page-Directory-Pointer-Table Entry (PDPTE)").
    walk_from(mem, ctx, linear, access, pdpte, 2, Rights::ALL)
}

/// Reserved bits of a present PAE PDPTE (SDM Vol. 3A Table 4-8 "Format of a PAE
/// Page-Directory-Pointer-Table Entry (PDPTE)"): 2:1, 8:5 and 63:52 (bits 51:MAXPHYADDR
/// are not checked). A MOV to CR3 with such a PDPTE would raise #GP on the processor.
pub const fn pdpte_reserved(pdpte: u64) -> bool {
    pdpte & (0b110 | 0x1E0 | 0xFFF0_0000_0000_0000) != 0
}

/// 4-level and 5-level paging (SDM Vol. 3A 4.5 "4-Level Paging and 5-Level Paging"):
/// canonical check, then the walk.
fn walk_ia32e(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    linear: u64,
    access: Access,
    levels: u8,
) -> Result<(u64, Rights), TranslateError> {
    let bits = if levels == 5 { 57 } else { 48 };
    if !is_canonical(linear, bits) {
        return Err(TranslateError::NonCanonical { linear });
    }
    walk_from(mem, ctx, linear, access, ctx.cr3, levels, Rights::ALL)
}

/// Applies `f` to each guest-physical piece of `[linear, linear + len)`, split
/// at 4 KiB page boundaries, after checking the whole range translates for
/// `access` and lies in guest RAM. Nothing is passed to `f` unless every
/// piece is valid. `f` gets (gpa, offset into the range, piece length).
fn for_each_piece<M: GuestMemory, F>(
    mem: &mut M,
    ctx: &PagingContext,
    linear: u64,
    len: usize,
    access: Access,
    mut f: F,
) -> Result<(), TranslateError>
where
    F: FnMut(&mut M, u64, usize, usize) -> Result<(), MemError>,
{
    // Two passes: validate, then act. The walk is repeated instead of storing
    // the pieces because the range may be long and there is no heap.
    for pass in 0..2 {
        let mut done = 0usize;
        while done < len {
            let lin = linear.wrapping_add(done as u64);
            let in_page = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - done);
            let gpa = translate(&*mem, ctx, lin, access)?;
            if pass == 0 {
                mem.check(gpa, n as u64)?;
            } else {
                f(mem, gpa, done, n)?;
            }
            done += n;
        }
    }
    Ok(())
}

/// Reads `buf.len()` bytes at guest-linear `linear` as a supervisor data read
/// (CPL 0), following the translation page by page. Fails without reading
/// anything if any page does not translate or is outside RAM.
pub fn read_linear<M: GuestMemory>(
    mem: &M,
    ctx: &PagingContext,
    linear: u64,
    buf: &mut [u8],
) -> Result<(), TranslateError> {
    read_linear_as(mem, ctx, linear, buf, Access::read(0))
}

/// [`read_linear`] with an explicit access (a read or fetch at some CPL).
pub fn read_linear_as<M: GuestMemory>(
    mem: &M,
    ctx: &PagingContext,
    linear: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<(), TranslateError> {
    let mut done = 0usize;
    // Validate the whole range first so a failure reads nothing.
    check_linear(mem, ctx, linear, buf.len(), access)?;
    while done < buf.len() {
        let lin = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))) as usize;
        let n = in_page.min(buf.len() - done);
        let gpa = translate(mem, ctx, lin, access)?;
        mem.read(gpa, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Checks that `len` bytes at `linear` translate for `access` and lie in RAM.
pub fn check_linear<M: GuestMemory>(
    mem: &M,
    ctx: &PagingContext,
    linear: u64,
    len: usize,
    access: Access,
) -> Result<(), TranslateError> {
    let mut done = 0usize;
    while done < len {
        let lin = linear.wrapping_add(done as u64);
        let in_page = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))) as usize;
        let n = in_page.min(len - done);
        let gpa = translate(mem, ctx, lin, access)?;
        mem.check(gpa, n as u64)?;
        done += n;
    }
    Ok(())
}

/// Writes `data` at guest-linear `linear` with a write access at `cpl`. The
/// whole range is checked first, so a fault writes nothing (unless the write
/// itself changes the guest's paging structures half-way).
pub fn write_linear<M: GuestMemory>(
    mem: &mut M,
    ctx: &PagingContext,
    linear: u64,
    data: &[u8],
    cpl: u8,
) -> Result<(), TranslateError> {
    for_each_piece(
        mem,
        ctx,
        linear,
        data.len(),
        Access::write(cpl),
        |m, gpa, off, n| m.write(gpa, &data[off..off + n]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: usize = 4 << 20;

    fn ram() -> Vec<u8> {
        vec![0u8; RAM]
    }

    fn put64(r: &mut [u8], at: u64, v: u64) {
        r[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(r: &mut [u8], at: u64, v: u32) {
        r[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn slice_memory_bounds() {
        let mut r = vec![0u8; 16];
        let mut m = SliceMemory::new(&mut r);
        assert_eq!(m.size(), 16);
        m.write_u64(8, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(m.read_u64(8).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(m.read_u32(8).unwrap(), 0x5566_7788);
        assert_eq!(m.read_u16(14).unwrap(), 0x1122);
        assert_eq!(m.read_u8(15).unwrap(), 0x11);
        assert_eq!(m.read_u64(9), Err(MemError { gpa: 16 }));
        assert_eq!(m.read_u8(16), Err(MemError { gpa: 16 }));
        assert_eq!(m.write(100, &[1]), Err(MemError { gpa: 100 }));
        assert_eq!(
            m.read_u64(u64::MAX - 3),
            Err(MemError { gpa: u64::MAX - 3 })
        );
        // A failed write changes nothing.
        assert!(m.write(12, &[9; 8]).is_err());
        assert_eq!(m.read_u32(12).unwrap(), 0x1122_3344);
        // Empty accesses at the end are fine.
        m.read(16, &mut []).unwrap();
    }

    #[test]
    fn no_paging_is_identity_truncated() {
        let mut r = ram();
        let m = SliceMemory::new(&mut r);
        let ctx = PagingContext::default();
        assert_eq!(
            translate(&m, &ctx, 0x1_0000_1234, Access::write(3)),
            Ok(0x1234)
        );
    }

    #[test]
    fn canonical() {
        assert!(is_canonical(0x0000_7FFF_FFFF_FFFF, 48));
        assert!(is_canonical(0xFFFF_8000_0000_0000, 48));
        assert!(!is_canonical(0x0000_8000_0000_0000, 48));
        assert!(is_canonical(0x0000_8000_0000_0000, 57));
        assert!(!is_canonical(0x0100_0000_0000_0000, 57));
    }

    /// 32-bit paging: PD at 0x1000, PT at 0x2000.
    fn setup_32bit(r: &mut [u8]) -> PagingContext {
        // PDE 0 -> PT, user, writable.
        put32(r, 0x1000, 0x2000 | 0x7);
        // PTE 5 -> 0x30_0000 read-only supervisor.
        put32(r, 0x2000 + 5 * 4, 0x30_0000 | 0x1);
        // PTE 6 -> 0x31_0000 user writable.
        put32(r, 0x2000 + 6 * 4, 0x31_0000 | 0x7);
        // PDE 1: 4 MiB page at 0x0040_0000 with PSE-36 high bits = 1.
        put32(r, 0x1004, 0x0040_0000 | (1 << 13) | 0x87);
        // PDE 2: 4 MiB page with reserved bit 21.
        put32(r, 0x1008, 0x0080_0000 | (1 << 21) | 0x83);
        PagingContext {
            cr0: Cr0::PG.bits() | Cr0::PE.bits(),
            cr3: 0x1000,
            cr4: Cr4::PSE.bits(),
            efer: 0,
        }
    }

    #[test]
    fn paging_32bit() {
        let mut r = ram();
        let ctx = setup_32bit(&mut r);
        let m = SliceMemory::new(&mut r);
        assert_eq!(translate(&m, &ctx, 0x5123, Access::read(0)), Ok(0x30_0123));
        assert_eq!(translate(&m, &ctx, 0x6FFF, Access::write(3)), Ok(0x31_0FFF));
        // Supervisor write to a read-only page: allowed without WP...
        assert_eq!(translate(&m, &ctx, 0x5000, Access::write(0)), Ok(0x30_0000));
        // ...faults with WP.
        let wp = PagingContext {
            cr0: ctx.cr0 | Cr0::WP.bits(),
            ..ctx
        };
        assert_eq!(
            translate(&m, &wp, 0x5000, Access::write(0)),
            Err(TranslateError::PageFault {
                linear: 0x5000,
                error_code: pf::PRESENT | pf::WRITE
            })
        );
        // User read of a supervisor page.
        assert_eq!(
            translate(&m, &ctx, 0x5000, Access::read(3)),
            Err(TranslateError::PageFault {
                linear: 0x5000,
                error_code: pf::PRESENT | pf::USER
            })
        );
        // Not present PTE; no I/D bit without NX/SMEP.
        assert_eq!(
            translate(&m, &ctx, 0x7000, Access::fetch(3)),
            Err(TranslateError::PageFault {
                linear: 0x7000,
                error_code: pf::USER
            })
        );
        // 4 MiB page with PSE-36 address bits.
        assert_eq!(
            translate(&m, &ctx, 0x0045_6789, Access::read(3)),
            Ok(0x1_0045_6789)
        );
        // Reserved bit 21 in a 4 MiB PDE.
        assert_eq!(
            translate(&m, &ctx, 0x0080_0000, Access::read(0)),
            Err(TranslateError::PageFault {
                linear: 0x0080_0000,
                error_code: pf::PRESENT | pf::RESERVED
            })
        );
        // Without CR4.PSE, PS is ignored: PDE 1 points at a page table at 0x40_0000
        // whose entries (outside this 4 MiB RAM) cannot be read.
        let nopse = PagingContext { cr4: 0, ..ctx };
        assert_eq!(
            translate(&m, &nopse, 0x0040_0000, Access::read(0)),
            Err(TranslateError::Memory(MemError { gpa: 0x40_2000 }))
        );
        // Linear addresses are 32 bits.
        assert_eq!(
            translate(&m, &ctx, 0xFFFF_FFFF_0000_5004, Access::read(0)),
            Ok(0x30_0004)
        );
    }

    /// PAE: PDPT at 0x1020 (32-byte aligned, not page aligned), PD at 0x2000, PT at 0x3000.
    fn setup_pae(r: &mut [u8]) -> PagingContext {
        put64(r, 0x1020, 0x2000 | 1);
        put64(r, 0x1020 + 3 * 8, 0x2000 | 1 | (1 << 1)); // reserved bit 1
        put64(r, 0x2000, 0x3000 | 0x7);
        put64(r, 0x2008, 0x20_0000 | 0x87 | XD); // 2 MiB page, XD
        put64(r, 0x2010, 0x40_0000 | 0x83 | (1 << 13)); // reserved bit 13
        put64(r, 0x3000 + 8, 0x1_5000 | 0x3);
        PagingContext {
            cr0: Cr0::PG.bits() | Cr0::PE.bits() | Cr0::WP.bits(),
            cr3: 0x1020,
            cr4: Cr4::PAE.bits(),
            efer: Efer::NXE.bits(),
        }
    }

    #[test]
    fn paging_pae() {
        let mut r = ram();
        let ctx = setup_pae(&mut r);
        let m = SliceMemory::new(&mut r);
        assert_eq!(translate(&m, &ctx, 0x1ABC, Access::write(0)), Ok(0x1_5ABC));
        assert_eq!(
            translate(&m, &ctx, 0x1ABC, Access::read(3)),
            Err(TranslateError::PageFault {
                linear: 0x1ABC,
                error_code: pf::PRESENT | pf::USER
            })
        );
        assert_eq!(
            translate(&m, &ctx, 0x20_1234, Access::read(3)),
            Ok(0x20_1234)
        );
        // XD with NXE: fetch faults with I/D set.
        assert_eq!(
            translate(&m, &ctx, 0x20_1234, Access::fetch(0)),
            Err(TranslateError::PageFault {
                linear: 0x20_1234,
                error_code: pf::PRESENT | pf::FETCH
            })
        );
        // Without NXE the XD bit is reserved.
        let nonx = PagingContext { efer: 0, ..ctx };
        assert_eq!(
            translate(&m, &nonx, 0x20_1234, Access::read(0)),
            Err(TranslateError::PageFault {
                linear: 0x20_1234,
                error_code: pf::PRESENT | pf::RESERVED
            })
        );
        // 2 MiB page with a reserved low address bit.
        assert!(matches!(
            translate(&m, &ctx, 0x40_0000, Access::read(0)),
            Err(TranslateError::PageFault { error_code, .. }) if error_code & pf::RESERVED != 0
        ));
        // Not-present PDPTE 1, reserved PDPTE 3.
        assert_eq!(
            translate(&m, &ctx, 0x4000_0000, Access::write(0)),
            Err(TranslateError::PageFault {
                linear: 0x4000_0000,
                error_code: pf::WRITE
            })
        );
        assert_eq!(
            translate(&m, &ctx, 0xC000_0000, Access::read(0)),
            Err(TranslateError::PageFault {
                linear: 0xC000_0000,
                error_code: pf::PRESENT | pf::RESERVED
            })
        );
    }

    /// 4-level: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000. Also maps the
    /// high half (PML4 entry 511) to the same PDPT.
    fn setup_4level(r: &mut [u8]) -> PagingContext {
        put64(r, 0x1000, 0x2000 | 0x7);
        put64(r, 0x1000 + 511 * 8, 0x2000 | 0x3); // supervisor only
        put64(r, 0x2000, 0x3000 | 0x7);
        put64(r, 0x2008, 0x83); // 1 GiB page at 0 (PDPTE 1 -> linear 1 GiB)
        put64(r, 0x2010, 0x83 | (1 << 20)); // 1 GiB page with reserved bit 20
        put64(r, 0x3000, 0x4000 | 0x7);
        put64(r, 0x3008, 0x20_0000 | 0x85); // 2 MiB user read-only
                                            // Linear 0x10_0000 (PT index 0x100) -> itself; 0x10_1000 -> 0x13_0000;
                                            // 0x10_2000 -> 0x1000, supervisor and XD; 0x10_3000 not present.
        put64(r, 0x4000 + 0x100 * 8, 0x10_0000 | 0x7);
        put64(r, 0x4000 + 0x101 * 8, 0x13_0000 | 0x7);
        put64(r, 0x4000 + 0x102 * 8, 0x1000 | 0x3 | XD);
        put64(r, 0x1000 + 8, 0x2000 | 0x87); // PML4E with PS: reserved
        PagingContext {
            cr0: Cr0::PG.bits() | Cr0::PE.bits() | Cr0::WP.bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: Efer::LME.bits() | Efer::LMA.bits() | Efer::NXE.bits(),
        }
    }

    #[test]
    fn walks_report_accessed_dirty_and_user() {
        let rights = |r: &mut Vec<u8>, ctx: &PagingContext, lin: u64| {
            let m = SliceMemory::new(r);
            translate_with_rights(&m, ctx, lin, Access::read(0))
                .unwrap()
                .1
        };
        let (a, d) = (ACCESSED, DIRTY);
        // 4-level, 4 KiB page at linear 0x10_0000: A and D off everywhere.
        let mut r = ram();
        let ctx = setup_4level(&mut r);
        let got = rights(&mut r, &ctx, 0x10_0000);
        assert!(got.user && !got.accessed && !got.dirty, "{got:?}");
        // A on every level but the PTE, then on the PTE too, then D on the PTE.
        for at in [0x1000, 0x2000, 0x3000] {
            let e = u64::from_le_bytes(r[at..at + 8].try_into().unwrap());
            put64(&mut r, at as u64, e | a);
        }
        assert!(!rights(&mut r, &ctx, 0x10_0000).accessed);
        put64(&mut r, 0x4000 + 0x100 * 8, 0x10_0000 | 0x7 | a);
        let got = rights(&mut r, &ctx, 0x10_0000);
        assert!(got.accessed && !got.dirty, "{got:?}");
        put64(&mut r, 0x4000 + 0x100 * 8, 0x10_0000 | 0x7 | a | d);
        assert!(rights(&mut r, &ctx, 0x10_0000).dirty);
        // D of a non-leaf entry is not the page's: the 2 MiB PDE at 0x20_0000 is.
        put64(&mut r, 0x3008, 0x20_0000 | 0x85 | a);
        let got = rights(&mut r, &ctx, 0x20_0000);
        assert!(
            got.accessed && !got.dirty && got.user && !got.writable,
            "{got:?}"
        );
        // 32-bit paging: the 4 KiB supervisor page and the 4 MiB page.
        let mut r = ram();
        let ctx = setup_32bit(&mut r);
        put32(&mut r, 0x1000, 0x2000 | 0x7 | a as u32);
        put32(&mut r, 0x2000 + 5 * 4, 0x30_0000 | 0x1 | (a | d) as u32);
        let got = rights(&mut r, &ctx, 0x5000);
        assert!(got.accessed && got.dirty && !got.user, "{got:?}");
        put32(&mut r, 0x1004, 0x0040_0000 | (1 << 13) | 0x87 | d as u32);
        let got = rights(&mut r, &ctx, 0x40_0000);
        assert!(!got.accessed && got.dirty && got.user, "{got:?}");
        // No paging: nothing for the processor to set.
        let none = PagingContext {
            cr0: Cr0::PE.bits(),
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(rights(&mut r, &none, 0x5000), Rights::ALL);
    }

    #[test]
    fn paging_4level() {
        let mut r = ram();
        let ctx = setup_4level(&mut r);
        let m = SliceMemory::new(&mut r);
        assert_eq!(ctx.mode(), PagingMode::Level4);
        assert_eq!(
            translate(&m, &ctx, 0x10_0123, Access::write(3)),
            Ok(0x10_0123)
        );
        assert_eq!(
            translate(&m, &ctx, 0x10_1FF0, Access::read(0)),
            Ok(0x13_0FF0)
        );
        // 2 MiB page, read-only for a user write.
        assert_eq!(
            translate(&m, &ctx, 0x20_0042, Access::read(3)),
            Ok(0x20_0042)
        );
        assert_eq!(
            translate(&m, &ctx, 0x20_0042, Access::write(3)),
            Err(TranslateError::PageFault {
                linear: 0x20_0042,
                error_code: pf::PRESENT | pf::WRITE | pf::USER
            })
        );
        // 1 GiB page.
        assert_eq!(
            translate(&m, &ctx, 0x4000_1234, Access::read(0)),
            Ok(0x1234)
        );
        assert!(matches!(
            translate(&m, &ctx, 0x8000_0000, Access::read(0)),
            Err(TranslateError::PageFault { error_code, .. }) if error_code == pf::PRESENT | pf::RESERVED
        ));
        // XD fetch, and SMEP.
        assert_eq!(
            translate(&m, &ctx, 0x10_2000, Access::fetch(0)),
            Err(TranslateError::PageFault {
                linear: 0x10_2000,
                error_code: pf::PRESENT | pf::FETCH
            })
        );
        assert_eq!(
            translate(&m, &ctx, 0x10_0000, Access::fetch(0)),
            Ok(0x10_0000)
        );
        let smep = PagingContext {
            cr4: ctx.cr4 | Cr4::SMEP.bits(),
            ..ctx
        };
        assert!(translate(&m, &smep, 0x10_0000, Access::fetch(0)).is_err());
        assert_eq!(
            translate(&m, &smep, 0x10_0000, Access::fetch(3)),
            Ok(0x10_0000)
        );
        // High half: supervisor-only at the PML4 level.
        let high = 0xFFFF_FF80_0010_0000;
        assert_eq!(translate(&m, &ctx, high, Access::read(0)), Ok(0x10_0000));
        assert!(translate(&m, &ctx, high, Access::read(3)).is_err());
        // Non-canonical and PS in a PML4E.
        assert_eq!(
            translate(&m, &ctx, 0x0000_8000_0000_0000, Access::read(0)),
            Err(TranslateError::NonCanonical {
                linear: 0x0000_8000_0000_0000
            })
        );
        assert!(matches!(
            translate(&m, &ctx, 1 << 39, Access::read(0)),
            Err(TranslateError::PageFault { error_code, .. }) if error_code & pf::RESERVED != 0
        ));
        // Not present.
        assert_eq!(
            translate(&m, &ctx, 0x10_3000, Access::read(0)),
            Err(TranslateError::PageFault {
                linear: 0x10_3000,
                error_code: 0
            })
        );
    }

    #[test]
    fn paging_5level() {
        let mut r = ram();
        let mut ctx = setup_4level(&mut r);
        // PML5 at 0x5000: entry 0 -> the 4-level PML4; entry 1 (linear 2^48) too.
        put64(&mut r, 0x5000, 0x1000 | 0x7);
        put64(&mut r, 0x5008, 0x1000 | 0x7);
        ctx.cr3 = 0x5000;
        ctx.cr4 |= Cr4::LA57.bits();
        let m = SliceMemory::new(&mut r);
        assert_eq!(ctx.mode(), PagingMode::Level5);
        assert_eq!(
            translate(&m, &ctx, 0x10_0123, Access::read(3)),
            Ok(0x10_0123)
        );
        assert_eq!(
            translate(&m, &ctx, (1 << 48) | 0x10_1004, Access::read(3)),
            Ok(0x13_0004)
        );
        assert!(matches!(
            translate(&m, &ctx, 2 << 48, Access::read(0)),
            Err(TranslateError::PageFault { error_code: 0, .. })
        ));
    }

    #[test]
    fn tables_outside_ram() {
        let mut r = ram();
        let mut ctx = setup_4level(&mut r);
        ctx.cr3 = 0x1_0000_0000;
        let m = SliceMemory::new(&mut r);
        assert_eq!(
            translate(&m, &ctx, 0, Access::read(0)),
            Err(TranslateError::Memory(MemError { gpa: 0x1_0000_0000 }))
        );
    }

    fn r_peek(m: &SliceMemory<'_>, gpa: u64) -> [u8; 2] {
        let mut b = [0u8; 2];
        m.read(gpa, &mut b).unwrap();
        b
    }

    #[test]
    fn linear_access_across_pages() {
        let mut r = ram();
        let ctx = setup_4level(&mut r);
        // Linear 0x10_0FFC.. spans 0x10_0FFC (phys same) and 0x10_1000 (phys 0x13_0000).
        r[0x10_0FFC..0x10_1000].copy_from_slice(b"abcd");
        r[0x13_0000..0x13_0004].copy_from_slice(b"efgh");
        let mut m = SliceMemory::new(&mut r);
        let mut buf = [0u8; 8];
        read_linear(&m, &ctx, 0x10_0FFC, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdefgh");
        write_linear(&mut m, &ctx, 0x10_0FFE, b"XYZW", 3).unwrap();
        read_linear(&m, &ctx, 0x10_0FFC, &mut buf).unwrap();
        assert_eq!(&buf, b"abXYZWgh");
        // Into the unmapped page 0x10_3000: nothing is read or written.
        let mut buf = [7u8; 8];
        assert!(read_linear(&m, &ctx, 0x10_2FFC, &mut buf).is_err());
        assert_eq!(buf, [7; 8]);
        assert!(write_linear(&mut m, &ctx, 0x10_2FFE, b"1234", 0).is_err());
        assert_eq!(&r_peek(&m, 0x1FFE), &[0, 0]);
        assert!(write_linear(&mut m, &ctx, 0x20_0000, b"1234", 3).is_err());
        assert!(check_linear(&m, &ctx, 0x10_0000, 0x2000, Access::read(3)).is_ok());
        assert!(check_linear(&m, &ctx, 0x10_0000, 0x2001, Access::read(3)).is_err());
        // A user fetch via read_linear_as.
        let mut b2 = [0u8; 2];
        read_linear_as(&m, &ctx, 0x10_0FFC, &mut b2, Access::fetch(3)).unwrap();
        assert_eq!(&b2, b"ab");
        // Translations past RAM end report Memory errors.
        let ctx0 = PagingContext::default();
        assert_eq!(
            read_linear(&m, &ctx0, RAM as u64 - 2, &mut buf),
            Err(TranslateError::Memory(MemError { gpa: RAM as u64 }))
        );
    }
}
