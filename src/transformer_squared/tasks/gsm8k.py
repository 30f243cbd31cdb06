"""GSM8K: grade-school math word problems with a numeric answer (Cobbe et al., 2021).

Upstream records are `{"question", "answer"}`; the answer is a worked solution ending in "#### <number>", with
calculator annotations like "<<48/2=24>>". Splits follow the Transformer² reference code: train.jsonl gives train
(even indices, 3737) and valid (odd indices, 3736); test.jsonl is test (1319).

The prompt asks for step-by-step reasoning ending in "#### <number>", the format of the upstream solutions, so the
reference completion is the upstream solution minus its calculator annotations. Scoring takes the completion's
last number (commas dropped, "$1,234.50" is 1234.5) and compares it to the gold number.
"""

from __future__ import annotations

import re

from .base import Example, Task, hub_dataset, read_jsonl, role_file, split_alternate
from .rewards import last_number, normalize_number, score_exact_number

INSTRUCTION = 'Solve the problem step by step. End your reply with the final answer on its own line as "#### <number>".'
FILES = {"train": "train.jsonl", "test": "test.jsonl"}
HINT = "a folder with train.jsonl/test.jsonl"


def gsm8k_example(record: dict) -> Example:
    solution, _, final = record["answer"].rpartition("####")
    answer = normalize_number(final)
    reasoning = re.sub(r"<<[^>]*>>", "", solution).strip()
    return {
        "prompt": f"{record['question'].strip()}\n\n{INSTRUCTION}",
        "answer": answer,
        "reference": f"{reasoning}\n#### {answer}",
        "question": record["question"],
    }


class GSM8KTask(Task):
    name = "gsm8k"
    domain = "math"
    description = "math: grade-school word problems solved step by step, ending in a numeric answer"
    max_new_tokens = 256

    def upstream(self, role: str) -> list[dict]:
        """Records of train.jsonl or test.jsonl (`role`); `data` may be their folder or one of the files."""
        if self.data is None:
            return self.cached(role, lambda: list(hub_dataset(self.name, HINT, "openai/gsm8k", "main")[role]))
        return self.cached(role, lambda: read_jsonl(role_file(self.name, self.data, role, FILES[role])))

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        records = self.upstream("test" if split == "test" else "train")
        if split != "test":
            records = split_alternate(records, split)
        return [gsm8k_example(record) for record in records]

    def extract(self, completion: str) -> str | None:
        return last_number(completion)

    def score(self, completion: str, example: Example) -> float:
        return score_exact_number(completion, example["answer"])
