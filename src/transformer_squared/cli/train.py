"""Training verbs: train (SVF or LoRA, RL or SFT) and eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.config import TrainConfig, add_dataclass_args, config_from_args
from .options import (add_library_arg, add_precision_args, add_strategy_args, data_folders_text, load_task,
                      positive_int, precision_args)


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
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="OUT",
                   help="continue the run of --out (or of the OUT given here) from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p)
    p.set_defaults(func=train_cmd)

    p = sub.add_parser("eval", help="accuracy on a task split (base, expert, LoRA adapter or exported folder)",
                       epilog=epilog)
    p.add_argument("--model", default=None, help="base model (default: the expert's, else 'default'); an exported folder works too")
    p.add_argument("--task", default=None, help="one task (registry name or dotted path)")
    p.add_argument("--data", default=None)
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks pooled into one mixed set (with --strategy; data from --data-dir)")
    p.add_argument("--data-dir", default=None,
                   help="with --tasks: a folder with one subfolder per task, named as listed below (e.g. ../shared/data)")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=positive_int, default=None, help="first N examples of the split (default: all)")
    p.add_argument("--expert", default=None, help="SVF expert (library name or folder)")
    p.add_argument("--lora", default=None, help="PEFT LoRA adapter folder")
    add_library_arg(p)
    add_precision_args(p)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the task's")
    p.add_argument("--out", default=None, help="folder for <label>.json (summary) and <label>.jsonl (per sample)")
    p.add_argument("--label", default=None, help="file name stem for the results (default: derived)")
    add_strategy_args(p)
    p.set_defaults(func=eval_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    from ..training.trainer import train_expert

    if isinstance(args.resume, str):
        args.out = args.resume
    if args.resume and args.out is None:
        raise ValueError("--resume needs the run's --out (or: --resume OUT)")
    saved: dict = {}
    if args.resume:  # the checkpoint carries the run's config; only --steps may change
        cfg = TrainConfig(out=args.out, run_dir=args.run_dir, steps=args.steps or 1)
        ckpt = cfg.resolved_run_dir() / "checkpoint.pt"
        if ckpt.is_file():
            import torch

            # only the config is needed here: mmap leaves the tensors unread (train_expert loads the checkpoint)
            saved = torch.load(ckpt, weights_only=False, mmap=True)["config"]
            cfg.steps = args.steps or saved["steps"]
            cfg.method = args.method or saved["method"]  # a --method that differs from the run's is refused
        elif args.run_dir is None and (old := Path("runs") / Path(args.out).name / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no checkpoint at {ckpt}; {old.parent} is a run folder in the older layout "
                             f"(runs/<name>): if it is the run of {args.out}, pass --run-dir {old.parent}")
    else:
        cfg = config_from_args(args)
    task = None
    if saved.get("task", cfg.task) == "classify":  # the classifier expert's task is built from the library
        from ..adapt.classify import ClassifyTask
        from ..experts import ExpertLibrary

        task = ClassifyTask(ExpertLibrary(saved.get("library", cfg.library)))
    else:
        task = load_task(saved.get("task", cfg.task), saved.get("data", cfg.data), "train")
    result = train_expert(cfg, resume=bool(args.resume), progress=not args.quiet, task=task)
    print(f"best valid accuracy {result.best_valid:.1%} at step {result.best_step}/{result.steps}; "
          f"{result.num_trainable:,} trainable parameters; {result.seconds:.0f} s")
    print(f"saved {result.out} (run: {cfg.resolved_run_dir()})")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..training.evaluate import evaluate, write_results

    if args.expert and args.lora:
        raise ValueError("pass --expert or --lora, not both")
    if args.strategy or args.tasks:
        return eval_strategy_cmd(args)
    if not args.task:
        raise ValueError("pass --task (one task), or --tasks a,b with --strategy (a mixed pool)")
    task = load_task(args.task, args.data, args.split)  # data problems surface before a model loads
    if args.expert:
        from ..experts import ExpertLibrary
        from ..svf import load_svf

        lib = ExpertLibrary(args.library)
        expert = lib.get(args.expert)
        svf = load_svf(args.model or expert.meta.base_model or "default", targets=expert.meta.targets,
                       **precision_args(args))
        model, tokenizer, context = svf.model, svf.tokenizer, svf.applied(expert)
    else:
        from ..models import load_model

        loaded = load_model(args.model or "default", **precision_args(args))
        model, tokenizer, context = loaded.model, loaded.tokenizer, nullcontext()
        if args.lora:
            try:
                from peft import PeftModel
            except ImportError:
                from ..errors import MissingDependency

                raise MissingDependency("--lora needs PEFT: run `pip install 'transformer-squared[lora]'`") from None
            if not (Path(args.lora) / "adapter_config.json").is_file():
                raise ValueError(f"--lora {args.lora}: not a PEFT adapter folder (no adapter_config.json)")
            model = PeftModel.from_pretrained(model, args.lora).merge_and_unload().eval()
    with context:
        result = evaluate(model, tokenizer, task, args.split, args.n, args.batch_size, args.max_new_tokens)
    print(result.summary())
    if args.expert:  # expert memory: the result is kept beside the expert, for rank and routing
        from ..experts.memory import base_fingerprint, record_result

        folder = Path(args.expert) if (Path(args.expert) / "expert.json").is_file() else lib.root / args.expert
        print(f"recorded in {record_result(folder, expert, base_fingerprint(svf, expert), task, result, 'eval')}")
    if args.out:
        label = args.label or "_".join(x for x in (task.name, args.split, Path(args.expert or args.lora or "base").name) if x)
        path = write_results(result, args.out, label)
        print(f"wrote {path} and {path.with_suffix('.jsonl')}")
    else:
        print(json.dumps(result.to_dict()))
    return 0


def eval_strategy_cmd(args: argparse.Namespace) -> int:
    """A mixed pool of several tasks answered with two-pass self-adaptation (the paper's Table 2 setting)."""
    from ..adapt import build_strategy
    from ..adapt.two_pass import evaluate_strategy
    from .options import load_strategy_model, strategy_library, strategy_options

    if args.expert or args.lora:
        raise ValueError("--strategy picks experts itself: drop --expert/--lora")
    strategy_name = args.strategy or "base"
    names = [t.strip() for t in (args.tasks or args.task or "").split(",") if t.strip()]
    if not names:
        raise ValueError("--strategy needs --tasks a,b (or --task)")
    if len(names) == 1 and args.data:
        tasks = [load_task(names[0], args.data, args.split)]
    else:
        tasks = [load_task(n, split=args.split, data_dir=args.data_dir, pool=True) for n in names]
    lib, routes = strategy_library(args, strategy_name)
    svf = load_strategy_model(args, lib, routes)
    if strategy_name == "cem":
        def strategy(task):
            return build_strategy("cem", svf, lib, routes=routes, **strategy_options(args, task))
    else:
        strategy = build_strategy(strategy_name, svf, lib, routes=routes, **strategy_options(args))
    report = evaluate_strategy(svf, tasks, strategy, n=args.n, split=args.split, batch_size=args.batch_size,
                               routes=routes, max_new_tokens=args.max_new_tokens)
    for t in report.tasks:
        lo, hi = t.ci95
        dispatch = "" if t.dispatch_accuracy is None else f"  dispatch {t.dispatch_accuracy:.0%} (want {t.expected})"
        print(f"{t.task}/{args.split}: {t.accuracy:.1%} [{lo:.1%}, {hi:.1%}] (n={t.n}){dispatch}  experts {t.selected}")
    dispatch = report.dispatch_accuracy
    print(f"{strategy_name}: all {report.accuracy:.1%}" + ("" if dispatch is None else f", dispatch {dispatch:.1%}")
          + f"; pass 1 {report.pass1_s:.1f} s, pass 2 {report.pass2_s:.1f} s (overhead {report.overhead:.2f}x)")
    if args.out:
        from ..training.evaluate import write_results

        path = write_results(report, args.out, args.label or f"{'+'.join(names)}_{strategy_name}")
        print(f"wrote {path} and {path.with_suffix('.jsonl')}")
    return 0
