"""Training objectives. Each returns (loss, metrics).

Notation: for sample i with completion tokens t, ℓᵢ = (1/|yᵢ|) Σₜ log π(yᵢₜ | x, yᵢ<ₜ) is the length-normalised
sequence log-prob (normalising keeps long, wrong answers from dominating the gradient; the reference code does
the same through its token-mean loss).

- ``reinforce`` (the paper, eq. 1): rᵢ ∈ {-1, +1} (score 1 → +1, else -1), J = mean(rᵢ ℓᵢ) − λ KL(π‖π_base).
- ``rloo``: K samples per prompt, advantage Aᵢ = rᵢ − mean_{j≠i} rⱼ with rᵢ the raw score in [0, 1]; groups whose
  samples all score the same carry no signal and contribute zero. J = mean(Aᵢ ℓᵢ) − λ KL.
- ``grpo``: K samples per prompt, group-normalised advantage Aᵢ = (rᵢ − mean_g r) / (std_g r + 1e-4) (std with
  Bessel's correction, as TRL), and the PPO clipped surrogate per token against the sampling policy π_old:
  J = Σ min(ρₜ Aᵢ, clip(ρₜ, 1−ε, 1+ε) Aᵢ) / normaliser − λ Σ k3ₜ / normaliser, ρₜ = π(yᵢₜ)/π_old(yᵢₜ).
  ``sequence`` normalisation averages each sample's tokens then the samples (the GRPO paper; TRL
  loss_type="grpo"); ``token`` divides by the number of completion tokens in the minibatch (DAPO; TRL "bnpo").
  A group whose samples all score the same has std 0: its advantages are set to exactly 0 (not left to
  0/1e-4 rounding), so it adds no policy gradient; the KL term still acts. The loop around it: training/grpo.py.
- ``sft``: next-token negative log-likelihood of reference completions (token mean over the batch).

The KL term is the per-token "k3" estimator on the sampled tokens, k3 = exp(q) − q − 1 with q = log π_base − log π,
averaged over completion tokens (summed with the token weights in grpo). Its *value* is non-negative and, for
tokens sampled from π, unbiased for KL(π‖π_base): E_π[π_base/π − log(π_base/π) − 1] = 1 + KL(π‖π_base) − 1. Its
*gradient* is not that of KL(π‖π_base): the samples are held fixed, so ∇k3 = (1 − π_base/π) ∇log π, and
E_π[(1 − π_base/π) ∇log π] = −Σ_y π_base(y) ∇log π(y) = ∇KL(π_base‖π). What the optimiser minimises is therefore
the forward KL(π_base‖π) — the same direction as the official code, whose `F.kl_div(log π, log π_base,
log_target=True)` is KL(π_base‖π) exactly (tests/test_objectives.py checks both statements on an enumerable
distribution).

Departures from the official code (SakanaAI/self-adaptive-llms, optim_modules.Reinforce), all deliberate:
- length normalisation: ℓᵢ is the *mean* token log-prob of a completion; the official REINFORCE uses the *summed*
  log-prob, so long completions weigh more there;
- KL: the sampled-token k3 estimator above, averaged over tokens; the official code computes the exact
  full-vocabulary KL(π_base‖π) at every position and *sums* it over tokens (then divides by the batch size, as we
  average over samples) — k3 needs no (B, C, vocab) reference log-probs;
- optimiser: AdamW (weight decay 0 by default, where it equals Adam) vs Adam; gradient clipping at max-norm 1.0 vs
  their 1e-3 default;
- rewards: reinforce maps a score of 1 to +1 and anything else to −1; no reward normalisation or clipping (the
  official code has both as options, off by default); rloo and grpo are ours (the paper uses REINFORCE only);
- no importance ratio or clipping in reinforce/rloo: one exactly on-policy step per batch, as the official code.
"""

from __future__ import annotations

import torch

from .config import LOSS_NORMS  # the names live with the flags, in the torch-free config module

GROUP_EPS = 1e-4  # added to the group std (TRL uses the same)


def sequence_mean(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ℓᵢ: (N, C), (N, C) -> (N,)"""
    return (token_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Aᵢ = rᵢ − mean of the other K−1 rewards of the same prompt. scores: (N,) with N = prompts × K, grouped."""
    r = scores.view(-1, group_size)  # (B, K)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).view(-1)


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = GROUP_EPS) -> torch.Tensor:
    """Aᵢ = (rᵢ − mean) / (std + eps) within each group of K; exactly 0 for unanimous groups. (N,) -> (N,)."""
    r = scores.view(-1, group_size)  # (B, K)
    mean, std = r.mean(-1, keepdim=True), r.std(-1, keepdim=True)  # std: unbiased (divides by K − 1)
    unanimous = (r == r[:, :1]).all(-1, keepdim=True)
    return torch.where(unanimous, 0.0, (r - mean) / (std + eps)).view(-1)


def k3_tokens(token_logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """Per-token exp(q) − q − 1, q = log π_base − log π: (n, C) -> (n, C)."""
    q = (base_logp - token_logp).clamp(-20, 20)
    return q.exp() - q - 1


def kl_k3(token_logp: torch.Tensor, base_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over completion tokens of exp(q) − q − 1, q = log π_base − log π."""
    return (k3_tokens(token_logp, base_logp) * mask).sum() / mask.sum().clamp(min=1)


def advantages(objective: str, scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-sample advantage from scores in [0, 1]: (N,) -> (N,)."""
    if objective == "reinforce":
        return torch.where(scores >= 1.0, 1.0, -1.0)
    if objective == "rloo":
        return rloo_advantages(scores, group_size)
    if objective == "grpo":
        return group_advantages(scores, group_size)
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


def token_weights(mask: torch.Tensor, norm: str, sequences: int, tokens: float) -> torch.Tensor:
    """The normaliser as per-token weights, so that chunks of one minibatch add up to its loss.

    sequence: 1 / (|yᵢ| · sequences); token: 1 / tokens (the minibatch's completion-token count). mask: (n, C)."""
    if norm == "sequence":
        return mask / (mask.sum(-1, keepdim=True).clamp(min=1) * sequences)
    if norm == "token":
        return mask / max(tokens, 1.0)
    raise ValueError(f"unknown loss normalisation {norm!r}; choose one of {', '.join(LOSS_NORMS)}")


def clipped_policy_loss(token_logp: torch.Tensor, old_logp: torch.Tensor | None, weights: torch.Tensor,
                        advantage: torch.Tensor, clip_eps: float, kl_coef: float = 0.0,
                        base_logp: torch.Tensor | None = None):
    """−Σₜ wₜ [min(ρₜ A, clip(ρₜ, 1−ε, 1+ε) A) − λ k3ₜ], ρₜ = exp(log π − log π_old).

    token_logp: (n, C) with grad; old_logp: (n, C), or None for the on-policy pass (π_old = π: ρ = 1 in value,
    ∇ρ = ∇log π, so the loss is the plain policy gradient); weights: (n, C) from `token_weights`; advantage: (n,).
    Where the clipped branch is the minimum (A > 0 and ρ > 1+ε, or A < 0 and ρ < 1−ε) the token's policy
    gradient is exactly zero; at ρ = 1 ± ε both branches tie and torch.minimum splits the gradient between two
    equal terms, so the boundary itself still passes the full gradient."""
    old = token_logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(token_logp - old)  # (n, C)
    A = advantage.detach().unsqueeze(-1)  # (n, 1)
    surrogate = torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    pg = -(surrogate * weights).sum()
    mask = weights > 0
    clipped = ((ratio > 1 + clip_eps) & (A > 0)) | ((ratio < 1 - clip_eps) & (A < 0))
    r = ratio.detach()[mask]
    metrics = {"pg_loss": pg.item(), "clip_frac": float(clipped[mask].float().mean()) if mask.any() else 0.0,
               "ratio_min": float(r.min()) if r.numel() else 1.0, "ratio_max": float(r.max()) if r.numel() else 1.0}
    loss = pg
    if kl_coef > 0 and base_logp is not None:
        kl = (k3_tokens(token_logp, base_logp) * weights).sum()
        loss = loss + kl_coef * kl
        metrics["kl"] = kl.item()
    return loss, metrics


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor):
    """Token-mean negative log-likelihood. token_logp, mask: (n, C)."""
    mask = mask.to(token_logp.device)
    nll = -(token_logp * mask).sum() / mask.sum().clamp(min=1)
    return nll, {"nll": nll.item()}
