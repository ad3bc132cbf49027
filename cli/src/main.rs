//! `tessera`: the Tessera payment-token engine's command line. A thin
//! layer: the engine is the `engine` library, the demo and simulators are
//! the `loadgen` library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod audit_cmd;
mod cli;
mod db_cmd;
mod lmk_args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e}");
            ExitCode::from(1)
        }
    }
}
