"""Statistics of a library: how different the experts are, where they change the base, how often they answer, and
what they scored.

The *delta* of an expert is Δ = z − z₀, concatenated over its matrices, where z₀ is the identity of its
parametrization (`svf.init_z`: 1 for `paper`, where σ' = σ ⊙ z, so Δ ∝ σ'/σ − 1; 0.1 for `reference`, where
σ' goes through a sigmoid and a sum-preserving rescale, so Δ there is a change of z, not of σ). Working in z needs
no base model.

    similarity[a][b] = ⟨Δa, Δb⟩ / (‖Δa‖ ‖Δb‖)     cosine of the deltas; only for experts made for the same base
                                                  (fingerprint), matrices and parametrization, else None
    layer_norms[L]   = ‖Δ restricted to the matrices of decoder layer L‖₂   (layer from ".layers.<L>." in the name)

Usage counts and records come from the expert memory (experts/memory.py).
"""

from __future__ import annotations

import re

import torch

from ..svf import init_z
from .memory import ExpertMemory

LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")


def delta(expert) -> dict[str, torch.Tensor]:
    return {n: z - init_z(z.shape[0], expert.parametrization) for n, z in expert.z.items()}


def layer_norms(d: dict[str, torch.Tensor]) -> dict[str, float]:
    squares: dict[str, float] = {}
    for name, v in d.items():
        m = LAYER.search(name)
        layer = m.group(1) if m else "other"
        squares[layer] = squares.get(layer, 0.0) + float(v.pow(2).sum())
    return {k: squares[k] ** 0.5 for k in sorted(squares, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))}


def comparable(a, b) -> bool:
    return (a.meta.fingerprint == b.meta.fingerprint and set(a.z) == set(b.z)
            and a.parametrization == b.parametrization)


def cosine(da: dict[str, torch.Tensor], db: dict[str, torch.Tensor]) -> float | None:
    names = sorted(da)
    va, vb = torch.cat([da[n] for n in names]), torch.cat([db[n] for n in names])
    denom = float(va.norm() * vb.norm())
    return float(va @ vb) / denom if denom > 0 else None  # an identity expert has no direction


def library_stats(library) -> dict:
    experts = [library.get(n) for n in library.names()]
    deltas = {e.name: delta(e) for e in experts}
    memory = ExpertMemory(library.root)
    usage = memory.usage()
    out: dict = {"library": str(library.root), "delta": "z - z_identity (see experts/stats.py)", "experts": {},
                 "similarity": {}, "usage": dict(usage)}
    for e in experts:
        d = deltas[e.name]
        out["experts"][e.name] = {
            "domain": e.meta.domain, "base_model": e.meta.base_model, "parametrization": e.parametrization,
            "delta_norm": float(sum(float(v.pow(2).sum()) for v in d.values()) ** 0.5),
            "layer_norms": layer_norms(d), "usage": usage.get(e.name, 0),
            "records": [{k: r[k] for k in ("task", "split", "n", "accuracy", "ci95", "date", "source") if k in r}
                        for r in memory.results(e)]}
    for a in experts:
        out["similarity"][a.name] = {b.name: (cosine(deltas[a.name], deltas[b.name]) if comparable(a, b) else None)
                                     for b in experts}
    return out


def format_stats(stats: dict) -> str:
    names = list(stats["experts"])
    if not names:
        return f"no experts in {stats['library']}"
    lines = [f"{len(names)} experts in {stats['library']}; delta = {stats['delta']}", "",
             "cosine similarity of the deltas (- : different base, matrices or parametrization; identity: none)"]
    width = max(8, *(len(n) for n in names))
    lines.append(" " * width + " " + " ".join(f"{n[:8]:>8}" for n in names))
    for a in names:
        cells = [stats["similarity"][a][b] for b in names]
        lines.append(f"{a:{width}} " + " ".join("       -" if c is None else f"{c:8.3f}" for c in cells))
    lines += ["", f"{'expert':{width}} {'domain':12} {'|Δ|':>8} {'used':>6}  |Δ| per layer"]
    for name, e in stats["experts"].items():
        per_layer = " ".join(f"{k}:{v:.3f}" for k, v in e["layer_norms"].items())
        lines.append(f"{name:{width}} {e['domain'][:12]:12} {e['delta_norm']:8.3f} {e['usage']:>6}  {per_layer}")
    if stats["usage"].get("base"):
        lines.append(f"{'(base)':{width}} {'':12} {'':8} {stats['usage']['base']:>6}")
    lines += ["", "recorded results"]
    found = False
    for name, e in stats["experts"].items():
        for r in e["records"]:
            found = True
            lo, hi = r.get("ci95", (0, 0))
            lines.append(f"  {name:{width}} {r['task']}/{r['split']}: {r['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
                         f"(n={r['n']}, {r.get('source', '')}, {r.get('date', '')})")
    if not found:
        lines.append("  none (t2 eval --expert NAME --task T records one)")
    return "\n".join(lines)
