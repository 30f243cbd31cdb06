"""Data parallelism over torch.distributed: `torchrun --nproc-per-node N -m transformer_squared train ...`.

Every rank holds the whole model and the same trainable state; a step's global batch is drawn identically on every
rank (from (seed, step)), and each rank takes a contiguous share of its prompts — all samples of a prompt stay on
one rank, so RLOO's leave-one-out baseline sees its whole group. Each rank's loss is its share of the *global*
mean (rows for the policy-gradient objectives, completion tokens for SFT), so after the gradients are summed over
ranks (one all-reduce of a flat buffer: z is tiny) every rank holds exactly the gradient one process computes on
the whole batch, clips it the same way and takes the same optimizer step. No DDP wrapper is needed for that.

Samples are seeded per (seed, step, prompt index, sample index), never by rank (see rollout.sample), so a run's
samples do not depend on how the batch is split — except where a differently shaped batch rounds a logit
differently and flips a sampled token (bench/bench_scale.py measures how often).

Validation examples are split over ranks the same way and the per-example records gathered in order. Rank 0
alone writes metrics, checkpoints, the plot and the expert; checkpoints hold nothing rank-specific, so a run
resumes with the same or another number of processes.

Backend: NCCL when CUDA is available, gloo otherwise. Multi-node runs (``torchrun --nnodes``) need ``--run-dir``
and ``--out`` on a filesystem every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# verbs that know how to share work over ranks; every other verb refuses to start under torchrun
DISTRIBUTED_VERBS = ("train", "decompose")


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env() -> "World":
    """Join the process group torchrun describes (no-op in a single process); returns this process's World."""
    import torch.distributed as dist

    if launched_world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current()


def current() -> "World":
    """This process's World; refuses to run alone when torchrun started several copies (they would race)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    if launched_world_size() > 1:
        raise RuntimeError(f"WORLD_SIZE={launched_world_size()} but no process group: call "
                           "transformer_squared.training.distributed.init_from_env() first (t2 does)")
    return World()


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def _device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks of a list of numbers (float64, so counts stay exact)."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, in one all-reduce of a flat buffer."""
        if self.size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self._device())
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.device, p.dtype)
            offset += n

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def evaluate_sharded(world: World, model, tokenizer, task, examples: list[dict], **kwargs):
    """evaluation.evaluate over `examples`, split over ranks; the gathered EvalResult on every rank."""
    from ..evaluation import EvalResult, evaluate, wilson_interval

    local = evaluate(model, tokenizer, task, examples=examples[world.shard(len(examples))], **kwargs)
    if world.size == 1:
        return local
    records = [r for part in world.gather(local.records) for r in part]
    correct = sum(r["score"] for r in records)
    answers = {}
    if examples and "choices" in examples[0]:
        for r in records:
            key = r["extracted"] or "none"
            answers[key] = answers.get(key, 0.0) + 1 / len(records)
    return EvalResult(task.name, local.split, len(records), correct / max(len(records), 1),
                      wilson_interval(correct, len(records)), answers, records)
