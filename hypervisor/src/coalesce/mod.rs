//! IO coalescing: on an IO-instruction exit, decode the run of IO instructions (and
//! the simple instructions between them) that follows, emulate it in this one exit,
//! and move RIP past it — leaving the guest exactly as one exit per IO instruction
//! would have (see docs/COALESCING.md for the contract).

pub mod block;
pub mod cache;
#[cfg(feature = "decoder")]
pub mod decode;
#[cfg(test)]
mod difftest;
#[cfg(feature = "decoder")]
pub mod engine;
pub mod exec;
#[cfg(test)]
mod fuzz;
#[cfg(all(test, target_arch = "x86_64"))]
mod host_alu;
pub mod insn;
pub mod memory;
pub mod segment;
pub mod stats;
