"""Pure core pieces shared by operator and server: JWKS parsing, issuer matching, signing keys, secrets."""

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenbridge.client_secrets import generate_client_secret, hash_client_secret
from tokenbridge.durations import parse_duration
from tokenbridge.issuers import IssuerIndex, issuer_from_well_known, template_matches
from tokenbridge.jwks import JWKSError, parse_jwks
from tokenbridge.signing import SigningKeySet, ensure_rotated, generate_keyset, thumbprint


def jwk_of(private_key, **extra):
    alg = {rsa.RSAPrivateKey: "RS256", ec.EllipticCurvePrivateKey: "ES256"}
    name = next((v for k, v in alg.items() if isinstance(private_key, k)), "EdDSA")
    return {**json.loads(jwt.get_algorithm_by_name(name).to_jwk(private_key.public_key())), **extra}


@pytest.fixture(scope="module")
def keys():
    return {
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


class TestParseJWKS:
    def test_usable_keys_verify_and_unusable_ones_are_explained(self, keys):
        doc = {
            "keys": [
                jwk_of(keys["ec"], kid="ec1"),  # no alg: inferred ES256 from the curve
                jwk_of(keys["rsa"], kid="rsa1", alg="RS256"),
                jwk_of(keys["rsa"], kid="enc", use="enc"),
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                jwk_of(keys["ed"], kid="ed1"),  # EdDSA not allowed below
                jwk_of(keys["rsa"], kid="hs", alg="HS256"),  # symmetric alg on an RSA key
                {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AA", "y": "AA"},
                "not-an-object",
            ]
        }
        ks = parse_jwks(doc, ["RS256", "ES256"])
        assert len(ks) == 2 and ks.algorithms == {"RS256", "ES256"}
        assert len(ks.skipped) == 6
        token = jwt.encode({"a": 1}, keys["ec"], algorithm="ES256", headers={"kid": "ec1"})
        (candidate,) = ks.candidates("ec1", "ES256")
        assert jwt.decode(token, candidate.key, algorithms=["ES256"]) == {"a": 1}
        assert ks.candidates("ec1", "RS256") == [] and ks.candidates("nope", "ES256") == []
        assert len(ks.candidates(None, "RS256")) == 1

    def test_symmetric_algorithms_are_never_allowed_even_if_asked(self, keys):
        ks = parse_jwks({"keys": [jwk_of(keys["rsa"], kid="r", alg="HS256")]}, ["HS256", "RS256"])
        assert len(ks) == 0

    @pytest.mark.parametrize("doc", [None, [], {"keys": {}}, {"nokeys": []}, "x"])
    def test_not_a_jwk_set(self, doc):
        with pytest.raises(JWKSError):
            parse_jwks(doc, ["RS256"])


class TestIssuers:
    def test_issuer_from_well_known(self):
        assert (
            issuer_from_well_known("https://dev-1.okta.com/oauth2/default/.well-known/openid-configuration")
            == "https://dev-1.okta.com/oauth2/default"
        )
        assert (
            issuer_from_well_known("https://as.example/.well-known/oauth-authorization-server/t1")
            == "https://as.example/t1"
        )
        with pytest.raises(ValueError):
            issuer_from_well_known("https://example.com/metadata")

    def test_exact_and_template_lookup(self):
        index = IssuerIndex(
            [
                ("https://login.microsoftonline.com/{tenantid}/v2.0", "entra"),
                ("https://tenant.auth0.com/", "auth0-a"),
                ("https://tenant.auth0.com/", "auth0-b"),
            ]
        )
        assert index.lookup("https://tenant.auth0.com/") == ("auth0-a", "auth0-b")
        assert index.lookup("https://tenant.auth0.com") == ()  # no trailing-slash folding on tokens
        tid = "9188040d-6c67-4c5b-b112-36a304b66dad"
        assert index.lookup(f"https://login.microsoftonline.com/{tid}/v2.0", tid) == ("entra",)
        assert index.lookup(f"https://login.microsoftonline.com/{tid}/v2.0", "other") == ()
        assert index.lookup(f"https://login.microsoftonline.com/{tid}/v2.0") == ()

    @pytest.mark.parametrize("tid", ["a/b", "", "x" * 300, 7, None, "../"])
    def test_template_refuses_odd_tenants(self, tid):
        tpl = "https://login.microsoftonline.com/{tenantid}/v2.0"
        iss = tpl.replace("{tenantid}", str(tid))
        assert not template_matches(tpl, iss, tid)


class TestSigning:
    def test_kid_is_rfc7638_thumbprint(self):
        # RFC 7638 §3.1 example key and its thumbprint
        jwk = {
            "kty": "RSA",
            "e": "AQAB",
            "n": (
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
                "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
                "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
            ),
        }
        assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

    @pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
    def test_round_trip_and_signing(self, alg):
        ks = generate_keyset(alg, now=1000)
        again = SigningKeySet.from_secret_data(ks.to_secret_data())
        key = again.active(1000)
        assert key.kid == ks.keys[0].kid == thumbprint(key.public_jwk())
        token = jwt.encode({"sub": "x"}, key.private_key, algorithm=alg, headers={"kid": key.kid})
        published = parse_jwks(again.jwks(1000), [alg])
        (vk,) = published.candidates(key.kid, alg)
        assert jwt.decode(token, vk.key, algorithms=[alg]) == {"sub": "x"}
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(again.jwks(1000)["keys"][0])  # public only

    def test_publish_then_sign_and_retention(self):
        args = dict(alg="ES256", rotation_period=100, publish_lead=10, max_token_lifetime=50)
        ks = ensure_rotated(None, now=0, **args)
        assert ensure_rotated(ks, now=89, **args) is ks
        ks2 = ensure_rotated(ks, now=90, **args)
        old, new = ks2.keys
        assert {k.kid for k in ks2.published(90)} == {old.kid, new.kid}  # published before it signs
        assert ks2.active(95) is old and ks2.active(100) is new
        assert ensure_rotated(ks2, now=95, **args) is ks2  # successor pending: nothing to do
        assert {k.kid for k in ks2.published(149)} == {old.kid, new.kid}  # old tokens still verifiable
        ks3 = ensure_rotated(ks2, now=151, **args)
        assert [k.kid for k in ks3.keys] == [new.kid]

    def test_algorithm_change_rotates(self):
        ks = generate_keyset("ES256", now=0)
        ks2 = ensure_rotated(ks, now=1, alg="RS256", rotation_period=1000, publish_lead=5, max_token_lifetime=5)
        assert [k.alg for k in ks2.keys] == ["ES256", "RS256"] and ks2.active(6).alg == "RS256"

    @pytest.mark.parametrize(
        "data", [{}, {"keys.json": "!!"}, {"keys.json": base64.b64encode(b'{"keys": []}').decode()}]
    )
    def test_bad_secret_data(self, data):
        with pytest.raises(ValueError):
            SigningKeySet.from_secret_data(data)


def test_client_secrets():
    assert not any(generate_client_secret().startswith("-") for _ in range(2000))  # ~31 would without the redraw
    secret = generate_client_secret()
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    h = hash_client_secret(secret)
    assert h == hash_client_secret(secret) and h.startswith("sha256:") and len(h) == len("sha256:") + 64
    assert hash_client_secret(secret + "x") != h


def test_durations():
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    for bad in ("5 minutes", "", "10", "-1s", "1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
