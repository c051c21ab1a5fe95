"""Operator metrics as the kopf wiring records them: reconciles by kind and result, discovery failures, keys per
IdP, signing key age, and the /metrics endpoint. Calls ``main``'s reconcile helpers directly with in-memory
Secrets; only ``kopf.event`` (which needs a running operator) is replaced by a recorder."""

import asyncio
import ipaddress
import math
import time

import httpx
import kopf
import pytest
from kubernetes.client import ApiException
from prometheus_client import REGISTRY

from tokenbridge.fetch import FetchPolicy
from tokenbridge_operator import main, metrics
from tokenbridge_operator.config import OperatorConfig
from tokenbridge_operator.handlers.application import ReadinessBoard

CONFIG = OperatorConfig(
    fetch_policy=FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
    signing_secret_namespace="tb",
    signing_secret_name="keys",
)


def value(metric, **labels):
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def reconciliations(kind, result):
    return value("tokenbridge_operator_reconciliations_total", kind=kind, result=result)


class FakeKube:
    """In-memory Secrets and IdPs with the ``Kube`` methods the reconcilers call."""

    timeout = 5.0

    def __init__(self, fail_with=None):
        self.secrets = {}
        self.fail_with = fail_with
        self.custom = self  # lists OAuthApplications like CustomObjectsApi: none publish a client id here

    def list_cluster_custom_object(self, group, version, plural, _request_timeout=None):
        return {"items": []}

    def read_secret(self, namespace, name):
        if self.fail_with is not None:
            raise self.fail_with
        return self.secrets.get((namespace, name))

    def write_secret(self, body, create):
        self.secrets[(body["metadata"]["namespace"], body["metadata"]["name"])] = body

    def get_idp(self, key):
        return None


@pytest.fixture
def posted(monkeypatch):
    events = []
    monkeypatch.setattr(kopf, "event", lambda body, **event: events.append((body["metadata"]["name"], event)))
    return events


def memo(kube=None):
    return kopf.Memo(config=CONFIG, board=ReadinessBoard(), kube=kube or FakeKube())


def idp_body(name, spec, kind="IdentityProvider"):
    metadata = {"name": name, "generation": 1, **({"namespace": "team"} if kind == "IdentityProvider" else {})}
    return {"apiVersion": "tokenbridge.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def app_body(name, **spec):
    return {
        "apiVersion": "tokenbridge.dev/v1alpha1",
        "kind": "OAuthApplication",
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "generation": 1},
        "spec": {"credentials": {"secretName": f"{name}-creds"}, **spec},
    }


def test_identity_provider_results_are_counted_by_kind(okta, posted):
    before = {r: reconciliations("ClusterIdentityProvider", r) for r in ("success", "permanent_error")}
    other_kind = reconciliations("IdentityProvider", "success")
    spec = {"type": "OIDC", "issuer": "https://air.gapped", "jwks": okta.jwks(), "allowedAudiences": ["a"]}
    main._reconcile_idp(idp_body("static", spec, "ClusterIdentityProvider"), kopf.Patch(), memo(), 0)
    assert reconciliations("ClusterIdentityProvider", "success") == before["success"] + 1
    assert reconciliations("IdentityProvider", "success") == other_kind
    assert (
        value(
            "tokenbridge_operator_identity_provider_keys", kind="ClusterIdentityProvider", namespace="", name="static"
        )
        == 1
    )

    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="InvalidExpression: spec.condition"):
        main._reconcile_idp(
            idp_body("bad", {**spec, "condition": "assertion.sub +"}, "ClusterIdentityProvider"), patch, memo(), 0
        )
    assert reconciliations("ClusterIdentityProvider", "permanent_error") == before["permanent_error"] + 1
    ready = next(c for c in patch.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidExpression")
    assert [(name, e["type"], e["reason"]) for name, e in posted] == [
        ("static", "Normal", "Ready"),
        ("bad", "Warning", "InvalidExpression"),
    ]


def test_discovery_failures_are_counted_by_reason(okta, posted):
    unavailable = value("tokenbridge_operator_discovery_failures_total", reason="DiscoveryUnavailable")
    blocked = value("tokenbridge_operator_discovery_failures_total", reason="BlockedAddress")
    temporary = reconciliations("IdentityProvider", "temporary_error")
    permanent = reconciliations("IdentityProvider", "permanent_error")
    okta.fail(None)
    try:
        with pytest.raises(kopf.TemporaryError):
            main._reconcile_idp(
                idp_body(
                    "down", {"type": "Okta", "wellKnownURL": okta.well_known_url, "tls": {"caBundle": okta.ca_pem}}
                ),
                kopf.Patch(),
                memo(),
                0,
            )
    finally:
        okta.recover()
    with pytest.raises(kopf.PermanentError, match="BlockedAddress"):
        main._reconcile_idp(
            idp_body("private", {"type": "OIDC", "wellKnownURL": "https://10.0.0.1/.well-known/openid-configuration"}),
            kopf.Patch(),
            memo(),
            0,
        )
    assert value("tokenbridge_operator_discovery_failures_total", reason="DiscoveryUnavailable") == unavailable + 1
    assert value("tokenbridge_operator_discovery_failures_total", reason="BlockedAddress") == blocked + 1
    assert reconciliations("IdentityProvider", "temporary_error") == temporary + 1
    assert reconciliations("IdentityProvider", "permanent_error") == permanent + 1


def test_an_invalid_expression_is_not_a_discovery_failure(okta, posted):
    total = sum(
        s.value
        for f in REGISTRY.collect()
        if f.name == "tokenbridge_operator_discovery_failures"
        for s in f.samples
        if s.name.endswith("_total")
    )
    okta.requests.clear()
    with pytest.raises(kopf.PermanentError):
        main._reconcile_idp(
            idp_body("bad", {"type": "Okta", "wellKnownURL": okta.well_known_url, "claimMappings": {"exp": "1"}}),
            kopf.Patch(),
            memo(),
            0,
        )
    assert okta.requests == []
    assert (
        sum(
            s.value
            for f in REGISTRY.collect()
            if f.name == "tokenbridge_operator_discovery_failures"
            for s in f.samples
            if s.name.endswith("_total")
        )
        == total
    )


def test_deleting_an_identity_provider_drops_its_key_gauge(okta, posted):
    body = idp_body("gone", {"type": "OIDC", "issuer": "https://air.gapped", "jwks": okta.jwks()})
    main._reconcile_idp(body, kopf.Patch(), memo(), 0)
    labels = {"kind": "IdentityProvider", "namespace": "team", "name": "gone"}
    assert REGISTRY.get_sample_value("tokenbridge_operator_identity_provider_keys", labels) == 1
    main.identity_provider_deleted(body=body, memo=memo())
    assert REGISTRY.get_sample_value("tokenbridge_operator_identity_provider_keys", labels) is None
    main.identity_provider_deleted(body=body, memo=memo())  # never discovered (again): nothing to drop


def test_application_results_are_counted(posted):
    before = {r: reconciliations("OAuthApplication", r) for r in ("success", "temporary_error", "permanent_error")}
    kube = FakeKube()
    main._reconcile_app(app_body("web"), kopf.Patch(), memo(kube), 0)
    assert list(kube.secrets) == [("team", "web-creds")]
    with pytest.raises(kopf.PermanentError, match="InvalidExpression: spec.condition: must evaluate to a bool"):
        main._reconcile_app(app_body("typo", condition="request.client_id"), kopf.Patch(), memo(kube), 0)
    assert list(kube.secrets) == [("team", "web-creds")]
    with pytest.raises(kopf.TemporaryError, match="Kubernetes API error 503"):
        main._reconcile_app(
            app_body("api-down"),
            kopf.Patch(),
            memo(FakeKube(fail_with=ApiException(status=503, reason="Unavailable"))),
            0,
        )
    assert {r: reconciliations("OAuthApplication", r) - before[r] for r in before} == {
        "success": 1,
        "temporary_error": 1,
        "permanent_error": 1,
    }
    assert (
        "typo",
        {
            "type": "Warning",
            "reason": "InvalidExpression",
            "message": "spec.condition: must evaluate to a bool, not StringType (fix the spec)",
        },
    ) in posted


def test_signing_key_age_is_measured_at_scrape_time():
    kube = FakeKube()
    state = kopf.Memo(config=CONFIG, kube=kube)
    asyncio.run(main._check_signing_keys(state))
    assert list(kube.secrets) == [("tb", "keys")] and state.signing_checked_at
    age = value("tokenbridge_operator_signing_key_age_seconds")
    assert not math.isnan(age) and 0 <= age < 5
    time.sleep(1.1)
    assert value("tokenbridge_operator_signing_key_age_seconds") >= age + 1


def test_every_kind_and_result_is_exported_from_the_start():
    for kind in ("IdentityProvider", "ClusterIdentityProvider", "OAuthApplication"):
        for result in ("success", "temporary_error", "permanent_error"):
            assert (
                REGISTRY.get_sample_value(
                    "tokenbridge_operator_reconciliations_total", {"kind": kind, "result": result}
                )
                is not None
            )


def test_endpoint_serves_the_metrics_and_stops():
    server = metrics.serve(0)  # any free port
    port = server.server_port
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'tokenbridge_operator_reconciliations_total{kind="OAuthApplication",result="success"}' in text
        assert "tokenbridge_operator_signing_key_age_seconds" in text
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
