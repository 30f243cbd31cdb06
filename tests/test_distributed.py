"""Data-parallel training (training/distributed.py) with 2 gloo ranks of 1 thread each, launched as torchrun
launches them (env vars) and driven through `t2 train`: SFT and RL give the update one process gives on the same
global batch, a 2-rank run resumes in 1 process, rank 1 never writes, and verbs that cannot share work refuse."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from transformer_squared.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_argv(model: Path, root: Path, name: str, *extra: str) -> list[str]:
    """A few-second run: 4 prompts per step (2 per rank), validated on 4 examples at the last step."""
    return ["train", "--model", str(model), "--task", "arithmetic", "--steps", "3", "--batch-size", "4",
            "--group-size", "2", "--valid-n", "4", "--max-new-tokens", "4", "--lr", "0.5", "--save-every", "1",
            "--out", str(root / "experts" / name), "--run-dir", str(root / "runs" / name), "--quiet", *extra]


def checkpoint(root: Path, name: str) -> dict:
    return torch.load(root / "runs" / name / "checkpoint.pt", weights_only=False)


def metrics(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def spawn(jobs: list[list[str]], result_dir: Path, world_size: int = 2) -> None:
    import torch.multiprocessing as mp

    import distributed_worker

    mp.spawn(distributed_worker.run, args=(world_size, free_port(), jobs, str(result_dir)), nprocs=world_size,
             join=True)
    violation = result_dir / "rank1-violation.txt"
    assert not violation.exists(), violation.read_text()
    assert json.loads((result_dir / "rank0.json").read_text()) == [0] * len(jobs)


def assert_same_run(root: Path, a: str, b: str, atol: float) -> None:
    za, zb = checkpoint(root, a)["policy"], checkpoint(root, b)["policy"]
    assert za.keys() == zb.keys()
    assert any(not torch.equal(t, torch.ones_like(t)) for t in za.values())  # training moved z
    for n in za:
        torch.testing.assert_close(zb[n], za[n], atol=atol, rtol=0)
    ma, mb = metrics(root, a), metrics(root, b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        for k in ("nll", "reward", "pg_loss", "valid_accuracy"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (k, ra, rb)


SFT = ("--objective", "sft")
RL = ("--task", "distributed_worker.ParityTask", "--objective", "rloo", "--temperature", "1.0")
LORA = ("--method", "lora", "--objective", "sft", "--lora-dropout", "0", "--lr", "0.01")  # dropout masks are per rank


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory):
    """One process runs SFT and RL and decomposes; then one 2-rank job runs the same (plus a 2-step SFT run to
    resume later) through `t2`. Returns the root folder."""
    import os
    import sys

    root = tmp_path_factory.mktemp("distributed")
    saved = os.environ.get("T2_CACHE"), torch.get_num_threads()
    os.environ["T2_CACHE"] = str(root / "cache")  # the children inherit it: the training SVD is computed once
    sys.path.insert(0, str(Path(__file__).parent))  # distributed_worker, importable by the spawned children too
    torch.set_num_threads(1)
    try:
        for name, extra in (("sft-1", SFT), ("rl-1", RL), ("lora-1", LORA)):
            assert main(train_argv(tiny_llama_dir, root, name, *extra)) == 0
        decompose = ["decompose", "--model", str(tiny_llama_dir), "--targets", "all-linear", "--cache-dir"]
        assert main([*decompose, str(root / "svd-1")]) == 0
        spawn([[*decompose, str(root / "svd-2")], train_argv(tiny_llama_dir, root, "sft-2", *SFT),
               train_argv(tiny_llama_dir, root, "rl-2", *RL), train_argv(tiny_llama_dir, root, "lora-2", *LORA),
               train_argv(tiny_llama_dir, root, "resume-2", *SFT, "--steps", "2")], root / "spawn")
        yield root
    finally:
        sys.path.remove(str(Path(__file__).parent))
        torch.set_num_threads(saved[1])
        if saved[0] is None:
            os.environ.pop("T2_CACHE", None)
        else:
            os.environ["T2_CACHE"] = saved[0]


def test_sft_on_two_ranks_equals_one_process(runs):
    # the same global batch → the same gradient (token mean over both ranks) → the same z, to float rounding
    # (the ranks' partial sums are added in another order)
    assert_same_run(runs, "sft-1", "sft-2", atol=1e-5)


def test_rl_on_two_ranks_draws_the_same_samples_and_takes_the_same_steps(runs):
    # samples are seeded per (seed, step, prompt, sample), not per rank: the same completions, hence the same
    # rewards each step. Tolerance: the policy gradient's tiny coordinates differ by rounding between the layouts
    # and AdamW divides each by its own magnitude, so with lr 0.5 a rounding difference grows to ~1e-5 (measured
    # max |Δz| 1.1e-5 after 3 steps).
    assert [r["reward"] for r in metrics(runs, "rl-1")] == [r["reward"] for r in metrics(runs, "rl-2")]
    assert any(not r.get("skipped") for r in metrics(runs, "rl-1"))  # some groups carried signal
    assert_same_run(runs, "rl-1", "rl-2", atol=1e-4)


def test_lora_baseline_on_two_ranks_equals_one_process(runs):
    assert_same_run(runs, "lora-1", "lora-2", atol=1e-5)
    assert (runs / "experts" / "lora-2" / "adapter_config.json").is_file()


def test_training_alone_under_torchrun_env_is_refused(monkeypatch):
    from transformer_squared.training.distributed import current

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but no process group"):
        current()


def test_two_rank_run_resumed_by_one_process_continues_as_one_process(runs):
    assert main(["train", "--resume", str(runs / "experts" / "resume-2"), "--run-dir", str(runs / "runs" / "resume-2"),
                 "--steps", "3", "--quiet"]) == 0
    assert_same_run(runs, "sft-1", "resume-2", atol=1e-5)


def test_sharded_decomposition_writes_the_single_process_file(runs):
    from safetensors import safe_open

    one, two = sorted((runs / "svd-1").glob("*.safetensors")), sorted((runs / "svd-2").glob("*.safetensors"))
    assert len(one) == 1 and [p.name for p in two] == [one[0].name]  # the same fingerprint names the file
    assert not [p for p in (runs / "svd-2").iterdir() if p.name.startswith(".")]  # no temporaries left
    with safe_open(str(one[0]), "pt") as a, safe_open(str(two[0]), "pt") as b:
        assert a.metadata() == b.metadata() and list(a.keys()) == list(b.keys()) and len(a.keys()) == 14 * 3
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_seeded_samples_do_not_depend_on_the_batch_split(tiny_llama_dir, one_thread):
    from transformer_squared.models import load_model
    from transformer_squared.training.rollout import sample

    loaded = load_model(str(tiny_llama_dir))
    prompts = ["1 + 2 =", "What is 40 + 2? Answer briefly.", "7 + 8", "hello there"]
    seeds = list(range(100, 108))  # 4 prompts × 2 samples
    whole = sample(loaded.model, loaded.tokenizer, prompts, 6, 1.0, 2, seeds=seeds)
    halves = [sample(loaded.model, loaded.tokenizer, prompts[i:i + 2], 6, 1.0, 2, seeds=seeds[2 * i:2 * i + 4])
              for i in (0, 2)]
    assert whole.completions == halves[0].completions + halves[1].completions
    other = sample(loaded.model, loaded.tokenizer, prompts, 6, 1.0, 2, seeds=list(range(200, 208)))
    assert other.completions != whole.completions  # the seeds, not the batch, decide
    with pytest.raises(ValueError, match="3 seeds for 8 rows"):
        sample(loaded.model, loaded.tokenizer, prompts, 6, 1.0, 2, seeds=[1, 2, 3])


def test_verbs_that_cannot_share_work_refuse_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", "hello"]) == 2
    err = capsys.readouterr().err
    assert "t2 generate: error: does not run under torchrun (WORLD_SIZE=2)" in err and err.count("\n") == 1


def test_batch_smaller_than_the_world_is_refused(monkeypatch):
    from transformer_squared.training import trainer
    from transformer_squared.training.config import TrainConfig
    from transformer_squared.training.distributed import World

    monkeypatch.setattr(trainer, "current_world", lambda: World(0, 4))
    with pytest.raises(ValueError, match="--batch-size 2 is smaller than the 4 processes"):
        trainer.train_expert(TrainConfig(out="never-written", batch_size=2))
    assert not Path("never-written").exists()


def test_shards_cover_the_batch_once():
    from transformer_squared.training.distributed import World

    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [list(range(n))[World(r, size).shard(n)] for r in range(size)]
            assert sum(parts, []) == list(range(n)) and max(map(len, parts)) - min(map(len, parts)) <= 1
