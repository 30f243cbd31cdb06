"""OpenMP wait policy on a shared machine: `generate()` with the library imported first (it sets
OMP_WAIT_POLICY=PASSIVE before torch loads) vs torch imported first with no policy (libgomp's default: threads spin
before they sleep), each in a fresh process, beside a competing busy process, side by side in one run.

    OMP_NUM_THREADS=2 python bench/bench_omp_wait.py [--tokens 16] [--repeats 2] [--no-competitor]

Prints seconds per generate() call for each order and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, time
if sys.argv[1] == "library-first":
    import transformer_squared  # sets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy
    import torch
else:
    import torch  # libgomp reads its environment now: no policy, the default spin-then-sleep
    import transformer_squared
from transformer_squared import GenerationConfig, generate, load_model
m = load_model("default")
config = GenerationConfig(max_new_tokens=int(sys.argv[2]))
generate(m.model, m.tokenizer, ["Hi"], GenerationConfig(max_new_tokens=2))  # warm-up
t0 = time.perf_counter()
generate(m.model, m.tokenizer, ["What is 17 + 25? Explain step by step."], config)
print(f"{time.perf_counter() - t0:.3f}")
"""

COMPETITOR = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def run(order: str, tokens: int, timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, order, str(tokens)], env=env, capture_output=True,
                             text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return float("inf")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=240, help="seconds before a child is given up (reported inf)")
    p.add_argument("--no-competitor", action="store_true")
    args = p.parse_args()
    competitor = None if args.no_competitor else subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        times: dict[str, list[float]] = {"library-first": [], "torch-first": []}
        for _ in range(args.repeats):
            for order in times:  # interleaved, so that a change in the machine's load hits both
                times[order].append(run(order, args.tokens, args.timeout))
                print(f"{order:14} {times[order][-1]:8.2f} s", flush=True)
    finally:
        if competitor is not None:
            competitor.kill()
    best = {k: min(v) for k, v in times.items()}
    print(f"generate({args.tokens} tokens), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, "
          f"competitor={'no' if args.no_competitor else 'one busy process'}: "
          f"library first (PASSIVE) {best['library-first']:.2f} s, torch first (default policy) "
          f"{best['torch-first']:.2f} s; ratio {best['torch-first'] / best['library-first']:.1f}x")


if __name__ == "__main__":
    main()
