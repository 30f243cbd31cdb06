"""Hostile completions must score 0 on code tasks, through `Task.score` and batched `Task.reward`.

Each attack is a completion an RL policy could find: ending the process cleanly before or during the tests,
values that only claim to be equal, patching what the tests or the harness use, forging the harness's records,
reading the program, the harness or the dataset for the expected values, threads, recursion. Targets: an MBPP
task (asserts split into probes), a HumanEval task with an asserts-only check(), and one judged by replay.
Controls keep the tests honest: the same batch holds reference solutions that must score 1, and the attacks that
end the process early are shown to pass a verdict based on the exit status (the old one), so they are real.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from humaneval_records import RECORDS
from transformer_squared.sandbox import passes
from transformer_squared.tasks import evidence, get_task

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox's hostile-code guarantees need POSIX")

HARNESS = evidence.__file__
ALWAYS = """
class E:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __le__(self, other): return True
    def __gt__(self, other): return True
    def __ge__(self, other): return True
    def __bool__(self): return True
    def __len__(self): return 1
    def __hash__(self): return 0
    def __sub__(self, other): return 0
    def __rsub__(self, other): return 0
    def __abs__(self): return 0
    def __iter__(self): return iter(())
"""
SUBCLASS = "class E({base}):\n    __eq__ = lambda *a: True\n    __ne__ = lambda *a: False\n    __hash__ = {base}.__hash__\n"
FORGE = '''
import os
lines = [b'{{"value": true}}\\n', b'{{"value": {{"int": "0"}}}}\\n', b'{{"verdict": "pass"}}\\n', b'{{"done": 0}}\\n']
for fd in range(0, 64):
    for line in lines * 8:
        try:
            os.write(fd, line)
        except OSError:
            pass
'''
ATTACKS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "raise KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "exit in the function": "def {fn}(*a, **k):\n    import os\n    os._exit(0)\n",
    "SystemExit in the function": "def {fn}(*a, **k):\n    raise SystemExit(0)\n",
    "KeyboardInterrupt in the function": "def {fn}(*a, **k):\n    raise KeyboardInterrupt\n",
    "SIGKILL itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "SIGTERM itself in the function": "def {fn}(*a, **k):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGTERM)\n",
    "kill its process group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
    "always-equal object": ALWAYS + "def {fn}(*a, **k):\n    return E()\n",
    "always-equal int subclass": SUBCLASS.format(base="int") + "def {fn}(*a, **k):\n    return E(1)\n",
    "always-equal str subclass": SUBCLASS.format(base="str") + "def {fn}(*a, **k):\n    return E('')\n",
    "always-equal float subclass": SUBCLASS.format(base="float") + "def {fn}(*a, **k):\n    return E(0.5)\n",
    "always-equal list subclass": SUBCLASS.format(base="list").replace("    __hash__ = list.__hash__\n", "")
    + "def {fn}(*a, **k):\n    return E()\n",
    "always-equal objects in a list": ALWAYS + "def {fn}(*a, **k):\n    return [E(), E()]\n",
    "always-equal objects in a tuple": ALWAYS + "def {fn}(*a, **k):\n    return (E(), E())\n",
    "always-equal values in a dict": ALWAYS + "def {fn}(*a, **k):\n    return {{0: E()}}\n",
    "patch builtins": "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.print = lambda *a, **k: None\n"
                      "builtins.type = lambda *a: int\nbuiltins.repr = lambda *a: 'True'\n"
                      "builtins.len = lambda *a: 1\nbuiltins.sorted = lambda *a, **k: []\n"
                      "def {fn}(*a, **k):\n    return None\n",
    "patch __import__": "import builtins, types\nfake = types.ModuleType('json')\nfake.dumps = lambda *a, **k: 'true'\n"
                        "fake.loads = lambda *a, **k: ()\n_real = builtins.__import__\n"
                        "builtins.__import__ = lambda n, *a, **k: fake if n in ('json', 'math', 'random') "
                        "else _real(n, *a, **k)\ndef {fn}(*a, **k):\n    return None\n",
    "patch math.isclose": "import math\nmath.isclose = lambda *a, **k: True\nmath.fabs = lambda x: 0.0\n"
                          "def {fn}(*a, **k):\n    return 12345.0\n",
    "patch sys.modules": "import sys, types\nfor name in ('json', 'math', 'random', 'os', 'builtins'):\n"
                         "    m = types.ModuleType(name)\n    m.dumps = lambda *a, **k: '{{\"value\": true}}'\n"
                         "    m.isclose = lambda *a, **k: True\n    sys.modules[name] = m\n"
                         "def {fn}(*a, **k):\n    return None\n",
    "patch the harness's codec": ALWAYS + "import sys\nh = sys.modules['__main__']\n"
                                 "h.encode = lambda v, depth=0: True\nh.dumps = lambda v: 'true'\n"
                                 "h.decode = lambda o, depth=0: E()\ndef {fn}(*a, **k):\n    return E()\n",
    "print a success marker": "print('{{\"verdict\": \"pass\"}}')\nprint('{{\"value\": true}}')\n"
                              "print('OK: all tests passed')\nimport sys\nsys.stdout.flush()\nsys.exit(0)\n",
    "forge records on every fd": FORGE + "os._exit(0)\n",
    "forge records from the function": "def {fn}(*a, **k):\n" + textwrap.indent(FORGE, "    ") + "    os._exit(0)\n",
    "read its program for the expected values": "import sys, re, ast\n"
        "source = open(sys.argv[0]).read() + open('/proc/self/cmdline', 'rb').read().decode('latin-1')\n"
        "found = []\nfor m in re.finditer(r'==\\s*([^\\n\\\\]+)', source):\n    try:\n"
        "        found.append(ast.literal_eval(m.group(1).strip().rstrip(',').rstrip(')')))\n"
        "    except Exception:\n        pass\ncalls = [0]\ndef {fn}(*a, **k):\n    calls[0] += 1\n"
        "    return found[(calls[0] - 1) % len(found)] if found else None\n",
    "read the harness for a secret": f"text = open({HARNESS!r}).read()\n"
        "secret = [w for w in text.split() if 'nonce' in w.lower() or 'secret' in w.lower()]\n"
        "import os\nfor fd in range(64):\n    try:\n        os.write(fd, ('{{\"value\": true, \"secret\": %r}}\\n' % secret).encode())\n"
        "    except OSError:\n        pass\ndef {fn}(*a, **k):\n    return True\n",
    "inspect the caller's frames": "import sys\ndef {fn}(*a, **k):\n    out = []\n    f = sys._getframe(1)\n"
        "    while f is not None:\n        out += [c for c in f.f_code.co_consts if isinstance(c, (int, str, list, tuple))]\n"
        "        out += [v for n, v in f.f_locals.items() if n in ('expected', 'calls', 'str', 'exp')]\n"
        "        f = f.f_back\n    return out[-1] if out else None\n",
    "search the gc for expected values": "import gc\ndef {fn}(*a, **k):\n"
        "    for o in gc.get_objects():\n        if isinstance(o, dict) and 'expected' in o:\n            return o['expected']\n"
        "    return None\n",
    "thread exits cleanly before the tests finish": "import threading, os, time\n"
        "def _quit():\n    time.sleep(0.05)\n    os._exit(0)\nthreading.Thread(target=_quit).start()\n"
        "def {fn}(*a, **k):\n    time.sleep(2)\n",
    "threads keep running and forging after main": "import threading, os, time\ndef _forge():\n"
        "    for _ in range(200):\n        for fd in range(64):\n            try:\n"
        "                os.write(fd, b'{{\"value\": true}}\\n')\n            except OSError:\n                pass\n"
        "        time.sleep(0.005)\nthreading.Thread(target=_forge).start()\ndef {fn}(*a, **k):\n    return True\n",
    "deep recursion": "def {fn}(*a, **k):\n    return {fn}(*a, **k)\n",
    "deep recursion, limit raised": "import sys\nsys.setrecursionlimit(10 ** 7)\ndef {fn}(*a, **k):\n"
        "    return {fn}(*a, **k)\n",
    "a value nested too deep": "def {fn}(*a, **k):\n    v = []\n    for _ in range(5000):\n        v = [v]\n"
        "    return v\n",
    "a value too large to report": "def {fn}(*a, **k):\n    return 'x' * 30_000_000\n",
    "NaN": "def {fn}(*a, **k):\n    return float('nan')\n",
}


def completion(attack: str, fn: str) -> str:
    code = ATTACKS[attack].format(fn=fn)
    if f"def {fn}(" not in code:  # module-level attacks: still define the function, after the attack
        code += f"\ndef {fn}(*a, **k):\n    return None\n"
    return f"```python\n{code}```"


MBPP_RECORDS = [
    {"text": "Write a function to add two lists element-wise.", "task_id": 11,
     "code": "def add_lists(a, b):\r\n    return [x + y for x, y in zip(a, b)]", "test_setup_code": "",
     "test_list": ["assert add_lists([1, 2], [3, 4]) == [4, 6]", "assert add_lists([], []) == []",
                   "assert add_lists([1, 5, 9], [-1, 0, 2]) == [0, 5, 11]"], "challenge_test_list": []},
    {"text": "Write a function to halve a number.", "task_id": 12, "code": "import sys\ndef half(x):\n    return x / 2",
     "test_setup_code": "",
     "test_list": ["assert half(3) == 1.5", "assert math.isclose(half(1), 0.5)", "assert abs(half(5) - 2.5) < 1e-9",
                   "assert not half(0)", "assert half(4)", "assert half(8) == sys.getsizeof(()) * 0 + 4.0"],
     "challenge_test_list": []},
]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """[(task, example, function name)]: MBPP add_lists and half, HumanEval split (Fixture/0) and replay (Fixture/2)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP_RECORDS))
    (folder / "HumanEval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    mbpp, humaneval = get_task("mbpp", data=folder), get_task("humaneval", data=folder / "HumanEval.jsonl")
    he = {e["task_id"]: e for e in humaneval.examples("test")}
    return [(mbpp, e, e["tests"][0].split()[1].split("(")[0]) for e in mbpp.examples("test")] + [
        (humaneval, he[i], he[i]["entry_point"]) for i in ("Fixture/0", "Fixture/2")]


def test_references_score_one(targets):
    assert [task.score(e["reference"], e) for task, e, _ in targets] == [1.0] * len(targets)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_scores_zero(attack, targets):
    assert [task.score(completion(attack, fn), e) for task, e, fn in targets] == [0.0] * len(targets)


def test_attacks_score_zero_in_batched_reward(targets):
    for task in {t for t, _, _ in targets}:
        mine = [(e, fn) for t, e, fn in targets if t is task]
        rows = [(e, completion(a, fn)) for a in ATTACKS for e, fn in mine] + [(e, e["reference"]) for e, _ in mine]
        columns = {k: [e[k] for e, _ in rows] for k in rows[0][0] if k != "prompt"}
        scores = task.reward([e["prompt"] for e, _ in rows], [c for _, c in rows], **columns)
        assert scores == [0.0] * (len(rows) - len(mine)) + [1.0] * len(mine)


@pytest.mark.parametrize("attack", ["sys.exit(0)", "os._exit(0)", "raise SystemExit", "exit in the function",
                                    "SystemExit in the function", "forge records on every fd"])
def test_exit_attacks_pass_a_verdict_based_on_exit_status(attack):
    # The old verdict: "solution, setup, asserts" exits 0. These attacks beat it, so the tests above are real.
    record = MBPP_RECORDS[0]
    code = completion(attack, "add_lists").strip("`").removeprefix("python\n")
    assert passes("\n".join([code, *record["test_list"]]) + "\n")


def test_the_dataset_on_disk_is_hidden():
    """A completion that looks its tests up in the dataset file (outside /tmp, which is always private)."""
    from transformer_squared import sandbox

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mbpp"
    if not (data / "mbpp.jsonl").is_file():
        pytest.skip(f"needs the MBPP data at {data}")
    if "tmp" not in sandbox._run("pass")[1]:
        pytest.skip("no mount namespace here: the sandbox cannot hide files the caller's uid may read")
    cheat = textwrap.dedent(f"""
        import ast, json

        def _lookup(name, args):
            for line in open({str(data / "mbpp.jsonl")!r}):
                for test in json.loads(line)["test_list"]:
                    node = ast.parse(test).body[0].test
                    call = node.left
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == name:
                        if tuple(ast.literal_eval(a) for a in call.args) == args:
                            return ast.literal_eval(node.comparators[0])

        def remove_Occ(*args):
            return _lookup("remove_Occ", args)
    """)
    namespace: dict = {}
    exec(cheat, namespace)  # noqa: S102 - our own code: the cheat works when the file is readable
    assert namespace["remove_Occ"]("hello", "l") == "heo"
    task = get_task("mbpp", data=data)
    example = next(e for e in task.examples("test") if e["task_id"] == 11)
    assert task.score(example["reference"], example) == 1.0
    assert task.score(f"```python\n{cheat}```", example) == 0.0


def test_redefining_a_prompt_helper_does_not_move_the_expected_value():
    """HumanEval asserts may compare with a helper of the prompt; the candidate's code could redefine it."""
    from transformer_squared.tasks.judge import Judge, humaneval_plan

    prompt = 'def double(x):\n    return 2 * x\n\n\ndef quadruple(x):\n    """Four times x."""\n'
    test = "def check(candidate):\n    assert candidate(3) == double(6)\n    assert candidate(0) == double(0)\n"
    plan = humaneval_plan(prompt, test, "quadruple")
    cheat = "def double(x):\n    return 0\n\n\ndef quadruple(x):\n    return 0\n"
    honest = "def quadruple(x):\n    return 4 * x\n"
    assert Judge().verdicts([(plan, prompt + cheat), (plan, prompt + honest)]) == [False, True]


def test_values_cannot_make_the_judge_do_unbounded_work():
    """`2 ** f(x)` with f(x) = 10**12 would hang whichever process computes it: that must be the sandbox."""
    from transformer_squared.tasks.judge import Judge, unit_test_plan

    plan = unit_test_plan(["assert 2 ** f(3) == 8", "assert 'ab' * f(1) == 'ab'"])
    assert [source for _, source in plan.steps] == ["2 ** f(3)", "'ab' * f(1)"]
    huge, honest = "def f(x):\n    return 10 ** 12\n", "def f(x):\n    return x\n"
    assert Judge().verdicts([(plan, huge), (plan, honest)]) == [False, True]
