"""Tasks: split sizes and disjointness, reference completions score 1.0, wrong ones 0.0, extraction edge cases,
registries and error messages. Real datasets are read from ../shared/data beside the repo root (skipped if
absent); HumanEval, MATH and user tasks use tiny fixtures written to tmp_path. Code runs only in the sandbox."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from transformer_squared.tasks import (
    REWARDS,
    TASKS,
    ArcTask,
    ArithmeticTask,
    RewardTask,
    Task,
    answer_distribution,
    boxed_answer,
    extract_code,
    extract_letter,
    first_number,
    get_reward,
    get_task,
    last_number,
    normalize_math_answer,
    stated_result,
)

DATA = Path(__file__).parents[1].parent / "shared" / "data"


def shared(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"shared dataset {path} not found (tests read ../shared/data beside the repo root)")
    return path


def sandbox() -> None:
    pytest.importorskip("transformer_squared.sandbox", reason="transformer_squared.sandbox is not available")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("It costs $1,234.50 in total.", "1234.5", "1234.5"),
        ("From -5 to 3", "-5", "3"),
        ("3.0 apples and 2.50 pears", "3", "2.5"),
        ("1,000,000 people, 12 groups", "1000000", "12"),
        ("#### 72", "72", "72"),
        ("no digits here", None, None),
        ("list: 3, 4, 5", "3", "5"),
    ],
)
def test_numbers(text, first, last):
    assert first_number(text) == first
    assert last_number(text) == last


def test_stated_result_prefers_the_number_after_equals():
    assert stated_result("17 + 25 = 42") == "42"
    assert stated_result("42") == "42"
    assert stated_result("The answer is 42.") == "42"
    assert stated_result("17 plus 25 is 42") == "17"  # operands restated without '=': scored by the first number
    assert stated_result("25 - 37 = -12") == "-12"


def test_boxed_answer_handles_nesting_and_takes_the_last_box():
    assert boxed_answer("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert boxed_answer("\\boxed{1} no, \\boxed{\\sqrt{\\frac{a}{b}}}") == "\\sqrt{\\frac{a}{b}}"
    assert boxed_answer("\\boxed{2") is None  # cut off inside the box
    assert boxed_answer("the answer is 3") is None


@pytest.mark.parametrize(
    ("a", "b"),
    [("\\dfrac{1}{2}", "1/2"), ("\\frac12", "\\frac{1}{2}"), ("$\\left( 3, 4 \\right)$", "(3,4)"), ("x = 5.", "5"),
     ("1,000", "1000"), ("90^\\circ", "90"), ("\\text{(B)}", "(B)")],
)
def test_normalize_math_answer_equates(a, b):
    assert normalize_math_answer(a) == normalize_math_answer(b)


def test_normalize_math_answer_keeps_different_answers_apart():
    assert normalize_math_answer("\\frac{1}{3}") != normalize_math_answer("\\frac{1}{2}")
    assert normalize_math_answer("-2") != normalize_math_answer("2")


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), ("B.", "B"), ("(B)", "B"), ("**B**", "B"), ("Answer: B", "B"), ("The answer is (C).", "C"),
     ("Looking at A and C, the answer is C", "C"), ("Option D is right", "D"), ("A is correct", "A"),
     ("a plant needs light", None), ("A plant needs light", None), ("b", None), ("I am not sure.", None),
     ("E", None)],  # E is not among this example's labels
)
def test_extract_letter(text, letter):
    assert extract_letter(text, "ABCD") == letter


def test_extract_code():
    assert extract_code("Here:\n```\nx = 1\n```\n```python\ny = 2\n```") == "y = 2\n"  # a python block wins
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # unclosed fence
    assert extract_code("def f(): return 1") == "def f(): return 1"  # no fence: the whole completion
    assert extract_code("  \n") is None


# ---------------------------------------------------------------------------------------------------- arithmetic


def test_arithmetic_splits_are_disjoint_deterministic_and_cover_all_pairs():
    task = ArithmeticTask()
    pairs = {split: task.pairs(split) for split in ("train", "valid", "test")}
    assert [len(pairs[s]) for s in ("train", "valid", "test")] == [7400, 200, 500]
    sets = {split: set(p) for split, p in pairs.items()}
    assert not sets["test"] & sets["train"] and not sets["test"] & sets["valid"] and not sets["valid"] & sets["train"]
    assert len(sets["train"] | sets["valid"] | sets["test"]) == 90 * 90
    assert ArithmeticTask().examples("test") == task.examples("test")
    assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in sets["test"])


def test_arithmetic_scoring():
    task = ArithmeticTask()
    examples = task.examples("test")
    assert all(task.score(e["reference"], e) == 1.0 for e in examples)
    example = {"prompt": "What is 17 + 25? Answer with the number only.", "answer": "42"}
    for reply, expected in [("42", 1.0), ("17 + 25 = 42", 1.0), ("The answer is 42.", 1.0), ("43", 0.0),
                            ("17 plus 25 is 42", 0.0), ("", 0.0), ("4200", 0.0)]:
        assert task.score(reply, example) == expected, reply
    assert examples[0]["prompt"].endswith("Answer with the number only.")


def test_arithmetic_options():
    task = ArithmeticTask(digits=1, op="-")
    assert [len(task.examples(s)) for s in ("train", "valid", "test")] == [57, 8, 16]
    example = task.examples("test")[0]
    assert example["answer"] == str(example["a"] - example["b"])
    with pytest.raises(ValueError, match="op must be"):
        ArithmeticTask(op="/")
    with pytest.raises(ValueError, match="takes no data"):
        ArithmeticTask(data="somewhere")


# ---------------------------------------------------------------------------------------------------- GSM8K


@pytest.fixture(scope="module")
def gsm8k():
    return get_task("gsm8k", data=shared("gsm8k"))


def test_gsm8k_splits(gsm8k):
    splits = {split: gsm8k.examples(split) for split in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [3737, 3736, 1319]
    questions = {split: {e["question"] for e in examples} for split, examples in splits.items()}
    assert not questions["train"] & questions["valid"]
    assert not questions["test"] & (questions["train"] | questions["valid"])
    assert gsm8k.examples("valid") == splits["valid"]
    assert splits["train"][0]["question"].startswith("Natalia sold clips")  # index 0 of train.jsonl: even -> train


def test_gsm8k_references_score_and_wrong_answers_do_not(gsm8k):
    examples = gsm8k.examples("test")
    assert all(gsm8k.score(e["reference"], e) == 1.0 for e in examples)
    assert all("<<" not in e["reference"] and e["reference"].endswith(f"#### {e['answer']}") for e in examples)
    prompts, answers = [e["prompt"] for e in examples[:50]], [e["answer"] for e in examples[:50]]
    assert gsm8k.reward(prompts, [f"Thinking...\n#### {a}" for a in answers], answer=answers) == [1.0] * 50
    assert gsm8k.reward(prompts, [f"Thinking...\n#### {int(a) + 1}" for a in answers], answer=answers) == [0.0] * 50
    assert gsm8k.score("I do not know.", examples[0]) == 0.0


def test_gsm8k_data_paths(tmp_path):
    test_file = shared("gsm8k") / "test.jsonl"
    assert len(get_task("gsm8k", data=test_file).examples("test")) == 1319  # a single file serves its own split
    with pytest.raises(ValueError, match="not a train file"):
        get_task("gsm8k", data=test_file).examples("train")
    with pytest.raises(ValueError, match="train.jsonl"):
        get_task("gsm8k", data=tmp_path).examples("train")
    with pytest.raises(ValueError, match="does not exist"):
        get_task("gsm8k", data=tmp_path / "nowhere")


def test_missing_data_without_datasets_says_how_to_pass_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ValueError, match=r"task 'gsm8k' needs data: pass --data PATH .*pip install datasets"):
        get_task("gsm8k").examples("test")


# ---------------------------------------------------------------------------------------------------- ARC


@pytest.fixture(scope="module")
def arc():
    return get_task("arc", data=shared("arc_easy"))


def test_arc_splits(arc):
    splits = {split: arc.examples(split) for split in ("train", "valid", "test", "dev")}
    assert [len(splits[s]) for s in ("train", "valid", "test", "dev")] == [1126, 1125, 2376, 570]
    ids = {split: {e["id"] for e in examples} for split, examples in splits.items()}
    assert not ids["train"] & ids["valid"] and not ids["test"] & (ids["train"] | ids["valid"] | ids["dev"])
    assert arc.examples("test") == splits["test"]
    assert arc.domain == "reasoning"


def test_arc_references_score_wrong_and_missing_letters_do_not(arc):
    examples = arc.examples("test")
    assert all(arc.score(e["reference"], e) == 1.0 for e in examples)
    example = examples[0]
    wrong = next(label for label in example["labels"] if label != example["answer"])
    assert arc.score(wrong, example) == 0.0
    assert arc.score("I cannot tell.", example) == 0.0  # no letter: 0, never a guess
    assert example["prompt"].endswith("Answer with the letter of the correct option only.")
    assert f"\nA. {example['choices'][0]}\n" in example["prompt"]


def test_arc_numeric_labels_become_letters(arc, tmp_path):
    assert all(set(e["labels"]) <= set("ABCDE") and e["answer"] in e["labels"] for e in arc.examples("test"))
    record = {"id": "q1", "question": {"stem": "Which is a mammal?", "choices": [
        {"text": "shark", "label": "1"}, {"text": "whale", "label": "2"}, {"text": "trout", "label": "3"}]},
        "answerKey": "2"}
    write_jsonl(tmp_path / "ARC-Easy-Test.jsonl", [record])
    (example,) = get_task("arc", data=tmp_path).examples("test")
    assert example["labels"] == ["A", "B", "C"] and example["answer"] == "B" and example["choices"][1] == "whale"
    assert "\nB. whale\n" in example["prompt"]


def test_arc_augment_permutes_options_and_keeps_the_answer(arc):
    example = arc.examples("train")[0]
    gold_text = example["choices"][example["labels"].index(example["answer"])]
    orders = set()
    for seed in range(20):
        augmented = arc.augment(example, random.Random(seed))
        assert sorted(augmented["choices"]) == sorted(example["choices"])
        assert augmented["labels"] == example["labels"]
        assert augmented["choices"][augmented["labels"].index(augmented["answer"])] == gold_text
        assert augmented["reference"] == augmented["answer"] and arc.score(augmented["reference"], augmented) == 1.0
        assert f"{augmented['answer']}. {gold_text}" in augmented["prompt"]
        orders.add(tuple(augmented["choices"]))
    assert len(orders) > 1
    assert arc.augment(example, random.Random(3)) == arc.augment(example, random.Random(3))


@pytest.fixture(scope="module")
def arc_text():
    return get_task("arc_text", data=shared("arc_easy"))


def test_arc_text_prompts_list_the_options_and_references_are_their_text(arc_text):
    examples = arc_text.examples("test")
    assert len(examples) == 2376 and all(arc_text.score(e["reference"], e) == 1.0 for e in examples)
    example = examples[0]
    assert example["reference"] == example["choices"][example["labels"].index(example["answer"])]
    # options first, the question last: the answer follows the question, as in log-likelihood scoring
    assert example["prompt"].startswith("Answer with the text of the correct option only.\n\nOptions:\n")
    assert "\nOptions:\n" + "\n".join(f"- {c}" for c in example["choices"]) + "\n" in example["prompt"]
    assert example["prompt"].endswith(f"\n\nQuestion: {example['question']}")


def test_arc_text_reply_must_give_exactly_one_option(arc_text):
    example = {**arc_text.examples("test")[0]}
    example.update(choices=["carbon dioxide", "food", "protection", "water"], labels=list("ABCD"), answer="B")
    given = lambda reply: arc_text.answer_given(reply, example)
    # the forms a model writes the option in
    for reply in ("food", "Food.", "- food", "  **food**", "Answer: food", "The correct answer is: food",
                  "food\n\nAlgae make food by photosynthesis.", '"food"'):
        assert given(reply) == "B" and arc_text.score(reply, example) == 1.0, reply
    assert given("water") == "D" and arc_text.score("water", example) == 0.0
    # listing the options, or naming a second one on a line of its own, picks none: no credit for hedging
    assert given("\n".join(f"- {c}" for c in example["choices"])) is None
    assert given("food\nwater") is None
    # near misses are not answers: the reply must be the option's text
    for reply in ("foods", "food and water", "B", "B. food", "", "I think it is food because algae make it"):
        assert given(reply) is None and arc_text.score(reply, example) == 0.0, reply


def test_arc_text_augment_keeps_the_format(arc_text):
    example = arc_text.examples("train")[0]
    for seed in range(5):
        augmented = arc_text.augment(example, random.Random(seed))
        assert augmented["answer_format"] == "text" and augmented["reference"] == example["reference"]
        assert arc_text.score(augmented["reference"], augmented) == 1.0
        assert "\n- " + augmented["choices"][0] + "\n" in augmented["prompt"]


def test_arc_challenge_text_reads_its_own_files(tmp_path):
    record = {"id": "c1", "question": {"stem": "Which is a gas?", "choices": [
        {"text": "ice", "label": "A"}, {"text": "steam", "label": "B"}, {"text": "rock", "label": "C"},
        {"text": "iron", "label": "D"}]}, "answerKey": "B"}
    write_jsonl(tmp_path / "ARC-Challenge-Test.jsonl", [record])
    (example,) = get_task("arc_challenge_text", data=tmp_path).examples("test")
    assert example["reference"] == "steam" and example["answer"] == "B"


def test_answer_distribution_in_the_text_format(arc_text):
    example = {**arc_text.examples("test")[0], "choices": ["x", "y", "z", "w"], "labels": list("ABCD")}
    assert answer_distribution(["y", "y", "w", "B"], [example] * 4) == {
        "A": 0.0, "B": 0.5, "C": 0.0, "D": 0.25, "none": 0.25}


def test_answer_distribution():
    examples = [{"labels": ["A", "B", "C", "D"]}] * 4
    distribution = answer_distribution(["A", "A", "B", "no idea"], examples)
    assert distribution == {"A": 0.5, "B": 0.25, "C": 0.0, "D": 0.0, "none": 0.25}


# ---------------------------------------------------------------------------------------------------- MBPP


@pytest.fixture(scope="module")
def mbpp():
    return get_task("mbpp", data=shared("mbpp"))


def test_mbpp_splits(mbpp):
    ids = {split: [e["task_id"] for e in mbpp.examples(split)] for split in ("train", "valid", "test")}
    assert [len(ids[s]) for s in ("train", "valid", "test")] == [374, 90, 500]
    assert (min(ids["test"]), max(ids["test"]), min(ids["valid"]), min(ids["train"])) == (11, 510, 511, 601)
    assert not set(ids["train"]) & set(ids["valid"]) and not set(ids["test"]) & set(ids["train"] + ids["valid"])
    example = mbpp.examples("test")[0]
    assert example["tests"][0] in example["prompt"] and example["prompt"].endswith("```python code block.")


def test_mbpp_references_pass_and_wrong_code_fails_in_the_sandbox(mbpp):
    sandbox()
    examples = {e["task_id"]: e for split in ("train", "valid", "test") for e in mbpp.examples(split)}
    sample = [examples[i] for i in (11, 40, 100, 200, 300, 367, 450, 510, 511, 555, 600, 601, 700, 850, 927, 974)]
    assert any(e["setup"] for e in sample) and any("\t" in e["answer"] for e in sample)  # setup code and tab indents
    prompts = [e["prompt"] for e in sample]
    columns = {"tests": [e["tests"] for e in sample], "setup": [e["setup"] for e in sample]}
    assert mbpp.reward(prompts, [e["reference"] for e in sample], **columns) == [1.0] * len(sample)
    assert get_reward("unit_tests")(prompts, [e["reference"] for e in sample], **columns) == [1.0] * len(sample)
    wrong = ["```python\ndef nothing():\n    return None\n```", "I would loop over the list.", ""]
    assert mbpp.reward(prompts[:3], wrong, **{k: v[:3] for k, v in columns.items()}) == [0.0, 0.0, 0.0]
    assert mbpp.score(sample[0]["reference"], sample[0]) == 1.0


# ---------------------------------------------------------------------------------------------------- HumanEval

HUMANEVAL = [
    {
        "task_id": "Fixture/0",
        "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
        "canonical_solution": "    return sum(xs)\n",
        "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
        "entry_point": "total",
    },
    {
        "task_id": "Fixture/1",
        "prompt": 'def shout(s: str) -> str:\n    """Upper-case s with a "!" appended."""\n',
        "canonical_solution": '    return s.upper() + "!"\n',
        "test": "def check(candidate):\n    assert candidate('hi') == 'HI!'\n",
        "entry_point": "shout",
    },
]


def test_humaneval_fixture(tmp_path):
    sandbox()
    task = get_task("humaneval", data=write_jsonl(tmp_path / "he.jsonl", HUMANEVAL))
    examples = task.examples("test")
    assert [e["entry_point"] for e in examples] == ["total", "shout"]
    assert [task.score(e["reference"], e) for e in examples] == [1.0, 1.0]  # full function using the prompt's import
    body_only = ["    return sum(xs)", '```python\nreturn s.upper() + "!"\n```']  # the second written flush-left
    assert task.reward([e["prompt"] for e in examples], body_only, **{k: [e[k] for e in examples] for k in
                       ("function_prompt", "test", "entry_point")}) == [1.0, 1.0]
    assert task.score("```python\ndef total(xs):\n    return 0\n```", examples[0]) == 0.0
    assert task.score("No code today.", examples[1]) == 0.0
    with pytest.raises(ValueError, match="only a 'test' split"):
        task.examples("train")


# ---------------------------------------------------------------------------------------------------- MATH

MATH = [
    {"problem": "What is $1/2 + 0$?", "level": "Level 1", "type": "Algebra",
     "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Compute $2+3$.", "level": "Level 1", "type": "Prealgebra", "solution": "$2+3=\\boxed{5}$"},
    {"problem": "Solve $x^2=4$, $x>0$.", "level": "Level 2", "type": "Algebra", "solution": "So $x=\\boxed{2}.$"},
]


def test_math_fixture_folder_and_file(tmp_path):
    for split in ("train", "test"):
        for i in range(12):
            record = MATH[i % 3]
            path = tmp_path / "MATH" / split / record["type"].lower() / f"{i}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record), encoding="utf-8")
    task = get_task("math", data=tmp_path / "MATH")
    assert [len(task.examples(s)) for s in ("train", "valid", "test")] == [11, 1, 12]  # valid: every 10th train item
    for example in task.examples("test"):
        assert task.score(example["reference"], example) == 1.0
    half = next(e for e in task.examples("test") if e["answer"] == "\\frac{1}{2}")
    assert task.score("The answer is $\\boxed{\\dfrac{1}{2}}$", half) == 1.0
    assert task.score("It is 1/2", half) == 0.0  # no box: last number 2 is compared
    assert task.score("$\\boxed{\\frac{1}{3}}$", half) == 0.0
    assert task.domain == "math"

    single = get_task("math", data=write_jsonl(tmp_path / "math.jsonl", MATH * 10))
    assert [len(single.examples(s)) for s in ("train", "valid", "test")] == [24, 3, 3]
    assert get_reward("boxed")(["q"], ["\\boxed{5}"], answer=["5"]) == [1.0]


# ---------------------------------------------------------------------------------------------------- registries


def test_registries():
    assert {"arithmetic", "gsm8k", "arc", "arc_challenge", "mbpp", "humaneval", "math"} <= set(TASKS)
    assert {"exact_number", "first_number", "boxed", "letter", "unit_tests"} <= set(REWARDS)
    domains = {name: TASKS[name].domain for name in ("arithmetic", "gsm8k", "math", "arc", "mbpp", "humaneval")}
    assert domains == {"arithmetic": "arithmetic", "gsm8k": "math", "math": "math", "arc": "reasoning",
                       "mbpp": "code", "humaneval": "code"}
    assert all(TASKS[name].description for name in TASKS)


# Completions chosen to sit on the rules' edges: commas, trailing zeros, several numbers, '=', boxes, articles.
TRICKY = [
    "", "42", "#### 42", "42.0", "1,234", "The answer is 42.", "17 + 25 = 42", "17 plus 25 is 42", "-42", "−42",
    "It is 41 or 42", "\\boxed{42}", "\\boxed{\\frac{1}{2}} so 3", "$\\boxed{ 42 }$.", "B", "(b)", "Answer: C",
    "A plant needs water, so D", "**A**", "E", "answer is option A", "```python\nx = 1\n```",
]


def tricky_examples(task: Task, n: int = 3) -> list[dict]:
    examples = task.examples("test")[:n]
    return examples + [{**e, "answer": answer} for e in examples[:1] for answer in ("42", "1234", "-42", "42 apples", "A")]


@pytest.mark.parametrize(("name", "reward"), [("arithmetic", "first_number"), ("subtraction", "first_number"),
                                              ("addition3", "first_number"), ("gsm8k", "exact_number"),
                                              ("math", "boxed"), ("arc", "letter"), ("arc_challenge", "letter")])
def test_task_score_and_its_reward_agree(name, reward, tmp_path):
    data = {"gsm8k": "gsm8k", "arc": "arc_easy", "arc_challenge": "arc_challenge"}.get(name)
    if name == "math":
        task = get_task("math", data=write_jsonl(tmp_path / "math.jsonl", MATH * 10))
    else:
        task = get_task(name, data=shared(data) if data else None)
    for example in tricky_examples(task):
        completions = [*TRICKY, example["reference"]]
        columns = {key: [value] * len(completions) for key, value in example.items() if key != "prompt"}
        expected = [task.score(c, example) for c in completions]
        assert REWARDS[reward]([example["prompt"]] * len(completions), completions, **columns) == expected
        assert task.reward([example["prompt"]] * len(completions), completions, **columns) == expected


def test_mbpp_score_and_unit_tests_reward_agree(mbpp):
    sandbox()
    example = mbpp.examples("test")[0]
    completions = ["", "no code here", example["reference"], example["answer"], "```python\ndef f(): pass\n```"]
    columns = {key: [value] * len(completions) for key, value in example.items() if key != "prompt"}
    expected = [mbpp.score(c, example) for c in completions]
    assert REWARDS["unit_tests"]([example["prompt"]] * len(completions), completions, **columns) == expected
    assert sum(expected) >= 1  # the reference passes


def test_get_task_by_name_and_dotted_path():
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    assert isinstance(get_task("transformer_squared.tasks.arithmetic:ArithmeticTask", digits=1), ArithmeticTask)
    assert isinstance(get_task("transformer_squared.tasks.arithmetic.ArithmeticTask"), ArithmeticTask)
    with pytest.raises(ValueError, match="known tasks: .*arithmetic.*gsm8k"):
        get_task("nonexistent")
    with pytest.raises(ValueError, match="not a Task subclass"):
        get_task("transformer_squared.tasks.rewards:last_number")
    with pytest.raises(ValueError, match="cannot import"):
        get_task("no_such_package.module:Task")
    with pytest.raises(TypeError, match="unknown options"):
        get_task("gsm8k", data=None, shots=5)


def test_get_reward_and_trl_conversational_completions():
    reward = get_reward("exact_number")
    conversational = [{"role": "assistant", "content": "#### 7"}]
    assert reward(["q", "q"], ["so 1,234", conversational], answer=["1234", "8"]) == [1.0, 0.0]
    assert get_reward("transformer_squared.tasks.rewards:letter_reward")(["q"], ["B"], answer=["B"]) == [1.0]
    assert get_reward("letter")(["q"], ["e"], answer=["E"]) == [0.0]
    assert get_reward("first_number")(["q"], ["17 + 25 = 42"], answer=["42"]) == [1.0]
    with pytest.raises(ValueError, match="known rewards: .*exact_number"):
        get_reward("nonexistent")


def test_reward_task_from_jsonl(tmp_path):
    records = [{"prompt": f"Say {i}", "answer": i, "split": "train" if i < 3 else "test"} for i in range(5)]
    task = get_task("custom", data=write_jsonl(tmp_path / "mine.jsonl", records), reward="exact_number", domain="echo")
    assert isinstance(task, RewardTask) and isinstance(task, Task) and task.domain == "echo"
    assert [e["prompt"] for e in task.examples("test")] == ["Say 3", "Say 4"] and task.examples("valid") == []
    example = task.examples("train")[1]
    assert task.score("It is 1.", example) == 1.0 and task.score("It is 2.", example) == 0.0

    def starts_with_yes(prompts, completions, **columns):
        return [float(c.startswith("yes")) for c in completions]

    unsplit = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    task = RewardTask(unsplit, reward=starts_with_yes)
    assert [len(task.examples(s)) for s in ("train", "valid", "test")] == [8, 1, 1]
    assert task.reward(["p0", "p1"], ["yes", "no"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs data"):
        RewardTask(None)


def test_bad_split_is_a_clear_error():
    with pytest.raises(ValueError, match="valid splits: train, valid, test"):
        ArithmeticTask().examples("validation")
    with pytest.raises(ValueError, match="no split 'dev'"):
        ArithmeticTask().examples("dev")
    assert ArcTask.splits == ("train", "valid", "test", "dev")


def test_generation_budget_belongs_to_the_task():
    """Each task carries its own budget (short answers get few tokens, worked solutions many); evaluation reads it
    from the task, so a subclass that sets its own is honoured and an unknown task gets the base default."""
    from transformer_squared.tasks import TASKS
    from transformer_squared.tasks.base import Task
    from transformer_squared.evaluation import default_max_new_tokens

    budgets = {name: cls.max_new_tokens for name, cls in TASKS.items()}
    assert budgets == {"arithmetic": 16, "subtraction": 16, "addition3": 20, "antonyms": 12, "arc": 16,
                       "arc_challenge": 16, "arc_text": 32, "arc_challenge_text": 32, "gsm8k": 256, "math": 384, "mbpp": 384, "humaneval": 384, "custom": 256}

    class Terse(ArithmeticTask):
        max_new_tokens = 3

    assert default_max_new_tokens(Terse()) == 3 and default_max_new_tokens(ArithmeticTask()) == 16
    assert Task.max_new_tokens == 256
