"""decoding.prepacked: linears on oneDNN-packed weights give the plain path's greedy tokens, see every weight change
SVFModel makes (apply, remove), fall back to the plain path under autograd, and leave the model as it was."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.decoding import invalidate, prepacked, supported

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


def _greedy(model, input_ids, n: int = 12) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_greedy_tokens_and_close_logits(tiny_model, input_ids, logits, dtype):
    model = tiny_model("llama").to(dtype)
    assert supported(model)
    plain, plain_logits = _greedy(model, input_ids), logits(model, input_ids)
    with prepacked(model):
        fast, fast_logits = _greedy(model, input_ids), logits(model, input_ids)
    assert torch.equal(fast, plain)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast_logits.float(), plain_logits.float(), **tol)


def test_generate_ids_with_prepack_matches_the_plain_path(tiny_model):
    from conftest import char_tokenizer

    from transformer_squared.generation import GenerationConfig, generate_ids

    model, tok = tiny_model("llama"), char_tokenizer()
    texts = ["What is 2 + 2?\n", "Name a colour.\n"]
    plain = generate_ids(model, tok, texts, GenerationConfig(max_new_tokens=8))
    fast = generate_ids(model, tok, texts, GenerationConfig(max_new_tokens=8, prepack=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, fast))
    assert not any("forward" in vars(m) for m in model.modules())  # the context closed with the call


def test_an_applied_expert_is_seen_and_removing_it_restores_the_base(svf, input_ids, logits, random_z):
    from transformer_squared.experts import Expert

    model = svf.model
    expert = Expert.for_model(svf, random_z(svf, scale=0.5))
    base = logits(model, input_ids)
    svf.apply(expert)
    want = logits(model, input_ids)
    svf.remove()
    with prepacked(model):
        torch.testing.assert_close(logits(model, input_ids), base, rtol=1e-4, atol=1e-4)  # packs made from base
        svf.apply(expert)
        got = logits(model, input_ids)
        svf.remove()
        again = logits(model, input_ids)
    assert not torch.allclose(want, base, atol=1e-3)  # the expert visibly changes the model
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, base, rtol=1e-4, atol=1e-4)


def test_in_place_writes_through_the_parameter_are_seen_through_data_after_invalidate(tiny_model, input_ids, logits):
    model = tiny_model("llama")
    lin = model.model.layers[0].mlp.down_proj
    with prepacked(model):
        logits(model, input_ids)  # packs made
        with torch.no_grad():
            lin.weight.mul_(2.0)  # moves the parameter's version counter
        want_param = logits(model, input_ids)
        lin.weight.data.mul_(0.5)  # through .data: no counter moves, the pack is stale until invalidate()
        invalidate(model)
        got_data = logits(model, input_ids)
    with prepacked(model, enabled=False):
        plain_data = logits(model, input_ids)
    torch.testing.assert_close(got_data, plain_data, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        lin.weight.mul_(2.0)
    torch.testing.assert_close(want_param, logits(model, input_ids), rtol=1e-4, atol=1e-4)


def test_autograd_takes_the_plain_path_and_the_model_is_left_as_it_was(tiny_model, input_ids):
    model = tiny_model("llama")
    with prepacked(model):
        with prepacked(model):  # nested: shares the outer packs
            pass
        assert any("forward" in vars(m) for m in model.modules())
        model(input_ids).logits.sum().backward()  # mkldnn's packed linear has no backward: must not be used here
    assert model.lm_head.weight.grad is not None
    assert not any("forward" in vars(m) or hasattr(m, "_t2_prepacked") for m in model.modules())
