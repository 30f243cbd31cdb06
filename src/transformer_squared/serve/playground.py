"""The server's own pages and library views, beside the OpenAI API of app.py:

    GET /             the playground (playground.html: one static page, inline JS/CSS, nothing fetched elsewhere)
    GET /v1/experts   expert statistics (experts/stats.py) with usage counted by this server so far

and the usage counter that records which expert answered each request in the expert memory (experts/memory.py).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi.responses import HTMLResponse

from ..experts.memory import ExpertMemory, UsageCounter


@lru_cache(maxsize=1)
def page() -> str:
    return resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")


def usage_counter(library) -> UsageCounter:
    return UsageCounter(ExpertMemory(library.root), "serve")


def install(app, library, usage: UsageCounter) -> None:
    @app.get("/", include_in_schema=False)
    def playground():
        return HTMLResponse(page())

    @app.get("/v1/experts")
    def expert_stats():
        from ..experts.stats import library_stats

        usage.flush()  # what this server counted so far, so the numbers include it
        return library_stats(library)
