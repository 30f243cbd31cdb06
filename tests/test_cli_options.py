"""Numeric flags of every verb refuse values that mean nothing, at parse time (before any model is loaded), with
a message naming the flag; config-dataclass flags are refused by the dataclass, naming the flag too."""

from __future__ import annotations

import argparse

import pytest

from transformer_squared.cli import main
from transformer_squared.cli import options

BAD_FLAGS = [  # (argv, the flag the message must name)
    (["eval", "--task", "arithmetic", "--n", "0"], "--n"),
    (["eval", "--task", "arithmetic", "--batch-size", "0"], "--batch-size"),
    (["eval", "--task", "arithmetic", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["eval", "--tasks", "arithmetic", "--strategy", "embedding", "--threshold", "5"], "--threshold"),
    (["experts", "init", "--name", "x", "--noise", "-1"], "--noise"),
    (["experts", "init", "--name", "x", "--noise", "nan"], "--noise"),
    (["generate", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["generate", "--temperature", "-0.5", "hi"], "--temperature"),
    (["generate", "--top-p", "0", "hi"], "--top-p"),
    (["generate", "--top-p", "1.5", "hi"], "--top-p"),
    (["generate", "--strategy", "embedding", "--threshold", "-1.01", "hi"], "--threshold"),
    (["generate", "--strategy", "cem", "--shots", "0", "hi"], "--shots"),
    (["adapt", "--task", "arithmetic", "--out", "m", "--shots", "0"], "--shots"),
    (["demo", "--n", "0"], "--n"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--max-batch-size", "0"], "--max-batch-size"),
    (["serve", "--max-queue", "-1"], "--max-queue"),
    (["serve", "--batch-window-ms", "-1"], "--batch-window-ms"),
    (["serve", "--shutdown-timeout", "-2"], "--shutdown-timeout"),
    (["serve", "--threads", "0"], "--threads"),
    (["serve", "--threshold", "2"], "--threshold"),
    (["eval", "--task", "arithmetic", "--n", "ten"], "--n"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_meaningless_values_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err, err


@pytest.mark.parametrize("argv", [
    ["eval", "--task", "arithmetic", "--n", "1", "--batch-size", "1", "--max-new-tokens", "1"],
    ["experts", "init", "--name", "x", "--noise", "0"],
    ["generate", "--top-p", "1", "--temperature", "0", "--threshold", "-1", "hi"],
    ["generate", "--threshold", "1", "hi"],
    ["serve", "--port", "65535", "--batch-window-ms", "0", "--shutdown-timeout", "0"],
])
def test_edge_values_are_accepted(argv):
    from transformer_squared.cli import build_parser

    build_parser().parse_args(argv)


@pytest.mark.parametrize("argv,flag", [
    (["train", "--out", "x", "--temperature", "0"], "--temperature"),
    (["train", "--out", "x", "--lora-dropout", "1"], "--lora-dropout"),
    (["train", "--out", "x", "--max-grad-norm", "nan"], "--max-grad-norm"),
    (["train", "--out", "x", "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--out", "x", "--steps", "0"], "--steps"),
    (["adapt", "--task", "arithmetic", "--out", "m", "--init-std", "0"], "--init-std"),
    (["adapt", "--task", "arithmetic", "--out", "m", "--population", "1"], "--population"),
])
def test_config_fields_are_refused_by_their_dataclass_naming_the_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_mix_weights_must_be_finite(capsys):
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        from transformer_squared.cli.core import parse_weights

        parse_weights(["a=inf"])


@pytest.mark.parametrize("check,good,bad", [
    (options.positive_int, ["1", "7"], ["0", "-1", "1.5", "x"]),
    (options.nonneg_int, ["0", "3"], ["-1"]),
    (options.positive_float, ["1e-9", "2"], ["0", "-1", "inf", "nan"]),
    (options.nonneg_float, ["0", "0.5"], ["-1e-9", "nan"]),
    (options.unit_interval, ["1", "0.01"], ["0", "1.01"]),
    (options.cosine, ["-1", "0", "1"], ["-1.5", "1.0001", "nan"]),
    (options.port, ["1", "65535"], ["0", "65536"]),
])
def test_range_checks(check, good, bad):
    for text in good:
        check(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


def test_verb_modules_do_not_import_each_other():
    import ast
    from pathlib import Path

    import transformer_squared.cli as cli

    folder = Path(cli.__file__).parent
    verbs = {"core", "train", "adapt", "serve"}
    for name in verbs:
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert not imported & verbs, f"cli/{name}.py imports {imported & verbs}"
