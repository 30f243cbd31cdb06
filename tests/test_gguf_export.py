"""GGUF export (gguf_export.py): the file read back by transformers' GGUF loader gives the merged model's logits
(f32 exactly, f16/q8_0 within their rounding), carries the tokenizer and chat template, refuses other
architectures in one line, and writes atomically."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.experts import Expert, ExpertError
from transformer_squared.gguf_export import export_gguf, permute_qk

pytest.importorskip("gguf")

PROMPT = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"


def read_back(path, tokenizer: bool = False):
    """(model, tokenizer or None) from a .gguf; converting its 49k-token vocabulary costs ~15 s, so only on request."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if tokenizer else None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tok


@pytest.fixture
def tiny_svf(tiny_llama_bpe_dir, one_thread, tmp_path):
    from transformer_squared.svf import load_svf

    return load_svf(str(tiny_llama_bpe_dir), cache_dir=tmp_path / "svd", progress=False)


# Measured on this model (logits up to ~1.0, std 0.16): f32 max |Δ| = 0 (a row permutation and float32 copies are
# lossless); f16 3.4e-4 (weights rounded to 11 significant bits); q8_0 8.5e-3 (8-bit blocks of 32, f16 scale).
TOLERANCE = {"f32": 0.0, "f16": 2e-3, "q8_0": 3e-2}


@pytest.mark.parametrize("gguf_type", list(TOLERANCE))
def test_read_back_by_transformers_gives_the_merged_logits(tiny_svf, random_z, tmp_path, gguf_type):
    svf = tiny_svf
    expert = Expert.for_model(svf, random_z(svf, 0.3), name="e")
    ids = svf.tokenizer([PROMPT], return_tensors="pt").input_ids
    with torch.no_grad():
        base = svf.model(ids).logits
        with svf.applied(expert):
            want = svf.model(ids).logits
    assert (want - base).abs().max() > 1e-2  # the expert visibly changes the model
    path = export_gguf(svf, expert, tmp_path / f"e-{gguf_type}.gguf", gguf_type)
    model, tokenizer = read_back(path, tokenizer=gguf_type == "f32")
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, want, atol=TOLERANCE[gguf_type], rtol=0)
    assert svf.active is None  # the base is back in the model after the export
    if gguf_type == "f32":
        assert model.config.tie_word_embeddings
        text = "Hello world! 123 héllo " + PROMPT
        assert tokenizer(text).input_ids == svf.tokenizer(text).input_ids
        assert tokenizer.chat_template == svf.tokenizer.chat_template
        assert (tokenizer.eos_token_id, tokenizer.bos_token_id) == (svf.tokenizer.eos_token_id, svf.tokenizer.bos_token_id)


def test_qk_permutation_is_the_one_transformers_reverses():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)  # 8 heads of 16 rows
    forward = permute_qk(w, 8)
    assert not torch.equal(forward, w) and torch.equal(forward.sort(0).values, w.sort(0).values)  # a row permutation
    back = LlamaTensorProcessor()._reverse_permute_weights(forward.numpy(), 8, 8)
    assert torch.equal(torch.from_numpy(back), w)


def test_other_architectures_refused_in_one_line(tiny_model, make_svf, tmp_path):
    svf = make_svf(tiny_model("qwen2"))
    with pytest.raises(ExpertError, match=r"supports Llama-architecture models \(LlamaForCausalLM\) only, not "
                                          r"Qwen2ForCausalLM") as err:
        export_gguf(svf, Expert.for_model(svf, name="e"), tmp_path / "e.gguf", "f32")
    assert "\n" not in str(err.value) and not list(tmp_path.glob("*.gguf"))


def test_bad_output_and_failed_write_leave_nothing(tiny_svf, tmp_path, monkeypatch):
    import gguf

    expert = Expert.for_model(tiny_svf, name="e")
    with pytest.raises(ExpertError, match="name it NAME.gguf"):
        export_gguf(tiny_svf, expert, tmp_path / "e.bin", "f32")
    (tmp_path / "e.gguf").write_bytes(b"x")
    with pytest.raises(ExpertError, match="already exists; pass --overwrite"):
        export_gguf(tiny_svf, expert, tmp_path / "e.gguf", "f32")

    def failing(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", failing)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_svf, expert, tmp_path / "out" / "e.gguf", "f16")
    assert list((tmp_path / "out").iterdir()) == []
    assert tiny_svf.active is None


def test_cli_export_gguf(tiny_llama_bpe_dir, one_thread, tmp_path, capsys):
    from transformer_squared.cli import main

    model, cache, lib = str(tiny_llama_bpe_dir), str(tmp_path / "svd"), str(tmp_path / "lib")
    assert main(["experts", "--library", lib, "init", "--model", model, "--cache-dir", cache, "--name", "noisy",
                 "--noise", "0.1"]) == 0
    capsys.readouterr()
    out = tmp_path / "noisy.gguf"
    assert main(["export", "--library", lib, "--cache-dir", cache, "--expert", "noisy", "--format", "gguf",
                 "--gguf-type", "q8_0", "--out", str(out)]) == 0
    assert "as GGUF (q8_0)" in capsys.readouterr().out and out.stat().st_size > 0


@pytest.mark.integration
@pytest.mark.slow
def test_default_model_expert_gguf_matches_the_merged_model(tmp_path, one_thread):
    """The bundled SmolLM2 (llama arch, 30 layers): f16 export read back gives the merged model's next-token choice
    and logits within f16 rounding; the pre-tokenizer name is carried over from the source GGUF."""
    import gguf

    from conftest import noisy_z
    from transformer_squared.svf import load_svf

    svf = load_svf("default", progress=False)
    expert = Expert.for_model(svf, noisy_z(svf, 0.05), name="e")
    ids = svf.tokenizer([PROMPT], return_tensors="pt").input_ids
    with torch.no_grad(), svf.applied(expert):
        want = svf.model(ids).logits
    path = export_gguf(svf, expert, tmp_path / "e.gguf", "f16")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "smollm"
    model, _ = read_back(path)
    with torch.no_grad():
        got = model(ids).logits
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())
    torch.testing.assert_close(got, want, atol=0.1, rtol=0)
