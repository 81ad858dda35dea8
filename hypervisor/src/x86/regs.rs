//! The guest's general-purpose registers as the VM-exit stub saves them. RSP, RIP and
//! RFLAGS are not here: the VMCS guest-state area holds them (SDM Vol. 3C 25.4.1 "Guest
//! Register State"), and a VM exit does not save the other registers at all, hence this
//! file.

/// Layout shared with the assembly entry/exit stub in `boot/src/vmexit.rs`: do not reorder.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl GuestRegs {
    /// Register by its x86 encoding number (0 = RAX ... 15 = R15), as exit
    /// qualifications name them (SDM Vol. 3C Table 28-3 "Exit Qualification for
    /// Control-Register Accesses"). 4 (RSP) lives in the VMCS and is returned as
    /// `None`.
    pub fn get(&self, index: u8) -> Option<u64> {
        Some(match index {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => return None,
        })
    }

    /// Sets a register by encoding number; `false` for 4 (RSP, in the VMCS) or > 15.
    pub fn set(&mut self, index: u8, value: u64) -> bool {
        let slot = match index {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return false,
        };
        *slot = value;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_follow_the_x86_encoding_order() {
        let mut r = GuestRegs::default();
        for i in 0..16u8 {
            assert_eq!(r.set(i, 100 + u64::from(i)), i != 4);
        }
        assert_eq!((r.rax, r.rcx, r.rdx, r.rbx), (100, 101, 102, 103));
        assert_eq!(
            (r.rbp, r.rsi, r.rdi, r.r8, r.r15),
            (105, 106, 107, 108, 115)
        );
        assert_eq!(r.get(4), None);
        assert_eq!(r.get(16), None);
        assert!(!r.set(16, 0));
        assert_eq!(r.get(3), Some(103));
    }

    #[test]
    fn layout_matches_the_assembly_stub() {
        assert_eq!(core::mem::size_of::<GuestRegs>(), 15 * 8);
        assert_eq!(core::mem::offset_of!(GuestRegs, rbx), 8);
        assert_eq!(core::mem::offset_of!(GuestRegs, r15), 14 * 8);
    }
}
