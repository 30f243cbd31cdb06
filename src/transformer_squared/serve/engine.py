"""The serving engine: a bounded request queue and one worker thread that owns the model.

HTTP handlers `submit` Requests (full queue → `Busy`, closing → `Closed`) and await the events the worker sends
back (see request.py). All model work happens on the worker thread, so nothing else ever sees the model with an
expert applied.

The worker loop (continuous batching):
1. take queued requests, up to `max_batch_size` rows in flight (when idle, wait `batch_window_s` for more so that
   requests arriving together start together);
2. pass 1 for the `auto` ones: strategy.select on all of them at once, with the model at base (a running batch
   leaves factored mode for it);
3. admit them: they join the running batch (prefilled per expert with its own weights), unless the planner finds that
   decoding them one expert group after another is cheaper (batching.Planner.by_groups), in which case they wait
   for the running batch to end and run as static groups;
4. one decode step for every row, `merged` or `rows` as the planner says; finished rows leave at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import torch

from .batching import Costs, Planner, measure_costs
from .decode import Batch, Row, decode_batch
from .request import Event, Request, TextStream

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue is full (HTTP 429)."""


class Closed(Exception):
    """The server is shutting down (HTTP 503)."""


class Engine:
    def __init__(self, svf, registry=None, strategy=None, max_batch_size: int = 8, max_queue: int = 64,
                 batching: str = "auto", costs: Costs | None = None, batch_window_s: float = 0.05):
        """`strategy`: a Strategy, a zero-argument builder rebuilt whenever the registry's experts change, or None
        (then `auto` is refused). `costs=None` with batching="auto" measures them at start-up."""
        self.svf, self.registry = svf, registry
        self.tokenizer = svf.tokenizer  # used on the worker thread only (HF fast tokenizers dislike sharing)
        self.pad_id = self.tokenizer.pad_token_id
        eos = svf.model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.max_batch_size, self.max_queue, self.batch_window_s = max_batch_size, max_queue, batch_window_s
        self.batching, self.costs = batching, costs
        self.planner = Planner(costs, batching)
        self._strategy_spec, self._strategy, self._strategy_version = strategy, None, None
        self.strategy_error: str | None = None
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._running: list[Request] = []
        self.ready = threading.Event()
        self.served = {"requests": 0, "tokens": 0, "rows_steps": 0, "merged_steps": 0, "grouped_batches": 0,
                       "largest_batch": 0, "joined": 0, "prefill_s": 0.0, "decode_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="t2-serve-engine", daemon=True)

    # -- HTTP side ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Busy(f"server busy: {len(self._queue)} requests queued (limit {self.max_queue}); retry later")
            self._queue.append(request)
            self._cond.notify()

    def close(self, cancel_running: bool = True, timeout: float | None = 30.0) -> None:
        """Refuse new requests, cancel queued ones (503), cancel or finish the running ones, stop the worker."""
        with self._cond:
            self._closing = True
            queued, self._queue = list(self._queue), deque()
            if cancel_running:
                for r in self._running:
                    r.cancelled = True
            self._cond.notify_all()
        for r in queued:
            r.send(Event("error", status=503, code="shutting_down",
                         message="the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def status(self) -> dict:
        with self._cond:
            queued, running = len(self._queue), len(self._running)
        return {"ready": self.ready.is_set(), "closing": self._closing, "queued": queued, "running": running,
                "batching": self.batching, "costs": self.costs.as_dict() if self.costs else None,
                "auto": self.auto_status(), "served": dict(self.served)}

    def auto_status(self) -> str | None:
        """None when `auto` can be served, else why not."""
        if self._strategy_spec is None:
            return "the server was started without a self-adaptation strategy"
        return self.strategy_error

    # -- worker side ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.costs is None and self.batching == "auto":
                self.costs = self.planner.costs = measure_costs(self.svf, self.max_batch_size, self.pad_id)
                log.info("batching costs measured: %s", self.costs.as_dict())
            if self._strategy_spec is not None:
                self._current_strategy()  # build it now rather than on the first auto request
        except Exception as e:  # serve what we can: named experts still work
            log.exception("start-up warm-up failed")
            self.strategy_error = self.strategy_error or f"start-up failed: {e}"
        finally:
            self.ready.set()
        batch: Batch | None = None
        held: list[Row] = []  # admitted rows waiting for the running batch to end (grouping was cheaper)
        while True:
            if batch is not None and not batch.rows:
                batch.release()
                batch = None
            if self._closing and batch is None and not held:
                return
            running = batch.rows if batch is not None else []
            new: list[Row] = []
            try:
                requests = self._take(wait=batch is None and not held,
                                      limit=self.max_batch_size - len(running) - len(held))
                new = held + self._prepare(requests, batch)
                held = []
                batch = self._admit(batch, new, held)
                if batch is not None and batch.rows:
                    mode = self.planner.mode(batch.rows, self.svf.cached)
                    self.served[f"{mode}_steps"] += 1
                    self.served["largest_batch"] = max(self.served["largest_batch"], len(batch.rows))
                    t0 = time.perf_counter()
                    batch.step(mode)
                    self.served["decode_s"] += time.perf_counter() - t0
            except Exception as e:  # a bug must not kill the worker: fail the rows involved, keep serving
                log.exception("decoding failed")
                for row in {id(r): r for r in [*running, *new, *held]}.values():
                    if row.finish_reason is None:
                        row.owner.send(Event("error", status=500, code="internal_error",
                                             message=f"internal error: {type(e).__name__}: {e}"))
                if batch is not None:
                    batch.release()
                batch, held = None, []
            finally:
                self._restore_base(batch)
                with self._cond:
                    self._running = [r.owner for r in [*(batch.rows if batch else []), *held]]

    def _take(self, wait: bool, limit: int) -> list[Request]:
        """Up to `limit` queued requests; when `wait`, block for the first and give others the batch window."""
        with self._cond:
            if wait:
                while not self._queue and not self._closing:
                    self._cond.wait()
                deadline = time.monotonic() + self.batch_window_s
                while len(self._queue) < limit and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            taken = []
            while self._queue and len(taken) < limit:
                r = self._queue.popleft()
                if not r.cancelled:
                    taken.append(r)
            self._running += taken
            return taken

    def _prepare(self, requests: list[Request], batch: Batch | None) -> list[Row]:
        """Pass 1 for auto requests, then one Row per request that can go on; each gets its "start" event."""
        auto = [r for r in requests if r.auto]
        if auto:
            if batch is not None:
                batch.release()  # strategies see the plain base model
            ok = set(map(id, self._select(auto)))
            requests = [r for r in requests if not r.auto or id(r) in ok]
        rows = []
        for r in requests:
            generator = torch.Generator().manual_seed(r.seed) if r.seed is not None else None
            r.text = TextStream(self.tokenizer, r.stop)
            rows.append(Row(r.prompt_ids, r.max_tokens, r.expert, r.temperature, r.top_p, generator, owner=r))
            r.send(Event("start", info=r.answered_by()))
        return rows

    def _admit(self, batch: Batch | None, rows: list[Row], held: list[Row]) -> Batch | None:
        """Start or join the running batch with `rows`, run them as static groups, or hold them (into `held`)."""
        rows = [r for r in rows if not self._cancel_if_asked(r)]
        if not rows:
            return batch
        running = batch.rows if batch is not None else []
        if self.planner.by_groups(running + rows, self.svf.cached) or (batch is not None and not batch.can_join):
            if batch is None:
                self._run_groups(rows)
            else:
                held += rows
            return batch
        if batch is not None and batch.rows:
            self.served["joined"] += len(rows)  # rows that joined a batch already decoding
        batch = batch if batch is not None else Batch(self.svf, self.pad_id, self.eos_ids, self._on_token)
        t0 = time.perf_counter()
        for group in self.planner.groups(rows):  # prefill is compute-bound: per expert, merged when cached, is cheaper
            batch.add(group, self.planner.mode(group, self.svf.cached))
        self.served["prefill_s"] += time.perf_counter() - t0
        return batch

    def _run_groups(self, rows: list[Row]) -> None:
        """Static batches, one per expert, one after another (merged weights)."""
        for group in self.planner.groups(rows):
            self.served["grouped_batches"] += 1
            self.served["largest_batch"] = max(self.served["largest_batch"], len(group))
            stats = decode_batch(self.svf, group, "merged", self.pad_id, self.eos_ids, self._on_token)
            self.served["merged_steps"] += stats.steps
            self.served["prefill_s"] += stats.prefill_s
            self.served["decode_s"] += stats.step_s

    def _cancel_if_asked(self, row: Row) -> bool:
        if row.owner.cancelled:
            row.finish_reason = "cancelled"
            row.owner.send(Event("error", status=503, code="cancelled",
                                 message="the request was cancelled (server shutting down)"))
        return row.owner.cancelled

    def _restore_base(self, batch: Batch | None) -> None:
        """Between steps the model is in the running batch's factored mode or at base, never merged."""
        if self.svf.active is not None:
            log.warning("an expert was left applied; restoring the base weights")
            self.svf.remove()
        if batch is None and self.svf.factored_active:  # cannot happen: Batch.release restores it
            log.error("the model was left in factored mode with no batch running")

    def _current_strategy(self):
        spec = self._strategy_spec
        if not callable(spec) or hasattr(spec, "select"):
            return spec
        version = self.registry.version if self.registry is not None else 0
        if self._strategy is None or version != self._strategy_version:
            self._strategy_version = version
            try:
                self._strategy, self.strategy_error = spec(), None
            except (ValueError, RuntimeError, ImportError, OSError, KeyError) as e:  # e.g. no routable expert yet
                self._strategy, self.strategy_error = None, f"{type(e).__name__}: {e}"
                log.warning("model 'auto' is unavailable: %s", self.strategy_error)
        return self._strategy

    def _select(self, requests: list[Request]) -> list[Request]:
        """Pass 1 for `auto` requests; returns those that can go on."""
        strategy = self._current_strategy()
        if strategy is None:
            for r in requests:
                r.send(Event("error", status=400, code="auto_unavailable",
                             message=f"model 'auto' is unavailable: {self.auto_status()}"))
            return []
        t0 = time.perf_counter()
        try:
            selections = strategy.select(self.svf, [r.prompt for r in requests])
            if len(selections) != len(requests):
                raise RuntimeError(f"strategy returned {len(selections)} selections for {len(requests)} prompts")
        except Exception as e:
            log.exception("pass 1 failed")
            for r in requests:
                r.send(Event("error", status=500, code="internal_error",
                             message=f"self-adaptation (pass 1) failed: {type(e).__name__}: {e}"))
            return []
        finally:
            self._restore_base(None)
        ms = round((time.perf_counter() - t0) * 1000, 1)
        for r, s in zip(requests, selections):
            r.expert = s.expert
            r.selection = {"label": s.label, "expert": s.name, "strategy": getattr(strategy, "name", ""),
                           "pass1_ms": ms}
        return requests

    def _on_token(self, row: Row) -> None:
        r = row.owner
        if self._cancel_if_asked(row):
            return
        delta, stopped = r.text.update(row.tokens, final=row.finish_reason is not None)
        if stopped:
            row.finish_reason = "stop"
        if delta:
            r.send(Event("delta", text=delta))
        if row.finish_reason is not None:
            self.served["requests"] += 1
            self.served["tokens"] += len(row.tokens)
            r.send(Event("end", info={"finish_reason": row.finish_reason, "prompt_tokens": len(row.ids),
                                      "completion_tokens": len(row.tokens)}))
