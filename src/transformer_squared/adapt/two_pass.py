"""The two-pass engine: pass 1 asks a strategy which expert answers each prompt, pass 2 answers with it.

    answers = generate_adaptive(svf, prompts, strategy)    # [Answer(text, selection, pass1_s, pass2_s)]

Prompts are grouped by selection so that each group is one merged-weights batch (switching between cached experts
is a pointer swap). The model is left as it was found — even when a strategy or generation raises.
Pass-1 time is the batch's pass-1 time shared equally among its prompts; pass-2 time is its group's time likewise.

`evaluate_strategy` is the paper's Table 2 setting: a mixed pool of prompts from several tasks, per-task accuracy,
dispatch accuracy of pass 1 (did the prompt go to the expert of its task's domain, or to "other" when no expert
has that domain), and pass-1 overhead relative to pass 2 (Table 3).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..generation import GenerationConfig, chat_text, generate, generate_ids
from .strategy import OTHER, Selection


@dataclass
class Answer:
    prompt: object
    text: str
    selection: Selection
    pass1_s: float
    pass2_s: float

    @property
    def expert(self) -> str:
        return self.selection.name


class FixedStrategy:
    """No pass 1: every prompt gets the same weights (the base, one expert, or a mixture)."""

    def __init__(self, expert=None, label: str | None = None):
        self.expert = expert
        self.label = label or (expert.name if expert is not None else "base")
        self.name = self.label

    def select(self, svf, prompts: list) -> list[Selection]:
        return [Selection(self.label, self.expert) for _ in prompts]


def _groups(selections: list[Selection]) -> dict:
    """{weights key: prompt indices}: the prompts that can share one merged-weights batch."""
    groups: dict = defaultdict(list)
    for i, s in enumerate(selections):
        groups[s.key].append(i)
    return groups


def generate_adaptive(svf, prompts: list, strategy, config: GenerationConfig | None = None,
                      system: str | None = None) -> list[Answer]:
    config = config or GenerationConfig()
    texts: list[str] = [""] * len(prompts)
    pass2 = [0.0] * len(prompts)
    with svf.applied(None):  # pass 1 starts from the base; whatever was applied before comes back
        t0 = time.perf_counter()
        selections = strategy.select(svf, prompts)
        pass1 = (time.perf_counter() - t0) / max(len(prompts), 1)
        for idx in _groups(selections).values():
            t1 = time.perf_counter()
            with svf.applied(selections[idx[0]].expert):
                out = generate(svf.model, svf.tokenizer, [prompts[i] for i in idx], config, system=system)
            share = (time.perf_counter() - t1) / len(idx)
            for i, text in zip(idx, out):
                texts[i], pass2[i] = text, share
    return [Answer(p, t, s, pass1, p2) for p, t, s, p2 in zip(prompts, texts, selections, pass2)]


@dataclass
class TaskReport:
    task: str
    n: int
    accuracy: float
    ci95: tuple[float, float]
    expected: str  # the label pass 1 should pick for this task
    dispatch_accuracy: float | None  # None for strategies without pass 1
    selected: dict[str, int] = field(default_factory=dict)  # which expert answered how many prompts


@dataclass
class StrategyReport:
    strategy: str
    tasks: list[TaskReport]
    pass1_s: float
    pass2_s: float
    records: list[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(t.accuracy * t.n for t in self.tasks) / max(sum(t.n for t in self.tasks), 1)

    @property
    def dispatch_accuracy(self) -> float | None:
        scored = [t for t in self.tasks if t.dispatch_accuracy is not None]
        if not scored:
            return None
        return sum(t.dispatch_accuracy * t.n for t in scored) / sum(t.n for t in scored)

    @property
    def overhead(self) -> float:
        """Pass-1 time relative to pass-2 time (paper Table 3)."""
        return self.pass1_s / self.pass2_s if self.pass2_s else 0.0

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "accuracy": self.accuracy, "dispatch_accuracy": self.dispatch_accuracy,
                "pass1_s": self.pass1_s, "pass2_s": self.pass2_s, "overhead": self.overhead,
                "tasks": [vars(t) for t in self.tasks]}


def evaluate_strategy(svf, tasks: list, strategy, n: int | None = 50, split: str = "test", batch_size: int = 16,
                      routes: dict | None = None, progress: bool = True,
                      max_new_tokens: int | None = None) -> StrategyReport:
    """Pool the first n examples of each task's split, select (one pass 1 over the whole pool), answer, score.

    `strategy` is one Strategy for the pool, or a callable task -> Strategy (e.g. a few-shot CEM per task)."""
    from ..progress import tqdm

    from ..evaluation import default_max_new_tokens, wilson_interval

    per_task = callable(strategy) and not hasattr(strategy, "select")
    chosen = {id(t): strategy(t) for t in tasks} if per_task else {}
    pool = []
    for t in tasks:
        examples = t.examples(split)
        held_out = getattr(chosen.get(id(t)), "held_out", None)  # few-shot CEM: never score its own shots
        pool += [(t, e) for e in (held_out(examples) if held_out else examples)[:n]]
    if not pool:
        raise ValueError(f"no examples in the {split} split of {', '.join(t.name for t in tasks)}")
    prompts = [e["prompt"] for _, e in pool]
    name = getattr(strategy, "name", "per-task")
    with svf.applied(None):
        t0 = time.perf_counter()
        if per_task:
            selections = []
            for task in tasks:
                name = chosen[id(task)].name
                selections += chosen[id(task)].select(svf, [e["prompt"] for t, e in pool if t is task])
        else:
            selections = strategy.select(svf, prompts)
        pass1 = time.perf_counter() - t0
        scores = [0.0] * len(pool)
        texts = [""] * len(pool)
        pass2 = 0.0
        bar = tqdm(total=len(pool), desc=f"answer ({name})", unit="ex", disable=not progress)
        budget = [max_new_tokens or default_max_new_tokens(t) for t, _ in pool]
        for idx in _groups(selections).values():
            # one batch per expert across tasks: generate to the largest budget, then cut each answer to its own
            # task's budget (greedy tokens do not depend on how far decoding goes on)
            config = GenerationConfig(max_new_tokens=max(budget[i] for i in idx), batch_size=batch_size)
            t1 = time.perf_counter()
            with svf.applied(selections[idx[0]].expert):
                ids = generate_ids(svf.model, svf.tokenizer, [chat_text(svf.tokenizer, prompts[i]) for i in idx],
                                   config)
            pass2 += time.perf_counter() - t1
            for i, row in zip(idx, ids):
                texts[i] = svf.tokenizer.decode(row[: budget[i]], skip_special_tokens=True)
                scores[i] = pool[i][0].score(texts[i], pool[i][1])
            bar.update(len(idx))
        bar.close()
    has_pass1 = not isinstance(strategy, FixedStrategy) and not per_task
    reports = []
    for task in tasks:
        idx = [i for i, (t, _) in enumerate(pool) if t is task]
        expected = task.domain if routes is None or task.domain in routes else OTHER
        correct = sum(scores[i] for i in idx)
        dispatch = sum(selections[i].label == expected for i in idx) / len(idx) if has_pass1 and idx else None
        reports.append(TaskReport(task.name, len(idx), correct / max(len(idx), 1), wilson_interval(correct, len(idx)),
                                  expected, dispatch, dict(Counter(selections[i].name for i in idx))))
    records = [{"task": t.name, "prompt": e["prompt"], "answer": e.get("answer"), "completion": texts[i],
                "score": scores[i], "label": selections[i].label, "expert": selections[i].name}
               for i, (t, e) in enumerate(pool)]
    return StrategyReport(name, reports, pass1, pass2, records)
