#!/usr/bin/env python3
"""PC/SC interoperability test: `tessera-se vpcd` seen through pcscd.

The card simulator connects to vsmartcard's vpcd reader driver, which pcscd
loads; this script then talks to it through the ordinary PC/SC stack
(pyscard -> libpcsclite -> pcscd -> vpcd -> TCP -> tessera-se), as any
host application would:

  1. list the readers and pick vpcd's ("Virtual PCD 00 00", the reader on
     TCP port 35963), waiting up to --timeout seconds for the card;
  2. SELECT the PPSE (2PAY.SYS.DDF01): 9000, FCI template (tag 6F);
  3. SELECT the issuer security domain (A000000151000000): 9000;
  4. open an SCP02 secure channel with C-MAC (security level 01) on the
     GlobalPlatform test keys 40..4F, key version 20: INITIALIZE UPDATE,
     check the card cryptogram, EXTERNAL AUTHENTICATE;
  5. GET STATUS (ISD) wrapped with a C-MAC: 9000 (or 6310 / 6A88);
  6. the same command with one MAC bit flipped: 6982.

The SCP02 arithmetic is independent of Tessera's (written from GP Card
Spec 2.2 Appendix E) and is checked against a published vector by
`--self-test`, which needs no reader.

3DES: single DES from pycryptodome (Debian's python3-pycryptodome, module
`Cryptodome`; or pip's pycryptodome, module `Crypto`); triple DES is
composed here, so that keys whose halves are equal are not refused the way
pycryptodome's DES3 refuses them.

Usage:
  interop.py [--reader NAME] [--timeout SECONDS] [--host-challenge HEX]
  interop.py --self-test
Exit status 0 on success; the last line is "interop: N passed, M failed".
"""
import argparse
import os
import sys
import time

try:
    from Cryptodome.Cipher import DES  # Debian: python3-pycryptodome
except ImportError:  # pragma: no cover - depends on the machine
    try:
        from Crypto.Cipher import DES  # pip: pycryptodome
    except ImportError:
        sys.exit(
            "interop: needs pycryptodome (apt-get install python3-pycryptodome, "
            "or pip install pycryptodome)"
        )

VPCD_READER = "Virtual PCD 00 00"

PPSE = bytes.fromhex("325041592E5359532E4444463031")
ISD = bytes.fromhex("A000000151000000")
# GlobalPlatform default test key set (ENC = MAC = DEK), key version 0x20.
GP_TEST_KEY = bytes.fromhex("404142434445464748494A4B4C4D4E4F")
KVN = 0x20
# SCP02 "i" as the card implements it (15, or 55 with R-MAC): the C-MAC is
# computed on the modified APDU, and the ICV of every C-MAC after the first
# is the previous C-MAC DES-encrypted under the C-MAC key's left half.
ICV_ENCRYPTION = True
SECURITY_LEVEL_CMAC = 0x01


class Failure(Exception):
    """A check failed; the message says which and why."""


# ---------------------------------------------------------------------------
# SCP02 cryptography (GP Card Spec 2.2 Appendix E; ISO/IEC 9797-1)
# ---------------------------------------------------------------------------


def xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def pad_m2(data):
    """ISO/IEC 9797-1 padding method 2: 80, then 00 to a multiple of 8."""
    data = data + b"\x80"
    return data + b"\x00" * (-len(data) % 8)


def des_enc(key8, block):
    return DES.new(key8, DES.MODE_ECB).encrypt(block)


def des_dec(key8, block):
    return DES.new(key8, DES.MODE_ECB).decrypt(block)


def tdes_enc(key16, block):
    """Two-key triple DES, EDE, one block."""
    k1, k2 = key16[:8], key16[8:16]
    return des_enc(k1, des_dec(k2, des_enc(k1, block)))


def tdes_cbc(key16, data, iv=bytes(8)):
    assert len(data) % 8 == 0
    out, chain = b"", iv
    for i in range(0, len(data), 8):
        chain = tdes_enc(key16, xor(chain, data[i : i + 8]))
        out += chain
    return out


def full_tdes_mac(key16, data):
    """ISO 9797-1 MAC algorithm 1 with triple DES, padding 2, IV 0: the
    card and host cryptograms."""
    return tdes_cbc(key16, pad_m2(data))[-8:]


def retail_mac(key16, data, icv):
    """ISO 9797-1 MAC algorithm 3 (retail MAC), padding 2: single DES CBC
    under the left half, the final block then decrypted under the right half
    and encrypted under the left. The SCP02 C-MAC."""
    k1, k2 = key16[:8], key16[8:16]
    chain = icv
    data = pad_m2(data)
    for i in range(0, len(data), 8):
        chain = des_enc(k1, xor(chain, data[i : i + 8]))
    return des_enc(k1, des_dec(k2, chain))


def session_key(static_key, constant, ssc):
    """SCP02 session key: 3DES-CBC, IV 0, over constant || SSC || 00 * 12."""
    return tdes_cbc(static_key, constant + ssc + bytes(12))


DERIVE_CMAC = bytes.fromhex("0101")
DERIVE_RMAC = bytes.fromhex("0102")
DERIVE_DEK = bytes.fromhex("0181")
DERIVE_ENC = bytes.fromhex("0182")


def card_cryptogram(s_enc, host_challenge, ssc, card_challenge):
    return full_tdes_mac(s_enc, host_challenge + ssc + card_challenge)


def host_cryptogram(s_enc, host_challenge, ssc, card_challenge):
    return full_tdes_mac(s_enc, ssc + card_challenge + host_challenge)


def parse_apdu(apdu):
    """Split a short C-APDU into (header, data, le) where le is None when
    absent (cases 1 and 3)."""
    if len(apdu) < 4:
        raise ValueError("an APDU has at least 4 bytes")
    header, body = apdu[:4], apdu[4:]
    if not body:
        return header, b"", None  # case 1
    if len(body) == 1:
        return header, b"", body  # case 2
    lc = body[0]
    if lc == 0 or len(body) not in (1 + lc, 2 + lc):
        raise ValueError("not a short case 3/4 APDU")
    return header, body[1 : 1 + lc], body[1 + lc :] or None


class Scp02:
    """The host side of an SCP02 session, C-MAC only (security level 01)."""

    def __init__(self, enc_key, mac_key, ssc, icv_encryption=ICV_ENCRYPTION):
        self.s_enc = session_key(enc_key, DERIVE_ENC, ssc)
        self.c_mac_key = session_key(mac_key, DERIVE_CMAC, ssc)
        self.icv_encryption = icv_encryption
        self.last_mac = None  # None: the next C-MAC is the session's first

    def next_icv(self):
        if self.last_mac is None:
            return bytes(8)
        if self.icv_encryption:
            return des_enc(self.c_mac_key[:8], self.last_mac)
        return self.last_mac

    def wrap(self, apdu):
        """C-MAC on the modified APDU: CLA | 04, Lc + 8, MAC appended
        after the data, Le (if any) kept last."""
        header, data, le = parse_apdu(apdu)
        if len(data) + 8 > 255:
            raise ValueError("command too long to wrap")
        mod_header = bytes([header[0] | 0x04]) + header[1:4] + bytes([len(data) + 8])
        mac = retail_mac(self.c_mac_key, mod_header + data, self.next_icv())
        self.last_mac = mac
        return mod_header + data + mac + (le or b"")

    def external_authenticate(self, host_challenge, ssc, card_challenge, level):
        crypt = host_cryptogram(self.s_enc, host_challenge, ssc, card_challenge)
        return self.wrap(bytes([0x80, 0x82, level, 0x00, 0x08]) + crypt)


def self_test():
    """The published SCP02 vector (i = 55, ICV encryption) for this
    script's arithmetic: session keys, card cryptogram, EXTERNAL
    AUTHENTICATE and two wrapped commands."""
    enc = bytes.fromhex("100102030405060708090A0B0C0D0E0F")
    mac = bytes.fromhex("101102030405060708090A0B0C0D0E0F")
    ssc = bytes.fromhex("0001")
    host_challenge = bytes.fromhex("40A62C37FA6304F8")
    card_challenge = bytes.fromhex("6B4524ABEE7C")
    scp = Scp02(enc, mac, ssc, icv_encryption=True)
    checks = [
        (
            "card cryptogram",
            card_cryptogram(scp.s_enc, host_challenge, ssc, card_challenge),
            "F32EA3838BC148F3",
        ),
        (
            "EXTERNAL AUTHENTICATE",
            scp.external_authenticate(host_challenge, ssc, card_challenge, 0x01),
            "8482010010BA6961667737C5BCEBECE14C7D6A4376",
        ),
        ("wrap 80F22002 (case 1)", scp.wrap(bytes.fromhex("80F22002")), "84F220020814DB34FA4341DCA8"),
        (
            "wrap 80CA006600 (case 2)",
            scp.wrap(bytes.fromhex("80CA006600")),
            "84CA00660855ED7C5FF069512B00",
        ),
    ]
    passed = failed = 0
    for name, got, want in checks:
        if got.hex().upper() == want:
            passed += 1
            print(f"ok   self-test {name}: {want}")
        else:
            failed += 1
            print(f"FAIL self-test {name}: got {got.hex().upper()}, want {want}")
    # The padding and APDU parser on their edges.
    for name, cond in [
        ("pad_m2 of 8 bytes adds a block", len(pad_m2(bytes(8))) == 16),
        ("pad_m2 of 7 bytes ends in 80", pad_m2(bytes(7))[-1] == 0x80),
        ("case 3 parses", parse_apdu(bytes.fromhex("80F28000024F00")) == (bytes.fromhex("80F28000"), bytes.fromhex("4F00"), None)),
        ("case 4 parses", parse_apdu(bytes.fromhex("00A4040002A00000"))[2] == b"\x00"),
    ]:
        if cond:
            passed += 1
            print(f"ok   self-test {name}")
        else:
            failed += 1
            print(f"FAIL self-test {name}")
    print(f"interop: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


# ---------------------------------------------------------------------------
# PC/SC
# ---------------------------------------------------------------------------


def hexs(b):
    return b.hex().upper()


class Run:
    def __init__(self):
        self.passed = 0

    def ok(self, what):
        self.passed += 1
        print(f"ok   {what}", flush=True)


def find_reader(wanted, timeout):
    """The PC/SC reader to use and a connection to its card, waiting up to
    `timeout` seconds for the reader to appear and the card to be present."""
    try:
        from smartcard.System import readers
        from smartcard.Exceptions import CardConnectionException, NoCardException
    except ImportError as e:
        raise Failure(
            f"pyscard is missing ({e}): install python3-pyscard and run this with "
            "/usr/bin/python3 (a pyenv or venv python does not see Debian's packages)"
        ) from e

    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    listed = False
    while True:
        try:
            names = readers()
        except Exception as e:  # pcscd down: EstablishContextException etc.
            names, last_error = [], f"cannot list PC/SC readers ({e}); is pcscd running?"
        if names and not listed:
            print("readers: " + ", ".join(str(r) for r in names), flush=True)
            listed = True
        match = [r for r in names if str(r) == wanted] or [r for r in names if wanted in str(r)]
        if names and not match:
            last_error = f"no reader named {wanted!r} among {[str(r) for r in names]}"
        elif not names and "pcscd" not in last_error:
            last_error = "no PC/SC readers at all; is vsmartcard-vpcd installed and pcscd (re)started?"
        for reader in match:
            conn = reader.createConnection()
            try:
                conn.connect()
                return reader, conn
            except NoCardException:
                last_error = f"no card in {reader} (is `tessera-se vpcd` connected to port 35963?)"
            except CardConnectionException as e:
                last_error = f"cannot connect to the card in {reader}: {e}"
        if time.monotonic() >= deadline:
            raise Failure(f"after {timeout:g} s: {last_error}")
        time.sleep(0.25)


def transmit(conn, apdu, what):
    """Send one APDU; returns (data, sw). A 61xx is followed by GET
    RESPONSE, so a card that answers the T=0 way still passes."""
    print(f"  >> {hexs(apdu)}   ({what})", flush=True)
    try:
        data, sw1, sw2 = conn.transmit(list(apdu))
    except Exception as e:
        raise Failure(f"{what}: transmit failed: {e}") from e
    data = bytes(data)
    while sw1 == 0x61:
        get_response = bytes([apdu[0] & 0x03, 0xC0, 0x00, 0x00, sw2])
        print(f"  >> {hexs(get_response)}   (GET RESPONSE)", flush=True)
        more, sw1, sw2 = conn.transmit(list(get_response))
        data += bytes(more)
    sw = (sw1 << 8) | sw2
    print(f"  << {hexs(data) + ' ' if data else ''}{sw:04X}", flush=True)
    return data, sw


def expect_sw(what, sw, allowed):
    if sw not in allowed:
        want = " or ".join(f"{s:04X}" for s in allowed)
        raise Failure(f"{what}: status {sw:04X}, expected {want}")


def run(args, r):
    reader, conn = find_reader(args.reader, args.timeout)
    r.ok(f"card present in {reader!s}: ATR {hexs(bytes(conn.getATR()))}")

    # SELECT PPSE.
    data, sw = transmit(conn, bytes([0x00, 0xA4, 0x04, 0x00, len(PPSE)]) + PPSE + b"\x00", "SELECT PPSE")
    expect_sw("SELECT PPSE", sw, [0x9000])
    if not data or data[0] != 0x6F:
        raise Failure(f"SELECT PPSE: answer {hexs(data)} is not an FCI template (6F)")
    r.ok("SELECT PPSE: 9000, FCI template 6F")
    if args.expect_aid:
        aid = bytes.fromhex(args.expect_aid)
        if aid not in data:
            raise Failure(f"SELECT PPSE: {hexs(aid)} is not listed in {hexs(data)}")
        r.ok(f"SELECT PPSE lists the personalised application {hexs(aid)}")

    # SELECT ISD.
    data, sw = transmit(conn, bytes([0x00, 0xA4, 0x04, 0x00, len(ISD)]) + ISD, "SELECT ISD")
    expect_sw("SELECT ISD", sw, [0x9000])
    r.ok("SELECT ISD: 9000")

    # INITIALIZE UPDATE.
    host_challenge = bytes.fromhex(args.host_challenge) if args.host_challenge else os.urandom(8)
    if len(host_challenge) != 8:
        raise Failure("--host-challenge must be 8 bytes")
    data, sw = transmit(conn, bytes([0x80, 0x50, KVN, 0x00, 0x08]) + host_challenge + b"\x00", "INITIALIZE UPDATE")
    expect_sw("INITIALIZE UPDATE", sw, [0x9000])
    if len(data) != 28:
        raise Failure(f"INITIALIZE UPDATE: {len(data)} bytes of data, expected 28")
    kdd, kvn, scp_id = data[0:10], data[10], data[11]
    ssc, card_challenge, card_crypto = data[12:14], data[14:20], data[20:28]
    print(
        f"  KDD {hexs(kdd)} KVN {kvn:02X} SCP {scp_id:02X} SSC {hexs(ssc)} "
        f"card challenge {hexs(card_challenge)} card cryptogram {hexs(card_crypto)}"
    )
    if scp_id != 0x02:
        raise Failure(f"INITIALIZE UPDATE: SCP identifier {scp_id:02X}, expected 02")
    if kvn != KVN:
        raise Failure(f"INITIALIZE UPDATE: key version {kvn:02X}, expected {KVN:02X}")
    scp = Scp02(GP_TEST_KEY, GP_TEST_KEY, ssc)
    expected = card_cryptogram(scp.s_enc, host_challenge, ssc, card_challenge)
    if card_crypto != expected:
        raise Failure(
            f"INITIALIZE UPDATE: card cryptogram {hexs(card_crypto)}, expected {hexs(expected)} "
            "(wrong keys, or a different session key derivation)"
        )
    r.ok("INITIALIZE UPDATE: 9000, SCP02, card cryptogram verified")

    # EXTERNAL AUTHENTICATE.
    ext_auth = scp.external_authenticate(host_challenge, ssc, card_challenge, SECURITY_LEVEL_CMAC)
    _, sw = transmit(conn, ext_auth, "EXTERNAL AUTHENTICATE, C-MAC")
    expect_sw("EXTERNAL AUTHENTICATE", sw, [0x9000])
    r.ok("EXTERNAL AUTHENTICATE: 9000, secure channel open (C-MAC)")

    # GET STATUS of the ISD under C-MAC. 6310: more data; 6A88: nothing
    # matched (both prove the MAC was accepted).
    get_status = bytes.fromhex("80F28000024F00")
    _, sw = transmit(conn, scp.wrap(get_status), "GET STATUS ISD, C-MAC")
    expect_sw("GET STATUS (C-MAC)", sw, [0x9000, 0x6310, 0x6A88])
    r.ok(f"GET STATUS with a valid C-MAC: {sw:04X}")

    # The same command with one MAC bit flipped.
    tampered = bytearray(scp.wrap(get_status))
    tampered[-1] ^= 0x01  # the MAC is last: a case 3 APDU has no Le
    _, sw = transmit(conn, bytes(tampered), "GET STATUS ISD, C-MAC with one bit flipped")
    expect_sw("GET STATUS (tampered C-MAC)", sw, [0x6982])
    r.ok("GET STATUS with a tampered C-MAC: 6982")

    try:
        conn.disconnect()
    except Exception:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="check the SCP02 arithmetic against a published vector; no reader needed")
    ap.add_argument("--reader", default=VPCD_READER, help=f"reader name, or a part of it (default {VPCD_READER!r})")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reader and the card (default 10)")
    ap.add_argument("--expect-aid", help="a payment application AID the PPSE must list (a personalised card)")
    ap.add_argument("--host-challenge", help="8-byte host challenge in hex (default: random)")
    args = ap.parse_args()

    if args.self_test:
        return self_test()

    r = Run()
    try:
        run(args, r)
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        print(f"interop: {r.passed} passed, 1 failed", flush=True)
        return 1
    print(f"interop: {r.passed} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
