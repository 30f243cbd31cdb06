"""The pass-1 contract: a strategy looks at prompts and says, for each, which expert (or mixture) answers it.

    selections = strategy.select(svf, prompts)      # one Selection per prompt
    selections[0].expert                            # an Expert (possibly a mixture), or None = base weights
    selections[0].label                             # the domain label chosen ("math", "other", "cem", ...)

Strategies may run the model in pass 1 (prompt, classifier); they leave it exactly as they found it.
`STRATEGIES` maps names to builders `(svf, library, **options) -> Strategy` (see `build_strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

OTHER = "other"  # the label that means "no expert fits": answer with the base weights


@dataclass(frozen=True)
class Selection:
    label: str  # domain label, OTHER, or the name of a fixed expert / mixture
    expert: object | None = None  # Expert, or None for the base weights

    @property
    def name(self) -> str:
        return self.expert.name if self.expert is not None else "base"

    @property
    def key(self) -> str | None:
        """Groups prompts that can share one batch (same weights)."""
        return self.expert.key if self.expert is not None else None


class Strategy(Protocol):
    name: str

    def select(self, svf, prompts: list) -> list[Selection]:
        """One Selection per prompt (a user message string or a chat message list)."""
        ...
