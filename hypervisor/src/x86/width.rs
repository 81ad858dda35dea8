//! Operand and address sizes (SDM Vol. 1 3.6 "Operand-Size and Address-Size
//! Attributes"; for the 64-bit forms 3.6.1 "Operand Size and Address Size in 64-Bit
//! Mode", and 3.4.1.1 "General-Purpose Registers in 64-Bit Mode" for the
//! zero-extension of 32-bit results).

/// An operand or address size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    W8,
    W16,
    W32,
    W64,
}

impl Width {
    pub const fn bytes(self) -> u8 {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }

    pub const fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }

    pub const fn mask(self) -> u64 {
        match self {
            Width::W64 => u64::MAX,
            w => (1u64 << w.bits()) - 1,
        }
    }

    pub const fn from_bytes(n: u8) -> Option<Width> {
        match n {
            1 => Some(Width::W8),
            2 => Some(Width::W16),
            4 => Some(Width::W32),
            8 => Some(Width::W64),
            _ => None,
        }
    }
}

/// Adds `delta` to an address or count register at address size `addr`: a 16-bit
/// update keeps bits 63:16, a 32-bit one zero-extends (a 32-bit register write).
pub const fn update_addr_reg(reg: u64, delta: u64, addr: Width) -> u64 {
    let v = reg.wrapping_add(delta);
    match addr {
        Width::W8 | Width::W16 => (reg & !addr.mask()) | (v & addr.mask()),
        _ => v & addr.mask(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_registers_update_within_the_address_size() {
        assert_eq!(
            update_addr_reg(0xAAAA_0000_FFFF, 1, Width::W16),
            0xAAAA_0000_0000
        );
        assert_eq!(update_addr_reg(0xAAAA_FFFF_FFFF, 1, Width::W32), 0);
        assert_eq!(update_addr_reg(0, u64::MAX, Width::W64), u64::MAX);
        assert_eq!(Width::from_bytes(3), None);
        assert_eq!(Width::W16.mask(), 0xFFFF);
    }
}
