"""Where the project keeps what it makes: one root, `$T2_CACHE`, else ~/.cache/transformer_squared.

An empty `T2_CACHE` counts as unset (as a shell's `T2_CACHE= t2 ...` means), so every caller agrees on the root.
Below it: models/ (converted checkpoints), svd/ (SVD factors), demo/ (the demo's experts and runs).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$T2_CACHE` when set and not empty, else ~/.cache/transformer_squared."""
    return Path(os.environ.get("T2_CACHE") or Path.home() / ".cache" / "transformer_squared")
