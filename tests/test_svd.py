"""svd: target selection, the factors themselves, and the on-disk cache (reuse, invalidation, corruption,
atomic writes). Models are tiny random ones from conftest; nothing is downloaded."""

from __future__ import annotations

import os

import pytest
import torch

from transformer_squared import svd
from transformer_squared.svd import decompose, find_targets, weight_fingerprints

MLP = ["gate_proj", "up_proj", "down_proj"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


def names(layers: int, block: str, projections: list[str]) -> list[str]:
    return [f"model.layers.{i}.{block}.{p}" for i in range(layers) for p in projections]


def cache_files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# -- target selection --------------------------------------------------------------------------------------------

def test_presets_select_the_named_blocks(tiny_model):
    model = tiny_model("llama")
    assert find_targets(model, "mlp") == names(2, "mlp", MLP)
    assert sorted(find_targets(model, "attn")) == sorted(names(2, "self_attn", ATTN))
    assert sorted(find_targets(model, "all-linear")) == sorted(names(2, "mlp", MLP) + names(2, "self_attn", ATTN))


def test_regex_selects_exactly_what_it_matches(tiny_model):
    model = tiny_model("llama")
    assert find_targets(model, r"layers\.1\.mlp\.(up|down)_proj") == ["model.layers.1.mlp.up_proj",
                                                                       "model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gemma3n"])  # untied lm_head, tied, tied + extra linears
def test_output_and_tied_embeddings_are_never_selected(tiny_model, arch):
    model = tiny_model(arch)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == (arch != "llama")
    everything = find_targets(model, "all-linear")
    assert "lm_head" not in everything
    selected = {id(model.get_submodule(n).weight) for n in everything}
    assert id(model.get_input_embeddings().weight) not in selected
    assert id(model.get_output_embeddings().weight) not in selected
    with pytest.raises(ValueError, match="matches no linear layer"):
        find_targets(model, r"lm_head")  # the only linear it matches is the output embedding


def test_regex_matching_nothing_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"'no_such_layer' matches no linear layer.*mlp, attn, all-linear"):
        find_targets(tiny_model("llama"), "no_such_layer")


@pytest.mark.parametrize("targets", ["mlp", "all-linear"])
def test_gpt2_conv1d_is_refused_with_a_clear_message(targets):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.\S+ is a GPT-2 style Conv1D layer.*nn\.Linear"):
        find_targets(model, targets)


# -- factors -----------------------------------------------------------------------------------------------------

def test_factors_are_the_thin_svd_of_each_weight(tiny_model, svd_cache):
    model = tiny_model("llama")
    d = decompose(model, "all-linear", cache_dir=svd_cache, progress=False)
    modules = dict(model.named_modules())
    for name in d.names:
        W = modules[name].weight.detach()  # (out, in)
        U, S, Vh = d.factors(name)
        r = min(W.shape)
        assert (U.shape, S.shape, Vh.shape) == ((W.shape[0], r), (r,), (r, W.shape[1]))
        assert U.dtype == S.dtype == Vh.dtype == torch.float32
        assert d.rank(name) == r
        assert bool((S[:-1] >= S[1:]).all()) and bool((S >= 0).all())  # singular values: sorted, non-negative
        # float32 SVD of entries ~0.02 reconstructs to ~1e-8; 1e-6 leaves room without hiding a wrong factor
        torch.testing.assert_close((U * S) @ Vh, W, atol=1e-6, rtol=0)


def test_fingerprint_is_a_content_hash(tiny_model):
    a, b, other = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    targets = find_targets(a, "mlp")
    assert weight_fingerprints(a, targets) == weight_fingerprints(b, targets)  # same weights, another object
    assert set(weight_fingerprints(a, targets).values()).isdisjoint(weight_fingerprints(other, targets).values())


# -- cache -------------------------------------------------------------------------------------------------------

def test_second_decompose_reuses_the_cache(tiny_model, svd_cache, monkeypatch):
    first = decompose(tiny_model("llama"), "mlp", cache_dir=svd_cache, progress=False)
    mtime = first.path.stat().st_mtime_ns

    def no_svd(weight, *a):
        raise AssertionError("the cached factors should have been reused")

    monkeypatch.setattr(svd, "svd_factors", no_svd)
    again = decompose(tiny_model("llama"), "mlp", cache_dir=svd_cache, progress=False)  # same weights, new model
    assert again.path == first.path and again.fingerprint == first.fingerprint
    assert again.path.stat().st_mtime_ns == mtime
    assert cache_files(svd_cache) == [first.path.name]
    for name in first.names:
        assert all(torch.equal(x, y) for x, y in zip(first.factors(name), again.factors(name)))


def test_changing_one_weight_gives_a_new_fingerprint_and_file(tiny_model, svd_cache):
    model = tiny_model("llama")
    first = decompose(model, "mlp", cache_dir=svd_cache, progress=False)
    changed = "model.layers.1.mlp.up_proj"
    with torch.no_grad():
        model.get_submodule(changed).weight[0, 0] += 0.5
    second = decompose(model, "mlp", cache_dir=svd_cache, progress=False)
    assert second.fingerprint != first.fingerprint and second.path != first.path
    assert cache_files(svd_cache) == sorted([first.path.name, second.path.name])
    assert [n for n in first.names if first.fingerprints[n] != second.fingerprints[n]] == [changed]
    U, S, Vh = second.factors(changed)
    torch.testing.assert_close((U * S) @ Vh, model.get_submodule(changed).weight.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "empty"])
def test_corrupt_cache_file_is_recomputed(tiny_model, svd_cache, monkeypatch, corrupt):
    model = tiny_model("llama")
    path = decompose(model, "mlp", cache_dir=svd_cache, progress=False).path
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00not safetensors" * 64, "truncated": data[: len(data) // 2], "empty": b""}[corrupt])
    calls = []
    real = svd.svd_factors
    monkeypatch.setattr(svd, "svd_factors", lambda w, *a: calls.append(1) or real(w, *a))
    d = decompose(model, "mlp", cache_dir=svd_cache, progress=False)
    assert len(calls) == len(d.names) == 6
    assert d.path == path and path.stat().st_size == len(data)  # same key, rewritten in full
    for name in d.names:
        U, S, Vh = d.factors(name)
        torch.testing.assert_close((U * S) @ Vh, model.get_submodule(name).weight.detach(), atol=1e-6, rtol=0)


def test_force_recomputes(tiny_model, svd_cache, monkeypatch):
    model = tiny_model("llama")
    decompose(model, "mlp", cache_dir=svd_cache, progress=False)
    calls = []
    real = svd.svd_factors
    monkeypatch.setattr(svd, "svd_factors", lambda w, *a: calls.append(1) or real(w, *a))
    decompose(model, "mlp", cache_dir=svd_cache, progress=False, force=True)
    assert len(calls) == 6


def test_failed_cache_write_leaves_nothing_behind(tiny_model, svd_cache, monkeypatch):
    import safetensors.torch

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")  # a write that dies half-way
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        decompose(tiny_model("llama"), "mlp", cache_dir=svd_cache, progress=False)
    assert cache_files(svd_cache) == []
