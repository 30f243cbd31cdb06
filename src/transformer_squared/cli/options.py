"""Options shared by the `t2` verbs: the flag groups several verbs take, and argparse `type=` checks for numeric
ranges. Verb modules import from here and never from each other.

A range check is a `type=` function, so argparse rejects a bad value where the flag is parsed, with a message that
names the flag (`t2 eval: error: argument --n: must be an integer >= 1, not 0`), before any model is loaded.
Flags that come from a typed config dataclass (TrainConfig, CEMConfig, ServeLimits) are checked by its
`__post_init__` instead, which names the flag too.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


# -- numeric ranges ----------------------------------------------------------------------------------------------

def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'} is expected, not {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(float, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def finite_float(text: str) -> float:
    return _number(float, text)


def unit_interval(text: str) -> float:
    """(0, 1]: a probability mass such as top-p."""
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def cosine(text: str) -> float:
    """[-1, 1]: the range of a cosine similarity."""
    value = _number(float, text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"is a cosine similarity: must be in [-1, 1], not {text}")
    return value


def port(text: str) -> int:
    value = _number(int, text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, not {text}")
    return value


# -- flag groups -------------------------------------------------------------------------------------------------

def add_model_args(p: argparse.ArgumentParser, targets: bool = True) -> None:
    p.add_argument("--model", default=None,
                   help="'default' (SmolLM2-135M-Instruct, bundled), 'gemma3-270m', a .gguf file, a folder or a hub "
                        "id (default: the expert's base model, else 'default')")
    if targets:
        p.add_argument("--targets", default=None,
                       help="matrices to adapt: mlp (default, as the paper), attn, all-linear, or a regex")
    p.add_argument("--cache-dir", default=None, help="SVD cache folder (default: $T2_CACHE/svd or ~/.cache/transformer_squared/svd)")
    add_precision_args(p)


def add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU; default), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype; auto = bfloat16 on CUDA and on CPUs with native bf16 units, else float32 "
                        "(z, optimiser state and the SVD stay float32 either way)")


def precision_args(args) -> dict:
    """{device, dtype} from the flags, for load_svf / load_model."""
    return {"device": getattr(args, "device", None) or "auto", "dtype": getattr(args, "dtype", None) or "auto"}


LIBRARY_HELP = "expert library folder (default: $T2_EXPERTS or ./experts)"


def add_library_arg(p: argparse.ArgumentParser, default=None) -> None:
    """`default=argparse.SUPPRESS` on a sub-command: the flag is accepted there too, and when it is not given there
    the parent command's value (or its default) is kept."""
    p.add_argument("--library", default=default, help=LIBRARY_HELP)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=unit_interval, default=1.0)


def add_strategy_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    from ..adapt import STRATEGIES

    p.add_argument("--strategy", default=default, choices=list(STRATEGIES),
                   help="two-pass self-adaptation: how pass 1 picks the expert (needs --library)")
    p.add_argument("--classifier", default=None, help="classifier expert for --strategy classifier "
                                                     "(default: the library's only `dispatch` expert)")
    p.add_argument("--encoder", default=None, help="sentence encoder for --strategy embedding "
                                                  "(default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--threshold", type=cosine, default=None,
                   help="--strategy embedding: cosine similarity in [-1, 1] below which the base answers (default 0.3)")
    p.add_argument("--shots", type=positive_int, default=10, help="--strategy cem: examples of the task to adapt on")


# -- from strategy flags to objects (generate, eval and serve share them) ------------------------------------------

def check_strategy_inputs(args, library) -> None:
    """Fail on a missing classifier or an unusable encoder before a model is loaded (the encoder is kept)."""
    if args.strategy == "classifier":
        from ..adapt.classify import find_classifier

        find_classifier(library, args.classifier)
    elif args.strategy == "embedding":
        from ..adapt.embedding import shared_encoder

        shared_encoder(args.encoder)


def strategy_library(args, strategy: str):
    """The library and its routes {domain: expert}; refused when a strategy has no expert to route to."""
    from ..adapt.routes import answer_experts
    from ..experts import ExpertLibrary

    library = ExpertLibrary(args.library)
    routes = answer_experts(library)
    if not routes and strategy != "base":
        raise ValueError(f"no expert with a domain label in {library.root}; train some first (t2 train), "
                         "or pass --library")
    return library, routes


def load_strategy_model(args, library, routes):
    """The model the routed experts were made for (or --model), after the strategy's own inputs are checked."""
    from ..svf import load_svf

    check_strategy_inputs(args, library)
    first = next(iter(routes.values()), None)
    model = args.model or (first.meta.base_model if first is not None and first.meta.base_model else "default")
    targets = getattr(args, "targets", None) or (first.meta.targets if first is not None else "mlp")
    return load_svf(model, targets=targets, cache_dir=getattr(args, "cache_dir", None), **precision_args(args))


def strategy_options(args, task=None) -> dict:
    return {"classifier": args.classifier, "encoder": args.encoder, "threshold": args.threshold,
            "task": task, "shots": args.shots}


# -- tasks from --data / --data-dir --------------------------------------------------------------------------------

DATA_FOLDERS = {"arc": "arc_easy", "arc_challenge": "arc_challenge"}  # task -> its subfolder under --data-dir
GENERATED = ("arithmetic", "subtraction", "addition3", "antonyms", "classify", "custom")  # no data set to find


def data_folder(task: str) -> str:
    return DATA_FOLDERS.get(task, task)


def data_folders_text(tasks) -> str:
    """`arc_easy/ (task arc), gsm8k/, ...` for those of `tasks` that read a data set."""
    return ", ".join(f"{data_folder(t)}/" + (f" (task {t})" if data_folder(t) != t else "")
                     for t in tasks if t not in GENERATED)


def _offline_if_unreachable() -> None:
    """A task without local data falls back to `datasets` and the hub; offline, that would retry for ~30 s."""
    from ..models import hub_reachable

    if not hub_reachable():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def load_task(name: str, data: str | None = None, split: str = "train", *, data_dir: str | None = None,
              pool: bool = False):
    """The task with its data from --data, else from `data_dir/<its folder>` (`pool`: --tasks, whose data only
    comes from --data-dir), its `split` read once so that data problems surface before a model loads; a task that
    finds no data says where it looked and what it expects."""
    from ..tasks import get_task

    folder = Path(data_dir) / data_folder(name) if data is None and data_dir is not None else None
    if folder is not None and folder.exists():
        data = str(folder)
    if data is None and name not in GENERATED:
        _offline_if_unreachable()
    task = get_task(name, data)
    task.check_split(split)  # a wrong --split is not a data problem
    try:
        task.examples(split)
    except (ValueError, OSError) as e:  # OSError: a task's hub fallback (`datasets`) could not download
        if data is not None or name in GENERATED:
            raise  # the data is there (or none is needed): the task's own message says what is wrong
        if folder is not None:
            raise ValueError(f"task {name!r} needs data: --data-dir {data_dir} has no subfolder {data_folder(name)}/ "
                             f"(looked for {folder.resolve()}); --data-dir holds one subfolder per task, named "
                             f"{data_folders_text([name]) or name + '/'}") from None
        if pool:
            raise ValueError(f"task {name!r} needs data: pass --data-dir DIR holding its subfolder "
                             f"{data_folders_text([name]) or name + '/'}") from None
        if isinstance(e, ValueError):
            raise  # the task's own message says what --data should be
        raise ValueError(f"task {name!r} needs data: pass --data PATH (the hub fallback failed: "
                         f"{str(e).splitlines()[0]})") from None
    return task
