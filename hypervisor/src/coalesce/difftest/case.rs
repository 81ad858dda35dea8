//! One test case — the guest at an IO exit and the coalescer's settings — and the
//! guest it becomes: VMCS, registers and RAM with segments, page tables and code.

use super::rng::Rng;
use crate::coalesce::block::Extent;
use crate::coalesce::engine::Settings;
use crate::coalesce::exec::Limits;
use crate::coalesce::insn::CodeMode;
use crate::vmx::caps::EntryControls;
use crate::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};
use crate::x86::regs::GuestRegs;
use crate::x86::{Cr4, Efer};

pub(super) const RAM: usize = 0x20000;
/// 64-bit mode: PML4, PDPT, PD, PT at these guest-physical pages.
const PML4: u64 = 0x1000;
const PT: u64 = 0x4000;
pub(super) const CODE: u64 = 0x8000;
pub(in crate::coalesce) const DATA: u64 = 0x10000;

pub(super) const RF_TF: u64 = crate::x86::Rflags::TF.bits();
pub(super) const RF_IF: u64 = crate::x86::Rflags::IF.bits();
pub(super) const RF_DF: u64 = crate::x86::Rflags::DF.bits();
pub(super) const STATUS: u64 = crate::x86::Rflags::STATUS;

/// One test case: the guest at an IO exit and the coalescer's settings.
#[derive(Clone, Debug)]
pub(in crate::coalesce) struct Case {
    pub mode: CodeMode,
    /// Code bytes placed at linear `cs_base + ip` (64-bit: `ip`).
    pub code: Vec<u8>,
    pub ip: u64,
    /// ES, CS, SS, DS, FS, GS bases (the VMCS fields; 64-bit mode ignores the first 4).
    pub seg_base: [u64; 6],
    /// Their limits (byte-granular, as the VMCS holds them) and access rights (VMCS
    /// format; CS and SS get the CPL as DPL when built).
    pub seg_limit: [u32; 6],
    pub seg_ar: [u32; 6],
    pub regs: GuestRegs,
    pub rsp: u64,
    pub rflags: u64,
    pub cpl: u8,
    pub dr7: u64,
    pub settings: Settings,
    /// With paging: 4 KiB pages (linear = physical) left unmapped.
    pub unmap: Vec<u64>,
    /// With paging: 4 KiB pages whose PTE has neither the accessed nor the dirty flag
    /// (all other entries have both).
    pub ad_clear: Vec<u64>,
    /// Paging with large pages (64-bit: one 2 MiB page; 32-bit: one 4 MiB PSE page),
    /// else 4 KiB pages.
    pub large_pages: bool,
    /// 32-bit mode: paging on (32-bit paging); 64-bit mode always pages.
    pub paging32: bool,
    /// Device writes before the run.
    pub board_init: Vec<(u16, u8)>,
    /// Fill the data area (DATA..RAM) with pseudo-random bytes chosen by this seed,
    /// else zeros.
    pub data_fill: Option<u64>,
    pub seed: u64,
    /// Byte offsets (from `ip`) of instructions the coalescer must not reject as
    /// unsupported or undecodable.
    pub must_support: Vec<u64>,
}

impl Case {
    pub(in crate::coalesce) fn new(mode: CodeMode, code: Vec<u8>) -> Case {
        let (ip, seg_base) = match mode {
            CodeMode::Bits16 => (CODE - 0x7000, [DATA, 0x7000, DATA, DATA, DATA, DATA]),
            _ => (CODE, [0; 6]),
        };
        // Present, accessed read/write data segments and an execute/read code segment:
        // 64 KiB in real mode, flat 4 GiB (B = 1, G = 1) in 32-bit code.
        let (seg_limit, seg_ar) = match mode {
            CodeMode::Bits16 => ([0xFFFF; 6], [0x93, 0x9B, 0x93, 0x93, 0x93, 0x93]),
            CodeMode::Bits32 => (
                [u32::MAX; 6],
                [0xC093, 0xC09B, 0xC093, 0xC093, 0xC093, 0xC093],
            ),
            CodeMode::Bits64 => ([u32::MAX; 6], [0x93, 0xA09B, 0x93, 0x93, 0x93, 0x93]),
        };
        Case {
            mode,
            code,
            ip,
            seg_base,
            seg_limit,
            seg_ar,
            regs: GuestRegs::default(),
            rsp: 0x7000,
            rflags: 0x2,
            cpl: 0,
            dr7: 0x400,
            settings: Settings {
                enabled: true,
                extent: Extent::Page,
                limits: Limits {
                    max_insns: 1000,
                    max_string_elements: 4096,
                    max_quiet: crate::config::COALESCE_MAX_QUIET_DEFAULT,
                },
            },
            unmap: Vec::new(),
            ad_clear: Vec::new(),
            large_pages: false,
            paging32: false,
            board_init: Vec::new(),
            data_fill: None,
            seed: 1,
            must_support: Vec::new(),
        }
    }

    pub(super) fn code_linear(&self) -> u64 {
        linear_ip(self.mode, self.seg_base[1], self.ip)
    }

    /// The VMCS, registers and RAM of the guest, without exit fields.
    pub(in crate::coalesce) fn build(&self) -> (SoftVmcs, GuestRegs, Vec<u8>) {
        let mut ram = vec![0u8; RAM];
        let mut v = SoftVmcs::new();
        let dpl = u32::from(self.cpl) << 5;
        let cr0 = match self.mode {
            CodeMode::Bits16 => 0x10,
            CodeMode::Bits32 => 0x11,
            CodeMode::Bits64 => 0x8001_0011,
        };
        v.write(VmcsField::GuestCr0, cr0);
        let fields = [
            (VmcsField::GuestEsLimit, VmcsField::GuestEsAccessRights),
            (VmcsField::GuestCsLimit, VmcsField::GuestCsAccessRights),
            (VmcsField::GuestSsLimit, VmcsField::GuestSsAccessRights),
            (VmcsField::GuestDsLimit, VmcsField::GuestDsAccessRights),
            (VmcsField::GuestFsLimit, VmcsField::GuestFsAccessRights),
            (VmcsField::GuestGsLimit, VmcsField::GuestGsAccessRights),
        ];
        for (k, (l, a)) in fields.into_iter().enumerate() {
            let ar = if k == 1 || k == 2 {
                (self.seg_ar[k] & !0x60) | dpl
            } else {
                self.seg_ar[k]
            };
            v.write(l, u64::from(self.seg_limit[k]));
            v.write(a, u64::from(ar));
        }
        if self.mode == CodeMode::Bits64 {
            v.write(
                VmcsField::EntryControls,
                u64::from(EntryControls::IA32E_MODE_GUEST.bits()),
            );
            v.write(VmcsField::GuestCr4, Cr4::PAE.bits());
            v.write(
                VmcsField::GuestIa32Efer,
                Efer::LME.bits() | Efer::LMA.bits(),
            );
            v.write(VmcsField::GuestCr3, PML4);
            // Identity map of RAM with 4 KiB user pages.
            let put = |ram: &mut [u8], at: u64, val: u64| {
                ram[at as usize..at as usize + 8].copy_from_slice(&val.to_le_bytes());
            };
            // Accessed and dirty flags set (0x60), except on `ad_clear` pages.
            put(&mut ram, PML4, 0x2000 | 0x67);
            put(&mut ram, 0x2000, 0x3000 | 0x67);
            if self.large_pages {
                put(&mut ram, 0x3000, 0x80 | 0x67);
            } else {
                put(&mut ram, 0x3000, PT | 0x67);
                for page in 0..(RAM as u64 / 4096) {
                    let ad = if self.ad_clear.contains(&(page * 4096)) {
                        0
                    } else {
                        0x60
                    };
                    if !self.unmap.contains(&(page * 4096)) {
                        put(&mut ram, PT + page * 8, (page * 4096) | 7 | ad);
                    }
                }
            }
        }
        if self.mode == CodeMode::Bits32 && self.paging32 {
            // 32-bit paging: page directory at 0x1000, page table at 0x2000.
            let put = |ram: &mut [u8], at: u64, val: u32| {
                ram[at as usize..at as usize + 4].copy_from_slice(&val.to_le_bytes());
            };
            v.write(VmcsField::GuestCr0, cr0 | 0x8001_0000);
            v.write(VmcsField::GuestCr3, 0x1000);
            // Accessed and dirty flags set (0x60), except on `ad_clear` pages.
            if self.large_pages {
                v.write(VmcsField::GuestCr4, Cr4::PSE.bits());
                put(&mut ram, 0x1000, 0x80 | 0x67);
            } else {
                put(&mut ram, 0x1000, 0x2000 | 0x67);
                for page in 0..(RAM as u32 / 4096) {
                    let ad = if self.ad_clear.contains(&(u64::from(page) * 4096)) {
                        0
                    } else {
                        0x60
                    };
                    if !self.unmap.contains(&(u64::from(page) * 4096)) {
                        put(
                            &mut ram,
                            0x2000 + u64::from(page) * 4,
                            (page * 4096) | 7 | ad,
                        );
                    }
                }
            }
        }
        let bases = [
            VmcsField::GuestEsBase,
            VmcsField::GuestCsBase,
            VmcsField::GuestSsBase,
            VmcsField::GuestDsBase,
            VmcsField::GuestFsBase,
            VmcsField::GuestGsBase,
        ];
        for (f, b) in bases.iter().zip(self.seg_base) {
            v.write(*f, b);
        }
        v.write(VmcsField::GuestRip, self.ip);
        v.write(VmcsField::GuestRsp, self.rsp);
        v.write(VmcsField::GuestRflags, self.rflags);
        v.write(VmcsField::GuestDr7, self.dr7);
        if let Some(seed) = self.data_fill {
            // A window of a fixed random buffer (filling byte by byte is slow in debug).
            static NOISE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let n = RAM - DATA as usize;
            let buf = NOISE.get_or_init(|| {
                let mut r = Rng::new(0xDA7A);
                (0..2 * n).map(|_| r.next() as u8).collect()
            });
            let at = (seed % n as u64) as usize;
            ram[DATA as usize..].copy_from_slice(&buf[at..at + n]);
        }
        // Byte k at IP + k: IP wraps at 64 KiB in 16-bit code.
        let mask = ip_mask(self.mode);
        for (k, &b) in self.code.iter().enumerate() {
            let ip = self.ip.wrapping_add(k as u64) & mask;
            let at = linear_ip(self.mode, self.seg_base[1], ip) as usize;
            if let Some(slot) = ram.get_mut(at) {
                *slot = b;
            }
        }
        (v, self.regs, ram)
    }
}

pub(in crate::coalesce) fn ip_mask(mode: CodeMode) -> u64 {
    match mode {
        CodeMode::Bits16 => 0xFFFF,
        CodeMode::Bits32 => 0xFFFF_FFFF,
        CodeMode::Bits64 => u64::MAX,
    }
}

pub(in crate::coalesce) fn linear_ip(mode: CodeMode, cs_base: u64, ip: u64) -> u64 {
    match mode {
        CodeMode::Bits64 => ip,
        _ => cs_base.wrapping_add(ip) & 0xFFFF_FFFF,
    }
}

pub(in crate::coalesce) fn bitness(mode: CodeMode) -> u32 {
    match mode {
        CodeMode::Bits16 => 16,
        CodeMode::Bits32 => 32,
        CodeMode::Bits64 => 64,
    }
}

pub(super) fn guest_mode(v: &SoftVmcs) -> CodeMode {
    if crate::vmx::guest_state::guest_long_mode(v) {
        CodeMode::Bits64
    } else if v.read(VmcsField::GuestCr0) & 1 != 0 && crate::vmx::guest_state::guest_cs_32bit(v) {
        CodeMode::Bits32
    } else {
        CodeMode::Bits16
    }
}

/// The paging structures of [`Case::build`] (guest-physical, end exclusive).
pub(super) const PAGE_TABLES: (u64, u64) = (0x1000, 0x5000);
