//! One virtual router fed arbitrary events and adverts; invariants in
//! `cplb_vrrp::fuzzing::run_fsm`.
#![no_main]

use cplb_vrrp::fuzzing::{FsmScript, run_fsm};

libfuzzer_sys::fuzz_target!(|script: FsmScript| run_fsm(&script));
