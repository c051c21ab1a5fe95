"""The other endpoints that parse attacker-supplied JWTs: ``/oauth2/explain`` (the token endpoint's decision, step
by step, for an authenticated client) and ``/oauth2/introspect`` (our own tokens only). The same hostile tokens
must be refused there too, never crash them, and explain must never reveal more than the token endpoint would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.attacks import CLIENT, SECRET, assert_accepted, assert_refused, encode
from tests.support.exchange import FORM, basic
from tests.support.idp import b64url, jws
from tokenbridge import api

JWS = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _nested(world, depth=5000):
    nested = "[" * depth + "]" * depth
    claims = json.dumps(world.corp.claims())[:-1] + ',"x":' + nested + "}"
    return world.attacker_rsa.sign(world.corp.header(), claims.encode())


def hostile_tokens(world):
    corp = world.corp
    h, p, s = corp.token().split(".")
    pem = corp.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_header = b64url(json.dumps({"alg": "HS256", "kid": corp.kid}))
    hs = f"{hs_header}.{p}." + b64url(hmac.new(pem, f"{hs_header}.{p}".encode(), hashlib.sha256).digest())
    return {
        "alg-none": jws({"alg": "none", "kid": corp.kid}, corp.claims()),
        "hs256-public-key": hs,
        "attacker-key": world.attacker_rsa.token(),
        "embedded-jwk": jws(
            {"alg": "RS256", "jwk": world.attacker_rsa.public_jwk()}, corp.claims(), world.attacker_rsa.key
        ),
        "crit": corp.sign({**corp.header(), "crit": ["exp"]}, corp.claims()),
        "kid-traversal": jws({"alg": "RS256", "kid": "../../etc/passwd"}, corp.claims(), world.attacker_rsa.key),
        "kid-object": corp.sign({**corp.header(), "kid": {"$ne": ""}}, corp.claims()),
        "truncated-signature": f"{h}.{p}.{s[:-10]}",
        "two-parts": f"{h}.{p}",
        "five-parts": f"{h}.{p}.{s}.{s}.{s}",
        "oversized": f"{h}.{p}.{s}" + "A" * 17000,
        "not-json": f"{b64url('nope')}.{p}.{s}",
        "expired": corp.token(exp=1),
        "lookalike-issuer": corp.token(iss=corp.issuer + "/"),
        "lone-surrogate": jws(
            json.dumps({**corp.header(), "kid": "\ud800"}).encode(), corp.claims(), corp.key, "RS256"
        ),
        "deep-nesting": _nested(world),
    }


NAMES = [
    "alg-none",
    "hs256-public-key",
    "attacker-key",
    "embedded-jwk",
    "crit",
    "kid-traversal",
    "kid-object",
    "truncated-signature",
    "two-parts",
    "five-parts",
    "oversized",
    "not-json",
    "expired",
    "lookalike-issuer",
    "lone-surrogate",
    "deep-nesting",
]


def explain(client, token, auth=None, **extra):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **extra,
    }
    return client.simulate_post(
        "/oauth2/explain", body=encode(form), headers={**FORM, **(basic(CLIENT, SECRET) if auth is None else auth)}
    )


def _explained(result):
    assert result.status_code < 500, f"{result.status_code}: {result.text[:300]}"
    assert result.status_code == 200, result.text[:300]
    assert result.headers.get("Cache-Control") == "no-store"
    return json.loads(result.text)


def test_explain_baseline(client, world):
    report = _explained(explain(client, world.corp.token()))
    assert report["decision"] == "issue", report
    assert "access_token" not in report and not JWS.search(json.dumps(report)), report


@pytest.mark.parametrize("name", NAMES)
def test_explain_refuses_hostile_tokens(client, world, name):
    token = hostile_tokens(world)[name]
    report = _explained(explain(client, token))
    assert report["decision"] == "refused", report
    assert report["error"] == "invalid_grant", report
    assert "access_token" not in report and token not in json.dumps(report)


@pytest.mark.parametrize("name", NAMES)
def test_token_endpoint_refuses_the_same_hostile_tokens(client, world, name):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": hostile_tokens(world)[name],
        "subject_token_type": api.TOKEN_TYPE_JWT,
    }
    result = client.simulate_post("/oauth2/token", body=encode(form), headers={**FORM, **basic(CLIENT, SECRET)})
    assert_refused(result, "invalid_grant")


@pytest.mark.parametrize("auth", [{}, basic(CLIENT, "wrong"), basic("nobody", SECRET)])
def test_explain_needs_client_authentication(client, world, auth):
    """An unauthenticated caller learns nothing from explain (not even whether a token would pass)."""
    result = explain(client, world.corp.token(), auth=auth)
    body = assert_refused(result, "invalid_client")
    assert "steps" not in body and "decision" not in body


def test_explain_does_not_echo_the_subject_token(client, world):
    token = world.corp.token()
    text = json.dumps(_explained(explain(client, token)))
    assert token not in text and token.split(".")[2] not in text


@pytest.mark.parametrize("name", NAMES)
def test_introspect_hostile_tokens_are_inactive(client, world, name):
    result = client.simulate_post(
        "/oauth2/introspect",
        body=encode({"token": hostile_tokens(world)[name]}),
        headers={**FORM, **basic(CLIENT, SECRET)},
    )
    assert result.status_code < 500, f"{result.status_code}: {result.text[:300]}"
    assert result.status_code == 200 and json.loads(result.text) == {"active": False}, result.text[:300]
    assert result.headers.get("Cache-Control") == "no-store"


def test_introspect_baseline_and_forgeries_of_our_own_tokens(client, world):
    """Our own issued token introspects as active; the same claims re-signed by anyone else, or with alg none,
    do not."""
    result = client.simulate_post(
        "/oauth2/token",
        body=encode(
            {
                "grant_type": api.GRANT_TOKEN_EXCHANGE,
                "subject_token": world.corp.token(),
                "subject_token_type": api.TOKEN_TYPE_JWT,
            }
        ),
        headers={**FORM, **basic(CLIENT, SECRET)},
    )
    issued = assert_accepted(result)["access_token"]

    def introspect(token):
        r = client.simulate_post(
            "/oauth2/introspect", body=encode({"token": token}), headers={**FORM, **basic(CLIENT, SECRET)}
        )
        assert r.status_code == 200, r.text
        return json.loads(r.text)

    assert introspect(issued)["active"] is True
    header, payload, _ = issued.split(".")
    decoded_header = json.loads(base64.urlsafe_b64decode(header + "=="))
    decoded_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forgeries = [
        jws({**decoded_header, "alg": "none"}, decoded_claims),
        jws({**decoded_header, "alg": "ES256"}, {**decoded_claims, "sub": "mallory"}, world.attacker_ec.key),
        jws(decoded_header, {**decoded_claims, "exp": decoded_claims["exp"] + 86400}, world.attacker_ec.key, "ES256"),
        f"{header}.{b64url(json.dumps({**decoded_claims, 'sub': 'mallory'}))}.{issued.split('.')[2]}",
    ]
    for forged in forgeries:
        assert introspect(forged) == {"active": False}
