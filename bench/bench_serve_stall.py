"""Does one large request stall `t2 serve`? Before/after issue #11, side by side in one run, on the default model.

For each source tree (`--old-src`, e.g. an export of the commit before the fix, and this tree's src/), a server
runs as `python -m transformer_squared serve --strategy base --batching rows` on a free 127.0.0.1 port; once it is
ready, one client sends a chat request whose body is `--mb` MB of words (with Content-Length), while another polls
/health every 100 ms. Reported: the status of the large request and the seconds until its answer, the idle /health
latency and the worst one during the large request.

    git archive 3968602 src | tar -x -C /tmp/t2-old    # the tree before the fix
    OMP_NUM_THREADS=1 python bench/bench_serve_stall.py --old-src /tmp/t2-old/src [--mb 16]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def measure(src: str, mb: int, library: str) -> dict:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "transformer_squared", "serve", "--port", str(port), "--library",
                             library, "--strategy", "base", "--batching", "rows"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"server did not start: {log.read()[-2000:].decode(errors='replace')}")
            try:
                if httpx.get(base + "/health", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        idle = []
        for _ in range(5):
            start = time.perf_counter()
            httpx.get(base + "/health", timeout=60)
            idle.append(time.perf_counter() - start)
        words = b"word " * (mb * (1 << 20) // 5)
        body = b'{"model": "base", "messages": [{"role": "user", "content": "' + words + b'"}]}'
        worst, stop = [0.0], threading.Event()

        def poll():
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    start = time.perf_counter()
                    client.get(base + "/health")
                    worst[0] = max(worst[0], time.perf_counter() - start)
                    stop.wait(0.1)

        poller = threading.Thread(target=poll)
        poller.start()
        start = time.perf_counter()
        try:
            status = httpx.post(base + "/v1/chat/completions", content=body,
                                headers={"content-type": "application/json"}, timeout=300).status_code
        except httpx.HTTPError as e:
            status = type(e).__name__
        seconds = time.perf_counter() - start
        stop.set()
        poller.join()
        return {"status": status, "answer_s": seconds, "idle_health_s": min(idle), "worst_health_s": worst[0]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-src", required=True, help="src/ of the tree before the fix")
    p.add_argument("--mb", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    new_src = str(Path(__file__).resolve().parents[1] / "src")
    out = {}
    with tempfile.TemporaryDirectory() as library:
        for name, src in [("old", args.old_src), ("new", new_src)]:
            out[name] = measure(src, args.mb, library)
            r = out[name]
            print(f"{name}: {args.mb} MB body -> {r['status']} after {r['answer_s']:.2f} s; /health idle "
                  f"{r['idle_health_s'] * 1000:.0f} ms, worst meanwhile {r['worst_health_s'] * 1000:.0f} ms")
    print(f"time to answer the large request, old / new: {out['old']['answer_s'] / out['new']['answer_s']:.0f}x; "
          f"worst /health, old / new: {out['old']['worst_health_s'] / out['new']['worst_health_s']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
