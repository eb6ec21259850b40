//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! same invariant checks the fuzz targets run, and feeds each check a few
//! hundred random inputs, so the suite covers them without a fuzzer.

use std::fs;
use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use cplb_vrrp::fuzzing::{FsmScript, LanScript, parse_roundtrip, run_fsm, run_lan};
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.extension().is_none_or(|ext| ext != "md"))
        .map(|path| {
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// What libfuzzer-sys does with a typed fuzz target's input.
fn decode<'a, T: Arbitrary<'a>>(bytes: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

#[test]
fn vrrp_parse_corpus() {
    let files = corpus("vrrp_parse");
    for (path, bytes) in &files {
        parse_roundtrip(bytes);
        let _ = path;
    }
}

#[test]
fn fsm_events_corpus() {
    for (_, bytes) in corpus("fsm_events") {
        if let Some(script) = decode::<FsmScript>(&bytes) {
            run_fsm(&script);
        }
    }
}

#[test]
fn lan_faults_corpus() {
    for (_, bytes) in corpus("lan_faults") {
        if let Some(script) = decode::<LanScript>(&bytes) {
            run_lan(&script);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_fsm_scripts_keep_the_invariants(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Some(script) = decode::<FsmScript>(&bytes) {
            run_fsm(&script);
        }
    }

    #[test]
    fn random_lan_faults_converge(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Some(script) = decode::<LanScript>(&bytes) {
            run_lan(&script);
        }
    }
}
