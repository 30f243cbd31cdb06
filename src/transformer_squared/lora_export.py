"""Export an SVF expert as a PEFT LoRA adapter, so multi-LoRA servers (vLLM ``--enable-lora``, LoRAX, TGI, SGLang)
can serve many experts per batch on an unmodified base model.

For a targeted matrix with W = U diag(σ) Vᵀ and the expert's σ' (computed by `svf.sigma`, the same function the
merged and factored paths use, so the ``reference`` parametrization's renormalisation is included), the update is

    ΔW = W' − W = U diag(d) Vᵀ,   d = σ' − σ        (r components, r = min(out, in))

Keeping the K components with the largest |dᵢ| is the best rank-K approximation of ΔW in the Frobenius norm (U and V
are orthonormal, so ΔW's singular values are exactly the |dᵢ|), and its error is the norm of what was dropped:

    ‖ΔW − ΔW_K‖_F = ‖d_dropped‖₂,   relative error = ‖d_dropped‖₂ / ‖d‖₂   (0 when ΔW = 0)

The factors are split symmetrically, which keeps both at the scale √|d| (better in f16/bf16 than U·d and Vᵀ):

    lora_B = U_K diag(sign(d_K) √|d_K|)   (out, K),    lora_A = diag(√|d_K|) Vᵀ_K   (K, in)

and ``lora_alpha = r = K`` so PEFT's scaling α/r is exactly 1: the adapted layer computes W x + B (A x). A matrix
whose rank is below K gets all of its components and zero rows/columns up to K (the adapter keeps one uniform rank,
which vLLM requires). ``--rank full`` takes K = the largest rank, so every component is kept and the export is exact
up to float rounding. What is lost relative to the SVF expert is only W − U diag(σ) Vᵀ, the float32 SVD's own
reconstruction error (~1e-6 relative), because PEFT adds ΔW to the original W.

Files (PEFT's own layout): ``adapter_config.json``, ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``, and ``t2_lora.json`` recording the expert, the
rank, and the relative error per matrix and overall.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_folder
from .experts import Expert, ExpertError
from .svf import SVFModel, sigma


@dataclass
class MatrixError:
    rank: int  # components kept (≤ K)
    full_rank: int  # r = min(out, in)
    delta_norm: float  # ‖ΔW‖_F = ‖d‖₂
    error: float  # ‖ΔW − ΔW_K‖_F = ‖d_dropped‖₂
    weight_norm: float  # ‖W'‖_F = ‖σ'‖₂

    @property
    def relative_error(self) -> float:
        """‖ΔW − ΔW_K‖ / ‖ΔW‖ (0 for an unchanged matrix)."""
        return self.error / self.delta_norm if self.delta_norm > 0 else 0.0


@dataclass
class LoraReport:
    out: Path
    rank: int
    matrices: dict[str, MatrixError] = field(default_factory=dict)

    def _total(self, attr: str) -> float:
        return math.sqrt(sum(getattr(m, attr) ** 2 for m in self.matrices.values()))

    @property
    def relative_error(self) -> float:
        """Over all matrices: √Σ‖dropped‖² / √Σ‖ΔW‖²."""
        delta = self._total("delta_norm")
        return self._total("error") / delta if delta > 0 else 0.0

    @property
    def relative_weight_error(self) -> float:
        """The same error relative to the adapted weights: √Σ‖dropped‖² / √Σ‖W'‖²."""
        return self._total("error") / self._total("weight_norm")

    def worst(self) -> tuple[str, float]:
        name = max(self.matrices, key=lambda n: self.matrices[n].relative_error)
        return name, self.matrices[name].relative_error

    def to_dict(self) -> dict:
        return {"rank": self.rank, "relative_error": self.relative_error,
                "relative_weight_error": self.relative_weight_error,
                "matrices": {n: {**asdict(m), "relative_error": m.relative_error} for n, m in self.matrices.items()}}


def parse_rank(value: str | int) -> int | None:
    """``--rank``: a positive integer, or ``full`` (returned as None)."""
    if isinstance(value, str) and value.strip().lower() == "full":
        return None
    try:
        rank = int(value)
    except (TypeError, ValueError):
        raise ExpertError(f"--rank {value!r}: give a positive integer (e.g. 64) or 'full'") from None
    if rank <= 0:
        raise ExpertError(f"--rank {rank}: must be at least 1 (or 'full')")
    return rank


def delta_sigma(svf: SVFModel, expert: Expert, name: str) -> torch.Tensor:
    """d = σ' − σ for one matrix: (r,)."""
    _, S, _ = svf.decomposition.factors(name)
    return sigma(expert.z[name], S, expert.parametrization) - S


def lora_factors(U: torch.Tensor, d: torch.Tensor, Vh: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_B (out, K), lora_A (K, in)) from the K components of largest |d|, zero-padded when r < K."""
    r = d.shape[0]
    keep = torch.argsort(d.abs(), descending=True, stable=True)[: min(K, r)]
    root = d[keep].abs().sqrt()
    B = torch.zeros(U.shape[0], K, dtype=U.dtype)
    A = torch.zeros(K, Vh.shape[1], dtype=Vh.dtype)
    B[:, : keep.numel()] = U[:, keep] * (torch.sign(d[keep]) * root)
    A[: keep.numel()] = root[:, None] * Vh[keep]
    return B, A


def dropped_norm(d: torch.Tensor, K: int) -> float:
    """‖d_dropped‖₂: the norm of all but the K largest |dᵢ|."""
    mags = d.abs().sort(descending=True).values
    return float(mags[K:].norm())


def target_modules(model: torch.nn.Module, names: list[str]) -> list[str]:
    """Short module names (``gate_proj``) when they select exactly the SVF targets, else the qualified names.

    PEFT matches an entry against a module's qualified name by equality or by ``.entry`` suffix, and vLLM expects
    the short form; a target regex that picks only some layers needs the qualified names to stay exact."""
    short = sorted({n.rpartition(".")[2] for n in names})
    selected = {m for m, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
                and m.rpartition(".")[2] in short}
    return short if selected == set(names) else sorted(names)


def adapter_config(rank: int, modules: list[str], base_model: str) -> dict:
    """PEFT's adapter_config.json for a plain LoRA: scaling lora_alpha / r = 1, no dropout, no bias."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model, "r": rank,
            "lora_alpha": rank, "lora_dropout": 0.0, "target_modules": modules, "bias": "none",
            "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
            "use_dora": False, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
            "rank_pattern": {}, "alpha_pattern": {}}


def export_lora(svf: SVFModel, expert: Expert, out: str | os.PathLike, rank: int | None = None,
                overwrite: bool = False) -> LoraReport:
    """Write a PEFT adapter folder for `expert` at rank `rank` (None = full: exact). Atomic: all or nothing."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not (overwrite and out.is_dir()):
        raise ExpertError(f"{out} already exists; pass --overwrite or choose another folder")
    expert.check_compatible(svf)
    max_rank = max(svf.decomposition.rank(n) for n in svf.names)
    if rank is not None and rank > max_rank:
        raise ExpertError(f"--rank {rank}: larger than the matrices' rank ({max_rank}); use at most {max_rank} or 'full'")
    K = max_rank if rank is None else rank
    report = LoraReport(out, K)
    tensors: dict[str, torch.Tensor] = {}
    for n in svf.names:
        U, S, Vh = svf.decomposition.factors(n)
        d = delta_sigma(svf, expert, n)
        B, A = lora_factors(U, d, Vh, K)
        dtype = svf.base_weights[n].dtype
        tensors[f"base_model.model.{n}.lora_A.weight"] = A.to(dtype).contiguous()
        tensors[f"base_model.model.{n}.lora_B.weight"] = B.to(dtype).contiguous()
        report.matrices[n] = MatrixError(min(K, d.shape[0]), d.shape[0], float(d.norm()), dropped_norm(d, K),
                                         float((S + d).norm()))
    config = adapter_config(K, target_modules(svf.model, svf.names), expert.meta.base_model)
    record = {"expert": expert.name, "base_model": expert.meta.base_model, "fingerprint": expert.meta.fingerprint,
              "parametrization": expert.parametrization, "alpha": expert.meta.alpha, "targets": expert.meta.targets,
              "scaling": "lora_alpha = r, so PEFT's scaling is 1: W x + lora_B (lora_A x)", **report.to_dict()}
    with atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "t2_lora.json").write_text(json.dumps(record, indent=2) + "\n")
    return report
