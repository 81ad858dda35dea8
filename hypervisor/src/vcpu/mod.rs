//! The virtual CPU: the run loop (`run`) over a platform trait, the exit decoded once
//! (`exit`), the dispatcher and its context (`exits`), and one module per exit family:
//! `cpuid` (CPUID, XSETBV), `msr`, `cr` (control registers), `io` (IN/OUT/INS/OUTS),
//! `hypercall` (the VMCALL ABI), `irq` (interrupt injection, HLT), `exception`
//! (intercepted exceptions, NMIs), and `report` (how a run ended, in words).

pub mod cpuid;
pub mod cr;
pub mod exception;
pub mod exit;
pub mod exits;
pub mod hypercall;
pub mod io;
pub mod irq;
pub mod msr;
pub mod report;
// The loop runs the coalescer, whose decoder is the `decoder` feature.
#[cfg(feature = "decoder")]
pub mod run;
#[cfg(test)]
mod testing;
