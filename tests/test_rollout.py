"""Rollouts (training/rollout.py) and log-probs (logprobs.py) on a tiny random Llama with the character tokenizer and a chat
template (see `tiny_llama_dir` in conftest.py).

Grouped rollouts run each prompt once and repeat its key/value cache K times; that must be the same computation as
repeating the prompt K times, for sampling, log-probs and z-gradients alike. Prompts of different lengths make the
batch left-padded."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from transformer_squared.generation import chat_text, encode
from transformer_squared.logprobs import Rollout, teacher_forced, token_logprobs
from transformer_squared.training.rollout import _completion_mask, sample

PROMPTS = ["What is 12 + 34? Answer with the number only.", "Hi"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    from transformer_squared.models import load_model

    return load_model(str(tiny_llama_dir))


def test_prompts_are_left_padded(loaded):
    mask = encode(loaded.tokenizer, [chat_text(loaded.tokenizer, p) for p in PROMPTS])["attention_mask"]
    assert mask[1, 0] == 0 and mask[:, -1].all()  # otherwise the padding paths below go untested


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_grouped_sampling_matches_repeated_prompts(loaded, temperature):
    # greedy: the same tokens. Sampling: generate draws from an (N, vocab) distribution at each step in both layouts,
    # so the same seed gives the same tokens as long as the probabilities agree (up to float rounding).
    model, tok, K = loaded.model, loaded.tokenizer, 3
    torch.manual_seed(0)
    grouped = sample(model, tok, PROMPTS, 6, temperature=temperature, group_size=K)
    torch.manual_seed(0)
    flat = sample(model, tok, [p for p in PROMPTS for _ in range(K)], 6, temperature=temperature)
    if temperature > 0:
        assert len(set(grouped.completions)) > 2  # the rows really were sampled
    assert (len(grouped), grouped.group_size, flat.group_size) == (2 * K, K, 1)
    assert grouped.completions == flat.completions
    assert grouped.prompt_len == flat.prompt_len
    assert torch.equal(grouped.input_ids, flat.input_ids)
    assert torch.equal(grouped.attention_mask, flat.attention_mask)
    assert torch.equal(grouped.completion_mask, flat.completion_mask)


def test_grouped_logprobs_and_z_gradients_match_the_flat_forward(tiny_llama_dir, tmp_path):
    from transformer_squared.svf import load_svf
    from transformer_squared.training.policy import SVFPolicy

    svf = load_svf(str(tiny_llama_dir), cache_dir=tmp_path, progress=False)
    g = torch.Generator().manual_seed(0)
    z = {n: 1 + 0.1 * torch.randn(r.shape, generator=g) for n, r in svf.init_z().items()}  # not the identity
    policy = SVFPolicy(svf, z=z)
    try:
        torch.manual_seed(0)
        with policy.sampling():
            grouped = sample(policy.model, svf.tokenizer, PROMPTS, 5, temperature=1.0, group_size=2)
        assert grouped.completions[0] != grouped.completions[1]  # rows of a group differ, else this proves little
        flat = dataclasses.replace(grouped, group_size=1)
        weights = torch.randn(grouped.completion_mask.shape, generator=g)

        def logp_and_grads(rollout):
            for p in policy.parameters():
                p.grad = None
            logp = token_logprobs(policy.model, rollout)  # (N, C)
            (logp * weights).sum().backward()
            return logp.detach(), [p.grad.clone() for p in policy.parameters()]

        logp_grouped, grads_grouped = logp_and_grads(grouped)
        logp_flat, grads_flat = logp_and_grads(flat)
    finally:
        policy.close()
    mask = grouped.completion_mask.bool()
    assert (logp_flat[mask] < 0).all() and (logp_flat[~mask] == 0).all()
    assert_close(logp_grouped, logp_flat, atol=1e-4, rtol=0)
    for a, b in zip(grads_grouped, grads_flat):
        assert b.abs().sum() > 0
        assert_close(a, b, atol=1e-5, rtol=1e-4)  # gradients are ~5e-2 here


class _EosIs:
    """The tokenizer with another token id standing in for eos (generation does not stop on it)."""

    def __init__(self, tokenizer, eos_token_id: int):
        self._tokenizer, self.eos_token_id = tokenizer, eos_token_id

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


def test_completion_mask_covers_tokens_up_to_and_including_the_first_eos(loaded):
    model, tok = loaded.model, loaded.tokenizer

    def sampled(tokenizer, seed):
        torch.manual_seed(seed)  # the same samples both times
        return sample(model, tokenizer, PROMPTS, 8, temperature=1.0)

    # a seed under which the random model does not say the real eos in 8 tokens (~1 in 128 per token here)
    seed = next(s for s in range(20) if sampled(tok, s).completion_mask.all())
    reference = sampled(tok, seed)
    new = reference.input_ids[:, reference.prompt_len:]  # (2, 8)
    # a token of row 0 that first appears mid-completion now plays eos
    j = next(j for j in range(2, 7) if new[0, j] not in new[0, :j])
    eos = int(new[0, j])
    rollout = sampled(_EosIs(tok, eos), seed)
    assert torch.equal(rollout.input_ids, reference.input_ids)  # generation did not stop on it
    for row, mask, text in zip(new, rollout.completion_mask, rollout.completions):
        hits = (row == eos).nonzero()
        first = int(hits[0]) if len(hits) else len(row) - 1
        expected = torch.tensor([1.0] * (first + 1) + [0.0] * (len(row) - first - 1))
        assert torch.equal(mask, expected)
        assert text == tok.decode(row[: first + 1], skip_special_tokens=True)
    assert rollout.completion_mask[0].tolist() == [1.0] * (j + 1) + [0.0] * (7 - j)
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_len:], rollout.completion_mask.long())


def test_completion_mask_by_hand():
    # eos = 2, which is also what finished rows are padded with: only the first eos counts
    new = torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 2, 5, 2]])
    assert _completion_mask(new, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert _completion_mask(new, None).tolist() == [[1] * 4] * 3


def test_teacher_forced_logprobs_are_those_of_the_reference_tokens(loaded):
    model, tok = loaded.model, loaded.tokenizer
    references = ["46", "Hello there, how are you?"]
    rollout = teacher_forced(tok, PROMPTS, references)
    targets = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in references]
    P, C = rollout.prompt_len, max(map(len, targets))
    assert rollout.completion_mask.shape == (2, C)
    logp = token_logprobs(model, rollout)
    for i, (prompt, target) in enumerate(zip(PROMPTS, targets)):
        n = len(target)
        assert rollout.input_ids[i, P : P + n].tolist() == target
        assert rollout.completion_mask[i].tolist() == [1.0] * n + [0.0] * (C - n)
        # the same log-probs from one unpadded sequence, computed here from the logits
        prompt_ids = tok(chat_text(tok, prompt), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + target])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (n, V): predicts the target tokens
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
        assert_close(logp[i, :n].detach(), expected, atol=1e-4, rtol=0)
        assert (logp[i, n:] == 0).all()


@pytest.mark.parametrize("N, K, T, max_tokens", [
    (6, 3, 10, 10),  # less than one group fits: still one whole group per chunk
    (6, 3, 10, 60),  # two groups' worth → one chunk of 6
    (8, 2, 10, 40),  # 40 // (10·2) = 2 groups → chunks of 4
    (5, 1, 7, 15),  # ungrouped: 2 rows per chunk, last one short
    (4, 4, 3, 10**6),  # everything in one chunk
])
def test_chunks_are_whole_groups_covering_every_row_once(N, K, T, max_tokens):
    rollout = Rollout(torch.zeros(N, T, dtype=torch.long), torch.ones(N, T, dtype=torch.long), torch.ones(N, 2),
                      T - 2, [f"c{i}" for i in range(N)], K)
    rows = []
    for sl in rollout.chunks(max_tokens):
        part = list(range(N))[sl]
        assert part and part[0] % K == 0 and len(part) % K == 0
        assert len(part) == K or len(part) * T <= max(max_tokens, K * T)
        sub = rollout.rows(sl)
        assert sub.group_size == K and sub.completions == [f"c{i}" for i in part] and len(sub) == len(part)
        rows += part
    assert rows == list(range(N))


def test_row_gumbel_is_the_gumbel_max_formula_with_each_rows_own_generator():
    """RowGumbel (written in place for speed) returns scores / T + G, G = −log(−log u), u ~ U(0, 1) drawn from
    the row's own seed: bit-equal to the formula computed plainly, and a row's noise does not depend on its batch."""
    from transformer_squared.training.rollout import RowGumbel

    scores = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    got = RowGumbel([11, 12, 13], 0.7)(None, scores)
    for i, seed in enumerate([11, 12, 13]):
        u = torch.rand(1000, generator=torch.Generator().manual_seed(seed)).clamp_(1e-20, 1 - 1e-7)
        assert torch.equal(got[i], scores[i] / 0.7 - torch.log(-torch.log(u)))
    assert torch.equal(RowGumbel([12], 0.7)(None, scores[1:2])[0], got[1])
    assert torch.equal(scores, torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)))  # input untouched
