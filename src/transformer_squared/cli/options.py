"""Options shared by the `t2` verbs: the flag groups several verbs take, as config dataclasses (`ModelOptions`,
`StrategyOptions`, ...) that a verb's own config inherits, and the helpers that turn them into objects. Verb modules
import from here and never from each other; flags are made by transformer_squared.config (one per field, help from
the field's metadata), whose argparse range checks are re-exported here.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import (  # noqa: F401  (the range checks are the verbs' `type=` functions)
    add_dataclass_args,
    config_from_args,
    cosine,
    device_option,
    dtype_option,
    finite_float,
    nonneg_float,
    nonneg_int,
    option,
    port,
    positive_float,
    positive_int,
    unit_interval,
)


# -- flag groups -------------------------------------------------------------------------------------------------

def _strategy_names():
    from ..adapt import STRATEGIES

    return STRATEGIES


@dataclass
class PrecisionOptions:
    device: str = device_option()
    dtype: str = dtype_option()


@dataclass
class ModelOptions:
    model: str | None = option(None, "'default' (SmolLM2-135M-Instruct, bundled), 'gemma3-270m', a .gguf file, a "
                                     "folder or a hub id (default: the expert's base model, else 'default')")
    targets: str | None = option(None, "matrices to adapt: mlp (default, as the paper), attn, all-linear, or a regex")
    cache_dir: str | None = option(None, "SVD cache folder (default: $T2_CACHE/svd or "
                                         "~/.cache/transformer_squared/svd)")
    device: str = device_option()
    dtype: str = dtype_option()


@dataclass
class LibraryOptions:
    library: str | None = option(None, "expert library folder (default: $T2_EXPERTS or ./experts)")


def strategy_option(default: str | None = None):
    return option(default, "two-pass self-adaptation: how pass 1 picks the expert (needs --library)",
                  choices=_strategy_names)


@dataclass
class StrategyOptions:
    strategy: str | None = strategy_option()
    classifier: str | None = option(None, "classifier expert for --strategy classifier (default: the library's only "
                                          "`dispatch` expert)")
    encoder: str | None = option(None, "sentence encoder for --strategy embedding (default: bundled "
                                       "all-MiniLM-L6-v2)")
    threshold: float | None = option(None, "--strategy embedding: cosine similarity in [-1, 1] below which the base "
                                           "answers (default 0.3)", parse=cosine)
    shots: int = option(10, "--strategy cem: examples of the task to adapt on", parse=positive_int)


LIBRARY_HELP = LibraryOptions.__dataclass_fields__["library"].metadata["help"]


def add_model_args(p: argparse.ArgumentParser, targets: bool = True) -> None:
    add_dataclass_args(p, ModelOptions, skip=() if targets else ("targets",))


def add_precision_args(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, PrecisionOptions)


def precision_args(args) -> dict:
    """{device, dtype} from the flags (or a config holding them), for load_svf / load_model."""
    return {"device": getattr(args, "device", None) or "auto", "dtype": getattr(args, "dtype", None) or "auto"}


def add_library_arg(p: argparse.ArgumentParser, default=None) -> None:
    """`default=argparse.SUPPRESS` on a sub-command: the flag is accepted there too, and when it is not given there
    the parent command's value (or its default) is kept."""
    p.add_argument("--library", default=default, help=LIBRARY_HELP)


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int | None = None) -> None:
    from ..generation import GenerationConfig

    add_dataclass_args(p, GenerationConfig, skip=("batch_size",),
                       defaults={"max_new_tokens": max_new_tokens} if max_new_tokens else None)


def add_strategy_args(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, StrategyOptions)


# -- --out and --resume -------------------------------------------------------------------------------------------
# In every verb, --out is what the verb writes (its result: a file, a folder or a library name), and --resume, where
# a verb can continue an interrupted run, continues the run recorded for that --out; `--resume OUT` is short for
# `--out OUT --resume`. Verbs that cannot resume have no --resume.

def add_resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="OUT",
                   help="continue the interrupted run recorded for --out (or for the OUT given here)")


def resume_out(args) -> None:
    """`--resume OUT` sets --out; a --resume needs an --out to find the run by."""
    if isinstance(args.resume, str):
        args.out = args.resume
    if args.resume and not args.out:
        raise ValueError("--resume needs the run's --out (or: --resume OUT)")


# -- from strategy flags to objects (generate, eval and serve share them) ------------------------------------------

def check_strategy_inputs(args, library) -> None:
    """Fail on a missing classifier or an unusable encoder before a model is loaded (the encoder is kept)."""
    if args.strategy == "classifier":
        from ..adapt.classify import classifier_name

        classifier_name(library, args.classifier)
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


def model_for(flag: str | None, expert=None) -> str:
    """The model a verb loads: --model, else the model the expert was made for, else the default model."""
    return flag or (expert.meta.base_model if expert is not None and expert.meta.base_model else "default")


def load_strategy_model(args, library, routes):
    """The model the routed experts were made for (or --model), after the strategy's own inputs are checked."""
    from ..svf import load_svf

    check_strategy_inputs(args, library)
    first = next(iter(routes.values()), None)
    model = model_for(args.model, first)
    targets = getattr(args, "targets", None) or (first.meta.targets if first is not None else "mlp")
    return load_svf(model, targets=targets, cache_dir=getattr(args, "cache_dir", None), **precision_args(args))


def strategy_options(args, task=None) -> dict:
    return {"classifier": args.classifier, "encoder": args.encoder, "threshold": args.threshold,
            "task": task, "shots": args.shots}


# -- tasks from --data / --data-dir --------------------------------------------------------------------------------

DATA_FOLDERS = {"arc": "arc_easy", "arc_text": "arc_easy", "arc_challenge": "arc_challenge",
                "arc_challenge_text": "arc_challenge"}  # task -> its subfolder under --data-dir
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
