"""Accuracy of a model on a task split, with a 95% Wilson interval and per-sample records: `t2 eval`, training's
validation and the two-pass report all use it, so it sits below training and adapt."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_file
from .generation import GenerationConfig, generate
from .progress import tqdm


def default_max_new_tokens(task) -> int:
    """The task's own generation budget (`Task.max_new_tokens`)."""
    return task.max_new_tokens


def wilson_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (sensible at 0% and 100%, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    task: str
    split: str
    n: int
    accuracy: float
    ci95: tuple[float, float]
    answers: dict[str, float] = field(default_factory=dict)  # distribution of extracted answers (label tasks)
    records: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lo, hi = self.ci95
        line = f"{self.task}/{self.split}: {self.accuracy:.1%} [{lo:.1%}, {hi:.1%}] (n={self.n})"
        if self.answers:
            line += "  answers " + " ".join(f"{k}:{v:.0%}" for k, v in sorted(self.answers.items()))
        return line

    def to_dict(self, records: bool = False) -> dict:
        d = asdict(self)
        if not records:
            d.pop("records")
        return d


def evaluate(model, tokenizer, task, split: str = "test", n: int | None = None, batch_size: int = 16,
             max_new_tokens: int | None = None, examples: list[dict] | None = None, progress: bool = True) -> EvalResult:
    """Greedy answers to the first `n` examples of a split, scored by the task."""
    examples = examples if examples is not None else task.examples(split)
    examples = examples[:n] if n else examples
    config = GenerationConfig(max_new_tokens=max_new_tokens or default_max_new_tokens(task), batch_size=batch_size)
    completions: list[str] = []
    bar = tqdm(total=len(examples), desc=f"eval {task.name}/{split}", unit="ex", disable=not progress)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        completions += generate(model, tokenizer, [e["prompt"] for e in chunk], config)
        bar.update(len(chunk))
    bar.close()
    scores = task.reward([e["prompt"] for e in examples], completions,
                         **{k: [e.get(k) for e in examples] for k in examples[0] if k != "prompt"}) if examples else []
    records = [{"prompt": e["prompt"], "completion": c, "extracted": task.answer_given(c, e), "answer": e.get("answer"),
                "score": s} for e, c, s in zip(examples, completions, scores)]
    correct = sum(scores)
    answers = {}
    if examples and "choices" in examples[0]:  # label tasks: report the answer distribution (label-prior collapse)
        counts = Counter(r["extracted"] or "none" for r in records)
        answers = {k: v / len(records) for k, v in counts.items()}
    return EvalResult(task.name, split, len(examples), correct / max(len(examples), 1),
                      wilson_interval(correct, len(examples)), answers, records)


def write_results(result, out: str | os.PathLike, label: str) -> Path:
    """`<out>/<label>.json` (summary) and `<out>/<label>.jsonl` (one line per sample), written atomically.
    `result` is anything with `to_dict()` and `records`: an EvalResult, or adapt's StrategyReport."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{label}.json", json.dumps(result.to_dict(), indent=2) + "\n"),
                       (out / f"{label}.jsonl", "".join(json.dumps(r) + "\n" for r in result.records))):
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return out / f"{label}.json"
