"""`t2 serve`: an OpenAI-compatible HTTP server that answers each request with the base model, an expert, a
mixture of experts or self-adaptation ("auto"), and decodes requests for different experts in one batch.

    schemas.py   request bodies and response objects (OpenAI API subset + the "mixture" extension)
    registry.py  the experts being served: a live view of the library folder
    decode.py    batched decoding with a KV cache; merged weights, or per-row σ' (SVFLinear.row_sigma)
    batching.py  which of the two a batch uses, from costs measured at start-up
    engine.py    the request queue and the one worker thread that owns the model
    config.py    ServeLimits
    body_limit.py  413 for request bodies over --max-body-bytes, before they are read
    app.py       the FastAPI app (create_app)

Exports are imported lazily so that `t2 -h` needs neither fastapi nor torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"create_app": "app", "ServeLimits": "config"}
__all__ = ["ServeLimits", "create_app"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'transformer_squared.serve' has no attribute {name!r}")
