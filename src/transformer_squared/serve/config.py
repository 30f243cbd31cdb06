"""The server's limits: one dataclass, the single source of the `t2 serve` limit flags' defaults and help (no heavy
imports)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option


@dataclass
class ServeLimits:
    max_batch_size: int = option(8, "requests decoded together")
    max_queue: int = option(64, "requests waiting beyond that; more get 429")
    max_prompt_tokens: int = option(4096, "the longest prompt accepted, in tokens (longer ones get 400)")
    max_tokens: int = option(512, "the most tokens one request may ask for (and the default for chat)")
    batch_window_s: float = option(0.05, "how long a non-full batch waits for more requests before it starts")
    shutdown_timeout_s: float = option(30.0, "in-flight requests get this long to finish on shutdown")
    max_body_bytes: int = option(4 << 20, "larger request bodies get 413 before they are read (Content-Length or "
                                          "chunked)")

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_prompt_tokens", "max_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
