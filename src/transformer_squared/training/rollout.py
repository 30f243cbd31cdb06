"""Rollouts and log-probabilities.

A rollout batch keeps the layout `generate` produces: [left-padded prompt | completion, right-padded], so every
completion starts at the same column P. Log-probs are then one forward pass over that tensor, and the LM head
runs only on the completion columns (``logits_to_keep``), never on the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..generation import chat_text, encode


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (N, P + C) prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # (N, P + C)
    completion_mask: torch.Tensor  # (N, C) 1 on completion tokens up to and including eos
    prompt_len: int  # P
    completions: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, sl: slice) -> "Rollout":
        return Rollout(self.input_ids[sl], self.attention_mask[sl], self.completion_mask[sl], self.prompt_len,
                       self.completions[sl])

    def chunks(self, max_tokens: int = 8192) -> list[slice]:
        """Row slices of about `max_tokens` tokens each (bounds the (n, C, vocab) logits in memory)."""
        step = max(1, max_tokens // self.input_ids.shape[1])
        return [slice(i, i + step) for i in range(0, len(self), step)]


def _completion_mask(new: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 up to and including the first eos, 0 after it."""
    if eos_id is None:
        return torch.ones_like(new, dtype=torch.float32)
    is_eos = (new == eos_id).int()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first eos
    return (~after_eos).float()


@torch.no_grad()
def sample(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float = 1.0,
           system: str | None = None) -> Rollout:
    """Sample one completion per prompt (repeat prompts for groups). temperature 0 = greedy."""
    texts = [chat_text(tokenizer, p, system) for p in prompts]
    batch = encode(tokenizer, texts)
    greedy = temperature <= 0
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=not greedy,
                         temperature=None if greedy else temperature, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id)
    P = batch["input_ids"].shape[1]
    new = out[:, P:]  # (N, C)
    cmask = _completion_mask(new, tokenizer.eos_token_id)
    attention = torch.cat([batch["attention_mask"], cmask.long()], dim=1)
    completions = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(new, cmask)]
    return Rollout(out, attention, cmask, P, completions)


def teacher_forced(tokenizer, prompts: list, completions: list[str], system: str | None = None) -> Rollout:
    """A rollout built from given completions (SFT targets), eos appended, in the same layout."""
    texts = [chat_text(tokenizer, p, system) for p in prompts]
    batch = encode(tokenizer, texts)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + eos for c in completions]
    C = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id
    new = torch.tensor([x + [pad] * (C - len(x)) for x in ids])
    cmask = torch.tensor([[1.0] * len(x) + [0.0] * (C - len(x)) for x in ids])
    return Rollout(torch.cat([batch["input_ids"], new], 1), torch.cat([batch["attention_mask"], cmask.long()], 1),
                   cmask, batch["input_ids"].shape[1], list(completions))


def token_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """log π(token | prefix) for every completion token: (N, C), zero where completion_mask is 0."""
    P, C = rollout.prompt_len, rollout.completion_mask.shape[1]
    position_ids = (rollout.attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=position_ids,
                   logits_to_keep=C + 1, use_cache=False).logits[:, :-1]  # (N, C, V): predicts columns P..P+C-1
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = rollout.input_ids[:, P:]  # (N, C)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * rollout.completion_mask
