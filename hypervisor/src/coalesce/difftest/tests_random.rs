//! Generated programs and cases in every code mode, each checked on both sides (and
//! replayed from the warm cache).

use std::collections::BTreeMap;

use super::compare::{check, describe, first_exit_fields};
use super::generate::{random_case, Mix};
use crate::coalesce::block::Extent;
use crate::coalesce::engine::Outcome;
use crate::coalesce::insn::{CodeMode, StopReason};

fn run_random(mode: CodeMode, mix: Mix, base: u64, n: u64) {
    let mut stops: BTreeMap<String, u64> = BTreeMap::new();
    let mut insns = 0;
    let mut known = Vec::new();
    let mut inconclusive = 0u64;
    for k in 0..n {
        let seed = base + k;
        let case = random_case(mode, mix, seed);
        match check(&case).map(|co| (co, false)) {
            Ok((co, stale_pic)) => {
                if stale_pic {
                    known.push(seed);
                }
                inconclusive += u64::from(co.inconclusive);
                insns += co.executed;
                let key = match co.outcome {
                    Outcome::Done => format!("{:?}", co.stop),
                    Outcome::Fallback(r) => format!("fallback {r:?}"),
                };
                *stops.entry(key).or_default() += 1;
                // The first instruction is a valid IO instruction: a fallback
                // for a decode mismatch only when the extent cannot hold it.
                if co.outcome == Outcome::Fallback(StopReason::Off) {
                    let len = first_exit_fields(&case).map_or(0, |f| f.1);
                    let room = match case.settings.extent {
                        Extent::Bytes(b) => u64::from(b),
                        Extent::Line(l) => u64::from(l) - case.code_linear() % u64::from(l),
                        _ => u64::MAX,
                    };
                    assert!(
                        room < len || !case.unmap.is_empty(),
                        "fallback Off for a valid first instruction\n{}",
                        describe(&case)
                    );
                }
            }
            Err(e) => panic!("random program {mode:?} seed {seed:#x} failed:\n{e}"),
        }
    }
    println!(
        "{mode:?}: {n} programs, {insns} instructions coalesced, {inconclusive} \
         inconclusive (page tables written); stops {stops:?}"
    );
    assert!(known.is_empty(), "{mode:?}: stale-PIC cases {known:#x?}");
}

#[test]
fn random_programs_16_bit() {
    run_random(CodeMode::Bits16, Mix::Any, 0x1600_0000, 5000);
}

#[test]
fn random_programs_32_bit() {
    run_random(CodeMode::Bits32, Mix::Any, 0x3200_0000, 5000);
}

#[test]
fn random_programs_64_bit() {
    run_random(CodeMode::Bits64, Mix::Any, 0x6400_0000, 5000);
}

#[test]
fn random_memory_programs_64_bit() {
    run_random(CodeMode::Bits64, Mix::Memory, 0x6440_0000, 5000);
}

#[test]
fn random_memory_programs_16_bit() {
    run_random(CodeMode::Bits16, Mix::Memory, 0x1640_0000, 5000);
}

#[test]
fn random_memory_programs_32_bit() {
    run_random(CodeMode::Bits32, Mix::Memory, 0x3240_0000, 5000);
}
