"""GRPO: the clipped surrogate over several passes of one batch of rollouts, without a value network.

One training step (`grpo_step`):

1. sample K completions for each of B prompts on the merged weights (as every objective does), score them, and
   form group-normalised advantages Aᵢ = (rᵢ − mean_g) / (std_g + 1e-4) (objectives.group_advantages);
2. record π_old, the sampling policy's log-probs of the sampled tokens (below), and, when --kl-coef > 0, the base
   model's log-probs once (they do not change across passes);
3. for each of --ppo-epochs passes, shuffle the B groups (seeded from (seed, step, epoch)) into --minibatches
   minibatches of whole groups and take one optimizer step per minibatch on the clipped loss
   (objectives.clipped_policy_loss, normalised per --loss-norm within the minibatch).

Where π_old comes from. Rollouts are sampled on merged weights under no_grad, and `generate` keeps no
log-probs, so:
- with a single update per step (1 epoch, 1 minibatch) nothing is computed: π_old = π at that update (z has not
  moved since sampling), so the ratio is exactly 1 in value and the loss is exactly the on-policy policy gradient
  with these advantages (tests/test_grpo.py checks it against objectives.policy_loss);
- with several updates, one no_grad forward on the same merged weights the samples were drawn from runs right
  after sampling, before any update. Its log-probs differ from the factored training forward at the same z by
  float32 rounding only: measured max |Δ log π| 5e-7 on the tiny test model (tests/test_grpo.py bounds it by
  1e-4) and 3.5e-5 on SmolLM2-135M (mean 3e-6; 16 samples × 16 tokens, z = 1 + N(0, 0.05²)), so the first
  update's ratios are 1 ± 4e-5, far inside any useful ε. Log-probs use the raw logits
  (temperature 1) in both numerator and denominator, as the other objectives do; --temperature shapes sampling.

Each pass runs the prompt once per group and shares its key/value cache across the K completions, exactly as the
one-pass loop does (minibatches are whole groups so that this holds). The prompt's cache cannot be kept across
passes: it depends on z (the adapted matrices act on prompt tokens too), and the gradient flows through it.

Resume. After every update but the step's last, the trainer checkpoints the step's `GRPOState` (rollout,
advantages, π_old, base log-probs, position (epoch, minibatch), partial metrics, torch RNG state): a run killed
between two updates resumes at the next update, bit-exactly (z is kilobytes, so this costs milliseconds).

Relation to PPO with a critic. PPO's advantage is per token, from a learned value function V(sₜ) through GAE;
its loss adds a value-regression term (and often an entropy bonus), and its KL usually enters the reward. Here the
reward is terminal, γ = λ = 1, and V is replaced by the mean reward of the other samples of the same prompt, so
every token of sample i gets the same Aᵢ; there is no value loss and no entropy bonus, and the KL (per-token k3 to
the base model, λ = --kl-coef) is a loss term. Nothing but z (or the LoRA adapter) is trained, which is what makes
it cheap for z-vectors.

Relation to TRL's GRPOTrainer (trl 1.16, read from its source): the same advantage (group std with Bessel's
correction, +1e-4; TRL's scale_rewards="group"), the same clipped token-level ratio (importance_sampling_level=
"token"), the same k3 KL added per token before normalisation, beta (= λ) default 0 there and here. Differences:
- TRL's default loss_type is "dapo" (normalised by the active tokens of the whole accumulated batch); our
  ``sequence`` is TRL's "grpo", our ``token`` is TRL's "bnpo" (tokens of the local minibatch); no "dr_grpo";
- TRL's num_iterations (μ, default 1) passes each minibatch μ times in a row before moving on; our --ppo-epochs
  makes full passes over the batch, reshuffling the groups each time (PPO's epochs);
- TRL divides logits by the sampling temperature in the loss; we use temperature-1 log-probs;
- TRL's epsilon (0.2) may be asymmetric (epsilon_high, DAPO) and has optional two-sided clipping (delta); here
  one symmetric ε (--clip-eps, default 0.2);
- TRL computes old log-probs with a separate no_grad forward of the training model; we use the merged weights
  the samples were drawn from (see above), and none at all with a single update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..logprobs import Rollout, token_logprobs
from .objectives import clipped_policy_loss, group_advantages, token_weights
from .rollout import sample


@dataclass
class GRPOState:
    """One step's rollouts and where its updates stand: what a mid-step checkpoint holds."""

    step: int  # 0-based index of the training step
    rollout: Rollout
    advantage: torch.Tensor  # (N,)
    old_logp: torch.Tensor | None  # (N, C) π_old; None with a single update (π_old = π)
    base_logp: torch.Tensor | None  # (N, C) when --kl-coef > 0
    record: dict
    epoch: int = 0  # the next update's position
    minibatch: int = 0
    totals: dict = field(default_factory=dict)  # sums over the updates done so far
    rng: torch.Tensor | None = None  # torch RNG state at this position (LoRA dropout draws from it)


def _no_grad_logprobs(model, rollout: Rollout) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([token_logprobs(model, rollout.rows(sl)) for sl in rollout.chunks()])  # (N, C)


def collect(cfg, policy, task, batch: list[dict], max_new: int, step: int) -> GRPOState | dict:
    """Sample, score and prepare one step's updates; a dict (the record) when there is nothing to learn."""
    model, tokenizer = policy.model, policy.tokenizer
    prompts = [e["prompt"] for e in batch]
    rows = [e for e in batch for _ in range(cfg.group_size)]
    with policy.sampling():
        rollout = sample(model, tokenizer, prompts, max_new, cfg.temperature, cfg.group_size)
        single_update = cfg.ppo_epochs * min(cfg.minibatches, len(batch)) == 1
        old_logp = None if single_update else _no_grad_logprobs(model, rollout)
    columns = {k: [e.get(k) for e in rows] for k in rows[0] if k != "prompt"}
    scores = torch.tensor(task.reward([e["prompt"] for e in rows], rollout.completions, **columns),
                          dtype=torch.float32)
    advantage = group_advantages(scores, cfg.group_size)
    record = {"reward": float(scores.mean()), "completion_tokens": float(rollout.completion_mask.sum(-1).mean())}
    if not advantage.abs().sum() and cfg.kl_coef == 0:
        return {**record, "skipped": True}  # every group unanimous: no gradient signal
    base_logp = None
    if cfg.kl_coef > 0:
        with policy.base():
            base_logp = _no_grad_logprobs(model, rollout)
    return GRPOState(step, rollout, advantage, old_logp, base_logp, record)


def minibatch_plan(seed: int, step: int, epoch: int, groups: int, minibatches: int) -> list[list[int]]:
    """The groups of each minibatch of one pass: a shuffle seeded from (seed, step, epoch), cut into near-equal
    parts."""
    order = list(range(groups))
    random.Random(f"{seed}:{step}:{epoch}").shuffle(order)
    parts = min(minibatches, groups)
    return [order[i * groups // parts:(i + 1) * groups // parts] for i in range(parts)]


def optimise(cfg, policy, state: GRPOState, optimizer, save=None) -> dict:
    """The updates of one step from `state`'s position on; `save(state)` after each update but the last."""
    model, rollout, K = policy.model, state.rollout, state.rollout.group_size
    groups = len(rollout) // K
    if state.rng is not None:
        torch.set_rng_state(state.rng)
    totals = state.totals
    for epoch in range(state.epoch, cfg.ppo_epochs):
        plan = minibatch_plan(cfg.seed, state.step, epoch, groups, cfg.minibatches)
        for m in range(state.minibatch if epoch == state.epoch else 0, len(plan)):
            part = rollout.groups(plan[m])
            rows = torch.tensor([g * K + k for g in plan[m] for k in range(K)])
            tokens = float(part.completion_mask.sum())
            optimizer.zero_grad(set_to_none=True)
            model.train(cfg.method == "lora")  # LoRA dropout while computing the loss; SVF has none
            update: dict[str, float] = {}
            for sl in part.chunks():
                chunk, idx = part.rows(sl), rows[sl]
                weights = token_weights(chunk.completion_mask, cfg.loss_norm, len(part), tokens)
                loss, metrics = clipped_policy_loss(
                    token_logprobs(model, chunk), None if state.old_logp is None else state.old_logp[idx], weights,
                    state.advantage[idx], cfg.clip_eps, cfg.kl_coef,
                    None if state.base_logp is None else state.base_logp[idx])
                loss.backward()
                share = float(chunk.completion_mask.sum()) / max(tokens, 1.0)
                for k in ("pg_loss", "kl"):  # already weighted sums: chunks add up
                    if k in metrics:
                        update[k] = update.get(k, 0.0) + metrics[k]
                update["clip_frac"] = update.get("clip_frac", 0.0) + metrics["clip_frac"] * share
                update["ratio_min"] = min(update.get("ratio_min", metrics["ratio_min"]), metrics["ratio_min"])
                update["ratio_max"] = max(update.get("ratio_max", metrics["ratio_max"]), metrics["ratio_max"])
            model.eval()
            update["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm))
            optimizer.step()
            for k, v in update.items():
                if k == "ratio_min":
                    totals[k] = min(totals.get(k, v), v)
                elif k == "ratio_max":
                    totals[k] = max(totals.get(k, v), v)
                else:
                    totals[k] = totals.get(k, 0.0) + v
            totals["updates"] = totals.get("updates", 0) + 1
            state.epoch, state.minibatch = (epoch, m + 1) if m + 1 < len(plan) else (epoch + 1, 0)
            if save is not None and state.epoch < cfg.ppo_epochs:
                state.rng = torch.get_rng_state()
                save(state)
    n = totals["updates"]
    summary = {k: (v if k in ("ratio_min", "ratio_max", "updates") else v / n) for k, v in totals.items()}
    return {**state.record, **summary}


def grpo_step(cfg, policy, task, batch: list[dict], max_new: int, optimizer, step: int, save=None,
              resume: GRPOState | None = None) -> dict:
    """One GRPO training step (or the rest of it, from a mid-step checkpoint); returns its metrics."""
    state = resume if resume is not None and resume.step == step else collect(cfg, policy, task, batch, max_new, step)
    if isinstance(state, dict):
        return state
    return optimise(cfg, policy, state, optimizer, save)
