"""Where and in which precision everything runs: one policy, used by every verb and by `load_svf`.

Device (`--device`): ``auto`` = the first CUDA GPU if there is one, else the CPU; or ``cpu``, ``cuda``,
``cuda:N``, ``mps``. A device that is asked for but absent is an error naming what is missing.

Compute dtype (`--dtype`): ``float32``, ``bfloat16``, ``float16``, or ``auto``:
- CUDA → bfloat16 (float16 where the GPU has no bf16, i.e. before Ampere);
- CPU  → bfloat16 when the CPU has native bf16 units (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo), unless
  ``T2_CPU_AUTO_BF16=0`` is set (the test suite sets it, so its tolerances do not depend on the machine);
  else float32. bf16 there was measured faster and greedy-equivalent (BENCHMARKS.md, "Precision");
- MPS and anything else → float32.

What lives in which precision (exactly as implemented):
1. Model weights are held on the device in the compute dtype. The model is loaded in float32 on the host first
   (a GGUF file is de-quantized to float32 once and that one float32 copy is cached, see models.py), the SVD is
   taken, then the model is cast once and moved (``load_svf``).
2. The SVD is computed in float32 — on the GPU when the device is one — from the float32 weights, and stored once
   on disk in float32. Its cache key is a hash of the float32 weights (svd.weight_fingerprints), never of the
   cast copy, so bf16 and float32 runs share one SVD file and one fingerprint, and experts apply across dtypes.
3. Factors are held on the device: U and Vᵀ in the compute dtype, σ in float32 (σ meets z there).
4. z and the optimiser state (the master copy) are float32; σ' = sigma(z, σ) is computed in float32 and cast to
   the compute dtype only where it multiplies activations (factored path).
5. A merged weight is composed as W' = W + U diag(σ' − σ) Vᵀ (svf.compose_weight): the change is one GEMM of
   the held factors with float32 accumulation (a float32 GEMM for float32 factors; below float32 the GEMM runs
   in the factors' dtype, accumulating in float32, and its result is rounded once), added to W in float32, and
   the sum cast once to the compute dtype. Equal to U diag(σ') Vᵀ in exact arithmetic (W = U diag(σ) Vᵀ), but
   the base comes back bit-exactly at σ' = σ in every dtype and rounding only touches the change.
6. Log-probabilities and losses are computed in float32 from the compute-dtype logits.
7. Attention in a forward whose backward will run (training log-probs) uses SDPA's math kernel on the CPU when
   its attention matrices are small (``attention_for``): the fused CPU flash kernel's backward took 16 ms a layer
   in bf16 on 32 short rows, 4x its float32 time and a third of an RL step; the math kernel (matmuls + softmax,
   differentiated by autograd) is as accurate. It keeps every B × H × Lq × Lk probability for the backward, so
   above MATH_ATTENTION_MAX of them per layer (measured: faster at 16 rows × 134 tokens, slower and +2 GB at
   16 × 234; BENCHMARKS.md) the fused kernel stays. Forward-only work (rollouts, scoring, serving) keeps the fused
   kernel, faster there.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_CHOICES = ("auto", *DTYPES)


class PrecisionError(ValueError):
    """A device or dtype that cannot be used; the message names it and the fix."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → cuda:0 if available else cpu; a named device must exist."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise PrecisionError(f"--device {spec!r}: not a device; use one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PrecisionError(f"--device {spec}: no CUDA GPU is visible to torch {torch.__version__} "
                                 "(a CPU-only build, or no driver); use --device cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise PrecisionError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) "
                                 f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PrecisionError(f"--device {spec}: Apple MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise PrecisionError(f"--device {spec!r}: unsupported; use one of {', '.join(DEVICE_CHOICES)}")


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """The native bf16 instruction set of this CPU (``amx_bf16`` / ``avx512_bf16``), or None."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        return None
    for unit in ("amx_bf16", "avx512_bf16"):
        if unit in flags:
            return unit
    return None


def resolve_dtype(spec: str | torch.dtype | None = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """The compute dtype for `device` (see the module docstring for what ``auto`` picks)."""
    if isinstance(spec, torch.dtype):
        if spec not in DTYPES.values():
            raise PrecisionError(f"--dtype {spec}: use one of {', '.join(DTYPE_CHOICES)}")
        return spec
    name = (spec or "auto").strip().lower().removeprefix("torch.")
    name = ALIASES.get(name, name)
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_bf16_units() and os.environ.get("T2_CPU_AUTO_BF16", "1") != "0":
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise PrecisionError(f"--dtype {spec!r}: use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        why = ""
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and cpu_bf16_units():
            why = f" (native {cpu_bf16_units()} units)"
        return f"{self.device} / {self.dtype_name}{why}"


def resolve(device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto") -> Precision:
    d = resolve_device(device)
    return Precision(d, resolve_dtype(dtype, d))


def svd_device(device: torch.device) -> torch.device:
    """Where the float32 SVD runs: the GPU when computing on one (fast), else the CPU."""
    return device if device.type == "cuda" else torch.device("cpu")


def model_precision(model: torch.nn.Module) -> Precision:
    """The device and dtype a model's weights are held in."""
    p = next(model.parameters())
    return Precision(p.device, p.dtype)


def cast_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Move a model to the device and cast its floating-point *parameters* to the compute dtype, once.

    Buffers keep their dtype: a blanket ``model.to(bf16)`` would also round RoPE's float32 ``inv_freq`` (which
    ``from_pretrained(dtype=bf16)`` keeps in float32), shifting every position's angle."""
    model.to(precision.device)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != precision.dtype:
                p.data = p.data.to(precision.dtype)
    contiguous_head_input(model)
    return model


MATH_ATTENTION_MAX = 4_000_000  # attention probabilities per layer (B × H × Lq × Lk) up to which rule 7 applies


def attention_for(device: torch.device | str, attention_size: int = 0):
    """The SDPA kernel choice for one forward (precision rule 7): the math kernel on the CPU when autograd will
    differentiate it and each layer's attention has at most MATH_ATTENTION_MAX probabilities (`attention_size`:
    B × H × Lq × Lk of the forward's largest attention), else whatever PyTorch picks."""
    if torch.device(device).type == "cpu" and torch.is_grad_enabled() and attention_size <= MATH_ATTENTION_MAX:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Make the LM head's input contiguous (idempotent).

    With ``logits_to_keep`` (every prefill, teacher-forced log-probs) transformers feeds the head a slice
    ``hidden[:, -k:, :]``; a 3-D non-contiguous input makes ``F.linear`` fall back to a batched matmul over a
    copied, expanded weight, several times to two orders of magnitude slower on CPU (BENCHMARKS.md measures it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_t2_contiguous_input", False):
        return
    head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    head._t2_contiguous_input = True


def checkpoint_dtype(model_id: str) -> torch.dtype:
    """The dtype a checkpoint is stored in: its config.json's ``dtype`` (or ``torch_dtype``) for a folder; float32
    for a GGUF file (de-quantized to float32) or when the config does not say."""
    import json

    config = Path(model_id).expanduser() / "config.json"
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return torch.float32
    name = str(raw.get("dtype") or raw.get("torch_dtype") or "float32")
    return DTYPES.get(ALIASES.get(name, name), torch.float32)


def cast_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's state dict with floating tensors in `dtype`; tied tensors stay one tensor (saved once)."""
    cast: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point() and t.dtype != dtype:
            key = t.data_ptr()
            if key not in cast:
                cast[key] = t.to(dtype)
            t = cast[key]
        out[name] = t
    return out
