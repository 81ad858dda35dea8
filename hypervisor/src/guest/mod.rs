//! Loading a guest: the image formats (ELF64, the Linux boot protocol), where each
//! entry mode puts the image, and the long-mode set-up sluice builds for 64-bit guests.

pub mod elf64;
pub mod linux_boot;
pub mod loader;
pub mod long_mode;

/// Real-mode code can only address the first MiB (plus the HMA, which sluice
/// does not use for loading), so `real:` entries and load addresses must be
/// below this.
pub const REAL_MODE_LIMIT: u32 = 0x10_0000;

/// How the guest binary is interpreted and where it starts executing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EntryMode {
    /// No guest: the hypervisor runs its self-tests only.
    #[default]
    None,
    /// Flat real-mode binary entered at `seg:off`.
    RealSegOff { seg: u16, off: u16 },
    /// Flat real-mode binary entered at a linear address below 1 MiB
    /// (e.g. `real:0x7c00`, the boot-sector convention).
    RealAddr(u32),
    /// ELF64 executable; the entry point comes from its header.
    Elf64,
    /// Firmware image whose last byte lies at 1 MiB - 1 and at 4 GiB - 1
    /// (as on a PC after reset); entered at F000:FFF0, the reset vector.
    Firmware,
    /// A Linux kernel (bzImage) with command line and initrd, packed by
    /// `linux_boot::encode_bundle`, started through the 64-bit boot protocol.
    Linux,
}

impl EntryMode {
    /// Linear address of the entry point for the `real:` modes.
    pub fn real_linear(self) -> Option<u32> {
        match self {
            EntryMode::RealSegOff { seg, off } => Some(u32::from(seg) * 16 + u32::from(off)),
            EntryMode::RealAddr(addr) => Some(addr),
            _ => None,
        }
    }

    /// Initial `(CS, IP)` for real-mode entries.
    ///
    /// For `real:ADDR` below 64 KiB this is `0:ADDR` (so `real:0x7c00` enters
    /// at 0000:7C00 like a BIOS does). Above that, the 64 KiB bank goes into CS
    /// and the rest into IP, which still yields `CS*16 + IP == ADDR`.
    /// `firmware` enters at the reset vector F000:FFF0.
    pub fn real_cs_ip(self) -> Option<(u16, u16)> {
        match self {
            EntryMode::RealSegOff { seg, off } => Some((seg, off)),
            // ADDR < 1 MiB, so both parts fit in 16 bits.
            EntryMode::RealAddr(addr) => Some((((addr >> 4) & 0xF000) as u16, addr as u16)),
            EntryMode::Firmware => Some((0xF000, 0xFFF0)),
            _ => None,
        }
    }
}
