"""Token log-probabilities of given completions under a model, in the rollout layout.

A `Rollout` keeps the layout `generate` produces: [left-padded prompt | completion, right-padded], so every
completion starts at the same column P, and the LM head runs only on the completion columns. Training samples
rollouts (`training/rollout.py`) and trains on their log-probs; adaptation (`adapt/cem.py`) scores references
with them (`teacher_forced`), so this module sits below both.

Groups share their prompt. With K samples per prompt, the prompt is run once per group — in sampling and in the
log-prob forward (with gradient) alike — and its key/value cache is repeated K times before the completions are
run on top of it. This is exact (the same computation, de-duplicated) and removes (K−1)/K of the prompt work,
which is most of the work for short answers: SmolLM2's chat template alone adds ~30 prompt tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from .generation import chat_text, encode
from .precision import attention_for


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (N, P + C) prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # (N, P + C)
    completion_mask: torch.Tensor  # (N, C) 1 on completion tokens up to and including eos
    prompt_len: int  # P
    completions: list[str]
    group_size: int = 1  # K: rows i*K .. i*K+K-1 share one prompt

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Rollout":
        """The same rollout with its tensors on `device` (a no-op when they are there already)."""
        return Rollout(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                       self.prompt_len, self.completions, self.group_size)

    def rows(self, sl: slice) -> "Rollout":
        return Rollout(self.input_ids[sl], self.attention_mask[sl], self.completion_mask[sl], self.prompt_len,
                       self.completions[sl], self.group_size)

    def groups(self, index: list[int]) -> "Rollout":
        """The rollout of the given groups (prompts), in that order; each group keeps its K rows together."""
        K = self.group_size
        rows = torch.tensor([g * K + k for g in index for k in range(K)], dtype=torch.long)
        return Rollout(self.input_ids[rows], self.attention_mask[rows], self.completion_mask[rows], self.prompt_len,
                       [self.completions[i] for i in rows.tolist()], K)

    def chunks(self, max_tokens: int = 8192) -> list[slice]:
        """Row slices of about `max_tokens` tokens each, whole groups only (bounds the logits in memory)."""
        K = self.group_size
        step = max(1, max_tokens // (self.input_ids.shape[1] * K)) * K
        return [slice(i, i + step) for i in range(0, len(self), step)]


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows


def cache_kwarg(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def prefill(model, ids: torch.Tensor, mask: torch.Tensor, repeats: int):
    """Run the prompt once per group; returns (cache repeated K times, logits of the last prompt position)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(repeats)
    return cache, out.logits[:, -1].repeat_interleave(repeats, dim=0)  # (N, V)


def teacher_forced(tokenizer, prompts: list, completions: list[str], system: str | None = None) -> Rollout:
    """A rollout built from given completions (SFT targets), eos appended, in the same layout."""
    return _given(tokenizer, [chat_text(tokenizer, p, system) for p in prompts], completions, eos=True)


def continuations(tokenizer, contexts: list[str], texts: list[str]) -> Rollout:
    """A rollout of `texts` right after raw `contexts` (no chat template, no eos): log-likelihood scoring, as
    lm-evaluation-harness scores an option after its question."""
    return _given(tokenizer, contexts, texts, eos=False)


def _given(tokenizer, texts: list[str], completions: list[str], eos: bool) -> Rollout:
    batch = encode(tokenizer, texts)
    eos = [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else []
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + eos for c in completions]
    C = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    new = torch.tensor([x + [pad] * (C - len(x)) for x in ids])
    cmask = torch.tensor([[1.0] * len(x) + [0.0] * (C - len(x)) for x in ids])
    return Rollout(torch.cat([batch["input_ids"], new], 1), torch.cat([batch["attention_mask"], cmask.long()], 1),
                   cmask, batch["input_ids"].shape[1], list(completions))


def token_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """log π(token | prefix) for every completion token: (N, C), zero where completion_mask is 0."""
    rollout = rollout.to(model.device)
    with attention_for(model.device, _attention_size(model, rollout)):
        logits = _completion_logits(model, rollout)
    return target_logprobs(logits, rollout.input_ids[:, rollout.prompt_len:]) * rollout.completion_mask


def _attention_size(model, rollout: Rollout) -> int:
    """B × H × Lq × Lk of the largest attention in `_completion_logits`: the whole rows (K = 1), else the larger of
    the shared prompt prefill and the completions over prompt + completion."""
    N, L = rollout.input_ids.shape
    P, K = rollout.prompt_len, rollout.group_size
    heads = getattr(getattr(model, "config", None), "num_attention_heads", 1)
    size = N * L * L if K == 1 else max(N // K * P * P, N * (L - P) * L)
    return heads * size


def _rows_per_chunk(logits: torch.Tensor) -> int:
    """Rows of logits per float32 chunk: ~2 MiB on the CPU (it stays in cache), ~256 MiB elsewhere (few launches)."""
    elements = 1 << 19 if logits.device.type == "cpu" else 1 << 26
    return max(1, elements // logits.shape[-1])


class _TargetLogProb(torch.autograd.Function):
    """log softmax(x)[t] = x_t − logsumexp(x), in float32 from logits of any dtype, one chunk of rows at a time.

    Backward: ∂/∂x_j = g · (1[j = t] − softmax(x)_j), recomputed per chunk from the saved logits and logsumexp and
    cast once to the logits' dtype. The same values as log_softmax(x.float()).gather(t) and its autograd gradient
    (up to float32 rounding order), without the float32 copy, the full log-softmax and the zero-filled gather
    gradient of every logit: 2.7x faster forward+backward on 32×16 bf16 rows of a 49,152-token vocabulary, 3x
    without grad (BENCHMARKS.md, "Precision")."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat, tgt = logits.reshape(-1, logits.shape[-1]), target.reshape(-1, 1)
        rows = _rows_per_chunk(logits)
        lse = torch.cat([torch.logsumexp(flat[s:s + rows].float(), dim=-1) for s in range(0, flat.shape[0], rows)])
        ctx.save_for_backward(logits, target, lse)
        return (flat.gather(1, tgt).squeeze(1).float() - lse).view(target.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, target, lse = ctx.saved_tensors
        flat, tgt = logits.reshape(-1, logits.shape[-1]), target.reshape(-1, 1)
        g = grad_out.reshape(-1, 1).float()
        grad = torch.empty_like(flat)
        rows = _rows_per_chunk(logits)
        for s in range(0, flat.shape[0], rows):
            part = torch.exp(flat[s:s + rows].float() - lse[s:s + rows, None]).mul_(-g[s:s + rows])
            grad[s:s + rows] = part.scatter_add_(1, tgt[s:s + rows], g[s:s + rows])
        return grad.view_as(logits), None


def target_logprobs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(…, V) logits, (…) token ids -> (…) float32 log-probabilities of those tokens (precision rule 6)."""
    return _TargetLogProb.apply(logits, target)


def _completion_logits(model, rollout: Rollout) -> torch.Tensor:
    """(N, C, V) logits predicting each completion token; a group of K rows shares one prompt prefill."""
    P, C, K = rollout.prompt_len, rollout.completion_mask.shape[1], rollout.group_size
    target = rollout.input_ids[:, P:]  # (N, C)
    if K == 1:
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=positions(rollout.attention_mask), logits_to_keep=C + 1,
                       use_cache=False).logits[:, :-1]  # (N, C, V): predicts columns P..P+C-1
    else:
        cache, first = prefill(model, rollout.input_ids[::K, :P], rollout.attention_mask[::K, :P], K)
        rest = model(input_ids=target, attention_mask=rollout.attention_mask,
                     position_ids=positions(rollout.attention_mask)[:, P:], use_cache=True,
                     **{cache_kwarg(model): cache}).logits[:, :-1]  # (N, C-1, V)
        logits = torch.cat([first.unsqueeze(1), rest], dim=1)  # (N, C, V)
    return logits
