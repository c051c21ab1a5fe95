"""Validating an external JWT (RFC 8693 subject token, RFC 7523 assertion) against the IdP its ``iss`` names.

Checks follow RFC 8725: size capped before decoding; segments must be canonical base64url of UTF-8 JSON objects
with no repeated member names, nested at most :data:`MAX_JSON_DEPTH` deep (checked before parsing, so no hostile
nesting reaches the recursive parser); ``alg`` must be one of the IdP's asymmetric algorithms (never ``none`` or
HMAC, whatever the key says); ``crit`` is refused, and so is ``b64`` other than true (RFC 7797);
``jku``/``jwk``/``x5u``/``x5c`` are ignored (keys only ever come from the IdP's configured JWKS); then signature,
``iss``, ``aud``, ``exp``, ``nbf``, ``iat`` and ``maxTokenAge`` and the ``jti`` an IdP may require. Every refusal is
:class:`InvalidGrant` with the specific reason; each check is one step of the pipeline that the token endpoint
and ``explain`` share (:mod:`.trace`).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import get_default_algorithms

from tokenbridge.jwks import VerificationKey

from .errors import InvalidGrant
from .jwks_cache import KeysUnavailable
from .snapshot import Application, IdentityProvider
from .trace import NO_TRACE, Trace, step

_ALGORITHMS = get_default_algorithms()


@dataclass(frozen=True)
class UnverifiedJWT:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


MAX_JSON_DEPTH = 64  # arrays/objects within each other; real tokens nest a few levels
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # UTF-8: no '"' or '\' inside a character
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_B64URL_VALUES = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


class _Duplicate(ValueError):
    pass


def _b64decode(segment: str, what: str) -> bytes:
    """RFC 7515 §2 base64url: unpadded, the URL-safe alphabet only, zero trailing bits; so each byte string has
    exactly one accepted spelling."""
    if "=" in segment:
        raise InvalidGrant(f"the JWT {what} is not unpadded base64url")
    if "+" in segment or "/" in segment:  # the decoder below takes the standard alphabet as well
        raise InvalidGrant(f"the JWT {what} is not base64url: '+' or '/' (standard base64) instead of '-' or '_'")
    try:
        data = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidGrant(f"the JWT {what} is not base64url: {exc}") from None
    tail = len(segment) % 4  # 2 or 3 characters for the last 1 or 2 bytes: their last 4 or 2 bits are padding
    if tail and _B64URL_VALUES[segment[-1]] & (0x0F if tail == 2 else 0x03):
        raise InvalidGrant(f"the JWT {what} is not canonical base64url (non-zero trailing bits)")
    return data


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # RFC 8259 has no NaN or Infinity; Python's json accepts them


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate("repeated member name")
    return obj


# one decoder for every token (json.loads with options builds a new one per call)
_DECODE = json.JSONDecoder(parse_constant=_not_json, object_pairs_hook=_unique_members).decode


def too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether UTF-8 JSON ``data`` nests arrays/objects more than ``limit`` deep (brackets inside strings do not
    count). Almost every token has fewer brackets than the limit in total and costs two ``bytes.count``; the rest
    get one pass of C-level scans. Unbalanced or unterminated input may count too deep: it is not JSON anyway."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_NESTING.__getitem__, brackets)), default=0) > limit


def _json_object(segment: str, what: str) -> dict[str, Any]:
    data = _b64decode(segment, what)
    try:
        text = data.decode("utf-8")  # strict: json.loads(bytes) would guess UTF-16/32
    except UnicodeDecodeError:
        raise InvalidGrant(f"the JWT {what} is not UTF-8") from None
    if too_deep(data):
        raise InvalidGrant(f"the JWT {what} nests JSON more than {MAX_JSON_DEPTH} levels deep")
    try:
        value = _DECODE(text)
    except _Duplicate:
        raise InvalidGrant(f"the JWT {what} repeats a JSON member name") from None
    except (ValueError, RecursionError):  # RecursionError: cannot happen below the depth cap; never a 500
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
        raise InvalidGrant(
            f"{what} is not a JWT (a signed compact JWS has three parts; encrypted JWTs are not accepted)"
        )
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
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise InvalidGrant(f"the {name} claim is not a finite number") from None
    if not math.isfinite(number):  # 1e400 parses as inf
        raise InvalidGrant(f"the {name} claim is not a finite number")
    return number


def providers_for(app: Application, token: UnverifiedJWT) -> tuple[IdentityProvider, ...]:
    """The application's IdPs whose issuer is the token's ``iss`` (exact, or the Entra tenant template)."""
    iss = token.claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise InvalidGrant("the token has no iss claim")
    found = app.providers.lookup(iss, token.claims.get("tid"))
    if not found:
        raise InvalidGrant(f"issuer {iss!r} is not an identity provider of this client")
    return found


# Each check takes (token, provider, now) and returns (None, what passed) or raises InvalidGrant with the reason.
Check = Callable[[UnverifiedJWT, IdentityProvider, float], tuple[None, str]]


def _alg(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    alg = token.header.get("alg")
    if not isinstance(alg, str) or alg not in provider.allowed_algorithms:
        raise InvalidGrant(f"alg {alg!r} is not allowed by identity provider {provider.label}")
    reason = unsupported_header(token.header)
    if reason:
        raise InvalidGrant(reason)
    return None, f"{alg} is allowed by identity provider {provider.label}"


def unsupported_header(header: dict[str, Any]) -> str | None:
    """Why a JWS header asks for processing we do not do (``crit``; ``b64`` other than true, RFC 7797: an unencoded
    payload is never a JWT, and b64 outside crit is malformed), else None."""
    if "crit" in header:
        return "JWT header parameters marked crit are not supported"
    if "b64" in header and header["b64"] is not True:
        return "the JWT header's b64 member is not true (RFC 7797 unencoded payloads are not supported)"
    return None


class VerifiedSignatures:
    """Signatures that verified, by their exact bytes: a token presented again (a workload exchanging its token for
    several audiences, or before each call it makes) skips the public-key operation, the largest single cost of an
    exchange. Only successes are kept, with the key object that verified them, and a hit needs that very object
    among the IdP's current candidates: a token verified under one IdP does not count for another, and keys
    refreshed or rotated are new objects, so nothing verified under old keys survives them. Every other check (times,
    audience, replay) runs on every use. Bounded: full, it starts over."""

    def __init__(self, max_entries: int = 4096):
        self._entries: dict[bytes, tuple[bytes, str, VerificationKey]] = {}
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def verified_by(self, token: UnverifiedJWT, alg: str, keys: list[VerificationKey]) -> VerificationKey | None:
        entry = self._entries.get(token.signature)
        if entry is None or entry[0] != token.signing_input or entry[1] != alg:
            return None
        return next((key for key in keys if key is entry[2]), None)

    def add(self, token: UnverifiedJWT, alg: str, key: VerificationKey) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        if self.max_entries:
            self._entries[token.signature] = (token.signing_input, alg, key)


def _signature(
    token: UnverifiedJWT, provider: IdentityProvider, now: float, verified: VerifiedSignatures | None = None
) -> tuple[None, str]:
    alg = token.header["alg"]
    kid = token.header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidGrant("the JWT kid header is not a string")
    try:
        keys = provider.keys.candidates(kid, alg)
    except KeysUnavailable as exc:
        raise InvalidGrant(str(exc)) from None
    if not keys:
        raise InvalidGrant(f"identity provider {provider.label} has no {alg} key with kid {kid!r}")
    seen = verified.verified_by(token, alg, keys) if verified is not None else None
    if seen is not None:
        return None, f"verified with key {seen.kid!r} of identity provider {provider.label} (seen before)"
    algorithm = _ALGORITHMS[alg]
    for key in keys:
        if algorithm.verify(token.signing_input, key.key, token.signature):
            if verified is not None:
                verified.add(token, alg, key)
            return None, f"verified with key {key.kid!r} of identity provider {provider.label}"
    raise InvalidGrant(f"the signature does not verify with the keys of identity provider {provider.label}")


def _aud(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    aud = token.claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    matched = sorted(provider.allowed_audiences.intersection(a for a in audiences if isinstance(a, str)))
    if not matched:
        raise InvalidGrant(
            f"the token's aud {aud!r} contains none of the audiences identity provider {provider.label} allows"
        )
    return None, f"contains {matched[0]!r}, allowed by identity provider {provider.label}"


def _exp(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    exp = _number(token.claims, "exp")
    if exp is None:
        raise InvalidGrant("the token has no exp claim")
    if now >= exp + provider.clock_skew:
        raise InvalidGrant("the token has expired")
    return None, f"expires in {int(exp - now)}s (clock skew {int(provider.clock_skew)}s)"


def _nbf(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    nbf = _number(token.claims, "nbf")
    if nbf is None:
        return None, "no nbf claim"
    if now + provider.clock_skew < nbf:
        raise InvalidGrant("the token is not valid yet (nbf)")
    return None, "valid already"


def _iat(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    iat = _number(token.claims, "iat")
    if iat is None:
        return None, "no iat claim"
    if now + provider.clock_skew < iat:
        raise InvalidGrant("the token was issued in the future (iat)")
    return None, f"issued {int(now - iat)}s ago"


def _max_age(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    if provider.max_token_age is None:
        return None, f"identity provider {provider.label} sets none"
    iat = _number(token.claims, "iat")
    if iat is None:
        raise InvalidGrant(f"identity provider {provider.label} has a maxTokenAge and the token has no iat")
    if now - iat > provider.max_token_age + provider.clock_skew:
        raise InvalidGrant(f"the token is older than the maxTokenAge of identity provider {provider.label}")
    return None, f"within the maxTokenAge of {int(provider.max_token_age)}s"


def _sub(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    sub = token.claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidGrant("the token has no sub claim")
    return None, "present"


def _jti(token: UnverifiedJWT, provider: IdentityProvider, now: float) -> tuple[None, str]:
    if not (provider.require_jti or provider.prevent_replay):
        return None, f"identity provider {provider.label} neither requires nor tracks jti"
    jti = token.claims.get("jti")
    if jti is None and not provider.require_jti:
        return None, "no jti claim (not required)"
    if not isinstance(jti, str) or not jti:
        raise InvalidGrant(
            f"identity provider {provider.label} requires a jti claim and the token has none"
            if jti is None
            else "the jti claim is not a non-empty string"
        )
    return None, "present"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("alg", _alg),
    ("signature", _signature),
    ("aud", _aud),
    ("exp", _exp),
    ("nbf", _nbf),
    ("iat", _iat),
    ("maxTokenAge", _max_age),
    ("sub", _sub),
    ("jti", _jti),
)


def _issuer(app: Application, token: UnverifiedJWT) -> tuple[tuple[IdentityProvider, ...], str]:
    found = providers_for(app, token)
    labels = ", ".join(p.label for p in found)
    return found, f"issuer {token.claims['iss']!r}: identity provider {labels}" + (
        " (tried in turn)" if len(found) > 1 else ""
    )


def validate(
    token: UnverifiedJWT,
    app: Application,
    now: float,
    trace: Trace = NO_TRACE,
    what: str = "subject_token",
    verified: VerifiedSignatures | None = None,
) -> tuple[IdentityProvider, dict[str, Any]]:
    """The IdP that vouches for ``token`` and its verified claims, for an application's allowed IdPs."""
    errors: list[InvalidGrant] = []
    for provider in step(trace, f"{what}.issuer", _issuer, app, token):  # usually one; more share an issuer
        try:
            for name, check in CHECKS:
                if check is _signature:
                    step(trace, f"{what}.{name}", _signature, token, provider, now, verified)
                else:
                    step(trace, f"{what}.{name}", check, token, provider, now)
        except InvalidGrant as exc:
            errors.append(exc)
            continue
        return provider, token.claims
    raise errors[0]
