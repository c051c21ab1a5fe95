"""The attack corpus' pieces: the configuration's credentials, raw requests to the token endpoint through a plain
TestClient, and the one assertion every refusal must pass. The corpus builds the unit tests' own resources
(tests.support.exchange), so it attacks exactly the configuration shape the unit tests use, and signs with
tests.support.idp.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import falcon.testing

from tests.support.exchange import FORM, PUBLIC_ISSUER, Clock, basic
from tokenbridge import api
from tokenbridge_exchange.app import create_app
from tokenbridge_exchange.config import ServerConfig

# Every error code the token endpoint may answer with (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2).
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
    }
)
CLIENT, SECRET = "tb-web-client", "web-s3cret-0123456789abcdef"
POST_CLIENT, POST_SECRET = "tb-post-client", "post-s3cret-0123456789abcdef"
B_CLIENT, B_SECRET = "tb-team-b-client", "team-b-s3cret-0123456789abcdef"


def client_for(source: Any, clock: Any = None, **config: Any) -> falcon.testing.TestClient:
    """A plain TestClient (not the unit tests' StrictClient): the corpus checks 5xx itself, per case."""
    return falcon.testing.TestClient(
        create_app(ServerConfig(issuer=PUBLIC_ISSUER, **config), source, clock=clock or Clock())
    )


def encode(form: Any) -> str:
    return urlencode(form, doseq=True)


def post(client: Any, body: Any, headers: dict[str, str] | None = None, **kwargs: Any):
    """POST /oauth2/token with a form (dict or list of pairs, urlencoded here) or a raw body (str/bytes)."""
    if isinstance(body, (dict, list)):
        body = encode(body)
    return client.simulate_post("/oauth2/token", body=body, headers=headers if headers is not None else FORM, **kwargs)


def exchange(client: Any, token: str | None, auth: dict[str, str] | None = None, **params: Any):
    """An RFC 8693 exchange by the basic-auth web client (``auth`` replaces its Authorization header)."""
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **params,
    }
    form = {k: v for k, v in form.items() if v is not None}
    return post(client, form, {**FORM, **(basic(CLIENT, SECRET) if auth is None else auth)})


def assert_refused(result: Any, error: str, status: int | None = None) -> dict[str, Any]:
    """A deliberate OAuth refusal: never a 5xx, the expected status and error code, a JSON error body, no-store."""
    expected_status = status if status is not None else 401 if error == "invalid_client" else 400
    assert result.status_code < 500, f"server error {result.status_code}: {result.text[:500]}"
    assert result.status_code == expected_status, f"{result.status_code}: {result.text[:500]}"
    assert result.headers.get("Content-Type", "").startswith("application/json"), result.headers
    body = json.loads(result.text)
    assert isinstance(body, dict), body
    assert body.get("error") == error, body
    assert error in OAUTH_ERRORS
    assert isinstance(body.get("error_description"), str), body
    assert "access_token" not in body, body
    assert result.headers.get("Cache-Control") == "no-store", result.headers
    return body


def assert_accepted(result: Any) -> dict[str, Any]:
    assert result.status_code == 200, f"{result.status_code}: {result.text[:500]}"
    body = json.loads(result.text)
    assert isinstance(body.get("access_token"), str) and body["access_token"].count(".") == 2, body
    assert body["token_type"] == "Bearer"
    assert result.headers.get("Cache-Control") == "no-store"
    return body
