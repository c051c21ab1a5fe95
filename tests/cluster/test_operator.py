"""The operator against the real control plane, driven by kopf's KopfRunner (in this process, one run per test).

Local HTTPS IdPs (trustme certificates) serve Okta-, Entra- and Auth0-shaped discovery; the API server's own
ServiceAccount issuer is a ``type: Kubernetes`` provider. Intervals are shortened through the same
``TOKENBRIDGE_*`` variables a deployment uses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from kopf.testing import KopfRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.support.idp import HttpsIdP
from tests.support.processes import free_port
from tests.support.waiting import wait_for
from tokenbridge.client_secrets import hash_client_secret
from tokenbridge.signing import SigningKeySet
from tokenbridge_operator.main import serve_cluster_identity_providers

pytestmark = pytest.mark.cluster

ENV = {
    "TOKENBRIDGE_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
    "TOKENBRIDGE_PUBLIC_ISSUER": "https://tokens.example.test",
    "TOKENBRIDGE_IDP_REFRESH_INTERVAL": "3s",
    "TOKENBRIDGE_RETRY_BACKOFF": "1s",
    "TOKENBRIDGE_APP_RECHECK_INTERVAL": "10m",  # so that prompt re-checks can only come from IdP readiness changes
    "TOKENBRIDGE_SECRET_ROTATION_GRACE": "6s",
    "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": "tokenbridge",
    "TOKENBRIDGE_SIGNING_ROTATION_PERIOD": "8s",
    "TOKENBRIDGE_SIGNING_PUBLISH_LEAD": "2s",
    "TOKENBRIDGE_MAX_TOKEN_LIFETIME": "30s",
    "TOKENBRIDGE_SIGNING_CHECK_INTERVAL": "1s",
    "TOKENBRIDGE_METRICS_PORT": "0",  # off, except where a test sets a free port
}
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.fixture(scope="module")
def cluster(control_plane):
    saved = {k: os.environ.get(k) for k in [*ENV, "KUBECONFIG"]}
    os.environ.update(ENV, KUBECONFIG=str(control_plane.kubeconfig))
    serve_cluster_identity_providers()  # what `tokenbridge operator` does by default
    control_plane.kubectl("create", "namespace", "tokenbridge", check=False)
    yield control_plane
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    release_and_delete(cluster, name)


def release_and_delete(cluster, namespace):
    """Delete a test namespace although the operator (which would remove its finalizers) has stopped."""
    for kind in ("oauthapplications", "identityproviders"):
        names = cluster.kubectl("get", kind, "-n", namespace, "-o", "name", check=False).stdout.split()
        for name in names:
            cluster.kubectl(
                "patch", name, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False
            )
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@contextlib.contextmanager
def operator():
    with KopfRunner(
        [
            "run",
            "--all-namespaces",
            "--standalone",
            "--log-format=json",
            "--verbose",
            "-m",
            "tokenbridge_operator.main",
        ],
        timeout=60,
    ) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def apply(cluster, obj):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def get(cluster, kind, name, namespace=None):
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    proc = cluster.kubectl(*args, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def condition(obj, type_):
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return None


def wait_ready(cluster, kind, name, namespace=None, status="True", reason=None, timeout=30.0):
    def check():
        obj = get(cluster, kind, name, namespace)
        ready = condition(obj, "Ready")
        if ready and ready["status"] == status and (reason is None or ready["reason"] == reason):
            return obj
        return None

    return wait_for(check, timeout, f"{kind} {name} Ready={status} {reason or ''}", interval=0.3)


def remove_cluster_identity_provider(cluster, name):
    """Delete a test's ClusterIdentityProvider at once: no operator may be left to release its finalizer."""
    cluster.kubectl("delete", "clusteridentityprovider", name, "--wait=false", check=False)
    cluster.kubectl(
        "patch", "clusteridentityprovider", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False
    )


def events(cluster, name, namespace):
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return [(e["type"], e["reason"], e.get("message", "")) for e in json.loads(out.stdout)["items"]]


def idp(name, namespace, server, type_, **spec):
    body = {
        "type": type_,
        "wellKnownURL": server.well_known_url,
        "tls": {"caBundle": server.ca_pem},
        "allowedAudiences": ["api://tokenbridge"],
        **spec,
    }
    return {
        "apiVersion": "tokenbridge.dev/v1alpha1",
        "kind": "IdentityProvider",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def app(name, namespace, secret, grants=(CLIENT_CREDENTIALS,), idps=(), annotations=None, **spec):
    return {
        "apiVersion": "tokenbridge.dev/v1alpha1",
        "kind": "OAuthApplication",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {
            "grantTypes": list(grants),
            "identityProviders": list(idps),
            "credentials": {"secretName": secret},
            **spec,
        },
    }


def secret_values(cluster, name, namespace):
    obj = get(cluster, "secret", name, namespace)
    if obj is None:
        return None
    return {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}


# --- identity providers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, type_",
    [("okta", "Okta"), ("entra", "MicrosoftEntraID"), ("entra-v1", "MicrosoftEntraID"), ("auth0", "Auth0")],
)
def test_provider_shapes_are_discovered(cluster, namespace, kind, type_):
    with HttpsIdP(kind) as server, operator():
        apply(cluster, idp("corp", namespace, server, type_))
        obj = wait_ready(cluster, "identityprovider", "corp", namespace)
    status = obj["status"]
    assert status["issuer"] == server.issuer
    assert status["jwksURI"] == server.jwks_uri and status["tokenEndpoint"] == server.token_endpoint
    assert status["keyCount"] == 1 and status["stale"] is False
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert datetime.fromisoformat(status["discoveredAt"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert condition(obj, "Discovered")["status"] == "True" and condition(obj, "KeysAvailable")["status"] == "True"
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in status["conditions"])
    if kind.startswith("entra"):
        assert "{tenantid}" in status["issuer"]
    wait_for(
        lambda: ("Normal", "Ready") in [e[:2] for e in events(cluster, "corp", namespace)],
        30.0,
        "a Ready event",
        interval=0.3,
    )


def test_kubernetes_serviceaccount_issuer(cluster, monkeypatch):
    # No allow-list at all: the operator's own API server is reached with its own credentials although loopback.
    monkeypatch.setenv("TOKENBRIDGE_ALLOWED_NETWORKS", "")
    name = f"cluster-sa-{uuid.uuid4().hex[:6]}"
    try:
        with operator():
            apply(
                cluster,
                {
                    "apiVersion": "tokenbridge.dev/v1alpha1",
                    "kind": "ClusterIdentityProvider",
                    "metadata": {"name": name},
                    "spec": {
                        "type": "Kubernetes",
                        "allowedAudiences": ["tokenbridge"],
                        "wellKnownURL": cluster.issuer + "/.well-known/openid-configuration",
                    },
                },
            )
            obj = wait_ready(cluster, "clusteridentityprovider", name)
    finally:
        remove_cluster_identity_provider(cluster, name)
    assert obj["status"]["issuer"] == cluster.issuer
    assert obj["status"]["jwksURI"] == cluster.issuer + "/openid/v1/jwks"
    assert obj["status"]["keyCount"] >= 1


def test_outage_marks_stale_then_recovers(cluster, namespace):
    with HttpsIdP("okta") as server, operator():
        apply(cluster, idp("flaky", namespace, server, "Okta"))
        good = wait_ready(cluster, "identityprovider", "flaky", namespace)["status"]
        server.fail(None)  # connections dropped: unreachable
        down = wait_ready(cluster, "identityprovider", "flaky", namespace, "False", "DiscoveryUnavailable")["status"]
        assert down["stale"] is True
        assert (down["issuer"], down["jwksURI"], down["keyCount"], down["discoveredAt"]) == (
            good["issuer"],
            good["jwksURI"],
            good["keyCount"],
            good["discoveredAt"],
        )
        assert condition({"status": down}, "Discovered")["reason"] == "DiscoveryUnavailable"
        server.recover()
        up = wait_ready(cluster, "identityprovider", "flaky", namespace)["status"]
        assert up["stale"] is False and up["discoveredAt"] >= good["discoveredAt"]
        seen = wait_for(
            lambda: (
                lambda e: (
                    e if {("Warning", "DiscoveryUnavailable"), ("Normal", "Ready")} <= {x[:2] for x in e} else None
                )
            )(events(cluster, "flaky", namespace)),
            30.0,
            "outage and recovery events",
            interval=0.3,
        )
    assert all("Bearer" not in message for _, _, message in seen)


def test_keys_outage_is_reported_on_keys_available(cluster, namespace):
    with HttpsIdP("auth0") as server, operator():
        server.routes["/.well-known/jwks.json"] = (503, {}, {})
        apply(cluster, idp("nokeys", namespace, server, "Auth0"))
        obj = wait_ready(cluster, "identityprovider", "nokeys", namespace, "False", "JWKSUnavailable")
        assert condition(obj, "Discovered")["status"] == "True"
        assert condition(obj, "KeysAvailable")["reason"] == "JWKSUnavailable"


def test_ssrf_targets_are_refused(cluster, namespace):
    with operator():
        for name, url in (
            ("metadata", "https://169.254.169.254/.well-known/openid-configuration"),
            ("private", "https://10.0.0.1/.well-known/openid-configuration"),
        ):
            apply(
                cluster,
                {
                    "apiVersion": "tokenbridge.dev/v1alpha1",
                    "kind": "IdentityProvider",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"type": "OIDC", "wellKnownURL": url, "allowedAudiences": ["a"]},
                },
            )
        for name in ("metadata", "private"):
            obj = wait_ready(cluster, "identityprovider", name, namespace, "False", "BlockedAddress")
            assert condition(obj, "Discovered")["reason"] == "BlockedAddress"
            assert "stale" in obj["status"] and obj["status"]["stale"] is False and "issuer" not in obj["status"]


def test_invalid_document_fails_until_the_spec_changes(cluster, namespace):
    with HttpsIdP("okta") as server, operator():
        server.document_overrides["issuer"] = "https://somebody-else.example/oauth2/default"
        apply(cluster, idp("mismatch", namespace, server, "Okta"))
        obj = wait_ready(cluster, "identityprovider", "mismatch", namespace, "False", "IssuerMismatch")
        assert "somebody-else.example" in condition(obj, "Ready")["message"]
        wait_for(
            lambda: ("Warning", "IssuerMismatch") in [e[:2] for e in events(cluster, "mismatch", namespace)],
            30.0,
            "an IssuerMismatch warning event",
            interval=0.3,
        )
        apply(
            cluster, idp("mismatch", namespace, server, "Okta", issuer="https://somebody-else.example/oauth2/default")
        )
        obj = wait_ready(cluster, "identityprovider", "mismatch", namespace)
        assert obj["status"]["issuer"] == "https://somebody-else.example/oauth2/default"
        assert obj["status"]["observedGeneration"] == 2


# --- applications --------------------------------------------------------------------------------------------


def test_credentials_created_once_and_stable_across_restarts(cluster, namespace):
    with operator():
        apply(cluster, app("svc", namespace, "svc-credentials"))
        obj = wait_ready(cluster, "oauthapplication", "svc", namespace)
    first = secret_values(cluster, "svc-credentials", namespace)
    status = obj["status"]
    assert first["client_id"] == status["clientID"] and first["client_id"].startswith("tb-")
    assert len(first["client_secret"]) >= 43
    assert first["token_endpoint"] == "https://tokens.example.test/oauth2/token"
    assert status["clientSecretHash"] == hash_client_secret(first["client_secret"])
    assert status["credentialsSecret"] == "svc-credentials"
    assert first["client_secret"] not in json.dumps(obj)
    secret = get(cluster, "secret", "svc-credentials", namespace)
    owner = secret["metadata"]["ownerReferences"]
    assert owner == [
        {
            "apiVersion": "tokenbridge.dev/v1alpha1",
            "kind": "OAuthApplication",
            "name": "svc",
            "uid": obj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    version = secret["metadata"]["resourceVersion"]

    with operator():
        apply(cluster, app("svc", namespace, "svc-credentials", description="an unrelated edit"))
        wait_for(
            lambda: get(cluster, "oauthapplication", "svc", namespace)["status"].get("observedGeneration") == 2,
            30.0,
            "the edit to be handled",
            interval=0.3,
        )
        time.sleep(3)  # a few timer ticks
    assert secret_values(cluster, "svc-credentials", namespace) == first
    assert get(cluster, "secret", "svc-credentials", namespace)["metadata"]["resourceVersion"] == version
    after = get(cluster, "oauthapplication", "svc", namespace)["status"]
    assert (after["clientID"], after["clientSecretHash"]) == (status["clientID"], status["clientSecretHash"])
    assert [e[1] for e in events(cluster, "svc", namespace)].count("CredentialsCreated") == 1


def test_rotation_keeps_the_previous_secret_for_the_grace_period(cluster, namespace):
    with operator():
        apply(cluster, app("rot", namespace, "rot-credentials"))
        before = wait_ready(cluster, "oauthapplication", "rot", namespace)["status"]
        old = secret_values(cluster, "rot-credentials", namespace)
        cluster.kubectl("annotate", "oauthapplication", "rot", "-n", namespace, "tokenbridge.dev/rotate-secret=1")
        during = wait_for(
            lambda: (lambda s: s if s.get("previousClientSecretHash") else None)(
                get(cluster, "oauthapplication", "rot", namespace)["status"]
            ),
            30.0,
            "rotation",
            interval=0.3,
        )
        new = secret_values(cluster, "rot-credentials", namespace)
        assert new["client_id"] == old["client_id"] and new["client_secret"] != old["client_secret"]
        assert during["clientID"] == before["clientID"]
        assert during["previousClientSecretHash"] == before["clientSecretHash"]
        assert during["clientSecretHash"] == hash_client_secret(new["client_secret"])
        expires = datetime.fromisoformat(during["previousClientSecretExpiresAt"].replace("Z", "+00:00"))
        assert 0 < (expires - datetime.now(UTC)).total_seconds() <= 7
        after = wait_for(
            lambda: (lambda s: s if "previousClientSecretHash" not in s else None)(
                get(cluster, "oauthapplication", "rot", namespace)["status"]
            ),
            20,
            "the grace window to end",
            interval=0.3,
        )
        assert "previousClientSecretExpiresAt" not in after
        assert after["clientSecretHash"] == during["clientSecretHash"]
        # the same annotation value again is not a new rotation
        cluster.kubectl(
            "annotate",
            "oauthapplication",
            "rot",
            "-n",
            namespace,
            "--overwrite",
            "tokenbridge.dev/rotate-secret=1",
            "unrelated=yes",
        )
        time.sleep(3)
        assert secret_values(cluster, "rot-credentials", namespace) == new
    reasons = [e[1] for e in events(cluster, "rot", namespace)]
    assert reasons.count("CredentialsRotated") == 1 and "RotationGraceEnded" in reasons


def test_secret_is_garbage_collected_with_the_application(cluster, namespace):
    with operator():
        apply(cluster, app("gone", namespace, "gone-credentials"))
        wait_ready(cluster, "oauthapplication", "gone", namespace)
        cluster.kubectl("delete", "oauthapplication", "gone", "-n", namespace)
    wait_for(
        lambda: get(cluster, "secret", "gone-credentials", namespace) is None,
        60,
        "garbage collection of the Secret",
        interval=0.3,
    )


def test_foreign_secret_is_not_taken_over(cluster, namespace):
    cluster.kubectl("create", "secret", "generic", "taken", "-n", namespace, "--from-literal=client_secret=mine")
    with operator():
        apply(cluster, app("squatter", namespace, "taken"))
        obj = wait_ready(cluster, "oauthapplication", "squatter", namespace, "False", "SecretConflict")
    assert secret_values(cluster, "taken", namespace) == {"client_secret": "mine"}
    assert "clientID" not in obj["status"]


def test_references_cross_namespace_refused_and_readiness_followed(cluster, namespace):
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    cidp = f"cidp-{namespace}"
    try:
        with HttpsIdP("okta") as server, operator():
            apply(cluster, idp("okta", other, server, "Okta"))
            wait_ready(cluster, "identityprovider", "okta", other)
            apply(
                cluster,
                app(
                    "xns",
                    namespace,
                    "xns-credentials",
                    grants=(TOKEN_EXCHANGE,),
                    idps=[{"kind": "IdentityProvider", "name": "okta"}],
                ),
            )
            obj = wait_ready(cluster, "oauthapplication", "xns", namespace, "False", "IdentityProviderNotFound")
            refs = condition(obj, "ReferencesResolved")
            assert refs["status"] == "False" and f"IdentityProvider {namespace}/okta not found" in refs["message"]
            assert condition(obj, "CredentialsReady")["status"] == "True"

            server.fail(503)
            apply(
                cluster,
                {
                    "apiVersion": "tokenbridge.dev/v1alpha1",
                    "kind": "ClusterIdentityProvider",
                    "metadata": {"name": cidp},
                    "spec": {
                        "type": "Okta",
                        "wellKnownURL": server.well_known_url,
                        "tls": {"caBundle": server.ca_pem},
                        "allowedAudiences": ["a"],
                    },
                },
            )
            apply(
                cluster,
                app(
                    "follows",
                    namespace,
                    "follows-credentials",
                    grants=(TOKEN_EXCHANGE,),
                    idps=[{"kind": "ClusterIdentityProvider", "name": cidp}],
                ),
            )
            obj = wait_ready(cluster, "oauthapplication", "follows", namespace, "False", "IdentityProviderNotReady")
            assert cidp in condition(obj, "Ready")["message"]
            server.recover()
            # the application re-check interval is 10m: only the IdP's readiness change can make this prompt
            wait_ready(cluster, "oauthapplication", "follows", namespace, timeout=30)
    finally:
        release_and_delete(cluster, other)
        remove_cluster_identity_provider(cluster, cidp)


def test_applications_created_with_their_idp_become_ready_without_waiting_for_a_recheck(cluster, namespace):
    """Applications reconciled while their IdP's Ready status is being written must still follow it promptly.

    The IdP handler's status patch lands only after the handler returns; an application read in between sees the
    IdP not Ready. Its prompt re-check must come from the IdP's status as watched (the re-check interval is 10m).
    """
    names = [f"burst-{i}" for i in range(12)]
    with HttpsIdP("okta") as server, operator():
        for round_ in range(2):
            objs = [idp(f"okta-{round_}", namespace, server, "Okta")]
            objs += [
                app(
                    f"{n}-{round_}",
                    namespace,
                    f"{n}-{round_}-credentials",
                    grants=(TOKEN_EXCHANGE,),
                    idps=[{"name": f"okta-{round_}"}],
                )
                for n in names
            ]
            apply(cluster, {"apiVersion": "v1", "kind": "List", "items": objs})
        for round_ in range(2):
            for n in names:
                wait_ready(cluster, "oauthapplication", f"{n}-{round_}", namespace, timeout=30)


# --- signing keys --------------------------------------------------------------------------------------------


def test_signing_keys_rotate_and_old_keys_stay_published(cluster):
    def keyset():
        obj = get(cluster, "secret", "tokenbridge-signing-keys", "tokenbridge")
        return SigningKeySet.from_secret_data(obj["data"]) if obj else None

    with operator():
        first = wait_for(keyset, 30.0, "the signing key Secret", interval=0.3)
        first_kid = first.active(time.time()).kid
        rotated = wait_for(
            lambda: (lambda ks: ks if ks and ks.active(time.time()).kid != first_kid else None)(keyset()),
            30,
            "a rotation",
            interval=0.3,
        )
    now = time.time()
    published = [k["kid"] for k in rotated.jwks(now)["keys"]]
    assert first_kid in published, "a retired key stays published until its tokens have expired"
    assert rotated.active(now).kid in published
    assert all(k["kid"] for k in rotated.jwks(now)["keys"])
    assert not any("d" in k for k in rotated.jwks(now)["keys"]), "no private key material is published"


# --- CEL expressions -------------------------------------------------------------------------------------------


def test_invalid_identity_provider_expression_until_the_spec_is_fixed(cluster, namespace):
    with HttpsIdP("okta") as server, operator():
        apply(cluster, idp("cel", namespace, server, "Okta", condition="assertion.sub +"))
        obj = wait_ready(cluster, "identityprovider", "cel", namespace, "False", "InvalidExpression")
        message = condition(obj, "Ready")["message"]
        assert message.startswith("spec.condition: ") and "syntax error" in message
        assert obj["status"]["observedGeneration"] == 1 and condition(obj, "Ready")["observedGeneration"] == 1
        wait_for(
            lambda: ("Warning", "InvalidExpression") in [e[:2] for e in events(cluster, "cel", namespace)],
            30.0,
            "an InvalidExpression warning event",
            interval=0.3,
        )
        time.sleep(4)  # a refresh interval (3s): still not discovered, still one Event
        assert server.requests == [], "a spec with an invalid expression is not discovered"
        assert [e[1] for e in events(cluster, "cel", namespace)].count("InvalidExpression") == 1

        apply(
            cluster,
            idp(
                "cel",
                namespace,
                server,
                "Okta",
                condition="assertion.sub != ''",
                claimMappings={"sub": "'okta:' + assertion.sub"},
            ),
        )
        obj = wait_ready(cluster, "identityprovider", "cel", namespace)
        assert obj["status"]["observedGeneration"] == 2 and obj["status"]["issuer"] == server.issuer
        wait_for(
            lambda: ("Normal", "Ready") in [e[:2] for e in events(cluster, "cel", namespace)],
            30.0,
            "a Ready event",
            interval=0.3,
        )


def test_invalid_cluster_identity_provider_claim_mapping(cluster):
    name = f"cel-{uuid.uuid4().hex[:6]}"
    try:
        with HttpsIdP("okta") as server, operator():
            apply(
                cluster,
                {
                    "apiVersion": "tokenbridge.dev/v1alpha1",
                    "kind": "ClusterIdentityProvider",
                    "metadata": {"name": name},
                    "spec": {
                        "type": "Okta",
                        "wellKnownURL": server.well_known_url,
                        "tls": {"caBundle": server.ca_pem},
                        "allowedAudiences": ["a"],
                        "claimMappings": {"iss": "'https://forged.example'"},
                    },
                },
            )
            obj = wait_ready(cluster, "clusteridentityprovider", name, None, "False", "InvalidExpression")
    finally:
        remove_cluster_identity_provider(cluster, name)
    assert condition(obj, "Ready")["message"].startswith("spec.claimMappings['iss']: ")


def test_invalid_application_condition_until_the_spec_is_fixed(cluster, namespace):
    with operator():
        apply(cluster, app("cond", namespace, "cond-credentials", condition="request.client_id"))
        obj = wait_ready(cluster, "oauthapplication", "cond", namespace, "False", "InvalidExpression")
        message = condition(obj, "Ready")["message"]
        assert message.startswith("spec.condition: ") and "must evaluate to a bool" in message
        assert obj["status"]["observedGeneration"] == 1 and "clientID" not in obj["status"]
        assert get(cluster, "secret", "cond-credentials", namespace) is None, "nothing is done before it compiles"
        wait_for(
            lambda: ("Warning", "InvalidExpression") in [e[:2] for e in events(cluster, "cond", namespace)],
            30.0,
            "an InvalidExpression warning event",
            interval=0.3,
        )

        apply(cluster, app("cond", namespace, "cond-credentials", condition=f"request.namespace == '{namespace}'"))
        obj = wait_ready(cluster, "oauthapplication", "cond", namespace)
    assert obj["status"]["observedGeneration"] == 2
    assert secret_values(cluster, "cond-credentials", namespace)["client_id"] == obj["status"]["clientID"]


# --- metrics ---------------------------------------------------------------------------------------------------


def scrape(port):
    """Every sample of the operator's /metrics endpoint as {(name, sorted label items): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def reconciliations(samples, kind, result):
    return samples[("tokenbridge_operator_reconciliations_total", (("kind", kind), ("result", result)))]


def test_metrics_endpoint_counts_reconciliations(cluster, namespace, monkeypatch):
    port = free_port()
    monkeypatch.setenv("TOKENBRIDGE_METRICS_PORT", str(port))
    with HttpsIdP("okta") as server, operator():
        before = wait_for(lambda: _try_scrape(port), 30.0, "the metrics endpoint", interval=0.3)
        apply(cluster, idp("good", namespace, server, "Okta"))
        apply(cluster, idp("bad", namespace, server, "Okta", condition="assertion.sub +"))
        apply(
            cluster,
            {
                "apiVersion": "tokenbridge.dev/v1alpha1",
                "kind": "IdentityProvider",
                "metadata": {"name": "blocked", "namespace": namespace},
                "spec": {
                    "type": "OIDC",
                    "wellKnownURL": "https://10.0.0.1/.well-known/openid-configuration",
                    "allowedAudiences": ["a"],
                },
            },
        )
        apply(cluster, app("ok", namespace, "ok-credentials"))
        apply(cluster, app("typo", namespace, "typo-credentials", condition="'yes'"))
        wait_ready(cluster, "identityprovider", "good", namespace)
        wait_ready(cluster, "identityprovider", "bad", namespace, "False", "InvalidExpression")
        wait_ready(cluster, "identityprovider", "blocked", namespace, "False", "BlockedAddress")
        wait_ready(cluster, "oauthapplication", "ok", namespace)
        wait_ready(cluster, "oauthapplication", "typo", namespace, "False", "InvalidExpression")
        after = scrape(port)

    def delta(kind, result):
        return reconciliations(after, kind, result) - reconciliations(before, kind, result)

    assert delta("IdentityProvider", "success") >= 1
    assert delta("IdentityProvider", "permanent_error") >= 2  # the invalid expression and the blocked address
    assert delta("OAuthApplication", "success") >= 1 and delta("OAuthApplication", "permanent_error") >= 1
    failures = ("tokenbridge_operator_discovery_failures_total", (("reason", "BlockedAddress"),))
    assert after[failures] - before.get(failures, 0.0) >= 1
    keys = (
        "tokenbridge_operator_identity_provider_keys",
        (("kind", "IdentityProvider"), ("name", "good"), ("namespace", namespace)),
    )
    assert after[keys] == 1
    assert 0 <= after[("tokenbridge_operator_signing_key_age_seconds", ())] < 60
    with pytest.raises(httpx.ConnectError):  # stopped with the operator
        scrape(port)


def _try_scrape(port):
    try:
        return scrape(port)
    except httpx.ConnectError:
        return None


def test_a_metrics_port_in_use_stops_the_operator(cluster, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TOKENBRIDGE_METRICS_PORT", str(port))
        with KopfRunner(
            ["run", "--all-namespaces", "--standalone", "--log-format=json", "-m", "tokenbridge_operator.main"],
            timeout=60,
            reraise=False,
        ) as runner:
            result = runner.future.result(timeout=30)  # exits by itself; a TimeoutError if it kept running
    assert result.exit_code != 0
    assert f"TOKENBRIDGE_METRICS_PORT={port}" in runner.output
