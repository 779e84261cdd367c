"""The learned bounce model is fitted once per machine and kept for the relay's other processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zonerelay.bounces import learned

REPLY = "550 5.1.1 whatever"  # left to the model (see test_bounce_classify)


@pytest.fixture(autouse=True)
def few_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about where the model is kept, not how well it reads: every eighth example
    fits in about a second, where all of them take several (and each test fits at least once)."""
    examples = learned.shipped_examples()[::8]
    monkeypatch.setattr(learned, "shipped_examples", lambda: examples)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    learned.shipped_model.cache_clear()
    yield tmp_path / "zonerelay"
    learned.shipped_model.cache_clear()  # later tests get the model of the usual cache


def test_a_fitted_model_is_kept_and_the_next_process_loads_it(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = learned.shipped_model().predict(REPLY)
    (kept,) = cache.glob("bounce-model-*.pickle")
    assert kept.stat().st_mode & 0o777 == 0o600

    def refit(*args: object) -> None:
        raise AssertionError("fitted again instead of loaded")

    learned.shipped_model.cache_clear()  # as in a new worker process
    monkeypatch.setattr(learned.ReplyModel, "__init__", refit)
    assert learned.shipped_model().predict(REPLY) == first == "recipient"


def test_a_damaged_or_foreign_writable_cache_is_not_trusted(cache: Path) -> None:
    cache.mkdir(mode=0o700)
    path = cache / f"bounce-model-{learned._fingerprint()}.pickle"
    path.write_bytes(b"not a pickle")
    path.chmod(0o600)
    assert learned.shipped_model().predict(REPLY) == "recipient"  # fitted again, and kept
    assert learned._load(path) is not None
    os.chmod(path, 0o666)  # anyone could have replaced it: never unpickled
    assert learned._load(path) is None


def test_without_a_usable_cache_directory_each_process_fits_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # XDG_CACHE_HOME is a file: the cache directory cannot be made
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    learned.shipped_model.cache_clear()
    try:
        assert learned.shipped_model().predict(REPLY) == "recipient"
    finally:
        learned.shipped_model.cache_clear()
