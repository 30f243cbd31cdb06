"""Training configuration: one dataclass is the single source of truth for CLI flags, YAML files and the record
saved in the expert."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

OBJECTIVES = ("reinforce", "rloo", "grpo", "sft")
METHODS = ("svf", "lora")


@dataclass
class TrainConfig:
    task: str = "arithmetic"  # registry name (listed at the end of `t2 train -h`) or dotted path to a Task
    data: str | None = None  # dataset path (a folder or file in the upstream format)
    model: str = "default"  # 'default', 'gemma3-270m', a .gguf file, a folder or a hub id
    out: str = ""  # expert folder to write (the trained expert lands here, library-style)
    run_dir: str | None = None  # checkpoints, metrics.jsonl, plot.png; None means runs/<out name>-<hash of out path>
    method: str = "svf"  # svf | lora
    objective: str = "rloo"  # reinforce (paper) | rloo | grpo (clipped, several passes) | sft
    targets: str = "mlp"  # SVF: matrices to adapt
    parametrization: str = "paper"  # SVF: paper | reference
    steps: int = 60  # optimisation steps
    sft_steps: int = 0  # the first N of --steps are SFT on the task's references (a warm start), then --objective
    batch_size: int = 8  # prompts per step
    group_size: int = 4  # samples per prompt (rloo needs >= 2)
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    clip_eps: float = 0.2  # grpo: the ratio π/π_old is clipped to [1 − ε, 1 + ε]
    ppo_epochs: int = 1  # grpo: optimisation passes over each batch of rollouts
    minibatches: int = 1  # grpo: updates per pass, each on batch_size/minibatches prompts (whole groups)
    loss_norm: str = "sequence"  # grpo: sequence (mean of per-sample token means) | token (over all tokens)
    kl_coef: float = 0.0  # λ: KL penalty to the base model (paper: reinforce with KL)
    temperature: float = 1.0  # rollout sampling temperature
    max_new_tokens: int = 0  # 0 = the task's default
    valid_every: int = 10  # validate (greedy) every N steps; the best expert on valid is kept
    valid_n: int = 100  # validation examples
    save_every: int = 10  # checkpoint every N steps (a crash loses at most this many)
    seed: int = 0  # batches and samples of step s are seeded from (seed, s)
    domain: str = ""  # label for self-adaptation (default: the task's domain)
    library: str | None = None  # --task classify: the expert library whose domains the classifier learns
    lora_rank: int = 16  # LoRA baseline (the paper: r 16, alpha 32, dropout 0.05 on q/v)
    lora_alpha: int = 32  # LoRA scaling
    lora_dropout: float = 0.05  # LoRA dropout
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # LoRA modules
    tensorboard: bool = False  # also log to <run_dir>/tb (needs tensorboard)
    overwrite: bool = False  # replace an existing --out
    device: str = "auto"  # auto (CUDA if present, else CPU), cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # compute dtype: auto, float32, bfloat16, float16 (z and AdamW state stay float32)

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
        if self.loss_norm not in ("sequence", "token"):
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
        if self.lora_rank < 1:
            raise ValueError("--lora-rank must be at least 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("--lora-dropout must be in [0, 1)")
        if self.parametrization not in ("paper", "reference"):
            raise ValueError("--parametrization: choose paper or reference")
        from ..precision import DTYPE_CHOICES

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


def field_help(cls) -> dict[str, str]:
    """The comment after each field in the class source: the one place a field is documented."""
    source = inspect.getsource(cls)
    return dict(re.findall(r"^\s+(\w+): [^=\n]+=[^\n#]*#\s*(.+)$", source, flags=re.MULTILINE))


def add_dataclass_args(parser: argparse.ArgumentParser, cls=TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One flag per field (`--group-size`), default None so that YAML values are only overridden when given."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f"{helps.get(f.name, '')} (default: {default})".strip()
        if f.type in ("bool", bool):
            action = argparse.BooleanOptionalAction if default else "store_true"  # --no-x turns a default on off
            parser.add_argument(flag, action=action, default=None, help=text)
        elif str(f.type).startswith("list"):
            parser.add_argument(flag, nargs="+", default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=text)


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    """YAML (--config) first, then any flag given on the command line."""
    values: dict = {}
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        for name, value in loaded.items():  # YAML reads `1e-3` as a string: convert to the field's type
            kind = {"int": int, "float": float}.get(types[name])
            if kind is not None and value is not None and not isinstance(value, bool):
                try:
                    loaded[name] = kind(value)
                except (TypeError, ValueError):
                    raise ValueError(f"--config {path}: {name} must be a number, got {value!r}") from None
        values.update(loaded)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)
