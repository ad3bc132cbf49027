#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Unit, property,
# vector and CLI tests of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
