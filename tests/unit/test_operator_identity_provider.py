"""The IdentityProvider reconciler without a cluster: real discovery against a local HTTPS IdP, status and Events."""

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from tokenbridge.discovery import DiscoveryError
from tokenbridge.fetch import FetchPolicy
from tokenbridge_operator.handlers.identity_provider import (
    desired_status,
    is_ready,
    needs_operator_credentials,
    reconcile,
    transition_events,
)

LOCAL = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def clock(*moments):
    it = iter(moments)
    return lambda: next(it)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def spec_of(idp, **extra):
    return {
        "type": "Okta",
        "wellKnownURL": idp.well_known_url,
        "tls": {"caBundle": idp.ca_pem},
        "allowedAudiences": ["a"],
        **extra,
    }


def run(spec, status=None, generation=1, now=T0, kind="IdentityProvider"):
    return reconcile(spec, status, generation, kind=kind, policy=LOCAL, load_credentials=lambda: None, now=clock(now))


def test_success_sets_effective_values_conditions_and_one_event(okta):
    outcome = run(spec_of(okta))
    status = outcome.status
    assert outcome.ready and outcome.error is None
    assert status["issuer"] == okta.issuer and status["jwksURI"] == okta.jwks_uri
    assert status["tokenEndpoint"] == okta.token_endpoint and status["keyCount"] == 1
    assert status["stale"] is False and status["observedGeneration"] == 1
    assert [c["type"] for c in status["conditions"]] == ["Discovered", "KeysAvailable", "Ready"]
    assert all(c["status"] == "True" and c["observedGeneration"] == 1 for c in status["conditions"])
    assert cond(status, "KeysAvailable")["message"].startswith("1 usable key(s) (RS256)")
    assert outcome.events == [("Normal", "Ready", cond(status, "Ready")["message"])]
    assert is_ready(status)


def test_is_ready_only_for_a_true_ready_condition():
    ready = {"type": "Ready", "status": "True"}
    assert is_ready({"conditions": [{"type": "Discovered", "status": "False"}, ready]})
    assert not is_ready({"conditions": [{"type": "Discovered", "status": "True"}, {**ready, "status": "False"}]})
    assert not is_ready({"conditions": [{**ready, "status": "Unknown"}]})
    assert not is_ready({"conditions": [{"type": "Discovered", "status": "True"}]})
    assert not is_ready({}) and not is_ready(None)


def test_refresh_keeps_transition_times_and_posts_no_event(okta):
    first = run(spec_of(okta)).status
    second = run(spec_of(okta), first, now=T0 + timedelta(minutes=5))
    assert second.events == []
    assert [c["lastTransitionTime"] for c in second.status["conditions"]] == [
        c["lastTransitionTime"] for c in first["conditions"]
    ]
    assert second.status["discoveredAt"] >= first["discoveredAt"]  # when discovery itself succeeded


def test_outage_keeps_last_good_values_as_stale(okta):
    good = {**run(spec_of(okta)).status}
    okta.fail(None)
    outcome = run(spec_of(okta), good, now=T0 + timedelta(minutes=5))
    patch = outcome.status
    assert not outcome.ready and not outcome.error.permanent
    # the merge patch does not touch the last good values; it only marks them stale
    assert set(patch) == {"stale", "observedGeneration", "conditions"} and patch["stale"] is True
    assert cond(patch, "Ready")["reason"] == "DiscoveryUnavailable" and "retrying" in cond(patch, "Ready")["message"]
    assert cond(patch, "Discovered")["status"] == "False"
    assert cond(patch, "KeysAvailable")["status"] == "Unknown"
    assert cond(patch, "Ready")["lastTransitionTime"] == "2026-11-26T12:05:00Z"
    assert outcome.events == [("Warning", "DiscoveryUnavailable", cond(patch, "Ready")["message"])]
    okta.recover()
    back = run(spec_of(okta), {**good, **patch}, now=T0 + timedelta(minutes=6))
    assert back.ready and back.status["stale"] is False and back.events[0][:2] == ("Normal", "Ready")


def test_first_failure_is_not_stale(okta):
    okta.fail(None)
    outcome = run(spec_of(okta))
    assert outcome.status["stale"] is False and "issuer" not in outcome.status


def test_invalid_document_is_permanent(okta):
    okta.document_overrides["issuer"] = "https://other.example"
    outcome = run(spec_of(okta))
    assert outcome.error.reason == "IssuerMismatch" and outcome.error.permanent
    assert "fix the spec" in cond(outcome.status, "Ready")["message"]


def test_key_failures_land_on_keys_available(okta):
    outcome = run(spec_of(okta, allowedAlgorithms=["ES256"]))
    assert cond(outcome.status, "Discovered")["status"] == "True"
    keys = cond(outcome.status, "KeysAvailable")
    assert (keys["status"], keys["reason"]) == ("False", "NoUsableKeys")
    assert cond(outcome.status, "Ready")["reason"] == "NoUsableKeys"


def test_static_configuration_is_not_fetched(okta):
    okta.requests.clear()
    outcome = run({"type": "OIDC", "issuer": "https://air.gapped", "jwks": okta.jwks(), "allowedAudiences": ["a"]})
    assert outcome.ready and cond(outcome.status, "Discovered")["reason"] == "StaticConfiguration"
    assert outcome.status["jwksURI"] is None and outcome.status["tokenEndpoint"] is None  # merge patch: removed
    assert okta.requests == []


def test_generation_is_observed(okta):
    assert run(spec_of(okta), generation=7).status["observedGeneration"] == 7


def test_operator_credentials_are_loaded_only_for_kubernetes():
    loads = []
    spec = {"type": "Kubernetes", "wellKnownURL": "https://k8s.example/.well-known/openid-configuration"}
    reconcile(
        spec, None, 1, kind="IdentityProvider", policy=LOCAL, load_credentials=lambda: loads.append(1), now=clock(T0)
    )
    assert loads == [1]
    assert needs_operator_credentials(spec)
    assert not needs_operator_credentials({**spec, "kubernetes": {"useOperatorCredentials": False}})
    assert not needs_operator_credentials({"type": "Okta"})


def test_transition_events_compare_status_and_reason():
    error = DiscoveryError("BlockedAddress", "no", permanent=True)
    down = desired_status({}, None, 1, None, error, T0)
    assert transition_events(None, down) == [("Warning", "BlockedAddress", cond(down, "Ready")["message"])]
    assert transition_events(down, down) == []
    other = desired_status({}, down, 1, None, DiscoveryError("InvalidJWKS", "x", permanent=True, stage="keys"), T0)
    assert [e[1] for e in transition_events(down, other)] == ["InvalidJWKS"]


# --- CEL expressions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["IdentityProvider", "ClusterIdentityProvider"])
@pytest.mark.parametrize(
    "policy, field, problem",
    [
        ({"condition": "assertion.sub +"}, "spec.condition", "is not valid CEL: syntax error"),
        ({"condition": "assertion.email"}, "spec.condition", "must evaluate to a bool"),
        ({"claimMappings": {"iss": "'x'"}}, "spec.claimMappings['iss']", "set by Tokenbridge itself"),
        ({"claimMappings": {"team": "assertion.groups[0] + 1"}}, "spec.claimMappings['team']", "cannot be evaluated"),
    ],
)
def test_invalid_expression_is_reported_without_discovery(okta, kind, policy, field, problem):
    okta.requests.clear()
    outcome = run(spec_of(okta, **policy), generation=4, kind=kind)
    assert not outcome.ready and outcome.error is None and okta.requests == []  # compiled before anything else
    assert outcome.invalid_expression.startswith(f"{field}: ") and problem in outcome.invalid_expression
    ready = cond(outcome.status, "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "InvalidExpression", 4)
    assert ready["message"] == outcome.invalid_expression
    assert outcome.status["observedGeneration"] == 4 and outcome.status["stale"] is False
    assert [c["type"] for c in outcome.status["conditions"]] == ["Ready"]
    assert outcome.events == [("Warning", "InvalidExpression", ready["message"])]


@pytest.mark.parametrize(
    "condition", ["assertion.name == 'hunter2' + ", "int(assertion.name) == 1", "assertion.name + 1 == 2"]
)
def test_invalid_expression_echoes_neither_the_expression_nor_claim_values(okta, condition):
    outcome = run(spec_of(okta, condition=condition))
    assert outcome.invalid_expression and "hunter2" not in repr(outcome)
    assert not any(value in repr(outcome) for value in ("Sample User", "sample-subject", "user@example.com"))


def test_invalid_expression_keeps_the_last_discovery_marked_stale_then_a_fix_is_ready(okta):
    good = run(spec_of(okta)).status
    bad = run(spec_of(okta, condition="assertion.sub +"), good, generation=2, now=T0 + timedelta(minutes=1))
    assert set(bad.status) == {"stale", "observedGeneration", "conditions"} and bad.status["stale"] is True
    assert cond(bad.status, "Discovered") == cond(good, "Discovered")  # not re-checked: still generation 1
    assert [e[:2] for e in bad.events] == [("Warning", "InvalidExpression")]
    again = run(
        spec_of(okta, condition="assertion.sub +"), {**good, **bad.status}, generation=2, now=T0 + timedelta(minutes=2)
    )
    assert again.events == []  # a refresh of the same problem: no second Event
    fixed = run(
        spec_of(okta, condition="assertion.sub != ''"),
        {**good, **bad.status},
        generation=3,
        now=T0 + timedelta(minutes=3),
    )
    assert fixed.ready and fixed.invalid_expression is None and fixed.status["stale"] is False
    assert cond(fixed.status, "Ready")["reason"] == "Ready" and [e[:2] for e in fixed.events] == [("Normal", "Ready")]


def test_valid_expressions_change_nothing(okta):
    plain = run(spec_of(okta))
    with_policy = run(
        spec_of(
            okta,
            condition="assertion.sub != '' && request.namespace == 'team'",
            claimMappings={"sub": "'okta:' + assertion.sub", "groups": "assertion.groups"},
        )
    )
    assert with_policy.ready and with_policy.invalid_expression is None
    assert with_policy.events == plain.events
    assert {k: v for k, v in with_policy.status.items() if k != "discoveredAt"} == {
        k: v for k, v in plain.status.items() if k != "discoveredAt"
    }
