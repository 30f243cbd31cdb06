"""Unit tests as a plan for tasks/judge.py: each assert split, with `ast`, into what the trusted parent evaluates
and the holes evaluated in sandbox runs (see judge.py's docstring for why, and for the threat model).

    probe     a hole evaluated in the candidate's run: a call of the solution (`f([1, 2])`, `candidate(3)`)
    expected  a hole evaluated in a run without the candidate: stdlib/builtins only (`sys.getsizeof(t)`), or, for
              HumanEval, the prompt's own helpers
    kept      literals, displays, comparisons, + and -, not/and/or, subscripts, calls of the pure builtins below and
              of math.isclose/fabs: evaluated here over the holes' decoded values

`*`, `**` and `<<` over a non-constant operand are holes (the candidate would choose the work), and so is a pure
call over a generator or comprehension (`all(f(x) for x in xs)`). HumanEval checks that are more than asserts are
planned as replay (see judge.py).
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

PURE_CALLS = {name: getattr(builtins, name) for name in ("abs", "all", "any", "bool", "dict", "float", "frozenset",
                                                         "int", "len", "list", "max", "min", "round", "set",
                                                         "sorted", "str", "sum", "tuple")}
_MATH_CALLS = {"isclose": math.isclose, "fabs": math.fabs}
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {"math", "sys", "re", "collections"}


class PlanError(ValueError):
    """Tests this judge cannot use (they do not parse, hold no assert, or define no check())."""


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
        if isinstance(node, ast.Name) and node.id in PURE_CALLS and node.id not in self.candidate_names:
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
        return func.id in PURE_CALLS and func.id not in candidate_names
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
