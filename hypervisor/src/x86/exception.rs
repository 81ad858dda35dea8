//! Exception vectors (SDM Vol. 3A 6.15 "Exception and Interrupt Reference", Table 6-1
//! "Protected-Mode Exceptions and Interrupts").

/// #DE, divide error.
pub const DE: u8 = 0;
/// #DB, debug.
pub const DB: u8 = 1;
/// NMI.
pub const NMI: u8 = 2;
/// #BP, breakpoint (INT3).
pub const BP: u8 = 3;
/// #OF, overflow (INTO).
pub const OF: u8 = 4;
/// #UD, invalid opcode.
pub const UD: u8 = 6;
/// #NM, device not available.
pub const NM: u8 = 7;
/// #DF, double fault.
pub const DF: u8 = 8;
/// #TS, invalid TSS.
pub const TS: u8 = 10;
/// #NP, segment not present.
pub const NP: u8 = 11;
/// #SS, stack-segment fault.
pub const SS: u8 = 12;
/// #GP, general protection.
pub const GP: u8 = 13;
/// #PF, page fault.
pub const PF: u8 = 14;
/// #AC, alignment check.
pub const AC: u8 = 17;
/// #MC, machine check.
pub const MC: u8 = 18;
