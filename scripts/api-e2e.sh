#!/usr/bin/env bash
# The provisioning API end to end, with the release binaries, over HTTPS:
#   throwaway certificates (`tessera certs dev`); two blank cards
#   (`tessera-se init --card-stock-out`) imported as card stock; `tessera
#   serve --api`; a wallet (`tessera-loadgen wallet provision`, the PAN on
#   stdin) takes a step-up card (SCP02) and an approved one (SCP03) to
#   active tokens, relaying the scripts to `tessera-se apdu`; each card
#   pays (approved, ARPC verified by the card); then, through the API on
#   the running server: suspend → the next payment is declined 62; resume
#   → approved; the operator deletes every token of the card → 14; a wrong
#   key → 401.
#
# Usage: scripts/api-e2e.sh [TARGET_DIR]   (default target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release}")
for b in tessera tessera-se tessera-loadgen; do
  [[ -x "$bin/$b" ]] || { echo "api-e2e: $bin/$b is missing (cargo build --release)" >&2; exit 2; }
done
work=$(mktemp -d)
serve_pid=""
cleanup() {
  [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf 'api-e2e: %s\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The shipped config with HTTPS turned on.
cp config/test-keys.json config/test-keys.tr31 "$work/"
cp -r config/test-lmk "$work/"
sed '/^\[api\]$/a tls_cert = "certs/server.pem"\ntls_key = "certs/server.key"' config/tessera.toml >"$work/tessera.toml"
cfg=(--config "$work/tessera.toml")
"$bin/tessera" certs dev --out "$work/certs" >/dev/null
"$bin/tessera" "${cfg[@]}" vault provision --data-dir "$work/vault" --count 1 >/dev/null
"$bin/tessera-se" init --state "$work/card1.json" --card-stock-out "$work/stock.jsonl" --device-id phone-1 2>/dev/null
"$bin/tessera-se" init --state "$work/card2.json" --scp 03 --card-stock-out "$work/stock.jsonl" --device-id watch-2 2>/dev/null
"$bin/tessera" "${cfg[@]}" devices import --data-dir "$work/vault" "$work/stock.jsonl"
if grep -q 404142434445464748494A4B4C4D4E4F "$work/vault/provisioning.log"; then
  echo "api-e2e: ISD keys are in clear in the store" >&2; exit 1
fi

iso=$(free_port); api=$(free_port)
"$bin/tessera" "${cfg[@]}" serve --data-dir "$work/vault" --listen "127.0.0.1:$iso" \
  --api "127.0.0.1:$api" --idv-outbox "$work/outbox.jsonl" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 100); do grep -q "management API on" "$work/serve.log" && break; sleep 0.1; done
grep -q "management API on https://" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
url="https://127.0.0.1:$api"
say "serving on 127.0.0.1:$iso, API on $url"

provision() { # PAN DEVICE CARD
  echo "$1" | TESSERA_API_KEY=test-wallet-key "$bin/tessera-loadgen" wallet provision \
    --api "$url" --ca "$work/certs/ca.pem" --outbox "$work/outbox.jsonl" \
    --device-id "$2" --expiry 3012 -- "$bin/tessera-se" apdu --state "$3"
}
pay() { # PROFILE CARD
  "$bin/tessera-loadgen" --config "$work/tessera.toml" card pay --target "127.0.0.1:$iso" --profile "$1" \
    -- "$bin/tessera-se" apdu --state "$2"
}
pay_says() { # PROFILE CARD TEXT: the payment's output has TEXT (a decline exits 1)
  local out; out=$(pay "$1" "$2" || true)
  grep -q "$3" <<<"$out"
}
http() { # METHOD KEY PATH [BODY]: "STATUS BODY" (Python's urllib: no curl needed)
  python3 - "$work/certs/ca.pem" "$url" "$@" <<'PY'
import ssl, sys, urllib.request, urllib.error
ca, url, method, key, path = sys.argv[1:6]
body = sys.argv[6].encode() if len(sys.argv) > 6 else (b"{}" if method == "POST" else None)
req = urllib.request.Request(url + path, data=body, method=method,
                             headers={"Authorization": "Bearer " + key})
ctx = ssl.create_default_context(cafile=ca)
try:
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}
call() { http POST "$@"; }

out=$(provision 4761001800001231 phone-1 "$work/card1.json")
say "$out"
[[ "$out" == *"issuer decision step_up"*"now active" ]] || exit 1
ref1=$(awk '{print $2}' <<<"$out")
out=$(provision 5413001600001232 watch-2 "$work/card2.json")
say "$out"
[[ "$out" == *"issuer decision approved"*"now active" ]] || exit 1

pay_says visa_cvn18 "$work/card1.json" "code 00" || { echo "api-e2e: payment not approved" >&2; exit 1; }
pay_says mc_cvn16 "$work/card2.json" "ARPC: verified by the card" || { echo "api-e2e: SCP03 card did not pay" >&2; exit 1; }
say "both cards pay; ARPCs verified by the cards"

call test-wallet-key "/v1/tokens/$ref1/suspend" | grep -q '"state":"suspended"'
pay_says visa_cvn18 "$work/card1.json" "code 62" || { echo "api-e2e: a suspended token was not declined 62" >&2; exit 1; }
call test-wallet-key "/v1/tokens/$ref1/resume" | grep -q '"state":"active"'
pay_says visa_cvn18 "$work/card1.json" "code 00" || { echo "api-e2e: resumed token not approved" >&2; exit 1; }
call test-issuer-key /v1/cards/delete '{"pan":"4761001800001231"}' | grep -q '"changed":1'
pay_says visa_cvn18 "$work/card1.json" "code 14" || { echo "api-e2e: deleted token not declined 14" >&2; exit 1; }
say "suspend → 62, resume → 00, the card's tokens deleted by the operator → 14, on the running server"
code=$(http GET wrong "/v1/tokens/$ref1" | cut -d' ' -f1)
[[ "$code" == 401 ]] || { echo "api-e2e: a wrong key got $code" >&2; exit 1; }
events=$(http GET test-wallet-key "/v1/events?after=0")
for e in TOKEN_CREATED TOKEN_ACTIVATED TOKEN_SUSPENDED TOKEN_RESUMED TOKEN_DELETED; do
  grep -q "$e" <<<"$events" || { echo "api-e2e: no $e notification" >&2; exit 1; }
done
if grep -q -e 4761001800001231 -e 5413001600001232 "$work/serve.log" "$work/vault/provisioning.log" \
  || grep -q -e 4761001800001231 -e 5413001600001232 <<<"$events"; then
  echo "api-e2e: a PAN leaked into a log, the store or a notification" >&2; exit 1
fi
say "wrong key → 401; every notification; no PAN in the log, the store or the notifications"

# The audit trail of all of it: stop the server (a clean stop seals the
# trail), verify it with the public key alone, and find the calls above
# with their callers, the refused key and the operator's card deletion.
"$bin/tessera" "${cfg[@]}" audit public-key >"$work/audit.pub"
kill -TERM "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=""
"$bin/tessera" "${cfg[@]}" audit verify --data-dir "$work/vault" --public-key "$work/audit.pub" \
  || { echo "api-e2e: the audit trail does not verify" >&2; exit 1; }
trail=$("$bin/tessera" "${cfg[@]}" audit show --data-dir "$work/vault")
for a in devices.import serve.start provisioning.idv_verify provisioning.activation token.suspend token.resume \
  card.delete security.api_auth serve.stop; do
  grep -q " $a " <<<"$trail" || { echo "api-e2e: no $a in the audit trail" >&2; echo "$trail" >&2; exit 1; }
done
grep -q "api:operator:" <<<"$trail" || { echo "api-e2e: the operator is not named in the trail" >&2; exit 1; }
if grep -q -e 4761001800001231 -e 5413001600001232 "$work/vault/audit/"*.jsonl; then
  echo "api-e2e: a PAN leaked into the audit trail" >&2; exit 1
fi
say "audit trail verified with the public key; every call above is in it with its caller; no PAN"
