"""One RL optimisation step on identical rollouts: SVF (factored path) vs LoRA vs the reference gradient path.

    python bench/bench_rl_step.py [--repeats 3] [--batch 8] [--group 4] [--json out.json]

Rollouts (arithmetic prompts, `--batch` prompts × `--group` samples, 16 new tokens) are sampled once with the
base model and saved; each variant then runs in its own process (so peak RSS is its own) and times
log-prob forward + backward + AdamW step on those same rollouts:

- svf          factored SVFLinear (y = U (σ' ⊙ Vᵀx)), prompt prefill shared per group (this project)
- svf-flat     the same without sharing the prompt prefill across a group
- lora         PEFT LoRA r=16 on q/v (the paper's baseline), prompt prefill shared too
- reference    the official Transformer² gradient path: every step recomposes each matrix densely as
               U @ diag_embed(σ ⊙ z) @ Vᵀ with autograd, so backward builds the dense weight gradient and then a
               vector-Jacobian product through the recomposition
Also reported: the rollout (sampling) time with merged SVF weights, shared vs unshared prefill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time


def _load():
    from transformer_squared.svf import load_svf

    return load_svf("default", progress=False, dtype="float32")


def _rollouts(path: str, batch: int, group: int) -> None:
    import torch

    from transformer_squared.tasks import get_task
    from transformer_squared.training.rollout import sample

    svf = _load()
    task = get_task("arithmetic")
    prompts = [e["prompt"] for e in task.examples("train")[:batch]]
    torch.manual_seed(0)
    times = {}
    for name, K, ps in (("shared", group, prompts), ("flat", 1, [p for p in prompts for _ in range(group)])):
        t0 = time.perf_counter()
        ro = sample(svf.model, svf.tokenizer, ps, 16, 1.0, group_size=K)
        times[name] = time.perf_counter() - t0
    ro = dataclasses.replace(ro, group_size=group)
    scores = torch.randint(0, 2, (len(ro),)).float()
    torch.save({"rollout": dataclasses.asdict(ro), "scores": scores, "sample_s": times}, path)


class ReferenceSVF(__import__("torch").nn.Module):
    """The official code's path: W' = U @ diag_embed(σ ⊙ z) @ Vᵀ recomposed with autograd every forward."""

    def __init__(self, base, U, S, Vh):
        import torch

        super().__init__()
        self.base, self.U, self.S, self.Vh = base, U, S, Vh
        self.svf_z = torch.nn.Parameter(torch.ones_like(S))

    def forward(self, x):
        import torch

        W = self.U @ torch.diag_embed(self.S * self.svf_z) @ self.Vh  # dense (out, in), in the graph
        return torch.nn.functional.linear(x, W, self.base.bias)


def _variant(name: str, path: str, repeats: int, queue) -> None:
    import torch

    from transformer_squared.training.objectives import advantages, policy_loss
    from transformer_squared.logprobs import Rollout, token_logprobs

    saved = torch.load(path, weights_only=False)
    ro = Rollout(**saved["rollout"])
    if name == "svf-flat":
        ro = dataclasses.replace(ro, group_size=1)
    svf = _load()
    if name in ("svf", "svf-flat"):
        from transformer_squared.training.policy import SVFPolicy

        policy = SVFPolicy(svf)
        params, model = policy.parameters(), svf.model
    elif name == "lora":
        from transformer_squared.training.policy import LoRAPolicy

        policy = LoRAPolicy(svf.model, svf.tokenizer)
        params, model = policy.parameters(), policy.model
    else:
        from transformer_squared.svf import _set_submodule

        params = []
        for n, lin in svf.linears.items():
            U, S, Vh = svf.decomposition.factors(n)
            layer = ReferenceSVF(lin, U, S, Vh)
            _set_submodule(svf.model, n, layer)
            params.append(layer.svf_z)
        for p in svf.model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model = svf.model
    opt = torch.optim.AdamW(params, lr=1e-3)
    adv = advantages("rloo", saved["scores"], saved["rollout"]["group_size"])
    times = []
    for _ in range(repeats + 1):  # first run warms up
        t0 = time.perf_counter()
        opt.zero_grad()
        for sl in ro.chunks():
            part = ro.rows(sl)
            loss, _ = policy_loss(token_logprobs(model, part), part.completion_mask, adv[sl])
            (loss * len(part) / len(ro)).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    queue.put({"variant": name, "times": times[1:], "trainable": sum(p.numel() for p in params),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=["svf", "svf-flat", "lora", "reference"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    print(f"cores {os.cpu_count()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    ctx = mp.get_context("spawn")
    path = os.path.join(tempfile.mkdtemp(), "rollouts.pt")
    p = ctx.Process(target=_rollouts, args=(path, args.batch, args.group))
    p.start(), p.join()
    sample_s = torch.load(path, weights_only=False)["sample_s"]
    results = []
    for name in args.variants:
        q = ctx.Queue()
        p = ctx.Process(target=_variant, args=(name, path, args.repeats, q))
        p.start()
        results.append(q.get())
        p.join()
    ref = {r["variant"]: statistics.median(r["times"]) for r in results}
    print(f"\nrollout sampling ({args.batch}×{args.group}, 16 tokens, merged weights): shared prefill "
          f"{sample_s['shared']:.2f} s, per-row prefill {sample_s['flat']:.2f} s "
          f"({sample_s['flat'] / sample_s['shared']:.2f}×)")
    print(f"\n{'variant':10} {'p50 s':>8} {'min s':>8} {'trainable':>10} {'peak RSS MB':>12}  ratio to svf")
    for r in results:
        med = statistics.median(r["times"])
        print(f"{r['variant']:10} {med:8.2f} {min(r['times']):8.2f} {r['trainable']:>10,} {r['peak_rss_mb']:12.0f}  "
              f"{med / ref['svf']:.2f}×" if "svf" in ref else "")
    if "svf" in ref:
        for other in ("lora", "reference", "svf-flat"):
            if other in ref:
                print(f"svf vs {other}: svf takes {ref['svf'] / ref[other]:.2f}× the time of {other}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "sample_s": sample_s, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
