//! Running the guest on this machine: guest RAM, EPT and the VMX bitmaps from the frame
//! allocator, the host MTRRs and host state read from the processor, the VMCS made
//! current and filled (the values all computed by `hypervisor::vmx::{controls,
//! host_state, guest_state}` and checked by `hypervisor::vmx::checks`), INVEPT, and
//! the [`Platform`] through which `hypervisor::vcpu::run` enters the guest and reaches
//! the console. The run loop itself is host-tested code in the hypervisor crate.

use core::arch::asm;

use hypervisor::config::Config;
use hypervisor::guest::loader::{self, Start};
use hypervisor::vmx::caps::VmxCaps;
use hypervisor::vmx::checks::{check_guest_state, GuestStateError};
use hypervisor::vmx::controls::{
    compute_controls_with, fill_io_bitmap, fill_msr_bitmap, write_controls, ControlAddrs,
    ControlOptions, SetupError, PASSTHROUGH_MSRS,
};
use hypervisor::vmx::ept::{self, EptAccess, FrameSource, MemoryType};
use hypervisor::vmx::guest_state;
use hypervisor::vmx::host_state::{write_host_state, HostState};
use hypervisor::vmx::mtrr::{self, Mtrrs};
use hypervisor::x86::regs::GuestRegs;
use raw_cpuid::CpuId;
use x86_64::registers::control::{Cr0, Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;

use hypervisor::coalesce::block::Extent;
use hypervisor::coalesce::cache::BlockCache;
use hypervisor::coalesce::engine::{Coalescer, Settings};
use hypervisor::coalesce::exec::Limits;
use hypervisor::devices::board::{Machine, PcConfig};
use hypervisor::devices::bus::{ConsoleSink, IoBus};
use hypervisor::devices::rtc::{self, DateTime};
use hypervisor::stats::{EndKind, Stats};
use hypervisor::timebase::Timebase;
use hypervisor::vcpu::exits::MsrFile;
use hypervisor::vcpu::exits::{HostOps, VcpuConfig};
use hypervisor::vcpu::report::EntryFailure;
use hypervisor::vcpu::run::{Platform, Vcpu};
use hypervisor::x86::guest_mem::SliceMemory;
use hypervisor::x86::msr;

use crate::console::ConsoleWriter;
use crate::memory::Memory;
use crate::platform::status;
use crate::println;
use crate::vmexit::{self, HwVmcs};
use crate::vmx::{self, VmxError};

/// The VPID of the guest (0 belongs to the host, SDM Vol. 3C 27.2.1.1 "VM-Execution
/// Control Fields").
const GUEST_VPID: u16 = 1;

/// The boot CPU's MTRRs (all CPUs of a system share one setting, SDM Vol. 3A 12.11.8
/// "MTRR Considerations in MP Systems"), or "none" if CPUID.01H:EDX.MTRR[12] says there
/// are none.
fn host_mtrrs() -> Mtrrs {
    let cpuid = CpuId::new();
    if !cpuid.get_feature_info().is_some_and(|f| f.has_mtrr()) {
        return Mtrrs::absent();
    }
    let phys_bits = cpuid
        .get_processor_capacity_feature_info()
        .map_or(36, |c| c.physical_address_bits());
    // SAFETY: CPUID says the MTRRs exist; `Mtrrs::read` only reads the registers
    // IA32_MTRRCAP reports.
    Mtrrs::read(|msr| unsafe { Msr::new(msr).read() }, phys_bits)
}

/// Why a guest could not be started at all.
#[derive(Debug)]
pub enum StartError {
    Vmx(VmxError),
    OutOfMemory(&'static str),
    Load(loader::LoadError),
    Ept(ept::EptError),
    Controls(SetupError),
    GuestState(GuestStateError),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartError::Vmx(e) => write!(f, "{e}"),
            StartError::OutOfMemory(what) => write!(f, "out of memory allocating {what}"),
            StartError::Load(e) => write!(f, "loading the guest: {e}"),
            StartError::Ept(e) => write!(f, "building EPT: {e}"),
            StartError::Controls(e) => write!(f, "{e}"),
            StartError::GuestState(e) => write!(f, "guest state would fail VM entry: {e}"),
        }
    }
}

impl core::error::Error for StartError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            StartError::Vmx(e) => Some(e),
            StartError::OutOfMemory(_) => None,
            StartError::Load(e) => Some(e),
            StartError::Ept(e) => Some(e),
            StartError::Controls(e) => Some(e),
            StartError::GuestState(e) => Some(e),
        }
    }
}

impl From<VmxError> for StartError {
    fn from(e: VmxError) -> Self {
        StartError::Vmx(e)
    }
}

/// EPT tables come from the frame allocator and are written through the
/// physical-memory window.
impl FrameSource for Memory {
    fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        Memory::alloc_zeroed_frame(self)
    }

    fn frame_mut(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: EPT code only passes frames it got from alloc_zeroed_frame (4 KiB
        // aligned RAM owned by the hypervisor), mapped at phys_offset.
        unsafe { &mut *(self.phys_to_virt(phys) as *mut [u64; 512]) }
    }
}

/// Guest RAM: one contiguous, 2 MiB-aligned host block, guest-physical 0 at its start.
pub struct GuestRam {
    pub host_base: u64,
    pub bytes: &'static mut [u8],
}

fn alloc_guest_ram(mem: &mut Memory, ram_bytes: u64) -> Result<GuestRam, StartError> {
    let base = mem
        .frames
        .alloc_contiguous(ram_bytes, ept::PAGE_2M)
        .ok_or(StartError::OutOfMemory("guest RAM"))?;
    let ptr = mem.phys_to_virt(base);
    // SAFETY: the block was usable RAM and is now owned by the guest for the rest of
    // the run; zeroing it keeps host data from leaking into the guest.
    let bytes = unsafe {
        core::ptr::write_bytes(ptr, 0, ram_bytes as usize);
        core::slice::from_raw_parts_mut(ptr, ram_bytes as usize)
    };
    Ok(GuestRam {
        host_base: base,
        bytes,
    })
}

/// A zeroed 4 KiB frame for a VMX bitmap, filled by `fill`; returns its physical
/// address.
fn bitmap_frame(
    mem: &mut Memory,
    what: &'static str,
    fill: impl FnOnce(&mut [u8; 4096]),
) -> Result<u64, StartError> {
    let phys = mem
        .alloc_zeroed_frame()
        .ok_or(StartError::OutOfMemory(what))?;
    // SAFETY: a fresh 4 KiB frame owned by the hypervisor, mapped at phys_offset.
    fill(unsafe { &mut *(mem.phys_to_virt(phys) as *mut [u8; 4096]) });
    Ok(phys)
}

fn host_state() -> HostState {
    let sel = crate::gdt::selectors();
    let gdtr = x86_64::instructions::tables::sgdt();
    let idtr = x86_64::instructions::tables::sidt();
    let rdmsr = |m: u32| unsafe { Msr::new(m).read() };
    HostState {
        cr0: Cr0::read_raw(),
        cr3: Cr3::read_raw().0.start_address().as_u64(),
        cr4: Cr4::read_raw(),
        cs: sel.code.0,
        ss: sel.data.0,
        ds: sel.data.0,
        es: sel.data.0,
        fs: 0,
        gs: 0,
        tr: sel.tss.0,
        fs_base: rdmsr(msr::IA32_FS_BASE),
        gs_base: rdmsr(msr::IA32_GS_BASE),
        tr_base: crate::gdt::tss_base(),
        gdtr_base: gdtr.base.as_u64(),
        idtr_base: idtr.base.as_u64(),
        sysenter_cs: 0,
        sysenter_esp: 0,
        sysenter_eip: 0,
        efer: rdmsr(msr::IA32_EFER),
        pat: rdmsr(msr::IA32_PAT),
        // The entry stub writes the real value before every VM entry.
        rsp: 0,
        rip: vmexit::exit_entry_point(),
    }
}

/// INVEPT (SDM Vol. 3C 31.3 "VMX Instructions", INVEPT—Invalidate Translations Derived
/// from EPT): type 1 single-context, 2 all-context.
fn invept(kind: u64, eptp: u64) {
    let descriptor: [u64; 2] = [eptp, 0];
    // SAFETY: executed in VMX root operation with a valid descriptor; failure only
    // means the type is unsupported, which the caller checked.
    unsafe {
        asm!("invept {k}, [{d}]", k = in(reg) kind, d = in(reg) &descriptor, options(nostack))
    };
}

/// Everything the exit loop needs, prepared and loaded into the current VMCS.
pub struct Prepared {
    pub ram: GuestRam,
    pub regs: GuestRegs,
    /// The VMX-preemption timer is active (CPUs without it cannot wake a halted guest
    /// on time, see `run`).
    pub preemption_timer: bool,
}

/// Allocates and fills every VMX structure for `config`'s guest and makes its VMCS
/// current. On success the next step is `vmexit::vm_run`.
pub fn prepare(
    mem: &mut Memory,
    caps: &VmxCaps,
    config: &Config,
    image: &[u8],
) -> Result<Prepared, StartError> {
    let ram_bytes = config.ram_bytes();
    let ram = alloc_guest_ram(mem, ram_bytes)?;
    let loaded = loader::load(ram.bytes, config.guest_entry, image).map_err(StartError::Load)?;

    let ept_caps = ept::EptCaps::from_vmx_caps(&caps.ept);
    let mtrrs = host_mtrrs();
    // The types the leaves got, one bit per type: the report below comes from what
    // the builder mapped, without walking the MTRRs over guest RAM a second time.
    let used = core::cell::Cell::new(0u8);
    let types = |host: u64, len: u64| {
        let t = mtrrs
            .uniform_type(host, len)
            .and_then(MemoryType::from_bits);
        if let Some(t) = t {
            used.set(used.get() | 1 << (t as u8));
        }
        t
    };
    let eptp = ept::build_guest_ram_typed(mem, ram_bytes, ram.host_base, ept_caps, &types)
        .map_err(StartError::Ept)?;
    let used = used.get();
    println!(
        "sluice: host MTRRs: {}; guest RAM at host {:#x} is {}",
        mtrrs.describe(),
        ram.host_base,
        if used.is_power_of_two() {
            mtrr::type_name(used.trailing_zeros() as u8)
        } else {
            "of mixed types (mapped page by page)"
        }
    );
    if let Some(alias) = loaded.firmware_alias {
        ept::map_range(
            mem,
            eptp,
            alias.high,
            ram.host_base + alias.low,
            alias.len,
            EptAccess::RWX,
            MemoryType::WriteBack,
        )
        .map_err(StartError::Ept)?;
    }

    let long_mode = matches!(loaded.start, Start::Long { .. } | Start::Linux { .. });
    let options = ControlOptions {
        long_mode_guest: long_mode,
        // Timer interrupts on time and HLT wake-ups use the VMX-preemption timer.
        want_preemption_timer: true,
    };
    let controls = compute_controls_with(caps, &options).map_err(StartError::Controls)?;
    let io_a = bitmap_frame(mem, "IO bitmap A", fill_io_bitmap)?;
    let io_b = bitmap_frame(mem, "IO bitmap B", fill_io_bitmap)?;
    let msr_bitmap = bitmap_frame(mem, "MSR bitmap", |b| fill_msr_bitmap(b, PASSTHROUGH_MSRS))?;

    // XSETBV runs in the host on the guest's behalf (exits::HostOps::xsetbv), which
    // needs CR4.OSXSAVE in the host (SDM Vol. 2C "XSETBV—Set Extended Control
    // Register": #UD otherwise).
    if CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_xsave())
    {
        // SAFETY: the CPU supports XSAVE; setting OSXSAVE only enables XGETBV/XSETBV.
        unsafe { Cr4::update(|f| f.insert(Cr4Flags::OSXSAVE)) };
    }

    let vmcs_region = vmx::region(mem, caps.vmcs_revision, "VMCS")?;
    vmx::vmclear(vmcs_region)?;
    vmx::vmptrld(vmcs_region)?;
    let mut vmcs = HwVmcs;
    let vpid = (caps.vpid.present).then_some(GUEST_VPID);
    write_controls(
        &mut vmcs,
        &controls,
        &ControlAddrs {
            io_bitmap_a: io_a,
            io_bitmap_b: io_b,
            msr_bitmap,
            eptp,
            vpid,
        },
    );
    write_host_state(&mut vmcs, &host_state());
    let cpuid_1_eax = CpuId::new().get_feature_info().map_or(0, |f| {
        u32::from(f.stepping_id())
            | u32::from(f.model_id()) << 4
            | u32::from(f.family_id()) << 8
            | u32::from(f.extended_model_id()) << 16
            | u32::from(f.extended_family_id()) << 20
    });
    let regs = guest_state::write_guest_start(
        &mut vmcs,
        caps,
        &loaded.start,
        config.guest_arg,
        cpuid_1_eax,
    );
    check_guest_state(&vmcs, caps).map_err(StartError::GuestState)?;
    if caps.ept.invept_single_context {
        invept(1, eptp.raw());
    } else if caps.ept.invept_all_context {
        invept(2, 0);
    }
    Ok(Prepared {
        ram,
        regs,
        preemption_timer: controls.preemption_timer(),
    })
}

/// The real processor and the kernel's console, for the run loop and the exit
/// handlers.
struct KernelPlatform;

impl HostOps for KernelPlatform {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    fn console(&mut self, bytes: &[u8]) {
        crate::console::write_bytes(bytes);
    }

    fn xsetbv(&mut self, xcr: u32, value: u64) {
        // SAFETY: the handler validated the value against CPUID leaf 0xD, and
        // vm::prepare set the host's CR4.OSXSAVE. The host never uses extended state
        // (soft-float target), so the guest's XCR0 can stay loaded.
        unsafe {
            asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                 options(nostack));
        }
    }

    fn wbinvd(&mut self) {
        // SAFETY: writes back and invalidates caches; no memory-safety effect.
        unsafe { asm!("wbinvd", options(nostack)) };
    }

    fn rdtsc(&mut self) -> u64 {
        crate::tsc::rdtsc()
    }
}

impl Platform for KernelPlatform {
    fn enter(&mut self, regs: &mut GuestRegs, launched: bool) -> Result<(), EntryFailure> {
        vmexit::vm_run(regs, launched)
    }

    fn pump_console(&mut self) {
        crate::console::pump();
    }

    fn console_input(&mut self) -> Option<u8> {
        crate::console::try_read()
    }
}

/// The coalescer's block cache: about 70 KiB, so a static rather than the kernel stack.
static BLOCK_CACHE: spin::Mutex<BlockCache> = spin::Mutex::new(BlockCache::new());

/// The guest RTC's time at PIT tick 0: the machine's own clock read now, less the
/// time since the timebase started; [`rtc::DEFAULT_EPOCH`] when it cannot be read.
fn wall_clock(timebase: Timebase) -> u64 {
    let elapsed = timebase.pit_ticks(crate::tsc::rdtsc()) / rtc::PIT_SECOND;
    let (secs, from) = match crate::cmos::read_wall_clock() {
        Some(t) => (t.saturating_sub(elapsed), "the machine's RTC"),
        None => (rtc::DEFAULT_EPOCH, "fixed; the machine's RTC is unreadable"),
    };
    let d = DateTime::from_unix(secs);
    println!(
        "sluice: guest clock starts at {:04}-{:02}-{:02} {:02}:{:02}:{:02} ({from})",
        d.year, d.month, d.day, d.hour, d.minute, d.second
    );
    secs
}

/// The guest's COM1 output goes to sluice's console.
struct ConsoleOut;

impl ConsoleSink for ConsoleOut {
    fn write_bytes(&mut self, bytes: &[u8]) {
        crate::console::write_bytes(bytes);
    }
}

/// Runs the prepared guest until it ends (`hypervisor::vcpu::run`); prints how it
/// ended, the `sluice-stats` line and the summary, and returns the run's exit status.
pub fn run(prepared: Prepared, caps: &VmxCaps, config: &Config, timebase: Timebase) -> u32 {
    let Prepared {
        ram,
        mut regs,
        preemption_timer,
    } = prepared;
    let mut mem = SliceMemory::new(ram.bytes);
    let machine = Machine::with_config(
        ConsoleOut,
        PcConfig {
            wall_clock: wall_clock(timebase),
            ram_bytes: config.ram_bytes(),
            lost_ticks: config.lost_ticks,
        },
    );
    let mut handles = machine.handles();
    let mut bus = IoBus::new();
    if let Err(e) = Machine::register(&mut handles, &mut bus) {
        println!("sluice: error: IO bus: {e}");
        return status::KERNEL_FAULT;
    }
    let mut stats = Stats::new();
    let mut cache = BLOCK_CACHE.lock();
    let mut vcpu = Vcpu {
        platform: &mut KernelPlatform,
        vmcs: &mut HwVmcs,
        regs: &mut regs,
        mem: &mut mem,
        machine: &machine,
        bus: &mut bus,
        coalescer: Coalescer::new(coalesce_settings(config), &mut cache),
        stats: &mut stats,
        msrs: MsrFile::default(),
        config: VcpuConfig {
            nested_vmx: false,
            unrestricted_guest: true,
            cr0_fixed0: caps.cr0_fixed0,
            cr0_fixed1: caps.cr0_fixed1,
            cr4_fixed0: caps.cr4_fixed0,
            cr4_fixed1: caps.cr4_fixed1,
            tsc_hz: timebase.tsc_hz(),
        },
        timebase,
        preemption_timer: preemption_timer.then_some(caps.misc.preemption_timer_rate),
        launched: false,
    };
    let end = vcpu.run(config.guest_name, &mut ConsoleWriter);
    crate::console::set_run_end(end.kind, end.exit_code, &stats);
    match end.kind {
        EndKind::Hypercall => end.exit_code,
        EndKind::Halt | EndKind::TripleFault => status::OK,
        _ => status::GUEST_STOPPED,
    }
}

/// The coalescer's settings from the run configuration (validated by xtask and the
/// payload parser; an unknown extent falls back to the default policy).
fn coalesce_settings(config: &Config) -> Settings {
    Settings {
        enabled: config.coalesce,
        extent: Extent::parse(config.coalesce_extent).unwrap_or(Extent::Page),
        limits: Limits {
            max_insns: config.coalesce_max_insns,
            max_string_elements: config.coalesce_max_string,
            max_quiet: config.coalesce_max_quiet,
        },
    }
}
