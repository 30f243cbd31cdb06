"""The serving engine: a bounded request queue and one worker thread that owns the model.

HTTP handlers `submit` Requests (full queue → `Busy`, closing → `Closed`) and await events on an asyncio queue
that the worker feeds thread-safely (loop.call_soon_threadsafe):

    ("start", info)   the request left the queue; info says which expert / mixture / selection answers it
    ("delta", text)   new text (stop strings and incomplete UTF-8 characters are held back until resolved)
    ("end", info)     finish_reason "stop" | "length", token counts
    ("error", status, message, code)

The worker takes up to `max_batch_size` queued requests at a time (waiting `batch_window_s` for more when the batch
is not full), runs pass 1 for the `auto` ones (strategy.select on the whole group, with the model at base), plans
the batch (batching.plan_batch) and decodes it (decode.decode_batch). All model work happens on this one thread,
so nothing else ever sees the model with an expert applied. Static batching: requests that arrive while a batch
runs wait for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .batching import Costs, Planner, measure_costs
from .decode import Row, decode_batch

log = logging.getLogger("transformer_squared.serve")


class Busy(Exception):
    """The queue is full (HTTP 429)."""


class Closed(Exception):
    """The server is shutting down (HTTP 503)."""


class TextStream:
    """Generated ids → text deltas. Stop strings cut the text; text that could still turn into a stop string, and a
    trailing incomplete UTF-8 character, are held back until the next token resolves them."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text, self.sent = "", 0

    def update(self, tokens: list[int], final: bool) -> tuple[str, bool]:
        """(new text to send, whether a stop string was hit)."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        stopped = bool(cuts)
        if stopped:
            text, final = text[: min(cuts)], True
        end = len(text) if final else len(text) - self.hold
        if not final and text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        self.text = text
        delta = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta, stopped


@dataclass
class Request:
    """One completion to produce. `expert` is set for a named expert or mixture; `auto` leaves it to pass 1."""

    prompt_ids: list[int]
    max_tokens: int
    prompt: object = ""  # the user's messages (chat) or text (completion): what an auto strategy reads
    auto: bool = False
    expert: object | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: bool = False  # set by the HTTP side when the client went away
    selection: dict | None = None  # filled by pass 1 for auto requests
    text: TextStream | None = None  # filled by the engine

    def bind(self) -> Request:
        """Attach to the running event loop (call from the handler)."""
        self.loop, self.events = asyncio.get_running_loop(), asyncio.Queue()
        return self

    def send(self, *event) -> None:
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def answered_by(self) -> dict:
        info = {"expert": self.expert.name if self.expert is not None else "base"}
        alpha = getattr(getattr(self.expert, "meta", None), "alpha", None)
        if alpha:
            info["mixture"] = alpha
        if self.selection is not None:
            info["selection"] = self.selection
        return info


class Engine:
    def __init__(self, svf, registry=None, strategy=None, max_batch_size: int = 8, max_queue: int = 64,
                 batching: str = "auto", costs: Costs | None = None, batch_window_s: float = 0.01):
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
        self.served = {"requests": 0, "batches": 0, "tokens": 0, "rows_batches": 0, "merged_batches": 0,
                       "largest_batch": 0}
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
        """Refuse new requests, cancel queued ones (503), cancel or finish the running batch, stop the worker."""
        with self._cond:
            self._closing = True
            queued, self._queue = list(self._queue), deque()
            if cancel_running:
                for r in self._running:
                    r.cancelled = True
            self._cond.notify_all()
        for r in queued:
            r.send("error", 503, "the server is shutting down", "shutting_down")
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
        while (batch := self._take()) is not None:
            try:
                self._serve(batch)
            except Exception as e:  # a bug must not kill the worker: fail this batch, keep serving
                log.exception("batch failed")
                for r in batch:
                    r.send("error", 500, f"internal error: {type(e).__name__}: {e}", "internal_error")
            finally:
                self._restore_base()
                with self._cond:
                    self._running = []

    def _take(self) -> list[Request] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            deadline = time.monotonic() + self.batch_window_s
            while len(self._queue) < self.max_batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch_size:
                r = self._queue.popleft()
                if not r.cancelled:
                    batch.append(r)
            self._running = batch
            return batch

    def _restore_base(self) -> None:
        if self.svf.factored_active:
            raise RuntimeError("the model was left in factored mode")  # cannot happen: decode uses a with-block
        if self.svf.active is not None:
            log.warning("an expert was left applied; restoring the base weights")
            self.svf.remove()

    def _current_strategy(self):
        spec = self._strategy_spec
        if not callable(spec) or hasattr(spec, "select"):
            return spec
        version = self.registry.version if self.registry is not None else 0
        if self._strategy is None or version != self._strategy_version:
            self._strategy_version = version
            try:
                self._strategy, self.strategy_error = spec(), None
            except Exception as e:
                self._strategy, self.strategy_error = None, f"{type(e).__name__}: {e}"
                log.exception("auto strategy unavailable: %s", self.strategy_error)
        return self._strategy

    def _select(self, requests: list[Request]) -> list[Request]:
        """Pass 1 for `auto` requests; returns those that can go on."""
        strategy = self._current_strategy()
        if strategy is None:
            for r in requests:
                r.send("error", 400, f"model 'auto' is unavailable: {self.auto_status()}", "auto_unavailable")
            return []
        t0 = time.perf_counter()
        try:
            selections = strategy.select(self.svf, [r.prompt for r in requests])
            if len(selections) != len(requests):
                raise RuntimeError(f"strategy returned {len(selections)} selections for {len(requests)} prompts")
        except Exception as e:
            log.exception("pass 1 failed")
            for r in requests:
                r.send("error", 500, f"self-adaptation (pass 1) failed: {type(e).__name__}: {e}", "internal_error")
            return []
        finally:
            self._restore_base()
        ms = round((time.perf_counter() - t0) * 1000, 1)
        for r, s in zip(requests, selections):
            r.expert = s.expert
            r.selection = {"label": s.label, "expert": s.name, "strategy": getattr(strategy, "name", ""),
                           "pass1_ms": ms}
        return requests

    def _serve(self, batch: list[Request]) -> None:
        auto = [r for r in batch if r.auto]
        ok = set(map(id, self._select(auto))) if auto else set()
        batch = [r for r in batch if not r.auto or id(r) in ok]
        rows = []
        for r in batch:
            generator = torch.Generator().manual_seed(r.seed) if r.seed is not None else None
            r.text = TextStream(self.tokenizer, r.stop)
            rows.append(Row(r.prompt_ids, r.max_tokens, r.expert, r.temperature, r.top_p, generator, owner=r))
            r.send("start", r.answered_by())
        plan = self.planner.plan(rows, self.svf.cached)
        self.served["batches"] += 1
        self.served["largest_batch"] = max(self.served["largest_batch"], len(rows))
        for mode, group in plan:
            self.served[f"{mode}_batches"] += 1
            decode_batch(self.svf, group, mode, self.pad_id, self.eos_ids, self._on_token)
        self.served["requests"] += len(rows)

    def _on_token(self, row: Row) -> None:
        r = row.owner
        if r.cancelled:
            row.finish_reason = "cancelled"
            r.send("error", 503, "the request was cancelled: the server is shutting down", "cancelled")
            return
        delta, stopped = r.text.update(row.tokens, final=row.finish_reason is not None)
        if stopped:
            row.finish_reason = "stop"
        if delta:
            r.send("delta", delta)
        if row.finish_reason is not None:
            self.served["tokens"] += len(row.tokens)
            r.send("end", {"finish_reason": row.finish_reason, "prompt_tokens": len(row.ids),
                           "completion_tokens": len(row.tokens)})
