"""`t2 eval` and `t2 adapt` on data sets the project does not ship: an upstream-format ARC-Challenge folder (both
answer formats) and a HumanEval file, end to end on the tiny model folder (`tiny_folder` in conftest.py). HumanEval
has only a test split: few-shot CEM then adapts on its last k problems, and evaluation leaves those out."""

from __future__ import annotations

import json

import pytest
from humaneval_records import RECORDS

from transformer_squared.cli import main
from transformer_squared.tasks import get_task


@pytest.fixture(autouse=True)
def _env(one_thread, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))


def arc_record(i: int) -> dict:
    labels = ["A", "B", "C", "D"] if i % 2 else ["1", "2", "3", "4"]  # the real files mix both label styles
    texts = [f"gas {i}", f"solid {i}", f"liquid {i}", f"plasma {i}"]
    return {"id": f"Mercury_{i}", "question": {"stem": f"Which state is item {i} in?", "choices": [
        {"text": t, "label": l} for t, l in zip(texts, labels)]}, "answerKey": labels[i % 4]}


@pytest.fixture
def challenge_dir(tmp_path):
    folder = tmp_path / "arc_challenge"
    folder.mkdir()
    for role, n in (("Train", 8), ("Dev", 2), ("Test", 6)):
        (folder / f"ARC-Challenge-{role}.jsonl").write_text("".join(json.dumps(arc_record(i)) + "\n" for i in range(n)))
    return folder


@pytest.fixture
def humaneval_file(tmp_path):
    path = tmp_path / "HumanEval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.fixture
def library(tiny_folder, tmp_path, capsys):
    lib = tmp_path / "lib"
    for name, seed, domain in (("one", "1", "math"), ("two", "2", "language")):
        assert main(["experts", "--library", str(lib), "init", "--model", str(tiny_folder), "--out", name,
                     "--noise", "0.3", "--seed", seed, "--domain", domain]) == 0
    capsys.readouterr()
    return lib


@pytest.mark.parametrize("task", ["arc_challenge", "arc_challenge_text"])
def test_eval_and_adapt_on_an_arc_challenge_folder(task, challenge_dir, library, tiny_folder, tmp_path, capsys):
    assert main(["eval", "--task", task, "--data", str(challenge_dir), "--model", str(tiny_folder), "--n", "4",
                 "--max-new-tokens", "3", "--out", str(tmp_path / "results")]) == 0
    summary = json.loads((tmp_path / "results" / f"{task}_test_base.json").read_text())
    assert summary["n"] == 4 and set(summary["answers"]) <= {"A", "B", "C", "D", "none"}
    assert main(["adapt", "--library", str(library), "--task", task, "--data", str(challenge_dir), "--shots", "2",
                 "--experts", "one", "two", "--population", "4", "--iterations", "1", "--max-new-tokens", "3",
                 "--out", "mix", "--quiet"]) == 0
    assert "shots accuracy" in capsys.readouterr().out
    assert main(["eval", "--task", task, "--data", str(challenge_dir), "--expert", "mix", "--library", str(library),
                 "--n", "6", "--max-new-tokens", "3"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == 6  # shots came from Train: all 6 test


def test_eval_and_adapt_on_a_humaneval_file(humaneval_file, library, tiny_folder, tmp_path, capsys):
    n = len(RECORDS)
    assert main(["eval", "--task", "humaneval", "--data", str(humaneval_file), "--model", str(tiny_folder),
                 "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == n
    assert main(["adapt", "--library", str(library), "--task", "humaneval", "--data", str(humaneval_file), "--shots",
                 "2", "--experts", "one", "two", "--population", "4", "--iterations", "1", "--max-new-tokens", "4",
                 "--out", "mix", "--quiet"]) == 0
    capsys.readouterr()
    # the mixture adapted on the last 2 problems: evaluating it leaves them out
    assert main(["eval", "--task", "humaneval", "--data", str(humaneval_file), "--expert", "mix", "--library",
                 str(library), "--max-new-tokens", "4", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "leaving out the 2 humaneval examples mix was adapted on" in printed
    records = [json.loads(x) for x in (tmp_path / "r" / "humaneval_test_mix.jsonl").read_text().splitlines()]
    shots = {e["prompt"] for e in get_task("humaneval", humaneval_file).examples("test")[-2:]}
    assert len(records) == n - 2 and not shots & {r["prompt"] for r in records}
    # too many shots would leave nothing to evaluate: one line, nothing written
    assert main(["adapt", "--library", str(library), "--task", "humaneval", "--data", str(humaneval_file), "--shots",
                 str(n), "--experts", "one", "two", "--out", "all", "--quiet"]) == 2
    assert "has only a test split" in capsys.readouterr().err and not (library / "all").exists()


def test_few_shot_cem_strategy_never_scores_its_shots(humaneval_file, library, tiny_folder):
    from transformer_squared.adapt.cem import CEMConfig, FewShotStrategy
    from transformer_squared.adapt.two_pass import evaluate_strategy
    from transformer_squared.experts import ExpertLibrary
    from transformer_squared.svf import load_svf

    lib = ExpertLibrary(library)
    experts = [lib.get("one"), lib.get("two")]
    svf = load_svf(str(tiny_folder), progress=False, dtype="float32")
    task = get_task("humaneval", humaneval_file)
    config = CEMConfig(population=2, iterations=1, fitness="loglik")
    report = evaluate_strategy(svf, [task], lambda t: FewShotStrategy(experts, t, 2, config, progress=False),
                               n=None, max_new_tokens=4, progress=False)
    shots = {e["prompt"] for e in task.examples("test")[-2:]}
    assert report.tasks[0].n == len(RECORDS) - 2 and not shots & {r["prompt"] for r in report.records}
