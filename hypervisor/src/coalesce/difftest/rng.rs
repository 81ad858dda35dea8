//! Random numbers for the generated programs and cases (and `coalesce::fuzz`).

/// xorshift64*: small, deterministic, good enough for test generation.
#[derive(Clone)]
pub(in crate::coalesce) struct Rng(u64);

impl Rng {
    pub(in crate::coalesce) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(in crate::coalesce) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub(in crate::coalesce) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `num / den`.
    pub(in crate::coalesce) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub(in crate::coalesce) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
