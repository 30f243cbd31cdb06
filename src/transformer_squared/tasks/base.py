"""The Task contract, the task and reward registries, and tasks defined by a user's reward function.

A task turns upstream records into chat-ready examples and scores completions, nanochat style:

    task = get_task("gsm8k", data="../shared/data/gsm8k")
    example = task.examples("test")[0]    # {"prompt", "answer", "reference", ...task columns}
    task.score(completion, example)       # 1.0 or 0.0
    task.reward(prompts, completions, answer=[...])   # TRL-style; reuses score()

Registries are plain dicts: `TASKS` (filled with the built-ins in `tasks/__init__.py`) and `REWARDS`. Anything
else is found by dotted path, `package.module:Name` or `package.module.Name`. A user task can be just a reward
function plus a JSONL file of prompts: `RewardTask` (registry name "custom").
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import rewards

Example = dict[str, Any]
Reward = Callable[..., list[float]]

SPLITS = ("train", "valid", "test")


class Task:
    """A dataset with its prompt format and its scorer. Subclasses set the class attributes and override
    `examples`, `extract` and `score`; `reward` and `augment` usually come for free."""

    name: str = "task"  # registry key
    domain: str = "general"  # label the self-adaptation step routes on
    description: str = ""  # one line describing the domain to a model
    max_new_tokens: int = 256  # generation budget when scoring this task (evaluation, CEM fitness, training)
    splits: tuple[str, ...] = SPLITS

    def __init__(self, data: str | os.PathLike | None = None, **options: Any):
        if options:
            raise TypeError(f"task {self.name!r} got unknown options: {', '.join(sorted(options))}")
        if data is not None and not Path(data).exists():
            raise ValueError(f"task {self.name!r}: data path {data} does not exist")
        self.data = Path(data) if data is not None else None
        self._records: dict[str, list[dict]] = {}  # upstream records per source, read once

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, data={str(self.data) if self.data else None!r})"

    def examples(self, split: str) -> list[Example]:
        """Examples of one split, in a fixed order: each has "prompt", "answer", "reference" + task columns."""
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        """The answer a completion gives, or None if it gives none."""
        raise NotImplementedError

    def score(self, completion: str, example: Example) -> float:
        """1.0 if the completion answers `example` correctly, else 0.0."""
        raise NotImplementedError

    def answer_given(self, completion: str, example: Example) -> str | None:
        """The answer a completion gives to `example` (tasks whose extraction needs the example override it)."""
        return self.extract(completion)

    def reward(self, prompts: list, completions: list, **columns: list) -> list[float]:
        """TRL-style reward: columns are lists aligned with prompts (e.g. answer=[...]); scores each with score()."""
        return [
            self.score(rewards.completion_text(completion), example)
            for completion, example in zip(completions, rows(prompts, columns))
        ]

    def augment(self, example: Example, rng: random.Random) -> Example:
        """A training-time variant of `example`; identity unless the task has a label prior to break."""
        return example

    def cached(self, key: str, load: Callable[[], list[dict]]) -> list[dict]:
        """Upstream records under `key`, loaded on first use (files are read once per task instance)."""
        if key not in self._records:
            self._records[key] = load()
        return self._records[key]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}")


def rows(prompts: list, columns: dict[str, list]) -> list[Example]:
    """Turn TRL's column lists back into one example dict per prompt."""
    for key, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"column {key!r} has {len(values)} values for {len(prompts)} prompts")
    return [{"prompt": p, **{key: values[i] for key, values in columns.items()}} for i, p in enumerate(prompts)]


# ---------------------------------------------------------------------------------------------------- data files


def read_jsonl(path: Path) -> list[dict]:
    """Records of a .jsonl (or .jsonl.gz) file, blank lines skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def data_file(task: str, data: Path, filename: str) -> Path:
    """`data/filename`, or a one-line error naming the file that is missing."""
    path = data / filename
    if not path.is_file():
        raise ValueError(f"task {task!r}: expected {path} (not found)")
    return path


def file_role(path: Path) -> str:
    """What a single data file holds, judged by its name: "train", "dev" or (otherwise) "test"."""
    name = path.name.lower()
    return "train" if "train" in name else "dev" if "dev" in name or "valid" in name else "test"


def role_file(task: str, data: Path, role: str, filename: str) -> Path:
    """The file holding `role` records: `data/filename`, or `data` itself when it is one file of that role."""
    if not data.is_file():
        return data_file(task, data, filename)
    if file_role(data) != role:
        raise ValueError(f"task {task!r}: data {data} is not a {role} file; pass a folder with {filename}")
    return data


def split_by_index(records: list, split: str) -> list:
    """Deterministic 80/10/10 split of one collection: index % 10 == 8 is valid, == 9 is test, the rest train."""
    keep = {"train": lambda i: i % 10 < 8, "valid": lambda i: i % 10 == 8, "test": lambda i: i % 10 == 9}[split]
    return [record for i, record in enumerate(records) if keep(i)]


def split_alternate(records: list, split: str) -> list:
    """The Transformer² reference code's split of an upstream train file: even indices train, odd indices valid."""
    return records[0::2] if split == "train" else records[1::2]


def hub_dataset(task: str, hint: str, path: str, config: str | None = None) -> Any:
    """A Hugging Face dataset when `datasets` is installed, else the one-line error telling how to pass data."""
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"task {task!r} needs data: pass --data PATH ({hint}) or pip install datasets and go online"
        ) from None
    return datasets.load_dataset(path, config)


# ---------------------------------------------------------------------------------------------------- registries

TASKS: dict[str, type[Task]] = {}  # name -> Task subclass; the built-ins are added in tasks/__init__.py

REWARDS: dict[str, Reward] = {
    "exact_number": rewards.exact_number_reward,
    "first_number": rewards.first_number_reward,
    "boxed": rewards.boxed_reward,
    "letter": rewards.letter_reward,
    "unit_tests": rewards.unit_tests_reward,
}


def resolve(spec: str, kind: str) -> Any:
    """The object a dotted path names: `package.module:Name` or `package.module.Name`."""
    module_name, colon, attribute = spec.partition(":")
    if not colon:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{kind} {spec!r} is not a dotted path like package.module:Name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{kind} {spec!r}: cannot import {module_name!r} ({error})") from error
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{kind} {spec!r}: module {module_name!r} has no {attribute!r}") from None


def get_task(spec: str | type[Task], data: str | os.PathLike | None = None, **options: Any) -> Task:
    """A task instance from a registry name, a dotted path to a Task subclass, or the class itself."""
    if isinstance(spec, str) and spec in TASKS:
        cls = TASKS[spec]
    elif isinstance(spec, str) and ("." in spec or ":" in spec):
        cls = resolve(spec, "task")
    elif isinstance(spec, type):
        cls = spec
    else:
        raise ValueError(f"unknown task {spec!r}; known tasks: {', '.join(sorted(TASKS))} (or a dotted path)")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {spec!r} is not a Task subclass")
    return cls(data=data, **options)


def get_reward(spec: str | Reward) -> Reward:
    """A TRL-style reward callable from a registry name, a dotted path, or the callable itself."""
    if callable(spec):
        return spec
    if spec in REWARDS:
        return REWARDS[spec]
    if "." in spec or ":" in spec:
        reward = resolve(spec, "reward")
        if not callable(reward):
            raise ValueError(f"reward {spec!r} is not callable")
        return reward
    raise ValueError(f"unknown reward {spec!r}; known rewards: {', '.join(sorted(REWARDS))} (or a dotted path)")


# ---------------------------------------------------------------------------------------------------- user tasks


class RewardTask(Task):
    """A user task: a JSONL file of examples (each with at least "prompt") scored by a reward callable.

    `data` is a .jsonl file or a folder holding train.jsonl / valid.jsonl / test.jsonl. In a single file, a record's
    "split" field places it; without one, records are split 80/10/10 by index (see `split_by_index`). Every other
    field is passed to the reward as a column, as TRL does.
    """

    name = "custom"
    domain = "custom"
    description = "a user-defined task"

    def __init__(
        self,
        data: str | os.PathLike | None = None,
        reward: str | Reward = "exact_number",
        name: str | None = None,
        domain: str | None = None,
        description: str | None = None,
    ):
        super().__init__(data)
        if self.data is None:
            raise ValueError("task 'custom' needs data: pass --data PATH (a JSONL file of examples with a \"prompt\")")
        self.reward_fn = get_reward(reward)
        self.name = name or self.name
        self.domain = domain or self.domain
        self.description = description or self.description

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if self.data.is_dir():
            records = read_jsonl(data_file(self.name, self.data, f"{split}.jsonl"))
        else:
            records = self.cached("file", lambda: read_jsonl(self.data))
            if all("split" in record for record in records):
                records = [record for record in records if record["split"] == split]
            else:
                records = split_by_index(records, split)
        examples = []
        for record in records:
            if "prompt" not in record:
                raise ValueError(f"task {self.name!r}: every record in {self.data} needs a \"prompt\"")
            example = {key: value for key, value in record.items() if key != "split"}
            example["answer"] = str(record.get("answer", ""))
            example["reference"] = record.get("reference")
            examples.append(example)
        return examples

    def extract(self, completion: str) -> str | None:
        return completion.strip() or None  # the reward sees the whole completion

    def score(self, completion: str, example: Example) -> float:
        columns = {key: [value] for key, value in example.items() if key != "prompt"}
        return float(self.reward_fn([example["prompt"]], [completion], **columns)[0])

    def reward(self, prompts: list, completions: list, **columns: list) -> list[float]:
        return [float(value) for value in self.reward_fn(prompts, completions, **columns)]
