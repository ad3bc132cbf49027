#!/usr/bin/env python3
"""Print the median of every criterion benchmark under target/criterion as a
Markdown table (criterion's console line shows the mean; we quote medians,
which a noisy shared machine disturbs less)."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rows = []
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    rows.append((bench["full_id"], median_ns))


def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


print("| benchmark | median | per second (one core) |")
print("|---|---:|---:|")
for name, ns in rows:
    print(f"| `{name}` | {fmt(ns)} | {1e9 / ns:,.0f} |")
