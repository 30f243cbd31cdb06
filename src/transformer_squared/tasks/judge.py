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
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import evidence

CODE_WORKERS = 2  # sandbox runs at once (each a subprocess; this machine class has 2 cores)
REPLAY_SEED = 0
_HARNESS = Path(evidence.__file__).read_text(encoding="utf-8")
_PURE_CALLS = {name: getattr(builtins, name) for name in ("abs", "all", "any", "bool", "dict", "float", "frozenset",
                                                         "int", "len", "list", "max", "min", "round", "set",
                                                         "sorted", "str", "sum", "tuple")}
_MATH_CALLS = {"isclose": math.isclose, "fabs": math.fabs}
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"math", "sys", "re", "collections"}
_cache: dict[str, Any] = {}  # expected values and recorded calls, per test list


class PlanError(ValueError):
    """Tests this judge cannot use (they do not parse, hold no assert, or define no check())."""


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class Assertion:
    expression: ast.expr  # holes replaced by Name("__hole_<i>")
    holes: dict[str, tuple[str, int]] = field(default_factory=dict)  # hole name -> ("probe" | "expected", index)


@dataclass
class Plan:
    """How one test list is judged: probes (+ expected holes) compared here, or record/replay."""

    setup: str = ""  # exec'd in the candidate's run after its code (MBPP's test_setup_code)
    steps: list = field(default_factory=list)  # ("exec", src) | ("probe", src), in test order
    expected: list[str] = field(default_factory=list)  # expected holes' sources
    imports: list[str] = field(default_factory=list)  # stdlib modules the expected holes use
    trusted: str = ""  # dataset code the expected run executes first (HumanEval: the prompt's helpers)
    trusted_names: frozenset[str] = frozenset()  # names `trusted` defines, usable by expected holes
    assertions: list[Assertion] = field(default_factory=list)
    replay: dict | None = None  # {"prompt", "reference", "test", "entry"} for record/replay

    @property
    def key(self) -> str:
        text = json.dumps([self.setup, self.steps, self.expected, self.imports, self.trusted, self.replay],
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


_LAZY = (ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp, ast.Lambda)  # values only in their scope
_UNBOUNDED = (ast.Pow, ast.Mult, ast.LShift, ast.MatMult)  # work or size grows with an operand's value


class _Splitter(ast.NodeTransformer):
    """Replace what this process cannot evaluate by holes (see the module docstring)."""

    KEEP = (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare,
            ast.Subscript, ast.Slice, ast.IfExp, ast.keyword, ast.Load, ast.unaryop, ast.operator, ast.boolop,
            ast.cmpop, ast.expr_context)

    def __init__(self, plan: Plan, assertion: Assertion, candidate_names: frozenset[str]):
        self.plan, self.assertion, self.candidate_names = plan, assertion, candidate_names

    def visit(self, node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, _UNBOUNDED) and any(
                isinstance(n, (ast.Name, ast.Call)) for n in ast.walk(node)):
            return self.hole(node)  # `2 ** f(x)`: a value the candidate picks must not size work done here
        if isinstance(node, ast.Call) and _pure_function(node.func, self.candidate_names) and not any(
                isinstance(a, (ast.Starred, *_LAZY)) for a in node.args):  # all(f(x) for x in xs): probed whole
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return node
        if isinstance(node, ast.Name) and node.id in _PURE_CALLS and node.id not in self.candidate_names:
            return node  # sorted(f(x), key=len)
        if isinstance(node, self.KEEP) and not isinstance(node, ast.Starred):
            return self.generic_visit(node)
        return self.hole(node)

    def hole(self, node: ast.expr) -> ast.Name:
        source = ast.unparse(node)
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        called = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        # a module is never called: `random(5)` is the solution's function named like one
        trusted = names and not names & self.candidate_names and not called & _STDLIB and all(
            n in _STDLIB or hasattr(builtins, n) or n in self.plan.trusted_names for n in names)
        if trusted:
            self.plan.expected.append(source)
            self.plan.imports.extend(sorted(n for n in names if n in _STDLIB and n not in self.plan.imports))
            where = ("expected", len(self.plan.expected) - 1)
        else:
            self.plan.steps.append(("probe", source))
            where = ("probe", sum(1 for s in self.plan.steps if s[0] == "probe") - 1)
        name = f"__hole_{len(self.assertion.holes)}"
        self.assertion.holes[name] = where
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)


def _pure_function(func: ast.expr, candidate_names: frozenset[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _PURE_CALLS and func.id not in candidate_names
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math"
            and func.attr in _MATH_CALLS)


def _add_statement(plan: Plan, statement: ast.stmt, candidate_names: frozenset[str]) -> None:
    if isinstance(statement, ast.Assert):
        assertion = Assertion(statement.test)
        assertion.expression = _Splitter(plan, assertion, candidate_names).visit(statement.test)
        plan.assertions.append(assertion)
    else:  # e.g. `x = 5` between asserts, an import: the candidate's run executes it in order
        plan.steps.append(("exec", ast.unparse(statement)))


def _function_under_test(modules: list[ast.Module]) -> frozenset[str]:
    """Names the solution defines even though builtins have them: MBPP 126 tests a function named `sum`. Only
    when the tests call builtin names alone; otherwise builtins are builtins (`abs(f(x) - 3) < 1e-9`)."""
    called = [n.func.id for m in modules for n in ast.walk(m)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    if not called or any(not hasattr(builtins, name) for name in called):
        return frozenset()
    first = next(s for m in modules for s in m.body if isinstance(s, ast.Assert)).test
    while isinstance(first, (ast.Compare, ast.UnaryOp)):
        first = first.left if isinstance(first, ast.Compare) else first.operand
    if isinstance(first, ast.Call) and isinstance(first.func, ast.Name):
        return frozenset({first.func.id})
    return frozenset()


def unit_test_plan(tests: Sequence[str], setup: str = "") -> Plan:
    """MBPP: the asserts of `tests` (each one or more statements), after `setup` (run after the solution)."""
    plan = Plan(setup=(setup or "").replace("\r\n", "\n"))
    modules = []
    for test in tests:
        try:
            modules.append(ast.parse(test.replace("\r\n", "\n")))
        except SyntaxError as e:
            raise PlanError(f"a test does not parse ({e.msg}): {test[:80]!r}") from None
    if not any(isinstance(s, ast.Assert) for m in modules for s in m.body):
        raise PlanError("the tests hold no assert: nothing to judge")
    solution_names = _function_under_test(modules)
    for module in modules:
        for statement in module.body:
            _add_statement(plan, statement, solution_names)
    return plan


_SIMPLE_CHECK = (ast.Assert, ast.Import, ast.ImportFrom, ast.Pass)


def _top_level_names(module: ast.Module) -> set[str]:
    names = set()
    for s in module.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(s.name)
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in s.names)
        elif isinstance(s, (ast.Assign, ast.AnnAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def humaneval_plan(prompt: str, test: str, entry_point: str, reference: str | None = None) -> Plan:
    """HumanEval: `test` defines check(candidate). Asserts-only checks are split; others are replayed, from the
    calls the `reference` solution gets (without one: the calls the candidate's own run reports, see Limits)."""
    try:
        module = ast.parse(test)
    except SyntaxError as e:
        raise PlanError(f"the test code does not parse: {e.msg}") from None
    checks = [s for s in module.body if isinstance(s, ast.FunctionDef) and s.name == "check"]
    if not checks:
        raise PlanError("the test code defines no check(candidate)")
    check = checks[-1]
    body = [s for s in check.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    param = check.args.args[0].arg if check.args.args else "candidate"
    if all(isinstance(s, _SIMPLE_CHECK) for s in body) and any(isinstance(s, ast.Assert) for s in body):
        others = [s for s in module.body if s is not check]  # METADATA, imports, helpers: no expected values
        setup = "\n".join(ast.unparse(s) for s in others)
        # The prompt's helpers (and the test's) are the dataset's: an assert's side that uses only them is an
        # expected value, computed without the candidate (which could redefine them).
        try:
            defined = _top_level_names(ast.parse(prompt)) | _top_level_names(ast.Module(others, []))
        except SyntaxError:
            defined = set()
        plan = Plan(setup=f"{setup}\n{param} = {entry_point}", trusted=f"{prompt}\n{setup}\n",
                    trusted_names=frozenset(defined - {param, entry_point}))
        for statement in body:
            _add_statement(plan, statement, frozenset({param, entry_point}))
        return plan
    return Plan(replay={"prompt": prompt, "reference": reference, "test": test, "entry": entry_point})


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
                {"__builtins__": {}, "math": _MathCalls, **_PURE_CALLS}, env)


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

        # The wall clock is generous (a loaded machine must not fail slow honest solutions, e.g. MBPP 123 takes
        # 3 s of CPU); RLIMIT_CPU still ends a busy loop after cpu_s.
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
