"""Expert memory (experts/memory.py): records appended by `t2 eval` and by training, which records count (same
base, same z), `t2 experts show/rank`, and routing that uses them when experts share a domain or the nearest
centroid is ambiguous."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import torch

from conftest import noisy_z
from transformer_squared.adapt.embedding import EmbeddingStrategy
from transformer_squared.adapt.routes import answer_experts
from transformer_squared.cli import main
from transformer_squared.experts import Expert, ExpertLibrary
from transformer_squared.experts.memory import MEMORY_FILE, ExpertMemory, base_fingerprint, result_record
from transformer_squared.tasks import ArithmeticTask
from transformer_squared.evaluation import EvalResult, wilson_interval


def result(task: str, accuracy: float, n: int = 20, split: str = "test") -> EvalResult:
    return EvalResult(task, split, n, accuracy, wilson_interval(accuracy * n, n))


class FakeTask:
    def __init__(self, name: str, domain: str):
        self.name, self.domain = name, domain


def expert_for(svf, seed: int, domain: str, task: str, valid: float | None = None) -> Expert:
    metrics = {"valid_accuracy": valid} if valid is not None else {}
    return Expert.for_model(svf, noisy_z(svf, 0.3, seed=seed), domain=domain, description=f"{domain} expert",
                            created_by={"method": "train", "config": {"task": task}}, metrics=metrics)


def record(lib: ExpertLibrary, name: str, svf, task: str, domain: str, accuracy: float, **kw) -> None:
    expert = lib.get(name)
    ExpertMemory(lib.root).append(result_record(expert, base_fingerprint(svf, expert), FakeTask(task, domain),
                                                result(task, accuracy, **kw), "eval"))


# -- the file ----------------------------------------------------------------------------------------------------

def _append_many(root: str, worker: int) -> None:
    memory = ExpertMemory(root)
    for i in range(50):
        memory.append({"kind": "usage", "counts": {f"w{worker}": 1}, "i": i, "pad": "x" * 500})


def test_appends_from_several_processes_all_survive(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    memory = ExpertMemory(tmp_path)
    lines = memory.path.read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["kind"] == "usage" for line in lines)
    assert memory.usage() == {f"w{w}": 50 for w in range(4)}


def test_a_line_cut_short_is_skipped_and_the_next_record_starts_fresh(tmp_path):
    memory = ExpertMemory(tmp_path)
    memory.append({"kind": "usage", "counts": {"a": 2}})
    with memory.path.open("a") as f:
        f.write('{"kind": "usage", "counts": {"a": 10')  # a writer killed mid-line
    memory.append({"kind": "usage", "counts": {"a": 3}})
    assert memory.usage() == {"a": 5}
    assert len(memory.records()) == 2


def test_the_memory_file_is_not_an_expert_and_not_in_an_expert_folder(svf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "arithmetic", "arithmetic"), "math")
    record(lib, "math", svf, "arithmetic", "arithmetic", 0.5)
    assert (lib.root / MEMORY_FILE).is_file() and lib.names() == ["math"]
    assert sorted(p.name for p in (lib.root / "math").iterdir()) == ["expert.json", "z.safetensors"]


# -- which records count -----------------------------------------------------------------------------------------

def test_records_of_another_base_or_an_overwritten_expert_never_count(svf, tiny_model, make_svf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "arithmetic", "arithmetic"), "math")
    other_svf = make_svf(tiny_model("llama", seed=5))  # other base weights
    other = expert_for(other_svf, 1, "arithmetic", "arithmetic")
    other.meta.name = "math"
    memory = ExpertMemory(lib.root)
    memory.append(result_record(other, base_fingerprint(other_svf, other), ArithmeticTask(), result("arithmetic", 0.9),
                                "eval"))
    assert memory.score(lib.get("math"), "arithmetic") is None  # same name, other base: ignored
    record(lib, "math", svf, "arithmetic", "arithmetic", 0.4)
    assert memory.score(lib.get("math"), "arithmetic").accuracy == 0.4
    lib.add(expert_for(svf, 2, "arithmetic", "arithmetic"), "math", overwrite=True)  # new z under the old name
    assert memory.score(lib.get("math"), "arithmetic") is None


def test_score_prefers_the_latest_test_record(svf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "arithmetic", "arithmetic"), "math")
    record(lib, "math", svf, "arithmetic", "arithmetic", 0.3)
    record(lib, "math", svf, "arithmetic", "arithmetic", 0.9, split="valid")
    record(lib, "math", svf, "arithmetic", "arithmetic", 0.5, n=40)
    score = ExpertMemory(lib.root).score(lib.get("math"), "arithmetic")
    assert (score.accuracy, score.n, score.split) == (0.5, 40, "test")


# -- routing -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recorded_better", ["a-math", "b-math"])
def test_routing_picks_the_better_recorded_expert_when_two_share_a_domain(svf, tmp_path, recorded_better):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "arithmetic", "arithmetic", valid=0.9), "a-math")  # a-math wins on expert.json
    lib.add(expert_for(svf, 2, "arithmetic", "arithmetic", valid=0.1), "b-math")
    assert answer_experts(lib)["arithmetic"].name == "a-math"  # no records: validation accuracy decides
    worse = "b-math" if recorded_better == "a-math" else "a-math"
    record(lib, recorded_better, svf, "arithmetic", "arithmetic", 0.6)
    record(lib, worse, svf, "arithmetic", "arithmetic", 0.2)
    record(lib, worse, svf, "antonyms", "language", 1.0)  # another domain's task does not decide arithmetic
    assert answer_experts(lib)["arithmetic"].name == recorded_better


def test_routing_ignores_other_base_records_when_experts_share_a_domain(svf, tiny_model, make_svf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "arithmetic", "arithmetic", valid=0.9), "a-math")
    lib.add(expert_for(svf, 2, "arithmetic", "arithmetic", valid=0.1), "b-math")
    other_svf = make_svf(tiny_model("llama", seed=5))
    ghost = expert_for(other_svf, 2, "arithmetic", "arithmetic")
    ghost.meta.name = "b-math"
    ExpertMemory(lib.root).append(result_record(ghost, base_fingerprint(other_svf, ghost), ArithmeticTask(),
                                                result("arithmetic", 1.0), "eval"))
    assert answer_experts(lib)["arithmetic"].name == "a-math"


class AxisEncoder:
    """Fixed 2-d unit vectors: 'A…' prompts on the x axis, 'B…' on y, 'M…' halfway (ambiguous)."""

    def encode(self, texts):
        table = {"A": (1.0, 0.0), "B": (0.0, 1.0), "M": (0.72, 0.69)}
        return torch.nn.functional.normalize(torch.tensor([table[t[0].upper()] for t in texts]), dim=-1)


def test_an_ambiguous_nearest_centroid_goes_to_the_better_recorded_expert(svf, tmp_path):
    lib = ExpertLibrary(tmp_path / "lib")
    lib.add(expert_for(svf, 1, "alpha", "alpha-task"), "ea")
    lib.add(expert_for(svf, 2, "beta", "beta-task"), "eb")
    routes = answer_experts(lib)
    memory = ExpertMemory(lib.root)
    strategy = EmbeddingStrategy(routes, AxisEncoder(), threshold=0.0, memory=memory)
    strategy.centroids = torch.eye(2)  # alpha = x, beta = y (their training prompts are unknown here)
    prompts = ["A clear alpha", "B clear beta", "M in between"]
    assert [s.name for s in strategy.select(None, prompts)] == ["ea", "eb", "ea"]  # no records: nearest wins
    record(lib, "eb", svf, "alpha-task", "alpha", 0.8)  # eb is better on the nearest task (alpha's)
    record(lib, "ea", svf, "alpha-task", "alpha", 0.3)
    chosen = strategy.select(None, prompts)
    assert [(s.label, s.name) for s in chosen] == [("alpha", "ea"), ("beta", "eb"), ("alpha", "eb")]
    assert EmbeddingStrategy(routes, AxisEncoder(), 0.0).memory is None  # without a memory: plain nearest centroid


# -- records written by t2 eval and by training, read by t2 experts show / rank ----------------------------------

def test_eval_and_training_append_records_that_show_and_rank_list(tiny_folder, one_thread, tmp_path, monkeypatch,
                                                                  capsys):
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.trainer import train_expert

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "cache"))
    lib = tmp_path / "lib"
    cfg = TrainConfig(model=str(tiny_folder), task="arithmetic", out=str(lib / "trained"), run_dir=str(tmp_path / "run"),
                      steps=2, batch_size=2, group_size=2, valid_n=4, max_new_tokens=4, lr=0.5)
    train_expert(cfg, progress=False)
    memory = ExpertMemory(lib)
    [trained] = memory.records("result")
    expert = Expert.load(lib / "trained")
    assert (trained["source"], trained["split"], trained["n"], trained["task"]) == ("train", "valid", 4, "arithmetic")
    assert trained["accuracy"] == expert.meta.metrics["valid_accuracy"]
    assert trained["fingerprint"] == expert.meta.fingerprint and trained["expert_key"] == expert.key
    train_expert(cfg, resume=True, progress=False)  # nothing left to do: the same best is not recorded twice
    assert len(memory.records("result")) == 1

    assert main(["experts", "--library", str(lib), "init", "--model", str(tiny_folder), "--name", "other",
                 "--noise", "0.3", "--domain", "arithmetic"]) == 0
    for name in ("trained", "other"):
        assert main(["eval", "--model", str(tiny_folder), "--library", str(lib), "--expert", name,
                     "--task", "arithmetic", "--n", "3", "--max-new-tokens", "4"]) == 0
    assert f"recorded in {lib.resolve() / MEMORY_FILE}" in capsys.readouterr().out
    evals = [r for r in memory.records("result") if r["source"] == "eval"]
    assert [(r["expert"], r["split"], r["n"]) for r in evals] == [("trained", "test", 3), ("other", "test", 3)]
    assert all(0 <= r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] <= 1 and r["date"].endswith("Z") for r in evals)

    assert main(["experts", "--library", str(lib), "show", "trained"]) == 0
    out = capsys.readouterr().out
    assert "records (2):" in out and "arithmetic/valid" in out and "arithmetic/test" in out
    assert main(["experts", "--library", str(lib), "rank", "--task", "arithmetic"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    ranked = [line.split()[1] for line in lines[1:]]
    assert sorted(ranked) == ["other", "trained"]
    accuracy = {r["expert"]: r["accuracy"] for r in evals}
    assert accuracy[ranked[0]] >= accuracy[ranked[1]]
    assert main(["experts", "--library", str(lib), "rank", "--task", "nope"]) == 0
    assert "no recorded results" in capsys.readouterr().out
