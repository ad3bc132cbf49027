#!/usr/bin/env python3
"""Open N connections to HOST:PORT from 127.0.0.2.. (at most 1000 per
source address, under the listener's per-source cap), send nothing, print
"open N" and hold them for SECONDS. Used by run.sh for the idle-memory
figure. The caller raises the file-descriptor limit."""
import socket
import sys
import time

addr, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
host, port = addr.rsplit(":", 1)
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((f"127.0.0.{2 + i // 1000}", 0))
    s.connect((host, int(port)))
    socks.append(s)
print(f"open {len(socks)}", flush=True)
time.sleep(hold)
