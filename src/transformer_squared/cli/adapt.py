"""Self-adaptation verbs: adapt (few-shot CEM into a new expert) and demo (the application itself is cli/demo.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..training.config import default_run_dir
from .options import (add_dataclass_args, add_library_arg, add_model_args, add_precision_args, add_resume_arg,
                      model_for, positive_int, precision_args, resume_out)


def register(sub) -> None:
    from ..adapt.config import CEMConfig

    p = sub.add_parser("adapt", help="few-shot adaptation: CEM over mixing weights of the library's experts",
                       description="Searches α so that z = Σ α·z_expert (+ the base) answers k examples of a task best; "
                                   "saves the result as an ordinary expert with its α in expert.json.")
    add_model_args(p, targets=False)
    add_library_arg(p)
    p.add_argument("--task", required=True, help="the task to adapt to (registry name or dotted path)")
    p.add_argument("--data", default=None, help="the task's data path")
    p.add_argument("--shots", type=positive_int, default=10, help="examples from the task's train split")
    p.add_argument("--experts", nargs="+", default=None, help="experts to mix (default: every routed expert)")
    p.add_argument("--out", default=None, help="the new expert: a library name or a folder path (required)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_resume_arg(p)  # the search's state is kept in runs/<name>-<hash of the --out path>
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, CEMConfig, layered=True)
    p.set_defaults(func=adapt_cmd)

    p = sub.add_parser("demo", help="the whole method end to end, offline, on the default model",
                       description="Trains small experts on built-in tasks (cached), a classifier expert, adapts to an "
                                   "unseen task with CEM, then answers a mixed set of prompts with every strategy.")
    p.add_argument("--model", default="default", help="the base model of the demo (default: %(default)s)")
    p.add_argument("--workdir", default=None, help="experts and runs of the demo (default: $T2_CACHE/demo)")
    p.add_argument("--n", type=positive_int, default=8, help="prompts per task in the final comparison")
    p.add_argument("--retrain", action="store_true", help="train the demo's experts again")
    add_precision_args(p)
    p.set_defaults(func=demo_cmd)


def adapt_cmd(args) -> int:
    import dataclasses

    from ..adapt.cem import (
        CEMConfig,
        Population,
        adapted_expert,
        cem_search,
        fewshot_examples,
    )
    from ..adapt.routes import answer_experts
    from ..experts import ExpertLibrary, check_name
    from ..tasks import get_task

    resume_out(args)
    if not args.out:
        raise ValueError("--out is required: the new expert, a library name or a folder path")
    lib = ExpertLibrary(args.library)
    out = Path(args.out) if ("/" in args.out or args.out.startswith(".")) else lib.root / check_name(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite or choose another name")
    cfg = CEMConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CEMConfig)
                       if getattr(args, f.name) is not None})
    task = get_task(args.task, args.data)
    shots = fewshot_examples(task, args.shots, cfg.seed)
    experts = [lib.get(n) for n in args.experts] if args.experts else list(answer_experts(lib).values())
    if not experts:
        raise ValueError(f"no experts to mix in {lib.root}: train some first (t2 train), or pass --experts")
    from ..svf import load_svf

    first = experts[0]
    svf = load_svf(model_for(args.model, first), targets=first.meta.targets,
                   cache_dir=args.cache_dir, **precision_args(args))
    population = Population(svf, experts, shots, task, cfg)
    state = default_run_dir(out) / "cem_state.json"
    if state.exists() and not args.resume:
        state.unlink()
    result = cem_search(population, progress=not args.quiet, state_path=state)
    expert = adapted_expert(svf, experts, result, name=out.name, task=task.name, data=args.data, shots=args.shots,
                            cem=dataclasses.asdict(cfg), description=f"few-shot CEM mixture for {task.name}")
    expert.save(out, overwrite=args.overwrite)
    alpha = result.alpha_dict(svf.names)
    shown = {k: (round(v, 3) if isinstance(v, float) else "per-matrix") for k, v in alpha.items()}
    print(f"shots accuracy {result.accuracy:.1%}, log-likelihood {result.loglik:.3f}; α = {shown}; "
          f"{result.seconds:.0f} s")
    print(f"saved {out}")
    return 0


def demo_cmd(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, workdir=args.workdir, n=args.n, retrain=args.retrain, out=sys.stdout,
                    **precision_args(args))
