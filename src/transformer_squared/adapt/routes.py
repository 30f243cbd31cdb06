"""Which expert answers which domain, and the example prompts each expert stands for.

An *answer expert* is a library expert with a domain label (set when it was trained: the task's domain, or
`--domain`). Classifier experts (domain `dispatch`) and few-shot mixtures made by `t2 adapt` (method `cem`) are not
routed to. When several experts share a domain, the expert memory decides (experts/memory.py): the deciding task is
the domain's task that most of them have a counted record on (then: the most records), and the best recorded
result on it answers; experts without a record there come after those with one. Without any counted record, the
best validation accuracy in expert.json decides, as before the memory existed.
"""

from __future__ import annotations

import logging
from collections import Counter

from .strategy import OTHER

log = logging.getLogger(__name__)

DISPATCH = "dispatch"  # domain of classifier experts: used in pass 1 only


def answer_experts(library) -> dict:
    """{domain label: Expert} for every routable expert in the library."""
    claims: dict[str, list[tuple[float, str]]] = {}
    for name in library.names():
        info = library.info(name)
        domain = (info.get("domain") or "").strip()
        if not domain or domain in (DISPATCH, OTHER) or info.get("created_by", {}).get("method") == "cem":
            continue
        claims.setdefault(domain, []).append((float(info.get("metrics", {}).get("valid_accuracy", 0.0) or 0.0), name))
    routes = {}
    for domain, found in sorted(claims.items()):
        by_validation = [library.get(n) for _, n in sorted(found, key=lambda x: -x[0])]  # stable: ties keep name order
        routes[domain] = by_validation[0] if len(found) == 1 else _best_recorded(library, domain, by_validation)
    return routes


def _best_recorded(library, domain: str, experts: list):
    from ..experts.memory import ExpertMemory

    memory = ExpertMemory(library.root)
    experts_on: Counter = Counter()  # task -> experts with a counted record on it
    records_on: Counter = Counter()  # task -> counted records
    for expert in experts:
        tasks = [r["task"] for r in memory.results(expert) if r.get("domain") == domain]
        experts_on.update(set(tasks))
        records_on.update(tasks)
    if not experts_on:
        return experts[0]
    deciding = max(sorted(experts_on), key=lambda t: (experts_on[t], records_on[t]))
    return memory.best_for(deciding, experts) or experts[0]


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
        log.warning("expert %r: cannot read its training task %r (%s)", expert.name, spec[0], e)
        return []
    step = max(1, len(examples) // n)
    return [e["prompt"] for e in examples[::step][:n]]


def question_of(prompt) -> str:
    """The text to classify: the prompt itself, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1].get("content", "") if prompt else "")
