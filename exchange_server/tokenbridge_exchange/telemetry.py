"""Events for the metrics, without importing prometheus_client: the snapshot and the JWKS cache run in the
gunicorn master's import graph too, and prometheus_client must first be imported in a worker (see metrics.py).

Whoever builds the server makes one :class:`Telemetry` and hands it to what emits (the source's snapshot builds,
the JWKS cache) and to the app, whose metrics listen. Made in the gunicorn master, it is forked with no listener:
each worker's metrics subscribe to their own copy.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Telemetry:
    """Listeners are held weakly (a test builds many apps); with none, :meth:`emit` costs one empty loop."""

    def __init__(self) -> None:
        self._listeners: list[weakref.WeakMethod] = []

    def subscribe(self, method: Callable[..., None]) -> None:
        """``method(event, **fields)`` is called for every event while its object lives."""
        self._listeners.append(weakref.WeakMethod(method))

    def emit(self, event: str, **fields: Any) -> None:
        dead = False
        for ref in self._listeners:
            listener = ref()
            if listener is None:
                dead = True
                continue
            try:
                listener(event, **fields)
            except Exception:  # metrics must never break what they observe
                log.exception("telemetry listener failed on %s", event)
        if dead:
            self._listeners[:] = [r for r in self._listeners if r() is not None]
