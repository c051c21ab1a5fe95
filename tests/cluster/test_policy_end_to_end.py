"""Policy end to end on the real control plane: ``tokenbridge operator`` + ``tokenbridge serve --kubernetes``, with
ServiceAccount tokens minted by the kube-apiserver (TokenRequest, ES256, each with its own jti).

A CEL condition admits one ServiceAccount and refuses another; claim mappings appear in the issued token; a
replayed jti is refused (preventReplay); explain tells, step by step, why; delegation takes an actor token from a
second issuer (an inline-JWKS IdP) into act.
"""

from __future__ import annotations

import json
import uuid

import httpx
import jwt
import pytest

from tests.support.deployment import TOKENBRIDGE, Stack, deployed, http_ok
from tests.support.idp import IdP
from tests.support.waiting import wait_for
from tokenbridge import api

pytestmark = pytest.mark.cluster

AUDIENCE = "tokenbridge-policy-e2e"
API = "https://api.policy-e2e.test"
ROBOTS = "https://robots.policy-e2e.test"


@pytest.fixture(scope="module")
def robots() -> IdP:
    return IdP(ROBOTS, "ES256")


def robot_token(robots: IdP, sub: str = "robot-1") -> str:
    return robots.mint({"sub": sub, "aud": AUDIENCE, "jti": uuid.uuid4().hex})


@pytest.fixture(scope="module")
def stack(control_plane, tmp_path_factory, robots):
    cp = control_plane
    with deployed(cp, tmp_path_factory.mktemp("policy-e2e-logs"), "policy") as s:
        ns = s.ns
        s.apply(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_IDP,
                "metadata": {"name": "cluster-sa"},
                "spec": {
                    "type": api.IDP_KUBERNETES,
                    "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                    "allowedAudiences": [AUDIENCE],
                    "condition": "assertion['kubernetes.io'].serviceaccount.name == 'alice'",
                    "claimMappings": {
                        "sub": "'k8s:' + assertion['kubernetes.io'].namespace + ':' + "
                        "assertion['kubernetes.io'].serviceaccount.name",
                        "k8s_namespace": "assertion['kubernetes.io'].namespace",
                    },
                    "requireJTI": True,
                    "preventReplay": True,
                },
            }
        )
        s.apply(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_IDP,
                "metadata": {"name": "robots"},
                "spec": {
                    "type": api.IDP_OIDC,
                    "issuer": ROBOTS,
                    "jwks": robots.jwks(),
                    "allowedAudiences": [AUDIENCE],
                    "allowedAlgorithms": ["ES256"],
                    "condition": "assertion.sub.startsWith('robot-')",
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
                    "identityProviders": [{"name": "cluster-sa"}, {"name": "robots"}],
                    "audiences": [API],
                    "scopes": ["read", "write"],
                    "delegation": True,
                    "condition": "request.scope.all(s, s != 'write') && request.namespace == '" + ns + "'",
                    "credentials": {"secretName": "web-credentials"},
                },
            }
        )
        for sa in ("alice", "bob"):
            cp.kubectl("create", "serviceaccount", sa, "-n", ns)
        for kind, name in ((api.KIND_IDP, "cluster-sa"), (api.KIND_IDP, "robots"), (api.KIND_APP, "web")):
            wait_for(lambda kind=kind, name=name: s.ready(kind, name), 60, f"{kind} {name} Ready")
        wait_for(lambda: http_ok(f"{s.base}/readyz"), 60, "server ready")
        creds = s.credentials("web-credentials")
        # the server picks the application up from the watch shortly after the operator published it
        wait_for(
            lambda: s.exchange(creds, s.sa_token("alice", AUDIENCE), scope="read").status_code == 200,
            10,
            "a first exchange",
        )
        yield s


def exchange(stack: Stack, subject: str, **extra) -> httpx.Response:
    return stack.exchange(stack.credentials("web-credentials"), subject, audience=API, **extra)


def claims(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return jwt.decode(resp.json()["access_token"], options={"verify_signature": False})


def test_condition_admits_one_service_account_and_refuses_another(stack):
    issued = claims(exchange(stack, stack.sa_token("alice", AUDIENCE), scope="read"))
    assert issued["idp"] == f"{stack.ns}/cluster-sa"
    refused = exchange(stack, stack.sa_token("bob", AUDIENCE), scope="read")
    assert refused.status_code == 400 and refused.json() == {
        "error": "invalid_grant",
        "error_description": f"the condition of identity provider {stack.ns}/cluster-sa refused the request",
    }


def test_application_condition_sees_the_requested_scope(stack):
    refused = exchange(stack, stack.sa_token("alice", AUDIENCE), scope="read write")
    assert refused.status_code == 400
    assert refused.json()["error_description"] == f"the condition of application {stack.ns}/web refused the request"


def test_mapped_claims_appear_in_the_issued_token(stack):
    issued = claims(exchange(stack, stack.sa_token("alice", AUDIENCE), scope="read"))
    assert issued["sub"] == f"k8s:{stack.ns}:alice"
    assert issued["k8s_namespace"] == stack.ns
    assert issued["iss"] == stack.base and issued["aud"] == API


def test_a_replayed_service_account_token_is_refused(stack):
    subject = stack.sa_token("alice", AUDIENCE)
    assert jwt.decode(subject, options={"verify_signature": False}).get("jti"), "TokenRequest tokens carry a jti"
    assert exchange(stack, subject, scope="read").status_code == 200
    for _ in range(4):  # whichever of the two workers answers
        replayed = exchange(stack, subject, scope="read")
        assert replayed.status_code == 400, replayed.text
        assert replayed.json()["error_description"] == "the subject_token was already used (replayed jti)"
    scrape = httpx.get(f"{stack.base}/metrics").text
    assert f'tokenbridge_replay_rejections_total{{idp="{stack.ns}/cluster-sa"}} 4.0' in scrape


def test_explain_via_the_endpoint(stack):
    creds = stack.credentials("web-credentials")

    def explain(subject: str) -> dict:
        resp = httpx.post(
            f"{stack.base}/oauth2/explain",
            auth=(creds["client_id"], creds["client_secret"]),
            data={
                "grant_type": api.GRANT_TOKEN_EXCHANGE,
                "subject_token": subject,
                "subject_token_type": api.TOKEN_TYPE_JWT,
                "audience": API,
                "scope": "read",
            },
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        for part in subject.split("."):
            assert part not in resp.text
        assert creds["client_secret"] not in resp.text
        return resp.json()

    alice = stack.sa_token("alice", AUDIENCE)
    accepted = explain(alice)
    assert accepted["decision"] == "issue", accepted
    steps = {s["step"]: s for s in accepted["steps"]}
    assert steps["subject_token.signature"]["result"] == "pass"
    assert steps["replay"]["detail"].startswith("jti not used before")
    assert accepted["token"]["sub"] == f"k8s:{stack.ns}:alice" and "k8s_namespace" in accepted["token"]["claims"]
    assert exchange(stack, alice, scope="read").status_code == 200  # explain consumed nothing

    refused = explain(stack.sa_token("bob", AUDIENCE))
    assert refused["decision"] == "refused" and refused["steps"][-1]["step"] == "subject_token.condition"
    assert refused["steps"][-1]["result"] == "fail"


def test_delegation_with_an_actor_from_a_second_issuer(stack, robots):
    actor = robot_token(robots)
    issued = claims(
        exchange(
            stack,
            stack.sa_token("alice", AUDIENCE),
            scope="read",
            actor_token=actor,
            actor_token_type=api.TOKEN_TYPE_JWT,
        )
    )
    assert issued["sub"] == f"k8s:{stack.ns}:alice"
    assert issued["act"] == {"sub": "robot-1", "iss": ROBOTS}
    refused = exchange(
        stack,
        stack.sa_token("alice", AUDIENCE),
        scope="read",
        actor_token=robot_token(robots, sub="human"),
        actor_token_type=api.TOKEN_TYPE_JWT,
    )
    assert refused.status_code == 400
    assert (
        refused.json()["error_description"]
        == f"the condition of identity provider {stack.ns}/robots refused the request"
    )


def test_explain_cli_against_the_cluster(stack):
    """``tokenbridge explain --kubeconfig``: the server's pipeline in-process on what the operator reconciled."""
    import subprocess

    def explain(sa: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                TOKENBRIDGE,
                "explain",
                "--kubeconfig",
                str(stack.cp.kubeconfig),
                "--app",
                "web",
                "-n",
                stack.ns,
                "--token",
                "-",
                "--audience",
                API,
                "--scope",
                "read",
                "--json",
            ],
            input=stack.sa_token(sa, AUDIENCE),
            capture_output=True,
            text=True,
            timeout=60,
        )

    accepted = explain("alice")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    report = json.loads(accepted.stdout)
    assert report["decision"] == "issue" and report["token"]["sub"] == f"k8s:{stack.ns}:alice"
    assert {s["step"]: s["result"] for s in report["steps"]}["replay"] == "skip"
    refused = explain("bob")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["steps"][-1] == {
        "step": "subject_token.condition",
        "result": "fail",
        "detail": f"the condition of identity provider {stack.ns}/cluster-sa refused the request",
    }
