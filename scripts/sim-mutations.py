#!/usr/bin/env python3
"""Prove that the whole-path simulation (tessera-sim) can fail.

For each deliberate bug of issue 17: patch it into the working tree, build
tessera-sim (debug), run its default seed budget, record the first failing
seed, the invariant it broke and the time it took, and put the file back.
Prints a Markdown table for docs/simulation.md.

    python3 scripts/sim-mutations.py [--seeds N]

Run it on a clean tree: it restores each file from its own copy, not git.
"""

import argparse
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (what the bug is, file, [(text there, text with the bug), ...])
BUGS = [
    (
        "the journal's fdatasync removed (`write_and_sync` returns before `files::sync_data`)",
        "engine/src/vault/journal.rs",
        [('                "fdatasync of {} failed: injected",\n                seg.path.display()\n            ));\n        }\n        super::files::sync_data(',
        '                "fdatasync of {} failed: injected",\n                seg.path.display()\n            ));\n        }\n        #[allow(unreachable_code)]\n        return Ok(());\n        super::files::sync_data(')],
    ),
    (
        "acknowledged before the group commit completes (`wait_durable` in sync mode returns at once)",
        "engine/src/vault/journal.rs",
        [("Durability::Sync => self.wait_for(lsn.0, false),", "Durability::Sync => Ok(()),")],
    ),
    (
        "the ATC window not rebuilt after recovery (replayed `Atc` records not accepted)",
        "engine/src/vault/mod.rs",
        [("if replay::accept(&rec.atc, atc).is_ok() {", "if true {")],
    ),
    (
        "answers from a stale cache entry (the retransmission cache answers by key alone, whatever the content)",
        "engine/src/pipeline/mod.rs",
        [("Some(c) if c.digest == *digest => {", "Some(c) => {")],
    ),
    (
        "answers from an expired cache entry (the retransmission cache never ages out)",
        "engine/src/pipeline/retransmit.rs",
        [("if now.saturating_sub(*t) < RETRANSMISSION_WINDOW_SECS {", "if true {")],
    ),
    (
        "a new journal file's directory entry never synced (`init_segment` skips `sync_dir`)",
        "engine/src/vault/journal.rs",
        [(
            '    super::files::sync_all(&file, &path).map_err(io_err("fsync", &path))?;\n    sync_dir(dir).map_err(io_err("fsync directory", dir))?;\n',
            '    super::files::sync_all(&file, &path).map_err(io_err("fsync", &path))?;\n    let _ = dir;\n',
        )],
    ),
    (
        "the issuer link never forgets a request at its deadline (`Outstanding::forget` removes nothing)",
        "engine/src/issuer/outstanding.rs",
        [("                self.pending.remove(key);\n", "")],
    ),
    (
        "the listener never closes a client that stops reading (no queue limit, no write timeout)",
        "engine/src/server/write_queue.rs",
        [
            ("        self.queued() > limit\n", "        let _ = limit;\n        false\n"),
            ("        self.stalled_since\n            .is_some_and", "        let _ = (now, timeout);\n        None::<Instant>\n            .is_some_and"),
        ],
    ),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=300)
    args = ap.parse_args()
    rows = []
    for name, path, edits in BUGS:
        f = ROOT / path
        text = f.read_text()
        buggy = text
        for old, new in edits:
            if buggy.count(old) != 1:
                print(f"cannot place bug {name!r}: {path} has {buggy.count(old)} matches", file=sys.stderr)
                return 2
            buggy = buggy.replace(old, new)
        try:
            f.write_text(buggy)
            build = subprocess.run(
                ["cargo", "build", "-q", "-p", "tessera-sim"],
                cwd=ROOT, capture_output=True, text=True,
            )
            if build.returncode != 0:
                print(build.stderr, file=sys.stderr)
                return 2
            t0 = time.monotonic()
            run = subprocess.run(
                [str(ROOT / "target/debug/tessera-sim"), "--seeds", str(args.seeds)],
                cwd=ROOT, capture_output=True, text=True,
            )
            took = time.monotonic() - t0
        finally:
            f.write_text(text)
        failed = [l for l in run.stdout.splitlines() if l.startswith("FAILED ")]
        if run.returncode == 0 or not failed:
            rows.append(f"| {name} | not found in {args.seeds} seeds | {took:.2f} s |")
        else:
            rows.append(f"| {name} | {failed[0][len('FAILED '):]} | {took:.2f} s |")
        print(rows[-1], flush=True)
    print()
    print("| bug introduced | first failure (seed, step, invariant) | time to find it |")
    print("|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
