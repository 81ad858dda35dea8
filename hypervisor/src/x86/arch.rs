//! The architectural bits of the control registers, IA32_EFER and RFLAGS, as
//! `bitflags` types, one definition each for the whole hypervisor. Code that keeps raw
//! register values (the VMCS fields, the guest register file) masks them with
//! `Cr0::PG.bits()` and the like.
//!
//! Sources (Intel SDM, see `crate::vmx` for the pinned edition): Vol. 3A 2.5 "Control
//! Registers" (CR0, CR4), 2.2.1 "Extended Feature Enable Register" (IA32_EFER), Vol. 1
//! 3.4.3 "EFLAGS Register" and Vol. 3A 2.3 "System Flags and Fields in the EFLAGS
//! Register" (RFLAGS).

use bitflags::bitflags;

bitflags! {
    /// CR0 (SDM Vol. 3A 2.5 "Control Registers", Figure 2-7 "Control Registers"). Every
    /// defined bit is named, so `Cr0::all()` is the set a MOV to CR0 may write without
    /// #GP.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Cr0: u64 {
        /// Protection Enable.
        const PE = 1 << 0;
        /// Monitor Coprocessor.
        const MP = 1 << 1;
        /// Emulation (no x87).
        const EM = 1 << 2;
        /// Task Switched.
        const TS = 1 << 3;
        /// Extension Type (fixed 1 on every processor since the Pentium).
        const ET = 1 << 4;
        /// Numeric Error.
        const NE = 1 << 5;
        /// Write Protect: supervisor writes honour read-only pages.
        const WP = 1 << 16;
        /// Alignment Mask.
        const AM = 1 << 18;
        /// Not Write-through.
        const NW = 1 << 29;
        /// Cache Disable.
        const CD = 1 << 30;
        /// Paging.
        const PG = 1 << 31;
    }
}

bitflags! {
    /// CR4 (SDM Vol. 3A 2.5 "Control Registers", Figure 2-7 "Control Registers"). Every
    /// defined bit is named, so `Cr4::all()` is the set a MOV to CR4 may write without
    /// #GP.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Cr4: u64 {
        const VME = 1 << 0;
        const PVI = 1 << 1;
        /// Time Stamp Disable.
        const TSD = 1 << 2;
        /// Debugging Extensions.
        const DE = 1 << 3;
        /// Page Size Extensions (4 MiB pages with 32-bit paging).
        const PSE = 1 << 4;
        /// Physical Address Extension.
        const PAE = 1 << 5;
        /// Machine-Check Enable.
        const MCE = 1 << 6;
        /// Page Global Enable.
        const PGE = 1 << 7;
        /// Performance-Monitoring Counter Enable.
        const PCE = 1 << 8;
        const OSFXSR = 1 << 9;
        const OSXMMEXCPT = 1 << 10;
        /// User-Mode Instruction Prevention.
        const UMIP = 1 << 11;
        /// 57-bit linear addresses (5-level paging).
        const LA57 = 1 << 12;
        /// VMX Enable.
        const VMXE = 1 << 13;
        /// SMX Enable.
        const SMXE = 1 << 14;
        const FSGSBASE = 1 << 16;
        /// PCID Enable.
        const PCIDE = 1 << 17;
        /// XSAVE and Processor Extended States Enable.
        const OSXSAVE = 1 << 18;
        /// Key Locker Enable.
        const KL = 1 << 19;
        /// Supervisor Mode Execution Prevention.
        const SMEP = 1 << 20;
        /// Supervisor Mode Access Prevention.
        const SMAP = 1 << 21;
        /// Protection Keys for user pages.
        const PKE = 1 << 22;
        /// Control-flow Enforcement Technology.
        const CET = 1 << 23;
        /// Protection Keys for supervisor pages.
        const PKS = 1 << 24;
        /// User Interrupts Enable.
        const UINTR = 1 << 25;
        /// Linear-address masking for supervisor pointers.
        const LAM_SUP = 1 << 28;
    }
}

bitflags! {
    /// IA32_EFER (SDM Vol. 3A 2.2.1 "Extended Feature Enable Register").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Efer: u64 {
        /// SYSCALL Enable.
        const SCE = 1 << 0;
        /// IA-32e Mode Enable.
        const LME = 1 << 8;
        /// IA-32e Mode Active (set by the processor).
        const LMA = 1 << 10;
        /// Execute Disable Bit Enable.
        const NXE = 1 << 11;
    }
}

bitflags! {
    /// RFLAGS (SDM Vol. 1 3.4.3 "EFLAGS Register"; Vol. 3A 2.3 "System Flags and
    /// Fields in the EFLAGS Register").
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Rflags: u64 {
        /// Carry.
        const CF = 1 << 0;
        /// Bit 1 is reserved and always 1.
        const FIXED1 = 1 << 1;
        /// Parity.
        const PF = 1 << 2;
        /// Auxiliary carry.
        const AF = 1 << 4;
        /// Zero.
        const ZF = 1 << 6;
        /// Sign.
        const SF = 1 << 7;
        /// Trap (single-step).
        const TF = 1 << 8;
        /// Interrupt enable.
        const IF = 1 << 9;
        /// Direction.
        const DF = 1 << 10;
        /// Overflow.
        const OF = 1 << 11;
        /// I/O privilege level (two bits, 13:12).
        const IOPL = 3 << 12;
        /// Nested task.
        const NT = 1 << 14;
        /// Resume.
        const RF = 1 << 16;
        /// Virtual-8086 mode.
        const VM = 1 << 17;
        /// Alignment check (or access control with SMAP).
        const AC = 1 << 18;
        /// Virtual interrupt flag.
        const VIF = 1 << 19;
        /// Virtual interrupt pending.
        const VIP = 1 << 20;
        /// CPUID available.
        const ID = 1 << 21;
    }
}

impl Rflags {
    /// The lowest bit of [`Rflags::IOPL`].
    pub const IOPL_SHIFT: u32 = 12;
    /// The six status flags the ALU instructions write.
    pub const STATUS: u64 = Self::CF.bits()
        | Self::PF.bits()
        | Self::AF.bits()
        | Self::ZF.bits()
        | Self::SF.bits()
        | Self::OF.bits();
    /// Reserved bits that must be 0 (3, 5, 15 and 63:22); VM entry checks them (SDM
    /// Vol. 3C 27.3.1.4 "Checks on Guest RIP, RFLAGS, and SSP").
    pub const RESERVED: u64 = (1 << 3) | (1 << 5) | (1 << 15) | !((1 << 22) - 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defined_bits_are_what_the_sdm_reserves_around() {
        // PE MP EM TS ET NE (5:0), WP (16), AM (18), NW CD PG (31:29).
        assert_eq!(Cr0::all().bits(), 0x3F | (1 << 16) | (1 << 18) | (7 << 29));
        // Bits 14:0, 25:16 and 28; 15, 27:26 and 63:29 are reserved.
        assert_eq!(Cr4::all().bits(), 0x7FFF | (0x3FF << 16) | (1 << 28));
        assert_eq!(Efer::all().bits(), 0xD01);
        assert_eq!(Rflags::STATUS, 0x8D5);
        assert_eq!(Rflags::IOPL.bits() >> Rflags::IOPL_SHIFT, 3);
        // Every defined flag is outside the reserved set, and together they cover
        // all 64 bits.
        assert_eq!(Rflags::all().bits() & Rflags::RESERVED, 0);
        assert_eq!(Rflags::all().bits() | Rflags::RESERVED, u64::MAX);
    }
}
