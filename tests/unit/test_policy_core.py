"""tokenbridge.policy: compile-time errors the operator reports, run-time decisions the server makes."""

import pytest

from tokenbridge.policy import MAX_EXPRESSION_LENGTH, RESERVED_CLAIMS, PolicyDenied, PolicyError, compile_policy

REQUEST = {
    "client_id": "web",
    "audience": ["https://api.example"],
    "scope": ["read"],
    "namespace": "prod",
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
}


def idp_policy(**spec):
    return compile_policy(spec, kind="IdentityProvider", owner="identity provider prod/okta")


def test_no_policy_is_empty_and_free():
    policy = idp_policy()
    assert policy.empty and policy.map_claims({"sub": "a"}) == {}
    policy.check({}, REQUEST)  # nothing to refuse


def test_claim_mappings_compute_sub_and_extra_claims():
    policy = idp_policy(
        claimMappings={
            "sub": "'okta:' + assertion.sub",
            "groups": "assertion.groups",
            "tenant": "assertion['kubernetes.io'].namespace",
            "admin": "'admins' in assertion.groups",
            "n": "size(assertion.groups)",
        }
    )
    claims = policy.map_claims({"sub": "alice", "groups": ["admins", "dev"], "kubernetes.io": {"namespace": "x"}})
    assert claims == {"sub": "okta:alice", "groups": ["admins", "dev"], "tenant": "x", "admin": True, "n": 2}
    assert all(type(v) in (str, list, bool, int) for v in claims.values())


def test_condition_uses_assertion_and_request():
    policy = idp_policy(
        condition="'admins' in assertion.groups && request.namespace == 'prod' "
        "&& 'https://api.example' in request.audience"
    )
    policy.check({"groups": ["admins"]}, REQUEST)
    with pytest.raises(PolicyDenied, match=r"^the condition of identity provider prod/okta refused the request$"):
        policy.check({"groups": ["dev"]}, REQUEST)
    with pytest.raises(PolicyDenied, match="refused"):
        policy.check({"groups": ["admins"]}, {**REQUEST, "namespace": "staging"})


def test_refusals_never_echo_token_contents():
    policy = idp_policy(condition="assertion.sub == 'alice'", claimMappings={"x": "assertion.secretish + 1"})
    for call in (
        lambda: policy.check({"sub": "mallory-secret-value"}, REQUEST),
        lambda: policy.check({}, REQUEST),
        lambda: policy.map_claims({"secretish": "mallory-secret-value"}),
    ):
        with pytest.raises(PolicyDenied) as info:
            call()
        assert "mallory" not in info.value.message and "secret-value" not in info.value.message


def test_expressions_reading_data_the_sample_lacks_still_compile():
    policy = idp_policy(condition="assertion.groups[1] == 'x' && assertion.custom.team == 'a'")
    policy.check({"groups": ["a", "x"], "custom": {"team": "a"}}, REQUEST)
    with pytest.raises(PolicyDenied, match="missing"):
        policy.check({"groups": ["a"]}, REQUEST)


def test_missing_claim_refuses_instead_of_crashing():
    policy = idp_policy(condition="assertion.email.endsWith('@example.com')", claimMappings={"mail": "assertion.email"})
    with pytest.raises(PolicyDenied, match="missing"):
        policy.check({"sub": "a"}, REQUEST)
    with pytest.raises(PolicyDenied, match="missing"):
        policy.map_claims({"sub": "a"})


@pytest.mark.parametrize(
    "spec, field, message",
    [
        ({"condition": "assertion.sub +"}, "spec.condition", "syntax error"),
        ({"condition": "assertion.sub"}, "spec.condition", "must evaluate to a bool"),
        ({"condition": "assertion.sub + 1 == 'x'"}, "spec.condition", "cannot be evaluated"),
        ({"condition": "x" * (MAX_EXPRESSION_LENGTH + 1)}, "spec.condition", "longer than"),
        ({"condition": " + ".join(["1"] * 300) + " == 1"}, "spec.condition", "too complex"),
        ({"claimMappings": {"iss": "'evil'"}}, "spec.claimMappings['iss']", "set by Tokenbridge"),
        ({"claimMappings": {"bad name": "'x'"}}, "spec.claimMappings['bad name']", "not a valid claim name"),
        (
            {"claimMappings": {"when": "timestamp('2020-01-01T00:00:00Z')"}},
            "spec.claimMappings['when']",
            "cannot be a token claim",
        ),
        ({"claimMappings": {"g": ""}}, "spec.claimMappings['g']", "non-empty"),
    ],
)
def test_invalid_expressions_name_their_field(spec, field, message):
    with pytest.raises(PolicyError) as info:
        idp_policy(**spec)
    assert info.value.field == field and message in info.value.message


def test_reserved_claims_cover_what_the_server_sets():
    assert {"iss", "aud", "exp", "iat", "jti", "client_id", "scope", "act", "idp"} <= RESERVED_CLAIMS
    assert "sub" not in RESERVED_CLAIMS


def test_applications_have_conditions_but_no_claim_mappings():
    policy = compile_policy(
        {"condition": "request.client_id == 'web'", "claimMappings": {"x": "'y'"}},
        kind="OAuthApplication",
        owner="application prod/web",
    )
    assert policy.claim_mappings == () and policy.condition is not None
    with pytest.raises(PolicyDenied, match="application prod/web"):
        policy.check({}, {**REQUEST, "client_id": "other"})


def test_mapped_sub_must_be_a_non_empty_string():
    with pytest.raises(PolicyDenied, match="'sub'"):
        idp_policy(claimMappings={"sub": "size(assertion.groups)"}).map_claims({"groups": []})
