"""Batched step-by-step decoding with a KV cache, where each row of the batch may use its own expert, and rows can
join or leave the batch at every step (continuous batching).

A `Batch` runs the model in factored mode (svf.factored(): every target is an SVFLinear, W' = U diag(σ') Vᵀ),
and each forward pass uses one of two set-ups:

- ``merged``  every row uses the same weights: each SVFLinear runs its `merged_weight` (the expert's cached W', or
              the base W) as a plain linear — the same computation as `svf.apply(expert)`, at the base model's cost.
- ``rows``    rows use different experts: each SVFLinear's ``row_sigma`` (B, r) holds every row's σ' =
              sigma(z_row, σ), so one pass serves all experts at once, no weight switching. Base rows get σ' = σ.

Switching set-ups between steps only changes layer attributes; the KV cache holds activations, not weights, so a
batch may run `rows` while mixed and `merged` once only one expert's rows remain.

Decoding: prompts are left-padded; positions count real tokens only (as `generate` numbers them), so a row decodes
as it would alone, up to float rounding. A joining row is prefilled on its own (with its own weights), then its
cache is left-padded to the batch's length (or the batch's to its) and concatenated; padding is masked, and
columns that no row attends to any more are trimmed. Rows that finish (eos, their token budget, or the caller
stops them) leave the cache, the mask and `row_sigma` before the next step. Joining needs plain `DynamicLayer`
caches (full attention); models with sliding-window layers decode one batch at a time (`can_join` is False).
Sampling: greedy at temperature 0, otherwise temperature + top-p with a per-row generator.
Simplified: no repetition penalties, no logprobs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
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
    owner: object = None  # the caller's handle (the engine's Request)
    tokens: list[int] = field(default_factory=list)  # generated ids, eos excluded
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"; set => the row leaves the batch

    @property
    def key(self) -> str | None:
        """Rows with the same key share weights."""
        return self.expert.key if self.expert is not None else None

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.tokens)


@dataclass
class DecodeStats:
    prefill_s: float = 0.0
    steps: int = 0  # decode steps after the prefills
    step_s: float = 0.0  # their total wall time
    tokens: int = 0
    steps_by_mode: dict = field(default_factory=lambda: {m: 0 for m in MODES})


def _cache_kw(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
        # the row's seeded generator lives on the host: sample there (one vocab-sized copy per sampled row)
        where = row.generator.device if row.generator is not None else probs.device
        out.append(int(torch.multinomial(probs.to(where), 1, generator=row.generator)))
    return out


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Batch:
    """Rows decoded together. Use as a context manager (it enters factored mode; the base comes back on exit,
    even on error); `release()` leaves factored mode between steps (e.g. for a strategy's pass 1)."""

    def __init__(self, svf, pad_id: int, eos_ids: set[int], on_token: Callable[[Row], None] = lambda row: None):
        """`on_token(row)` is called whenever a row got a new token or finished (eos or budget); it may set
        `row.finish_reason` itself (a stop string, a cancelled request) and the row then leaves the batch."""
        self.svf, self.pad_id, self.eos_ids, self.on_token = svf, pad_id, eos_ids, on_token
        self.cache_kw = _cache_kw(svf.model)
        self.rows: list[Row] = []
        self.cache = None
        self.mask = None  # (B, T): 1 on real tokens, T = the cache length
        self.next_pos = None  # (B, 1) position of each row's next token
        self.last = []  # each row's last generated token (the next input)
        self.stats = DecodeStats()
        self._factored = self.layers = None
        self._row_sigma_for: list[Row] | None = None  # the rows row_sigma was built for, in order

    def __len__(self) -> int:
        return len(self.rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- weights ----------------------------------------------------------------------------------------------
    def _enter(self) -> None:
        if self._factored is None:
            self._factored = self.svf.factored()
            self.layers = self._factored.__enter__()
            self._row_sigma_for = None

    def release(self) -> None:
        """Leave factored mode: the model is the plain base model until the next step."""
        if self._factored is not None:
            for layer in self.layers.values():
                layer.row_sigma = layer.merged_weight = None
            factored, self._factored, self.layers = self._factored, None, None
            factored.__exit__(None, None, None)

    def _set_weights(self, rows: list[Row], mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown batch mode {mode!r}; choose one of {', '.join(MODES)}")
        self._enter()
        if mode == "merged":
            if len({r.key for r in rows}) != 1:
                raise ValueError("a merged batch needs every row on the same weights")
            expert = rows[0].expert
            weights = self.svf.compose(expert) if expert is not None else self.svf.base_weights
            for name, layer in self.layers.items():
                layer.merged_weight, layer.row_sigma = weights[name], None
            self._row_sigma_for = None
            return
        built = self._row_sigma_for
        if built is not None and len(built) == len(rows) and all(a is b for a, b in zip(built, rows)):
            return  # already set for exactly these rows
        for name, layer in self.layers.items():
            layer.merged_weight = None
            layer.row_sigma = torch.stack([layer.S if r.expert is None else sigma(
                r.expert.z[name].to(layer.S.device), layer.S, r.expert.parametrization) for r in rows])  # (B, r)
        self._row_sigma_for = list(rows)

    # -- decoding ---------------------------------------------------------------------------------------------
    @property
    def can_join(self) -> bool:
        """Rows can join a running batch only with plain (full-attention) dynamic caches."""
        from transformers.cache_utils import DynamicLayer

        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    @torch.no_grad()
    def add(self, rows: list[Row], mode: str) -> None:
        """Prefill `rows` (with their own weights, set up as `mode`), take their first token, and join the batch."""
        if not rows:
            return
        if self.rows and not self.can_join:
            raise RuntimeError("this model's cache cannot take rows joining a running batch")
        for r in rows:
            if r.expert is not None:
                r.expert.check_compatible(self.svf)
        self._set_weights(rows, mode)
        P = max(len(r.ids) for r in rows)
        device = self.svf.model.device
        ids = torch.tensor([[self.pad_id] * (P - len(r.ids)) + r.ids for r in rows], device=device)  # (b, P)
        mask = torch.tensor([[0] * (P - len(r.ids)) + [1] * len(r.ids) for r in rows], device=device)  # (b, P)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, P): real tokens count from 0
        t0 = time.perf_counter()
        out = self.svf.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1)
        self.stats.prefill_s += time.perf_counter() - t0
        cache = getattr(out, "cache", None) or out.past_key_values
        self._merge(rows, cache, mask, positions[:, -1:] + 1)
        self._advance(out.logits[:, -1], first=len(self.rows) - len(rows))

    def _merge(self, rows: list[Row], cache, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.next_pos = list(rows), cache, mask, next_pos
            self.last = [None] * len(rows)
            return
        T = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, T, 2), _left_pad(theirs.keys, T, 2)])  # (B, H, T, D)
            mine.values = torch.cat([_left_pad(mine.values, T, 2), _left_pad(theirs.values, T, 2)])
        self.mask = torch.cat([_left_pad(self.mask, T, 1), _left_pad(mask, T, 1)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.rows += rows
        self.last += [None] * len(rows)
        self._row_sigma_for = None

    def _advance(self, logits: torch.Tensor, first: int = 0) -> None:
        """Sample the next token of rows[first:] from their (b, vocab) logits, report them, drop finished rows."""
        rows = self.rows[first:]
        for i, (row, tok) in enumerate(zip(rows, next_tokens(logits, rows)), start=first):
            if tok in self.eos_ids:
                row.finish_reason = "stop"
            else:
                row.tokens.append(tok)
                self.stats.tokens += 1
                if len(row.tokens) >= row.max_tokens:
                    row.finish_reason = "length"
            self.last[i] = tok
            self.on_token(row)
        self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if row.finish_reason is None]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.last = [self.last[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_pos = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        start = int(self.mask.any(0).int().argmax())  # columns before it are padding for every row left
        if start > 0 and self.can_join:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    @torch.no_grad()
    def step(self, mode: str) -> None:
        """One token for every row."""
        if not self.rows:
            return
        self._set_weights(self.rows, mode)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # (B, T + 1)
        t0 = time.perf_counter()
        out = self.svf.model(input_ids=torch.tensor(self.last, device=self.mask.device)[:, None], attention_mask=self.mask,
                             position_ids=self.next_pos, use_cache=True, **{self.cache_kw: self.cache})
        self.stats.step_s += time.perf_counter() - t0
        self.stats.steps += 1
        self.stats.steps_by_mode[mode] += 1
        self.next_pos = self.next_pos + 1
        self._advance(out.logits[:, -1])


def decode_batch(svf, rows: list[Row], mode: str, pad_id: int, eos_ids: set[int],
                 on_token: Callable[[Row], None] = lambda row: None) -> DecodeStats:
    """Decode `rows` together, all starting at once, until each has finished (a static batch)."""
    with Batch(svf, pad_id, eos_ids, on_token) as batch:
        batch.add(rows, mode)
        while batch.rows:
            batch.step(mode)
        return batch.stats
