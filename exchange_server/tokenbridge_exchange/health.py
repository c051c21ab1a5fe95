"""Liveness (``/healthz``: the process answers) and readiness (``/readyz``: a snapshot with signing keys is loaded)."""

from __future__ import annotations

import os

import falcon

from .sources import SnapshotSource


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    def __init__(self, source: SnapshotSource):
        self._source = source

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot = self._source.current()
        if snapshot is None or not snapshot.ready:
            resp.status = 503
            resp.media = {"status": "not ready", "reason": "no configuration or no signing keys loaded yet"}
            return
        resp.media = {
            "status": "ready",
            "applications": len(snapshot.applications),
            "identityProviders": len(snapshot.providers),
            "worker": os.getpid(),
        }
