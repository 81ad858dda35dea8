//! The reference's ALU: results and defined status flags from the host CPU, undefined
//! flags as the coalescer documents them, so RFLAGS can be compared exactly.

use super::case::STATUS;
use super::ref_decode::size_mask;
use crate::coalesce::exec;
use crate::coalesce::insn::AluOp;
use crate::x86::Width;

/// Status flags whose value after the operation is architecturally defined (SDM
/// Vols. 2A-2C, "Flags Affected" on each instruction's page; quoted below from
/// "SAL/SAR/SHL/SHR—Shift", "RCL/RCR/ROL/ROR—Rotate", "BT—Bit Test" and
/// "IMUL—Signed Multiply"); unchanged flags count as defined.
fn sdm_defined(op: AluOp, size: u8, src: u64) -> u64 {
    let count = src & if size == 8 { 63 } else { 31 };
    match op {
        AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test => STATUS & !0x10,
        // "The CF flag contains the value of the last bit shifted out ...; it is
        // undefined for SHL and SHR instructions where the count is greater than or
        // equal to the size ... The OF flag is affected only for 1-bit shifts ...
        // The AF flag is undefined for a non-zero count."
        AluOp::Shl | AluOp::Shr | AluOp::Sar => {
            if count == 0 {
                return STATUS;
            }
            let mut d = STATUS & !0x10;
            if count != 1 {
                d &= !0x800;
            }
            if count >= 8 * u64::from(size) && op != AluOp::Sar {
                d &= !1;
            }
            d
        }
        // "The OF flag is defined only for the 1-bit rotates; it is undefined in all
        // other cases"; a (masked) count of 0 affects no flag.
        AluOp::Rol | AluOp::Ror | AluOp::Rcl | AluOp::Rcr => {
            if count > 1 {
                STATUS & !0x800
            } else {
                STATUS
            }
        }
        // "The CF flag contains the value of the selected bit. The ZF flag is
        // unaffected. The OF, SF, AF, and PF flags are undefined."
        AluOp::Bt | AluOp::Bts | AluOp::Btr | AluOp::Btc => 0x1 | 0x40,
        // IMUL: "The CF and OF flags are set when the signed integer value of the
        // intermediate product differs from the sign extended operand-size-truncated
        // product ... The SF, ZF, AF, and PF flags are undefined."
        AluOp::Imul => 0x1 | 0x800,
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
pub(super) fn ref_alu(op: AluOp, size: u8, a: u64, b: u64, rflags: u64) -> (u64, u64) {
    let (r, hf) = host_exec(op, size, a, b, rflags);
    let defined = sdm_defined(op, size, b);
    // Undefined flags: what the coalescer documents it produces.
    let (_, cf) = exec::alu(op, width_of(size), a, b, rflags);
    let flags = (rflags & !STATUS) | (hf & defined & STATUS) | (cf & !defined & STATUS);
    (r & size_mask(size), flags)
}
mod tests {
    use super::*;

    #[test]
    fn our_defined_flags_agree_with_exec() {
        for op in AluOp::ALL {
            for size in [1u8, 2, 4, 8]
                .into_iter()
                .filter(|&s| op.has_width(width_of(s)))
            {
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
}
