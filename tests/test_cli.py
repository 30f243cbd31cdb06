"""The `t2` command line: the surface of every verb (`-h`), `-h` staying free of torch, library verbs on experts
made in-process, error exits, and decompose / experts init / generate / export end to end on a tiny model saved
as a Hugging Face folder with a character-level tokenizer (no download)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from transformer_squared.cli import main

# -- surface -----------------------------------------------------------------------------------------------------

HELP = {
    (): ["decompose", "generate", "experts", "export"],
    ("decompose",): ["--model", "--targets", "--cache-dir", "--force"],
    ("generate",): ["--model", "--targets", "--cache-dir", "--library", "--expert", "--system", "--max-new-tokens",
                    "--temperature", "--top-p", "--lookup", "prompt"],
    ("experts",): ["--library", "list", "show", "rank", "stats", "mix", "rm", "init"],
    ("experts", "list"): ["t2 experts list"],
    ("experts", "show"): ["name"],
    ("experts", "mix"): ["NAME=WEIGHT", "--out", "--overwrite"],
    ("experts", "rm"): ["name"],
    ("experts", "init"): ["--model", "--targets", "--cache-dir", "--name", "--parametrization", "{paper,reference}",
                          "--noise", "--seed", "--domain", "--description", "--overwrite"],
    ("export",): ["--model", "--cache-dir", "--library", "--expert", "--out", "--overwrite", "--format", "--rank",
                  "--gguf-type"],
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


def test_export_takes_its_targets_from_the_expert(capsys):
    with pytest.raises(SystemExit):
        main(["export", "-h"])
    assert "--targets" not in capsys.readouterr().out


def test_module_entry_point_help_does_not_import_torch():
    # `t2 -h` must be instant: heavy imports happen inside the verbs
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "transformer_squared", "-h"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: t2") and all(v in proc.stdout for v in HELP[()])
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "transformer_squared.cli.core" in imported  # the importtime trace is there...
    assert not {"torch", "transformers", "safetensors"} & imported  # ...and holds none of the heavy packages


def test_a_verb_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "VERB" in capsys.readouterr().err


@pytest.mark.parametrize("argv,unknown", [(["train", "--cache-dir", "x"], "--cache-dir x"),
                                          (["experts", "list", "--bogus"], "--bogus"),
                                          (["generate", "hi", "--nope"], "--nope")])
def test_an_unknown_flag_is_reported_by_its_verb(argv, unknown, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    verb = argv[0]
    assert err.startswith(f"usage: t2 {verb}") and f"t2 {verb}: error: unrecognized arguments: {unknown}" in err, err


# -- library verbs (no model needed) -----------------------------------------------------------------------------

@pytest.fixture
def library(svf, tmp_path, random_z):
    """A library folder holding two experts for the tiny Llama: math (domain math) and code."""
    from transformer_squared.experts import Expert, ExpertLibrary

    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(Expert.for_model(svf, random_z(svf, seed=1), domain="math", created_by={"method": "train"}), "math")
    lib.add(Expert.for_model(svf, random_z(svf, seed=2), domain="code"), "code")
    return lib


def test_experts_list(library, tmp_path, capsys):
    assert main(["experts", "--library", str(tmp_path / "empty"), "list"]) == 0
    assert "no experts in" in capsys.readouterr().out
    assert main(["experts", "--library", str(library.root), "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["name", "domain", "params", "method", "base"]
    assert [r.split()[:3] for r in rows[1:]] == [["code", "code", "384"], ["math", "math", "384"]]  # 6 × rank 64
    assert rows[2].split()[3:] == ["train", "tiny"]


@pytest.mark.parametrize("action", [["list"], ["show", "math"], ["rm", "nope"], ["mix", "math=1", "--out", "m"],
                                    ["init", "--name", "probe"]], ids=lambda a: a[0])
def test_experts_actions_take_library_after_the_action_too(action, tmp_path):
    from transformer_squared.cli import build_parser

    where = str(tmp_path / "lib")
    before = build_parser().parse_args(["experts", "--library", where, *action])
    after = build_parser().parse_args(["experts", *action, "--library", where])
    assert before.library == after.library == where
    assert build_parser().parse_args(["experts", *action]).library is None  # the default: $T2_EXPERTS or ./experts
    # given twice, the one closest to the action wins (argparse's usual "last one wins")
    assert build_parser().parse_args(["experts", "--library", "a", *action, "--library", where]).library == where


def test_experts_list_with_library_after_the_action(library, capsys):
    assert main(["experts", "list", "--library", str(library.root)]) == 0
    assert [r.split()[0] for r in capsys.readouterr().out.splitlines()[1:]] == ["code", "math"]


def test_experts_show(library, capsys):
    assert main(["experts", "--library", str(library.root), "show", "math"]) == 0
    out = capsys.readouterr().out
    meta_text, stats = out.rsplit("\n}", 1)
    assert json.loads(meta_text + "}")["domain"] == "math"
    import torch

    z = torch.cat(list(library.get("math").z.values()))
    z_line, records_line = stats.strip().splitlines()
    assert records_line.startswith("records: none")
    assert z_line == (f"z: 384 values over 6 matrices; mean {z.mean():.4f} std {z.std():.4f} "
                             f"min {z.min():.4f} max {z.max():.4f}")


def test_experts_show_accepts_a_path_outside_the_library(svf, tmp_path, capsys):
    from transformer_squared.experts import Expert

    folder = Expert.for_model(svf, domain="elsewhere").save(tmp_path / "out" / "e")
    assert main(["experts", "--library", str(tmp_path / "lib"), "show", str(folder.resolve())]) == 0
    assert '"domain": "elsewhere"' in capsys.readouterr().out


def test_experts_mix_and_rm(library, capsys):
    root = str(library.root)
    assert main(["experts", "--library", root, "mix", "math=0.25", "code=0.75", "--out", "blend"]) == 0
    assert "saved blend: 0.25·math + 0.75·code" in capsys.readouterr().out
    blend, math, code = library.get("blend"), library.get("math"), library.get("code")
    for n in blend.z:
        assert blend.z[n].sub(0.25 * math.z[n] + 0.75 * code.z[n]).abs().max() < 1e-6
    assert main(["experts", "--library", root, "mix", "math=1", "--out", "blend"]) == 2
    assert "'blend' already exists" in capsys.readouterr().err
    assert main(["experts", "--library", root, "rm", "blend"]) == 0
    assert "removed blend" in capsys.readouterr().out
    assert library.names() == ["code", "math"]


ERRORS = {  # case: (argv, run with `--library LIB` after the verb; what stderr must say)
    "mix-no-equals": (["experts", "mix", "math:0.5", "--out", "m"], "bad weight 'math:0.5': write NAME=WEIGHT"),
    "mix-not-a-number": (["experts", "mix", "math=half", "--out", "m"], "bad weight 'math=half'"),
    "mix-unknown": (["experts", "mix", "nope=1", "--out", "m"], "no expert 'nope'"),
    "show-unknown": (["experts", "show", "nope"], "no expert 'nope'"),
    "rm-escape": (["experts", "rm", "../math"], "invalid expert name '../math'"),
    "init-bad-name": (["experts", "init", "--name", "bad name"], "invalid expert name 'bad name'"),
    "generate-unknown": (["generate", "--expert", "nope", "hi"], "no expert 'nope'"),
    "export-unknown": (["export", "--expert", "nope", "--out", "x"], "no expert 'nope'"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_exit_2_with_a_message_before_loading_any_model(case, library, monkeypatch, capsys):
    import transformer_squared.svf

    argv, message = ERRORS[case]

    def no_model(*args, **kwargs):
        raise AssertionError("the error should be reported before a model is loaded")

    monkeypatch.setattr(transformer_squared.svf, "load_svf", no_model)
    verb, rest = argv[0], argv[1:]
    assert main([verb, "--library", str(library.root), *rest]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"t2 {verb}: error: ") and message in err, err
    assert library.names() == ["code", "math"]


# -- end to end on a tiny model folder ---------------------------------------------------------------------------

def test_decompose_init_generate_export(tiny_folder, one_thread, tmp_path, capsys, input_ids):
    import torch
    from transformers import AutoModelForCausalLM

    from transformer_squared.experts import ExpertLibrary
    from transformer_squared.svf import load_svf

    model, cache, lib = str(tiny_folder), str(tmp_path / "svd"), str(tmp_path / "lib")
    assert main(["decompose", "--model", model, "--cache-dir", cache, "--targets", "all-linear"]) == 0
    out = capsys.readouterr().out
    # per layer: q, o, gate, up, down have rank 64; k, v (2 KV heads × 16) rank 32 → 2 × (5·64 + 2·32)
    assert "14 matrices (all-linear), 768 singular values = z parameters" in out

    assert main(["experts", "--library", lib, "init", "--model", model, "--cache-dir", cache, "--name", "noisy",
                 "--noise", "0.1", "--seed", "3", "--domain", "test"]) == 0
    assert "saved" in capsys.readouterr().out
    expert = ExpertLibrary(lib).get("noisy")
    assert expert.meta.base_model == model and expert.meta.targets == "mlp" and expert.meta.domain == "test"
    assert all(0.01 < (z - 1).std() < 1 for z in expert.z.values())  # identity + N(0, 0.1²) noise

    # the expert remembers its base model: no --model needed
    assert main(["generate", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--max-new-tokens", "3",
                 "hello", "world"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("> hello\n") and "\n> world\n" in captured.out
    assert captured.err.count("[expert: noisy]") == 2
    assert main(["generate", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--max-new-tokens", "3",
                 "--prepack", "hello", "world"]) == 0
    assert capsys.readouterr().out == captured.out  # oneDNN-packed linears: the same greedy answers
    assert main(["generate", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--max-new-tokens", "3",
                 "--lookup", "4", "hello", "world"]) == 0
    assert capsys.readouterr().out == captured.out  # prompt lookup decoding (float32): the same greedy answers

    out_dir = tmp_path / "merged"
    assert main(["export", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--out", str(out_dir)]) == 0
    assert f"exported noisy merged into {model}" in capsys.readouterr().out
    assert json.loads((out_dir / "t2_expert.json").read_text())["expert"] == "noisy"
    exported = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    svf = load_svf(model, cache_dir=cache, progress=False)
    with torch.no_grad(), svf.applied(expert):
        torch.testing.assert_close(exported(input_ids).logits, svf.model(input_ids).logits, atol=0, rtol=0)

    assert main(["export", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--out", str(out_dir)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--out", str(out_dir),
                 "--overwrite"]) == 0


def test_failed_export_leaves_nothing_and_restores_the_model(svf, tmp_path, random_z, input_ids, logits, monkeypatch):
    import torch

    from transformer_squared.experts import Expert
    from transformer_squared.export import export_merged

    base = logits(svf.model, input_ids)

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(svf.model, "save_pretrained", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_merged(svf, Expert.for_model(svf, random_z(svf), name="e"), tmp_path / "out" / "merged")
    assert list((tmp_path / "out").iterdir()) == []
    assert svf.active is None and torch.equal(logits(svf.model, input_ids), base)


def test_a_negative_lookup_is_refused_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--lookup", "-1", "hi"])
    assert exit_.value.code == 2
    assert "argument --lookup: must be an integer >= 0, not -1" in capsys.readouterr().err
