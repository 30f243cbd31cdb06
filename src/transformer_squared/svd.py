"""Singular value decomposition of the targeted weight matrices, cached on disk.

For every targeted ``nn.Linear`` with weight W (out, in) we store the thin SVD, computed in float32 whatever the
model's dtype:

    W = U diag(σ) Vᵀ,   U: (out, r),  σ: (r,),  Vᵀ: (r, in),  r = min(out, in)

Factors live in one float32 safetensors file per set of targeted matrices, named by a fingerprint of the float32
weights themselves (names, shapes and bytes), so a changed checkpoint can never reuse stale factors, and a bf16 and
a float32 run of the same checkpoint share one file (see precision.py). The file is opened lazily: a matrix's
factors are read the first time they are asked for, and held on the compute device (U, Vᵀ in the compute dtype,
σ in float32) once `Decomposition.to` has been called.
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
    """A content hash of each named linear's weight as float32 (name, shape, bytes).

    Hashing the float32 value, not the held dtype, makes the key independent of the compute dtype: a bf16
    checkpoint hashes the same loaded as bf16 or as float32 (the upcast is exact), and `load_svf` always
    fingerprints the float32 weights before casting."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        w = modules[name].weight.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{name}|{tuple(w.shape)}|{torch.float32}".encode())
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
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Decomposition:
        """Hold factors on `device`, U and Vᵀ in `dtype`, σ in float32 (only the held copy; the file stays float32)."""
        device = torch.device(device)
        if (device, dtype) != (self.device, self.dtype):
            self.device, self.dtype = device, dtype
            self._loaded = {n: self._place(*f) for n, f in self._loaded.items()}
        return self

    def _place(self, U, S, Vh):
        return (U.to(self.device, self.dtype), S.to(self.device, torch.float32), Vh.to(self.device, self.dtype))

    def __repr__(self) -> str:
        return (f"Decomposition({len(self.names)} matrices, fingerprint={self.fingerprint[:12]!r}, "
                f"path={str(self.path)!r})")

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, σ, Vᵀ) for one matrix: shapes (out, r), (r,), (r, in); U, Vᵀ in the held dtype, σ float32."""
        if name not in self._loaded:
            if self._file is None:
                from safetensors import safe_open

                self._file = safe_open(str(self.path), framework="pt")
            f = self._file
            self._loaded[name] = self._place(f.get_tensor(f"{name}.U"), f.get_tensor(f"{name}.S"),
                                             f.get_tensor(f"{name}.Vh"))
        return self._loaded[name]

    def rank(self, name: str) -> int:
        return self.factors(name)[1].shape[0]

    def nbytes(self) -> int:
        return self.path.stat().st_size


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def svd_factors(weight: torch.Tensor, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float32 on `device` (default: where the weight is): W = U diag(σ) Vᵀ; factors on the host."""
    w = weight.detach().to(device or weight.device, torch.float32)
    U, S, Vh = torch.linalg.svd(w, full_matrices=False)
    return U.cpu().contiguous(), S.cpu().contiguous(), Vh.cpu().contiguous()


def decompose(
    model: nn.Module,
    targets: str | list[str] = "mlp",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
    device: torch.device | str | None = None,
) -> Decomposition:
    """SVD of every targeted matrix (in float32, on `device` if given); reuses the cache when the weights'
    fingerprint matches."""
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
    tensors = factorize_all({n: modules[n].weight for n in names}, names, lambda w: svd_factors(w, device), progress)
    if tensors is not None:
        _atomic_save(tensors, path, {"schema": str(SCHEMA), "names": json.dumps(names), "fingerprint": key})
    wait_for_writer()
    return Decomposition(path, names, fingerprints)
