"""Parse a JSON Web Key Set (RFC 7517) once into verification keys for asymmetric algorithms.

Both the operator (to count usable keys) and the exchange server (to verify tokens) use this, so a key that one
of them accepts is exactly a key the other accepts. Keys are parsed once per JWKS document, never per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.exceptions import PyJWTError

from .api import ASYMMETRIC_ALGORITHMS

MAX_KEYS = 100

# Algorithms a key without an "alg" member may serve, by key type and curve (SPIRE, Kubernetes omit "alg").
_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGS = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",)}
_OKP_ALGS = {"Ed25519": ("EdDSA",), "Ed448": ("EdDSA",)}


class JWKSError(ValueError):
    """The document is not a JWK Set at all (as opposed to a set with some unusable keys)."""


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    algorithms: frozenset[str]
    key: Any  # a cryptography public key object, ready for jwt.decode


@dataclass(frozen=True)
class KeySet:
    """Usable keys indexed by kid; ``skipped`` says why each other key was left out."""

    by_kid: Mapping[str | None, tuple[VerificationKey, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_kid.values())

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(a for keys in self.by_kid.values() for k in keys for a in k.algorithms)

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys that may have signed a token with this header: exact kid, or every key when the token has none."""
        if kid is None:
            keys = [k for ks in self.by_kid.values() for k in ks]
        else:
            keys = list(self.by_kid.get(kid, ()))
        return [k for k in keys if alg in k.algorithms]


def _key_algorithms(jwk: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, ...]:
    kty = jwk.get("kty")
    if kty == "RSA":
        possible: tuple[str, ...] = _RSA_ALGS
    elif kty == "EC":
        possible = _EC_ALGS.get(jwk.get("crv", ""), ())
    elif kty == "OKP":
        possible = _OKP_ALGS.get(jwk.get("crv", ""), ())
    else:
        possible = ()
    alg = jwk.get("alg")
    if alg is not None:
        possible = (alg,) if alg in possible else ()
    return tuple(a for a in possible if a in allowed)


def parse_jwks(document: Any, allowed_algorithms: Iterable[str]) -> KeySet:
    """Return the keys of ``document`` usable for signature verification with ``allowed_algorithms``.

    Symmetric keys, encryption keys, keys whose algorithm is not allowed and malformed keys are skipped with a
    reason; only a document that is not a JWK Set raises :class:`JWKSError`.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JWKSError('a JWK Set must be a JSON object with a "keys" array')
    allowed = frozenset(allowed_algorithms) & frozenset(ASYMMETRIC_ALGORITHMS)
    by_kid: dict[str | None, list[VerificationKey]] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"][:MAX_KEYS]):
        name = f"key {index}"
        if not isinstance(jwk, Mapping):
            skipped.append(f"{name}: not a JSON object")
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"{name}: kid is not a string")
            continue
        name = f"key {kid!r}" if kid else name
        if jwk.get("use", "sig") != "sig":
            skipped.append(f"{name}: use is {jwk.get('use')!r}, not 'sig'")
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            skipped.append(f"{name}: key_ops does not include 'verify'")
            continue
        if any(member in jwk for member in ("d", "p", "q", "k")):
            skipped.append(f"{name}: private or symmetric key material is never used")
            continue
        algorithms = _key_algorithms(jwk, allowed)
        if not algorithms:
            skipped.append(f"{name}: kty {jwk.get('kty')!r} alg {jwk.get('alg')!r} is not an allowed algorithm")
            continue
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=algorithms[0]).key
        except (PyJWTError, ValueError, TypeError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        by_kid.setdefault(kid, []).append(VerificationKey(kid, frozenset(algorithms), key))
    if len(document["keys"]) > MAX_KEYS:
        skipped.append(f"only the first {MAX_KEYS} keys are read")
    return KeySet({k: tuple(v) for k, v in by_kid.items()}, tuple(skipped))
