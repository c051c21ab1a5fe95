"""Client authentication at the token and introspection endpoints (RFC 6749 §2.3.1).

``client_secret_basic`` and ``client_secret_post`` against the hash the operator publishes in the application's
status; the previous secret stays valid until its grace window ends. A client uses exactly one method, the one
it is registered for. Every attempt costs the same: the presented secret is hashed once and compared in constant
time with two hashes (current and previous, a placeholder where there is none), whether the client exists, is
rotating or not, so timing tells nothing about either.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from tokenbridge import api, client_secrets

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


def _usable(secret_hash: Any) -> bool:
    """A published hash we can compare with (compare_digest takes ASCII strings only)."""
    return isinstance(secret_hash, str) and secret_hash.isascii() and secret_hash.startswith(client_secrets.HASH_PREFIX)


def _secret_matches(app: Application | None, secret: str, now: float) -> bool:
    """Always one hash and two constant-time comparisons, combined without short-circuiting."""
    presented = client_secrets.hash_client_secret(secret)
    current = app.secret_hash if app is not None and _usable(app.secret_hash) else None
    previous = None
    if app is not None and _usable(app.previous_secret_hash):
        expires = app.previous_secret_expires_at
        in_grace = expires is not None and now < expires
        previous = app.previous_secret_hash if in_grace else None
    current_ok = hmac.compare_digest(presented, current or _NO_HASH)
    previous_ok = hmac.compare_digest(presented, previous or _NO_HASH)
    return (current_ok & (current is not None)) | (previous_ok & (previous is not None))


def authenticate(
    authorization: str | None, form: Mapping[str, list[str]], snapshot: Snapshot, now: float, state: Any = None
) -> Application:
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
