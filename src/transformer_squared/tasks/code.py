"""Code tasks scored by unit tests in the sandbox: MBPP and HumanEval.

MBPP (Austin et al., 2021): `{"text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list"}`.
Splits as its release defines them: task_id 11-510 test (500), 511-600 valid (90), 601-974 train (374); 1-10 are
its few-shot prompts and belong to no split. The prompt is the description, the first assert (it shows the
function's name and signature) and a request for a ```python block. A completion passes when every assert in
test_list holds for the extracted code (after test_setup_code), as judged by `tasks.judge` from the values the
sandboxed code produces — never from its exit status.

HumanEval (Chen et al., 2021): `{"task_id", "prompt", "canonical_solution", "test", "entry_point"}` from a user
.jsonl(.gz) file (or a folder holding HumanEval.jsonl). It is an evaluation set: every record is "test" and there
is no train or valid split. The candidate's code is the function prompt, then the completion; `tasks.judge` runs
check(entry_point)'s asserts against it (replaying check() with the canonical solution's calls when it is more
than asserts). The prompt comes first even when the completion redefines the whole function: its imports and
helpers stay defined, its docstring-only stub is valid Python, and the completion's `def` replaces it.
"""

from __future__ import annotations

import re

from .base import Example, Task, data_file, hub_dataset, read_jsonl, rows
from .judge import Judge, Plan, humaneval_plan, unit_test_plan
from .rewards import completion_text, extract_code, indent_body

MBPP_INSTRUCTION = "Write the Python function in a ```python code block."
MBPP_SPLITS = {"test": range(11, 511), "valid": range(511, 601), "train": range(601, 975)}
HUMANEVAL_INSTRUCTION = "Write the complete function in a ```python code block."


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


class CodeTask(Task):
    """Shared scoring: the candidate's code and the example's test plan per completion, judged in one batch."""

    domain = "code"
    description = "code: writing short Python functions that pass unit tests"
    max_new_tokens = 384

    def program(self, completion: str, example: Example) -> str | None:
        """The candidate's code (None when the completion holds none); the tests are not part of it."""
        raise NotImplementedError

    def plan(self, example: Example) -> Plan:
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        return extract_code(completion)

    def judge(self) -> Judge:
        return Judge(hide=[self.data] if self.data is not None else [])  # the expected answers stay out of reach

    def score(self, completion: str, example: Example) -> float:
        return float(self.judge().verdicts([(self.plan(example), self.program(completion, example))])[0])

    def reward(self, prompts: list, completions: list, **columns: list) -> list[float]:
        examples = rows(prompts, columns)
        jobs = [(self.plan(e), self.program(completion_text(c), e)) for c, e in zip(completions, examples)]
        return [float(ok) for ok in self.judge().verdicts(jobs)]  # concurrently, unlike score() one by one


class MBPPTask(CodeTask):
    name = "mbpp"

    def upstream(self) -> list[dict]:
        if self.data is None:
            hint = "a folder with mbpp.jsonl"
            return self.cached("hub", lambda: [
                dict(row) for split in hub_dataset(self.name, hint, "google-research-datasets/mbpp", "full").values()
                for row in split
            ])
        path = self.data if self.data.is_file() else data_file(self.name, self.data, "mbpp.jsonl")
        return self.cached("file", lambda: read_jsonl(path))

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        ids = MBPP_SPLITS[split]
        records = sorted((r for r in self.upstream() if r["task_id"] in ids), key=lambda r: r["task_id"])
        examples = []
        for record in records:
            code = record["code"].replace("\r\n", "\n")
            prompt = f"{record['text'].strip()}\nYour code should pass this test:\n{record['test_list'][0]}"
            examples.append({
                "prompt": f"{prompt}\n\n{MBPP_INSTRUCTION}",
                "answer": code,
                "reference": fenced(code),
                "task_id": record["task_id"],
                "tests": list(record["test_list"]),
                "setup": record.get("test_setup_code") or "",
            })
        return examples

    def program(self, completion: str, example: Example) -> str | None:
        return self.extract(completion)

    def plan(self, example: Example) -> Plan:
        return unit_test_plan(example["tests"], example.get("setup", ""))


class HumanEvalTask(CodeTask):
    name = "humaneval"
    splits = ("test",)

    def upstream(self) -> list[dict]:
        if self.data is None:
            hint = "a HumanEval.jsonl file"
            return self.cached("hub", lambda: list(hub_dataset(self.name, hint, "openai/openai_humaneval")["test"]))
        path = self.data if self.data.is_file() else data_file(self.name, self.data, "HumanEval.jsonl")
        return self.cached("file", lambda: read_jsonl(path))

    def examples(self, split: str) -> list[Example]:
        if split != "test":
            raise ValueError(f"task 'humaneval' is an evaluation set with only a 'test' split, not {split!r}")
        examples = []
        for record in self.upstream():
            prompt = record["prompt"]
            request = f"Complete the following Python function.\n\n{fenced(prompt.rstrip())}"
            examples.append({
                "prompt": f"{request}\n\n{HUMANEVAL_INSTRUCTION}",
                "answer": record["canonical_solution"],
                "reference": fenced(prompt + record["canonical_solution"].rstrip()),
                "task_id": record["task_id"],
                "function_prompt": prompt,
                "test": record["test"],
                "entry_point": record["entry_point"],
            })
        return examples

    def program(self, completion: str, example: Example) -> str | None:
        code = self.extract(completion)
        if code is None:
            return None
        defines_entry = re.search(rf"^\s*def\s+{re.escape(example['entry_point'])}\s*\(", code, re.MULTILINE)
        body = code if defines_entry else indent_body(code)
        prompt = example["function_prompt"]
        if not prompt.endswith("\n"):
            prompt += "\n"
        return f"{prompt}{body}\n"

    def plan(self, example: Example) -> Plan:
        return humaneval_plan(example["function_prompt"], example["test"], example["entry_point"],
                              example.get("answer"))
