"""The training loop: sample → reward → advantage → loss → step → log, in one function.

Rollouts use merged weights under no_grad (as fast as the base model); log-probs and z-gradients go through the
factored path, so no dense weight gradient is ever built. Every `save_every` steps the run state (trainable
tensors, optimizer, step, best validation score) is written atomically to `<run_dir>/checkpoint.pt`; a killed run
resumed with `--resume` loses at most one interval and continues the same sequence of batches and samples
(each step's randomness is seeded from (seed, step)). The best expert on the validation split is written to
`--out` whenever it improves, with its metrics in expert.json.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_file, atomic_folder
from ..tasks import get_task
from .config import TrainConfig
from .evaluate import default_max_new_tokens, evaluate
from .objectives import advantages, policy_loss, sft_loss
from .rollout import sample, teacher_forced, token_logprobs


@dataclass
class TrainResult:
    out: Path
    best_valid: float
    best_step: int
    steps: int
    num_trainable: int
    seconds: float


def _build_policy(cfg: TrainConfig, svf=None):
    if cfg.method == "svf":
        from ..svf import load_svf
        from .policy import SVFPolicy

        if svf is None:
            svf = load_svf(cfg.model, targets=cfg.targets, device=cfg.device, dtype=cfg.dtype)
        elif svf.targets != cfg.targets:
            raise ValueError(f"--targets {cfg.targets!r} differs from the loaded model's ({svf.targets!r})")
        svf.remove()
        return SVFPolicy(svf, cfg.parametrization), svf
    from ..models import load_model
    from .policy import LoRAPolicy

    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    return LoRAPolicy(loaded.model, loaded.tokenizer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                      cfg.lora_targets, cfg.seed), loaded


def _save_artifact(cfg: TrainConfig, policy, handle, task, metrics: dict) -> None:
    """Write the current trainable state to cfg.out (an SVF expert folder, or a PEFT adapter folder)."""
    out = Path(cfg.out)
    if cfg.method == "svf":
        from ..experts import Expert

        expert = Expert.for_model(handle, policy.z(), cfg.parametrization, name=out.name,
                                  domain=cfg.domain or task.domain, description=task.description,
                                  created_by={"method": "train", "config": cfg.to_dict(), **getattr(task, "record", {})},
                                  metrics=metrics)
        expert.save(out, overwrite=True)
        return
    with atomic_folder(out) as tmp:
        policy.save(tmp)
        (tmp / "t2_train.json").write_text(json.dumps({"config": cfg.to_dict(), "metrics": metrics}, indent=2))


def _check_out(cfg: TrainConfig, resume: bool) -> None:
    out = Path(cfg.out)
    if out.exists() and not (resume or cfg.overwrite):
        raise ValueError(f"--out {out} already exists; pass --resume to continue its run or --overwrite to replace it")


def train_expert(cfg: TrainConfig, resume: bool = False, progress: bool = True, task=None, svf=None) -> TrainResult:
    """Train (or resume) one expert. `task` overrides cfg.task with an instance; `svf` reuses a loaded model."""
    run_dir = cfg.resolved_run_dir()
    ckpt_path = run_dir / "checkpoint.pt"
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise ValueError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        state = torch.load(ckpt_path, weights_only=False)
        saved = TrainConfig(**{**state["config"], "steps": cfg.steps})  # the run's own config; steps may grow
        cfg = saved
    _check_out(cfg, resume)
    task = task if task is not None else get_task(cfg.task, cfg.data)
    train_set, valid_set = task.examples("train"), task.examples("valid")[: cfg.valid_n]
    if not train_set:
        raise ValueError(f"task {task.name!r} has no training examples")
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)

    policy, handle = _build_policy(cfg, svf)
    model, tokenizer = policy.model, policy.tokenizer
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best, best_step = 0, -1.0, -1
    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, best_step = state["step"], state["best_valid"], state["best_step"]

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    history = _read_metrics(metrics_path) if metrics_path.exists() else []
    history = [h for h in history if h["step"] <= start] if resume else []  # drop what the checkpoint did not keep
    metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    log = metrics_path.open("a")
    writer = _tensorboard(run_dir) if cfg.tensorboard else None
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.method}/{task.name}",
               disable=not progress)
    try:
        for step in bar:
            rng = random.Random(f"{cfg.seed}:{step}")
            torch.manual_seed(rng.randrange(2**31))
            batch = [task.augment(e, rng) for e in rng.sample(train_set, min(cfg.batch_size, len(train_set)))]
            record = _step(cfg, policy, model, tokenizer, task, batch, max_new, optimizer)
            record.update(step=step + 1, seconds=round(time.perf_counter() - t0, 2))
            if (step + 1) % cfg.valid_every == 0 or step + 1 == cfg.steps:
                with policy.sampling():
                    result = evaluate(model, tokenizer, task, examples=valid_set, max_new_tokens=max_new,
                                      progress=False)
                record["valid_accuracy"] = result.accuracy
                if result.answers:
                    record["valid_answers"] = result.answers
                if result.accuracy > best:
                    best, best_step = result.accuracy, step + 1
                    _save_artifact(cfg, policy, handle, task, {
                        "valid_accuracy": best, "valid_ci95": list(result.ci95), "valid_n": result.n,
                        "step": best_step, "trainable_params": policy.num_trainable(), "answers": result.answers})
            log.write(json.dumps(record) + "\n")
            log.flush()
            if writer is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)):
                        writer.add_scalar(k, v, step + 1)
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("reward", "nll", "valid_accuracy") if k in record})
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                with atomic_file(ckpt_path) as tmp:
                    torch.save({"config": cfg.to_dict(), "policy": policy.state_dict(),
                                "optimizer": optimizer.state_dict(), "step": step + 1, "best_valid": best,
                                "best_step": best_step}, tmp)
    finally:
        log.close()
        if writer is not None:
            writer.close()
        num = policy.num_trainable()
        policy.close()
    plot_metrics(metrics_path, run_dir / "plot.png")
    return TrainResult(Path(cfg.out), best, best_step, cfg.steps, num, time.perf_counter() - t0)


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, skipping a last line cut short by a crash."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _step(cfg, policy, model, tokenizer, task, batch, max_new, optimizer) -> dict:
    """One optimisation step; returns its metrics."""
    prompts = [e["prompt"] for e in batch]
    record: dict = {}
    if cfg.objective == "sft":
        refs = [e.get("reference") for e in batch]
        if any(r is None for r in refs):
            raise ValueError(f"--objective sft needs reference answers; task {task.name!r} has none")
        rollout = teacher_forced(tokenizer, prompts, refs)
        weights = None
    else:
        rows = [e for e in batch for _ in range(cfg.group_size)]
        with policy.sampling():
            rollout = sample(model, tokenizer, prompts, max_new, cfg.temperature, cfg.group_size)
        columns = {k: [e.get(k) for e in rows] for k in rows[0] if k != "prompt"}
        scores = torch.tensor(task.reward([e["prompt"] for e in rows], rollout.completions, **columns),
                              dtype=torch.float32)
        weights = advantages(cfg.objective, scores, cfg.group_size)
        record.update(reward=float(scores.mean()), completion_tokens=float(rollout.completion_mask.sum(-1).mean()))
        if cfg.objective == "rloo" and not weights.abs().sum() and cfg.kl_coef == 0:
            return {**record, "skipped": True}  # every group unanimous: no gradient signal, save the compute

    optimizer.zero_grad(set_to_none=True)
    model.train(cfg.method == "lora")  # LoRA dropout while computing the loss; SVF has none
    totals: dict[str, float] = {}
    for sl in rollout.chunks():
        part = rollout.rows(sl)
        frac = len(part) / len(rollout)
        if cfg.objective == "sft":
            loss, m = sft_loss(token_logprobs(model, part), part.completion_mask)
        else:
            base_logp = None
            if cfg.kl_coef > 0:
                with policy.base(), torch.no_grad():
                    base_logp = token_logprobs(model, part)
            loss, m = policy_loss(token_logprobs(model, part), part.completion_mask, weights[sl], cfg.kl_coef,
                                  base_logp)
        (loss * frac).backward()
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + v * frac
    model.eval()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    optimizer.step()
    record.update(totals, grad_norm=float(grad_norm))
    return record


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SystemExit("--tensorboard needs the tensorboard package: run `pip install tensorboard`") from None
    return SummaryWriter(str(run_dir / "tb"))


def plot_metrics(metrics_path: Path, out: Path) -> Path | None:
    """PNG of training reward (or NLL) and validation accuracy per step (needs matplotlib; skipped without)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: pip install matplotlib for the training plot", flush=True)
        return None
    rows = _read_metrics(metrics_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    key = "reward" if any("reward" in r for r in rows) else "nll"
    pts = [(r["step"], r[key]) for r in rows if key in r]
    ax.plot(*zip(*pts), label=f"train {key}", alpha=0.7) if pts else None
    val = [(r["step"], r["valid_accuracy"]) for r in rows if "valid_accuracy" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="valid accuracy")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
