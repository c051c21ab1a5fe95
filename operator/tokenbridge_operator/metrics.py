"""Operator metrics (prometheus_client's default registry), served on ``TOKENBRIDGE_METRICS_PORT`` at ``/metrics``.

- ``tokenbridge_operator_reconciliations_total{kind, result}``: every reconcile of an IdentityProvider,
  ClusterIdentityProvider or OAuthApplication (change handlers and periodic re-checks alike), by what kopf made of
  it: ``success``, ``temporary_error`` (retried with backoff) or ``permanent_error`` (not until the spec changes,
  e.g. ``InvalidExpression``).
- ``tokenbridge_operator_discovery_failures_total{reason}``: failed IdP discoveries and key fetches, by condition
  reason (``DiscoveryUnavailable``, ``IssuerMismatch``, ...).
- ``tokenbridge_operator_identity_provider_keys{kind, namespace, name}``: usable keys at the last successful
  discovery of each IdP.
- ``tokenbridge_operator_signing_key_age_seconds``: how long the active token-signing key has been signing (NaN
  until the key Secret was first read); it is replaced at ``TOKENBRIDGE_SIGNING_ROTATION_PERIOD``.

The operator is one process, so plain in-memory metrics suffice (no multiprocess directory, unlike the server).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from http.server import HTTPServer
from typing import Any, TypeVar

import kopf
from prometheus_client import Counter, Gauge, start_http_server

from tokenbridge.api import KIND_APP, KIND_CLUSTER_IDP, KIND_IDP

SUCCESS = "success"
TEMPORARY_ERROR = "temporary_error"
PERMANENT_ERROR = "permanent_error"

RECONCILIATIONS = Counter(
    "tokenbridge_operator_reconciliations", "Reconciliations by resource kind and result", ["kind", "result"]
)
DISCOVERY_FAILURES = Counter(
    "tokenbridge_operator_discovery_failures",
    "Failed identity provider discoveries and key fetches by reason",
    ["reason"],
)
IDP_KEYS = Gauge(
    "tokenbridge_operator_identity_provider_keys",
    "Usable keys at the last successful discovery of an identity provider",
    ["kind", "namespace", "name"],
)
SIGNING_KEY_AGE = Gauge(
    "tokenbridge_operator_signing_key_age_seconds", "Seconds since the active token-signing key began signing"
)
SIGNING_KEY_AGE.set(math.nan)

for _kind in (KIND_IDP, KIND_CLUSTER_IDP, KIND_APP):  # every series exists from the start: rate() sees the first
    for _result in (SUCCESS, TEMPORARY_ERROR, PERMANENT_ERROR):
        RECONCILIATIONS.labels(_kind, _result)

F = TypeVar("F", bound=Callable[..., Any])


def counted(reconcile: F) -> F:
    """Count each call by how kopf takes its end: it retries every exception but PermanentError. The first
    argument is the object's body."""

    @functools.wraps(reconcile)
    def wrapper(body: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = reconcile(body, *args, **kwargs)
        except kopf.PermanentError:
            RECONCILIATIONS.labels(body["kind"], PERMANENT_ERROR).inc()
            raise
        except Exception:
            RECONCILIATIONS.labels(body["kind"], TEMPORARY_ERROR).inc()
            raise
        RECONCILIATIONS.labels(body["kind"], SUCCESS).inc()
        return result

    return wrapper  # type: ignore[return-value]


def forget_identity_provider(kind: str, namespace: str, name: str) -> None:
    with contextlib.suppress(KeyError):  # never discovered successfully
        IDP_KEYS.remove(kind, namespace, name)


def signing_key_in_use(sign_from: float) -> None:
    """Record when the active signing key began signing; the age is computed at scrape time."""
    SIGNING_KEY_AGE.set_function(lambda: time.time() - sign_from)


def serve(port: int) -> HTTPServer:
    """Start ``/metrics`` on ``port`` (all interfaces) in a daemon thread; ``shutdown()`` + ``server_close()``
    stop it."""
    server, _ = start_http_server(port)
    return server
