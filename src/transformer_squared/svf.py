"""Singular Value Fine-tuning: scale each targeted matrix's singular values by a trainable vector z.

With W = U diag(σ) Vᵀ (see `svd.py`), an expert is one vector per matrix and the adapted weight is

    W' = U diag(σ') Vᵀ,   σ' = sigma(z, σ)

Two parametrizations of σ' (chosen when an expert is made and recorded in it):

- ``paper``      σ' = σ ⊙ z, z initialised to 1. W' is linear in z, so a mixture of experts is exactly the
                 same mixture of their merged weights: W'(Σ αₖ zₖ) = Σ αₖ W'(zₖ).
- ``reference``  as SakanaAI/self-adaptive-llms does it: m = sigmoid(z), σ' = σ ⊙ m · (Σσ / Σ(σ ⊙ m)),
                 i.e. the sum of singular values is preserved. z is initialised to 0.1 everywhere (the reference
                 adds small noise; we keep it uniform so that the initial expert reproduces the base exactly —
                 a uniform m is undone by the rescaling). Mixtures mix z, as the reference code does; W' is not
                 linear in z here, so they are composed from scratch.
                 The official code multiplies m by a constant `max_mult`; it cancels (with s = σ ⊙ sigmoid(z) · c,
                 σ' = s · Σσ / Σs is the same for every c > 0), so it is not a parameter here. Experts saved
                 when it was still recorded load unchanged (experts/expert.py drops the field).

Two execution modes:

- merged:   W' is written into the layer (a pointer swap of ``weight``); inference costs exactly what the base
            costs. The original tensor is kept and put back on removal, so the base is restored bit-exactly.
- factored: ``SVFLinear`` computes y = U (σ' ⊙ (Vᵀ x)) + b without building W'. z is the only parameter with
            a gradient (named ``svf_z``), and each row of a batch may carry its own σ' (different experts in one
            batch). Used for training and mixed-expert batches.

Composing W' scales U's columns and does one matmul — never a dense diag(σ') matrix. A merged weight is composed
as W + U diag(σ' − σ) Vᵀ with float32 accumulation and cast once (equal to U diag(σ') Vᵀ since W = U diag(σ) Vᵀ;
the base comes back bit-exactly at σ' = σ in every dtype). Precision and device rules: see precision.py.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .svd import Decomposition, decompose

PARAMETRIZATIONS = ("paper", "reference")
REFERENCE_INIT = 0.1


def init_z(rank: int, parametrization: str = "paper") -> torch.Tensor:
    """The z that reproduces the base weight."""
    if parametrization == "paper":
        return torch.ones(rank)
    if parametrization == "reference":
        return torch.full((rank,), REFERENCE_INIT)
    raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {', '.join(PARAMETRIZATIONS)}")


def sigma(z: torch.Tensor, S: torch.Tensor, parametrization: str = "paper") -> torch.Tensor:
    """Adapted singular values σ' for z; z may carry leading batch dimensions (..., r)."""
    if parametrization == "paper":
        return S * z
    if parametrization == "reference":
        scaled = S * torch.sigmoid(z)  # the official code's max_mult factor would cancel below (module docstring)
        return scaled * (S.sum() / scaled.sum(dim=-1, keepdim=True))
    raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {', '.join(PARAMETRIZATIONS)}")


def compose_weight(U: torch.Tensor, sigma_: torch.Tensor, Vh: torch.Tensor, dtype: torch.dtype,
                   base: torch.Tensor | None = None, S: torch.Tensor | None = None) -> torch.Tensor:
    """W' = U diag(σ') Vᵀ by scaling U's columns: (out, r) * (r,) @ (r, in) -> (out, in), in float32, cast once.

    With the base weight W and its σ: W' = W + U diag(σ' − σ) Vᵀ (exactly W where σ' = σ). Factors held below
    float32 are multiplied in their own dtype — the GEMM accumulates in float32 (oneDNN, cuBLAS), 3× faster than a
    float32 GEMM on bf16 hardware — so only the change U diag(σ' − σ) Vᵀ is rounded once; it is added to W in
    float32 and the sum cast once."""
    if base is None:
        return ((U.float() * sigma_.float()) @ Vh.float()).to(dtype)
    delta = sigma_.float() - S.float()
    if not delta.any():
        return base.detach().to(dtype)  # the base itself (a view, never a Parameter), no copy
    if U.dtype == torch.float32:
        return torch.addmm(base.float(), U * delta, Vh.float()).to(dtype)
    change = (U * delta.to(U.dtype)) @ Vh  # (out, in), float32 accumulation inside the GEMM
    if base.dtype == change.dtype == dtype:  # adding two bf16/fp16 tensors computes in float32 and rounds once:
        return base.detach() + change  # the same bits as the float32 sum cast, without two float32 copies (4x faster)
    return (base.float() + change.float()).to(dtype)


class SVFLinear(nn.Module):
    """Factored SVF layer: y = U (σ' ⊙ (Vᵀ x)) + b, with σ' from the trainable ``svf_z``.

    Two switches serve the trainer without swapping modules: ``merge()`` composes W' once and runs as a plain
    linear (fast rollouts under no_grad), and ``use_base`` runs the untouched base weight (reference log-probs for
    the KL penalty).
    """

    def __init__(self, base: nn.Linear, U, S, Vh, z: torch.Tensor, parametrization: str = "paper"):
        super().__init__()
        self.base = base  # its weight is the base W; never modified here
        self.register_buffer("U", U, persistent=False)  # (out, r)
        self.register_buffer("S", S, persistent=False)  # (r,)
        self.register_buffer("Vh", Vh, persistent=False)  # (r, in)
        self.svf_z = nn.Parameter(z.detach().to(S.device, torch.float32, copy=True))  # (r,) float32 master copy
        self.parametrization = parametrization
        self.row_sigma: torch.Tensor | None = None  # (B, r): per-row σ' overriding svf_z (mixed-expert batches)
        self.merged_weight: torch.Tensor | None = None
        self.use_base = False

    def extra_repr(self) -> str:
        mode = "base" if self.use_base else "per-row σ'" if self.row_sigma is not None else \
            "merged" if self.merged_weight is not None else "factored"
        return f"rank={self.S.shape[0]}, parametrization={self.parametrization!r}, mode={mode}"

    def sigma(self) -> torch.Tensor:
        return sigma(self.svf_z, self.S, self.parametrization)

    @torch.no_grad()
    def merge(self) -> None:
        self.merged_weight = compose_weight(self.U, self.sigma(), self.Vh, self.base.weight.dtype,
                                            base=self.base.weight, S=self.S)

    def unmerge(self) -> None:
        self.merged_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_base:
            return self.base(x)
        if self.merged_weight is not None and self.row_sigma is None:
            return nn.functional.linear(x, self.merged_weight, self.base.bias)
        h = x.to(self.Vh.dtype) @ self.Vh.T  # (B, T, r), compute dtype
        if self.row_sigma is not None:  # σ' is float32 (from z); cast where it meets the activations
            h = h * self.row_sigma.to(h.dtype).view(self.row_sigma.shape[0], *([1] * (h.dim() - 2)), -1)
        else:
            h = h * self.sigma().to(h.dtype)
        y = h @ self.U.T  # (B, T, out)
        if self.base.bias is not None:
            y = y + self.base.bias
        return y.to(x.dtype)


class SVFModel:
    """A model with its decomposition: applies experts (merged), or swaps in factored layers for training.

    Merged weights are cached per expert up to ``cache_bytes`` (least recently used evicted), so switching back to
    an expert already seen is a pointer swap.
    """

    def __init__(self, model: nn.Module, decomposition: Decomposition, cache_bytes: int = 2 << 30,
                 tokenizer=None, model_id: str = "", targets: str = "mlp"):
        from .precision import model_precision

        self.model, self.decomposition = model, decomposition
        self.precision = model_precision(model)
        decomposition.to(self.precision.device, self.precision.dtype)  # factors follow the weights
        self.tokenizer, self.model_id, self.targets = tokenizer, model_id, targets
        self.names = decomposition.names
        modules = dict(model.named_modules())
        self.linears: dict[str, nn.Linear] = {n: modules[n] for n in self.names}
        self.base_weights = {n: lin.weight.data for n, lin in self.linears.items()}  # restored on remove()
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self.active: str | None = None  # cache key of the applied expert
        self._active_weights = self.base_weights
        self.factored_active = False

    def __repr__(self) -> str:
        state = "factored layers" if self.factored_active else \
            f"expert {self.active[:12]} merged" if self.active is not None else "base weights"
        return (f"SVFModel({self.model_id!r}, {type(self.model).__name__}, targets={self.targets!r}, "
                f"{len(self.names)} matrices, {state}, {len(self._cache)} cached expert(s))")

    # -- z helpers ---------------------------------------------------------------------------------------------
    def init_z(self, parametrization: str = "paper") -> dict[str, torch.Tensor]:
        return {n: init_z(self.decomposition.rank(n), parametrization) for n in self.names}

    def num_z(self) -> int:
        return sum(self.decomposition.rank(n) for n in self.names)

    # -- merged mode -------------------------------------------------------------------------------------------
    def compose(self, expert, cache: bool = True) -> dict[str, torch.Tensor]:
        """Merged weights W' for an expert, from the cache when seen before.

        A `paper` mixture is built from its components' merged weights (composed once, then cached):
        W'(Σ αₖ zₖ) = Σ αₖ W'(zₖ), one axpy per component instead of a matmul per matrix.
        """
        key = expert.key
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        parts = getattr(expert, "components", None)
        if parts and expert.parametrization == "paper":
            weights = self._mix_cached([(self.compose(e), a) for e, a in parts])
        else:
            weights = {}
            for n in self.names:
                U, S, Vh = self.decomposition.factors(n)
                s = sigma(expert.z[n].to(S.device), S, expert.parametrization)
                weights[n] = compose_weight(U, s, Vh, self.base_weights[n].dtype, base=self.base_weights[n], S=S)
        if cache:
            self._store(key, weights)
        return weights

    def _mix_cached(self, parts: list[tuple[dict[str, torch.Tensor], float | dict]]) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            acc = None  # float32 accumulation, cast once
            for weights, alpha in parts:
                a = float(alpha[n]) if isinstance(alpha, dict) else float(alpha)
                acc = weights[n].float() * a if acc is None else acc.add_(weights[n].float(), alpha=a)
            out[n] = acc.to(self.base_weights[n].dtype)
        return out

    def _store(self, key: str, weights: dict[str, torch.Tensor]) -> None:
        if weights_nbytes(weights) > self.cache_bytes:
            return
        self._cache[key] = weights
        while sum(weights_nbytes(ws) for ws in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)

    def _write(self, key: str | None, weights: dict[str, torch.Tensor]) -> None:
        for n, lin in self.linears.items():
            lin.weight.data = weights[n]
        self.active, self._active_weights = key, weights

    def apply(self, expert, cache: bool = True) -> None:
        """Write the expert's W' into the model (pointer swap). Validates first: on error nothing changes."""
        if expert is None:
            return self.remove()
        if self.factored_active:
            raise RuntimeError("leave factored mode before applying a merged expert")
        expert.check_compatible(self)
        self._write(expert.key, self.compose(expert, cache=cache))

    def cached(self, expert) -> bool:
        """Whether applying `expert` is a pointer swap (its merged weights are cached; None is the base)."""
        return expert is None or expert.key in self._cache

    def remove(self) -> None:
        """Put the base weights back, bit-exactly."""
        self._write(None, self.base_weights)

    @contextmanager
    def applied(self, expert, cache: bool = True) -> Iterator[None]:
        """Apply an expert for the duration of a block; whatever was applied before comes back, even on error."""
        previous = (self.active, self._active_weights)
        self.apply(expert, cache=cache)
        try:
            yield
        finally:
            self._write(*previous)

    # -- factored mode -----------------------------------------------------------------------------------------
    @contextmanager
    def factored(self, z: dict[str, torch.Tensor] | None = None, parametrization: str = "paper"):
        """Swap every target for an SVFLinear (only ``svf_z`` trainable); yields {name: SVFLinear}."""
        if self.active is not None:
            raise RuntimeError("remove the merged expert before entering factored mode")
        z = z if z is not None else self.init_z(parametrization)
        layers = {}
        for n, lin in self.linears.items():
            U, S, Vh = self.decomposition.factors(n)
            layers[n] = SVFLinear(lin, U, S, Vh, z[n], parametrization)
        requires = {p: p.requires_grad for p in self.model.parameters()}
        for p in requires:
            p.requires_grad_(False)
        for n, layer in layers.items():
            _set_submodule(self.model, n, layer)
        self.factored_active = True
        try:
            yield layers
        finally:
            for n, lin in self.linears.items():
                _set_submodule(self.model, n, lin)
            self.factored_active = False
            for p, flag in requires.items():
                p.requires_grad_(flag)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def weights_nbytes(weights: dict[str, torch.Tensor]) -> int:
    return sum(w.numel() * w.element_size() for w in weights.values())


def load_svf(model: str = "default", targets: str = "mlp", cache_dir=None, progress: bool = True,
             cache_bytes: int = 2 << 30, device: str | torch.device | None = "auto",
             dtype: str | torch.dtype | None = "auto", force: bool = False) -> SVFModel:
    """Load a model (see models.load_model), decompose its targets (cached) and wrap it.

    The model is loaded in float32 on the host, decomposed in float32 (on the GPU if `device` is one; `force`
    recomputes a cached SVD), then cast once to the compute dtype and moved to `device`; factors follow it
    (rules: precision.py)."""
    from .models import load_model
    from .precision import cast_model, resolve, svd_device

    precision = resolve(device, dtype)
    loaded = load_model(model, dtype=torch.float32, device="cpu")
    decomposition = decompose(loaded.model, targets, cache_dir=cache_dir, progress=progress,
                              device=svd_device(precision.device), force=force)
    cast_model(loaded.model, precision)
    return SVFModel(loaded.model, decomposition, cache_bytes=cache_bytes, tokenizer=loaded.tokenizer,
                    model_id=loaded.model_id, targets=targets)
