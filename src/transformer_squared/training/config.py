"""Training configuration: one dataclass is the single source of truth for CLI flags, YAML files and the record
saved in the expert."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

OBJECTIVES = ("reinforce", "rloo", "sft")
METHODS = ("svf", "lora")


@dataclass
class TrainConfig:
    task: str = "arithmetic"  # registry name (arithmetic, gsm8k, arc, mbpp, humaneval, math) or dotted path
    data: str | None = None  # dataset path (a folder or file in the upstream format)
    model: str = "default"  # 'default', 'gemma3-270m', a .gguf file, a folder or a hub id
    out: str = ""  # expert folder to write (the trained expert lands here, library-style)
    run_dir: str | None = None  # checkpoints, metrics.jsonl, plot.png; None means runs/<expert name>
    method: str = "svf"  # svf | lora
    objective: str = "rloo"  # reinforce (paper) | rloo | sft
    targets: str = "mlp"  # SVF: matrices to adapt
    parametrization: str = "paper"  # SVF: paper | reference
    steps: int = 60  # optimisation steps
    batch_size: int = 8  # prompts per step
    group_size: int = 4  # samples per prompt (rloo needs >= 2)
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
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
        for name in ("steps", "batch_size", "group_size", "valid_every", "save_every", "valid_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        if self.kl_coef < 0:
            raise ValueError("--kl-coef must be >= 0")
        if self.parametrization not in ("paper", "reference"):
            raise ValueError("--parametrization: choose paper or reference")
        from ..precision import DTYPE_CHOICES

        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPE_CHOICES)}")
        if not self.out:
            raise ValueError("--out is required: the folder the trained expert is written to (e.g. experts/math)")

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / Path(self.out).name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
