"""Export an expert merged into a Llama-architecture base as one GGUF file (llama.cpp, Ollama, LM Studio, and
transformers' GGUF loader).

What the file holds, written with the `gguf` package:
- the merged weights W' (the same tensors `export.export_merged` saves), named as llama.cpp names them
  (``gguf.get_tensor_name_map``: ``blk.N.ffn_gate.weight`` ...); the output head is left out when the embeddings
  are tied, which is also how readers tell a tied model;
- ``f32``: every tensor float32 (exact); ``f16``: 2-D tensors float16, norms float32; ``q8_0``: 2-D tensors in
  llama.cpp's Q8_0 (blocks of 32 values sharing one f16 scale), norms float32 — the choices llama.cpp's own
  converter makes for these types;
- the hyper-parameters under ``llama.*`` and the tokenizer (BPE tokens, types, merges, special ids) and chat
  template under ``tokenizer.*``, taken from the loaded Hugging Face tokenizer. llama.cpp also needs the name of
  the pre-tokenizer (its regex); it is copied from the base's own GGUF when the base came from one (the bundled
  default model), and is ``default`` otherwise.

The Q/K permutation. Hugging Face Llama applies RoPE to the two halves of each head (rotate_half); llama.cpp's
``LLAMA`` rope rotates adjacent pairs. llama.cpp's converter therefore reorders the rows of q_proj and k_proj within
each head, so that row 2i holds HF row i and row 2i+1 holds HF row i + d/2 (d = head_dim):

    W_gguf = W.reshape(n_heads, 2, d/2, in).swapaxes(1, 2).reshape(out, in)     (k_proj: n_heads = n_kv_heads)

and transformers' GGUF loader undoes exactly this (``LlamaTensorProcessor``). It is a permutation of rows, hence
lossless. Other architectures are refused: their tensor layouts and metadata differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_file
from .errors import MissingDependency, T2Error
from .experts import Expert, ExpertError
from .svf import SVFModel

GGUF_TYPES = ("f32", "f16", "q8_0")
SUPPORTED = ("LlamaForCausalLM",)


def check_architecture(model) -> None:
    name = type(model).__name__
    if name not in SUPPORTED:
        raise ExpertError(f"--format gguf supports Llama-architecture models ({', '.join(SUPPORTED)}) only, not "
                          f"{name}; use --format hf or --format lora for this model")
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExpertError(f"--format gguf: RoPE scaling {rope.get('rope_type')!r} is not supported (plain RoPE only); "
                          "use --format hf or --format lora")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExpertError("--format gguf: Llama models with linear biases are not supported; use --format hf or lora")


def permute_qk(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate_half row order → llama.cpp adjacent-pair order, per head: (out, in) -> (out, in)."""
    out = weight.shape[0]
    return weight.reshape(n_heads, 2, out // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_data(array: np.ndarray, gguf_type: str, gguf):
    """(data, raw_dtype) as GGUFWriter.add_tensor wants them; 1-D tensors (norms) stay float32."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or gguf_type == "f32":
        return array, None
    if gguf_type == "f16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.Q8_0
    if array.shape[-1] % 32:
        raise ExpertError(f"--gguf-type q8_0 needs rows that are a multiple of 32 values (got {array.shape[-1]}); use f16")
    return gguf.quants.quantize(array, qtype), qtype


def _source_pre_tokenizer(model_id: str, gguf) -> str:
    from .models import resolve_model

    try:
        path = resolve_model(model_id)
    except T2Error:  # a bundled model whose package is gone: no source GGUF to copy the name from
        return "default"
    if not str(path).endswith(".gguf") or not Path(path).is_file():
        return "default"
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else "default"


def _add_tokenizer(writer, tokenizer, vocab_size: int, pre: str, gguf) -> None:
    """BPE (gpt2-style byte-level) tokenizer: tokens by id, their types, merges, special ids, chat template."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE":
        raise ExpertError(f"--format gguf: only byte-level BPE tokenizers are supported (this one is "
                          f"{model.get('type')!r}); use --format hf or --format lora")
    n = len(tokenizer)
    if n > vocab_size:
        raise ExpertError(f"--format gguf: the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    T = gguf.TokenType
    types = [T.CONTROL if t in special else T.USER_DEFINED if t in added else T.NORMAL for t in tokens]
    tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]  # embeddings no token uses, as llama.cpp pads them
    types += [T.UNUSED] * (vocab_size - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _add_hyperparameters(writer, config) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def export_gguf(svf: SVFModel, expert: Expert | None, out: str | os.PathLike, gguf_type: str = "f16",
                overwrite: bool = False) -> Path:
    """Write `expert` merged into svf's base (None: the base itself) as one .gguf file, atomically."""
    try:
        import gguf
    except ImportError:
        raise MissingDependency("GGUF export needs the gguf package: run `pip install gguf`") from None
    out = Path(out)
    if gguf_type not in GGUF_TYPES:
        raise ExpertError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    if out.suffix != ".gguf":
        raise ExpertError(f"--out {out}: a GGUF export is one file; name it NAME.gguf")
    if out.exists() and not (overwrite and out.is_file()):
        raise ExpertError(f"{out} already exists; pass --overwrite or choose another file")
    model, config = svf.model, svf.model.config
    check_architecture(model)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(f"{expert.name if expert is not None else 'base'} ({svf.model_id})")
        if expert is not None:
            writer.add_description(f"Transformer² SVF expert {expert.name!r} merged into {expert.meta.base_model}")
        _add_hyperparameters(writer, config)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, svf.tokenizer, config.vocab_size, _source_pre_tokenizer(svf.model_id, gguf), gguf)
        with svf.applied(expert):
            for hf_name, tensor in model.state_dict().items():
                if tied and hf_name == "lm_head.weight":
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExpertError(f"--format gguf: no llama.cpp name for tensor {hf_name}")
                w = tensor.detach().float().cpu()
                if hf_name.endswith("q_proj.weight"):
                    w = permute_qk(w, config.num_attention_heads)
                elif hf_name.endswith("k_proj.weight"):
                    w = permute_qk(w, config.num_key_value_heads)
                data, raw = _tensor_data(w.numpy(), gguf_type, gguf)
                writer.add_tensor(name, data, raw_dtype=raw)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    return out
