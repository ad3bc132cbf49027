#!/usr/bin/env bash
# Build and run every fuzz target for SECONDS each, on the stable toolchain.
#
#   fuzz/run-all.sh SECONDS [TARGET...]
#
# Exits non-zero if any target crashes (a panic, an assertion of the round
# trip checks, a timeout or an out-of-memory): the failing input is left in
# fuzz/artifacts/TARGET/ and the log in fuzz/work/logs/TARGET.log.
#
# Needs cargo-fuzz. If `cargo fuzz` is missing it is installed with
#   cargo install cargo-fuzz --locked
# (from crates.io; tested with cargo-fuzz 0.13.2 and Rust 1.95 stable).
#
# Stable works because of `--sanitizer none`: cargo-fuzz then passes only
# stable flags to rustc (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-
# coverage-*, --cfg fuzzing, -Cdebug-assertions). The sanitizers (ASan,
# the default) need nightly's -Zsanitizer; this code has no `unsafe`, so
# they would add little.
#
# Corpus: the committed seeds in fuzz/corpus/TARGET/ are read but never
# written; libFuzzer writes the inputs it finds to fuzz/work/corpus/TARGET/
# (git-ignored, kept between runs). To add findings to the seeds, minimise
# them first (see fuzz/README.md).
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ || $1 -eq 0 ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found: cargo install cargo-fuzz --locked" >&2
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building the fuzz targets (stable, --sanitizer none)"
cargo fuzz build --sanitizer none

mkdir -p fuzz/work/logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/corpus/$t"
    log="fuzz/work/logs/$t.log"
    echo "== $t: ${seconds}s"
    if cargo fuzz run --sanitizer none "$t" "fuzz/work/corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
    cov=$(grep -Eo 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 | sed 's/DONE *//' || true)
    echo "   $status: ${runs:-?} executions${cov:+; $cov}"
    if [[ $status == FAILED ]]; then
        grep -E "panicked|ERROR|error:|SUMMARY|Test unit written" "$log" | head -n 8 | sed 's/^/   /' || true
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== FAILED: ${failed[*]} (logs in fuzz/work/logs/, inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${seconds}s without a crash"
