"""Quality on held-out test splits: base vs SVF expert vs LoRA, each trained by one recipe, on the default model.

    python bench/bench_quality.py --configs configs/arc.yaml configs/arithmetic.yaml --n-test 600

Each recipe is a `t2 train --config` file. For each: evaluate the base model on the first --n-test examples of the
test split; train an SVF expert exactly as the file says (`t2 train --config FILE` trains the same one), and a
LoRA adapter with the same task, objective, warm start, batch, group size, steps and seed (the paper's baseline:
r 16, alpha 32, dropout 0.05 on q/v; its own learning rate, --lora-lr); keep the checkpoint best on validation;
evaluate both on the same test examples, greedily, on the device and in the compute dtype they trained in. Prints
one table with 95% Wilson intervals, the answer distribution of multiple-choice tasks beside the test keys' (a
label prior shows up as a skew there), trainable parameters and training wall time. Training runs resume when rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path


def answers_text(answers: dict) -> str:
    return " ".join(f"{k}:{v:.0%}" for k, v in sorted(answers.items())) if answers else ""


def print_table(rows: list[dict]) -> None:
    print(f"\n{'recipe':12} {'method':6} {'n':>5} {'accuracy':>9} {'95% CI':>17} {'trainable':>10} {'train s':>8}"
          f"  answers")
    for r in rows:
        lo, hi = r["ci95"]
        print(f"{r['recipe']:12} {r['method']:6} {r['n']:>5} {r['accuracy']:9.1%} {f'[{lo:.1%}, {hi:.1%}]':>17} "
              f"{r['params']:>10,} {r['train_s']:>8}  {answers_text(r['answers'])}")
        if r.get("keys"):
            print(f"{'':12} {'keys':6} {'':>5} {'':>9} {'':>17} {'':>10} {'':>8}  {answers_text(r['keys'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["configs/arc.yaml"], help="t2 train --config files")
    ap.add_argument("--methods", nargs="+", default=["svf", "lora"], choices=["svf", "lora"])
    ap.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA's learning rate (SVF uses the file's)")
    ap.add_argument("--steps", type=int, default=None, help="override the files' steps (a quick check)")
    ap.add_argument("--n-test", type=int, default=600, help="first N test examples, the same for every row")
    ap.add_argument("--no-base", action="store_true", help="skip the base rows (e.g. a second process training LoRA)")
    ap.add_argument("--workdir", default="bench_runs/quality")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                    help="only print the table of earlier runs' --json files (e.g. SVF and LoRA trained side by side)")
    args = ap.parse_args()
    if args.table:
        print_table([row for path in args.table for row in json.loads(Path(path).read_text())])
        return

    from transformer_squared.config import config_from_args
    from transformer_squared.experts import Expert
    from transformer_squared.models import load_model
    from transformer_squared.precision import resolve
    from transformer_squared.svf import load_svf
    from transformer_squared.tasks import get_task
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.evaluation import evaluate
    from transformer_squared.training.trainer import train_expert

    work = Path(args.workdir)
    rows = []
    for path in args.configs:
        recipe = config_from_args(argparse.Namespace(config=path), TrainConfig)
        if args.steps:
            recipe = dataclasses.replace(recipe, steps=args.steps, sft_steps=min(recipe.sft_steps, args.steps))
        task = get_task(recipe.task, recipe.data)
        test = task.examples("test")[: args.n_test]
        max_new = recipe.max_new_tokens or None
        precision = resolve(recipe.device, recipe.dtype)  # what the recipe trains in; every row is scored in it
        on = {"device": precision.device, "dtype": precision.dtype}
        keys = Counter(e["answer"] for e in test) if "choices" in test[0] else None
        name = Path(path).stem
        if not args.no_base:
            lm = load_model(recipe.model, **on)
            base = evaluate(lm.model, lm.tokenizer, task, examples=test, max_new_tokens=max_new)
            rows.append({"recipe": name, "task": task.name, "method": "base", "params": 0, "train_s": 0,
                         "keys": {k: v / len(test) for k, v in keys.items()} if keys else {}, **base.to_dict()})
            print(base.summary(), flush=True)
            del lm
        for method in args.methods:
            out = work / name / method
            cfg = dataclasses.replace(recipe, method=method, out=str(out), run_dir=str(work / "runs" / name / method),
                                      overwrite=True, lr=recipe.lr if method == "svf" else args.lora_lr)
            resume = (Path(cfg.run_dir) / "checkpoint.pt").exists()
            t0 = time.perf_counter()
            result = train_expert(cfg, resume=resume)
            train_s = time.perf_counter() - t0
            if method == "svf":
                svf = load_svf(recipe.model, targets=recipe.targets, progress=False, **on)
                with svf.applied(Expert.load(out)):
                    res = evaluate(svf.model, svf.tokenizer, task, examples=test, max_new_tokens=max_new)
            else:
                from peft import PeftModel

                lm = load_model(recipe.model, **on)
                model = PeftModel.from_pretrained(lm.model, str(out)).merge_and_unload().eval()
                res = evaluate(model, lm.tokenizer, task, examples=test, max_new_tokens=max_new)
            rows.append({"recipe": name, "task": task.name, "method": method, "params": result.num_trainable,
                         "train_s": round(train_s), "best_step": result.best_step, "best_valid": result.best_valid,
                         **res.to_dict()})
            print(res.summary(), flush=True)

    print_table(rows)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
