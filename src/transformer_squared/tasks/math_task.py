"""MATH: competition mathematics with LaTeX answers in \\boxed{} (Hendrycks et al., 2021).

Records are `{"problem", "level", "type", "solution"}`; the gold answer is the last `\\boxed{}` of the solution
(records without one are skipped). `data` is either
- a folder in the upstream layout `train/<type>/<n>.json` and `test/<type>/<n>.json`: test is test/, and train/
  gives valid (every 10th problem, index % 10 == 9 in path order) and train (the rest); or
- a single .jsonl file, or a folder of .json files without train/ and test/: split 80/10/10 by index.

The prompt asks for step-by-step work with the final answer in \\boxed{}; the reference completion is the upstream
solution. Scoring compares the completion's last boxed answer (else its last number) with the gold answer after
`rewards.normalize_math_answer`. (The module is not called math.py so that it never shadows the standard library.)
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Example, Task, hub_dataset, read_jsonl, split_by_index
from .rewards import boxed_answer, math_answer, score_boxed

INSTRUCTION = "Solve the problem step by step and put the final answer in \\boxed{}."
HINT = "a MATH folder with train/ and test/, or a .jsonl file"


def read_json_folder(folder: Path) -> list[dict]:
    """All <n>.json records under `folder`, in path order with numeric file names sorted as numbers."""
    paths = sorted(folder.rglob("*.json"), key=lambda p: (p.parent.as_posix(), len(p.stem), p.stem))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


class MathTask(Task):
    name = "math"
    domain = "math"
    description = "math: competition problems solved step by step, with the final answer in \\boxed{}"
    max_new_tokens = 384

    def upstream(self, split: str) -> list[dict]:
        if self.data is None:
            role = "test" if split == "test" else "train"
            records = self.cached(role, lambda: list(hub_dataset(self.name, HINT, "hendrycks/competition_math")[role]))
        elif self.data.is_dir() and (self.data / "train").is_dir() and (self.data / "test").is_dir():
            role = "test" if split == "test" else "train"
            records = self.cached(role, lambda: read_json_folder(self.data / role))
        else:
            load = (lambda: read_json_folder(self.data)) if self.data.is_dir() else (lambda: read_jsonl(self.data))
            return split_by_index(self.cached("all", load), split)
        if split == "test":
            return records
        return [record for i, record in enumerate(records) if (i % 10 == 9) == (split == "valid")]

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        examples = []
        for record in self.upstream(split):
            answer = boxed_answer(record["solution"])
            if answer is None:
                continue
            examples.append({
                "prompt": f"{record['problem'].strip()}\n\n{INSTRUCTION}",
                "answer": answer,
                "reference": record["solution"],
                "level": record.get("level"),
                "type": record.get("type"),
            })
        return examples

    def extract(self, completion: str) -> str | None:
        return math_answer(completion)

    def score(self, completion: str, example: Example) -> float:
        return score_boxed(completion, example["answer"])
