//! Test fixtures of the exit handlers: a [`Harness`] around a [`SoftVmcs`], guest RAM
//! with page tables, a fake host, port probes. Test-only.

pub(crate) use crate::devices::bus::{ConsoleSink, IoBus, PortDevice};
pub(crate) use crate::devices::uart16550::Uart16550;
pub(crate) use crate::stats::{EndKind, Stats};
pub(crate) use crate::vcpu::exit::VmExit;
pub(super) use crate::vcpu::exits::end;
pub(crate) use crate::vcpu::exits::MsrFile;
pub(crate) use crate::vcpu::exits::{handle_exit, ExitAction, ExitContext, HostOps, VcpuConfig};
pub(crate) use crate::vcpu::report::describe_end;
pub(crate) use crate::vmx::caps::EntryControls;
pub(crate) use crate::vmx::event::hardware_exception;
pub(crate) use crate::vmx::exit::exit_reason as er;
pub(crate) use crate::vmx::vmcs::{SoftVmcs, Vmcs, VmcsField};
pub(crate) use crate::x86::guest_mem::SliceMemory;
pub(crate) use crate::x86::regs::GuestRegs;
pub(crate) use crate::x86::Efer;

pub(crate) const RAM: usize = 4 << 20;
pub(crate) const RIP: u64 = 0x7000;
pub(crate) const LEN: u64 = 2;
pub(crate) const IA32E: u64 = EntryControls::IA32E_MODE_GUEST.bits() as u64;
/// Fixed bits as on a typical processor: PE, NE, PG must be 1 in CR0;
/// VMXE in CR4; CR4 bits up to 23 may be 1.
pub(crate) const CONFIG: VcpuConfig = VcpuConfig {
    nested_vmx: false,
    unrestricted_guest: true,
    cr0_fixed0: 0x8000_0021,
    cr0_fixed1: 0xFFFF_FFFF,
    cr4_fixed0: 0x2000,
    cr4_fixed1: 0xFF_FFFF,
    tsc_hz: 0,
};

#[derive(Default)]
pub(crate) struct FakeHost {
    pub(crate) console: Vec<u8>,
    pub(crate) xcr0: Option<u64>,
    pub(crate) wbinvd: u32,
    pub(crate) xsave_mask: u64,
}

impl HostOps for FakeHost {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        match leaf {
            // VMX, XSAVE, x2APIC, TSC deadline, OSXSAVE (host CR4) in ECX; APIC in EDX.
            1 => [0x906EA, 0x0010_0800, 0x7FFA_FBFF, 0xBFEB_FBFF],
            7 => [0, 0x029C_6FBF, 0x10, 0],
            // Sub-leaf 1 as Bochs reports it: XSAVEOPT, XSAVEC, XGETBV1, XSAVES,
            // the standard-format size in EBX, PT in the IA32_XSS bits.
            0xD if subleaf == 1 => [0xF, 0xA80, 0x100, 0],
            0xD if subleaf == 2 => [256, 576, 0, 0],
            0xD if subleaf > 2 => [0; 4],
            0xD => [
                self.xsave_mask as u32,
                0x340,
                0x340,
                (self.xsave_mask >> 32) as u32,
            ],
            // SYSCALL, NX, LM.
            0x8000_0001 => [0, 0, 0x121, 0x2C10_0800],
            _ => [leaf, subleaf, 0xCCCC, 0xDDDD],
        }
    }
    fn console(&mut self, bytes: &[u8]) {
        self.console.extend_from_slice(bytes);
    }
    fn xsetbv(&mut self, xcr: u32, value: u64) {
        assert_eq!(xcr, 0);
        self.xcr0 = Some(value);
    }
    fn wbinvd(&mut self) {
        self.wbinvd += 1;
    }
    fn rdtsc(&mut self) -> u64 {
        0x1_0000_0000
    }
}

pub(crate) struct Harness {
    pub(crate) vmcs: SoftVmcs,
    pub(crate) regs: GuestRegs,
    pub(crate) ram: Vec<u8>,
    pub(crate) host: FakeHost,
    pub(crate) stats: Stats,
    pub(crate) msrs: MsrFile,
    pub(crate) config: VcpuConfig,
}

pub(crate) fn put64(r: &mut [u8], at: u64, v: u64) {
    r[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

impl Harness {
    /// A 64-bit guest at CPL 0 with 4-level paging: the first 2 MiB
    /// identity-mapped with 4 KiB pages except linear 0x10_1000, which maps
    /// to 0x30_0000, and 0x10_2000, which is not present; 2..4 MiB identity
    /// with one 2 MiB page.
    pub(crate) fn long() -> Self {
        let mut ram = vec![0u8; RAM];
        put64(&mut ram, 0x1000, 0x2000 | 7);
        put64(&mut ram, 0x2000, 0x3000 | 7);
        put64(&mut ram, 0x3000, 0x4000 | 7);
        put64(&mut ram, 0x3008, 0x20_0000 | 0x87);
        for i in 0..512u64 {
            let e = match i {
                0x101 => 0x30_0000 | 7,
                0x102 => 0,
                _ => (i << 12) | 7,
            };
            put64(&mut ram, 0x4000 + i * 8, e);
        }
        let mut vmcs = SoftVmcs::new();
        vmcs.write(VmcsField::GuestCr0, 0x8000_0031 | (1 << 16));
        vmcs.write(VmcsField::Cr0ReadShadow, 0x8000_0031 | (1 << 16));
        vmcs.write(VmcsField::Cr0GuestHostMask, 0x8000_0021);
        vmcs.write(VmcsField::GuestCr3, 0x1000);
        vmcs.write(VmcsField::GuestCr4, 0x2020);
        vmcs.write(VmcsField::Cr4ReadShadow, 0x0020);
        vmcs.write(VmcsField::Cr4GuestHostMask, 0x2000);
        vmcs.write(
            VmcsField::GuestIa32Efer,
            Efer::LME.bits() | Efer::LMA.bits() | Efer::NXE.bits() | 1,
        );
        vmcs.write(VmcsField::EntryControls, IA32E);
        vmcs.write(VmcsField::GuestCsAccessRights, 0xA09B);
        vmcs.write(VmcsField::GuestSsAccessRights, 0xC093);
        vmcs.write(VmcsField::GuestRflags, 0x202);
        Self::with(vmcs, ram)
    }

    /// A real-mode guest (unrestricted guest, CR0.PE = 0).
    pub(crate) fn real() -> Self {
        let mut vmcs = SoftVmcs::new();
        vmcs.write(VmcsField::GuestCr0, 0x30);
        vmcs.write(VmcsField::Cr0ReadShadow, 0x10);
        vmcs.write(VmcsField::Cr0GuestHostMask, 0x8000_0021);
        vmcs.write(VmcsField::GuestCr4, 0x2000);
        vmcs.write(VmcsField::Cr4GuestHostMask, 0x2000);
        vmcs.write(VmcsField::GuestCsAccessRights, 0x9B);
        vmcs.write(VmcsField::GuestSsAccessRights, 0x93);
        vmcs.write(VmcsField::GuestRflags, 0x2);
        Self::with(vmcs, vec![0u8; RAM])
    }

    pub(crate) fn with(mut vmcs: SoftVmcs, ram: Vec<u8>) -> Self {
        vmcs.write(VmcsField::GuestRip, RIP);
        vmcs.write(VmcsField::ExitInstructionLength, LEN);
        Harness {
            vmcs,
            regs: GuestRegs::default(),
            ram,
            host: FakeHost {
                xsave_mask: 0x2E7,
                ..FakeHost::default()
            },
            stats: Stats::new(),
            msrs: MsrFile::default(),
            config: CONFIG,
        }
    }

    pub(crate) fn exit_on(&mut self, reason: u16, qualification: u64) -> &mut Self {
        self.vmcs.write(VmcsField::ExitReason, u64::from(reason));
        self.vmcs.write(VmcsField::ExitQualification, qualification);
        self.vmcs.write(VmcsField::EntryInterruptionInfo, 0);
        self
    }

    pub(crate) fn run_with(&mut self, bus: &mut IoBus) -> ExitAction {
        let exit = VmExit::read(&self.vmcs);
        let mut mem = SliceMemory::new(&mut self.ram);
        let mut ctx = ExitContext {
            exit,
            vmcs: &mut self.vmcs,
            regs: &mut self.regs,
            mem: &mut mem,
            host: &mut self.host,
            bus,
            stats: &mut self.stats,
            msrs: &mut self.msrs,
            config: self.config,
        };
        handle_exit(&mut ctx)
    }

    pub(crate) fn run(&mut self) -> ExitAction {
        self.run_with(&mut IoBus::new())
    }

    pub(crate) fn rip(&self) -> u64 {
        self.vmcs.read(VmcsField::GuestRip)
    }

    pub(crate) fn injected(&self) -> u64 {
        self.vmcs.read(VmcsField::EntryInterruptionInfo)
    }

    /// Resumed, RIP advanced, nothing injected.
    pub(crate) fn assert_retired(&self, a: ExitAction) {
        assert_eq!(a, ExitAction::Resume);
        assert_eq!(self.rip(), RIP + LEN);
        assert_eq!(self.injected(), 0);
    }

    /// Resumed with `info` injected and RIP unchanged.
    pub(crate) fn assert_faulted(&self, a: ExitAction, info: u32) {
        assert_eq!(a, ExitAction::Resume);
        assert_eq!(self.rip(), RIP);
        assert_eq!(self.injected(), u64::from(info));
    }

    pub(crate) fn describe(&self, kind: EndKind) -> String {
        let mut s = String::new();
        describe_end(&self.vmcs, kind, &mut s).unwrap();
        s
    }
}

pub(crate) const GP0: u32 = 0x8000_0B0D;
pub(crate) const UD_INFO: u32 = 0x8000_0306;

/// Records accesses; reads return `value`.
#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) value: u32,
    pub(crate) reads: u32,
    pub(crate) writes: Vec<(u16, u8, u32)>,
}

impl PortDevice for Probe {
    fn read(&mut self, _port: u16, _size: u8) -> u32 {
        self.reads += 1;
        self.value
    }
    fn write(&mut self, port: u16, size: u8, value: u32) {
        self.writes.push((port, size, value));
    }
}

#[derive(Default)]
pub(crate) struct VecSink(pub(crate) Vec<u8>);

impl ConsoleSink for VecSink {
    fn write_bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// IO exit qualification.
pub(crate) fn ioq(port: u16, size: u8, is_in: bool, string: bool, rep: bool) -> u64 {
    let size_bits = u64::from(size - 1);
    (u64::from(port) << 16)
        | size_bits
        | (u64::from(is_in) << 3)
        | (u64::from(string) << 4)
        | (u64::from(rep) << 5)
}

/// Instruction information for INS/OUTS: address size (0/1/2) and segment.
pub(crate) fn ioinfo(addr_size: u64, seg: u64) -> u64 {
    (addr_size << 7) | (seg << 15)
}
