"""Waiting for what a real cluster does eventually: one polling helper for every test that waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    diagnose: Callable[[], str] = lambda: "",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; after ``timeout`` seconds fail naming
    ``what``, the last value seen and whatever ``diagnose()`` adds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not seen within {timeout}s; last seen: {value!r}\n{diagnose()}".rstrip())
        time.sleep(interval)


def seconds_until(predicate: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.1) -> float:
    """How long ``predicate`` took to hold (a recovery or propagation time); fails as :func:`wait_for` does."""
    start = time.monotonic()
    wait_for(predicate, timeout, what, interval=interval)
    return time.monotonic() - start
