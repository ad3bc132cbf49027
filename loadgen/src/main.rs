//! `tessera-loadgen`: card, acquirer and issuer simulators. Only the
//! skeleton exists so far; the load generator is built in a later issue.

#![forbid(unsafe_code)]

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-loadgen",
    version,
    about = "Tessera load generator (skeleton: not built yet)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("tessera-loadgen: not built yet");
    std::process::exit(2);
}
