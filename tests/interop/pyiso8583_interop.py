#!/usr/bin/env python3
"""Interoperability test: an independent ISO 8583 implementation (pyiso8583)
against `tessera serve`, in both dialects.

For each dialect:
  * a request computed by Tessera's card simulator is decoded by pyiso8583
    and re-encoded by it: the bytes must be identical (same wire format);
  * pyiso8583 sends it over TCP (2-byte length framing) and decodes the
    answer: 0110, DE 39 = 00, DE 2 = the token, DE 38 present, DE 55 with
    tag 91;
  * pyiso8583 builds an 0800 echo test from scratch: 0810 / 00 / DE 70 echoed;
  * pyiso8583 builds an 0100 for an unknown token: 0110 / 14.

Then once more over mutual TLS (Python's `ssl`, certificates from
`tessera certs dev`): approved, echo, the decline logged with the
acquirer's certificate subject, and a client without a certificate refused.

Usage: pyiso8583_interop.py TESSERA_BINARY CONFIG WORKDIR
Exit status 0 on success; prints "N passed, M failed".
"""
import copy
import os
import ssl
import signal
import socket
import subprocess
import sys
import time

import iso8583
from iso8583.specs import default, default_ascii

BIN, CONFIG, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def run(*args):
    return subprocess.run([BIN, "--config", CONFIG, *args], check=True, capture_output=True, text=True).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def exchange(port, raw, tls=None):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        s = tls.wrap_socket(plain, server_hostname="localhost") if tls else plain
        s.sendall(len(raw).to_bytes(2, "big") + raw)
        n = int.from_bytes(recv_exact(s, 2), "big")
        return recv_exact(s, n)


def serve(port, *flags):
    """Start `tessera serve` on the test vault and wait until it accepts."""
    server = subprocess.Popen([BIN, "--config", CONFIG, "serve", "--data-dir", os.path.join(WORK, "vault"),
                               "--listen", f"127.0.0.1:{port}", *flags], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


# pyiso8583 "default" is binary except that field 55 is raw bytes with an
# ASCII LLL count: exactly Tessera's "binary" dialect.
SPECS = {"ascii": default_ascii, "binary": default}

data = os.path.join(WORK, "vault")
run("vault", "provision", "--data-dir", data, "--count", "200", "--seed", "11", "--profile", "mc_cvn16")
export = os.path.join(WORK, "tokens.jsonl")
run("vault", "export", "--data-dir", data, "--out", export)
import json

tokens = [json.loads(line) for line in open(export)]
active = [t for t in tokens if t["state"] == "active"]

for n, (dialect, spec) in enumerate(SPECS.items()):
    port = free_port()
    token = active[n]["token"]
    request_hex = run("card-request", "--data-dir", data, "--token", token, "--atc", "5", "--stan", str(100 + n), "--dialect", dialect).strip()
    server = serve(port, "--dialect", dialect)
    try:
        raw = bytes.fromhex(request_hex)
        decoded, _ = iso8583.decode(raw, spec)
        re_encoded, _ = iso8583.encode(copy.deepcopy(decoded), spec)
        check(f"{dialect}: pyiso8583 re-encodes Tessera's request byte for byte", bytes(re_encoded) == raw)

        answer, _ = iso8583.decode(exchange(port, bytes(re_encoded)), spec)
        check(f"{dialect}: approved", answer.get("t") == "0110" and answer.get("39") == "00", str(answer.get("39")) + " " + str(answer.get("44")))
        check(f"{dialect}: DE 2 is the token", answer.get("2") == token)
        check(f"{dialect}: DE 38 on approval", len(answer.get("38", "")) == 6)
        f55 = answer.get("55")
        f55 = bytes.fromhex(f55) if isinstance(f55, str) else f55
        check(f"{dialect}: DE 55 carries tag 91", bool(f55) and f55[0] == 0x91)

        echo = {"t": "0800", "7": "1121120000", "11": "000777", "70": "301"}
        answer, _ = iso8583.decode(exchange(port, bytes(iso8583.encode(echo, spec)[0])), spec)
        check(f"{dialect}: 0800 echo -> 0810/00", answer.get("t") == "0810" and answer.get("39") == "00" and answer.get("70") == "301")

        unknown = {"t": "0100", "2": "5204730000000000", "3": "000000", "4": "000000001500", "11": "000778",
                   "14": "2812", "22": "071", "41": "TERM0001", "49": "978"}
        answer, _ = iso8583.decode(exchange(port, bytes(iso8583.encode(unknown, spec)[0])), spec)
        check(f"{dialect}: unknown token -> 14", answer.get("39") == "14" and answer.get("11") == "000778", str(answer))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
        check(f"{dialect}: SIGTERM drains and exits 0", code == 0, server.stderr.read()[-500:])

# Mutual TLS, ascii dialect.
certs = os.path.join(WORK, "certs")
subprocess.run([BIN, "certs", "dev", "--out", certs], check=True, capture_output=True)
tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.path.join(certs, "ca.pem"))
tls.load_cert_chain(os.path.join(certs, "acquirer-1.pem"), os.path.join(certs, "acquirer-1.key"))
no_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.path.join(certs, "ca.pem"))
spec = default_ascii
port = free_port()
token = active[2]["token"]
request_hex = run("card-request", "--data-dir", data, "--token", token, "--atc", "9", "--stan", "300", "--dialect", "ascii").strip()
server = serve(port, "--tls-cert", os.path.join(certs, "listener.pem"), "--tls-key", os.path.join(certs, "listener.key"),
               "--tls-client-ca", os.path.join(certs, "ca.pem"))
try:
    answer, _ = iso8583.decode(exchange(port, bytes.fromhex(request_hex), tls), spec)
    check("tls: approved over mutual TLS", answer.get("t") == "0110" and answer.get("39") == "00", str(answer.get("39")))
    echo = {"t": "0800", "7": "1121120000", "11": "000779", "70": "301"}
    answer, _ = iso8583.decode(exchange(port, bytes(iso8583.encode(echo, spec)[0]), tls), spec)
    check("tls: 0800 echo -> 0810/00", answer.get("t") == "0810" and answer.get("39") == "00")
    unknown = {"t": "0100", "2": "5204730000000000", "3": "000000", "4": "000000001500", "11": "000780",
               "14": "2812", "22": "071", "41": "TERM0001", "49": "978"}
    answer, _ = iso8583.decode(exchange(port, bytes(iso8583.encode(unknown, spec)[0]), tls), spec)
    check("tls: unknown token -> 14", answer.get("39") == "14")
    try:
        exchange(port, bytes(iso8583.encode(echo, spec)[0]), no_cert)
        refused = False
    except (ssl.SSLError, EOFError, ConnectionError, OSError):
        refused = True
    check("tls: a client without a certificate is refused", refused)
finally:
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=20)
    log = server.stderr.read()
    check("tls: SIGTERM drains and exits 0", code == 0, log[-500:])
    check("tls: the decline names the acquirer", 'acquirer="CN=acquirer-1,O=Tessera dev acquirers"' in log, log[-800:])
    check("tls: the refusal is logged", "event=tls_refused" in log, log[-800:])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
