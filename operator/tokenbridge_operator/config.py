"""Operator configuration: every ``TOKENBRIDGE_*`` environment variable, read once at startup into one object.

=========================================  ==========================  ==============================================
Variable                                   Default                     Meaning
=========================================  ==========================  ==============================================
``TOKENBRIDGE_PUBLIC_ISSUER``              (unset)                     Public URL of the exchange server; Secrets get
                                                                       ``token_endpoint`` = it + ``/oauth2/token``
``TOKENBRIDGE_ALLOWED_NETWORKS``           (empty)                     CIDRs outbound fetches may reach although
                                                                       private/loopback (see ``tokenbridge.fetch``)
``TOKENBRIDGE_ALLOW_INSECURE_HTTP``        ``false``                   Lets IdPs with ``allowInsecureHTTP`` use http
``TOKENBRIDGE_IDP_REFRESH_INTERVAL``       ``5m``                      Re-discovery of every identity provider
``TOKENBRIDGE_APP_RECHECK_INTERVAL``       ``1m``                      Re-validation of application references
``TOKENBRIDGE_RETRY_BACKOFF``              ``5s``                      First retry delay after a temporary failure;
                                                                       doubles per retry up to the refresh interval
``TOKENBRIDGE_SECRET_ROTATION_GRACE``      ``24h``                     How long a rotated client secret stays valid
``TOKENBRIDGE_SIGNING_SECRET_NAMESPACE``   ``tokenbridge``             The token-signing key Secret (shared with the
``TOKENBRIDGE_SIGNING_SECRET_NAME``        ``tokenbridge-signing-keys``  exchange server)
``TOKENBRIDGE_SIGNING_ALGORITHM``          ``ES256``                   ``ES256``, ``RS256`` or ``EdDSA``
``TOKENBRIDGE_SIGNING_ROTATION_PERIOD``    ``720h``                    Age at which the signing key is replaced
``TOKENBRIDGE_SIGNING_PUBLISH_LEAD``       ``1h``                      A new key is published this long before use
``TOKENBRIDGE_MAX_TOKEN_LIFETIME``         ``24h``                     Longest lifetime of an issued token; a retired
                                                                       key stays published this long
``TOKENBRIDGE_SIGNING_CHECK_INTERVAL``     ``1m``                      How often the signing keys are checked
``TOKENBRIDGE_WATCH_TIMEOUT``              ``5m``                      Server-side timeout of each watch request
``TOKENBRIDGE_REQUEST_TIMEOUT``            ``30s``                     Timeout of other Kubernetes API requests
``TOKENBRIDGE_PEERING``                    (unset: standalone)         kopf peering name for several replicas (needs
                                                                       kopf's peering CRDs); unset = one replica
``TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS``  ``true``                    ``false``: do not watch ClusterIdentityProviders
                                                                       (namespace-scoped install without their RBAC)
``TOKENBRIDGE_METRICS_PORT``               ``9090``                    Port of the Prometheus ``/metrics`` endpoint
                                                                       (all interfaces); ``0`` disables it
=========================================  ==========================  ==============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenbridge.durations import parse_duration
from tokenbridge.fetch import FetchPolicy
from tokenbridge.signing import SIGNING_ALGORITHMS

TOKEN_ENDPOINT_PATH = "/oauth2/token"


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, not {environ[name]!r}")
    return value == "true"


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) > 65535:
        raise ValueError(f"{name} must be a port number (0 disables), not {environ[name]!r}")
    return int(value)


@dataclass(frozen=True)
class OperatorConfig:
    public_issuer: str | None = None
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    idp_refresh_interval: float = 300.0
    app_recheck_interval: float = 60.0
    retry_backoff: float = 5.0
    secret_rotation_grace: float = 86400.0
    signing_secret_namespace: str = "tokenbridge"
    signing_secret_name: str = "tokenbridge-signing-keys"
    signing_algorithm: str = "ES256"
    signing_rotation_period: float = 720 * 3600.0
    signing_publish_lead: float = 3600.0
    max_token_lifetime: float = 86400.0
    signing_check_interval: float = 60.0
    watch_timeout: float = 300.0
    request_timeout: float = 30.0
    peering: str | None = None
    cluster_identity_providers: bool = True
    metrics_port: int = 9090

    @property
    def token_endpoint(self) -> str | None:
        return self.public_issuer + TOKEN_ENDPOINT_PATH if self.public_issuer else None

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based) of a temporary failure."""
        return min(self.retry_backoff * 2 ** min(retry, 20), max(self.idp_refresh_interval, self.retry_backoff))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorConfig:
        """ValueError naming the variable when one is malformed."""

        def duration(name: str, default: float) -> float:
            if name not in environ:
                return default
            try:
                return parse_duration(environ[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc

        defaults = cls()
        issuer = environ.get("TOKENBRIDGE_PUBLIC_ISSUER") or None
        if issuer is not None and not issuer.startswith(("https://", "http://")):
            raise ValueError(f"TOKENBRIDGE_PUBLIC_ISSUER must be an http(s) URL, not {issuer!r}")
        algorithm = environ.get("TOKENBRIDGE_SIGNING_ALGORITHM", defaults.signing_algorithm)
        if algorithm not in SIGNING_ALGORITHMS:
            raise ValueError(f"TOKENBRIDGE_SIGNING_ALGORITHM must be one of {', '.join(SIGNING_ALGORITHMS)}")
        config = cls(
            public_issuer=issuer.rstrip("/") if issuer else None,
            fetch_policy=FetchPolicy.from_env(environ),
            idp_refresh_interval=duration("TOKENBRIDGE_IDP_REFRESH_INTERVAL", defaults.idp_refresh_interval),
            app_recheck_interval=duration("TOKENBRIDGE_APP_RECHECK_INTERVAL", defaults.app_recheck_interval),
            retry_backoff=duration("TOKENBRIDGE_RETRY_BACKOFF", defaults.retry_backoff),
            secret_rotation_grace=duration("TOKENBRIDGE_SECRET_ROTATION_GRACE", defaults.secret_rotation_grace),
            signing_secret_namespace=environ.get(
                "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE", defaults.signing_secret_namespace
            ),
            signing_secret_name=environ.get("TOKENBRIDGE_SIGNING_SECRET_NAME", defaults.signing_secret_name),
            signing_algorithm=algorithm,
            signing_rotation_period=duration("TOKENBRIDGE_SIGNING_ROTATION_PERIOD", defaults.signing_rotation_period),
            signing_publish_lead=duration("TOKENBRIDGE_SIGNING_PUBLISH_LEAD", defaults.signing_publish_lead),
            max_token_lifetime=duration("TOKENBRIDGE_MAX_TOKEN_LIFETIME", defaults.max_token_lifetime),
            signing_check_interval=duration("TOKENBRIDGE_SIGNING_CHECK_INTERVAL", defaults.signing_check_interval),
            watch_timeout=duration("TOKENBRIDGE_WATCH_TIMEOUT", defaults.watch_timeout),
            request_timeout=duration("TOKENBRIDGE_REQUEST_TIMEOUT", defaults.request_timeout),
            peering=environ.get("TOKENBRIDGE_PEERING") or None,
            cluster_identity_providers=_flag(environ, "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS", True),
            metrics_port=_port(environ, "TOKENBRIDGE_METRICS_PORT", defaults.metrics_port),
        )
        if config.signing_publish_lead >= config.signing_rotation_period:
            raise ValueError(
                "TOKENBRIDGE_SIGNING_PUBLISH_LEAD must be shorter than TOKENBRIDGE_SIGNING_ROTATION_PERIOD"
            )
        return config
