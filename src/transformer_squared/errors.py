"""The project's own exceptions. Library code raises them with a message that names the problem and the fix; only
the CLI turns them into one line (`t2 VERB: error: ...`) and exit status 2."""

from __future__ import annotations


class T2Error(Exception):
    """Anything a user can fix: bad input, a missing file, an optional package that is not installed."""


class ModelError(T2Error):
    """A model that cannot be found or loaded from what `--model` names."""


class MissingDependency(T2Error):
    """An optional package a feature needs is not installed; the message says what to `pip install`."""
