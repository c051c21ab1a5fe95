"""Where the configuration comes from: the cluster (:mod:`.kubernetes`) or manifests on disk (:mod:`.manifests`).

Both keep the newest good :class:`~tokenbridge_exchange.snapshot.Snapshot` in one attribute, replaced whole, so a
request reads it with a single attribute access and never sees half an update.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

from ..snapshot import Snapshot

T = TypeVar("T")


class SnapshotSource(Protocol):
    def current(self) -> Snapshot | None:
        """The newest snapshot, or None before the first one is loaded."""

    def start(self) -> None:
        """Load and keep the snapshot up to date in the background (in the process that serves)."""

    def stop(self) -> None: ...


def cooperative(items: Iterable[T], every: int = 64) -> Iterator[T]:
    """The items, with a pause (``time.sleep(0)``) every ``every`` of them. A reload or rebuild is CPU-bound: in a
    gevent worker (one OS thread, the default) it would hold every request until done; each pause lets the
    requests waiting meanwhile run. With threads the pause releases the GIL, to the same end."""
    for count, item in enumerate(items, 1):
        if count % every == 0:
            time.sleep(0)
        yield item
