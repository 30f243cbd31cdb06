"""Training verbs: train (SVF or LoRA, RL or SFT) and eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.config import TrainConfig, add_dataclass_args, config_from_args
from .core import add_library_arg


def register(sub) -> None:
    p = sub.add_parser("train", help="train an expert (SVF z-vectors, or the LoRA baseline) on a task",
                       description="Every field of the config is a flag; --config reads the same fields from YAML.")
    p.add_argument("--config", default=None, help="YAML file with the same fields as the flags")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="OUT",
                   help="continue the run of --out (or of the OUT given here) from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p)
    p.set_defaults(func=train_cmd)

    p = sub.add_parser("eval", help="accuracy on a task split (base, expert, LoRA adapter or exported folder)")
    p.add_argument("--model", default=None, help="base model (default: the expert's, else 'default'); an exported folder works too")
    p.add_argument("--task", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=None, help="first N examples of the split (default: all)")
    p.add_argument("--expert", default=None, help="SVF expert (library name or folder)")
    p.add_argument("--lora", default=None, help="PEFT LoRA adapter folder")
    add_library_arg(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for <label>.json (summary) and <label>.jsonl (per sample)")
    p.add_argument("--label", default=None, help="file name stem for the results (default: derived)")
    p.set_defaults(func=eval_cmd)


def train_cmd(args: argparse.Namespace) -> int:
    from ..training.trainer import train_expert

    if isinstance(args.resume, str):
        args.out = args.resume
    if args.resume and args.out is None:
        raise ValueError("--resume needs the run's --out (or: --resume OUT)")
    if args.resume:  # the checkpoint carries the run's config; only --steps may change
        cfg = TrainConfig(out=args.out, run_dir=args.run_dir, steps=args.steps or 1)
        if args.steps is None:
            import torch

            ckpt = cfg.resolved_run_dir() / "checkpoint.pt"
            if ckpt.is_file():
                cfg.steps = torch.load(ckpt, weights_only=False)["config"]["steps"]
    else:
        cfg = config_from_args(args)
    result = train_expert(cfg, resume=bool(args.resume), progress=not args.quiet)
    print(f"best valid accuracy {result.best_valid:.1%} at step {result.best_step}/{result.steps}; "
          f"{result.num_trainable:,} trainable parameters; {result.seconds:.0f} s")
    print(f"saved {result.out} (run: {cfg.resolved_run_dir()})")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..tasks import get_task
    from ..training.evaluate import evaluate, write_results

    if args.expert and args.lora:
        raise ValueError("pass --expert or --lora, not both")
    task = get_task(args.task, args.data)
    task.examples(args.split)  # fail on data problems before loading a model
    if args.expert:
        from ..experts import ExpertLibrary
        from ..svf import load_svf

        expert = ExpertLibrary(args.library).get(args.expert)
        svf = load_svf(args.model or expert.meta.base_model or "default", targets=expert.meta.targets)
        model, tokenizer, context = svf.model, svf.tokenizer, svf.applied(expert)
    else:
        from ..models import load_model

        loaded = load_model(args.model or "default")
        model, tokenizer, context = loaded.model, loaded.tokenizer, nullcontext()
        if args.lora:
            try:
                from peft import PeftModel
            except ImportError:
                raise SystemExit("--lora needs PEFT: run `pip install 'transformer-squared[lora]'`") from None
            if not (Path(args.lora) / "adapter_config.json").is_file():
                raise ValueError(f"--lora {args.lora}: not a PEFT adapter folder (no adapter_config.json)")
            model = PeftModel.from_pretrained(model, args.lora).merge_and_unload().eval()
    with context:
        result = evaluate(model, tokenizer, task, args.split, args.n, args.batch_size, args.max_new_tokens)
    print(result.summary())
    if args.out:
        label = args.label or "_".join(x for x in (task.name, args.split, Path(args.expert or args.lora or "base").name) if x)
        path = write_results(result, args.out, label)
        print(f"wrote {path} and {path.with_suffix('.jsonl')}")
    else:
        print(json.dumps(result.to_dict()))
    return 0
