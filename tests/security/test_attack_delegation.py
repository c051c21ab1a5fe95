"""Attacks on delegation (RFC 8693 §4.1 actor_token, §4.4 may_act) and on CEL policies (IdP conditions, claim
mappings) with type-confused or missing claims: each must be a deliberate ``invalid_grant`` / ``invalid_request``,
never a 5xx and never an issued token."""

from __future__ import annotations

import jwt
import pytest

from tests.support.attacks import (
    B_CLIENT,
    B_SECRET,
    CLIENT,
    SECRET,
    assert_accepted,
    assert_refused,
    client_for,
    encode,
    exchange,
)
from tests.support.exchange import FORM, Clock, FixedSource, app_object, basic, idp_object, snapshot_of
from tests.support.idp import NOW, IdP, jws
from tokenbridge import api

CONDITION = "assertion.email_verified == true && assertion.groups.exists(g, g == 'admins')"


@pytest.fixture(scope="module")
def idps():
    return {
        "corp": IdP("https://idp.example.test", "RS256"),
        "robots": IdP("https://robots.example.test", "ES256"),
        "policed": IdP("https://policed.example.test", "RS256"),
        "other-ns": IdP("https://other-ns.example.test", "RS256"),
        "attacker": IdP("https://robots.example.test", "ES256"),
    }


@pytest.fixture(scope="module")
def client(idps):
    clock = Clock()
    snapshot = snapshot_of(
        [
            idp_object("corp", idps["corp"].issuer, jwks=idps["corp"].jwks()),
            idp_object("robots", idps["robots"].issuer, jwks=idps["robots"].jwks()),
            idp_object(
                "policed",
                idps["policed"].issuer,
                jwks=idps["policed"].jwks(),
                condition=CONDITION,
                claimMappings={"sub": "'policed:' + assertion.sub", "groups": "assertion.groups"},
            ),
            idp_object("other-ns", idps["other-ns"].issuer, namespace="team-b", jwks=idps["other-ns"].jwks()),
        ],
        apps=[
            app_object(
                "web",
                CLIENT,
                SECRET,
                delegation=True,
                providers=[{"name": "corp"}, {"name": "robots"}, {"name": "policed"}],
            ),
            app_object("no-delegation", B_CLIENT, B_SECRET, providers=[{"name": "corp"}, {"name": "robots"}]),
        ],
        clock=clock,
    )
    assert not snapshot.skipped, snapshot.skipped
    return client_for(FixedSource(snapshot), clock)


def delegate(client, subject, actor, auth=None, **extra):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        "actor_token": actor,
        "actor_token_type": api.TOKEN_TYPE_JWT,
        **extra,
    }
    form = {k: v for k, v in form.items() if v is not None}
    return client.simulate_post("/oauth2/token", body=encode(form), headers={**FORM, **(auth or basic(CLIENT, SECRET))})


def test_delegation_baseline(client, idps):
    body = assert_accepted(delegate(client, idps["corp"].token(), idps["robots"].token(sub="deployer")))
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "deployer", "iss": idps["robots"].issuer}


@pytest.mark.parametrize(
    "case",
    [
        "forged-actor",
        "actor-from-another-namespace",
        "actor-expired",
        "actor-wrong-audience",
        "actor-alg-none",
        "may-act-other-sub",
        "may-act-other-iss",
        "may-act-string",
        "may-act-list",
        "may-act-sub-number",
        "act-chain-too-deep",
        "act-not-an-object",
        "act-chain-ends-in-a-string",
    ],
)
def test_delegation_attacks(client, idps, case):
    corp, robots = idps["corp"], idps["robots"]
    subject, actor = corp.token(), robots.token(sub="deployer")
    if case == "forged-actor":
        actor = idps["attacker"].token(header={"kid": robots.kid}, sub="deployer")
    elif case == "actor-from-another-namespace":
        actor = idps["other-ns"].token(sub="deployer")
    elif case == "actor-expired":
        actor = robots.token(sub="deployer", exp=int(NOW) - 3600)
    elif case == "actor-wrong-audience":
        actor = robots.token(sub="deployer", aud="somewhere-else")
    elif case == "actor-alg-none":
        actor = jws({"alg": "none", "kid": robots.kid}, robots.claims(sub="deployer"))
    elif case.startswith("may-act"):
        may_act = {
            "may-act-other-sub": {"sub": "someone-else", "iss": robots.issuer},
            "may-act-other-iss": {"sub": "deployer", "iss": corp.issuer},
            "may-act-string": "deployer",
            "may-act-list": [{"sub": "deployer"}],
            "may-act-sub-number": {"sub": 7},
        }[case]
        subject = corp.token(may_act=may_act)
    elif case == "act-chain-too-deep":
        chain: dict = {"sub": "root"}
        for i in range(20):
            chain = {"sub": f"hop-{i}", "act": chain}
        actor = robots.token(sub="deployer", act=chain)
    elif case == "act-not-an-object":
        actor = robots.token(sub="deployer", act="root")
    else:
        actor = robots.token(sub="deployer", act={"sub": "hop", "act": "root"})
    assert_refused(delegate(client, subject, actor), "invalid_grant")


@pytest.mark.parametrize(
    "case",
    [
        "no-delegation-client",
        "actor-without-type",
        "type-without-actor",
        "unsupported-actor-type",
        "repeated-actor-token",
    ],
)
def test_delegation_request_errors(client, idps, case):
    corp, robots = idps["corp"], idps["robots"]
    subject, actor = corp.token(), robots.token(sub="deployer")
    if case == "no-delegation-client":
        result = delegate(client, subject, actor, auth=basic(B_CLIENT, B_SECRET))
    elif case == "actor-without-type":
        result = delegate(client, subject, actor, actor_token_type=None)
    elif case == "type-without-actor":
        result = delegate(client, subject, None)
    elif case == "unsupported-actor-type":
        result = delegate(client, subject, actor, actor_token_type="urn:ietf:params:oauth:token-type:saml2")
    else:
        form = [
            ("grant_type", api.GRANT_TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", api.TOKEN_TYPE_JWT),
            ("actor_token", actor),
            ("actor_token", corp.token()),
            ("actor_token_type", api.TOKEN_TYPE_JWT),
        ]
        result = client.simulate_post("/oauth2/token", body=encode(form), headers={**FORM, **basic(CLIENT, SECRET)})
    assert_refused(result, "invalid_request")


# --- CEL policy with type-confused claims --------------------------------------------------------------------


def test_policy_baseline(client, idps):
    token = idps["policed"].token(email_verified=True, groups=["users", "admins"])
    claims = jwt.decode(assert_accepted(exchange(client, token))["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "policed:alice" and claims["groups"] == ["users", "admins"]


@pytest.mark.parametrize(
    "claims",
    [
        {"email_verified": True, "groups": ["users"]},  # condition false
        {"email_verified": True},  # groups missing
        {"groups": ["admins"]},  # email_verified missing
        {"email_verified": "true", "groups": ["admins"]},  # string, not bool
        {"email_verified": 1, "groups": ["admins"]},
        {"email_verified": True, "groups": "admins"},  # a string, not a list
        {"email_verified": True, "groups": [["admins"]]},
        {"email_verified": True, "groups": [None, 1, {"g": "admins"}]},
        {"email_verified": None, "groups": ["admins"]},
        {"email_verified": True, "groups": ["admins"], "sub": None},
    ],
)
def test_policy_with_type_confused_claims(client, idps, claims):
    assert_refused(exchange(client, idps["policed"].token(**claims)), "invalid_grant")


def test_policy_with_huge_claims(client, idps):
    """A large (but under the size cap) groups claim is evaluated, not a denial of service."""
    groups = [f"g{i}" for i in range(1500)]
    assert_refused(exchange(client, idps["policed"].token(email_verified=True, groups=groups)), "invalid_grant")
    assert_accepted(exchange(client, idps["policed"].token(email_verified=True, groups=groups[:1000] + ["admins"])))
