//! The virtual PC's devices: the port bus, the board that wires the chips together,
//! and one module per chip, each modelled register by register from its datasheet.

pub mod board;
pub mod bus;
pub mod i8042;
pub mod pic8259;
pub mod pit8254;
pub mod rtc;
pub mod uart16550;
