"""``POST /oauth2/introspect`` (RFC 7662) for resource servers, authenticated like any client.

A client learns about a token only when the token was issued to it or names one of its audiences; for any other
token, as for an invalid one, the answer is ``{"active": false}`` (RFC 7662 §2.2), which reveals nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import falcon

from . import access_tokens
from .client_auth import authenticate
from .config import ServerConfig
from .forms import read_form, required
from .sources import SnapshotSource
from .token_endpoint import NO_STORE, current_snapshot


class IntrospectionResource:
    def __init__(self, config: ServerConfig, source: SnapshotSource, clock: Callable[[], float]):
        self._config, self._source, self._clock = config, source, clock

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot, signing_keys = current_snapshot(self._source)
        form = read_form(req, self._config.max_body_bytes)
        now = self._clock()
        app = authenticate(req.get_header("Authorization"), form, snapshot, now)
        token = required(form, "token")
        claims = access_tokens.verify(
            token, signing_keys, issuer=self._config.issuer, now=now, max_bytes=self._config.max_token_bytes
        )
        resp.set_headers(NO_STORE)
        if claims is None or not self._may_see(app.client_id, app.audience_set, claims):
            resp.media = {"active": False}
            return
        resp.media = {"active": True, "token_type": "Bearer", **claims}

    @staticmethod
    def _may_see(client_id: str, audiences: frozenset[str], claims: dict) -> bool:
        aud = claims.get("aud")
        token_audiences = {aud} if isinstance(aud, str) else set(aud or ())
        return claims.get("client_id") == client_id or bool(audiences & token_audiences)
