"""Settings of few-shot CEM (see cem.py), kept free of torch so that `t2 -h` stays instant."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import option

FITNESSES = ("accuracy", "loglik")


@dataclass
class CEMConfig:
    population: int = option(32, "candidates per iteration")
    elite_ratio: float = option(0.2, "fraction of the population the distribution is refitted to")
    iterations: int = option(10, "CEM iterations (the reference allows up to 100)")
    alpha_min: float = option(0.0, "lower bound of each α")
    alpha_max: float = option(1.0, "upper bound of each α")
    init_std: float = option(0.3, "initial std of each α (the mean starts at 1/#components)")
    per_matrix: bool = option(False, "one α per expert per matrix instead of one per expert")
    include_base: bool = option(True, "the base weights (z = 1) are a component too")
    fitness: str = option("accuracy", "accuracy (greedy answers, log-likelihood breaks ties) | loglik")
    max_new_tokens: int = option(0, "accuracy fitness: 0 = the task's default")
    batch_rows: int = option(64, "candidate×shot rows per forward pass")
    seed: int = option(0, "seeds the candidates sampled and the shots drawn from the task")

    def __post_init__(self):
        if self.fitness not in FITNESSES:
            raise ValueError(f"--fitness {self.fitness!r}: choose one of {', '.join(FITNESSES)}")
        if self.population < 2 or self.iterations < 1 or self.batch_rows < 1:
            raise ValueError("--population must be >= 2, --iterations and --batch-rows >= 1")
        if not 0 < self.elite_ratio <= 1:
            raise ValueError("--elite-ratio must be in (0, 1]")
        if not self.alpha_min < self.alpha_max:
            raise ValueError("--alpha-min must be below --alpha-max")
        if not self.init_std > 0:
            raise ValueError("--init-std must be > 0")
        if self.max_new_tokens < 0:
            raise ValueError("--max-new-tokens must be >= 0 (0 = the task's default)")

    @property
    def n_elite(self) -> int:
        return max(1, math.ceil(self.population * self.elite_ratio))
