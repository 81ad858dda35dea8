//! Data memory accesses of coalesced instructions (MOV/ALU with memory operands,
//! PUSH/POP, CALL/RET): when the emulator may perform one, and where its bytes are.
//!
//! The rule is the coalescing contract's: an access is emulated only when the
//! processor would perform it without a fault and *without changing anything but the
//! bytes accessed*. Otherwise the run stops before the instruction and the CPU
//! executes it natively (raising the fault itself, or setting the flags itself):
//!
//! - the linear address must translate for the access kind at the CPL (present,
//!   writable with CR0.WP or at CPL 3, user/supervisor; SDM Vol. 3A 4.6 "Access
//!   Rights") and be canonical (Vol. 1 3.3.7.1 "Canonical Addressing"; [`translate`]
//!   checks it), every byte in guest RAM;
//! - accessed and dirty flags (SDM Vol. 3A 4.8 "Accessed and Dirty Flags"): the
//!   processor sets A in every
//!   paging-structure entry it uses, and D in the entry that maps the page for a
//!   write. The emulator does not set them; it only emulates an access whose entries
//!   already have A (and D on the leaf for a write), where the processor would write
//!   nothing. PAE PDPTEs have no A flag (Table 4-8 "Format of a PAE
//!   Page-Directory-Pointer-Table Entry (PDPTE)");
//! - SMAP and protection keys are not modelled here, so a supervisor access to a
//!   user-mode page with CR4.SMAP, any access to a user-mode page with CR4.PKE, and
//!   any access at all with CR4.PKS stop (SDM Vol. 3A 4.6.1 "Determination of Access
//!   Rights", 4.6.2 "Protection Keys");
//! - alignment checking (CR0.AM, RFLAGS.AC at CPL 3; SDM Vol. 3A 6.15 "Exception and
//!   Interrupt Reference", "Interrupt 17—Alignment Check Exception (#AC)"): a
//!   misaligned access stops.
//!
//! TLBs are not modelled: the walk reads the paging structures as they are now, which
//! is what a processor does after INVLPG or a CR3 write (SDM Vol. 3A 4.10.4.1
//! "Operations that Invalidate TLBs and Paging-Structure Caches").

use crate::x86::guest_mem::{
    translate_with_rights, Access, GuestMemory, PagingContext, PagingMode, PAGE_SIZE,
};
use crate::x86::{Cr0, Cr4, Rflags};

/// The guest-physical pieces of an access (one, or two when it crosses a 4 KiB page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pieces {
    pub parts: [(u64, usize); 2],
    pub n: usize,
}

impl Pieces {
    pub fn iter(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.parts[..self.n.min(2)].iter().copied()
    }
}

/// The guest-physical pieces of an `n`-byte data access (1..=8 bytes) at `linear`, if
/// the emulator may perform it (see the module documentation); `None` otherwise.
pub fn data_access(
    mem: &impl GuestMemory,
    ctx: &PagingContext,
    cpl: u8,
    rflags: u64,
    linear: u64,
    n: usize,
    write: bool,
) -> Option<Pieces> {
    if n == 0 || n > 8 {
        return None;
    }
    // #AC: alignment checking applies at CPL 3 with CR0.AM and RFLAGS.AC.
    if cpl == 3
        && ctx.cr0 & Cr0::AM.bits() != 0
        && rflags & Rflags::AC.bits() != 0
        && !linear.is_multiple_of(n as u64)
    {
        return None;
    }
    if ctx.cr4 & Cr4::PKS.bits() != 0 {
        return None;
    }
    let access = if write {
        Access::write(cpl)
    } else {
        Access::read(cpl)
    };
    let in_page = (PAGE_SIZE - (linear & (PAGE_SIZE - 1))) as usize;
    let first = in_page.min(n);
    let mut pieces = Pieces {
        parts: [(0, 0); 2],
        n: 0,
    };
    for (lin, len) in [
        (linear, first),
        (linear.wrapping_add(first as u64), n - first),
    ] {
        if len == 0 {
            continue;
        }
        // One walk answers everything: the translation, whether the processor
        // would set an A or D flag, and whether the page is a user-mode page.
        let (gpa, rights) = translate_with_rights(mem, ctx, lin, access).ok()?;
        mem.check(gpa, len as u64).ok()?;
        if !rights.accessed || (write && !rights.dirty) {
            return None;
        }
        // A user-mode page: protection keys apply to it, SMAP to supervisor accesses
        // of it.
        if ctx.mode() != PagingMode::None
            && rights.user
            && (ctx.cr4 & Cr4::PKE.bits() != 0 || (cpl < 3 && ctx.cr4 & Cr4::SMAP.bits() != 0))
        {
            return None;
        }
        pieces.parts[pieces.n] = (gpa, len);
        pieces.n += 1;
    }
    Some(pieces)
}

/// Reads the access's bytes (little-endian) as a value.
pub fn read_pieces(mem: &impl GuestMemory, p: &Pieces) -> Option<u64> {
    let mut buf = [0u8; 8];
    let mut at = 0;
    for (gpa, len) in p.iter() {
        mem.read(gpa, &mut buf[at..at + len]).ok()?;
        at += len;
    }
    Some(u64::from_le_bytes(buf))
}

/// Writes the low bytes of `value` over the access's pieces.
pub fn write_pieces(mem: &mut impl GuestMemory, p: &Pieces, value: u64) -> bool {
    let bytes = value.to_le_bytes();
    let mut at = 0;
    for (gpa, len) in p.iter() {
        if mem.write(gpa, &bytes[at..at + len]).is_err() {
            return false;
        }
        at += len;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::guest_mem::SliceMemory;
    use crate::x86::{Cr0, Efer};

    const P: u64 = 1;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;
    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PT: u64 = 0x4000;

    /// 4-level paging mapping linear page k to physical page k over 64 KiB; entries
    /// get `flags` (P, R/W, U/S as wanted, plus A/D as wanted).
    fn tables(ram: &mut [u8], upper: u64, leaf: u64) -> PagingContext {
        let put = |ram: &mut [u8], at: u64, v: u64| {
            ram[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(ram, PML4, PDPT | upper);
        put(ram, PDPT, PD | upper);
        put(ram, PD, PT | upper);
        for k in 0..16u64 {
            put(ram, PT + 8 * k, (k << 12) | leaf);
        }
        PagingContext {
            cr0: Cr0::PE.bits() | Cr0::PG.bits() | Cr0::WP.bits(),
            cr3: PML4,
            cr4: Cr4::PAE.bits(),
            efer: Efer::LME.bits() | Efer::LMA.bits(),
        }
    }

    #[test]
    fn a_and_d_must_already_be_set() {
        let mut ram = vec![0u8; 0x10000];
        let ctx = tables(&mut ram, P | 2 | A, P | 2 | A | D);
        let m = SliceMemory::new(&mut ram);
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, true).is_some());
        // Leaf without D: reads fine, writes stop.
        let ctx = tables(&mut ram, P | 2 | A, P | 2 | A);
        let m = SliceMemory::new(&mut ram);
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 4, false).is_some());
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 4, true).is_none());
        // An upper level without A: neither.
        let ctx = tables(&mut ram, P | 2, P | 2 | A | D);
        let m = SliceMemory::new(&mut ram);
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 4, false).is_none());
    }

    #[test]
    fn faults_and_protection_stop() {
        let mut ram = vec![0u8; 0x10000];
        // Read-only supervisor pages.
        let mut ctx = tables(&mut ram, P | 2 | A, P | A | D);
        // Page 9 not present.
        ram[(PT + 8 * 9) as usize] = 0;
        let m = SliceMemory::new(&mut ram);
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, false).is_some());
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, true).is_none(), "WP");
        assert!(
            data_access(&m, &ctx, 3, 2, 0x8000, 8, false).is_none(),
            "U/S"
        );
        assert!(data_access(&m, &ctx, 0, 2, 0x9000, 1, false).is_none(), "P");
        // Crossing into the unmapped page.
        assert!(data_access(&m, &ctx, 0, 2, 0x8FFC, 8, false).is_none());
        // Non-canonical, outside RAM.
        assert!(data_access(&m, &ctx, 0, 2, 0x8000_0000_0000_8000, 1, false).is_none());
        assert!(data_access(&m, &ctx, 0, 2, 0x10_0000, 1, false).is_none());
        // Without CR0.WP a supervisor write to a read-only page is fine.
        ctx.cr0 &= !Cr0::WP.bits();
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, true).is_some());
        ctx.cr4 |= Cr4::PKS.bits();
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, false).is_none());
    }

    #[test]
    fn smap_pke_and_alignment_check() {
        let mut ram = vec![0u8; 0x10000];
        let mut ctx = tables(&mut ram, P | 2 | 4 | A, P | 2 | 4 | A | D);
        let m = SliceMemory::new(&mut ram);
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, false).is_some());
        ctx.cr4 |= Cr4::SMAP.bits();
        assert!(data_access(&m, &ctx, 0, 2, 0x8000, 8, false).is_none());
        assert!(data_access(&m, &ctx, 3, 2, 0x8000, 8, false).is_some());
        ctx.cr4 = Cr4::PAE.bits() | Cr4::PKE.bits();
        assert!(data_access(&m, &ctx, 3, 2, 0x8000, 8, false).is_none());
        ctx.cr4 = Cr4::PAE.bits();
        ctx.cr0 |= Cr0::AM.bits();
        assert!(data_access(&m, &ctx, 3, Rflags::AC.bits() | 2, 0x8001, 2, false).is_none());
        assert!(data_access(&m, &ctx, 3, Rflags::AC.bits() | 2, 0x8002, 2, false).is_some());
        assert!(data_access(&m, &ctx, 0, Rflags::AC.bits() | 2, 0x8001, 2, false).is_some());
        assert!(data_access(&m, &ctx, 3, 2, 0x8001, 2, false).is_some());
    }

    #[test]
    fn page_crossing_pieces_read_and_write() {
        let mut ram = vec![0u8; 0x10000];
        let ctx = tables(&mut ram, P | 2 | A, P | 2 | A | D);
        // Swap linear pages 8 and 9 physically.
        ram[(PT + 8 * 8) as usize + 1] = 0x90;
        ram[(PT + 8 * 9) as usize + 1] = 0x80;
        let mut m = SliceMemory::new(&mut ram);
        let p = data_access(&m, &ctx, 0, 2, 0x8FFE, 4, true).unwrap();
        assert_eq!(p.n, 2);
        assert_eq!(p.parts, [(0x9FFE, 2), (0x8000, 2)]);
        assert!(write_pieces(&mut m, &p, 0x1122_3344));
        assert_eq!(m.read_u16(0x9FFE).unwrap(), 0x3344);
        assert_eq!(m.read_u16(0x8000).unwrap(), 0x1122);
        assert_eq!(read_pieces(&m, &p), Some(0x1122_3344));
    }
}
