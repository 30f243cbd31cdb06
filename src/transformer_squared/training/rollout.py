"""Sampling rollouts for training: `group_size` completions per prompt, in the `Rollout` layout of logprobs.py
(whose `token_logprobs` the objectives train on). As there, a group's prompt is prefilled once and its cache
repeated K times.

Seeded sampling. Given one seed per row, `sample` draws each token by the Gumbel-max trick from that row's own
generator, token = argmax(logits / T + G) with G = −log(−log u), u ~ U(0, 1) — an exact sample of
softmax(logits / T), whose randomness depends on the row's seed alone, not on which other rows share the batch.
The trainer seeds row k of prompt i by (seed, step, i, k), so a run's samples do not depend on how a batch is split
over processes. Without seeds, sampling uses the global torch generator as before.
"""

from __future__ import annotations

import torch

from ..generation import chat_text, encode
from ..logprobs import Rollout, cache_kwarg, prefill


def _completion_mask(new: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first eos, 0 after it."""
    if eos_id is None:
        return torch.ones_like(new, dtype=torch.float32)
    is_eos = (new == eos_id).int()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first eos
    return (~after_eos).float()


class RowGumbel:
    """Logits processor for greedy decoding that turns it into sampling at temperature T, one generator per row."""

    def __init__(self, seeds: list[int], temperature: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]  # (N, V)
        u = torch.empty(len(self.generators), V)
        for row, g in zip(u, self.generators):  # each row's uniforms from its own generator, written in place
            torch.rand(V, generator=g, out=row)
        minus_g = u.clamp_(1e-20, 1 - 1e-7).log_().neg_().log_()  # log(−log u) = −G, in place (2× faster, same bits)
        return (scores.float() / self.temperature).sub_(minus_g.to(scores.device))


@torch.no_grad()
def sample(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float = 1.0, group_size: int = 1,
           system: str | None = None, seeds: list[int] | None = None) -> Rollout:
    """`group_size` completions for each prompt, rows grouped by prompt. temperature 0 = greedy.
    `seeds`: one per row (len(prompts) × group_size) for batch-independent sampling (see the module docstring)."""
    texts = [chat_text(tokenizer, p, system) for p in prompts]
    batch = encode(tokenizer, texts).to(model.device)
    ids, mask, K = batch["input_ids"], batch["attention_mask"], group_size
    kwargs = {}
    if K > 1 and ids.shape[1] > 1:  # prefill all but the last prompt token once per group; generate does the rest
        kwargs[cache_kwarg(model)], _ = prefill(model, ids[:, :-1], mask[:, :-1], K)
    ids, mask = ids.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
    greedy = temperature <= 0
    if seeds is not None and not greedy:
        if len(seeds) != ids.shape[0]:
            raise ValueError(f"sample: {len(seeds)} seeds for {ids.shape[0]} rows")
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([RowGumbel(seeds, temperature)])  # argmax of Gumbel-perturbed logits
        greedy = True
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=not greedy,
                         temperature=None if greedy else temperature, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id, **kwargs)
    P = ids.shape[1]
    new = out[:, P:]  # (N, C)
    cmask = _completion_mask(new, tokenizer.eos_token_id)
    attention = torch.cat([mask, cmask.long()], dim=1)
    completions = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(new, cmask)]
    return Rollout(out, attention, cmask, P, completions, K)
