"""Task discovery: unlabeled prompts → proposed task types, and which of them no expert covers.

    report = discover(prompts, encoder, k=None, k_max=10)      # Discovery(clusters, k, silhouette, ...)
    coverage(report, library, encoder)                         # which clusters routing sends to the base
    write_discovery(report, out)                               # out/cluster-00.jsonl …, out/summary.json

Embedding: the sentence encoder of the `embedding` strategy (all-MiniLM-L6-v2 by default), unit vectors.
Clustering: k-means (scikit-learn, k-means++ init, 10 restarts, seed 0) on those vectors. Squared Euclidean
distance between unit vectors is 2 − 2·cosine, so this is cosine clustering. Number of clusters, unless given:
the k in 2..k_max (and < number of prompts) with the highest mean silhouette coefficient (cosine distance); ties go
to the smaller k.
Naming: a cluster's *typical prompts* are the members nearest its centroid (cosine); its *terms* are the words
with the highest mean TF-IDF weight over its members (English stop words removed); its name joins the top 3 terms
(or, when no word is distinctive, the first 3 words of its most typical prompt).
Coverage: each prompt goes through the embedding strategy's nearest-centroid routing over the library's experts
(same encoder, same threshold); a cluster is covered when at least half of its prompts reach an expert, and
otherwise listed as uncovered — routing falls to the base there, so it is a candidate for the next expert.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported inside the functions, so `t2 -h` does not pay for it
    import numpy as np

DEFAULT_K_MAX = 10
TYPICAL = 5  # typical prompts kept per cluster
TERMS = 8  # top terms kept per cluster
COVERED = 0.5  # share of a cluster's prompts that must reach an expert for it to count as covered
SKLEARN_EXTRA = "t2 discover needs scikit-learn: pip install 'transformer-squared[discover]'"


@dataclass
class Cluster:
    id: int
    name: str
    size: int
    terms: list[str]
    typical: list[str]
    members: list[int]  # indices into the prompts
    similarity: list[float]  # cosine of each member to the centroid
    routed: dict[str, int] = field(default_factory=dict)  # expert (or "base") -> prompts routed there
    covered: bool | None = None  # None: no library given


@dataclass
class Discovery:
    prompts: list[str]
    clusters: list[Cluster]
    k: int
    chosen_by: str  # "given" or "silhouette"
    silhouette: dict[int, float]  # k -> mean silhouette, for every k tried
    labels: list[int]

    def summary(self) -> dict:
        return {"n": len(self.prompts), "k": self.k, "chosen_by": self.chosen_by,
                "silhouette": {str(k): v for k, v in self.silhouette.items()},
                "uncovered": [c.name for c in self.clusters if c.covered is False],
                "clusters": [{k: v for k, v in asdict(c).items() if k not in ("members", "similarity")}
                             | {"file": cluster_file(c)} for c in self.clusters]}


def cluster_file(c: Cluster) -> str:
    return f"cluster-{c.id:02d}.jsonl"


def read_prompts(path: str | os.PathLike) -> list[str]:
    """A JSONL file: each line a JSON string, or an object with "prompt" (or "text", "question")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    prompts = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg}); write one JSON string or object per line") from None
        text = row if isinstance(row, str) else next((row[k] for k in ("prompt", "text", "question")
                                                      if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        if not text or not text.strip():
            raise ValueError(f"{path}:{i}: no prompt (a JSON string, or an object with \"prompt\")")
        prompts.append(text)
    return prompts


def _sklearn():
    try:
        import sklearn.cluster
        import sklearn.feature_extraction.text
        import sklearn.metrics

        return sklearn
    except ImportError:
        raise ValueError(SKLEARN_EXTRA) from None


def choose_k(vectors: np.ndarray, k_max: int = DEFAULT_K_MAX, seed: int = 0) -> tuple[int, dict[int, float], np.ndarray]:
    """(best k, {k: silhouette}, labels of the best k) over k = 2..min(k_max, n − 1)."""
    sk = _sklearn()  # scikit-learn and numpy are imported in the functions, not the module: `t2 -h` stays instant
    n = len(vectors)
    scores, labels = {}, {}
    for k in range(2, min(k_max, n - 1) + 1):
        found = sk.cluster.KMeans(k, n_init=10, random_state=seed).fit_predict(vectors)
        if len(set(found)) < 2:
            continue
        scores[k] = float(sk.metrics.silhouette_score(vectors, found, metric="cosine"))
        labels[k] = found
    if not scores:
        raise ValueError(f"cannot choose a number of clusters for {n} prompts; give more prompts or --k")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores, labels[best]


def discover(prompts: list[str], encoder, k: int | None = None, k_max: int = DEFAULT_K_MAX,
             seed: int = 0) -> Discovery:
    import numpy as np

    sk = _sklearn()
    if len(prompts) < 3:
        raise ValueError(f"discovery needs at least 3 prompts, got {len(prompts)}")
    if k is not None and not 1 <= k <= len(prompts):
        raise ValueError(f"--k must be in 1..{len(prompts)} (the number of prompts), not {k}")
    if k_max < 2:
        raise ValueError(f"--k-max must be at least 2, not {k_max}")
    vectors = encoder.encode(prompts).numpy().astype(np.float64)  # (N, dim), unit rows
    if k is None:
        k, scores, labels = choose_k(vectors, k_max, seed)
        chosen_by = "silhouette"
    else:
        labels = sk.cluster.KMeans(k, n_init=10, random_state=seed).fit_predict(vectors)
        scores, chosen_by = {}, "given"
    tfidf = sk.feature_extraction.text.TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[A-Za-z_][\w]+\b")
    try:
        weights = tfidf.fit_transform(prompts)  # (N, vocabulary), rows L2-normalised
        vocabulary = np.array(tfidf.get_feature_names_out())
    except ValueError:  # no word survives (e.g. only numbers): name clusters by their typical prompt
        weights, vocabulary = None, np.array([])
    order = sorted(set(labels.tolist()), key=lambda c: -int((labels == c).sum()))  # biggest cluster first
    clusters = []
    for new_id, c in enumerate(order):
        members = np.flatnonzero(labels == c)
        centroid = vectors[members].mean(0)
        centroid /= np.linalg.norm(centroid) or 1.0
        sims = vectors[members] @ centroid
        by_typical = members[np.argsort(-sims, kind="stable")]
        terms = []
        if weights is not None:
            mean = np.asarray(weights[members].mean(0)).ravel()
            terms = [str(vocabulary[j]) for j in np.argsort(-mean, kind="stable")[:TERMS] if mean[j] > 0]
        name = "-".join(terms[:3]) or _slug(prompts[by_typical[0]]) or f"cluster-{new_id}"
        clusters.append(Cluster(new_id, name, len(members), terms, [prompts[i] for i in by_typical[:TYPICAL]],
                                members.tolist(), sims.tolist()))
    remap = {c: i for i, c in enumerate(order)}
    return Discovery(prompts, clusters, k, chosen_by, scores, [remap[int(x)] for x in labels])


def _slug(text: str, words: int = 3) -> str:
    """A name from the first words of a text, for clusters without a distinctive term (e.g. only numbers)."""
    import re

    return "-".join(re.findall(r"[A-Za-z0-9]+", text.lower())[:words])


def coverage(report: Discovery, library, encoder, threshold: float | None = None) -> Discovery:
    """Route every prompt as the embedding strategy would; mark each cluster covered or not (in place)."""
    from .embedding import DEFAULT_THRESHOLD, EmbeddingStrategy
    from .routes import answer_experts

    routes = answer_experts(library)
    if routes:
        strategy = EmbeddingStrategy(routes, encoder, DEFAULT_THRESHOLD if threshold is None else threshold)
        names = [s.name for s in strategy.select(None, report.prompts)]
    else:
        names = ["base"] * len(report.prompts)
    for c in report.clusters:
        routed: dict[str, int] = {}
        for i in c.members:
            routed[names[i]] = routed.get(names[i], 0) + 1
        c.routed = dict(sorted(routed.items(), key=lambda x: -x[1]))
        c.covered = (c.size - routed.get("base", 0)) >= COVERED * c.size
    return report


def write_discovery(report: Discovery, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """One JSONL per cluster (its prompts, most typical first, with their similarity to the centroid) and
    summary.json, written into a temporary folder that replaces `out` only when complete."""
    from ..atomic import atomic_folder

    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; pass --overwrite or choose another folder")
    with atomic_folder(out) as tmp:
        for c in report.clusters:
            rows = sorted(zip(c.members, c.similarity), key=lambda x: -x[1])
            (tmp / cluster_file(c)).write_text("".join(
                json.dumps({"prompt": report.prompts[i], "similarity": round(s, 4)}) + "\n" for i, s in rows))
        (tmp / "summary.json").write_text(json.dumps(report.summary(), indent=2) + "\n")
    return out
