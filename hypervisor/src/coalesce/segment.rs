//! Segmentation of emulated data and stack accesses (SDM Vol. 3A 3.4 "Logical and
//! Linear Addresses", 5.3 "Limit Checking", 5.4 "Type Checking"; real-address mode:
//! Vol. 3B 21.1.1 "Address Translation in Real-Address Mode").
//!
//! An access is emulated only when the processor would make it without a fault, so
//! everything the processor checks on a data access through a segment register is
//! checked here, and anything that would fault (#GP, or #SS for the stack) or that the
//! emulator does not model makes the access impossible: the run stops before the
//! instruction and the CPU raises the fault itself.
//!
//! - 64-bit mode: no limits and no type checks; only FS and GS have a base (SDM Vol.
//!   3A 3.2.4 "Segmentation in IA-32e Mode"). Canonical addresses are checked by the
//!   page walk.
//! - Otherwise the offset range `ea ..= ea + n - 1` must lie within the limit (the
//!   VMCS holds it expanded to bytes) with no wrap-around, the segment must be usable
//!   (a null selector makes it unusable), and in protected mode present, a code or
//!   data segment, writable for a write (a data segment with W) and readable for a
//!   read (a code segment needs R). Expand-down data segments invert the limit check;
//!   they are rare enough to be left to the CPU. Virtual-8086 mode is left to the CPU.
//!   The linear address is the base plus the offset, truncated to 32 bits.

use super::insn::{CodeMode, Seg};
use crate::x86::segment::access_rights;

/// The segment registers as the VMCS holds them: base, byte-granular limit, access
/// rights (VMCS format), indexed by `Seg as usize` (ES, CS, SS, DS, FS, GS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegRegs {
    pub base: [u64; 6],
    pub limit: [u32; 6],
    pub ar: [u32; 6],
}

impl SegRegs {
    /// Flat 4 GiB read/write data segments and an execute/read code segment: what a
    /// 32-bit or 64-bit kernel runs with, and the default of host tests.
    pub const FLAT: SegRegs = SegRegs {
        base: [0; 6],
        limit: [u32::MAX; 6],
        ar: [
            DATA_RW_32, CODE_RX_32, DATA_RW_32, DATA_RW_32, DATA_RW_32, DATA_RW_32,
        ],
    };
}

/// Access rights of a present, accessed read/write data segment with B = 1 and G = 1
/// (type 3, S, P; SDM Vol. 3A Table 3-1 "Code- and Data-Segment Types").
pub const DATA_RW_32: u32 =
    0x3 | access_rights::S | access_rights::P | access_rights::DB | access_rights::G;
/// ... of a present, accessed execute/read code segment with D = 1 and G = 1 (type 11).
pub const CODE_RX_32: u32 =
    0xB | access_rights::S | access_rights::P | access_rights::DB | access_rights::G;

/// Type bits of a code/data segment (SDM Vol. 3A 3.4.5.1 "Code- and Data-Segment
/// Descriptor Types").
const TYPE_CODE: u32 = 1 << 3;
/// Data: expand-down. Code: conforming.
const TYPE_EXPAND_DOWN: u32 = 1 << 2;
/// Data: writable. Code: readable.
const TYPE_WR: u32 = 1 << 1;

/// How the processor is addressing: the code size, whether CR0.PE is clear (real
/// mode) and whether RFLAGS.VM is set (virtual-8086 mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressingMode {
    pub mode: CodeMode,
    pub real: bool,
    pub v86: bool,
}

/// The linear address of an `n`-byte access at offset `ea` through `seg`, or `None`
/// where the processor would fault or the emulator leaves the access to it (see the
/// module documentation).
pub fn data_linear(
    am: AddressingMode,
    segs: &SegRegs,
    seg: Seg,
    ea: u64,
    n: u64,
    write: bool,
) -> Option<u64> {
    let k = seg as usize;
    if am.mode == CodeMode::Bits64 {
        let base = if matches!(seg, Seg::Fs | Seg::Gs) {
            segs.base[k]
        } else {
            0
        };
        return Some(base.wrapping_add(ea));
    }
    if am.v86 || n == 0 {
        return None;
    }
    let ar = segs.ar[k];
    if ar & access_rights::UNUSABLE != 0 {
        return None;
    }
    if !am.real {
        if ar & access_rights::P == 0 || ar & access_rights::S == 0 {
            return None;
        }
        let ty = ar & access_rights::TYPE_MASK;
        let code = ty & TYPE_CODE != 0;
        if code && (write || ty & TYPE_WR == 0) {
            return None;
        }
        if !code && ((write && ty & TYPE_WR == 0) || ty & TYPE_EXPAND_DOWN != 0) {
            return None;
        }
    }
    let last = ea.checked_add(n - 1)?;
    if last > u64::from(segs.limit[k]) {
        return None;
    }
    Some(segs.base[k].wrapping_add(ea) & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: AddressingMode = AddressingMode {
        mode: CodeMode::Bits16,
        real: true,
        v86: false,
    };
    const PROT32: AddressingMode = AddressingMode {
        mode: CodeMode::Bits32,
        real: false,
        v86: false,
    };

    fn real_segs() -> SegRegs {
        SegRegs {
            base: [0x1_0000, 0xF_0000, 0x9000, 0x2_0000, 0, 0],
            limit: [0xFFFF; 6],
            // Real-mode access rights: whatever was last loaded; not checked.
            ar: [0x93; 6],
        }
    }

    #[test]
    fn real_mode_checks_the_limit_only() {
        let s = real_segs();
        assert_eq!(
            data_linear(REAL, &s, Seg::Ds, 0x1234, 2, true),
            Some(0x2_1234)
        );
        // A word at offset FFFF crosses the 64 KiB limit: #GP.
        assert_eq!(data_linear(REAL, &s, Seg::Ds, 0xFFFF, 2, false), None);
        assert_eq!(
            data_linear(REAL, &s, Seg::Ds, 0xFFFF, 1, false),
            Some(0x2_FFFF)
        );
        // A read-only type is not checked in real mode.
        let mut s = real_segs();
        s.ar[Seg::Es as usize] = 0x91;
        assert!(data_linear(REAL, &s, Seg::Es, 0, 4, true).is_some());
        // "Unreal" mode: a 4 GiB limit left from protected mode reaches above 1 MiB.
        s.limit[Seg::Ds as usize] = u32::MAX;
        s.base[Seg::Ds as usize] = 0;
        assert_eq!(
            data_linear(REAL, &s, Seg::Ds, 0x10_0000, 4, false),
            Some(0x10_0000)
        );
        // Virtual-8086 mode is left to the CPU.
        let v86 = AddressingMode { v86: true, ..REAL };
        assert_eq!(data_linear(v86, &real_segs(), Seg::Ds, 0, 1, false), None);
    }

    #[test]
    fn protected_mode_checks_type_presence_usability_and_limit() {
        let mut s = SegRegs::FLAT;
        s.base[Seg::Ds as usize] = 0x1000;
        assert_eq!(
            data_linear(PROT32, &s, Seg::Ds, 0x10, 4, true),
            Some(0x1010)
        );
        // The linear address wraps at 4 GiB; the offset range may not.
        s.base[Seg::Ds as usize] = 0xFFFF_F000;
        assert_eq!(
            data_linear(PROT32, &s, Seg::Ds, 0x2000, 4, false),
            Some(0x1000)
        );
        assert_eq!(
            data_linear(PROT32, &s, Seg::Ds, 0xFFFF_FFFE, 4, false),
            None
        );
        let mut s = SegRegs::FLAT;
        s.limit[Seg::Es as usize] = 0xFFF;
        assert!(data_linear(PROT32, &s, Seg::Es, 0xFFC, 4, false).is_some());
        assert!(data_linear(PROT32, &s, Seg::Es, 0xFFD, 4, false).is_none());
        // Read-only data: reads only. Execute/read code: reads only. Execute-only:
        // nothing. Expand-down, not present, a system segment, unusable: nothing.
        let mut s = SegRegs::FLAT;
        s.ar[Seg::Ds as usize] = (DATA_RW_32 & !0xF) | 0x1;
        assert!(data_linear(PROT32, &s, Seg::Ds, 0, 4, false).is_some());
        assert!(data_linear(PROT32, &s, Seg::Ds, 0, 4, true).is_none());
        assert!(data_linear(PROT32, &s, Seg::Cs, 0, 4, false).is_some());
        assert!(data_linear(PROT32, &s, Seg::Cs, 0, 4, true).is_none());
        s.ar[Seg::Cs as usize] = (CODE_RX_32 & !0xF) | 0x9;
        assert!(data_linear(PROT32, &s, Seg::Cs, 0, 4, false).is_none());
        for ar in [
            (DATA_RW_32 & !0xF) | 0x7,
            DATA_RW_32 & !access_rights::P,
            DATA_RW_32 & !access_rights::S,
            DATA_RW_32 | access_rights::UNUSABLE,
        ] {
            let mut s = SegRegs::FLAT;
            s.ar[Seg::Ss as usize] = ar;
            assert!(
                data_linear(PROT32, &s, Seg::Ss, 0x100, 4, false).is_none(),
                "{ar:#x}"
            );
        }
    }

    #[test]
    fn long_mode_has_bases_only_for_fs_and_gs() {
        let mut s = SegRegs::FLAT;
        s.base = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000];
        s.limit = [0; 6];
        s.ar = [access_rights::UNUSABLE; 6];
        let long = AddressingMode {
            mode: CodeMode::Bits64,
            real: false,
            v86: false,
        };
        assert_eq!(data_linear(long, &s, Seg::Ds, 0x10, 8, true), Some(0x10));
        assert_eq!(data_linear(long, &s, Seg::Gs, 0x10, 8, true), Some(0x6010));
    }
}
