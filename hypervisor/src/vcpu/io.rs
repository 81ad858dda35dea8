//! IN, OUT, INS and OUTS, one instruction per exit (SDM Vol. 2A "IN—Input from Port"
//! and "INS/INSB/INSW/INSD—Input from Port to String", SDM Vol. 2B "OUT—Output to Port"
//! and "OUTS/OUTSB/OUTSW/OUTSD—Output String to Port"; the exit's facts from
//! SDM Vol. 3C Table 28-5 "Exit Qualification for I/O Instructions" and 28.2.5
//! "Information for VM Exits Due to Instruction Execution"). The coalescer takes IO
//! exits first and leaves here what it cannot prove safe to run.

use crate::devices::bus::size_mask;
use crate::stats::EndKind;
use crate::vcpu::exits::{end, ExitAction, ExitContext, Fault, HostOps};
use crate::vmx::exit::IoQualification;
use crate::vmx::vmcs::{Vmcs, VmcsField};
use crate::x86::guest_mem::{
    check_linear, read_linear_as, write_linear, Access, GuestMemory, PagingContext, TranslateError,
};
use crate::x86::{update_addr_reg, Rflags, Width};

/// String IO elements emulated in one exit; a longer REP re-executes.
pub const MAX_STRING_ELEMENTS: u64 = 4096;

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // IO instructions (30)

    pub(super) fn io_instruction(&mut self) -> ExitAction {
        let q = IoQualification::from_qualification(self.exit.qualification);
        if !matches!(q.size, 1 | 2 | 4) {
            return end(EndKind::Fatal);
        }
        if q.string {
            return self.io_string(q);
        }
        let mask = size_mask(q.size);
        if q.is_in {
            let v = u64::from(self.bus.read(q.port, q.size));
            // IN AL/AX merges; IN EAX zero-extends into RAX (SDM Vol. 2A "IN—Input from
            // Port").
            self.regs.rax = if q.size == 4 {
                v
            } else {
                (self.regs.rax & !u64::from(mask)) | v
            };
        } else {
            self.bus.write(q.port, q.size, self.regs.rax as u32 & mask);
        }
        self.stats.io.instructions = self.stats.io.instructions.saturating_add(1);
        self.complete(Ok(()))
    }

    /// INS/OUTS, with or without REP. Up to [`MAX_STRING_ELEMENTS`] elements per exit;
    /// if RCX is still non-zero then, RIP stays on the instruction so it exits again.
    /// The address size and (for OUTS) segment come from the VM-exit
    /// instruction-information field (SDM Vol. 3C 28.2.5 "Information for VM Exits Due
    /// to Instruction Execution", Table 28-8 "Format of the VM-Exit
    /// Instruction-Information Field as Used for INS and OUTS"); INS always writes
    /// ES:rDI. Segment limits are not checked. An element whose address does not
    /// translate to guest RAM gets #GP(0) with the elements before it done (RSI/RDI/RCX
    /// updated as far as the processor would).
    pub(super) fn io_string(&mut self, q: IoQualification) -> ExitAction {
        let info = self.exit.instruction_info;
        let addr = match (info >> 7) & 7 {
            0 => Width::W16,
            1 => Width::W32,
            2 => Width::W64,
            _ => return end(EndKind::Fatal),
        };
        let addr_mask = addr.mask();
        let long = self.long_mode();
        let seg = if q.is_in { 0 } else { (info >> 15) & 7 };
        let base_field = match seg {
            0 => VmcsField::GuestEsBase,
            1 => VmcsField::GuestCsBase,
            2 => VmcsField::GuestSsBase,
            3 => VmcsField::GuestDsBase,
            4 => VmcsField::GuestFsBase,
            5 => VmcsField::GuestGsBase,
            _ => return end(EndKind::Fatal),
        };
        // In 64-bit mode only FS and GS have bases (SDM Vol. 3A 3.2.4 "Segmentation in
        // IA-32e Mode").
        let base = if long && seg < 4 {
            0
        } else {
            self.read(base_field)
        };
        let size = u64::from(q.size);
        let step = if self.read(VmcsField::GuestRflags) & Rflags::DF.bits() != 0 {
            size.wrapping_neg()
        } else {
            size
        };
        let count = if q.rep { self.regs.rcx & addr_mask } else { 1 };
        let pctx = self.paging();
        let cpl = self.cpl();
        for _ in 0..count.min(MAX_STRING_ELEMENTS) {
            let reg = if q.is_in {
                self.regs.rdi
            } else {
                self.regs.rsi
            };
            let mut linear = base.wrapping_add(reg & addr_mask);
            if !long {
                linear &= 0xFFFF_FFFF;
            }
            if self.string_element(q, &pctx, linear, cpl).is_err() {
                self.inject(Fault::Gp);
                return ExitAction::Resume;
            }
            if q.is_in {
                self.regs.rdi = update_addr_reg(self.regs.rdi, step, addr);
            } else {
                self.regs.rsi = update_addr_reg(self.regs.rsi, step, addr);
            }
            if q.rep {
                self.regs.rcx = update_addr_reg(self.regs.rcx, u64::MAX, addr);
            }
            self.stats.io.string_elements = self.stats.io.string_elements.saturating_add(1);
        }
        if q.rep && self.regs.rcx & addr_mask != 0 {
            return ExitAction::Resume;
        }
        self.stats.io.instructions = self.stats.io.instructions.saturating_add(1);
        self.complete(Ok(()))
    }

    /// One INS/OUTS element. INS checks the destination before reading the
    /// port so a faulting INS has no device side effect.
    pub(super) fn string_element(
        &mut self,
        q: IoQualification,
        pctx: &PagingContext,
        linear: u64,
        cpl: u8,
    ) -> Result<(), TranslateError> {
        let n = usize::from(q.size);
        let mut bytes = [0u8; 4];
        if q.is_in {
            check_linear(&*self.mem, pctx, linear, n, Access::write(cpl))?;
            bytes = self.bus.read(q.port, q.size).to_le_bytes();
            write_linear(self.mem, pctx, linear, &bytes[..n], cpl)
        } else {
            read_linear_as(&*self.mem, pctx, linear, &mut bytes[..n], Access::read(cpl))?;
            self.bus.write(q.port, q.size, u32::from_le_bytes(bytes));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

    #[test]
    fn out_sizes_take_the_low_bits_of_rax() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x60..=0x6F, &mut p).unwrap();
        for size in [1u8, 2, 4] {
            let mut h = Harness::long();
            h.regs.rax = 0x1122_3344_5566_7788;
            h.vmcs.write(VmcsField::GuestInterruptibilityState, 0b1011);
            h.exit_on(er::IO_INSTRUCTION, ioq(0x60, size, false, false, false));
            let a = h.run_with(&mut bus);
            h.assert_retired(a);
            // Blocking by STI / MOV SS cleared, NMI blocking kept.
            assert_eq!(h.vmcs.read(VmcsField::GuestInterruptibilityState), 0b1000);
        }
        assert_eq!(
            p.writes,
            vec![(0x60, 1, 0x88), (0x60, 2, 0x7788), (0x60, 4, 0x5566_7788)]
        );
    }

    #[test]
    fn in_merges_or_zero_extends() {
        let mut p = Probe {
            value: 0xAABB_CCDD,
            ..Probe::default()
        };
        let mut bus = IoBus::new();
        bus.register(0x71..=0x71, &mut p).unwrap();
        for (size, want) in [
            (1u8, 0xFFFF_FFFF_FFFF_FFDD),
            (2, 0xFFFF_FFFF_FFFF_CCDD),
            (4, 0x0000_0000_AABB_CCDD),
        ] {
            let mut h = Harness::long();
            h.regs.rax = u64::MAX;
            h.exit_on(er::IO_INSTRUCTION, ioq(0x71, size, true, false, false));
            let a = h.run_with(&mut bus);
            h.assert_retired(a);
            assert_eq!(h.regs.rax, want, "size {size}");
        }
    }

    #[test]
    fn in_from_an_unknown_port_reads_all_ones_and_is_counted() {
        let mut h = Harness::long();
        h.regs.rax = 0;
        let mut bus = IoBus::new();
        h.exit_on(er::IO_INSTRUCTION, ioq(0x1234, 2, true, false, false));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!(h.regs.rax, 0xFFFF);
        assert_eq!(bus.unknown_reads(), 1);
    }

    #[test]
    fn rep_outsb_prints_through_the_uart() {
        let mut h = Harness::long();
        h.ram[0x10_0FF9..0x10_1000].copy_from_slice(b"hello, ");
        h.ram[0x30_0000..0x30_0006].copy_from_slice(b"world\n");
        // Linear 0x10_0FF9 + 13 bytes crosses into the remapped page.
        h.regs.rsi = 0x10_0FF9;
        h.regs.rcx = 13;
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.vmcs.write(VmcsField::GuestDsBase, 0xDEAD_0000); // ignored in 64-bit mode
        h.exit_on(er::IO_INSTRUCTION, ioq(0x3F8, 1, false, true, true));
        let mut uart = Uart16550::new(0x3F8, VecSink::default());
        let mut bus = IoBus::new();
        bus.register(uart.ports(), &mut uart).unwrap();
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rcx, h.regs.rsi), (0, 0x10_1006));
        assert_eq!(uart.sink().0, b"hello, world\n");
    }

    #[test]
    fn outs_without_rep_uses_fs_base_and_df() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x500..=0x503, &mut p).unwrap();
        let mut h = Harness::long();
        h.ram[0x5010..0x5014].copy_from_slice(&0xCAFE_F00Du32.to_le_bytes());
        h.vmcs.write(VmcsField::GuestFsBase, 0x5000);
        h.vmcs
            .write(VmcsField::GuestRflags, 0x202 | Rflags::DF.bits());
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 4));
        h.regs.rsi = 0x10;
        h.regs.rcx = 77; // not touched without REP
        h.exit_on(er::IO_INSTRUCTION, ioq(0x500, 4, false, true, false));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rsi, h.regs.rcx), (0xC, 77));
        assert_eq!(p.writes, vec![(0x500, 4, 0xCAFE_F00D)]);
    }

    #[test]
    fn rep_insw_in_real_mode_wraps_di_at_16_bits() {
        let mut p = Probe {
            value: 0xBEEF,
            ..Probe::default()
        };
        let mut bus = IoBus::new();
        bus.register(0x1F0..=0x1F7, &mut p).unwrap();
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::GuestEsBase, 0x2_0000);
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(0, 3));
        h.regs.rdi = 0x7777_0000_FFFE;
        h.regs.rcx = 0x5555_0000_0002;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x1F0, 2, true, true, true));
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        // Upper bits of RDI/RCX kept; DI wrapped to 2.
        assert_eq!(h.regs.rdi, 0x7777_0000_0002);
        assert_eq!(h.regs.rcx, 0x5555_0000_0000);
        assert_eq!(&h.ram[0x2_FFFE..0x3_0000], &[0xEF, 0xBE]);
        assert_eq!(&h.ram[0x2_0000..0x2_0002], &[0xEF, 0xBE]);
        assert_eq!(p.reads, 2);
    }

    #[test]
    fn rep_with_zero_count_just_retires() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.regs.rcx = 0;
        h.regs.rsi = 0x5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x3F8, 1, false, true, true));
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rsi, 0x5000);
    }

    #[test]
    fn long_rep_is_split_across_exits() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x80..=0x80, &mut p).unwrap();
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 3));
        h.regs.rsi = 0x20_0000;
        h.regs.rcx = 5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x80, 1, false, true, true));
        assert_eq!(h.run_with(&mut bus), ExitAction::Resume);
        assert_eq!((h.regs.rcx, h.rip()), (5000 - 4096, RIP));
        assert_eq!(h.injected(), 0);
        let a = h.run_with(&mut bus);
        h.assert_retired(a);
        assert_eq!((h.regs.rcx, h.regs.rsi), (0, 0x20_0000 + 5000));
        assert_eq!(p.writes.len(), 5000);
    }

    #[test]
    fn address_size_32_in_long_mode_zero_extends() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(1, 3));
        h.regs.rsi = 0xFFFF_FFFF_0000_5000;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x99, 2, false, true, false));
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rsi, 0x5002);
    }

    #[test]
    fn string_io_to_unmapped_memory_injects_gp_after_partial_progress() {
        let mut p = Probe::default();
        let mut bus = IoBus::new();
        bus.register(0x300..=0x300, &mut p).unwrap();
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 0));
        // Two bytes fit in the mapped page before 0x10_2000 (not present).
        h.regs.rdi = 0x10_1FFE;
        h.regs.rcx = 4;
        h.exit_on(er::IO_INSTRUCTION, ioq(0x300, 1, true, true, true));
        let a = h.run_with(&mut bus);
        h.assert_faulted(a, GP0);
        assert_eq!(h.vmcs.read(VmcsField::EntryExceptionErrorCode), 0);
        assert_eq!((h.regs.rdi, h.regs.rcx), (0x10_2000, 2));
        assert_eq!(h.stats.injected_exceptions, 1);
        // The faulting element did not read the port.
        assert_eq!(p.reads, 2);
    }

    #[test]
    fn string_io_outside_ram_in_real_mode_injects_gp_without_error_code() {
        let mut h = Harness::real();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(1, 3));
        h.regs.rsi = 0x8000_0000; // 32-bit address size, beyond RAM
        h.exit_on(er::IO_INSTRUCTION, ioq(0x300, 1, false, true, false));
        let a = h.run();
        h.assert_faulted(a, 0x8000_030D);
    }

    #[test]
    fn bogus_io_qualifications_end_the_guest() {
        let mut h = Harness::long();
        h.exit_on(er::IO_INSTRUCTION, 2); // size encoding 2 is undefined
        assert_eq!(h.run(), end(EndKind::Fatal));
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(3, 3));
        h.exit_on(er::IO_INSTRUCTION, ioq(1, 1, false, true, false));
        assert_eq!(h.run(), end(EndKind::Fatal));
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::ExitInstructionInfo, ioinfo(2, 7));
        h.exit_on(er::IO_INSTRUCTION, ioq(1, 1, false, true, false));
        assert_eq!(h.run(), end(EndKind::Fatal));
    }
}
