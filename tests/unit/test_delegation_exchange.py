"""Delegation (RFC 8693 §4.1): actor tokens from a second issuer, act (nested), may_act, and the opt-in."""

from __future__ import annotations

import pytest

from tests.support.exchange import (
    Clock,
    FixedSource,
    app_object,
    claims_of,
    expect_error,
    idp_object,
    make_client,
    post_form,
    snapshot_of,
)
from tests.support.idp import NOW, IdP
from tokenbridge import api

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
PLAIN, PLAIN_SECRET = "tb-plain", "plain-secret"


@pytest.fixture(scope="module")
def users():
    return IdP("https://users.example.test")


@pytest.fixture(scope="module")
def robots():
    return IdP("https://robots.example.test", alg="ES256")


@pytest.fixture
def client(users, robots):
    clock = Clock()
    idps = [
        idp_object("users", users.issuer, jwks=users.jwks()),
        idp_object(
            "robots",
            robots.issuer,
            jwks=robots.jwks(),
            allowedAlgorithms=["ES256"],
            allowedAudiences=["api://actors"],
            condition="assertion.sub.startsWith('robot-')",
        ),
        idp_object("elsewhere", "https://elsewhere.example.test", jwks=users.jwks()),
    ]
    apps = [
        app_object("web", CLIENT, SECRET, delegation=True, providers=[{"name": "users"}, {"name": "robots"}]),
        app_object("plain", PLAIN, PLAIN_SECRET, providers=[{"name": "users"}, {"name": "robots"}]),
    ]
    return make_client(FixedSource(snapshot_of(idps, apps=apps, clock=clock)), clock)


def delegate(client, subject, actor, auth=(CLIENT, SECRET), **params):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        "actor_token": actor,
        "actor_token_type": api.TOKEN_TYPE_JWT,
        **params,
    }
    return post_form(client, "/oauth2/token", form, auth)


def robot(robots, **claims):
    return robots.token(sub=claims.pop("sub", "robot-7"), aud="api://actors", **claims)


def test_actor_from_a_second_issuer_becomes_act(client, users, robots):
    claims = claims_of(delegate(client, users.token(), robot(robots)))
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": "robot-7", "iss": robots.issuer}
    assert claims["idp"] == "team-a/users"


def test_without_an_actor_token_there_is_no_act(client, users):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": users.token(),
        "subject_token_type": api.TOKEN_TYPE_JWT,
    }
    assert "act" not in claims_of(post_form(client, "/oauth2/token", form, (CLIENT, SECRET)))


def test_an_actor_tokens_own_act_is_nested(client, users, robots):
    prior = {"sub": "scheduler", "iss": "https://sched.example.test", "act": {"sub": "cron"}}
    claims = claims_of(delegate(client, users.token(), robot(robots, act=prior)))
    assert claims["act"] == {"sub": "robot-7", "iss": robots.issuer, "act": prior}


@pytest.mark.parametrize("act", ["a string", {"act": {"act": "x"}}, {"sub": "x", "act": [1]}])
def test_a_malformed_act_chain_is_refused(client, users, robots, act):
    expect_error(delegate(client, users.token(), robot(robots, act=act)), 400, "invalid_grant", "act claim")


def test_delegation_needs_the_applications_opt_in(client, users, robots):
    body = expect_error(
        delegate(client, users.token(), robot(robots), auth=(PLAIN, PLAIN_SECRET)),
        400,
        "invalid_request",
        "actor_token (delegation) is not enabled for this client",
    )
    assert "spec.delegation: true" in body["error_description"]


@pytest.mark.parametrize(
    "may_act, ok",
    [
        ({"sub": "robot-7"}, True),
        ({"sub": "robot-7", "iss": "https://robots.example.test"}, True),
        ({"sub": "robot-8"}, False),
        ({"sub": "robot-7", "iss": "https://users.example.test"}, False),  # right sub, other issuer
        ({"iss": "https://robots.example.test"}, False),  # no sub: allows nobody
        ("robot-7", False),
    ],
)
def test_may_act_must_allow_the_actor(client, users, robots, may_act, ok):
    result = delegate(client, users.token(may_act=may_act), robot(robots))
    if ok:
        assert claims_of(result)["act"]["sub"] == "robot-7"
    else:
        expect_error(result, 400, "invalid_grant", "may_act")


def test_the_actor_token_is_validated_like_a_subject_token(client, users, robots):
    expect_error(delegate(client, users.token(), robot(robots, exp=int(NOW) - 3600)), 400, "invalid_grant", "expired")
    expect_error(
        delegate(client, users.token(), robots.token(sub="robot-7")),
        400,
        "invalid_grant",
        "contains none of the audiences",
    )  # aud of the robots IdP is api://actors
    expect_error(
        delegate(client, users.token(), robot(robots, sub="human")),
        400,
        "invalid_grant",
        "the condition of identity provider team-a/robots refused the request",
    )
    other = IdP("https://elsewhere.example.test")
    expect_error(
        delegate(client, users.token(), other.token()), 400, "invalid_grant", "not an identity provider of this client"
    )  # an IdP the application does not list
    expect_error(delegate(client, users.token(), "not-a-jwt"), 400, "invalid_grant", "actor_token is not a JWT")


def test_actor_token_type_is_required_and_checked(client, users, robots):
    expect_error(
        delegate(client, users.token(), robot(robots), actor_token_type=None),
        400,
        "invalid_request",
        "actor_token_type",
    )
    expect_error(
        delegate(client, users.token(), robot(robots), actor_token_type="urn:x"),
        400,
        "invalid_request",
        "actor_token_type",
    )
    expect_error(delegate(client, users.token(), None), 400, "invalid_request", "missing parameter actor_token")


def test_same_issuer_for_subject_and_actor(client, users):
    claims = claims_of(delegate(client, users.token(), users.token(sub="svc-a")))
    assert claims["act"] == {"sub": "svc-a", "iss": users.issuer}


def test_lifetime_is_capped_by_the_actor_tokens_expiry(client, users, robots):
    result = delegate(client, users.token(), robot(robots, exp=int(NOW) + 100))
    assert result.status_code == 200 and result.json["expires_in"] == 100
