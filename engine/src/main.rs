//! `tessera`: the authorization engine (token vault, ISO 8583 listener,
//! pipeline). Only the skeleton exists so far: the vault, listener and
//! demo are built in later issues. Until then the working tool is
//! `tessera-hsm`.

#![forbid(unsafe_code)]

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera payment-token engine (skeleton: the vault, listener and demo are not built yet; use tessera-hsm)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "tessera: no subcommands yet; the payment-cryptography calculator is `tessera-hsm --help`"
    );
    std::process::exit(2);
}
