"""GRPO (training/grpo.py, objectives.group_advantages / clipped_policy_loss): advantages by hand, one pass equals
the on-policy policy gradient, the clip engages exactly outside [1 − ε, 1 + ε], π_old from the merged weights,
config validation, and a run interrupted between two updates resumes bit-exactly. Runs use the tiny Llama with the
character tokenizer (`tiny_folder` in conftest.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from transformer_squared.tasks import TASKS, ArithmeticTask
from transformer_squared.training.config import TrainConfig
from transformer_squared.training.objectives import (
    GROUP_EPS,
    clipped_policy_loss,
    group_advantages,
    policy_loss,
    token_weights,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("T2_CACHE", str(tmp_path_factory.getbasetemp() / "t2-cache-grpo"))


# -- advantages ----------------------------------------------------------------------------------------------------

def test_group_advantages_by_hand():
    # group (1, 0): mean 0.5, unbiased std √((0.25 + 0.25)/1) = √0.5 → ±0.5/(√0.5 + 1e-4)
    # group (1, 0, 0, 0): mean 0.25, std √((0.5625 + 3·0.0625)/3) = 0.5 → 0.75/0.5001, −0.25/0.5001
    # group (0.3, 0.3): std 0 → exactly 0 (set, not 0/1e-4)
    a = group_advantages(torch.tensor([1.0, 0.0]), 2)
    b = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    c = group_advantages(torch.tensor([0.3, 0.3, 1.0, 1.0]), 2)
    h = 0.5 / (math.sqrt(0.5) + GROUP_EPS)
    assert_close(a, torch.tensor([h, -h]))
    assert_close(b, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + GROUP_EPS))
    assert torch.equal(c, torch.zeros(4))
    assert_close(b.sum(), torch.tensor(0.0), atol=1e-6, rtol=0)  # mean-centred within the group


# -- one pass = the on-policy policy gradient ----------------------------------------------------------------------

def hand_rollout(K: int = 2, groups: int = 2, P: int = 5, C: int = 4):
    """A rollout of random tokens: `groups` prompts × K completions, completion lengths 4, 2, 3, 1, ..."""
    from transformer_squared.logprobs import Rollout

    g = torch.Generator().manual_seed(3)
    N = K * groups
    prompt = torch.randint(3, 128, (groups, P), generator=g).repeat_interleave(K, 0)
    completion = torch.randint(3, 128, (N, C), generator=g)
    lengths = torch.tensor([4, 2, 3, 1] * N)[:N]
    cmask = (torch.arange(C) < lengths[:, None]).float()  # (N, C)
    ids = torch.cat([prompt, completion], 1)
    attention = torch.cat([torch.ones(N, P, dtype=torch.long), cmask.long()], 1)
    return Rollout(ids, attention, cmask, P, [""] * N, K)


def z_grad(policy, loss_fn) -> torch.Tensor:
    for p in policy.parameters():
        p.grad = None
    loss_fn().backward()
    return torch.cat([p.grad.flatten() for p in policy.parameters()])


@pytest.mark.parametrize("clip_eps", [0.2, 0.01])
def test_one_pass_equals_the_on_policy_policy_gradient(svf, random_z, clip_eps):
    from transformer_squared.training.policy import SVFPolicy
    from transformer_squared.logprobs import token_logprobs

    rollout = hand_rollout()
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    mask = rollout.completion_mask
    policy = SVFPolicy(svf, z=random_z(svf))
    try:
        model = policy.model
        existing = z_grad(policy, lambda: policy_loss(token_logprobs(model, rollout), mask, adv)[0])
        w = token_weights(mask, "sequence", len(rollout), float(mask.sum()))
        grpo = z_grad(policy, lambda: clipped_policy_loss(token_logprobs(model, rollout), None, w, adv, clip_eps)[0])
        # tokens normalised over the minibatch instead: a different, still nonzero, gradient
        w_tok = token_weights(mask, "token", len(rollout), float(mask.sum()))
        token = z_grad(policy, lambda: clipped_policy_loss(token_logprobs(model, rollout), None, w_tok, adv, clip_eps)[0])
    finally:
        policy.close()
    assert existing.abs().sum() > 0
    assert_close(grpo, existing)  # ratio ≡ 1 in value, ∇ratio = ∇log π: the same gradient, whatever ε
    assert not torch.allclose(token, existing)


def test_on_policy_loss_values_by_hand():
    # two samples, lengths 2 and 1, A = (+1, −1), log π = (−1, −3 | −2): sequence loss −mean(A ℓ) = −(−2 − (−2))/2
    logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, m = clipped_policy_loss(logp, None, token_weights(mask, "sequence", 2, 3.0), adv, 0.2)
    assert loss.item() == pytest.approx(-(1.0 * 1.0 + (-1.0) * 1.0) / 2)  # ratios are 1: −mean(A · 1)
    loss.backward()
    # ∂/∂log π of −A ρ w at ρ = 1: −A/(|y| · 2): −1/4, −1/4 | +1/2, masked 0
    assert_close(logp.grad, torch.tensor([[-0.25, -0.25], [0.5, 0.0]]))
    assert m["clip_frac"] == 0.0 and m["ratio_min"] == m["ratio_max"] == 1.0


# -- the clip -------------------------------------------------------------------------------------------------------

RATIOS = [0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0]  # ε = 0.2: outside, inside ×5, outside


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clip_engages_exactly_where_the_ratio_leaves_the_interval(sign):
    eps = 0.2
    ratio = torch.tensor([RATIOS])
    old = torch.zeros(1, len(RATIOS))
    logp = ratio.log().clone().requires_grad_(True)  # log π − log π_old = log ρ
    w = torch.ones(1, len(RATIOS))
    loss, m = clipped_policy_loss(logp, old, w, torch.tensor([sign]), eps)
    loss.backward()
    grad = logp.grad[0]
    # unclipped: ∂(−ρA)/∂log ρ = −ρA; clipped branch (A > 0, ρ > 1.2 | A < 0, ρ < 0.8): exactly 0
    if sign > 0:
        clipped = [r > 1 + eps for r in RATIOS]
    else:
        clipped = [r < 1 - eps for r in RATIOS]
    expected = torch.tensor([0.0 if c else -sign * r for r, c in zip(RATIOS, clipped)])
    assert_close(grad, expected)
    assert all((g == 0) == c for g, c in zip(grad.tolist(), clipped))
    assert m["clip_frac"] == pytest.approx(sum(clipped) / len(RATIOS))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_boundary_itself_passes_the_full_gradient(sign):
    # ρ exactly 1 ± ε (ε = 0.25, float64: exp(log 1.25) is 1.25 to the bit): the two branches of the minimum tie,
    # torch.minimum gives each half and clamp passes its edge, so the gradient is the unclipped −ρA
    logp = torch.tensor([[1.25, 0.75]], dtype=torch.float64).log().requires_grad_(True)
    assert torch.equal(logp.detach().exp(), torch.tensor([[1.25, 0.75]], dtype=torch.float64))
    loss, m = clipped_policy_loss(logp, torch.zeros_like(logp), torch.ones_like(logp),
                                  torch.tensor([sign], dtype=torch.float64), 0.25)
    loss.backward()
    assert torch.equal(logp.grad, torch.tensor([[-1.25 * sign, -0.75 * sign]], dtype=torch.float64))
    assert m["clip_frac"] == 0.0


def test_kl_term_is_the_k3_estimator_with_the_same_normalisation():
    from transformer_squared.training.objectives import kl_k3

    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    base = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w = token_weights(mask, "token", 2, 3.0)
    _, m = clipped_policy_loss(logp, logp, w, torch.zeros(2), 0.2, kl_coef=0.5, base_logp=base)
    assert m["kl"] == pytest.approx(kl_k3(logp, base, mask).item())  # token normalisation = kl_k3's token mean


# -- π_old from the merged weights -----------------------------------------------------------------------------------

def test_old_logprobs_on_merged_weights_match_the_factored_forward(svf, random_z):
    from transformer_squared.training.policy import SVFPolicy
    from transformer_squared.logprobs import token_logprobs

    rollout = hand_rollout()
    policy = SVFPolicy(svf, z=random_z(svf, scale=0.3))
    try:
        with torch.no_grad():
            factored = token_logprobs(policy.model, rollout)
            with policy.sampling():
                merged = token_logprobs(policy.model, rollout)
    finally:
        policy.close()
    # the same z, two float32 layouts: ratios start within 1 ± 1e-4 (the module docstring states the measured gap)
    assert (merged - factored).abs().max() < 1e-4


# -- the loop ---------------------------------------------------------------------------------------------------------

class ParityTask(ArithmeticTask):
    """Arithmetic prompts, rewarded for an even-length reply: a random model earns it about half the time."""

    name = "parity"

    def score(self, completion, example):
        return float(len(completion) % 2 == 0)


@pytest.fixture
def parity(monkeypatch):
    monkeypatch.setitem(TASKS, "parity", ParityTask)


def grpo_config(model_dir: Path, root: Path, name: str, **overrides) -> TrainConfig:
    values = dict(model=str(model_dir), task="parity", out=str(root / "experts" / name), run_dir=str(root / "runs" / name),
                  steps=2, batch_size=2, group_size=2, valid_n=4, max_new_tokens=4, lr=0.5, objective="grpo",
                  ppo_epochs=2, minibatches=2, kl_coef=0.1)
    return TrainConfig(**{**values, **overrides})


def train(cfg: TrainConfig, resume: bool = False):
    from transformer_squared.training.trainer import train_expert

    return train_expert(cfg, resume=resume, progress=False)


def metrics(cfg: TrainConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_grpo_run_takes_epochs_times_minibatches_updates(tiny_folder, tmp_path, parity):
    from transformer_squared.experts import Expert

    cfg = grpo_config(tiny_folder, tmp_path, "run")
    train(cfg)
    rows = metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["updates"] == 4 and 0 <= r["clip_frac"] <= 1 and r["kl"] >= 0 for r in rows)
    assert any(r["clip_frac"] > 0 for r in rows)  # lr 0.5 moves z far enough for later passes to clip
    z = Expert.load(cfg.out).z
    assert any(not torch.equal(t, torch.ones_like(t)) for t in z.values())


@pytest.mark.parametrize("crash_after", [4, 5])  # mid-step saves: 3 in step 1; 4 → (epoch 0, mb 1), 5 → (1, 0)
def test_resume_mid_epoch_is_exact(tiny_folder, tmp_path, parity, monkeypatch, crash_after):
    from transformer_squared.training import grpo, trainer

    straight = grpo_config(tiny_folder, tmp_path, "straight")
    train(straight)

    broken = grpo_config(tiny_folder, tmp_path, "broken")
    saves, real_checkpoint, real_logprobs = [], trainer._checkpoint, grpo.token_logprobs

    def checkpoint(path, cfg, policy, optimizer, step, best, best_step, inner=None):
        real_checkpoint(path, cfg, policy, optimizer, step, best, best_step, inner)
        if inner is not None:
            saves.append((inner.step, inner.epoch, inner.minibatch))

    def logprobs(model, rollout):  # killed inside the update after the chosen checkpoint
        if len(saves) >= crash_after:
            raise RuntimeError("killed")
        return real_logprobs(model, rollout)

    monkeypatch.setattr(trainer, "_checkpoint", checkpoint)
    monkeypatch.setattr(grpo, "token_logprobs", logprobs)
    with pytest.raises(RuntimeError, match="killed"):
        train(broken)
    position = {4: (1, 0, 1), 5: (1, 1, 0)}[crash_after]
    assert saves[-1] == position
    state = torch.load(Path(broken.run_dir) / "checkpoint.pt", weights_only=False)
    assert state["step"] == 1 and (state["grpo"].epoch, state["grpo"].minibatch) == position[1:]
    monkeypatch.setattr(grpo, "token_logprobs", real_logprobs)

    train(TrainConfig(out=broken.out, run_dir=broken.run_dir, steps=2), resume=True)
    a = torch.load(Path(straight.run_dir) / "checkpoint.pt", weights_only=False)
    b = torch.load(Path(broken.run_dir) / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 2 and b["grpo"] is None
    for name, z in a["policy"].items():
        assert torch.equal(b["policy"][name], z), name  # bitwise
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    keys = ("reward", "pg_loss", "kl", "clip_frac", "ratio_min", "ratio_max", "grad_norm", "updates")
    assert [{k: r[k] for k in keys} for r in metrics(straight)] == [{k: r[k] for k in keys} for r in metrics(broken)]


def test_one_update_per_step_needs_no_old_logprobs(tiny_folder, tmp_path, parity, monkeypatch):
    from transformer_squared.training import grpo

    calls = []
    real = grpo._no_grad_logprobs
    monkeypatch.setattr(grpo, "_no_grad_logprobs", lambda model, rollout: calls.append(1) or real(model, rollout))
    train(grpo_config(tiny_folder, tmp_path, "single", ppo_epochs=1, minibatches=1, kl_coef=0.0, steps=1))
    assert calls == []  # π_old = π: the ratio is 1 without a forward of its own
    train(grpo_config(tiny_folder, tmp_path, "multi", ppo_epochs=2, minibatches=1, kl_coef=0.0, steps=1))
    assert calls == [1]  # one no_grad forward on the merged weights, before the first update


def test_minibatch_plan_covers_every_group_once_per_epoch():
    from transformer_squared.training.grpo import minibatch_plan

    plan = minibatch_plan(0, 3, 1, 7, 3)
    assert [len(p) for p in plan] == [2, 2, 3] and sorted(sum(plan, [])) == list(range(7))
    assert plan == minibatch_plan(0, 3, 1, 7, 3) and plan != minibatch_plan(0, 3, 2, 7, 3)  # seeded per epoch
    assert sorted(map(len, minibatch_plan(0, 0, 0, 2, 5))) == [1, 1]  # never more minibatches than groups


# -- config ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(objective="grpo", group_size=1), "--objective grpo needs --group-size >= 2"),
    (dict(objective="grpo", clip_eps=0.0), r"--clip-eps must be in \(0, 1\)"),
    (dict(objective="grpo", clip_eps=1.5), r"--clip-eps must be in \(0, 1\)"),
    (dict(objective="grpo", ppo_epochs=0), "--ppo-epochs must be at least 1"),
    (dict(objective="grpo", minibatches=0), "--minibatches must be at least 1"),
    (dict(objective="grpo", minibatches=9, batch_size=8), "--minibatches 9 exceeds --batch-size 8"),
    (dict(objective="grpo", loss_norm="dapo"), "--loss-norm 'dapo': choose sequence or token"),
    (dict(objective="rloo", ppo_epochs=4), "--ppo-epochs applies to --objective grpo only"),
    (dict(objective="reinforce", clip_eps=0.3), "--clip-eps applies to --objective grpo only"),
])
def test_config_validation_names_the_flag(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(out="x", **overrides)


def test_grpo_flags_are_on_the_cli():
    import argparse

    from transformer_squared.config import add_dataclass_args, config_from_args

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, TrainConfig, layered=True)
    args = parser.parse_args(["--out", "e", "--objective", "grpo", "--clip-eps", "0.1", "--ppo-epochs", "3",
                              "--minibatches", "2", "--loss-norm", "token"])
    cfg = config_from_args(args, TrainConfig)
    assert (cfg.objective, cfg.clip_eps, cfg.ppo_epochs, cfg.minibatches, cfg.loss_norm) == ("grpo", 0.1, 3, 2, "token")
    assert "clipped to [1 − ε, 1 + ε]" in parser.format_help()


def test_grpo_trains_the_lora_baseline_too(tiny_folder, tmp_path, parity):
    cfg = grpo_config(tiny_folder, tmp_path, "lora", method="lora", lora_rank=4, steps=1, lr=0.05)
    train(cfg)
    assert metrics(cfg)[0]["updates"] == 4
    assert (Path(cfg.out) / "adapter_config.json").is_file()
