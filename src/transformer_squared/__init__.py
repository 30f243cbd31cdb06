"""transformer-squared: Transformer² self-adaptive LLMs (SVF experts, RL training, two-pass adaptation).

The public API is re-exported here and imported lazily, so `t2 -h` does not pay for torch.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

# OpenMP threads that busy-wait make torch many times slower whenever another process competes for the cores
# (a forward pass about 5x slower beside one other torch process on 2 cores; bench/bench_omp_wait.py measures it
# for generate()). Sleeping threads cost a wake-up per parallel region instead. libgomp reads
# this once, when torch loads it, so it is set here, before any module of the package imports torch; a policy you
# set yourself wins.
if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ and sys.modules["torch"].get_num_threads() > 1:
    warnings.warn("torch was imported before transformer_squared without OMP_WAIT_POLICY: its OpenMP threads spin "
                  "while they wait, which is many times slower when other processes share the cores. Set "
                  "OMP_WAIT_POLICY=PASSIVE in the environment (or import transformer_squared before torch).",
                  RuntimeWarning, stacklevel=2)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
