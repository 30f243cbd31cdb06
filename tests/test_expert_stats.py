"""`t2 experts stats` (experts/stats.py): cosine similarity of the experts' deltas z − z₀, norm per layer, usage
counts and records from the expert memory."""

from __future__ import annotations

import json
import math

import pytest

from conftest import noisy_z
from transformer_squared.cli import main
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.experts.memory import ExpertMemory, UsageCounter
from transformer_squared.experts.stats import library_stats


@pytest.fixture
def library(svf, tiny_model, make_svf, tmp_path) -> ExpertLibrary:
    lib = ExpertLibrary(tmp_path / "lib")
    base = svf.init_z()
    a = noisy_z(svf, 0.2, seed=1)
    lib.add(Expert.for_model(svf, a, domain="math"), "a")
    lib.add(Expert.for_model(svf, {n: base[n] + 2 * (a[n] - base[n]) for n in a}, domain="math"), "twice-a")
    lib.add(Expert.for_model(svf, {n: base[n] - (a[n] - base[n]) for n in a}, domain="code"), "minus-a")
    lib.add(Expert.for_model(svf, base), "identity")
    other = make_svf(tiny_model("llama", seed=3))
    lib.add(Expert.for_model(other, noisy_z(other, 0.2, seed=1)), "other-base")
    return lib


def test_similarity_norms_and_usage(library):
    counter = UsageCounter(ExpertMemory(library.root), "chat", every_s=3600)
    for name in ["a", "a", "base", "minus-a"]:
        counter.count(name)
    assert ExpertMemory(library.root).usage() == {}  # nothing written before a flush
    counter.flush()
    stats = library_stats(library)
    sim = stats["similarity"]
    assert sim["a"]["twice-a"] == pytest.approx(1.0, abs=1e-5)
    assert sim["a"]["minus-a"] == pytest.approx(-1.0, abs=1e-5)
    assert sim["a"]["a"] == pytest.approx(1.0, abs=1e-5) and sim["a"]["minus-a"] == sim["minus-a"]["a"]
    assert sim["a"]["identity"] is None  # Δ = 0 has no direction
    assert sim["a"]["other-base"] is None and sim["other-base"]["a"] is None  # other base weights: not comparable
    e = stats["experts"]
    assert e["twice-a"]["delta_norm"] == pytest.approx(2 * e["a"]["delta_norm"], rel=1e-5)
    assert e["identity"]["delta_norm"] == 0.0
    assert list(e["a"]["layer_norms"]) == ["0", "1"]  # the tiny model's two decoder layers
    assert math.hypot(*e["a"]["layer_norms"].values()) == pytest.approx(e["a"]["delta_norm"], rel=1e-5)
    assert (e["a"]["usage"], e["minus-a"]["usage"], e["twice-a"]["usage"]) == (2, 1, 0)
    assert stats["usage"]["base"] == 1


def test_stats_cli_text_and_json(library, capsys):
    assert main(["experts", "--library", str(library.root), "stats"]) == 0
    out = capsys.readouterr().out
    assert "cosine similarity of the deltas" in out and "recorded results" in out and "minus-a" in out
    assert main(["experts", "--library", str(library.root), "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["experts"]) == {"a", "twice-a", "minus-a", "identity", "other-base"}
    assert main(["experts", "--library", str(library.root / "nothing"), "stats"]) == 0
    assert "no experts in" in capsys.readouterr().out
