"""Training objectives (training/objectives.py) on hand-made tensors: advantages, the k3 KL estimator, the
length-normalised sequence log-prob, the policy-gradient loss and the SFT loss. Expected values are computed by hand
in the comments next to them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from transformer_squared.training.objectives import (
    advantages,
    kl_k3,
    policy_loss,
    rloo_advantages,
    sequence_mean,
    sft_loss,
)


# -- advantages ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scores, K, expected", [
    # groups (1, 0) and (0, 1); with K = 2 the baseline of a sample is the other sample's score:
    # 1 − 0 = 1, 0 − 1 = −1 | 0 − 1 = −1, 1 − 0 = 1
    ([1, 0, 0, 1], 2, [1, -1, -1, 1]),
    # one group of four: sample 0 sees baseline (0+0+0)/3 = 0 → 1; the others see (1+0+0)/3 → −1/3
    ([1, 0, 0, 0], 4, [1, -1 / 3, -1 / 3, -1 / 3]),
    # fractional scores, K = 3: 0.5 − (1+0)/2 = 0; 1 − (0.5+0)/2 = 0.75; 0 − (0.5+1)/2 = −0.75
    ([0.5, 1, 0], 3, [0, 0.75, -0.75]),
])
def test_rloo_advantages_by_hand(scores, K, expected):
    got = rloo_advantages(torch.tensor(scores, dtype=torch.float32), K)
    assert_close(got, torch.tensor(expected, dtype=torch.float32))
    # Σᵢ (rᵢ − (S − rᵢ)/(K−1)) = S − (K·S − S)/(K−1) = 0: each group's advantages sum to zero
    assert_close(got.view(-1, K).sum(-1), torch.zeros(len(scores) // K))


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_unanimous_groups_carry_no_advantage(value):
    scores = torch.tensor([value] * 3 + [1.0, 0.0, 1.0])  # group 0 unanimous, group 1 mixed
    got = advantages("rloo", scores, 3)
    assert torch.equal(got[:3], torch.zeros(3))
    assert got[3:].abs().sum() > 0


def test_reinforce_maps_scores_to_plus_minus_one():
    # the paper's rᵢ ∈ {−1, +1}: only a full score counts as correct; group size plays no part
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.99])
    assert advantages("reinforce", scores, 1).tolist() == [1.0, -1.0, -1.0, 1.0, -1.0]
    assert advantages("reinforce", scores, 5).tolist() == [1.0, -1.0, -1.0, 1.0, -1.0]


def test_unknown_policy_objective_is_refused():
    with pytest.raises(ValueError, match="sft"):  # sft has no advantage: it is not a policy objective
        advantages("sft", torch.zeros(2), 2)


# -- KL ------------------------------------------------------------------------------------------------------------

def test_kl_k3_is_zero_for_equal_logps_and_positive_otherwise():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert kl_k3(logp, logp.clone(), mask).item() == 0.0
    assert kl_k3(logp, logp - 0.3, mask).item() > 0
    assert kl_k3(logp, logp + 0.3, mask).item() > 0


def test_kl_k3_value_by_hand_and_masked_tokens_ignored():
    # one token with log π = 0, log π_base = −1: q = −1, k3 = e⁻¹ − (−1) − 1 = e⁻¹
    logp = torch.tensor([[0.0, 5.0]])
    base = torch.tensor([[-1.0, -40.0]])  # the second token is masked: its huge gap must not count
    mask = torch.tensor([[1.0, 0.0]])
    assert_close(kl_k3(logp, base, mask), torch.tensor(math.exp(-1)))


def test_kl_k3_expectation_under_the_policy_is_the_exact_kl():
    # k3 is unbiased: E_{y~π}[π_b/π − log(π_b/π) − 1] = Σ π_b − 1 + KL(π‖π_b) = KL(π‖π_b). Using π itself as the
    # mask turns kl_k3's masked mean into that expectation over a full vocabulary.
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(1, 50, generator=g), -1)
    base = torch.log_softmax(torch.randn(1, 50, generator=g), -1)
    exact = (logp.exp() * (logp - base)).sum()
    assert_close(kl_k3(logp, base, logp.exp()), exact, rtol=1e-5, atol=1e-6)



def test_kl_k3_gradient_is_that_of_the_forward_kl():
    # The samples are held fixed (the mask π is detached, as sampling is), so ∇ E_π[k3] = E_π[(1 − π_b/π) ∇log π]
    # = −Σ π_b ∇log π = ∇KL(π_b‖π): the forward KL, the official code's direction, not the KL(π‖π_b) the value
    # estimates. Checked against both exact gradients on a 50-token distribution.
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(1, 50, generator=g, requires_grad=True)
    base = torch.log_softmax(torch.randn(1, 50, generator=g), -1)

    def grad(f):
        (out,) = torch.autograd.grad(f(torch.log_softmax(theta, -1)), theta)
        return out

    k3 = grad(lambda logp: kl_k3(logp, base, logp.exp().detach()))
    forward = grad(lambda logp: (base.exp() * (base - logp)).sum())  # KL(π_b‖π)
    reverse = grad(lambda logp: (logp.exp() * (logp - base)).sum())  # KL(π‖π_b)
    assert_close(k3, forward, rtol=1e-5, atol=1e-7)
    assert (k3 - reverse).abs().max() > 1e-2  # the two directions' gradients really differ here


# -- sequence log-prob and losses ------------------------------------------------------------------------------------

def test_sequence_mean_ignores_masked_tokens():
    logp = torch.tensor([[-1.0, -2.0, -100.0], [-3.0, -4.0, -5.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # (−1 −2)/2 = −1.5; (−3 −4 −5)/3 = −4; an empty completion gives 0, not NaN
    assert_close(sequence_mean(logp, mask), torch.tensor([-1.5, -4.0, 0.0]))


def test_policy_loss_value_and_gradient_sign():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantage = torch.tensor([1.0, -1.0])
    loss, metrics = policy_loss(logp, mask, advantage)
    # ℓ = [(−1 −3)/2, −2/1] = [−2, −2]; loss = −mean(Aᵢ ℓᵢ) = −(1·−2 + −1·−2)/2 = 0
    assert loss.item() == 0.0 and metrics == {"pg_loss": 0.0}
    loss.backward()
    # ∂loss/∂logp = −Aᵢ mask / (n |yᵢ|): −1/4 on sample 0's tokens, +1/2 on sample 1's only unmasked token
    assert_close(logp.grad, torch.tensor([[-0.25, -0.25], [0.5, 0.0]]))

    # the same statement without autograd: raising a positive-advantage sample's log-prob lowers the loss,
    # raising a negative-advantage sample's raises it
    with torch.no_grad():
        up_pos = policy_loss(logp + torch.tensor([[0.1, 0.1], [0.0, 0.0]]), mask, advantage)[0]
        up_neg = policy_loss(logp + torch.tensor([[0.0, 0.0], [0.1, 0.1]]), mask, advantage)[0]
    assert up_pos < loss < up_neg


def test_policy_loss_adds_kl_only_with_a_coefficient_and_a_reference():
    logp = torch.tensor([[0.0, -1.0]])
    base = torch.tensor([[-1.0, -1.0]])
    mask = torch.ones(1, 2)
    advantage = torch.tensor([1.0])
    pg, m0 = policy_loss(logp, mask, advantage, kl_coef=0.5)  # no reference: no KL
    assert "kl" not in m0
    loss, m = policy_loss(logp, mask, advantage, kl_coef=0.5, base_logp=base)
    kl = math.exp(-1) / 2  # token 0 as in the by-hand test above, token 1 has q = 0; mean over the two tokens
    assert m["kl"] == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * kl, rel=1e-6)
    assert m["pg_loss"] == pytest.approx(pg.item())


def test_sft_loss_is_the_token_mean_nll():
    # by hand: tokens with log-probs −1, −2, −3 unmasked → NLL = (1 + 2 + 3)/3 = 2
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, metrics = sft_loss(logp, mask)
    assert loss.item() == pytest.approx(2.0) and metrics["nll"] == pytest.approx(2.0)

    # and against torch's cross-entropy over logits, padding ignored
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 4, 11, generator=g), torch.randint(0, 11, (2, 4), generator=g)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    token_logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 11), targets.masked_fill(mask == 0, -100).view(-1))
    assert_close(sft_loss(token_logp, mask)[0], expected)
