"""The training loop: sample → reward → advantage → loss → step → log, in one function.

Rollouts use merged weights under no_grad (as fast as the base model); log-probs and z-gradients go through the
factored path, so no dense weight gradient is ever built. Every `save_every` steps the run state (trainable
tensors, optimizer, step, best validation score) is written atomically to `<run_dir>/checkpoint.pt`; a killed run
resumed with `--resume` loses at most one interval and continues the same sequence of batches and samples
(each step's randomness is seeded from (seed, step), each sample's from (seed, step, prompt index, sample index));
a GRPO step, which takes several updates, is also checkpointed between its updates (training/grpo.py). The best
expert on the validation split is written to `--out` whenever it improves, with its metrics in expert.json. Under
torchrun the batch and the validation set are split over ranks (see distributed.py); rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_file, atomic_folder
from ..errors import MissingDependency
from ..evaluation import default_max_new_tokens
from ..logprobs import teacher_forced, token_logprobs
from ..progress import tqdm
from ..tasks import get_task
from .config import TrainConfig, check_run_owner
from .distributed import current as current_world, evaluate_sharded
from .grpo import grpo_step
from .known import check_choice_task, known_examples
from .objectives import advantages, policy_loss, sft_loss
from .rollout import sample


@dataclass
class TrainResult:
    out: Path
    best_valid: float
    best_step: int
    steps: int
    num_trainable: int
    seconds: float


def _build_policy(cfg: TrainConfig, svf=None, resuming: bool = False):
    if cfg.method == "svf":
        from ..svf import load_svf
        from .policy import SVFPolicy

        init = None if resuming else _init_expert(cfg)  # a resumed run's z comes from its checkpoint
        if svf is None:
            svf = load_svf(cfg.model, targets=cfg.targets, device=cfg.device, dtype=cfg.dtype)
        elif svf.targets != cfg.targets:
            raise ValueError(f"--targets {cfg.targets!r} differs from the loaded model's ({svf.targets!r})")
        svf.remove()
        if init is not None:
            init.check_compatible(svf)
        z = None if init is None else {name: t.float() for name, t in init.z.items()}
        return SVFPolicy(svf, cfg.parametrization, z), svf
    from ..models import load_model
    from .policy import LoRAPolicy

    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    return LoRAPolicy(loaded.model, loaded.tokenizer, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                      cfg.lora_targets, cfg.seed), loaded


def _init_expert(cfg: TrainConfig):
    """--init: the expert z starts from, in this run's parametrization (None without --init). Read before the model
    is loaded, so that a wrong name or parametrization fails at once; its fit to the model is checked after."""
    if not cfg.init:
        return None
    from ..experts import ExpertLibrary

    expert = ExpertLibrary(cfg.library).get(cfg.init)
    if expert.meta.parametrization != cfg.parametrization:
        raise ValueError(f"--init {cfg.init}: the expert uses the {expert.meta.parametrization!r} parametrization, "
                         f"this run {cfg.parametrization!r}; pass --parametrization {expert.meta.parametrization}")
    return expert


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


def training_and_validation(task, cfg: TrainConfig) -> tuple[list, list]:
    """(train examples, the first valid_n validation examples). Validating on a split other than 'valid' (a dev
    file) trains on 'valid' as well: it is then held out for nothing."""
    task.check_split(cfg.valid_split)
    train_set = task.examples("train")
    if cfg.valid_split != "valid" and "valid" in task.splits:
        train_set = train_set + task.examples("valid")
    return train_set, task.examples(cfg.valid_split)[: cfg.valid_n]


def train_expert(cfg: TrainConfig, resume: bool = False, progress: bool = True, task=None, svf=None,
                 state: dict | None = None) -> TrainResult:
    """Train (or resume) one expert. `task` overrides cfg.task with an instance; `svf` reuses a loaded model;
    `state`: the run's checkpoint when the caller has read it already (resuming reads it once)."""
    world = current_world()
    _check_world(cfg, world)
    run_dir = cfg.resolved_run_dir()
    ckpt_path = run_dir / "checkpoint.pt"
    check_run_owner(run_dir, cfg)
    if resume:
        state = state if state is not None else _read_checkpoint(ckpt_path)
        cfg = TrainConfig(**{**state["config"], "steps": cfg.steps})  # the run's own config; steps may grow
    _check_out(cfg, resume)
    task = task if task is not None else get_task(cfg.task, cfg.data)
    train_set, valid_set = training_and_validation(task, cfg)
    if not train_set:
        raise ValueError(f"task {task.name!r} has no training examples")
    if cfg.train_filter == "known":
        check_choice_task(task.name, train_set)  # before the model loads: a wrong task fails at once
    max_new = cfg.max_new_tokens or default_max_new_tokens(task)

    policy, handle = _build_policy(cfg, svf, resuming=state is not None)
    model, tokenizer = policy.model, policy.tokenizer
    if cfg.train_filter == "known":
        train_set = known_examples(policy, task.name, train_set, run_dir / "known.json", progress and world.is_main)
        logging.getLogger(__name__).info("--train-filter known: %d training questions whose key the base model "
                                         "ranks first", len(train_set))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best, best_step, inner = _restore(state, policy, optimizer)
    run_log = _RunLog(run_dir, cfg, start, resume) if world.is_main else None  # rank 0 alone writes

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.method}/{task.name}",
               disable=not (progress and world.is_main))
    try:
        for step in bar:
            rng = random.Random(f"{cfg.seed}:{step}")
            torch.manual_seed(rng.randrange(2**31))
            batch = [task.augment(e, rng) for e in rng.sample(train_set, min(cfg.batch_size, len(train_set)))]
            objective = "sft" if step < cfg.sft_steps else cfg.objective  # --sft-steps: a warm start
            if objective == "grpo":  # several updates per step; checkpoints between them (training/grpo.py)
                save = lambda inner, step=step: _checkpoint(ckpt_path, cfg, policy, optimizer, step, best, best_step,
                                                            inner)
                record = grpo_step(cfg, policy, task, batch, max_new, optimizer, step, save, inner)
            else:  # sample → reward → loss → step, on this rank's share of the batch
                mine, seeds = _share(cfg, world, batch, step)
                record = _step(cfg, policy, model, tokenizer, task, mine, max_new, optimizer, world, seeds, objective)
            record.update(step=step + 1, seconds=round(time.perf_counter() - t0, 2))
            if (step + 1) % cfg.valid_every == 0 or step + 1 == cfg.steps:
                best, best_step = _validate(cfg, world, policy, handle, task, valid_set, max_new, record, best,
                                            best_step)
            if run_log is not None:
                run_log.write(record)
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("reward", "nll", "valid_accuracy") if k in record})
            if world.is_main and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
                _checkpoint(ckpt_path, cfg, policy, optimizer, step + 1, best, best_step)
    finally:
        if run_log is not None:
            run_log.close()
        num = policy.num_trainable()
        policy.close()
    world.barrier()  # the expert and checkpoint are complete before any rank returns
    if world.is_main:
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "plot.png")
        if cfg.method == "svf" and best_step > 0:
            _record_best(cfg, handle, task)
    return TrainResult(Path(cfg.out), best, best_step, cfg.steps, num, time.perf_counter() - t0)


def _check_world(cfg: TrainConfig, world) -> None:
    if cfg.batch_size < world.size:
        raise ValueError(f"--batch-size {cfg.batch_size} is smaller than the {world.size} processes; give each a prompt")
    if cfg.objective == "grpo" and world.size > 1:
        raise ValueError("--objective grpo runs in one process only (its updates within a step are not split over "
                         "ranks yet); run it without torchrun, or use rloo, reinforce or sft under torchrun")


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path}; start without --resume")
    return torch.load(path, weights_only=False)


def _restore(state: dict | None, policy, optimizer) -> tuple[int, float, int, object]:
    """(start step, best valid accuracy, its step, a GRPO step interrupted between updates) from a checkpoint,
    loading its policy and optimizer state; a fresh run's values without one."""
    if state is None:
        return 0, -1.0, -1, None
    policy.load_state_dict(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state["best_valid"], state["best_step"], state.get("grpo")


def _share(cfg: TrainConfig, world, batch: list, step: int) -> tuple[list, list[int]]:
    """This rank's prompts of the batch and their samples' seeds (seeded per sample, never per rank)."""
    seeds = [random.Random(f"{cfg.seed}:{step}:{i}:{k}").randrange(2**63) for i in range(len(batch))
             for k in range(cfg.group_size)]
    mine, K = world.shard(len(batch)), cfg.group_size
    return batch[mine], seeds[mine.start * K : mine.stop * K]


def _validate(cfg: TrainConfig, world, policy, handle, task, valid_set, max_new, record: dict, best: float,
              best_step: int) -> tuple[float, int]:
    """Greedy accuracy on the valid set, added to `record`; a new best is saved as the expert. Returns the best."""
    step = record["step"]
    with policy.sampling():
        result = evaluate_sharded(world, policy.model, policy.tokenizer, task, valid_set, max_new_tokens=max_new,
                                  progress=False)
    record["valid_accuracy"] = result.accuracy
    if result.answers:
        record["valid_answers"] = result.answers
    if result.accuracy <= best:
        return best, best_step
    if world.is_main:
        _save_artifact(cfg, policy, handle, task, {
            "valid_accuracy": result.accuracy, "valid_ci95": list(result.ci95), "valid_n": result.n,
            "valid_split": cfg.valid_split,
            "step": step, "trainable_params": policy.num_trainable(), "answers": result.answers})
    return result.accuracy, step


class _RunLog:
    """The run folder's records, written by rank 0: metrics.jsonl (cut back to the checkpoint's step on resume),
    TensorBoard scalars (--tensorboard) and config.json."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, start: int, resume: bool):
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        history = _read_metrics(metrics_path) if metrics_path.exists() else []
        history = [h for h in history if h["step"] <= start] if resume else []  # drop what the checkpoint did not keep
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
        self.file = metrics_path.open("a")
        self.writer = _tensorboard(run_dir) if cfg.tensorboard else None
        (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "owner": cfg.owner()}, indent=2) + "\n")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _record_best(cfg: TrainConfig, svf, task) -> None:
    """Expert memory: the saved (best) expert's validation result, appended beside it in its library."""
    from ..experts import Expert
    from ..experts.memory import ExpertMemory, base_fingerprint, record_result
    from ..evaluation import EvalResult

    expert = Expert.load(cfg.out)
    m = expert.meta.metrics
    result = EvalResult(task.name, cfg.valid_split, int(m["valid_n"]), float(m["valid_accuracy"]), tuple(m["valid_ci95"]))
    # a resumed run whose best is still the saved one (same z) was recorded already
    if not any(r.get("source") == "train" for r in ExpertMemory(Path(cfg.out).resolve().parent).results(expert)):
        record_result(cfg.out, expert, base_fingerprint(svf, expert), task, result, "train")


def _checkpoint(path: Path, cfg, policy, optimizer, step: int, best: float, best_step: int, grpo=None) -> None:
    """The run state after `step` steps; `grpo`: a GRPO step in progress (its rollouts and position)."""
    with atomic_file(path) as tmp:
        torch.save({"config": cfg.to_dict(), "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "best_valid": best, "best_step": best_step, "grpo": grpo}, tmp)


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, skipping a last line cut short by a crash."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _step(cfg, policy, model, tokenizer, task, batch, max_new, optimizer, world=None, seeds=None,
          objective: str | None = None) -> dict:
    """One optimisation step on this rank's share of the batch (sample → reward → loss → step); returns the global
    batch's metrics.

    Each part's loss is weighted by its share of the global batch — rows for the policy objectives, completion
    tokens for SFT (the exact token mean) — so the gradients summed over ranks are one process's gradient."""
    world = world or current_world()
    objective = objective or cfg.objective
    rollout, weights, record = _rollout(cfg, policy, model, tokenizer, task, batch, max_new, world, seeds, objective)
    if record.get("skipped"):
        return record
    optimizer.zero_grad(set_to_none=True)
    totals = _backward(cfg, policy, model, rollout, weights, world, objective)
    world.sync_gradients(policy.parameters())
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
    optimizer.step()
    record.update(totals, grad_norm=float(grad_norm))
    return record


def _rollout(cfg, policy, model, tokenizer, task, batch, max_new, world, seeds, objective: str):
    """(rollout, per-row weights, metrics): the references teacher-forced for SFT (weights None); else sampled
    completions, their rewards and the objective's advantages. metrics["skipped"]: nothing to learn from."""
    prompts = [e["prompt"] for e in batch]
    if objective == "sft":
        refs = [e.get("reference") for e in batch]
        if any(r is None for r in refs):
            raise ValueError(f"--objective sft (and --sft-steps) needs reference answers; task {task.name!r} has none")
        return teacher_forced(tokenizer, prompts, refs), None, {}
    rows = [e for e in batch for _ in range(cfg.group_size)]
    with policy.sampling():
        rollout = sample(model, tokenizer, prompts, max_new, cfg.temperature, cfg.group_size, seeds=seeds)
    columns = {k: [e.get(k) for e in rows] for k in rows[0] if k != "prompt"}
    scores = torch.tensor(task.reward([e["prompt"] for e in rows], rollout.completions, **columns),
                          dtype=torch.float32)
    weights = advantages(objective, scores, cfg.group_size)
    n, score_sum, tokens, signal = world.all_sum([len(scores), float(scores.sum()),
                                                  float(rollout.completion_mask.sum()), float(weights.abs().sum())])
    record = {"reward": score_sum / n, "completion_tokens": tokens / n}
    if objective == "rloo" and not signal and cfg.kl_coef == 0:
        record["skipped"] = True  # every group unanimous: no gradient signal, save the compute
    return rollout, weights, record


def _backward(cfg, policy, model, rollout, weights, world, objective: str) -> dict[str, float]:
    """The loss over the rollout, in chunks, each backpropagated with its share of the global batch; returns the
    loss metrics summed over ranks."""
    model.train(cfg.method == "lora")  # LoRA dropout while computing the loss; SVF has none
    totals: dict[str, float] = {}
    total_rows, total_tokens = world.all_sum([len(rollout), float(rollout.completion_mask.sum())])
    for sl in rollout.chunks():
        part = rollout.rows(sl)
        if objective == "sft":
            frac = float(part.completion_mask.sum()) / max(total_tokens, 1.0)
            loss, m = sft_loss(token_logprobs(model, part), part.completion_mask)
        else:
            frac = len(part) / total_rows
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
    keys = sorted(totals)
    return dict(zip(keys, world.all_sum([totals[k] for k in keys])))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependency("--tensorboard needs the tensorboard package: run `pip install tensorboard`") from None
    return SummaryWriter(str(run_dir / "tb"))


def plot_metrics(metrics_path: Path, out: Path) -> Path | None:
    """PNG of training reward (or NLL) and validation accuracy per step (needs matplotlib; skipped without)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger(__name__).info("no training plot: pip install matplotlib to get one")
        return None
    rows = _read_metrics(metrics_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    key = "reward" if any("reward" in r for r in rows) else "nll"
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if pts:
        ax.plot(*zip(*pts), label=f"train {key}", alpha=0.7)
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
