#!/usr/bin/env bash
# The secure element end to end, with the release binaries:
#   a vault of tokens; a blank card (`tessera-se init`); its security
#   domain and the token personalised over SCP02 through `tessera-se
#   apdu`; `tessera serve`; a payment whose ARQC the engine approves and
#   whose ARPC the card verifies; the same for SCP03; then the SCP02 card,
#   as personalised, in a PC/SC reader (scripts/pcsc-interop.sh).
#
# Usage: scripts/se-e2e.sh [TARGET_DIR]   (default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release}")
for b in tessera tessera-se tessera-loadgen; do
  [[ -x "$bin/$b" ]] || { echo "se-e2e: $bin/$b is missing (cargo build --release)" >&2; exit 2; }
done
work=$(mktemp -d)
serve_pid=""
cleanup() {
  [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf 'se-e2e: %s\n' "$*"; }

"$bin/tessera" vault provision --data-dir "$work/vault" --count 40 --states active=100 >/dev/null
"$bin/tessera" vault export --data-dir "$work/vault" --out "$work/tokens.jsonl" >/dev/null 2>&1
token_of() { grep "\"profile\":\"$1\"" "$work/tokens.jsonl" | sed -n "${2}p" | cut -d'"' -f4; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/tessera" serve --data-dir "$work/vault" --listen "127.0.0.1:$port" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

pay_with() { # scp profile n
  local scp=$1 profile=$2 n=$3 state="$work/card-$1-$2.json" flag=""
  local token
  token=$(token_of "$profile" "$n")
  [[ $scp == 03 ]] && flag=--scp03
  "$bin/tessera-se" init --state "$state" --scp "$scp" 2>/dev/null
  "$bin/tessera-loadgen" card personalise --export "$work/tokens.jsonl" --token "$token" $flag \
    -- "$bin/tessera-se" apdu --state "$state"
  for _ in 1 2; do
    "$bin/tessera-loadgen" card pay --target "127.0.0.1:$port" --export "$work/tokens.jsonl" \
      --token "$token" -- "$bin/tessera-se" apdu --state "$state"
  done
  "$bin/tessera-se" show --state "$state"
}
pay_with 02 visa_cvn18 1
pay_with 03 mc_cvn17 1
pay_with 02 mc_cvc3 1
pay_with 03 visa_dcvv 1
say "every payment approved; every ARPC verified by its card"

if [[ "${SE_E2E_PCSC:-1}" == 1 ]]; then
  bash scripts/pcsc-interop.sh "$bin/tessera-se" "$work/card-02-visa_cvn18.json" A0000000031010
fi
