"""Replayed ``jti``: identity providers with ``preventReplay`` (and ``requireJTI``) accept each (iss, jti) once.

Each test gets a fresh server with its own replay cache file under the test's tmp_path.
"""

from __future__ import annotations

import pytest

from tests.support.attacks import CLIENT, SECRET, assert_accepted, assert_refused, client_for, exchange, post
from tests.support.exchange import FORM, Clock, FixedSource, app_object, basic, idp_object, snapshot_of
from tests.support.idp import NOW, IdP
from tokenbridge import api


@pytest.fixture(scope="module")
def once():
    return IdP("https://once.example.test", "RS256")


@pytest.fixture(scope="module")
def tracked():
    return IdP("https://tracked.example.test", "ES256")


@pytest.fixture
def client(once, tracked, tmp_path):
    clock = Clock()
    snapshot = snapshot_of(
        [
            idp_object("once", once.issuer, jwks=once.jwks(), preventReplay=True, requireJTI=True),
            idp_object("tracked", tracked.issuer, jwks=tracked.jwks(), preventReplay=True),
        ],
        apps=[app_object("web", CLIENT, SECRET, providers=[{"name": "once"}, {"name": "tracked"}])],
        clock=clock,
    )
    assert not snapshot.skipped, snapshot.skipped
    return client_for(FixedSource(snapshot), clock, replay_cache_path=str(tmp_path / "replay.sqlite3"))


def test_replayed_token_is_refused(client, once):
    token = once.token(jti="jti-1")
    assert_accepted(exchange(client, token))
    body = assert_refused(exchange(client, token), "invalid_grant")
    assert "jti" in body["error_description"] or "replay" in body["error_description"]


def test_replay_through_the_other_grant_is_refused(client, once):
    token = once.token(jti="jti-2")
    assert_accepted(exchange(client, token))
    form = {"grant_type": api.GRANT_JWT_BEARER, "assertion": token}
    assert_refused(post(client, form, {**FORM, **basic(CLIENT, SECRET)}), "invalid_grant")


@pytest.mark.parametrize(
    "change", [{"sub": "bob"}, {"iat": int(NOW) - 5}, {"exp": int(NOW) + 7200}, {"aud": ["api://tokenbridge", "x"]}]
)
def test_same_jti_in_another_token_is_refused(client, once, change):
    """The IdP's jti identifies the token: re-minted claims with the same jti are still a replay."""
    assert_accepted(exchange(client, once.token(jti="jti-3")))
    assert_refused(exchange(client, once.token(jti="jti-3", **change)), "invalid_grant")


@pytest.mark.parametrize("jti", [None, "", 1, ["jti"], {"id": "x"}, True])
def test_require_jti(client, once, jti):
    claims = once.claims()
    if jti is not None:
        claims["jti"] = jti
    assert_refused(exchange(client, once.sign(once.header(), claims)), "invalid_grant")


def test_tracked_without_require_still_refuses_a_replayed_jti(client, tracked):
    token = tracked.token(jti="t-1")
    assert_accepted(exchange(client, token))
    assert_refused(exchange(client, token), "invalid_grant")


def test_a_refused_request_does_not_burn_the_jti(client, once):
    """An attacker who sees a token in flight cannot get it refused for its owner by sending it first in a request
    that fails for another reason (here a target the client may not ask for)."""
    token = once.token(jti="jti-4")
    assert_refused(exchange(client, token, audience="https://elsewhere.example.test"), "invalid_target")
    assert_refused(exchange(client, once.token(jti="jti-4", aud="nope")), "invalid_grant")
    assert_accepted(exchange(client, token))


def test_jti_is_scoped_by_issuer(client, once, tracked):
    """The same jti value from two issuers is two tokens (RFC 7519 §4.1.7): both accepted once, refused after."""
    a, b = once.token(jti="shared"), tracked.token(jti="shared")
    assert_accepted(exchange(client, a))
    assert_accepted(exchange(client, b))
    assert_refused(exchange(client, a), "invalid_grant")
    assert_refused(exchange(client, b), "invalid_grant")
