"""Where task data comes from on the command line: `--help` lists the registry's tasks, and a task that finds no
data says where it looked and which folder names it expects, before any model is loaded."""

from __future__ import annotations

import json
import re

import pytest

from transformer_squared.cli import main


def _help(verb, capsys) -> str:
    with pytest.raises(SystemExit):
        main([verb, "-h"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("verb", ["train", "eval"])
def test_help_lists_the_tasks_of_the_registry(verb, monkeypatch, capsys):
    from transformer_squared.tasks import TASKS, ArithmeticTask

    class Spelling(ArithmeticTask):
        name = "spelling"

    monkeypatch.setitem(TASKS, "spelling", Spelling)  # a task added to the registry shows up in the help
    out = _help(verb, capsys)
    listed = re.split(r"(?<![-\w])tasks: ", out, maxsplit=1)[1].split(".", 1)[0].split(", ")
    assert listed == sorted(TASKS)
    assert "arc_easy/ (task arc)" in out and "gsm8k/" in out and "arithmetic/" not in out


@pytest.fixture
def no_model(monkeypatch):
    import transformer_squared.svf

    def refuse(*args, **kwargs):
        raise AssertionError("the error should be reported before a model is loaded")

    monkeypatch.setattr(transformer_squared.svf, "load_svf", refuse)


def test_data_dir_without_the_task_folder_names_the_folder_and_the_expected_name(tmp_path, no_model, capsys):
    data_dir = tmp_path / "data"
    (data_dir / "arc").mkdir(parents=True)  # a plausible mistake: named after the task, not arc_easy
    code = main(["eval", "--strategy", "base", "--tasks", "arithmetic,arc", "--data-dir", str(data_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert str((data_dir / "arc_easy").resolve()) in err and "arc_easy/ (task arc)" in err, err


def test_tasks_without_data_dir_say_to_pass_it(no_model, capsys):
    assert main(["eval", "--strategy", "base", "--tasks", "arc,arithmetic"]) == 2
    assert "pass --data-dir DIR holding its subfolder arc_easy/" in capsys.readouterr().err


def test_data_dir_with_the_folder_is_read(tmp_path):
    from transformer_squared.cli.options import load_task

    folder = tmp_path / "data" / "arc_easy"
    folder.mkdir(parents=True)
    record = {"id": "q1", "question": {"stem": "Which is hot?", "choices": [{"text": "fire", "label": "A"},
                                                                            {"text": "ice", "label": "B"}]},
              "answerKey": "A"}
    (folder / "ARC-Easy-Test.jsonl").write_text(json.dumps(record) + "\n")
    task = load_task("arc", split="test", data_dir=str(tmp_path / "data"), pool=True)
    assert task.data == folder and len(task.examples("test")) == 1
    assert load_task("arithmetic", split="test", data_dir=str(tmp_path / "data"), pool=True).data is None


def test_a_task_without_data_offline_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    import transformer_squared.models

    monkeypatch.setattr(transformer_squared.models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set here so that the test leaves the environment as it was
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "gsm8k", "--out", "experts/math"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 train: error: task 'gsm8k' needs data: pass --data PATH") and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_a_wrong_split_is_not_reported_as_missing_data(tmp_path):
    from transformer_squared.cli.options import load_task

    for name in ("arithmetic", "arc"):
        with pytest.raises(ValueError, match="has no split 'nope'"):
            load_task(name, split="nope", data_dir=str(tmp_path), pool=True)
