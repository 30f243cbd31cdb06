"""LoRA export of an SVF expert at ranks K: relative error, greedy agreement with the SVF expert, test accuracy.

For each K the expert is exported with `lora_export.export_lora`, loaded by `peft.PeftModel.from_pretrained` on a
fresh copy of the base (as a multi-LoRA server would load it), merged, and asked the task's first `--n` test
prompts greedily. Agreement = the share of the first `--n-agree` prompts whose completion equals the SVF expert's,
character for character. The smallest K whose accuracy lies inside the expert's 95% interval is printed.

    OMP_NUM_THREADS=2 python bench/bench_export.py --library LIB --expert arithmetic --task arithmetic \\
        --ranks 16 64 128 256 512 full --n 200 --n-agree 100
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from transformer_squared.experts import ExpertLibrary
from transformer_squared.lora_export import export_lora, parse_rank
from transformer_squared.models import load_model
from transformer_squared.svf import load_svf
from transformer_squared.tasks import get_task
from transformer_squared.evaluation import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", required=True)
    ap.add_argument("--expert", required=True)
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--data", default=None)
    ap.add_argument("--ranks", nargs="+", default=["16", "64", "128", "256", "512", "full"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-agree", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args()

    from peft import PeftModel

    expert = ExpertLibrary(args.library).get(args.expert)
    task = get_task(args.task, args.data)
    svf = load_svf(expert.meta.base_model or "default", targets=expert.meta.targets, progress=False)
    t0 = time.perf_counter()
    with svf.applied(expert):
        ref = evaluate(svf.model, svf.tokenizer, task, "test", args.n, args.batch_size, progress=False)
    print(f"SVF expert {expert.name}: {ref.summary()}  ({time.perf_counter() - t0:.0f} s)")
    lo, hi = ref.ci95
    want = [r["completion"] for r in ref.records[: args.n_agree]]
    smallest = None
    print(f"{'K':>6} {'rel. error ΔW':>14} {'rel. error W′':>14} {'agree':>7} {'accuracy':>9} {'95% CI':>16}  s")
    for value in args.ranks:
        rank = parse_rank(value)
        with tempfile.TemporaryDirectory() as tmp:
            report = export_lora(svf, expert, f"{tmp}/lora", rank)
            base = load_model(expert.meta.base_model or "default")
            model = PeftModel.from_pretrained(base.model, f"{tmp}/lora").merge_and_unload().eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            result = evaluate(model, base.tokenizer, task, "test", args.n, args.batch_size, progress=False)
        got = [r["completion"] for r in result.records[: args.n_agree]]
        agree = sum(a == b for a, b in zip(got, want)) / len(want)
        inside = lo <= result.accuracy <= hi
        if inside and smallest is None:
            smallest = value
        print(f"{value:>6} {report.relative_error:>14.3e} {report.relative_weight_error:>14.3e} {agree:>7.0%} "
              f"{result.accuracy:>9.1%} [{result.ci95[0]:.1%}, {result.ci95[1]:.1%}]  {time.perf_counter() - t0:.0f}"
              + ("" if inside else "  (outside the expert's interval)"))
    print(f"smallest K inside the expert's 95% interval [{lo:.1%}, {hi:.1%}]: {smallest}")


if __name__ == "__main__":
    main()
