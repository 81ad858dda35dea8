//! The virtual PC's devices: the port bus, the board that wires the chips together,
//! and one module per chip, each modelled register by register from its datasheet.

pub mod board;
pub mod bus;
pub mod i8042;
pub mod pic8259;
pub mod pit8254;
pub mod rtc;
pub mod uart16550;

/// What delivers external interrupts to the CPU: the 8259A pair on a PC.
pub trait InterruptController {
    /// The vector the controller would hand out on INTA now, if its INT output is up.
    fn pending_vector(&self) -> Option<u8>;
    /// The INTA cycle: marks the interrupt in service and returns its vector.
    fn acknowledge(&mut self) -> u8;
}
