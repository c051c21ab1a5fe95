"""Shared pieces of the attack corpus: IdPs that sign with generated keys (any asymmetric JOSE algorithm), a
hand-rolled compact JWS builder (so a test controls every byte of header, payload and signature), the
configuration the attacks run against, and the one assertion every refusal must pass.

The resource builders (``idp_object``, ``app_object``, ``snapshot_of`` ...) are the unit tests' own, imported from
tests/support/exchange.py so the corpus attacks exactly the configuration shape the unit tests use.
"""
from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import falcon.testing
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from tests.support.exchange import NOW, PUBLIC_ISSUER, Clock, FixedSource, app_object, basic, idp_object, snapshot_of
from tokenbridge import api
from tokenbridge_exchange.app import create_app
from tokenbridge_exchange.config import ServerConfig

__all__ = ["NOW", "PUBLIC_ISSUER", "Clock", "FixedSource", "app_object", "basic", "idp_object", "snapshot_of",
           "ALGORITHMS", "OAUTH_ERRORS", "FORM", "CLIENT", "SECRET", "POST_CLIENT", "POST_SECRET", "B_CLIENT",
           "B_SECRET", "SigningIdP", "b64url", "jws", "encode", "client_for", "exchange", "post",
           "assert_refused", "assert_accepted"]

ALGORITHMS = get_default_algorithms()
# Every error code the token endpoint may answer with (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2).
OAUTH_ERRORS = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                          "unsupported_grant_type", "invalid_scope", "invalid_target"})
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CLIENT, SECRET = "tb-web-client", "web-s3cret-0123456789abcdef"
POST_CLIENT, POST_SECRET = "tb-post-client", "post-s3cret-0123456789abcdef"
B_CLIENT, B_SECRET = "tb-team-b-client", "team-b-s3cret-0123456789abcdef"


def b64url(data: bytes | str) -> str:
    data = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(part: Any) -> str:
    if isinstance(part, bytes):
        return b64url(part)
    if isinstance(part, str):  # already a segment (possibly malformed on purpose)
        return part
    return b64url(json.dumps(part, separators=(",", ":")))


def jws(header: Any, payload: Any, key: Any = None, alg: str | None = None,
        signature: bytes | str | None = None) -> str:
    """A compact JWS. ``header``/``payload``: dict (JSON-encoded), bytes (base64url-encoded) or str (used as the
    segment verbatim). The signature is ``signature`` (bytes are encoded, str used verbatim) or made with ``key``
    under ``alg`` (default: the header's alg) over the exact signing input, so any header passes through."""
    h, p = _segment(header), _segment(payload)
    if signature is None:
        if key is None:
            signature = b""
        else:
            name = alg or header["alg"]
            signature = ALGORITHMS[name].sign(f"{h}.{p}".encode(), key)
    s = signature if isinstance(signature, str) else b64url(signature)
    return f"{h}.{p}.{s}"


class SigningIdP:
    """An identity provider for the tests: one generated key per instance (RS*/PS*, ES256/384/512 or EdDSA)."""

    __test__ = False

    def __init__(self, issuer: str, alg: str = "RS256"):
        self.issuer, self.alg = issuer, alg
        self.kid = uuid.uuid4().hex[:12]
        if alg.startswith(("RS", "PS")):
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]()
            self.key = ec.generate_private_key(curve)
        elif alg == "EdDSA":
            self.key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)

    @property
    def public_key(self) -> Any:
        return self.key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(ALGORITHMS[self.alg].to_jwk(self.public_key))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {"iss": self.issuer, "sub": "alice", "aud": "api://tokenbridge", "iat": int(NOW) - 10,
                  "exp": int(NOW) + 3600, **overrides}
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A valid token (the header/claims overridden as given; None removes), signed with this IdP's key."""
        return jws(self.header(**(header or {})), self.claims(**claims), self.key, self.alg)

    def sign(self, header: Any, payload: Any) -> str:
        """Sign arbitrary segments (dict/bytes/str, see :func:`jws`) with this IdP's real key."""
        return jws(header, payload, self.key, self.alg)


def client_for(source: Any, clock: Any = None, **config: Any) -> falcon.testing.TestClient:
    """A plain TestClient (not the unit tests' StrictClient): the corpus checks 5xx itself, per case."""
    return falcon.testing.TestClient(create_app(ServerConfig(issuer=PUBLIC_ISSUER, **config), source,
                                                clock=clock or Clock()))


def encode(form: Any) -> str:
    return urlencode(form, doseq=True)


def post(client: Any, body: Any, headers: dict[str, str] | None = None, **kwargs: Any):
    """POST /oauth2/token with a form (dict or list of pairs, urlencoded here) or a raw body (str/bytes)."""
    if isinstance(body, (dict, list)):
        body = encode(body)
    return client.simulate_post("/oauth2/token", body=body, headers=headers if headers is not None else FORM,
                                **kwargs)


def exchange(client: Any, token: str | None, auth: dict[str, str] | None = None, **params: Any):
    """An RFC 8693 exchange by the basic-auth web client (``auth`` replaces its Authorization header)."""
    form = {"grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT, **params}
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
