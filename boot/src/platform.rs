//! How a run ends. Emulators give the kernel a way to pass a status to the host, real
//! hardware does not, so the last console line always carries the status too:
//! `sluice: exit status N`, which xtask reads when the emulator cannot pass it on.
//!
//! - QEMU: the `isa-debug-exit` device at port 0xf4; QEMU exits with `(N << 1) | 1`.
//! - Bochs: `xchg bx, bx` is the magic breakpoint (bochsrc `magic_break: enabled=1`)
//!   that drops into the debugger, whose rc file says `quit`. As a fallback, the
//!   string "Shutdown" written to port 0x8900 ends Bochs too.
//! - Hardware: interrupts off and HLT forever, no watchdog and no reset: the final
//!   screen stays up for the user to read.

use core::sync::atomic::{AtomicU8, Ordering};
use hypervisor::config::Platform;
use x86_64::instructions::port::Port;

/// Exit statuses of a run (also documented in README.md).
pub mod status {
    /// The run did what was asked (the guest ended through its exit hypercall with 0).
    pub const OK: u32 = 0;
    /// The CPU lacks something sluice needs (VMX, EPT, unrestricted guest, ...).
    pub const UNSUPPORTED: u32 = 1;
    /// The payload or configuration in the image is invalid.
    pub const BAD_PAYLOAD: u32 = 2;
    /// The hypervisor itself faulted or panicked: a bug in sluice.
    pub const KERNEL_FAULT: u32 = 3;
    /// The guest could not start or was stopped for misbehaving (EPT violation,
    /// VM-entry failure, an exit sluice cannot handle). A guest that ends itself (exit
    /// hypercall) passes its own status instead; a halt or triple fault is status 0.
    pub const GUEST_STOPPED: u32 = 4;

    /// What a status means, in the words of the final screen.
    pub fn meaning(code: u32) -> &'static str {
        match code {
            OK => "the run did what was asked",
            UNSUPPORTED => "this CPU lacks something sluice needs",
            BAD_PAYLOAD => "the configuration or guest in the image is invalid",
            KERNEL_FAULT => "sluice itself faulted (a bug in sluice)",
            GUEST_STOPPED => "the guest could not start or was stopped",
            _ => "the guest's own exit code",
        }
    }
}

static PLATFORM: AtomicU8 = AtomicU8::new(Platform::Hardware as u8);

pub fn set(platform: Platform) {
    PLATFORM.store(platform as u8, Ordering::Relaxed);
}

fn current() -> Platform {
    match PLATFORM.load(Ordering::Relaxed) {
        x if x == Platform::Qemu as u8 => Platform::Qemu,
        x if x == Platform::Bochs as u8 => Platform::Bochs,
        _ => Platform::Hardware,
    }
}

pub fn exit(code: u32) -> ! {
    crate::console::print_emergency(format_args!("sluice: exit status {code}\n"));
    x86_64::instructions::interrupts::disable();
    crate::console::final_screen(code, status::meaning(code));
    crate::console::flush();
    match current() {
        Platform::Qemu => {
            // SAFETY: xtask starts QEMU with isa-debug-exit at 0xf4; without the device
            // the write is ignored and we fall through to the halt loop.
            unsafe { Port::<u32>::new(0xf4).write(code) };
        }
        Platform::Bochs => {
            // SAFETY: a no-op exchange everywhere except in Bochs, where it is the magic
            // breakpoint; the port writes only matter to Bochs.
            unsafe {
                core::arch::asm!("xchg bx, bx", options(nomem, nostack));
                let mut port = Port::<u8>::new(0x8900);
                for &b in b"Shutdown" {
                    port.write(b);
                }
            }
        }
        Platform::Hardware => {}
    }
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
