"""`t2 demo`: the whole method, offline, on the default model, in minutes on a laptop CPU. An application of the
library, so it lives with the CLI (cli/adapt.py registers the verb).

1. Two experts on built-in tasks: `arithmetic` (two-digit addition, trained with RL as in the paper) and `antonyms`
   (trained with next-token SFT: the base model almost never answers with the word only, so RL rewards are too
   sparse for a short run). A classifier expert learns to label prompts with the two domains — with SFT here, not
   the paper's RL: the base model names the right label ~3% of the time (measured), too rare for a few RL steps.
   All three are cached in the work folder; a second run only answers.
2. A mixed set of prompts from the two tasks and from `addition3` (three-digit addition), which no expert was
   trained on, is answered by the base model and by each self-adaptation strategy (prompt, classifier,
   embedding): one line per prompt.
3. Few-shot CEM adapts to `addition3` from 16 of its training examples (cached too).
4. A table: per-task accuracy, dispatch accuracy and pass-1 overhead of each strategy, and the unseen task under
   base / each single expert / the CEM mixture.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

DEMO_TASKS = ("arithmetic", "antonyms", "addition3")
UNSEEN = "addition3"  # three-digit addition; the arithmetic expert is trained on two-digit problems only
EXPERT_RUNS = {  # name -> TrainConfig fields; small enough for a first run within 10 minutes on 2 cores
    "arithmetic": {"task": "arithmetic", "objective": "rloo", "steps": 12, "batch_size": 8, "group_size": 4, "lr": 3e-3,
                       "valid_every": 12, "valid_n": 32},
    "antonyms": {"task": "antonyms", "objective": "sft", "steps": 16, "batch_size": 8, "lr": 3e-3, "valid_every": 8, "valid_n": 34},
}
CLASSIFIER_RUN = {"objective": "sft", "steps": 8, "batch_size": 8, "lr": 3e-3, "valid_every": 8, "valid_n": 24}
CEM_RUN = {"population": 8, "iterations": 3, "elite_ratio": 0.25, "fitness": "accuracy"}
BATCH = 32  # the mixed set's 24 prompts in one batch, in pass 1 and pass 2
SHOTS = 16  # 8 shots left the arithmetic expert at 0/8 on addition3 by chance (38% on test): too few to rank


def default_workdir() -> Path:
    from ..paths import cache_root

    return cache_root() / "demo"


def _cached(library, name: str, svf) -> bool:
    from ..experts import ExpertError

    if name not in library:
        return False
    try:
        library.get(name).check_compatible(svf)
        return True
    except ExpertError:
        return False


def _train(svf, library, runs: Path, name: str, fields: dict, task=None, log=print) -> None:
    from ..training.config import TrainConfig
    from ..training.trainer import train_expert

    cfg = TrainConfig(model=svf.model_id, out=str(library.root / name), run_dir=str(runs / name), overwrite=True,
                      **fields)
    t0 = time.perf_counter()
    result = train_expert(cfg, task=task, svf=svf)
    log(f"  {name}: best valid accuracy {result.best_valid:.0%} (step {result.best_step}/{result.steps}), "
        f"{time.perf_counter() - t0:.0f} s")


def _mark(score: float) -> str:
    return "ok" if score else "--"


PROMPT_WIDTH = 46  # prompts are long: shown up to here, with "…" where cut; answers and experts are shown whole


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def answer_table(by_strategy: dict[str, list[dict]]) -> list[str]:
    """One line per prompt: the reference answer, then per strategy the expert it chose and ok/-- (column widths
    fit the longest cell)."""
    first = next(iter(by_strategy.values()))
    prompts = [_cut(" ".join(str(r["prompt"]).split()), PROMPT_WIDTH) for r in first]
    answers = [str(r["answer"]) for r in first]
    cells = {s: [f"{r['expert']} {_mark(r['score'])}" for r in records] for s, records in by_strategy.items()}
    pw = max(len("prompt"), *map(len, prompts))
    aw = max(len("answer"), *map(len, answers))
    widths = {s: max(len(s), *map(len, column)) for s, column in cells.items()}
    lines = [f"  {'prompt':{pw}}  {'answer':{aw}}  " + "  ".join(f"{s:>{widths[s]}}" for s in cells)]
    for i in range(len(first)):
        lines.append(f"  {prompts[i]:{pw}}  {answers[i]:{aw}}  "
                     + "  ".join(f"{cells[s][i]:>{widths[s]}}" for s in cells))
    return [line.rstrip() for line in lines]


def run_demo(model: str = "default", workdir=None, n: int = 8, retrain: bool = False, out=sys.stdout,
             device: str = "auto", dtype: str = "auto") -> int:
    from ..experts import ExpertLibrary

    def log(*parts):
        print(*parts, file=out, flush=True)

    t_start = time.perf_counter()
    workdir = Path(workdir) if workdir else default_workdir()
    library, runs = ExpertLibrary(workdir / "experts"), workdir / "runs"
    svf = _load_model(model, workdir, device, dtype, log)
    _train_experts(svf, library, runs, retrain, log)
    reports, routes = _answer_mixed_set(svf, library, n, log)
    unseen_rows, alpha = _adapt_to_unseen(svf, library, routes, reports["base"], n, retrain, log)
    _print_results(reports, unseen_rows, alpha, n, log)
    log(f"\nDone in {time.perf_counter() - t_start:.0f} s.")
    for line in next_steps(library.root):
        log(line)
    return 0


def _load_model(model: str, workdir: Path, device: str, dtype: str, log):
    """[1/4] The model and its SVD."""
    from ..svf import load_svf

    log(f"[1/4] loading {model} and its SVD (cached after the first run); work folder {workdir}")
    svf = load_svf(model, device=device, dtype=dtype)
    log(f"  precision: {svf.precision.describe()}" + (" (auto: the fastest safe choice here)" if dtype == "auto" else ""))
    log(f"  {len(svf.names)} MLP matrices, {svf.num_z():,} singular values = the size of one expert")
    return svf


def _train_experts(svf, library, runs: Path, retrain: bool, log) -> None:
    """[2/4] The task experts, then the classifier expert over them; each trained once, then cached."""
    from ..adapt.classify import ClassifyTask

    log("[2/4] experts (trained once, then cached)")
    for name, fields in EXPERT_RUNS.items():
        if retrain or not _cached(library, name, svf):
            _train(svf, library, runs, name, fields, log=log)
        else:
            log(f"  {name}: cached ({library.info(name)['metrics'].get('valid_accuracy', 0):.0%} valid)")
    if retrain or not _cached(library, "dispatcher", svf):
        _train(svf, library, runs, "dispatcher", {"task": "classify", **CLASSIFIER_RUN}, task=ClassifyTask(library),
               log=log)
    else:
        log(f"  dispatcher: cached ({library.info('dispatcher')['metrics'].get('valid_accuracy', 0):.0%} valid)")


def _answer_mixed_set(svf, library, n: int, log) -> tuple[dict, dict]:
    """[3/4] The mixed set answered by the base and each routing strategy: ({strategy: report}, routes)."""
    from ..adapt import build_strategy
    from ..adapt.routes import answer_experts
    from ..adapt.two_pass import evaluate_strategy
    from ..tasks import get_task

    tasks = [get_task(t) for t in DEMO_TASKS]
    routes = answer_experts(library)
    log(f"[3/4] answering {n} test prompts of each of {', '.join(DEMO_TASKS)} ({UNSEEN} has no expert)")
    reports = {}
    for name in ("base", "prompt", "classifier", "embedding"):
        strategy = build_strategy(name, svf, library, routes=routes, batch_size=BATCH)  # pass 1 in one batch too
        reports[name] = evaluate_strategy(svf, tasks, strategy, n=n, batch_size=BATCH, routes=routes)
    for line in answer_table({name: r.records for name, r in reports.items()}):
        log(line)
    return reports, routes


def _adapt_to_unseen(svf, library, routes: dict, base_report, n: int, retrain: bool, log) -> tuple[dict, dict]:
    """[4/4] Few-shot CEM on the unseen task (cached), then the unseen task under the base, each single expert and
    the CEM mixture: ({row: report}, the mixture's α)."""
    from ..adapt.cem import CEMConfig, FewShotStrategy
    from ..adapt.two_pass import FixedStrategy, evaluate_strategy
    from ..tasks import get_task

    log(f"[4/4] few-shot CEM on {UNSEEN} from {SHOTS} training examples (mixing "
        f"{', '.join(e.name for e in routes.values())} and the base)")
    unseen = get_task(UNSEEN)
    cem_name = f"cem-{UNSEEN}"
    if retrain or not _cached(library, cem_name, svf):
        fewshot = FewShotStrategy(list(routes.values()), unseen, SHOTS, CEMConfig(**CEM_RUN), progress=True)
        library.add(fewshot.adapt(svf), cem_name, overwrite=True)
    rows = {"base": base_report}
    for expert in routes.values():
        rows[f"expert {expert.name}"] = evaluate_strategy(svf, [unseen], FixedStrategy(expert), n=n, batch_size=BATCH,
                                                          progress=False)
    cem_expert = library.get(cem_name)
    rows["cem mixture"] = evaluate_strategy(svf, [unseen], FixedStrategy(cem_expert, "cem"), n=n, batch_size=BATCH,
                                            progress=False)
    alpha = {k: round(v, 2) for k, v in (cem_expert.meta.alpha or {}).items() if isinstance(v, float)}
    return rows, alpha


def _print_results(reports: dict, unseen_rows: dict, alpha: dict, n: int, log) -> None:
    """The table: per-task accuracy, dispatch and overhead of each strategy; then the unseen task's rows."""
    log("\nResults (accuracy on the mixed set; dispatch = pass 1 picked the expert of the task's domain — "
        f"arithmetic for {UNSEEN}; overhead = pass-1 time / pass-2 time)")
    log(f"  {'strategy':12} " + " ".join(f"{t:>12}" for t in DEMO_TASKS) + f" {'all':>6} {'dispatch':>9} {'overhead':>9}")
    for name, r in reports.items():
        cells = " ".join(f"{t.accuracy:>12.0%}" for t in r.tasks)
        dispatch = "" if r.dispatch_accuracy is None else f"{r.dispatch_accuracy:.0%}"
        overhead = "" if name == "base" else f"{r.overhead:.2f}x"
        log(f"  {name:12} {cells} {r.accuracy:>6.0%} {dispatch:>9} {overhead:>9}")
    log(f"\nUnseen task {UNSEEN} (n={n}):")
    for name, r in unseen_rows.items():
        task_report = next(t for t in r.tasks if t.task == UNSEEN)
        log(f"  {name:22} {task_report.accuracy:>6.0%}")
    log(f"  CEM α: {alpha}")


def next_steps(root: Path) -> list[str]:
    """Where the demo's experts are, and commands that use them (printed at the end of the demo)."""
    lib = shlex.quote(str(root))
    return [f"The demo's experts are in {root} (kept: the next run only answers). Try:",
            f"  t2 generate --library {lib} --expert arithmetic \"What is 31 + 45?\"",
            f"  t2 generate --library {lib} --strategy embedding \"Give the antonym of 'cold'.\"",
            f"  t2 experts list --library {lib}",
            f"or make them the default library of every t2 command and of ExpertLibrary(): export T2_EXPERTS={lib}"]
