//! `cplb`: the agent that replaces keepalived and k0s's CPLB proxy.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("version") | Some("--version") => {
            println!("cplb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: cplb version");
            ExitCode::from(2)
        }
    }
}
