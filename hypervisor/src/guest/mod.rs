//! Loading a guest: the image formats (ELF64, the Linux boot protocol), where each
//! entry mode puts the image, and the long-mode set-up sluice builds for 64-bit guests.

pub mod elf64;
pub mod linux_boot;
pub mod loader;
pub mod long_mode;
