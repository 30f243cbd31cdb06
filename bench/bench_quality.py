"""Quality on held-out test splits: base vs SVF expert vs LoRA, same objective and budget, on the default model.

    python bench/bench_quality.py --tasks arithmetic arc --steps 40 --n-test 300 --json results/quality.json

For each task: evaluate the base model; train an SVF expert and a LoRA adapter with the same objective, batch,
group size, steps and seed (learning rates differ: each method gets the one we use by default for it); evaluate
both on the first --n-test examples of the test split. Prints one table with 95% Wilson intervals, trainable
parameter counts, training wall time and, for multiple-choice tasks, the answer distribution (a collapsed
expert that answers one letter shows up there). Training runs are resumable: rerunning continues them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TASK_DATA = {"arithmetic": None, "arc": DATA / "arc_easy", "gsm8k": DATA / "gsm8k", "mbpp": DATA / "mbpp"}
# Short answers need few new tokens; the budget is part of the task's setting, the same for every method.
MAX_NEW = {"arithmetic": 16, "arc": 8, "gsm8k": 256, "mbpp": 256}
LR = {"svf": 2e-3, "lora": 5e-4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "arc"])
    ap.add_argument("--methods", nargs="+", default=["svf", "lora"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--objective", default="rloo")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--valid-n", type=int, default=100)
    ap.add_argument("--valid-every", type=int, default=10)
    ap.add_argument("--workdir", default="bench_runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformer_squared.experts import Expert
    from transformer_squared.models import load_model
    from transformer_squared.svf import load_svf
    from transformer_squared.tasks import get_task
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.evaluate import evaluate
    from transformer_squared.training.trainer import train_expert

    work = Path(args.workdir)
    rows = []
    for task_name in args.tasks:
        task = get_task(task_name, TASK_DATA.get(task_name))
        test = task.examples("test")[: args.n_test]
        lm = load_model("default")
        base = evaluate(lm.model, lm.tokenizer, task, examples=test, max_new_tokens=MAX_NEW[task_name])
        rows.append({"task": task_name, "method": "base", "params": 0, "train_s": 0, **base.to_dict()})
        print(base.summary(), flush=True)
        for method in args.methods:
            out = work / method / task_name
            cfg = TrainConfig(task=task_name, data=str(TASK_DATA[task_name]) if TASK_DATA.get(task_name) else None,
                              out=str(out), run_dir=str(work / "runs" / method / task_name), method=method,
                              objective=args.objective, steps=args.steps, batch_size=args.batch_size,
                              group_size=args.group_size, lr=LR[method], temperature=args.temperature,
                              max_new_tokens=MAX_NEW[task_name], valid_n=args.valid_n, valid_every=args.valid_every, save_every=5)
            resume = (Path(cfg.run_dir) / "checkpoint.pt").exists()
            t0 = time.perf_counter()
            result = train_expert(cfg, resume=resume)
            train_s = time.perf_counter() - t0
            if method == "svf":
                svf = load_svf("default", progress=False, dtype="float32")
                with svf.applied(Expert.load(out)):
                    res = evaluate(svf.model, svf.tokenizer, task, examples=test, max_new_tokens=MAX_NEW[task_name])
            else:
                from peft import PeftModel

                lm = load_model("default")
                model = PeftModel.from_pretrained(lm.model, str(out)).merge_and_unload().eval()
                res = evaluate(model, lm.tokenizer, task, examples=test, max_new_tokens=MAX_NEW[task_name])
            rows.append({"task": task_name, "method": method, "params": result.num_trainable,
                         "train_s": round(train_s), "best_step": result.best_step,
                         "best_valid": result.best_valid, **res.to_dict()})
            print(res.summary(), flush=True)

    print(f"\n{'task':11} {'method':6} {'accuracy':>9} {'95% CI':>17} {'trainable':>10} {'train s':>8}  answers")
    for r in rows:
        lo, hi = r["ci95"]
        answers = " ".join(f"{k}:{v:.0%}" for k, v in sorted(r["answers"].items())) if r["answers"] else ""
        print(f"{r['task']:11} {r['method']:6} {r['accuracy']:9.1%} {f'[{lo:.1%}, {hi:.1%}]':>17} "
              f"{r['params']:>10,} {r['train_s']:>8}  {answers}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
