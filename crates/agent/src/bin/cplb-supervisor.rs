//! `cplb-supervisor`: the parent `cplb run --supervise` becomes once it has
//! checked the configuration (see `cplb::supervise`). A program of its own
//! so that it maps only the little it runs: a process keeps the pages it
//! touched resident, and the agent's binary is mostly Kubernetes, TLS and
//! netlink code the supervisor never calls.

fn main() -> std::process::ExitCode {
    cplb::supervise::program(std::env::args_os().skip(1))
}
