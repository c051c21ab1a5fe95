"""Events for the metrics, without importing prometheus_client: the snapshot and the JWKS cache run in the
gunicorn master's import graph too, and prometheus_client must first be imported in a worker (see metrics.py).

Listeners are held weakly (a test builds many apps); with none, :func:`emit` costs one empty loop.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

log = logging.getLogger(__name__)
_listeners: list[weakref.WeakMethod] = []


def subscribe(method: Callable[..., None]) -> None:
    """``method(event, **fields)`` is called for every event while its object lives."""
    _listeners.append(weakref.WeakMethod(method))


def emit(event: str, **fields: Any) -> None:
    dead = False
    for ref in _listeners:
        listener = ref()
        if listener is None:
            dead = True
            continue
        try:
            listener(event, **fields)
        except Exception:  # metrics must never break what they observe
            log.exception("telemetry listener failed on %s", event)
    if dead:
        _listeners[:] = [r for r in _listeners if r() is not None]
