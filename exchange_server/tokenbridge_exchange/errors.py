"""OAuth 2.0 error responses (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2) and the one handler that writes them.

Every failure a client can see, including falcon's own routing errors and unexpected exceptions, leaves as the
same JSON body with ``Cache-Control: no-store``, so clients parse one shape and nothing leaks a stack trace.
"""

from __future__ import annotations

import logging
import typing

import falcon

log = logging.getLogger(__name__)


class OAuthError(Exception):
    """An error response: ``error`` code, HTTP status and a specific ``description`` for the client."""

    error = "invalid_request"
    status = 400

    def __init__(self, description: str, *, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.description = description
        self.headers = headers or {}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed; ``basic`` adds the challenge RFC 6749 §5.2 requires for header auth."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, *, basic: bool = True):
        headers = {"WWW-Authenticate": 'Basic realm="tokenbridge", charset="UTF-8"'} if basic else None
        super().__init__(description, headers=headers)


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class TemporarilyUnavailable(OAuthError):
    """No configuration loaded yet (or no signing key): the client should retry, nothing is wrong with it."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str):
        super().__init__(description, headers={"Retry-After": "1"})


# falcon's own errors (routing, media) by status; anything else 4xx is a malformed request. A wrong method on an
# OAuth endpoint is invalid_request (RFC 6749 §5.2 has no other code for it), still with status 405 and Allow.
_FALCON_ERRORS = {404: "not_found", 405: "invalid_request"}


def handle_error(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, typing.Any]) -> None:
    """Write ``ex`` as an RFC 6749 §5.2 error body; registered for every exception type."""
    if isinstance(ex, OAuthError):
        status, error, description, headers = ex.status, ex.error, ex.description, ex.headers
    elif isinstance(ex, falcon.HTTPError):
        status = ex.status_code
        error = _FALCON_ERRORS.get(status, "invalid_request" if status < 500 else "server_error")
        headers = dict(ex.headers or {})
        description = ex.description or (
            f"method {req.method} is not allowed; use {headers['Allow']}"
            if status == 405 and headers.get("Allow")
            else ex.title
        )
    else:
        log.exception("unexpected error in %s %s", req.method, req.path)
        status, error, description, headers = 500, "server_error", "internal error", {}
    resp.status = status
    resp.media = {"error": error, "error_description": description}
    resp.set_headers(headers)
    resp.set_header("Cache-Control", "no-store")
    resp.set_header("Pragma", "no-cache")


def install(app: falcon.App) -> None:
    """Route every exception, falcon's included, through :func:`handle_error`."""
    for exception in (Exception, falcon.HTTPError, OAuthError):
        app.add_error_handler(exception, handle_error)
