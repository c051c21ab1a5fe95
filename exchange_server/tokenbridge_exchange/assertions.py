"""Validating an external JWT (RFC 8693 subject token, RFC 7523 assertion) against the IdP its ``iss`` names.

Checks follow RFC 8725: size capped before decoding; ``alg`` must be one of the IdP's asymmetric algorithms (never
``none`` or HMAC, whatever the key says); ``crit`` is refused; ``jku``/``jwk``/``x5u``/``x5c`` are ignored (keys
only ever come from the IdP's configured JWKS); then signature, ``iss``, ``aud``, ``exp``, ``nbf``, ``iat`` and
``maxTokenAge``. Every refusal is :class:`InvalidGrant` with the specific reason.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import get_default_algorithms

from .errors import InvalidGrant
from .jwks_cache import KeysUnavailable
from .snapshot import Application, IdentityProvider

_ALGORITHMS = get_default_algorithms()


@dataclass(frozen=True)
class UnverifiedJWT:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64decode(segment: str, what: str) -> bytes:
    if "=" in segment:
        raise InvalidGrant(f"the JWT {what} is not unpadded base64url")
    try:
        return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidGrant(f"the JWT {what} is not base64url: {exc}") from None


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment, what))
    except (ValueError, UnicodeDecodeError):
        raise InvalidGrant(f"the JWT {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidGrant(f"the JWT {what} is not a JSON object")
    return value


def parse(token: str, max_bytes: int, what: str = "subject_token") -> UnverifiedJWT:
    """Split and decode a compact JWS; nothing is trusted yet."""
    if len(token) > max_bytes:
        raise InvalidGrant(f"{what} is larger than {max_bytes} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidGrant(f"{what} is not a JWT (a signed compact JWS has three parts; encrypted JWTs are not accepted)")
    header = _json_object(parts[0], "header")
    claims = _json_object(parts[1], "payload")
    signature = _b64decode(parts[2], "signature")
    return UnverifiedJWT(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii", "replace"), signature)


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidGrant(f"the {name} claim is not a number")
    return float(value)


def providers_for(app: Application, token: UnverifiedJWT) -> tuple[IdentityProvider, ...]:
    """The application's IdPs whose issuer is the token's ``iss`` (exact, or the Entra tenant template)."""
    iss = token.claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidGrant("the token has no iss claim")
    found = app.providers.lookup(iss, token.claims.get("tid"))
    if not found:
        raise InvalidGrant(f"issuer {iss!r} is not an identity provider of this client")
    return found


def _verify_signature(token: UnverifiedJWT, provider: IdentityProvider) -> None:
    alg = token.header.get("alg")
    if not isinstance(alg, str) or alg not in provider.allowed_algorithms:
        raise InvalidGrant(f"alg {alg!r} is not allowed by identity provider {provider.label}")
    if "crit" in token.header:
        raise InvalidGrant("JWT header parameters marked crit are not supported")
    kid = token.header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidGrant("the JWT kid header is not a string")
    try:
        keys = provider.keys.candidates(kid, alg)
    except KeysUnavailable as exc:
        raise InvalidGrant(str(exc)) from None
    if not keys:
        raise InvalidGrant(f"identity provider {provider.label} has no {alg} key with kid {kid!r}")
    algorithm = _ALGORITHMS[alg]
    for key in keys:
        if algorithm.verify(token.signing_input, key.key, token.signature):
            return
    raise InvalidGrant(f"the signature does not verify with the keys of identity provider {provider.label}")


def _check_claims(claims: dict[str, Any], provider: IdentityProvider, now: float) -> None:
    skew = provider.clock_skew
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not provider.allowed_audiences.intersection(a for a in audiences if isinstance(a, str)):
        raise InvalidGrant(f"the token's aud {aud!r} contains none of the audiences identity provider "
                           f"{provider.label} allows")
    exp = _number(claims, "exp")
    if exp is None:
        raise InvalidGrant("the token has no exp claim")
    if now >= exp + skew:
        raise InvalidGrant("the token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + skew < nbf:
        raise InvalidGrant("the token is not valid yet (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and now + skew < iat:
        raise InvalidGrant("the token was issued in the future (iat)")
    if provider.max_token_age is not None:
        if iat is None:
            raise InvalidGrant(f"identity provider {provider.label} has a maxTokenAge and the token has no iat")
        if now - iat > provider.max_token_age + skew:
            raise InvalidGrant(f"the token is older than the maxTokenAge of identity provider {provider.label}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidGrant("the token has no sub claim")


def validate(token: UnverifiedJWT, app: Application, now: float) -> tuple[IdentityProvider, dict[str, Any]]:
    """The IdP that vouches for ``token`` and its verified claims, for an application's allowed IdPs."""
    errors: list[InvalidGrant] = []
    for provider in providers_for(app, token):  # usually one; several only when IdPs share an issuer
        try:
            _verify_signature(token, provider)
            _check_claims(token.claims, provider, now)
        except InvalidGrant as exc:
            errors.append(exc)
            continue
        return provider, token.claims
    raise errors[0]
