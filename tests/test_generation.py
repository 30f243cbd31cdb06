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

