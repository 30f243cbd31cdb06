"""Progress bars: redrawn on a terminal, whole throttled lines in a file (no carriage returns)."""

from __future__ import annotations

import io

from transformer_squared import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_the_first_and_the_last_line_only():
    out = io.StringIO()
    for _ in progress.tqdm(range(500), desc="work", file=out):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines  # far under LOG_INTERVAL_S: the start and the end
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%") and "500/500" in lines[-1]


def test_a_file_gets_a_line_per_interval(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    out = io.StringIO()
    bar = progress.tqdm(total=3, desc="steps", file=out, mininterval=0)
    for _ in range(3):
        bar.update()
        bar.set_postfix(loss="0.1")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == len(set(lines))  # no line written twice
    assert [line.split("|")[0].split()[-1] for line in lines][:1] == ["0%"] and "3/3" in lines[-1]
    assert len(lines) >= 4


def test_a_terminal_gets_tqdms_redraws():
    out = Terminal()
    for _ in progress.tqdm(range(50), desc="work", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()


def test_disabled_writes_nothing():
    out = io.StringIO()
    for _ in progress.tqdm(range(5), file=out, disable=True):
        pass
    assert out.getvalue() == ""


def test_the_package_uses_only_this_helper():
    import re
    from pathlib import Path

    import transformer_squared

    root = Path(transformer_squared.__file__).parent
    for path in root.rglob("*.py"):
        if path.name != "progress.py":
            assert not re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.M), path
