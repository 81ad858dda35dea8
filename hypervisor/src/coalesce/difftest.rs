//! Differential tests of the coalescer (DESIGN "The coalescing contract").
//!
//! The *coalesced* side runs [`Coalescer::handle`] on an IO exit exactly as the kernel
//! does: a [`SoftVmcs`] holding the guest state and the exit fields of the first
//! instruction, [`GuestRegs`], guest RAM in a [`SliceMemory`] (identity-mapped 4 KiB
//! pages in 64-bit mode, flat or real-mode segments otherwise) and an [`IoEnv`] over
//! an [`IoBus`] with a fixed device set.
//!
//! The *reference* executes the same code one IO instruction per "exit", written
//! without `exec`, `decode` or `block`:
//! - instructions are decoded by a second decoder (iced-x86);
//! - MOV, NOP and branches are executed here; ALU results and status flags come from
//!   the host CPU (inline asm between `popfq` and `pushfq`). Only architecturally
//!   defined flags are taken from the host (our own table, cross-checked against
//!   `exec::defined_flags`); the undefined ones take the value the coalescer documents
//!   ([`exec::alu`]), so both sides follow the same branches and RFLAGS can then be
//!   compared exactly;
//! - every IO instruction goes through [`exits::handle_exit`] with a VMCS carrying the
//!   exit reason, qualification, instruction length and instruction-information
//!   fields of that instruction: the single-exit path, which also checks that VMCS
//!   plumbing. A REP string instruction is done one element per exit (with the count
//!   register temporarily 1, then set to its real value) so the run can be compared
//!   between any two iterations;
//! - after every port access the device interrupt lines are brought onto the PIC
//!   (`Machine::poll`), as the kernel's run loop does after every exit.
//!
//! The reference runs from the same initial state until it has executed as many
//! instructions and string elements as the coalescer reports; RIP must then be the
//! coalescer's final RIP, and general registers, RSP, RFLAGS, guest RAM, the port
//! trace, device state and the bus's unknown-port counters must be identical. It
//! fails if it reaches a point the contract makes a mandatory stop (an interrupt
//! deliverable, CPL > IOPL for a later IO instruction, RFLAGS.TF, the instruction or
//! string-element limit, a faulting string element, an instruction outside its own
//! subset) before getting there.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::ops::RangeInclusive;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind};

use super::block::Extent;
use super::cache::BlockCache;
use super::engine::{Coalescer, Outcome, Settings};
use super::exec::{self, Limits};
use super::insn::{AluOp, CodeMode, StopReason};
use crate::devices::board::Machine;
use crate::devices::board::Ticks;
use crate::devices::bus::{ConsoleSink, IoBus, PortDevice, UnknownPort, TOP_UNKNOWN};
use crate::devices::pic8259::PicPair;
use crate::devices::pit8254::{PIT_PORTS, PORT_B};
use crate::stats::Stats;
use crate::timebase::Timebase;
use crate::vcpu::exit::VmExit;
use crate::vcpu::exits::MsrFile;
use crate::vcpu::exits::{self, ExitAction, ExitContext, HostOps, VcpuConfig};
use crate::vcpu::run::BoardIo;
use crate::vmx::caps::EntryControls;
use crate::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};
use crate::x86::guest_mem::{translate, Access, GuestMemory, SliceMemory};
use crate::x86::regs::GuestRegs;
use crate::x86::Width;
use crate::x86::{Cr4, Efer};

// ---------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------

/// xorshift64*: small, deterministic, good enough for test generation.
#[derive(Clone)]
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num / den`.
    pub(super) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------

/// One port access as a device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PortAccess {
    pub is_in: bool,
    pub port: u16,
    pub size: u8,
    pub value: u32,
}

/// Ports of the tracing device: reads return a deterministic pseudo-random sequence
/// that also depends on every value written, so order and values both matter.
pub(super) const NOISE_PORTS: RangeInclusive<u16> = 0xE0..=0xE7;
pub(super) const COM1: u16 = 0x3F8;

struct Noise {
    state: u64,
}

impl Noise {
    fn read(&mut self, port: u16) -> u32 {
        self.state = (self.state ^ u64::from(port))
            .wrapping_mul(0x5851_F42D_4C95_7F2D)
            .wrapping_add(0x1405_7B7E_F767_814F);
        (self.state >> 29) as u32
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.state ^= (u64::from(value) << 16) ^ (u64::from(size) << 8) ^ u64::from(port);
        self.state = self.state.rotate_left(17);
    }
}

#[derive(Default)]
pub(super) struct Sink(pub Vec<u8>);

impl ConsoleSink for Sink {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// The device set of one run: the virtual PC (UART at 0x3F8, PIT, PIC pair) and the
/// tracing device, every access recorded in `trace`.
pub(super) struct Board {
    pub machine: Machine<Sink>,
    noise: RefCell<Noise>,
    pub trace: RefCell<Vec<PortAccess>>,
}

/// The bus's view of the board for one port range.
struct BoardPort<'a> {
    board: &'a Board,
}

impl PortDevice for BoardPort<'_> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        let v = self.board.dispatch_read(port, size);
        self.board.trace.borrow_mut().push(PortAccess {
            is_in: true,
            port,
            size,
            value: v,
        });
        v
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.board.trace.borrow_mut().push(PortAccess {
            is_in: false,
            port,
            size,
            value,
        });
        self.board.dispatch_write(port, size, value);
    }
}

/// What the bus counted for unclaimed ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unknown {
    reads: u64,
    writes: u64,
    top: [Option<UnknownPort>; TOP_UNKNOWN],
}

impl Board {
    pub(super) fn new(seed: u64) -> Board {
        Board {
            machine: Machine::new(Sink::default()),
            noise: RefCell::new(Noise {
                state: seed ^ 0xA5A5_5A5A_0F0F_F0F0,
            }),
            trace: RefCell::new(Vec::new()),
        }
    }

    fn ranges(&self) -> Vec<RangeInclusive<u16>> {
        let [a, b, c] = PicPair::ports();
        vec![
            self.machine.uart.borrow().ports(),
            PIT_PORTS,
            PORT_B..=PORT_B,
            a,
            b,
            c,
            NOISE_PORTS,
        ]
    }

    fn dispatch_read(&self, port: u16, size: u8) -> u32 {
        let m = &self.machine;
        if self.machine.uart.borrow().ports().contains(&port) {
            let mut d = &m.uart;
            d.read(port, size)
        } else if PIT_PORTS.contains(&port) || port == PORT_B {
            let mut d = &m.pit;
            d.read(port, size)
        } else if NOISE_PORTS.contains(&port) {
            self.noise.borrow_mut().read(port)
        } else {
            let mut d = &m.pic;
            d.read(port, size)
        }
    }

    fn dispatch_write(&self, port: u16, size: u8, value: u32) {
        let m = &self.machine;
        if self.machine.uart.borrow().ports().contains(&port) {
            let mut d = &m.uart;
            d.write(port, size, value)
        } else if PIT_PORTS.contains(&port) || port == PORT_B {
            let mut d = &m.pit;
            d.write(port, size, value)
        } else if NOISE_PORTS.contains(&port) {
            self.noise.borrow_mut().write(port, size, value)
        } else {
            let mut d = &m.pic;
            d.write(port, size, value)
        }
    }

    /// Runs `f` with an IO bus over this board; also returns the bus's unknown-port
    /// counters afterwards.
    pub(super) fn with_bus<R>(&self, f: impl FnOnce(&mut IoBus<'_>) -> R) -> (R, Unknown) {
        let ranges = self.ranges();
        let mut ports: Vec<BoardPort<'_>> =
            ranges.iter().map(|_| BoardPort { board: self }).collect();
        let mut bus = IoBus::new();
        for (r, p) in ranges.iter().zip(ports.iter_mut()) {
            bus.register(r.clone(), p).expect("board port ranges");
        }
        let r = f(&mut bus);
        let unknown = Unknown {
            reads: bus.unknown_reads(),
            writes: bus.unknown_writes(),
            top: bus.unknown_top(),
        };
        (r, unknown)
    }

    /// Device lines onto the PIC (the kernel's `Machine::sync` before each entry);
    /// the guest-visible clock never moves in these tests.
    pub(super) fn poll(&self) -> bool {
        self.machine.poll(0);
        self.machine.interrupt_pending()
    }

    /// Writes done before the run (device set-up), then forgotten by the trace.
    pub(super) fn init(&self, writes: &[(u16, u8)]) {
        for &(port, v) in writes {
            self.dispatch_write(port, 1, u32::from(v));
        }
        self.poll();
    }

    /// Device state after a run, read through side channels (getters, Debug) and
    /// then by reading every UART register back (the same destructive reads on both
    /// sides).
    fn snapshot(&self, unknown: Unknown) -> BoardSnap {
        self.poll();
        let m = &self.machine;
        let mut uart = String::new();
        {
            let u = m.uart.borrow();
            let _ = write!(
                uart,
                "stats {:?} divisor {:#x} mcr {:#x} rx_len {} pending {:?} irq {} sent {:02x?}",
                u.stats(),
                u.divisor(),
                u.modem_control(),
                u.rx_len(),
                u.pending_interrupt(),
                u.irq_line(),
                u.sink().0
            );
        }
        {
            let mut u = m.uart.borrow_mut();
            for off in [3u16, 1, 2, 4, 5, 6, 7, 0] {
                let _ = write!(uart, " r{off}={:#04x}", u.read(COM1 + off, 1));
            }
        }
        BoardSnap {
            trace: self.trace.borrow().clone(),
            uart,
            pic: format!("{:?}", m.pic.borrow()),
            pit: format!("{:?}", m.pit.borrow()),
            noise: self.noise.borrow().state,
            unknown,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BoardSnap {
    trace: Vec<PortAccess>,
    uart: String,
    pic: String,
    pit: String,
    noise: u64,
    unknown: Unknown,
}

/// The devices as the run loop hands them to the coalescer ([`BoardIo`]), over this
/// board's traced bus, with a clock that never moves (a host whose TSC stays at 0).
pub(super) fn board_io<'a, 'b>(
    bus: &'a mut IoBus<'b>,
    board: &'a Board,
    host: &'a mut NullHost,
) -> BoardIo<'a, 'b, Sink, NullHost> {
    BoardIo {
        bus,
        machine: &board.machine,
        host,
        timebase: Timebase::new(0, 1),
        ticks: Ticks::default(),
    }
}

/// PIC pair initialised (vectors 0x20/0x28, edge-triggered, cascade on IRQ2), only
/// IRQ4 (COM1) unmasked.
pub(super) const PIC_INIT_IRQ4: [(u16, u8); 10] = [
    (0x20, 0x11),
    (0x21, 0x20),
    (0x21, 0x04),
    (0x21, 0x01),
    (0x21, 0xEF),
    (0xA0, 0x11),
    (0xA1, 0x28),
    (0xA1, 0x02),
    (0xA1, 0x01),
    (0xA1, 0xFF),
];

// ---------------------------------------------------------------------------
// Guest set-up
// ---------------------------------------------------------------------------

pub(super) const RAM: usize = 0x20000;
/// 64-bit mode: PML4, PDPT, PD, PT at these guest-physical pages.
const PML4: u64 = 0x1000;
const PT: u64 = 0x4000;
pub(super) const CODE: u64 = 0x8000;
pub(super) const DATA: u64 = 0x10000;

const RF_TF: u64 = crate::x86::Rflags::TF.bits();
const RF_IF: u64 = crate::x86::Rflags::IF.bits();
const RF_DF: u64 = crate::x86::Rflags::DF.bits();
const STATUS: u64 = crate::x86::Rflags::STATUS;

/// One test case: the guest at an IO exit and the coalescer's settings.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub mode: CodeMode,
    /// Code bytes placed at linear `cs_base + ip` (64-bit: `ip`).
    pub code: Vec<u8>,
    pub ip: u64,
    /// ES, CS, SS, DS, FS, GS bases (the VMCS fields; 64-bit mode ignores the first 4).
    pub seg_base: [u64; 6],
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
    pub(super) fn new(mode: CodeMode, code: Vec<u8>) -> Case {
        let (ip, seg_base) = match mode {
            CodeMode::Bits16 => (CODE - 0x7000, [DATA, 0x7000, DATA, DATA, DATA, DATA]),
            _ => (CODE, [0; 6]),
        };
        Case {
            mode,
            code,
            ip,
            seg_base,
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
    pub(super) fn build(&self) -> (SoftVmcs, GuestRegs, Vec<u8>) {
        let mut ram = vec![0u8; RAM];
        let mut v = SoftVmcs::new();
        let dpl = u64::from(self.cpl) << 5;
        // Present, accessed code / data segments.
        let (cs_ar, cr0, limit) = match self.mode {
            CodeMode::Bits16 => (0x9B, 0x10, 0xFFFF),
            CodeMode::Bits32 => (0xC09B, 0x11, 0xFFFF_FFFF),
            CodeMode::Bits64 => (0xA09B, 0x8001_0011, 0xFFFF_FFFF),
        };
        v.write(VmcsField::GuestCr0, cr0);
        v.write(VmcsField::GuestCsAccessRights, cs_ar | dpl);
        v.write(VmcsField::GuestSsAccessRights, 0x93 | dpl);
        v.write(VmcsField::GuestCsLimit, limit);
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
            if self.large_pages {
                v.write(VmcsField::GuestCr4, Cr4::PSE.bits());
                put(&mut ram, 0x1000, 0x80 | 7);
            } else {
                put(&mut ram, 0x1000, 0x2000 | 7);
                for page in 0..(RAM as u32 / 4096) {
                    if !self.unmap.contains(&(u64::from(page) * 4096)) {
                        put(&mut ram, 0x2000 + u64::from(page) * 4, (page * 4096) | 7);
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

pub(super) fn ip_mask(mode: CodeMode) -> u64 {
    match mode {
        CodeMode::Bits16 => 0xFFFF,
        CodeMode::Bits32 => 0xFFFF_FFFF,
        CodeMode::Bits64 => u64::MAX,
    }
}

pub(super) fn linear_ip(mode: CodeMode, cs_base: u64, ip: u64) -> u64 {
    match mode {
        CodeMode::Bits64 => ip,
        _ => cs_base.wrapping_add(ip) & 0xFFFF_FFFF,
    }
}

pub(super) fn bitness(mode: CodeMode) -> u32 {
    match mode {
        CodeMode::Bits16 => 16,
        CodeMode::Bits32 => 32,
        CodeMode::Bits64 => 64,
    }
}

fn guest_mode(v: &SoftVmcs) -> CodeMode {
    if crate::vmx::guest_state::guest_long_mode(v) {
        CodeMode::Bits64
    } else if v.read(VmcsField::GuestCr0) & 1 != 0 && crate::vmx::guest_state::guest_cs_32bit(v) {
        CodeMode::Bits32
    } else {
        CodeMode::Bits16
    }
}

// ---------------------------------------------------------------------------
// The reference: decoding (iced-x86) into its own instruction form
// ---------------------------------------------------------------------------

/// A general register operand: encoding 0-15, size in bytes, AH..BH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GReg {
    pub index: u8,
    pub size: u8,
    pub high: bool,
}

fn greg(r: iced_x86::Register) -> Option<GReg> {
    use iced_x86::Register as R;
    let n = r as u32;
    let between = |a: R, b: R| (a as u32..=b as u32).contains(&n);
    let (index, size, high) = if between(R::AL, R::BL) {
        (n - R::AL as u32, 1, false)
    } else if between(R::AH, R::BH) {
        (n - R::AH as u32, 1, true)
    } else if between(R::SPL, R::R15L) {
        (n - R::SPL as u32 + 4, 1, false)
    } else if between(R::AX, R::R15W) {
        (n - R::AX as u32, 2, false)
    } else if between(R::EAX, R::R15D) {
        (n - R::EAX as u32, 4, false)
    } else if between(R::RAX, R::R15) {
        (n - R::RAX as u32, 8, false)
    } else {
        return None;
    };
    Some(GReg {
        index: index as u8,
        size,
        high,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Src {
    Reg(GReg),
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BranchKind {
    Always,
    /// Jcc: the condition's index in encoding order (0 = O ... 15 = G).
    Cond(u8),
    /// LOOP (0), LOOPE (1), LOOPNE (2) with the count register size.
    Loop(u8, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefOp {
    /// IN/OUT: size, immediate port (else DX).
    Io {
        is_in: bool,
        size: u8,
        imm: Option<u8>,
    },
    /// INS/OUTS: size, REP, address size in bytes, segment (0 ES .. 5 GS).
    Str {
        is_in: bool,
        size: u8,
        rep: bool,
        addr: u8,
        seg: u8,
    },
    Nop,
    Mov {
        dst: GReg,
        src: Src,
    },
    Alu {
        op: AluOp,
        dst: GReg,
        src: Src,
    },
    Branch {
        kind: BranchKind,
        target: u64,
    },
    /// MOV/MOVZX/MOVSX/MOVSXD reg, r/m: `size` source bytes, extended.
    Load {
        dst: GReg,
        src: RefRm,
        size: u8,
        signed: bool,
    },
    Store {
        mem: RefMem,
        src: Src,
        size: u8,
    },
    AluMem {
        op: AluOp,
        mem: RefMem,
        src: Src,
        size: u8,
    },
    AluLoad {
        op: AluOp,
        dst: GReg,
        mem: RefMem,
    },
    Lea {
        dst: GReg,
        mem: RefMem,
    },
    Push {
        src: Src,
    },
    Pop {
        dst: GReg,
    },
    Call {
        target: u64,
    },
    Ret {
        pop: u16,
    },
}

/// A memory operand as iced reads it: base, index, scale, displacement (for
/// RIP-relative operands iced has already added the next RIP: `base` is None and
/// `disp` the address), segment (4 FS, 5 GS, else 3), address size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RefMem {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: u64,
    pub seg: u8,
    pub addr: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefRm {
    Reg(GReg),
    Mem(RefMem),
}

/// iced's memory operand of `i` (64-bit code only; `None` otherwise).
fn ref_mem(i: &Instruction) -> Option<RefMem> {
    use iced_x86::Register as R;
    if i.code_size() != iced_x86::CodeSize::Code64 {
        return None;
    }
    let reg = |r: R| -> Option<Option<(u8, u8)>> {
        if r == R::None {
            return Some(None);
        }
        let g = greg(r)?;
        Some(Some((g.index, g.size)))
    };
    let rip = matches!(i.memory_base(), R::RIP | R::EIP);
    let base = if rip { None } else { reg(i.memory_base())? };
    let index = reg(i.memory_index())?;
    let addr = match i.memory_displ_size() {
        _ if rip => {
            if i.memory_base() == R::EIP {
                4
            } else {
                8
            }
        }
        // Without registers: iced reports a 32-bit displacement as 4 bytes only
        // under a 32-bit address size (67h), else as 8 (sign-extended).
        4 if base.is_none() && index.is_none() => 4,
        _ => base.or(index).map_or(8, |(_, size)| size),
    };
    let seg = match i.memory_segment() {
        R::FS => 4,
        R::GS => 5,
        _ => 3,
    };
    Some(RefMem {
        base: base.map(|b| b.0),
        index: index.map(|x| x.0),
        scale: i.memory_index_scale() as u8,
        disp: i.memory_displacement64(),
        seg,
        addr,
    })
}

fn mem_bytes(m: iced_x86::MemorySize) -> u8 {
    use iced_x86::MemorySize as S;
    match m {
        S::UInt8 | S::Int8 => 1,
        S::UInt16 | S::Int16 => 2,
        S::UInt32 | S::Int32 => 4,
        S::UInt64 | S::Int64 => 8,
        _ => 0,
    }
}

fn host_op(m: Mnemonic) -> Option<AluOp> {
    use Mnemonic as M;
    Some(match m {
        M::Add => AluOp::Add,
        M::Or => AluOp::Or,
        M::And => AluOp::And,
        M::Sub => AluOp::Sub,
        M::Xor => AluOp::Xor,
        M::Cmp => AluOp::Cmp,
        M::Test => AluOp::Test,
        M::Inc => AluOp::Inc,
        M::Dec => AluOp::Dec,
        M::Shl | M::Sal => AluOp::Shl,
        M::Shr => AluOp::Shr,
        _ => return None,
    })
}

/// The reference's reading of the new forms with memory or stack operands (64-bit
/// code): `None` if not one of them.
fn ref_mem_op(i: &Instruction) -> Option<Option<RefOp>> {
    use Mnemonic as M;
    let m = i.mnemonic();
    let long = i.code_size() == iced_x86::CodeSize::Code64;
    let mem0 = i.op_count() > 0 && i.op_kind(0) == OpKind::Memory;
    let mem1 = i.op_count() > 1 && i.op_kind(1) == OpKind::Memory;
    let reg0 = || greg(i.op_register(0)).filter(|_| i.op_kind(0) == OpKind::Register);
    let size_of = |n: u32| -> u8 {
        if i.op_kind(n) == OpKind::Memory {
            mem_bytes(i.memory_size())
        } else {
            greg(i.op_register(n)).map_or(0, |g| g.size)
        }
    };
    let locked = i.has_lock_prefix() || i.has_rep_prefix() || i.has_repne_prefix();
    let op = match m {
        M::Movzx | M::Movsx | M::Movsxd => {
            let dst = reg0()?;
            let size = size_of(1);
            let src = if mem1 {
                RefRm::Mem(ref_mem(i)?)
            } else {
                RefRm::Reg(greg(i.op_register(1))?)
            };
            if locked || (dst.size == 2 && m == M::Movsxd) {
                return Some(None);
            }
            RefOp::Load {
                dst,
                src,
                size,
                signed: m != M::Movzx,
            }
        }
        M::Lea => {
            let dst = reg0()?;
            RefOp::Lea {
                dst,
                mem: RefMem {
                    seg: 3,
                    ..ref_mem(i)?
                },
            }
        }
        M::Mov if mem1 => {
            let dst = reg0()?;
            RefOp::Load {
                dst,
                src: RefRm::Mem(ref_mem(i)?),
                size: dst.size,
                signed: false,
            }
        }
        M::Mov if mem0 => {
            let size = size_of(0);
            RefOp::Store {
                mem: ref_mem(i)?,
                src: src_of(i, 1, size)?,
                size,
            }
        }
        _ if mem0 && host_op(m).is_some() => {
            let op = host_op(m)?;
            let size = size_of(0);
            let src = match op {
                AluOp::Inc | AluOp::Dec => Src::Imm(1),
                AluOp::Shl | AluOp::Shr => {
                    if i.op_count() < 2 {
                        Src::Imm(1)
                    } else if is_imm(i.op_kind(1)) {
                        Src::Imm(i.immediate(1) & 0xFF)
                    } else {
                        return Some(None);
                    }
                }
                _ => src_of(i, 1, size)?,
            };
            if locked {
                return Some(None);
            }
            RefOp::AluMem {
                op,
                mem: ref_mem(i)?,
                src,
                size,
            }
        }
        _ if mem1 && host_op(m).is_some() => {
            let dst = reg0()?;
            if locked {
                return Some(None);
            }
            RefOp::AluLoad {
                op: host_op(m)?,
                dst,
                mem: ref_mem(i)?,
            }
        }
        M::Push if long && !mem0 => {
            if i.op_kind(0) == OpKind::Register {
                let r = greg(i.op_register(0))?;
                if r.size != 8 {
                    return Some(None);
                }
                RefOp::Push { src: Src::Reg(r) }
            } else if is_imm(i.op_kind(0)) && format!("{:?}", i.code()).starts_with("Pushq") {
                RefOp::Push {
                    src: Src::Imm(i.immediate(0)),
                }
            } else {
                return Some(None);
            }
        }
        M::Pop if long && !mem0 => {
            let r = reg0()?;
            if r.size != 8 {
                return Some(None);
            }
            RefOp::Pop { dst: r }
        }
        M::Call if long && i.op_kind(0) == OpKind::NearBranch64 => {
            if i.has_repne_prefix() {
                return Some(None);
            }
            RefOp::Call {
                target: i.near_branch_target(),
            }
        }
        M::Ret if long => {
            if i.has_repne_prefix()
                || i.has_rep_prefix()
                || !format!("{:?}", i.code()).starts_with("Retnq")
            {
                return Some(None);
            }
            RefOp::Ret {
                pop: if i.op_count() > 0 {
                    i.immediate(0) as u16
                } else {
                    0
                },
            }
        }
        _ => return None,
    };
    Some(Some(op))
}

fn seg_index(r: iced_x86::Register) -> u8 {
    use iced_x86::Register as R;
    match r {
        R::ES => 0,
        R::CS => 1,
        R::SS => 2,
        R::FS => 4,
        R::GS => 5,
        _ => 3,
    }
}

fn jcc_cond(m: Mnemonic) -> Option<u8> {
    use Mnemonic as M;
    Some(match m {
        M::Jo => 0,
        M::Jno => 1,
        M::Jb => 2,
        M::Jae => 3,
        M::Je => 4,
        M::Jne => 5,
        M::Jbe => 6,
        M::Ja => 7,
        M::Js => 8,
        M::Jns => 9,
        M::Jp => 10,
        M::Jnp => 11,
        M::Jl => 12,
        M::Jge => 13,
        M::Jle => 14,
        M::Jg => 15,
        _ => return None,
    })
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

fn src_of(i: &Instruction, n: u32, size: u8) -> Option<Src> {
    let k = i.op_kind(n);
    if k == OpKind::Register {
        let r = greg(i.op_register(n))?;
        return (r.size == size
            || i.mnemonic() == Mnemonic::Shl
            || i.mnemonic() == Mnemonic::Shr
            || i.mnemonic() == Mnemonic::Sal)
            .then_some(Src::Reg(r));
    }
    is_imm(k).then(|| Src::Imm(i.immediate(n) & size_mask(size)))
}

fn size_mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        s => (1u64 << (8 * u32::from(s))) - 1,
    }
}

/// Our own reading of an iced instruction: `None` if it is outside the reference's
/// subset (a mandatory stop).
pub(super) fn ref_op(i: &Instruction) -> Option<RefOp> {
    use Mnemonic as M;
    if let Some(op) = ref_mem_op(i) {
        return op;
    }
    let m = i.mnemonic();
    let reg0 = || greg(i.op_register(0)).filter(|_| i.op_kind(0) == OpKind::Register);
    Some(match m {
        M::In | M::Out => {
            let (acc, port) = if m == M::In { (0, 1) } else { (1, 0) };
            let a = greg(i.op_register(acc))?;
            let imm = match i.op_kind(port) {
                OpKind::Register => None,
                _ => Some(i.immediate(port) as u8),
            };
            RefOp::Io {
                is_in: m == M::In,
                size: a.size,
                imm,
            }
        }
        M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            let is_in = matches!(m, M::Insb | M::Insw | M::Insd);
            let size = match m {
                M::Insb | M::Outsb => 1,
                M::Insw | M::Outsw => 2,
                _ => 4,
            };
            let kind = i.op_kind(if is_in { 0 } else { 1 });
            let addr = match kind {
                OpKind::MemoryESDI | OpKind::MemorySegSI => 2,
                OpKind::MemoryESEDI | OpKind::MemorySegESI => 4,
                _ => 8,
            };
            // REPNE (F2) on INS/OUTS is not defined: leave it out of the subset.
            if i.has_repne_prefix() {
                return None;
            }
            RefOp::Str {
                is_in,
                size,
                rep: i.has_rep_prefix(),
                addr,
                seg: if is_in {
                    0
                } else {
                    seg_index(i.memory_segment())
                },
            }
        }
        M::Nop | M::Pause => RefOp::Nop,
        M::Mov => {
            let dst = reg0()?;
            RefOp::Mov {
                dst,
                src: src_of(i, 1, dst.size)?,
            }
        }
        M::Add | M::Or | M::And | M::Sub | M::Xor | M::Cmp | M::Test => {
            let op = host_op(m).expect("every two-operand ALU mnemonic has a host op");
            let dst = reg0()?;
            if i.has_lock_prefix() {
                return None;
            }
            RefOp::Alu {
                op,
                dst,
                src: src_of(i, 1, dst.size)?,
            }
        }
        M::Inc | M::Dec => RefOp::Alu {
            op: if m == M::Inc { AluOp::Inc } else { AluOp::Dec },
            dst: reg0()?,
            src: Src::Imm(1),
        },
        M::Shl | M::Sal | M::Shr => {
            let dst = reg0()?;
            let src = match i.op_kind(1) {
                OpKind::Register if i.op_register(1) == iced_x86::Register::CL => {
                    Src::Reg(greg(iced_x86::Register::CL)?)
                }
                k if is_imm(k) => Src::Imm(i.immediate(1) & 0xFF),
                _ => return None,
            };
            RefOp::Alu {
                op: if m == M::Shr { AluOp::Shr } else { AluOp::Shl },
                dst,
                src,
            }
        }
        M::Jmp
            if matches!(
                i.op_kind(0),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) =>
        {
            RefOp::Branch {
                kind: BranchKind::Always,
                target: i.near_branch_target(),
            }
        }
        M::Loop | M::Loope | M::Loopne => {
            let name = format!("{:?}", i.code());
            let count = if name.ends_with("_RCX") {
                8
            } else if name.ends_with("_ECX") {
                4
            } else {
                2
            };
            let k = match m {
                M::Loop => 0,
                M::Loope => 1,
                _ => 2,
            };
            RefOp::Branch {
                kind: BranchKind::Loop(k, count),
                target: i.near_branch_target(),
            }
        }
        _ => {
            let c = jcc_cond(m)?;
            // BND (F2) branches have MPX side effects: outside the subset.
            if i.has_repne_prefix() {
                return None;
            }
            RefOp::Branch {
                kind: BranchKind::Cond(c),
                target: i.near_branch_target(),
            }
        }
    })
}

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

pub(super) fn disasm(mode: CodeMode, ip: u64, bytes: &[u8]) -> String {
    let mut d = Decoder::with_ip(bitness(mode), bytes, ip, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = String::new();
    let mut i = Instruction::default();
    let mut n = 0;
    while d.can_decode() && n < 64 {
        d.decode_out(&mut i);
        let start = (i.ip() - ip) as usize;
        let mut text = String::new();
        f.format(&i, &mut text);
        let _ = writeln!(
            out,
            "  {:#06x}: {:<30} {:02x?}",
            i.ip(),
            text,
            &bytes[start..(start + i.len()).min(bytes.len())]
        );
        n += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// The reference: ALU on the host CPU
// ---------------------------------------------------------------------------

/// Status flags whose value after the operation is architecturally defined (SDM
/// Vol. 2, "Flags Affected" of each instruction); unchanged flags count as defined.
fn sdm_defined(op: AluOp, size: u8, src: u64) -> u64 {
    match op {
        AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => STATUS & !0x10,
        AluOp::Shl | AluOp::Shr => {
            let count = src & if size == 8 { 63 } else { 31 };
            if count == 0 {
                return STATUS;
            }
            let mut d = STATUS & !0x10;
            if count != 1 {
                d &= !0x800;
            }
            if count >= 8 * u64::from(size) {
                d &= !1;
            }
            d
        }
        _ => STATUS,
    }
}

/// The host CPU's answer for `op` at `size` bytes (the shared oracle, `host_alu`), with
/// only the status flags of `flags` (and the always-one bit 1) loaded.
fn host_exec(op: AluOp, size: u8, a: u64, b: u64, flags: u64) -> (u64, u64) {
    let f = (flags & STATUS) | 2;
    crate::coalesce::host_alu::exec(op, width_of(size), a, b, f)
}

fn width_of(size: u8) -> Width {
    Width::from_bytes(size).expect("operand size")
}

/// The reference's ALU: result and new RFLAGS.
fn ref_alu(op: AluOp, size: u8, a: u64, b: u64, rflags: u64) -> (u64, u64) {
    let (r, hf) = host_exec(op, size, a, b, rflags);
    let defined = sdm_defined(op, size, b);
    // Undefined flags: what the coalescer documents it produces.
    let (_, cf) = exec::alu(op, width_of(size), a, b, rflags);
    let flags = (rflags & !STATUS) | (hf & defined & STATUS) | (cf & !defined & STATUS);
    (r & size_mask(size), flags)
}

// ---------------------------------------------------------------------------
// The reference: the stepper
// ---------------------------------------------------------------------------

pub(super) struct NullHost;

impl HostOps for NullHost {
    fn cpuid(&mut self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn console(&mut self, _: &[u8]) {}
    fn xsetbv(&mut self, _: u32, _: u64) {}
    fn wbinvd(&mut self) {}
    fn rdtsc(&mut self) -> u64 {
        0
    }
}

/// The exit fields (qualification, instruction length, instruction information) the
/// processor reports for an IO instruction; `None` if it is not one.
fn exit_fields(op: &RefOp, len: usize, dx: u16) -> Option<(u64, u64, u64)> {
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
fn fetch_decode(
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

fn fmt_insn(i: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(i, &mut s);
    s
}

/// Where the coalescer stopped, as the reference counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    executed: u64,
    elements: u64,
    rip: u64,
}

/// Guest state at the end of a run, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Final {
    regs: GuestRegs,
    rip: u64,
    rsp: u64,
    rflags: u64,
    ram: Vec<u8>,
    board: BoardSnap,
    /// Reference only: see `Reference::wrote_page_tables`.
    wrote_page_tables: bool,
}

struct Reference<'a, 'b> {
    mode: CodeMode,
    vmcs: SoftVmcs,
    regs: GuestRegs,
    ram: Vec<u8>,
    bus: &'a mut IoBus<'b>,
    board: &'a Board,
    limits: Limits,
    executed: u64,
    elements: u64,
    io_insns: u64,
    /// The REP instruction at RIP has done an element in this run (and is counted).
    in_rep: bool,
    /// A mandatory stop reached after the last step.
    pending: Option<String>,
    /// Model a coalescer that does not sync IRQ lines with IF = 0 (the bug this checker
    /// once found; kept so the reference can still demonstrate it): with IF = 0 the
    /// device lines are not brought onto the PIC after an access.
    stale_pic_if_clear: bool,
    /// An INS element wrote into the live paging structures. What a CPU fetches
    /// afterwards depends on its TLB (no INVLPG), so a difference is inconclusive.
    wrote_page_tables: bool,
    log: Vec<Instruction>,
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

    fn ref_linear(&self, m: RefMem, i: &Instruction) -> u64 {
        let ea = self.ref_ea(m, i);
        match m.seg {
            4 => ea.wrapping_add(self.vmcs.read(VmcsField::GuestFsBase)),
            5 => ea.wrapping_add(self.vmcs.read(VmcsField::GuestGsBase)),
            _ => ea,
        }
    }

    /// The guest-physical address of each byte of an access, as a CPU that must not
    /// fault and must not set an accessed or dirty flag sees it; anything else is a
    /// mandatory stop (4-level paging, walked here by hand).
    fn ref_gpas(&self, lin: u64, size: u8, write: bool) -> Result<Vec<u64>, String> {
        let stop = |why: &str| {
            Err(format!(
                "the coalescer ran past a mandatory stop: {why} at {lin:#x} ({size} bytes, write {write})"
            ))
        };
        let cpl = crate::vmx::guest_state::guest_cpl(&self.vmcs);
        let paging = crate::vmx::guest_state::guest_paging(&self.vmcs);
        let mem_ram = &self.ram;
        let rd = |at: u64| -> Option<u64> {
            let at = at as usize;
            mem_ram
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let mut out = Vec::new();
        for k in 0..u64::from(size) {
            let l = lin.wrapping_add(k);
            // The top 17 bits equal: canonical for 48-bit linear addresses.
            if ((l as i64) << 16 >> 16) as u64 != l {
                return stop("non-canonical address");
            }
            let mut table = paging.cr3 & 0x000F_FFFF_FFFF_F000;
            let (mut writable, mut user) = (true, true);
            let mut gpa = None;
            for level in (1..=4u32).rev() {
                let shift = 12 + 9 * (level - 1);
                let Some(e) = rd(table + ((l >> shift) & 0x1FF) * 8) else {
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
            let Some(g) = gpa else {
                return stop("no leaf");
            };
            if cpl == 3 && !user {
                return stop("user access to a supervisor page");
            }
            if write && !writable && (cpl == 3 || paging.cr0 & (1 << 16) != 0) {
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
    fn run_to(&mut self, t: Target) -> Result<(), String> {
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
                        let lin = self.ref_linear(m, &i);
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
                let lin = self.ref_linear(mem, &i);
                self.ref_write(lin, size, v)?;
                self.advance(len);
                self.executed += 1;
            }
            RefOp::AluMem { op, mem, src, size } => {
                let lin = self.ref_linear(mem, &i);
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
                let lin = self.ref_linear(mem, &i);
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
            RefOp::Push { src } => {
                let v = self.src(src);
                let rsp = self.vmcs.read(VmcsField::GuestRsp).wrapping_sub(8);
                self.ref_write(rsp, 8, v)?;
                self.vmcs.write(VmcsField::GuestRsp, rsp);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Pop { dst } => {
                let rsp = self.vmcs.read(VmcsField::GuestRsp);
                let v = self.ref_read(rsp, 8)?;
                self.vmcs.write(VmcsField::GuestRsp, rsp.wrapping_add(8));
                self.set(dst, v);
                self.advance(len);
                self.executed += 1;
            }
            RefOp::Call { target } => {
                let rsp = self.vmcs.read(VmcsField::GuestRsp).wrapping_sub(8);
                let next = rip.wrapping_add(len as u64);
                self.ref_write(rsp, 8, next)?;
                self.vmcs.write(VmcsField::GuestRsp, rsp);
                self.vmcs.write(VmcsField::GuestRip, target);
                self.executed += 1;
            }
            RefOp::Ret { pop } => {
                let rsp = self.vmcs.read(VmcsField::GuestRsp);
                let target = self.ref_read(rsp, 8)?;
                if !crate::x86::is_canonical(target, 48) {
                    return Err(format!(
                        "the coalescer ran past `{}` to a non-canonical address (#GP)",
                        text()
                    ));
                }
                self.vmcs
                    .write(VmcsField::GuestRsp, rsp.wrapping_add(8 + u64::from(pop)));
                self.vmcs.write(VmcsField::GuestRip, target);
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

// ---------------------------------------------------------------------------
// Running a case on both sides
// ---------------------------------------------------------------------------

/// What the coalesced side did.
#[derive(Clone, Debug)]
pub(super) struct CoRun {
    pub outcome: Outcome,
    pub stop: Option<StopReason>,
    pub executed: u64,
    pub elements: u64,
    pub io_insns: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    final_: Final,
    interruptibility: u64,
    /// The reference could not decide (see [`INCONCLUSIVE`]).
    pub inconclusive: bool,
}

/// The exit fields of the instruction at the case's RIP, if it is an IO instruction.
pub(super) fn first_exit_fields(case: &Case) -> Option<(u64, u64, u64)> {
    let (v, regs, mut ram) = case.build();
    let (i, _, op) = fetch_decode(&v, &mut ram).ok()?;
    exit_fields(&op?, i.len(), regs.rdx as u16)
}

/// Runs the coalescer on `case` (with `cache`); `exit` overrides the exit fields.
pub(super) fn run_coalesced(
    case: &Case,
    cache: &mut BlockCache,
    exit: Option<(u64, u64, u64)>,
) -> CoRun {
    let mut c = Coalescer::new(case.settings, cache);
    run_coalesced_by(case, &mut c, exit)
}

/// [`run_coalesced`] with a coalescer that lives across exits (its site memory).
pub(super) fn run_coalesced_by(
    case: &Case,
    c: &mut Coalescer<'_>,
    exit: Option<(u64, u64, u64)>,
) -> CoRun {
    let (mut v, mut regs, mut ram) = case.build();
    let (q, len, info) = exit
        .or_else(|| first_exit_fields(case))
        .unwrap_or((0, 1, 0));
    v.write(VmcsField::ExitReason, 30);
    v.write(VmcsField::ExitQualification, q);
    v.write(VmcsField::ExitInstructionLength, len);
    v.write(VmcsField::ExitInstructionInfo, info);
    v.write(VmcsField::GuestInterruptibilityState, 1);
    let board = Board::new(case.seed);
    board.init(&case.board_init);
    let mut stats = Stats::new();
    let (outcome, unknown) = board.with_bus(|bus| {
        let mut host = NullHost;
        let mut env = board_io(bus, &board, &mut host);
        let mut mem = SliceMemory::new(&mut ram);
        let exit = VmExit::read(&v);
        let io = exit.io().expect("the case exits on an IO instruction");
        c.handle(
            &io,
            exit.instruction_length,
            &mut v,
            &mut regs,
            &mut mem,
            &mut env,
            &mut stats.io,
        )
    });
    let stop = StopReason::ALL
        .iter()
        .copied()
        .find(|r| stats.io.stops[r.index()] != 0);
    CoRun {
        outcome,
        stop,
        executed: stats.io.emulated,
        elements: stats.io.string_elements,
        io_insns: stats.io.instructions,
        cache_hits: stats.io.cache_hits,
        cache_misses: stats.io.cache_misses,
        interruptibility: v.read(VmcsField::GuestInterruptibilityState),
        inconclusive: false,
        final_: Final {
            regs,
            rip: v.read(VmcsField::GuestRip),
            rsp: v.read(VmcsField::GuestRsp),
            rflags: v.read(VmcsField::GuestRflags),
            ram,
            board: board.snapshot(unknown),
            wrote_page_tables: false,
        },
    }
}

/// Runs the reference on `case` to the coalescer's stop `co`.
fn run_reference(case: &Case, co: &CoRun, stale_pic_if_clear: bool) -> Result<Final, String> {
    let (v, regs, ram) = case.build();
    let board = Board::new(case.seed);
    board.init(&case.board_init);
    let target = Target {
        executed: co.executed,
        elements: co.elements,
        rip: co.final_.rip,
    };
    let (r, unknown) = board.with_bus(|bus| {
        let mut r = Reference {
            mode: case.mode,
            vmcs: v,
            regs,
            ram,
            bus,
            board: &board,
            limits: case.settings.limits,
            executed: 0,
            elements: 0,
            io_insns: 0,
            in_rep: false,
            pending: None,
            stale_pic_if_clear,
            wrote_page_tables: false,
            log: Vec::new(),
        };
        let res = r.run_to(target).and_then(|()| {
            if r.io_insns == co.io_insns {
                Ok(())
            } else {
                Err(format!(
                    "IO instructions: coalescer counted {}, reference {}",
                    co.io_insns, r.io_insns
                ))
            }
        });
        (res, r.vmcs, r.regs, r.ram, r.log, r.wrote_page_tables)
    });
    let (res, v, regs, ram, log, wrote_page_tables) = r;
    res.map_err(|e| {
        if wrote_page_tables {
            return INCONCLUSIVE.to_string();
        }
        let mut steps = String::new();
        for i in &log {
            let _ = writeln!(steps, "  ref {:#06x}: {}", i.ip(), fmt_insn(i));
        }
        format!("{e}\nreference steps:\n{steps}")
    })?;
    Ok(Final {
        regs,
        rip: v.read(VmcsField::GuestRip),
        rsp: v.read(VmcsField::GuestRsp),
        rflags: v.read(VmcsField::GuestRflags),
        ram,
        board: board.snapshot(unknown),
        wrote_page_tables,
    })
}

/// The paging structures of [`Case::build`] (guest-physical, end exclusive).
const PAGE_TABLES: (u64, u64) = (0x1000, 0x5000);
const INCONCLUSIVE: &str = "inconclusive: the guest wrote its live page tables";

fn diff_finals(co: &Final, re: &Final) -> String {
    let mut s = String::new();
    if co.regs != re.regs {
        let _ = writeln!(
            s,
            "registers:\n  coalesced {:x?}\n  reference {:x?}",
            co.regs, re.regs
        );
    }
    for (name, a, b) in [
        ("RIP", co.rip, re.rip),
        ("RSP", co.rsp, re.rsp),
        ("RFLAGS", co.rflags, re.rflags),
    ] {
        if a != b {
            let _ = writeln!(s, "{name}: coalesced {a:#x}, reference {b:#x}");
        }
    }
    if co.ram != re.ram {
        let at = co
            .ram
            .iter()
            .zip(&re.ram)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "guest RAM differs first at {at:#x}: coalesced {:02x?}, reference {:02x?}",
            &co.ram[at..(at + 8).min(co.ram.len())],
            &re.ram[at..(at + 8).min(re.ram.len())]
        );
    }
    let (a, b) = (&co.board, &re.board);
    if a.trace != b.trace {
        let _ = writeln!(
            s,
            "port trace:\n  coalesced {:x?}\n  reference {:x?}",
            a.trace, b.trace
        );
    }
    for (name, x, y) in [
        ("UART", &a.uart, &b.uart),
        ("PIC", &a.pic, &b.pic),
        ("PIT", &a.pit, &b.pit),
    ] {
        if x != y {
            let _ = writeln!(s, "{name}:\n  coalesced {x}\n  reference {y}");
        }
    }
    if a.noise != b.noise {
        let _ = writeln!(s, "tracing device state differs");
    }
    if a.unknown != b.unknown {
        let _ = writeln!(
            s,
            "unknown ports:\n  coalesced {:?}\n  reference {:?}",
            a.unknown, b.unknown
        );
    }
    s
}

/// Everything needed to reproduce a case.
pub(super) fn describe(case: &Case) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mode {:?} seed {:#x} ip {:#x} seg_base {:x?} cpl {} rflags {:#x} rsp {:#x} dr7 {:#x}\n\
         settings {:?}\nunmap {:x?} board_init {:x?}\nregs {:x?}",
        case.mode,
        case.seed,
        case.ip,
        case.seg_base,
        case.cpl,
        case.rflags,
        case.rsp,
        case.dr7,
        case.settings,
        case.unmap,
        case.board_init,
        case.regs
    );
    let _ = writeln!(s, "code {:02x?}", case.code);
    s.push_str(&disasm(case.mode, case.ip, &case.code));
    s
}

/// Runs `case` on both sides and compares; also replays it with the now warm block
/// cache, which must do exactly the same. Returns the (first) coalesced run.
pub(super) fn check(case: &Case) -> Result<CoRun, String> {
    check_with(case, false)
}

fn check_with(case: &Case, stale_pic_if_clear: bool) -> Result<CoRun, String> {
    let mut cache = Box::new(BlockCache::new());
    let exit = Some(first_exit_fields(case).unwrap_or((0, 1, 0)));
    let co = run_coalesced(case, &mut cache, exit);
    let fail = |what: String, co: &CoRun| {
        Err(format!(
            "{what}\ncoalescer: {:?} stop {:?} executed {} elements {} rip {:#x}\n{}",
            co.outcome,
            co.stop,
            co.executed,
            co.elements,
            co.final_.rip,
            describe(case)
        ))
    };
    if co.executed > u64::from(case.settings.limits.max_insns.max(1)) {
        return fail("more instructions than max_insns".into(), &co);
    }
    if co.elements > u64::from(case.settings.limits.max_string_elements) {
        return fail("more string elements than max_string_elements".into(), &co);
    }
    if let Outcome::Fallback(_) = co.outcome {
        if co.executed != 0 || co.elements != 0 {
            return fail("a fallback that counted work".into(), &co);
        }
    }
    if co.outcome == Outcome::Done && co.interruptibility & 3 != 0 {
        return fail("STI blocking not cleared after a coalesced run".into(), &co);
    }
    let re = match run_reference(case, &co, stale_pic_if_clear) {
        Ok(re) => re,
        Err(e) if e == INCONCLUSIVE => {
            return Ok(CoRun {
                inconclusive: true,
                ..co
            })
        }
        Err(e) => return fail(e, &co),
    };
    let d = diff_finals(&co.final_, &re);
    if !d.is_empty() {
        if re.wrote_page_tables {
            return Ok(CoRun {
                inconclusive: true,
                ..co
            });
        }
        return fail(format!("final states differ:\n{d}"), &co);
    }
    // The coalescer must not reject an instruction of the subset (unless the
    // program overwrote its own code).
    let code_intact = || {
        let (_, _, ram0) = case.build();
        let at = case.code_linear() as usize;
        let end = (at + case.code.len()).min(RAM);
        ram0[at..end] == co.final_.ram[at..end]
    };
    if co.outcome == Outcome::Done
        && matches!(
            co.stop,
            Some(StopReason::Unsupported | StopReason::Undecodable)
        )
        && code_intact()
    {
        let off = co.final_.rip.wrapping_sub(case.ip) & ip_mask(case.mode);
        if case.must_support.contains(&off) {
            return fail(
                format!(
                    "stopped as {:?} at a supported instruction (offset {off:#x})",
                    co.stop
                ),
                &co,
            );
        }
    }
    // Replay from the warm cache.
    let again = run_coalesced(case, &mut cache, exit);
    if co.cache_misses == 1 && co.outcome == Outcome::Done && again.cache_hits != 1 {
        return fail("no cache hit on the replay".into(), &again);
    }
    if again.final_ != co.final_
        || again.outcome != co.outcome
        || again.executed != co.executed
        || again.elements != co.elements
    {
        return fail(
            format!(
                "the cached replay differs ({:?}, {} insns):\n{}",
                again.outcome,
                again.executed,
                diff_finals(&again.final_, &co.final_)
            ),
            &co,
        );
    }
    Ok(co)
}

// ---------------------------------------------------------------------------
// Program generator
// ---------------------------------------------------------------------------

/// A register operand as encoded: number 0-15, and for byte registers whether it is
/// AH..BH (no REX allowed) or SPL..DIL (REX required).
#[derive(Clone, Copy, Debug)]
struct EncReg {
    num: u8,
    rex_needed: bool,
    rex_forbidden: bool,
    /// Names RSP/ESP/SP/SPL: the coalescer leaves it to the CPU.
    rsp: bool,
}

struct Gen<'r> {
    mode: CodeMode,
    rng: &'r mut Rng,
    bytes: Vec<u8>,
    /// Start offset of each instruction.
    starts: Vec<usize>,
    must_support: Vec<u64>,
    /// (displacement position, size, end of the instruction, target instruction,
    /// bytes into it: a branch into the middle of an instruction).
    fixups: Vec<(usize, usize, usize, usize, usize)>,
}

const IMM_PORTS: [u8; 14] = [
    0xE0, 0xE1, 0xE2, 0xE3, 0xE5, 0xE7, 0x20, 0x21, 0xA1, 0x80, 0x43, 0x61, 0x70, 0xF0,
];
const DX_PORTS: [u16; 16] = [
    0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x3FE, 0x3FF, 0xE0, 0xE4, 0xE6, 0x21, 0x4D0, 0x2F8,
    0xE2, 0x3F8,
];
const EDGES: [u64; 14] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
];

impl Gen<'_> {
    fn long(&self) -> bool {
        self.mode == CodeMode::Bits64
    }

    fn value(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => self.rng.pick(&EDGES),
            1 => self.rng.below(0x100),
            _ => self.rng.next(),
        }
    }

    /// Random register for operand size `size`.
    fn reg(&mut self, size: u8) -> EncReg {
        let long = self.long();
        if size == 1 {
            let kind = self.rng.below(if long { 3 } else { 2 });
            return match kind {
                0 => EncReg {
                    num: self.rng.below(4) as u8,
                    rex_needed: false,
                    rex_forbidden: false,
                    rsp: false,
                },
                1 => EncReg {
                    num: 4 + self.rng.below(4) as u8,
                    rex_needed: false,
                    rex_forbidden: true,
                    rsp: false,
                },
                _ => {
                    let num = 4 + self.rng.below(12) as u8;
                    EncReg {
                        num,
                        rex_needed: true,
                        rex_forbidden: false,
                        rsp: num == 4,
                    }
                }
            };
        }
        let mut num = self.rng.below(if long { 16 } else { 8 }) as u8;
        if num == 4 && !self.rng.chance(1, 8) {
            num = 5;
        }
        EncReg {
            num,
            rex_needed: num >= 8,
            rex_forbidden: false,
            rsp: num == 4,
        }
    }

    fn size(&mut self) -> u8 {
        let sizes: &[u8] = if self.long() {
            &[1, 2, 4, 8]
        } else {
            &[1, 2, 4]
        };
        self.rng.pick(sizes)
    }

    /// Operand-size prefix and REX.W for `size`.
    fn opsize(&self, size: u8) -> (Option<u8>, bool) {
        match (self.mode, size) {
            (CodeMode::Bits16, 4) => (Some(0x66), false),
            (CodeMode::Bits16, _) => (None, false),
            (_, 2) => (Some(0x66), false),
            (CodeMode::Bits64, 8) => (None, true),
            _ => (None, false),
        }
    }

    /// Emits one instruction. `supported`: the coalescer must take it.
    fn emit(&mut self, bytes: &[u8], supported: bool) {
        self.starts.push(self.bytes.len());
        if supported {
            self.must_support.push(self.bytes.len() as u64);
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// Prefix + REX + opcode (+ ModRM) for register operands `reg` (ModRM.reg or
    /// none) and `rm`; `None` if the registers cannot be encoded together.
    fn head(
        &self,
        size: u8,
        opcode: &[u8],
        reg: Option<EncReg>,
        rm: Option<(EncReg, Option<u8>)>,
    ) -> Option<Vec<u8>> {
        let (pfx, w) = self.opsize(size);
        let regs = [reg, rm.map(|r| r.0)];
        let needed = w || regs.iter().flatten().any(|r| r.rex_needed);
        if needed && regs.iter().flatten().any(|r| r.rex_forbidden) {
            return None;
        }
        let mut out = Vec::new();
        out.extend(pfx);
        if needed {
            let r = reg.map_or(0, |r| r.num >> 3);
            let b = rm.map_or(0, |(r, _)| r.num >> 3);
            out.push(0x40 | (u8::from(w) << 3) | (r << 2) | b);
        }
        out.extend_from_slice(opcode);
        if let Some((rmr, ext)) = rm {
            let regf = ext.unwrap_or_else(|| reg.map_or(0, |r| r.num & 7));
            out.push(0xC0 | (regf << 3) | (rmr.num & 7));
        }
        Some(out)
    }

    fn imm(&mut self, size: u8, v: u64) -> Vec<u8> {
        v.to_le_bytes()[..usize::from(size.min(4))].to_vec()
    }

    fn mov(&mut self) {
        for _ in 0..8 {
            let size = self.size();
            let dst = self.reg(size);
            let v = self.value();
            let (enc, ok) = match self.rng.below(3) {
                0 => {
                    // B0+r / B8+r
                    let op = if size == 1 { 0xB0 } else { 0xB8 } + (dst.num & 7);
                    let Some(mut b) = self.head_opreg(size, op, dst) else {
                        continue;
                    };
                    let n = if size == 8 { 8 } else { usize::from(size) };
                    b.extend_from_slice(&v.to_le_bytes()[..n]);
                    (b, !dst.rsp)
                }
                1 => {
                    // C6/C7 /0 with a register operand
                    let op = if size == 1 { 0xC6 } else { 0xC7 };
                    let Some(mut b) = self.head(size, &[op], None, Some((dst, Some(0)))) else {
                        continue;
                    };
                    b.extend(self.imm(size, v));
                    (b, !dst.rsp)
                }
                _ => {
                    let src = self.reg(size);
                    let (op, reg, rm) = if self.rng.chance(1, 2) {
                        (if size == 1 { 0x88 } else { 0x89 }, src, dst)
                    } else {
                        (if size == 1 { 0x8A } else { 0x8B }, dst, src)
                    };
                    let Some(b) = self.head(size, &[op], Some(reg), Some((rm, None))) else {
                        continue;
                    };
                    (b, !dst.rsp && !src.rsp)
                }
            };
            self.emit(&enc, ok);
            return;
        }
        self.emit(&[0x90], true);
    }

    /// Opcode with the register in its low 3 bits (B0+r, 40+r).
    fn head_opreg(&self, size: u8, op: u8, r: EncReg) -> Option<Vec<u8>> {
        let (pfx, w) = self.opsize(size);
        let needed = w || r.rex_needed;
        if needed && r.rex_forbidden {
            return None;
        }
        let mut out = Vec::new();
        out.extend(pfx);
        if needed {
            out.push(0x40 | (u8::from(w) << 3) | (r.num >> 3));
        }
        out.push(op);
        Some(out)
    }

    fn alu(&mut self) {
        for _ in 0..8 {
            let size = self.size();
            let dst = self.reg(size);
            // ADD OR AND SUB XOR CMP (ModRM /digit and opcode base / 8).
            let op8 = self.rng.pick(&[0u8, 1, 4, 5, 6, 7]);
            let v = self.value();
            let small = self
                .rng
                .pick(&[0u64, 1, 2, 7, 8, 15, 16, 31, 32, 33, 63, 64, 0xFF]);
            let w8 = size == 1;
            let (enc, ok) = match self.rng.below(10) {
                0 => {
                    // op r/m, r  or  op r, r/m
                    let src = self.reg(size);
                    let (opc, reg, rm) = if self.rng.chance(1, 2) {
                        (op8 * 8 + u8::from(!w8), src, dst)
                    } else {
                        (op8 * 8 + 2 + u8::from(!w8), dst, src)
                    };
                    let Some(b) = self.head(size, &[opc], Some(reg), Some((rm, None))) else {
                        continue;
                    };
                    (b, !dst.rsp && !src.rsp)
                }
                1 => {
                    // op AL/eAX, imm
                    let acc = EncReg {
                        num: 0,
                        rex_needed: false,
                        rex_forbidden: false,
                        rsp: false,
                    };
                    let Some(mut b) = self.head_opreg(size, op8 * 8 + 4 + u8::from(!w8), acc)
                    else {
                        continue;
                    };
                    b.extend(self.imm(size, v));
                    (b, true)
                }
                2 => {
                    // 80/81 /op imm, 83 /op imm8 (sign-extended)
                    let (opc, imm) = if w8 {
                        (0x80, self.imm(1, v))
                    } else if self.rng.chance(1, 2) {
                        (0x83, vec![small as u8 | (v as u8 & 0x80)])
                    } else {
                        (0x81, self.imm(size, v))
                    };
                    let Some(mut b) = self.head(size, &[opc], None, Some((dst, Some(op8)))) else {
                        continue;
                    };
                    b.extend(imm);
                    (b, !dst.rsp)
                }
                3 => {
                    // TEST r/m, r ; TEST AL/eAX, imm ; F6/F7 /0 imm
                    match self.rng.below(3) {
                        0 => {
                            let src = self.reg(size);
                            let Some(b) = self.head(
                                size,
                                &[0x84 + u8::from(!w8)],
                                Some(src),
                                Some((dst, None)),
                            ) else {
                                continue;
                            };
                            (b, !dst.rsp && !src.rsp)
                        }
                        1 => {
                            let acc = EncReg {
                                num: 0,
                                rex_needed: false,
                                rex_forbidden: false,
                                rsp: false,
                            };
                            let Some(mut b) = self.head_opreg(size, 0xA8 + u8::from(!w8), acc)
                            else {
                                continue;
                            };
                            b.extend(self.imm(size, v));
                            (b, true)
                        }
                        _ => {
                            let Some(mut b) = self.head(
                                size,
                                &[0xF6 + u8::from(!w8)],
                                None,
                                Some((dst, Some(0))),
                            ) else {
                                continue;
                            };
                            b.extend(self.imm(size, v));
                            (b, !dst.rsp)
                        }
                    }
                }
                4 => {
                    // INC/DEC: FE/FF /0 /1, or 40+r / 48+r outside 64-bit mode.
                    let dec = self.rng.chance(1, 2);
                    if !self.long() && !w8 && self.rng.chance(1, 2) {
                        let Some(b) =
                            self.head_opreg(size, 0x40 + u8::from(dec) * 8 + (dst.num & 7), dst)
                        else {
                            continue;
                        };
                        (b, !dst.rsp)
                    } else {
                        let Some(b) = self.head(
                            size,
                            &[0xFE + u8::from(!w8)],
                            None,
                            Some((dst, Some(u8::from(dec)))),
                        ) else {
                            continue;
                        };
                        (b, !dst.rsp)
                    }
                }
                5 | 6 => {
                    // SHL/SHR: D0/D1 by 1, C0/C1 by imm8; rarely SAL (/6) or by CL.
                    let ext = if self.rng.chance(1, 12) {
                        6
                    } else {
                        self.rng.pick(&[4u8, 5])
                    };
                    let form = self.rng.below(8);
                    let mut supported = !dst.rsp && ext != 6;
                    let b = if form == 0 {
                        supported = false;
                        self.head(size, &[0xD2 + u8::from(!w8)], None, Some((dst, Some(ext))))
                    } else if form < 3 {
                        self.head(size, &[0xD0 + u8::from(!w8)], None, Some((dst, Some(ext))))
                    } else {
                        self.head(size, &[0xC0 + u8::from(!w8)], None, Some((dst, Some(ext))))
                            .map(|mut b| {
                                b.push(if self.rng.chance(1, 2) {
                                    small as u8
                                } else {
                                    v as u8
                                });
                                b
                            })
                    };
                    let Some(b) = b else { continue };
                    (b, supported)
                }
                _ => {
                    // op r, imm through 83 with edge values, the usual case.
                    let (opc, imm) = if w8 {
                        (0x80, vec![v as u8])
                    } else {
                        (0x83, vec![v as u8])
                    };
                    let Some(mut b) = self.head(size, &[opc], None, Some((dst, Some(op8)))) else {
                        continue;
                    };
                    b.extend(imm);
                    (b, !dst.rsp)
                }
            };
            self.emit(&enc, ok);
            return;
        }
        self.emit(&[0x90], true);
    }

    fn nop(&mut self) {
        let long_nops: &[&[u8]] = &[
            &[0x90],
            &[0xF3, 0x90],
            &[0x66, 0x90],
            &[0x0F, 0x1F, 0x00],
            &[0x0F, 0x1F, 0x40, 0x00],
        ];
        let b = self.rng.pick(long_nops);
        self.emit(b, true);
    }

    /// IO width prefix: (prefix, size).
    fn io_size(&mut self) -> (Option<u8>, u8) {
        let size = self.rng.pick(&[1u8, 1, 2, 4]);
        let pfx = match (self.mode, size) {
            (_, 1) => None,
            (CodeMode::Bits16, 4) | (CodeMode::Bits32 | CodeMode::Bits64, 2) => Some(0x66),
            _ => None,
        };
        (pfx, size)
    }

    fn set_dx(&mut self, port: u16) {
        let mut b = Vec::new();
        if self.mode != CodeMode::Bits16 {
            b.push(0x66);
        }
        b.push(0xBA);
        b.extend_from_slice(&port.to_le_bytes());
        self.emit(&b, true);
    }

    /// IN/OUT.
    fn io(&mut self) {
        let (pfx, size) = self.io_size();
        let out = self.rng.chance(1, 2);
        let wide = u8::from(size != 1);
        let mut b: Vec<u8> = pfx.into_iter().collect();
        if self.long() && self.rng.chance(1, 16) {
            b.push(0x48);
        }
        if self.rng.chance(1, 2) {
            let port = self.rng.pick(&IMM_PORTS);
            b.push(if out { 0xE6 } else { 0xE4 } + wide);
            b.push(port);
        } else {
            b.push(if out { 0xEE } else { 0xEC } + wide);
        }
        self.emit(&b, true);
    }

    /// INS/OUTS with random prefixes.
    fn string(&mut self) {
        let (pfx, size) = self.io_size();
        let out = self.rng.chance(3, 5);
        let mut p: Vec<u8> = pfx.into_iter().collect();
        if self.rng.chance(2, 3) {
            p.push(0xF3);
        }
        if self.rng.chance(1, 4) {
            p.push(0x67);
        }
        if self.rng.chance(1, 3) {
            p.push(self.rng.pick(&[0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]));
        }
        // Random prefix order.
        for k in (1..p.len()).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            p.swap(k, j);
        }
        if self.long() && self.rng.chance(1, 16) {
            p.push(0x48);
        }
        p.push(if out { 0x6E } else { 0x6C } + u8::from(size != 1));
        self.emit(&p, true);
    }

    /// A branch to instruction `target` (resolved later); `kind`: 0 jmp short,
    /// 1 jmp near, 2 jcc short, 3 jcc near, 4 loop.
    fn branch(&mut self, target: usize) {
        let kind = self.rng.below(5);
        let mut b = Vec::new();
        // Sometimes an operand-size prefix: a 32-bit IP in 16-bit code, IP truncated
        // to 16 bits in 32-bit code, ignored in 64-bit mode.
        let o16 = self.mode == CodeMode::Bits16;
        let toggled = self.rng.chance(1, 8);
        if toggled {
            b.push(0x66);
        }
        let near_disp = if o16 != (toggled && self.mode != CodeMode::Bits64) {
            2
        } else {
            4
        };
        let disp = match kind {
            0 => {
                b.push(0xEB);
                1
            }
            1 => {
                b.push(0xE9);
                near_disp
            }
            2 => {
                b.push(0x70 + self.rng.below(16) as u8);
                1
            }
            3 => {
                b.extend_from_slice(&[0x0F, 0x80 + self.rng.below(16) as u8]);
                near_disp
            }
            _ => {
                if self.rng.chance(1, 4) {
                    b.push(0x67);
                }
                b.push(0xE0 + self.rng.below(3) as u8);
                1
            }
        };
        self.emit(&b, true);
        self.bytes.extend(std::iter::repeat_n(0, disp));
        let end = self.bytes.len();
        let delta = usize::from(self.rng.chance(1, 16));
        self.fixups.push((end - disp, disp, end, target, delta));
    }

    fn stopper(&mut self) {
        let all: &[&[u8]] = &[
            &[0xF4],
            &[0xFA],
            &[0x50],
            &[0x8B, 0x03],
            &[0x0F, 0x0B],
            &[0xCC],
            &[0x11, 0xC0],
            &[0x0F, 0xA2],
            &[0x88, 0x07],
            &[0xF2, 0x6E],
        ];
        let b = self.rng.pick(all);
        self.emit(b, false);
    }

    fn resolve(&mut self) -> bool {
        let n = self.starts.len();
        for &(pos, size, end, target, delta) in &self.fixups {
            let to = if target >= n {
                self.bytes.len()
            } else {
                self.starts[target] + delta
            };
            let rel = to as i64 - end as i64;
            let ok = match size {
                1 => i8::try_from(rel).is_ok(),
                2 => i16::try_from(rel).is_ok(),
                _ => true,
            };
            if !ok {
                return false;
            }
            self.bytes[pos..pos + size].copy_from_slice(&rel.to_le_bytes()[..size]);
        }
        true
    }
}

/// A random program: an IO instruction first, then a mix of the subset, branches,
/// a few instructions the coalescer leaves to the CPU, and a stopper.
pub(super) fn gen_program(mode: CodeMode, rng: &mut Rng) -> (Vec<u8>, Vec<u64>) {
    loop {
        let mut g = Gen {
            mode,
            rng,
            bytes: Vec::new(),
            starts: Vec::new(),
            must_support: Vec::new(),
            fixups: Vec::new(),
        };
        if g.rng.chance(1, 3) {
            g.string();
        } else {
            g.io();
        }
        let n = g.rng.below(20) as usize;
        let mut planned = 0;
        while planned < n {
            let here = g.starts.len();
            match g.rng.below(20) {
                0..=2 => g.io(),
                3 | 4 => g.string(),
                5 => {
                    let p = g.rng.pick(&DX_PORTS);
                    g.set_dx(p)
                }
                6..=8 => g.mov(),
                9..=12 => g.alu(),
                13 => g.nop(),
                14 | 15 => {
                    // Forward branch within the next few instructions or to the end.
                    let t = here + 1 + g.rng.below(5) as usize;
                    g.branch(t.min(here + (n - planned) + 1));
                }
                16 => {
                    // Backward branch (loops are bounded by the limits).
                    let t = here.saturating_sub(g.rng.below(5) as usize);
                    g.branch(t);
                }
                17 => {
                    // A counted loop: mov ecx, k; body; loop body.
                    let k = g.rng.below(5) as u32;
                    let mut b = Vec::new();
                    if g.mode == CodeMode::Bits16 {
                        b.push(0x66);
                    }
                    b.push(0xB9);
                    b.extend_from_slice(&k.to_le_bytes());
                    g.emit(&b, true);
                    let body = g.starts.len();
                    g.io();
                    if g.rng.chance(1, 2) {
                        g.alu();
                    }
                    g.emit(&[0xE2], true);
                    g.bytes.push(0);
                    let end = g.bytes.len();
                    g.fixups.push((end - 1, 1, end, body, 0));
                }
                18 if g.rng.chance(1, 4) => g.stopper(),
                _ => g.mov(),
            }
            planned += 1;
        }
        g.stopper();
        // Padding after the program.
        for _ in 0..16 {
            let b = g.rng.next() as u8;
            g.bytes.push(b);
        }
        if g.resolve() {
            return (g.bytes, g.must_support);
        }
    }
}

/// A random case in `mode` around a random program.
pub(super) fn random_case(mode: CodeMode, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let (code, must) = gen_program(mode, &mut rng);
    let mut c = Case::new(mode, code);
    c.seed = seed;
    c.must_support = must;
    // Code placement: usually early in a page, sometimes right before a page end.
    let jitter = if rng.chance(1, 6) {
        0xFF0 - rng.below(0x40)
    } else {
        rng.below(0x100)
    };
    c.ip += jitter;
    match mode {
        CodeMode::Bits32 if rng.chance(1, 4) => {
            // A CS base, page-aligned or not.
            let base = if rng.chance(1, 2) { 0x1000 } else { 0x1230 };
            c.seg_base[1] = base;
            c.ip -= base;
        }
        CodeMode::Bits16 if rng.chance(1, 4) => {
            // CS = 0x0701: linear = IP + 0x7010.
            c.seg_base[1] = 0x7010;
            c.ip -= 0x10;
        }
        CodeMode::Bits16 if rng.chance(1, 6) => {
            // IP right below 64 KiB: the code wraps to IP 0.
            c.seg_base[1] = 0;
            c.ip = 0xFFFF - rng.below(48);
        }
        _ => {}
    }
    let mut regs = GuestRegs::default();
    for k in 0..16 {
        let v = match rng.below(4) {
            0 => rng.pick(&EDGES),
            1 => rng.below(0x100),
            _ => rng.next(),
        };
        regs.set(k, v);
    }
    let upper = |rng: &mut Rng| {
        if rng.chance(1, 2) {
            rng.next() & !0xFFFF_FFFF
        } else {
            0
        }
    };
    regs.rcx = rng.below(12)
        | if mode == CodeMode::Bits64 {
            0
        } else {
            upper(&mut rng)
        };
    if rng.chance(1, 8) {
        regs.rcx |= 0x1_0000;
    }
    regs.rdx = u64::from(rng.pick(&DX_PORTS)) | (rng.next() & !0xFFFF);
    match mode {
        CodeMode::Bits16 => {
            // Segments at DATA; 16-bit offsets (bits above 15 are ignored).
            let off = |rng: &mut Rng| {
                let o = if rng.chance(1, 10) {
                    0xFFF0 + rng.below(16)
                } else {
                    rng.below(0x4000)
                };
                o | (rng.next() & !0xFFFF)
            };
            regs.rsi = off(&mut rng);
            regs.rdi = off(&mut rng);
            for k in [0, 2, 3, 4, 5] {
                c.seg_base[k] = DATA + rng.below(4) * 0x1000;
            }
        }
        CodeMode::Bits32 => {
            for k in [0, 2, 3, 4, 5] {
                c.seg_base[k] = if rng.chance(1, 3) {
                    rng.below(4) * 0x1000
                } else {
                    0
                };
            }
            regs.rsi = DATA + rng.below(0x8000) + upper(&mut rng);
            regs.rdi = DATA + rng.below(0x8000) + upper(&mut rng);
        }
        CodeMode::Bits64 => {
            c.seg_base = [0x5000, 0x6000, 0x7000, 0x8000, 0, 0];
            c.seg_base[4] = rng.below(4) * 0x1000;
            c.seg_base[5] = rng.below(4) * 0x1000;
            regs.rsi = DATA + rng.below(0x8000);
            regs.rdi = DATA + rng.below(0x8000);
            if rng.chance(1, 4) {
                regs.rsi |= rng.next() & !0xFFFF_FFFF;
            }
            if rng.chance(1, 8) {
                regs.rdi = 0x1F000 + rng.below(0x2000);
            }
            if rng.chance(1, 5) {
                c.unmap.push((c.code_linear() & !0xFFF) + 0x1000);
            }
        }
    }
    if rng.chance(1, 10) {
        // INS into the code (self-modifying code): ES:rDI a few bytes after RIP.
        let target = c.code_linear() + rng.below(24);
        match mode {
            CodeMode::Bits16 => {
                c.seg_base[0] = c.seg_base[1];
                regs.rdi = (target - c.seg_base[0]) | (rng.next() & !0xFFFF);
            }
            CodeMode::Bits32 => regs.rdi = target - c.seg_base[0],
            CodeMode::Bits64 => regs.rdi = target,
        }
    }
    if rng.chance(2, 3) {
        c.data_fill = Some(rng.next());
    }
    c.regs = regs;
    match mode {
        CodeMode::Bits32 if rng.chance(1, 3) => {
            c.paging32 = true;
            c.large_pages = rng.chance(1, 3);
            if !c.large_pages && rng.chance(1, 4) {
                c.unmap.push((c.code_linear() & !0xFFF) + 0x1000);
            }
        }
        CodeMode::Bits64 if c.unmap.is_empty() && rng.chance(1, 5) => c.large_pages = true,
        _ => {}
    }
    c.rflags = 0x2 | (rng.next() & STATUS);
    if mode != CodeMode::Bits16 && rng.chance(1, 5) {
        // User mode, IO allowed or not by IOPL.
        c.cpl = 3;
        c.rflags |= rng.below(4) << 12;
    }
    if rng.chance(1, 3) {
        c.rflags |= RF_DF;
    }
    if rng.chance(1, 2) {
        c.rflags |= RF_IF;
    }
    if rng.chance(1, 3) {
        c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
    }
    if rng.chance(1, 3) {
        // UART: OUT2 (IRQ line to the PIC) and some interrupt enables.
        c.board_init.push((COM1 + 4, 0x08 | rng.below(4) as u8));
        c.board_init.push((COM1 + 1, rng.below(16) as u8));
    }
    c.settings.extent = match rng.below(8) {
        0 => Extent::Line(64),
        1 => Extent::Line(16),
        2 => Extent::Bytes(1 + rng.below(48) as u32),
        3 => Extent::Insns(1 + rng.below(32) as u32),
        _ => Extent::Page,
    };
    c.settings.limits = Limits {
        max_insns: rng.pick(&[0, 1, 2, 3, 5, 8, 16, 64, 64, 1000]),
        max_string_elements: rng.pick(&[0, 1, 2, 3, 7, 16, 64, 4096, 4096]),
        max_quiet: rng.pick(&[0, 1, 2, 5, 48, 48, 1000]),
    };
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const MODES: [CodeMode; 3] = [CodeMode::Bits16, CodeMode::Bits32, CodeMode::Bits64];

    fn expect_ok(case: &Case) -> CoRun {
        check(case).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run_random(mode: CodeMode, base: u64, n: u64) {
        let mut stops: BTreeMap<String, u64> = BTreeMap::new();
        let mut insns = 0;
        let mut known = Vec::new();
        let mut inconclusive = 0u64;
        for k in 0..n {
            let seed = base + k;
            let case = random_case(mode, seed);
            match check(&case).map(|co| (co, false)) {
                Ok((co, stale_pic)) => {
                    if stale_pic {
                        known.push(seed);
                    }
                    inconclusive += u64::from(co.inconclusive);
                    insns += co.executed;
                    let key = match co.outcome {
                        Outcome::Done => format!("{:?}", co.stop),
                        Outcome::Fallback(r) => format!("fallback {r:?}"),
                    };
                    *stops.entry(key).or_default() += 1;
                    // The first instruction is a valid IO instruction: a fallback
                    // for a decode mismatch only when the extent cannot hold it.
                    if co.outcome == Outcome::Fallback(StopReason::Off) {
                        let len = first_exit_fields(&case).map_or(0, |f| f.1);
                        let room = match case.settings.extent {
                            Extent::Bytes(b) => u64::from(b),
                            Extent::Line(l) => u64::from(l) - case.code_linear() % u64::from(l),
                            _ => u64::MAX,
                        };
                        assert!(
                            room < len || !case.unmap.is_empty(),
                            "fallback Off for a valid first instruction\n{}",
                            describe(&case)
                        );
                    }
                }
                Err(e) => panic!("random program {mode:?} seed {seed:#x} failed:\n{e}"),
            }
        }
        println!(
            "{mode:?}: {n} programs, {insns} instructions coalesced, {inconclusive} \
             inconclusive (page tables written); stops {stops:?}"
        );
        assert!(known.is_empty(), "{mode:?}: stale-PIC cases {known:#x?}");
    }

    /// The stale-PIC case the checker once found. Before the exit the UART (OUT2, IER =
    /// THRE) drives IRQ4 high and the PIC has latched it (IRR = 0x11 with the PIT's
    /// IRQ0). IF = 0. The block: `out dx, al` (DX = 0x3F9, AL = 0: IER = 0, IRQ4 goes
    /// low), `in al, 0x20` (reads IRR), `hlt`. One exit per IO instruction: the run
    /// loop syncs the lines after the OUT, the 8259A drops the request, AL = 0x01.
    /// Coalesced: the PIC never sees IRQ4 fall, AL = 0x11.
    #[test]
    fn pic_irr_inside_a_block_with_if_clear_sees_device_line_changes() {
        for mode in MODES {
            let mut c = Case::new(mode, vec![0xEE, 0xE4, 0x20, 0xF4]);
            c.regs.rdx = 0x3F9;
            c.regs.rax = 0;
            c.board_init = vec![(COM1 + 4, 0x08), (COM1 + 1, 0x02)];
            let co = expect_ok(&c);
            assert_eq!(co.final_.regs.rax & 0xFF, 0x01, "{mode:?}");
        }
    }

    /// The same block with IF = 1: the executor syncs the lines after each access.
    #[test]
    fn pic_irr_inside_a_block_with_if_set_is_current() {
        for mode in MODES {
            let mut c = Case::new(mode, vec![0xEE, 0xE4, 0x20, 0xF4]);
            c.regs.rdx = 0x3F9;
            c.regs.rax = 0;
            c.rflags |= RF_IF;
            c.board_init = vec![(COM1 + 4, 0x08), (COM1 + 1, 0x02)];
            let co = expect_ok(&c);
            assert_eq!(co.final_.regs.rax & 0xFF, 0x01, "{mode:?}");
        }
    }

    #[test]
    fn random_programs_16_bit() {
        run_random(CodeMode::Bits16, 0x1600_0000, 5000);
    }

    #[test]
    fn random_programs_32_bit() {
        run_random(CodeMode::Bits32, 0x3200_0000, 5000);
    }

    #[test]
    fn random_programs_64_bit() {
        run_random(CodeMode::Bits64, 0x6400_0000, 5000);
    }

    #[test]
    fn our_defined_flags_agree_with_exec() {
        for op in AluOp::ALL {
            for size in [1u8, 2, 4, 8] {
                for src in 0..=0x50u64 {
                    assert_eq!(
                        sdm_defined(op, size, src),
                        exec::defined_flags(op, width_of(size), src),
                        "{op:?} size {size} src {src:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_host_alu_oracle_works() {
        // add al, 1 with al = 0x7F: OF, AF, SF set.
        let (r, f) = host_exec(AluOp::Add, 1, 0x7F, 1, 0);
        assert_eq!((r & 0xFF, f & STATUS), (0x80, 0x800 | 0x10 | 0x80));
        // sub eax, 1 with eax = 0: CF, AF, SF, PF.
        let (r, f) = host_exec(AluOp::Sub, 4, 0, 1, 0);
        assert_eq!((r, f & STATUS), (0xFFFF_FFFF, 1 | 0x10 | 0x80 | 4));
        // shr rax, cl with cl = 1.
        let (r, f) = host_exec(AluOp::Shr, 8, 3, 1, 0);
        assert_eq!((r, f & 1), (1, 1));
    }

    // -----------------------------------------------------------------------
    // Targeted scenarios for the contract's stop conditions
    // -----------------------------------------------------------------------

    /// `out dx, al` x3 with moves between, in `mode`, DX = the tracing device.
    fn burst(mode: CodeMode) -> Case {
        // out dx,al; mov al,0x11; out dx,al; inc al (FE C0); out dx,al; hlt
        let mut c = Case::new(mode, vec![0xEE, 0xB0, 0x11, 0xEE, 0xFE, 0xC0, 0xEE, 0xF4]);
        c.regs.rdx = 0xE0;
        c.regs.rax = 0x42;
        c
    }

    #[test]
    fn a_burst_runs_to_the_unsupported_instruction_in_every_mode() {
        for mode in MODES {
            let co = expect_ok(&burst(mode));
            assert_eq!(co.outcome, Outcome::Done);
            assert_eq!(
                (co.executed, co.stop),
                (5, Some(StopReason::Unsupported)),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn trap_flag_falls_back() {
        for mode in MODES {
            let mut c = burst(mode);
            c.rflags |= RF_TF;
            let co = expect_ok(&c);
            assert_eq!(co.outcome, Outcome::Fallback(StopReason::SingleStep));
        }
    }

    #[test]
    fn dr7_breakpoint_falls_back() {
        for mode in MODES {
            for dr7 in [0x401, 0x402, 0x480] {
                let mut c = burst(mode);
                c.dr7 = dr7;
                let co = expect_ok(&c);
                assert_eq!(
                    co.outcome,
                    Outcome::Fallback(StopReason::SingleStep),
                    "{dr7:#x}"
                );
            }
        }
    }

    #[test]
    fn cpl3_with_iopl0_runs_only_the_exiting_instruction() {
        for mode in [CodeMode::Bits32, CodeMode::Bits64] {
            for iopl in [0u64, 1, 2] {
                let mut c = burst(mode);
                c.cpl = 3;
                c.rflags |= iopl << 12;
                let co = expect_ok(&c);
                assert_eq!(co.outcome, Outcome::Done);
                // out; mov; then the second out is left to the CPU.
                assert_eq!((co.executed, co.stop), (2, Some(StopReason::IoPermission)));
            }
            let mut c = burst(mode);
            c.cpl = 3;
            c.rflags |= 3 << 12;
            assert_eq!(expect_ok(&c).executed, 5);
        }
    }

    /// UART set-up that raises IRQ4 with the PIC initialised and IF = 1: the run
    /// must stop right after the instruction that makes the interrupt deliverable.
    #[test]
    fn an_interrupt_becoming_deliverable_stops_right_after_that_instruction() {
        for mode in MODES {
            // mov dx,0x3fc; mov al,0x08; out dx,al   (MCR.OUT2)
            // mov dx,0x3f9; mov al,0x02; out dx,al   (IER.ETBEI: THRE interrupt now)
            // mov al,0x55; out 0xe0,al; hlt
            let mut code = Vec::new();
            let dx = |code: &mut Vec<u8>, p: u16| {
                if mode != CodeMode::Bits16 {
                    code.push(0x66);
                }
                code.push(0xBA);
                code.extend_from_slice(&p.to_le_bytes());
            };
            code.extend_from_slice(&[0xE6, 0xE1]); // out 0xe1, al (the exiting one)
            dx(&mut code, 0x3FC);
            code.extend_from_slice(&[0xB0, 0x08, 0xEE]);
            dx(&mut code, 0x3F9);
            code.extend_from_slice(&[0xB0, 0x02, 0xEE]);
            let stop_at = code.len() as u64;
            code.extend_from_slice(&[0xB0, 0x55, 0xE6, 0xE0, 0xF4]);
            let mut c = Case::new(mode, code);
            c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
            c.rflags |= RF_IF;
            let co = expect_ok(&c);
            assert_eq!(co.stop, Some(StopReason::InterruptPending), "{mode:?}");
            assert_eq!(co.final_.rip, c.ip + stop_at);
            assert_eq!(co.executed, 7);
            // With IF = 0 the same code runs on to the HLT.
            c.rflags &= !RF_IF;
            let co = expect_ok(&c);
            assert_eq!((co.executed, co.stop), (9, Some(StopReason::Unsupported)));
        }
    }

    /// With IF = 0 the coalescer does not look at the PIC during a block, while one
    /// exit per IO instruction brings the lines onto it after every exit: an IRQ line
    /// that rises and falls inside the block must leave the PIC the same either way
    /// (the 8259A drops an edge request whose line falls before it is acknowledged).
    #[test]
    fn an_irq_pulse_inside_a_block_with_if_clear_reaches_the_pic() {
        for mode in MODES {
            let mut code = Vec::new();
            let dx = |code: &mut Vec<u8>, p: u16| {
                if mode != CodeMode::Bits16 {
                    code.push(0x66);
                }
                code.push(0xBA);
                code.extend_from_slice(&p.to_le_bytes());
            };
            // out 0xe0,al (exiting); IER = ETBEI (THRE interrupt: IRQ4 high);
            // in al, IIR (THRE cleared: IRQ4 low); hlt.
            code.extend_from_slice(&[0xE6, 0xE0]);
            dx(&mut code, 0x3F9);
            code.extend_from_slice(&[0xB0, 0x02, 0xEE]);
            dx(&mut code, 0x3FA);
            code.extend_from_slice(&[0xEC, 0xF4]);
            let mut c = Case::new(mode, code);
            c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
            c.board_init.push((COM1 + 4, 0x08));
            let co = expect_ok(&c);
            assert_eq!((co.executed, co.stop), (6, Some(StopReason::Unsupported)));
        }
    }

    #[test]
    fn an_interrupt_mid_rep_outsb_stops_between_elements() {
        // UART IER = ETBEI written by rep outsb to 0x3f9 from a buffer [2, 2, 2].
        for mode in MODES {
            let mut c = Case::new(mode, vec![0xF3, 0x6E, 0xF4]);
            c.board_init.extend_from_slice(&PIC_INIT_IRQ4);
            c.board_init.push((COM1 + 4, 0x08));
            c.rflags |= RF_IF;
            c.regs.rdx = 0x3F9;
            c.regs.rcx = 3;
            c.regs.rsi = 0x100;
            c.seg_base[3] = if mode == CodeMode::Bits64 { 0 } else { DATA };
            let mut case = c.clone();
            // Put the buffer in the code so it is in RAM for every mode: write via
            // the code bytes is awkward; use DATA + 0x100 = 0x10100 instead.
            case.regs.rsi = if mode == CodeMode::Bits64 {
                DATA + 0x100
            } else {
                0x100
            };
            let co = expect_ok(&case);
            // RAM is zero there: IER = 0 -> no interrupt; the REP runs out.
            assert_eq!(co.elements, 3);
            assert_eq!(co.final_.regs.rcx & 0xFFFF, 0);
        }
    }

    #[test]
    fn page_crossing_instruction_at_the_extent_end() {
        // 64-bit: code ends a page with `mov eax, imm32` crossing into the next page.
        let mut code = vec![0xEE; 1];
        code.extend_from_slice(&[0xB8, 1, 2, 3, 4, 0xEE, 0xF4]);
        let mut c = Case::new(CodeMode::Bits64, code);
        c.ip = CODE + 0xFFE; // out at 0xffe, mov eax at 0xfff..0x1003
        c.regs.rdx = 0xE0;
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (1, Some(StopReason::ExtentEnd)));
        // Unmapped next page: same stop point, reported as unmapped code.
        c.unmap.push(CODE + 0x1000);
        let co = expect_ok(&c);
        assert_eq!(co.executed, 1);
        assert!(matches!(
            co.stop,
            Some(StopReason::ExtentEnd | StopReason::CodeUnmapped)
        ));
        // With a byte extent the crossing instruction is fine when the page is mapped.
        c.unmap.clear();
        c.settings.extent = Extent::Bytes(64);
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (3, Some(StopReason::Unsupported)));
        // ... and not when the next page is unmapped.
        c.unmap.push(CODE + 0x1000);
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (1, Some(StopReason::CodeUnmapped)));
    }

    #[test]
    fn extent_end_for_each_policy() {
        // 80 x `out dx, al` (1 byte each) then hlt, code 8 bytes before a line end.
        for mode in MODES {
            let mut code = vec![0xEE; 80];
            code.push(0xF4);
            let mut c = Case::new(mode, code);
            c.ip += 56; // 8 bytes before the end of a 64-byte line
            c.regs.rdx = 0xE0;
            for (extent, want) in [
                (Extent::Line(64), 8),
                (Extent::Line(16), 8),
                (Extent::Bytes(5), 5),
                (Extent::Insns(3), 3),
                // A page holds more than one block: full blocks chain.
                (Extent::Page, 80),
            ] {
                c.settings.extent = extent;
                let co = expect_ok(&c);
                assert_eq!(co.executed, want, "{mode:?} {extent:?}");
                let stop = if want == 80 {
                    StopReason::Unsupported
                } else {
                    StopReason::ExtentEnd
                };
                assert_eq!(co.stop, Some(stop), "{mode:?} {extent:?}");
            }
        }
    }

    #[test]
    fn the_instruction_and_element_limits() {
        for mode in MODES {
            let mut c = burst(mode);
            for max in [0u32, 1, 2, 3, 4] {
                c.settings.limits.max_insns = max;
                let co = expect_ok(&c);
                assert_eq!(co.executed, u64::from(max.max(1)));
                assert_eq!(co.stop, Some(StopReason::Limit));
            }
            // rep outsb with 10 elements, budget 4: RIP stays on it.
            let mut c = Case::new(mode, vec![0xF3, 0x6E, 0xF4]);
            c.regs.rdx = 0xE0;
            c.regs.rcx = 10;
            c.regs.rsi = if mode == CodeMode::Bits64 { DATA } else { 0x10 };
            c.settings.limits.max_string_elements = 4;
            let co = expect_ok(&c);
            assert_eq!((co.executed, co.elements), (1, 4));
            assert_eq!(co.final_.rip, c.ip);
            assert_eq!(co.final_.regs.rcx, 6);
            // A budget of 0: nothing at all.
            c.settings.limits.max_string_elements = 0;
            let co = expect_ok(&c);
            assert_eq!(co.outcome, Outcome::Fallback(StopReason::Limit));
        }
    }

    #[test]
    fn a_cache_hit_replays_and_self_modified_code_is_decoded_again() {
        for mode in MODES {
            let c = burst(mode);
            let mut cache = Box::new(BlockCache::new());
            let a = run_coalesced(&c, &mut cache, None);
            let b = run_coalesced(&c, &mut cache, None);
            assert_eq!((a.cache_misses, b.cache_hits), (1, 1));
            assert_eq!(a.final_, b.final_);
            // Change `mov al, 0x11` into `mov al, 0x22` and `inc al` into `dec al`.
            let mut m = c.clone();
            m.code[2] = 0x22;
            m.code[5] = 0xC8;
            let r = run_coalesced(&m, &mut cache, None);
            assert_eq!((r.cache_hits, r.cache_misses), (0, 1), "{mode:?}");
            let vals: Vec<u32> = r.final_.board.trace.iter().map(|a| a.value).collect();
            assert_eq!(vals, vec![0x42, 0x22, 0x21]);
            // The checker (fresh cache + replay) agrees on the new code.
            expect_ok(&m);
            // Changing the stopper into a NOP (after the block) still hits, and is
            // never wrong: the replayed block is the old, shorter one.
            let mut n = c.clone();
            n.code[7] = 0x90;
            assert_eq!(run_coalesced(&c, &mut cache, None).cache_misses, 1);
            let r = run_coalesced(&n, &mut cache, None);
            assert_eq!(r.cache_hits, 1);
            assert_eq!(r.executed, 5);
        }
    }

    #[test]
    fn rep_ins_into_the_blocks_own_code_stops_before_writing_it() {
        // 32-bit flat: rep insb with ES:EDI pointing at the following nop.
        let mut c = Case::new(CodeMode::Bits32, vec![0xF3, 0x6C, 0x90, 0x90, 0xF4]);
        c.regs.rdx = 0xE0;
        c.regs.rcx = 2;
        c.regs.rdi = CODE + 2;
        let co = expect_ok(&c);
        assert_eq!(co.outcome, Outcome::Fallback(StopReason::Memory));
    }

    #[test]
    fn string_element_that_faults_stops_before_it() {
        // 64-bit: rep outsb reading across into an unmapped page after 3 elements.
        let mut c = Case::new(CodeMode::Bits64, vec![0xF3, 0x6E, 0xF4]);
        c.unmap.push(DATA + 0x1000);
        c.regs.rdx = 0xE0;
        c.regs.rcx = 8;
        c.regs.rsi = DATA + 0xFFD;
        let co = expect_ok(&c);
        assert_eq!(
            (co.executed, co.elements, co.stop),
            (1, 3, Some(StopReason::Memory))
        );
        assert_eq!(co.final_.rip, c.ip);
    }

    /// `out 0xE0, al` then `code`, then hlt: a 64-bit case with RSP in the data area.
    fn after_out(code: &[u8]) -> Case {
        let mut bytes = vec![0xE6, 0xE0];
        bytes.extend_from_slice(code);
        bytes.push(0xF4);
        let mut c = Case::new(CodeMode::Bits64, bytes);
        c.rsp = DATA + 0x800;
        c.data_fill = Some(7);
        c.regs.rbx = DATA + 0x100;
        c.regs.rcx = 3;
        c.regs.rax = 0x8081_8283_8485_8687;
        c
    }

    #[test]
    fn memory_forms_agree_with_the_reference() {
        let programs: &[&[u8]] = &[
            // movzx eax, byte [rbx]; movsx rdx, word [rbx + rcx*2 + 4]; mov [rbx+8], eax
            &[
                0x0F, 0xB6, 0x03, 0x48, 0x0F, 0xBF, 0x54, 0x4B, 0x04, 0x89, 0x43, 0x08,
            ],
            // add [rbx], rax; cmp byte [rbx+1], 0x80; sub rdx, [rbx]; test [rbx], edx
            &[
                0x48, 0x01, 0x03, 0x80, 0x7B, 0x01, 0x80, 0x48, 0x2B, 0x13, 0x85, 0x13,
            ],
            // inc dword [rbx]; shl word [rbx+2], 3; shr byte [rbx], 1; mov qword [rbx], -1
            &[
                0xFF, 0x03, 0x66, 0xC1, 0x63, 0x02, 0x03, 0xD0, 0x2B, 0x48, 0xC7, 0x03, 0xFF, 0xFF,
                0xFF, 0xFF,
            ],
            // lea eax, [rbx + rcx*8 + 0x60]; lea rdx, [rip + 0x10]; movsxd rsi, [rbx]
            &[
                0x8D, 0x44, 0xCB, 0x60, 0x48, 0x8D, 0x15, 0x10, 0, 0, 0, 0x48, 0x63, 0x33,
            ],
            // push rbx; push -2; pop rdx; pop rsi; mov eax, [rsp - 8]
            &[0x53, 0x6A, 0xFE, 0x5A, 0x5E, 0x8B, 0x44, 0x24, 0xF8],
            // A stack frame: sub rsp, 0x28; mov [rsp+8], rax; cmp rsp, 0x10;
            // sub rsp, 0x100; add rsp, rcx; xor rsp, 0 ... add rsp, 0x128 - rcx is not
            // expressible, so: and rsp, -16; add rsp, 0x28
            &[
                0x48, 0x83, 0xEC, 0x28, 0x48, 0x89, 0x44, 0x24, 0x08, 0x48, 0x83, 0xFC, 0x10, 0x48,
                0x81, 0xEC, 0x00, 0x01, 0x00, 0x00, 0x48, 0x01, 0xCC, 0x48, 0x83, 0xE4, 0xF0, 0x48,
                0x83, 0xC4, 0x28,
            ],
            // call +1 (to the out); ...: call rel32 over a byte, then ret back
            // call L; jmp E; L: out 0xE0, al; ret; E:
            &[0xE8, 0x02, 0, 0, 0, 0xEB, 0x03, 0xE6, 0xE0, 0xC3],
        ];
        for code in programs {
            let c = after_out(code);
            let co = expect_ok(&c);
            assert_eq!(
                co.stop,
                Some(StopReason::Unsupported),
                "{code:02x?}: ran to the hlt\n{}",
                describe(&c)
            );
            assert!(co.executed as usize >= 2, "{code:02x?}");
        }
    }

    #[test]
    fn a_site_without_a_second_io_instruction_learns_to_run_only_it() {
        use crate::coalesce::engine::REPROBE_EVERY;
        // out; 12 x nop; hlt: nothing after the exiting instruction is worth emulating.
        let barren = after_out(&[0x90; 12]);
        // out; nop; out; hlt: a burst.
        let burst = after_out(&[0x90, 0xE6, 0xE0]);
        // out; 40 x nop; out; hlt: one exit saved for 42 emulated instructions does
        // not pay (EXIT_COST_IN_INSNS).
        let mut thin_code = vec![0x90; 40];
        thin_code.extend([0xE6, 0xE0]);
        let thin = after_out(&thin_code);
        // Full runs of a barren site: the first exit, then after 16, 32, 64, 128 exits.
        let r = usize::from(REPROBE_EVERY);
        let probes = [0, r, 3 * r, 7 * r, 15 * r];
        for (case, barren_site, full_len) in
            [(barren, true, 13), (burst, false, 3), (thin, true, 42)]
        {
            let mut cache = Box::new(BlockCache::new());
            let mut c = Coalescer::new(case.settings, &mut cache);
            let exit = Some(first_exit_fields(&case).unwrap());
            let mut seen = Vec::new();
            for _ in 0..=probes[4] + 1 {
                let co = run_coalesced_by(&case, &mut c, exit);
                // Whatever the site memory chose, the guest sees a correct prefix.
                let re = run_reference(&case, &co, false).unwrap();
                assert!(
                    diff_finals(&co.final_, &re).is_empty(),
                    "{}",
                    describe(&case)
                );
                seen.push((co.executed, co.stop));
            }
            let full = (full_len, Some(StopReason::Unsupported));
            // Learned: nothing emulated, the exit goes to the one-instruction handler.
            let one = (0, Some(StopReason::Learned));
            if barren_site {
                // Full once, then the one-instruction handler, with full re-probes
                // twice as far apart each time.
                for (i, s) in seen.iter().enumerate() {
                    let want = if probes.contains(&i) { full } else { one };
                    assert_eq!(*s, want, "exit {i}: {seen:?}");
                }
            } else {
                assert!(
                    seen.iter()
                        .all(|s| *s == (3, Some(StopReason::Unsupported))),
                    "{seen:?}"
                );
            }
        }
    }

    #[test]
    fn stack_frame_arithmetic_on_rsp_runs_to_the_end() {
        // out; sub rsp, 0x28; mov [rsp+8], rax; cmp rsp, 0x10; add rsp, 0x28; hlt
        let code = [
            0x48, 0x83, 0xEC, 0x28, 0x48, 0x89, 0x44, 0x24, 0x08, 0x48, 0x83, 0xFC, 0x10, 0x48,
            0x83, 0xC4, 0x28,
        ];
        let c = after_out(&code);
        let co = expect_ok(&c);
        assert_eq!(co.stop, Some(StopReason::Unsupported), "{}", describe(&c));
        // The out and all four: only the hlt is left to the CPU.
        assert_eq!(co.executed, 5, "{}", describe(&c));
    }

    #[test]
    fn transfers_leave_the_extent_only_to_canonical_targets() {
        // out; jmp rel32 to the next 4 KiB page, which holds out; call back; hlt ...
        let mut code = vec![0xE6, 0xE0, 0xE9];
        let target = 0x1000i32 - 7;
        code.extend_from_slice(&target.to_le_bytes());
        code.resize(0x1000, 0xF4);
        // At CODE + 0x1000: out 0xE0, al; ret (to the return address pushed below).
        code.extend_from_slice(&[0xE6, 0xE0, 0xC3]);
        let mut c = Case::new(CodeMode::Bits64, code);
        c.rsp = DATA + 0x800;
        // Return to the first page's hlt at CODE + 7.
        c.data_fill = None;
        let (_, _, _) = c.build();
        // The stack holds zeros: RET goes to linear 0, canonical, a hop to page 0.
        let co = expect_ok(&c);
        assert!(co.executed >= 4, "out, jmp, out, ret: {}", co.executed);
        // A non-canonical return address: the RET is left to the CPU (#GP there).
        // out; mov rax, 0x8000_0000_0000_0000; push rax; ret
        let c = after_out(&[0x48, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x50, 0xC3]);
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (3, Some(StopReason::BranchOut)));
        assert_eq!(co.final_.rsp, c.rsp - 8);
    }

    #[test]
    fn accesses_that_fault_or_would_set_a_d_stop_before_the_instruction() {
        // mov eax, [rbx] with RBX on an unmapped page; on a page without A/D; a write
        // to a page without A/D; a store across into an unmapped page.
        type Setup = fn(&mut Case);
        let cases: Vec<(Vec<u8>, Setup)> = vec![
            (vec![0x8B, 0x03], |c| c.unmap.push(DATA + 0x1000)),
            (vec![0x8B, 0x03], |c| c.ad_clear.push(DATA + 0x1000)),
            (vec![0x89, 0x03], |c| c.ad_clear.push(DATA + 0x1000)),
            (vec![0x48, 0x89, 0x43, 0xFC], |c| {
                c.unmap.push(DATA + 0x1000)
            }),
            // push with RSP on a page without A/D.
            (vec![0x53], |c| {
                c.rsp = DATA + 0x1800;
                c.ad_clear.push(DATA + 0x1000);
            }),
            // pop from a non-canonical RSP.
            (vec![0x5A], |c| c.rsp = 0x0000_8000_0000_0000),
        ];
        for (code, setup) in cases {
            let mut c = after_out(&code);
            c.regs.rbx = DATA + 0x1000;
            setup(&mut c);
            let co = expect_ok(&c);
            assert_eq!(
                (co.executed, co.stop),
                (1, Some(StopReason::Memory)),
                "{code:02x?}\n{}",
                describe(&c)
            );
            assert_eq!(co.final_.rip, c.ip + 2);
        }
        // The same load with A/D set runs on.
        let mut c = after_out(&[0x8B, 0x03]);
        c.regs.rbx = DATA + 0x1000;
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (2, Some(StopReason::Unsupported)));
    }

    #[test]
    fn a_store_into_the_blocks_own_code_stops_before_it() {
        // mov byte [rip + 0], 0xF4 would overwrite the following nop with hlt.
        let c = after_out(&[0xC6, 0x05, 0x00, 0x00, 0x00, 0x00, 0xF4, 0x90, 0x90]);
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (1, Some(StopReason::Memory)));
        // A push into the code page (RSP just above the code) stops too.
        let mut c = after_out(&[0x53, 0x90]);
        c.rsp = CODE + 8;
        let co = expect_ok(&c);
        assert_eq!((co.executed, co.stop), (1, Some(StopReason::Memory)));
    }
}
