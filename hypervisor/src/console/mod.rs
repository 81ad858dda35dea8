//! What sluice shows on a screen: the framebuffer console.

pub mod fbcon;
