"""How rows on different experts are decoded: together in one factored pass with per-row σ' (`rows`), or one
merged batch per expert after another (`groups`) — picked per batch from costs measured at start-up.

    rows    cost ≈ steps · t_rows(B)                               (continuous batching, see decode.py)
    groups  cost ≈ Σ_groups [ steps_g · t_merged(B_g) + compose_g ]  (static batches, one expert at a time)

t_rows(B) and t_merged(B) are seconds per decode step at batch size B (piecewise linear between the measured
sizes); compose_g is the time to compose an expert's merged weights when they are not cached (0 when cached, or
for the base). `steps` is the largest remaining token budget (an upper bound: eos usually comes sooner); prefill
cost is left out of the model. Within a running batch, each forward pass is `merged` whenever all its rows share
weights that are cached (or worth composing, see Planner), else `rows`.

On a small model on CPU (SmolLM2-135M; numbers in BENCHMARKS.md "Serving") a factored step costs little more than
a merged one at the same batch size, so a mixed batch over several experts is cheaper as one `rows` pass than as
one merged pass per expert: `rows` wins every mixed batch there. `groups` wins where a step's cost grows in proportion
to the batch (compute-bound: large batches or models), since merged weights then save the factored path's extra
multiply-adds (37% on square-ish MLP matrices at full rank) and switching cached weights is a pointer swap.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from .decode import Row, decode_batch

BATCHING = ("auto", "rows", "groups")


@dataclass
class Costs:
    """Seconds per decode step by batch size for each mode, and seconds to compose one uncached expert."""

    merged: dict[int, float] = field(default_factory=dict)
    rows: dict[int, float] = field(default_factory=dict)
    compose: float = 0.0

    def step(self, mode: str, batch_size: int) -> float:
        table = sorted((self.merged if mode == "merged" else self.rows).items())
        if not table:
            raise ValueError(f"no measured step cost for mode {mode!r}")
        if len(table) == 1:
            return table[0][1] * batch_size / table[0][0]
        for (b0, t0), (b1, t1) in itertools.pairwise(table):
            if batch_size <= b1 or (b1, t1) == table[-1]:
                return t0 + (t1 - t0) * (batch_size - b0) / (b1 - b0)  # interpolates inside, extrapolates outside
        raise AssertionError("unreachable")

    def as_dict(self) -> dict:
        ms = lambda t: {str(b): round(v * 1000, 1) for b, v in sorted(t.items())}
        return {"merged_step_ms": ms(self.merged), "rows_step_ms": ms(self.rows),
                "compose_ms": round(self.compose * 1000, 1)}


class Planner:
    """Decides, from the costs, whether mixed rows run together (`rows`) or by expert group, and which set-up each
    forward pass uses.

    Merging an expert is a one-off cost that later steps reuse, so charging the whole compose to the first step
    that could use it would keep a popular expert in `rows` forever. As in ski rental, every step of an uncached
    expert's rows that runs as `rows` adds the extra it paid (rows cost minus merged cost at that batch size) to the
    expert's account, and the expert is merged once the account covers the compose cost: at most about twice the
    best cost in hindsight, without guessing the future.
    """

    def __init__(self, costs: Costs | None, batching: str = "auto"):
        if batching not in BATCHING:
            raise ValueError(f"--batching must be one of {', '.join(BATCHING)}, not {batching!r}")
        self.costs, self.batching = costs, batching
        self.paid: dict[str, float] = {}  # expert key -> extra seconds paid running it as rows

    @staticmethod
    def groups(rows: list[Row]) -> list[list[Row]]:
        """Rows grouped by weights, largest group first."""
        groups: dict[str | None, list[Row]] = {}
        for row in rows:
            groups.setdefault(row.key, []).append(row)
        return sorted(groups.values(), key=len, reverse=True)

    def by_groups(self, rows: list[Row], cached) -> bool:
        """Whether one merged batch per expert, one after another, is cheaper than decoding all `rows` together.
        `cached(expert)` says whether its merged weights are cached."""
        groups = self.groups(rows)
        if self.batching != "auto" or len(groups) == 1 or self.costs is None:
            return self.batching == "groups"
        costs = self.costs
        steps = lambda g: max(r.remaining for r in g)
        compose = lambda e: 0.0 if cached(e) else max(0.0, costs.compose - self.paid.get(e.key, 0.0))
        grouped = sum(steps(g) * costs.step("merged", len(g)) + compose(g[0].expert) for g in groups)
        return grouped < steps(rows) * costs.step("rows", len(rows))

    def mode(self, rows: list[Row], cached) -> str:
        """`merged` or `rows` for one forward pass over `rows`."""
        if len({r.key for r in rows}) > 1 or self.batching == "rows":
            return "rows"
        expert = rows[0].expert
        if cached(expert) or self.costs is None:
            return "merged"
        extra = self.costs.step("rows", len(rows)) - self.costs.step("merged", len(rows))
        self.paid[expert.key] = self.paid.get(expert.key, 0.0) + max(0.0, extra)
        return "merged" if self.paid[expert.key] >= self.costs.compose else "rows"


def measure_costs(svf, max_batch_size: int, pad_id: int, steps: int = 3, repeats: int = 2) -> Costs:
    """Time decode steps in both modes at batch sizes 1, 2, 4, … up to `max_batch_size` (best of `repeats`), and
    one compose. Uses an identity expert (costs do not depend on z's values) and a one-token prompt: seconds."""
    from ..experts import Expert

    probe = Expert.for_model(svf, name="probe")
    t0 = time.perf_counter()
    svf.compose(probe, cache=False)
    costs = Costs(compose=time.perf_counter() - t0)
    sizes = sorted({min(2**i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})
    for size in sizes:
        for mode, expert, table in (("merged", None, costs.merged), ("rows", probe, costs.rows)):
            for _ in range(repeats):
                rows = [Row([pad_id], steps + 1, expert) for _ in range(size)]
                stats = decode_batch(svf, rows, mode, pad_id, eos_ids=set())
                table[size] = min(table.get(size, float("inf")), stats.step_s / max(stats.steps, 1))
    return costs
