"""Batched step-by-step decoding with a KV cache, where each row of the batch may use its own expert.

One batch runs under one of two weight set-ups (W' = U diag(σ') Vᵀ, see svf.py):

- ``merged``  every row uses the same weights: `svf.apply(expert)` writes W' into the model (a pointer swap when
              its merged weights are cached), and the batch costs what the base model costs.
- ``rows``    rows use different experts: `svf.factored()` swaps every target for an SVFLinear and each layer's
              ``row_sigma`` (B, r) holds every row's σ' = sigma(z_row, σ), so one forward pass serves all experts
              at once with no weight switching. Base rows get σ' = σ.

Either way the model is back at its base weights when `decode_batch` returns or raises.

Decoding: prompts are left-padded; positions count real tokens only (as `generate` numbers them), so a row decodes
exactly as it would alone, up to float rounding. After the prefill, each step feeds one token per running row and
reuses the cache. Rows that finish (eos, their token budget, or the caller stops them) are dropped from the
cache, the mask and ``row_sigma`` before the next step, so finished rows cost nothing. Sampling: greedy at
temperature 0, otherwise temperature + top-p with a per-row generator (seeded requests are reproducible).
Simplified: no repetition penalties, no logprobs, no continuous batching (a batch runs until its last row ends).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..svf import sigma

MODES = ("merged", "rows")


@dataclass
class Row:
    """One sequence of a batch: its prompt, budget, sampling and expert; decoding fills `tokens`."""

    ids: list[int]  # prompt token ids
    max_tokens: int
    expert: object | None = None  # Expert (possibly a mixture) or None for the base weights
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    generator: torch.Generator | None = None  # for sampled rows
    tokens: list[int] = field(default_factory=list)  # generated ids, eos excluded
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"; set => the row leaves the batch
    owner: object = None  # the caller's handle (the engine's Request)

    @property
    def key(self) -> str | None:
        """Rows with the same key share weights."""
        return self.expert.key if self.expert is not None else None


@dataclass
class DecodeStats:
    prefill_s: float = 0.0
    steps: int = 0  # decode steps after the prefill
    step_s: float = 0.0  # their total wall time
    tokens: int = 0


def _cache_kw(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _row_sigma(name: str, S: torch.Tensor, experts: list) -> torch.Tensor:
    """(B, r): each row's σ' for matrix `name` (σ itself for base rows)."""
    return torch.stack([S if e is None else sigma(e.z[name], S, e.parametrization, e.max_mult) for e in experts])


@contextmanager
def batch_weights(svf, rows: list[Row], mode: str) -> Iterator[Callable[[torch.Tensor], None]]:
    """Set the model's weights for `rows`; yields `keep(indices)` that drops rows from per-row state.

    The model is returned to its base weights on exit, even on error."""
    if mode not in MODES:
        raise ValueError(f"unknown batch mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "merged":
        keys = {r.key for r in rows}
        if len(keys) != 1:
            raise ValueError("a merged batch needs every row on the same weights")
        try:
            svf.apply(rows[0].expert)
            yield lambda indices: None
        finally:
            svf.remove()
        return
    for r in rows:
        if r.expert is not None:
            r.expert.check_compatible(svf)
    with svf.factored() as layers:
        try:
            for name, layer in layers.items():
                layer.row_sigma = _row_sigma(name, layer.S, [r.expert for r in rows])  # (B, r)

            def keep(indices: torch.Tensor) -> None:
                for layer in layers.values():
                    layer.row_sigma = layer.row_sigma[indices]

            yield keep
        finally:
            for layer in layers.values():
                layer.row_sigma = None


def next_tokens(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """One token per row from (B, vocab) logits: argmax, or temperature + nucleus sampling."""
    greedy = logits.argmax(-1).tolist()
    out = []
    for i, row in enumerate(rows):
        if row.temperature <= 0:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i].float() / row.temperature, dim=-1)  # (vocab,)
        if row.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > row.top_p  # keep the smallest prefix reaching top_p
            sorted_p[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return out


@torch.no_grad()
def decode_batch(svf, rows: list[Row], mode: str, pad_id: int, eos_ids: set[int],
                 on_token: Callable[[Row], None] = lambda row: None) -> DecodeStats:
    """Decode `rows` together until each has finished.

    `on_token(row)` is called whenever a row got a new token or finished (eos or budget); it may set
    `row.finish_reason` itself (a stop string, a cancelled request) and the row then leaves the batch."""
    model, stats = svf.model, DecodeStats()
    cache_kw = _cache_kw(model)
    with batch_weights(svf, rows, mode) as keep_rows:
        P = max(len(r.ids) for r in rows)
        ids = torch.tensor([[pad_id] * (P - len(r.ids)) + r.ids for r in rows])  # (B, P)
        mask = torch.tensor([[0] * (P - len(r.ids)) + [1] * len(r.ids) for r in rows])  # (B, P)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P): real tokens count from 0
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        stats.prefill_s = time.perf_counter() - t0
        cache = getattr(out, "cache", None) or out.past_key_values
        logits = out.logits[:, -1]  # (B, vocab)
        next_pos = positions[:, -1:] + 1  # (B, 1)
        active = list(rows)
        while True:
            tokens = next_tokens(logits, active)
            for row, tok in zip(active, tokens):
                if tok in eos_ids:
                    row.finish_reason = "stop"
                else:
                    row.tokens.append(tok)
                    stats.tokens += 1
                    if len(row.tokens) >= row.max_tokens:
                        row.finish_reason = "length"
                on_token(row)
            keep = [i for i, row in enumerate(active) if row.finish_reason is None]
            if not keep:
                return stats
            if len(keep) < len(active):
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                keep_rows(index)
                mask, next_pos = mask[index], next_pos[index]
                active = [active[i] for i in keep]
                tokens = [tokens[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)  # (B, past + 1)
            t0 = time.perf_counter()
            out = model(input_ids=torch.tensor(tokens)[:, None], attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **{cache_kw: cache})
            stats.step_s += time.perf_counter() - t0
            stats.steps += 1
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
