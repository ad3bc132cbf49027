#!/usr/bin/env bash
# PC/SC interoperability: `tessera-se vpcd` as a card in vsmartcard's
# virtual reader, driven by pyscard through pcscd (tests/pcsc/interop.py).
#
# Usage: scripts/pcsc-interop.sh path/to/tessera-se [CARD_STATE [AID]]
#
# With CARD_STATE, that card (for example one personalised by
# scripts/se-e2e.sh) goes into the reader instead of a blank one, and the
# PPSE must list AID.
#
# Installs what it needs from Debian (pcscd, vsmartcard-vpcd,
# python3-pyscard, python3-pycryptodome, pcsc-tools), starts its own pcscd
# in the foreground, starts the card, runs the Python test, and stops both
# on exit. Logs are printed when something fails.
#
# Pitfalls this handles:
# - pcscd reads /etc/reader.conf.d/vpcd only when it starts (or when asked
#   with `pcscd --hotplug`): a pcscd already running from before the
#   vsmartcard-vpcd install has no "Virtual PCD" reader.
# - No systemd in a container: Debian's postinst cannot start pcscd
#   (policy-rc.d denies it), so this script runs it itself. pcscd creates
#   /run/pcscd on its own.
# - pcsc-lite builds with polkit (newer Debian releases) refuse clients
#   when no polkit daemon runs; --disable-polkit where the option exists.
#   Debian 12's pcscd (1.9.9) has no polkit support and no such option.
# - The python3 on PATH may be pyenv's, which does not see Debian's
#   python3-pyscard: /usr/bin/python3 is used explicitly.
# - pcsc_scan looks an unknown ATR up on the network; -n turns that off.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 path/to/tessera-se [CARD_STATE [AID]]" >&2
  exit 2
fi
TESSERA_SE=$(realpath "$1")
CARD_STATE=${2:+$(realpath "$2")}
EXPECT_AID=${3:-}
cd "$(dirname "$0")/.."
[[ -x "$TESSERA_SE" ]] || { echo "pcsc-interop: $TESSERA_SE is not an executable" >&2; exit 2; }

PY=/usr/bin/python3
VPCD_PORT=35963
VPCD_READER="Virtual PCD 00 00"
PACKAGES=(pcscd vsmartcard-vpcd python3-pyscard python3-pycryptodome pcsc-tools)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

say() { printf 'pcsc-interop: %s\n' "$*"; }

# --- packages ----------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}"
  }
  # Update only when there are no package lists, or when they turn out stale.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    "${SUDO[@]}" apt-get update
  fi
  if ! apt_install; then
    "${SUDO[@]}" apt-get update
    apt_install
  fi
fi
[[ -f /etc/reader.conf.d/vpcd ]] || { say "no /etc/reader.conf.d/vpcd after installing vsmartcard-vpcd"; exit 1; }
"$PY" -c 'import smartcard, Cryptodome' || { say "$PY cannot import pyscard and pycryptodome"; exit 1; }

# --- processes ---------------------------------------------------------------
work=$(mktemp -d)
pcscd_pid=""
card_pid=""
status=1
cleanup() {
  # Only the processes started here, by their PIDs.
  [[ -n "$card_pid" ]] && kill "$card_pid" 2>/dev/null || true
  [[ -n "$pcscd_pid" ]] && kill "$pcscd_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ $status -ne 0 ]]; then
    for log in "$work"/pcscd.log "$work"/tessera-se.log; do
      [[ -s "$log" ]] || continue
      echo "---- last lines of $(basename "$log")"
      tail -n 40 "$log"
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

listening() {
  # True once something listens on the vpcd port. Never connects to it:
  # vpcd would take a probe for the card.
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$VPCD_PORT" | grep -q .
  else
    [[ -S /run/pcscd/pcscd.comm ]]
  fi
}

if [[ -S /run/pcscd/pcscd.comm ]] && pidof pcscd >/dev/null; then
  # Someone else's pcscd (systemd socket activation on a workstation):
  # reuse it, but make it read /etc/reader.conf.d again.
  say "using the running pcscd; asking it to rescan its reader configuration"
  "${SUDO[@]}" pcscd --hotplug || true
else
  pcscd_flags=(--foreground --debug)
  if pcscd --help 2>&1 | grep -q -- --disable-polkit; then
    pcscd_flags+=(--disable-polkit)
  fi
  say "starting pcscd ${pcscd_flags[*]}"
  "${SUDO[@]}" pcscd "${pcscd_flags[@]}" >"$work/pcscd.log" 2>&1 &
  pcscd_pid=$!
fi

for _ in $(seq 100); do
  listening && break
  if [[ -n "$pcscd_pid" ]] && ! kill -0 "$pcscd_pid" 2>/dev/null; then
    say "pcscd exited during start-up"
    exit 1
  fi
  sleep 0.1
done
listening || { say "vpcd is not listening on port $VPCD_PORT after 10 s"; exit 1; }
say "vpcd listens on port $VPCD_PORT"
command -v ss >/dev/null && ss -ltnp "sport = :$VPCD_PORT"

echo "== readers (pcsc_scan -r)"
readers=$(timeout 10 pcsc_scan -r)
echo "$readers"
grep -qF "$VPCD_READER" <<<"$readers" || { say "no reader named '$VPCD_READER'"; exit 1; }

# --- the card ------------------------------------------------------------------
if [[ -n "$CARD_STATE" ]]; then
  cp "$CARD_STATE" "$work/card.json"
else
  "$TESSERA_SE" init --state "$work/card.json"
fi
"$TESSERA_SE" vpcd --state "$work/card.json" --host 127.0.0.1 --port "$VPCD_PORT" \
  >"$work/tessera-se.log" 2>&1 &
card_pid=$!

present=""
for _ in $(seq 40); do
  kill -0 "$card_pid" 2>/dev/null || { say "tessera-se vpcd exited"; exit 1; }
  cards=$(timeout 5 pcsc_scan -c -n 2>/dev/null || true)
  # The line after "Reader 0: Virtual PCD 00 00" / "Event number" is its state.
  if grep -A2 -F "$VPCD_READER" <<<"$cards" | grep -q "Card inserted"; then
    present=yes
    break
  fi
  sleep 0.25
done
echo "== cards (pcsc_scan -c -n)"
echo "${cards:-}"
[[ -n "$present" ]] || say "no card seen in '$VPCD_READER' yet; interop.py waits on its own"

# --- the test ------------------------------------------------------------------
echo "== SCP02 arithmetic against the published vector"
"$PY" tests/pcsc/interop.py --self-test
echo "== interop through pcscd"
"$PY" tests/pcsc/interop.py --reader "$VPCD_READER" --timeout 10 ${EXPECT_AID:+--expect-aid "$EXPECT_AID"}
status=0
