"""Training objectives. Each returns (loss, metrics).

Notation: for sample i with completion tokens t, ℓᵢ = (1/|yᵢ|) Σₜ log π(yᵢₜ | x, yᵢ<ₜ) is the length-normalised
sequence log-prob (normalising keeps long, wrong answers from dominating the gradient; the reference code does
the same through its token-mean loss).

- ``reinforce`` (the paper, eq. 1): rᵢ ∈ {-1, +1} (score 1 → +1, else -1), J = mean(rᵢ ℓᵢ) − λ KL(π‖π_base).
- ``rloo``: K samples per prompt, advantage Aᵢ = rᵢ − mean_{j≠i} rⱼ with rᵢ the raw score in [0, 1]; groups whose
  samples all score the same carry no signal and contribute zero. J = mean(Aᵢ ℓᵢ) − λ KL.
- ``sft``: next-token negative log-likelihood of reference completions (token mean over the batch).

The KL term is the per-token "k3" estimator on the sampled tokens, exp(q) − q − 1 with q = log π_base − log π,
which is non-negative and unbiased for KL(π‖π_base); it is averaged over completion tokens. Departures from the
reference code: a single policy-gradient step per batch (no clipping ratio: it is exactly on-policy), and the KL
is taken to the base model's weights, computed in the same forward layout.
"""

from __future__ import annotations

import torch

OBJECTIVES = ("reinforce", "rloo", "sft")


def sequence_mean(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ℓᵢ: (N, C), (N, C) -> (N,)"""
    return (token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Aᵢ = rᵢ − mean of the other K−1 rewards of the same prompt. scores: (N,) with N = prompts × K, grouped."""
    r = scores.view(-1, group_size)  # (B, K)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).view(-1)


def kl_k3(token_logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over completion tokens of exp(q) − q − 1, q = log π_base − log π."""
    q = (base_logp - token_logp).clamp(-20, 20)
    return ((q.exp() - q - 1) * mask).sum() / mask.sum().clamp(min=1)


def advantages(objective: str, scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-sample advantage from scores in [0, 1]: (N,) -> (N,)."""
    if objective == "reinforce":
        return torch.where(scores >= 1.0, 1.0, -1.0)
    if objective == "rloo":
        return rloo_advantages(scores, group_size)
    raise ValueError(f"unknown policy objective {objective!r}")


def policy_loss(token_logp: torch.Tensor, mask: torch.Tensor, advantage: torch.Tensor, kl_coef: float = 0.0,
                base_logp: torch.Tensor | None = None):
    """−mean(Aᵢ ℓᵢ) + λ KL. token_logp: (n, C) with grad; mask: (n, C); advantage: (n,); base_logp: (n, C) or None."""
    mask, advantage = mask.to(token_logp.device), advantage.to(token_logp.device)
    pg = -(advantage.detach() * sequence_mean(token_logp, mask)).mean()
    metrics = {"pg_loss": pg.item()}
    loss = pg
    if kl_coef > 0 and base_logp is not None:
        kl = kl_k3(token_logp, base_logp, mask)
        loss = loss + kl_coef * kl
        metrics["kl"] = kl.item()
    return loss, metrics


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor):
    """Token-mean negative log-likelihood. token_logp, mask: (n, C)."""
    mask = mask.to(token_logp.device)
    nll = -(token_logp * mask).sum() / mask.sum().clamp(min=1)
    return nll, {"nll": nll.item()}
