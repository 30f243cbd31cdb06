"""Data-parallel training: 2 ranks × 1 thread (torchrun, gloo) vs 1 rank × 2 threads, same global batch.

Both sides run the same `t2 train` (same seed, batch, steps) in fresh processes, one after the other. Step time is
the mean over the steps between the first and the last (the first warms up, the last validates), from each run's
metrics.jsonl. Under torchrun the workers time every collective (all-reduce of the gradients and metrics, the
validation gather, barriers); that time includes waiting for the slower rank, so it bounds the communication
share from above. The z vectors both runs end with are compared, and so are their per-step rewards.

A second part measures how often batch-size-dependent rounding flips a sampled token: the same prompts, the same
per-sample seeds, sampled once as one batch and once split into `--ranks` shares (the layout each rank sees), and
the rows whose completions differ are counted.

    python bench/bench_scale.py --model default --steps 4 --batch-size 8 --group-size 2 --max-new-tokens 8
    python bench/bench_scale.py --flips-only --model default --prompts 64 --group-size 4 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_collectives(out: Path) -> None:
    """Worker side: wrap World's collectives with timers; rank 0 writes the total at exit."""
    import atexit

    from transformer_squared.training import distributed

    spent = {}  # {collective: [seconds, calls]}
    for name in ("all_sum", "sync_gradients", "gather", "barrier"):
        method = getattr(distributed.World, name)

        def timed(self, *args, _method=method, **kwargs):
            t0 = time.perf_counter()
            try:
                return _method(self, *args, **kwargs)
            finally:
                entry = spent.setdefault(_method.__name__, [0.0, 0])
                entry[0] += time.perf_counter() - t0
                entry[1] += 1

        setattr(distributed.World, name, timed)
    rank = int(os.environ.get("RANK", "0"))
    atexit.register(lambda: out.with_name(f"comm-{rank}.json").write_text(json.dumps(spent)))


def step_times(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = [r["seconds"] for r in rows]
    return [b - a for a, b in zip(t, t[1:])][:-1]  # drop the last step (it validates)


def run_training(args, root: Path) -> None:
    common = ["train", "--model", args.model, "--task", args.task, "--steps", str(args.steps), "--batch-size",
              str(args.batch_size), "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens),
              "--objective", args.objective, "--valid-n", "2", "--valid-every", "1000", "--quiet"]
    sides = {
        "1 rank x 2 threads": ({"OMP_NUM_THREADS": "2"}, [sys.executable, "-m", "transformer_squared"]),
        "2 ranks x 1 thread": ({"OMP_NUM_THREADS": "1"},
                               [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", __file__,
                                "--worker", str(root / "comm")]),
    }
    results = {}
    for label, (env, launcher) in sides.items():
        name = label.split()[0]
        cmd = [*launcher, *common, "--out", str(root / "experts" / name), "--run-dir", str(root / "runs" / name)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
        times = step_times(root / "runs" / name)
        results[label] = sum(times) / len(times)
        print(f"{label}: {results[label]:.2f} s/step over {len(times)} steps ({time.perf_counter() - t0:.0f} s total)")
    comm = [json.loads((root / f"comm-{r}.json").read_text()) for r in (0, 1)]
    timed_steps = sum(step_times(root / "runs" / "2"))
    for r, c in enumerate(comm):
        print(f"rank {r} collectives over the run: " + ", ".join(f"{k} {v[0]:.2f} s / {v[1]} calls" for k, v in c.items()))
    in_steps = sum(comm[0].get(k, [0.0])[0] for k in ("all_sum", "sync_gradients")) * len(step_times(root / "runs" / "2")) / args.steps
    a, b = results["1 rank x 2 threads"], results["2 ranks x 1 thread"]
    print(f"ratio (1x2 / 2x1 step time): {a / b:.2f}")
    print(f"communication share of a step (rank 0, all_sum + sync_gradients, incl. waiting for rank 1): "
          f"{in_steps / timed_steps:.1%}")
    import torch

    z1 = torch.load(root / "runs" / "1" / "checkpoint.pt", weights_only=False)["policy"]
    z2 = torch.load(root / "runs" / "2" / "checkpoint.pt", weights_only=False)["policy"]
    print(f"max |z(1 rank) - z(2 ranks)| after {args.steps} steps: {max(float((z1[n] - z2[n]).abs().max()) for n in z1):.2e}")
    rewards = [[json.loads(line).get("reward") for line in (root / "runs" / n / "metrics.jsonl").read_text().splitlines()]
               for n in ("1", "2")]
    print(f"per-step rewards equal: {rewards[0] == rewards[1]}  ({rewards[0]} vs {rewards[1]})")


def flips(args) -> None:
    import random

    import torch

    from transformer_squared.models import load_model
    from transformer_squared.tasks import get_task
    from transformer_squared.training.distributed import World
    from transformer_squared.training.rollout import sample

    torch.set_num_threads(1)
    loaded = load_model(args.model)
    examples = get_task(args.task).examples("train")[: args.prompts]
    prompts, K = [e["prompt"] for e in examples], args.group_size
    seeds = [random.Random(f"0:0:{i}:{k}").randrange(2**63) for i in range(len(prompts)) for k in range(K)]
    t0 = time.perf_counter()
    whole = sample(loaded.model, loaded.tokenizer, prompts, args.max_new_tokens, 1.0, K, seeds=seeds).completions
    split = []
    for r in range(args.ranks):
        sl = World(r, args.ranks).shard(len(prompts))
        split += sample(loaded.model, loaded.tokenizer, prompts[sl], args.max_new_tokens, 1.0, K,
                        seeds=seeds[sl.start * K: sl.stop * K]).completions
    differ = sum(a != b for a, b in zip(whole, split))
    print(f"flipped samples: {differ} of {len(whole)} ({differ / len(whole):.1%}) rows differ between one batch of "
          f"{len(prompts)} prompts and {args.ranks} shares (K={K}, {args.max_new_tokens} new tokens, T=1; "
          f"{time.perf_counter() - t0:.0f} s)")


def main() -> None:
    if "--worker" in sys.argv:  # launched by torchrun: time the collectives, then run `t2` with the rest
        i = sys.argv.index("--worker")
        out = Path(sys.argv[i + 1])
        argv = sys.argv[1:i] + sys.argv[i + 2:]
        timed_collectives(out)
        from transformer_squared.cli import main as t2

        sys.exit(t2(argv))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--objective", default="reinforce", help="reinforce: every step has a gradient")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64, help="flip measurement: prompts sampled")
    ap.add_argument("--ranks", type=int, default=2, help="flip measurement: shares the batch is split into")
    ap.add_argument("--flips-only", action="store_true")
    ap.add_argument("--no-flips", action="store_true")
    args = ap.parse_args()
    if not args.flips_only:
        with tempfile.TemporaryDirectory() as tmp:
            run_training(args, Path(tmp))
    if not args.no_flips:
        flips(args)


if __name__ == "__main__":
    main()
