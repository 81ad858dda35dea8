//! sluice's hypercall ABI: how test and benchmark guests talk to the hypervisor.
//!
//! A guest executes VMCALL (SDM Vol. 3C 26.1.2 "Instructions That Cause VM Exits
//! Unconditionally": VMCALL in VMX non-root operation always causes a VM exit) at CPL 0
//! with the function number in RAX:
//!
//! | RAX | function | arguments | result in RAX |
//! | --- | --- | --- | --- |
//! | 1 | print bytes on the console | RBX = guest-linear address, RCX = length (at most `PRINT_MAX`) | 0 |
//! | 2 | end the run | RBX = exit status (low 32 bits) | does not return |
//! | 3 | read the IO counters | none | RAX = IO exits, RBX = IO instructions, RCX = instructions emulated by the coalescer, so far |
//!
//! Errors come back in RAX as `ERROR` (all ones): unknown function, a length over the
//! limit, an address that does not translate to guest RAM, VMCALL at CPL > 0. A guest
//! never crashes the hypervisor through this interface. The linear address is
//! translated through the guest's own paging mode (real mode: segment base already
//! applied by the guest, i.e. pass `segment * 16 + offset`).

/// RAX = 1: print RCX bytes at guest-linear RBX.
pub const PRINT: u64 = 1;
/// RAX = 2: end the run with status RBX.
pub const EXIT: u64 = 2;
/// RAX = 3: IO counters so far (benchmark and test guests measure a section with it).
pub const COUNTERS: u64 = 3;
/// Longest print accepted in one call.
pub const PRINT_MAX: u64 = 4096;
/// Result of a failed hypercall.
pub const ERROR: u64 = u64::MAX;

use crate::stats::EndKind;
use crate::vcpu::exits::{ExitAction, ExitContext, HostOps};
use crate::vcpu::hypercall;
use crate::vmx::exit::exit_reason as er;
use crate::vmx::vmcs::Vmcs;
use crate::x86::guest_mem::{check_linear, read_linear, Access, GuestMemory, TranslateError};

/// Why a print hypercall printed nothing; the guest sees `ERROR` in RAX either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintError {
    /// RCX is over [`PRINT_MAX`].
    TooLong { len: u64 },
    /// Part of the buffer does not translate to guest RAM.
    Unmapped(TranslateError),
}

impl core::fmt::Display for PrintError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PrintError::TooLong { len } => write!(
                f,
                "print hypercall of {len} bytes is over the {PRINT_MAX}-byte limit"
            ),
            PrintError::Unmapped(e) => write!(f, "print hypercall buffer: {e}"),
        }
    }
}

impl core::error::Error for PrintError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            PrintError::Unmapped(e) => Some(e),
            PrintError::TooLong { .. } => None,
        }
    }
}

impl<V: Vmcs, M: GuestMemory, H: HostOps> ExitContext<'_, '_, V, M, H> {
    // VMCALL (18)

    /// The hypercall ABI of [`crate::vcpu::hypercall`]. Per that ABI, VMCALL at
    /// CPL > 0 returns `ERROR` in RAX (it is not a #UD).
    pub(super) fn vmcall(&mut self) -> ExitAction {
        if self.cpl() != 0 {
            self.regs.rax = hypercall::ERROR;
            return self.complete(Ok(()));
        }
        match self.regs.rax {
            hypercall::PRINT => {
                self.regs.rax = match self.hypercall_print(self.regs.rbx, self.regs.rcx) {
                    Ok(()) => 0,
                    Err(_) => hypercall::ERROR,
                };
            }
            hypercall::EXIT => {
                self.advance_rip();
                return ExitAction::End {
                    kind: EndKind::Hypercall,
                    exit_code: self.regs.rbx as u32,
                };
            }
            hypercall::COUNTERS => {
                self.regs.rax = self.stats.exit_count(er::IO_INSTRUCTION);
                self.regs.rbx = self.stats.io.instructions;
                self.regs.rcx = self.stats.io.emulated;
            }
            _ => self.regs.rax = hypercall::ERROR,
        }
        self.complete(Ok(()))
    }

    /// Prints `len` bytes at guest-linear `addr`, all or nothing.
    pub(super) fn hypercall_print(&mut self, addr: u64, len: u64) -> Result<(), PrintError> {
        if len > hypercall::PRINT_MAX {
            return Err(PrintError::TooLong { len });
        }
        let len = len as usize;
        let pctx = self.paging();
        check_linear(&*self.mem, &pctx, addr, len, Access::read(0))
            .map_err(PrintError::Unmapped)?;
        let mut buf = [0u8; 256];
        let mut done = 0usize;
        while done < len {
            let n = buf.len().min(len - done);
            let chunk = &mut buf[..n];
            read_linear(&*self.mem, &pctx, addr.wrapping_add(done as u64), chunk)
                .map_err(PrintError::Unmapped)?;
            self.host.console(chunk);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testing::*;

    #[test]
    fn counters_hypercall_reports_io_exits_instructions_and_emulated() {
        let mut h = Harness::long();
        h.stats.count_exit(u32::from(er::IO_INSTRUCTION));
        h.stats.count_exit(u32::from(er::IO_INSTRUCTION));
        h.stats.io.instructions = 7;
        h.stats.io.emulated = 9;
        h.regs.rax = hypercall::COUNTERS;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!((h.regs.rax, h.regs.rbx, h.regs.rcx), (2, 7, 9));
    }

    #[test]
    fn hypercall_print_crosses_a_page_boundary() {
        let mut h = Harness::long();
        h.ram[0x10_0FFA..0x10_1000].copy_from_slice(b"hello ");
        h.ram[0x30_0000..0x30_0006].copy_from_slice(b"world!");
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x10_0FFA;
        h.regs.rcx = 12;
        h.vmcs.write(VmcsField::ExitInstructionLength, 3);
        h.exit_on(er::VMCALL, 0);
        assert_eq!(h.run(), ExitAction::Resume);
        assert_eq!(h.regs.rax, 0);
        assert_eq!(h.host.console, b"hello world!");
        assert_eq!(h.rip(), RIP + 3);
    }

    #[test]
    fn hypercall_print_long_buffer_in_chunks() {
        let mut h = Harness::long();
        for (i, b) in h.ram[0x20_0000..0x20_1000].iter_mut().enumerate() {
            *b = i as u8;
        }
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x20_0000;
        h.regs.rcx = hypercall::PRINT_MAX;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rax, 0);
        assert_eq!(h.host.console.len(), 4096);
        assert_eq!(&h.host.console[..], &h.ram[0x20_0000..0x20_1000]);
    }

    #[test]
    fn hypercall_errors() {
        // (rax, rbx, rcx): unmapped page, too long, non-canonical, unknown function.
        let cases = [
            (hypercall::PRINT, 0x10_1FFF, 2),
            (hypercall::PRINT, 0x20_0000, hypercall::PRINT_MAX + 1),
            (hypercall::PRINT, 0x8000_0000_0000, 1),
            (hypercall::PRINT, u64::MAX, u64::MAX),
            (99, 0, 0),
        ];
        for (rax, rbx, rcx) in cases {
            let mut h = Harness::long();
            h.regs.rax = rax;
            h.regs.rbx = rbx;
            h.regs.rcx = rcx;
            h.exit_on(er::VMCALL, 0);
            let a = h.run();
            h.assert_retired(a);
            assert_eq!(h.regs.rax, hypercall::ERROR);
            assert!(h.host.console.is_empty(), "nothing printed");
        }
    }

    #[test]
    fn print_errors_say_why_nothing_was_printed() {
        let mut h = Harness::long();
        let exit = VmExit::read(&h.vmcs);
        let mut mem = SliceMemory::new(&mut h.ram);
        let mut bus = IoBus::new();
        let mut ctx = ExitContext {
            exit,
            vmcs: &mut h.vmcs,
            regs: &mut h.regs,
            mem: &mut mem,
            host: &mut h.host,
            bus: &mut bus,
            stats: &mut h.stats,
            msrs: &mut h.msrs,
            config: h.config,
        };
        let e = ctx.hypercall_print(0x20_0000, PRINT_MAX + 1).unwrap_err();
        assert_eq!(e, PrintError::TooLong { len: PRINT_MAX + 1 });
        assert_eq!(
            e.to_string(),
            "print hypercall of 4097 bytes is over the 4096-byte limit"
        );
        assert!(core::error::Error::source(&e).is_none());
        // Linear 0x10_2000 is not present: the buffer's second byte would page-fault
        // (a supervisor read of a not-present page, error code 0).
        let e = ctx.hypercall_print(0x10_1FFF, 2).unwrap_err();
        let fault = TranslateError::PageFault {
            linear: 0x10_2000,
            error_code: 0,
        };
        assert_eq!(e, PrintError::Unmapped(fault));
        assert_eq!(
            e.to_string(),
            "print hypercall buffer: page fault at 0x102000 (error code 0x0)"
        );
        let source = core::error::Error::source(&e).expect("the translation error");
        assert_eq!(source.downcast_ref::<TranslateError>(), Some(&fault));
        assert!(h.host.console.is_empty(), "nothing printed");
    }

    #[test]
    fn hypercall_at_cpl3_is_refused() {
        let mut h = Harness::long();
        h.vmcs.write(VmcsField::GuestSsAccessRights, 0xC0F3); // DPL 3
        h.regs.rax = hypercall::EXIT;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.regs.rax, hypercall::ERROR);
    }

    #[test]
    fn hypercall_exit_ends_with_the_status() {
        let mut h = Harness::long();
        h.regs.rax = hypercall::EXIT;
        h.regs.rbx = 0xFFFF_FFFF_0000_002A;
        h.exit_on(er::VMCALL, 0);
        assert_eq!(
            h.run(),
            ExitAction::End {
                kind: EndKind::Hypercall,
                exit_code: 42
            }
        );
        assert_eq!(
            h.describe(EndKind::Hypercall),
            "sluice: guest ended by hypercall at rip=0x7002\n"
        );
    }

    #[test]
    fn hypercall_print_in_real_mode_uses_physical_addresses() {
        let mut h = Harness::real();
        h.ram[0x9_0000..0x9_0002].copy_from_slice(b"ok");
        h.regs.rax = hypercall::PRINT;
        h.regs.rbx = 0x9_0000;
        h.regs.rcx = 2;
        h.exit_on(er::VMCALL, 0);
        let a = h.run();
        h.assert_retired(a);
        assert_eq!(h.host.console, b"ok");
    }
}
