//! The host's memory-type range registers (SDM Vol. 3A 12.11 "Memory Type Range
//! Registers (MTRRs)"), read once at boot, so that the EPT maps guest RAM with the
//! memory type the firmware gave that host memory.
//!
//! With EPT, the type a guest access uses is the EPT entry's type combined with the
//! guest's PAT (SDM Vol. 3C 29.3.7.2 "Memory Type Used for Translated Guest-Physical
//! Addresses"); the host MTRRs no longer apply to guest accesses. Mapping a range the
//! firmware made uncacheable as write-back would let the guest cache memory that must
//! not be cached, and mapping write-back RAM as UC makes a guest crawl, so each EPT
//! leaf takes the MTRR type of the host range behind it. Ranges whose type is mixed
//! inside one large page are mapped with smaller pages.

use crate::x86::msr::{IA32_MTRRCAP, IA32_MTRR_DEF_TYPE, IA32_MTRR_FIXED, IA32_MTRR_PHYSBASE0};

/// Memory types as the MTRRs (and the EPT) encode them (SDM Vol. 3A Table 12-8 "Memory
/// Types That Can Be Encoded in MTRRs").
pub const UC: u8 = 0;
pub const WC: u8 = 1;
pub const WT: u8 = 4;
pub const WP: u8 = 5;
pub const WB: u8 = 6;

/// At most this many variable ranges are kept (VCNT is 8-10 on current parts; the
/// field allows 255, which no CPU has).
pub const MAX_VARIABLE: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VariableRange {
    pub base: u64,
    pub mask: u64,
    pub mem_type: u8,
}

/// A snapshot of the MTRRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mtrrs {
    /// MTRRs present at all (CPUID.01H:EDX[12]).
    pub present: bool,
    pub enabled: bool,
    pub fixed_enabled: bool,
    pub default_type: u8,
    /// One type per fixed sub-range, in address order (88 entries).
    pub fixed: [u8; 88],
    pub variable: [VariableRange; MAX_VARIABLE],
    pub variable_count: usize,
    /// Physical-address width (CPUID.80000008H:EAX[7:0]); the masks cover bits up to it.
    pub phys_bits: u8,
}

impl Mtrrs {
    /// "No MTRRs": every address is write-back. Used when CPUID says the CPU has none
    /// (emulators; every real Intel CPU with VMX has them).
    pub fn absent() -> Self {
        Mtrrs {
            present: false,
            enabled: false,
            fixed_enabled: false,
            default_type: WB,
            fixed: [WB; 88],
            variable: [VariableRange::default(); MAX_VARIABLE],
            variable_count: 0,
            phys_bits: 36,
        }
    }

    /// Reads the registers through `rdmsr` (only those IA32_MTRRCAP says exist).
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64, phys_bits: u8) -> Self {
        let cap = rdmsr(IA32_MTRRCAP);
        let def = rdmsr(IA32_MTRR_DEF_TYPE);
        let mut m = Mtrrs {
            present: true,
            enabled: def & (1 << 11) != 0,
            fixed_enabled: def & (1 << 10) != 0 && cap & (1 << 8) != 0,
            default_type: (def & 0xFF) as u8,
            phys_bits: phys_bits.clamp(36, 52),
            ..Mtrrs::absent()
        };
        if cap & (1 << 8) != 0 {
            for (i, &msr) in IA32_MTRR_FIXED.iter().enumerate() {
                let v = rdmsr(msr);
                for b in 0..8 {
                    m.fixed[i * 8 + b] = (v >> (b * 8)) as u8;
                }
            }
        }
        let count = ((cap & 0xFF) as usize).min(MAX_VARIABLE);
        for (i, slot) in m.variable[..count].iter_mut().enumerate() {
            let msr = IA32_MTRR_PHYSBASE0 + 2 * i as u32;
            let base = rdmsr(msr);
            let mask = rdmsr(msr + 1);
            *slot = VariableRange {
                base: base & !0xFFF,
                mask,
                mem_type: (base & 0xFF) as u8,
            };
        }
        m.variable_count = count;
        m
    }

    fn addr_mask(&self) -> u64 {
        ((1u64 << self.phys_bits) - 1) & !0xFFF
    }

    /// The type of the fixed sub-range holding `addr` (< 1 MiB).
    fn fixed_type(&self, addr: u64) -> u8 {
        let i = match addr {
            0..0x8_0000 => (addr >> 16) as usize,
            0x8_0000..0xC_0000 => 8 + ((addr - 0x8_0000) >> 14) as usize,
            _ => 24 + ((addr - 0xC_0000) >> 12) as usize,
        };
        self.fixed[i]
    }

    /// The memory type the MTRRs give the byte at physical `addr` (SDM Vol. 3A
    /// 12.11.4.1 "MTRR Precedences").
    pub fn type_at(&self, addr: u64) -> u8 {
        if !self.present {
            return WB;
        }
        // MTRRs disabled: all of physical memory is UC (SDM Vol. 3A 12.11.2.1
        // "IA32_MTRR_DEF_TYPE MSR").
        if !self.enabled {
            return UC;
        }
        if addr < 0x10_0000 && self.fixed_enabled {
            return self.fixed_type(addr);
        }
        let mask_bits = self.addr_mask();
        let mut found: Option<u8> = None;
        for r in &self.variable[..self.variable_count] {
            // PHYSMASK bit 11 is V (valid).
            if r.mask & (1 << 11) == 0 {
                continue;
            }
            let mask = r.mask & mask_bits;
            if addr & mask != r.base & mask {
                continue;
            }
            found = Some(match found {
                None => r.mem_type,
                Some(t) if t == r.mem_type => t,
                // Overlaps: UC wins; WT with WB is WT; any other pair is undefined,
                // and UC is the only safe reading of it.
                Some(t) if t == UC || r.mem_type == UC => UC,
                Some(t) if (t == WT && r.mem_type == WB) || (t == WB && r.mem_type == WT) => WT,
                Some(_) => UC,
            });
        }
        found.unwrap_or(self.default_type)
    }

    /// The single type of [`start`, `start + len`) if the whole range has one, in
    /// 4 KiB steps (the MTRRs' finest granularity); `None` if it is mixed.
    pub fn uniform_type(&self, start: u64, len: u64) -> Option<u8> {
        let first = self.type_at(start);
        let end = start.saturating_add(len);
        // Fast path: above the fixed ranges with no valid variable range touching the
        // span, everything is the default type.
        let touched = start < 0x10_0000
            || self.variable[..self.variable_count]
                .iter()
                .any(|r| r.mask & (1 << 11) != 0 && self.may_overlap(r, start, end));
        if !touched || !self.present || !self.enabled {
            return Some(first);
        }
        let mut a = start & !0xFFF;
        while a < end {
            if self.type_at(a) != first {
                return None;
            }
            a += 0x1000;
        }
        Some(first)
    }

    /// Whether a variable range can match an address in [`start`, `end`). For the
    /// usual contiguous masks this is an interval test; a non-contiguous mask (legal
    /// but unused by firmware) is assumed to overlap.
    fn may_overlap(&self, r: &VariableRange, start: u64, end: u64) -> bool {
        let mask = r.mask & self.addr_mask();
        let size_mask = !mask & self.addr_mask() | 0xFFF;
        // Contiguous: the mask is all ones from some bit up to phys_bits.
        if (size_mask.wrapping_add(1) & size_mask) != 0 {
            return true;
        }
        let lo = r.base & mask;
        let hi = lo + size_mask + 1;
        lo < end && start < hi
    }

    /// The one-line summary for the boot report.
    pub fn describe(&self) -> MtrrSummary<'_> {
        MtrrSummary(self)
    }
}

/// The name of a memory type as the SDM writes it.
pub fn type_name(t: u8) -> &'static str {
    match t {
        UC => "UC",
        WC => "WC",
        WT => "WT",
        WP => "WP",
        WB => "WB",
        _ => "reserved",
    }
}

pub struct MtrrSummary<'a>(&'a Mtrrs);

impl core::fmt::Display for MtrrSummary<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        if !m.present {
            return write!(f, "none (guest RAM mapped WB)");
        }
        if !m.enabled {
            return write!(f, "disabled by firmware (all memory UC)");
        }
        let valid = m.variable[..m.variable_count]
            .iter()
            .filter(|r| r.mask & (1 << 11) != 0)
            .count();
        write!(
            f,
            "default {}, fixed ranges {}, {valid} of {} variable ranges in use",
            type_name(m.default_type),
            if m.fixed_enabled { "on" } else { "off" },
            m.variable_count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// A typical firmware layout: default UC, 0-2 GiB WB, 1.75-2 GiB carved out as UC
    /// (overlap: UC wins), 4-8 GiB WB, fixed ranges with the VGA hole as UC.
    fn firmware() -> HashMap<u32, u64> {
        let mut m = HashMap::new();
        m.insert(IA32_MTRRCAP, 0x500 | 4); // WC, FIX, 4 variable ranges
        m.insert(IA32_MTRR_DEF_TYPE, (1 << 11) | (1 << 10) | UC as u64);
        let mask = |size: u64| (!(size - 1) & ((1u64 << 39) - 1)) | (1 << 11);
        m.insert(0x200, WB as u64);
        m.insert(0x201, mask(2 * GIB));
        m.insert(0x202, (7 * 256 * MIB) | UC as u64);
        m.insert(0x203, mask(256 * MIB));
        m.insert(0x204, (4 * GIB) | WB as u64);
        m.insert(0x205, mask(4 * GIB));
        m.insert(0x206, 0x1234_5000 | WC as u64);
        m.insert(0x207, 0); // not valid
        let wb8 = u64::from_le_bytes([WB; 8]);
        for msr in IA32_MTRR_FIXED {
            m.insert(msr, wb8);
        }
        // 0xA0000-0xBFFFF: the two 16 KiB-granular registers' upper halves → UC.
        m.insert(0x259, u64::from_le_bytes([UC; 8]));
        // 0xC0000-0xC7FFF: WP (option ROM shadow).
        m.insert(0x268, u64::from_le_bytes([WP; 8]));
        m
    }

    fn read(regs: &HashMap<u32, u64>) -> Mtrrs {
        Mtrrs::read(|msr| regs.get(&msr).copied().unwrap_or(0), 39)
    }

    #[test]
    fn registers_are_read_as_mtrrcap_describes() {
        let m = read(&firmware());
        assert!(m.present && m.enabled && m.fixed_enabled);
        assert_eq!(m.default_type, UC);
        assert_eq!(m.variable_count, 4);
        assert_eq!(m.variable[1].base, 7 * 256 * MIB);
        assert_eq!(m.variable[1].mem_type, UC);
        assert_eq!(m.fixed[8 + 8], UC); // 0xA0000
        assert_eq!(
            m.describe().to_string(),
            "default UC, fixed ranges on, 3 of 4 variable ranges in use"
        );
    }

    #[test]
    fn precedence_follows_the_sdm() {
        let m = read(&firmware());
        assert_eq!(m.type_at(0), WB); // fixed
        assert_eq!(m.type_at(0xA_0000), UC); // fixed VGA hole
        assert_eq!(m.type_at(0xC_0000), WP);
        assert_eq!(m.type_at(0xF_F000), WB);
        assert_eq!(m.type_at(16 * MIB), WB); // variable 0
        assert_eq!(m.type_at(7 * 256 * MIB), UC); // 0 and 1 overlap: UC wins
        assert_eq!(m.type_at(2 * GIB), UC); // default
        assert_eq!(m.type_at(5 * GIB), WB);
        assert_eq!(m.type_at(0x1234_5000), WB); // range 3 is not valid
                                                // WT over WB is WT; WC over WB is undefined, read as UC.
        let mut regs = firmware();
        regs.insert(0x206, WT as u64);
        regs.insert(0x207, (!(GIB - 1) & ((1u64 << 39) - 1)) | (1 << 11));
        assert_eq!(read(&regs).type_at(0x100_0000), WT);
        regs.insert(0x206, WC as u64);
        assert_eq!(read(&regs).type_at(0x100_0000), UC);
    }

    #[test]
    fn disabled_fixed_or_all_mtrrs_change_the_answer() {
        let mut regs = firmware();
        regs.insert(IA32_MTRR_DEF_TYPE, (1 << 11) | WB as u64); // FE off
        assert_eq!(read(&regs).type_at(0xA_0000), WB); // variable range 0 covers it
        regs.insert(IA32_MTRR_DEF_TYPE, WB as u64); // E off
        assert_eq!(read(&regs).type_at(16 * MIB), UC);
        assert_eq!(Mtrrs::absent().type_at(0xA_0000), WB);
    }

    #[test]
    fn uniform_type_finds_mixed_large_pages() {
        let m = read(&firmware());
        assert_eq!(m.uniform_type(16 * MIB, 2 * MIB), Some(WB));
        assert_eq!(m.uniform_type(0, 2 * MIB), None); // VGA hole inside
        assert_eq!(m.uniform_type(7 * 256 * MIB - 2 * MIB, 4 * MIB), None);
        assert_eq!(m.uniform_type(7 * 256 * MIB, 2 * MIB), Some(UC));
        assert_eq!(m.uniform_type(3 * GIB, GIB), Some(UC)); // default, no range touches
        assert_eq!(m.uniform_type(4 * GIB, GIB), Some(WB));
        assert_eq!(m.uniform_type(0x10_0000, 0x1000), Some(WB));
    }

    #[test]
    fn fixed_ranges_cover_their_granularities() {
        let mut regs = firmware();
        // Type byte 5 of the 4 KiB register at 0x26F covers 0xFD000.
        regs.insert(0x26F, u64::from_le_bytes([WB, WB, WB, WB, WB, UC, WB, WB]));
        // Byte 3 of 0x258 covers 0x8C000 (16 KiB granules from 0x80000).
        regs.insert(0x258, u64::from_le_bytes([WB, WB, WB, WT, WB, WB, WB, WB]));
        // Byte 2 of 0x250 covers 0x20000 (64 KiB granules).
        regs.insert(0x250, u64::from_le_bytes([WB, WB, WC, WB, WB, WB, WB, WB]));
        let m = read(&regs);
        assert_eq!(m.type_at(0xFD000), UC);
        assert_eq!(m.type_at(0xFC000), WB);
        assert_eq!(m.type_at(0x8C000), WT);
        assert_eq!(m.type_at(0x8BFFF), WB);
        assert_eq!(m.type_at(0x2FFFF), WC);
    }
}
