"""Few-shot adaptation to a new task: the Cross-Entropy Method over mixing weights α (the paper's third strategy).

The adapted expert is z = Σₖ αₖ zₖ over the library's experts (and, by default, the base itself, z = 1, so the
search space contains "no adaptation"); α is one number per expert, or one per expert per matrix. CEM keeps a
diagonal Gaussian over α: each iteration samples `population` candidates (clipped to [alpha_min, alpha_max]),
scores them on the k shots, and refits mean and std to the `elite_ratio` best. The first population also holds
every vertex (each expert alone, the base alone), so the result is never worse on the shots than the best single
expert. The best candidate seen is returned (reference defaults: population 32, elite 0.2, ≤100 iterations, [0, 1]).

Departures from the official CEM (optim_modules.CEM), deliberate: the initial mean is uniform, 1/K per component
(theirs: the policy's current solution), and the initial std is `init_std` = 0.3 (theirs: half the α range, 0.5);
the first population also holds every vertex (theirs: random members only); the best member is kept, not
re-scored (theirs puts it back into every population and re-scores it — with fixed shots and deterministic scoring
both keep the same best); the refit std of the elite is the population std (divides by n; theirs `torch.std`,
divides by n − 1), and a single elite halves the std; neither has a minimum std, so the search can collapse early.

Fitness: accuracy of greedy answers on the shots, ties broken by the mean per-token log-likelihood of the reference
answers; or the log-likelihood alone (`fitness="loglik"`, no generation, much cheaper).

Candidates are never composed into weights. Each candidate's adapted singular values are mixed from the experts'
cached vectors — for the paper parametrization σ'(Σ αₖ zₖ) = Σ αₖ (σ ⊙ zₖ) exactly — and a whole population is
scored in one batch through the factored layers, each row carrying its candidate's σ' (`SVFLinear.row_sigma`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..generation import GenerationConfig, chat_text, generate_ids
from ..logprobs import teacher_forced, token_logprobs
from ..progress import tqdm
from ..svf import sigma
from .config import CEMConfig  # noqa: F401  (CEMConfig is part of this module's API)

log = logging.getLogger(__name__)

BASE = "<base>"  # the base weights' component in α (not a valid expert name, so it never collides)

@dataclass
class CEMResult:
    components: list[str]  # expert names (and BASE) in α's order
    alpha: list  # best α: [K] or [K][matrices]
    accuracy: float  # on the shots
    loglik: float
    history: list[dict] = field(default_factory=list)  # per iteration: best/mean fitness, std, seconds
    seconds: float = 0.0

    def alpha_dict(self, matrix_names: list[str]) -> dict:
        """{component: α} or {component: {matrix: α}}, as stored in expert.json."""
        if self.alpha and isinstance(self.alpha[0], list):
            return {c: dict(zip(matrix_names, a)) for c, a in zip(self.components, self.alpha)}
        return dict(zip(self.components, self.alpha))


class Population:
    """Scores candidate α's on the shots: α -> σ' per matrix -> per-row σ' in the factored layers."""

    def __init__(self, svf, experts: list, shots: list[dict], task, config: CEMConfig):
        if not experts:
            raise ValueError("few-shot adaptation needs at least one expert in the library")
        if not shots:
            raise ValueError("few-shot adaptation needs at least one example (shot) of the task")
        names = [e.name for e in experts]
        if len(set(names)) != len(names) or BASE in names:
            raise ValueError(f"experts to mix need distinct names other than {BASE!r} (α is keyed by name): {names}")
        first = experts[0]
        for e in experts:
            e.check_compatible(svf)
            if e.parametrization != first.parametrization:
                raise ValueError(f"experts {first.name!r} and {e.name!r} use different parametrizations; cannot mix")
        self.svf, self.shots, self.task, self.config = svf, shots, task, config
        self.parametrization = first.parametrization
        self.components = [e.name for e in experts]
        zs = [e.z for e in experts]
        if config.include_base:
            self.components.append(BASE)
            zs.append(svf.init_z(self.parametrization))
        self.Z = {n: torch.stack([z[n] for z in zs]) for n in svf.names}  # {matrix: (K, r)}
        self.max_new = config.max_new_tokens or _default_max_new(task)
        self.texts = [chat_text(svf.tokenizer, e["prompt"]) for e in shots]

    @property
    def shape(self) -> tuple[int, ...]:
        K, M = len(self.components), len(self.svf.names)
        return (K, M) if self.config.per_matrix else (K,)

    def sigmas(self, alphas: torch.Tensor) -> dict[str, torch.Tensor]:
        """{matrix: (P, r)} adapted singular values of each candidate."""
        out = {}
        for m, n in enumerate(self.svf.names):
            a = alphas[:, :, m] if self.config.per_matrix else alphas  # (P, K)
            S = self.svf.decomposition.factors(n)[1]  # float32, on the compute device
            z = a.to(S.device, torch.float32) @ self.Z[n].to(S.device)  # (P, r): Σₖ αₖ zₖ, float32
            out[n] = sigma(z, S, self.parametrization)
        return out

    @torch.no_grad()
    def score(self, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(accuracy, mean log-likelihood) of each candidate on the shots: two (P,) tensors."""
        P, k = alphas.shape[0], len(self.shots)
        sig = self.sigmas(alphas)
        rows = [(c, i) for c in range(P) for i in range(k)]
        correct, loglik = torch.zeros(P), torch.zeros(P)
        svf = self.svf
        with svf.applied(None), svf.factored(parametrization=self.parametrization) as layers:
            try:
                for start in range(0, len(rows), self.config.batch_rows):
                    chunk = rows[start : start + self.config.batch_rows]
                    cands = torch.tensor([c for c, _ in chunk])
                    for n, layer in layers.items():
                        layer.row_sigma = sig[n][cands]  # (B, r)
                    ll, right = self.score_shots([i for _, i in chunk])
                    loglik.index_add_(0, cands, ll)
                    correct.index_add_(0, cands, right)
            finally:
                for layer in layers.values():
                    layer.row_sigma = None
        return correct / k, loglik / k


    @torch.no_grad()
    def score_shots(self, shots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, with the model's current weights: (mean log-likelihood of the shot's reference answer, 1.0 if
        its greedy answer is right — 0 everywhere for the loglik fitness). Two (B,) tensors."""
        svf, examples = self.svf, [self.shots[i] for i in shots]
        rollout = teacher_forced(svf.tokenizer, [e["prompt"] for e in examples], [str(e["reference"]) for e in examples])
        lp = token_logprobs(svf.model, rollout)  # (B, C)
        loglik = (lp.sum(1) / rollout.completion_mask.to(lp.device).sum(1).clamp(min=1)).float().cpu()  # (B,) host
        correct = torch.zeros(len(shots))
        if self.config.fitness == "accuracy":
            config = GenerationConfig(max_new_tokens=self.max_new, batch_size=len(shots))
            ids = generate_ids(svf.model, svf.tokenizer, [self.texts[i] for i in shots], config)
            for j, (e, row) in enumerate(zip(examples, ids)):
                correct[j] = self.task.score(svf.tokenizer.decode(row, skip_special_tokens=True), e)
        return loglik, correct


def _default_max_new(task) -> int:
    from ..evaluation import default_max_new_tokens

    return default_max_new_tokens(task)


def _rank_key(accuracy: float, loglik: float, fitness: str) -> tuple[float, float]:
    return (loglik, 0.0) if fitness == "loglik" else (accuracy, loglik)


def cem_search(population: Population, progress: bool = True, state_path: str | Path | None = None) -> CEMResult:
    """Run CEM; with `state_path`, the state is saved after every iteration and a run resumes from it."""
    cfg = population.config
    shape = population.shape
    K = shape[0]
    mean = torch.full(shape, 1.0 / K)
    std = torch.full(shape, cfg.init_std)
    best: dict | None = None
    history: list[dict] = []
    start = 0
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("config") != asdict(cfg) or state.get("components") != population.components:
            raise ValueError(f"{state_path} belongs to another CEM run (different settings or experts); "
                             "delete it or pass another --out")
        mean, std = torch.tensor(state["mean"]), torch.tensor(state["std"])
        best, history, start = state["best"], state["history"], state["iteration"]
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="cem", disable=not progress)
    for it in bar:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + it)
        alphas = (mean + std * torch.randn((cfg.population, *shape), generator=g)).clamp(cfg.alpha_min, cfg.alpha_max)
        if it == 0:  # every vertex of the box: one component at alpha_max, the others at alpha_min
            for v in range(min(K, cfg.population)):
                alphas[v] = cfg.alpha_min
                alphas[v, v] = cfg.alpha_max
        accuracy, loglik = population.score(alphas)
        order = sorted(range(cfg.population), reverse=True,
                       key=lambda i: _rank_key(float(accuracy[i]), float(loglik[i]), cfg.fitness))
        elite = alphas[order[: cfg.n_elite]]
        mean, std = elite.mean(0), elite.std(0, unbiased=False) if len(elite) > 1 else std * 0.5
        top = order[0]
        candidate = {"alpha": alphas[top].tolist(), "accuracy": float(accuracy[top]), "loglik": float(loglik[top])}
        if best is None or _rank_key(candidate["accuracy"], candidate["loglik"], cfg.fitness) > _rank_key(
                best["accuracy"], best["loglik"], cfg.fitness):
            best = candidate
        history.append({"iteration": it + 1, "best_accuracy": best["accuracy"], "best_loglik": best["loglik"],
                        "mean_accuracy": float(accuracy.mean()), "mean_loglik": float(loglik.mean()),
                        "std": float(std.mean()), "seconds": round(time.perf_counter() - t0, 2)})
        bar.set_postfix(acc=f"{best['accuracy']:.2f}", ll=f"{best['loglik']:.3f}")
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(state_path) as tmp:
                tmp.write_text(json.dumps({"config": asdict(cfg), "components": population.components,
                                           "mean": mean.tolist(), "std": std.tolist(), "best": best,
                                           "history": history, "iteration": it + 1}))
    return CEMResult(population.components, best["alpha"], best["accuracy"], best["loglik"], history,
                     time.perf_counter() - t0)


def adapted_expert(svf, experts: list, result: CEMResult, name: str = "", description: str = "", **created_by):
    """The CEM result as an ordinary expert (z = Σ αₖ zₖ) with α recorded in expert.json."""
    from ..experts import Expert, ExpertMeta, mix

    by_name = {e.name: e for e in experts}
    parts = list(by_name.values())
    alphas = result.alpha_dict(svf.names)
    if BASE in alphas:
        parts.append(Expert.for_model(svf, None, parts[0].parametrization, name=BASE))
    weights = [alphas[e.name] for e in parts]
    meta = ExpertMeta(name=name, description=description,
                      created_by={"method": "cem", **created_by},
                      metrics={"shots_accuracy": result.accuracy, "shots_loglik": result.loglik,
                               "seconds": round(result.seconds, 1), "history": result.history})
    return mix(parts, weights, meta)


def shots_from_test(task) -> bool:
    """An evaluation-only set (HumanEval has a test split alone): few-shot CEM adapts on part of its test split."""
    return "train" not in task.splits


def fewshot_examples(task, shots: int, seed: int = 0) -> list[dict]:
    """k examples to adapt on, never ones that are evaluated: a seeded sample of the task's train split, or, for an
    evaluation-only set (HumanEval has a test split alone), the last k examples of its test split, which
    evaluation then leaves out (`without_shots`)."""
    import random

    if shots_from_test(task):
        examples = task.examples("test")
        if shots >= len(examples):
            raise ValueError(f"task {task.name!r} has only a test split ({len(examples)} examples): --shots {shots} "
                             "would leave none to evaluate; pass fewer --shots")
        log.info("task %s has no train split: the shots are its last %d test examples, left out of evaluation",
                 task.name, shots)
        return examples[-shots:]
    examples = task.examples("train")
    if not examples:
        raise ValueError(f"task {task.name!r} has no train examples to adapt on")
    return random.Random(seed).sample(examples, min(shots, len(examples)))


def without_shots(task, examples: list[dict], shots: int) -> list[dict]:
    """`examples` of `task` less the ones few-shot CEM adapted on (only an evaluation-only set shares them)."""
    if not shots_from_test(task):
        return examples
    held = {e["prompt"] for e in fewshot_examples(task, shots)}
    return [e for e in examples if e["prompt"] not in held]


class FewShotStrategy:
    """`cem` as a pass 1: adapt once to a task from k shots, then answer every prompt with the mixture."""

    name = "cem"

    def __init__(self, experts: list, task, shots: int = 10, config: CEMConfig | None = None, progress: bool = True):
        self.experts, self.task, self.shots = experts, task, shots
        self.config, self.progress = config or CEMConfig(), progress
        self.expert = None
        self.result: CEMResult | None = None

    def adapt(self, svf):
        if self.expert is None:
            population = Population(svf, self.experts, fewshot_examples(self.task, self.shots, self.config.seed),
                                    self.task, self.config)
            self.result = cem_search(population, progress=self.progress)
            self.expert = adapted_expert(svf, self.experts, self.result, name=f"cem-{self.task.name}",
                                         task=self.task.name, shots=self.shots, cem=asdict(self.config))
        return self.expert

    def held_out(self, examples: list[dict]) -> list[dict]:
        """The examples it may be evaluated on: all but its shots."""
        return without_shots(self.task, examples, self.shots)

    def select(self, svf, prompts: list):
        from .strategy import Selection

        expert = self.adapt(svf)
        return [Selection("cem", expert) for _ in prompts]
