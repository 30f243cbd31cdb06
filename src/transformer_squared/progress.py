"""Progress bars that suit where they are shown: tqdm's redrawn bar on a terminal (or its widget in a notebook);
in a log file or a pipe, plain lines instead — the first, then at most one every LOG_INTERVAL_S seconds, and the
last — rather than a carriage-return redraw per update. Every progress bar of the package comes from here."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _terminal_tqdm

LOG_INTERVAL_S = 30.0


def _in_notebook() -> bool:
    return any(cls.__module__ == "tqdm.notebook" for cls in _auto_tqdm.__mro__)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogLines:
    """A file for tqdm that turns its redraws (`\\r` + the bar) into whole lines, throttled in time."""

    def __init__(self, stream, interval: float | None = None):
        self.stream, self.interval = stream, LOG_INTERVAL_S if interval is None else interval
        self.pending: str | None = None  # the newest bar not written yet
        self.written: str | None = None
        self.written_at = float("-inf")

    def write(self, text: str) -> None:
        parts = [p.rstrip() for p in text.replace("\r", "\n").split("\n")]
        if any(parts):
            self.pending = [p for p in parts if p][-1]
            if time.monotonic() - self.written_at >= self.interval:
                self._emit()
        elif "\n" in text:  # tqdm closes a bar that stays with a bare newline: its last state is due
            self._emit()

    def _emit(self) -> None:
        if self.pending is not None and self.pending != self.written:
            self.stream.write(self.pending + "\n")
            self.stream.flush()
            self.written, self.written_at = self.pending, time.monotonic()
        self.pending = None

    def flush(self) -> None:
        self.stream.flush()


def tqdm(*args, file=None, **kwargs):
    """`tqdm.auto.tqdm`, except that a stream which is not a terminal gets lines (see LogLines)."""
    stream = sys.stderr if file is None else file
    if kwargs.get("disable") or _in_notebook() or _isatty(stream):
        return _auto_tqdm(*args, file=file, **kwargs)
    kwargs.setdefault("maxinterval", LOG_INTERVAL_S)  # tqdm's monitor would otherwise force a redraw every 10 s
    kwargs.setdefault("mininterval", 1.0)
    return _terminal_tqdm(*args, file=LogLines(stream), **kwargs)
