"""Issuer identifiers: what a discovery URL implies, and finding the IdP a token's ``iss`` names.

Issuers compare exactly (OpenID Connect Core §3.1.3.7). The one exception is Microsoft Entra ID's multi-tenant
metadata, whose ``issuer`` is the literal template ``https://login.microsoftonline.com/{tenantid}/v2.0``: a token
matches it when its ``iss`` fills the placeholder with exactly the tenant id the token itself carries in ``tid``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

TENANT_PLACEHOLDER = "{tenantid}"
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
# A tenant id is a GUID or a verified domain; never anything with a slash or a scheme.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")

V = TypeVar("V")
_NONE: Mapping[str, Any] = MappingProxyType({})  # the templates of almost every index: one shared empty mapping


def is_template(issuer: str) -> bool:
    return TENANT_PLACEHOLDER in issuer


def issuer_from_well_known(url: str) -> str:
    """The issuer a metadata URL implies: OIDC appends the well-known path, RFC 8414 inserts it after the host.

    Okta serves ``/oauth2/<id>/.well-known/oauth-authorization-server``: appended like OIDC, not inserted, and it
    implies ``/oauth2/<id>``. Only an issuer without a path has both forms, and they agree on it.
    """
    if url.endswith(OIDC_WELL_KNOWN):
        return url[: -len(OIDC_WELL_KNOWN)]
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if sep and ("/" + path).startswith(OAUTH_WELL_KNOWN):
        suffix = ("/" + path)[len(OAUTH_WELL_KNOWN) :]
        return f"{scheme}://{host}{suffix}"
    if sep and url.endswith(OAUTH_WELL_KNOWN):
        return url[: -len(OAUTH_WELL_KNOWN)]
    raise ValueError(f"{url!r} is not an OpenID ({OIDC_WELL_KNOWN}) or RFC 8414 ({OAUTH_WELL_KNOWN}) metadata URL")


def template_matches(template: str, iss: str, tid: object) -> bool:
    """True when ``iss`` is ``template`` with the placeholder replaced by the token's own ``tid``."""
    if not isinstance(tid, str) or not _TENANT.fullmatch(tid):
        return False
    return template.replace(TENANT_PLACEHOLDER, tid, 1) == iss


class IssuerIndex(Generic[V]):
    """Values (IdPs) by issuer. Exact issuers are one dict lookup; templates, rare, are tried after that.

    Several IdPs may share an issuer (the same Okta in two namespaces), so a lookup returns all of them and the
    caller picks among those its client may use. ``share`` may map each tuple of values to an equal one already
    held (a snapshot of 100,000 applications holds one index each, mostly over the same few IdPs).
    """

    __slots__ = ("_exact", "_templates")

    def __init__(self, entries: Iterable[tuple[str, V]], share: Callable[[tuple[V, ...]], tuple[V, ...]] | None = None):
        exact: dict[str, list[V]] = {}
        templates: dict[str, list[V]] = {}
        for issuer, value in entries:
            (templates if is_template(issuer) else exact).setdefault(issuer, []).append(value)
        share = share or tuple
        self._exact: Mapping[str, tuple[V, ...]] = {k: share(tuple(v)) for k, v in exact.items()}
        self._templates: Mapping[str, tuple[V, ...]] = (
            {k: share(tuple(v)) for k, v in templates.items()} if templates else _NONE
        )

    def lookup(self, iss: str, tid: object = None) -> tuple[V, ...]:
        found = self._exact.get(iss, ())
        if self._templates and isinstance(tid, str) and tid in iss:
            for template, values in self._templates.items():
                if template_matches(template, iss, tid):
                    found = found + values
        return found

    def __len__(self) -> int:
        return sum(map(len, self._exact.values())) + sum(map(len, self._templates.values()))
