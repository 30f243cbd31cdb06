"""svf: the invariants of W' = U diag(σ') Vᵀ on tiny models of every supported family.

- identity at init: the initial z reproduces the base model (both parametrizations, merged and factored);
- merged ≡ factored for any z;
- remove() restores the base bit-exactly;
- factored mode trains z (``svf_z``) and nothing else;
- `paper` mixtures compose linearly (and from cached components), `reference` keeps Σσ and mixes z;
- per-row σ' in SVFLinear; the merged-weight cache budget; applied() restoring state on error.

Tolerance for logits: the SVD recomposed in float32 reproduces each weight to ~1e-8 (entries ~0.02), which moves
logits of magnitude < 1 by at most ~4e-6 over two layers (measured; Gemma 3n, with AltUp and LAuReL around each
layer, drifts most). ATOL = 2e-5 leaves 5x headroom and is ~1000x below the change a 10% z perturbation makes
(≥ 1.5e-2, also asserted).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import ARCHS
from transformer_squared import svf as svf_module
from transformer_squared.experts import Expert, ExpertError, mix
from transformer_squared.svf import SVFLinear, compose_weight, init_z, sigma

ATOL, RTOL = 2e-5, 1e-4
CHANGED = 1e-3  # a perturbed expert must move some logit by more than this


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def weights_of(svf) -> dict[str, torch.Tensor]:
    return {n: lin.weight.detach().clone() for n, lin in svf.linears.items()}


# -- the four invariants, on every family ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_identity_at_init(arch, tiny_model, make_svf, input_ids, logits):
    svf = make_svf(tiny_model(arch))
    base = logits(svf.model, input_ids)
    for parametrization in ("paper", "reference"):
        with svf.applied(Expert.for_model(svf, parametrization=parametrization)):
            close(logits(svf.model, input_ids), base)
        with svf.factored(parametrization=parametrization):
            close(logits(svf.model, input_ids), base)


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_equals_factored(arch, tiny_model, make_svf, input_ids, logits, random_z):
    svf = make_svf(tiny_model(arch))
    base = logits(svf.model, input_ids)
    expert = Expert.for_model(svf, random_z(svf))
    with svf.applied(expert):
        merged = logits(svf.model, input_ids)
    with svf.factored(expert.z):
        factored = logits(svf.model, input_ids)
    assert (merged - base).abs().max() > CHANGED
    close(merged, factored)


@pytest.mark.parametrize("targets", ["attn", "all-linear"])
def test_merged_equals_factored_with_biases(targets, tiny_model, make_svf, input_ids, logits, random_z):
    svf = make_svf(tiny_model("qwen2"), targets)  # Qwen2's q/k/v carry a bias
    with torch.no_grad():
        for lin in svf.linears.values():
            if lin.bias is not None:
                lin.bias.normal_(0, 0.1)  # HF initialises biases to 0, which would hide a dropped bias
    assert any(lin.bias is not None for lin in svf.linears.values())
    base = logits(svf.model, input_ids)
    with svf.factored():
        close(logits(svf.model, input_ids), base)
    expert = Expert.for_model(svf, random_z(svf))
    with svf.applied(expert):
        merged = logits(svf.model, input_ids)
    with svf.factored(expert.z):
        close(logits(svf.model, input_ids), merged)


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_restores_the_base_exactly(arch, tiny_model, make_svf, input_ids, logits, random_z):
    svf = make_svf(tiny_model(arch))
    base = logits(svf.model, input_ids)
    before = {n: (lin.weight.data_ptr(), lin.weight.detach().clone()) for n, lin in svf.linears.items()}
    svf.apply(Expert.for_model(svf, random_z(svf, seed=1)))
    svf.apply(Expert.for_model(svf, random_z(svf, seed=2)))  # switching experts must not drift from the base
    assert not torch.equal(logits(svf.model, input_ids), base)
    svf.remove()
    assert svf.active is None
    assert torch.equal(logits(svf.model, input_ids), base)
    for n, lin in svf.linears.items():
        assert lin.weight.data_ptr() == before[n][0] and torch.equal(lin.weight, before[n][1])


@pytest.mark.parametrize("arch", ARCHS)
def test_factored_mode_trains_z_and_nothing_else(arch, tiny_model, make_svf, input_ids, random_z):
    svf = make_svf(tiny_model(arch))
    model = svf.model
    originals = dict(svf.linears)
    with svf.factored(random_z(svf)) as layers:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"{n}.svf_z" for n in svf.names}
        assert all(isinstance(model.get_submodule(n), SVFLinear) for n in svf.names)
        model(input_ids).logits.square().mean().backward()
        for n, layer in layers.items():
            assert layer.svf_z.grad is not None and torch.isfinite(layer.svf_z.grad).all(), n
            assert layer.svf_z.grad.abs().sum() > 0, n
        reached = {n for n, p in model.named_parameters() if p.grad is not None}
        assert reached == trainable
    assert all(model.get_submodule(n) is originals[n] for n in svf.names)
    assert all(p.requires_grad for p in model.parameters())  # the flags from before are back


def test_factored_mode_restores_frozen_flags(tiny_model, make_svf):
    svf = make_svf(tiny_model("llama"))
    embed = svf.model.get_input_embeddings().weight
    embed.requires_grad_(False)
    with svf.factored():
        pass
    assert not embed.requires_grad
    assert all(p.requires_grad for n, p in svf.model.named_parameters() if "embed" not in n)


def test_merged_and_factored_modes_exclude_each_other(svf, random_z):
    expert = Expert.for_model(svf, random_z(svf))
    with svf.factored():
        with pytest.raises(RuntimeError, match="leave factored mode"):
            svf.apply(expert)
    svf.apply(expert)
    with pytest.raises(RuntimeError, match="remove the merged expert"):
        with svf.factored():
            pass


# -- paper parametrization: linearity ----------------------------------------------------------------------------

def test_paper_mixture_of_merged_weights_is_the_merged_weight_of_the_mixed_z(svf, random_z):
    experts = [Expert.for_model(svf, random_z(svf, seed=s), name=f"e{s}") for s in range(3)]
    alphas = [0.5, -0.25, 0.75]
    mixed = mix(experts, alphas)
    for n in svf.names:
        U, S, Vh = svf.decomposition.factors(n)
        direct = compose_weight(U, sigma(mixed.z[n], S), Vh, torch.float32)  # W'(Σ αz)
        blended = sum(a * compose_weight(U, sigma(e.z[n], S), Vh, torch.float32) for e, a in zip(experts, alphas))
        torch.testing.assert_close(direct, blended, atol=1e-6, rtol=0)  # entries ~0.02; float32 rounding ~1e-9


@pytest.mark.parametrize("per_matrix", [False, True], ids=["global-alpha", "per-matrix-alpha"])
def test_compose_of_a_cached_mixture_uses_the_components(svf, random_z, monkeypatch, per_matrix):
    a, b = (Expert.for_model(svf, random_z(svf, seed=s), name=f"e{s}") for s in (1, 2))
    if per_matrix:
        alphas = [{n: 0.2 + 0.1 * i for i, n in enumerate(svf.names)}, {n: 0.4 for n in svf.names}]
    else:
        alphas = [0.7, 0.3]
    mixed = mix([a, b], alphas)
    from_z = svf.compose(Expert(mixed.z, mixed.meta), cache=False)  # no components: built from z
    components = [{n: w.clone() for n, w in svf.compose(e).items()} for e in (a, b)]  # now cached

    def no_matmul(*args, **kwargs):
        raise AssertionError("a mixture of cached experts should be built from their cached weights")

    monkeypatch.setattr(svf_module, "compose_weight", no_matmul)
    cached = svf.compose(mixed)
    for n in svf.names:
        torch.testing.assert_close(cached[n], from_z[n], atol=1e-6, rtol=0)
    for e, before in zip((a, b), components):  # mixing must not have accumulated into a component's weights
        assert all(torch.equal(svf.compose(e)[n], before[n]) for n in svf.names)


# -- reference parametrization ------------------------------------------------------------------------------------

def test_reference_sigma_keeps_the_sum_of_singular_values():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(16, generator=g).sort(descending=True).values
    z = torch.randn(5, 16, generator=g) * 3  # (B, r): batch of arbitrary z, far from init
    s = sigma(z, S, "reference")
    assert s.shape == (5, 16)
    torch.testing.assert_close(s.sum(-1), S.sum().expand(5), atol=0, rtol=1e-5)
    assert not torch.allclose(s, S.expand(5, 16))  # ...while the individual values did change
    torch.testing.assert_close(sigma(init_z(16, "reference"), S, "reference"), S, atol=0, rtol=1e-6)


def test_reference_max_mult_cancels():
    # σ' = s · Σσ / Σs with s = σ ⊙ sigmoid(z) · c: the official code's c = max_mult cancels (svf.py, on random z)
    g = torch.Generator().manual_seed(0)
    z, S = torch.randn(3, 16, generator=g), torch.rand(16, generator=g) + 0.1
    for c in (0.5, 2.0, 10.0):
        scaled = S * torch.sigmoid(z) * c
        official = scaled * (S.sum() / scaled.sum(dim=-1, keepdim=True))
        torch.testing.assert_close(official, sigma(z, S, "reference"), rtol=1e-6, atol=1e-6)


def test_reference_merged_equals_factored(svf, input_ids, logits, random_z):
    z = random_z(svf, scale=1.0, parametrization="reference")
    expert = Expert.for_model(svf, z, parametrization="reference")
    with svf.applied(expert):
        merged = logits(svf.model, input_ids)
    with svf.factored(z, parametrization="reference"):
        close(logits(svf.model, input_ids), merged)
    assert (merged - logits(svf.model, input_ids)).abs().max() > CHANGED


def test_reference_mixture_mixes_z(svf, random_z):
    a, b = (Expert.for_model(svf, random_z(svf, scale=1.0, seed=s, parametrization="reference"),
                             parametrization="reference", name=f"r{s}") for s in (1, 2))
    mixed = mix([a, b], [0.6, 0.4])
    assert mixed.parametrization == "reference"
    for n in svf.names:
        torch.testing.assert_close(mixed.z[n], 0.6 * a.z[n] + 0.4 * b.z[n], atol=1e-7, rtol=0)
    composed = svf.compose(mixed)
    from_z = svf.compose(Expert(mixed.z, mixed.meta), cache=False)
    blended = {n: 0.6 * svf.compose(a)[n] + 0.4 * svf.compose(b)[n] for n in svf.names}
    n = svf.names[0]
    torch.testing.assert_close(composed[n], from_z[n], atol=1e-7, rtol=0)
    # W' is not linear in z here: blending merged weights would be a different (wrong) model
    assert (composed[n] - blended[n]).abs().max() > 1e-5


# -- per-row σ' (different experts in one batch) ------------------------------------------------------------------

@pytest.mark.parametrize("parametrization", ["paper", "reference"])
@pytest.mark.parametrize("shape", [(3, 5), (3,)], ids=["BT", "B"])
def test_row_sigma_gives_each_row_its_own_expert(parametrization, shape):
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=True)
    with torch.no_grad():
        base.bias.normal_()
    U, S, Vh = torch.linalg.svd(base.weight.detach(), full_matrices=False)
    z = init_z(10, parametrization) + torch.randn(3, 10)  # (B, r): one z per row
    x = torch.randn(*shape, 12)
    layer = SVFLinear(base, U, S, Vh, init_z(10, parametrization), parametrization)
    layer.row_sigma = sigma(z, S, parametrization)  # (B, r)
    together = layer(x)
    assert together.shape == (*shape, 10)
    layer.row_sigma = None
    for b in range(3):
        with torch.no_grad():
            layer.svf_z.copy_(z[b])
        alone = layer(x[b : b + 1])
        torch.testing.assert_close(together[b : b + 1], alone, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_row_sigma_mixes_experts_in_one_model_batch(svf, input_ids, logits, random_z):
    zs = [random_z(svf, seed=s) for s in (1, 2)]  # row 0 gets expert 1, row 1 expert 2
    alone = []
    for b, z in enumerate(zs):
        with svf.factored(z):
            alone.append(logits(svf.model, input_ids[b : b + 1]))
    with svf.factored() as layers:
        for n, layer in layers.items():
            layer.row_sigma = torch.stack([sigma(z[n], layer.S) for z in zs])  # (B, r)
        together = logits(svf.model, input_ids)
    close(together, torch.cat(alone))
    with svf.factored(zs[0]):
        row1_with_expert1 = logits(svf.model, input_ids[1:2])
    assert (row1_with_expert1 - alone[1]).abs().max() > CHANGED  # the two experts really differ


# -- merged-weight cache ------------------------------------------------------------------------------------------

def count_compositions(monkeypatch) -> list[int]:
    calls = []
    real = svf_module.compose_weight
    monkeypatch.setattr(svf_module, "compose_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cache_evicts_least_recently_used(tiny_model, make_svf, random_z, monkeypatch):
    svf = make_svf(tiny_model("llama"))
    per_expert = sum(lin.weight.numel() * 4 for lin in svf.linears.values())  # float32 bytes of one W' set
    svf.cache_bytes = int(2.5 * per_expert)  # room for two experts
    e1, e2, e3 = (Expert.for_model(svf, random_z(svf, seed=s)) for s in (1, 2, 3))
    calls = count_compositions(monkeypatch)
    for e in (e1, e2, e1, e3):  # e1 used again after e2, so e2 is the least recently used when e3 arrives
        svf.compose(e)
    assert len(calls) == 3 * len(svf.names)  # e1's second use was a hit
    calls.clear()
    svf.compose(e1), svf.compose(e3)
    assert calls == []
    svf.compose(e2)
    assert len(calls) == len(svf.names)  # e2 was evicted


def test_expert_larger_than_the_budget_is_never_cached(svf, random_z, monkeypatch):
    svf.cache_bytes = 1024  # smaller than one expert's weights
    expert = Expert.for_model(svf, random_z(svf))
    calls = count_compositions(monkeypatch)
    first, second = svf.compose(expert), svf.compose(expert)
    assert len(calls) == 2 * len(svf.names)
    assert all(torch.equal(first[n], second[n]) for n in svf.names)


def test_switching_back_to_a_cached_expert_is_a_pointer_swap(svf, random_z, monkeypatch):
    e1, e2 = (Expert.for_model(svf, random_z(svf, seed=s)) for s in (1, 2))
    svf.apply(e1)
    ptrs = {n: lin.weight.data_ptr() for n, lin in svf.linears.items()}
    svf.apply(e2)
    calls = count_compositions(monkeypatch)
    svf.apply(e1)
    assert calls == [] and {n: lin.weight.data_ptr() for n, lin in svf.linears.items()} == ptrs


# -- applied() ---------------------------------------------------------------------------------------------------

def test_applied_restores_the_previous_expert_when_the_block_raises(svf, input_ids, logits, random_z):
    e1, e2 = (Expert.for_model(svf, random_z(svf, seed=s)) for s in (1, 2))
    svf.apply(e1)
    with_e1 = logits(svf.model, input_ids)
    with pytest.raises(KeyError, match="boom"):
        with svf.applied(e2):
            assert svf.active == e2.key
            raise KeyError("boom")
    assert svf.active == e1.key
    assert torch.equal(logits(svf.model, input_ids), with_e1)
    with svf.applied(None):  # None means the base model
        assert svf.active is None
    assert svf.active == e1.key and torch.equal(logits(svf.model, input_ids), with_e1)


def test_applied_from_the_base_returns_to_the_base_exactly(svf, input_ids, logits, random_z):
    base = logits(svf.model, input_ids)
    with pytest.raises(RuntimeError):
        with svf.applied(Expert.for_model(svf, random_z(svf))):
            assert not torch.equal(logits(svf.model, input_ids), base)
            raise RuntimeError
    assert svf.active is None and torch.equal(logits(svf.model, input_ids), base)


def test_applied_with_an_invalid_expert_changes_nothing(svf, input_ids, logits, random_z):
    good = Expert.for_model(svf, random_z(svf, seed=1))
    svf.apply(good)
    before, weights = logits(svf.model, input_ids), weights_of(svf)
    bad = Expert.for_model(svf, {n: z * float("nan") for n, z in random_z(svf).items()})
    with pytest.raises(ExpertError, match="non-finite"):
        with svf.applied(bad):
            pytest.fail("the block must not run")
    assert svf.active == good.key
    assert all(torch.equal(w, svf.linears[n].weight) for n, w in weights.items())
    assert torch.equal(logits(svf.model, input_ids), before)
