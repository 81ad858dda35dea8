//! Differential tests of the coalescer (docs/COALESCING.md, "The contract").
//!
//! The *coalesced* side runs [`Coalescer::handle`] on an IO exit exactly as the kernel
//! does: a [`SoftVmcs`] holding the guest state and the exit fields of the first
//! instruction, [`GuestRegs`], guest RAM in a [`SliceMemory`] (identity-mapped 4 KiB
//! pages in 64-bit mode, flat or real-mode segments otherwise) and an [`IoEnv`] over
//! an [`IoBus`] with a fixed device set.
//!
//! The *reference* executes the same code one IO instruction per "exit", written
//! without `exec`, `decode` or `block`:
//! - instructions are decoded by a second decoder (iced-x86);
//! - MOV, NOP and branches are executed here; ALU results and status flags come from
//!   the host CPU (inline asm between `popfq` and `pushfq`). Only architecturally
//!   defined flags are taken from the host (our own table, cross-checked against
//!   `exec::defined_flags`); the undefined ones take the value the coalescer documents
//!   ([`exec::alu`]), so both sides follow the same branches and RFLAGS can then be
//!   compared exactly;
//! - every IO instruction goes through [`exits::handle_exit`] with a VMCS carrying the
//!   exit reason, qualification, instruction length and instruction-information
//!   fields of that instruction: the single-exit path, which also checks that VMCS
//!   plumbing. A REP string instruction is done one element per exit (with the count
//!   register temporarily 1, then set to its real value) so the run can be compared
//!   between any two iterations;
//! - after every port access the device interrupt lines are brought onto the PIC
//!   (`Machine::poll`), as the kernel's run loop does after every exit.
//!
//! The reference runs from the same initial state until it has executed as many
//! instructions and string elements as the coalescer reports; RIP must then be the
//! coalescer's final RIP, and general registers, RSP, RFLAGS, guest RAM, the port
//! trace, device state and the bus's unknown-port counters must be identical. It
//! fails if it reaches a point the contract makes a mandatory stop (an interrupt
//! deliverable, CPL > IOPL for a later IO instruction, RFLAGS.TF, the instruction or
//! string-element limit, a faulting string element, an instruction outside its own
//! subset) before getting there.
//!
//! One file per part of the checker:
//! - [`board`]: the device set of a run (the virtual PC and a tracing device), the
//!   port trace and the device snapshot compared at the end, the host and IO
//!   environment the coalescer gets;
//! - [`case`]: one test case (the guest at an IO exit and the coalescer's settings)
//!   and how it becomes a VMCS, registers and RAM (segments, page tables, code);
//! - [`ref_decode`], [`ref_alu`], [`reference`]: the reference — its reading of
//!   iced-x86's decoding, its ALU on the host CPU, and the stepper that executes one
//!   IO instruction per exit;
//! - [`compare`]: running a case on both sides, diffing the final states, the
//!   replay from the warm block cache;
//! - [`generate`]: random programs and random cases around them; [`rng`] the random
//!   numbers;
//! - the tests: [`fixtures`] (cases shared by the hand-written tests),
//!   [`tests_random`] (generated programs in every mode), [`tests_stops`] (single-step,
//!   privilege, limits and extents), [`tests_interrupts`] (device lines, the PIC and
//!   deliverable interrupts), [`tests_memory`] (memory and stack forms, faults, A/D
//!   flags, stores into the code), [`tests_cache`] (the block cache and the site
//!   memory); the reference's own ALU is checked in [`ref_alu`].
//!
//! The parts depend on each other in one direction: `rng` and `board` at the
//! bottom; `case` on `rng`; `ref_decode` on `case`; `ref_alu` on `case` and
//! `ref_decode`; `reference` on `board`, `case`, `ref_decode` and `ref_alu`;
//! `compare` on `board`, `case`, `ref_decode` and `reference`; `generate` on `rng`,
//! `board` and `case`; the tests on any of them. `coalesce::fuzz` reuses the case,
//! the board, the reference's decoding, the generator and the exit fields of a case.

pub(super) mod board;
pub(super) mod case;
pub(super) mod compare;
mod fixtures;
pub(super) mod generate;
mod ref_alu;
pub(super) mod ref_decode;
mod reference;
pub(super) mod rng;
mod tests_cache;
mod tests_interrupts;
mod tests_memory;
mod tests_random;
mod tests_stops;
