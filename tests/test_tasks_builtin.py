"""The data-free built-in tasks added for self-adaptation: `antonyms` (splits disjoint in the words they ask about,
fixed, every listed antonym accepted, strict first-word scoring) and `subtraction` (arithmetic with negative
results, same domain as addition). No model, no data files."""

from __future__ import annotations

import pytest

from transformer_squared.tasks import (
    TASKS,
    AntonymsTask,
    ArithmeticTask,
    SubtractionTask,
    get_task,
)
from transformer_squared.tasks.antonyms import antonyms_of, word_pairs

SPLITS = ("train", "valid", "test")


def asked(task, split: str) -> set[str]:
    return {e["word"] for e in task.examples(split)}


# -- antonyms ------------------------------------------------------------------------------------------------------

def test_antonym_splits_never_ask_the_same_word():
    task = AntonymsTask()
    words = {s: asked(task, s) for s in SPLITS}
    assert all(words.values()), {s: len(w) for s, w in words.items()}
    assert not words["train"] & words["test"]
    assert not words["train"] & words["valid"]
    assert not words["valid"] & words["test"]
    # stronger than disjoint questions: no word of a held-out pair is asked in train (its answer may be one)
    held_out = {w for s in ("valid", "test") for pair in task.pairs(s) for w in pair}
    assert not words["train"] & held_out


def test_antonym_splits_partition_the_pairs_with_the_documented_fractions():
    task = AntonymsTask()
    pairs = {s: task.pairs(s) for s in SPLITS}
    every = word_pairs()
    assert sorted(p for s in SPLITS for p in pairs[s]) == sorted(every)  # each unique pair in exactly one split
    assert len(pairs["test"]) == round(len(every) * 0.25) and len(pairs["valid"]) == round(len(every) * 0.10)
    # the test split asks every word of its pairs once (nothing is held out from it)
    assert len(task.examples("test")) == len({w for pair in pairs["test"] for w in pair})


def test_antonym_examples_are_deterministic_and_well_formed():
    a, b = AntonymsTask(), get_task("antonyms")
    for split in SPLITS:
        examples = a.examples(split)
        assert examples == b.examples(split)
        for e in examples:
            assert e["prompt"] == f"Give the antonym of '{e['word']}'. Answer with the word only."
            assert e["answer"] == e["reference"] and e["answer"] in e["accepted"]
            assert e["accepted"] == sorted(antonyms_of()[e["word"]])
            assert a.score(e["reference"], e) == 1.0  # the reference completion is correct


def test_word_pairs_are_unique_in_either_order():
    pairs = word_pairs()
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    assert ("asleep", "awake") in pairs  # listed twice in PAIRS, kept once
    assert ("dangerous", "safe") not in pairs and ("safe", "dangerous") in pairs  # reversed duplicate dropped


@pytest.mark.parametrize("completion, score", [
    ("dark", 1.0),
    ("heavy", 1.0),  # 'light' has two antonyms in the list: both count
    ("Dark.", 1.0),  # case and punctuation do not matter
    ("  DARK\nbecause light is bright", 1.0),  # the first word is what counts
    ("'heavy'", 1.0),
    ("The antonym of 'light' is 'dark'.", 0.0),  # restating the question fails (first word: 'the')
    ("light", 0.0),
    ("darkness", 0.0),
    ("", 0.0),
    ("42", 0.0),
])
def test_antonym_scoring_reads_the_first_word(completion, score):
    task = AntonymsTask()
    example = {"prompt": "Give the antonym of 'light'. Answer with the word only.", "answer": "dark",
               "reference": "dark", "word": "light", "accepted": sorted(antonyms_of()["light"])}
    assert sorted(antonyms_of()["light"]) == ["dark", "heavy"]  # from PAIRS: "light dark", "heavy light"
    assert task.score(completion, example) == score
    # an example without "accepted" falls back to the table by word
    bare = {k: v for k, v in example.items() if k != "accepted"}
    assert task.score(completion, bare) == score


def test_antonym_reward_uses_the_same_scoring():
    task = AntonymsTask()
    [example] = [e for e in task.examples("test")[:1]]
    wrong = next(w for w in ("yes", "no", "up") if w not in example["accepted"])
    assert task.reward([example["prompt"]] * 2, [example["answer"], wrong],
                       answer=[example["answer"]] * 2, word=[example["word"]] * 2,
                       accepted=[example["accepted"]] * 2) == [1.0, 0.0]


def test_antonyms_takes_no_data():
    with pytest.raises(ValueError, match="built in and takes no data"):
        AntonymsTask("some/path")


# -- subtraction ---------------------------------------------------------------------------------------------------

def test_subtraction_examples_and_negative_answers():
    task = SubtractionTask()
    assert task.name == "subtraction" and task.domain == ArithmeticTask.domain == "arithmetic"
    test = task.examples("test")
    assert len(test) == 500  # TEST_SIZE, as for addition
    for e in test:
        assert e["op"] == "-" and e["prompt"] == f"What is {e['a']} - {e['b']}? Answer with the number only."
        assert e["answer"] == str(e["a"] - e["b"]) and 10 <= e["a"] <= 99 and 10 <= e["b"] <= 99
    assert any(e["a"] < e["b"] for e in test)  # negative results occur
    # the same permuted pairs as addition (same SEED): only the operator differs
    assert [(e["a"], e["b"]) for e in test] == ArithmeticTask().pairs("test")
    splits = {s: {(e["a"], e["b"]) for e in task.examples(s)} for s in SPLITS}
    assert not splits["train"] & splits["test"] and not splits["valid"] & splits["test"]


@pytest.mark.parametrize("completion, score", [
    ("-35", 1.0),
    ("The answer is -35.", 1.0),
    ("25 - 60 = -35", 1.0),  # the stated result after '='
    ("35", 0.0),  # the sign matters
    ("25 minus 60 is -35", 0.0),  # restating the operands without '=' is scored by its first number
])
def test_subtraction_scores_negative_results(completion, score):
    task = SubtractionTask()
    example = {"prompt": "What is 25 - 60? Answer with the number only.", "answer": "-35", "reference": "-35"}
    assert task.score(completion, example) == score


def test_registry_names():
    assert TASKS["antonyms"] is AntonymsTask and TASKS["subtraction"] is SubtractionTask
    assert isinstance(get_task("subtraction"), SubtractionTask) and isinstance(get_task("antonyms"), AntonymsTask)
