"""Benchmark of the SVF core on the default model (SmolLM2-135M-Instruct, 90 MLP matrices), measured in one run.

What is measured, each against a baseline timed in the same process and interleaved with it where practical:

1. switch   `svf.apply(A)` / `svf.apply(B)` alternately, both merged weights already cached (a pointer swap), vs the
            reference switch below.
2. compose  `svf.apply(expert, cache=False)` for an expert never seen (validate, compose every W', write it), vs the
            reference switch on the same fresh z.
3. decode   greedy tokens/s with a merged expert applied vs the base model; same prompts, fixed length, order
            alternated between repeats.
4. svd      a fresh `decompose()` that hits the cache, then `factors(n)` for every matrix, each read once, vs
            `decompose(..., force=True)` into a scratch directory. Each measurement runs in its own spawned process
            after the model is loaded, and reports its peak RSS above that point (see `_svd_child`).
5. mixture  (informational) composing a `mix()` of two cached experts vs composing the same z from scratch.

The reference switch is the official Transformer² code (SakanaAI/self-adaptive-llms, `compose_new_params` and
`forward`): for every targeted matrix `W' = U @ torch.diag_embed(S * z) @ V.T`, then `param.copy_(W')` into the
model. Deliberate simplifications, each of which can only make the reference faster: the reference also multiplies
W' by Σσ / Σ(σ ⊙ m) (one more pass over W'), omitted; z is used as-is (the `paper` parametrization, no sigmoid).
V is kept (in, r) as the reference stores it, so `V.T` is a view, as there.

Every timing records wall-clock and process CPU time. Wall time is what a user waits and decides the goals; CPU
time (all threads of this process) is far less disturbed when other jobs share the cores, so its ratio is printed
beside. Nothing here asserts a time: the table shows medians (p50), p95 where there are >= 5 samples, and ratios;
`--json` also writes the raw samples. The load average is printed at start and end.

    T2_CACHE=/tmp/t2bench python bench/bench_svf.py [--repeats N] [--quick] [--json results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS = [
    "What is 17 times 23? Explain step by step.",
    "Write a Python function that reverses a string.",
    "Name three causes of the French Revolution.",
    "Why is the sky blue?",
]
GOALS = {"switch": 100.0, "switch_p50_ms": 5.0, "compose": 2.0, "decode": 0.98, "svd": 10.0}


# -- measuring ------------------------------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": percentile(xs, 50), "p95": percentile(xs, 95), "min": min(xs), "samples": xs}


class Timer:
    """Collects wall-clock and process CPU seconds of each call."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, fn):
        c, t = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        return out

    def summary(self) -> dict:
        return {"wall": summary(self.wall), "cpu": summary(self.cpu)}


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        # with the default (active) policy OpenMP threads spin; on a busy machine that made decoding ~10x slower
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
    }


def random_z(svf, seed: int, spread: float = 0.05) -> dict[str, torch.Tensor]:
    """A plausible trained expert: z = 1 + noise (the `paper` parametrization, where z = 1 is the base)."""
    g = torch.Generator().manual_seed(seed)
    return {n: 1 + spread * torch.randn(svf.decomposition.rank(n), generator=g) for n in svf.names}


def make_expert(svf, z):
    from transformer_squared import Expert

    return Expert.for_model(svf, z=z, name="bench")


# -- the reference switch -------------------------------------------------------------------------------------------
class ReferenceSwitch:
    """Official Transformer² switching: recompose every targeted W' with a dense diag(σ ⊙ z) and copy it in.

    The reference copies into the model's own parameters. Here those are a private copy of the base weights,
    installed only while the reference runs, so `svf`'s base and cached merged weights — which the model shares by
    pointer — are never overwritten.
    """

    def __init__(self, svf):
        self.svf = svf
        self.factors = {}
        for n in svf.names:
            U, S, Vh = svf.decomposition.factors(n)
            self.factors[n] = (U, S, Vh.T.contiguous())  # U (out, r), S (r,), V (in, r)
        self.storage = {n: w.clone() for n, w in svf.base_weights.items()}

    def install(self) -> None:
        self.svf.remove()
        for n, lin in self.svf.linears.items():
            lin.weight.data = self.storage[n]

    def uninstall(self) -> None:
        self.svf.remove()  # base pointers back

    @torch.no_grad()
    def switch(self, z: dict[str, torch.Tensor]) -> None:
        model = self.svf.model
        for n, (U, S, V) in self.factors.items():
            W = U @ torch.diag_embed(S * z[n]) @ V.T  # (out, r) @ (r, r) @ (r, in)
            model.get_parameter(f"{n}.weight").copy_(W)


# -- 1, 2, 5: switching and composing -------------------------------------------------------------------------------
def bench_switch(svf, ref: ReferenceSwitch, A, B, n_fast: int, n_ref: int) -> dict:
    svf.apply(A)
    svf.apply(B)  # both cached now
    pick = lambda i: A if i % 2 == 0 else B  # noqa: E731
    ours, check, swap, reference = Timer(), Timer(), Timer(), Timer()
    for i in range(n_fast):
        ours(lambda: svf.apply(pick(i)))
    for i in range(n_fast):
        check(lambda: pick(i).check_compatible(svf))
    for i in range(n_fast):  # the floor: cache hit + pointer swap (private API, only to show where apply's time goes)
        swap(lambda: svf._write(pick(i).key, svf.compose(pick(i))))
    ref.install()
    for i in range(n_ref):
        reference(lambda: ref.switch(pick(i).z))
    cached = svf.compose(pick(n_ref - 1))  # the reference wrote the same W' the cache holds
    err = max(float((svf.linears[n].weight.detach() - cached[n]).abs().max()) for n in svf.names)
    ref.uninstall()
    return {"ours": ours.summary(), "reference": reference.summary(), "check_compatible": check.summary(),
            "cache_hit_and_write": swap.summary(), "max_abs_diff_vs_reference": err}


def bench_compose(svf, ref: ReferenceSwitch, n: int, seed0: int) -> dict:
    """A fresh z each repeat, for ours and the reference alike; which of the two goes first alternates."""
    ours, reference = Timer(), Timer()
    for i in range(n):
        z = random_z(svf, seed0 + i)
        expert = make_expert(svf, z)
        steps = [("ours", expert), ("ref", z)] if i % 2 == 0 else [("ref", z), ("ours", expert)]
        for which, arg in steps:
            if which == "ours":
                gc.collect()
                ours(lambda: svf.apply(arg, cache=False))
                svf.remove()
            else:
                ref.install()
                gc.collect()
                reference(lambda: ref.switch(arg))
                ref.uninstall()
    return {"ours": ours.summary(), "reference": reference.summary()}


def bench_mixture(svf, A, B, n: int) -> dict:
    from transformer_squared import Expert, mix

    mixture = mix([A, B], [0.6, 0.4])
    plain = Expert(mixture.z, mixture.meta)  # same z, no components: composed from scratch
    svf.compose(A), svf.compose(B)
    cached, scratch = Timer(), Timer()
    for i in range(n):
        for timer, e in ([(cached, mixture), (scratch, plain)] if i % 2 == 0 else [(scratch, plain), (cached, mixture)]):
            gc.collect()
            timer(lambda: svf.compose(e, cache=False))
    a, b = svf.compose(mixture, cache=False), svf.compose(plain, cache=False)
    err = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {"ours": cached.summary(), "reference": scratch.summary(), "max_abs_diff": err}


# -- 3: decoding ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def decode(svf, batch, new_tokens: int) -> torch.Tensor:
    """Greedy decode of a fixed length (min = max new tokens, so every run does the same work)."""
    tok = svf.tokenizer
    out = svf.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]  # (B, new_tokens)


def bench_decode(svf, expert, n: int, new_tokens: int) -> dict:
    from transformer_squared.generation import chat_text, encode

    batch = encode(svf.tokenizer, [chat_text(svf.tokenizer, p) for p in PROMPTS])
    for e in (expert, None):  # warm-up, both weight sets
        svf.apply(e)
        decode(svf, batch, 4)
    timers, outs = {"expert": Timer(), "base": Timer()}, {}
    for i in range(n):
        for label in (("base", "expert") if i % 2 == 0 else ("expert", "base")):
            svf.apply(expert if label == "expert" else None)
            gc.collect()
            outs[label] = timers[label](lambda: decode(svf, batch, new_tokens))
    svf.remove()
    tokens = len(PROMPTS) * new_tokens
    rates = {k: summary([tokens / s for s in t.wall]) for k, t in timers.items()}
    changed = sum(not torch.equal(a, b) for a, b in zip(outs["base"], outs["expert"]))
    return {"ours": timers["expert"].summary(), "reference": timers["base"].summary(),
            "expert_tok_s": rates["expert"], "base_tok_s": rates["base"],
            "prompts": len(PROMPTS), "new_tokens": new_tokens, "completions_changed_by_expert": changed}


# -- 4: SVD cache vs recomputation, one spawned process per measurement ------------------------------------------------
def _proc_status() -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon, RssFile of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _svd_child(mode: str, cache_dir: str, scratch_dir: str, queue) -> None:
    """Load the model, reset the peak-RSS mark, run one decomposition, report time and memory above that point.

    Why not tracemalloc: it sees only Python's allocations, not torch's, safetensors' or mmapped files. Why not a
    bare ru_maxrss: it is the whole process's high-water mark, and loading the model peaks above what follows. Linux
    lets a process reset its own peak (`5 > /proc/self/clear_refs` resets VmHWM), so the peak is measured from after
    the load; where that is refused we fall back to ru_maxrss, which then bounds the peak from above.
    """
    from transformer_squared.models import load_model
    from transformer_squared.svd import decompose

    model = load_model("default").model
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (whole-process peak, load included)"
    before = _proc_status()
    c, t0 = time.process_time(), time.perf_counter()
    if mode == "recompute":
        d = decompose(model, "mlp", cache_dir=scratch_dir, progress=False, force=True)
    else:
        d = decompose(model, "mlp", cache_dir=cache_dir, progress=False)
        if mode == "cached":
            for n in d.names:
                for factor in d.factors(n):  # factors() returns views of the mmapped file; reading pages them in
                    factor.sum()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c
    after = _proc_status()
    peak = after["VmHWM"] if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"mode": mode, "wall": wall, "cpu": cpu, "peak_rss_delta": peak - before["VmRSS"],
               "rss_anon_delta": after["RssAnon"] - before["RssAnon"],
               "rss_file_delta": after["RssFile"] - before["RssFile"], "file_bytes": d.nbytes(), "method": method})


def run_svd_child(mode: str, cache_dir: str, scratch_dir: str) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a clean interpreter: nothing inherited from this process's heap
    queue = ctx.Queue()
    p = ctx.Process(target=_svd_child, args=(mode, cache_dir, scratch_dir, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def bench_svd(cache_dir: str, n_cached: int, n_recompute: int) -> dict:
    runs: dict[str, list[dict]] = {"cached": [], "cached_lazy": [], "recompute": []}
    with tempfile.TemporaryDirectory(prefix="t2bench-svd-") as scratch:
        plan = ["cached_lazy"] + ["cached", "recompute"] * n_recompute + ["cached"] * max(0, n_cached - n_recompute)
        for mode in plan:
            runs[mode].append(run_svd_child(mode, cache_dir, scratch))
    out = {}
    for mode, rs in runs.items():
        out[mode] = {"wall": summary([r["wall"] for r in rs]), "cpu": summary([r["cpu"] for r in rs]),
                     "peak_rss_delta_max": max(r["peak_rss_delta"] for r in rs),
                     "rss_anon_delta": rs[-1]["rss_anon_delta"], "rss_file_delta": rs[-1]["rss_file_delta"],
                     "method": rs[-1]["method"]}
    out["file_bytes"] = runs["cached"][-1]["file_bytes"]
    out["ours"], out["reference"] = out["cached"], out["recompute"]
    return out


# -- report ---------------------------------------------------------------------------------------------------------
def _ms(s: dict, key: str = "p50") -> str:
    return f"{s[key] * 1e3:,.2f} ms"


def _tok(s: dict, key: str = "p50") -> str:
    return f"{s[key]:,.1f} tok/s"


def _cell(s: dict, unit=_ms) -> str:
    return f"{unit(s)} (p95 {unit(s, 'p95')})" if s["n"] >= 5 else f"{unit(s)} (n={s['n']})"


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def ratios(r: dict) -> dict:
    """reference p50 / ours p50, wall and CPU (for decode: expert tok/s over base tok/s, the same thing)."""
    out = {}
    for k in ("switch", "compose", "decode", "svd", "mixture"):
        out[k] = {t: r[k]["reference"][t]["p50"] / r[k]["ours"][t]["p50"] for t in ("wall", "cpu")}
    return out


def table(r: dict) -> tuple[list[tuple], dict]:
    sw, co, de, sv, mx = r["switch"], r["compose"], r["decode"], r["svd"], r["mixture"]
    ra = ratios(r)
    met = {
        "switch": ra["switch"]["wall"] >= GOALS["switch"] and sw["ours"]["wall"]["p50"] * 1e3 < GOALS["switch_p50_ms"],
        "compose": ra["compose"]["wall"] >= GOALS["compose"],
        "decode": ra["decode"]["wall"] >= GOALS["decode"],
        "svd": ra["svd"]["wall"] >= GOALS["svd"],
    }
    yes = lambda k: "yes" if met[k] else "NO"  # noqa: E731
    x = lambda k, fmt: (f"{ra[k]['wall']:{fmt}}x", f"{ra[k]['cpu']:{fmt}}x")  # noqa: E731
    rows = [
        ("benchmark", "ours (wall)", "reference / baseline (wall)", "ratio", "CPU-time ratio", "goal", "met"),
        ("1 switch between 2 cached experts", _cell(sw["ours"]["wall"]), _cell(sw["reference"]["wall"]),
         *x("switch", ",.0f"), ">=100x, p50<5ms", yes("switch")),
        ("  part: check_compatible", _cell(sw["check_compatible"]["wall"]), "", "", "", "", ""),
        ("  part: cache hit + pointer swap", _cell(sw["cache_hit_and_write"]["wall"]), "", "", "", "", ""),
        ("2 compose+write uncached expert", _cell(co["ours"]["wall"]), _cell(co["reference"]["wall"]),
         *x("compose", ".2f"), ">=2x", yes("compose")),
        (f"3 greedy decode {de['prompts']}x{de['new_tokens']} tok", _cell(de["expert_tok_s"], _tok) + " expert",
         _cell(de["base_tok_s"], _tok) + " base", *x("decode", ".3f"), ">=0.98x", yes("decode")),
        ("4 SVD cache hit + read all factors", _cell(sv["cached"]["wall"]), _cell(sv["recompute"]["wall"]) + " recompute",
         *x("svd", ".1f"), ">=10x", yes("svd")),
        ("  peak RSS above loaded model", _mib(sv["cached"]["peak_rss_delta_max"]),
         _mib(sv["recompute"]["peak_rss_delta_max"]), "", "", "", ""),
        ("  decompose() hit only (fingerprinting)", _cell(sv["cached_lazy"]["wall"]), "", "", "", "", ""),
        ("5 compose mix of 2 cached (info)", _cell(mx["ours"]["wall"]), _cell(mx["reference"]["wall"]) + " from z",
         *x("mixture", ".2f"), "", ""),
    ]
    return rows, {"ratios": ra, "met": met}


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(repeats: int = 5, quick: bool = False, json_path: str | None = None) -> dict:
    from transformer_squared import load_svf
    from transformer_squared.svd import default_cache_dir

    if not os.environ.get("T2_CACHE"):  # unset or empty: a scratch cache, not the user's
        os.environ["T2_CACHE"] = str(Path(tempfile.gettempdir()) / "t2bench")
    cache_dir = str(default_cache_dir())
    n_fast = 40 if quick else 200
    new_tokens = 16 if quick else 64
    info = machine_info()
    print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if info["loadavg_start"][0] > (os.cpu_count() or 1) and "OMP_WAIT_POLICY" not in os.environ:
        print("warning: the machine is busier than its cores and OpenMP threads spin; every number will be distorted "
              "(decoding measured ~10x slower). Consider OMP_WAIT_POLICY=PASSIVE.", flush=True)

    t = time.perf_counter()
    svf = load_svf("default", cache_dir=cache_dir, progress=False, dtype="float32")  # the first run converts the GGUF and decomposes
    print(f"loaded the default model + decomposition in {time.perf_counter() - t:.1f}s "
          f"({len(svf.names)} matrices, factors {svf.decomposition.nbytes() / 2**20:.0f} MiB)", flush=True)
    A, B = make_expert(svf, random_z(svf, 1)), make_expert(svf, random_z(svf, 2))
    ref = ReferenceSwitch(svf)

    results = {"machine": info, "command": " ".join(["python", *sys.argv]), "repeats": repeats, "quick": quick}
    stage = lambda name: print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)  # noqa: E731
    stage("1 switch")
    results["switch"] = bench_switch(svf, ref, A, B, n_fast, repeats)
    stage("2 compose")
    results["compose"] = bench_compose(svf, ref, repeats, seed0=100)
    stage("5 mixture")
    results["mixture"] = bench_mixture(svf, A, B, repeats)
    stage("3 decode")
    results["decode"] = bench_decode(svf, A, 1 if quick else repeats, new_tokens)
    del ref, svf
    gc.collect()
    stage("4 svd (one process per measurement)")
    results["svd"] = bench_svd(cache_dir, n_cached=repeats, n_recompute=1 if quick else 2)
    results["machine"]["loadavg_end"] = os.getloadavg()

    rows, verdict = table(results)
    results.update(verdict)
    sv = results["svd"]
    print()
    print_table(rows)
    print(f"\nload average start {info['loadavg_start']}, end {results['machine']['loadavg_end']}\n"
          f"max |W' reference - W' ours| = {results['switch']['max_abs_diff_vs_reference']:.2e}; "
          f"max |mix of cached - from z| = {results['mixture']['max_abs_diff']:.2e}; "
          f"the expert changed {results['decode']['completions_changed_by_expert']}/{results['decode']['prompts']} "
          f"greedy completions\nSVD RSS after (anon/file-backed): cached {_mib(sv['cached']['rss_anon_delta'])}/"
          f"{_mib(sv['cached']['rss_file_delta'])}, recompute {_mib(sv['recompute']['rss_anon_delta'])}/"
          f"{_mib(sv['recompute']['rss_file_delta'])}; factors file {_mib(sv['file_bytes'])}; peak by "
          f"{sv['cached']['method']}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {json_path}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every slow measurement (>= 1)")
    parser.add_argument("--quick", action="store_true", help="40 fast repeats, 16 new tokens, one recomputation")
    parser.add_argument("--json", dest="json_path", help="also write the results (raw samples included) here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    main(args.repeats, args.quick, args.json_path)
