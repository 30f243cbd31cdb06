"""Training configuration: one dataclass is the single source of truth for CLI flags, YAML files and the record
saved in the expert."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

OBJECTIVES = ("reinforce", "rloo", "sft")
METHODS = ("svf", "lora")


@dataclass
class TrainConfig:
    task: str = "arithmetic"  # registry name (arithmetic, gsm8k, arc, mbpp, humaneval, math) or dotted path
    data: str | None = None  # dataset path (a folder or file in the upstream format)
    model: str = "default"  # see models.load_model
    out: str = ""  # expert folder to write (the trained expert lands here, library-style)
    run_dir: str | None = None  # checkpoints, metrics.jsonl, plot.png (default: runs/<expert name>)
    method: str = "svf"  # svf | lora
    objective: str = "rloo"  # reinforce (paper) | rloo | sft
    targets: str = "mlp"  # SVF: matrices to adapt
    parametrization: str = "paper"  # SVF: paper | reference
    steps: int = 60
    batch_size: int = 8  # prompts per step
    group_size: int = 4  # samples per prompt (rloo needs >= 2)
    lr: float = 2e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    kl_coef: float = 0.0  # λ: KL penalty to the base model (paper: reinforce with KL)
    temperature: float = 1.0  # rollout sampling temperature
    max_new_tokens: int = 0  # 0 = the task's default
    valid_every: int = 10
    valid_n: int = 100
    save_every: int = 10
    seed: int = 0
    domain: str = ""  # label for self-adaptation (default: the task's domain)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    tensorboard: bool = False
    overwrite: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "rloo" and self.group_size < 2:
            raise ValueError("--objective rloo needs --group-size >= 2 (the baseline leaves one sample out)")
        for name in ("steps", "batch_size", "group_size", "valid_every", "save_every", "valid_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        if self.kl_coef < 0:
            raise ValueError("--kl-coef must be >= 0")
        if self.parametrization not in ("paper", "reference"):
            raise ValueError("--parametrization: choose paper or reference")
        if not self.out:
            raise ValueError("--out is required: the folder the trained expert is written to (e.g. experts/math)")

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / Path(self.out).name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_dataclass_args(parser: argparse.ArgumentParser, cls=TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One flag per field (`--group-size`), default None so that YAML values are only overridden when given."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=None)
        elif str(f.type).startswith("list"):
            parser.add_argument(flag, nargs="+", default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None)


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
        values.update(loaded)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)
