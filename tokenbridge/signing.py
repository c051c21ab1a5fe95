"""The key set that signs issued tokens: generation, RFC 7638 key ids, storage in a Secret, rotation.

Rotation is publish-then-sign: a new key is published ``publish_lead`` seconds before it starts signing, so every
resource server has it in its JWKS cache before the first token it signed arrives; a retired key stays published
until every token it signed has expired. ``ensure_rotated`` is pure: the operator calls it on a schedule and
writes the result only when it changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")
SECRET_KEY = "keys.json"
# The private keys we generate and sign with (SIGNING_ALGORITHMS, in order).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def _new_private_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"signing algorithm {alg!r} is not one of {', '.join(SIGNING_ALGORITHMS)}")


def _public_jwk(private_key: PrivateKey) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(
        "RS256"
        if isinstance(private_key, rsa.RSAPrivateKey)
        else "ES256"
        if isinstance(private_key, ec.EllipticCurvePrivateKey)
        else "EdDSA"
    )
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private_key.public_key()))
    return jwk


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the kid of every key we sign with."""
    members = {m: jwk[m] for m in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any
    created_at: float
    sign_from: float  # first moment it may sign (it is published from created_at)
    retire_at: float | None = None  # stops signing
    expire_at: float | None = None  # leaves the JWKS: every token it signed has expired

    def public_jwk(self) -> dict[str, Any]:
        return {**_public_jwk(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def _to_json(self) -> dict[str, Any]:
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "kid": self.kid,
            "alg": self.alg,
            "privateKey": pem,
            "createdAt": self.created_at,
            "signFrom": self.sign_from,
            "retireAt": self.retire_at,
            "expireAt": self.expire_at,
        }

    @classmethod
    def _from_json(cls, doc: Mapping[str, Any]) -> SigningKey:
        key = serialization.load_pem_private_key(doc["privateKey"].encode(), password=None)
        return cls(
            doc["kid"],
            doc["alg"],
            key,
            float(doc["createdAt"]),
            float(doc["signFrom"]),
            doc.get("retireAt"),
            doc.get("expireAt"),
        )


def generate_key(alg: str, *, now: float, sign_from: float) -> SigningKey:
    private_key = _new_private_key(alg)
    return SigningKey(thumbprint(_public_jwk(private_key)), alg, private_key, now, sign_from)


@dataclass(frozen=True)
class SigningKeySet:
    keys: tuple[SigningKey, ...]

    def active(self, now: float) -> SigningKey:
        """The newest key allowed to sign now; before any key's sign_from (a brand-new set) the oldest one."""
        usable = [k for k in self.keys if k.sign_from <= now and (k.retire_at is None or k.retire_at > now)]
        if usable:
            return max(usable, key=lambda k: k.sign_from)
        return min(self.keys, key=lambda k: k.sign_from)

    def published(self, now: float) -> tuple[SigningKey, ...]:
        return tuple(k for k in self.keys if k.expire_at is None or k.expire_at > now)

    def jwks(self, now: float) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.published(now)]}

    def to_secret_data(self) -> dict[str, str]:
        """Secret ``.data`` (base64 values)."""
        doc = json.dumps({"keys": [k._to_json() for k in self.keys]}, sort_keys=True)
        return {SECRET_KEY: base64.b64encode(doc.encode()).decode()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> SigningKeySet:
        """Parse a Secret's ``.data``; ValueError when it holds no usable key set."""
        try:
            doc = json.loads(base64.b64decode(data[SECRET_KEY]))
            keys = tuple(SigningKey._from_json(k) for k in doc["keys"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"signing key Secret has no valid {SECRET_KEY!r}: {exc}") from exc
        if not keys:
            raise ValueError(f"signing key Secret's {SECRET_KEY!r} holds no keys")
        return cls(keys)


def generate_keyset(alg: str, now: float) -> SigningKeySet:
    return SigningKeySet((generate_key(alg, now=now, sign_from=now),))


def ensure_rotated(
    keyset: SigningKeySet | None,
    *,
    now: float,
    alg: str,
    rotation_period: float,
    publish_lead: float,
    max_token_lifetime: float,
) -> SigningKeySet:
    """The key set as it should be at ``now``; the very same object when nothing is due.

    - no keys: one new key that signs at once (nothing can have cached an older set);
    - the active key is due (age ≥ rotation_period - publish_lead) or of another algorithm, and no successor is
      pending: a successor that signs from now + publish_lead; the active key retires then and expires
      max_token_lifetime later;
    - keys past expire_at are dropped.
    """
    if keyset is None or not keyset.keys:
        return generate_keyset(alg, now)
    keys = [k for k in keyset.keys if k.expire_at is None or k.expire_at > now]
    active = SigningKeySet(tuple(keys)).active(now) if keys else None
    pending = [k for k in keys if k.sign_from > now]
    if active is None:
        return generate_keyset(alg, now)
    due = now - active.sign_from >= rotation_period - publish_lead or active.alg != alg
    if due and not pending:
        successor = generate_key(alg, now=now, sign_from=now + publish_lead)
        retired = replace(active, retire_at=successor.sign_from, expire_at=successor.sign_from + max_token_lifetime)
        keys = [retired if k is active else k for k in keys] + [successor]
    if len(keys) == len(keyset.keys) and all(a is b for a, b in zip(keys, keyset.keys, strict=True)):
        return keyset
    return SigningKeySet(tuple(keys))
