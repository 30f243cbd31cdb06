"""Singular value decomposition of the targeted weight matrices, cached on disk.

For every targeted ``nn.Linear`` with weight W (out, in) we store the thin SVD, computed in float32 whatever the
model's dtype:

    W = U diag(σ) Vᵀ,   U: (out, r),  σ: (r,),  Vᵀ: (r, in),  r = min(out, in)

Factors live in one safetensors file per set of targeted matrices, named by a fingerprint of the weights
themselves (names, shapes, dtypes and bytes), so a changed checkpoint can never reuse stale factors. The file is
opened lazily: a matrix's factors are read the first time they are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_file

# Named target sets. `mlp` is the paper's choice; each pattern is searched in the module's qualified name.
TARGET_PRESETS = {
    "mlp": r"(^|\.)(mlp|feed_forward|ffn)\.",
    "attn": r"(^|\.)(self_attn|attn|attention)\.",
    "all-linear": r".",
}
SCHEMA = 1


def default_cache_dir() -> Path:
    from .paths import cache_root
    return cache_root() / "svd"


def _tied_or_output(model: nn.Module) -> set[int]:
    """ids of weights that must never be touched: input/output embeddings (tied or not)."""
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None and getattr(module, "weight", None) is not None:
            ids.add(id(module.weight))
    return ids


def find_targets(model: nn.Module, targets: str = "mlp") -> list[str]:
    """Qualified names of the linear layers selected by a preset (`mlp`, `attn`, `all-linear`) or a regex."""
    pattern = re.compile(TARGET_PRESETS.get(targets, targets))
    skip = _tied_or_output(model)
    names = []
    for name, module in model.named_modules():
        if not pattern.search(name):
            continue
        if type(module).__name__ == "Conv1D":  # GPT-2 style: weight stored (in, out)
            raise ValueError(
                f"{name} is a GPT-2 style Conv1D layer, which SVF does not support; "
                "use a model built from nn.Linear (Llama, Qwen2, Mistral, Gemma 3, ...)"
            )
        if isinstance(module, nn.Linear) and id(module.weight) not in skip:
            names.append(name)
    if not names:
        raise ValueError(f"--targets {targets!r} matches no linear layer of this model; try mlp, attn, all-linear or a regex")
    return names


def weight_fingerprints(model: nn.Module, names: list[str]) -> dict[str, str]:
    """A content hash of each named linear's weight (name, shape, dtype, bytes)."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        w = modules[name].weight.detach().contiguous().cpu()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{name}|{tuple(w.shape)}|{w.dtype}".encode())
        h.update(w.view(torch.uint8).reshape(-1).numpy().data)  # raw bytes, no copy
        out[name] = h.hexdigest()
    return out


def combine_fingerprints(fingerprints: dict[str, str], names: list[str] | None = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(names if names is not None else fingerprints):
        h.update(f"{name}={fingerprints[name]};".encode())
    return h.hexdigest()


class Decomposition:
    """The factors (U, σ, Vᵀ) of each targeted matrix, read lazily from a safetensors file."""

    def __init__(self, path: Path, names: list[str], fingerprints: dict[str, str]):
        self.path, self.names, self.fingerprints = Path(path), list(names), fingerprints
        self.fingerprint = combine_fingerprints(fingerprints, names)
        self._file = None
        self._loaded: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (f"Decomposition({len(self.names)} matrices, fingerprint={self.fingerprint[:12]!r}, "
                f"path={str(self.path)!r})")

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, σ, Vᵀ) for one matrix: shapes (out, r), (r,), (r, in), float32."""
        if name not in self._loaded:
            if self._file is None:
                from safetensors import safe_open

                self._file = safe_open(str(self.path), framework="pt")
            f = self._file
            self._loaded[name] = (f.get_tensor(f"{name}.U"), f.get_tensor(f"{name}.S"), f.get_tensor(f"{name}.Vh"))
        return self._loaded[name]

    def rank(self, name: str) -> int:
        return self.factors(name)[1].shape[0]

    def nbytes(self) -> int:
        return self.path.stat().st_size


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def svd_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float32: W = U diag(σ) Vᵀ."""
    U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return U.contiguous(), S.contiguous(), Vh.contiguous()


def decompose(
    model: nn.Module,
    targets: str | list[str] = "mlp",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> Decomposition:
    """SVD of every targeted matrix; reuses the cache when the weights' fingerprint matches."""
    names = list(targets) if isinstance(targets, list) else find_targets(model, targets)
    fingerprints = weight_fingerprints(model, names)
    key = combine_fingerprints(fingerprints, names)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
    if path.exists() and not force:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if json.loads(meta.get("names", "[]")) == names:
                    return Decomposition(path, names, fingerprints)
        except Exception:  # a corrupt cache file is recomputed, never trusted
            pass
    from .svd_shard import factorize_all, wait_for_writer

    modules = dict(model.named_modules())
    # under torchrun the ranks split the matrices and rank 0 writes the one file (see svd_shard.py)
    tensors = factorize_all({n: modules[n].weight for n in names}, names, svd_factors, progress)
    if tensors is not None:
        _atomic_save(tensors, path, {"schema": str(SCHEMA), "names": json.dumps(names), "fingerprint": key})
    wait_for_writer()
    return Decomposition(path, names, fingerprints)
