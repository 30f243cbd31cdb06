"""The unit-test judge loses nothing honest: MBPP reference solutions and HumanEval canonical solutions score 1,
wrong ones 0; plus the plan (what is probed in the sandbox, what stays here) and the plain-data codec.

MBPP runs over ../shared/data/mbpp (skipped without it): a fixed sample of 100 by default, all 974 under -m slow
(bench/bench_rewards.py runs all 974 too and reports the false-negative rate).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

from humaneval_records import RECORDS
from transformer_squared.tasks import evidence, get_task
from transformer_squared.tasks.judge import Judge, PlanError, humaneval_plan, unit_test_plan

MBPP = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mbpp" / "mbpp.jsonl"
needs_posix = pytest.mark.skipif(os.name != "posix", reason="runs programs in the POSIX sandbox")
needs_mbpp = pytest.mark.skipif(not MBPP.is_file(), reason=f"needs the MBPP data at {MBPP}")
# Every 10th task, plus the ones with something special: setup code and classes (367, 927), a builtin's name
# (126: `sum`), a stdlib expression on the right (596), Counter/defaultdict results (40, 88, 653, 902), 3 s of CPU
# (123), tab indents and few-shot ids (1-10).
SAMPLE = sorted({*range(1, 975, 10), 2, 40, 88, 123, 126, 367, 596, 653, 902, 927})[:100]


def mbpp_records() -> list[dict]:
    return [json.loads(line) for line in MBPP.read_text(encoding="utf-8").splitlines()]


def judge_references(records: list[dict]) -> list[int]:
    """task_ids whose reference solution does not score 1."""
    jobs = [(unit_test_plan(r["test_list"], r["test_setup_code"]), r["code"].replace("\r\n", "\n")) for r in records]
    return [r["task_id"] for r, ok in zip(records, Judge().verdicts(jobs)) if not ok]


# ------------------------------------------------------------------------------------------------ plan and codec


def test_plan_keeps_expected_values_out_of_the_candidates_run():
    plan = unit_test_plan(["assert f([1, 2]) == [3, 4]", "assert set(f(5)) == set([9])",
                           "assert abs(g(1.5) - 2.25) < 1e-6", "assert not f(0)",
                           "assert t((1, 2)) == sys.getsizeof((1, 2))"])
    assert plan.steps == [("probe", "f([1, 2])"), ("probe", "f(5)"), ("probe", "g(1.5)"), ("probe", "f(0)"),
                          ("probe", "t((1, 2))")]
    assert plan.expected == ["sys.getsizeof((1, 2))"] and plan.imports == ["sys"]
    probes = "\n".join(source for _, source in plan.steps)
    for expected in ("3, 4", "9", "2.25", "1e-06"):
        assert expected not in probes
    assert unit_test_plan(["assert sum(10, 15) == 6"]).steps == [("probe", "sum(10, 15)")]  # MBPP 126
    assert unit_test_plan(["assert abs(f(1) - 2) < 1"]).steps == [("probe", "f(1)")]  # abs stays the builtin
    assert unit_test_plan(["assert sorted(f(1), key=len) == []"]).steps == [("probe", "f(1)")]
    assert unit_test_plan(["assert random(5) == 3"]).steps == [("probe", "random(5)")]  # a function, not the module
    assert unit_test_plan(["assert all(f(x) for x in (1, 2))"]).steps == [("probe", "all((f(x) for x in (1, 2)))")]
    with pytest.raises(PlanError, match="no assert"):
        unit_test_plan(["x = 1"])
    with pytest.raises(PlanError, match="does not parse"):
        unit_test_plan(["assert f(1) =="])


def test_humaneval_plans():
    by_id = {r["task_id"]: r for r in RECORDS}
    split = humaneval_plan(by_id["Fixture/0"]["prompt"], by_id["Fixture/0"]["test"], "has_close_elements")
    assert split.replay is None and len(split.assertions) == 4 and "True" not in str(split.steps)
    looped = by_id["Fixture/2"]
    assert humaneval_plan(looped["prompt"], looped["test"], "add", looped["canonical_solution"]).replay
    assert humaneval_plan(looped["prompt"], looped["test"], "add").replay["reference"] is None  # the fallback


def test_codec_round_trips_plain_data_and_refuses_the_rest():
    values = [None, True, 0, -(10 ** 30), 1.5, float("inf"), 2j, "é\ud800", b"\x00\xff", [1, (2, {3})],
              {"a": frozenset({1})}, collections.Counter("aab"), collections.defaultdict(int, {1: 2})]
    for value in values:
        back = evidence.decode(json.loads(evidence.dumps(value)))
        assert back == value and type(back) is type(value)
    assert evidence.decode(json.loads(evidence.dumps(float("nan")))) != float("nan")  # NaN stays NaN

    class AlwaysInt(int):
        __eq__ = lambda *a: True  # noqa: E731
        __hash__ = int.__hash__

    nested: list = []
    for _ in range(evidence.MAX_DEPTH + 2):
        nested = [nested]
    for bad in (AlwaysInt(3), [AlwaysInt(3)], {"k": object()}, nested, (i for i in ())):
        with pytest.raises(evidence.NotPlain):
            evidence.encode(bad)
    for forged in ({"int": 3}, {"eval": "1"}, {"dict": [[{"list": []}, 1]]}, [1], {"str": "a", "int": "1"}):
        with pytest.raises(evidence.NotPlain):
            evidence.decode(forged)


# ------------------------------------------------------------------------------------------------ MBPP


@needs_posix
@needs_mbpp
def test_mbpp_reference_sample_scores_one():
    records = {r["task_id"]: r for r in mbpp_records()}
    assert len(SAMPLE) == 100
    assert judge_references([records[i] for i in SAMPLE]) == []


@pytest.mark.slow
@needs_posix
@needs_mbpp
def test_all_974_mbpp_references_score_one():
    records = mbpp_records()
    assert len(records) == 974
    assert judge_references(records) == []


@needs_posix
@needs_mbpp
def test_mbpp_wrong_solutions_score_zero():
    records = {r["task_id"]: r for r in mbpp_records()}
    # 126 off by one; 40 a plain dict where a Counter is right but wrong counts; 596 the wrong size
    wrong = {126: "def sum(a, b):\n    return 6\n", 40: "def freq_element(nums):\n    return {2: 3}\n",
             596: "def tuple_size(t):\n    return 0\n"}
    jobs = [(unit_test_plan(records[i]["test_list"]), code) for i, code in wrong.items()]
    assert Judge().verdicts(jobs) == [False] * len(wrong)


# ------------------------------------------------------------------------------------------------ HumanEval


@pytest.fixture(scope="module")
def humaneval(tmp_path_factory):
    path = tmp_path_factory.mktemp("he") / "HumanEval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    task = get_task("humaneval", data=path)
    return task, task.examples("test")


@needs_posix
def test_humaneval_canonical_solutions_score_one(humaneval):
    task, examples = humaneval
    assert len(examples) >= 8
    assert [task.score(e["reference"], e) for e in examples] == [1.0] * len(examples)  # whole functions
    columns = {k: [e[k] for e in examples] for k in examples[0] if k != "prompt"}
    bodies = [e["answer"] for e in examples]  # body only, as a completion of the prompt
    assert task.reward([e["prompt"] for e in examples], bodies, **columns) == [1.0] * len(examples)


@needs_posix
def test_humaneval_wrong_solutions_score_zero_and_other_right_answers_pass(humaneval):
    task, examples = humaneval
    wrong = ["    return None\n"] * len(examples)
    columns = {k: [e[k] for e in examples] for k in examples[0] if k != "prompt"}
    assert task.reward([e["prompt"] for e in examples], wrong, **columns) == [0.0] * len(examples)
    find_zero = next(e for e in examples if e["entry_point"] == "find_zero")
    bisect_other_side = find_zero["answer"].replace("return begin", "return end")
    # Other outputs than the reference's (the bracket's other end): right answers all the same, judged by property.
    assert task.score(bisect_other_side, find_zero) == 1.0


@needs_posix
def test_humaneval_without_canonical_solutions_falls_back_to_self_recorded_replay(humaneval):
    """Columns without 'answer' (as TRL passes only what the reward names): loops are replayed from the calls the
    candidate's own run reports; right answers still pass, wrong ones and early exits still fail."""
    task, examples = humaneval
    looped = [e for e in examples if task.plan(e).replay]
    assert len(looped) >= 3
    columns = {k: [e[k] for e in looped] for k in ("function_prompt", "test", "entry_point")}
    prompts = [e["prompt"] for e in looped]
    assert task.reward(prompts, [e["answer"] for e in looped], **columns) == [1.0] * len(looped)
    for bad in ("    return None\n", "    import sys\n    sys.exit(0)\n", "import os\nos._exit(0)\n"):
        assert task.reward(prompts, [bad] * len(looped), **columns) == [0.0] * len(looped)
