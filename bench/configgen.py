"""Realistic standalone configurations and pre-minted request pools for the benchmarks.

Follows ``tokenbridge dev``: every IdentityProvider carries its public key inline (nothing is fetched), every
OAuthApplication has a credentials Secret with ``client_id``/``client_secret``. The layout mimics a multi-team
cluster: IdPs and applications spread over namespaces, each application trusting a few IdPs of its namespace.

Subject tokens are RS256 (2048-bit keys), as most enterprise IdPs issue them. RSA key generation is the slow part
of setting up, so large configurations (the scale benchmark) draw key material from a pool of ``distinct_keys``
keys: every IdP still has its own issuer, kid and JWKS document, parsed on its own at load.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from tokenbridge import api

SUBJECT_AUDIENCE = "tokenbridge-bench"
SCOPES = ("read", "write", "admin")
NAMESPACES = 10
IDPS_PER_APP = 3
TOKEN_TTL = 3 * 3600  # subject tokens outlive the whole benchmark

try:  # the C emitter when PyYAML has libyaml: writing 100,000 applications must not dominate the scale run
    _Dumper: Any = yaml.CSafeDumper
except AttributeError:  # pragma: no cover
    _Dumper = yaml.SafeDumper


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid: str, alg: str = "RS256") -> dict[str, Any]:
    jwk = json.loads(jwt.get_algorithm_by_name(alg).to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@dataclass
class IdP:
    namespace: str
    name: str
    issuer: str
    kid: str
    key: Any  # RSA private key (the IdP's signing key; only its public half is in the manifests)


@dataclass
class App:
    namespace: str
    name: str
    client_id: str
    client_secret: str
    idps: list[int]  # indexes into Config.idps
    audience: str


@dataclass
class Config:
    directory: Path
    idps: list[IdP] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifests.yaml"


def basic_auth(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def generate(
    directory: str | Path,
    n_idps: int = 100,
    n_apps: int = 1000,
    *,
    distinct_keys: int | None = None,
    seed: int = 7,
    json_directory: str | Path | None = None,
    write_yaml: bool = True,
) -> Config:
    """Write ``directory/manifests.yaml`` (IdPs, applications, Secrets; unless not ``write_yaml``) and return what
    it holds; with ``json_directory``, also the same documents as one JSON ``kind: List`` in
    ``json_directory/manifests.json``."""
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = Config(directory)
    pool = [rsa_key() for _ in range(min(distinct_keys or n_idps, n_idps))]
    namespaces = max(1, min(NAMESPACES, n_idps))
    by_namespace: dict[str, list[int]] = {}
    docs: list[dict[str, Any]] = []
    for i in range(n_idps):
        ns = f"team-{i % namespaces}"
        idp = IdP(
            ns, f"idp-{i}", f"https://idp-{i}.bench.example/oauth2/default", f"idp-{i}-key-1", pool[i % len(pool)]
        )
        config.idps.append(idp)
        by_namespace.setdefault(ns, []).append(i)
        docs.append(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_IDP,
                "metadata": {"name": idp.name, "namespace": ns},
                "spec": {
                    "type": api.IDP_OIDC,
                    "issuer": idp.issuer,
                    "jwks": {"keys": [public_jwk(idp.key, idp.kid)]},
                    "allowedAudiences": [SUBJECT_AUDIENCE, f"api://{idp.name}"],
                    "allowedAlgorithms": ["RS256"],
                    "clockSkew": "30s",
                },
            }
        )
    for j in range(n_apps):
        ns = f"team-{j % namespaces}"
        candidates = by_namespace[ns]
        chosen = rng.sample(candidates, min(IDPS_PER_APP, len(candidates)))
        app = App(ns, f"app-{j}", f"app-{j}", secrets.token_urlsafe(32), chosen, f"api://service-{j % 50}")
        config.apps.append(app)
        docs.append(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_APP,
                "metadata": {"name": app.name, "namespace": ns},
                "spec": {
                    "grantTypes": [api.GRANT_TOKEN_EXCHANGE, api.GRANT_JWT_BEARER],
                    "identityProviders": [{"name": config.idps[k].name} for k in chosen],
                    "audiences": [app.audience, f"api://service-{(j + 1) % 50}"],
                    "scopes": list(SCOPES),
                    "accessTokenLifetime": "15m",
                    "credentials": {"secretName": f"{app.name}-credentials"},
                },
            }
        )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": f"{app.name}-credentials", "namespace": ns},
                "stringData": {"client_id": app.client_id, "client_secret": app.client_secret},
            }
        )
    if write_yaml:
        with open(config.manifest_path, "w") as f:
            yaml.dump_all(docs, f, Dumper=_Dumper, sort_keys=False)
    if json_directory is not None:
        Path(json_directory).mkdir(parents=True, exist_ok=True)
        with open(Path(json_directory) / "manifests.json", "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, f)
    return config


def subject_token(
    idp: IdP,
    subject: str,
    audience: str = SUBJECT_AUDIENCE,
    *,
    now: float | None = None,
    jti: bool = True,
    ttl: float = TOKEN_TTL,
) -> str:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": idp.issuer,
        "sub": subject,
        "aud": audience,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + ttl),
        "email": f"{subject}@bench.example",
    }
    if jti:
        claims["jti"] = uuid.uuid4().hex
    return jwt.encode(claims, idp.key, algorithm="RS256", headers={"kid": idp.kid, "typ": "JWT"})


def exchange_body(token: str, audience: str, scope: str = "read") -> str:
    return urlencode(
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            "audience": audience,
            "scope": scope,
        }
    )


def request_pool(config: Config, size: int = 500, seed: int = 11) -> list[tuple[str, str]]:
    """``size`` (Authorization header, form body) pairs: random applications, each token from one of its IdPs."""
    rng = random.Random(seed)
    pool = []
    for k in range(size):
        app = config.apps[rng.randrange(len(config.apps))]
        idp = config.idps[rng.choice(app.idps)]
        token = subject_token(idp, f"user-{k}")
        pool.append((basic_auth(app.client_id, app.client_secret), exchange_body(token, app.audience)))
    return pool


def write_pool(pool: list[tuple[str, str]], path: str | Path) -> Path:
    """One request a line, ``authorization<TAB>body`` (what bench/wrk_pool.lua and the open-loop generator read)."""
    path = Path(path)
    path.write_text("".join(f"{auth}\t{body}\n" for auth, body in pool))
    return path


def read_pool(path: str | Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in Path(path).read_text().splitlines() if line]  # type: ignore
