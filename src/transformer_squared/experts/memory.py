"""Expert memory: what each expert scored on which task, and how often it answered, kept beside the library.

    memory = ExpertMemory(library_root)
    memory.append(result_record(expert, svf, eval_result, source="eval"))
    memory.score(expert, "arc")            # Score(accuracy, ci95, n, split, date) or None
    memory.rank("arc", experts)            # [(expert, Score | None)], best first

The file is `<library>/.memory.jsonl`, one JSON object per line. A dot-file is no expert folder (the library lists
folders with an expert.json and skips dot-names), so no expert's fingerprint or z covers it.

Appending: every record is one `os.write` of one line to a file opened with O_APPEND, under an exclusive `flock`
(writers in several processes, e.g. `t2 serve` and `t2 eval`, are serialised). A crash can at worst leave a last
line cut short; readers skip lines that do not parse, and the next writer starts on a fresh line first.

Which records count for an expert: its name, the base fingerprint it was made for (`ExpertMeta.fingerprint`, the
hash of the targeted base weights) and the hash of its z (`Expert.key`) must all match. So records of another base
model never count, nor do those of an older expert that was overwritten under the same name.

Which record scores an expert on a task: the latest record on the `test` split if there is one, else the latest on
any other split (`valid` was used to pick the training checkpoint, so it is optimistic; test is preferred).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MEMORY_FILE = ".memory.jsonl"
PREFERRED_SPLIT = "test"


@dataclass(frozen=True)
class Score:
    accuracy: float
    ci95: tuple[float, float]
    n: int
    split: str
    date: str

    def __str__(self) -> str:
        return f"{self.accuracy:.1%} [{self.ci95[0]:.1%}, {self.ci95[1]:.1%}] (n={self.n}, {self.split})"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def result_record(expert, fingerprint: str, task, result, source: str) -> dict:
    """A `kind: result` record of an expert's accuracy on a task split. `fingerprint`: the base fingerprint of the
    weights it was run on (combine_fingerprints of the decomposition over the expert's matrices)."""
    return {"kind": "result", "expert": expert.name, "expert_key": expert.key, "fingerprint": fingerprint,
            "base_model": expert.meta.base_model, "task": task.name, "domain": getattr(task, "domain", ""),
            "split": result.split, "n": int(result.n), "accuracy": float(result.accuracy),
            "ci95": [float(x) for x in result.ci95], "date": now(), "source": source}


def base_fingerprint(svf, expert) -> str:
    from ..svd import combine_fingerprints

    return combine_fingerprints(svf.decomposition.fingerprints, list(expert.z))


class ExpertMemory:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / MEMORY_FILE

    # -- disk -----------------------------------------------------------------------------------------------------
    def append(self, *records: dict) -> None:
        if not records:
            return
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a writer died mid-line: start on a fresh one
            os.write(fd, data)
        finally:
            os.close(fd)  # closing releases the lock

    def records(self, kind: str | None = None) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(r, dict) and (kind is None or r.get("kind") == kind):
                out.append(r)
        return out

    # -- results --------------------------------------------------------------------------------------------------
    def results(self, expert, task: str | None = None) -> list[dict]:
        """The result records that count for this expert (same name, base fingerprint and z), oldest first."""
        fp = expert.meta.fingerprint
        return [r for r in self.records("result")
                if r.get("expert") == expert.name and fp and r.get("fingerprint") == fp
                and r.get("expert_key") == expert.key and (task is None or r.get("task") == task)]

    def score(self, expert, task: str) -> Score | None:
        found = self.results(expert, task)
        if not found:
            return None
        test = [r for r in found if r.get("split") == PREFERRED_SPLIT]
        r = (test or found)[-1]
        return Score(float(r["accuracy"]), tuple(r.get("ci95", (0.0, 0.0))), int(r.get("n", 0)), r.get("split", ""),
                     r.get("date", ""))

    def rank(self, task: str, experts: list) -> list[tuple[object, Score | None]]:
        """Experts ordered by their score on `task` (accuracy, then n); those without a record last, in input order."""
        scored = [(e, self.score(e, task)) for e in experts]
        known = sorted((x for x in scored if x[1] is not None), key=lambda x: (-x[1].accuracy, -x[1].n))
        return known + [x for x in scored if x[1] is None]

    def best_for(self, task: str, experts: list):
        """The expert with the best recorded result on `task`, or None when none of them has one."""
        ranked = self.rank(task, experts)
        return ranked[0][0] if ranked and ranked[0][1] is not None else None

    # -- usage ----------------------------------------------------------------------------------------------------
    def usage(self) -> Counter:
        """{expert name (or "base"): times it answered}, summed over every `kind: usage` record."""
        counts: Counter = Counter()
        for r in self.records("usage"):
            for name, n in (r.get("counts") or {}).items():
                if isinstance(n, int) and n > 0:
                    counts[name] += n
        return counts


class UsageCounter:
    """Counts answers per expert in memory and appends them as one `kind: usage` record per flush: at most every
    `every_s` seconds (checked on each count) and on close, so a busy server does not write a line per request."""

    def __init__(self, memory: ExpertMemory, source: str, every_s: float = 30.0):
        self.memory, self.source, self.every_s = memory, source, every_s
        self.pending: Counter = Counter()
        self.last = time.monotonic()
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            self.pending[name] += 1
        if time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self.pending, self.last = dict(self.pending), Counter(), time.monotonic()
        if pending:
            try:
                self.memory.append({"kind": "usage", "counts": pending, "source": self.source, "date": now()})
            except OSError:  # a read-only library must not break answering
                pass


def record_result(folder: str | os.PathLike, expert, fingerprint: str, task, result, source: str) -> Path:
    """Append the result of `expert` (stored in `folder`) to its library's memory, i.e. `folder`'s parent."""
    memory = ExpertMemory(Path(folder).resolve().parent)
    memory.append(result_record(expert, fingerprint, task, result, source))
    return memory.path
