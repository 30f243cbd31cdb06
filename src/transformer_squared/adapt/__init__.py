"""Self-adaptation (the second half of Transformer²): pass 1 picks or blends experts, pass 2 answers.

Strategies (`STRATEGIES`, a dict name -> builder; `build_strategy(name, svf, library, **options)` also takes a
dotted path to a builder of your own):
  base        no adaptation
  prompt      the model classifies the prompt into the library's domains (classify.py)
  classifier  a classifier expert does, in pass 1 only (classify.py)
  embedding   nearest expert centroid in a sentence encoder's space, beyond the paper (embedding.py)
  cem         few-shot CEM over mixing weights on k examples of a task (cem.py)
The two-pass engine (two_pass.py) runs both passes and the cross-task evaluation.
"""

from __future__ import annotations

from .strategy import OTHER, Selection, Strategy


def _routes(library, options: dict) -> dict:
    """The caller's routes when it computed them already (`routes=`), else the library's: loaded once either way."""
    if options.get("routes") is not None:
        return options["routes"]
    from .routes import answer_experts

    return answer_experts(library)


def _base(svf, library, **options) -> Strategy:
    from .two_pass import FixedStrategy

    return FixedStrategy(None)


def _prompt(svf, library, **options) -> Strategy:
    from .classify import PromptStrategy

    return PromptStrategy(_routes(library, options), batch_size=options.get("batch_size", 16))


def _classifier(svf, library, **options) -> Strategy:
    from .classify import ClassifierStrategy, find_classifier

    return ClassifierStrategy(_routes(library, options), find_classifier(library, options.get("classifier")),
                              batch_size=options.get("batch_size", 16))


def _embedding(svf, library, **options) -> Strategy:
    from ..experts.memory import ExpertMemory
    from .embedding import DEFAULT_THRESHOLD, EmbeddingStrategy, shared_encoder

    threshold = options.get("threshold")
    return EmbeddingStrategy(_routes(library, options), shared_encoder(options.get("encoder")),
                             DEFAULT_THRESHOLD if threshold is None else threshold,
                             memory=ExpertMemory(library.root))


def _cem(svf, library, **options) -> Strategy:
    from .cem import FewShotStrategy

    routes = _routes(library, options)
    if options.get("task") is None:
        raise ValueError("--strategy cem needs a task: the task whose training examples it adapts on (--task)")
    return FewShotStrategy(list(routes.values()), options["task"], options.get("shots", 10),
                           options.get("cem"), options.get("progress", True))


# name -> builder (svf, library, **options) -> Strategy
STRATEGIES: dict = {"base": _base, "prompt": _prompt, "classifier": _classifier, "embedding": _embedding, "cem": _cem}


def build_strategy(name: str, svf, library, **options) -> Strategy:
    """A ready strategy, from a `STRATEGIES` name or a dotted path (`package.module:builder`) to a builder with the
    same signature. Options: routes ({domain: expert}, when the caller has them: not loaded again); batch_size (of
    pass 1's generations: prompt, classifier; default 16); classifier (name), encoder (path), threshold (embedding);
    task, shots, data, cem (a CEMConfig), progress (cem)."""
    if name in STRATEGIES:
        builder = STRATEGIES[name]
    elif "." in name or ":" in name:
        from ..tasks.base import resolve

        builder = resolve(name, "--strategy")
        if not callable(builder):
            raise ValueError(f"--strategy {name!r} is not callable: a dotted path must name a strategy builder")
    else:
        raise ValueError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)} (or a dotted path)")
    return builder(svf, library, **options)


__all__ = ["OTHER", "STRATEGIES", "Selection", "Strategy", "build_strategy"]
