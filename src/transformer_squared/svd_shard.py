"""SVD of many matrices, split over the ranks of a torch.distributed job (`torchrun ... decompose`).

Rank k factorizes matrices k, k + N, k + 2N, ... of the target list (round robin, so ranks get a similar mix of
shapes), the factors are gathered on rank 0, and rank 0 alone writes the cache file — the same file, under the same
fingerprint, with the same tensors in the same order, that one process writes. Each factorization is the same
call on the same float32 matrix as in one process, so the factors are identical wherever the linear algebra
library computes a given SVD deterministically (it does for a fixed thread count; the tests compare bitwise).
Outside a process group everything runs here, in order.
"""

from __future__ import annotations

from typing import Callable

import torch
from .progress import tqdm


def _group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def factorize_all(weights: dict[str, torch.Tensor], names: list[str], factorize: Callable, progress: bool = True
                  ) -> dict[str, torch.Tensor] | None:
    """{f"{name}.U"|".S"|".Vh": factor} for every name, on rank 0 (and in a single process); None on other ranks."""
    dist = _group()
    rank, size = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    mine: dict[str, tuple[torch.Tensor, ...]] = {}
    for name in tqdm(names[rank::size], desc="SVD" if size == 1 else f"SVD rank {rank}/{size}", unit="matrix",
                     disable=not progress):
        mine[name] = tuple(t.cpu() for t in factorize(weights[name]))
    if dist:
        parts = [None] * size if rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if rank != 0:
            return None
        mine = {n: f for part in parts for n, f in part.items()}
    tensors: dict[str, torch.Tensor] = {}
    for name in names:  # the single-process order, whoever computed it
        tensors[f"{name}.U"], tensors[f"{name}.S"], tensors[f"{name}.Vh"] = mine[name]
    return tensors


def wait_for_writer() -> None:
    """Every rank returns only once rank 0 has written the file."""
    dist = _group()
    if dist:
        dist.barrier()
