"""Benchmark of `t2 serve` on the default model (SmolLM2-135M-Instruct, 90 MLP matrices), over loopback HTTP with
the official `openai` client, all in one run.

8 concurrent clients, each sending `--requests` chat requests one after another (closed loop), greedy,
`--max-tokens` tokens, short prompts. Three scenarios, each on a fresh server in this process:

    single   every request names the same expert                               (the planner merges it)
    mixed    requests spread over 4 experts, decoded together                  (per-row σ', `--batching auto`)
    groups   the same mixed requests, each expert's requests one group after
             another with weight switching                                     (`--batching groups`, the baseline)

Goals (issue #5): mixed ≥ 0.7× single throughput; mixed ≥ 2× groups. Throughput is completion tokens per second
of wall time (answers end at eos at different lengths per expert, so tokens, not requests, are the fair unit);
requests/s, p50 and p95 latency per request are printed beside, and tokens per CPU-second of the server process
(the clients run in a separate process): on a machine shared with other jobs CPU time is far less disturbed than
wall time. The scenarios run `--repeats` times in alternating
order, and every expert's merged weights are cached before timing (a warm server), so no scenario pays a compose.
The step costs the planner uses are measured once at the first start-up and shared by all servers.

Experts: z = 1 + 0.05·N(0, 1), seeded — real experts for the real model, fine for throughput. Bounded: at most
clients × requests per scenario, and a scenario stops issuing requests after `--max-seconds`.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python bench/bench_serve.py [--requests 4] [--max-tokens 32]
        [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

PROMPTS = [
    "What is 17 times 23?",
    "Name three colors.",
    "Write a haiku about rain.",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
    "What is the capital of Italy?",
    "Count from one to five.",
    "Say hello in Spanish.",
]
EXPERTS = ["e0", "e1", "e2", "e3"]
CLIENTS = 8


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def start_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("server failed to start")
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


def client_process(port: int, models: list[str], requests: int, max_tokens: int, max_seconds: float, out) -> None:
    out.put(run_clients(port, models, requests, max_tokens, max_seconds))


def run_clients(port: int, models: list[str], requests: int, max_tokens: int, max_seconds: float) -> dict:
    import openai

    deadline = time.monotonic() + max_seconds
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=600)
    latencies, tokens, answered_by = [], [], []
    lock = threading.Lock()

    def worker(c: int):
        for i in range(requests):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = client.chat.completions.create(
                model=models[c], messages=[{"role": "user", "content": PROMPTS[(c + i) % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0)
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens.append(r.usage.completion_tokens)
                answered_by.append(r.model_extra["expert"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "requests": len(latencies), "tokens": sum(tokens), "tokens_per_s": sum(tokens) / wall,
            "requests_per_s": len(latencies) / wall, "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95), "experts_used": sorted(set(answered_by))}


def scenario(svf, library, name: str, costs, args) -> dict:
    from transformer_squared.serve import ServeLimits, create_app

    batching = "groups" if name == "groups" else "auto"
    models = ["e0"] * CLIENTS if name == "single" else [EXPERTS[c % len(EXPERTS)] for c in range(CLIENTS)]
    for e in set(models):  # a warm server: merged weights cached, as after any earlier use
        svf.compose(library.get(e))
    app = create_app(svf, library, limits=ServeLimits(max_batch_size=CLIENTS, max_tokens=args.max_tokens),
                     batching=batching, costs=costs)
    server, thread, port = start_server(app)
    try:
        # the clients run in their own process, so that they do not compete with the server for the GIL
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        proc = ctx.Process(target=client_process, args=(port, models, args.requests, args.max_tokens,
                                                        args.max_seconds, out))
        cpu0 = time.process_time()
        proc.start()
        result = out.get()
        result["server_cpu_s"] = time.process_time() - cpu0  # this process = the server (the clients are apart)
        result["tokens_per_cpu_s"] = result["tokens"] / result["server_cpu_s"]
        proc.join()
        result["served"] = dict(app.state.engine.served)
        return result
    finally:
        server.should_exit = True
        thread.join(120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4, help="requests per client per scenario")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=300, help="per scenario: no new requests after this")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cpu", help="as t2 serve --device (auto, cpu, cuda, cuda:N, mps)")
    p.add_argument("--dtype", default="float32", help="as t2 serve --dtype (auto, float32, bfloat16, float16)")
    args = p.parse_args()

    from transformer_squared import Expert, ExpertLibrary, load_svf
    from transformer_squared.serve.batching import measure_costs

    info = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)")}
    print(json.dumps(info))
    svf = load_svf("default", progress=False, device=args.device, dtype=args.dtype)
    print(f"precision: {svf.precision.describe()}")
    library = ExpertLibrary(tempfile.mkdtemp(prefix="t2-bench-serve-"))
    for i, name in enumerate(EXPERTS):
        g = torch.Generator().manual_seed(i)
        z = {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in svf.init_z().items()}
        library.add(Expert.for_model(svf, z, created_by={"method": "random", "seed": i}), name)
    costs = measure_costs(svf, CLIENTS, svf.tokenizer.pad_token_id)
    print("planner costs:", json.dumps(costs.as_dict()))
    runs: dict[str, list[dict]] = {"single": [], "mixed": [], "groups": []}
    for rep in range(args.repeats):
        order = list(runs) if rep % 2 == 0 else list(reversed(runs))
        for name in order:
            r = scenario(svf, library, name, costs, args)
            runs[name].append(r)
            print(f"[{rep}] {name:6} {r['tokens_per_s']:6.1f} tok/s  {r['requests_per_s']:5.2f} req/s  "
                  f"p50 {r['p50_s']:5.2f} s  p95 {r['p95_s']:5.2f} s  ({r['requests']} requests, {r['tokens']} tokens; "
                  f"engine: {json.dumps(r['served'])})", flush=True)

    def agg(name, key):
        return sum(r[key] for r in runs[name]) / len(runs[name])

    tps = {n: sum(r["tokens"] for r in runs[n]) / sum(r["wall_s"] for r in runs[n]) for n in runs}
    tpc = {n: sum(r["tokens"] for r in runs[n]) / sum(r["server_cpu_s"] for r in runs[n]) for n in runs}
    print("\n| scenario | tokens/s | tokens per server CPU-s | requests/s | p50 latency | p95 latency "
          "| decode steps (rows / merged) |")
    print("|---|---|---|---|---|---|---|")
    for n, rs in runs.items():
        steps = [sum(r["served"][f"{m}_steps"] for r in rs) for m in ("rows", "merged")]
        print(f"| {n} | {tps[n]:.1f} | {tpc[n]:.1f} | {agg(n, 'requests_per_s'):.2f} | {agg(n, 'p50_s'):.2f} s | "
              f"{agg(n, 'p95_s'):.2f} s | {steps[0]} / {steps[1]} |")
    ratio_single, ratio_groups = tps["mixed"] / tps["single"], tps["mixed"] / tps["groups"]
    print(f"\nmixed / single = {ratio_single:.2f}x wall, {tpc['mixed'] / tpc['single']:.2f}x CPU "
          f"(goal >= 0.7x: {'met' if ratio_single >= 0.7 else 'NOT met'})")
    print(f"mixed / groups = {ratio_groups:.2f}x wall, {tpc['mixed'] / tpc['groups']:.2f}x CPU "
          f"(goal >= 2x: {'met' if ratio_groups >= 2 else 'NOT met'})")
    info["loadavg_end"] = os.getloadavg()
    print(json.dumps({"loadavg_end": info["loadavg_end"]}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "args": vars(args), "costs": costs.as_dict(), "runs": runs,
                       "tokens_per_s": tps, "mixed_vs_single": ratio_single, "mixed_vs_groups": ratio_groups}, f,
                      indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
