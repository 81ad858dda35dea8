//! sluice: the bootable kernel. The bootloader (BIOS or UEFI) enters `kernel_main` in
//! 64-bit mode; this crate is the thin platform shim: console, descriptor tables,
//! memory, MSR and VMX instruction access. All logic lives in the `hypervisor` crate.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

mod cmos;
mod console;
mod gdt;
mod interrupts;
mod memory;
mod platform;
mod tsc;
mod vm;
mod vmexit;
mod vmx;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::{entry_point, BootInfo};
use hypervisor::config::{self, EntryMode, Platform};
use hypervisor::payload;
use hypervisor::timebase::Timebase;
use platform::status;

const BOOT_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    // All physical memory mapped at a bootloader-chosen offset: VMX structures and
    // guest RAM are addressed physically and touched through this window.
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOT_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let serial = console::init();
    let screen = console::init_screen(boot_info.framebuffer.take());
    gdt::init();
    interrupts::init();
    println!(
        "sluice {} -- a type-1 hypervisor for Intel VMX that coalesces port-IO exits",
        env!("CARGO_PKG_VERSION")
    );
    match screen {
        Ok(fb) => println!(
            "sluice: screen {}x{} ({:?}, {} bytes per pixel){}",
            fb.width,
            fb.height,
            fb.format,
            fb.bytes_per_pixel,
            if serial { "" } else { ", no serial port" }
        ),
        // Only the serial port can say so; without one the run carries on silently.
        Err(why) => println!("sluice: no screen console: {why}"),
    }

    let payload_bytes: &[u8] = match boot_info.ramdisk_addr.into_option() {
        // SAFETY: the bootloader mapped the ramdisk at this address with this length.
        Some(addr) => unsafe {
            core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize)
        },
        None => &[],
    };
    let (run_config, guest_image) = if payload_bytes.is_empty() {
        println!("sluice: no payload in the image; using the default configuration");
        (config::Config::default(), &[][..])
    } else {
        match payload::decode(payload_bytes) {
            Ok(p) => match config::parse(p.config) {
                Ok(cfg) => (cfg, p.guest),
                Err(e) => {
                    println!("sluice: error: configuration in the image: {e}");
                    platform::exit(status::BAD_PAYLOAD);
                }
            },
            Err(e) => {
                println!("sluice: error: payload in the image: {e}");
                platform::exit(status::BAD_PAYLOAD);
            }
        }
    };
    platform::set(run_config.platform);
    let platform_name = match run_config.platform {
        Platform::Qemu => "qemu",
        Platform::Bochs => "bochs",
        Platform::Hardware => "hardware",
    };

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        println!("sluice: error: the bootloader did not map physical memory");
        platform::exit(status::KERNEL_FAULT);
    };
    let mut mem = memory::Memory::new(&boot_info.memory_regions, phys_offset);
    println!(
        "sluice: platform={platform_name} memory: {} MiB usable in {} map entries, {} ranges (largest {} MiB), firmware={}",
        memory::usable_bytes(&boot_info.memory_regions) >> 20,
        memory::usable_entries(&boot_info.memory_regions),
        mem.frames.ranges(),
        mem.frames.largest_free() >> 20,
        if boot_info.rsdp_addr.into_option().is_some() {
            "acpi"
        } else {
            "no-acpi"
        },
    );
    if mem.frames.dropped_bytes() != 0 {
        println!(
            "sluice: warning: the memory map has more ranges than sluice tracks; {} KiB of usable memory left unused",
            mem.frames.dropped_bytes() >> 10
        );
    }

    let tsc_hz = tsc::calibrate().unwrap_or_else(|| {
        println!("sluice: warning: no 8254 answered; assuming a 1 GHz TSC for guest time");
        1_000_000_000
    });
    let timebase = Timebase::new(tsc::rdtsc(), tsc_hz);
    println!(
        "sluice: TSC {}.{:03} MHz (measured against the 8254)",
        tsc_hz / 1_000_000,
        tsc_hz / 1000 % 1000
    );

    let probe = vmx::probe();
    if let Some(caps) = &probe.caps {
        let _ = caps.write_report(&mut console::ConsoleWriter);
    }
    if let Err(missing) = probe.verdict {
        println!("sluice: error: {missing}");
        let hint = missing.hint(vmx::cpu_vendor());
        println!("sluice: what to do: {hint}");
        console::set_hint(hint);
        platform::exit(status::UNSUPPORTED);
    }
    let caps = probe
        .caps
        .expect("a passing verdict comes with capabilities");
    if let Err(e) = vmx::enable(&mut mem, &caps) {
        println!("sluice: error: {e}");
        platform::exit(status::UNSUPPORTED);
    }
    println!("vmx: ready (VMXON and VMCS load succeeded)");

    if run_config.guest_entry == EntryMode::None {
        println!("sluice: no guest configured; nothing to run");
        platform::exit(status::OK);
    }
    println!(
        "sluice: guest {} ({}, {} MiB RAM, {} bytes)",
        run_config.guest_name,
        EntryName(run_config.guest_entry),
        run_config.ram_mib,
        guest_image.len()
    );
    if run_config.coalesce {
        println!(
            "sluice: IO coalescing on (extent {}, at most {} instructions and {} string elements per exit)",
            run_config.coalesce_extent, run_config.coalesce_max_insns, run_config.coalesce_max_string
        );
    } else {
        println!("sluice: IO coalescing off (one exit per IO instruction)");
    }
    let prepared = match vm::prepare(&mut mem, &caps, &run_config, guest_image) {
        Ok(p) => p,
        Err(e) => {
            println!("sluice: error: cannot start the guest: {e}");
            platform::exit(status::GUEST_STOPPED);
        }
    };
    let code = vm::run(prepared, &caps, &run_config, timebase);
    platform::exit(code)
}

/// `guest.entry` as the configuration spells it.
struct EntryName(EntryMode);

impl core::fmt::Display for EntryName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            EntryMode::None => write!(f, "none"),
            EntryMode::RealSegOff { seg, off } => write!(f, "real:{seg:#x}:{off:#x}"),
            EntryMode::RealAddr(a) => write!(f, "real:{a:#x}"),
            EntryMode::Elf64 => write!(f, "elf64"),
            EntryMode::Firmware => write!(f, "firmware"),
            EntryMode::Linux => write!(f, "linux"),
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print_emergency(format_args!("sluice: PANIC: {info}\n"));
    platform::exit(status::KERNEL_FAULT)
}
