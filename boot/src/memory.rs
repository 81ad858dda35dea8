//! Physical memory as the bootloader handed it over: the memory map (usable regions feed
//! the frame allocator) and the offset at which all physical memory is mapped
//! (`BootloaderConfig::mappings.physical_memory`), through which the kernel reaches
//! frames it allocates for VMX structures and guest RAM.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use hypervisor::frames::FrameAllocator;

pub struct Memory {
    pub frames: FrameAllocator,
    phys_offset: u64,
}

impl Memory {
    pub fn new(regions: &MemoryRegions, phys_offset: u64) -> Self {
        let usable = regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| (r.start, r.end));
        Memory {
            frames: FrameAllocator::new(usable),
            phys_offset,
        }
    }

    /// Kernel virtual address of physical address `phys`.
    pub fn phys_to_virt(&self, phys: u64) -> *mut u8 {
        (self.phys_offset + phys) as *mut u8
    }

    /// A zeroed 4-KiB frame (VMX regions must start zeroed apart from their header).
    pub fn alloc_zeroed_frame(&mut self) -> Option<u64> {
        let frame = self.frames.alloc_frame()?;
        // SAFETY: the frame was usable RAM, just handed out, mapped at phys_offset.
        unsafe { core::ptr::write_bytes(self.phys_to_virt(frame), 0, 4096) };
        Some(frame)
    }
}

/// Total bytes in usable regions, for the boot report.
pub fn usable_bytes(regions: &MemoryRegions) -> u64 {
    regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| r.end - r.start)
        .sum()
}

/// Usable entries in the memory map as the bootloader handed it over (before the frame
/// allocator merges neighbours), for the boot report.
pub fn usable_entries(regions: &MemoryRegions) -> usize {
    regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .count()
}
