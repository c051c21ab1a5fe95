"""The token endpoint through falcon's TestClient: every grant and every refusal, tokens signed by test keys."""

from __future__ import annotations

import json
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

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
from tests.support.idp import NOW, IdP, b64url
from tokenbridge import api
from tokenbridge.client_secrets import hash_client_secret
from tokenbridge.signing import generate_keyset

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
POST_CLIENT, POST_SECRET = "tb-post", "p0st-secret"
EXCHANGE = api.GRANT_TOKEN_EXCHANGE


@pytest.fixture
def source(idp, clock):
    other = IdP("https://other-idp.example.test")
    entra = IdP("https://login.microsoftonline.com/{tenantid}/v2.0")
    idps = [
        idp_object("corp", idp.issuer, jwks=idp.jwks()),
        idp_object(
            "strict",
            "https://strict.example.test",
            jwks=idp.jwks(),
            allowedAlgorithms=["ES256"],
            maxTokenAge="5m",
            clockSkew="10s",
        ),
        idp_object("unlisted", other.issuer, jwks=other.jwks()),
    ]
    cluster = [idp_object("entra", entra.issuer, kind=api.KIND_CLUSTER_IDP, jwks=idp.jwks())]
    apps = [
        app_object(
            "web",
            CLIENT,
            SECRET,
            providers=[{"name": "corp"}, {"name": "strict"}, {"kind": api.KIND_CLUSTER_IDP, "name": "entra"}],
            accessTokenLifetime="10m",
        ),
        app_object(
            "post",
            POST_CLIENT,
            POST_SECRET,
            tokenEndpointAuthMethod="client_secret_post",
            grantTypes=[api.GRANT_CLIENT_CREDENTIALS],
            scopes=[],
            audiences=["https://api.example.test"],
            status={
                "previousClientSecretHash": hash_client_secret("old-secret"),
                "previousClientSecretExpiresAt": "2027-01-18T08:00:00Z",
            },
        ),  # NOW + 3 days
    ]
    return FixedSource(snapshot_of(idps, cluster, apps, clock=clock))


@pytest.fixture
def client(source, clock):
    return make_client(source, clock)


def exchange(client, token, headers=None, **params):
    form = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": api.TOKEN_TYPE_JWT, **params}
    form = {k: v for k, v in form.items() if v is not None}
    return client.simulate_post(
        "/oauth2/token",
        params=None,
        body=_encode(form),
        headers={**FORM, **(basic(CLIENT, SECRET) if headers is None else headers)},
    )


def _encode(form):
    from urllib.parse import urlencode

    return urlencode(form, doseq=True)


def assert_error(result, status, error, text=""):
    assert result.status_code == status, result.text
    assert result.json["error"] == error, result.json
    assert text in result.json["error_description"], result.json
    assert result.headers["Cache-Control"] == "no-store"
    assert result.headers["Pragma"] == "no-cache"


def published_key(client, kid):
    jwks = client.simulate_get("/.well-known/jwks.json").json
    return jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks)).get_key(kid)


# --- successful grants ---------------------------------------------------------------------------------------


def test_token_exchange_issues_a_signed_access_token(client, idp):
    result = exchange(client, idp.token(), audience="https://api.example.test", scope="read")
    assert result.status_code == 200, result.text
    body = result.json
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == api.TOKEN_TYPE_ACCESS_TOKEN
    assert body["expires_in"] == 600
    assert body["scope"] == "read"
    assert result.headers["Cache-Control"] == "no-store"
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    verified = jwcrypto_jwt.JWT(
        jwt=body["access_token"],
        key=published_key(client, header["kid"]),
        check_claims={"exp": None},
        expected_type="JWS",
    )
    verified.leeway = 10**10  # the test clock is fixed in the future
    claims = json.loads(verified.claims)
    assert claims["iss"] == PUBLIC_ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == "https://api.example.test"
    assert claims["client_id"] == CLIENT
    assert claims["scope"] == "read"
    assert claims["idp"] == "team-a/corp"
    assert claims["exp"] - claims["iat"] == 600 and claims["iat"] == int(NOW)
    assert len(claims["jti"]) >= 16


def test_issued_token_ids_are_128_random_bits():
    from tokenbridge_exchange.access_tokens import new_jti

    ids = [new_jti() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len({i[12] for i in ids}) > 8, "no fixed version nibble: every bit is random"


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_issued_tokens_are_what_pyjwt_writes(alg):
    """The header and claims as issued (kid, typ at+jwt; claims in their order); RS256 and EdDSA signatures are
    deterministic, so the token is byte for byte jwt.encode's; ES256's verifies with PyJWT."""
    from tokenbridge_exchange import access_tokens

    keys = generate_keyset(alg, NOW)
    key = keys.active(NOW)
    extra = {"act": {"sub": "svc", "iss": "https://idp.example"}, "groups": ["a", "é"], "n": 1.5}
    token = access_tokens.issue(
        keys,
        issuer="https://tb.example",
        subject="alice",
        audiences=("a1", "a2"),
        client_id="c",
        scopes=("read", "write"),
        now=NOW,
        expires_at=NOW + 60,
        idp="ns/corp",
        jti="j" * 32,
        extra_claims=extra,
    )
    claims = {
        **extra,
        "iss": "https://tb.example",
        "sub": "alice",
        "aud": ["a1", "a2"],
        "client_id": "c",
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "j" * 32,
        "scope": "read write",
        "idp": "ns/corp",
    }
    if alg != "ES256":
        assert token == jwt.encode(claims, key.private_key, algorithm=alg, headers={"kid": key.kid, "typ": "at+jwt"})
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
    decoded = jwt.decode(
        token,
        key.private_key.public_key(),
        algorithms=[alg],
        audience="a1",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded == claims and list(decoded) == list(claims)


def test_defaults_are_every_application_audience_and_scope(client, idp):
    body = exchange(client, idp.token()).json
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == ["https://api.example.test", "https://other.example.test"]
    assert claims["scope"] == "read write" and body["scope"] == "read write"


def test_resource_and_audience_are_both_targets(client, idp):
    body = exchange(
        client, idp.token(), audience="https://api.example.test", resource="https://other.example.test"
    ).json
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == ["https://api.example.test", "https://other.example.test"]


def test_lifetime_is_capped_at_the_subject_token_expiry(client, idp):
    body = exchange(client, idp.token(exp=int(NOW) + 120)).json
    assert body["expires_in"] == 120
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["exp"] == int(NOW) + 120


def test_requested_token_type_jwt_is_echoed(client, idp):
    body = exchange(client, idp.token(), requested_token_type=api.TOKEN_TYPE_JWT).json
    assert body["issued_token_type"] == api.TOKEN_TYPE_JWT


@pytest.mark.parametrize("token_type", [api.TOKEN_TYPE_ID_TOKEN, api.TOKEN_TYPE_ACCESS_TOKEN])
def test_id_tokens_and_jwt_access_tokens_are_subject_tokens(client, idp, token_type):
    assert exchange(client, idp.token(), subject_token_type=token_type).status_code == 200


def test_aud_list_with_one_allowed_audience(client, idp):
    assert exchange(client, idp.token(aud=["other", "api://tokenbridge"])).status_code == 200


def test_header_key_references_are_ignored(client, idp):
    token = idp.token(
        header={"jku": "https://evil.test/jwks", "x5u": "https://evil.test/cert", "jwk": {"kty": "EC"}, "x5c": ["AAAA"]}
    )
    assert exchange(client, token).status_code == 200


def test_jwt_bearer_grant(client, idp):
    form = {"grant_type": api.GRANT_JWT_BEARER, "assertion": idp.token(), "scope": "write"}
    result = client.simulate_post("/oauth2/token", body=_encode(form), headers={**FORM, **basic(CLIENT, SECRET)})
    assert result.status_code == 200, result.text
    claims = jwt.decode(result.json["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["scope"] == "write" and claims["idp"] == "team-a/corp"


def test_client_credentials_grant_with_client_secret_post(client):
    form = {"grant_type": "client_credentials", "client_id": POST_CLIENT, "client_secret": POST_SECRET}
    result = client.simulate_post("/oauth2/token", body=_encode(form), headers=FORM)
    assert result.status_code == 200, result.text
    assert "scope" not in result.json
    claims = jwt.decode(result.json["access_token"], options={"verify_signature": False})
    assert claims["sub"] == POST_CLIENT and claims["client_id"] == POST_CLIENT and "idp" not in claims
    assert claims["exp"] - claims["iat"] == 900  # default lifetime


def test_previous_secret_accepted_during_grace_window_only(client, clock):
    form = {"grant_type": "client_credentials", "client_id": POST_CLIENT, "client_secret": "old-secret"}
    assert client.simulate_post("/oauth2/token", body=_encode(form), headers=FORM).status_code == 200
    clock.now = 1_800_000_000 + 10 * 86400
    assert_error(client.simulate_post("/oauth2/token", body=_encode(form), headers=FORM), 401, "invalid_client")


def test_entra_tenant_template_matches_the_tokens_own_tid(client, idp):
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    iss = f"https://login.microsoftonline.com/{tenant}/v2.0"
    result = exchange(client, idp.token(iss=iss, tid=tenant))
    assert result.status_code == 200, result.text
    assert jwt.decode(result.json["access_token"], options={"verify_signature": False})["idp"] == "entra"
    assert_error(exchange(client, idp.token(iss=iss, tid="another-tenant")), 400, "invalid_grant", "issuer")


# --- client authentication -----------------------------------------------------------------------------------


def test_no_client_authentication(client, idp):
    result = exchange(client, idp.token(), headers={})
    assert_error(result, 401, "invalid_client", "client authentication is required")
    assert result.headers["WWW-Authenticate"].startswith("Basic")


def test_wrong_secret_basic_has_a_challenge(client, idp):
    result = exchange(client, idp.token(), headers=basic(CLIENT, "wrong"))
    assert_error(result, 401, "invalid_client", "wrong client secret")
    assert result.headers["WWW-Authenticate"].startswith("Basic")


def test_unknown_client(client, idp):
    assert_error(exchange(client, idp.token(), headers=basic("nobody", SECRET)), 401, "invalid_client")


def test_wrong_secret_post_has_no_basic_challenge(client):
    form = {"grant_type": "client_credentials", "client_id": POST_CLIENT, "client_secret": "wrong"}
    result = client.simulate_post("/oauth2/token", body=_encode(form), headers=FORM)
    assert_error(result, 401, "invalid_client")
    assert "WWW-Authenticate" not in result.headers


def test_both_authentication_methods_at_once(client, idp):
    assert_error(exchange(client, idp.token(), client_secret=SECRET), 400, "invalid_request", "both")


def test_body_client_id_must_match_basic(client, idp):
    assert_error(exchange(client, idp.token(), client_id="someone-else"), 401, "invalid_client", "differs")


def test_registered_auth_method_is_enforced(client, idp):
    assert_error(
        exchange(client, idp.token(), headers={}, client_id=CLIENT, client_secret=SECRET),
        401,
        "invalid_client",
        "registered for client_secret_basic",
    )
    form = {"grant_type": "client_credentials"}
    result = client.simulate_post(
        "/oauth2/token", body=_encode(form), headers={**FORM, **basic(POST_CLIENT, POST_SECRET)}
    )
    assert_error(result, 401, "invalid_client", "registered for client_secret_post")


@pytest.mark.parametrize("authorization", ["Bearer abc", "Basic !!!notbase64", "Basic " + b64url("no-colon")])
def test_malformed_authorization_header(client, idp, authorization):
    assert_error(exchange(client, idp.token(), headers={"Authorization": authorization}), 401, "invalid_client")


def test_basic_credentials_are_form_urlencoded(idp, clock):
    source = FixedSource(
        snapshot_of(
            [idp_object("corp", idp.issuer, jwks=idp.jwks())],
            apps=[app_object("web", "id:with colon", "s p+ce")],
            clock=clock,
        )
    )
    client = make_client(source, clock)
    headers = {"Authorization": "Basic " + __import__("base64").b64encode(b"id%3Awith+colon:s+p%2Bce").decode()}
    assert exchange(client, idp.token(), headers=headers).status_code == 200


# --- grant, target and scope ---------------------------------------------------------------------------------


def test_missing_grant_type(client):
    result = client.simulate_post("/oauth2/token", body="", headers={**FORM, **basic(CLIENT, SECRET)})
    assert_error(result, 400, "invalid_request", "grant_type")


def test_unsupported_grant_type(client):
    result = client.simulate_post(
        "/oauth2/token", body="grant_type=password", headers={**FORM, **basic(CLIENT, SECRET)}
    )
    assert_error(result, 400, "unsupported_grant_type")


def test_grant_not_listed_in_the_application(client, idp):
    form = {
        "grant_type": EXCHANGE,
        "subject_token": idp.token(),
        "subject_token_type": api.TOKEN_TYPE_JWT,
        "client_id": POST_CLIENT,
        "client_secret": POST_SECRET,
    }
    assert_error(client.simulate_post("/oauth2/token", body=_encode(form), headers=FORM), 400, "unauthorized_client")


@pytest.mark.parametrize("param", ["audience", "resource"])
def test_target_outside_the_application(client, idp, param):
    assert_error(exchange(client, idp.token(), **{param: "https://elsewhere.test"}), 400, "invalid_target", "elsewhere")


def test_scope_outside_the_application(client, idp):
    assert_error(exchange(client, idp.token(), scope="read admin"), 400, "invalid_scope", "admin")


def test_application_without_audiences_cannot_get_a_token(idp, clock):
    source = FixedSource(
        snapshot_of(
            [idp_object("corp", idp.issuer, jwks=idp.jwks())],
            apps=[app_object("web", CLIENT, SECRET, audiences=[])],
            clock=clock,
        )
    )
    assert_error(exchange(make_client(source, clock), idp.token()), 400, "invalid_target", "no audiences")


# --- request shape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["subject_token", "subject_token_type"])
def test_missing_exchange_parameters(client, idp, missing):
    assert_error(
        exchange(client, idp.token(), **{missing: None}) if missing == "subject_token_type" else exchange(client, None),
        400,
        "invalid_request",
        missing,
    )


def test_missing_assertion(client):
    result = client.simulate_post(
        "/oauth2/token", body=f"grant_type={api.GRANT_JWT_BEARER}", headers={**FORM, **basic(CLIENT, SECRET)}
    )
    assert_error(result, 400, "invalid_request", "assertion")


def test_unsupported_subject_token_type(client, idp):
    assert_error(
        exchange(client, idp.token(), subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
        400,
        "invalid_request",
        "subject_token_type",
    )


def test_unsupported_requested_token_type(client, idp):
    assert_error(
        exchange(client, idp.token(), requested_token_type="urn:ietf:params:oauth:token-type:refresh_token"),
        400,
        "invalid_request",
        "requested_token_type",
    )


def test_actor_token_is_refused(client, idp):
    assert_error(
        exchange(client, idp.token(), actor_token=idp.token(), actor_token_type=api.TOKEN_TYPE_JWT),
        400,
        "invalid_request",
        "actor_token",
    )


def test_repeated_parameter(client, idp):
    body = _encode(
        {"grant_type": [EXCHANGE, EXCHANGE], "subject_token": idp.token(), "subject_token_type": api.TOKEN_TYPE_JWT}
    )
    result = client.simulate_post("/oauth2/token", body=body, headers={**FORM, **basic(CLIENT, SECRET)})
    assert_error(result, 400, "invalid_request", "repeated")


def test_wrong_content_type(client, idp):
    result = client.simulate_post("/oauth2/token", json={"grant_type": EXCHANGE}, headers=basic(CLIENT, SECRET))
    assert_error(result, 400, "invalid_request", "x-www-form-urlencoded")


def test_body_too_large(client):
    result = client.simulate_post("/oauth2/token", body="a=" + "x" * 70_000, headers={**FORM, **basic(CLIENT, SECRET)})
    assert_error(result, 413, "invalid_request", "larger than")


def test_body_not_utf8(client):
    result = client.simulate_post("/oauth2/token", body=b"grant_type=%ff%fe", headers={**FORM, **basic(CLIENT, SECRET)})
    assert_error(result, 400, "invalid_request", "not a valid form")


def test_method_not_allowed_and_not_found_are_json(client):
    result = client.simulate_get("/oauth2/token")
    assert_error(result, 405, "invalid_request", "method GET is not allowed")  # RFC 6749 §5.2 has no other code
    assert "POST" in result.headers["Allow"]
    assert_error(client.simulate_get("/nowhere"), 404, "not_found")


def test_no_snapshot_yet_is_temporarily_unavailable(idp):
    client = make_client(FixedSource(None))
    assert_error(exchange(client, idp.token()), 503, "temporarily_unavailable")
    assert client.simulate_get("/readyz").status_code == 503
    assert client.simulate_get("/healthz").status_code == 200


def test_unexpected_exception_is_a_json_server_error(caplog):
    class Broken:
        def current(self):
            raise RuntimeError("boom")

    import falcon.testing

    from tokenbridge_exchange.app import create_app
    from tokenbridge_exchange.config import ServerConfig

    client = falcon.testing.TestClient(create_app(ServerConfig(issuer=PUBLIC_ISSUER), Broken()))
    result = client.simulate_post("/oauth2/token", body="", headers=FORM)
    assert_error(result, 500, "server_error", "internal error")
    assert "boom" not in result.text and "Traceback" not in result.text
    assert "unexpected error" in caplog.text


# --- subject token validation --------------------------------------------------------------------------------


def test_subject_token_too_large_is_refused_before_decoding(client, idp):
    assert_error(exchange(client, "x" * (16 * 1024 + 1)), 400, "invalid_grant", "larger than 16384")


@pytest.mark.parametrize(
    "token, text",
    [
        ("not-a-jwt", "not a JWT"),
        ("a.b.c.d.e", "not a JWT"),
        ("!!.e30.c2ln", "not base64url"),
        (b64url("not json") + ".e30.c2ln", "header is not JSON"),
        (b64url("[1]") + ".e30.c2ln", "header is not a JSON object"),
        (b64url('{"alg":"RS256"}') + "." + b64url("nope") + ".c2ln", "payload is not JSON"),
    ],
)
def test_malformed_subject_token(client, token, text):
    assert_error(exchange(client, token), 400, "invalid_grant", text)


def test_alg_none_is_refused(client, idp):
    unsigned = b64url(json.dumps({"alg": "none", "kid": idp.kid})) + "." + b64url(json.dumps(idp.claims())) + "."
    assert_error(exchange(client, unsigned), 400, "invalid_grant", "alg 'none' is not allowed")


def test_hmac_with_the_public_key_as_secret_is_refused(client, idp):
    public_pem = (
        idp.keys[idp.kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64url(json.dumps({"alg": "HS256", "kid": idp.kid}))
    payload = b64url(json.dumps(idp.claims()))
    import hashlib
    import hmac

    signature = b64url(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert_error(exchange(client, f"{header}.{payload}.{signature}"), 400, "invalid_grant", "alg 'HS256'")


def test_alg_outside_the_idps_allowed_set(client, idp):
    assert_error(
        exchange(client, idp.token(iss="https://strict.example.test")),
        400,
        "invalid_grant",
        "alg 'RS256' is not allowed by identity provider team-a/strict",
    )


def test_crit_header_is_refused(client, idp):
    assert_error(exchange(client, idp.token(header={"crit": ["exp"]})), 400, "invalid_grant", "crit")


def test_embedded_jwk_cannot_supply_the_key(client, idp):
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        idp.claims(),
        attacker,
        algorithm="ES256",
        headers={"kid": idp.kid, "jwk": json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(attacker.public_key()))},
    )
    assert_error(exchange(client, token), 400, "invalid_grant", "no ES256 key with kid")
    other = IdP(idp.issuer)
    forged = other.token(header={"kid": idp.kid, "jwk": other.jwks()["keys"][0]})
    assert_error(exchange(client, forged), 400, "invalid_grant", "signature does not verify")


def test_unknown_kid(client, idp):
    assert_error(
        exchange(client, idp.token(header={"kid": "rotated-away"})),
        400,
        "invalid_grant",
        "no RS256 key with kid 'rotated-away'",
    )


def test_token_without_kid_is_tried_against_every_key(client, idp):
    token = jwt.encode(idp.claims(), idp.keys[idp.kid], algorithm="RS256")
    assert exchange(client, token).status_code == 200


def test_tampered_payload(client, idp):
    header, _, signature = idp.token().split(".")
    payload = b64url(json.dumps(idp.claims(sub="mallory")))
    assert_error(exchange(client, f"{header}.{payload}.{signature}"), 400, "invalid_grant", "signature")


@pytest.mark.parametrize(
    "claims, text",
    [
        ({"iss": None}, "no iss claim"),
        ({"iss": "https://unknown.example.test"}, "not an identity provider of this client"),
        ({"iss": "https://other-idp.example.test"}, "not an identity provider of this client"),
        ({"iss": "https://idp.example.test/"}, "not an identity provider"),  # exact comparison
        ({"aud": "api://someone-else"}, "contains none of the audiences"),
        ({"aud": ["a", "b"]}, "contains none of the audiences"),
        ({"exp": None}, "no exp claim"),
        ({"exp": "tomorrow"}, "exp claim is not a number"),
        ({"exp": int(NOW) - 61}, "expired"),
        ({"exp": int(NOW) - 30}, "expires now"),  # within the skew: valid, but nothing left to issue
        ({"nbf": int(NOW) + 120}, "not valid yet"),
        ({"iat": int(NOW) + 120}, "issued in the future"),
        ({"sub": None}, "no sub claim"),
    ],
)
def test_claim_validation(client, idp, claims, text):
    assert_error(exchange(client, idp.token(**claims)), 400, "invalid_grant", text)


def test_nbf_and_iat_within_clock_skew_are_accepted(client, idp):
    assert exchange(client, idp.token(nbf=int(NOW) + 50, iat=int(NOW) + 50)).status_code == 200


def test_max_token_age(idp, clock):
    strict = IdP("https://strict.example.test", alg="ES256")
    source = FixedSource(
        snapshot_of(
            [
                idp_object(
                    "strict",
                    strict.issuer,
                    jwks=strict.jwks(),
                    allowedAlgorithms=["ES256"],
                    maxTokenAge="5m",
                    clockSkew="10s",
                )
            ],
            apps=[app_object("web", CLIENT, SECRET, providers=[{"name": "strict"}])],
            clock=clock,
        )
    )
    client = make_client(source, clock)
    assert exchange(client, strict.token(iat=int(NOW) - 305)).status_code == 200
    assert_error(exchange(client, strict.token(iat=int(NOW) - 320)), 400, "invalid_grant", "older than the maxTokenAge")
    assert_error(exchange(client, strict.token(iat=None)), 400, "invalid_grant", "has no iat")


def test_jwt_bearer_assertion_is_validated_the_same_way(client, idp):
    form = {"grant_type": api.GRANT_JWT_BEARER, "assertion": idp.token(aud="nope")}
    result = client.simulate_post("/oauth2/token", body=_encode(form), headers={**FORM, **basic(CLIENT, SECRET)})
    assert_error(result, 400, "invalid_grant", "contains none of the audiences")


def test_idps_sharing_an_issuer_are_each_tried(idp, clock):
    second = IdP(idp.issuer)
    source = FixedSource(
        snapshot_of(
            [idp_object("a", idp.issuer, jwks=idp.jwks()), idp_object("b", idp.issuer, jwks=second.jwks())],
            apps=[app_object("web", CLIENT, SECRET, providers=[{"name": "a"}, {"name": "b"}])],
            clock=clock,
        )
    )
    result = exchange(make_client(source, clock), second.token())
    assert result.status_code == 200, result.text
    assert jwt.decode(result.json["access_token"], options={"verify_signature": False})["idp"] == "team-a/b"


def test_hmac_stays_refused_even_when_an_idp_lists_it(idp, clock):
    """Manifests are not checked by the CRD schema: an IdP listing HS256 still never accepts it."""
    source = FixedSource(
        snapshot_of(
            [idp_object("corp", idp.issuer, jwks=idp.jwks(), allowedAlgorithms=["HS256", "none", "RS256"])],
            apps=[app_object("web", CLIENT, SECRET)],
            clock=clock,
        )
    )
    client = make_client(source, clock)
    token = jwt.encode(idp.claims(), "k" * 32, algorithm="HS256", headers={"kid": idp.kid})
    assert_error(exchange(client, token), 400, "invalid_grant", "alg 'HS256' is not allowed")
    assert exchange(client, idp.token()).status_code == 200


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_non_finite_or_huge_time_claims_are_refused(client, idp, name, raw):
    """NaN/Infinity are not JSON; 1e400 and a 401-digit integer are not NumericDates: refused, never a 500."""
    claims = json.dumps(idp.claims())[:-1] + f', "{name}x": 0}}'
    claims = claims.replace(f'"{name}": ', f'"{name}_orig": ').replace(f'"{name}x": 0', f'"{name}": {raw}')
    header = b64url(json.dumps({"alg": "RS256", "kid": idp.kid}))
    payload = b64url(claims)
    key = idp.keys[idp.kid]
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{header}.{payload}".encode(), key)
    result = exchange(client, f"{header}.{payload}.{b64url(signature)}")
    text = "not JSON" if raw.lstrip("-") in ("NaN", "Infinity") else f"the {name} claim is not a finite number"
    assert_error(result, 400, "invalid_grant", text)
