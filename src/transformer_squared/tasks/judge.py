"""Unit-test verdicts a candidate program cannot forge: decided in this (trusted) process, from values.

Threat model, as implemented. The candidate is arbitrary Python (an RL policy's completion) and runs first, in the
same sandboxed process as anything the tests evaluate there, so it controls that process entirely: it may exit at
any moment with any status (sys.exit, os._exit, SystemExit, KeyboardInterrupt, a signal), patch builtins,
sys.modules or any function, start threads, print anything, write to any fd it holds, read its own program and
/proc/self, and inspect frames and the gc for whatever the process holds. So nothing that process says is
believed: exit status and output never decide, and there is no secret (nonce) to steal because none is needed.
What decides is this:

1. The tests are parsed here with `ast` (never run here). Each assert's expression is split into the part this
   process evaluates itself — literals, displays, comparisons, arithmetic, `not`/`and`/`or`, subscripts, calls to a
   fixed list of pure builtins and `math.isclose`/`math.fabs`, but no `*`, `**` or `<<` over a solution's value
   (its cost would be the candidate's to choose) — and *holes*, the maximal sub-expressions it cannot
   (a call of the solution, `candidate(...)`). A hole made only of standard-library modules and builtins
   (`sys.getsizeof(x)`), or for HumanEval also of the prompt's own helpers, is an *expected* hole: it is
   evaluated in a separate sandbox run without the candidate's code (cached per test list), so redefining a
   helper does not change it. Every other hole is a *probe*, evaluated in the candidate's run.
2. The candidate's run gets the candidate code, the test's set-up code and the probes — never an expected value,
   never the asserts. It sends back one record per probe, the probe's value encoded by `tasks.evidence` (exact
   built-in types only: subclasses, always-equal objects, objects of the candidate's classes are refused).
3. The verdict is computed here: exactly one well-formed record per probe, in order, nothing else; values decoded
   into genuine built-in objects; each assert's expression evaluated with them. A forged record can only claim
   values — which the candidate could as well have returned — so cheating needs the expected values, and those
   are not in its process. (The few shown in the prompt, e.g. MBPP's first assert, are public by design.)
4. HumanEval tests whose check() is more than asserts (loops, random inputs, helpers, property checks) are judged
   by replay, from the canonical solution when there is one: a *record* run (reference solution, no candidate) lists the
   arguments check() passes to the candidate, with `random` seeded and the reference's own use of it undone; the
   candidate's run calls its function on those arguments and sends the outputs; a *replay* run (no candidate)
   runs check() with a stand-in that returns those outputs in order (refusing any other arguments) and says
   whether check() returned. That run holds only the dataset's code and decoded plain data, so it is believed.
5. The sandbox hides the task's data folder (the expected values on disk) where it has a mount namespace.

Limits: without the canonical solution, a replayed check() takes its calls from the candidate's own run, where
check() ran: arguments it forges are refused by the replay, but its code could read check()'s locals (e.g. the
string that check() encoded before asking for its decoding); pass the solution (column 'answer') to close this.
An assert that cannot be split (a call of an unknown function around the solution's output,
`assert weird(f(x), 9)`) is probed whole, so that one expected value is visible to the candidate; neither MBPP nor
HumanEval has such asserts. A check() whose later arguments depend on earlier outputs is judged correct only
for outputs equal to the reference's. Hash-order-dependent tests may differ between runs (-I ignores
PYTHONHASHSEED). Without the sandbox's namespaces the candidate can read what the caller's uid can.

The plan (what is a probe, an expected hole, or kept here) is tasks/assertions.py; the in-sandbox harness and the
codec are tasks/evidence.py.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import evidence
from .assertions import PURE_CALLS, Plan, PlanError, humaneval_plan, unit_test_plan

__all__ = ["CODE_WORKERS", "Judge", "Plan", "PlanError", "humaneval_plan", "unit_test_plan"]

CODE_WORKERS = 2  # sandbox runs at once (each a subprocess; this machine class has 2 cores)
REPLAY_SEED = 0
_HARNESS = Path(evidence.__file__).read_text(encoding="utf-8")
_cache: dict[str, Any] = {}  # expected values and recorded calls, per test list


# ------------------------------------------------------------------------------------------------ running


def _program(mode: str, **job) -> str:
    return f"{_HARNESS}\n\nmain({mode!r}, **__import__('json').loads({json.dumps(job)!r}))\n"


def _records(stdout: str) -> list[dict] | None:
    """The JSON records of a run, or None if any line is not one."""
    out = []
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if type(record) is not dict:
            return None
        out.append(record)
    return out


def _values(records: list[dict] | None, n: int) -> list | None:
    """n decoded values from exactly n {"value": ...} records, else None."""
    if records is None or len(records) != n or any(list(r) != ["value"] for r in records):
        return None
    try:
        return [evidence.decode(r["value"]) for r in records]
    except (evidence.NotPlain, RecursionError):
        return None


def _calls(records: list[dict] | None, outputs: bool) -> list | None:
    """A record run's calls: [args] (reference), or [[args, output]] with outputs re-encoded canonically."""
    fields = ["args", "output"] if outputs else ["args"]
    if not records or records[-1] != {"done": len(records) - 1} or any(
            sorted(r) != fields or type(r["args"]) is not str for r in records[:-1]):
        return None
    if not outputs:
        return [r["args"] for r in records[:-1]]
    try:
        return [[r["args"], evidence.dumps(evidence.decode(r["output"]))] for r in records[:-1]]
    except (evidence.NotPlain, RecursionError):
        return None


def _map(fn, items: list) -> list:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(CODE_WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


def _evaluate(node: ast.expr, env: dict) -> Any:
    """Evaluate a split assert expression over genuine plain values (the node types _Splitter keeps)."""
    return eval(compile(ast.fix_missing_locations(ast.Expression(node)), "<assert>", "eval"),  # noqa: S307
                {"__builtins__": {}, "math": _MathCalls, **PURE_CALLS}, env)


class _MathCalls:
    isclose, fabs = staticmethod(math.isclose), staticmethod(math.fabs)


def _passes(plan: Plan, probes: list, expected: list) -> bool:
    for assertion in plan.assertions:
        env = {name: (probes if kind == "probe" else expected)[i] for name, (kind, i) in assertion.holes.items()}
        try:
            if not _evaluate(assertion.expression, env):
                return False
        except Exception:  # noqa: BLE001 - e.g. sorted() of mixed types: the assert would have raised
            return False
    return True


class Judge:
    """Runs the sandbox for a batch of (plan, candidate code) pairs and returns the verdicts."""

    def __init__(self, limits=None, hide: Sequence[str | Path] = ()):
        from ..sandbox import SandboxLimits

        # The wall clock is generous (a loaded machine must not fail slow honest solutions: some MBPP references
        # take seconds of CPU); RLIMIT_CPU still ends a busy loop after cpu_s.
        self.limits = limits or SandboxLimits(timeout_s=30.0, output_bytes=4 << 20)
        self.hide = tuple(str(p) for p in hide)

    def run(self, program: str):
        from ..sandbox import run_python

        return run_python(program, self.limits, hide=self.hide)

    def expected_values(self, plans: list[Plan]) -> None:
        todo = {p.key: p for p in plans if p.expected and ("expected", p.key) not in _cache}
        programs = [_program("probe", candidate="\n".join([p.trusted, *(f"import {m}" for m in p.imports)]),
                             steps=[("probe", s) for s in p.expected]) for p in todo.values()]
        for plan, result in zip(todo.values(), _map(self.run, programs)):
            _cache["expected", plan.key] = _values(_records(result.stdout), len(plan.expected))

    def recorded_calls(self, plans: list[Plan]) -> None:
        todo = {p.key: p for p in plans if p.replay and p.replay["reference"] is not None
                and ("calls", p.key) not in _cache}
        programs = []
        for p in todo.values():
            r = p.replay
            source = f"{r['prompt'].rstrip()}\n{r['reference']}\n\n{r['test']}\n"
            programs.append(_program("record", program=source, entry=r["entry"], seed=REPLAY_SEED))
        for plan, result in zip(todo.values(), _map(self.run, programs)):
            records = _records(result.stdout)
            _cache["calls", plan.key] = _calls(records, outputs=False)

    def verdicts(self, jobs: Sequence[tuple[Plan, str | None]]) -> list[bool]:
        plans = [p for p, code in jobs if code is not None]
        self.expected_values(plans)
        self.recorded_calls(plans)
        runs = []  # (job index, program)
        for i, (plan, code) in enumerate(jobs):
            if code is None or (plan.expected and _cache["expected", plan.key] is None):
                continue
            if plan.replay and plan.replay["reference"] is None:  # the weaker fallback: see Limits
                r = plan.replay
                runs.append((i, _program("record", program=f"{code}\n\n{r['test']}\n", entry=r["entry"],
                                         seed=REPLAY_SEED, outputs=True)))
                continue
            if plan.replay:
                calls = _cache["calls", plan.key]
                if calls is None:
                    continue
                steps = [("call", plan.replay["entry"], args) for args in calls]
            else:
                steps = ([("exec", plan.setup)] if plan.setup else []) + plan.steps
            runs.append((i, _program("probe", candidate=code, steps=steps)))
        results = dict(zip((i for i, _ in runs), _map(self.run, [p for _, p in runs])))
        verdicts, replays = [False] * len(jobs), []
        for i, result in results.items():
            plan = jobs[i][0]
            if result.timed_out:
                continue
            if plan.replay and plan.replay["reference"] is None:
                calls = _calls(_records(result.stdout), outputs=True)
                if calls is not None:
                    replays.append((i, calls))
                continue
            if plan.replay:
                calls = _cache["calls", plan.key]
                outputs = _values(_records(result.stdout), len(calls))
                if outputs is not None:
                    replays.append((i, [[a, evidence.dumps(o)] for a, o in zip(calls, outputs)]))
                continue
            n = sum(1 for s in plan.steps if s[0] == "probe")
            probes = _values(_records(result.stdout), n)
            if probes is not None:
                verdicts[i] = _passes(plan, probes, _cache.get(("expected", plan.key)) or [])
        programs = []
        for i, calls in replays:
            r = jobs[i][0].replay
            source = f"{r['prompt'].rstrip()}\n\n{r['test']}\n"
            programs.append(_program("replay", program=source, entry=r["entry"], seed=REPLAY_SEED, calls=calls))
        for (i, _), result in zip(replays, _map(self.run, programs)):
            verdicts[i] = not result.timed_out and _records(result.stdout) == [{"verdict": "pass"}]
        return verdicts
