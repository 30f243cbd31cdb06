"""Core verbs: decompose, generate, experts (list/show/mix/rm/init), export."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass

from ..generation import GenerationConfig
from .options import (
    LibraryOptions,
    ModelOptions,
    StrategyOptions,
    add_dataclass_args,
    add_library_arg,
    add_model_args,
    config_from_args,
    model_for,
    nonneg_float,
    option,
    precision_args,
)


@dataclass
class GenerateConfig(StrategyOptions, GenerationConfig, LibraryOptions, ModelOptions):
    """`t2 generate`: the prompts (positional) answered by the base model, one --expert, or a --strategy."""

    expert: str | None = option(None, "expert name in the library, or path to an expert folder")
    task: str | None = option(None, "--strategy cem: the task whose training examples are the shots")
    data: str | None = option(None, "--strategy cem: the task's data path")
    system: str | None = option(None, "system message")

    def __post_init__(self):
        super().__post_init__()  # GenerationConfig's checks
        if self.expert and self.strategy:
            raise ValueError("pass --expert or --strategy, not both")
        if self.strategy == "cem" and not self.task:
            raise ValueError("--strategy cem needs --task: the task whose training examples it adapts on")


def register(sub) -> None:
    p = sub.add_parser("decompose", help="SVD of the targeted matrices, cached on disk")
    add_model_args(p)
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.set_defaults(func=decompose_cmd)

    p = sub.add_parser("generate", help="answer prompts with the base model or an expert")
    add_dataclass_args(p, GenerateConfig, skip=("batch_size",))
    p.add_argument("prompt", nargs="+", help="one or more prompts (each answered separately)")
    p.set_defaults(func=generate_cmd)

    p = sub.add_parser("experts", help="manage the expert library")
    add_library_arg(p)
    esub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = _add_action(esub, "list", "list experts")
    q.set_defaults(func=experts_list)
    q = _add_action(esub, "show", "metadata and z statistics of one expert")
    q.add_argument("name", help="expert name in the library")
    q.set_defaults(func=experts_show)
    q = _add_action(esub, "rank", "experts ordered by their recorded results on a task (expert memory)")
    q.add_argument("--task", required=True, help="task name as recorded by t2 eval / t2 train (e.g. arc)")
    q.set_defaults(func=experts_rank)
    q = _add_action(esub, "stats", "delta similarity and norms per layer, usage counts, recorded results")
    q.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    q.set_defaults(func=experts_stats)
    q = _add_action(esub, "mix", "z = Σ w·z over experts, saved as a new expert")
    q.add_argument("weights", nargs="+", metavar="NAME=WEIGHT",
                   help="experts and their weights, e.g. math=0.6 code=0.4")
    q.add_argument("--out", required=True, help="name of the new expert")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.set_defaults(func=experts_mix)
    q = _add_action(esub, "rm", "remove an expert")
    q.add_argument("name", help="expert name in the library")
    q.set_defaults(func=experts_rm)
    q = _add_action(esub, "init", "a new expert for a model: identity (z = base), or randomly perturbed")
    add_model_args(q)
    q.add_argument("--out", "--name", dest="out", required=True,  # --name: the older spelling, kept working
                   help="name of the new expert (--name is the older spelling of --out)")
    q.add_argument("--parametrization", default="paper", choices=["paper", "reference"],
                   help="how z scales the singular values (default: %(default)s)")
    q.add_argument("--noise", type=nonneg_float, default=0.0, help="std of Gaussian noise added to z (0 = identity)")
    q.add_argument("--seed", type=int, default=0, help="seed of the noise (default: %(default)s)")
    q.add_argument("--domain", default="", help="domain label, for self-adaptation")
    q.add_argument("--description", default="", help="free text kept in expert.json")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.set_defaults(func=experts_init)

    p = sub.add_parser("export", help="merge an expert into the base: an ordinary Hugging Face folder")
    add_model_args(p, targets=False)
    add_library_arg(p)
    p.add_argument("--expert", required=True, help="expert name in the library, or path to an expert folder")
    p.add_argument("--out", required=True, help="output folder (--format gguf: output .gguf file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--format", default="hf", choices=["hf", "lora", "gguf"],
                   help="hf: merged Hugging Face folder (default); lora: PEFT adapter; gguf: merged model for llama.cpp")
    p.add_argument("--rank", default="full", help="--format lora: components kept per matrix, an integer or 'full' (exact)")
    p.add_argument("--gguf-type", default="f16", choices=["f32", "f16", "q8_0"], help="--format gguf: tensor type")
    p.set_defaults(func=export_cmd)


def _add_action(esub, name: str, help: str) -> argparse.ArgumentParser:
    """An `experts` action that takes --library too (`t2 experts list --library X` = `t2 experts --library X list`);
    SUPPRESS keeps the value given before the action when it is not repeated after it."""
    q = esub.add_parser(name, help=help)
    add_library_arg(q, default=argparse.SUPPRESS)
    return q


def _library(args):
    from ..experts import ExpertLibrary

    return ExpertLibrary(args.library)


def _svf(args, targets: str | None, expert=None, force: bool = False):
    from ..svf import load_svf

    return load_svf(model_for(args.model, expert), targets=targets or "mlp", cache_dir=args.cache_dir, force=force, **precision_args(args))


def decompose_cmd(args) -> int:
    t0 = time.perf_counter()
    svf = _svf(args, args.targets, force=args.force)  # decomposed from the float32 weights, before the cast
    print(f"{len(svf.names)} matrices ({args.targets or 'mlp'}), {svf.num_z():,} singular values = z parameters")
    print(f"factors: {svf.decomposition.path} ({svf.decomposition.nbytes() / 2**20:.1f} MiB)")
    print(f"fingerprint: {svf.decomposition.fingerprint}  ({time.perf_counter() - t0:.1f} s; "
          f"held on {svf.precision.describe()})")
    return 0


def generate_cmd(args) -> int:
    from ..generation import generate

    cfg = config_from_args(args, GenerateConfig)  # a GenerationConfig too: it is passed as the sampling settings
    if cfg.strategy:
        return _generate_adaptive(cfg, args.prompt)
    expert = _library(cfg).get(cfg.expert) if cfg.expert else None  # fail fast, before loading the model
    targets = cfg.targets or (expert.meta.targets if expert else "mlp")
    svf = _svf(cfg, targets, expert)
    with svf.applied(expert):
        answers = generate(svf.model, svf.tokenizer, args.prompt, cfg, system=cfg.system)
    for prompt, answer in zip(args.prompt, answers):
        if len(args.prompt) > 1:
            print(f"> {prompt}")
        print(answer)
        if expert is not None:
            print(f"[expert: {expert.name}]", file=sys.stderr)
    return 0


def _generate_adaptive(cfg: GenerateConfig, prompts: list[str]) -> int:
    """Two passes: the strategy picks an expert per prompt, then that expert answers."""
    from ..adapt import build_strategy
    from ..adapt.two_pass import generate_adaptive
    from .options import load_strategy_model, strategy_library, strategy_options

    lib, routes = strategy_library(cfg, cfg.strategy)
    task = None
    if cfg.strategy == "cem":
        from ..tasks import get_task

        task = get_task(cfg.task, cfg.data)
    svf = load_strategy_model(cfg, lib, routes)
    strategy = build_strategy(cfg.strategy, svf, lib, routes=routes, **strategy_options(cfg, task))
    for answer in generate_adaptive(svf, prompts, strategy, cfg, system=cfg.system):
        if len(prompts) > 1:
            print(f"> {answer.prompt}")
        print(answer.text)
        print(f"[{cfg.strategy}: {answer.selection.label} -> expert {answer.expert}; pass 1 "
              f"{answer.pass1_s * 1e3:.0f} ms, pass 2 {answer.pass2_s * 1e3:.0f} ms]", file=sys.stderr)
    return 0


def experts_list(args) -> int:
    lib = _library(args)
    names = lib.names()
    if not names:
        print(f"no experts in {lib.root}")
        return 0
    print(f"{'name':24} {'domain':12} {'params':>8} {'method':10} base")
    for name in names:
        info = lib.info(name)
        print(f"{name:24} {info.get('domain', '')[:12]:12} {info.get('num_params', 0):>8} "
              f"{info.get('created_by', {}).get('method', '')[:10]:10} {info.get('base_model', '')}")
    return 0


def experts_show(args) -> int:
    lib = _library(args)
    expert = lib.get(args.name)
    print(json.dumps(lib.info(args.name) if args.name in lib else {**vars(expert.meta)}, indent=2, sort_keys=True))
    import torch

    z = torch.cat(list(expert.z.values()))
    print(f"z: {z.numel():,} values over {len(expert.z)} matrices; mean {z.mean():.4f} std {z.std():.4f} "
          f"min {z.min():.4f} max {z.max():.4f}")
    from ..experts.memory import ExpertMemory

    records = ExpertMemory(lib.root).results(expert)
    print(f"records ({len(records)}):" if records else "records: none (t2 eval --expert NAME records one)")
    for r in records:
        lo, hi = r.get("ci95", (0, 0))
        print(f"  {r['date']}  {r['task']}/{r['split']}: {r['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] (n={r['n']}) "
              f"by {r.get('source', '?')}")
    return 0


def experts_rank(args) -> int:
    from ..experts.memory import ExpertMemory

    lib = _library(args)
    ranked = [(e, s) for e, s in ExpertMemory(lib.root).rank(args.task, [lib.get(n) for n in lib.names()])
              if s is not None]
    if not ranked:
        print(f"no recorded results for task {args.task!r} in {lib.root} (record some: t2 eval --expert NAME "
              f"--task {args.task})")
        return 0
    print(f"{'#':>2} {'expert':24} {'accuracy':>8} {'95% interval':16} {'n':>5} split  date")
    for i, (expert, score) in enumerate(ranked, 1):
        lo, hi = score.ci95
        print(f"{i:>2} {expert.name:24} {score.accuracy:>8.1%} [{lo:5.1%}, {hi:5.1%}]  {score.n:>5} "
              f"{score.split:6} {score.date}")
    return 0


def experts_stats(args) -> int:
    from ..experts.stats import format_stats, library_stats

    stats = library_stats(_library(args))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def parse_weights(items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name] = float(value)
            if not math.isfinite(weights[name]):
                raise ValueError
        except ValueError:
            raise ValueError(f"bad weight {item!r}: write NAME=WEIGHT, e.g. math=0.6") from None
    return weights


def experts_mix(args) -> int:
    mixed = _library(args).mix(parse_weights(args.weights), name=args.out, overwrite=args.overwrite)
    print(f"saved {mixed.name}: " + " + ".join(f"{w}·{n}" for n, w in mixed.meta.alpha.items()))
    return 0


def experts_rm(args) -> int:
    _library(args).remove(args.name)
    print(f"removed {args.name}")
    return 0


def experts_init(args) -> int:
    import torch

    from ..experts import Expert, check_name

    lib = _library(args)
    check_name(args.out)
    if args.out in lib and not args.overwrite:
        raise ValueError(f"expert {args.out!r} already exists; pass --overwrite or choose another name")
    svf = _svf(args, args.targets)
    g = torch.Generator().manual_seed(args.seed)
    z = {n: v + args.noise * torch.randn(v.shape, generator=g) for n, v in svf.init_z(args.parametrization).items()}
    expert = Expert.for_model(svf, z, args.parametrization, domain=args.domain, description=args.description,
                              created_by={"method": "init", "noise": args.noise, "seed": args.seed})
    path = lib.add(expert, args.out, overwrite=args.overwrite)
    print(f"saved {path} ({expert.num_params():,} z values)")
    return 0


def export_cmd(args) -> int:
    from ..export import export_merged
    from ..precision import checkpoint_dtype, resolve_dtype

    expert = _library(args).get(args.expert)
    wanted, args.dtype = args.dtype, "float32"  # compose W' from the float32 base, cast once on saving
    if args.format != "hf":
        from .export_formats import export_other

        return export_other(args, expert, _svf)
    svf = _svf(args, expert.meta.targets, expert)
    dtype = checkpoint_dtype(svf.model_id) if wanted in (None, "auto") else resolve_dtype(wanted)
    out = export_merged(svf, expert, args.out, overwrite=args.overwrite, dtype=dtype)
    print(f"exported {expert.name} merged into {svf.model_id} -> {out} ({str(dtype).removeprefix('torch.')})")
    return 0
