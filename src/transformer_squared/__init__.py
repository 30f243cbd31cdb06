"""transformer-squared: Transformer² self-adaptive LLMs (SVF experts, RL training, two-pass adaptation).

The public API is re-exported here and imported lazily, so `t2 -h` does not pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Decomposition": "svd", "decompose": "svd", "find_targets": "svd",
    "SVFLinear": "svf", "SVFModel": "svf", "load_svf": "svf",
    "Expert": "experts", "ExpertError": "experts", "ExpertLibrary": "experts", "ExpertMeta": "experts", "mix": "experts",
    "export_merged": "export",
    "GenerationConfig": "generation", "generate": "generation",
    "load_model": "models",
    "T2Error": "errors", "ModelError": "errors", "MissingDependency": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'transformer_squared' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
