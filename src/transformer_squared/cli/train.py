"""Training verbs: train (SVF or LoRA, RL or SFT) and eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dataclasses import dataclass

from ..training.config import TrainConfig
from .options import (LibraryOptions, PrecisionOptions, StrategyOptions, add_dataclass_args, add_resume_arg,
                      config_from_args, data_folders_text, load_task, model_for, option, positive_int, precision_args,
                      resume_out)


@dataclass
class EvalConfig(StrategyOptions, LibraryOptions, PrecisionOptions):
    """`t2 eval`: one task and one model (base, --expert, --lora), or a pool of tasks (--tasks) with --strategy."""

    model: str | None = option(None, "base model (default: the expert's, else 'default'); an exported folder works too")
    task: str | None = option(None, "one task (registry name or dotted path)")
    data: str | None = option(None, "the task's data path (a folder or file in the upstream format)")
    tasks: str | None = option(None, "comma-separated tasks pooled into one mixed set (with --strategy; data from "
                                     "--data-dir)")
    data_dir: str | None = option(None, "with --tasks: a folder with one subfolder per task, named as listed below "
                                        "(e.g. ../shared/data)")
    split: str = option("test", "the split to score (train, valid or test)")
    n: int | None = option(None, "first N examples of the split (default: all)", parse=positive_int)
    expert: str | None = option(None, "SVF expert (library name or folder)")
    lora: str | None = option(None, "PEFT LoRA adapter folder")
    batch_size: int = option(16, "prompts per forward pass", parse=positive_int)
    max_new_tokens: int | None = option(None, "default: the task's", parse=positive_int)
    out: str | None = option(None, "folder for <label>.json (summary) and <label>.jsonl (per sample)")
    label: str | None = option(None, "file name stem for the results (default: derived)")

    def __post_init__(self):
        if self.expert and self.lora:
            raise ValueError("pass --expert or --lora, not both")
        if (self.strategy or self.tasks) and (self.expert or self.lora):
            raise ValueError("--strategy picks experts itself: drop --expert/--lora")
        if not (self.task or self.tasks or self.strategy):  # --strategy alone: eval_strategy_cmd asks for --tasks
            raise ValueError("pass --task (one task), or --tasks a,b with --strategy (a mixed pool)")


def _tasks_epilog() -> str:
    from ..tasks import TASKS  # the registry (plain Python, no torch: `t2 -h` stays instant)

    return (f"tasks: {', '.join(sorted(TASKS))}. Tasks that read a data set take --data PATH; with --tasks, "
            f"--data-dir DIR holds one subfolder per task: {data_folders_text(sorted(TASKS))}.")


def register(sub) -> None:
    epilog = _tasks_epilog()
    p = sub.add_parser("train", help="train an expert (SVF z-vectors, or the LoRA baseline) on a task",
                       description="Every field of the config is a flag; --config reads the same fields from YAML.",
                       epilog=epilog)
    p.add_argument("--config", default=None, help="YAML file with the same fields as the flags")
    add_resume_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, TrainConfig, layered=True)
    p.set_defaults(func=train_cmd)

    p = sub.add_parser("eval", help="accuracy on a task split (base, expert, LoRA adapter or exported folder)",
                       epilog=epilog)
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=eval_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    from ..training.trainer import train_expert

    resume_out(args)
    saved: dict = {}
    state = None  # the checkpoint, read once here and handed to train_expert
    if args.resume:  # the checkpoint carries the run's config; only --steps may change
        cfg = TrainConfig(out=args.out, run_dir=args.run_dir, steps=args.steps or 1)
        ckpt = cfg.resolved_run_dir() / "checkpoint.pt"
        if ckpt.is_file():
            import torch

            state = torch.load(ckpt, weights_only=False)
            saved = state["config"]
            cfg.steps = args.steps or saved["steps"]
            cfg.method = args.method or saved["method"]  # a --method that differs from the run's is refused
        elif args.run_dir is None and (old := Path("runs") / Path(args.out).name / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no checkpoint at {ckpt}; {old.parent} is a run folder in the older layout "
                             f"(runs/<name>): if it is the run of {args.out}, pass --run-dir {old.parent}")
    else:
        cfg = config_from_args(args, TrainConfig)
    task = None
    if saved.get("task", cfg.task) == "classify":  # the classifier expert's task is built from the library
        from ..adapt.classify import ClassifyTask
        from ..experts import ExpertLibrary

        task = ClassifyTask(ExpertLibrary(saved.get("library", cfg.library)))
    else:
        task = load_task(saved.get("task", cfg.task), saved.get("data", cfg.data), "train")
    result = train_expert(cfg, resume=bool(args.resume), progress=not args.quiet, task=task, state=state)
    print(f"best valid accuracy {result.best_valid:.1%} at step {result.best_step}/{result.steps}; "
          f"{result.num_trainable:,} trainable parameters; {result.seconds:.0f} s")
    print(f"saved {result.out} (run: {cfg.resolved_run_dir()})")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..evaluation import evaluate, write_results

    cfg = config_from_args(args, EvalConfig)
    if cfg.strategy or cfg.tasks:
        return eval_strategy_cmd(cfg)
    task = load_task(cfg.task, cfg.data, cfg.split)  # data problems surface before a model loads
    if cfg.expert:
        from ..experts import ExpertLibrary
        from ..svf import load_svf

        lib = ExpertLibrary(cfg.library)
        expert = lib.get(cfg.expert)
        svf = load_svf(model_for(cfg.model, expert), targets=expert.meta.targets,
                       **precision_args(cfg))
        model, tokenizer, context = svf.model, svf.tokenizer, svf.applied(expert)
    else:
        from ..models import load_model

        loaded = load_model(model_for(cfg.model), **precision_args(cfg))
        model, tokenizer, context = loaded.model, loaded.tokenizer, nullcontext()
        if cfg.lora:
            try:
                from peft import PeftModel
            except ImportError:
                from ..errors import MissingDependency

                raise MissingDependency("--lora needs PEFT: run `pip install 'transformer-squared[lora]'`") from None
            if not (Path(cfg.lora) / "adapter_config.json").is_file():
                raise ValueError(f"--lora {cfg.lora}: not a PEFT adapter folder (no adapter_config.json)")
            model = PeftModel.from_pretrained(model, cfg.lora).merge_and_unload().eval()
    examples = None
    made = expert.meta.created_by if cfg.expert else {}
    if made.get("method") == "cem" and made.get("task") == task.name:
        from ..adapt.cem import shots_from_test, without_shots

        if shots_from_test(task):  # an evaluation-only set: the mixture adapted on some of it
            examples = without_shots(task, task.examples(cfg.split), int(made["shots"]))
            print(f"note: leaving out the {made['shots']} {task.name} examples {cfg.expert} was adapted on")
    with context:
        result = evaluate(model, tokenizer, task, cfg.split, cfg.n, cfg.batch_size, cfg.max_new_tokens,
                          examples=examples)
    print(result.summary())
    if cfg.expert:  # expert memory: the result is kept beside the expert, for rank and routing
        from ..experts.memory import base_fingerprint, record_result

        folder = Path(cfg.expert) if (Path(cfg.expert) / "expert.json").is_file() else lib.root / cfg.expert
        print(f"recorded in {record_result(folder, expert, base_fingerprint(svf, expert), task, result, 'eval')}")
    if cfg.out:
        label = cfg.label or "_".join(x for x in (task.name, cfg.split, Path(cfg.expert or cfg.lora or "base").name) if x)
        path = write_results(result, cfg.out, label)
        print(f"wrote {path} and {path.with_suffix('.jsonl')}")
    else:
        print(json.dumps(result.to_dict()))
    return 0


def eval_strategy_cmd(cfg: EvalConfig) -> int:
    """A mixed pool of several tasks answered with two-pass self-adaptation (the paper's Table 2 setting)."""
    from ..adapt import build_strategy
    from ..adapt.two_pass import evaluate_strategy
    from .options import load_strategy_model, strategy_library, strategy_options

    strategy_name = cfg.strategy or "base"
    names = [t.strip() for t in (cfg.tasks or cfg.task or "").split(",") if t.strip()]
    if not names:
        raise ValueError("--strategy needs --tasks a,b (or --task)")
    if len(names) == 1 and cfg.data:
        tasks = [load_task(names[0], cfg.data, cfg.split)]
    else:
        tasks = [load_task(n, split=cfg.split, data_dir=cfg.data_dir, pool=True) for n in names]
    lib, routes = strategy_library(cfg, strategy_name)
    svf = load_strategy_model(cfg, lib, routes)
    if strategy_name == "cem":
        def strategy(task):
            return build_strategy("cem", svf, lib, routes=routes, **strategy_options(cfg, task))
    else:
        strategy = build_strategy(strategy_name, svf, lib, routes=routes, **strategy_options(cfg))
    report = evaluate_strategy(svf, tasks, strategy, n=cfg.n, split=cfg.split, batch_size=cfg.batch_size,
                               routes=routes, max_new_tokens=cfg.max_new_tokens)
    for t in report.tasks:
        lo, hi = t.ci95
        dispatch = "" if t.dispatch_accuracy is None else f"  dispatch {t.dispatch_accuracy:.0%} (want {t.expected})"
        print(f"{t.task}/{cfg.split}: {t.accuracy:.1%} [{lo:.1%}, {hi:.1%}] (n={t.n}){dispatch}  experts {t.selected}")
    dispatch = report.dispatch_accuracy
    print(f"{strategy_name}: all {report.accuracy:.1%}" + ("" if dispatch is None else f", dispatch {dispatch:.1%}")
          + f"; pass 1 {report.pass1_s:.1f} s, pass 2 {report.pass2_s:.1f} s (overhead {report.overhead:.2f}x)")
    if cfg.out:
        from ..evaluation import write_results

        path = write_results(report, cfg.out, cfg.label or f"{'+'.join(names)}_{strategy_name}")
        print(f"wrote {path} and {path.with_suffix('.jsonl')}")
    return 0
