//! The block cache (a hit replays the block, self-modified code is decoded again) and
//! the site memory (a site without a second IO instruction learns to run only the
//! exiting one, with re-probes), the guest always seeing a correct prefix.

use super::compare::{
    describe, diff_finals, first_exit_fields, run_coalesced, run_coalesced_by, run_reference,
};
use super::fixtures::{after_out, burst, expect_ok, MODES};
use crate::coalesce::cache::BlockCache;
use crate::coalesce::engine::Coalescer;
use crate::coalesce::insn::StopReason;

#[test]
fn a_cache_hit_replays_and_self_modified_code_is_decoded_again() {
    for mode in MODES {
        let c = burst(mode);
        let mut cache = Box::new(BlockCache::new());
        let a = run_coalesced(&c, &mut cache, None);
        let b = run_coalesced(&c, &mut cache, None);
        assert_eq!((a.cache_misses, b.cache_hits), (1, 1));
        assert_eq!(a.final_, b.final_);
        // Change `mov al, 0x11` into `mov al, 0x22` and `inc al` into `dec al`.
        let mut m = c.clone();
        m.code[2] = 0x22;
        m.code[5] = 0xC8;
        let r = run_coalesced(&m, &mut cache, None);
        assert_eq!((r.cache_hits, r.cache_misses), (0, 1), "{mode:?}");
        let vals: Vec<u32> = r.final_.board.trace.iter().map(|a| a.value).collect();
        assert_eq!(vals, vec![0x42, 0x22, 0x21]);
        // The checker (fresh cache + replay) agrees on the new code.
        expect_ok(&m);
        // Changing the stopper into a NOP (after the block) still hits, and is
        // never wrong: the replayed block is the old, shorter one.
        let mut n = c.clone();
        n.code[7] = 0x90;
        assert_eq!(run_coalesced(&c, &mut cache, None).cache_misses, 1);
        let r = run_coalesced(&n, &mut cache, None);
        assert_eq!(r.cache_hits, 1);
        assert_eq!(r.executed, 5);
    }
}

#[test]
fn a_site_without_a_second_io_instruction_learns_to_run_only_it() {
    use crate::coalesce::engine::REPROBE_EVERY;
    // out; 12 x nop; hlt: nothing after the exiting instruction is worth emulating.
    let barren = after_out(&[0x90; 12]);
    // out; nop; out; hlt: a burst.
    let burst = after_out(&[0x90, 0xE6, 0xE0]);
    // out; 40 x nop; out; hlt: one exit saved for 42 emulated instructions does
    // not pay (EXIT_COST_IN_INSNS).
    let mut thin_code = vec![0x90; 40];
    thin_code.extend([0xE6, 0xE0]);
    let thin = after_out(&thin_code);
    // Full runs of a barren site: the first exit, then after 16, 32, 64, 128 exits.
    let r = usize::from(REPROBE_EVERY);
    let probes = [0, r, 3 * r, 7 * r, 15 * r];
    for (case, barren_site, full_len) in [(barren, true, 13), (burst, false, 3), (thin, true, 42)] {
        let mut cache = Box::new(BlockCache::new());
        let mut c = Coalescer::new(case.settings, &mut cache);
        let exit = Some(first_exit_fields(&case).unwrap());
        let mut seen = Vec::new();
        for _ in 0..=probes[4] + 1 {
            let co = run_coalesced_by(&case, &mut c, exit);
            // Whatever the site memory chose, the guest sees a correct prefix.
            let re = run_reference(&case, &co, false).unwrap();
            assert!(
                diff_finals(&co.final_, &re).is_empty(),
                "{}",
                describe(&case)
            );
            seen.push((co.executed, co.stop));
        }
        let full = (full_len, Some(StopReason::Unsupported));
        // Learned: nothing emulated, the exit goes to the one-instruction handler.
        let one = (0, Some(StopReason::Learned));
        if barren_site {
            // Full once, then the one-instruction handler, with full re-probes
            // twice as far apart each time.
            for (i, s) in seen.iter().enumerate() {
                let want = if probes.contains(&i) { full } else { one };
                assert_eq!(*s, want, "exit {i}: {seen:?}");
            }
        } else {
            assert!(
                seen.iter()
                    .all(|s| *s == (3, Some(StopReason::Unsupported))),
                "{seen:?}"
            );
        }
    }
}
