"""The WSGI application: resources and middleware wired to their dependencies (configuration, snapshot source,
clock, audit sink, telemetry), all passed in: nothing here is a module-level global."""

from __future__ import annotations

import time
from collections.abc import Callable

import falcon

from . import errors
from .assertions import VerifiedSignatures
from .audit import AuditMiddleware, AuditSink, LoggerAudit
from .config import ServerConfig
from .health import HealthResource, ReadyResource
from .introspection import IntrospectionResource
from .metadata import JWKSResource, MetadataResource
from .metrics import Metrics, MetricsMiddleware, MetricsResource
from .pipeline import Pipeline
from .replay import ReplayCache
from .sources import SnapshotSource
from .telemetry import Telemetry
from .token_endpoint import ExplainResource, TokenResource

TOKEN_PATH = "/oauth2/token"  # counted and audited


def create_app(
    config: ServerConfig,
    snapshot_source: SnapshotSource,
    *,
    clock: Callable[[], float] = time.time,
    audit: AuditSink | None = None,
    telemetry: Telemetry | None = None,
) -> falcon.App:
    """What the app shares with the rest of the server comes from whoever builds it (a gunicorn worker, a test).
    ``audit``: where each token request's record goes (default: the logger ``tokenbridge.audit``). ``telemetry``:
    the one the source and its JWKS cache were given, for the metrics (none: they hear no event)."""
    metrics = Metrics(snapshot_source, telemetry)
    # opened on first use: only identity providers with preventReplay ever touch it
    replay = ReplayCache(config.replay_cache_path, max_entries=config.replay_cache_max_entries, clock=clock)
    # per worker: a subject token presented again skips its signature's public-key operation (see assertions)
    pipeline = Pipeline(config, replay, VerifiedSignatures(config.verified_signatures))
    app = falcon.App(cors_enable=False)
    app.add_middleware(MetricsMiddleware(metrics, TOKEN_PATH))
    app.add_middleware(AuditMiddleware(audit or LoggerAudit(), TOKEN_PATH))
    errors.install(app)
    metadata = MetadataResource(config)
    app.add_route("/.well-known/openid-configuration", metadata)
    app.add_route("/.well-known/oauth-authorization-server", metadata)
    app.add_route("/.well-known/jwks.json", JWKSResource(snapshot_source, clock))
    app.add_route(TOKEN_PATH, TokenResource(config, snapshot_source, clock, pipeline))
    app.add_route("/oauth2/explain", ExplainResource(config, snapshot_source, clock, pipeline))
    app.add_route("/oauth2/introspect", IntrospectionResource(config, snapshot_source, clock))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(snapshot_source))
    app.add_route("/metrics", MetricsResource(metrics))
    return app
