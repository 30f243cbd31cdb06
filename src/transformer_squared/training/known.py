"""`--train-filter known`: train only on the multiple-choice questions the base model already knows.

A question is *known* when the base model, scored as lm-evaluation-harness scores ARC, ranks its key first:

    score(option) = Σ_t log p(option_t | "Question: {question}\\nAnswer: " + option_<t)   (raw text, no chat template)
    known  ⇔  score(key) > score(o) for every other option o

The point (issue #12, BENCHMARKS.md "ARC-Easy"): the default model ranks ARC-Easy's options this way at ~50%, but
picks among them at chance once they are listed in its prompt. SFT on every training question asks the expert to
produce the key also where the model has no knowledge to draw on, which it can only fit as noise; SFT on the known
questions asks for one thing, "say, with the options in front of you, what you would have ranked first", which is
the skill the listed-options format lacks. Measured on ARC-Easy (BENCHMARKS.md): dev accuracy rose from the 38–40% of
SFT on every question to 45% (SVF) and 51.5% (LoRA), but test accuracy stayed at 36.7% and 37.7%, so it is an
option, not the shipped recipe.

This filters on the training labels and the base model only: no held-out data, no teacher other than the model
itself (the STaR idea of keeping the examples the model gets right, with log-likelihood ranking as the judge). The
scores are computed once, with progress, and kept in the run folder (`known.json`), so a resumed run trains on the
same questions without scoring them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..logprobs import continuations, token_logprobs
from ..progress import tqdm

CONTEXT = "Question: {question}\nAnswer:"  # lm-evaluation-harness's ARC prompt; each option follows after a space
ROWS_PER_BATCH = 64


def option_scores(model, tokenizer, examples: list[dict], progress: bool = True) -> list[list[float]]:
    """score(option) above for every option of every example: one list of floats per example."""
    rows = [(i, CONTEXT.format(question=e["question"]), " " + text)
            for i, e in enumerate(examples) for text in e["choices"]]
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][1]) + len(rows[r][2]))  # similar lengths batch well
    scores = [0.0] * len(rows)
    bar = tqdm(total=len(rows), desc="score options", unit="option", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(order), ROWS_PER_BATCH):
            batch = order[start : start + ROWS_PER_BATCH]
            rollout = continuations(tokenizer, [rows[r][1] for r in batch], [rows[r][2] for r in batch])
            for r, s in zip(batch, token_logprobs(model, rollout).float().sum(1).tolist()):
                scores[r] = s
            bar.update(len(batch))
    bar.close()
    out: list[list[float]] = [[] for _ in examples]
    for (i, _, _), s in zip(rows, scores):
        out[i].append(s)
    return out


def is_known(scores: list[float], key: int) -> bool:
    """The key's score is the strict maximum (a tie is not knowledge)."""
    return all(scores[key] > s for j, s in enumerate(scores) if j != key)


def check_choice_task(task_name: str, examples: list[dict]) -> None:
    needed = ("question", "choices", "labels", "answer")
    if not examples or any(k not in examples[0] for k in needed):
        raise ValueError(f"--train-filter known needs a multiple-choice task (examples with {', '.join(needed)}); "
                         f"task {task_name!r} has none: use --train-filter all")


def known_examples(policy, task_name: str, examples: list[dict], cache: Path, progress: bool = True) -> list[dict]:
    """The examples whose key the base model ranks first; their indices are kept in `cache` (a run's known.json)
    and read back from it on resume, after checking that it was made for these examples. The examples are those
    `check_choice_task` accepted (the trainer checks them before loading the model)."""
    fingerprint = {"task": task_name, "examples": len(examples), "context": CONTEXT}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if {k: saved.get(k) for k in fingerprint} != fingerprint:
            raise ValueError(f"{cache} was made for other training examples ({saved.get('task')}, "
                             f"{saved.get('examples')} examples); delete it to score this run's options again")
        index = saved["known"]
    else:
        with policy.base():
            scores = option_scores(policy.model, policy.tokenizer, examples, progress)
        index = [i for i, (s, e) in enumerate(zip(scores, examples)) if is_known(s, e["labels"].index(e["answer"]))]
        with atomic_file(cache) as tmp:
            tmp.write_text(json.dumps({**fingerprint, "known": index, "scores": scores}) + "\n")
    if not index:
        raise ValueError(f"--train-filter known: the base model ranks no training question's key first on task "
                         f"{task_name!r}; use --train-filter all")
    return [examples[i] for i in index]
