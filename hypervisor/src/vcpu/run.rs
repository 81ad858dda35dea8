//! The run loop of the one virtual CPU: prepare every VM entry, enter the guest
//! through the [`Platform`], decode the exit once and handle it, until the guest ends.
//!
//! Before every entry: bring the devices to the current time and their interrupt lines
//! onto the PIC, inject a pending interrupt if the guest can take it (or ask for an
//! interrupt window, SDM Vol. 3C 26.7.5 "Interrupt-Window Exiting"), and arm the
//! VMX-preemption timer (26.5.1 "VMX-Preemption Timer") for the next timer edge, so
//! timer interrupts arrive on time whether the guest runs or sits in HLT. A halted
//! guest that nothing could ever wake ends the run.
//!
//! After every exit: IO-instruction exits go to the coalescer first, which may emulate
//! the whole burst that follows; whatever it leaves goes to the one-instruction
//! handlers of [`crate::vcpu::exits`]. The exit is counted once, the TSC cycles spent
//! on IO exits are added up, and a reset the guest requested through a device access
//! ends the run there.
//!
//! Everything here is host-testable: the platform is a trait (the kernel's one enters
//! the guest with VMLAUNCH/VMRESUME), the VMCS a [`Vmcs`], guest RAM a
//! [`GuestMemory`].

use core::fmt::Write;

use crate::coalesce::engine::{Coalescer, Outcome};
use crate::coalesce::exec::IoEnv;
use crate::devices::board::{Machine, Ticks};
use crate::devices::bus::{ConsoleSink, IoBus};
use crate::stats::{self, EndKind, Stats};
use crate::timebase::Timebase;
use crate::vcpu::exit::VmExit;
use crate::vcpu::exits::{self, ExitAction, ExitContext, HostOps, VcpuConfig};
use crate::vcpu::irq;
use crate::vcpu::msr::MsrFile;
use crate::vcpu::report::{describe_end, describe_entry_failure, EntryFailure};
use crate::vmx::vmcs::{activity, Vmcs, VmcsField};
use crate::x86::guest_mem::GuestMemory;
use crate::x86::regs::GuestRegs;
use crate::x86::Width;

/// What the run loop needs from the machine it runs on, beyond the exit handlers'
/// [`HostOps`]: the world switch and the host console.
pub trait Platform: HostOps {
    /// Enters the guest with `regs` (VMLAUNCH when `launched` is false, VMRESUME after)
    /// and returns at its next VM exit with `regs` holding the guest's registers.
    fn enter(&mut self, regs: &mut GuestRegs, launched: bool) -> Result<(), EntryFailure>;
    /// Hands console output queued so far to the host's UART, without waiting for it.
    fn pump_console(&mut self);
    /// A byte that arrived on the host console, if any.
    fn console_input(&mut self) -> Option<u8>;
}

/// How and why a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEnd {
    pub kind: EndKind,
    /// The guest's own status (exit hypercall), else 0.
    pub exit_code: u32,
}

/// The devices as the coalescer sees them during one exit: the IO bus, with guest
/// time brought up to the TSC before each access (so a guest polling the PIT inside
/// one block sees time pass) and the interrupt lines synced after it (so a block stops
/// as soon as an interrupt becomes deliverable).
pub struct BoardIo<'a, 'b, S: ConsoleSink, H: HostOps> {
    pub bus: &'a mut IoBus<'b>,
    pub machine: &'a Machine<S>,
    pub host: &'a mut H,
    pub timebase: Timebase,
    /// Timer edges the accesses saw, for the statistics.
    pub ticks: Ticks,
}

impl<S: ConsoleSink, H: HostOps> BoardIo<'_, '_, S, H> {
    fn now(&mut self) -> u64 {
        self.timebase.pit_ticks(self.host.rdtsc())
    }
}

impl<S: ConsoleSink, H: HostOps> IoEnv for BoardIo<'_, '_, S, H> {
    fn io_read(&mut self, port: u16, width: Width) -> u32 {
        let now = self.now();
        self.machine.set_now(now);
        self.bus.read(port, width.bytes())
    }

    fn io_write(&mut self, port: u16, width: Width, value: u32) {
        let now = self.now();
        self.machine.set_now(now);
        self.bus.write(port, width.bytes(), value)
    }

    fn interrupt_pending(&mut self) -> bool {
        let now = self.now();
        self.ticks.add(self.machine.poll(now));
        self.machine.interrupt_pending()
    }
}

/// One virtual CPU and everything its exits touch. The fields are the loop's state
/// between exits; [`Vcpu::run`] drives it, [`Vcpu::handle_exit`] is the exit path on
/// its own (the differential checker runs coalesced exits through it).
pub struct Vcpu<'a, 'b, 'c, P: Platform, V: Vmcs, M: GuestMemory, S: ConsoleSink> {
    pub platform: &'a mut P,
    pub vmcs: &'a mut V,
    pub regs: &'a mut GuestRegs,
    pub mem: &'a mut M,
    pub machine: &'a Machine<S>,
    pub bus: &'a mut IoBus<'b>,
    pub coalescer: Coalescer<'c>,
    pub stats: &'a mut Stats,
    pub msrs: MsrFile,
    pub config: VcpuConfig,
    pub timebase: Timebase,
    /// The VMX-preemption timer is on, counting down at TSC bit `rate`
    /// (IA32_VMX_MISC[4:0]); `None`: the loop waits in the host for a halted guest.
    pub preemption_timer: Option<u8>,
    /// VMLAUNCH has succeeded once: later entries are VMRESUMEs.
    pub launched: bool,
}

impl<P: Platform, V: Vmcs, M: GuestMemory, S: ConsoleSink> Vcpu<'_, '_, '_, P, V, M, S> {
    fn now(&mut self) -> (u64, u64) {
        let tsc = self.platform.rdtsc();
        (tsc, self.timebase.pit_ticks(tsc))
    }

    /// Runs the guest until it ends; writes how it ended, the `sluice-stats` line and
    /// the summary to `out`.
    pub fn run(&mut self, guest_name: &str, out: &mut impl Write) -> RunEnd {
        let end = loop {
            match self.step(out) {
                ExitAction::Resume => {}
                ExitAction::End { kind, exit_code } => break RunEnd { kind, exit_code },
            }
        };
        let _ = describe_end(&*self.vmcs, end.kind, out);
        let _ = stats::write_stats_line(
            out,
            guest_name,
            end.kind,
            end.exit_code,
            self.stats,
            self.bus,
        );
        let _ = stats::write_summary(out, self.stats, self.coalescer.settings.enabled);
        end
    }

    /// One trip through the guest: prepare the entry, enter, handle the exit.
    pub fn step(&mut self, out: &mut impl Write) -> ExitAction {
        // The host's UART gets what it can take of the console output queued so far,
        // while the guest runs on.
        self.platform.pump_console();
        let (now_tsc, now) = self.now();
        while let Some(byte) = self.platform.console_input() {
            if !self.machine.uart.borrow_mut().receive(byte) {
                break;
            }
        }
        self.stats.count_ticks(self.machine.poll(now));
        irq::deliver_from(self.vmcs, self.machine, self.stats);
        let halted = self.vmcs.read(VmcsField::GuestActivityState) == activity::HLT;
        if halted && !self.machine.can_wake(now) {
            return ExitAction::End {
                kind: EndKind::Halt,
                exit_code: 0,
            };
        }
        let next = self.machine.next_timer_event(now);
        match self.preemption_timer {
            Some(rate) => {
                let value = next.map_or(u32::MAX, |t| {
                    self.timebase
                        .preemption_timer_value(now_tsc, self.timebase.tsc_at(t), rate)
                });
                self.vmcs
                    .write(VmcsField::PreemptionTimerValue, u64::from(value));
            }
            None if halted => {
                // No preemption timer: wait in the host for the next timer edge instead.
                if let Some(t) = next {
                    let deadline = self.timebase.tsc_at(t);
                    while self.platform.rdtsc() < deadline {
                        self.platform.pump_console();
                        core::hint::spin_loop();
                    }
                }
                return ExitAction::Resume;
            }
            None => {}
        }
        if let Err(fail) = self.platform.enter(self.regs, self.launched) {
            describe_entry_failure(fail, &*self.vmcs, out);
            return ExitAction::End {
                kind: EndKind::EntryFailure,
                exit_code: 0,
            };
        }
        self.launched = true;
        let exit_tsc = self.platform.rdtsc();
        let exit = VmExit::read(&*self.vmcs);
        self.handle_exit(&exit, exit_tsc)
    }

    /// Handles one VM exit that happened at TSC `exit_tsc`: counts it, gives an IO exit
    /// to the coalescer first and the rest (or what the coalescer leaves) to the
    /// one-instruction handlers, and turns a reset the guest asked for into the end of
    /// the run.
    pub fn handle_exit(&mut self, exit: &VmExit, exit_tsc: u64) -> ExitAction {
        self.stats.count_exit(exit.reason.0);
        let Some(io) = exit.io() else {
            return self.one_instruction(exit);
        };
        // Bring the devices to the time of the exit before the block touches them.
        let now = self.timebase.pit_ticks(exit_tsc);
        self.stats.count_ticks(self.machine.poll(now));
        let mut env = BoardIo {
            bus: &mut *self.bus,
            machine: self.machine,
            host: &mut *self.platform,
            timebase: self.timebase,
            ticks: Ticks::default(),
        };
        let outcome = self.coalescer.handle(
            &io,
            exit.instruction_length,
            &mut *self.vmcs,
            &mut *self.regs,
            &mut *self.mem,
            &mut env,
            self.stats,
        );
        let ticks = env.ticks;
        self.stats.count_ticks(ticks);
        let action = match outcome {
            Outcome::Done => ExitAction::Resume,
            Outcome::Fallback(_) => self.one_instruction(exit),
        };
        self.stats.io.cycles = self
            .stats
            .io
            .cycles
            .wrapping_add(self.platform.rdtsc().wrapping_sub(exit_tsc));
        // A reset the guest asked for (i8042, port 0x92): sluice does not restart
        // guests, it stops this one and says why.
        match (action, self.machine.reset_request()) {
            (ExitAction::Resume, Some(source)) => ExitAction::End {
                kind: EndKind::Reset(source),
                exit_code: 0,
            },
            (action, _) => action,
        }
    }

    fn one_instruction(&mut self, exit: &VmExit) -> ExitAction {
        let mut ctx = ExitContext {
            vmcs: &mut *self.vmcs,
            regs: &mut *self.regs,
            mem: &mut *self.mem,
            host: &mut *self.platform,
            bus: &mut *self.bus,
            stats: &mut *self.stats,
            msrs: &mut self.msrs,
            config: self.config,
            exit: *exit,
        };
        exits::handle_exit(&mut ctx)
    }
}
