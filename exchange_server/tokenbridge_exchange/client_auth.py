"""Client authentication at the token and introspection endpoints (RFC 6749 §2.3.1).

``client_secret_basic`` and ``client_secret_post`` against the hash the operator publishes in the application's
status; the previous secret stays valid until its grace window ends. A client uses exactly one method, the one
it is registered for. Unknown clients cost the same hash comparison as known ones.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping
from urllib.parse import unquote_plus

from tokenbridge import api
from tokenbridge.client_secrets import verify_client_secret

from .errors import InvalidClient, InvalidRequest
from .snapshot import Application, Snapshot

_NO_HASH = "sha256:" + "0" * 64


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient(f"unsupported Authorization scheme {scheme!r}; use Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient("the Basic credentials are not base64 of client_id:client_secret") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("the Basic credentials are not base64 of client_id:client_secret")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
    return unquote_plus(client_id), unquote_plus(secret)


def _secret_matches(app: Application | None, secret: str, now: float) -> bool:
    if app is None:
        verify_client_secret(secret, _NO_HASH)  # same work as for a real client
        return False
    if verify_client_secret(secret, app.secret_hash):
        return True
    expires = app.previous_secret_expires_at
    return bool(app.previous_secret_hash and expires is not None and now < expires
                and verify_client_secret(secret, app.previous_secret_hash))


def authenticate(authorization: str | None, form: Mapping[str, list[str]], snapshot: Snapshot,
                 now: float, state: Any = None) -> Application:
    """The authenticated application, or :class:`InvalidClient` / :class:`InvalidRequest`; ``state.client_id``
    gets the presented client id (for the audit record) before the secret is checked."""
    form_id, form_secret = form.get("client_id", [None])[0], form.get("client_secret", [None])[0]
    if authorization:
        if form_secret is not None:
            raise InvalidRequest("the client used both client_secret_basic and client_secret_post; use one")
        client_id, secret = _basic_credentials(authorization)
        if form_id is not None and form_id != client_id:
            raise InvalidClient("client_id in the body differs from the one in the Authorization header")
        method = api.AUTH_METHOD_BASIC
    elif form_id is not None and form_secret is not None:
        client_id, secret, method = form_id, form_secret, api.AUTH_METHOD_POST
    else:
        raise InvalidClient("client authentication is required (client_secret_basic or client_secret_post)")
    basic = method == api.AUTH_METHOD_BASIC
    if state is not None:
        state.client_id = client_id[:256]
    app = snapshot.applications.get(client_id)
    matches = _secret_matches(app, secret, now)
    if app is None or not matches:
        raise InvalidClient("unknown client or wrong client secret", basic=basic)
    if app.auth_method != method:
        raise InvalidClient(f"this client is registered for {app.auth_method}, not {method}", basic=basic)
    return app
