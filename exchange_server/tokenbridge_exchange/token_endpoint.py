"""``POST /oauth2/token``: RFC 8693 token exchange (delegation included), RFC 7523 JWT bearer and client credentials.

The decision is :mod:`.pipeline`'s (shared with explain); this resource authenticates the client, runs it and signs
the result. Nothing here touches the network except the bounded JWKS refresh an unknown ``kid`` may trigger (see
:mod:`jwks_cache`). ``req.context.exchange`` keeps what the request got to, for the metrics and the audit record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from tokenbridge.signing import SigningKeySet

from . import access_tokens
from .client_auth import authenticate
from .config import ServerConfig
from .errors import TemporarilyUnavailable
from .forms import read_form
from .pipeline import Exchange, Pipeline, explain
from .snapshot import Snapshot
from .sources import SnapshotSource

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def current_snapshot(source: SnapshotSource) -> tuple[Snapshot, SigningKeySet]:
    """The snapshot requests are answered from, with its signing keys (a snapshot without them is not ready)."""
    snapshot = source.current()
    if snapshot is None or snapshot.signing_keys is None:
        raise TemporarilyUnavailable("the server has not loaded its configuration and signing keys yet")
    return snapshot, snapshot.signing_keys


class TokenResource:
    def __init__(self, config: ServerConfig, source: SnapshotSource, clock: Callable[[], float], pipeline: Pipeline):
        self._config, self._source, self._clock, self._pipeline = config, source, clock, pipeline

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        state = req.context.exchange = Exchange()
        snapshot, signing_keys = current_snapshot(self._source)
        form = read_form(req, self._config.max_body_bytes)
        now = self._clock()
        app = authenticate(req.get_header("Authorization"), form, snapshot, now, state)
        self._pipeline.run(form, app, now, state)
        assert state.subject is not None and state.expires_at is not None
        state.jti = access_tokens.new_jti()
        token = access_tokens.issue(
            signing_keys,
            issuer=self._config.issuer,
            subject=state.subject,
            audiences=state.audiences,
            client_id=app.client_id,
            scopes=state.scopes,
            now=now,
            expires_at=state.expires_at,
            idp=state.idp,
            jti=state.jti,
            extra_claims=state.claims,
        )
        body: dict[str, Any] = {
            "access_token": token,
            "issued_token_type": state.issued_type,
            "token_type": "Bearer",
            "expires_in": int(state.expires_at) - int(now),
        }
        if state.scopes:
            body["scope"] = " ".join(state.scopes)
        resp.media = body
        resp.set_headers(NO_STORE)


class ExplainResource:
    """``POST /oauth2/explain``: the token endpoint's decision for the same form and client authentication, step by
    step, without issuing a token or recording a ``jti``. Only an authenticated client learns anything."""

    def __init__(self, config: ServerConfig, source: SnapshotSource, clock: Callable[[], float], pipeline: Pipeline):
        self._config, self._source, self._clock, self._pipeline = config, source, clock, pipeline

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot, _ = current_snapshot(self._source)
        form = read_form(req, self._config.max_body_bytes)
        now = self._clock()
        state = Exchange()
        app = authenticate(req.get_header("Authorization"), form, snapshot, now, state)
        resp.media = explain(
            self._pipeline, form, app, now, client=f"authenticated as application {app.label} ({app.auth_method})"
        )
        resp.set_headers(NO_STORE)
