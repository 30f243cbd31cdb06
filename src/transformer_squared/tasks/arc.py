"""ARC: multiple-choice grade-school science questions (AI2 Reasoning Challenge, Easy and Challenge sets).

Upstream records are `{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}`, with labels
A-D (sometimes 3 or 5 options) or 1-4. Options are relabelled A, B, C, ... by position, answer included, so every
example reads the same. Splits follow the Transformer² reference code: ARC-*-Train.jsonl gives train (even
indices) and valid (odd indices); ARC-*-Test.jsonl is test. The Dev file, unused there, is exposed as "dev".

Two answer formats, each a registered task:
- letter (`arc`, `arc_challenge`): the prompt lists the options one per line ("A. text") and asks for the letter
  only; the reference completion is the letter, extracted by `rewards.extract_letter`.
- option text (`arc_text`, `arc_challenge_text`): the prompt asks for the text of the correct option, lists the
  options as bullets ("- text"), then gives the question last (the answer follows the question, as when the
  options' log-likelihoods are scored); the reference completion is that text. The answer given is the option whose
  text equals the reply's first line once both are normalised (`option_text_key`: case, spacing, a leading bullet
  or "Answer:", surrounding quotes or bold, final punctuation). A reply that names several options, or none
  exactly, gives no answer. This format lets a small model answer with its knowledge of the option's content: the
  default model ranks the option texts at 50% on ARC-Easy, yet maps them to letters at chance (BENCHMARKS.md).
In both, no answer scores 0, never a guess, and the answer is reported as the option's label (A, B, ...), so that
`answer_distribution` compares either format with the keys. `augment` shuffles the options and relabels them so
that an expert cannot learn a prior over positions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from .base import Example, Task, hub_dataset, read_jsonl, role_file, split_alternate
from .rewards import extract_letter, score_letter

LETTERS = "ABCDEFGHIJ"
INSTRUCTION = "Answer with the letter of the correct option only."
TEXT_INSTRUCTION = "Answer with the text of the correct option only."
_LEAD = re.compile(r"^(?:[-*\u2022]\s*|(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?\s*[:\-]?\s*)+", re.IGNORECASE)
ROLES = {"train": "Train", "dev": "Dev", "test": "Test"}  # upstream file suffix per role
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def choice_example(question: str, choices: Sequence[str], answer_index: int, answer_format: str = "letter",
                   **columns) -> Example:
    """A multiple-choice example with options labelled A, B, C, ... in the given order. `answer_format` "letter"
    lists "A. text" and expects the letter; "text" lists "- text" and expects the option's text."""
    labels = list(LETTERS[: len(choices)])
    if answer_format == "text":
        options = "\n".join(f"- {text}" for text in choices)
        prompt, reference = f"{TEXT_INSTRUCTION}\n\nOptions:\n{options}\n\nQuestion: {question}", choices[answer_index]
    else:
        options = "\n".join(f"{label}. {text}" for label, text in zip(labels, choices))
        prompt, reference = f"{question}\n\n{options}\n\n{INSTRUCTION}", labels[answer_index]
    return {
        "prompt": prompt,
        "answer": labels[answer_index],
        "reference": reference,
        "question": question,
        "choices": list(choices),
        "labels": labels,
        "answer_format": answer_format,
        **columns,
    }


def option_text_key(text: str) -> str:
    """`text` normalised for matching a reply to an option: casefolded, spacing collapsed, a leading bullet or
    "Answer:" and surrounding quotes, bold marks and final punctuation removed."""
    text = " ".join(text.split()).casefold()
    text = _LEAD.sub("", text).strip()
    text = text.strip("*_\"'`").strip()
    return text.rstrip(".!;,").strip()


def chosen_option(completion: str, choices: Sequence[str]) -> int | None:
    """Index of the option whose text the completion's first non-empty line gives, or None: no option, or a reply
    that gives another option on a line of its own too (listing the options picks none)."""
    keys = [option_text_key(choice) for choice in choices]
    named = [{i for i, key in enumerate(keys) if key and key == option_text_key(line)}
             for line in completion.splitlines() if line.strip()]
    if not named or len(named[0]) != 1 or len(set().union(*named)) != 1:
        return None
    return named[0].pop()


def given_label(completion: str, example: Example) -> str | None:
    """The label of the option a completion picks for `example`, in the example's answer format, or None."""
    if example.get("answer_format") == "text":
        index = chosen_option(completion, example["choices"])
        return None if index is None else example["labels"][index]
    return extract_letter(completion, example["labels"])


def arc_example(record: dict, answer_format: str = "letter") -> Example:
    choices = record["question"]["choices"]
    upstream_labels = [str(choice["label"]).strip() for choice in choices]
    answer_key = str(record["answerKey"]).strip()
    if answer_key not in upstream_labels:
        raise ValueError(f"ARC record {record.get('id')!r}: answerKey {answer_key!r} is not one of {upstream_labels}")
    texts = [choice["text"] for choice in choices]
    return choice_example(record["question"]["stem"], texts, upstream_labels.index(answer_key), answer_format,
                          id=record.get("id"))


def answer_distribution(completions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Fraction of completions that pick each label, plus "none" for no answer found."""
    labels = sorted({label for example in examples for label in example["labels"]})
    counts = Counter(given_label(c, e) or "none" for c, e in zip(completions, examples))
    total = max(len(completions), 1)
    return {label: counts[label] / total for label in [*labels, "none"]}


class ArcTask(Task):
    name = "arc"
    domain = "reasoning"
    description = "reasoning: multiple-choice science questions answered with the letter of the correct option"
    max_new_tokens = 16
    splits = ("train", "valid", "test", "dev")
    subset = "ARC-Easy"  # upstream file prefix and Hugging Face config
    answer_format = "letter"  # letter | text (module docstring)

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
            records = split_alternate(records, split)
        return [arc_example(record, self.answer_format) for record in records]

    def extract(self, completion: str, labels: Sequence[str] = LETTERS[:5]) -> str | None:
        """The letter a completion gives (letter format; the text format needs the options: `answer_given`)."""
        return extract_letter(completion, labels)

    def answer_given(self, completion: str, example: Example) -> str | None:
        return given_label(completion, example)

    def score(self, completion: str, example: Example) -> float:
        if example.get("answer_format") == "text":
            return float(given_label(completion, example) == example["answer"])
        return score_letter(completion, example["answer"], example["labels"])  # the "letter" reward's rule

    def augment(self, example: Example, rng: random.Random) -> Example:
        """Shuffle the options and relabel them A, B, C, ...; the answer follows its option."""
        order = list(range(len(example["choices"])))
        rng.shuffle(order)
        answer_index = example["labels"].index(example["answer"])
        choices = [example["choices"][i] for i in order]
        return {**example, **choice_example(example["question"], choices, order.index(answer_index),
                                            example.get("answer_format", "letter"))}


class ArcChallengeTask(ArcTask):
    name = "arc_challenge"
    description = "reasoning: harder multiple-choice science questions answered with the letter of the correct option"
    subset = "ARC-Challenge"


class ArcTextTask(ArcTask):
    name = "arc_text"
    description = "reasoning: multiple-choice science questions answered with the text of the correct option"
    max_new_tokens = 32  # ARC-Easy option texts: 99% are at most 24 tokens
    answer_format = "text"


class ArcChallengeTextTask(ArcTextTask):
    name = "arc_challenge_text"
    description = "reasoning: harder multiple-choice science questions answered with the text of the correct option"
    subset = "ARC-Challenge"


def hub_record(row: dict) -> dict:
    """A Hugging Face ai2_arc row in the upstream AI2 JSONL layout."""
    choices = [{"text": t, "label": l} for t, l in zip(row["choices"]["text"], row["choices"]["label"])]
    return {"id": row["id"], "question": {"stem": row["question"], "choices": choices}, "answerKey": row["answerKey"]}
