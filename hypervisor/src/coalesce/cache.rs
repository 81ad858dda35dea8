//! The block cache: decoded blocks remembered by the guest-physical address of the
//! exiting instruction, so the next exit at the same site replays the block without
//! decoding (docs/COALESCING.md, "The algorithm", step 3).
//!
//! Organisation: 2-way set-associative, [`CACHE_SETS`] sets of [`CACHE_WAYS`] entries,
//! set chosen by a multiplicative hash of the GPA, least-recently-used way replaced.
//! Two ways keep two hot exit sites that collide in one set (a driver's write loop and
//! its status poll) from evicting each other on every exit, at the cost of one more
//! key compare. Fixed size, no heap: it lives in the run loop's frame or a static.
//!
//! A hit is always verified: the block's `code_len` bytes are fetched again at the
//! exiting RIP and their FNV-1a hash compared with the stored one. A mismatch
//! (self-modifying code, a new program at the same address, a changed mapping of a
//! later page) or code that no longer translates is a miss, and the stale entry is
//! dropped. A verified block is exactly the instructions at RIP today. Only what lies
//! *after* the block may have changed (the scan's stop reason, a page size); that can
//! only make the replayed block shorter than a fresh scan would be, never wrong.

use super::block::{hash_code, Block, CodeFetch, Extent};
use super::insn::CodeMode;

pub const CACHE_ENTRIES: usize = 64;
pub const CACHE_WAYS: usize = 2;
pub const CACHE_SETS: usize = CACHE_ENTRIES / CACHE_WAYS;

/// Counters since the cache was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that returned a verified block.
    pub hits: u64,
    /// Lookups that returned nothing (includes `stale`).
    pub misses: u64,
    /// Inserts that replaced a valid entry of another key.
    pub evictions: u64,
    /// Lookups that found the key but whose code bytes changed or no longer translate
    /// (or no longer fit before an IP wrap / the CS limit); the entry was dropped.
    pub stale: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    gpa: u64,
    mode: CodeMode,
    extent: Extent,
    block: Block,
}

impl Entry {
    fn is(&self, gpa: u64, mode: CodeMode, extent: &Extent) -> bool {
        self.gpa == gpa && self.mode == mode && self.extent == *extent
    }
}

/// What [`BlockCache::block`] gives for a slot that holds nothing, which the slots
/// `lookup_slot` and `insert_slot` return never do: a block that runs nothing.
static NO_BLOCK: Block = Block::empty(crate::coalesce::insn::StopReason::CodeUnmapped);

pub struct BlockCache {
    entries: [Option<Entry>; CACHE_ENTRIES],
    /// Bit s: the least recently used way of set s.
    lru: u32,
    stats: CacheStats,
}

const _: () = assert!(CACHE_SETS <= 32 && CACHE_SETS.is_power_of_two() && CACHE_WAYS == 2);

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockCache {
    pub const fn new() -> Self {
        BlockCache {
            entries: [None; CACHE_ENTRIES],
            lru: 0,
            stats: CacheStats {
                hits: 0,
                misses: 0,
                evictions: 0,
                stale: 0,
            },
        }
    }

    /// The set for `gpa` (Fibonacci hashing: the top bits of gpa * 2^64/phi).
    fn set_of(gpa: u64) -> usize {
        let h = gpa.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - CACHE_SETS.trailing_zeros())) as usize
    }

    fn touch(&mut self, set: usize, way: usize) {
        // The other way becomes the LRU one.
        if way == 0 {
            self.lru |= 1 << set;
        } else {
            self.lru &= !(1 << set);
        }
    }

    /// The verified block for the exit at `gpa` (guest-physical address of the exiting
    /// instruction, at linear `rip_linear`) in `mode` scanned with `extent`.
    pub fn lookup(
        &mut self,
        gpa: u64,
        mode: CodeMode,
        extent: &Extent,
        fetch: &mut impl CodeFetch,
        rip_linear: u64,
    ) -> Option<&Block> {
        let slot = self.lookup_slot(gpa, mode, extent, fetch, rip_linear)?;
        Some(self.block(slot))
    }

    /// [`BlockCache::lookup`], giving the entry's slot for [`BlockCache::block`]: a
    /// caller that inserts on a miss cannot hold the borrow `lookup` returns.
    pub fn lookup_slot(
        &mut self,
        gpa: u64,
        mode: CodeMode,
        extent: &Extent,
        fetch: &mut impl CodeFetch,
        rip_linear: u64,
    ) -> Option<usize> {
        let set = Self::set_of(gpa);
        let found = (0..CACHE_WAYS).find(
            |&w| matches!(&self.entries[set * CACHE_WAYS + w], Some(e) if e.is(gpa, mode, extent)),
        );
        let Some(way) = found else {
            self.stats.misses += 1;
            return None;
        };
        let i = set * CACHE_WAYS + way;
        let e = self.entries[i].as_ref()?;
        let (code_len, hash) = (e.block.code_len(), e.block.hash());
        let fits = u64::from(code_len) <= fetch.code_room(rip_linear, mode);
        if !fits || hash_code(fetch, rip_linear, code_len) != Some(hash) {
            self.entries[i] = None;
            self.stats.stale += 1;
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        self.touch(set, way);
        Some(i)
    }

    /// The block in `slot` (from [`BlockCache::lookup_slot`] or
    /// [`BlockCache::insert_slot`]).
    pub fn block(&self, slot: usize) -> &Block {
        match self.entries.get(slot) {
            Some(Some(e)) => &e.block,
            _ => &NO_BLOCK,
        }
    }

    /// Stores `block` for the key, replacing an entry of the same key, else filling an
    /// empty way, else evicting the set's least recently used entry.
    pub fn insert(&mut self, gpa: u64, mode: CodeMode, extent: &Extent, block: Block) -> &Block {
        let slot = self.insert_slot(gpa, mode, extent, block);
        self.block(slot)
    }

    /// [`BlockCache::insert`], giving the entry's slot for [`BlockCache::block`].
    pub fn insert_slot(
        &mut self,
        gpa: u64,
        mode: CodeMode,
        extent: &Extent,
        block: Block,
    ) -> usize {
        let set = Self::set_of(gpa);
        let ways = &self.entries[set * CACHE_WAYS..(set + 1) * CACHE_WAYS];
        let way = ways
            .iter()
            .position(|e| matches!(e, Some(e) if e.is(gpa, mode, extent)))
            .or_else(|| ways.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                self.stats.evictions += 1;
                (self.lru >> set) as usize & 1
            });
        self.touch(set, way);
        let slot = set * CACHE_WAYS + way;
        self.entries[slot] = Some(Entry {
            gpa,
            mode,
            extent: *extent,
            block,
        });
        slot
    }

    /// Drops every entry (guest reset, a new guest); the counters stay.
    pub fn clear(&mut self) {
        self.entries = [None; CACHE_ENTRIES];
        self.lru = 0;
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coalesce::block::scan;
    use crate::coalesce::block::tests::FakeCode;

    const OUT: u8 = 0xEE;

    /// out dx, al; mov al, 0x11; out dx, al; hlt at linear 0x1000.
    fn code() -> FakeCode {
        FakeCode::new(0x1000, &[OUT, 0xB0, 0x11, OUT, 0xF4])
    }

    fn scanned(f: &mut FakeCode) -> Block {
        scan(f, 0x1000, CodeMode::Bits16, &Extent::Page)
    }

    #[test]
    fn hit_after_insert() {
        let mut c = BlockCache::new();
        let mut f = code();
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        let b = scanned(&mut f);
        assert_eq!(
            c.insert(0x5000, CodeMode::Bits16, &Extent::Page, b).len(),
            3
        );
        let hit = c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .copied();
        assert_eq!(hit, Some(b));
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                evictions: 0,
                stale: 0
            }
        );
    }

    #[test]
    fn changed_byte_misses_and_drops_the_entry() {
        let mut c = BlockCache::new();
        let mut f = code();
        c.insert(0x5000, CodeMode::Bits16, &Extent::Page, scanned(&mut f));
        f.bytes[2] = 0x22; // mov al, 0x22
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert_eq!(c.stats().stale, 1);
        // Restoring the byte does not bring the dropped entry back.
        f.bytes[2] = 0x11;
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 0,
                misses: 2,
                evictions: 0,
                stale: 1
            }
        );
        // Re-scan and re-insert: verified again.
        f.bytes[2] = 0x22;
        let b = scanned(&mut f);
        c.insert(0x5000, CodeMode::Bits16, &Extent::Page, b);
        assert_eq!(
            c.lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000),
            Some(&b)
        );
        // A byte after the block (hlt -> nop) does not matter.
        f.bytes[4] = 0x90;
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_some());
        // Code that no longer translates is stale.
        f.hole = 0x1002..0x1003;
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert_eq!(c.stats().stale, 2);
    }

    #[test]
    fn block_past_ip_wrap_is_stale() {
        let mut c = BlockCache::new();
        let mut f = code();
        c.insert(0x5000, CodeMode::Bits16, &Extent::Page, scanned(&mut f));
        // Same linear address, but now IP is 0xFFFE: only 2 bytes before the wrap.
        f.room = 2;
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert_eq!(c.stats().stale, 1);
    }

    #[test]
    fn different_mode_or_extent_misses() {
        let mut c = BlockCache::new();
        let mut f = code();
        c.insert(0x5000, CodeMode::Bits16, &Extent::Page, scanned(&mut f));
        assert!(c
            .lookup(0x5000, CodeMode::Bits32, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Line(64), &mut f, 0x1000)
            .is_none());
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Bytes(16), &mut f, 0x1000)
            .is_none());
        assert!(c
            .lookup(0x5001, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_none());
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 0,
                misses: 4,
                evictions: 0,
                stale: 0
            }
        );
        // Both modes side by side in one set.
        c.insert(
            0x5000,
            CodeMode::Bits32,
            &Extent::Page,
            scan(&mut f, 0x1000, CodeMode::Bits32, &Extent::Page),
        );
        assert!(c
            .lookup(0x5000, CodeMode::Bits16, &Extent::Page, &mut f, 0x1000)
            .is_some());
        assert!(c
            .lookup(0x5000, CodeMode::Bits32, &Extent::Page, &mut f, 0x1000)
            .is_some());
        // Re-inserting a key replaces it without an eviction.
        c.insert(
            0x5000,
            CodeMode::Bits32,
            &Extent::Page,
            scan(&mut f, 0x1000, CodeMode::Bits32, &Extent::Page),
        );
        assert_eq!(c.stats().evictions, 0);
    }

    /// Distinct GPAs that land in the same set.
    fn same_set(n: usize) -> Vec<u64> {
        let target = BlockCache::set_of(0x1000);
        (0..)
            .map(|i| 0x1000 + i * 0x10)
            .filter(|&g| BlockCache::set_of(g) == target)
            .take(n)
            .collect()
    }

    #[test]
    fn eviction_in_a_full_set_is_lru() {
        let mut c = BlockCache::new();
        let mut f = code();
        let b = scanned(&mut f);
        let g = same_set(3);
        let look = |c: &mut BlockCache, f: &mut FakeCode, gpa| {
            c.lookup(gpa, CodeMode::Bits16, &Extent::Page, f, 0x1000)
                .is_some()
        };
        c.insert(g[0], CodeMode::Bits16, &Extent::Page, b);
        c.insert(g[1], CodeMode::Bits16, &Extent::Page, b);
        // Use g[0]: g[1] becomes the LRU entry and is evicted by g[2].
        assert!(look(&mut c, &mut f, g[0]));
        c.insert(g[2], CodeMode::Bits16, &Extent::Page, b);
        assert_eq!(c.stats().evictions, 1);
        assert!(look(&mut c, &mut f, g[0]));
        assert!(!look(&mut c, &mut f, g[1]));
        assert!(look(&mut c, &mut f, g[2]));
        // Now g[0] is LRU.
        c.insert(g[1], CodeMode::Bits16, &Extent::Page, b);
        assert!(!look(&mut c, &mut f, g[0]));
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 3,
                misses: 2,
                evictions: 2,
                stale: 0
            }
        );
        // Other sets are untouched by all this; clear empties everything.
        let other = (0..)
            .map(|i| 0x9_0000 + i * 0x40)
            .find(|&x| BlockCache::set_of(x) != BlockCache::set_of(g[0]))
            .unwrap();
        c.insert(other, CodeMode::Bits16, &Extent::Page, b);
        assert!(look(&mut c, &mut f, other));
        c.clear();
        assert!(!look(&mut c, &mut f, other));
        assert!(!look(&mut c, &mut f, g[2]));
    }

    #[test]
    fn sets_spread_page_aligned_addresses() {
        // Exit sites one page apart must not all share a set.
        let mut used = [false; CACHE_SETS];
        for i in 0..CACHE_SETS as u64 {
            used[BlockCache::set_of(0x10_0000 + i * 0x1000)] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() >= CACHE_SETS / 2);
    }

    #[test]
    fn sizes() {
        let block = core::mem::size_of::<Block>();
        let cache = core::mem::size_of::<BlockCache>();
        assert!(
            cache < 96 * 1024,
            "BlockCache is {cache} bytes (Block {block})"
        );
    }
}
