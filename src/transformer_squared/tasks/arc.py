"""ARC: multiple-choice grade-school science questions (AI2 Reasoning Challenge, Easy and Challenge sets).

Upstream records are `{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}`, with labels
A-D (sometimes 3 or 5 options) or 1-4. Options are relabelled A, B, C, ... by position, answer included, so every
example reads the same. Splits follow the Transformer² reference code: ARC-*-Train.jsonl gives train (even
indices) and valid (odd indices); ARC-*-Test.jsonl is test. The Dev file, unused there, is exposed as "dev".

The prompt lists the options one per line ("A. text") and asks for the letter only; the reference completion is
the letter. Scoring extracts the chosen letter (`rewards.extract_letter`): no letter found scores 0, never a
guess. `augment` shuffles the options and relabels them so that an expert cannot learn a prior over labels;
`answer_distribution` reports how extracted letters spread over labels, to catch a model collapsing onto one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from .base import Example, Task, hub_dataset, read_jsonl, role_file
from .rewards import extract_letter

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the letter of the correct option only."
ROLES = {"train": "Train", "dev": "Dev", "test": "Test"}  # upstream file suffix per role
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def choice_example(question: str, choices: Sequence[str], answer_index: int, **columns) -> Example:
    """A multiple-choice example with options labelled A, B, C, ... in the given order."""
    labels = list(LETTERS[: len(choices)])
    options = "\n".join(f"{label}. {text}" for label, text in zip(labels, choices))
    return {
        "prompt": f"{question}\n\n{options}\n\n{INSTRUCTION}",
        "answer": labels[answer_index],
        "reference": labels[answer_index],
        "question": question,
        "choices": list(choices),
        "labels": labels,
        **columns,
    }


def arc_example(record: dict) -> Example:
    choices = record["question"]["choices"]
    upstream_labels = [str(choice["label"]).strip() for choice in choices]
    answer_key = str(record["answerKey"]).strip()
    if answer_key not in upstream_labels:
        raise ValueError(f"ARC record {record.get('id')!r}: answerKey {answer_key!r} is not one of {upstream_labels}")
    texts = [choice["text"] for choice in choices]
    return choice_example(record["question"]["stem"], texts, upstream_labels.index(answer_key), id=record.get("id"))


def answer_distribution(completions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Fraction of completions whose extracted letter is each label, plus "none" for no letter found."""
    labels = sorted({label for example in examples for label in example["labels"]})
    counts = Counter(extract_letter(c, e["labels"]) or "none" for c, e in zip(completions, examples))
    total = max(len(completions), 1)
    return {label: counts[label] / total for label in [*labels, "none"]}


class ArcTask(Task):
    name = "arc"
    domain = "reasoning"
    description = "reasoning: multiple-choice science questions answered with the letter of the correct option"
    max_new_tokens = 16
    splits = ("train", "valid", "test", "dev")
    subset = "ARC-Easy"  # upstream file prefix and Hugging Face config

    def upstream(self, role: str) -> list[dict]:
        """Records of the Train, Dev or Test file (`role`); `data` may be their folder or one of the files."""
        filename = f"{self.subset}-{ROLES[role]}.jsonl"
        if self.data is None:
            return self.cached(role, lambda: self.hub_records(role))
        return self.cached(role, lambda: read_jsonl(role_file(self.name, self.data, role, filename)))

    def hub_records(self, role: str) -> list[dict]:
        hint = f"a folder with {self.subset}-Train.jsonl/{self.subset}-Test.jsonl"
        rows = hub_dataset(self.name, hint, "allenai/ai2_arc", self.subset)[HUB_SPLITS[role]]
        return [hub_record(row) for row in rows]

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        records = self.upstream("train" if split in ("train", "valid") else split)
        if split in ("train", "valid"):
            records = records[0::2] if split == "train" else records[1::2]
        return [arc_example(record) for record in records]

    def extract(self, completion: str, labels: Sequence[str] = LETTERS[:5]) -> str | None:
        return extract_letter(completion, labels)

    def score(self, completion: str, example: Example) -> float:
        return float(self.extract(completion, example["labels"]) == example["answer"])

    def augment(self, example: Example, rng: random.Random) -> Example:
        """Shuffle the options and relabel them A, B, C, ...; the answer follows its option."""
        order = list(range(len(example["choices"])))
        rng.shuffle(order)
        answer_index = example["labels"].index(example["answer"])
        choices = [example["choices"][i] for i in order]
        return {**example, **choice_example(example["question"], choices, order.index(answer_index))}


class ArcChallengeTask(ArcTask):
    name = "arc_challenge"
    description = "reasoning: harder multiple-choice science questions answered with the letter of the correct option"
    subset = "ARC-Challenge"


def hub_record(row: dict) -> dict:
    """A Hugging Face ai2_arc row in the upstream AI2 JSONL layout."""
    choices = [{"text": t, "label": l} for t, l in zip(row["choices"]["text"], row["choices"]["label"])]
    return {"id": row["id"], "question": {"stem": row["question"], "choices": choices}, "answerKey": row["answerKey"]}
