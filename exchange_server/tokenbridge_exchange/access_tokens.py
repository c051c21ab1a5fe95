"""The access tokens we issue: JWTs in the RFC 9068 shape, signed with the active signing key.

Introspection verifies them against the keys we still publish, so a token stops introspecting as active as soon
as its key leaves the JWKS, exactly as it stops verifying at resource servers.
"""
from __future__ import annotations

import base64
import functools
import json
import os
from typing import Any

from jwt.algorithms import get_default_algorithms

from tokenbridge.signing import SigningKeySet

from . import assertions
from .errors import InvalidGrant

JWT_TYPE = "at+jwt"
_ALGORITHMS = get_default_algorithms()

# RFC 7515 compact serialization, written here rather than by jwt.encode, which serialises and sorts the same
# header again and builds a JSON encoder for every token; the signature is still PyJWT's algorithm (for ECDSA the
# R||S form RFC 7518 §3.4 requires). Byte for byte what jwt.encode(claims, key, alg, headers={kid, typ}) writes.
_CLAIMS_JSON = json.JSONEncoder(separators=(",", ":")).encode


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str, alg: str) -> bytes:
    header = {"alg": alg, "kid": kid, "typ": JWT_TYPE}
    return _b64(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def new_jti() -> str:
    """128 random bits as 32 hex digits: the shape ``uuid4().hex`` gave, at a quarter of its cost."""
    return os.urandom(16).hex()


def issue(signing_keys: SigningKeySet, *, issuer: str, subject: str, audiences: tuple[str, ...], client_id: str,
          scopes: tuple[str, ...], now: float, expires_at: float, idp: str | None, jti: str | None = None,
          extra_claims: dict[str, Any] | None = None) -> str:
    """``extra_claims`` (claim mappings, ``act``) never override the claims set here."""
    key = signing_keys.active(now)
    claims: dict[str, Any] = dict(extra_claims) if extra_claims else {}
    claims.update({
        "iss": issuer,
        "sub": subject,
        "aud": audiences[0] if len(audiences) == 1 else list(audiences),
        "client_id": client_id,
        "iat": int(now),
        "exp": int(expires_at),
        "jti": jti or new_jti(),
    })
    claims.pop("scope", None)
    claims.pop("idp", None)
    if scopes:
        claims["scope"] = " ".join(scopes)
    if idp is not None:
        claims["idp"] = idp
    signing_input = _header_segment(key.kid, key.alg) + b"." + _b64(_CLAIMS_JSON(claims).encode())
    return (signing_input + b"." + _b64(_ALGORITHMS[key.alg].sign(signing_input, key.private_key))).decode("ascii")


def verify(token: str, signing_keys: SigningKeySet, *, issuer: str, now: float, max_bytes: int) -> dict[str, Any] | None:
    """The claims of a token we issued that is still valid, else None (introspection answers inactive)."""
    try:
        parsed = assertions.parse(token, max_bytes, "token")
    except InvalidGrant:
        return None
    kid, alg = parsed.header.get("kid"), parsed.header.get("alg")
    if assertions.unsupported_header(parsed.header):  # crit, b64 other than true: never in the tokens we sign
        return None
    key = next((k for k in signing_keys.published(now) if k.kid == kid and k.alg == alg), None)
    if key is None or not _ALGORITHMS[alg].verify(parsed.signing_input, key.private_key.public_key(),
                                                  parsed.signature):
        return None
    claims = parsed.claims
    exp = claims.get("exp")
    if claims.get("iss") != issuer or not isinstance(exp, (int, float)) or now >= exp:
        return None
    return claims
