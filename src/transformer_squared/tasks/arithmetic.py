"""Arithmetic: a built-in, data-free task (two-digit addition by default) for smoke tests and tiny experiments.

Every pair (a, b) of `digits`-digit numbers (10..99 for two digits: 8100 pairs) is permuted once with a fixed seed
and cut into disjoint test (500), valid (200) and train (the rest) sets, so no test problem is ever trained on.
(One-digit problems have only 81 pairs: test and valid shrink to a fifth and a tenth.)

Scoring is strict. The prompt asks for the number only, and the reply's stated result must equal the true value:
the first number after the reply's first '=' if it has one ("17 + 25 = 42" scores 42), else its first number
("42", "The answer is 42."). A reply that restates the operands without '=' ("17 plus 25 is 42") is scored by its
first number, 17, and fails: the reward is for answering as asked.
"""

from __future__ import annotations

import functools
import operator
import random

from .base import Example, Task
from .rewards import score_stated_result, stated_result

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
NAMES = {"+": "addition", "-": "subtraction", "*": "multiplication"}
SEED = 0  # fixes the permutation, hence the splits; changing it changes which problems are test problems
TEST_SIZE, VALID_SIZE = 500, 200


@functools.cache
def permuted_pairs(digits: int) -> tuple[tuple[int, int], ...]:
    """Every (a, b) of `digits`-digit operands in the fixed permuted order; computed once per process (shuffling
    the 810,000 three-digit pairs takes ~0.5 s, and every split of every task instance needs it)."""
    low, high = 10 ** (digits - 1), 10**digits
    pairs = [(a, b) for a in range(low, high) for b in range(low, high)]
    random.Random(SEED).shuffle(pairs)
    return tuple(pairs)


class ArithmeticTask(Task):
    name = "arithmetic"
    domain = "arithmetic"
    description = "arithmetic: compute the result of a small calculation and reply with the number only"
    max_new_tokens = 16

    def __init__(self, data: None = None, digits: int = 2, op: str = "+"):
        if data is not None:
            raise ValueError("task 'arithmetic' is built in and takes no data")
        if op not in OPERATIONS:
            raise ValueError(f"task 'arithmetic': op must be one of {', '.join(OPERATIONS)}, got {op!r}")
        if digits not in (1, 2, 3):
            raise ValueError(f"task 'arithmetic': digits must be 1, 2 or 3, got {digits!r}")
        super().__init__()
        self.digits, self.op = digits, op
        self.description = f"arithmetic: {digits}-digit {NAMES[op]}, replying with the number only"

    def pairs(self, split: str) -> list[tuple[int, int]]:
        """The (a, b) operand pairs of one split, in the fixed permuted order."""
        self.check_split(split)
        pairs = permuted_pairs(self.digits)
        n_test, n_valid = min(TEST_SIZE, len(pairs) // 5), min(VALID_SIZE, len(pairs) // 10)
        bounds = {"test": (0, n_test), "valid": (n_test, n_test + n_valid), "train": (n_test + n_valid, len(pairs))}
        start, stop = bounds[split]
        return list(pairs[start:stop])

    def examples(self, split: str) -> list[Example]:
        examples = []
        for a, b in self.pairs(split):
            result = str(OPERATIONS[self.op](a, b))
            prompt = f"What is {a} {self.op} {b}? Answer with the number only."
            examples.append({"prompt": prompt, "answer": result, "reference": result, "a": a, "b": b, "op": self.op})
        return examples

    def extract(self, completion: str) -> str | None:
        return stated_result(completion)

    def score(self, completion: str, example: Example) -> float:
        return score_stated_result(completion, example["answer"])


class SubtractionTask(ArithmeticTask):
    """Two-digit subtraction (results may be negative): same domain as addition, with no expert of its own among the
    built-ins' usual ones — a task to adapt to with few-shot CEM (`t2 adapt --task subtraction`). The demo's unseen
    task is addition3."""

    name = "subtraction"

    def __init__(self, data: None = None, digits: int = 2):
        super().__init__(data, digits=digits, op="-")


class ThreeDigitAdditionTask(ArithmeticTask):
    """Three-digit addition: the demo's unseen task — the arithmetic expert only ever saw two-digit problems."""

    name = "addition3"
    max_new_tokens = 20

    def __init__(self, data: None = None):
        super().__init__(data, digits=3, op="+")
