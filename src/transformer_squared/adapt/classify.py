"""Pass 1 by asking a model: the `prompt` strategy (the base model classifies) and the `classifier` strategy (an SVF
expert trained with RL to classify, applied in pass 1 only), plus `ClassifyTask`, the task that trains it.

Both use the paper's pattern (Transformer², appendix: "Analyze the given question and classify it into one of
four categories ... put your final answer in \\boxed{}"), with the library's domain labels and descriptions instead
of the fixed code/math/reasoning list. The answer is read from `\\boxed{label}`; a reply without a box that names
exactly one label is accepted too (small models often drop the box). "other", or anything unparsable, means the base
weights answer — the reference code instead keeps whatever expert was loaded before, which we consider a bug.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..generation import GenerationConfig, generate
from ..tasks.base import Task
from .routes import DISPATCH, answer_experts, expert_prompts, question_of
from .strategy import OTHER, Selection

PASS1_MAX_NEW_TOKENS = 16
PER_LABEL = {"train": 400, "valid": 50, "test": 100}  # classify examples per label and split


def classification_prompt(question: str, labels: dict[str, str]) -> str:
    """labels: {label: one-line description}. The question is quoted as it came."""
    names = [*labels, OTHER]
    listed = ", ".join(f"'{n}'" for n in names[:-1]) + f" or '{names[-1]}'"
    guide = "\n".join(f"- {n}: {d or n}" for n, d in labels.items())
    return (f"Analyze the given question and classify it into one of these categories: {listed}.\n"
            f"{guide}\n- {OTHER}: anything else.\n\n"
            f"Question: {question}\n\n"
            f"Reply with the category only, inside \\boxed{{}}, for example \\boxed{{{names[0]}}}.")


def parse_label(reply: str, labels) -> str:
    """The label in `\\boxed{...}`; without a box, the one label the reply names (if it names exactly one);
    OTHER when it names no known label, or several."""
    known = {label.lower(): label for label in [*labels, OTHER]}
    boxed = re.findall(r"\\boxed\{\s*([^{}]*?)\s*\}", reply)
    if boxed:
        return known.get(boxed[-1].strip().strip("'\"").lower(), OTHER)
    named = {known[w] for w in re.findall(r"[A-Za-z_][\w-]*", reply.lower()) if w in known}
    return named.pop() if len(named) == 1 else OTHER


def describe(routes: dict) -> dict[str, str]:
    """{label: description} from the routed experts' metadata."""
    return {label: _strip_label(label, expert.meta.description) for label, expert in routes.items()}


def _strip_label(label: str, description: str) -> str:
    """Task descriptions read "domain: what it is"; the prompt already names the domain."""
    head, sep, rest = description.partition(":")
    return rest.strip() if sep and head.strip().lower() == label.lower() else description


class PromptStrategy:
    """The model classifies the prompt with its current (base) weights."""

    name = "prompt"

    def __init__(self, routes: dict, classifier=None, batch_size: int = 16):
        if not routes:
            raise ValueError("the library has no expert with a domain label to route to; train one first (t2 train)")
        self.routes, self.classifier, self.batch_size = routes, classifier, batch_size
        self.labels = describe(routes)

    def classify(self, svf, prompts: list) -> list[str]:
        texts = [classification_prompt(question_of(p), self.labels) for p in prompts]
        # room for the longest "\boxed{label}" and a few tokens around it; a longer reply is unparsable anyway
        longest = max(len(svf.tokenizer(f"\\boxed{{{label}}}", add_special_tokens=False)["input_ids"])
                      for label in [*self.labels, OTHER])
        config = GenerationConfig(max_new_tokens=longest + 4, batch_size=self.batch_size)
        with svf.applied(self.classifier):  # None = base; whatever was applied comes back afterwards
            replies = generate(svf.model, svf.tokenizer, texts, config)
        return [parse_label(r, self.labels) for r in replies]

    def select(self, svf, prompts: list) -> list[Selection]:
        return [Selection(label, self.routes.get(label)) for label in self.classify(svf, prompts)]


class ClassifierStrategy(PromptStrategy):
    """The same question, answered by a classifier expert (trained with `t2 train --task classify`)."""

    name = "classifier"

    def __init__(self, routes: dict, classifier, batch_size: int = 16):
        trained = (classifier.meta.created_by or {}).get("labels")
        if not trained:
            raise ValueError(f"expert {classifier.name!r} is not a classifier (no labels recorded); "
                             "train one with: t2 train --task classify --library LIB --out LIB/dispatcher")
        missing = sorted(set(routes) - set(trained))
        if missing:
            raise ValueError(f"classifier {classifier.name!r} was trained on {', '.join(trained)} but the library also "
                             f"routes {', '.join(missing)}; retrain it with t2 train --task classify")
        super().__init__({label: routes[label] for label in trained if label in routes}, classifier, batch_size)


def classifier_name(library, name: str | None = None) -> str:
    """The named classifier expert (a library name or an expert folder), or the library's only one (domain
    `dispatch`); checked from expert.json alone, so that a check before loading the model reads no z."""
    if name:
        if not (Path(name) / "expert.json").is_file():
            library.info(name)  # raises with the list of names
        return name
    found = [n for n in library.names() if library.info(n).get("domain") == DISPATCH]
    if len(found) != 1:
        raise ValueError(f"{'no' if not found else 'several'} classifier experts in {library.root} "
                         f"({', '.join(found) or 'none'}): train one with t2 train --task classify, "
                         "or name it with --classifier")
    return found[0]


def find_classifier(library, name: str | None = None):
    """The classifier expert `classifier_name` finds, loaded."""
    return library.get(classifier_name(library, name))


class ClassifyTask(Task):
    """Train a classifier expert: prompts of each routed expert's own task, labelled with its domain.

    Splits come from the experts' tasks (train/valid/test), interleaved label by label so that any prefix is
    balanced. Rewards are 1 for the right label (parsed as in pass 1), else 0.
    """

    name = "classify"
    domain = DISPATCH
    max_new_tokens = PASS1_MAX_NEW_TOKENS

    def __init__(self, library):
        super().__init__()
        routes = answer_experts(library)
        self.prompts = {split: {label: expert_prompts(e, split, n) for label, e in routes.items()}
                        for split, n in PER_LABEL.items()}
        self.labels = {label: d for label, d in describe(routes).items() if self.prompts["train"][label]}
        if len(self.labels) < 2:
            raise ValueError(f"--task classify needs at least two experts in {library.root} whose training task is "
                             f"known (have: {', '.join(self.labels) or 'none'}); train them with t2 train first")
        self.description = "classify a question into the domains " + ", ".join(self.labels)
        self.record = {"labels": list(self.labels)}  # stored in the expert's created_by

    def examples(self, split: str) -> list[dict]:
        columns = [[(p, label) for p in self.prompts[split][label]] for label in self.labels]
        rows = [row for group in zip(*columns) for row in group]  # round-robin, truncated to the rarest label
        return [{"prompt": classification_prompt(p, self.labels), "answer": label, "reference": f"\\boxed{{{label}}}"}
                for p, label in rows]

    def extract(self, completion: str) -> str:
        return parse_label(completion, self.labels)

    def score(self, completion: str, example: dict) -> float:
        return float(self.extract(completion) == example["answer"])

