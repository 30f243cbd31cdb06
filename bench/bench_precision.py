"""bf16 vs float32 side by side, in one run, on the default model (CPU unless --device says otherwise).

    python bench/bench_precision.py [--only agreement rl rollout cem decode serve] [--device auto] [--json out.json]

Each part runs both dtypes in the same process, one after the other on identical inputs, and prints the ratio
float32 time / bf16 time (> 1 means bf16 is faster):

- agreement  greedy answers of the base model in bf16 vs float32 on 100 prompts (40 arithmetic, 30 GSM8K,
             30 ARC-Easy test; 24 new tokens): fraction of identical completions, mean common-prefix tokens, and
             each task's accuracy in both dtypes (quality parity of `--dtype auto` on a bf16 CPU)
- rl         one RL step (log-prob forward + backward + AdamW) on the same rollouts (8 prompts × 4 samples)
- rollout    sampling those rollouts (8 × 4, 16 new tokens, merged weights, temperature 1, same seed)
- cem        CEM population scoring with the loglik fitness: 16 candidates × 8 shots, per-row σ' (factored)
- decode     batch-1 greedy decode tokens/s (64 new tokens)
- serve      the serve engine's mixed-expert scenario (16 requests over base + 3 experts, rows batching)

Times are medians of --repeats runs after one warm-up. The machine may be shared: ratios from one run are
meaningful, absolute times less so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: spinning threads beside other jobs are ~5x slower
import torch

PARTS = ("agreement", "rl", "rollout", "cem", "decode", "serve")
DTYPES = ("float32", "bfloat16")


CPU_TIMES: dict[str, float] = {}  # part/dtype -> median CPU seconds of the process (less disturbed by load)


def _timed(fn, repeats: int, key: str = "") -> tuple[float, object]:
    """Median wall seconds of `repeats` calls after one warm-up; the median CPU seconds go to CPU_TIMES[key]."""
    fn()  # warm-up
    times, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if key:
        CPU_TIMES[key] = statistics.median(cpus)
    return statistics.median(times), out


def _models(device: str):
    from transformer_squared.svf import load_svf

    return {d: load_svf("default", progress=False, device=device, dtype=d) for d in DTYPES}


def _prompts(data_dir: str) -> list[tuple[object, dict]]:
    from transformer_squared.tasks import get_task

    out = []
    for name, data, n in (("arithmetic", None, 40), ("gsm8k", "gsm8k", 30), ("arc", "arc_easy", 30)):
        task = get_task(name, os.path.join(data_dir, data) if data else None)
        out += [(task, e) for e in task.examples("test")[:n]]
    return out


def agreement(svfs, args) -> dict:
    from transformer_squared.generation import GenerationConfig, chat_text, generate_ids

    items = _prompts(args.data_dir)
    config = GenerationConfig(max_new_tokens=24, batch_size=16)
    ids, secs = {}, {}
    for d, svf in svfs.items():
        texts = [chat_text(svf.tokenizer, e["prompt"]) for _, e in items]
        t0 = time.perf_counter()
        ids[d] = [r.cpu().tolist() for r in generate_ids(svf.model, svf.tokenizer, texts, config)]
        secs[d] = time.perf_counter() - t0
    a, b = ids["float32"], ids["bfloat16"]
    same = sum(x == y for x, y in zip(a, b))
    prefix = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y))) for x, y in zip(a, b)]
    tok = svfs["float32"].tokenizer
    acc: dict = {}
    for d in DTYPES:
        for (task, e), row in zip(items, ids[d]):
            acc.setdefault(task.name, {}).setdefault(d, []).append(task.score(tok.decode(row, skip_special_tokens=True), e))
    accuracy = {t: {d: sum(v) / len(v) for d, v in per.items()} for t, per in acc.items()}
    print(f"agreement: {same}/{len(items)} identical greedy completions ({same / len(items):.0%}); mean common "
          f"prefix {statistics.mean(prefix):.1f} tokens; generation {secs['float32']:.1f} s fp32 vs "
          f"{secs['bfloat16']:.1f} s bf16 ({secs['float32'] / secs['bfloat16']:.2f}x)")
    for t, per in accuracy.items():
        print(f"  {t:10} accuracy fp32 {per['float32']:.0%}  bf16 {per['bfloat16']:.0%}  (n={len(acc[t]['float32'])})")
    return {"identical": same, "n": len(items), "mean_prefix": statistics.mean(prefix), "accuracy": accuracy,
            "seconds": secs}


def _rollout_prompts(n: int):
    from transformer_squared.tasks import get_task

    return [e["prompt"] for e in get_task("arithmetic").examples("train")[:n]]


def rollout(svfs, args) -> dict:
    from transformer_squared.training.policy import SVFPolicy
    from transformer_squared.training.rollout import sample

    prompts, out = _rollout_prompts(args.batch), {}
    seeds = list(range(len(prompts) * args.group))  # seeded per row, as the trainer samples (RowGumbel)
    for d, svf in svfs.items():
        policy = SVFPolicy(svf)
        try:
            def run():
                torch.manual_seed(0)
                with policy.sampling():
                    return sample(svf.model, svf.tokenizer, prompts, 16, 1.0, group_size=args.group, seeds=seeds)
            out[d], _ = _timed(run, args.repeats, f"rollout {d}")
        finally:
            policy.close()
    return out


def rl(svfs, args) -> dict:
    from transformer_squared.training.objectives import advantages, policy_loss
    from transformer_squared.training.policy import SVFPolicy
    from transformer_squared.training.rollout import sample
    from transformer_squared.logprobs import token_logprobs

    prompts = _rollout_prompts(args.batch)
    first = svfs["float32"]
    torch.manual_seed(0)
    ro = sample(first.model, first.tokenizer, prompts, 16, 1.0, group_size=args.group)  # the same rollouts for both
    scores = torch.randint(0, 2, (len(ro),), generator=torch.Generator().manual_seed(0)).float()
    adv = advantages("rloo", scores, args.group)
    out = {}
    for d, svf in svfs.items():
        policy = SVFPolicy(svf)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        try:
            def run():
                opt.zero_grad()
                for sl in ro.chunks():
                    part = ro.rows(sl)
                    loss, _ = policy_loss(token_logprobs(svf.model, part), part.completion_mask, adv[sl])
                    (loss * len(part) / len(ro)).backward()
                opt.step()
            out[d], _ = _timed(run, args.repeats, f"rl {d}")
        finally:
            policy.close()
    return out


def cem(svfs, args) -> dict:
    from transformer_squared.adapt.cem import CEMConfig, Population, fewshot_examples
    from transformer_squared.experts import Expert
    from transformer_squared.tasks import get_task

    task = get_task("arithmetic")
    shots = fewshot_examples(task, 8, 0)
    out = {}
    for d, svf in svfs.items():
        g = torch.Generator().manual_seed(0)
        experts = [Expert.for_model(svf, {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in svf.init_z().items()},
                                    name=f"e{i}") for i in range(3)]
        pop = Population(svf, experts, shots, task, CEMConfig(population=16, fitness="loglik"))
        alphas = torch.rand(16, len(pop.components), generator=torch.Generator().manual_seed(1))
        out[d], _ = _timed(lambda: pop.score(alphas), args.repeats, f"cem {d}")
    return out


def decode(svfs, args) -> dict:
    from transformer_squared.generation import GenerationConfig, chat_text, generate_ids

    out = {}
    for d, svf in svfs.items():
        text = [chat_text(svf.tokenizer, "Write a short story about a robot who learns to paint.")]
        config = GenerationConfig(max_new_tokens=64, batch_size=1)
        secs, ids = _timed(lambda: generate_ids(svf.model, svf.tokenizer, text, config), args.repeats, f"decode {d}")
        out[d] = secs / max(len(ids[0]), 1)  # seconds per token
        CPU_TIMES[f"decode {d}"] /= max(len(ids[0]), 1)
    return out


def serve(svfs, args) -> dict:
    from transformer_squared.experts import Expert
    from transformer_squared.serve.decode import Row, decode_batch

    out = {}
    for d, svf in svfs.items():
        g = torch.Generator().manual_seed(0)
        experts = [None] + [Expert.for_model(svf, {n: v + 0.05 * torch.randn(v.shape, generator=g)
                                                   for n, v in svf.init_z().items()}, name=f"e{i}") for i in range(3)]
        prompts = _rollout_prompts(16)
        tok = svf.tokenizer

        def run():
            rows = [Row(tok(p, add_special_tokens=False)["input_ids"], 16, experts[i % 4]) for i, p in enumerate(prompts)]
            return decode_batch(svf, rows, "rows", tok.pad_token_id, {tok.eos_token_id})
        out[d], _ = _timed(run, args.repeats, f"serve {d}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformer_squared.precision import cpu_bf16_units, resolve_device

    device = resolve_device(args.device)
    print(f"device {device}, bf16 units {cpu_bf16_units()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f} (shared machine: ratios, not absolute times)")
    svfs = _models(args.device)
    results = {}
    goals = {"rl": 3.0, "rollout": 2.0, "cem": 3.0, "serve": 1.5, "decode": None}
    for part in args.only:
        res = globals()[part](svfs, args)
        results[part] = res
        if part != "agreement":
            ratio = res["float32"] / res["bfloat16"]
            unit = "s/token" if part == "decode" else "s"
            goal = goals.get(part)
            cpu = {d: CPU_TIMES.get(f"{part} {d}") for d in DTYPES}
            cpu_ratio = f"; CPU time {cpu['float32']:.3f} vs {cpu['bfloat16']:.3f} = {cpu['float32'] / cpu['bfloat16']:.2f}x" \
                if all(cpu.values()) else ""
            res["cpu"] = cpu
            print(f"{part:8} fp32 {res['float32']:.3f} {unit}  bf16 {res['bfloat16']:.3f} {unit}  speed-up {ratio:.2f}x"
                  + (f"  (goal >= {goal}x: {'met' if ratio >= goal else 'missed'})" if goal else "") + cpu_ratio,
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
