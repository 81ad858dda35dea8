//! Random programs (an IO instruction first, then a mix of the subset, branches,
//! instructions the coalescer leaves to the CPU, and a stopper) and random cases
//! around them: placement, registers, segments, paging, flags, devices, settings.

use super::board::{COM1, PIC_INIT_IRQ4};
use super::case::{Case, DATA, RF_DF, RF_IF, STATUS};
use super::rng::Rng;
use crate::coalesce::block::Extent;
use crate::coalesce::exec::Limits;
use crate::coalesce::insn::CodeMode;
use crate::x86::regs::GuestRegs;

/// A register operand as encoded: number 0-15, and for byte registers whether it is
/// AH..BH (no REX allowed) or SPL..DIL (REX required).
#[derive(Clone, Copy, Debug)]
struct EncReg {
    num: u8,
    rex_needed: bool,
    rex_forbidden: bool,
    /// Names RSP/ESP/SP/SPL (an ordinary operand; forms that would clobber the stack
    /// pointer before a CALL avoid it).
    rsp: bool,
}

/// The instruction mix of a generated program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::coalesce) enum Mix {
    /// Everything in proportion: IO, strings, moves, ALU, branches, memory forms.
    Any,
    /// Half the instructions are memory forms.
    Memory,
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
        // A string instruction right after STI runs in its shadow: the coalescer
        // leaves it to the CPU.
        let after_sti = self
            .starts
            .last()
            .is_some_and(|&s| self.bytes[s..] == [0xFB]);
        let string = bytes
            .iter()
            .find(|b| {
                !matches!(
                    b,
                    0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF2 | 0xF3 | 0x40
                        ..=0x4F
                )
            })
            .is_some_and(|&b| matches!(b, 0x6C..=0x6F | 0xA4..=0xA7 | 0xAA..=0xAF));
        self.starts.push(self.bytes.len());
        if supported && !(after_sti && string) {
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
                    (b, true)
                }
                1 => {
                    // C6/C7 /0 with a register operand
                    let op = if size == 1 { 0xC6 } else { 0xC7 };
                    let Some(mut b) = self.head(size, &[op], None, Some((dst, Some(0)))) else {
                        continue;
                    };
                    b.extend(self.imm(size, v));
                    (b, true)
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
                    (b, true)
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
            // ADD OR ADC SBB AND SUB XOR CMP (ModRM /digit and opcode base / 8).
            let op8 = self.rng.below(8) as u8;
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
                    (b, true)
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
                    (b, true)
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
                            (b, true)
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
                            (b, true)
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
                        (b, true)
                    } else {
                        let Some(b) = self.head(
                            size,
                            &[0xFE + u8::from(!w8)],
                            None,
                            Some((dst, Some(u8::from(dec)))),
                        ) else {
                            continue;
                        };
                        (b, true)
                    }
                }
                5 | 6 => {
                    // Shifts and rotates (/0 ROL /1 ROR /2 RCL /3 RCR /4 SHL /5 SHR
                    // /7 SAR): D0/D1 by 1, D2/D3 by CL, C0/C1 by imm8. /6 (the SAL
                    // alias) is left to the CPU.
                    let ext = if self.rng.chance(1, 12) {
                        6
                    } else {
                        self.rng.pick(&[0u8, 1, 2, 3, 4, 5, 7, 4, 5])
                    };
                    let form = self.rng.below(8);
                    let supported = ext != 6;
                    let b = if form < 2 {
                        self.head(size, &[0xD2 + u8::from(!w8)], None, Some((dst, Some(ext))))
                    } else if form < 4 {
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
                7 => {
                    // NOT/NEG: F6/F7 /2 /3.
                    let ext = 2 + u8::from(self.rng.chance(1, 2));
                    let Some(b) =
                        self.head(size, &[0xF6 + u8::from(!w8)], None, Some((dst, Some(ext))))
                    else {
                        continue;
                    };
                    (b, true)
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
                    (b, true)
                }
            };
            self.emit(&enc, ok);
            return;
        }
        self.emit(&[0x90], true);
    }

    /// A memory operand: ModRM mod and r/m, the SIB and displacement bytes, REX.X/REX.B,
    /// and the prefixes it needs (a segment override, 67h). 64-bit code: mostly
    /// [rsi|rdi + disp8] and [rsi|rdi + rcx*s + disp8] (the case points RSI and RDI into
    /// the data area and keeps RCX small), sometimes [rsp + disp8], [rip + disp32] near
    /// the code, or a base holding a random value (a fault or a non-canonical address:
    /// a stop before the instruction). 16- and 32-bit code: the same through ESI/EDI
    /// or SI/DI/BX/BP (16-bit addressing, the BP forms through SS), absolute
    /// displacements, the other address size with 67h now and then, and segment
    /// overrides (CS and SS too: read-only or expand-up checks, writes into the code).
    fn mem_operand(&mut self) -> (u8, u8, Vec<u8>, u8, Vec<u8>) {
        let disp = self.rng.pick(&[0u8, 1, 4, 8, 0x10, 0x3F, 0xF8, 0xFC]);
        if self.long() {
            let (m, r, t, xb) = match self.rng.below(10) {
                0..=3 => (1, 6 + self.rng.below(2) as u8, vec![disp], 0),
                4 | 5 => {
                    let scale = self.rng.below(4) as u8;
                    let base = 6 + self.rng.below(2) as u8;
                    (1, 4, vec![(scale << 6) | (1 << 3) | base, disp], 0)
                }
                6 => (1, 4, vec![0x24, disp], 0),
                7 => {
                    // [rip + disp32]: into the code just behind or ahead.
                    let d = (self.rng.below(96) as i32 - 48).to_le_bytes();
                    (0, 5, d.to_vec(), 0)
                }
                8 => (0, 3, Vec::new(), 0),
                _ => (1, 6, vec![disp], 1),
            };
            return (m, r, t, xb, Vec::new());
        }
        let mut pfx = Vec::new();
        if self.rng.chance(1, 5) {
            pfx.push(self.rng.pick(&[0x26u8, 0x2E, 0x36, 0x3E, 0x64, 0x65]));
        }
        let native16 = self.mode == CodeMode::Bits16;
        let alt = self.rng.chance(1, 4);
        if alt {
            pfx.push(0x67);
        }
        let addr16 = native16 != alt;
        let (m, r, t) = if addr16 {
            match self.rng.below(8) {
                0 => (1, 4, vec![disp]),                       // [si + d8]
                1 => (1, 5, vec![disp]),                       // [di + d8]
                2 => (1, 7, vec![disp]),                       // [bx + d8]
                3 => (1, 6, vec![disp]),                       // [bp + d8] (SS)
                4 => (1, self.rng.below(4) as u8, vec![disp]), // [bx|bp + si|di + d8]
                5 => {
                    // [disp16]
                    let d = (self.rng.below(0x3000) as u16).to_le_bytes();
                    (0, 6, d.to_vec())
                }
                _ => (0, 4 + self.rng.below(2) as u8, Vec::new()), // [si] / [di]
            }
        } else {
            match self.rng.below(8) {
                0..=2 => (1, 6 + self.rng.below(2) as u8, vec![disp]),
                3 => {
                    let scale = self.rng.below(4) as u8;
                    let base = 6 + self.rng.below(2) as u8;
                    (1, 4, vec![(scale << 6) | (1 << 3) | base, disp])
                }
                4 => (1, 4, vec![0x24, disp]), // [esp + d8] (SS)
                5 => (1, 5, vec![disp]),       // [ebp + d8] (SS)
                6 => {
                    // [disp32]: into the data area.
                    let d = (DATA as u32 + self.rng.below(0x4000) as u32).to_le_bytes();
                    (0, 5, d.to_vec())
                }
                _ => (0, 3, Vec::new()), // [ebx]
            }
        };
        (m, r, t, 0, pfx)
    }

    /// Prefix, REX, opcode, ModRM and the operand bytes of a memory form; `reg` in
    /// ModRM.reg, or the opcode extension `ext`. `None` if `reg` cannot take a REX.
    fn head_mem(
        &mut self,
        size: u8,
        opcode: &[u8],
        reg: Option<EncReg>,
        ext: Option<u8>,
    ) -> Option<Vec<u8>> {
        let (mod_, rm, tail, xb, mut out) = self.mem_operand();
        let (pfx, w) = self.opsize(size);
        let needed = w || xb != 0 || reg.is_some_and(|r| r.rex_needed);
        if needed && reg.is_some_and(|r| r.rex_forbidden) {
            return None;
        }
        out.extend(pfx);
        if needed {
            let r = reg.map_or(0, |r| r.num >> 3);
            out.push(0x40 | (u8::from(w) << 3) | (r << 2) | xb);
        }
        out.extend_from_slice(opcode);
        let regf = ext.unwrap_or_else(|| reg.map_or(0, |r| r.num & 7));
        out.push((mod_ << 6) | (regf << 3) | rm);
        out.extend(tail);
        Some(out)
    }

    /// A memory form of the subset.
    fn mem(&mut self) {
        for _ in 0..8 {
            let size = self.size();
            let w8 = size == 1;
            let wide = u8::from(!w8);
            let reg = self.reg(size);
            let v = self.value();
            let op8 = self.rng.below(8) as u8;
            // LOCK on the read-modify-write forms, now and then.
            let mut lockable = false;
            let b = match self.rng.below(16) {
                15 => {
                    // CMPXCHG / XADD m, r.
                    lockable = true;
                    let opc = if self.rng.chance(1, 2) { 0xB0 } else { 0xC0 } + wide;
                    self.head_mem(size, &[0x0F, opc], Some(reg), None)
                }
                // MOV r, m / MOV m, r
                0 => {
                    let load = self.rng.chance(1, 2);
                    self.head_mem(size, &[0x88 + 2 * u8::from(load) + wide], Some(reg), None)
                }
                // MOV m, imm
                1 => self
                    .head_mem(size, &[0xC6 + wide], None, Some(0))
                    .map(|mut b| {
                        b.extend(self.imm(size, v));
                        b
                    }),
                // ALU m, r / ALU r, m
                2 => {
                    let dir = 2 * u8::from(self.rng.chance(1, 2));
                    lockable = dir == 0 && op8 != 7;
                    self.head_mem(size, &[op8 * 8 + dir + wide], Some(reg), None)
                }
                // Group 1 m, imm
                3 => {
                    lockable = op8 != 7;
                    let (opc, n) = if w8 {
                        (0x80, 1)
                    } else if self.rng.chance(1, 2) {
                        (0x83, 1)
                    } else {
                        (0x81, size)
                    };
                    self.head_mem(size, &[opc], None, Some(op8)).map(|mut b| {
                        b.extend(self.imm(n, v));
                        b
                    })
                }
                // TEST m, imm ; NOT m ; NEG m ; TEST m, r
                4 => match self.rng.below(3) {
                    0 => self
                        .head_mem(size, &[0xF6 + wide], None, Some(0))
                        .map(|mut b| {
                            b.extend(self.imm(size, v));
                            b
                        }),
                    1 => {
                        let ext = 2 + u8::from(self.rng.chance(1, 2));
                        self.head_mem(size, &[0xF6 + wide], None, Some(ext))
                    }
                    _ => self.head_mem(size, &[0x84 + wide], Some(reg), None),
                },
                // INC/DEC m
                5 => {
                    lockable = true;
                    let ext = u8::from(self.rng.chance(1, 2));
                    self.head_mem(size, &[0xFE + wide], None, Some(ext))
                }
                // Shifts and rotates on memory, by 1, CL or imm8.
                6 => {
                    let ext = self.rng.pick(&[0u8, 1, 2, 3, 4, 5, 7]);
                    match self.rng.below(3) {
                        0 => self.head_mem(size, &[0xD0 + wide], None, Some(ext)),
                        1 => self.head_mem(size, &[0xD2 + wide], None, Some(ext)),
                        _ => self
                            .head_mem(size, &[0xC0 + wide], None, Some(ext))
                            .map(|mut b| {
                                b.push(v as u8);
                                b
                            }),
                    }
                }
                // MOVZX/MOVSX r, m8/m16 ; MOVSXD r64, m32
                7 => {
                    let sizes: &[u8] = if self.long() { &[2, 4, 8] } else { &[2, 4] };
                    let size = self.rng.pick(sizes);
                    let reg = self.reg(size);
                    if size == 8 && self.rng.chance(1, 3) {
                        self.head_mem(8, &[0x63], Some(reg), None)
                    } else {
                        let opc = self.rng.pick(&[0xB6u8, 0xB7, 0xBE, 0xBF]);
                        self.head_mem(size, &[0x0F, opc], Some(reg), None)
                    }
                }
                // CMOVcc r, m
                10 if size != 1 => {
                    let cc = self.rng.below(16) as u8;
                    self.head_mem(size, &[0x0F, 0x40 + cc], Some(reg), None)
                }
                // SETcc m8 ; XCHG m, r
                11 => {
                    if self.rng.chance(1, 2) {
                        let cc = self.rng.below(16) as u8;
                        self.head_mem(1, &[0x0F, 0x90 + cc], None, Some(0))
                    } else {
                        self.head_mem(size, &[0x86 + wide], Some(reg), None)
                    }
                }
                // BT/BTS/BTR/BTC m, r (bit-string addressing) ; m, imm8
                12 if size != 1 => {
                    let k = self.rng.below(4) as u8;
                    if self.rng.chance(1, 2) {
                        self.head_mem(size, &[0x0F, 0xA3 + 8 * k], Some(reg), None)
                    } else {
                        self.head_mem(size, &[0x0F, 0xBA], None, Some(4 + k))
                            .map(|mut b| {
                                b.push(v as u8);
                                b
                            })
                    }
                }
                // IMUL r, m ; IMUL r, m, imm8 ; MUL/IMUL/DIV/IDIV m
                13 => match self.rng.below(3) {
                    0 if size != 1 => self.head_mem(size, &[0x0F, 0xAF], Some(reg), None),
                    1 if size != 1 => self.head_mem(size, &[0x6B], Some(reg), None).map(|mut b| {
                        b.push(v as u8);
                        b
                    }),
                    _ => {
                        let ext = 4 + self.rng.below(4) as u8;
                        self.head_mem(size, &[0xF6 + wide], None, Some(ext))
                    }
                },
                // CALL/JMP [m] (the target is whatever the memory holds).
                14 if self.rng.chance(1, 3) => {
                    let ext = if self.rng.chance(1, 2) { 2 } else { 4 };
                    let sz = if self.long() {
                        4
                    } else {
                        self.rng.pick(&[2u8, 4])
                    };
                    self.head_mem(sz, &[0xFF], None, Some(ext))
                }
                // LEA
                _ => {
                    let sizes: &[u8] = if self.long() { &[2, 4, 8] } else { &[2, 4] };
                    let size = self.rng.pick(sizes);
                    let reg = self.reg(size);
                    self.head_mem(size, &[0x8D], Some(reg), None)
                }
            };
            if let Some(mut b) = b {
                if lockable && self.rng.chance(1, 4) {
                    b.insert(0, 0xF0);
                }
                self.emit(&b, true);
                return;
            }
        }
        self.emit(&[0x90], true);
    }

    /// The other register forms: CMOVcc, SETcc, XCHG, BSWAP, the bit tests, IMUL,
    /// MUL/IMUL/DIV/IDIV (after a zeroed rDX half the time, so some divides do not
    /// fault), CBW..CQO, CLC/STC/CMC/CLD/STD, and in 64-bit code an indirect JMP or
    /// CALL through a register loaded by a RIP-relative LEA with an instruction of the
    /// program as its target.
    fn more(&mut self, target: usize) {
        for _ in 0..8 {
            // 16/32/64-bit operand sizes (none of these has a useful 8-bit form but
            // SETcc, XCHG and the group 3 forms).
            let size = loop {
                let s = self.size();
                if s != 1 {
                    break s;
                }
            };
            let dst = self.reg(size);
            let src = self.reg(size);
            let both = true;
            let cc = self.rng.below(16) as u8;
            let (enc, ok) = match self.rng.below(15) {
                12 => (vec![self.rng.pick(&[0xFAu8, 0xFB, 0xFB])], true),
                13 => {
                    // PUSHFQ / POPFQ (64-bit), else STI again.
                    if !self.long() {
                        (vec![0xFB], true)
                    } else {
                        (vec![self.rng.pick(&[0x9Cu8, 0x9D])], true)
                    }
                }
                14 => {
                    // CMPXCHG / XADD r, r (0F B0/B1, C0/C1). A 32-bit register CMPXCHG
                    // in 64-bit code stays with the CPU.
                    let sz = if self.rng.chance(1, 4) { 1 } else { size };
                    let (a, c) = (self.reg(sz), self.reg(sz));
                    let xadd = self.rng.chance(1, 2);
                    let opc = if xadd { 0xC0 } else { 0xB0 } + u8::from(sz != 1);
                    let Some(b) = self.head(sz, &[0x0F, opc], Some(c), Some((a, None))) else {
                        continue;
                    };
                    let must = xadd || !(self.long() && sz == 4);
                    (b, must)
                }
                0 => {
                    let Some(b) = self.head(size, &[0x0F, 0x40 + cc], Some(dst), Some((src, None)))
                    else {
                        continue;
                    };
                    (b, both)
                }
                1 => {
                    let r8 = self.reg(1);
                    let Some(b) = self.head(1, &[0x0F, 0x90 + cc], None, Some((r8, Some(0))))
                    else {
                        continue;
                    };
                    (b, true)
                }
                2 => {
                    let (sz, a, c) = if self.rng.chance(1, 3) {
                        (1, self.reg(1), self.reg(1))
                    } else {
                        (size, dst, src)
                    };
                    let b = if sz != 1 && self.rng.chance(1, 3) {
                        // 90+r: XCHG rAX, r (r != 0: 90 itself is NOP).
                        if a.num & 7 == 0 {
                            continue;
                        }
                        self.head_opreg(sz, 0x90 + (a.num & 7), a)
                    } else {
                        self.head(sz, &[0x86 + u8::from(sz != 1)], Some(a), Some((c, None)))
                    };
                    let Some(b) = b else { continue };
                    (b, true)
                }
                3 => {
                    if size == 2 {
                        continue;
                    }
                    // 0F C8+r: REX.B selects R8-R15.
                    let Some(mut b) = self.head_opreg(size, 0x0F, dst) else {
                        continue;
                    };
                    b.push(0xC8 + (dst.num & 7));
                    (b, true)
                }
                4 => {
                    // BT/BTS/BTR/BTC r, r (0F A3/AB/B3/BB) or r, imm8 (0F BA /4..7).
                    let k = self.rng.below(4) as u8;
                    if self.rng.chance(1, 2) {
                        let Some(b) =
                            self.head(size, &[0x0F, 0xA3 + 8 * k], Some(src), Some((dst, None)))
                        else {
                            continue;
                        };
                        (b, both)
                    } else {
                        let Some(mut b) =
                            self.head(size, &[0x0F, 0xBA], None, Some((dst, Some(4 + k))))
                        else {
                            continue;
                        };
                        b.push(self.rng.next() as u8);
                        (b, true)
                    }
                }
                5 => {
                    // IMUL r, r/m; IMUL r, r/m, imm8 / imm.
                    let v = self.value();
                    let b = match self.rng.below(3) {
                        0 => self.head(size, &[0x0F, 0xAF], Some(dst), Some((src, None))),
                        1 => self
                            .head(size, &[0x6B], Some(dst), Some((src, None)))
                            .map(|mut b| {
                                b.push(v as u8);
                                b
                            }),
                        _ => {
                            let imm = self.imm(size, v);
                            self.head(size, &[0x69], Some(dst), Some((src, None)))
                                .map(|mut b| {
                                    b.extend(imm);
                                    b
                                })
                        }
                    };
                    let Some(b) = b else { continue };
                    (b, both)
                }
                6 | 7 => {
                    // MUL/IMUL/DIV/IDIV r (F6/F7 /4../7), often after zeroing rDX (or
                    // AH for bytes) so that a divide can succeed.
                    let sz = if self.rng.chance(1, 4) { 1 } else { size };
                    let r = self.reg(sz);
                    let ext = 4 + self.rng.below(4) as u8;
                    if ext >= 6 && self.rng.chance(1, 2) {
                        let zero = if sz == 1 {
                            vec![0xB4, 0x00]
                        } else {
                            let Some(mut z) = self.head_opreg(
                                sz,
                                0xBA,
                                EncReg {
                                    num: 2,
                                    rex_needed: false,
                                    rex_forbidden: false,
                                    rsp: false,
                                },
                            ) else {
                                continue;
                            };
                            z.extend_from_slice(&[0; 8][..usize::from(sz)]);
                            z
                        };
                        self.emit(&zero, true);
                    }
                    let Some(b) =
                        self.head(sz, &[0xF6 + u8::from(sz != 1)], None, Some((r, Some(ext))))
                    else {
                        continue;
                    };
                    (b, true)
                }
                8 => {
                    // CBW/CWDE/CDQE, CWD/CDQ/CQO.
                    let op = 0x98 + u8::from(self.rng.chance(1, 2));
                    let acc = EncReg {
                        num: 0,
                        rex_needed: false,
                        rex_forbidden: false,
                        rsp: false,
                    };
                    let Some(b) = self.head_opreg(size, op, acc) else {
                        continue;
                    };
                    (b, true)
                }
                9 | 10 => (vec![self.rng.pick(&[0xF8u8, 0xF9, 0xF5, 0xFC, 0xFD])], true),
                _ if !self.long() => {
                    // call r / jmp r to a register's value (16/32-bit code: mostly out
                    // of the block, a stop; the hand-written cases run real targets).
                    let r = self.reg(size);
                    let ext = if self.rng.chance(1, 2) { 0xD0 } else { 0xE0 };
                    let Some(mut b) = self.head_opreg(size, 0xFF, r) else {
                        continue;
                    };
                    b.push(ext | (r.num & 7));
                    (b, true)
                }
                _ => {
                    // lea r64, [rip + target]; jmp r64 / call r64.
                    let r = self.reg(8);
                    if r.rsp {
                        continue;
                    }
                    let rex = 0x48 | ((r.num >> 3) << 2);
                    self.emit(&[rex, 0x8D, 0x05 | ((r.num & 7) << 3)], true);
                    self.bytes.extend([0; 4]);
                    let end = self.bytes.len();
                    self.fixups.push((end - 4, 4, end, target, 0));
                    let rexb = if r.num >= 8 { vec![0x41] } else { vec![] };
                    let ext = if self.rng.chance(1, 2) { 0xD0 } else { 0xE0 };
                    ([rexb, vec![0xFF, ext | (r.num & 7)]].concat(), true)
                }
            };
            self.emit(&enc, ok);
            return;
        }
        self.emit(&[0x90], true);
    }

    /// A stack form: PUSH r / imm, POP r, PUSHF, POPF, LEAVE (slots of the operand
    /// size: 2 or 4 bytes in 16- and 32-bit code, 8 in 64-bit code).
    fn stack(&mut self) {
        let size = if self.long() {
            8
        } else if self.rng.chance(1, 2) {
            2
        } else {
            4
        };
        for _ in 0..8 {
            let r = self.reg(size);
            let (enc, ok) = match self.rng.below(8) {
                0 | 1 => {
                    let Some(b) = self.head_opreg(size, 0x50 + (r.num & 7), r) else {
                        continue;
                    };
                    (b, true)
                }
                2 | 3 => {
                    let Some(b) = self.head_opreg(size, 0x58 + (r.num & 7), r) else {
                        continue;
                    };
                    (b, true)
                }
                4 => {
                    let v = self.value();
                    let acc = EncReg {
                        num: 0,
                        rex_needed: false,
                        rex_forbidden: false,
                        rsp: false,
                    };
                    let imm8 = self.rng.chance(1, 2);
                    let Some(mut b) = self.head_opreg(size, if imm8 { 0x6A } else { 0x68 }, acc)
                    else {
                        continue;
                    };
                    // REX.W is meaningless on PUSH imm: drop it.
                    b.retain(|&x| x != 0x48);
                    let n = if imm8 { 1 } else { usize::from(size.min(4)) };
                    b.extend_from_slice(&v.to_le_bytes()[..n]);
                    (b, true)
                }
                5 | 6 => {
                    let acc = EncReg {
                        num: 0,
                        rex_needed: false,
                        rex_forbidden: false,
                        rsp: false,
                    };
                    let op = self.rng.pick(&[0x9Cu8, 0x9D]);
                    let Some(mut b) = self.head_opreg(size, op, acc) else {
                        continue;
                    };
                    b.retain(|&x| x != 0x48);
                    (b, true)
                }
                _ => {
                    let acc = EncReg {
                        num: 0,
                        rex_needed: false,
                        rex_forbidden: false,
                        rsp: false,
                    };
                    let Some(mut b) = self.head_opreg(size, 0xC9, acc) else {
                        continue;
                    };
                    b.retain(|&x| x != 0x48);
                    (b, true)
                }
            };
            self.emit(&enc, ok);
            return;
        }
        self.emit(&[0x90], true);
    }

    /// `call L; jmp E; L: <an IO or ALU instruction>; ret; E:` with the operand size
    /// of the code (sometimes the other one, 66h, in 16- and 32-bit code).
    fn call_ret(&mut self) {
        let other = !self.long() && self.rng.chance(1, 4);
        let pfx: Vec<u8> = if other { vec![0x66] } else { Vec::new() };
        let rel = match (self.mode, other) {
            (CodeMode::Bits16, false) | (CodeMode::Bits32, true) => 2,
            _ => 4,
        };
        let mut call = pfx.clone();
        call.push(0xE8);
        self.emit(&call, true);
        self.bytes.extend(std::iter::repeat_n(0, rel));
        let call_end = self.bytes.len();
        let call_fix = self.fixups.len();
        self.fixups.push((call_end - rel, rel, call_end, 0, 0));
        self.emit(&[0xEB], true);
        self.bytes.push(0);
        let jmp_end = self.bytes.len();
        let jmp_fix = self.fixups.len();
        self.fixups.push((jmp_end - 1, 1, jmp_end, 0, 0));
        self.fixups[call_fix].3 = self.starts.len();
        if self.rng.chance(1, 2) {
            self.io();
        } else {
            self.alu();
        }
        let mut ret = pfx;
        if self.rng.chance(1, 4) {
            ret.extend_from_slice(&[0xC2, 0x00, 0x00]);
        } else {
            ret.push(0xC3);
        }
        self.emit(&ret, true);
        self.fixups[jmp_fix].3 = self.starts.len();
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

    /// MOVS/STOS/LODS/CMPS/SCAS with random prefixes: REP, REPE/REPNE (F2 on
    /// MOVS/STOS/LODS is left to the CPU), 67h, segment overrides, the operand size.
    fn mem_string(&mut self) {
        let op = self
            .rng
            .pick(&[0xA4u8, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF]);
        let compares = matches!(op, 0xA6 | 0xA7 | 0xAE | 0xAF);
        let mut p: Vec<u8> = Vec::new();
        let mut supported = true;
        match self.rng.below(5) {
            0 | 1 => p.push(0xF3),
            2 => {
                p.push(0xF2);
                supported = compares;
            }
            _ => {}
        }
        if self.rng.chance(1, 4) {
            p.push(0x67);
        }
        if self.rng.chance(1, 3) {
            p.push(self.rng.pick(&[0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]));
        }
        if op & 1 == 1 && self.rng.chance(1, 3) {
            p.push(0x66);
        }
        for k in (1..p.len()).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            p.swap(k, j);
        }
        if self.long() && op & 1 == 1 && self.rng.chance(1, 4) {
            p.push(0x48);
        }
        p.push(op);
        self.emit(&p, supported);
    }

    /// A branch to instruction `target` (resolved later); `kind`: 0 jmp short,    /// A branch to instruction `target` (resolved later); `kind`: 0 jmp short,
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
            &[0x0F, 0x31],
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
pub(in crate::coalesce) fn gen_program(mode: CodeMode, rng: &mut Rng) -> (Vec<u8>, Vec<u64>) {
    gen_program_mix(mode, Mix::Any, rng)
}

/// [`gen_program`] with the instruction mix `mix`.
pub(in crate::coalesce) fn gen_program_mix(
    mode: CodeMode,
    mix: Mix,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<u64>) {
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
            if mix == Mix::Memory && g.rng.chance(1, 2) {
                g.mem();
                planned += 1;
                continue;
            }
            match g.rng.below(22) {
                0..=2 => g.io(),
                3 => g.string(),
                4 => g.mem_string(),
                5 => {
                    let p = g.rng.pick(&DX_PORTS);
                    g.set_dx(p)
                }
                6..=8 => g.mov(),
                9 | 10 => g.alu(),
                11 | 12 => g.mem(),
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
                18 if g.rng.chance(1, 2) => g.stack(),
                19 if g.rng.chance(1, 2) => g.call_ret(),
                20 | 21 => {
                    let t = here + 1 + g.rng.below(4) as usize;
                    g.more(t.min(here + (n - planned) + 1));
                }
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

/// A random case in `mode` around a random program of the instruction mix `mix`.
pub(super) fn random_case(mode: CodeMode, mix: Mix, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let (code, must) = gen_program_mix(mode, mix, &mut rng);
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
    // The stack: RSP's upper bits (a 16-bit stack keeps them), SS.B (a 16-bit stack in
    // 32-bit code, a 32-bit one in 16-bit code).
    if mode != CodeMode::Bits64 {
        if rng.chance(1, 4) {
            // SP about to wrap at 64 KiB, odd, or at the top.
            c.rsp = rng.pick(&[0x0002u64, 0x0004, 0x0001, 0xFFFE]);
        }
        if rng.chance(1, 3) {
            c.rsp |= rng.next() & !0xFFFF;
        }
        if rng.chance(1, 5) {
            c.seg_ar[2] ^= 1 << 14;
        }
    }
    // Segment limits and types the processor checks on data accesses: a short limit,
    // a read-only or execute-only or expand-down or unusable segment, a 4 GiB limit in
    // real mode ("unreal" mode).
    if mode != CodeMode::Bits64 && rng.chance(1, 3) {
        let k = rng.pick(&[0usize, 2, 3, 3, 4, 5]);
        match rng.below(6) {
            0 => c.seg_limit[k] = rng.pick(&[0, 0xFF, 0xFFF, 0x3FFF, 0x8000]),
            1 => c.seg_ar[k] = (c.seg_ar[k] & !0xF) | 0x1,
            2 => c.seg_ar[k] = (c.seg_ar[k] & !0xF) | 0x7,
            3 => c.seg_ar[k] |= 1 << 16,
            4 => c.seg_ar[k] = (c.seg_ar[k] & !0xF) | 0xB,
            _ if mode == CodeMode::Bits16 => c.seg_limit[k] = u32::MAX,
            _ => c.seg_limit[k] = 0xFFFF,
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
