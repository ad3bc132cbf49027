#!/usr/bin/env python3
"""Authorizations per second and latency: `tessera serve` on the embedded
vault against `tessera serve --backend` on a 3-node PostgreSQL cluster
(scripts/pg-cluster.sh, quorum commit), in the same run, alternating
(BENCHMARKS.md, "The engine on the replicated vault").

Each round runs, for each backend, on a fresh copy of one vault:
- closed loop: --in-flight per connection, as fast as the engine answers
  (throughput, and its latency at saturation);
- open loop: --rate requests per second (latency at a load both sustain).
Every answer is checked by tessera-loadgen (a run with a mismatch is
reported as such). The PostgreSQL runs start each card's ATC above the
previous run's (the database remembers them; each embedded run starts
from a fresh vault). Prints one line per run, then medians.

Run from the repository root after `cargo build --release`.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.join("target", "release")
CONFIG = "config/tessera.toml"
PORT_BASE = int(os.environ.get("PG_SERVE_BENCH_PORT", "59532"))
LISTEN = 38593


def run(*args, env=None):
    r = subprocess.run(args, env=env, text=True, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def tessera(*args):
    return run(os.path.join(BIN, "tessera"), "--config", CONFIG, *args)


def serve(work, vault, backend):
    log_path = os.path.join(work, "serve.log")
    log = open(log_path, "w")
    args = [os.path.join(BIN, "tessera"), "--config", CONFIG, "serve", "--data-dir", vault,
            "--listen", f"127.0.0.1:{LISTEN}"]
    if backend:
        args += ["--backend", backend, "--node", "bench"]
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        if "serving" in open(log_path).read():
            return proc, log
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    sys.exit(f"tessera serve did not start:\n{open(log_path).read()}")


def stop(proc, log):
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    log.close()


def loadgen(work, export, load, duration, first_atc, pool):
    report = os.path.join(work, "report")
    args = [os.path.join(BIN, "tessera-loadgen"), "--config", CONFIG, "run",
            "--target", f"127.0.0.1:{LISTEN}", "--export", export,
            "--duration", str(duration), "--connections", "4", "--faults", "none",
            "--first-atc", str(first_atc), "--pool", str(pool), "--report", report] + load
    r = subprocess.run(args, text=True, capture_output=True)
    with open(os.path.join(report, "report.json")) as f:
        rep = json.load(f)
    return rep, r.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--pool", type=int, default=1000000)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tessera-pg-bench-")
    cluster_dir = f"/tmp/tessera-pg-bench-cluster-{os.getpid()}"
    env = dict(os.environ, PG_CLUSTER_DIR=cluster_dir, PG_CLUSTER_PORT=str(PORT_BASE))
    results = {}
    try:
        url = run("bash", "scripts/pg-cluster.sh", "up", env=env).stdout.strip().splitlines()[-1]
        vault = os.path.join(work, "vault")
        tessera("vault", "provision", "--data-dir", vault, "--count", str(a.tokens),
                "--seed", "18", "--states", "active=100")
        export = os.path.join(work, "tokens.jsonl")
        tessera("vault", "export", "--data-dir", vault, "--out", export, "--with-pan")
        tessera("db", "migrate", "--backend", url)
        tessera("db", "import", "--data-dir", vault, "--backend", url)
        loads = {
            "closed": ["--in-flight", str(a.in_flight)],
            "open": ["--rate", str(a.rate)],
        }
        first_atc = 1
        for r in range(a.rounds):
            for mode, load in loads.items():
                for backend in ("embedded", "postgres"):
                    copy = os.path.join(work, "copy")
                    shutil.rmtree(copy, ignore_errors=True)
                    shutil.copytree(vault, copy)
                    proc, log = serve(work, copy, url if backend == "postgres" else None)
                    try:
                        pool = a.pool if mode == "closed" else int(a.rate * a.duration * 1.5) + 10000
                        rep, rc = loadgen(work, export, load, a.duration, first_atc, pool)
                    finally:
                        stop(proc, log)
                    if backend == "postgres":
                        first_atc += 100
                    line = (f"round {r + 1} {mode:6} {backend:8} {rep['throughput_per_s']:9.0f}/s "
                            f"p50 {rep['latency_us']['p50'] / 1000:6.2f} ms "
                            f"p99 {rep['latency_us']['p99'] / 1000:7.2f} ms "
                            f"mismatches {rep['mismatches']}"
                            f"{' (pool exhausted)' if rep['pool_exhausted'] else ''}")
                    print(line, flush=True)
                    results.setdefault((mode, backend), []).append(rep)
    finally:
        subprocess.run(["bash", "scripts/pg-cluster.sh", "down"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print("\nmedians over", a.rounds, "rounds:")
    print("| load | vault | authorizations/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for (mode, backend), reps in results.items():
        tput = statistics.median(x["throughput_per_s"] for x in reps)
        p50 = statistics.median(x["latency_us"]["p50"] for x in reps) / 1000
        p99 = statistics.median(x["latency_us"]["p99"] for x in reps) / 1000
        load = f"closed, {a.in_flight} in flight x 4" if mode == "closed" else f"open, {a.rate}/s"
        print(f"| {load} | {backend} | {tput:,.0f} | {p50:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
