//! What the coalescer did, counted: IO instructions and string elements, instructions
//! emulated, the run-length histogram, why runs stopped and where, block-cache hits.
//! The run's statistics (`crate::stats`) hold one of these and print it in the
//! `sluice-stats` line.

use crate::coalesce::insn::StopReason;

/// Block-length histogram buckets, in instructions per IO exit.
pub const BLOCK_BUCKETS: [&str; 8] = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"];

/// What the IO-exit path did: the numbers the coalescer is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoStats {
    /// IO instructions the guest executed (completed), one exit each or coalesced.
    pub instructions: u64,
    /// String-IO elements moved.
    pub string_elements: u64,
    /// Instructions of any kind emulated in coalesced blocks (exiting one included).
    pub emulated: u64,
    /// IO exits handled by the coalescer, by instructions per exit ([`BLOCK_BUCKETS`]).
    pub blocks: [u64; 8],
    /// Why coalesced runs stopped, indexed by `coalesce::insn::StopReason::index`.
    pub stops: [u64; StopReason::ALL.len()],
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// TSC cycles spent handling IO exits (from the exit to the next entry).
    pub cycles: u64,
    /// Where IO exits ended their runs, busiest sites kept ([`StopSites`]).
    pub sites: StopSites,
}

/// Stop sites kept (a site: the guest RIP a run ended at, and why).
pub const SITE_SLOTS: usize = 64;
/// Sites and instructions printed in `sluice-stats`.
pub const SITES_PRINTED: usize = 16;

/// One place where coalesced runs end: the instruction at guest-linear `rip` that the
/// run stopped before (or the exiting instruction, for a fallback), the stop reason
/// (`coalesce::insn::StopReason::index`), that instruction's mnemonic and first code
/// bytes (looked up once, when the site is first seen), and how often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopSite {
    pub rip: u64,
    pub reason: u8,
    pub mnemonic: &'static str,
    pub bytes: [u8; 8],
    pub nbytes: u8,
    pub count: u64,
}

impl StopSite {
    const EMPTY: StopSite = StopSite {
        rip: 0,
        reason: 0,
        mnemonic: "",
        bytes: [0; 8],
        nbytes: 0,
        count: 0,
    };
}

/// The busiest stop sites in a small two-choice hash table with Space-Saving
/// replacement (Metwally et al., 2005): fixed size, no heap, constant time per IO exit
/// (a linear scan per exit made exits measurably slower in debug builds under Bochs).
/// `used` counts occupied slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopSites {
    pub slots: [StopSite; SITE_SLOTS],
    pub used: usize,
}

impl Default for StopSites {
    fn default() -> Self {
        Self::new()
    }
}

impl StopSites {
    pub const fn new() -> Self {
        StopSites {
            slots: [StopSite::EMPTY; SITE_SLOTS],
            used: 0,
        }
    }

    /// Counts a stop at `rip` for `reason`; `describe` gives the mnemonic and code
    /// bytes of a site seen for the first time (it is not called for known sites).
    /// Constant time (this runs on every IO exit): the site may live in one of two
    /// slots chosen by a hash; a new site takes the emptier of the two (Space-Saving:
    /// it inherits the evicted count, so a count over-estimates by at most that).
    pub fn record(
        &mut self,
        rip: u64,
        reason: u8,
        describe: impl FnOnce() -> (&'static str, [u8; 8], u8),
    ) {
        let h = (rip ^ (rip >> 17) ^ (u64::from(reason) << 7)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let a = (h >> 58) as usize % SITE_SLOTS;
        let b = a ^ 1;
        for i in [a, b] {
            let s = &mut self.slots[i];
            if s.count != 0 && s.rip == rip && s.reason == reason {
                s.count = s.count.saturating_add(1);
                return;
            }
        }
        let slot = if self.slots[a].count <= self.slots[b].count {
            a
        } else {
            b
        };
        let base = self.slots[slot].count;
        if base == 0 {
            self.used = self.used.saturating_add(1).min(SITE_SLOTS);
        }
        let (mnemonic, bytes, nbytes) = describe();
        self.slots[slot] = StopSite {
            rip,
            reason,
            mnemonic,
            bytes,
            nbytes: nbytes.min(8),
            count: base.saturating_add(1),
        };
    }

    /// Indexes of the used slots, busiest first (ties: lower RIP first), at most `N`.
    pub fn top<const N: usize>(&self) -> ([usize; N], usize) {
        let mut order = [0usize; SITE_SLOTS];
        let mut used = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.count != 0 {
                order[used] = i;
                used += 1;
            }
        }
        let order = &mut order[..used];
        order.sort_unstable_by(|&a, &b| {
            let (x, y) = (&self.slots[a], &self.slots[b]);
            y.count
                .cmp(&x.count)
                .then(x.rip.cmp(&y.rip))
                .then(x.reason.cmp(&y.reason))
        });
        let mut out = [0usize; N];
        let n = used.min(N);
        out[..n].copy_from_slice(&order[..n]);
        (out, n)
    }
}

impl IoStats {
    pub const fn new() -> Self {
        IoStats {
            instructions: 0,
            string_elements: 0,
            emulated: 0,
            blocks: [0; 8],
            stops: [0; StopReason::ALL.len()],
            cache_hits: 0,
            cache_misses: 0,
            cycles: 0,
            sites: StopSites::new(),
        }
    }

    /// Histogram bucket of a block that executed `n` instructions.
    pub const fn bucket(n: u64) -> usize {
        match n {
            0 | 1 => 0,
            2 => 1,
            3..=4 => 2,
            5..=8 => 3,
            9..=16 => 4,
            17..=32 => 5,
            33..=64 => 6,
            _ => 7,
        }
    }
}

impl Default for IoStats {
    fn default() -> Self {
        Self::new()
    }
}
