"""Run folders belong to one output: the default folder is unique to the resolved --out path, and a run folder
that records another output or method is refused (resume or reuse) before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transformer_squared.cli import main
from transformer_squared.training.config import TrainConfig, check_run_owner, default_run_dir


def test_the_readme_commands_get_separate_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    svf = TrainConfig(task="arithmetic", out="experts/arithmetic").resolved_run_dir()
    lora = TrainConfig(task="arithmetic", method="lora", out="lora/arithmetic").resolved_run_dir()
    assert svf != lora
    assert svf.parent == lora.parent == Path("runs")
    assert svf.name.startswith("arithmetic-") and lora.name.startswith("arithmetic-")


def test_the_same_output_always_finds_its_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_run_dir("experts/math") == default_run_dir(tmp_path / "experts" / "math") \
        == default_run_dir("./experts/../experts/math/")
    assert TrainConfig(out="x", run_dir="mine").resolved_run_dir() == Path("mine")  # --run-dir is taken as given


def _record(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True)
    cfg = TrainConfig(**fields)
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "owner": cfg.owner()}))


def test_a_run_of_another_output_or_method_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "shared"
    _record(run, out="experts/arithmetic", method="svf")
    check_run_owner(run, TrainConfig(out=str(tmp_path / "experts" / "arithmetic")))  # its own output: fine
    with pytest.raises(ValueError, match="belongs to --out .*experts/arithmetic \\(method svf\\)"):
        check_run_owner(run, TrainConfig(out="lora/arithmetic", method="lora"))
    with pytest.raises(ValueError, match="belongs to"):
        check_run_owner(run, TrainConfig(out="experts/arithmetic", method="lora"))
    check_run_owner(tmp_path / "runs" / "new", TrainConfig(out="anything"))  # no run yet: nothing to refuse


def test_a_run_recorded_before_owners_were_is_judged_by_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(out="experts/a", method="lora").to_dict()))
    check_run_owner(run, TrainConfig(out="experts/a", method="lora"))
    with pytest.raises(ValueError, match="belongs to"):
        check_run_owner(run, TrainConfig(out="experts/b", method="lora"))


@pytest.fixture
def no_model(monkeypatch):
    import transformer_squared.models
    import transformer_squared.svf

    def refuse(*args, **kwargs):
        raise AssertionError("the run folder should be refused before a model is loaded")

    monkeypatch.setattr(transformer_squared.svf, "load_svf", refuse)
    monkeypatch.setattr(transformer_squared.models, "load_model", refuse)


def test_train_refuses_to_reuse_another_outputs_run_dir(tmp_path, monkeypatch, no_model, capsys):
    monkeypatch.chdir(tmp_path)
    _record(tmp_path / "runs" / "r", out="experts/arithmetic")
    before = (tmp_path / "runs" / "r" / "config.json").read_text()
    code = main(["train", "--method", "lora", "--task", "arithmetic", "--out", "lora/arithmetic", "--run-dir", "runs/r"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 train: error: run folder runs/r belongs to --out") and err.count("\n") == 1, err
    assert (tmp_path / "runs" / "r" / "config.json").read_text() == before and not (tmp_path / "lora").exists()


def test_resume_refuses_a_run_of_another_output_or_method(tmp_path, monkeypatch, no_model, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r"
    _record(run, out="lora/arithmetic", method="lora")
    cfg = TrainConfig(out="lora/arithmetic", method="lora").to_dict()
    torch.save({"config": cfg}, run / "checkpoint.pt")
    assert main(["train", "--resume", "experts/arithmetic", "--run-dir", "runs/r"]) == 2  # another output
    assert "belongs to --out" in capsys.readouterr().err
    assert main(["train", "--resume", "lora/arithmetic", "--run-dir", "runs/r", "--method", "svf"]) == 2
    assert "(method lora)" in capsys.readouterr().err


def test_resume_points_at_a_run_folder_of_the_older_layout(tmp_path, monkeypatch, no_model, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "math").mkdir(parents=True)
    (tmp_path / "runs" / "math" / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--resume", "experts/math"]) == 2
    assert "pass --run-dir runs/math" in capsys.readouterr().err
