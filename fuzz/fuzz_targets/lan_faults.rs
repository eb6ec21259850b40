//! A simulated LAN of 2–4 routers under arbitrary faults (kills, partitions,
//! link flaps, priority changes, forged adverts); it must always converge
//! back to one Master. Invariants in `cplb_vrrp::fuzzing::run_lan`.
#![no_main]

use cplb_vrrp::fuzzing::{LanScript, run_lan};

libfuzzer_sys::fuzz_target!(|script: LanScript| run_lan(&script));
