"""One cache root for every caller: $T2_CACHE when set and not empty, else ~/.cache/transformer_squared."""

from __future__ import annotations

from pathlib import Path

import pytest

from transformer_squared.cli.demo import default_workdir
from transformer_squared.models import converted_cache_dir
from transformer_squared.paths import cache_root
from transformer_squared.svd import default_cache_dir


@pytest.mark.parametrize("value", [None, ""])
def test_unset_and_empty_mean_the_home_cache(value, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("T2_CACHE", raising=False)
    else:
        monkeypatch.setenv("T2_CACHE", value)
    home = tmp_path / ".cache" / "transformer_squared"
    assert cache_root() == home
    assert (converted_cache_dir(), default_cache_dir(), default_workdir()) == (home / "models", home / "svd",
                                                                               home / "demo")


def test_set_means_that_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("T2_CACHE", str(tmp_path / "c"))
    assert (cache_root(), converted_cache_dir(), default_cache_dir(), default_workdir()) == (
        Path(tmp_path / "c"), tmp_path / "c" / "models", tmp_path / "c" / "svd", tmp_path / "c" / "demo")
