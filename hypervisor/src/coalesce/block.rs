//! The scanner: from the exiting instruction onwards, decode the run of supported
//! instructions that lies inside the configured *extent* into a [`Block`].
//!
//! Extent policies (docs/COALESCING.md, "The algorithm", step 2): the guest code page
//! as the guest's
//! paging maps it (hardware), the processor's cache line (processor-reported), or a
//! configured number of bytes or instructions (software). Code is read through
//! [`CodeFetch`]; [`GuestCode`] implements it over guest RAM and the guest's paging
//! structures (SDM Vol. 3A chapter 4 "Paging"). The block's code bytes are hashed with
//! FNV-1a
//! so the block cache can tell when the code changed.

use core::fmt;

#[cfg(feature = "decoder")]
use super::decode::{decode, DecodeError, MAX_INSN_LEN};
use super::insn::{CodeMode, Insn, Op, StopReason};
use crate::x86::guest_mem::{translate, Access, GuestMemory, PagingContext, PagingMode, PAGE_SIZE};
use crate::x86::Cr4;

/// Where the scan may look for instructions after the exiting one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extent {
    /// Up to the end of the guest page containing the exiting instruction as the
    /// guest's paging translated it: 4 KiB, 2 MiB, 1 GiB (or 4 MiB with 32-bit
    /// paging), and 4 KiB when paging is off.
    Page,
    /// Up to the end of the aligned cache line of this many bytes containing the
    /// exiting instruction (the kernel passes CPUID.1:EBX[15:8] * 8).
    Line(u32),
    /// The n bytes starting at the exiting instruction.
    Bytes(u32),
    /// At most n instructions, bounded by the end of the page as for `Page`.
    Insns(u32),
}

impl Extent {
    /// One line per policy, for `--help`.
    pub const HELP: &'static str = "\
  page       to the end of the guest code page (4 KiB, 2 MiB or 1 GiB, as the guest maps it)
  line       to the end of the 64-byte cache line holding the exiting instruction
  line:N     to the end of the aligned N-byte line (N a power of two, 8..=4096)
  bytes:N    the N bytes from the exiting instruction (1..=4096)
  insns:N    at most N instructions (1..=32), within the code page";

    /// Parses `page`, `line`, `line:N`, `bytes:N` or `insns:N`.
    pub fn parse(s: &str) -> Option<Extent> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let num = |lo: u32, hi: u32| -> Option<u32> {
            let a = arg?;
            // Digits only: no sign, no whitespace.
            if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            a.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n))
        };
        match kind {
            "page" if arg.is_none() => Some(Extent::Page),
            "line" if arg.is_none() => Some(Extent::Line(64)),
            "line" => num(8, 4096)
                .filter(|n| n.is_power_of_two())
                .map(Extent::Line),
            "bytes" => num(1, 4096).map(Extent::Bytes),
            "insns" => num(1, MAX_BLOCK_INSNS as u32).map(Extent::Insns),
            _ => None,
        }
    }

    /// The policy's name without its parameter (stats keys, help).
    pub const fn name(&self) -> &'static str {
        match self {
            Extent::Page => "page",
            Extent::Line(_) => "line",
            Extent::Bytes(_) => "bytes",
            Extent::Insns(_) => "insns",
        }
    }

    /// The policy's parameter, if it has one.
    pub const fn param(&self) -> Option<u32> {
        match *self {
            Extent::Page => None,
            Extent::Line(n) | Extent::Bytes(n) | Extent::Insns(n) => Some(n),
        }
    }
}

/// The form [`Extent::parse`] accepts: `page`, `line:64`, `bytes:32`, `insns:8`.
impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.param() {
            None => f.write_str(self.name()),
            Some(n) => write!(f, "{}:{}", self.name(), n),
        }
    }
}

/// Reading guest code by linear address.
pub trait CodeFetch {
    /// Copies the code bytes from `linear` into `buf`, stopping at the first byte that
    /// does not translate to guest RAM; returns how many bytes were copied.
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> usize;

    /// The end (exclusive) of the guest page containing `linear` as the guest's
    /// paging maps it, or `None` if `linear` does not translate to guest RAM.
    fn page_end(&mut self, linear: u64) -> Option<u64>;

    /// How many code bytes from `linear` the instruction pointer can reach in `mode`
    /// before it wraps (IP at 64 KiB, EIP at 4 GiB) or passes the CS limit. The scan
    /// and the cache never use a block that goes further. Default: unbounded.
    fn code_room(&mut self, linear: u64, mode: CodeMode) -> u64 {
        let _ = (linear, mode);
        u64::MAX
    }
}

/// Guest code read through the guest's paging (instruction fetches at the guest's
/// CPL) from guest RAM.
pub struct GuestCode<'a, M: GuestMemory> {
    mem: &'a M,
    ctx: PagingContext,
    cpl: u8,
    /// CS base and limit (the byte-granular limit as the VMCS holds it), when known.
    cs: Option<(u64, u32)>,
    /// A 4 KiB page the caller has just translated for this fetch: (linear, gpa),
    /// both page-aligned.
    known: Option<(u64, u64)>,
}

impl<'a, M: GuestMemory> GuestCode<'a, M> {
    /// Code of a guest at privilege `cpl` with paging state `ctx`. Without
    /// [`with_cs`](Self::with_cs) the scan does not know the instruction pointer and
    /// cannot stop at a 16-bit IP wrap or the CS limit.
    pub fn new(mem: &'a M, ctx: PagingContext, cpl: u8) -> Self {
        GuestCode {
            mem,
            ctx,
            cpl,
            cs: None,
            known: None,
        }
    }

    /// Tells that `linear` translated to `gpa` for an instruction fetch at this CPL
    /// and paging state a moment ago, so fetches in its 4 KiB page need no walk.
    pub fn with_known(mut self, linear: u64, gpa: u64) -> Self {
        let page = !(PAGE_SIZE - 1);
        self.known = Some((linear & page, gpa & page));
        self
    }

    /// Adds CS's base and limit (VMCS guest CS base / limit fields), which bound code
    /// outside 64-bit mode: IP = linear - base wraps at 64 KiB (16-bit code) or
    /// 4 GiB, and may not pass the limit.
    pub fn with_cs(mut self, base: u64, limit: u32) -> Self {
        self.cs = Some((base, limit));
        self
    }

    /// The guest-physical address of code at `linear`, if it is in guest RAM.
    pub fn gpa(&self, linear: u64) -> Option<u64> {
        let gpa = match self.known {
            Some((lin, gpa)) if linear & !(PAGE_SIZE - 1) == lin => {
                gpa | (linear & (PAGE_SIZE - 1))
            }
            _ => translate(self.mem, &self.ctx, linear, Access::fetch(self.cpl)).ok()?,
        };
        (gpa < self.mem.size()).then_some(gpa)
    }
}

impl<M: GuestMemory> CodeFetch for GuestCode<'_, M> {
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let lin = linear.wrapping_add(done as u64);
            let in_page = (PAGE_SIZE - (lin & (PAGE_SIZE - 1))) as usize;
            let want = in_page.min(buf.len() - done);
            let Some(gpa) = self.gpa(lin) else { break };
            // `gpa` is in RAM; the piece may still run past its end.
            let n = (want as u64).min(self.mem.size() - gpa) as usize;
            if self.mem.read(gpa, &mut buf[done..done + n]).is_err() {
                break;
            }
            done += n;
            if n < want {
                break;
            }
        }
        done
    }

    fn page_end(&mut self, linear: u64) -> Option<u64> {
        self.gpa(linear)?;
        let size = leaf_page_size(self.mem, &self.ctx, linear);
        Some(linear.wrapping_add(size - (linear & (size - 1))))
    }

    fn code_room(&mut self, linear: u64, mode: CodeMode) -> u64 {
        let Some((base, limit)) = self.cs else {
            return u64::MAX;
        };
        ip_room(linear.wrapping_sub(base), limit, mode)
    }
}

/// Bytes from instruction pointer `ip` that code of `mode` can use before IP wraps or
/// passes `limit` (SDM Vol. 3A 5.3 "Limit Checking": a fetch past the CS limit raises
/// #GP; 64-bit mode
/// has no limit check).
pub fn ip_room(ip: u64, limit: u32, mode: CodeMode) -> u64 {
    let (ip, wrap) = match mode {
        CodeMode::Bits64 => return u64::MAX,
        CodeMode::Bits16 => (ip & 0xFFFF, 1u64 << 16),
        CodeMode::Bits32 => (ip & 0xFFFF_FFFF, 1u64 << 32),
    };
    let end = wrap.min(u64::from(limit) + 1);
    end.saturating_sub(ip)
}

/// Size of the page that maps `linear` in the guest's paging structures (a walk that
/// only looks at present and page-size bits; call it after a successful translate).
/// 4 KiB without paging, or if a table cannot be read.
pub fn leaf_page_size(mem: &impl GuestMemory, ctx: &PagingContext, linear: u64) -> u64 {
    const P: u64 = 1;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
    let entry64 = |table: u64, index: u64| mem.read_u64((table & ADDR) | (index << 3)).ok();
    // Walk 9-bit-indexed levels from `level` down; PS at level 3 (PDPTE) or 2 (PDE)
    // maps a 1 GiB or 2 MiB page.
    let walk = |mut table: u64, mut level: u32| -> u64 {
        loop {
            let shift = 12 + 9 * (level - 1);
            let Some(e) = entry64(table, (linear >> shift) & 0x1FF) else {
                return PAGE_SIZE;
            };
            if e & P == 0 || level == 1 {
                return PAGE_SIZE;
            }
            if e & PS != 0 && level <= 3 {
                return 1 << shift;
            }
            table = e;
            level -= 1;
        }
    };
    match ctx.mode() {
        PagingMode::None => PAGE_SIZE,
        PagingMode::Bits32 => {
            let lin = linear & 0xFFFF_FFFF;
            let pde = mem
                .read_u32((ctx.cr3 & 0xFFFF_F000) | ((lin >> 22) << 2))
                .unwrap_or(0);
            let pse = ctx.cr4 & Cr4::PSE.bits() != 0;
            if pde & 1 != 0 && u64::from(pde) & PS != 0 && pse {
                4 << 20
            } else {
                PAGE_SIZE
            }
        }
        PagingMode::Pae => {
            let lin = linear & 0xFFFF_FFFF;
            match mem.read_u64((ctx.cr3 & 0xFFFF_FFE0) | ((lin >> 30) << 3)) {
                Ok(pdpte) if pdpte & P != 0 => walk(pdpte, 2),
                _ => PAGE_SIZE,
            }
        }
        PagingMode::Level4 => walk(ctx.cr3, 4),
        PagingMode::Level5 => walk(ctx.cr3, 5),
    }
}

/// The most instructions one block holds.
pub const MAX_BLOCK_INSNS: usize = 32;

/// Placeholder for unused slots.
const NO_INSN: Insn = Insn {
    op: Op::Nop,
    len: 0,
};

/// A decoded run of instructions starting at the exiting instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    insns: [Insn; MAX_BLOCK_INSNS],
    /// Byte offset of each instruction from the block start (ascending).
    offsets: [u16; MAX_BLOCK_INSNS],
    count: usize,
    code_len: u16,
    end: StopReason,
    hash: u64,
}

impl Block {
    /// A block without instructions that stopped for `end`.
    pub const fn empty(end: StopReason) -> Block {
        Block {
            insns: [NO_INSN; MAX_BLOCK_INSNS],
            offsets: [0; MAX_BLOCK_INSNS],
            count: 0,
            code_len: 0,
            end,
            hash: FNV_OFFSET,
        }
    }

    /// Builds a block from decoded instructions laid out back to back (tests and
    /// callers that decode themselves). `None` if there are more than
    /// [`MAX_BLOCK_INSNS`] or the code is longer than `u16::MAX`.
    pub fn from_insns(insns: &[Insn], end: StopReason, code: &[u8]) -> Option<Block> {
        let mut b = Block::empty(end);
        for &insn in insns {
            if !b.push(insn) {
                return None;
            }
        }
        b.hash = fnv1a(code.get(..usize::from(b.code_len))?);
        Some(b)
    }

    /// Appends `insn` after the current code; false if the block is full.
    fn push(&mut self, insn: Insn) -> bool {
        let Some(len) = self.code_len.checked_add(u16::from(insn.len)) else {
            return false;
        };
        if self.count == MAX_BLOCK_INSNS {
            return false;
        }
        self.insns[self.count] = insn;
        self.offsets[self.count] = self.code_len;
        self.count += 1;
        self.code_len = len;
        true
    }

    pub fn insns(&self) -> &[Insn] {
        &self.insns[..self.count]
    }

    /// Byte offsets of the instructions from the block start, ascending.
    pub fn offsets(&self) -> &[u16] {
        &self.offsets[..self.count]
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Byte offset of instruction `i` from the block start.
    pub fn offset_of(&self, i: usize) -> Option<u16> {
        self.offsets().get(i).copied()
    }

    /// The instruction starting exactly at byte offset `off`.
    pub fn index_at_offset(&self, off: u16) -> Option<usize> {
        self.offsets().binary_search(&off).ok()
    }

    /// Bytes of code the instructions occupy.
    pub fn code_len(&self) -> u16 {
        self.code_len
    }

    /// Why the scan stopped after the last instruction.
    pub fn end_reason(&self) -> StopReason {
        self.end
    }

    /// FNV-1a of the `code_len` code bytes.
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64 hash (start from [`fnv1a(&[])`](fnv1a)) over `bytes`.
pub const fn fnv1a_extend(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// FNV-1a, 64-bit (Fowler/Noll/Vo; offset basis 0xcbf29ce484222325, prime 2^40 + 0x1b3).
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_OFFSET, bytes)
}

/// How many bytes from `rip_linear` the extent allows, and how many instructions.
/// `None`: the code at `rip_linear` does not translate.
#[cfg(feature = "decoder")]
fn extent_bounds(
    fetch: &mut impl CodeFetch,
    rip_linear: u64,
    extent: &Extent,
) -> Option<(u64, usize)> {
    Some(match *extent {
        Extent::Page | Extent::Insns(_) => {
            let room = fetch.page_end(rip_linear)?.wrapping_sub(rip_linear);
            let max = match *extent {
                Extent::Insns(n) => (n as usize).min(MAX_BLOCK_INSNS),
                _ => MAX_BLOCK_INSNS,
            };
            (room, max)
        }
        Extent::Line(n) => {
            let n = u64::from(n);
            let room = if n == 0 { 0 } else { n - rip_linear % n };
            (room, MAX_BLOCK_INSNS)
        }
        Extent::Bytes(n) => (u64::from(n), MAX_BLOCK_INSNS),
    })
}

/// Decodes the block at `rip_linear`: instructions of the supported subset, each lying
/// entirely inside the extent (and before any IP wrap or CS limit), at most
/// [`MAX_BLOCK_INSNS`] (and at most n for `Insns(n)`). Stops before the first
/// instruction that is unsupported, undecodable, crosses the extent end, or whose
/// bytes are not all mapped.
#[cfg(feature = "decoder")]
pub fn scan(fetch: &mut impl CodeFetch, rip_linear: u64, mode: CodeMode, extent: &Extent) -> Block {
    let Some((extent_room, max_insns)) = extent_bounds(fetch, rip_linear, extent) else {
        return Block::empty(StopReason::CodeUnmapped);
    };
    let room = extent_room.min(fetch.code_room(rip_linear, mode));
    let mut block = Block::empty(StopReason::ExtentEnd);
    let mut hash = FNV_OFFSET;
    let mut buf = [0u8; MAX_INSN_LEN];
    block.end = loop {
        if block.count == max_insns {
            // `Insns(n)` ends the extent; the block size cap is the per-exit limit.
            break if max_insns < MAX_BLOCK_INSNS {
                StopReason::ExtentEnd
            } else {
                StopReason::Limit
            };
        }
        let off = u64::from(block.code_len);
        let want = room.saturating_sub(off).min(MAX_INSN_LEN as u64) as usize;
        if want == 0 {
            break StopReason::ExtentEnd;
        }
        let got = fetch
            .fetch(rip_linear.wrapping_add(off), &mut buf[..want])
            .min(want);
        if got == 0 {
            break StopReason::CodeUnmapped;
        }
        match decode(&buf[..got], mode) {
            Ok(insn) => {
                if !block.push(insn) {
                    break StopReason::Limit;
                }
                hash = fnv1a_extend(hash, &buf[..usize::from(insn.len)]);
            }
            Err(DecodeError::Unsupported { .. }) => break StopReason::Unsupported,
            Err(DecodeError::Undecodable) => break StopReason::Undecodable,
            Err(DecodeError::Truncated) => {
                break if got < want {
                    StopReason::CodeUnmapped
                } else if want < MAX_INSN_LEN {
                    StopReason::ExtentEnd
                } else {
                    StopReason::Undecodable
                };
            }
        }
    };
    block.hash = hash;
    block
}

/// Hashes `len` code bytes from `linear` as [`Block::hash`] does; `None` if they are
/// not all mapped.
pub fn hash_code(fetch: &mut impl CodeFetch, linear: u64, len: u16) -> Option<u64> {
    let mut hash = FNV_OFFSET;
    let mut buf = [0u8; 64];
    let mut done = 0usize;
    let len = usize::from(len);
    while done < len {
        let want = (len - done).min(buf.len());
        let got = fetch.fetch(linear.wrapping_add(done as u64), &mut buf[..want]);
        if got < want {
            return None;
        }
        hash = fnv1a_extend(hash, &buf[..want]);
        done += want;
    }
    Some(hash)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::coalesce::insn::{AluOp, Operand, PortSrc, RegRef};
    use crate::x86::guest_mem::SliceMemory;
    use crate::x86::Width;
    use crate::x86::{Cr0, Efer};

    /// Code at linear `base..base + bytes.len()`, with an unmapped hole and a page size.
    pub(crate) struct FakeCode {
        pub base: u64,
        pub bytes: Vec<u8>,
        /// Linear addresses in this range are unmapped.
        pub hole: core::ops::Range<u64>,
        pub page: u64,
        pub room: u64,
    }

    impl FakeCode {
        pub(crate) fn new(base: u64, bytes: &[u8]) -> Self {
            FakeCode {
                base,
                bytes: bytes.to_vec(),
                hole: 0..0,
                page: 4096,
                room: u64::MAX,
            }
        }

        fn mapped(&self, l: u64) -> bool {
            l >= self.base && l < self.base + self.bytes.len() as u64 && !self.hole.contains(&l)
        }
    }

    impl CodeFetch for FakeCode {
        fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> usize {
            for (i, b) in buf.iter_mut().enumerate() {
                let l = linear + i as u64;
                if !self.mapped(l) {
                    return i;
                }
                *b = self.bytes[(l - self.base) as usize];
            }
            buf.len()
        }

        fn page_end(&mut self, linear: u64) -> Option<u64> {
            self.mapped(linear)
                .then(|| (linear / self.page + 1) * self.page)
        }

        fn code_room(&mut self, _: u64, _: CodeMode) -> u64 {
            self.room
        }
    }

    const OUT_DX_AL: u8 = 0xEE;
    const HLT: u8 = 0xF4;

    fn out() -> Op {
        Op::Out {
            width: Width::W8,
            port: PortSrc::Dx,
        }
    }

    fn ops(b: &Block) -> Vec<Op> {
        b.insns().iter().map(|i| i.op).collect()
    }

    /// Bytes at linear 0x1000: out dx, al; mov al, 0x11; out dx, al; inc dx (42, 16-bit
    /// inc dx); out dx, al; hlt.
    fn pic_like() -> Vec<u8> {
        vec![OUT_DX_AL, 0xB0, 0x11, OUT_DX_AL, 0x42, OUT_DX_AL, HLT]
    }

    #[test]
    fn scans_until_unsupported() {
        let mut f = FakeCode::new(0x1000, &pic_like());
        let b = scan(&mut f, 0x1000, CodeMode::Bits16, &Extent::Page);
        assert_eq!(b.end_reason(), StopReason::Unsupported);
        assert_eq!(
            ops(&b),
            vec![
                out(),
                Op::Mov {
                    dst: RegRef::AL,
                    src: Operand::Imm(0x11)
                },
                out(),
                Op::Alu {
                    op: AluOp::Inc,
                    dst: RegRef::new(2, Width::W16),
                    src: Operand::Imm(1)
                },
                out(),
            ]
        );
        assert_eq!(b.offsets(), &[0, 1, 3, 4, 5]);
        assert_eq!(b.code_len(), 6);
        assert_eq!(b.hash(), fnv1a(&pic_like()[..6]));
        assert_eq!(b.offset_of(2), Some(3));
        assert_eq!(b.offset_of(5), None);
        assert_eq!(b.index_at_offset(4), Some(3));
        assert_eq!(b.index_at_offset(2), None);
        assert_eq!(b.index_at_offset(6), None);
        assert_eq!(b.len(), 5);
    }

    #[test]
    fn page_extent_stops_at_page_end_and_crossing_instruction() {
        // 0xFFC: out; out; then mov eax, imm32 (B8 + 4 bytes) crossing 0x1000.
        let mut code = vec![0x90; 0x2000];
        code[0xFFC] = OUT_DX_AL;
        code[0xFFD] = OUT_DX_AL;
        code[0xFFE] = 0xB8;
        let mut f = FakeCode::new(0, &code);
        let b = scan(&mut f, 0xFFC, CodeMode::Bits32, &Extent::Page);
        assert_eq!(ops(&b), vec![out(), out()]);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // An instruction ending exactly at the page end is in; the next is not.
        let mut code = vec![0x90; 0x2000];
        code[0xFFE] = OUT_DX_AL;
        code[0xFFF] = OUT_DX_AL;
        let mut f = FakeCode::new(0, &code);
        let b = scan(&mut f, 0xFFE, CodeMode::Bits32, &Extent::Page);
        assert_eq!(b.len(), 2);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // With a 2 MiB page the same code continues into NOPs up to the 32-insn limit.
        f.page = 2 << 20;
        let b = scan(&mut f, 0xFFE, CodeMode::Bits32, &Extent::Page);
        assert_eq!(b.len(), MAX_BLOCK_INSNS);
        assert_eq!(b.end_reason(), StopReason::Limit);
        assert_eq!(b.code_len(), 32);
    }

    #[test]
    fn unmapped_next_page() {
        // Bytes extent across the page: the next page is unmapped.
        let mut code = vec![0x90; 0x2000];
        code[0xFFE] = OUT_DX_AL;
        code[0xFFF] = 0xB0; // mov al, imm8 whose immediate is in the unmapped page
        let mut f = FakeCode::new(0, &code);
        f.hole = 0x1000..0x2000;
        let b = scan(&mut f, 0xFFE, CodeMode::Bits64, &Extent::Bytes(16));
        assert_eq!(ops(&b), vec![out()]);
        assert_eq!(b.end_reason(), StopReason::CodeUnmapped);
        // The instruction ends exactly at the hole: the next fetch gets nothing.
        code[0xFFF] = OUT_DX_AL;
        let mut f = FakeCode::new(0, &code);
        f.hole = 0x1000..0x2000;
        let b = scan(&mut f, 0xFFE, CodeMode::Bits64, &Extent::Bytes(16));
        assert_eq!(b.len(), 2);
        assert_eq!(b.end_reason(), StopReason::CodeUnmapped);
        // The exiting instruction itself unmapped.
        let b = scan(&mut f, 0x1800, CodeMode::Bits64, &Extent::Page);
        assert!(b.is_empty());
        assert_eq!(b.end_reason(), StopReason::CodeUnmapped);
        let b = scan(&mut f, 0x1800, CodeMode::Bits64, &Extent::Bytes(4));
        assert_eq!(b.end_reason(), StopReason::CodeUnmapped);
    }

    #[test]
    fn line_extent() {
        // 64-byte line: code at 0x1038 sees 8 bytes.
        let mut f = FakeCode::new(0x1000, &[OUT_DX_AL; 0x100]);
        let b = scan(&mut f, 0x1038, CodeMode::Bits32, &Extent::Line(64));
        assert_eq!(b.len(), 8);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // A 2-byte instruction straddling the line end stops the scan before it.
        let mut code = vec![OUT_DX_AL; 0x100];
        code[0x3F] = 0xE6; // out 0x80, al at 0x103F..0x1041
        code[0x40] = 0x80;
        let mut f = FakeCode::new(0x1000, &code);
        let b = scan(&mut f, 0x1038, CodeMode::Bits32, &Extent::Line(64));
        assert_eq!(b.len(), 7);
        assert_eq!(b.code_len(), 7);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // 32-byte line.
        let b = scan(&mut f, 0x1010, CodeMode::Bits32, &Extent::Line(32));
        assert_eq!(b.len(), 16);
        // Line(0) is an empty extent.
        assert!(scan(&mut f, 0x1010, CodeMode::Bits32, &Extent::Line(0)).is_empty());
    }

    #[test]
    fn bytes_extent() {
        // mov dx, 0x3F8 (BA F8 03) ; out dx, al ; out dx, al in 16-bit code.
        let code = [OUT_DX_AL, 0xBA, 0xF8, 0x03, OUT_DX_AL, OUT_DX_AL, HLT];
        let mut f = FakeCode::new(0x7C00, &code);
        let b = scan(&mut f, 0x7C00, CodeMode::Bits16, &Extent::Bytes(5));
        assert_eq!(b.len(), 3);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // Bytes(3) cuts mov dx in half: only the first OUT.
        let b = scan(&mut f, 0x7C00, CodeMode::Bits16, &Extent::Bytes(3));
        assert_eq!(ops(&b), vec![out()]);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        assert_eq!(b.hash(), fnv1a(&[OUT_DX_AL]));
    }

    #[test]
    fn insns_extent() {
        let mut f = FakeCode::new(0, &[OUT_DX_AL; 0x2000]);
        let b = scan(&mut f, 0x10, CodeMode::Bits64, &Extent::Insns(3));
        assert_eq!(b.len(), 3);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // Bounded by the page too.
        let b = scan(&mut f, 0xFFE, CodeMode::Bits64, &Extent::Insns(8));
        assert_eq!(b.len(), 2);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // More than the block holds: the block limit.
        let b = scan(&mut f, 0, CodeMode::Bits64, &Extent::Insns(100));
        assert_eq!(b.len(), MAX_BLOCK_INSNS);
        assert_eq!(b.end_reason(), StopReason::Limit);
    }

    #[test]
    fn instruction_limit() {
        let mut f = FakeCode::new(0, &[0x90; 0x1000]);
        let b = scan(&mut f, 0, CodeMode::Bits32, &Extent::Page);
        assert_eq!(b.len(), MAX_BLOCK_INSNS);
        assert_eq!(b.end_reason(), StopReason::Limit);
        assert_eq!(b.offsets().last(), Some(&31));
    }

    #[test]
    fn undecodable_and_too_long() {
        // out; 0F FF (ud0 needs ModRM in 64-bit? it is undefined/undecodable here) -> use 06.
        let mut f = FakeCode::new(0, &[OUT_DX_AL, 0x06, 0x90]);
        let b = scan(&mut f, 0, CodeMode::Bits64, &Extent::Page);
        assert_eq!(b.len(), 1);
        assert_eq!(b.end_reason(), StopReason::Undecodable);
        // 16 prefixes: more than 15 bytes.
        let mut code = vec![OUT_DX_AL];
        code.extend([0x66; 16]);
        code.push(0x90);
        let mut f = FakeCode::new(0, &code);
        let b = scan(&mut f, 0, CodeMode::Bits32, &Extent::Page);
        assert_eq!(b.len(), 1);
        assert_eq!(b.end_reason(), StopReason::Undecodable);
    }

    #[test]
    fn ip_wrap_and_cs_limit() {
        // Real mode: IP 0xFFFE, two OUTs, then the linear bytes past IP 0xFFFF are not
        // what the CPU would run (it wraps to IP 0).
        let mut f = FakeCode::new(0x1_0000, &[OUT_DX_AL; 0x2_0000]);
        f.room = ip_room(0xFFFE, 0xFFFF, CodeMode::Bits16);
        assert_eq!(f.room, 2);
        let b = scan(&mut f, 0x1_FFFE, CodeMode::Bits16, &Extent::Bytes(64));
        assert_eq!(b.len(), 2);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        assert_eq!(ip_room(0x1234_FFFF, 0xFFFF_FFFF, CodeMode::Bits16), 1);
        assert_eq!(ip_room(0x100, 0x1FF, CodeMode::Bits32), 0x100);
        assert_eq!(ip_room(0x300, 0x1FF, CodeMode::Bits32), 0);
        assert_eq!(ip_room(0xFFFF_FFF0, 0xFFFF_FFFF, CodeMode::Bits32), 0x10);
        assert_eq!(ip_room(0xFFFF_FFF0, 0, CodeMode::Bits64), u64::MAX);
    }

    #[test]
    fn hash_changes_with_one_byte() {
        let mut f = FakeCode::new(0x1000, &pic_like());
        let a = scan(&mut f, 0x1000, CodeMode::Bits16, &Extent::Page);
        f.bytes[2] = 0x12; // mov al, 0x12
        let b = scan(&mut f, 0x1000, CodeMode::Bits16, &Extent::Page);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.code_len(), b.code_len());
        assert_eq!(hash_code(&mut f, 0x1000, b.code_len()), Some(b.hash()));
        f.hole = 0x1003..0x1004;
        assert_eq!(hash_code(&mut f, 0x1000, b.code_len()), None);
    }

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_extend(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
    }

    #[test]
    fn extent_parse_and_names() {
        assert_eq!(Extent::parse("page"), Some(Extent::Page));
        assert_eq!(Extent::parse("line"), Some(Extent::Line(64)));
        assert_eq!(Extent::parse("line:128"), Some(Extent::Line(128)));
        assert_eq!(Extent::parse("bytes:32"), Some(Extent::Bytes(32)));
        assert_eq!(Extent::parse("insns:8"), Some(Extent::Insns(8)));
        for bad in [
            "",
            "pages",
            "page:4",
            "line:",
            "line:48",
            "line:0",
            "line:8192",
            "bytes",
            "bytes:0",
            "bytes:-1",
            "bytes:+4",
            "bytes: 4",
            "bytes:99999",
            "insns:0",
            "insns:33",
            "Page",
        ] {
            assert_eq!(Extent::parse(bad), None, "{bad}");
        }
        for e in [
            Extent::Page,
            Extent::Line(64),
            Extent::Bytes(7),
            Extent::Insns(4),
        ] {
            let s = format!("{e}");
            assert_eq!(Extent::parse(&s), Some(e));
            assert!(s.starts_with(e.name()));
            assert!(Extent::HELP.contains(e.name()));
        }
        assert_eq!(Extent::Line(32).param(), Some(32));
        assert_eq!(Extent::Page.param(), None);
    }

    #[test]
    fn from_insns_builds_offsets() {
        let insns = [
            Insn { op: out(), len: 1 },
            Insn {
                op: Op::Nop,
                len: 3,
            },
            Insn { op: out(), len: 1 },
        ];
        let code = [OUT_DX_AL, 0x0F, 0x1F, 0xC0, OUT_DX_AL];
        let b = Block::from_insns(&insns, StopReason::ExtentEnd, &code).unwrap();
        assert_eq!(b.offsets(), &[0, 1, 4]);
        assert_eq!(b.code_len(), 5);
        assert_eq!(b.hash(), fnv1a(&code));
        assert!(Block::from_insns(
            &[Insn {
                op: Op::Nop,
                len: 1
            }; 33],
            StopReason::Limit,
            &[0x90; 33]
        )
        .is_none());
        assert!(Block::from_insns(&insns, StopReason::Limit, &code[..4]).is_none());
    }

    // ---- GuestCode over real paging structures ----

    fn put64(r: &mut [u8], at: usize, v: u64) {
        r[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// 4-level paging in 8 MiB of RAM: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
    /// Linear 0x0 - 0x1FFFFF: 4 KiB pages, 0x5000 -> phys 0x10_0000, 0x6000 -> 0x7000,
    /// 0x7000 not present. Linear 0x20_0000 - 0x3F_FFFF: one 2 MiB page at phys 0x40_0000.
    fn four_level() -> (Vec<u8>, PagingContext) {
        let mut r = vec![0u8; 8 << 20];
        put64(&mut r, 0x1000, 0x2000 | 3);
        put64(&mut r, 0x2000, 0x3000 | 3);
        put64(&mut r, 0x3000, 0x4000 | 3);
        put64(&mut r, 0x3008, 0x40_0000 | 0x83);
        put64(&mut r, 0x4000 + 5 * 8, 0x10_0000 | 3);
        put64(&mut r, 0x4000 + 6 * 8, 0x7000 | 3);
        let ctx = PagingContext {
            cr0: Cr0::PE.bits() | Cr0::PG.bits(),
            cr3: 0x1000,
            cr4: Cr4::PAE.bits(),
            efer: Efer::LME.bits() | Efer::LMA.bits(),
        };
        (r, ctx)
    }

    #[test]
    fn guest_code_fetch_and_page_end() {
        let (mut r, ctx) = four_level();
        r[0x10_0FFE] = OUT_DX_AL;
        r[0x10_0FFF] = 0xB0; // mov al, 0x22 split across linear 0x5FFF / 0x6000
        r[0x7000] = 0x22;
        r[0x7001] = OUT_DX_AL;
        r[0x40_1234] = OUT_DX_AL;
        let m = SliceMemory::new(&mut r);
        let mut g = GuestCode::new(&m, ctx, 0);
        assert_eq!(g.gpa(0x5FFE), Some(0x10_0FFE));
        assert_eq!(g.page_end(0x5FFE), Some(0x6000));
        assert_eq!(g.page_end(0x20_1234), Some(0x40_0000));
        assert_eq!(g.page_end(0x7000), None);
        let mut buf = [0u8; 8];
        // 2 bytes from the first page, 4096 from the second, then the hole at 0x7000.
        assert_eq!(g.fetch(0x5FFE, &mut buf), 8);
        assert_eq!(&buf[..4], &[OUT_DX_AL, 0xB0, 0x22, OUT_DX_AL]);
        let mut big = [0u8; 0x2000];
        assert_eq!(g.fetch(0x5FFE, &mut big), 0x1002);
        assert_eq!(g.fetch(0x7000, &mut buf), 0);
        // The scan follows the translation across the page for a bytes extent...
        let b = scan(&mut g, 0x5FFE, CodeMode::Bits64, &Extent::Bytes(4));
        assert_eq!(b.len(), 3);
        // ...but the page extent ends at 0x6000, inside mov al, imm8.
        let b = scan(&mut g, 0x5FFE, CodeMode::Bits64, &Extent::Page);
        assert_eq!(b.len(), 1);
        assert_eq!(b.end_reason(), StopReason::ExtentEnd);
        // In the 2 MiB page the page extent runs to the block limit (zero bytes are
        // `add [rax], al`, a supported memory form).
        let b = scan(&mut g, 0x20_1234, CodeMode::Bits64, &Extent::Page);
        assert_eq!(b.len(), MAX_BLOCK_INSNS);
        assert_eq!(b.end_reason(), StopReason::Limit);
    }

    #[test]
    fn guest_code_ram_end_and_no_paging() {
        let mut r = vec![0x90u8; 0x3000];
        r[0x2FFF] = OUT_DX_AL;
        let m = SliceMemory::new(&mut r);
        let mut g = GuestCode::new(&m, PagingContext::default(), 0);
        let mut buf = [0u8; 4];
        assert_eq!(g.fetch(0x2FFE, &mut buf), 2);
        assert_eq!(g.page_end(0x2FFE), Some(0x3000));
        assert_eq!(g.page_end(0x3000), None);
        let b = scan(&mut g, 0x2FFF, CodeMode::Bits32, &Extent::Bytes(8));
        assert_eq!(b.len(), 1);
        assert_eq!(b.end_reason(), StopReason::CodeUnmapped);
        // Real mode with CS: IP 0xFFFF is the last byte before the wrap.
        let mut g = GuestCode::new(&m, PagingContext::default(), 0).with_cs(0x1000, 0xFFFF);
        assert_eq!(g.code_room(0x1000, CodeMode::Bits16), 0x10000);
        assert_eq!(g.code_room(0x1100, CodeMode::Bits16), 0xFF00);
        let mut g2 = GuestCode::new(&m, PagingContext::default(), 0).with_cs(0x0, 0xFFFF);
        assert_eq!(g2.code_room(0xFFFE, CodeMode::Bits16), 2);
        assert_eq!(g.code_room(0x1000, CodeMode::Bits64), u64::MAX);
    }

    #[test]
    fn a_known_page_is_fetched_without_a_walk() {
        let mut r = vec![0x90u8; 0x3000];
        r[0x2010] = OUT_DX_AL;
        let m = SliceMemory::new(&mut r);
        // Without paging linear 0x1000 is physical 0x1000 (nops); told that its page
        // is at 0x2000, the fetch reads there, and only in that page.
        let mut g = GuestCode::new(&m, PagingContext::default(), 0).with_known(0x1234, 0x2567);
        assert_eq!(g.gpa(0x1010), Some(0x2010));
        let mut buf = [0u8; 1];
        assert_eq!(g.fetch(0x1010, &mut buf), 1);
        assert_eq!(buf[0], OUT_DX_AL);
        assert_eq!(g.gpa(0x2010), Some(0x2010));
        assert_eq!(g.gpa(0x0FFF), Some(0x0FFF));
    }

    #[test]
    fn leaf_sizes_for_each_paging_mode() {
        let (mut r, ctx) = four_level();
        // 1 GiB page: PDPTE 1.
        put64(&mut r, 0x2008, 0x83);
        let m = SliceMemory::new(&mut r);
        assert_eq!(leaf_page_size(&m, &ctx, 0x5000), 4096);
        assert_eq!(leaf_page_size(&m, &ctx, 0x20_0000), 2 << 20);
        assert_eq!(leaf_page_size(&m, &ctx, 0x4000_0000), 1 << 30);
        assert_eq!(
            leaf_page_size(&m, &PagingContext::default(), 0x4000_0000),
            4096
        );
        // PAE: PDPT at 0x1000 (entry 0 -> PD 0x3000 of the 4-level tables).
        let pae = PagingContext {
            cr3: 0x2000,
            efer: 0,
            ..ctx
        };
        assert_eq!(leaf_page_size(&m, &pae, 0x20_0000), 2 << 20);
        assert_eq!(leaf_page_size(&m, &pae, 0x5000), 4096);
        // 32-bit paging with PSE: a 4 MiB PDE.
        let mut r2 = vec![0u8; 0x10000];
        r2[0x1004..0x1008].copy_from_slice(&(0x0040_0000u32 | 0x83).to_le_bytes());
        let m2 = SliceMemory::new(&mut r2);
        let p32 = PagingContext {
            cr0: Cr0::PE.bits() | Cr0::PG.bits(),
            cr3: 0x1000,
            cr4: Cr4::PSE.bits(),
            efer: 0,
        };
        assert_eq!(leaf_page_size(&m2, &p32, 0x40_0000), 4 << 20);
        assert_eq!(
            leaf_page_size(&m2, &PagingContext { cr4: 0, ..p32 }, 0x40_0000),
            4096
        );
    }
}
