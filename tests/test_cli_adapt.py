"""The self-adaptation surface of `t2`: `adapt` and `demo` (their flags), `--strategy` on `generate` and `eval`,
and error exits (code 2, one line on stderr) that happen before any model is loaded. One end-to-end run of
`adapt`, `generate --strategy` and `eval --strategy` on a tiny model folder (no download)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transformer_squared.cli import build_parser, main

HELP = {
    (): ["adapt", "demo"],
    ("adapt",): ["--model", "--cache-dir", "--library", "--task", "--data", "--shots", "--experts", "--out",
                 "--overwrite", "--resume", "--quiet", "--population", "--elite-ratio", "--iterations", "--alpha-min",
                 "--alpha-max", "--init-std", "--per-matrix", "--fitness", "--max-new-tokens", "--batch-rows",
                 "--seed"],
    ("demo",): ["--model", "--workdir", "--n", "--retrain"],
    ("generate",): ["--strategy", "{base,prompt,classifier,embedding,cem}", "--classifier", "--encoder",
                    "--threshold", "--shots", "--task", "--data", "--expert"],
    ("eval",): ["--tasks", "--data-dir", "--strategy", "--classifier", "--encoder", "--threshold", "--shots"],
}


@pytest.mark.parametrize("verb", HELP, ids=lambda v: " ".join(v) or "t2")
def test_help_lists_the_flags(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*verb, "-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(('t2', *verb))}")
    for flag in HELP[verb]:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), f"{flag} missing from `t2 {' '.join(verb)} -h`"


def test_adapt_flags_fill_the_cem_config():
    from transformer_squared.adapt.cem import CEMConfig

    args = build_parser().parse_args(["adapt", "--task", "arithmetic", "--out", "x", "--population", "6",
                                      "--elite-ratio", "0.5", "--alpha-max", "2", "--per-matrix", "--fitness", "loglik"])
    assert (args.population, args.elite_ratio, args.alpha_max, args.per_matrix, args.fitness) == (6, 0.5, 2.0, True,
                                                                                                  "loglik")
    assert args.iterations is None and args.shots == 10  # unset CEM fields fall back to CEMConfig's defaults
    assert CEMConfig().include_base is True


def test_adapt_can_leave_the_base_out():
    """CEMConfig.include_base defaults to True and is a store_true flag: nothing on the command line can set it to
    False. (The conventional spelling, argparse.BooleanOptionalAction's, is assumed here.)"""
    args = build_parser().parse_args(["adapt", "--task", "arithmetic", "--out", "x", "--no-include-base"])
    assert args.include_base is False


def test_unknown_strategy_is_an_argparse_error(capsys):
    for argv in (["generate", "--strategy", "magic", "hi"], ["eval", "--strategy", "magic", "--tasks", "arithmetic"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "invalid choice: 'magic'" in capsys.readouterr().err


def test_demo_settings_are_valid_configs():
    """The demo's hard-coded runs would otherwise fail only minutes into `t2 demo`."""
    from transformer_squared.adapt.cem import CEMConfig
    from transformer_squared.cli.demo import (
        CEM_RUN,
        CLASSIFIER_RUN,
        DEMO_TASKS,
        EXPERT_RUNS,
        UNSEEN,
    )
    from transformer_squared.tasks import TASKS
    from transformer_squared.training.config import TrainConfig

    assert set(DEMO_TASKS) <= set(TASKS) and UNSEEN in DEMO_TASKS
    assert {f["task"] for f in EXPERT_RUNS.values()} < set(DEMO_TASKS) and UNSEEN not in EXPERT_RUNS
    for name, fields in EXPERT_RUNS.items():
        TrainConfig(model="default", out=f"lib/{name}", run_dir=f"runs/{name}", overwrite=True, **fields)
    TrainConfig(model="default", out="lib/dispatcher", run_dir="runs/dispatcher", overwrite=True, task="classify",
                **CLASSIFIER_RUN)
    CEMConfig(**CEM_RUN)


# -- errors before any model is loaded -------------------------------------------------------------------------------

@pytest.fixture
def libraries(tmp_path):
    """{"empty": a folder with no experts, "one": a library with `math` (domain arithmetic, trained on arithmetic)}.
    The expert is written without a model (z for two made-up matrices): only its metadata is read before loading."""
    import torch

    from transformer_squared.experts import Expert, ExpertMeta

    one = tmp_path / "one"
    meta = ExpertMeta(name="math", base_model="default", domain="arithmetic",
                      created_by={"method": "train", "config": {"task": "arithmetic"}})
    Expert({"a.weight": torch.ones(4), "b.weight": torch.ones(4)}, meta).save(one / "math")
    (tmp_path / "empty").mkdir()
    return {"empty": tmp_path / "empty", "one": one}


ERRORS = {  # case: (library, argv after the verb's --library, what stderr must say)
    "eval-strategy-without-tasks": ("one", ["eval", "--strategy", "prompt"], "--strategy needs --tasks a,b"),
    "eval-strategy-empty-library": ("empty", ["eval", "--strategy", "prompt", "--tasks", "arithmetic"],
                                    "no expert with a domain label"),
    "eval-strategy-and-expert": ("one", ["eval", "--strategy", "prompt", "--tasks", "arithmetic", "--expert", "math"],
                                 "--strategy picks experts itself"),
    "eval-strategy-unknown-task": ("one", ["eval", "--strategy", "base", "--tasks", "arithmetic,nope"],
                                   "unknown task 'nope'"),
    "generate-strategy-empty-library": ("empty", ["generate", "--strategy", "prompt", "hi"],
                                        "no expert with a domain label"),
    "generate-strategy-and-expert": ("one", ["generate", "--strategy", "prompt", "--expert", "math", "hi"],
                                     "pass --expert or --strategy, not both"),
    "generate-cem-without-task": ("one", ["generate", "--strategy", "cem", "hi"], "--strategy cem needs --task"),
    "generate-cem-unknown-task": ("one", ["generate", "--strategy", "cem", "--task", "nope", "hi"],
                                  "unknown task 'nope'"),
    "generate-classifier-missing": ("one", ["generate", "--strategy", "classifier", "hi"], "no classifier experts"),
    "eval-classifier-missing": ("one", ["eval", "--strategy", "classifier", "--tasks", "arithmetic"],
                                "no classifier experts"),
    "adapt-out-exists": ("one", ["adapt", "--task", "arithmetic", "--out", "math"],
                         "already exists; pass --overwrite"),
    "adapt-empty-library": ("empty", ["adapt", "--task", "arithmetic", "--out", "mix"], "no experts to mix"),
    "adapt-unknown-expert": ("one", ["adapt", "--task", "arithmetic", "--out", "mix", "--experts", "nope"],
                             "no expert 'nope'"),
    "adapt-unknown-task": ("one", ["adapt", "--task", "nope", "--out", "mix"], "unknown task 'nope'"),
    "adapt-bad-fitness": ("one", ["adapt", "--task", "arithmetic", "--out", "mix", "--fitness", "reward"],
                          "--fitness 'reward': choose one of accuracy, loglik"),
    "adapt-bad-bounds": ("one", ["adapt", "--task", "arithmetic", "--out", "mix", "--alpha-min", "1"],
                         "--alpha-min must be below --alpha-max"),
    "adapt-bad-name": ("one", ["adapt", "--task", "arithmetic", "--out", "bad name"], "invalid expert name"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_exit_2_with_one_line_before_loading_any_model(case, libraries, monkeypatch, tmp_path, capsys):
    import transformer_squared.svf

    which, argv, message = ERRORS[case]

    def no_model(*args, **kwargs):
        raise AssertionError("the error should be reported before a model is loaded")

    monkeypatch.setattr(transformer_squared.svf, "load_svf", no_model)
    monkeypatch.chdir(tmp_path)  # `adapt` keeps its search state under ./runs
    verb, rest = argv[0], argv[1:]
    assert main([verb, "--library", str(libraries[which]), *rest]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"t2 {verb}: error: ") and message in err, err
    assert err.strip().count("\n") == 0, err  # one line
    assert sorted(p.name for p in libraries["one"].iterdir()) == ["math"]  # nothing written
    assert not (tmp_path / "runs").exists()


def test_the_classifier_check_before_the_model_reads_no_z(libraries, monkeypatch):
    import argparse

    import torch

    from transformer_squared.adapt.classify import find_classifier
    from transformer_squared.cli.options import check_strategy_inputs
    from transformer_squared.experts import Expert, ExpertLibrary, ExpertMeta

    library = ExpertLibrary(libraries["one"])
    Expert({"a.weight": torch.ones(4)}, ExpertMeta(name="dispatcher", domain="dispatch")).save(library.root / "dispatcher")
    loads, real_load = [], Expert.load
    monkeypatch.setattr(Expert, "load", classmethod(lambda cls, folder: loads.append(Path(folder).name)
                                                    or real_load(folder)))
    for name in (None, "dispatcher", str(library.root / "dispatcher")):
        check_strategy_inputs(argparse.Namespace(strategy="classifier", classifier=name), library)
    assert loads == []  # the strategy's builder loads it, once
    assert find_classifier(library).name == "dispatcher" and loads == ["dispatcher"]


def test_an_unusable_encoder_is_a_one_line_error(libraries, monkeypatch, capsys):
    """--encoder is only opened after the model loads (a stand-in here); what it raises must still be reported as a
    t2 error, not a traceback."""
    import transformer_squared.svf

    monkeypatch.setattr(transformer_squared.svf, "load_svf", lambda *args, **kwargs: object())
    assert main(["generate", "--library", str(libraries["one"]), "--strategy", "embedding", "--encoder",
                 str(libraries["empty"] / "no-encoder"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 generate: error: ") and err.strip().count("\n") == 0, err


# -- end to end on a tiny model folder -------------------------------------------------------------------------------

def test_adapt_generate_and_eval_with_strategies_on_a_tiny_model(tiny_folder, one_thread, tmp_path, monkeypatch,
                                                                 capsys):
    import json

    from transformer_squared.adapt.cem import BASE
    from transformer_squared.experts import ExpertLibrary

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))  # `eval` has no --cache-dir: SVD factors go here
    model, cache, lib = str(tiny_folder), str(tmp_path / "cache" / "svd"), str(tmp_path / "lib")
    for name, domain, seed in (("math", "arithmetic", "1"), ("words", "language", "2")):
        assert main(["experts", "--library", lib, "init", "--model", model, "--cache-dir", cache, "--name", name,
                     "--noise", "0.3", "--seed", seed, "--domain", domain]) == 0
    capsys.readouterr()

    assert main(["adapt", "--library", lib, "--cache-dir", cache, "--task", "subtraction", "--shots", "2",
                 "--out", "cem-sub", "--population", "4", "--iterations", "2", "--max-new-tokens", "2",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "shots accuracy" in out and f"saved {tmp_path / 'lib' / 'cem-sub'}" in out
    library = ExpertLibrary(lib)
    expert = library.get("cem-sub")
    assert set(expert.meta.alpha) == {"math", "words", BASE}
    assert expert.meta.created_by["method"] == "cem" and expert.meta.created_by["task"] == "subtraction"
    assert len(expert.meta.metrics["history"]) == 2
    from transformer_squared.training.config import default_run_dir

    state = json.loads((default_run_dir(tmp_path / "lib" / "cem-sub") / "cem_state.json").read_text())
    assert state["iteration"] == 2 and state["best"]["alpha"] == [expert.meta.alpha[c] for c in state["components"]]
    assert main(["adapt", "--library", lib, "--cache-dir", cache, "--task", "subtraction", "--out", "cem-sub"]) == 2
    assert "already exists" in capsys.readouterr().err

    from collections import Counter

    from transformer_squared.experts import Expert

    loads, real_load = Counter(), Expert.load
    monkeypatch.setattr(Expert, "load", classmethod(lambda cls, folder: loads.update([Path(folder).name])
                                                    or real_load(folder)))
    assert main(["generate", "--library", lib, "--cache-dir", cache, "--strategy", "prompt", "--max-new-tokens", "3",
                 "What is 2 + 2?", "Give the antonym of 'hot'."]) == 0
    assert loads == {"math": 1, "words": 1}  # each routed expert's z is read once, not once per routes lookup
    monkeypatch.setattr(Expert, "load", real_load)
    captured = capsys.readouterr()
    assert captured.out.startswith("> What is 2 + 2?\n")
    assert len(re.findall(r"^\[prompt: (arithmetic|language|other) -> expert (math|words|base); pass 1 \d+ ms, "
                          r"pass 2 \d+ ms\]$", captured.err, re.MULTILINE)) == 2, captured.err

    results = tmp_path / "results"
    assert main(["eval", "--library", lib, "--strategy", "base", "--tasks",
                 "arithmetic,antonyms", "--n", "2", "--out", str(results)]) == 0
    out = capsys.readouterr().out
    assert "arithmetic/test:" in out and "antonyms/test:" in out and "base: all" in out
    summary = json.loads((results / "arithmetic+antonyms_base.json").read_text())
    assert summary["strategy"] == "base" and summary["dispatch_accuracy"] is None
    assert [t["n"] for t in summary["tasks"]] == [2, 2]
    assert len((results / "arithmetic+antonyms_base.jsonl").read_text().splitlines()) == 4

    assert main(["eval", "--library", lib, "--strategy", "prompt", "--tasks", "arithmetic,antonyms", "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "dispatch" in out and "(want arithmetic)" in out and "(want language)" in out


def test_eval_with_a_strategy_honours_max_new_tokens(tiny_folder, one_thread, tmp_path, monkeypatch, capsys):
    """`t2 eval --max-new-tokens` is accepted with --strategy too; pass 2 must generate at most that many tokens."""
    from transformer_squared.adapt import two_pass

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))
    configs = []
    real = two_pass.generate_ids

    def recording(model, tokenizer, texts, config):
        configs.append(config)
        return real(model, tokenizer, texts, config)

    monkeypatch.setattr(two_pass, "generate_ids", recording)
    assert main(["eval", "--model", str(tiny_folder), "--library", str(tmp_path / "lib"), "--strategy", "base",
                 "--tasks", "arithmetic", "--n", "1", "--max-new-tokens", "3"]) == 0
    assert [c.max_new_tokens for c in configs] == [3]
