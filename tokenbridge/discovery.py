"""OpenID Provider discovery and JWKS retrieval for one IdentityProvider spec, shared by operator and server.

``discover`` turns an IdP's spec (a :class:`tokenbridge.specs.IdentityProviderSpec`, or its JSON) into the
effective :class:`ProviderMetadata`: spec overrides (``issuer``, ``jwksURI``, ``tokenEndpoint``, inline ``jwks``)
win over the fetched document, and an inline ``jwks`` is never fetched. Every fetch goes through
:func:`tokenbridge.fetch.fetch_json`.

Issuer validation (OpenID Discovery §4.3): the document's ``issuer`` must be the issuer its URL implies
(``tokenbridge.issuers.issuer_from_well_known``, which also knows Okta's appended ``oauth-authorization-server``
form), except for these documented quirks:

- a trailing ``/`` on the document's issuer (Auth0: ``https://<tenant>.auth0.com/``) is accepted, because the
  well-known URL is built with the issuer's terminating slash removed; the effective issuer keeps the slash;
- ``type: MicrosoftEntraID``: a document fetched from ``<origin>/<tenant>/v2.0/...`` may name any tenant or the
  ``{tenantid}`` template under ``<origin>/.../v2.0`` (multi-tenant ``common``/``organizations`` documents say
  ``{tenantid}``; a domain-name tenant answers with its GUID); a v1 document (``<origin>/<tenant>/...``) may name
  ``https://sts.windows.net/<tenant or {tenantid}>/``. The template is kept literally as the effective issuer;
- ``type: Kubernetes`` fetched with the operator's credentials: the document comes from our own, trusted API
  server, whose ``--service-account-issuer`` often differs from its URL, so its issuer is taken as is;
- a spec ``issuer`` override is authoritative: the document's issuer is then not compared.

Credentials of ``kubernetes.useOperatorCredentials`` are only ever sent to the operator's own API server (same
scheme, port and host, or a host resolving to the same address); its address is exempt from the SSRF guard
because it comes from the operator's configuration, not from a user. A JWKS elsewhere is fetched without them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from . import fetch
from .api import IDP_ENTRA, IDP_KUBERNETES
from .fetch import FetchError, FetchPolicy, fetch_json
from .issuers import TENANT_PLACEHOLDER
from .issuers import issuer_from_well_known as implied_issuer
from .jwks import JWKSError, KeySet, parse_jwks
from .specs import IdentityProviderSpec

# Reasons (DiscoveryError.reason), used verbatim as condition reasons.
DISCOVERY_UNAVAILABLE = "DiscoveryUnavailable"
INVALID_DISCOVERY_DOCUMENT = "InvalidDiscoveryDocument"
ISSUER_MISMATCH = "IssuerMismatch"
JWKS_UNAVAILABLE = "JWKSUnavailable"
INVALID_JWKS = "InvalidJWKS"
NO_USABLE_KEYS = "NoUsableKeys"
BLOCKED_ADDRESS = fetch.BLOCKED_ADDRESS
INSECURE_URL = fetch.INSECURE_URL
INVALID_URL = fetch.INVALID_URL
INVALID_TLS_CONFIGURATION = fetch.INVALID_TLS_CONFIGURATION
INVALID_SPEC = "InvalidSpec"
CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"

# Which part failed: the metadata document or the keys (the operator maps them to Discovered / KeysAvailable).
STAGE_DISCOVERY = "discovery"
STAGE_KEYS = "keys"

_TEMPORARY_FETCH_REASONS = (fetch.UNREACHABLE, fetch.HTTP_ERROR, fetch.TLS_ERROR)
_TENANT = "(?:" + re.escape(TENANT_PLACEHOLDER) + r"|[A-Za-z0-9][A-Za-z0-9.\-]{0,252})"
_ENTRA_V1_ISSUER = re.compile(r"https://sts\.windows\.net/" + _TENANT + "/")


class DiscoveryError(Exception):
    """``permanent``: retrying without a spec change will not help (the periodic refresh still re-checks)."""

    def __init__(self, reason: str, message: str, *, permanent: bool, stage: str = STAGE_DISCOVERY):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.stage = stage


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    token_endpoint: str | None
    jwks_uri: str | None
    jwks: dict[str, Any]
    keys: KeySet
    discovered_at: datetime


@dataclass(frozen=True)
class KubeCredentials:
    """How the operator itself talks to its API server; used for ``type: Kubernetes`` discovery and JWKS."""

    host: str
    ca_file: str | None = None
    client_cert: tuple[str, str] | None = None
    bearer_token: str | None = None
    token_file: str | None = None  # in-cluster: re-read on every use, the kubelet rotates it

    def token(self) -> str | None:
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip() or self.bearer_token
            except OSError:
                pass
        return self.bearer_token

    @classmethod
    def from_client_configuration(cls, configuration: Any) -> KubeCredentials:
        token = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
            "authorization"
        )
        if token and token.lower().startswith("bearer "):
            token = token[len("bearer ") :]
        cert = (configuration.cert_file, configuration.key_file) if configuration.cert_file else None
        return cls(configuration.host, configuration.ssl_ca_cert or None, cert, token or None)

    @classmethod
    def load(cls, kubeconfig: str | None = None) -> KubeCredentials:
        """In-cluster configuration when running in a pod, else the kubeconfig (``KUBECONFIG`` or ``~/.kube``)."""
        from kubernetes import client, config
        from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(
                config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
            return cls.from_client_configuration(configuration)
        return dataclasses.replace(cls.from_client_configuration(configuration), token_file=SERVICE_TOKEN_FILENAME)

    def serves(self, url: str) -> bool:
        """Whether ``url`` points at this API server (so our credentials may be sent there)."""
        try:
            ours, theirs = urlsplit(self.host), urlsplit(url)
            if ours.scheme != theirs.scheme or (ours.port or 443) != (theirs.port or 443):
                return False
            if ours.hostname == theirs.hostname:
                return True
            return bool(set(fetch.resolve(ours.hostname or "", 443)) & set(fetch.resolve(theirs.hostname or "", 443)))
        except (ValueError, FetchError):
            return False

    def policy(self, policy: FetchPolicy) -> FetchPolicy:
        """``policy`` plus our API server's own addresses in the allow-list."""
        parts = urlsplit(self.host)
        addresses = fetch.resolve(parts.hostname or "", parts.port or 443)
        extra = tuple(ipaddress.ip_network(a) for a in addresses)
        return dataclasses.replace(policy, allowed_networks=policy.allowed_networks + extra)


def _from_fetch_error(exc: FetchError, stage: str) -> DiscoveryError:
    if exc.reason in _TEMPORARY_FETCH_REASONS:
        reason = DISCOVERY_UNAVAILABLE if stage == STAGE_DISCOVERY else JWKS_UNAVAILABLE
        return DiscoveryError(reason, exc.message, permanent=False, stage=stage)
    if exc.reason in (fetch.BLOCKED_ADDRESS, fetch.INSECURE_URL, fetch.INVALID_URL, fetch.INVALID_TLS_CONFIGURATION):
        return DiscoveryError(exc.reason, exc.message, permanent=True, stage=stage)
    reason = INVALID_DISCOVERY_DOCUMENT if stage == STAGE_DISCOVERY else INVALID_JWKS
    return DiscoveryError(reason, exc.message, permanent=True, stage=stage)


def issuer_matches(idp_type: str, well_known_url: str, issuer: str) -> bool:
    """Whether a document fetched from ``well_known_url`` may state ``issuer`` (rules in the module docstring)."""
    expected = implied_issuer(well_known_url)
    if issuer in (expected, expected + "/"):
        return True
    if idp_type != IDP_ENTRA:
        return False
    origin = re.escape(f"{urlsplit(expected).scheme}://{urlsplit(expected).netloc}")
    if re.fullmatch(origin + "/" + _TENANT + "/v2.0", expected):
        return re.fullmatch(origin + "/" + _TENANT + "/v2.0", issuer) is not None
    if re.fullmatch(origin + "/" + _TENANT, expected):
        return _ENTRA_V1_ISSUER.fullmatch(issuer) is not None
    return False


def _spec_policy(spec: IdentityProviderSpec, policy: FetchPolicy) -> FetchPolicy:
    return dataclasses.replace(policy, allow_http=policy.allow_http and spec.allow_insecure_http)


def _check_http_opt_in(url: str, spec: IdentityProviderSpec, policy: FetchPolicy, stage: str) -> None:
    if urlsplit(url).scheme.lower() != "http":
        return
    if not spec.allow_insecure_http:
        raise DiscoveryError(
            INSECURE_URL, f"{url} is not https and spec.allowInsecureHTTP is not set", permanent=True, stage=stage
        )
    if not policy.allow_http:
        raise DiscoveryError(
            INSECURE_URL,
            f"{url} is not https: spec.allowInsecureHTTP also needs the operator "
            "and server started with TOKENBRIDGE_ALLOW_INSECURE_HTTP=true",
            permanent=True,
            stage=stage,
        )


def _get(
    url: str, spec: IdentityProviderSpec, policy: FetchPolicy, credentials: KubeCredentials | None, stage: str
) -> tuple[Any, bool]:
    """Fetch ``url`` for this spec; also says whether it came from our API server with our credentials."""
    _check_http_opt_in(url, spec, policy, stage)
    kwargs: dict[str, Any] = {"ca_bundle": spec.tls.ca_bundle if spec.tls else None}
    trusted = False
    if spec.uses_operator_credentials:
        if credentials is None:
            raise DiscoveryError(
                CREDENTIALS_UNAVAILABLE,
                "kubernetes.useOperatorCredentials is set but the operator has no Kubernetes credentials to use",
                permanent=False,
                stage=stage,
            )
        if credentials.serves(url):
            try:
                policy = credentials.policy(policy)
            except FetchError as exc:
                raise _from_fetch_error(exc, stage) from exc
            kwargs.update(
                ca_file=credentials.ca_file, client_cert=credentials.client_cert, bearer_token=credentials.token()
            )
            trusted = True
        elif stage == STAGE_DISCOVERY:
            raise DiscoveryError(
                INVALID_SPEC,
                f"{url} is not the operator's API server ({credentials.host}); its "
                "credentials are only sent there (set kubernetes.useOperatorCredentials: false "
                "for another cluster)",
                permanent=True,
                stage=stage,
            )
    try:
        return fetch_json(url, _spec_policy(spec, policy), **kwargs), trusted
    except FetchError as exc:
        raise _from_fetch_error(exc, stage) from exc


def fetch_keys(
    jwks_uri: str,
    spec: IdentityProviderSpec | Mapping[str, Any],
    policy: FetchPolicy,
    *,
    credentials: KubeCredentials | None = None,
) -> tuple[dict[str, Any], KeySet]:
    """Fetch and parse a JWKS for this spec; DiscoveryError (stage ``keys``) when it has no usable key."""
    spec = IdentityProviderSpec.of(spec)
    document, _ = _get(jwks_uri, spec, policy, credentials, STAGE_KEYS)
    return document, _parse_keys(document, spec)


def _parse_keys(document: Any, spec: IdentityProviderSpec) -> KeySet:
    algorithms = spec.allowed_algorithms
    try:
        keys = parse_jwks(document, algorithms)
    except JWKSError as exc:
        raise DiscoveryError(INVALID_JWKS, str(exc), permanent=True, stage=STAGE_KEYS) from exc
    if not len(keys):
        why = "; ".join(keys.skipped[:5]) or "the set is empty"
        raise DiscoveryError(
            NO_USABLE_KEYS, f"no key usable with {', '.join(algorithms)}: {why}", permanent=True, stage=STAGE_KEYS
        )
    return keys


def _optional_url(document: Mapping[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and (not isinstance(value, str) or not value.startswith(("https://", "http://"))):
        raise DiscoveryError(INVALID_DISCOVERY_DOCUMENT, f"{name} is not an http(s) URL", permanent=True)
    return value


def discover(
    spec: IdentityProviderSpec | Mapping[str, Any], policy: FetchPolicy, *, credentials: KubeCredentials | None = None
) -> ProviderMetadata:
    """The effective metadata and keys of the IdP described by ``spec``; DiscoveryError otherwise."""
    spec = IdentityProviderSpec.of(spec)
    issuer, jwks_uri, token_endpoint, well_known = spec.issuer, spec.jwks_uri, spec.token_endpoint, spec.well_known_url
    for name, value in (
        ("wellKnownURL", well_known),
        ("jwksURI", jwks_uri),
        ("tokenEndpoint", token_endpoint),
        ("issuer", issuer),
    ):
        if value and "@" in urlsplit(value).netloc:
            raise DiscoveryError(
                INVALID_URL, f"spec.{name} has user information; URLs with credentials are refused", permanent=True
            )
    if well_known:
        try:
            implied_issuer(well_known)
        except ValueError as exc:
            raise DiscoveryError(INVALID_URL, str(exc), permanent=True) from exc
        document, trusted = _get(well_known, spec, policy, credentials, STAGE_DISCOVERY)
        if not isinstance(document, Mapping):
            raise DiscoveryError(INVALID_DISCOVERY_DOCUMENT, f"{well_known} is not a JSON object", permanent=True)
        stated = document.get("issuer")
        if not isinstance(stated, str) or not stated:
            raise DiscoveryError(INVALID_DISCOVERY_DOCUMENT, f"{well_known} has no issuer", permanent=True)
        if not issuer:
            if not (trusted and spec.type == IDP_KUBERNETES) and not issuer_matches(
                spec.type or "", well_known, stated
            ):
                raise DiscoveryError(
                    ISSUER_MISMATCH,
                    f"the document at {well_known} names issuer {stated!r}, "
                    f"but its URL implies {implied_issuer(well_known)!r} (OpenID Discovery §4.3); "
                    "set spec.issuer to trust it anyway",
                    permanent=True,
                )
            issuer = stated
        jwks_uri = jwks_uri or _optional_url(document, "jwks_uri")
        token_endpoint = token_endpoint or _optional_url(document, "token_endpoint")
    if not issuer:
        raise DiscoveryError(INVALID_SPEC, "neither wellKnownURL nor issuer is set", permanent=True)
    if spec.jwks is not None:
        jwks = dict(spec.jwks)
        keys = _parse_keys(jwks, spec)
    elif jwks_uri:
        jwks, keys = fetch_keys(jwks_uri, spec, policy, credentials=credentials)
    else:
        raise DiscoveryError(
            INVALID_DISCOVERY_DOCUMENT, "no jwks_uri in the document and no spec.jwksURI or spec.jwks", permanent=True
        )
    return ProviderMetadata(issuer, token_endpoint, jwks_uri, jwks, keys, datetime.now(UTC))
