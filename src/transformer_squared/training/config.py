"""Training configuration: one dataclass is the single source of truth for CLI flags (help in field metadata, see
transformer_squared.config), YAML files and the record saved in the expert."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import device_option, dtype_option, option

OBJECTIVES = ("reinforce", "rloo", "grpo", "sft")
METHODS = ("svf", "lora")
LOSS_NORMS = ("sequence", "token")  # grpo's normalisers (training/objectives.py)
TRAIN_FILTERS = ("all", "known")  # --train-filter (training/known.py)


@dataclass
class TrainConfig:
    task: str = option("arithmetic", "registry name (listed at the end of `t2 train -h`) or dotted path to a Task")
    data: str | None = option(None, "dataset path (a folder or file in the upstream format)")
    model: str = option("default", "'default', 'gemma3-270m', a .gguf file, a folder or a hub id")
    out: str = option("", "expert folder to write (the trained expert lands here, library-style)")
    run_dir: str | None = option(None, "checkpoints, metrics.jsonl, plot.png; None means runs/<out name>-<hash of "
                                       "out path>")
    method: str = option("svf", "svf | lora")
    init: str = option("", "SVF: start z from this expert (a folder, or a name in --library / $T2_EXPERTS) instead "
                       "of the identity, e.g. RL after an SFT expert; the KL reference stays the base model")
    objective: str = option("rloo", "reinforce (paper) | rloo | grpo (clipped, several passes) | sft")
    targets: str = option("mlp", "SVF: matrices to adapt")
    parametrization: str = option("paper", "SVF: paper | reference")
    steps: int = option(60, "optimisation steps")
    sft_steps: int = option(0, "the first N of --steps are SFT on the task's references (a warm start), then "
                               "--objective")
    batch_size: int = option(8, "prompts per step")
    group_size: int = option(4, "samples per prompt (rloo needs >= 2)")
    lr: float = option(2e-3, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping")
    clip_eps: float = option(0.2, "grpo: the ratio π/π_old is clipped to [1 − ε, 1 + ε]")
    ppo_epochs: int = option(1, "grpo: optimisation passes over each batch of rollouts")
    minibatches: int = option(1, "grpo: updates per pass, each on batch_size/minibatches prompts (whole groups)")
    loss_norm: str = option("sequence", "grpo: sequence (mean of per-sample token means) | token (over all tokens)")
    kl_coef: float = option(0.0, "λ: KL penalty to the base model (paper: reinforce with KL)")
    temperature: float = option(1.0, "rollout sampling temperature")
    max_new_tokens: int = option(0, "0 = the task's default")
    valid_every: int = option(10, "validate (greedy) every N steps; the best expert on valid is kept")
    valid_n: int = option(100, "validation examples")
    valid_split: str = option("valid", "the split checkpoints are chosen on; another one (ARC's 'dev': the upstream "
                              "Dev file) frees the 'valid' split, which is then trained on too")
    train_filter: str = option("all", "all | known: train only on the multiple-choice questions whose key the base "
                               "model ranks first by log-likelihood, as lm-eval scores ARC (training/known.py)")
    save_every: int = option(10, "checkpoint every N steps (a crash loses at most this many)")
    seed: int = option(0, "batches and samples of step s are seeded from (seed, s)")
    domain: str = option("", "label for self-adaptation (default: the task's domain)")
    library: str | None = option(None, "--task classify: the expert library whose domains the classifier learns")
    lora_rank: int = option(16, "LoRA baseline (the paper: r 16, alpha 32, dropout 0.05 on q/v)")
    lora_alpha: int = option(32, "LoRA scaling")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_targets: list[str] = option(factory=lambda: ["q_proj", "v_proj"], help="LoRA modules")
    tensorboard: bool = option(False, "also log to <run_dir>/tb (needs tensorboard)")
    overwrite: bool = option(False, "replace an existing --out")
    device: str = device_option()
    dtype: str = dtype_option()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "rloo" and self.group_size < 2:
            raise ValueError("--objective rloo needs --group-size >= 2 (the baseline leaves one sample out)")
        if self.objective == "grpo" and self.group_size < 2:
            raise ValueError("--objective grpo needs --group-size >= 2 (advantages are normalised within a group)")
        if self.objective != "grpo":
            for name, default in (("clip_eps", 0.2), ("ppo_epochs", 1), ("minibatches", 1), ("loss_norm", "sequence")):
                if getattr(self, name) != default:
                    raise ValueError(f"--{name.replace('_', '-')} applies to --objective grpo only")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"--clip-eps must be in (0, 1), got {self.clip_eps}")
        if self.loss_norm not in LOSS_NORMS:
            raise ValueError(f"--loss-norm {self.loss_norm!r}: choose sequence or token")
        if self.minibatches > self.batch_size:
            raise ValueError(f"--minibatches {self.minibatches} exceeds --batch-size {self.batch_size}: "
                             "each minibatch needs at least one prompt")
        for name in ("steps", "batch_size", "group_size", "valid_every", "save_every", "valid_n", "ppo_epochs",
                     "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.sft_steps <= self.steps:
            raise ValueError(f"--sft-steps must be in [0, --steps {self.steps}], got {self.sft_steps}")
        if self.valid_split in ("train", "test"):
            raise ValueError(f"--valid-split {self.valid_split}: checkpoints are chosen on held-out data that is not "
                             "the test split; use 'valid' (default) or a task's own dev split")
        if self.train_filter not in TRAIN_FILTERS:
            raise ValueError(f"--train-filter {self.train_filter!r}: choose one of {', '.join(TRAIN_FILTERS)}")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        if self.kl_coef < 0:
            raise ValueError("--kl-coef must be >= 0")
        for name in ("temperature", "max_grad_norm", "lora_alpha"):  # `not > 0` also refuses NaN
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        for name in ("weight_decay", "max_new_tokens"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if self.init and self.method != "svf":
            raise ValueError("--init starts z from an SVF expert; it applies to --method svf only")
        if self.lora_rank < 1:
            raise ValueError("--lora-rank must be at least 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("--lora-dropout must be in [0, 1)")
        from ..precision import DTYPE_CHOICES
        from ..svf import PARAMETRIZATIONS

        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"--parametrization: choose one of {', '.join(PARAMETRIZATIONS)}")

        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
        if not self.out:
            raise ValueError("--out is required: the folder the trained expert is written to (e.g. experts/math)")

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else default_run_dir(self.out)

    def owner(self) -> dict:
        """What a run folder belongs to: one output (resolved path) trained by one method."""
        return {"out": str(Path(self.out).expanduser().resolve()), "method": self.method}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_run_dir(out: str | Path) -> Path:
    """runs/<out name>-<8 hex digits of the resolved out path>. The name alone collided (experts/arithmetic and
    lora/arithmetic shared runs/arithmetic); the hash keeps one folder per output, and the same output — named
    relatively or absolutely — always finds its run again. Run state stays out of the output folder, which is what
    gets copied or shared."""
    resolved = str(Path(out).expanduser().resolve())
    return Path("runs") / f"{Path(resolved).name}-{hashlib.blake2b(resolved.encode(), digest_size=4).hexdigest()}"


def check_run_owner(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse a run folder whose config.json records another output or method (a resume, or a --run-dir reused)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    owner = recorded.get("owner") or {  # runs made before the owner was recorded
        "out": str(Path(recorded.get("out", "")).expanduser().resolve()), "method": recorded.get("method", "svf")}
    if owner != cfg.owner():
        raise ValueError(f"run folder {run_dir} belongs to --out {owner['out']} (method {owner['method']}), not "
                         f"{cfg.owner()['out']} ({cfg.method}); pick its own --run-dir or leave --run-dir out")
