"""Discovery documents (RFC 8414, OpenID Connect Discovery) and the JWKS of our signing keys (RFC 7517)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import falcon

from tokenbridge import api

from .config import ServerConfig
from .sources import SnapshotSource
from .token_endpoint import current_snapshot

AUTH_METHODS = [api.AUTH_METHOD_BASIC, api.AUTH_METHOD_POST]


def server_metadata(config: ServerConfig) -> dict[str, Any]:
    return {
        "issuer": config.issuer,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": config.jwks_uri,
        "introspection_endpoint": config.introspection_endpoint,
        "grant_types_supported": list(api.GRANT_TYPES),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "response_types_supported": [],  # no authorization endpoint
        "subject_types_supported": ["public"],
        "token_types_supported": [api.TOKEN_TYPE_ACCESS_TOKEN, api.TOKEN_TYPE_JWT],
    }


class MetadataResource:
    """Both well-known paths serve the same document; it depends on configuration only."""

    def __init__(self, config: ServerConfig):
        self._metadata = server_metadata(config)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._metadata
        resp.cache_control = ["public", "max-age=300"]


class JWKSResource:
    """The keys that sign (or recently signed) our tokens; a key appears before it signs (publish-then-sign).

    The document is serialized again only when the set of published keys changes.
    """

    def __init__(self, source: SnapshotSource, clock: Callable[[], float]):
        self._source, self._clock = source, clock
        self._cached: tuple[tuple, str] = ((), "")  # (the published keys, their JWKS document)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, signing_keys = current_snapshot(self._source)
        published = signing_keys.published(self._clock())
        cached, text = self._cached
        if not text or len(cached) != len(published) or any(a is not b for a, b in zip(cached, published, strict=True)):
            text = json.dumps({"keys": [k.public_jwk() for k in published]})
            self._cached = (published, text)
        resp.text = text
        resp.content_type = "application/jwk-set+json"
        resp.cache_control = ["public", "max-age=60"]
