"""End to end on the real control plane, every part real: ``tokenbridge operator`` reconciles the resources,
``tokenbridge serve --kubernetes`` reads what it published, and a workload's ServiceAccount token, minted by the
kube-apiserver with TokenRequest, is exchanged; the issued token is verified by an independent JOSE library
(jwcrypto) through our discovery document and JWKS, the way a resource server would.
"""

from __future__ import annotations

import json

import httpx
import pytest
from jwcrypto import jwk
from jwcrypto import jwt as jose_jwt

from tests.support.deployment import deployed, http_ok
from tests.support.waiting import seconds_until, wait_for
from tokenbridge import api

pytestmark = pytest.mark.cluster

AUDIENCE = "tokenbridge-e2e"
API = "https://api.e2e.test"


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory):
    cp = control_plane
    with deployed(cp, tmp_path_factory.mktemp("e2e-logs"), "e2e", TOKENBRIDGE_SECRET_ROTATION_GRACE="10m") as s:
        s.apply(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_IDP,
                "metadata": {"name": "cluster-sa"},
                "spec": {
                    "type": api.IDP_KUBERNETES,
                    "description": "this cluster's ServiceAccount issuer",
                    "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                    "allowedAudiences": [AUDIENCE],
                    "kubernetes": {"useOperatorCredentials": True},
                },
            }
        )
        s.apply(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_APP,
                "metadata": {"name": "web"},
                "spec": {
                    "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                    "identityProviders": [{"kind": api.KIND_IDP, "name": "cluster-sa"}],
                    "audiences": [API, "https://other.e2e.test"],
                    "scopes": ["read", "write"],
                    "accessTokenLifetime": "5m",
                    "credentials": {"secretName": "web-credentials"},
                },
            }
        )
        cp.kubectl("create", "serviceaccount", "workload", "-n", s.ns)
        wait_for(lambda: s.ready(api.KIND_IDP, "cluster-sa"), 60, "IdentityProvider Ready")
        wait_for(lambda: s.ready(api.KIND_APP, "web"), 60, "OAuthApplication Ready")
        wait_for(lambda: http_ok(f"{s.base}/readyz"), 60, "server ready")
        yield s


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
    resp = stack.exchange(creds, stack.sa_token("workload", AUDIENCE), audience=API, scope="read")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == api.TOKEN_TYPE_ACCESS_TOKEN
    assert body["scope"] == "read" and 0 < body["expires_in"] <= 300
    assert resp.headers["cache-control"] == "no-store"

    # A resource server: discovery -> jwks_uri -> verify, with a library that is not the one we sign with.
    discovery = httpx.get(f"{stack.base}/.well-known/openid-configuration").json()
    assert discovery["issuer"] == stack.base
    keys = jwk.JWKSet.from_json(httpx.get(discovery["jwks_uri"]).text)
    token = jose_jwt.JWT(
        jwt=body["access_token"], key=keys, algs=["ES256"], check_claims={"iss": stack.base, "aud": API, "exp": None}
    )
    claims = json.loads(token.claims)
    assert claims["sub"] == f"system:serviceaccount:{stack.ns}:workload"
    assert claims["client_id"] == creds["client_id"] and claims["scope"] == "read"
    assert claims["idp"] == f"{stack.ns}/cluster-sa"


def test_tokens_for_another_audience_or_client_are_refused(stack):
    creds = stack.credentials("web-credentials")
    wrong_aud = stack.exchange(creds, stack.sa_token("workload", "someone-else"), audience=API)
    assert wrong_aud.status_code == 400 and wrong_aud.json()["error"] == "invalid_grant"
    bad_client = stack.exchange({**creds, "client_secret": "not-the-secret"}, stack.sa_token("workload", AUDIENCE))
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    assert bad_client.headers["www-authenticate"].startswith("Basic")


def test_rotated_secret_works_and_old_one_keeps_working_during_grace(stack):
    old = stack.credentials("web-credentials")
    stack.cp.kubectl(
        "annotate", "oauthapplication", "web", "-n", stack.ns, "--overwrite", f"{api.ANNOTATION_ROTATE_SECRET}=e2e-1"
    )
    wait_for(
        lambda: stack.credentials("web-credentials")["client_secret"] != old["client_secret"],
        30,
        "a rotated client secret",
    )
    new = stack.credentials("web-credentials")
    assert new["client_id"] == old["client_id"]
    subject = stack.sa_token("workload", AUDIENCE)
    wait_for(lambda: stack.exchange(new, subject, audience=API).status_code == 200, 5, "the new secret accepted")
    assert stack.exchange(old, subject, audience=API).status_code == 200  # grace window


def test_changes_take_effect_within_two_seconds(stack):
    creds = stack.credentials("web-credentials")
    subject = stack.sa_token("workload", AUDIENCE)
    other = "https://other.e2e.test"
    assert stack.exchange(creds, subject, audience=other).status_code == 200
    stack.cp.kubectl(
        "patch",
        "oauthapplication",
        "web",
        "-n",
        stack.ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"audiences": [API]}}),
    )
    took = seconds_until(
        lambda: stack.exchange(creds, subject, audience=other).status_code == 400, 2.0, "the removed audience refused"
    )
    assert stack.exchange(creds, subject, audience=other).json()["error"] == "invalid_target", took

    stack.cp.kubectl("delete", api.KIND_IDP.lower(), "cluster-sa", "-n", stack.ns, "--wait=false")
    wait_for(
        lambda: stack.exchange(creds, subject, audience=API).status_code == 400,
        2.0,
        "the deleted identity provider refused",
    )
    assert stack.exchange(creds, subject, audience=API).json()["error"] == "invalid_grant"
