//! Host micro-benchmark of the IO coalescer (docs/COALESCING.md, docs/BENCHMARKS.md):
//! nanoseconds per IO exit and per emulated instruction, cold (decode + scan +
//! execute) versus block-cache hit (verify hash + execute), for one block per
//! workload of the benchmark suite, next to what one ~2,000-cycle VM exit costs at
//! this host's clock.
//!
//! ```text
//! cargo bench -p sluice-hypervisor --bench coalescer                   # 200 samples
//! cargo bench -p sluice-hypervisor --bench coalescer -- --quick        # 10 samples
//! cargo bench -p sluice-hypervisor --bench coalescer -- --quick --check
//! cargo bench -p sluice-hypervisor --bench coalescer -- --json out.json [WORKLOAD...]
//! ```
//!
//! Options: `--quick` (10 samples of ~50 µs batches instead of 200 of ~250 µs),
//! `--samples N`, `--check`, `--json PATH`, `--dump` (print each workload's code bytes
//! in hex, to check the hand assembly with `objdump -D -b binary -mi386:x86-64`), and
//! workload-name substrings to run only some.
//!
//! Each workload is a hand-assembled 64-bit code sequence in guest RAM (identity
//! mapped with 4-level paging, 2 MiB pages) that starts with the exiting IO
//! instruction and ends with `hlt`, which is outside the emulated subset. The
//! register file, RIP, RFLAGS and the exit qualification are those of the exit on
//! the first instruction, reset before every iteration so that every iteration does
//! identical work. The devices are a stub (`NullDevices`): the LSR at 0x3FD reads
//! 0x60 (transmitter empty), every other port all ones, writes are dropped, no
//! interrupts — the benchmark measures the coalescer, not device models.
//!
//! - COLD: the block cache is emptied before every exit (`BlockCache::clear`, the
//!   state of a fresh cache), so every exit misses, decodes and scans its blocks,
//!   inserts them, and executes. The cost of the `clear` itself is measured on its
//!   own and subtracted (it is printed).
//! - HIT: one cache kept across iterations, warmed once: every exit looks its
//!   blocks up, re-hashes their code bytes and replays them without decoding.
//!
//! A sample is the mean over a batch of iterations (sized to about 250 µs, 50 µs
//! with `--quick`); cold and hit batches alternate so that both see the same host
//! noise, and the tables report medians over the samples. The VMCS is a flat
//! in-memory double (`FlatVmcs`): `SoftVmcs` looks fields up by a linear scan, which
//! would be benchmark overhead; the verification pass runs every workload once
//! with `SoftVmcs` too and requires identical results.
//!
//! `--check` (meant with `--quick`, for tests): exit status 1 unless every workload
//! ran the instruction counts it was assembled for and measured 0 < hit < cold.
//! `--json PATH` writes
//! `[{"workload", "instructions", "io_instructions", "cold_ns_median",
//! "hit_ns_median", "cold_ns_per_insn", "hit_ns_per_insn", "samples"}, ...]`.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hypervisor::coalesce::block::Extent;
use hypervisor::coalesce::cache::BlockCache;
use hypervisor::coalesce::engine::{Coalescer, Outcome, Settings};
use hypervisor::coalesce::exec::{IoEnv, Limits};
use hypervisor::coalesce::insn::StopReason;
use hypervisor::config::{COALESCE_MAX_INSNS_DEFAULT, COALESCE_MAX_STRING_DEFAULT};
use hypervisor::stats::Stats;
use hypervisor::vmx::caps::EntryControls;
use hypervisor::vmx::exit::IoQualification;
use hypervisor::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};
use hypervisor::x86::guest_mem::SliceMemory;
use hypervisor::x86::regs::GuestRegs;
use hypervisor::x86::Width;
use hypervisor::x86::{Cr0, Cr4, Efer, Rflags};

/// The cost of one VM exit the per-instruction numbers are compared with
/// (docs/COALESCING.md: "about 2,000 cycles on bare-metal Intel").
const EXIT_CYCLES: f64 = 2000.0;

// ---------------------------------------------------------------------------------
// Guest memory layout.

const RAM_SIZE: usize = 4 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
/// Workload `i`'s code is at `CODE_BASE + i * CODE_STRIDE`.
const CODE_BASE: u64 = 0x10000;
const CODE_STRIDE: u64 = 0x1000;
/// Source buffer of `rep outsb`.
const STRING_BUF: u64 = 0x30000;
const STRING_LEN: u64 = 64;

/// RFLAGS: reserved bit 1 and IF (no interrupt ever becomes pending here).
/// Access rights: 64-bit code (type 0xB, S, P, L), DPL 0; flat data (type 3, S, P, D/B).
const AR_CODE64: u64 = 0xA09B;
const AR_DATA: u64 = 0xC093;

/// Guest RAM with the page tables and every workload's code and data.
fn build_ram(workloads: &[Workload]) -> Vec<u8> {
    let mut ram = vec![0u8; RAM_SIZE];
    let mut put = |gpa: u64, bytes: &[u8]| {
        let at = gpa as usize;
        ram[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // Identity map the first 4 MiB with 2 MiB pages: P | RW, PS on the leaves.
    put(PML4, &(PDPT | 0x3).to_le_bytes());
    put(PDPT, &(PD | 0x3).to_le_bytes());
    for i in 0..(RAM_SIZE as u64 >> 21) {
        put(PD + 8 * i, &((i << 21) | 0x83).to_le_bytes());
    }
    for w in workloads {
        put(w.base, &w.code);
    }
    let text: Vec<u8> = (0..STRING_LEN as u8).map(|i| b'a' + i % 26).collect();
    put(STRING_BUF, &text);
    ram
}

// ---------------------------------------------------------------------------------
// A tiny assembler for the few 64-bit encodings the workloads use.

#[derive(Default)]
struct Asm {
    bytes: Vec<u8>,
    /// Offset of the exiting IO instruction.
    start: Option<usize>,
}

impl Asm {
    fn here(&self) -> usize {
        self.bytes.len()
    }
    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    /// The next instruction is the one the exit happens on.
    fn exit_here(&mut self) -> &mut Self {
        self.start = Some(self.here());
        self
    }
    fn out_imm_al(&mut self, port: u8) -> &mut Self {
        self.emit(&[0xE6, port])
    }
    fn in_al_imm(&mut self, port: u8) -> &mut Self {
        self.emit(&[0xE4, port])
    }
    fn out_dx_al(&mut self) -> &mut Self {
        self.emit(&[0xEE])
    }
    fn out_dx_eax(&mut self) -> &mut Self {
        self.emit(&[0xEF])
    }
    fn in_al_dx(&mut self) -> &mut Self {
        self.emit(&[0xEC])
    }
    fn in_eax_dx(&mut self) -> &mut Self {
        self.emit(&[0xED])
    }
    fn mov_al(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0xB0, imm])
    }
    fn mov_dx(&mut self, imm: u16) -> &mut Self {
        let [lo, hi] = imm.to_le_bytes();
        self.emit(&[0x66, 0xBA, lo, hi])
    }
    fn mov_eax(&mut self, imm: u32) -> &mut Self {
        self.emit(&[0xB8]);
        self.emit(&imm.to_le_bytes())
    }
    /// `mov al, bl` (88 /r).
    fn mov_al_bl(&mut self) -> &mut Self {
        self.emit(&[0x88, 0xD8])
    }
    /// `mov al, cl` (88 /r).
    fn mov_al_cl(&mut self) -> &mut Self {
        self.emit(&[0x88, 0xC8])
    }
    fn test_al(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0xA8, imm])
    }
    fn or_al(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0x0C, imm])
    }
    /// `add bl, al` (00 /r).
    fn add_bl_al(&mut self) -> &mut Self {
        self.emit(&[0x00, 0xC3])
    }
    /// `inc bl` (FE /0).
    fn inc_bl(&mut self) -> &mut Self {
        self.emit(&[0xFE, 0xC3])
    }
    /// `inc cl` (FE /0).
    fn inc_cl(&mut self) -> &mut Self {
        self.emit(&[0xFE, 0xC1])
    }
    /// `inc dx` (66 FF /0).
    fn inc_dx(&mut self) -> &mut Self {
        self.emit(&[0x66, 0xFF, 0xC2])
    }
    /// `dec dx` (66 FF /1).
    fn dec_dx(&mut self) -> &mut Self {
        self.emit(&[0x66, 0xFF, 0xCA])
    }
    /// `dec ecx` (FF /1).
    fn dec_ecx(&mut self) -> &mut Self {
        self.emit(&[0xFF, 0xC9])
    }
    /// `cmp cl, imm8` (80 /7).
    fn cmp_cl(&mut self, imm: u8) -> &mut Self {
        self.emit(&[0x80, 0xF9, imm])
    }
    /// Jcc rel8 (`0x70 | cc`) to an earlier offset.
    fn jcc(&mut self, opcode: u8, target: usize) -> &mut Self {
        let rel = target as isize - (self.here() as isize + 2);
        let rel = i8::try_from(rel).expect("rel8 branch out of range");
        self.emit(&[opcode, rel as u8])
    }
    fn jz(&mut self, target: usize) -> &mut Self {
        self.jcc(0x74, target)
    }
    fn jnz(&mut self, target: usize) -> &mut Self {
        self.jcc(0x75, target)
    }
    fn jb(&mut self, target: usize) -> &mut Self {
        self.jcc(0x72, target)
    }
    fn rep_outsb(&mut self) -> &mut Self {
        self.emit(&[0xF3, 0x6E])
    }
    /// `hlt`: outside the emulated subset, ends every block.
    fn hlt(&mut self) -> &mut Self {
        self.emit(&[0xF4])
    }
}

// ---------------------------------------------------------------------------------
// The workloads.

/// The exit qualification of an IO exit (SDM Vol. 3C Table 28-5 "Exit Qualification for
/// I/O Instructions").
fn io_qual(size: u8, is_in: bool, string: bool, rep: bool, imm: bool, port: u16) -> u64 {
    u64::from(size - 1)
        | u64::from(is_in) << 3
        | u64::from(string) << 4
        | u64::from(rep) << 5
        | u64::from(imm) << 6
        | u64::from(port) << 16
}

struct Workload {
    name: &'static str,
    /// Where the code is (guest-physical = linear).
    base: u64,
    code: Vec<u8>,
    /// RIP of the exit: the first IO instruction.
    rip: u64,
    regs: GuestRegs,
    qual: u64,
    insn_len: u64,
    /// What one exit must do, counted by hand from the code.
    expect_insns: u64,
    expect_io: u64,
    expect_elements: u64,
    expect_stop: StopReason,
    /// RIP after the exit.
    expect_rip: u64,
}

struct Spec {
    name: &'static str,
    asm: Asm,
    regs: GuestRegs,
    qual: u64,
    insn_len: u64,
    expect_insns: u64,
    expect_io: u64,
    expect_elements: u64,
    expect_stop: StopReason,
    /// Offset where RIP ends; `None`: at the final `hlt`.
    end_off: Option<usize>,
}

fn regs(f: impl FnOnce(&mut GuestRegs)) -> GuestRegs {
    let mut r = GuestRegs::default();
    f(&mut r);
    r
}

fn specs() -> Vec<Spec> {
    let mut v = Vec::new();

    // pic-init: ICW1..ICW4 and the masks for both 8259As, `out 0x80` after each
    // write. 10 writes + 10 delays + 7 `mov al` = 27 instructions, 20 IO.
    {
        let mut a = Asm::default();
        a.exit_here().out_imm_al(0x20).out_imm_al(0x80); // ICW1 master (AL = 0x11)
        a.out_imm_al(0xA0).out_imm_al(0x80); // ICW1 slave
        a.mov_al(0x20).out_imm_al(0x21).out_imm_al(0x80); // ICW2 master: vectors 0x20
        a.mov_al(0x28).out_imm_al(0xA1).out_imm_al(0x80); // ICW2 slave: vectors 0x28
        a.mov_al(0x04).out_imm_al(0x21).out_imm_al(0x80); // ICW3 master: slave on IR2
        a.mov_al(0x02).out_imm_al(0xA1).out_imm_al(0x80); // ICW3 slave: cascade id 2
        a.mov_al(0x01).out_imm_al(0x21).out_imm_al(0x80); // ICW4 master: 8086 mode
        a.out_imm_al(0xA1).out_imm_al(0x80); // ICW4 slave
        a.mov_al(0xFB).out_imm_al(0x21).out_imm_al(0x80); // mask all but the cascade
        a.mov_al(0xFF).out_imm_al(0xA1).out_imm_al(0x80); // mask the slave
        a.hlt();
        v.push(Spec {
            name: "pic-init",
            asm: a,
            regs: regs(|r| r.rax = 0x11),
            qual: io_qual(1, false, false, false, true, 0x20),
            insn_len: 2,
            expect_insns: 27,
            expect_io: 20,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // pit-program: channel 0 mode 2 at 100 Hz, channel 2 mode 3 at 1 kHz, speaker
    // gate on. 14 instructions, 8 IO.
    {
        let mut a = Asm::default();
        a.exit_here().out_imm_al(0x43); // AL = 0x34: ch0, lobyte/hibyte, mode 2
        a.mov_al(0x9C).out_imm_al(0x40); // 11932 = 0x2E9C
        a.mov_al(0x2E).out_imm_al(0x40);
        a.mov_al(0xB6).out_imm_al(0x43); // ch2, lobyte/hibyte, mode 3
        a.mov_al(0xA9).out_imm_al(0x42); // 1193 = 0x04A9
        a.mov_al(0x04).out_imm_al(0x42);
        a.in_al_imm(0x61).or_al(0x03).out_imm_al(0x61); // gate + speaker
        a.hlt();
        v.push(Spec {
            name: "pit-program",
            asm: a,
            regs: regs(|r| r.rax = 0x34),
            qual: io_qual(1, false, false, false, true, 0x43),
            insn_len: 2,
            expect_insns: 14,
            expect_io: 8,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // uart-init: 7 OUTs to COM1 (IER off, DLAB, divisor 1, 8N1, FIFO, MCR), each
    // after `mov dx` / `mov al`. 19 instructions, 7 IO.
    {
        let mut a = Asm::default();
        a.exit_here().out_dx_al(); // DX = 0x3F9, AL = 0: IER off
        a.mov_dx(0x3FB).mov_al(0x80).out_dx_al(); // LCR: DLAB
        a.mov_dx(0x3F8).mov_al(0x01).out_dx_al(); // DLL: 115200 baud
        a.mov_dx(0x3F9).mov_al(0x00).out_dx_al(); // DLM
        a.mov_dx(0x3FB).mov_al(0x03).out_dx_al(); // LCR: 8N1
        a.mov_dx(0x3FA).mov_al(0xC7).out_dx_al(); // FCR: FIFO on, cleared
        a.mov_dx(0x3FC).mov_al(0x0B).out_dx_al(); // MCR: DTR, RTS, OUT2
        a.hlt();
        v.push(Spec {
            name: "uart-init",
            asm: a,
            regs: regs(|r| r.rdx = 0x3F9),
            qual: io_qual(1, false, false, false, false, 0x3F9),
            insn_len: 1,
            expect_insns: 19,
            expect_io: 7,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // uart-puts: the polled write loop, ECX = 64 bytes, exit on the first `in`.
    // The loop head (`mov dx, 0x3fd`) is before the exiting instruction, so the run
    // continues in a second block there. 9 instructions to the first `jnz`, then 10
    // per byte; the default limit of 256 instructions stops it after 9 + 24 * 10 + 7
    // (mov dx, in, test, jz, mov dx, mov al, out): 26 bytes, 52 IO, RIP on `inc bl`.
    {
        let mut a = Asm::default();
        let top = a.here();
        a.mov_dx(0x3FD);
        let poll = a.here();
        a.exit_here().in_al_dx().test_al(0x20).jz(poll);
        a.mov_dx(0x3F8).mov_al_bl().out_dx_al();
        let end = a.here();
        a.inc_bl().dec_ecx().jnz(top);
        a.hlt();
        v.push(Spec {
            name: "uart-puts",
            asm: a,
            regs: regs(|r| {
                r.rcx = 64;
                r.rbx = u64::from(b' ');
                r.rdx = 0x3FD;
            }),
            qual: io_qual(1, true, false, false, false, 0x3FD),
            insn_len: 1,
            expect_insns: u64::from(COALESCE_MAX_INSNS_DEFAULT),
            expect_io: 52,
            expect_elements: 0,
            expect_stop: StopReason::Limit,
            end_off: Some(end),
        });
    }

    // cmos-read: 16 index/data pairs in a loop (`mov al, cl; out 0x70, al;
    // in al, 0x71; add bl, al; inc cl; cmp cl, 16; jb top`), exit on the first `out`:
    // 6 + 15 * 7 = 111 instructions, 32 IO, two blocks.
    {
        let mut a = Asm::default();
        let top = a.here();
        a.mov_al_cl();
        a.exit_here().out_imm_al(0x70).in_al_imm(0x71).add_bl_al();
        a.inc_cl().cmp_cl(16).jb(top);
        a.hlt();
        v.push(Spec {
            name: "cmos-read",
            asm: a,
            regs: GuestRegs::default(),
            qual: io_qual(1, false, false, false, true, 0x70),
            insn_len: 2,
            expect_insns: 111,
            expect_io: 32,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // pci-scan: configuration address/data pairs for devices 0..7 of bus 0, straight
    // line (`mov eax; mov dx, 0xcf8; out dx, eax; mov dx, 0xcfc; in eax, dx`):
    // 3 + 7 * 5 = 38 instructions, 16 IO; a full 32-instruction block, then another.
    {
        let mut a = Asm::default();
        a.exit_here().out_dx_eax(); // EAX = 0x8000_0000, DX = 0xCF8
        a.mov_dx(0xCFC).in_eax_dx();
        for dev in 1..8u32 {
            a.mov_eax(0x8000_0000 | dev << 11)
                .mov_dx(0xCF8)
                .out_dx_eax();
            a.mov_dx(0xCFC).in_eax_dx();
        }
        a.hlt();
        v.push(Spec {
            name: "pci-scan",
            asm: a,
            regs: regs(|r| {
                r.rax = 0x8000_0000;
                r.rdx = 0xCF8;
            }),
            qual: io_qual(4, false, false, false, false, 0xCF8),
            insn_len: 1,
            expect_insns: 38,
            expect_io: 16,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // vga-crtc: 8 index/data pairs to the CRTC (horizontal timing of mode 3),
    // `inc dx` / `dec dx` between index and data port: 1 + 8 * 3 + 7 * 3 = 46
    // instructions, 16 IO, two blocks.
    {
        const CRTC: [u8; 8] = [0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F];
        let mut a = Asm::default();
        a.exit_here().out_dx_al(); // DX = 0x3D4, AL = index 0
        for (i, &val) in CRTC.iter().enumerate() {
            a.inc_dx().mov_al(val).out_dx_al();
            if i + 1 < CRTC.len() {
                a.dec_dx().mov_al(i as u8 + 1).out_dx_al();
            }
        }
        a.hlt();
        v.push(Spec {
            name: "vga-crtc",
            asm: a,
            regs: regs(|r| r.rdx = 0x3D4),
            qual: io_qual(1, false, false, false, false, 0x3D4),
            insn_len: 1,
            expect_insns: 46,
            expect_io: 16,
            expect_elements: 0,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }

    // rep-outsb: 64 bytes from DS:RSI to port 0x80. 1 instruction, 64 elements.
    {
        let mut a = Asm::default();
        a.exit_here().rep_outsb();
        a.hlt();
        v.push(Spec {
            name: "rep-outsb",
            asm: a,
            regs: regs(|r| {
                r.rcx = STRING_LEN;
                r.rsi = STRING_BUF;
                r.rdx = 0x80;
            }),
            qual: io_qual(1, false, true, true, false, 0x80),
            insn_len: 2,
            expect_insns: 1,
            expect_io: 1,
            expect_elements: STRING_LEN,
            expect_stop: StopReason::Unsupported,
            end_off: None,
        });
    }
    v
}

fn workloads() -> Vec<Workload> {
    specs()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let base = CODE_BASE + i as u64 * CODE_STRIDE;
            let start = s.asm.start.expect("workload without an exit instruction");
            // The final byte is the `hlt`.
            let end = s.end_off.unwrap_or(s.asm.bytes.len() - 1);
            Workload {
                name: s.name,
                base,
                rip: base + start as u64,
                regs: s.regs,
                qual: s.qual,
                insn_len: s.insn_len,
                expect_insns: s.expect_insns,
                expect_io: s.expect_io,
                expect_elements: s.expect_elements,
                expect_stop: s.expect_stop,
                expect_rip: base + end as u64,
                code: s.asm.bytes,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The VMCS, the devices and one exit.

/// The VMCS fields the coalescer reads or writes, in a flat array; every other
/// field reads 0, as in `SoftVmcs`.
#[derive(Clone)]
struct FlatVmcs {
    values: [u64; FLAT_SLOTS],
}

/// Slots of `FlatVmcs::slot`.
const FLAT_SLOTS: usize = 21;

impl FlatVmcs {
    fn slot(field: VmcsField) -> Option<usize> {
        Some(match field {
            VmcsField::EntryControls => 0,
            VmcsField::GuestCr0 => 1,
            VmcsField::GuestCr3 => 2,
            VmcsField::GuestCr4 => 3,
            VmcsField::GuestIa32Efer => 4,
            VmcsField::GuestCsAccessRights => 5,
            VmcsField::GuestSsAccessRights => 6,
            VmcsField::GuestEsBase => 7,
            VmcsField::GuestCsBase => 8,
            VmcsField::GuestSsBase => 9,
            VmcsField::GuestDsBase => 10,
            VmcsField::GuestFsBase => 11,
            VmcsField::GuestGsBase => 12,
            VmcsField::GuestCsLimit => 13,
            VmcsField::GuestRip => 14,
            VmcsField::GuestRflags => 15,
            VmcsField::GuestDr7 => 16,
            VmcsField::GuestInterruptibilityState => 17,
            VmcsField::ExitQualification => 18,
            VmcsField::ExitInstructionLength => 19,
            // The engine writes RSP back (PUSH/POP/CALL/RET run in the coalescer).
            VmcsField::GuestRsp => 20,
            _ => return None,
        })
    }
}

impl Vmcs for FlatVmcs {
    #[inline]
    fn read(&self, field: VmcsField) -> u64 {
        Self::slot(field).map_or(0, |i| self.values[i])
    }

    #[inline]
    fn write(&mut self, field: VmcsField, value: u64) {
        let i = Self::slot(field).unwrap_or_else(|| panic!("unexpected VMCS write {field:?}"));
        self.values[i] = value & field.width().value_mask();
    }
}

/// The guest state of the exit on a workload's first instruction.
fn exit_vmcs<V: Vmcs>(mut v: V, w: &Workload) -> V {
    v.write(
        VmcsField::EntryControls,
        u64::from(EntryControls::IA32E_MODE_GUEST.bits()),
    );
    v.write(
        VmcsField::GuestCr0,
        Cr0::PE.bits() | Cr0::ET.bits() | Cr0::NE.bits() | Cr0::WP.bits() | Cr0::PG.bits(),
    );
    v.write(VmcsField::GuestCr3, PML4);
    v.write(VmcsField::GuestCr4, Cr4::PAE.bits());
    v.write(
        VmcsField::GuestIa32Efer,
        Efer::LME.bits() | Efer::LMA.bits(),
    );
    v.write(VmcsField::GuestCsAccessRights, AR_CODE64);
    v.write(VmcsField::GuestSsAccessRights, AR_DATA);
    v.write(VmcsField::GuestCsLimit, 0xFFFF_FFFF);
    v.write(VmcsField::ExitQualification, w.qual);
    v.write(VmcsField::ExitInstructionLength, w.insn_len);
    reset_exit(&mut v, w);
    v
}

/// What a coalesced exit changes in the VMCS, back to the exit's values.
#[inline]
fn reset_exit<V: Vmcs>(v: &mut V, w: &Workload) {
    v.write(VmcsField::GuestRip, w.rip);
    v.write(VmcsField::GuestRflags, (Rflags::FIXED1 | Rflags::IF).bits());
    v.write(VmcsField::GuestInterruptibilityState, 0);
}

/// Stub devices: LSR reads "transmitter empty", everything else all ones, writes
/// dropped, never an interrupt.
struct NullDevices;

impl IoEnv for NullDevices {
    #[inline]
    fn io_read(&mut self, port: u16, width: Width) -> u32 {
        if port == 0x3FD {
            0x60
        } else {
            width.mask() as u32
        }
    }

    #[inline]
    fn io_write(&mut self, port: u16, _width: Width, value: u32) {
        black_box((port, value));
    }

    #[inline]
    fn interrupt_pending(&mut self) -> bool {
        false
    }
}

fn settings() -> Settings {
    Settings {
        enabled: true,
        extent: Extent::Page,
        limits: Limits {
            max_insns: COALESCE_MAX_INSNS_DEFAULT,
            max_string_elements: COALESCE_MAX_STRING_DEFAULT,
            max_quiet: hypervisor::config::COALESCE_MAX_QUIET_DEFAULT,
        },
    }
}

/// One IO exit of workload `w` from its initial state.
#[inline(never)]
fn exit_once<V: Vmcs>(
    w: &Workload,
    cache: &mut BlockCache,
    vmcs: &mut V,
    regs: &mut GuestRegs,
    ram: &mut [u8],
    stats: &mut Stats,
) -> Outcome {
    reset_exit(vmcs, w);
    *regs = w.regs;
    let mut mem = SliceMemory::new(ram);
    // What the run loop reads from the VMCS once per exit and hands the coalescer.
    let io = IoQualification::from_qualification(w.qual);
    Coalescer::new(settings(), cache).handle(
        &io,
        w.insn_len,
        vmcs,
        regs,
        &mut mem,
        &mut NullDevices,
        &mut stats.io,
    )
}

/// Everything one workload's measurement touches.
struct Rig<'w> {
    w: &'w Workload,
    ram: Vec<u8>,
    vmcs: FlatVmcs,
    regs: GuestRegs,
    stats: Stats,
    cold_cache: Box<BlockCache>,
    hit_cache: Box<BlockCache>,
}

impl<'w> Rig<'w> {
    fn new(w: &'w Workload, ram: &[u8]) -> Self {
        let mut rig = Rig {
            w,
            ram: ram.to_vec(),
            vmcs: exit_vmcs(
                FlatVmcs {
                    values: [0; FLAT_SLOTS],
                },
                w,
            ),
            regs: w.regs,
            stats: Stats::new(),
            cold_cache: Box::default(),
            hit_cache: Box::default(),
        };
        rig.hit(); // warm the hit cache
        rig
    }

    #[inline(never)]
    fn cold(&mut self) -> Outcome {
        self.cold_cache.clear();
        exit_once(
            self.w,
            &mut self.cold_cache,
            &mut self.vmcs,
            &mut self.regs,
            &mut self.ram,
            &mut self.stats,
        )
    }

    #[inline(never)]
    fn hit(&mut self) -> Outcome {
        exit_once(
            self.w,
            &mut self.hit_cache,
            &mut self.vmcs,
            &mut self.regs,
            &mut self.ram,
            &mut self.stats,
        )
    }

    #[inline(never)]
    fn clear_only(&mut self) {
        self.cold_cache.clear();
        black_box(&mut self.cold_cache);
    }
}

// ---------------------------------------------------------------------------------
// Verification: every workload does exactly what it was assembled to do.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExitResult {
    outcome: Outcome,
    regs: GuestRegs,
    rip: u64,
    rflags: u64,
    insns: u64,
    io: u64,
    elements: u64,
    stop: Option<StopReason>,
    hits: u64,
    misses: u64,
}

fn observe<V: Vmcs>(
    w: &Workload,
    cache: &mut BlockCache,
    mut vmcs: V,
    ram: &mut [u8],
) -> ExitResult {
    let mut stats = Stats::new();
    let mut regs = GuestRegs::default();
    let outcome = exit_once(w, cache, &mut vmcs, &mut regs, ram, &mut stats);
    let io = stats.io;
    ExitResult {
        outcome,
        regs,
        rip: vmcs.read(VmcsField::GuestRip),
        rflags: vmcs.read(VmcsField::GuestRflags),
        insns: io.emulated,
        io: io.instructions,
        elements: io.string_elements,
        stop: StopReason::ALL
            .into_iter()
            .find(|r| io.stops[r.index()] != 0),
        hits: io.cache_hits,
        misses: io.cache_misses,
    }
}

/// Checks one workload; returns the blocks per exit (cache lookups) or what is wrong.
fn verify(w: &Workload, ram: &[u8]) -> Result<u64, String> {
    let mut ram = ram.to_vec();
    let flat = || {
        exit_vmcs(
            FlatVmcs {
                values: [0; FLAT_SLOTS],
            },
            w,
        )
    };
    let mut cache = Box::<BlockCache>::default();
    let cold = observe(w, &mut cache, flat(), &mut ram);
    let hit = observe(w, &mut cache, flat(), &mut ram);
    let soft = observe(
        w,
        &mut Box::default(),
        exit_vmcs(SoftVmcs::new(), w),
        &mut ram,
    );
    let mut errs = Vec::new();
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            errs.push(format!("{what} {got}, expected {want}"));
        }
    };
    expect("instructions", cold.insns, w.expect_insns);
    expect("IO instructions", cold.io, w.expect_io);
    expect("string elements", cold.elements, w.expect_elements);
    expect("end RIP", cold.rip, w.expect_rip);
    expect("cold hits", cold.hits, 0);
    expect("hit misses", hit.misses, 0);
    expect("hit lookups", hit.hits, cold.misses);
    if cold.outcome != Outcome::Done {
        errs.push(format!("outcome {:?}", cold.outcome));
    }
    if cold.stop != Some(w.expect_stop) {
        errs.push(format!(
            "stop {:?}, expected {:?}",
            cold.stop, w.expect_stop
        ));
    }
    let same = |a: &ExitResult, b: &ExitResult| {
        (
            a.outcome, a.regs, a.rip, a.rflags, a.insns, a.io, a.elements, a.stop,
        ) == (
            b.outcome, b.regs, b.rip, b.rflags, b.insns, b.io, b.elements, b.stop,
        )
    };
    if !same(&cold, &hit) {
        errs.push(format!("cache hit differs: {hit:?} vs cold {cold:?}"));
    }
    if !same(&cold, &soft) {
        errs.push(format!("SoftVmcs run differs: {soft:?} vs {cold:?}"));
    }
    if errs.is_empty() {
        Ok(cold.misses)
    } else {
        Err(errs.join("; "))
    }
}

// ---------------------------------------------------------------------------------
// Timing.

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Mean nanoseconds per call of `f` over `iters` calls.
fn batch(iters: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// Iterations that make a batch of about `target`.
fn batch_size(target: Duration, mut f: impl FnMut()) -> u64 {
    let mut n = 16u64;
    loop {
        let ns = batch(n, &mut f) * n as f64;
        if ns >= 1e6 || n >= 1 << 24 {
            let per = ns / n as f64;
            return ((target.as_nanos() as f64 / per) as u64).max(1);
        }
        n *= 4;
    }
}

/// TSC ticks per nanosecond, over about 100 ms.
fn tsc_ghz() -> f64 {
    // SAFETY: RDTSC is unprivileged and present on every x86-64 CPU.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (t0, c0) = (Instant::now(), tsc());
    while t0.elapsed() < Duration::from_millis(100) {
        std::hint::spin_loop();
    }
    let (c1, dt) = (tsc(), t0.elapsed());
    c1.wrapping_sub(c0) as f64 / dt.as_nanos() as f64
}

struct Measured {
    name: &'static str,
    insns: u64,
    io: u64,
    elements: u64,
    blocks: u64,
    stop: StopReason,
    /// Medians of ns per exit; cold with the cache clear subtracted.
    cold: f64,
    hit: f64,
    /// Median of `BlockCache::clear` alone, subtracted from `cold`.
    clear: f64,
    samples: usize,
}

fn measure(w: &Workload, ram: &[u8], blocks: u64, samples: usize, target: Duration) -> Measured {
    let mut rig = Rig::new(w, ram);
    let n_cold = batch_size(target, || {
        black_box(rig.cold());
    });
    let n_hit = batch_size(target, || {
        black_box(rig.hit());
    });
    let n_clear = batch_size(target, || rig.clear_only());
    let (mut cold, mut hit, mut clear) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        cold.push(batch(n_cold, || {
            black_box(rig.cold());
        }));
        hit.push(batch(n_hit, || {
            black_box(rig.hit());
        }));
        clear.push(batch(n_clear, || rig.clear_only()));
    }
    let clear = median(&mut clear);
    Measured {
        name: w.name,
        insns: w.expect_insns,
        io: w.expect_io,
        elements: w.expect_elements,
        blocks,
        stop: w.expect_stop,
        cold: median(&mut cold) - clear,
        hit: median(&mut hit),
        clear,
        samples,
    }
}

// ---------------------------------------------------------------------------------
// Output.

fn json(results: &[Measured]) -> String {
    let rows: Vec<String> = results
        .iter()
        .map(|m| {
            format!(
                "  {{\"workload\": \"{}\", \"instructions\": {}, \"io_instructions\": {}, \
                 \"cold_ns_median\": {:.1}, \"hit_ns_median\": {:.1}, \
                 \"cold_ns_per_insn\": {:.2}, \"hit_ns_per_insn\": {:.2}, \"samples\": {}}}",
                m.name,
                m.insns,
                m.io,
                m.cold,
                m.hit,
                m.cold / m.insns as f64,
                m.hit / m.insns as f64,
                m.samples
            )
        })
        .collect();
    format!("[\n{}\n]\n", rows.join(",\n"))
}

fn print_table(results: &[Measured], ghz: f64) {
    let exit_ns = EXIT_CYCLES / ghz;
    println!(
        "TSC {:.3} GHz (measured over 100 ms): one ~{}-cycle VM exit = {:.0} ns",
        ghz, EXIT_CYCLES as u64, exit_ns
    );
    println!(
        "medians over {} samples; cold = fresh block cache every exit (its clear, {:.0}-{:.0} ns, \
         subtracted), hit = warm cache",
        results.first().map_or(0, |m| m.samples),
        results
            .iter()
            .map(|m| m.clear)
            .fold(f64::INFINITY, f64::min),
        results.iter().map(|m| m.clear).fold(0.0, f64::max),
    );
    println!();
    println!(
        "{:<12} {:>5} {:>4} {:>5} {:>3} {:<12} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "workload",
        "insns",
        "io",
        "elems",
        "blk",
        "stop",
        "cold ns",
        "hit ns",
        "cold/",
        "cold",
        "hit",
        "cold",
        "hit"
    );
    println!(
        "{:<12} {:>5} {:>4} {:>5} {:>3} {:<12} {:>9} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "",
        "",
        "",
        "",
        "",
        "",
        "/exit",
        "/exit",
        "hit",
        "ns/insn",
        "ns/insn",
        "cyc/insn",
        "cyc/insn"
    );
    for m in results {
        let n = m.insns as f64;
        println!(
            "{:<12} {:>5} {:>4} {:>5} {:>3} {:<12} {:>9.0} {:>9.0} {:>6.2} {:>8.2} {:>8.2} {:>8.1} {:>8.1}",
            m.name,
            m.insns,
            m.io,
            m.elements,
            m.blocks,
            m.stop.name(),
            m.cold,
            m.hit,
            m.cold / m.hit,
            m.cold / n,
            m.hit / n,
            m.cold / n * ghz,
            m.hit / n * ghz,
        );
    }
    println!();
    println!(
        "insns: instructions emulated in the one exit; io: IO instructions among them; \
         elems: string elements;"
    );
    println!(
        "blk: blocks looked up per exit; compare cyc/insn (and ns/exit) with the {} cycles \
         ({:.0} ns) of one VM exit.",
        EXIT_CYCLES as u64, exit_ns
    );
}

struct Args {
    quick: bool,
    check: bool,
    dump: bool,
    json: Option<String>,
    samples: Option<usize>,
    filters: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        check: false,
        dump: false,
        json: None,
        samples: None,
        filters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--check" => a.check = true,
            "--dump" => a.dump = true,
            "--json" => a.json = Some(it.next().ok_or("--json needs a path")?),
            "--samples" => {
                let n = it.next().ok_or("--samples needs a number")?;
                a.samples = Some(n.parse().map_err(|_| format!("bad --samples {n}"))?);
            }
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                return Err("usage: coalescer [--quick] [--check] [--samples N] \
                            [--json PATH] [--dump] [WORKLOAD...]"
                    .into())
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => a.filters.push(s.to_string()),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let all = workloads();
    let ram = build_ram(&all);
    let selected: Vec<&Workload> = all
        .iter()
        .filter(|w| {
            args.filters.is_empty() || args.filters.iter().any(|f| w.name.contains(f.as_str()))
        })
        .collect();
    if selected.is_empty() {
        eprintln!("no workload matches {:?}", args.filters);
        return ExitCode::from(2);
    }

    if args.dump {
        // For checking the hand assembly: `objdump -D -b binary -mi386:x86-64`.
        for w in &selected {
            let hex: Vec<String> = w.code.iter().map(|b| format!("{b:02x}")).collect();
            println!("{} {:#x} {}", w.name, w.rip - w.base, hex.join(""));
        }
        return ExitCode::SUCCESS;
    }

    let mut failed = false;
    let mut checked = Vec::new();
    for w in &selected {
        match verify(w, &ram) {
            Ok(blocks) => checked.push((*w, blocks)),
            Err(e) => {
                eprintln!("{}: FAILED verification: {e}", w.name);
                failed = true;
            }
        }
    }

    let samples = args.samples.unwrap_or(if args.quick { 10 } else { 200 });
    let target = Duration::from_micros(if args.quick { 50 } else { 250 });
    let ghz = tsc_ghz();
    let results: Vec<Measured> = checked
        .iter()
        .map(|&(w, blocks)| measure(w, &ram, blocks, samples, target))
        .collect();

    print_table(&results, ghz);

    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, json(&results)) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::from(2);
        }
        println!("wrote {path}");
    }

    if args.check {
        for m in &results {
            if !(m.hit > 0.0 && m.cold > 0.0 && m.hit < m.cold) {
                eprintln!(
                    "{}: CHECK FAILED: cold {:.1} ns, hit {:.1} ns per exit",
                    m.name, m.cold, m.hit
                );
                failed = true;
            }
        }
        if failed {
            eprintln!("check FAILED");
            return ExitCode::FAILURE;
        }
        println!(
            "check passed: {} workloads, instruction counts as assembled, 0 < hit < cold",
            results.len()
        );
    } else if failed {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
