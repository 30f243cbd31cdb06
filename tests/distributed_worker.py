"""A process of a 2-rank gloo job for test_distributed.py, set up exactly as torchrun sets one up (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), then running `t2` command lines through the CLI's main."""

from __future__ import annotations

import json
import os
import pathlib


def forbid_writes(log: pathlib.Path) -> None:
    """Make every write path of the trainer fail loudly on this rank (it must leave writing to rank 0)."""
    from transformer_squared import svd
    from transformer_squared.training import trainer

    def refuse(what):
        def fail(*args, **kwargs):
            log.write_bytes(f"rank 1 wrote: {what}".encode()) if not log.exists() else None
            raise AssertionError(f"rank 1 wrote: {what}")
        return fail

    for name in ("atomic_file", "atomic_folder", "_save_artifact", "plot_metrics"):
        setattr(trainer, name, refuse(name))
    svd._atomic_save = refuse("svd._atomic_save")
    original_open, original_write_text = pathlib.Path.open, pathlib.Path.write_text

    def guarded_open(self, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(f"open({self}, {mode!r})")()
        return original_open(self, mode, *args, **kwargs)

    def guarded_write_text(self, *args, **kwargs):
        if self != log:
            refuse(f"write_text({self})")()
        return original_write_text(self, *args, **kwargs)

    pathlib.Path.open, pathlib.Path.write_text = guarded_open, guarded_write_text


def run(rank: int, world_size: int, port: int, jobs: list[list[str]], result_dir: str) -> None:
    pathlib.Path(result_dir).mkdir(parents=True, exist_ok=True)
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    from transformer_squared.cli import main

    if rank == 1:
        forbid_writes(pathlib.Path(result_dir) / "rank1-violation.txt")
    codes = [main(argv) for argv in jobs]
    import torch.distributed as dist

    dist.destroy_process_group()
    if rank == 0:
        (pathlib.Path(result_dir) / "rank0.json").write_text(json.dumps(codes))
    if any(codes):
        raise SystemExit(f"rank {rank}: exit codes {codes}")


def _parity_task():
    from transformer_squared.tasks import ArithmeticTask

    class ParityTask(ArithmeticTask):
        """A reward a random model can earn: even-length completions score 1."""

        name = "parity"

        def score(self, completion, example):
            return float(len(completion) % 2 == 0)

    return ParityTask


ParityTask = _parity_task()
