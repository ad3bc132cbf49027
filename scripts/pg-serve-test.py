#!/usr/bin/env python3
"""The engine on a replicated PostgreSQL cluster, end to end (issue 18).

`tessera serve --backend` on a 3-node cluster (scripts/pg-cluster.sh),
driven by `tessera-loadgen run`, which writes every answer (--answers):

1. Node A serves every shard. A standby is killed mid-run: every answer
   must be as expected (loadgen exits 0). The standby rejoins.
2. Both standbys are killed mid-run: commits cannot reach a quorum, so
   approvals wait and leave as 91 (ATC_AUTHORITY_DOWN) at the deadline;
   nothing is approved without a standby. They rejoin: approvals resume.
   Then a token is suspended through the database (`tessera vault suspend
   --backend`) while A serves it.
3. A second run; the primary is killed mid-run, and the most advanced
   standby promoted. Answers in between may be 91 (no ATC authority);
   the suspended token is never approved.
4. A stops. Node B starts on a copy of the vault taken before any of
   this (it has seen no ATC and no suspend) and takes every shard. The
   same transactions again, after the retry window: every approval A
   acknowledged is now declined (its ATC is in the database), and the
   suspended token stays declined (B took its state from the database).
5. Node C starts with an empty data directory (it loads its shards'
   tokens from the database) and takes shards 0-2047 from B, which keeps
   serving. A third set of transactions to B, then to C: each ATC is
   approved exactly once, by the owner of its token's shard, and the
   stale owner's approvals on the moved shards are refused by the epoch
   (96, SHARD_NOT_OWNED).

Run from the repository root after `cargo build --release`. Exit 0 when
every check holds; the figures go to stdout.
"""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.path.join("target", "release")
CONFIG = "config/tessera.toml"
PORT_BASE = int(os.environ.get("PG_SERVE_TEST_PORT", "59432"))
LISTEN = {"a": 38583, "b": 38584, "c": 38585}
TOKENS = 3000
RETRY_WINDOW_SECS = 10
PSQL = "/usr/lib/postgresql/15/bin/psql"

failures = []

# What one run leaves in a vault that the next run's oracle does not know
# (each run expects a fresh vault): a token locked by the earlier run's
# guessing, a retransmission key it used. Declines, never approvals.
CARRIED = {"TOKEN_LOCKED", "DUPLICATE_TRANSMISSION"}


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def run(*args, env=None, capture=False):
    r = subprocess.run(args, env=env, text=True, capture_output=True)
    if r.returncode != 0 and not capture:
        sys.exit(f"{' '.join(args[:3])} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def tessera(*args, env=None):
    return run(os.path.join(BIN, "tessera"), "--config", CONFIG, *args, env=env)


def cluster(*args):
    env = dict(os.environ, PG_CLUSTER_DIR=CLUSTER_DIR, PG_CLUSTER_PORT=str(PORT_BASE))
    return run("bash", "scripts/pg-cluster.sh", *args, env=env)


def sql(query):
    """Run a query on whichever node is the primary now."""
    for i in range(3):
        r = subprocess.run(
            [PSQL, "-h", "127.0.0.1", "-p", str(PORT_BASE + i), "-U", "postgres", "-d", "tessera",
             "-XAtqc", "select not pg_is_in_recovery()"],
            text=True, capture_output=True)
        if r.stdout.strip() == "t":
            r = run(PSQL, "-h", "127.0.0.1", "-p", str(PORT_BASE + i), "-U", "postgres",
                    "-d", "tessera", "-XAtqF", "\t", "-c", query)
            return [line.split("\t") for line in r.stdout.splitlines() if line]
    sys.exit("no primary answers")


class Node:
    """`tessera serve --backend` on a vault directory."""

    def __init__(self, name, vault, shards="all"):
        self.name = name
        self.log_path = os.path.join(WORK, f"serve-{name}.log")
        self.log = open(self.log_path, "w")
        args = [os.path.join(BIN, "tessera"), "--config", CONFIG, "serve", "--data-dir", vault,
                "--listen", f"127.0.0.1:{LISTEN[name]}", "--backend", MULTI_URL,
                "--node", name, "--shards", shards,
                "--retry-window-secs", str(RETRY_WINDOW_SECS)]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if "serving" in open(self.log_path).read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        sys.exit(f"node {name} did not start:\n{open(self.log_path).read()}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def loadgen(node, seed, duration, answers, during=None):
    first_atc = {1: 1, 4: 100, 2: 200, 3: 400}[seed]
    """A loadgen run against `node`; `during(elapsed_s)` is polled while
    it runs. Returns (exit code, answers by id, report)."""
    report = os.path.join(WORK, f"report-{os.path.basename(answers)}")
    args = [os.path.join(BIN, "tessera-loadgen"), "--config", CONFIG, "run",
            "--target", f"127.0.0.1:{LISTEN[node.name]}", "--export", EXPORT,
            "--duration", str(duration), "--rate", "2000", "--connections", "2",
            "--seed", str(seed), "--first-atc", str(first_atc), "--answers", answers, "--report", report]
    out = open(answers + ".log", "w")
    proc = subprocess.Popen(args, stdout=out, stderr=out)
    started = time.time()
    while proc.poll() is None:
        if during:
            during(time.time() - started)
        time.sleep(0.1)
    out.close()
    by_id = {}
    with open(answers) as f:
        for line in f:
            a = json.loads(line)
            check_unique = a["id"] not in by_id
            if not check_unique:
                sys.exit(f"{answers}: id {a['id']} twice")
            by_id[a["id"]] = a
    with open(os.path.join(report, "report.json")) as f:
        rep = json.load(f)
    return proc.returncode, by_id, rep


def approved_valid(answers):
    return {i for i, a in answers.items() if a["kind"] == "valid" and a["code"] == "00"}


def once(actions):
    """Run each (at_seconds, function) once when its time comes."""
    done = set()

    def during(elapsed):
        for i, (at, fn) in enumerate(actions):
            if i not in done and elapsed >= at:
                done.add(i)
                fn()
    return during


def main():
    global WORK, CLUSTER_DIR, MULTI_URL, EXPORT
    WORK = tempfile.mkdtemp(prefix="tessera-pg-serve-")
    # Not under WORK (mode 700): the servers run as the postgres user.
    CLUSTER_DIR = f"/tmp/tessera-pg-serve-cluster-{os.getpid()}"
    nodes = []
    try:
        url = cluster("up").stdout.strip().splitlines()[-1]
        hosts = ",".join(f"127.0.0.1:{PORT_BASE + i}" for i in range(3))
        MULTI_URL = (f"postgres://postgres@{hosts}/tessera"
                     "?target_session_attrs=read-write&connect_timeout=2")
        vault = os.path.join(WORK, "vault-a")
        tessera("vault", "provision", "--data-dir", vault, "--count", str(TOKENS), "--seed", "18",
                "--restricted-every", "50")
        EXPORT = os.path.join(WORK, "tokens.jsonl")
        tessera("vault", "export", "--data-dir", vault, "--out", EXPORT, "--with-pan")
        tessera("db", "migrate", "--backend", url)
        imported = tessera("db", "import", "--data-dir", vault, "--backend", url).stdout.strip()
        check(imported == f"imported: {TOKENS} tokens", f"db import: {imported}")
        pristine_b = os.path.join(WORK, "vault-b")
        empty_c = os.path.join(WORK, "vault-c")
        shutil.copytree(vault, pristine_b)

        # 1. A standby dies mid-run: nothing shows.
        a = Node("a", vault)
        nodes.append(a)
        killed = []

        def kill_standby():
            r = cluster("kill-standby")
            killed.append(r.stderr.split()[1])
        rc1, ans1, rep1 = loadgen(a, 1, 8, os.path.join(WORK, "a1.jsonl"),
                                  once([(3, kill_standby)]))
        check(rc1 == 0 and rep1["mismatches"] == 0,
              f"run 1, a standby ({killed}) killed mid-run: {rep1['answered']} answers, "
              f"{rep1['mismatches']} mismatches, {len(approved_valid(ans1))} approvals")
        cluster("rejoin", killed[0])

        # 2. Both standbys lost: nothing approved without a quorum.
        lost = []

        def kill_both():
            for _ in range(2):
                lost.append(cluster("kill-standby").stderr.split()[1])

        def rejoin_both():
            for n in lost:
                cluster("rejoin", n)
        rc4, ans4, rep4 = loadgen(a, 4, 14, os.path.join(WORK, "a4.jsonl"),
                                  once([(3, kill_both), (10, rejoin_both)]))
        reasons4 = collections.Counter(
            x["reason"] or x["code"] for x in ans4.values() if x["kind"] == "valid")
        odd4 = [x for x in ans4.values() if x["kind"] == "valid"
                and x["code"] not in ("00", "91") and x["reason"] not in CARRIED]
        check(reasons4.get("ATC_AUTHORITY_DOWN", 0) > 0 and reasons4.get("00", 0) > 0
              and not odd4,
              f"run 1b, both standbys ({lost}) lost for 7 s: valid requests answered "
              f"{dict(reasons4)}")

        # 2, continued: a suspend through the database while A serves the token.
        valid_tokens = collections.Counter(
            x["token"] for x in ans1.values() if x["kind"] == "valid" and x["code"] == "00")
        suspended = valid_tokens.most_common(1)[0][0]
        r = tessera("vault", "suspend", "--backend", MULTI_URL, "--data-dir", vault, suspended)
        check("suspended in the database" in r.stdout,
              f"suspend acknowledged by the database: {r.stdout.strip()}")

        # 3. The primary dies mid-run; the most advanced standby is promoted.
        rc2, ans2, rep2 = loadgen(a, 2, 12, os.path.join(WORK, "a2.jsonl"),
                                  once([(3, lambda: cluster("kill-primary")),
                                        (6, lambda: cluster("promote"))]))
        codes2 = collections.Counter(
            x["code"] for x in ans2.values() if x["kind"] == "valid")
        check(all(x["code"] != "00" for x in ans2.values() if x["token"] == suspended),
              "run 2: the suspended token is never approved")
        # Besides 00 and 91 (no authority while there is no primary), a
        # valid request may meet what earlier runs left (CARRIED), and the
        # suspended token.
        reasons2 = collections.Counter(
            x["reason"] or x["code"] for x in ans2.values() if x["kind"] == "valid")
        stray = [x for x in ans2.values() if x["kind"] == "valid"
                 and x["code"] not in ("00", "91") and x["reason"] not in CARRIED
                 and not (x["token"] == suspended and x["reason"] == "TOKEN_NOT_ACTIVE")]
        check(not stray, f"run 2, primary killed and promoted: valid requests answered "
              f"{dict(reasons2)} (00, 91 while no primary, what run 1 left, the suspended token)")
        sent_suspended = sum(1 for x in ans2.values() if x["token"] == suspended)
        check(codes2.get("00", 0) > 0 and sent_suspended > 0,
              f"run 2: {rep2['answered']} answers, {rep2['mismatches']} mismatches "
              f"(the suspended token requested {sent_suspended} times)")
        a.stop()
        nodes.remove(a)
        acked = sum(len(approved_valid(x)) for x in (ans1, ans4, ans2))
        logged = int(sql("select count(*) from atc_log")[0][0])
        # Every acknowledged approval is logged; beyond them, at most the
        # approvals answered 91 while the quorum was lost (their commit
        # completed once the standbys were back: consumed, never approved).
        down = sum(1 for ans in (ans4, ans2) for x in ans.values()
                   if x["reason"] == "ATC_AUTHORITY_DOWN")
        check(acked <= logged <= acked + down,
              f"atc_log holds {logged} ATCs: the {acked} approvals A acknowledged, and "
              f"{logged - acked} of the {down} answered 91 while the quorum was lost")

        # 4. B, on a vault that saw none of it, after the retry window.
        time.sleep(RETRY_WINDOW_SECS + 1)
        b = Node("b", pristine_b)
        nodes.append(b)
        _, bans1, _ = loadgen(b, 1, 8, os.path.join(WORK, "b1.jsonl"))
        _, bans4, _ = loadgen(b, 4, 14, os.path.join(WORK, "b4.jsonl"))
        _, bans2, _ = loadgen(b, 2, 12, os.path.join(WORK, "b2.jsonl"))
        pairs = ((ans1, bans1), (ans4, bans4), (ans2, bans2))
        again = [i for ans, bans in pairs for i in approved_valid(ans)
                 if bans.get(i, {}).get("code") == "00"]
        resent = sum(1 for ans, bans in pairs for i in approved_valid(ans) if i in bans)
        check(resent > 0 and not again,
              f"node B: {resent} of A's acknowledged approvals sent again, {len(again)} approved again")
        why = collections.Counter(
            f'{bans[i]["code"]} {bans[i]["reason"]}'
            for ans, bans in pairs
            for i in approved_valid(ans) if i in bans)
        print(f"     (their answers on B: {dict(why)})")
        to_suspended = [x for bans in (bans1, bans4, bans2) for x in bans.values()
                        if x["token"] == suspended and x["kind"] == "valid"]
        taken = [line for line in open(b.log_path) if "lifecycle states taken" in line]
        check(to_suspended and all(x["code"] == "62" for x in to_suspended)
              and taken and " 0 lifecycle" not in taken[0],
              f"node B took the suspend from the database at start ({taken[0].strip() if taken else '?'}), "
              f"and declined all {len(to_suspended)} requests for the token (62)")

        # 5. C takes half the shards from B, which keeps serving.
        c = Node("c", empty_c, shards="0-2047")
        nodes.append(c)
        started = [line for line in open(c.log_path) if "tokens loaded" in line]
        low = int(sql("select count(*) from tokens where shard < 2048")[0][0])
        check(started and f"; {low} tokens loaded" in started[0],
              f"node C, from an empty directory, loaded the {low} tokens of its shards: "
              f"{started[0].strip() if started else '?'}")
        shard = {t: int(s) for t, s in sql("select token, shard from tokens")}
        _, b3, _ = loadgen(b, 3, 6, os.path.join(WORK, "b3.jsonl"))
        _, c3, _ = loadgen(c, 3, 6, os.path.join(WORK, "c3.jsonl"))
        both = [i for i in b3 if i in c3 and b3[i]["kind"] == "valid"]
        twice = [i for i in both if b3[i]["code"] == "00" and c3[i]["code"] == "00"]
        b_low = [i for i in both if b3[i]["code"] == "00" and shard.get(b3[i]["token"], 0) < 2048]
        c_high = [i for i in both if c3[i]["code"] == "00" and shard.get(c3[i]["token"], 0) >= 2048]
        # Every request on a moved shard that B's own vault approved went to
        # the authority and was refused by the epoch.
        b_moved = [i for i in both if shard.get(b3[i]["token"], 0) < 2048]
        # (B's vault declines some itself, for what earlier runs left.)
        local = {"TOKEN_LOCKED", "TOKEN_NOT_ACTIVE", "DUPLICATE_TRANSMISSION"}
        b_refused = [i for i in b_moved if b3[i]["reason"] not in local]
        b_refused_96 = [i for i in b_refused
                        if b3[i]["code"] == "96" and b3[i]["reason"] == "SHARD_NOT_OWNED"]
        n_b = sum(1 for i in both if b3[i]["code"] == "00")
        n_c = sum(1 for i in both if c3[i]["code"] == "00")
        check(not twice and not b_low and not c_high and n_b > 0 and n_c > 0,
              f"two nodes, shards split: {len(both)} valid requests to both, approved by B {n_b}"
              f" (shards 2048-4095), by C {n_c} (shards 0-2047), by both {len(twice)}")
        check(len(b_refused) > 0 and len(b_refused_96) == len(b_refused),
              f"stale owner B: {len(b_refused_96)} of {len(b_refused)} requests on the moved shards"
              " refused (96) by the epoch")
    finally:
        for n in nodes:
            n.stop()
        subprocess.run(["bash", "scripts/pg-cluster.sh", "down"],
                       env=dict(os.environ, PG_CLUSTER_DIR=CLUSTER_DIR,
                                PG_CLUSTER_PORT=str(PORT_BASE)),
                       capture_output=True)
    if failures:
        print(f"{len(failures)} check(s) failed; logs in {WORK}")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
