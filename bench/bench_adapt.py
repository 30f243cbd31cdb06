"""Self-adaptation benchmarks on the default model.

dispatch  Pass-1 dispatch accuracy of each strategy on a mixed pool of GSM8K / MBPP / ARC-Easy / arithmetic test
          prompts. The library routes four domains (math, code, reasoning, arithmetic): the arithmetic expert from
          LIB plus identity experts (z = 1) that record their task — dispatch only measures pass 1, so their
          answers do not matter. The classifier expert is trained (SFT, as in `t2 demo`) on that library first.
unseen    Tasks no expert was trained on: accuracy of the base, each single expert, and each strategy (prompt,
          classifier, embedding, few-shot CEM), with 95% intervals.

    python bench/bench_adapt.py --library LIB --data ../shared/data [--parts dispatch unseen] [--n 50]
LIB is a library like the one `t2 demo` builds (arithmetic + antonyms + dispatcher).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from transformer_squared.adapt import build_strategy
from transformer_squared.adapt.cem import CEMConfig, FewShotStrategy
from transformer_squared.adapt.classify import ClassifyTask
from transformer_squared.adapt.two_pass import FixedStrategy, evaluate_strategy
from transformer_squared.cli.options import GENERATED, data_folder
from transformer_squared.adapt.routes import answer_experts
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.svf import load_svf
from transformer_squared.tasks import get_task
from transformer_squared.training.config import TrainConfig
from transformer_squared.training.trainer import train_expert

POOL = {"gsm8k": "gsm8k", "mbpp": "mbpp", "arc": "arc_easy", "arithmetic": None}  # task -> data subfolder


def dispatch(svf, library: ExpertLibrary, data: Path, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lib = ExpertLibrary(Path(tmp) / "experts")
        lib.add(library.get("arithmetic"), "arithmetic")
        for name, folder in POOL.items():
            if name == "arithmetic":
                continue
            task = get_task(name, data / folder)
            lib.add(Expert.for_model(svf, None, domain=task.domain, description=task.description,
                                     created_by={"method": "init", "config": {"task": name, "data": str(data / folder)}}),
                    name)
        t0 = time.perf_counter()
        cfg = TrainConfig(model=svf.model_id, task="classify", out=str(lib.root / "dispatcher"), objective="sft",
                          steps=12, batch_size=8, lr=3e-3, valid_every=12, valid_n=40, run_dir=str(Path(tmp) / "run"))
        result = train_expert(cfg, task=ClassifyTask(lib), svf=svf, progress=False)
        print(f"classifier: SFT 12 steps, valid accuracy {result.best_valid:.0%}, {time.perf_counter() - t0:.0f} s")
        tasks = [get_task(name, data / folder if folder else None) for name, folder in POOL.items()]
        routes = answer_experts(lib)
        print(f"routes: { {d: e.name for d, e in routes.items()} }; pool: {n} test prompts of each task")
        print(f"{'strategy':11} " + " ".join(f"{t.name:>11}" for t in tasks) + f" {'all':>6} {'pass-1 ms/prompt':>17}")
        for name in ("prompt", "classifier", "embedding"):
            strategy = build_strategy(name, svf, lib)
            pool = [(t, e) for t in tasks for e in t.examples("test")[:n]]
            t0 = time.perf_counter()
            selections = strategy.select(svf, [e["prompt"] for _, e in pool])
            ms = (time.perf_counter() - t0) / len(pool) * 1e3
            per_task = []
            for t in tasks:
                hits = [s.label == t.domain for (tt, _), s in zip(pool, selections) if tt is t]
                per_task.append(sum(hits) / len(hits))
            total = sum(s.label == t.domain for (t, _), s in zip(pool, selections)) / len(pool)
            print(f"{name:11} " + " ".join(f"{a:>11.0%}" for a in per_task) + f" {total:>6.0%} {ms:>17.0f}", flush=True)


UNSEEN = ["addition3", "subtraction", "arc"]  # tasks no expert of the demo's library was trained on


def unseen(svf, library: ExpertLibrary, data: Path, n: int, shots: int, cem: CEMConfig,
           names: list[str] = UNSEEN) -> None:
    routes = answer_experts(library)
    tasks = [get_task(name, data / data_folder(name) if name not in GENERATED else None) for name in names]
    print(f"experts: {', '.join(e.name for e in routes.values())}; unseen tasks: {', '.join(t.name for t in tasks)}; "
          f"n={n}; CEM {shots} shots, population {cem.population}, iterations {cem.iterations}, {cem.fitness}")
    rows = {"base": lambda t: FixedStrategy(None)}
    for e in routes.values():
        rows[f"expert {e.name}"] = lambda t, e=e: FixedStrategy(e)
    for name in ("prompt", "classifier", "embedding"):
        try:
            strategy = build_strategy(name, svf, library)
        except ValueError as e:  # e.g. no classifier expert in this library
            print(f"   {name:20} n/a: {e}")
            continue
        rows[name] = lambda t, s=strategy: s
    rows["cem"] = lambda t: FewShotStrategy(list(routes.values()), t, shots, cem, progress=False)
    for task in tasks:
        print(f"-- {task.name}")
        for name, make in rows.items():
            t0 = time.perf_counter()
            strategy = make(task)
            report = evaluate_strategy(svf, [task], strategy, n=n, batch_size=32, routes=routes, progress=False)
            r = report.tasks[0]
            extra = ""
            if name == "cem":
                alpha = {k: round(v, 2) for k, v in strategy.result.alpha_dict(svf.names).items()}
                extra = f"  α {alpha}, shots acc {strategy.result.accuracy:.0%}"
            print(f"   {name:20} {r.accuracy:6.1%} [{r.ci95[0]:.1%}, {r.ci95[1]:.1%}]  experts {r.selected}  "
                  f"{time.perf_counter() - t0:.0f} s{extra}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", required=True)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--parts", nargs="+", default=["dispatch", "unseen"], choices=["dispatch", "unseen"])
    p.add_argument("--n", type=int, default=50, help="dispatch: prompts per task")
    p.add_argument("--n-unseen", type=int, default=100, help="unseen: test prompts per task")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--fitness", default="accuracy")
    p.add_argument("--dtype", default="float32", help="compute dtype (auto: bf16 on this CPU)")
    p.add_argument("--unseen", nargs="+", default=UNSEEN, help="unseen: the tasks (their data under --data)")
    args = p.parse_args()
    library = ExpertLibrary(args.library)
    first = next(iter(answer_experts(library).values()), None)
    svf = load_svf("default", targets=first.meta.targets if first else "mlp", progress=False, dtype=args.dtype)
    if "dispatch" in args.parts:
        dispatch(svf, library, Path(args.data), args.n)
    if "unseen" in args.parts:
        unseen(svf, library, Path(args.data), args.n_unseen, args.shots,
               CEMConfig(population=args.population, iterations=args.iterations, fitness=args.fitness), args.unseen)


if __name__ == "__main__":
    main()
