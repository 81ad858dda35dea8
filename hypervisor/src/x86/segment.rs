//! A segment register as VMX holds it in the guest-state area: selector, base, limit
//! and access rights. The access rights are the descriptor's type, S, DPL, P, AVL, L,
//! D/B and G bits (SDM Vol. 3A 3.4.5 "Segment Descriptors") packed the way the
//! processor loads them into the segment register's hidden part, as SDM Vol. 3C 25.4.1
//! "Guest Register State", Table 25-2 "Format of Access Rights" lays them out, plus the
//! "unusable" bit. Shared by the guest layouts (`guest::long_mode`,
//! `guest::linux_boot`) and the VMCS writers and checks (`vmx`).

/// Access-rights fields of the guest segment registers (SDM Vol. 3C 25.4.1 "Guest
/// Register State", Table 25-2 "Format of Access Rights").
pub mod access_rights {
    pub const TYPE_MASK: u32 = 0xF;
    /// S: code/data (1) vs system (0) descriptor.
    pub const S: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const P: u32 = 1 << 7;
    pub const AVL: u32 = 1 << 12;
    /// L: 64-bit code segment.
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    /// Segment unusable (a null selector was loaded).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// VMCS access rights of a segment loaded from `desc`: the descriptor's
/// access byte (bits 47:40) goes to bits 7:0, its flag nibble (bits 55:52) to
/// bits 15:12. This is how the CPU derives them on a segment load.
pub const fn descriptor_access_rights(desc: u64) -> u32 {
    (((desc >> 40) & 0xFF) | (((desc >> 52) & 0xF) << 12)) as u32
}

/// Guest segment state as the VMCS holds it (selector, base, limit, access
/// rights fields). The limit is the byte-granular expanded limit: with G=1 the
/// VMCS expects 0xFFFF_FFFF, not the descriptor's 0xFFFFF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentState {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub access_rights: u32,
}
