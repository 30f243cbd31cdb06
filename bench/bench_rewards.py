"""Benchmark of the unit-test reward on MBPP: the old verdict (exit status of "solution, setup, asserts") against
the judge (tasks/judge.py: values probed in the sandbox, compared here), side by side in one run.

    reward throughput   programs judged per second of wall time, both with the same CODE_WORKERS sandbox runs at
                        once, on the same `--n` reference solutions (the judge's expected-value runs included),
                        in alternating chunks of `--chunk` so that both sides see the same machine load
    false negatives     reference solutions that do not score 1 (goal 0), over all 974 by default
    false positives     hostile completions that score 1 (sys.exit(0) / os._exit(0) at the top, an always-equal
                        object returned), over the first `--hostile` tasks

    OMP_NUM_THREADS=1 python bench/bench_rewards.py [--n 974] [--hostile 50] [--data ../shared/data/mbpp]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transformer_squared.sandbox import SandboxLimits, passes
from transformer_squared.tasks import judge
from transformer_squared.tasks.judge import Judge, unit_test_plan

ATTACKS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "always-equal": "class E:\n    __eq__ = lambda *a: True\n\ndef {fn}(*a, **k):\n    return E()\n",
}


def old_verdicts(records: list[dict], codes: list[str], limits: SandboxLimits) -> list[bool]:
    """The verdict before issue #11: the program exits 0 in time."""
    programs = ["\n".join([c, r["test_setup_code"] or "", *r["test_list"]]) + "\n" for r, c in zip(records, codes)]
    with ThreadPoolExecutor(judge.CODE_WORKERS) as pool:
        return list(pool.map(lambda p: passes(p, limits), programs))


def new_verdicts(records: list[dict], codes: list[str], limits: SandboxLimits) -> list[bool]:
    judge._cache.clear()  # pay for the expected-value runs too
    return Judge(limits).verdicts([(unit_test_plan(r["test_list"], r["test_setup_code"]), c)
                                   for r, c in zip(records, codes)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mbpp"))
    p.add_argument("--n", type=int, default=974, help="reference solutions to judge")
    p.add_argument("--hostile", type=int, default=50, help="tasks to attack with each hostile completion")
    p.add_argument("--chunk", type=int, default=100, help="references per alternating old/new chunk")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    records = [json.loads(line) for line in (Path(args.data) / "mbpp.jsonl").read_text().splitlines()][: args.n]
    codes = [r["code"].replace("\r\n", "\n") for r in records]
    limits = SandboxLimits(timeout_s=30.0, output_bytes=4 << 20)  # the same limits on both sides
    print(f"{len(records)} MBPP references, {judge.CODE_WORKERS} sandbox runs at once, load {os.getloadavg()[0]:.2f}")
    out = {"n": len(records), "load_before": os.getloadavg()[0]}
    seconds, missed = {"old": 0.0, "new": 0.0}, {"old": [], "new": []}
    sides = [("old", old_verdicts), ("new", new_verdicts)]
    # Interleaved chunks, the order swapped every chunk: a machine shared with other jobs changes speed over minutes.
    for c, lo in enumerate(range(0, len(records), args.chunk)):
        chunk, chunk_codes = records[lo: lo + args.chunk], codes[lo: lo + args.chunk]
        for name, fn in sides if c % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            verdicts = fn(chunk, chunk_codes, limits)
            seconds[name] += time.perf_counter() - start
            missed[name] += [r["task_id"] for r, ok in zip(chunk, verdicts) if not ok]
    for name in ("old", "new"):
        out[name] = {"seconds": seconds[name], "programs_per_s": len(records) / seconds[name],
                     "false_negatives": missed[name]}
        print(f"{name}: {len(records) / seconds[name]:.2f} programs/s ({seconds[name]:.1f} s); false negatives "
              f"{len(missed[name])}/{len(records)} = {len(missed[name]) / len(records):.2%} {missed[name][:20]}")
    print(f"throughput new / old: {out['new']['programs_per_s'] / out['old']['programs_per_s']:.2f}x")
    hostile = records[: args.hostile]
    for attack, template in ATTACKS.items():
        codes = []
        for r in hostile:
            fn = re.match(r"\s*assert\s*\(?\s*([A-Za-z_]\w*)", r["test_list"][0]).group(1)
            codes.append(template.format(fn=fn))
        old = sum(old_verdicts(hostile, codes, limits))
        new = sum(new_verdicts(hostile, codes, limits))
        out.setdefault("hostile", {})[attack] = {"old": old, "new": new, "tasks": len(hostile)}
        print(f"hostile {attack!r}: scores 1 on {old}/{len(hostile)} tasks (old), {new}/{len(hostile)} (new)")
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
