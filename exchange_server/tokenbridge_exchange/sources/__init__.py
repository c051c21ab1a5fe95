"""Where the configuration comes from: the cluster (:mod:`.kubernetes`) or manifests on disk (:mod:`.manifests`).

Both keep the newest good :class:`~tokenbridge_exchange.snapshot.Snapshot` in one attribute, replaced whole, so a
request reads it with a single attribute access and never sees half an update.
"""
from __future__ import annotations

from typing import Protocol

from ..snapshot import Snapshot


class SnapshotSource(Protocol):
    def current(self) -> Snapshot | None:
        """The newest snapshot, or None before the first one is loaded."""

    def start(self) -> None:
        """Load and keep the snapshot up to date in the background (in the process that serves)."""

    def stop(self) -> None: ...
