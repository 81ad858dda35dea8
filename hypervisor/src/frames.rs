//! Physical frame allocation over the firmware's memory map.
//!
//! VMX structures (VMXON region, VMCS, EPT tables, bitmaps) and guest RAM all live for
//! the whole run, so a bump allocator over the usable regions is enough: nothing is ever
//! freed. Guest RAM needs one physically contiguous, 2 MiB-aligned block so EPT can map
//! it with large pages (SDM Vol. 3C 29.3.2 "EPT Translation Mechanism"), hence
//! `alloc_contiguous`.

/// 4-KiB page frame size (SDM Vol. 3A 4.1 "Paging Modes and Control Bits").
pub const FRAME_SIZE: u64 = 4096;

/// Memory below 1 MiB holds real-mode firmware data (IVT, BDA, EBDA, option ROMs) that
/// the map may call usable; it is never handed out.
const LOW_MEMORY_END: u64 = 0x10_0000;

/// Distinct ranges kept after merging. Firmware memory maps list a few dozen usable
/// ranges (a UEFI map more, but most of them adjacent, see [`FrameAllocator::new`]).
const MAX_REGIONS: usize = 128;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Region {
    next: u64,
    end: u64,
}

/// Bump allocator over up to `MAX_REGIONS` usable physical ranges, sorted by address.
#[derive(Debug)]
pub struct FrameAllocator {
    regions: [Region; MAX_REGIONS],
    count: usize,
    allocated: u64,
    dropped: u64,
}

impl FrameAllocator {
    /// Builds the allocator from `(start, end)` ranges the firmware reports as usable,
    /// in any order. Ranges are trimmed to whole frames and to memory above 1 MiB, and
    /// ranges that touch or overlap are merged: a UEFI memory map describes free memory
    /// as separate descriptors per memory type (conventional, boot-services and loader
    /// code and data, UEFI 2.10 section 7.2 `EFI_BOOT_SERVICES.GetMemoryMap()`), all of
    /// it usable once the bootloader has exited boot services, and side by side they may
    /// be the only block large enough for guest RAM. Ranges that do not fit into
    /// `MAX_REGIONS` are counted in [`dropped_bytes`](Self::dropped_bytes).
    pub fn new(usable: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut alloc = FrameAllocator {
            regions: [Region::default(); MAX_REGIONS],
            count: 0,
            allocated: 0,
            dropped: 0,
        };
        for (start, end) in usable {
            let start = align_up(start.max(LOW_MEMORY_END), FRAME_SIZE);
            let end = end & !(FRAME_SIZE - 1);
            if let Some(start) = start {
                if start < end {
                    alloc.insert(start, end);
                }
            }
        }
        alloc
    }

    /// Adds `[start, end)`, keeping the regions sorted and merging it with every region
    /// it touches or overlaps. Only called before anything is allocated.
    fn insert(&mut self, start: u64, end: u64) {
        // The first region that ends at or after `start` is the first that can merge.
        let i = self.regions[..self.count].partition_point(|r| r.end < start);
        if i < self.count && self.regions[i].next <= end {
            let mut merged = Region {
                next: self.regions[i].next.min(start),
                end: self.regions[i].end.max(end),
            };
            let mut j = i + 1;
            while j < self.count && self.regions[j].next <= merged.end {
                merged.end = merged.end.max(self.regions[j].end);
                j += 1;
            }
            self.regions[i] = merged;
            self.regions.copy_within(j..self.count, i + 1);
            self.count -= j - (i + 1);
        } else if self.count == MAX_REGIONS {
            self.dropped += end - start;
        } else {
            self.regions.copy_within(i..self.count, i + 1);
            self.regions[i] = Region { next: start, end };
            self.count += 1;
        }
    }

    /// Distinct usable ranges after merging.
    pub fn ranges(&self) -> usize {
        self.count
    }

    /// The largest range still free, in bytes (the largest guest RAM block possible,
    /// before alignment).
    pub fn largest_free(&self) -> u64 {
        self.regions[..self.count]
            .iter()
            .map(|r| r.end - r.next)
            .max()
            .unwrap_or(0)
    }

    /// Usable bytes the allocator had no room to keep track of.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// One 4-KiB frame, or `None` when memory is exhausted.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        self.alloc_contiguous(FRAME_SIZE, FRAME_SIZE)
    }

    /// `size` bytes (rounded up to frames) starting at a multiple of `align` (a power of
    /// two, at least `FRAME_SIZE`).
    pub fn alloc_contiguous(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() || align < FRAME_SIZE {
            return None;
        }
        let size = align_up(size, FRAME_SIZE)?;
        for region in &mut self.regions[..self.count] {
            let Some(start) = align_up(region.next, align) else {
                continue;
            };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end <= region.end {
                region.next = end;
                self.allocated += size;
                return Some(start);
            }
        }
        None
    }

    /// Bytes still available (ignoring alignment losses).
    pub fn free_bytes(&self) -> u64 {
        self.regions[..self.count]
            .iter()
            .map(|r| r.end - r.next)
            .sum()
    }

    /// Bytes handed out so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_from_usable_regions_above_1mib() {
        let mut a = FrameAllocator::new([(0x1000, 0x9f000), (0x10_0000, 0x10_3000)]);
        assert_eq!(a.alloc_frame(), Some(0x10_0000));
        assert_eq!(a.alloc_frame(), Some(0x10_1000));
        assert_eq!(a.alloc_frame(), Some(0x10_2000));
        assert_eq!(a.alloc_frame(), None);
    }

    #[test]
    fn unaligned_region_edges_are_trimmed_to_whole_frames() {
        let mut a = FrameAllocator::new([(0x20_0010, 0x20_2ff0)]);
        assert_eq!(a.free_bytes(), 0x1000);
        assert_eq!(a.alloc_frame(), Some(0x20_1000));
        assert_eq!(a.alloc_frame(), None);
    }

    #[test]
    fn contiguous_allocation_honours_alignment_and_skips_small_regions() {
        let mut a = FrameAllocator::new([(0x10_0000, 0x30_0000), (0x100_0000, 0x500_0000)]);
        let two_mib = 0x20_0000;
        // 4 MiB does not fit in the first 2 MiB region; the second one serves it.
        assert_eq!(a.alloc_contiguous(0x40_0000, two_mib), Some(0x100_0000));
        assert_eq!(a.alloc_contiguous(0x1000, two_mib), Some(0x20_0000));
        assert_eq!(a.alloc_contiguous(0x1000, 0x1000), Some(0x20_1000));
        assert_eq!(a.allocated_bytes(), 0x40_2000);
    }

    #[test]
    fn bad_requests_and_exhaustion_return_none() {
        let mut a = FrameAllocator::new([(0x10_0000, 0x20_0000)]);
        assert_eq!(a.alloc_contiguous(0, 0x1000), None);
        assert_eq!(a.alloc_contiguous(0x1000, 0x1800), None);
        assert_eq!(a.alloc_contiguous(u64::MAX - 0x10, 0x1000), None);
        assert_eq!(a.alloc_contiguous(0x20_0000, 0x1000), None);
        assert_eq!(a.alloc_contiguous(0x10_0000, 0x1000), Some(0x10_0000));
        assert_eq!(a.alloc_frame(), None);
    }

    #[test]
    fn adjacent_and_overlapping_ranges_merge_in_any_order() {
        // A UEFI map: conventional memory, then boot-services data right after it, then
        // loader data; listed out of order, one of them twice.
        let mut a = FrameAllocator::new([
            (0x300_0000, 0x500_0000),
            (0x10_0000, 0x100_0000),
            (0x100_0000, 0x300_0000),
            (0x200_0000, 0x280_0000),
            (0x800_0000, 0x900_0000),
        ]);
        assert_eq!(a.ranges(), 2);
        assert_eq!(a.largest_free(), 0x500_0000 - 0x10_0000);
        assert_eq!(a.dropped_bytes(), 0);
        // 64 MiB, 2 MiB aligned, spans what were three descriptors.
        assert_eq!(a.alloc_contiguous(0x400_0000, 0x20_0000), Some(0x20_0000));
        assert_eq!(a.alloc_contiguous(0x100_0000, 0x20_0000), Some(0x800_0000));
        assert_eq!(a.alloc_contiguous(0x100_0000, 0x20_0000), None);
    }

    #[test]
    fn a_range_bridging_two_regions_merges_all_three() {
        let a = FrameAllocator::new([
            (0x100_0000, 0x200_0000),
            (0x300_0000, 0x400_0000),
            (0x180_0000, 0x380_0000),
        ]);
        assert_eq!(a.ranges(), 1);
        assert_eq!(a.free_bytes(), 0x300_0000);
    }

    #[test]
    fn ranges_beyond_the_table_are_counted_as_dropped() {
        // Every other 4 KiB frame: nothing merges.
        let ranges = (0..(MAX_REGIONS as u64 + 3))
            .map(|i| (0x100_0000 + i * 0x2000, 0x100_0000 + i * 0x2000 + 0x1000));
        let a = FrameAllocator::new(ranges);
        assert_eq!(a.ranges(), MAX_REGIONS);
        assert_eq!(a.dropped_bytes(), 3 * 0x1000);
        assert_eq!(a.free_bytes(), MAX_REGIONS as u64 * 0x1000);
    }

    #[test]
    fn empty_or_inverted_regions_are_ignored() {
        let mut a = FrameAllocator::new([(0x30_0000, 0x20_0000), (0x1000, 0x2000)]);
        assert_eq!(a.free_bytes(), 0);
        assert_eq!(a.alloc_frame(), None);
    }
}
