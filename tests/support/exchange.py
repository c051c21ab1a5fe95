"""The exchange server in process, for its tests: resource objects, a fixed snapshot source and clock, and a client
that fails the test on any 500. Subject tokens come from tests.support.idp."""

from __future__ import annotations

import base64
from typing import Any

import falcon.testing
import jwt

from tests.support.idp import NOW, IdP
from tokenbridge import api
from tokenbridge.client_secrets import hash_client_secret
from tokenbridge.signing import generate_keyset
from tokenbridge_exchange.app import create_app
from tokenbridge_exchange.config import ServerConfig
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.snapshot import build_snapshot

PUBLIC_ISSUER = "https://tokens.example.test"


def idp_object(
    name: str,
    issuer: str,
    *,
    namespace: str = "team-a",
    kind: str = api.KIND_IDP,
    jwks: dict | None = None,
    jwks_uri: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    spec = {"type": "OIDC", "issuer": issuer, "allowedAudiences": ["api://tokenbridge"], **spec}
    if jwks is not None:
        spec["jwks"] = jwks
    if jwks_uri is not None:
        spec["jwksURI"] = jwks_uri
    meta = {"name": name} if kind == api.KIND_CLUSTER_IDP else {"name": name, "namespace": namespace}
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def app_object(
    name: str,
    client_id: str,
    secret: str,
    *,
    namespace: str = "team-a",
    providers: list[dict] | None = None,
    status: dict | None = None,
    **spec: Any,
) -> dict[str, Any]:
    spec = {
        "grantTypes": list(api.GRANT_TYPES),
        "identityProviders": providers if providers is not None else [{"name": "corp"}],
        "audiences": ["https://api.example.test", "https://other.example.test"],
        "scopes": ["read", "write"],
        "credentials": {"secretName": f"{name}-credentials"},
        **spec,
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND_APP,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": {"clientID": client_id, "clientSecretHash": hash_client_secret(secret), **(status or {})},
    }


def standalone_documents(idp: IdP, *, apps: int = 2, scopes=("read",), secret: str = "pw") -> list[dict]:
    """A standalone manifests file: IdP ``apps/corp`` with ``idp``'s JWKS inline, and ``apps`` applications with
    their credentials Secrets (``client-<n>`` / ``secret``)."""
    docs: list[dict] = [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_IDP,
            "metadata": {"name": "corp", "namespace": "apps"},
            "spec": {"type": "OIDC", "issuer": idp.issuer, "jwks": idp.jwks(), "allowedAudiences": ["api://tb"]},
        }
    ]
    for n in range(apps):
        docs += [
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_APP,
                "metadata": {"name": f"app-{n}", "namespace": "apps"},
                "spec": {
                    "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                    "identityProviders": [{"name": "corp"}],
                    "audiences": ["https://api.example.test"],
                    "scopes": list(scopes),
                    "credentials": {"secretName": f"app-{n}-credentials"},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"app-{n}-credentials", "namespace": "apps"},
                "stringData": {"client_id": f"client-{n}", "client_secret": secret},
            },
        ]
    return docs


class FixedSource:
    """A snapshot source the test sets directly."""

    def __init__(self, snapshot=None):
        self.snapshot = snapshot

    def current(self):
        return self.snapshot

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def no_fetch(uri, spec):
    raise AssertionError(f"unexpected fetch of {uri}")


def snapshot_of(idps=(), cluster_idps=(), apps=(), *, signing_keys="generate", cache=None, clock=None, policies=None):
    """``policies``: a PolicyCache shared with other builds (none: every policy compiled afresh)."""
    clock = clock or Clock()
    keys = generate_keyset("ES256", clock() - 60) if signing_keys == "generate" else signing_keys
    return build_snapshot(
        identity_providers=idps,
        cluster_identity_providers=cluster_idps,
        applications=apps,
        signing_keys=keys,
        cache=cache or JwksCache(no_fetch, clock=clock),
        policies=policies,
    )


class StrictClient(falcon.testing.TestClient):
    """Fails the test when anything answers 500: every error path must be a deliberate OAuth error."""

    __test__ = False

    def simulate_request(self, *args, **kwargs):
        result = super().simulate_request(*args, **kwargs)
        assert result.status_code != 500, result.text
        return result


def make_client(source, clock=None, telemetry=None, **config: Any) -> StrictClient:
    """``telemetry``: the one the source's JWKS cache reports on, for the metrics."""
    cfg = ServerConfig(issuer=PUBLIC_ISSUER, **config)
    return StrictClient(create_app(cfg, source, clock=clock or Clock(), telemetry=telemetry))


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def post_form(client, path: str, form: dict[str, Any], auth: tuple[str, str] | None = None):
    """POST a form (None values left out, lists repeated) with client_secret_basic ``auth``."""
    from urllib.parse import urlencode

    body = urlencode({k: v for k, v in form.items() if v is not None}, doseq=True)
    return client.simulate_post(path, body=body, headers={**FORM, **(basic(*auth) if auth else {})})


def expect_error(result, status: int, error: str, text: str = "") -> dict:
    assert result.status_code == status, result.text
    assert result.json["error"] == error, result.json
    assert text in result.json["error_description"], result.json
    return result.json


def claims_of(result) -> dict[str, Any]:
    assert result.status_code == 200, result.text
    return jwt.decode(result.json["access_token"], options={"verify_signature": False})
