"""Prometheus metrics at ``/metrics``: token endpoint requests by grant and outcome, and their latency.

Under gunicorn every worker counts for itself; ``tokenbridge serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
directory before forking (prometheus_client reads it at import, so this module is only imported in workers) and a
scrape then adds up all workers, whichever one answers it.
"""
from __future__ import annotations

import os
import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tokenbridge import api

TOKEN_PATH = "/oauth2/token"


class Metrics:
    """The server's metrics in their own registry (one per app, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tokenbridge_token_requests", "Token endpoint requests by grant type and outcome "
                                "(issued, or the OAuth error code)", ["grant_type", "outcome"], registry=None)
        self.latency = Histogram("tokenbridge_token_request_seconds", "Token endpoint latency by grant type",
                                 ["grant_type"], registry=None,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(self.registry)
        else:
            self.registry.register(self.requests)
            self.registry.register(self.latency)


class MetricsMiddleware:
    """Counts every token endpoint response, refusals included (they pass through the error handler first)."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        if req.path != TOKEN_PATH or req.method != "POST":
            return
        grant = req.context.get("grant_type")
        grant = grant if grant in api.GRANT_TYPES else "other"
        outcome = "issued" if resp.status_code == 200 else (resp.media or {}).get("error", "server_error")
        self._metrics.requests.labels(grant, outcome).inc()
        self._metrics.latency.labels(grant).observe(time.perf_counter() - req.context.started)


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self._metrics.registry)
        resp.content_type = CONTENT_TYPE_LATEST
