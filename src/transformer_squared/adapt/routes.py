"""Which expert answers which domain, and the example prompts each expert stands for.

An *answer expert* is a library expert with a domain label (set when it was trained: the task's domain, or
`--domain`). Classifier experts (domain `dispatch`) and few-shot mixtures made by `t2 adapt` (method `cem`) are not
routed to. When two experts share a domain, the one with the best recorded validation accuracy answers it.
"""

from __future__ import annotations

import warnings

from .strategy import OTHER

DISPATCH = "dispatch"  # domain of classifier experts: used in pass 1 only


def answer_experts(library) -> dict:
    """{domain label: Expert} for every routable expert in the library."""
    best: dict[str, tuple[float, object]] = {}
    for name in library.names():
        info = library.info(name)
        domain = (info.get("domain") or "").strip()
        if not domain or domain in (DISPATCH, OTHER) or info.get("created_by", {}).get("method") == "cem":
            continue
        score = float(info.get("metrics", {}).get("valid_accuracy", 0.0) or 0.0)
        if domain not in best or score > best[domain][0]:
            best[domain] = (score, name)
    return {domain: library.get(name) for domain, (_, name) in sorted(best.items())}


def training_task(expert):
    """(task name, data path) the expert was trained or adapted on, when it recorded them; else None."""
    record = expert.meta.created_by or {}
    config = record.get("config", record)
    if not config.get("task"):
        return None
    return config["task"], config.get("data")


def expert_prompts(expert, split: str = "train", n: int = 64) -> list[str]:
    """Up to n prompts of the task the expert was trained on (empty when unknown or unreadable)."""
    from ..tasks import get_task

    spec = training_task(expert)
    if spec is None:
        return []
    try:
        examples = get_task(spec[0], spec[1]).examples(split)
    except (ValueError, FileNotFoundError, ImportError) as e:
        warnings.warn(f"expert {expert.name!r}: cannot read its training task {spec[0]!r} ({e})", stacklevel=2)
        return []
    step = max(1, len(examples) // n)
    return [e["prompt"] for e in examples[::step][:n]]


def question_of(prompt) -> str:
    """The text to classify: the prompt itself, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1].get("content", "") if prompt else "")
