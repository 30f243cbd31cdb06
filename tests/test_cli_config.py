"""Typed configs are the CLI (transformer_squared.config): every flag of every verb has help, taken from the config
field's metadata (no `inspect.getsource`, which fails where the source is not shipped); generate, eval and serve
flags are exactly their config's fields; --out and --resume mean the same thing in every verb."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import transformer_squared
from transformer_squared.cli import build_parser, main
from transformer_squared.config import add_dataclass_args, config_from_args, flag_name

SRC = Path(transformer_squared.__file__).parent


def verb_parsers(parser=None, path=("t2",)):
    """(path, parser) for every verb and every `experts` action."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from verb_parsers(sub, (*path, name))


def flags(parser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def test_every_flag_of_every_verb_has_help():
    missing = [f"{' '.join(path)} {name}" for path, parser in verb_parsers() for name, action in flags(parser).items()
               if not (action.help or "").strip()]
    missing += [f"{' '.join(path)} {a.dest}" for path, parser in verb_parsers() for a in parser._actions
                if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, missing


@pytest.mark.parametrize("path", [p for p, _ in verb_parsers()][1:], ids=lambda p: " ".join(p[1:]))
def test_help_of_every_verb_shows(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path[1:], "-h"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {' '.join(path)}")


def test_no_module_reads_its_own_source():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not {"getsource", "getsourcelines", "getcomments"} & names, path


def test_flags_work_without_the_source(monkeypatch, capsys):
    """As in a zipapp or a .pyc-only install: reading source fails, help is still there."""
    import inspect

    def no_source(*args, **kwargs):
        raise OSError("could not get source code")

    monkeypatch.setattr(inspect, "getsource", no_source)
    with pytest.raises(SystemExit):
        main(["train", "-h"])
    assert "samples per prompt (rloo needs >= 2) (default: 4)" in capsys.readouterr().out


def config_classes():
    from transformer_squared.adapt.config import CEMConfig
    from transformer_squared.cli.core import GenerateConfig
    from transformer_squared.cli.serve import ServeConfig
    from transformer_squared.cli.train import EvalConfig
    from transformer_squared.generation import GenerationConfig
    from transformer_squared.serve.config import ServeLimits
    from transformer_squared.training.config import TrainConfig

    return [TrainConfig, CEMConfig, GenerationConfig, ServeLimits, GenerateConfig, EvalConfig, ServeConfig]


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_help_in_its_metadata(cls):
    assert all(f.metadata.get("help", "").strip() for f in dataclasses.fields(cls)), cls


@pytest.mark.parametrize("verb,cls,extra", [
    ("generate", "GenerateConfig", {"prompt"}),
    ("eval", "EvalConfig", set()),
    ("serve", "ServeConfig", set()),
    ("train", "TrainConfig", {"config", "resume", "quiet"}),
])
def test_verb_flags_are_its_config_fields(verb, cls, extra):
    cls = {c.__name__: c for c in config_classes()}[cls]
    parser = build_parser().verb_parsers[verb]
    dests = {a.dest for a in parser._actions} - {"help"}
    fields = {f.name for f in dataclasses.fields(cls)} - ({"batch_size"} if verb == "generate" else set())
    assert dests == fields | extra
    for f in dataclasses.fields(cls):  # the help is the field's own
        if f.name in dests:
            assert f.metadata["help"] in flags(parser)[flag_name(f.name)].help


def test_shared_flags_come_from_one_place():
    texts = {}
    for path, parser in verb_parsers():
        for name in ("--device", "--dtype"):
            if name in flags(parser):
                texts.setdefault(name, set()).add(flags(parser)[name].help)
    assert set(texts) == {"--device", "--dtype"} and all(len(t) == 1 for t in texts.values()), texts


def test_the_dtype_names_are_the_precision_policys():
    from transformer_squared.config import DTYPE_NAMES
    from transformer_squared.precision import DTYPE_CHOICES

    assert DTYPE_NAMES == DTYPE_CHOICES


def test_configs_are_built_from_flags_with_their_defaults_and_checks():
    from transformer_squared.cli.serve import ServeConfig
    from transformer_squared.serve.config import ServeLimits

    cfg = config_from_args(build_parser().parse_args(["serve", "--batch-window-ms", "20"]), ServeConfig)
    assert cfg.strategy == "embedding" and cfg.limits() == ServeLimits(batch_window_s=0.02)
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, ServeLimits, layered=True)
    assert parser.parse_args([]).max_queue is None  # layered: only given flags override YAML
    with pytest.raises(ValueError, match="--max-queue must be at least 1"):
        config_from_args(parser.parse_args(["--max-queue", "0"]), ServeLimits)


@pytest.mark.parametrize("argv,message", [
    (["generate", "--expert", "e", "--strategy", "prompt", "hi"], "pass --expert or --strategy, not both"),
    (["generate", "--strategy", "cem", "hi"], "--strategy cem needs --task"),
    (["eval", "--task", "arithmetic", "--expert", "e", "--lora", "l"], "pass --expert or --lora, not both"),
    (["eval", "--tasks", "arithmetic", "--expert", "e"], "--strategy picks experts itself"),
    (["eval"], "pass --task (one task), or --tasks a,b"),
    (["train", "--out", "e", "--train-filter", "some"], "--train-filter 'some': choose one of all, known"),
    (["train", "--out", "e", "--train-filter", "known"], "--train-filter known needs a multiple-choice task"),
])
def test_verb_configs_refuse_flag_combinations_naming_the_flags(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"t2 {argv[0]}: error: {message}") and err.count("\n") == 1, err


# -- --out and --resume --------------------------------------------------------------------------------------------

WRITERS = {("t2", "train"), ("t2", "eval"), ("t2", "export"), ("t2", "adapt"), ("t2", "discover"),
           ("t2", "experts", "mix"), ("t2", "experts", "init")}  # the verbs whose result is a file or folder
RESUMERS = {("t2", "train"), ("t2", "adapt")}


def test_out_is_the_result_and_resume_continues_the_run_of_out():
    parsers = dict(verb_parsers())
    with_out = {path for path, parser in parsers.items() if "--out" in flags(parser)}
    with_resume = {path for path, parser in parsers.items() if "--resume" in flags(parser)}
    assert with_out == WRITERS and with_resume == RESUMERS
    resume = {(a.nargs, a.const, a.metavar, a.help) for p in RESUMERS for a in [flags(parsers[p])["--resume"]]}
    assert len(resume) == 1, resume  # one definition
    assert all(flags(parsers[p])["--out"].dest == "out" for p in WRITERS)


def test_resume_out_is_out_in_train_and_adapt(tmp_path, monkeypatch, capsys):
    from transformer_squared.cli.options import resume_out

    for verb in (["train"], ["adapt", "--task", "arithmetic"]):
        args = build_parser().parse_args([*verb, "--resume", "experts/x"])
        resume_out(args)
        assert (args.out, bool(args.resume)) == ("experts/x", True)
    monkeypatch.chdir(tmp_path)
    assert main(["adapt", "--task", "arithmetic", "--resume"]) == 2
    assert "--resume needs the run's --out" in capsys.readouterr().err
    assert main(["adapt", "--task", "arithmetic"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_experts_init_takes_out_and_the_older_name():
    for spelling in ("--out", "--name"):
        assert build_parser().parse_args(["experts", "init", spelling, "probe"]).out == "probe"


# -- reporting: logging in the library, print in the CLI -----------------------------------------------------------

def test_only_the_cli_prints():
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.relative_to(SRC)}:{calls[0].lineno} prints; log instead"


def test_a_library_note_is_logged_not_printed(tmp_path, monkeypatch, caplog, capsys):
    import sys

    from transformer_squared.training.trainer import plot_metrics

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with caplog.at_level("INFO", logger="transformer_squared"):
        assert plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plot.png") is None
    assert [r.name for r in caplog.records] == ["transformer_squared.training.trainer"]
    assert "pip install matplotlib" in caplog.text
    assert capsys.readouterr() == ("", "")


def test_the_cli_shows_library_records_on_stderr(monkeypatch, capsys):
    import logging

    from transformer_squared.cli import core

    def verb(args):
        logging.getLogger("transformer_squared.some.module").info("factors cached")
        logging.getLogger("transformer_squared.other").warning("slow path")
        logging.getLogger("transformer_squared.other").debug("not shown")
        return 0

    monkeypatch.setattr(core, "decompose_cmd", verb)
    assert main(["decompose"]) == 0
    assert capsys.readouterr() == ("", "t2 decompose: factors cached\nt2 decompose: warning: slow path\n")
    assert not logging.getLogger("transformer_squared").handlers  # set up for the verb only
