"""CEM wall time: ours (candidates' σ' mixed from the experts' vectors, whole population scored in one factored
batch) vs a naive implementation that recomposes every candidate's weights from z and scores it merged.

Both run the same CEM (same seed, population, iterations, shots, fitness); the naive side differs only in how a
population is scored. Prints the wall times, their ratio, and the largest difference between the α's found.

    python bench/bench_cem.py --library LIB --task subtraction [--population 32 --iterations 3 --shots 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from transformer_squared.adapt.cem import (
    CEMConfig,
    Population,
    cem_search,
    fewshot_examples,
)
from transformer_squared.adapt.routes import answer_experts
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.svf import load_svf
from transformer_squared.tasks import get_task


class NaivePopulation(Population):
    """Scores each candidate alone: z = Σ α z (per matrix), W' = U diag(σ ⊙ z) Vᵀ recomposed, written, scored."""

    @torch.no_grad()
    def score(self, alphas):
        svf, k = self.svf, len(self.shots)
        correct, loglik = torch.zeros(len(alphas)), torch.zeros(len(alphas))
        for c, a in enumerate(alphas):
            z = {n: (a[:, m] if self.config.per_matrix else a) @ self.Z[n] for m, n in enumerate(svf.names)}
            expert = Expert.for_model(svf, z, self.parametrization)
            with svf.applied(expert, cache=False):  # validate + compose 90 W' from z + write
                ll, right = self.score_shots(list(range(k)))
            loglik[c], correct[c] = ll.sum(), right.sum()
        return correct / k, loglik / k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", required=True)
    p.add_argument("--task", default="subtraction")
    p.add_argument("--data", default=None)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--fitness", nargs="+", default=["loglik", "accuracy"])
    args = p.parse_args()

    experts = list(answer_experts(ExpertLibrary(args.library)).values())
    svf = load_svf(experts[0].meta.base_model or "default", progress=False, dtype="float32")
    task = get_task(args.task, args.data)
    shots = fewshot_examples(task, args.shots)
    print(f"torch threads {torch.get_num_threads()}; experts {[e.name for e in experts]} + base; task {task.name}; "
          f"{args.shots} shots; population {args.population}; iterations {args.iterations}")
    print(f"{'fitness':9} {'ours s':>9} {'naive s':>9} {'ratio':>7} {'max |Δα|':>9}  best (ours / naive)")
    for fitness in args.fitness:
        cfg = CEMConfig(population=args.population, iterations=args.iterations, fitness=fitness)
        times, results = {}, {}
        for name, cls in (("ours", Population), ("naive", NaivePopulation)):
            population = cls(svf, experts, shots, task, cfg)
            t0 = time.perf_counter()
            results[name] = cem_search(population, progress=False)
            times[name] = time.perf_counter() - t0
        diff = (torch.tensor(results["ours"].alpha) - torch.tensor(results["naive"].alpha)).abs().max().item()
        fmt = lambda r: f"acc {r.accuracy:.2f} ll {r.loglik:.3f}"
        print(f"{fitness:9} {times['ours']:>9.1f} {times['naive']:>9.1f} {times['naive'] / times['ours']:>6.1f}x "
              f"{diff:>9.2e}  {fmt(results['ours'])} / {fmt(results['naive'])}", flush=True)


if __name__ == "__main__":
    main()
