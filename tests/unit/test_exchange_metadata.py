"""Discovery documents (RFC 8414), our JWKS, introspection (RFC 7662) and the health endpoints."""

from __future__ import annotations

from urllib.parse import urlencode

import jwt
import pytest

from tests.support.exchange import (
    FORM,
    PUBLIC_ISSUER,
    FixedSource,
    app_object,
    basic,
    idp_object,
    make_client,
    snapshot_of,
)
from tests.support.idp import NOW
from tokenbridge import api
from tokenbridge.signing import ensure_rotated, generate_keyset


@pytest.fixture
def source(idp, clock):
    apps = [
        app_object("web", "web", "web-secret", audiences=["https://api.example.test"]),
        app_object(
            "api",
            "api",
            "api-secret",
            audiences=["https://api.example.test"],
            grantTypes=[api.GRANT_CLIENT_CREDENTIALS],
        ),
        app_object(
            "other",
            "other",
            "other-secret",
            audiences=["https://other.example.test"],
            grantTypes=[api.GRANT_CLIENT_CREDENTIALS],
        ),
    ]
    return FixedSource(snapshot_of([idp_object("corp", idp.issuer, jwks=idp.jwks())], apps=apps, clock=clock))


@pytest.fixture
def client(source, clock):
    return make_client(source, clock)


def issue(client, idp) -> str:
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": idp.token(),
        "subject_token_type": api.TOKEN_TYPE_JWT,
    }
    result = client.simulate_post("/oauth2/token", body=urlencode(form), headers={**FORM, **basic("web", "web-secret")})
    assert result.status_code == 200, result.text
    return result.json["access_token"]


def introspect(client, token, client_id, secret):
    return client.simulate_post(
        "/oauth2/introspect", body=urlencode({"token": token}), headers={**FORM, **basic(client_id, secret)}
    )


@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"])
def test_server_metadata(client, path):
    doc = client.simulate_get(path).json
    assert doc["issuer"] == PUBLIC_ISSUER
    assert doc["token_endpoint"] == PUBLIC_ISSUER + "/oauth2/token"
    assert doc["jwks_uri"] == PUBLIC_ISSUER + "/.well-known/jwks.json"
    assert doc["introspection_endpoint"] == PUBLIC_ISSUER + "/oauth2/introspect"
    assert set(doc["grant_types_supported"]) == set(api.GRANT_TYPES)
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]


def test_jwks_publishes_the_active_and_the_pending_key(idp, clock):
    keyset = generate_keyset("ES256", NOW - 86400 * 30)
    rotated = ensure_rotated(
        keyset, now=NOW, alg="ES256", rotation_period=86400 * 30, publish_lead=3600, max_token_lifetime=3600
    )
    assert len(rotated.keys) == 2
    source = FixedSource(
        snapshot_of(
            [idp_object("corp", idp.issuer, jwks=idp.jwks())],
            apps=[app_object("web", "web", "web-secret")],
            signing_keys=rotated,
            clock=clock,
        )
    )
    client = make_client(source, clock)
    result = client.simulate_get("/.well-known/jwks.json")
    assert result.headers["Content-Type"] == "application/jwk-set+json"
    kids = [k["kid"] for k in result.json["keys"]]
    assert kids == [k.kid for k in rotated.keys]
    assert all("d" not in k for k in result.json["keys"])
    token = issue(client, idp)
    assert jwt.get_unverified_header(token)["kid"] == rotated.keys[0].kid  # the successor signs only later


def test_introspection_of_an_active_token(client, idp):
    token = issue(client, idp)
    for caller in (("web", "web-secret"), ("api", "api-secret")):  # the client it was issued to, its audience
        result = introspect(client, token, *caller)
        assert result.status_code == 200
        assert result.headers["Cache-Control"] == "no-store"
        body = result.json
        assert body["active"] is True and body["sub"] == "alice" and body["client_id"] == "web"
        assert body["iss"] == PUBLIC_ISSUER and body["token_type"] == "Bearer"


def test_introspection_reveals_nothing_to_unrelated_clients(client, idp):
    assert introspect(client, issue(client, idp), "other", "other-secret").json == {"active": False}


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 20000])
def test_introspection_of_junk_is_inactive(client, token):
    assert introspect(client, token, "web", "web-secret").json == {"active": False}


def test_introspection_of_an_expired_or_foreign_token_is_inactive(client, idp, clock):
    token = issue(client, idp)
    foreign = jwt.encode(
        jwt.decode(token, options={"verify_signature": False}),
        generate_keyset("ES256", NOW).keys[0].private_key,
        algorithm="ES256",
        headers=jwt.get_unverified_header(token),
    )
    assert introspect(client, foreign, "web", "web-secret").json == {"active": False}
    clock.now += 3600
    assert introspect(client, token, "web", "web-secret").json == {"active": False}


def test_introspection_needs_client_authentication(client, idp):
    result = client.simulate_post("/oauth2/introspect", body=urlencode({"token": issue(client, idp)}), headers=FORM)
    assert result.status_code == 401 and result.json["error"] == "invalid_client"
    result = client.simulate_post("/oauth2/introspect", body="", headers={**FORM, **basic("web", "web-secret")})
    assert result.status_code == 400 and "token" in result.json["error_description"]


def test_health_and_readiness(client):
    assert client.simulate_get("/healthz").json == {"status": "ok"}
    ready = client.simulate_get("/readyz").json
    assert ready["status"] == "ready" and ready["applications"] == 3 and ready["identityProviders"] == 1


def test_not_ready_without_signing_keys(idp, clock):
    client = make_client(FixedSource(snapshot_of([], signing_keys=None, clock=clock)), clock)
    assert client.simulate_get("/readyz").status_code == 503
    result = client.simulate_get("/.well-known/jwks.json")
    assert result.status_code == 503 and result.json["error"] == "temporarily_unavailable"


def test_metrics_count_issued_tokens_and_refusals(client, idp):
    issue(client, idp)
    form = {"grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": "junk", "subject_token_type": api.TOKEN_TYPE_JWT}
    client.simulate_post("/oauth2/token", body=urlencode(form), headers={**FORM, **basic("web", "web-secret")})
    client.simulate_post("/oauth2/token", body="grant_type=password", headers={**FORM, **basic("web", "web-secret")})
    scrape = client.simulate_get("/metrics").text
    exchange = api.GRANT_TOKEN_EXCHANGE
    x = 'tokenbridge_exchanges_total{application="team-a/web"'
    assert f'{x},error="",grant_type="{exchange}",idp="team-a/corp",outcome="issued"}} 1.0' in scrape
    assert f'{x},error="invalid_grant",grant_type="{exchange}",idp="",outcome="refused"}} 1.0' in scrape
    assert f'{x},error="unsupported_grant_type",grant_type="other",idp="",outcome="refused"}} 1.0' in scrape
    assert f'tokenbridge_token_request_seconds_count{{grant_type="{exchange}"}} 2.0' in scrape
