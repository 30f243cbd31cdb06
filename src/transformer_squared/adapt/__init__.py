"""Self-adaptation (the second half of Transformer²): pass 1 picks or blends experts, pass 2 answers.

Strategies (`STRATEGIES`, built with `build_strategy(name, svf, library, **options)`):
  base        no adaptation
  prompt      the model classifies the prompt into the library's domains (classify.py)
  classifier  a classifier expert does, in pass 1 only (classify.py)
  embedding   nearest expert centroid in a sentence encoder's space, beyond the paper (embedding.py)
  cem         few-shot CEM over mixing weights on k examples of a task (cem.py)
The two-pass engine (two_pass.py) runs both passes and the cross-task evaluation.
"""

from __future__ import annotations

from .strategy import OTHER, Selection, Strategy

STRATEGIES = ("base", "prompt", "classifier", "embedding", "cem")


def build_strategy(name: str, svf, library, **options) -> Strategy:
    """A ready strategy. Options: classifier (name), encoder (path), threshold (embedding); task, shots, data,
    cem (a CEMConfig), progress (cem)."""
    from .routes import answer_experts

    if name not in STRATEGIES:
        raise ValueError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name == "base":
        from .two_pass import FixedStrategy

        return FixedStrategy(None)
    routes = answer_experts(library)
    if name == "prompt":
        from .classify import PromptStrategy

        return PromptStrategy(routes)
    if name == "classifier":
        from .classify import ClassifierStrategy, find_classifier

        return ClassifierStrategy(routes, find_classifier(library, options.get("classifier")))
    if name == "embedding":
        from ..experts.memory import ExpertMemory
        from .embedding import DEFAULT_THRESHOLD, EmbeddingStrategy, shared_encoder

        threshold = options.get("threshold")
        return EmbeddingStrategy(routes, shared_encoder(options.get("encoder")),
                                 DEFAULT_THRESHOLD if threshold is None else threshold,
                                 memory=ExpertMemory(library.root))
    from .cem import FewShotStrategy

    if options.get("task") is None:
        raise ValueError("--strategy cem needs a task: the task whose training examples it adapts on (--task)")

    return FewShotStrategy(list(routes.values()), options["task"], options.get("shots", 10), options.get("cem"),
                           options.get("progress", True))


__all__ = ["OTHER", "STRATEGIES", "Selection", "Strategy", "build_strategy"]
