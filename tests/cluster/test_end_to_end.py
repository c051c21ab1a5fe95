"""End to end on the real control plane, every part real: ``tokenbridge operator`` reconciles the resources,
``tokenbridge serve --kubernetes`` reads what it published, and a workload's ServiceAccount token, minted by the
kube-apiserver with TokenRequest, is exchanged; the issued token is verified by an independent JOSE library
(jwcrypto) through our discovery document and JWKS, the way a resource server would.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from jwcrypto import jwk, jwt as jose_jwt

from tests.support.processes import free_port, stop_group
from tokenbridge import api

pytestmark = pytest.mark.cluster

AUDIENCE = "tokenbridge-e2e"
API = "https://api.e2e.test"
TOKENBRIDGE = str(Path(sys.executable).parent / "tokenbridge")


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{what} not seen within {timeout}s"
        time.sleep(0.1)


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([TOKENBRIDGE, *args], env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


class Stack:
    """Operator + server for one namespace, and small helpers over kubectl and the token endpoint."""

    def __init__(self, cp, ns: str, base: str):
        self.cp, self.ns, self.base = cp, ns, base

    def apply(self, doc: dict) -> None:
        self.cp.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(doc))

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.cp.kubectl("get", kind, name, "-n", self.ns, "-o", "json").stdout)

    def ready(self, kind: str, name: str) -> bool:
        conditions = self.get(kind, name).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def credentials(self, secret: str) -> dict[str, str]:
        data = self.get("secret", secret)["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def sa_token(self, sa: str, audience: str = AUDIENCE) -> str:
        return self.cp.kubectl("create", "token", sa, "-n", self.ns, "--audience", audience,
                               "--duration", "10m").stdout.strip()

    def exchange(self, creds: dict, subject: str, **extra) -> httpx.Response:
        form = {"grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": subject,
                "subject_token_type": api.TOKEN_TYPE_JWT, **extra}
        return httpx.post(creds["token_endpoint"], data=form, auth=(creds["client_id"], creds["client_secret"]),
                          timeout=10)


@contextlib.contextmanager
def deployed(cp, logs: Path, prefix: str, **env_extra: str):
    """A fresh namespace with ``tokenbridge operator`` and ``tokenbridge serve --kubernetes`` (2 workers) for it;
    their logs are printed when the block fails; both stopped and the namespace deleted afterwards."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"KUBECONFIG": str(cp.kubeconfig), "TOKENBRIDGE_PUBLIC_ISSUER": base,
           "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": ns, "TOKENBRIDGE_SIGNING_SECRET_NAME": "signing-keys",
           "TOKENBRIDGE_METRICS_PORT": str(free_port()), **env_extra}
    operator = start(["operator", "--kubeconfig", str(cp.kubeconfig), "--namespace", ns], env, logs / "operator.log")
    server = start(["serve", "--kubernetes", "--kubeconfig", str(cp.kubeconfig), "--bind", f"127.0.0.1:{port}",
                    "--workers", "2"], env, logs / "server.log")
    try:
        yield Stack(cp, ns, base)
    except BaseException:
        for name in ("operator.log", "server.log"):
            sys.stderr.write(f"--- {name}\n{(logs / name).read_text(errors='replace')[-4000:]}\n")
        raise
    finally:
        stop_group(server)
        stop_group(operator)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory):
    cp = control_plane
    with deployed(cp, tmp_path_factory.mktemp("e2e-logs"), "e2e", TOKENBRIDGE_SECRET_ROTATION_GRACE="10m") as s:
        s.apply({"apiVersion": api.API_VERSION, "kind": api.KIND_IDP, "metadata": {"name": "cluster-sa"},
                 "spec": {"type": api.IDP_KUBERNETES, "description": "this cluster's ServiceAccount issuer",
                          "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                          "allowedAudiences": [AUDIENCE], "kubernetes": {"useOperatorCredentials": True}}})
        s.apply({"apiVersion": api.API_VERSION, "kind": api.KIND_APP, "metadata": {"name": "web"},
                 "spec": {"grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                          "identityProviders": [{"kind": api.KIND_IDP, "name": "cluster-sa"}],
                          "audiences": [API, "https://other.e2e.test"], "scopes": ["read", "write"],
                          "accessTokenLifetime": "5m", "credentials": {"secretName": "web-credentials"}}})
        cp.kubectl("create", "serviceaccount", "workload", "-n", s.ns)
        wait_for(lambda: s.ready(api.KIND_IDP, "cluster-sa"), 60, "IdentityProvider Ready")
        wait_for(lambda: s.ready(api.KIND_APP, "web"), 60, "OAuthApplication Ready")
        wait_for(lambda: _ok(f"{s.base}/readyz"), 60, "server ready")
        yield s


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_operator_published_what_the_server_needs(stack):
    idp = stack.get(api.KIND_IDP, "cluster-sa")["status"]
    assert idp["issuer"] == stack.cp.issuer and idp["keyCount"] >= 1
    app = stack.get(api.KIND_APP, "web")["status"]
    creds = stack.credentials("web-credentials")
    assert app["clientID"] == creds["client_id"]
    assert creds["token_endpoint"] == f"{stack.base}/oauth2/token"
    assert creds["client_secret"] not in json.dumps(app)


def test_service_account_token_is_exchanged_and_verifies_with_jwcrypto(stack):
    creds = stack.credentials("web-credentials")
    resp = stack.exchange(creds, stack.sa_token("workload"), audience=API, scope="read")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == api.TOKEN_TYPE_ACCESS_TOKEN
    assert body["scope"] == "read" and 0 < body["expires_in"] <= 300
    assert resp.headers["cache-control"] == "no-store"

    # A resource server: discovery -> jwks_uri -> verify, with a library that is not the one we sign with.
    discovery = httpx.get(f"{stack.base}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == stack.base
    keys = jwk.JWKSet.from_json(httpx.get(discovery["jwks_uri"]).text)
    token = jose_jwt.JWT(jwt=body["access_token"], key=keys, algs=["ES256"],
                         check_claims={"iss": stack.base, "aud": API, "exp": None})
    claims = json.loads(token.claims)
    assert claims["sub"] == f"system:serviceaccount:{stack.ns}:workload"
    assert claims["client_id"] == creds["client_id"] and claims["scope"] == "read"
    assert claims["idp"] == f"{stack.ns}/cluster-sa"


def test_tokens_for_another_audience_or_client_are_refused(stack):
    creds = stack.credentials("web-credentials")
    wrong_aud = stack.exchange(creds, stack.sa_token("workload", audience="someone-else"), audience=API)
    assert wrong_aud.status_code == 400 and wrong_aud.json()["error"] == "invalid_grant"
    bad_client = stack.exchange({**creds, "client_secret": "not-the-secret"}, stack.sa_token("workload"))
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    assert bad_client.headers["www-authenticate"].startswith("Basic")


def test_rotated_secret_works_and_old_one_keeps_working_during_grace(stack):
    old = stack.credentials("web-credentials")
    stack.cp.kubectl("annotate", "oauthapplication", "web", "-n", stack.ns, "--overwrite",
                     f"{api.ANNOTATION_ROTATE_SECRET}=e2e-1")
    wait_for(lambda: stack.credentials("web-credentials")["client_secret"] != old["client_secret"], 30,
             "a rotated client secret")
    new = stack.credentials("web-credentials")
    assert new["client_id"] == old["client_id"]
    subject = stack.sa_token("workload")
    wait_for(lambda: stack.exchange(new, subject, audience=API).status_code == 200, 5, "the new secret accepted")
    assert stack.exchange(old, subject, audience=API).status_code == 200  # grace window


def test_changes_take_effect_within_two_seconds(stack):
    creds = stack.credentials("web-credentials")
    subject = stack.sa_token("workload")
    other = "https://other.e2e.test"
    assert stack.exchange(creds, subject, audience=other).status_code == 200
    stack.cp.kubectl("patch", "oauthapplication", "web", "-n", stack.ns, "--type=merge",
                     "-p", json.dumps({"spec": {"audiences": [API]}}))
    took = wait_for(lambda: stack.exchange(creds, subject, audience=other).status_code == 400, 2.0,
                    "the removed audience refused")
    assert stack.exchange(creds, subject, audience=other).json()["error"] == "invalid_target", took

    stack.cp.kubectl("delete", api.KIND_IDP.lower(), "cluster-sa", "-n", stack.ns, "--wait=false")
    wait_for(lambda: stack.exchange(creds, subject, audience=API).status_code == 400, 2.0,
             "the deleted identity provider refused")
    assert stack.exchange(creds, subject, audience=API).json()["error"] == "invalid_grant"
