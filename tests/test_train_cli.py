"""`t2 train` and `t2 eval` (cli/train.py) and the TrainConfig they share (training/config.py): validation that names
the flag, YAML configs under command-line flags, the help surface, and end-to-end runs on the tiny model folder
(`tiny_llama_dir` in conftest.py: a random Llama with the character tokenizer and a chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transformer_squared.cli import build_parser, main
from transformer_squared.config import config_from_args
from transformer_squared.training.config import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path_factory.getbasetemp() / "t2-cache-cli"))


# -- configuration -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, flag", [
    (dict(objective="rloo", group_size=1), "--group-size"),
    (dict(method="dora"), "--method"),
    (dict(objective="ppo"), "--objective"),
    (dict(out=""), "--out"),
    (dict(steps=0), "--steps"),
    (dict(batch_size=0), "--batch-size"),
    (dict(lr=0.0), "--lr"),
    (dict(kl_coef=-1.0), "--kl-coef"),
    (dict(parametrization="other"), "--parametrization"),
])
def test_config_errors_name_the_flag(fields, flag):
    with pytest.raises(ValueError, match=flag):
        TrainConfig(**{"out": "experts/x", **fields})


def test_config_error_exits_2_before_loading_a_model(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["train", "--out", str(out), "--steps", "0", "--model", str(tmp_path / "no-such-model")]) == 2
    assert capsys.readouterr().err.startswith("t2 train: error: --steps must be at least 1")
    assert not out.exists()


def test_reinforce_with_one_sample_per_prompt_is_fine():
    assert TrainConfig(out="x", objective="reinforce", group_size=1).group_size == 1


def parse_train(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]), TrainConfig)


def test_yaml_config_and_flags_override_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: arithmetic\nout: experts/add\nobjective: sft\nsteps: 7\nlr: 0.01\nbatch_size: 3\n"
                    "lora_targets: [q_proj, k_proj]\noverwrite: true\n")
    cfg = parse_train("--config", str(path))
    assert (cfg.objective, cfg.steps, cfg.lr, cfg.batch_size, cfg.lora_targets, cfg.overwrite, cfg.out) == (
        "sft", 7, 0.01, 3, ["q_proj", "k_proj"], True, "experts/add")
    assert cfg.group_size == TrainConfig(out="x").group_size  # untouched fields keep their defaults

    cfg = parse_train("--config", str(path), "--steps", "9", "--lr", "0.5", "--lora-targets", "v_proj")
    assert (cfg.objective, cfg.steps, cfg.lr, cfg.lora_targets) == ("sft", 9, 0.5, ["v_proj"])


def test_flags_alone_make_the_same_config_as_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("out: experts/add\nobjective: reinforce\ngroup_size: 1\nkl_coef: 0.1\n")
    assert parse_train("--config", str(path)) == parse_train(
        "--out", "experts/add", "--objective", "reinforce", "--group-size", "1", "--kl-coef", "0.1")


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    cfg = parse_train("--config", str(path), "--out", "experts/x")  # --out given in case the file leaves it out
    assert isinstance(cfg.lr, float) and isinstance(cfg.steps, int) and cfg.out


def test_yaml_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("out: experts/add\nlr: 1e-3\n")
    assert parse_train("--config", str(path)).lr == pytest.approx(1e-3)


def test_unknown_yaml_field_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("out: experts/add\nlearning_rate: 0.1\nsteps: 3\n")
    with pytest.raises(ValueError, match="unknown field.*learning_rate"):
        parse_train("--config", str(path))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 train: error: --config") and "learning_rate" in err


def test_missing_yaml_file_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("verb, flags", [
    ("train", ["--config", "--resume", "--out", "--model", "--task", "--method", "--objective", "--steps",
               "--batch-size", "--group-size", "--lr", "--kl-coef", "--run-dir", "--overwrite", "--lora-rank",
               "--lora-targets", "--parametrization", "--targets", "--valid-every", "--save-every", "--seed"]),
    ("eval", ["--model", "--task", "--data", "--split", "--n", "--expert", "--lora", "--library", "--out", "--label",
              "--max-new-tokens"]),
])
def test_help_lists_the_key_flags(verb, flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "-h"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag


# -- end to end on the tiny model folder -------------------------------------------------------------------------------

def read_results(folder: Path, label: str) -> tuple[dict, list[dict]]:
    summary = json.loads((folder / f"{label}.json").read_text())
    records = [json.loads(line) for line in (folder / f"{label}.jsonl").read_text().splitlines()]
    return summary, records


def check_eval_output(out: Path, label: str, stdout: str, n: int) -> list[dict]:
    from transformer_squared.evaluation import EvalResult

    summary, records = read_results(out, label)
    assert (summary["task"], summary["split"], summary["n"]) == ("arithmetic", "test", n)
    assert len(records) == n
    from transformer_squared.tasks import ArithmeticTask

    task = ArithmeticTask()
    for r in records:
        assert set(r) == {"prompt", "completion", "extracted", "answer", "score"}
        # each record is the task's own reading of its completion, not merely a value of the right kind
        assert r["prompt"].startswith("What is ") and r["extracted"] == task.extract(r["completion"])
        assert r["score"] == task.score(r["completion"], {"answer": r["answer"]})
    assert summary["accuracy"] == sum(r["score"] for r in records) / n
    expected = EvalResult(**{**summary, "ci95": tuple(summary["ci95"])}).summary()
    assert stdout.splitlines()[0] == expected
    assert f"wrote {out / label}.json" in stdout
    return records


def test_eval_base_model_writes_summary_and_samples(tiny_llama_dir, tmp_path, capsys):
    argv = ["eval", "--task", "arithmetic", "--n", "4", "--model", str(tiny_llama_dir), "--max-new-tokens", "4",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    check_eval_output(tmp_path, "arithmetic_test_base", capsys.readouterr().out, 4)


def test_train_resume_then_eval_the_expert(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    out, run = tmp_path / "experts" / "add", tmp_path / "runs" / "add"
    common = ["--run-dir", str(run), "--quiet"]
    assert main(["train", "--model", str(tiny_llama_dir), "--out", str(out), "--objective", "sft", "--steps", "2",
                 "--batch-size", "2", "--valid-n", "4", "--max-new-tokens", "4", "--lr", "0.5", *common]) == 0
    printed = capsys.readouterr().out
    assert "best valid accuracy" in printed and f"saved {out}" in printed
    assert (out / "expert.json").is_file()

    # --resume OUT: the checkpoint's config, with more steps; the checkpoint is unpickled once
    import torch

    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **kw: loads.append(Path(path).name) or real_load(path, *a, **kw))
    assert main(["train", "--resume", str(out), "--steps", "3", *common]) == 0
    monkeypatch.setattr(torch, "load", real_load)
    assert loads.count("checkpoint.pt") == 1, loads
    capsys.readouterr()
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    # the expert folder works with `t2 eval --expert` (its base model and targets come from expert.json)
    assert main(["eval", "--task", "arithmetic", "--n", "4", "--expert", str(out), "--max-new-tokens", "4",
                 "--out", str(tmp_path / "results")]) == 0
    check_eval_output(tmp_path / "results", "arithmetic_test_add", capsys.readouterr().out, 4)


def test_eval_a_lora_adapter(tiny_llama_dir, tmp_path, capsys):
    from transformer_squared.models import load_model
    from transformer_squared.training.policy import LoRAPolicy

    loaded = load_model(str(tiny_llama_dir))
    LoRAPolicy(loaded.model, loaded.tokenizer, rank=2).save(tmp_path / "adapter")
    argv = ["eval", "--task", "arithmetic", "--n", "2", "--model", str(tiny_llama_dir), "--lora",
            str(tmp_path / "adapter"), "--max-new-tokens", "3", "--out", str(tmp_path)]
    assert main(argv) == 0
    check_eval_output(tmp_path, "arithmetic_test_adapter", capsys.readouterr().out, 2)


def test_eval_refuses_expert_and_lora_together(tmp_path, capsys):
    argv = ["eval", "--task", "arithmetic", "--expert", "a", "--lora", str(tmp_path), "--model", "no-such-model"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("t2 eval: error: pass --expert or --lora, not both")


def test_eval_refuses_a_folder_that_is_not_an_adapter(tiny_llama_dir, tmp_path, capsys):
    argv = ["eval", "--task", "arithmetic", "--n", "1", "--model", str(tiny_llama_dir), "--lora", str(tmp_path)]
    assert main(argv) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err
