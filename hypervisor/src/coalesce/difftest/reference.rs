//! The reference's stepper: executes the case's code one instruction at a time, every
//! IO instruction (every string element) through the single-exit handler with the
//! exit fields the processor reports, and fails at a mandatory stop.

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};

use super::board::{Board, NullHost};
use super::case::{bitness, guest_mode, ip_mask, linear_ip, PAGE_TABLES, RF_IF, RF_TF};
use super::ref_alu::ref_alu;
use super::ref_decode::{ref_op, size_mask, BranchKind, GReg, RefMem, RefOp, RefRm, Src};
use crate::coalesce::exec::{self, Limits};
use crate::coalesce::insn::CodeMode;
use crate::coalesce::insn::{AluOp, FlagOp, MulOp, Repeat, StrKind};
use crate::devices::bus::IoBus;
use crate::stats::Stats;
use crate::vcpu::exit::VmExit;
use crate::vcpu::exits::{self, ExitAction, ExitContext, MsrFile, VcpuConfig};
use crate::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};
use crate::x86::guest_mem::{translate, Access, GuestMemory, SliceMemory};
use crate::x86::regs::GuestRegs;

fn condition(c: u8, f: u64) -> bool {
    let cf = f & 1 != 0;
    let pf = f & 4 != 0;
    let zf = f & 0x40 != 0;
    let sf = f & 0x80 != 0;
    let of = f & 0x800 != 0;
    let r = match c >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    r != (c & 1 != 0)
}

/// The exit fields (qualification, instruction length, instruction information) the
/// processor reports for an IO instruction; `None` if it is not one.
pub(super) fn exit_fields(op: &RefOp, len: usize, dx: u16) -> Option<(u64, u64, u64)> {
    let q = |size: u8, is_in: bool, string: bool, rep: bool, imm: Option<u8>| {
        let port = imm.map_or(dx, u16::from);
        u64::from(size - 1)
            | (u64::from(is_in) << 3)
            | (u64::from(string) << 4)
            | (u64::from(rep) << 5)
            | (u64::from(imm.is_some()) << 6)
            | (u64::from(port) << 16)
    };
    Some(match *op {
        RefOp::Io { is_in, size, imm } => (q(size, is_in, false, false, imm), len as u64, 0),
        RefOp::Str {
            is_in,
            size,
            rep,
            addr,
            seg,
        } => {
            let a = match addr {
                2 => 0,
                4 => 1,
                _ => 2,
            };
            (
                q(size, is_in, true, rep, None),
                len as u64,
                (a << 7) | (u64::from(seg) << 15),
            )
        }
        _ => return None,
    })
}

/// Decodes the instruction at the guest's RIP (fetching through its paging at its
/// CPL): the instruction, its bytes, our reading of it.
pub(super) fn fetch_decode(
    v: &SoftVmcs,
    ram: &mut [u8],
) -> Result<(Instruction, Vec<u8>, Option<RefOp>), String> {
    let mode = guest_mode(v);
    let rip = v.read(VmcsField::GuestRip);
    let lin = linear_ip(mode, v.read(VmcsField::GuestCsBase), rip);
    let paging = crate::vmx::guest_state::guest_paging(v);
    let cpl = crate::vmx::guest_state::guest_cpl(v);
    let mem = SliceMemory::new(ram);
    let mut bytes = Vec::with_capacity(15);
    let mut page: Option<(u64, u64)> = None;
    // Outside 64-bit mode the instruction must lie within the CS limit (#GP).
    let room = match mode {
        CodeMode::Bits64 => 15,
        _ => (v.read(VmcsField::GuestCsLimit) + 1)
            .saturating_sub(rip)
            .min(15),
    };
    for k in 0..room {
        let l = lin.wrapping_add(k);
        let gpa = match page {
            Some((p, g)) if l & !0xFFF == p => g | (l & 0xFFF),
            _ => {
                let Ok(gpa) = translate(&mem, &paging, l, Access::fetch(cpl)) else {
                    break;
                };
                page = Some((l & !0xFFF, gpa & !0xFFF));
                gpa
            }
        };
        match mem.read_u8(gpa) {
            Ok(b) => bytes.push(b),
            Err(_) => break,
        }
    }
    let mut d = Decoder::with_ip(bitness(mode), &bytes, rip, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return Err(format!(
            "reference: no instruction at {rip:#x} ({:?}, bytes {bytes:02x?})",
            d.last_error()
        ));
    }
    let op = ref_op(&i);
    Ok((i, bytes[..i.len()].to_vec(), op))
}

pub(super) fn fmt_insn(i: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(i, &mut s);
    s
}

/// Where the coalescer stopped, as the reference counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) executed: u64,
    pub(super) elements: u64,
    pub(super) rip: u64,
}

pub(super) struct Reference<'a, 'b> {
    pub(super) mode: CodeMode,
    pub(super) vmcs: SoftVmcs,
    pub(super) regs: GuestRegs,
    pub(super) ram: Vec<u8>,
    pub(super) bus: &'a mut IoBus<'b>,
    pub(super) board: &'a Board,
    pub(super) limits: Limits,
    pub(super) executed: u64,
    pub(super) elements: u64,
    pub(super) io_insns: u64,
    /// The REP instruction at RIP has done an element in this run (and is counted).
    pub(super) in_rep: bool,
    /// A mandatory stop reached after the last step.
    pub(super) pending: Option<String>,
    /// The last instruction was an STI that set IF (its one-instruction shadow).
    pub(super) shadow: bool,
    /// Model a coalescer that does not sync IRQ lines with IF = 0 (the bug this checker
    /// once found; kept so the reference can still demonstrate it): with IF = 0 the
    /// device lines are not brought onto the PIC after an access.
    pub(super) stale_pic_if_clear: bool,
    /// An INS element wrote into the live paging structures. What a CPU fetches
    /// afterwards depends on its TLB (no INVLPG), so a difference is inconclusive.
    pub(super) wrote_page_tables: bool,
    pub(super) log: Vec<Instruction>,
}

impl Reference<'_, '_> {
    fn rip(&self) -> u64 {
        self.vmcs.read(VmcsField::GuestRip)
    }

    fn rflags(&self) -> u64 {
        self.vmcs.read(VmcsField::GuestRflags)
    }

    fn get(&self, r: GReg) -> u64 {
        let full = if r.index == 4 {
            self.vmcs.read(VmcsField::GuestRsp)
        } else {
            self.regs.get(r.index).unwrap_or(0)
        };
        if r.high {
            (full >> 8) & 0xFF
        } else {
            full & size_mask(r.size)
        }
    }

    fn set(&mut self, r: GReg, v: u64) {
        let old = self.get(GReg {
            index: r.index,
            size: 8,
            high: false,
        });
        let new = if r.high {
            (old & !0xFF00) | ((v & 0xFF) << 8)
        } else {
            match r.size {
                1 | 2 => (old & !size_mask(r.size)) | (v & size_mask(r.size)),
                _ => v & size_mask(r.size),
            }
        };
        if r.index == 4 {
            self.vmcs.write(VmcsField::GuestRsp, new);
        } else {
            self.regs.set(r.index, new);
        }
    }

    fn src(&self, s: Src) -> u64 {
        match s {
            Src::Reg(r) => self.get(r),
            Src::Imm(v) => v,
        }
    }

    /// The effective address of `m` (iced has resolved RIP-relative operands).
    fn ref_ea(&self, m: RefMem, _i: &Instruction) -> u64 {
        let reg = |n: u8| {
            self.get(GReg {
                index: n,
                size: 8,
                high: false,
            })
        };
        let mut a = m.disp;
        if let Some(b) = m.base {
            a = a.wrapping_add(reg(b));
        }
        if let Some(x) = m.index {
            a = a.wrapping_add(reg(x).wrapping_mul(u64::from(m.scale)));
        }
        a & size_mask(m.addr)
    }

    /// The linear address of `m` with `plus` added to the effective address (within
    /// the address size), for bit-string addressing. Segment checks come with the
    /// access ([`Self::seg_check`]).
    fn ref_linear_plus(&self, m: RefMem, i: &Instruction, plus: u64) -> u64 {
        let ea = self.ref_ea(m, i).wrapping_add(plus) & size_mask(m.addr);
        self.seg_base(m.seg).wrapping_add(ea) & self.linear_mask()
    }

    fn linear_mask(&self) -> u64 {
        if self.mode == CodeMode::Bits64 {
            u64::MAX
        } else {
            0xFFFF_FFFF
        }
    }

    /// The base the processor adds for segment `seg` (0 ES .. 5 GS).
    fn seg_base(&self, seg: u8) -> u64 {
        let f = [
            VmcsField::GuestEsBase,
            VmcsField::GuestCsBase,
            VmcsField::GuestSsBase,
            VmcsField::GuestDsBase,
            VmcsField::GuestFsBase,
            VmcsField::GuestGsBase,
        ][usize::from(seg.min(5))];
        if self.mode == CodeMode::Bits64 && seg < 4 {
            0
        } else {
            self.vmcs.read(f)
        }
    }

    /// What the processor checks on a data access of `size` bytes at offset `ea`
    /// through `seg` outside 64-bit mode (SDM Vol. 3A 5.3 "Limit Checking", 5.4 "Type
    /// Checking"): a violation is a fault (#GP/#SS), a mandatory stop; expand-down
    /// segments and virtual-8086 mode are outside the reference's subset (a stop too).
    fn seg_check(&self, seg: u8, ea: u64, size: u8, write: bool) -> Result<(), String> {
        if self.mode == CodeMode::Bits64 {
            return Ok(());
        }
        let (lf, af) = [
            (VmcsField::GuestEsLimit, VmcsField::GuestEsAccessRights),
            (VmcsField::GuestCsLimit, VmcsField::GuestCsAccessRights),
            (VmcsField::GuestSsLimit, VmcsField::GuestSsAccessRights),
            (VmcsField::GuestDsLimit, VmcsField::GuestDsAccessRights),
            (VmcsField::GuestFsLimit, VmcsField::GuestFsAccessRights),
            (VmcsField::GuestGsLimit, VmcsField::GuestGsAccessRights),
        ][usize::from(seg.min(5))];
        let stop = |why: String| {
            Err(format!(
                "the coalescer ran past a mandatory stop: {why} (segment {seg}, offset {ea:#x}, {size} bytes, write {write})"
            ))
        };
        let limit = self.vmcs.read(lf);
        let ar = self.vmcs.read(af);
        if self.rflags() & (1 << 17) != 0 {
            return stop("virtual-8086 mode".into());
        }
        if ar & (1 << 16) != 0 {
            return stop("an unusable segment".into());
        }
        let protected = self.vmcs.read(VmcsField::GuestCr0) & 1 != 0;
        if protected {
            let ty = ar & 0xF;
            if ar & 0x80 == 0 || ar & 0x10 == 0 {
                return stop("a segment not present, or not code or data".into());
            }
            let code = ty & 8 != 0;
            if code && (write || ty & 2 == 0) {
                return stop("a write to code, or a read of an execute-only segment".into());
            }
            if !code && write && ty & 2 == 0 {
                return stop("a write to a read-only segment".into());
            }
            if !code && ty & 4 != 0 {
                return stop("an expand-down segment".into());
            }
        }
        if ea + u64::from(size) - 1 > limit {
            return stop(format!("beyond the limit {limit:#x}"));
        }
        Ok(())
    }

    /// The linear address of an access through `m` (with `plus`), checked.
    fn mem_linear(
        &self,
        m: RefMem,
        i: &Instruction,
        plus: u64,
        size: u8,
        write: bool,
    ) -> Result<u64, String> {
        let ea = self.ref_ea(m, i).wrapping_add(plus) & size_mask(m.addr);
        self.seg_check(m.seg, ea, size, write)?;
        Ok(self.ref_linear_plus(m, i, plus))
    }

    /// The guest-physical address of each byte of an access, as a CPU that must not
    /// fault and must not set an accessed or dirty flag sees it; anything else is a
    /// mandatory stop. Paging off (linear = physical), 32-bit paging with 4 MiB pages
    /// (CR4.PSE) and 4-level paging, walked here by hand.
    fn ref_gpas(&self, lin: u64, size: u8, write: bool) -> Result<Vec<u64>, String> {
        let stop = |why: &str| {
            Err(format!(
                "the coalescer ran past a mandatory stop: {why} at {lin:#x} ({size} bytes, write {write})"
            ))
        };
        let cpl = crate::vmx::guest_state::guest_cpl(&self.vmcs);
        let paging = crate::vmx::guest_state::guest_paging(&self.vmcs);
        let mem_ram = &self.ram;
        let rd = |at: u64, n: usize| -> Option<u64> {
            let at = at as usize;
            let b = mem_ram.get(at..at + n)?;
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(b);
            Some(u64::from_le_bytes(v))
        };
        let paged = paging.cr0 & (1 << 31) != 0;
        let pae = paging.cr4 & (1 << 5) != 0;
        if paged && pae && paging.efer & (1 << 10) == 0 {
            return stop("PAE paging (outside the reference)");
        }
        let mut out = Vec::new();
        for k in 0..u64::from(size) {
            let l = if self.mode == CodeMode::Bits64 {
                lin.wrapping_add(k)
            } else {
                lin.wrapping_add(k) & 0xFFFF_FFFF
            };
            let (mut writable, mut user) = (true, true);
            let mut gpa = None;
            if !paged {
                gpa = Some(l);
            } else if !pae {
                // 32-bit paging: a page directory of 1024 4-byte entries, 4 MiB pages
                // with CR4.PSE.
                let pse = paging.cr4 & (1 << 4) != 0;
                let mut table = paging.cr3 & 0xFFFF_F000;
                for level in [2u32, 1] {
                    let shift = 12 + 10 * (level - 1);
                    let Some(e) = rd(table + ((l >> shift) & 0x3FF) * 4, 4) else {
                        return stop("paging structure outside RAM");
                    };
                    if e & 1 == 0 {
                        return stop("page not present");
                    }
                    if e & 0x20 == 0 {
                        return stop("the CPU would set an accessed flag");
                    }
                    writable &= e & 2 != 0;
                    user &= e & 4 != 0;
                    let leaf = level == 1 || (pse && e & 0x80 != 0);
                    if leaf {
                        if write && e & 0x40 == 0 {
                            return stop("the CPU would set a dirty flag");
                        }
                        let page = (1u64 << shift) - 1;
                        gpa = Some((e & 0xFFFF_F000 & !page) | (l & page));
                        break;
                    }
                    table = e & 0xFFFF_F000;
                }
            } else {
                // The top 17 bits equal: canonical for 48-bit linear addresses.
                if ((l as i64) << 16 >> 16) as u64 != l {
                    return stop("non-canonical address");
                }
                let mut table = paging.cr3 & 0x000F_FFFF_FFFF_F000;
                for level in (1..=4u32).rev() {
                    let shift = 12 + 9 * (level - 1);
                    let Some(e) = rd(table + ((l >> shift) & 0x1FF) * 8, 8) else {
                        return stop("paging structure outside RAM");
                    };
                    if e & 1 == 0 {
                        return stop("page not present");
                    }
                    if e & 0x20 == 0 {
                        return stop("the CPU would set an accessed flag");
                    }
                    writable &= e & 2 != 0;
                    user &= e & 4 != 0;
                    let leaf = level == 1 || (level == 2 && e & 0x80 != 0);
                    if leaf {
                        if write && e & 0x40 == 0 {
                            return stop("the CPU would set a dirty flag");
                        }
                        let page = (1u64 << shift) - 1;
                        gpa = Some((e & 0x000F_FFFF_FFFF_F000 & !page) | (l & page));
                        break;
                    }
                    table = e & 0x000F_FFFF_FFFF_F000;
                }
            }
            let Some(g) = gpa else {
                return stop("no leaf");
            };
            if paged && cpl == 3 && !user {
                return stop("user access to a supervisor page");
            }
            if paged && write && !writable && (cpl == 3 || paging.cr0 & (1 << 16) != 0) {
                return stop("write to a read-only page");
            }
            if g >= self.ram.len() as u64 {
                return stop("outside guest RAM");
            }
            out.push(g);
        }
        Ok(out)
    }

    fn ref_read(&self, lin: u64, size: u8) -> Result<u64, String> {
        let gpas = self.ref_gpas(lin, size, false)?;
        Ok(gpas.iter().enumerate().fold(0, |v, (k, &g)| {
            v | u64::from(self.ram[g as usize]) << (8 * k)
        }))
    }

    fn ref_write(&mut self, lin: u64, size: u8, v: u64) -> Result<(), String> {
        let gpas = self.ref_gpas(lin, size, true)?;
        for (k, g) in gpas.into_iter().enumerate() {
            if (PAGE_TABLES.0..PAGE_TABLES.1).contains(&g) {
                self.wrote_page_tables = true;
            }
            self.ram[g as usize] = (v >> (8 * k)) as u8;
        }
        Ok(())
    }

    fn rm_read(&self, rm: RefRm, size: u8, i: &Instruction) -> Result<u64, String> {
        match rm {
            RefRm::Reg(r) => Ok(self.get(r)),
            RefRm::Mem(m) => self.ref_read(self.mem_linear(m, i, 0, size, false)?, size),
        }
    }

    fn rm_write(&mut self, rm: RefRm, size: u8, v: u64, i: &Instruction) -> Result<(), String> {
        match rm {
            RefRm::Reg(r) => {
                self.set(r, v);
                Ok(())
            }
            RefRm::Mem(m) => {
                let lin = self.mem_linear(m, i, 0, size, true)?;
                self.ref_write(lin, size, v)
            }
        }
    }

    /// The stack's address size in bytes: 8 in 64-bit mode, else SS.B.
    fn stack_size(&self) -> u8 {
        if self.mode == CodeMode::Bits64 {
            8
        } else if self.vmcs.read(VmcsField::GuestSsAccessRights) & (1 << 14) != 0 {
            4
        } else {
            2
        }
    }

    /// rSP plus `delta` within the stack's address size (a 16-bit stack keeps bits
    /// 63:16 of RSP).
    fn sp_plus(&self, delta: u64) -> u64 {
        let rsp = self.vmcs.read(VmcsField::GuestRsp);
        let v = rsp.wrapping_add(delta);
        match self.stack_size() {
            2 => (rsp & !0xFFFF) | (v & 0xFFFF),
            4 => v & 0xFFFF_FFFF,
            _ => v,
        }
    }

    fn ref_sp_add(&mut self, delta: u64) {
        let v = self.sp_plus(delta);
        self.vmcs.write(VmcsField::GuestRsp, v);
    }

    /// The linear address of `size` stack bytes at offset `sp`, checked (SS).
    fn stack_linear(&self, sp: u64, size: u8, write: bool) -> Result<u64, String> {
        let off = sp & size_mask(self.stack_size());
        self.seg_check(2, off, size, write)?;
        Ok(self.seg_base(2).wrapping_add(off) & self.linear_mask())
    }

    fn ref_push(&mut self, v: u64, size: u8) -> Result<(), String> {
        let sp = self.sp_plus(u64::from(size).wrapping_neg());
        let lin = self.stack_linear(sp, size, true)?;
        self.ref_write(lin, size, v)?;
        self.vmcs.write(VmcsField::GuestRsp, sp);
        Ok(())
    }

    fn ref_stack_read(&self, size: u8) -> Result<u64, String> {
        let lin = self.stack_linear(self.vmcs.read(VmcsField::GuestRsp), size, false)?;
        self.ref_read(lin, size)
    }

    fn ref_pop(&mut self, size: u8) -> Result<u64, String> {
        let v = self.ref_stack_read(size)?;
        self.ref_sp_add(u64::from(size));
        Ok(v)
    }

    /// A transfer target the processor accepts: canonical in 64-bit mode, within the
    /// CS limit otherwise (#GP on the branch).
    fn check_target(&self, target: u64, i: &Instruction) -> Result<(), String> {
        let ok = if self.mode == CodeMode::Bits64 {
            crate::x86::is_canonical(target, 48)
        } else {
            target <= self.vmcs.read(VmcsField::GuestCsLimit)
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the coalescer ran past `{}` to {target:#x}: non-canonical or beyond the CS limit (#GP)",
                fmt_insn(i)
            ))
        }
    }

    fn advance(&mut self, len: usize) {
        let rip = self.rip().wrapping_add(len as u64) & ip_mask(self.mode);
        self.vmcs.write(VmcsField::GuestRip, rip);
    }

    /// One IO exit through the single-exit handler. `Err` if it injected a fault.
    fn io_exit(&mut self, q: u64, len: u64, info: u64) -> Result<(), String> {
        let v = &mut self.vmcs;
        v.write(VmcsField::ExitReason, 30);
        v.write(VmcsField::ExitQualification, q);
        v.write(VmcsField::ExitInstructionLength, len);
        v.write(VmcsField::ExitInstructionInfo, info);
        v.write(VmcsField::EntryInterruptionInfo, 0);
        let mut stats = Stats::new();
        let mut msrs = MsrFile::default();
        let mut host = NullHost;
        let exit = VmExit::read(&self.vmcs);
        let mut mem = SliceMemory::new(&mut self.ram);
        let mut ctx = ExitContext {
            exit,
            vmcs: &mut self.vmcs,
            regs: &mut self.regs,
            mem: &mut mem,
            host: &mut host,
            bus: self.bus,
            stats: &mut stats,
            msrs: &mut msrs,
            config: VcpuConfig {
                nested_vmx: false,
                unrestricted_guest: true,
                cr0_fixed0: 0,
                cr0_fixed1: u64::MAX,
                cr4_fixed0: 0,
                cr4_fixed1: u64::MAX,
                tsc_hz: 0,
            },
        };
        let action = exits::handle_exit(&mut ctx);
        if action != ExitAction::Resume {
            return Err(format!("single-exit handler ended the guest: {action:?}"));
        }
        if self.vmcs.read(VmcsField::EntryInterruptionInfo) & (1 << 31) != 0 {
            self.vmcs.write(VmcsField::EntryInterruptionInfo, 0);
            return Err("the string element faults (#GP injected)".into());
        }
        Ok(())
    }

    /// After a port access: lines onto the PIC; an interrupt the CPU would take now
    /// is a mandatory stop.
    fn after_access(&mut self, what: &str) {
        if self.stale_pic_if_clear && self.rflags() & RF_IF == 0 {
            return;
        }
        if self.board.poll() && self.rflags() & RF_IF != 0 {
            self.pending = Some(format!("interrupt deliverable after {what}"));
        }
    }

    /// Runs to `t`; fails at a mandatory stop before it or if it is no boundary.
    pub(super) fn run_to(&mut self, t: Target) -> Result<(), String> {
        let mut steps = 0;
        loop {
            if self.executed == t.executed && self.elements == t.elements {
                if self.rip() != t.rip {
                    return Err(format!(
                        "after {} instructions and {} elements the reference is at RIP {:#x}, \
                         the coalescer at {:#x}",
                        t.executed,
                        t.elements,
                        self.rip(),
                        t.rip
                    ));
                }
                return Ok(());
            }
            if self.executed > t.executed || self.elements > t.elements {
                return Err(format!(
                    "the coalescer's stop ({} instructions, {} elements, RIP {:#x}) is not a \
                     boundary of the reference run (now {} / {})",
                    t.executed, t.elements, t.rip, self.executed, self.elements
                ));
            }
            if let Some(p) = self.pending.take() {
                return Err(format!("the coalescer ran past a mandatory stop: {p}"));
            }
            steps += 1;
            if steps > 100_000 {
                return Err("reference: step bound".into());
            }
            self.step()?;
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let shadowed = self.shadow;
        let before = self.executed;
        self.step_one()?;
        if shadowed && self.executed != before {
            // The instruction after STI retired: an interrupt can be taken now.
            self.shadow = false;
            if self.pending.is_none() && self.board.poll() && self.rflags() & RF_IF != 0 {
                self.pending = Some("interrupt deliverable after the STI shadow".into());
            }
        }
        Ok(())
    }

    /// CLI/STI/POPF's privilege check: CPL > IOPL raises #GP (or changes VIF).
    fn if_allowed(&self, what: &str) -> Result<(), String> {
        let cpl = u64::from(crate::vmx::guest_state::guest_cpl(&self.vmcs));
        let iopl = (self.rflags() >> 12) & 3;
        if cpl > iopl || self.rflags() & (1 << 17) != 0 {
            return Err(format!(
                "the coalescer ran past `{what}` at CPL {cpl} > IOPL {iopl} (#GP)"
            ));
        }
        Ok(())
    }

    fn step_one(&mut self) -> Result<(), String> {
        let first = self.executed == 0;
        let boundary = !self.in_rep;
        let rflags = self.rflags();
        if boundary && !first {
            if rflags & RF_TF != 0 {
                return Err("the coalescer ran past an instruction with RFLAGS.TF".into());
            }
            if self.executed >= u64::from(self.limits.max_insns) {
                return Err(format!(
                    "the coalescer ran past max_insns = {}",
                    self.limits.max_insns
                ));
            }
        }
        let rip = self.rip();
        let (i, bytes, op) = fetch_decode(&self.vmcs, &mut self.ram)?;
        self.log.push(i);
        let text = || fmt_insn(&i);
        let Some(op) = op else {
            let text = text();
            return Err(format!(
                "the coalescer ran past `{text}` ({bytes:02x?}), outside the reference subset"
            ));
        };
        let len = i.len();
        if matches!(op, RefOp::Io { .. } | RefOp::Str { .. }) && boundary && !first {
            let iopl = (rflags >> 12) & 3;
            let cpl = u64::from(crate::vmx::guest_state::guest_cpl(&self.vmcs));
            if cpl > iopl || rflags & (1 << 17) != 0 {
                let text = text();
                return Err(format!(
                    "the coalescer ran IO instruction `{text}` at CPL {cpl} > IOPL {iopl}"
                ));
            }
        }
        match op {
            RefOp::Io { .. } => {
                let (q, l, info) = exit_fields(&op, len, self.regs.rdx as u16).expect("io");
                self.io_exit(q, l, info)?;
                self.executed += 1;
                self.io_insns += 1;
                self.after_access("an IN/OUT");
            }
            RefOp::Str {
                rep, addr, is_in, ..
            } => {
                let (q, l, info) = exit_fields(&op, len, self.regs.rdx as u16).expect("io");
                let am = size_mask(addr);
                if rep && self.regs.rcx & am == 0 {
                    // Nothing to do: the instruction retires.
                    self.io_exit(q, l, info)?;
                    self.executed += 1;
                    self.io_insns += 1;
                    return Ok(());
                }
                if self.elements >= u64::from(self.limits.max_string_elements) {
                    return Err(format!(
                        "the coalescer ran past max_string_elements = {}",
                        self.limits.max_string_elements
                    ));
                }
                let rcx = self.regs.rcx;
                let left = if rep {
                    // One element per exit: count 1, then the real count - 1.
                    self.regs.rcx = (rcx & !am) | 1;
                    let new = rcx.wrapping_sub(1);
                    Some(if addr == 2 {
                        (rcx & !0xFFFF) | (new & 0xFFFF)
                    } else {
                        new & am
                    })
                } else {
                    None
                };
                let paging = self.vmcs.read(VmcsField::GuestCr0) & (1 << 31) != 0;
                let tables = PAGE_TABLES.0 as usize..PAGE_TABLES.1 as usize;
                let before = (paging && is_in).then(|| self.ram[tables.clone()].to_vec());
                if let Err(e) = self.io_exit(q, l, info) {
                    self.regs.rcx = rcx;
                    return Err(format!("the coalescer ran past a mandatory stop: {e}"));
                }
                if before.is_some_and(|b| b[..] != self.ram[tables]) {
                    self.wrote_page_tables = true;
                }
                if !self.in_rep {
                    self.executed += 1;
                    self.io_insns += 1;
                }
                self.elements += 1;
                if let Some(new) = left {
                    self.regs.rcx = new;
                    if new & am != 0 {
                        // Elements left: RIP stays on the instruction.
                        self.vmcs.write(VmcsField::GuestRip, rip);
                        self.in_rep = true;
                    } else {
                        self.in_rep = false;
                    }
                }
                self.after_access(if is_in {
                    "an INS element"
                } else {
                    "an OUTS element"
                });
            }
            RefOp::Nop => {
                self.advance(len);
                self.executed += 1;
            }
            RefOp::MemStr {
                kind,
                size,
                rep,
                addr,
                seg,
            } => {
                let am = size_mask(addr);
                let repeats = rep != Repeat::Once;
                if repeats && self.regs.rcx & am == 0 {
                    // Nothing to do: the instruction retires.
                    self.advance(len);
                    self.executed += 1;
                    return Ok(());
                }
                if self.elements >= u64::from(self.limits.max_string_elements) {
                    return Err(format!(
                        "the coalescer ran past max_string_elements = {}",
                        self.limits.max_string_elements
                    ));
                }
                let upd = |reg: u64, delta: u64| match addr {
                    2 => (reg & !0xFFFF) | (reg.wrapping_add(delta) & 0xFFFF),
                    4 => reg.wrapping_add(delta) & 0xFFFF_FFFF,
                    _ => reg.wrapping_add(delta),
                };
                let step = if rflags & 0x400 != 0 {
                    u64::from(size).wrapping_neg()
                } else {
                    u64::from(size)
                };
                let reads_src = matches!(kind, StrKind::Movs | StrKind::Lods | StrKind::Cmps);
                let uses_dst = kind != StrKind::Lods;
                let src = if reads_src {
                    let off = self.regs.rsi & am;
                    self.seg_check(seg, off, size, false)?;
                    let lin = self.seg_base(seg).wrapping_add(off) & self.linear_mask();
                    Some(self.ref_read(lin, size)?)
                } else {
                    None
                };
                let dst_lin = if uses_dst {
                    let off = self.regs.rdi & am;
                    let write = matches!(kind, StrKind::Movs | StrKind::Stos);
                    self.seg_check(0, off, size, write)?;
                    Some(self.seg_base(0).wrapping_add(off) & self.linear_mask())
                } else {
                    None
                };
                let acc = self.regs.rax & size_mask(size);
                let mut f = rflags;
                match kind {
                    StrKind::Movs => {
                        self.ref_write(dst_lin.unwrap_or(0), size, src.unwrap_or(0))?
                    }
                    StrKind::Stos => self.ref_write(dst_lin.unwrap_or(0), size, acc)?,
                    StrKind::Lods => self.set(
                        GReg {
                            index: 0,
                            size,
                            high: false,
                        },
                        src.unwrap_or(0),
                    ),
                    StrKind::Cmps | StrKind::Scas => {
                        let b = self.ref_read(dst_lin.unwrap_or(0), size)?;
                        let a = if kind == StrKind::Cmps {
                            src.unwrap_or(0)
                        } else {
                            acc
                        };
                        f = ref_alu(AluOp::Cmp, size, a, b, rflags).1;
                    }
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                if reads_src {
                    self.regs.rsi = upd(self.regs.rsi, step);
                }
                if uses_dst {
                    self.regs.rdi = upd(self.regs.rdi, step);
                }
                if !self.in_rep {
                    self.executed += 1;
                }
                self.elements += 1;
                if repeats {
                    self.regs.rcx = upd(self.regs.rcx, u64::MAX);
                    let zf = f & 0x40 != 0;
                    let compares = matches!(kind, StrKind::Cmps | StrKind::Scas);
                    let ended = self.regs.rcx & am == 0
                        || (compares && rep == Repeat::Rep && !zf)
                        || (compares && rep == Repeat::Repne && zf);
                    if ended {
                        self.in_rep = false;
                        self.advance(len);
                    } else {
                        // Elements left: RIP stays on the instruction.
                        self.in_rep = true;
                    }
                } else {
                    self.advance(len);
                }
            }
            RefOp::Mov { dst, src } => {
                let v = self.src(src);
                self.set(dst, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Alu { op, dst, src } => {
                let (r, f) = ref_alu(op, dst.size, self.get(dst), self.src(src), rflags);
                if exec::writes_dst(op) {
                    self.set(dst, r);
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Load {
                dst,
                src,
                size,
                signed,
            } => {
                let v = match src {
                    RefRm::Reg(r) => self.get(r),
                    RefRm::Mem(m) => {
                        let lin = self.mem_linear(m, &i, 0, size, false)?;
                        self.ref_read(lin, size)?
                    }
                };
                let v = if signed {
                    let shift = 64 - 8 * u32::from(size);
                    (((v << shift) as i64) >> shift) as u64
                } else {
                    v
                };
                self.set(dst, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Store { mem, src, size } => {
                let v = self.src(src);
                let lin = self.mem_linear(mem, &i, 0, size, true)?;
                self.ref_write(lin, size, v)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::AluMem { op, mem, src, size } => {
                // BT* m, r: the register is a signed bit offset; the byte address moves
                // by whole operands (SDM Vol. 2A "BT—Bit Test", bit-string addressing).
                let plus = match (op, src) {
                    (AluOp::Bt | AluOp::Bts | AluOp::Btr | AluOp::Btc, Src::Reg(r)) => {
                        let bits = 8 * i64::from(size);
                        let sh = 64 - 8 * u32::from(r.size);
                        let off = ((self.get(r) << sh) as i64) >> sh;
                        let units = if off >= 0 {
                            off / bits
                        } else {
                            -((-off + bits - 1) / bits)
                        };
                        (units * i64::from(size)) as u64
                    }
                    _ => 0,
                };
                let lin = self.mem_linear(mem, &i, plus, size, exec::writes_dst(op))?;
                if exec::writes_dst(op) {
                    // The CPU checks the write access before doing anything.
                    self.ref_gpas(lin, size, true)?;
                }
                let a = self.ref_read(lin, size)?;
                let (r, f) = ref_alu(op, size, a, self.src(src), rflags);
                if exec::writes_dst(op) {
                    self.ref_write(lin, size, r)?;
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::AluLoad { op, dst, mem } => {
                let lin = self.mem_linear(mem, &i, 0, dst.size, false)?;
                let b = self.ref_read(lin, dst.size)?;
                let (r, f) = ref_alu(op, dst.size, self.get(dst), b, rflags);
                if exec::writes_dst(op) {
                    self.set(dst, r);
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Lea { dst, mem } => {
                let ea = self.ref_ea(mem, &i);
                self.set(dst, ea);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Push { src, size } => {
                let v = self.src(src);
                self.ref_push(v, size)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Pop { dst } => {
                let v = self.ref_pop(dst.size)?;
                self.set(dst, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Leave { size } => {
                // rSP <- rBP at the stack's address size, then POP rBP.
                let rbp = self.regs.rbp;
                let rsp = self.vmcs.read(VmcsField::GuestRsp);
                let new = match self.stack_size() {
                    2 => (rsp & !0xFFFF) | (rbp & 0xFFFF),
                    4 => rbp & 0xFFFF_FFFF,
                    _ => rbp,
                };
                self.vmcs.write(VmcsField::GuestRsp, new);
                let v = match self.ref_pop(size) {
                    Ok(v) => v,
                    Err(e) => {
                        self.vmcs.write(VmcsField::GuestRsp, rsp);
                        return Err(e);
                    }
                };
                self.set(
                    GReg {
                        index: 5,
                        size,
                        high: false,
                    },
                    v,
                );
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Call { target, size } => {
                self.check_target(target, &i)?;
                let next = rip.wrapping_add(len as u64) & ip_mask(self.mode);
                self.ref_push(next & size_mask(size), size)?;
                self.vmcs.write(VmcsField::GuestRip, target);
                self.executed += 1;
            }
            RefOp::Ret { pop, size } => {
                let target = self.ref_stack_read(size)?;
                self.check_target(target, &i)?;
                self.ref_pop(size)?;
                self.ref_sp_add(u64::from(pop));
                self.vmcs.write(VmcsField::GuestRip, target);
                self.executed += 1;
            }
            RefOp::CallInd { src, size } => {
                let target = self.rm_read(src, size, &i)?;
                self.check_target(target, &i)?;
                let next = rip.wrapping_add(len as u64) & ip_mask(self.mode);
                self.ref_push(next & size_mask(size), size)?;
                self.vmcs.write(VmcsField::GuestRip, target);
                self.executed += 1;
            }
            RefOp::JmpInd { src, size } => {
                let target = self.rm_read(src, size, &i)?;
                self.check_target(target, &i)?;
                self.vmcs.write(VmcsField::GuestRip, target);
                self.executed += 1;
            }
            RefOp::Flag { op } => {
                let f = match op {
                    FlagOp::Clc => rflags & !1,
                    FlagOp::Stc => rflags | 1,
                    FlagOp::Cmc => rflags ^ 1,
                    FlagOp::Cld => rflags & !0x400,
                    FlagOp::Std => rflags | 0x400,
                };
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Cmov { cond, dst, src } => {
                // The source is read even when the condition is false.
                let v = self.rm_read(src, dst.size, &i)?;
                let v = if condition(cond, rflags) {
                    v
                } else {
                    self.get(dst)
                };
                self.set(dst, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Setcc { cond, dst } => {
                self.rm_write(dst, 1, u64::from(condition(cond, rflags)), &i)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Xchg { a, b } => {
                let size = match (a, b) {
                    (RefRm::Reg(r), _) | (_, RefRm::Reg(r)) => r.size,
                    _ => return Err("xchg without a register".into()),
                };
                for rm in [a, b] {
                    if let RefRm::Mem(m) = rm {
                        // The CPU checks the write access before either write.
                        self.ref_gpas(self.mem_linear(m, &i, 0, size, true)?, size, true)?;
                    }
                }
                let va = self.rm_read(a, size, &i)?;
                let vb = self.rm_read(b, size, &i)?;
                self.rm_write(a, size, vb, &i)?;
                self.rm_write(b, size, va, &i)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Bswap { reg } => {
                let v = self.get(reg);
                let v = if reg.size == 4 {
                    u64::from(u32::from_be_bytes((v as u32).to_le_bytes()))
                } else {
                    u64::from_be_bytes(v.to_le_bytes())
                };
                self.set(reg, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Widen { size } => {
                let half = size / 2;
                let sh = 64 - 8 * u32::from(half);
                let v = (((self.regs.rax << sh) as i64) >> sh) as u64;
                self.set(
                    GReg {
                        index: 0,
                        size,
                        high: false,
                    },
                    v,
                );
                self.advance(len);
                self.executed += 1;
            }
            RefOp::SignDx { size } => {
                let sign = (self.regs.rax >> (8 * u32::from(size) - 1)) & 1;
                self.set(
                    GReg {
                        index: 2,
                        size,
                        high: false,
                    },
                    0u64.wrapping_sub(sign),
                );
                self.advance(len);
                self.executed += 1;
            }
            RefOp::MulDiv { op, src, size } => {
                let b = self.rm_read(src, size, &i)?;
                let (rdx, rax) = (self.regs.rdx, self.regs.rax);
                let Some((d, a, f)) = ref_mul_div(op, size, rdx, rax, b, rflags) else {
                    return Err(format!(
                        "the coalescer ran past `{}`, a divide that faults (#DE)",
                        text()
                    ));
                };
                if size == 1 {
                    self.set(
                        GReg {
                            index: 0,
                            size: 2,
                            high: false,
                        },
                        a,
                    );
                } else {
                    let r = |index| GReg {
                        index,
                        size,
                        high: false,
                    };
                    self.set(r(0), a);
                    self.set(r(2), d);
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Imul3 { dst, src, imm } => {
                let v = self.rm_read(src, dst.size, &i)?;
                let (r, f) = ref_alu(AluOp::Imul, dst.size, v, imm, rflags);
                self.set(dst, r);
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Cli | RefOp::Sti => {
                self.if_allowed(&text())?;
                let f = if op == RefOp::Cli {
                    rflags & !RF_IF
                } else {
                    if rflags & RF_IF == 0 {
                        self.shadow = true;
                    }
                    rflags | RF_IF
                };
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Pushf { size } => {
                // VM (17) and RF (16) read as 0 in the pushed image.
                let v = rflags & !0x3_0000 & size_mask(size);
                self.ref_push(v, size)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Popf { size } => {
                if rflags & (1 << 17) != 0 {
                    return Err("the coalescer ran past a POPF in virtual-8086 mode".into());
                }
                let v = self.ref_pop(size)?;
                let cpl = u64::from(crate::vmx::guest_state::guest_cpl(&self.vmcs));
                let iopl = (rflags >> 12) & 3;
                // Always from the stack: the status flags, TF, DF, NT, AC, ID; IOPL at
                // CPL 0; IF at CPL <= IOPL. RF is cleared; VM, VIF, VIP are kept. A
                // 16-bit POPF loads bits 15:0 only.
                let mut from_stack: u64 = 0x8D5 | 0x100 | 0x400 | 0x4000 | 0x4_0000 | 0x20_0000;
                if cpl == 0 {
                    from_stack |= 0x3000;
                }
                if cpl <= iopl {
                    from_stack |= RF_IF;
                }
                let f = if size == 2 {
                    (rflags & !(from_stack & 0xFFFF)) | (v & from_stack & 0xFFFF)
                } else {
                    ((rflags & !from_stack) | (v & from_stack)) & !0x1_0000
                };
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
                if rflags & RF_IF == 0 && f & RF_IF != 0 && self.board.poll() {
                    self.pending = Some("interrupt deliverable after POPF".into());
                }
            }
            RefOp::Cmpxchg { dst, src } => {
                let size = src.size;
                if let RefRm::Mem(m) = dst {
                    self.ref_gpas(self.mem_linear(m, &i, 0, size, true)?, size, true)?;
                }
                let acc = GReg {
                    index: 0,
                    size,
                    high: false,
                };
                let old = self.rm_read(dst, size, &i)?;
                let a = self.get(acc);
                let (_, f) = ref_alu(AluOp::Cmp, size, a, old, rflags);
                if a == old {
                    let v = self.get(src);
                    self.rm_write(dst, size, v, &i)?;
                } else {
                    self.set(acc, old);
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Xadd { dst, src } => {
                let size = src.size;
                if let RefRm::Mem(m) = dst {
                    self.ref_gpas(self.mem_linear(m, &i, 0, size, true)?, size, true)?;
                }
                let a = self.rm_read(dst, size, &i)?;
                let b = self.get(src);
                let (r, f) = ref_alu(AluOp::Add, size, a, b, rflags);
                // The destination's address is computed before SRC is written (it may
                // be one of its registers); with two registers the sum is written last.
                match dst {
                    RefRm::Mem(m) => {
                        let lin = self.mem_linear(m, &i, 0, size, true)?;
                        self.ref_write(lin, size, r)?;
                        self.set(src, a);
                    }
                    RefRm::Reg(d) => {
                        self.set(src, a);
                        self.set(d, r);
                    }
                }
                self.vmcs.write(VmcsField::GuestRflags, f);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Branch { kind, target } => {
                let taken = match kind {
                    BranchKind::Always => true,
                    BranchKind::Cond(c) => condition(c, rflags),
                    BranchKind::Loop(k, count) => {
                        let m = size_mask(count);
                        let new = self.regs.rcx.wrapping_sub(1);
                        self.regs.rcx = if count == 2 {
                            (self.regs.rcx & !0xFFFF) | (new & 0xFFFF)
                        } else {
                            new & m
                        };
                        let zf = rflags & 0x40 != 0;
                        self.regs.rcx & m != 0
                            && match k {
                                0 => true,
                                1 => zf,
                                _ => !zf,
                            }
                    }
                };
                if taken {
                    if self.mode != CodeMode::Bits64
                        && target > self.vmcs.read(VmcsField::GuestCsLimit)
                    {
                        return Err(format!(
                            "the coalescer ran past `{}`, whose target is beyond the CS limit",
                            text()
                        ));
                    }
                    self.vmcs.write(VmcsField::GuestRip, target);
                } else {
                    self.advance(len);
                }
                self.executed += 1;
            }
        }
        Ok(())
    }
}

/// The reference's MUL/IMUL/DIV/IDIV at `size` bytes: the new rDX and rAX (for bytes:
/// rDX unchanged and the new AX in rAX) and RFLAGS; `None` for #DE. CF and OF of
/// MUL/IMUL are defined (the upper half is significant); the other status flags are
/// undefined and taken from the coalescer's documented choice.
fn ref_mul_div(
    op: MulOp,
    size: u8,
    rdx: u64,
    rax: u64,
    src: u64,
    rflags: u64,
) -> Option<(u64, u64, u64)> {
    let bits = 8 * u32::from(size);
    let mask = size_mask(size);
    let sx = |v: u64| -> i128 {
        let sh = 64 - bits;
        i128::from(((v << sh) as i64) >> sh)
    };
    let (lo, hi) = if size == 1 {
        (rax & 0xFF, (rax >> 8) & 0xFF)
    } else {
        (rax & mask, rdx & mask)
    };
    let b = src & mask;
    let pack = |low: u64, high: u64| {
        if size == 1 {
            (rdx, (low & 0xFF) | ((high & 0xFF) << 8))
        } else {
            (high & mask, low & mask)
        }
    };
    let width = crate::x86::Width::from_bytes(size)?;
    let ours = exec::mul_div(op, width, rdx, rax, src, rflags);
    let undefined_from_ours = |defined: u64| -> u64 {
        let o = ours.map_or(rflags, |t| t.2);
        o & 0x8D5 & !defined
    };
    match op {
        MulOp::Mul | MulOp::Imul => {
            let (p_lo, p_hi, over) = if op == MulOp::Mul {
                let p = u128::from(lo) * u128::from(b);
                let h = (p >> bits) as u64 & mask;
                (p as u64 & mask, h, h != 0)
            } else {
                let p = sx(lo) * sx(b);
                let l = p as u64 & mask;
                (l, (p >> bits) as u64 & mask, sx(l) != p)
            };
            let (d, a) = pack(p_lo, p_hi);
            let co = if over { 0x801 } else { 0 };
            let f = (rflags & !0x8D5) | co | undefined_from_ours(0x801);
            Some((d, a, f))
        }
        MulOp::Div | MulOp::Idiv => {
            let f = (rflags & !0x8D5) | undefined_from_ours(0);
            if op == MulOp::Div {
                let n = (u128::from(hi) << bits) | u128::from(lo);
                if b == 0 || n / u128::from(b) > u128::from(mask) {
                    return None;
                }
                let (d, a) = pack((n / u128::from(b)) as u64, (n % u128::from(b)) as u64);
                Some((d, a, f))
            } else {
                let n = sx(hi) * (1i128 << bits) + i128::from(lo);
                let d = sx(b);
                if d == 0 {
                    return None;
                }
                let (q, r) = (n / d, n % d);
                if q < -(1i128 << (bits - 1)) || q > (1i128 << (bits - 1)) - 1 {
                    return None;
                }
                let (dd, a) = pack(q as u64, r as u64);
                Some((dd, a, f))
            }
        }
    }
}
