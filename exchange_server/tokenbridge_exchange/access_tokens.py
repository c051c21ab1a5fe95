"""The access tokens we issue: JWTs in the RFC 9068 shape, signed with the active signing key.

Introspection verifies them against the keys we still publish, so a token stops introspecting as active as soon
as its key leaves the JWKS, exactly as it stops verifying at resource servers.
"""

from __future__ import annotations

import os
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from tokenbridge.signing import SigningKeySet

from . import assertions
from .errors import InvalidGrant

JWT_TYPE = "at+jwt"
_ALGORITHMS = get_default_algorithms()


def new_jti() -> str:
    """128 random bits as 32 hex digits: the shape ``uuid4().hex`` gave, at a quarter of its cost."""
    return os.urandom(16).hex()


def issue(
    signing_keys: SigningKeySet,
    *,
    issuer: str,
    subject: str,
    audiences: tuple[str, ...],
    client_id: str,
    scopes: tuple[str, ...],
    now: float,
    expires_at: float,
    idp: str | None,
    jti: str | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """``extra_claims`` (claim mappings, ``act``) never override the claims set here."""
    key = signing_keys.active(now)
    claims: dict[str, Any] = dict(extra_claims) if extra_claims else {}
    claims.update(
        {
            "iss": issuer,
            "sub": subject,
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "client_id": client_id,
            "iat": int(now),
            "exp": int(expires_at),
            "jti": jti or new_jti(),
        }
    )
    claims.pop("scope", None)
    claims.pop("idp", None)
    if scopes:
        claims["scope"] = " ".join(scopes)
    if idp is not None:
        claims["idp"] = idp
    # the key object parsed once (SigningKey), used by PyJWT as it is
    return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": JWT_TYPE})


def verify(
    token: str, signing_keys: SigningKeySet, *, issuer: str, now: float, max_bytes: int
) -> dict[str, Any] | None:
    """The claims of a token we issued that is still valid, else None (introspection answers inactive)."""
    try:
        parsed = assertions.parse(token, max_bytes, "token")
    except InvalidGrant:
        return None
    kid, alg = parsed.header.get("kid"), parsed.header.get("alg")
    if assertions.unsupported_header(parsed.header):  # crit, b64 other than true: never in the tokens we sign
        return None
    key = next((k for k in signing_keys.published(now) if k.kid == kid and k.alg == alg), None)
    if key is None or not _ALGORITHMS[key.alg].verify(
        parsed.signing_input, key.private_key.public_key(), parsed.signature
    ):
        return None
    claims = parsed.claims
    exp = claims.get("exp")
    if claims.get("iss") != issuer or not isinstance(exp, (int, float)) or now >= exp:
        return None
    return claims
