#!/usr/bin/env python3
"""PEERS connections to HOST:PORT (len2 framing, ASCII dialect) that
pipeline network-management requests (0800) as fast as the socket takes
them and never read an answer, for SECONDS. When the listener closes one
(its answers piled up), it connects again. Prints how many times the
peers were closed. Used by run.sh for the non-reading-peers figure."""
import socket
import sys
import threading
import time

addr, peers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
host, port = addr.rsplit(":", 1)
# 0800 with DE 11 only: MTI, primary bitmap (bit 11) in hex, DE 11.
body = b"0800" + b"0020000000000000" + b"000001"
frame = len(body).to_bytes(2, "big") + body
burst = frame * 256
closed = 0
lock = threading.Lock()
deadline = time.monotonic() + seconds


def peer(i):
    global closed
    while time.monotonic() < deadline:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((f"127.0.1.{1 + i % 200}", 0))
            s.settimeout(1.0)
            s.connect((host, int(port)))
            while time.monotonic() < deadline:
                try:
                    s.sendall(burst)
                except socket.timeout:
                    continue
        except OSError:
            with lock:
                closed += 1
            time.sleep(0.05)
        finally:
            s.close()


threads = [threading.Thread(target=peer, args=(i,), daemon=True) for i in range(peers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"non-readers closed {closed} times", flush=True)
