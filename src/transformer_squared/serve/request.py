"""One request's state between the HTTP handler and the engine's worker thread: what to generate, and the events
that come back.

The worker reports `Event`s on an asyncio queue of the handler's loop, thread-safely (loop.call_soon_threadsafe):

    start   the request left the queue; `info` says which expert / mixture / selection answers it
    delta   new `text` (stop strings and incomplete UTF-8 characters are held back until resolved)
    end     `info`: finish_reason "stop" | "length", prompt_tokens, completion_tokens
    error   `status`, `message`, `code` (the HTTP status and the OpenAI-style error body)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """One report from the worker to a request's handler (module docstring)."""

    kind: str  # start | delta | end | error
    text: str = ""  # delta
    info: dict | None = None  # start, end
    status: int = 0  # error
    message: str = ""  # error
    code: str = ""  # error


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

    def send(self, event: Event) -> None:
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
