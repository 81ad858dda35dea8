//! sluice's hypercall ABI: how test and benchmark guests talk to the hypervisor.
//!
//! A guest executes VMCALL (SDM Vol. 3C 26.1.3: VMCALL in VMX non-root operation always
//! causes a VM exit) at CPL 0 with the function number in RAX:
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
