"""generate(): one prompt as a string, generation options as keywords; the package sets a sleeping OpenMP wait
policy before torch loads (safe beside other processes), and says so when torch came first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture
def tiny(tiny_model):
    from conftest import char_tokenizer

    return tiny_model("llama"), char_tokenizer()


def test_one_prompt_as_a_string_and_options_as_keywords(tiny):
    from transformer_squared.generation import GenerationConfig, generate, generate_ids

    model, tok = tiny
    one = generate(model, tok, "What is 2 + 2?", max_new_tokens=3)
    many = generate(model, tok, ["What is 2 + 2?"], GenerationConfig(max_new_tokens=3))
    assert isinstance(one, str) and many == [one]
    assert len(generate_ids(model, tok, ["What is 2 + 2?\n"], GenerationConfig(max_new_tokens=3))[0]) <= 3
    with pytest.raises(ValueError, match="not both"):
        generate(model, tok, "hi", GenerationConfig(), max_new_tokens=3)
    with pytest.raises(ValueError, match="--max-new-tokens"):
        generate(model, tok, "hi", max_new_tokens=0)


def test_prompt_lookup_gives_the_plain_greedy_tokens_in_fewer_forward_passes(tiny_model):
    """In float64 (no rounding to differ) prompt lookup decoding must reproduce plain greedy decoding token for token,
    and, on answers that repeat themselves (the tiny model loops), accept proposals: fewer forward passes than
    tokens. Prompts are decoded one at a time, whatever batch_size says."""
    import torch

    from conftest import char_tokenizer, forward_counter

    from transformer_squared.generation import GenerationConfig, generate_ids

    model, tok = tiny_model("llama").double(), char_tokenizer()
    texts = ["abcabcabcabc", "What is 2 + 2?\n", "the cat the cat the cat\n"]
    calls = forward_counter(model)
    plain = generate_ids(model, tok, texts, GenerationConfig(max_new_tokens=24, batch_size=1))
    plain_calls, calls[0] = calls[0], 0
    fast = generate_ids(model, tok, texts, GenerationConfig(max_new_tokens=24, batch_size=16, lookup=5))
    assert all(torch.equal(a, b) for a, b in zip(plain, fast))
    tokens = sum(len(ids) for ids in plain)
    assert plain_calls >= tokens  # one forward pass per token (and one for an <eos>, which is stripped)
    assert calls[0] < 0.75 * tokens, (calls[0], tokens)
    sampled = generate_ids(model, tok, texts, GenerationConfig(max_new_tokens=24, lookup=5, temperature=1.0))
    assert len(sampled) == 3 and all(len(ids) <= 24 for ids in sampled)


def test_lookup_must_not_be_negative():
    from transformer_squared.generation import GenerationConfig, lookup_options

    with pytest.raises(ValueError, match="--lookup"):
        GenerationConfig(lookup=-1)
    assert lookup_options(GenerationConfig()) == {}
    assert lookup_options(GenerationConfig(lookup=7)) == {"prompt_lookup_num_tokens": 7}


def _python(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env={**base, **env}, capture_output=True,
                          text=True, timeout=120)


def test_importing_the_package_sets_a_passive_wait_policy_unless_one_is_set():
    show = "import os, transformer_squared; print(os.environ['OMP_WAIT_POLICY'])"
    assert _python(show).stdout.strip() == "PASSIVE"
    assert _python(show, OMP_WAIT_POLICY="ACTIVE").stdout.strip() == "ACTIVE"  # the user's choice wins


# torch already imported, with `threads` threads (a stand-in module: the real import takes seconds)
TORCH_FIRST = ("import sys, types; torch = types.ModuleType('torch'); torch.get_num_threads = lambda: {threads}; "
               "sys.modules['torch'] = torch; import transformer_squared")


def test_torch_imported_first_with_threads_gets_a_warning_saying_what_to_set():
    proc = _python(TORCH_FIRST.format(threads=2))
    assert "RuntimeWarning" in proc.stderr and "OMP_WAIT_POLICY=PASSIVE" in proc.stderr, proc.stderr
    for quiet in (_python(TORCH_FIRST.format(threads=2), OMP_WAIT_POLICY="PASSIVE"),  # the user chose a policy
                  _python(TORCH_FIRST.format(threads=1))):  # one thread: nothing waits
        assert quiet.returncode == 0 and "OMP_WAIT_POLICY" not in quiet.stderr, quiet.stderr

