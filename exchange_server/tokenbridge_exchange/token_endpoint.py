"""``POST /oauth2/token``: RFC 8693 token exchange, RFC 7523 JWT bearer and client credentials grants.

Cheap checks run first (client, grant, audience, scope), the signature last. Nothing here touches the network
except the bounded JWKS refresh an unknown ``kid`` may trigger (see :mod:`jwks_cache`).
"""
from __future__ import annotations

from typing import Any, Callable

import falcon

from tokenbridge import api

from . import access_tokens, assertions
from .client_auth import authenticate
from .config import ServerConfig
from .errors import (InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget, TemporarilyUnavailable,
                     UnauthorizedClient, UnsupportedGrantType)
from .forms import read_form, required, single
from .snapshot import Application, Snapshot
from .sources import SnapshotSource

SUBJECT_TOKEN_TYPES = frozenset({api.TOKEN_TYPE_JWT, api.TOKEN_TYPE_ID_TOKEN, api.TOKEN_TYPE_ACCESS_TOKEN})
ISSUED_TOKEN_TYPES = frozenset({api.TOKEN_TYPE_ACCESS_TOKEN, api.TOKEN_TYPE_JWT})
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Form = dict[str, list[str]]
# A grant's outcome: subject, the subject token's expiry (None: no cap), the IdP's label, issued token type.
Grant = tuple[str, float | None, str | None, str]


def current_snapshot(source: SnapshotSource) -> Snapshot:
    snapshot = source.current()
    if snapshot is None or not snapshot.ready:
        raise TemporarilyUnavailable("the server has not loaded its configuration and signing keys yet")
    return snapshot


def requested_audiences(form: Form, app: Application) -> tuple[str, ...]:
    """``audience`` and ``resource`` values (RFC 8693 §2.1, RFC 8707), each one of the application's audiences."""
    requested = tuple(dict.fromkeys(form.get("audience", []) + form.get("resource", [])))
    for audience in requested:
        if audience not in app.audience_set:
            raise InvalidTarget(f"audience {audience!r} is not one of this client's audiences")
    audiences = requested or app.audiences
    if not audiences:
        raise InvalidTarget("this client has no audiences to issue a token for")
    return audiences


def requested_scopes(form: Form, app: Application) -> tuple[str, ...]:
    """The requested scopes (RFC 6749 §3.3), all within the application's; none requested means all of them."""
    scope = single(form, "scope")
    if scope is None:
        return tuple(sorted(app.scopes))
    requested = tuple(dict.fromkeys(scope.split()))
    unknown = [s for s in requested if s not in app.scopes]
    if unknown:
        raise InvalidScope(f"scope {' '.join(unknown)!r} is not allowed for this client")
    return requested


class TokenResource:
    def __init__(self, config: ServerConfig, source: SnapshotSource, clock: Callable[[], float]):
        self._config, self._source, self._clock = config, source, clock
        self._grants = {
            api.GRANT_TOKEN_EXCHANGE: self._token_exchange,
            api.GRANT_JWT_BEARER: self._jwt_bearer,
            api.GRANT_CLIENT_CREDENTIALS: self._client_credentials,
        }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        snapshot = current_snapshot(self._source)
        form = read_form(req, self._config.max_body_bytes)
        now = self._clock()
        app = authenticate(req.get_header("Authorization"), form, snapshot, now)
        grant_type = required(form, "grant_type")
        req.context.grant_type = grant_type
        grant = self._grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
        if grant_type not in app.grant_types:
            raise UnauthorizedClient(f"this client may not use grant_type {grant_type}")
        audiences = requested_audiences(form, app)
        scopes = requested_scopes(form, app)
        subject, subject_expiry, idp, issued_type = grant(form, app, now)
        expires_at = now + app.lifetime if subject_expiry is None else min(now + app.lifetime, subject_expiry)
        if expires_at - now < 1:
            raise InvalidGrant("the subject token expires now; there is no lifetime left to issue")
        token = access_tokens.issue(
            snapshot.signing_keys, issuer=self._config.issuer, subject=subject, audiences=audiences,
            client_id=app.client_id, scopes=scopes, now=now, expires_at=expires_at, idp=idp,
        )
        body: dict[str, Any] = {
            "access_token": token,
            "issued_token_type": issued_type,
            "token_type": "Bearer",
            "expires_in": int(expires_at) - int(now),
        }
        if scopes:
            body["scope"] = " ".join(scopes)
        resp.media = body
        resp.set_headers(NO_STORE)

    def _validated(self, token: str, what: str, app: Application, now: float) -> tuple[str, float, str]:
        parsed = assertions.parse(token, self._config.max_token_bytes, what)
        provider, claims = assertions.validate(parsed, app, now)
        return claims["sub"], float(claims["exp"]), provider.label

    def _token_exchange(self, form: Form, app: Application, now: float) -> Grant:
        """RFC 8693 §2.1; delegation (``actor_token``) is reserved for later."""
        token = required(form, "subject_token")
        token_type = required(form, "subject_token_type")
        if token_type not in SUBJECT_TOKEN_TYPES:
            raise InvalidRequest(f"subject_token_type {token_type!r} is not supported; use a JWT "
                                 f"({', '.join(sorted(SUBJECT_TOKEN_TYPES))})")
        issued_type = single(form, "requested_token_type") or api.TOKEN_TYPE_ACCESS_TOKEN
        if issued_type not in ISSUED_TOKEN_TYPES:
            raise InvalidRequest(f"requested_token_type {issued_type!r} cannot be issued; use "
                                 f"{api.TOKEN_TYPE_ACCESS_TOKEN}")
        if single(form, "actor_token") is not None or single(form, "actor_token_type") is not None:
            raise InvalidRequest("actor_token (delegation) is not supported")
        return (*self._validated(token, "subject_token", app, now), issued_type)

    def _jwt_bearer(self, form: Form, app: Application, now: float) -> Grant:
        """RFC 7523 §2.1: the assertion is validated exactly like a subject token."""
        token = required(form, "assertion")
        return (*self._validated(token, "assertion", app, now), api.TOKEN_TYPE_ACCESS_TOKEN)

    def _client_credentials(self, form: Form, app: Application, now: float) -> Grant:
        """RFC 6749 §4.4: no external IdP; the client is the subject."""
        return app.client_id, None, None, api.TOKEN_TYPE_ACCESS_TOKEN
