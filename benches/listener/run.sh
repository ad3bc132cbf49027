#!/usr/bin/env bash
# The listener's figures (issue 15), every one against the same vault, on
# this machine, in one run. From the repository root:
#
#   cargo build --release
#   bash benches/listener/run.sh target/release [BASE_BIN_DIR BASE_CONFIG]
#
# BASE_BIN_DIR/BASE_CONFIG: an older build (and its config) measured in the
# same run for comparison, e.g. a worktree of the commit before the change.
# Separate processes, load generator on the same two cores, sync durability,
# every fault kind at the default rates, every check on; a run with a ledger
# mismatch makes the script fail. ONLY=idle runs only the idle-connection
# measurement. DUR (seconds per run, default 6) and RUNS
# (closed-loop repetitions, default 2) can be set. The tokio variant of the
# listener (benches/src/bin/tokio-listener.rs, plain TCP) is measured on the
# same loads when target/release/tokio-listener exists
# (`cargo build --release -p tessera-benches --bin tokio-listener`).
set -euo pipefail
T=$(realpath "${1:-target/release}")
BASE=${2:-}
BASE_CONFIG=${3:-}
CONFIG=$(realpath config/tessera.toml)
DUR=${DUR:-6}
RUNS=${RUNS:-2}
HERE=$(dirname "$(realpath "$0")")
D=$(mktemp -d)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill -KILL "$SERVER" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$T/tessera" --config "$CONFIG" vault provision --data-dir "$D/vault" --count 100000 --seed 2026 \
    --states active=97,suspended=2,inactive=1 --restricted-every 10 >/dev/null
"$T/tessera" --config "$CONFIG" vault export --data-dir "$D/vault" --out "$D/tokens.jsonl" --with-pan 2>/dev/null
"$T/tessera" certs dev --out "$D/certs" >/dev/null
TLS_SERVE=(--tls-cert "$D/certs/listener.pem" --tls-key "$D/certs/listener.key" --tls-client-ca "$D/certs/ca.pem")
TLS_LOAD=(--tls-ca "$D/certs/ca.pem" --tls-cert "$D/certs/acquirer-1.pem" --tls-key "$D/certs/acquirer-1.key")
PORT=18583
ISSUER_PORT=18600

# serve BIN_DIR CONFIG [serve flags...]: a fresh copy of the vault.
# BIN_DIR "tokio" runs the tokio variant instead.
serve() {
    local bin=$1 cfg=$2
    shift 2
    rm -rf "$D/v" && cp -r "$D/vault" "$D/v"
    if [ "$bin" = tokio ]; then
        "$T/tokio-listener" "$cfg" "$D/v" "127.0.0.1:$PORT" 2 2>>"$D/serve.log" &
    else
        "$bin/tessera" --config "$cfg" serve --data-dir "$D/v" --listen "127.0.0.1:$PORT" "$@" 2>>"$D/serve.log" &
    fi
    SERVER=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start:" >&2
    tail -5 "$D/serve.log" >&2
    exit 1
}
stop() {
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# load BIN_DIR CONFIG LABEL [loadgen flags...]: one run; prints a row.
load() {
    local bin=$1 cfg=$2 label=$3
    shift 3
    local out
    [ "$bin" = tokio ] && bin=$T
    out=$("$bin/tessera-loadgen" run --config "$cfg" --target "127.0.0.1:$PORT" \
        --export "$D/tokens.jsonl" --connections 4 --duration "$DUR" "$@" 2>/dev/null) || {
        echo "$out" | tail -20 >&2
        echo "FAILED: $label" >&2
        exit 1
    }
    echo "$out" | grep -q "no mismatch" || { echo "$out" | tail -20 >&2; echo "MISMATCH: $label" >&2; exit 1; }
    local tput p50 p99 p999
    tput=$(echo "$out" | sed -n 's/.*throughput \([0-9,]*\)\/s.*/\1/p' | head -1)
    p50=$(echo "$out" | awk '$1 == "p50" {print $2; exit}')
    p99=$(echo "$out" | awk '$1 == "p99" {print $2; exit}')
    p999=$(echo "$out" | awk '$1 == "p99.9" {print $2; exit}')
    printf '| %s | %s/s | %s ms | %s ms | %s ms |\n' "$label" "$tput" "$p50" "$p99" "$p999"
}

# closed BIN CONFIG LABEL SERVE_FLAGS... -- LOAD_FLAGS...: RUNS runs, each row.
runs() {
    local bin=$1 cfg=$2 label=$3
    shift 3
    local serve_flags=() load_flags=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do serve_flags+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    load_flags=("$@")
    for i in $(seq "$RUNS"); do
        serve "$bin" "$cfg" "${serve_flags[@]}"
        load "$bin" "$cfg" "$label (run $i)" "${load_flags[@]}"
        stop
    done
}

if [ "${ONLY:-}" != idle ]; then
echo "| run | throughput | p50 | p99 | p99.9 |"
echo "|---|---:|---:|---:|---:|"
CLOSED=(--in-flight 256 --pool $((DUR * 180000 + 100000)))
OPEN=(--rate 100000 --pool $((DUR * 110000 + 100000)))
TOKIO=
[ -x "$T/tokio-listener" ] && TOKIO=1
if [ -n "$BASE" ]; then
    runs "$BASE" "$BASE_CONFIG" "before: closed loop 4 × 256, plain TCP" -- "${CLOSED[@]}"
fi
runs "$T" "$CONFIG" "closed loop 4 × 256, plain TCP" -- "${CLOSED[@]}"
runs "$T" "$CONFIG" "closed loop 4 × 256, mutual TLS" "${TLS_SERVE[@]}" -- "${CLOSED[@]}" "${TLS_LOAD[@]}"
if [ -n "$TOKIO" ]; then
    runs tokio "$CONFIG" "tokio variant: closed loop 4 × 256, plain TCP" -- "${CLOSED[@]}"
fi
if [ -n "$BASE" ]; then
    RUNS=1 runs "$BASE" "$BASE_CONFIG" "before: open loop 100,000/s, plain TCP" -- "${OPEN[@]}"
fi
RUNS=1 runs "$T" "$CONFIG" "open loop 100,000/s, plain TCP" -- "${OPEN[@]}"
RUNS=1 runs "$T" "$CONFIG" "open loop 100,000/s, mutual TLS" "${TLS_SERVE[@]}" -- "${OPEN[@]}" "${TLS_LOAD[@]}"
if [ -n "$TOKIO" ]; then
    RUNS=1 runs tokio "$CONFIG" "tokio variant: open loop 100,000/s, plain TCP" -- "${OPEN[@]}"
fi

# The issuer leg: the simulated issuer in its own process.
"$T/tessera-loadgen" issuer --listen "127.0.0.1:$ISSUER_PORT" --export "$D/tokens.jsonl" 2>/dev/null &
ISSUER=$!
sleep 1
if [ -n "$BASE" ]; then
    RUNS=1 runs "$BASE" "$BASE_CONFIG" "before: closed loop 4 × 256, issuer leg" --issuer "127.0.0.1:$ISSUER_PORT" -- "${CLOSED[@]}"
fi
runs "$T" "$CONFIG" "closed loop 4 × 256, issuer leg" --issuer "127.0.0.1:$ISSUER_PORT" -- "${CLOSED[@]}"
kill "$ISSUER" 2>/dev/null || true

# 64 peers that pipeline and never read, against a reading client's p99.
OPEN20=(--rate 20000 --pool $((DUR * 30000 + 100000)))
if [ -n "$BASE" ]; then
    serve "$BASE" "$BASE_CONFIG"
    load "$BASE" "$BASE_CONFIG" "before: open loop 20,000/s, alone" "${OPEN20[@]}"
    stop
fi
if [ -n "$TOKIO" ]; then
    serve tokio "$CONFIG"
    load tokio "$CONFIG" "tokio variant: open loop 20,000/s, alone" "${OPEN20[@]}"
    stop
fi
serve "$T" "$CONFIG"
load "$T" "$CONFIG" "open loop 20,000/s, alone" "${OPEN20[@]}"
stop
serve "$T" "$CONFIG"
python3 "$HERE/non_readers.py" "127.0.0.1:$PORT" 64 "$((DUR + 6))" >"$D/nonreaders.out" &
NR=$!
sleep 2
load "$T" "$CONFIG" "open loop 20,000/s, with 64 peers that never read" "${OPEN20[@]}"
wait "$NR" || true
stop
echo
cat "$D/nonreaders.out"

fi

# N idle connections: the server's resident set before and after, and the
# connections it holds (/proc/PID/fd). Connecting is slow in this sandbox
# (~4 ms per connect, even to a trivial Python server), so the client gets
# up to 3 minutes.
idle() {
    local bin=$1 cfg=$2 n=$3 label=$4
    serve "$bin" "$cfg"
    local before after fds
    before=$(rss_kb "$SERVER")
    python3 "$HERE/idle_conns.py" "127.0.0.1:$PORT" "$n" 300 >"$D/idle.out" &
    local client=$!
    for _ in $(seq 1800); do grep -q open "$D/idle.out" 2>/dev/null && break; sleep 0.1; done
    sleep 2
    after=$(rss_kb "$SERVER")
    fds=$(ls "/proc/$SERVER/fd" | wc -l)
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    stop
    echo "$label: $n idle connections ($fds descriptors open in the server): RSS $((before / 1024)) MB -> $((after / 1024)) MB (+$(((after - before) / 1024)) MB)"
}
idle "$T" "$CONFIG" 10000 "now"
if [ -n "$BASE" ]; then
    # Its connection cap was 1,024.
    idle "$BASE" "$BASE_CONFIG" 1000 "before"
fi
