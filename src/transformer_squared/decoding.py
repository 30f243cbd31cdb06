"""Faster small-batch decoding on the CPU: linear layers that read a oneDNN-prepacked copy of their weight.

At batch 1 a decode step is a few hundred matrix-vector products (211 for SmolLM2-135M), and `F.linear` on the
row-major weight is slower than oneDNN's `_linear_pointwise` on the same weight reordered once into oneDNN's blocked
layout: 1.4-1.8× per product in bf16 (the LM head 2.5×); in float32 only the LM head gains (1.6×). `prepacked(model)`
makes every `nn.Linear` use such a packed copy while it is active; the packing is what inductor's `freezing` does to
linears, without compiling. Whole decode: ~1.3× tokens/s in bf16 at batch 1 (BENCHMARKS.md, "Batch-1 decode:
prepacked linears, static cache, torch.compile", also says why compiling did not pay here).

The packed path is taken only where it computes the same function: under `torch.no_grad()` (the op has no
backward), on the CPU, in float32 or bfloat16, with input and weight of one dtype. Anything else — autograd,
another device, fp16 — runs the plain `nn.Linear.forward`, so the context is safe around any code.

Weight changes. A layer's pack is remade on its next call when its weight is another tensor (`lin.weight.data = W'`,
as SVFModel.apply and .remove do) or was changed in place through the parameter (its version counter moved). The
pack holds a reference to the tensor it was made from, so an address cannot be freed and reused while the pack
lives. Not seen: in-place writes through `.data` (`weight.data += delta`, as PEFT's merge_adapter does), which bump
no counter — call `invalidate(model)` after those. Packs are dropped when the outermost context exits.

Cost: one packed copy of every weight (the model's size again) and the packing itself (0.3-1.6 s for SmolLM2-135M on
one busy core, once per weight version), so it pays back over many generated tokens with unchanged weights
(`t2 generate`, `t2 chat`, `t2 serve` with a steady expert), not for one short answer per new expert (CEM).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)
_STATE = "_t2_prepacked"  # on each nn.Linear while a context is active: (source weight, its version, pack) or None
# one tuple replaced whole, so a thread reading it never sees a pack beside another weight's source


def supported(model: nn.Module) -> bool:
    """Whether `prepacked` can speed up this model: oneDNN present and weights on the CPU in float32/bfloat16."""
    weight = next((m.weight for m in model.modules() if isinstance(m, nn.Linear)), None)
    return (weight is not None and torch.backends.mkldnn.is_available() and weight.device.type == "cpu"
            and weight.dtype in PACKED_DTYPES)


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w = self.weight
    if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != w.dtype or w.dtype not in PACKED_DTYPES
            or w.device.type != "cpu" or (self.bias is not None and self.bias.dtype != w.dtype)):
        return nn.Linear.forward(self, x)
    state = getattr(self, _STATE)
    if state is None or state[0].data_ptr() != w.data_ptr() or state[1] != w._version or state[0].shape != w.shape:
        source = w.detach()  # keeps the storage alive: a new tensor can never reuse this address while packed
        state = (source, w._version, torch.ops.mkldnn._reorder_linear_weight(source, 1))  # 1: batch-size hint
        setattr(self, _STATE, state)
    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), state[2], self.bias, "none", [], "")
    return y.reshape(*shape[:-1], y.shape[-1])  # (..., out_features)


def invalidate(model: nn.Module) -> None:
    """Forget every pack of `model` (after writing weights in place through `.data`); the next call repacks."""
    for m in model.modules():
        if hasattr(m, _STATE):
            setattr(m, _STATE, None)


@contextmanager
def prepacked(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Inside, the model's linears run on packed weights where they can (see the module docstring); nested uses
    share the outer packs. A no-op when not `enabled` or when the model is not `supported`."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not enabled or not supported(model) or any(hasattr(m, _STATE) for m in linears):
        yield model
        return
    for m in linears:
        setattr(m, _STATE, None)
        m.forward = types.MethodType(_packed_forward, m)  # an instance attribute: the class's forward is untouched
    try:
        yield model
    finally:
        for m in linears:
            del m.forward
            delattr(m, _STATE)
