"""Prometheus metrics at ``/metrics``, and the middleware that counts every token request.

Under gunicorn every worker counts for itself; ``tokenbridge serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
directory before forking (prometheus_client reads it at import, so this module is only imported in workers) and a
scrape then adds up all workers, whichever one answers it. Gauges aggregate over the live workers: the oldest
snapshot and the oldest JWKS any worker serves (``livemin``), the highest snapshot generation (``livemax``). Ages
are computed when scraped, from those timestamps, for the identity providers the answering worker still serves.

Metric families:

- ``tokenbridge_token_request_seconds{grant_type}``
- ``tokenbridge_exchanges_total{grant_type,outcome,idp,application,error}``: outcome ``issued``, ``refused`` (4xx)
  or ``failed`` (5xx); ``application`` is ``namespace/name`` once the client authenticated, else empty
- ``tokenbridge_replay_rejections_total{idp}``
- ``tokenbridge_jwks_fetches_total{idp,result}`` (``success``, ``failure``, ``seeded`` by standalone discovery),
  ``tokenbridge_jwks_unknown_kid_refreshes_total{idp,result}`` (per request with an unknown kid: ``refreshed`` when
  it ran or joined a refresh — joiners share one fetch, see ``tokenbridge_jwks_fetches_total`` — or ``cooldown``),
  ``tokenbridge_jwks_last_success_timestamp_seconds{idp}``, ``tokenbridge_jwks_cache_age_seconds{idp}``
- ``tokenbridge_snapshot_generation``, ``tokenbridge_snapshot_timestamp_seconds``, ``tokenbridge_snapshot_age_seconds``
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from tokenbridge import api

from .audit import outcome, token_response
from .jwks_cache import RemoteKeys
from .sources import SnapshotSource
from .telemetry import Telemetry


class _Children(dict):
    """A metric's children by label values: one dict lookup per request instead of ``labels()`` validating its
    arguments under the metric's lock every time. Children are never removed from these metrics."""

    def __init__(self, labels: Callable[..., Any]):
        super().__init__()
        self._labels = labels

    def __missing__(self, key: tuple) -> Any:
        child = self[key] = self._labels(*key)
        return child


class Metrics:
    """The server's metrics in their own registry (one per app, so tests can build many apps). Snapshots and JWKS
    fetches are counted from ``telemetry``'s events (none: the gauges show only the snapshot served at start)."""

    def __init__(self, source: SnapshotSource | None = None, telemetry: Telemetry | None = None) -> None:
        self._source = source
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "tokenbridge_token_request_seconds",
            "Token endpoint latency by grant type",
            ["grant_type"],
            registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.exchanges = Counter(
            "tokenbridge_exchanges",
            "Token requests by grant type, outcome (issued, refused, "
            "failed), identity provider, application and OAuth error code",
            ["grant_type", "outcome", "idp", "application", "error"],
            registry=None,
        )
        self.replay_rejections = Counter(
            "tokenbridge_replay_rejections",
            "Tokens refused because their jti was used before, by identity provider",
            ["idp"],
            registry=None,
        )
        self.jwks_fetches = Counter(
            "tokenbridge_jwks_fetches", "JWKS fetches by identity provider and result", ["idp", "result"], registry=None
        )
        self.unknown_kid = Counter(
            "tokenbridge_jwks_unknown_kid_refreshes",
            "Tokens with a kid the cached keys lack: refreshed on the request path, or not (cooldown)",
            ["idp", "result"],
            registry=None,
        )
        self.jwks_fetched_at = Gauge(
            "tokenbridge_jwks_last_success_timestamp_seconds",
            "When the JWKS in use was fetched (oldest over the workers)",
            ["idp"],
            registry=None,
            multiprocess_mode="livemin",
        )
        self.generation = Gauge(
            "tokenbridge_snapshot_generation",
            "Configuration snapshots built by this process (highest over the workers)",
            registry=None,
            multiprocess_mode="livemax",
        )
        self.snapshot_at = Gauge(
            "tokenbridge_snapshot_timestamp_seconds",
            "When the configuration snapshot in use was built (oldest over the workers)",
            registry=None,
            multiprocess_mode="livemin",
        )
        self._own = [
            self.latency,
            self.exchanges,
            self.replay_rejections,
            self.jwks_fetches,
            self.unknown_kid,
            self.jwks_fetched_at,
            self.generation,
            self.snapshot_at,
        ]
        self._collectors: list[Any] = self._own
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._collectors = [MultiProcessCollector(None)]
        self.registry.register(self)
        current = self._snapshot()
        if current is not None:  # built (and keys maybe fetched) before the app existed
            self._on_event("snapshot", snapshot=current)
            for provider in current.providers.values():
                if isinstance(provider.keys, RemoteKeys) and provider.keys.fetched_at > 0:
                    self.jwks_fetched_at.labels(provider.label).set(provider.keys.fetched_at)
        if telemetry is not None:
            telemetry.subscribe(self._on_event)

    # --- collector ------------------------------------------------------------------------------------------
    def describe(self) -> list:
        return []  # collected at scrape only (registering must not collect the multiprocess files)

    def collect(self) -> Iterable[Metric]:
        now = time.time()
        families = [family for collector in self._collectors for family in collector.collect()]
        yield from families
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
        snapshot_at = values.get(("tokenbridge_snapshot_timestamp_seconds", ()))
        if snapshot_at:
            yield GaugeMetricFamily(
                "tokenbridge_snapshot_age_seconds",
                "Age of the oldest configuration snapshot a worker serves",
                value=max(0.0, now - snapshot_at),
            )
        ages = GaugeMetricFamily(
            "tokenbridge_jwks_cache_age_seconds",
            "Age of the oldest JWKS a worker uses, by identity provider (configured, remote keys only)",
            labels=["idp"],
        )
        snapshot = self._snapshot()
        remote = (
            {p.label for p in snapshot.providers.values() if isinstance(p.keys, RemoteKeys)}
            if snapshot is not None
            else set()
        )
        for (name, labels), value in sorted(values.items()):
            if name == "tokenbridge_jwks_last_success_timestamp_seconds" and dict(labels).get("idp") in remote:
                ages.add_metric([dict(labels)["idp"]], max(0.0, now - value))
        yield ages

    def _snapshot(self) -> Any:
        try:
            return self._source.current() if self._source is not None else None
        except Exception:  # a broken source shows in the requests; the metrics still answer
            return None

    def _on_event(self, event: str, **fields: Any) -> None:
        if event == "snapshot":
            self.generation.set(fields["snapshot"].generation)
            self.snapshot_at.set(fields["snapshot"].built_at)
        elif event == "jwks_fetch":
            self.jwks_fetches.labels(fields["idp"], fields["result"]).inc()
            if fields["fetched_at"] is not None:
                self.jwks_fetched_at.labels(fields["idp"]).set(fields["fetched_at"])
        elif event == "jwks_unknown_kid":
            self.unknown_kid.labels(fields["idp"], "refreshed" if fields["refreshed"] else "cooldown").inc()


class MetricsMiddleware:
    """Counts every token endpoint response (``path``), refusals included (they pass the error handler first)."""

    def __init__(self, metrics: Metrics, path: str):
        self._path = path
        self._latency = _Children(metrics.latency.labels)
        self._exchanges = _Children(metrics.exchanges.labels)
        self._replays = _Children(metrics.replay_rejections.labels)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if req.path != self._path or req.method != "POST":
            return
        elapsed = time.perf_counter() - req.context.started
        state, status, error, _ = token_response(req, resp)
        grant = state.grant_type if state.grant_type in api.GRANT_TYPES else "other"
        self._latency[(grant,)].observe(elapsed)
        self._exchanges[
            (grant, outcome(status), state.idp or "", state.app.label if state.app is not None else "", error or "")
        ].inc()
        if state.replayed_idp is not None:
            self._replays[(state.replayed_idp,)].inc()


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self._metrics.registry)
        resp.content_type = CONTENT_TYPE_LATEST
