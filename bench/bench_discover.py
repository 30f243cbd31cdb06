"""Task discovery on a mixed pool of known tasks, labels hidden from the clustering.

The pool: the first N test questions of GSM8K, MBPP, ARC-Easy (from --data) and of the built-in arithmetic and
antonyms tasks. Each prompt is the *user's question only* — the instruction each task appends for the model
("Solve the problem…", "Answer with the number only.", the MBPP test line, ARC's lettered choices) is removed, so
the clustering cannot key on our own templates. `t2 discover`'s code (adapt/discover.py) then embeds and clusters
them, choosing k by silhouette over 2..--k-max; the hidden labels are only used to score the result:

    adjusted Rand index (ARI) of the clusters against the tasks (target ≥ 0.8), and k against the 5 tasks.

    python bench/bench_discover.py --data ../shared/data [--n 60] [--k-max 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sklearn.metrics import adjusted_rand_score

from transformer_squared.adapt.discover import discover
from transformer_squared.adapt.embedding import shared_encoder
from transformer_squared.tasks import get_task

POOL = {"gsm8k": "gsm8k", "mbpp": "mbpp", "arc": "arc_easy", "arithmetic": None, "antonyms": None}


def question(example: dict) -> str:
    """What a user would have typed: the question field, else the prompt's first line without 'Answer with …'."""
    if example.get("question"):
        return example["question"].strip()
    first = example["prompt"].strip().split("\n")[0]
    return first.split(" Answer with")[0].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--n", type=int, default=60, help="questions per task")
    p.add_argument("--k-max", type=int, default=10)
    args = p.parse_args()

    prompts, truth = [], []
    for name, folder in POOL.items():
        task = get_task(name, str(Path(args.data) / folder) if folder else None)
        examples = task.examples("test")[: args.n]
        prompts += [question(e) for e in examples]
        truth += [name] * len(examples)
    print(f"pool: {len(prompts)} prompts from {len(POOL)} tasks ({', '.join(POOL)}), {args.n} each")
    t0 = time.perf_counter()
    encoder = shared_encoder()
    t1 = time.perf_counter()
    report = discover(prompts, encoder, k=None, k_max=args.k_max)
    t2 = time.perf_counter()
    ari = adjusted_rand_score(truth, report.labels)
    print("silhouette by k: " + ", ".join(f"{k}:{s:.3f}" for k, s in report.silhouette.items()))
    print(f"chosen k = {report.k} (tasks: {len(POOL)})  ARI = {ari:.3f}  (target >= 0.8)")
    for c in report.clusters:
        counts = {}
        for i in c.members:
            counts[truth[i]] = counts.get(truth[i], 0) + 1
        print(f"  {c.name:36} {c.size:4d}  tasks {counts}  e.g. {c.typical[0][:60]!r}")
    print(f"encoder load {t1 - t0:.1f} s, embed + cluster {t2 - t1:.1f} s")
    ok = ari >= 0.8 and report.k == len(POOL)
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
