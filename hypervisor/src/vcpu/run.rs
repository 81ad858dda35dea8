//! The run loop of the one virtual CPU: prepare every VM entry, enter the guest
//! through the [`Platform`], decode the exit once and handle it, until the guest ends.
//!
//! Before every entry: bring the devices to the current time and their interrupt lines
//! onto the PIC, inject a pending interrupt if the guest can take it (or ask for an
//! interrupt window, SDM Vol. 3C 27.7.5 "Interrupt-Window Exiting and Virtual-Interrupt
//! Delivery"), and arm the VMX-preemption timer (26.5.1 "VMX-Preemption Timer") for the
//! next timer edge, so timer interrupts arrive on time whether the guest runs or sits
//! in HLT. A halted guest that nothing could ever wake ends the run.
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
use crate::vcpu::exits::MsrFile;
use crate::vcpu::exits::{self, ExitAction, ExitContext, HostOps, VcpuConfig};
use crate::vcpu::irq;
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
    /// Guest time (PIT ticks) at the exit, from which the first [`IoEnv::timer_due`]
    /// works out when the next timer event is due; `None`: no deadline.
    pub exit_now: Option<u64>,
    /// That time, once worked out (only coalesced runs ask).
    pub deadline: Option<u64>,
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

    fn timer_due(&mut self) -> bool {
        if let Some(at_exit) = self.exit_now.take() {
            self.deadline = self.machine.next_unmasked_timer_event(at_exit);
        }
        match self.deadline {
            Some(d) => self.now() >= d,
            None => false,
        }
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
            exit_now: Some(now),
            deadline: None,
        };
        let outcome = self.coalescer.handle(
            &io,
            exit.instruction_length,
            &mut *self.vmcs,
            &mut *self.regs,
            &mut *self.mem,
            &mut env,
            &mut self.stats.io,
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

#[cfg(test)]
mod tests {
    //! Whole runs through the real loop: a scripted guest behind a fake platform. Each
    //! VM entry runs the next step of the script, which checks what the loop prepared
    //! (RIP, injected event, activity state, preemption timer) and reports the next
    //! exit the way a processor would, with the exiting instruction's bytes in guest RAM
    //! so the coalescer can read them.
    use super::*;
    use crate::coalesce::block::Extent;
    use crate::coalesce::cache::BlockCache;
    use crate::coalesce::engine::Settings;
    use crate::coalesce::exec::Limits;
    use crate::devices::board::ResetSource;
    use crate::vcpu::hypercall;
    use crate::vmx::exit::exit_reason as er;
    use crate::vmx::vmcs::SoftVmcs;
    use crate::x86::guest_mem::SliceMemory;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// The VMCS both the loop and the scripted processor write.
    #[derive(Clone, Default)]
    struct SharedVmcs(Rc<RefCell<SoftVmcs>>);

    impl Vmcs for SharedVmcs {
        fn read(&self, f: VmcsField) -> u64 {
            self.0.borrow().read(f)
        }
        fn write(&mut self, f: VmcsField, v: u64) {
            self.0.borrow_mut().write(f, v)
        }
    }

    /// One VM entry of the script: checks the state the loop entered with, then sets
    /// up the exit (VMCS fields and registers) and returns how many TSC cycles the
    /// guest ran.
    type Step = Box<dyn FnMut(&mut SharedVmcs, &mut GuestRegs) -> u64>;

    struct Scripted {
        vmcs: SharedVmcs,
        steps: std::collections::VecDeque<Step>,
        tsc: u64,
        console: Vec<u8>,
        entries: u32,
        /// Fail this entry (1-based) with VMfailValid.
        fail_entry: Option<u32>,
    }

    impl HostOps for Scripted {
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            [leaf, subleaf, 0, 0]
        }
        fn console(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
        fn xsetbv(&mut self, _: u32, _: u64) {}
        fn wbinvd(&mut self) {}
        fn rdtsc(&mut self) -> u64 {
            // Every look at the clock costs a little time, as on a processor.
            self.tsc += 10;
            self.tsc
        }
    }

    impl Platform for Scripted {
        fn enter(&mut self, regs: &mut GuestRegs, _launched: bool) -> Result<(), EntryFailure> {
            self.entries += 1;
            if self.fail_entry == Some(self.entries) {
                self.vmcs.write(VmcsField::VmInstructionError, 7);
                return Err(EntryFailure::Valid);
            }
            let mut step = self
                .steps
                .pop_front()
                .expect("the guest ran past its script");
            self.tsc += step(&mut self.vmcs, regs);
            Ok(())
        }
        fn pump_console(&mut self) {}
        fn console_input(&mut self) -> Option<u8> {
            None
        }
    }

    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl ConsoleSink for Sink {
        fn write_bytes(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    const CODE: u64 = 0x7C00;
    /// TSC at 1 GHz: 838 cycles per PIT tick.
    const TSC_HZ: u64 = 1_000_000_000;

    /// A real-mode guest (unrestricted guest) with `code` at 0:7C00.
    fn real_mode(code: &[u8]) -> (SharedVmcs, Vec<u8>) {
        let mut v = SharedVmcs::default();
        v.write(VmcsField::GuestCr0, 0x10);
        v.write(VmcsField::GuestCsAccessRights, 0x9B);
        v.write(VmcsField::GuestSsAccessRights, 0x93);
        v.write(VmcsField::GuestCsLimit, 0xFFFF);
        v.write(VmcsField::GuestRip, CODE);
        v.write(VmcsField::GuestRflags, 0x2);
        let mut ram = vec![0u8; 1 << 20];
        ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
        (v, ram)
    }

    fn exit(v: &mut SharedVmcs, reason: u16, qualification: u64, len: u64) {
        v.write(VmcsField::ExitReason, u64::from(reason));
        v.write(VmcsField::ExitQualification, qualification);
        v.write(VmcsField::ExitInstructionLength, len);
    }

    /// An `out dx, al` (or `in al, dx`) exit at `rip`.
    fn io_exit(v: &mut SharedVmcs, rip: u64, port: u16, is_in: bool) {
        v.write(VmcsField::GuestRip, rip);
        exit(
            v,
            er::IO_INSTRUCTION,
            (u64::from(port) << 16) | (u64::from(is_in) << 3),
            1,
        );
    }

    /// The exit hypercall with `status` at `rip` (VMCALL is 3 bytes).
    fn exit_hypercall(v: &mut SharedVmcs, regs: &mut GuestRegs, rip: u64, status: u64) {
        v.write(VmcsField::GuestRip, rip);
        regs.rax = hypercall::EXIT;
        regs.rbx = status;
        exit(v, er::VMCALL, 0, 3);
    }

    struct Outcome {
        end: RunEnd,
        stats: Stats,
        out: String,
        uart: Vec<u8>,
        platform: Scripted,
    }

    fn run(
        vmcs: SharedVmcs,
        mut ram: Vec<u8>,
        coalesce: bool,
        steps: Vec<Step>,
        fail_entry: Option<u32>,
    ) -> Outcome {
        let mut platform = Scripted {
            vmcs: vmcs.clone(),
            steps: steps.into(),
            tsc: 0,
            console: Vec::new(),
            entries: 0,
            fail_entry,
        };
        let machine = Machine::new(Sink::default());
        let mut handles = machine.handles();
        let mut bus = IoBus::new();
        Machine::register(&mut handles, &mut bus).unwrap();
        let mut mem = SliceMemory::new(&mut ram);
        let mut regs = GuestRegs::default();
        let mut stats = Stats::new();
        let mut cache = BlockCache::new();
        let mut vmcs = vmcs;
        let mut out = String::new();
        let end = {
            let mut vcpu = Vcpu {
                platform: &mut platform,
                vmcs: &mut vmcs,
                regs: &mut regs,
                mem: &mut mem,
                machine: &machine,
                bus: &mut bus,
                coalescer: Coalescer::new(
                    Settings {
                        enabled: coalesce,
                        extent: Extent::Page,
                        limits: Limits {
                            max_insns: 256,
                            max_string_elements: 4096,
                            max_quiet: 48,
                        },
                    },
                    &mut cache,
                ),
                stats: &mut stats,
                msrs: MsrFile::default(),
                config: VcpuConfig {
                    nested_vmx: false,
                    unrestricted_guest: true,
                    cr0_fixed0: 0,
                    cr0_fixed1: u64::MAX,
                    cr4_fixed0: 0,
                    cr4_fixed1: u64::MAX,
                    tsc_hz: TSC_HZ,
                },
                timebase: Timebase::new(0, TSC_HZ),
                preemption_timer: Some(0),
                launched: false,
            };
            vcpu.run("scripted", &mut out)
        };
        let uart = machine.uart.borrow().sink().0.clone();
        Outcome {
            end,
            stats,
            out,
            uart,
            platform,
        }
    }

    /// `mov dx, 0x3f8; mov al, 'h'; out dx, al; mov al, 'i'; out dx, al; vmcall`.
    const HI: [u8; 13] = [
        0xBA, 0xF8, 0x03, 0xB0, b'h', 0xEE, 0xB0, b'i', 0xEE, 0x0F, 0x01, 0xC1, 0x90,
    ];

    #[test]
    fn a_burst_takes_one_exit_and_the_exit_hypercall_ends_the_run() {
        let (vmcs, ram) = real_mode(&HI);
        let steps: Vec<Step> = vec![
            Box::new(|v, regs| {
                // The guest ran the two MOVs and exits on the first OUT.
                regs.rdx = 0x3F8;
                regs.rax = u64::from(b'h');
                io_exit(v, CODE + 5, 0x3F8, false);
                100
            }),
            Box::new(|v, regs| {
                // The coalescer ran both OUTs and the MOV between them, and stopped
                // before the VMCALL, which the CPU runs (and exits on).
                assert_eq!(v.read(VmcsField::GuestRip), CODE + 9);
                assert_eq!(regs.rax & 0xFF, u64::from(b'i'));
                exit_hypercall(v, regs, CODE + 9, 7);
                100
            }),
        ];
        let o = run(vmcs, ram, true, steps, None);
        assert_eq!(
            o.end,
            RunEnd {
                kind: EndKind::Hypercall,
                exit_code: 7
            }
        );
        assert_eq!(o.uart, b"hi");
        assert_eq!(
            o.stats.exit_count(er::IO_INSTRUCTION),
            1,
            "one exit counted once"
        );
        assert_eq!(o.stats.exit_count(er::VMCALL), 1);
        assert_eq!(o.stats.io.instructions, 2);
        assert!(o.stats.io.cycles > 0, "IO exit time is accounted");
        assert!(
            o.out
                .contains("sluice: guest ended by hypercall at rip=0x7c0c\n"),
            "{}",
            o.out
        );
        assert!(o.out.contains(
            "sluice-stats: {\"guest\":\"scripted\",\"end\":\"hypercall\",\"exit_code\":7"
        ));
        assert!(o
            .out
            .contains("sluice: summary: 2 IO instructions took 1 VM exits (coalescing on)"));
    }

    #[test]
    fn without_coalescing_every_io_instruction_is_an_exit() {
        let (vmcs, ram) = real_mode(&HI);
        let steps: Vec<Step> = vec![
            Box::new(|v, regs| {
                regs.rdx = 0x3F8;
                regs.rax = u64::from(b'h');
                io_exit(v, CODE + 5, 0x3F8, false);
                100
            }),
            Box::new(|v, regs| {
                assert_eq!(
                    v.read(VmcsField::GuestRip),
                    CODE + 6,
                    "only the OUT retired"
                );
                regs.rax = u64::from(b'i');
                io_exit(v, CODE + 8, 0x3F8, false);
                100
            }),
            Box::new(|v, regs| {
                exit_hypercall(v, regs, CODE + 9, 0);
                100
            }),
        ];
        let o = run(vmcs, ram, false, steps, None);
        assert_eq!(o.end.kind, EndKind::Hypercall);
        assert_eq!(o.uart, b"hi");
        assert_eq!(o.stats.exit_count(er::IO_INSTRUCTION), 2);
        assert_eq!(o.stats.io.instructions, 2);
        assert!(o.out.contains("(coalescing off), one per IO instruction"));
    }

    /// Writes `value` to `port` through an OUT exit at the script's next RIP.
    fn out_step(port: u16, value: u8) -> Step {
        Box::new(move |v, regs| {
            regs.rdx = u64::from(port);
            regs.rax = u64::from(value);
            io_exit(v, CODE, port, false);
            10
        })
    }

    #[test]
    fn a_halted_guest_sleeps_until_the_preemption_timer_and_gets_the_timer_interrupt() {
        // The code at RIP is `out dx, al` for every OUT exit below; coalescing is off,
        // so each is one exit.
        let (vmcs, ram) = real_mode(&[0xEE, 0xF4, 0x90]);
        let mut steps: Vec<Step> = Vec::new();
        // PIC pair: vectors 0x20/0x28, only IRQ0 unmasked; PIT channel 0 mode 2, 1000
        // PIT clocks per tick.
        for (port, value) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x28),
            (0xA1, 0x02),
            (0xA1, 0x01),
            (0x21, 0xFE),
            (0xA1, 0xFF),
            (0x43, 0x34),
            (0x40, 0xE8),
            (0x40, 0x03),
        ] {
            steps.push(out_step(port, value));
        }
        // STI; HLT: the guest halts with interrupts on.
        steps.push(Box::new(|v, _| {
            v.write(VmcsField::GuestRip, CODE + 1);
            v.write(VmcsField::GuestRflags, 0x202);
            exit(v, er::HLT, 0, 1);
            10
        }));
        // The loop put the guest in the HLT state and armed the preemption timer for
        // the next PIT edge; the timer expires.
        steps.push(Box::new(|v, _| {
            assert_eq!(v.read(VmcsField::GuestActivityState), activity::HLT);
            assert_eq!(v.read(VmcsField::GuestRip), CODE + 2, "RIP past the HLT");
            let timer = v.read(VmcsField::PreemptionTimerValue);
            // About 1000 PIT clocks (838 TSC cycles each) from the load of the count.
            let tick = TSC_HZ / crate::timebase::PIT_HZ;
            assert!(timer > 990 * tick && timer <= 1002 * tick, "{timer}");
            assert_eq!(v.read(VmcsField::EntryInterruptionInfo) >> 31, 0);
            exit(v, er::PREEMPTION_TIMER, 0, 0);
            timer
        }));
        // The tick arrived: IRQ0 is injected as vector 0x20, which wakes the guest.
        steps.push(Box::new(|v, regs| {
            assert_eq!(v.read(VmcsField::EntryInterruptionInfo), 0x8000_0020);
            assert_eq!(v.read(VmcsField::GuestActivityState), activity::ACTIVE);
            v.write(VmcsField::EntryInterruptionInfo, 0);
            exit_hypercall(v, regs, CODE + 2, 0);
            10
        }));
        let o = run(vmcs, ram, false, steps, None);
        assert_eq!(o.end.kind, EndKind::Hypercall, "{}", o.out);
        assert_eq!(o.stats.exit_count(er::IO_INSTRUCTION), 13);
        assert_eq!(o.stats.exit_count(er::HLT), 1);
        assert_eq!(o.stats.exit_count(er::PREEMPTION_TIMER), 1);
        assert_eq!(o.stats.irq_injected[0], 1);
        assert!(o.stats.timer_ticks >= 1);
        assert!(o.out.contains("\"irq0\":1"), "{}", o.out);
    }

    #[test]
    fn a_guest_halted_with_nothing_to_wake_it_ends_the_run() {
        let (vmcs, ram) = real_mode(&[0xF4]);
        let steps: Vec<Step> = vec![Box::new(|v, _| {
            v.write(VmcsField::GuestRflags, 0x202);
            exit(v, er::HLT, 0, 1);
            10
        })];
        // No timer programmed, no interrupt pending: HLT with IF = 1 is forever.
        let o = run(vmcs, ram, true, steps, None);
        assert_eq!(o.end.kind, EndKind::Halt);
        assert_eq!(o.platform.entries, 1);
        assert!(
            o.out.contains("HLT at rip=0x7c01 with interrupts enabled"),
            "{}",
            o.out
        );
    }

    #[test]
    fn a_reset_request_ends_the_run_at_the_exit_that_made_it() {
        // `mov al, 0xfe; out 0x64, al`: the i8042's pulse-reset command.
        let (vmcs, ram) = real_mode(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4]);
        for coalesce in [false, true] {
            let steps: Vec<Step> = vec![Box::new(|v, regs| {
                regs.rax = 0xFE;
                v.write(VmcsField::GuestRip, CODE + 2);
                exit(v, er::IO_INSTRUCTION, (0x64 << 16) | (1 << 6), 2);
                10
            })];
            let o = run(vmcs.clone(), ram.clone(), coalesce, steps, None);
            assert_eq!(
                o.end.kind,
                EndKind::Reset(ResetSource::I8042),
                "coalesce {coalesce}"
            );
            assert_eq!(o.platform.entries, 1);
            assert!(o.out.contains("requested a reset via the i8042"));
        }
    }

    #[test]
    fn a_failed_entry_ends_the_run_with_the_vm_instruction_error() {
        let (vmcs, ram) = real_mode(&[0xF4]);
        let o = run(vmcs, ram, true, Vec::new(), Some(1));
        assert_eq!(o.end.kind, EndKind::EntryFailure);
        assert!(
            o.out
                .contains("sluice: VM entry failed: VM-instruction error 7: "),
            "{}",
            o.out
        );
        assert!(o.out.contains("\"end\":\"entry-failure\""));
    }

    #[test]
    fn console_output_reaches_the_host_through_the_print_hypercall() {
        let (vmcs, mut ram) = real_mode(&[0x0F, 0x01, 0xC1, 0x0F, 0x01, 0xC1]);
        ram[0x9000..0x9003].copy_from_slice(b"ok\n");
        let steps: Vec<Step> = vec![
            Box::new(|v, regs| {
                regs.rax = hypercall::PRINT;
                regs.rbx = 0x9000;
                regs.rcx = 3;
                v.write(VmcsField::GuestRip, CODE);
                exit(v, er::VMCALL, 0, 3);
                10
            }),
            Box::new(|v, regs| {
                assert_eq!(regs.rax, 0, "the print succeeded");
                exit_hypercall(v, regs, CODE + 3, 0);
                10
            }),
        ];
        let o = run(vmcs, ram, true, steps, None);
        assert_eq!(o.platform.console, b"ok\n");
        assert_eq!(o.end.kind, EndKind::Hypercall);
    }
}
