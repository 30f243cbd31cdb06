"""rloo vs grpo at equal wall time: reward per step, test accuracy, step time, on the default model.

    OMP_NUM_THREADS=1 python bench/bench_grpo.py [--task arithmetic] [--budget-s 120] [--n-test 200] [--json out.json]
    OMP_NUM_THREADS=1 python bench/bench_grpo.py --task arc --data ../shared/data/arc_easy --max-new-tokens 8

One process loads the model once; each method then trains a fresh SVF expert (z = 1) for the same time budget
with the trainer's own step functions (training/trainer._step for rloo, training/grpo.grpo_step for grpo) and the
trainer's batch seeding, so both see the same sequence of prompts. No validation or checkpoints inside the budget:
the expert tested is the last z. Test = the first --n-test examples of the test split, greedy, 95% Wilson interval.

The budget is this process's CPU time (time.process_time) with one torch thread, which on an idle machine is its
wall time; on a shared, loaded machine wall time swings with other jobs (steps of the same size were measured at
32 s and 92 s minutes apart), so CPU seconds are what makes "equal time" equal. Wall seconds are reported too.

Defaults: 8 prompts × 4 samples per step, lr 2e-3, temperature 1, the task's answer budget; grpo adds
--ppo-epochs 2 --minibatches 2 (4 updates per batch of rollouts), ε 0.2, sequence normalisation.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time


def run(method: str, svf, task, args) -> dict:
    import torch

    from transformer_squared.training import trainer
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.evaluation import default_max_new_tokens, evaluate
    from transformer_squared.training.grpo import grpo_step
    from transformer_squared.training.policy import SVFPolicy

    extra = dict(ppo_epochs=args.ppo_epochs, minibatches=args.minibatches, clip_eps=args.clip_eps,
                 loss_norm=args.loss_norm) if method == "grpo" else {}
    cfg = TrainConfig(task=args.task, out="unused", objective=method, batch_size=args.batch, group_size=args.group,
                      lr=args.lr, seed=args.seed, **extra)
    max_new = args.max_new_tokens or default_max_new_tokens(task)
    train_set = task.examples("train")
    policy = SVFPolicy(svf, cfg.parametrization)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows, t0, c0, step = [], time.perf_counter(), time.process_time(), 0
    try:
        while time.process_time() - c0 < args.budget_s:
            rng = random.Random(f"{cfg.seed}:{step}")  # as train_expert seeds each step
            torch.manual_seed(rng.randrange(2**31))
            batch = [task.augment(e, rng) for e in rng.sample(train_set, min(cfg.batch_size, len(train_set)))]
            s0, sc = time.perf_counter(), time.process_time()
            if method == "grpo":
                record = grpo_step(cfg, policy, task, batch, max_new, optimizer, step)
            else:
                record = trainer._step(cfg, policy, policy.model, policy.tokenizer, task, batch, max_new, optimizer)
            record.update(step=step + 1, step_s=round(time.process_time() - sc, 2),
                          step_wall_s=round(time.perf_counter() - s0, 2))
            rows.append(record)
            print(method, json.dumps({k: record[k] for k in ("step", "reward", "step_s", "step_wall_s", "updates")
                                      if k in record}), flush=True)
            step += 1
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        e0 = time.perf_counter()
        with policy.sampling():
            result = evaluate(policy.model, policy.tokenizer, task, "test", n=args.n_test, max_new_tokens=max_new,
                              progress=False)
        eval_s = time.perf_counter() - e0
    finally:
        policy.close()
    rewards = [r["reward"] for r in rows]
    return {"method": method, "steps": len(rows), "train_cpu_s": round(train_cpu_s, 1), "train_wall_s": round(train_s, 1),
            "eval_wall_s": round(eval_s, 1),
            "step_s_p50": statistics.median(r["step_s"] for r in rows), "rewards": rewards,
            "reward_first3": statistics.mean(rewards[:3]), "reward_last3": statistics.mean(rewards[-3:]),
            "updates": sum(r.get("updates", 0 if r.get("skipped") else 1) for r in rows),
            "test_accuracy": result.accuracy, "test_ci95": list(result.ci95), "test_n": result.n,
            "config": {k: v for k, v in cfg.to_dict().items() if k in (
                "objective", "batch_size", "group_size", "lr", "ppo_epochs", "minibatches", "clip_eps", "loss_norm")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--data", default=None)
    p.add_argument("--methods", nargs="+", default=["rloo", "grpo"])
    p.add_argument("--budget-s", type=float, default=120.0, help="training CPU seconds per method")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = the task's default")
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--minibatches", type=int, default=2)
    p.add_argument("--clip-eps", type=float, default=0.2)
    p.add_argument("--loss-norm", default="sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import os

    import torch

    from transformer_squared.svf import load_svf
    from transformer_squared.tasks import get_task

    torch.set_num_threads(args.threads)
    svf = load_svf("default", progress=False)
    task = get_task(args.task, args.data)
    results = [run(m, svf, task, args) for m in args.methods]

    print(f"\n{args.task}, {args.budget_s:.0f} CPU s of training per method, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| method | steps | updates | CPU s/step (p50) | train wall s | reward first 3 → last 3 | test accuracy (n) "
          "| 95% CI |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        lo, hi = r["test_ci95"]
        print(f"| {r['method']} | {r['steps']} | {r['updates']} | {r['step_s_p50']:.1f} | {r['train_wall_s']:.0f} | "
              f"{r['reward_first3']:.3f} → {r['reward_last3']:.3f} | {r['test_accuracy']:.1%} ({r['test_n']}) | "
              f"[{lo:.1%}, {hi:.1%}] |")
    for r in results:
        print(f"{r['method']} reward per step: " + " ".join(f"{x:.2f}" for x in r["rewards"]))
    if len(results) == 2:
        a, b = results
        print(f"step time {b['method']}/{a['method']}: {b['step_s_p50'] / a['step_s_p50']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
