"""Attacks on the HTTP and OAuth request layer of the token endpoint: client-secret guessing and client
enumeration, malformed Authorization headers, missing and repeated form parameters, wrong content types and
methods, oversized bodies, grant/target/scope escalation."""

from __future__ import annotations

import base64
import hmac
import json

import falcon.testing
import pytest

import tokenbridge.client_secrets as client_secrets
from tests.support.attacks import (
    CLIENT,
    POST_CLIENT,
    POST_SECRET,
    SECRET,
    assert_accepted,
    assert_refused,
    client_for,
    encode,
    exchange,
    post,
)
from tests.support.exchange import FORM, app_object, basic
from tokenbridge import api


def exchange_form(world, **overrides):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": world.corp.token(),
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **overrides,
    }
    return {k: v for k, v in form.items() if v is not None}


# --- client authentication: guessing and enumeration ---------------------------------------------------------

SECRET_GUESSES = {
    "wrong": "wrong-secret",
    "empty-ish": " ",
    "prefix": SECRET[:-1],
    "suffix": SECRET + "x",
    "upper": SECRET.upper(),
    "trailing-newline": SECRET + "\n",
    "the-hash": client_secrets.hash_client_secret(SECRET),
    "the-hash-hex": client_secrets.hash_client_secret(SECRET).split(":", 1)[1],
    "other-clients-secret": POST_SECRET,
    "very-long": "x" * 10000,
}


@pytest.mark.parametrize("guess", list(SECRET_GUESSES))
def test_secret_guesses_basic(client, world, guess):
    result = exchange(client, world.corp.token(), auth=basic(CLIENT, SECRET_GUESSES[guess]))
    body = assert_refused(result, "invalid_client")
    assert result.headers["WWW-Authenticate"].startswith("Basic")
    assert body["error_description"] == "unknown client or wrong client secret"


@pytest.mark.parametrize(
    "client_id", [CLIENT.upper(), CLIENT + " ", " " + CLIENT, CLIENT + "\u0000", "", "nobody", "*", "%", CLIENT[:-1]]
)
def test_client_id_lookalikes_with_the_right_secret(client, world, client_id):
    assert_refused(exchange(client, world.corp.token(), auth=basic(client_id, SECRET)), "invalid_client")


@pytest.mark.parametrize("method", ["basic", "post"])
def test_no_client_enumeration(client, world, method):
    """A wrong secret for a real client and any secret for a client that does not exist answer byte for byte the
    same: status, headers that matter and body."""

    def attempt(client_id):
        if method == "basic":
            return exchange(client, world.corp.token(), auth=basic(client_id, "guess"))
        form = {"grant_type": api.GRANT_CLIENT_CREDENTIALS, "client_id": client_id, "client_secret": "guess"}
        return post(client, form)

    known = attempt(CLIENT if method == "basic" else POST_CLIENT)
    unknown = attempt("tb-does-not-exist")
    for result in (known, unknown):
        assert_refused(result, "invalid_client")
    assert known.status_code == unknown.status_code
    assert known.text == unknown.text
    assert known.headers.get("WWW-Authenticate") == unknown.headers.get("WWW-Authenticate")


@pytest.mark.parametrize("client_id, secret", [(CLIENT, "guess"), ("tb-does-not-exist", "guess"), (CLIENT, SECRET)])
def test_secrets_are_compared_with_compare_digest_at_equal_cost(client, world, monkeypatch, client_id, secret):
    """The code path: every attempt, for a known client or not, hashes the presented secret once and compares
    it with hmac.compare_digest (constant time) exactly twice (current and previous secret, a placeholder hash
    where there is none); no other comparison of secrets happens."""
    digests, compares = [], []
    real_hash, real_compare = client_secrets.hash_client_secret, hmac.compare_digest

    def spy_hash(value):
        digests.append(value)
        return real_hash(value)

    def spy_compare(a, b):
        compares.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(client_secrets, "hash_client_secret", spy_hash)
    monkeypatch.setattr(hmac, "compare_digest", spy_compare)
    result = exchange(client, world.corp.token(), auth=basic(client_id, secret))
    if secret == SECRET:
        assert_accepted(result)
    else:
        assert_refused(result, "invalid_client")
    assert digests == [secret]
    secret_compares = [c for c in compares if any(str(x).startswith(client_secrets.HASH_PREFIX) for x in c)]
    assert all(presented == real_hash(secret) for presented, _ in secret_compares), secret_compares
    assert len(secret_compares) == 2, secret_compares


def test_client_in_rotation_costs_the_same_as_an_unknown_client(world, monkeypatch):
    """During a secret rotation's grace window a wrong secret for that client was hashed twice (current, then
    previous) while an unknown client cost one hash: a (tiny) timing difference that told a guesser the client
    exists and is rotating. Every attempt does the same work: a client in its grace window, one whose grace window
    has ended, one that never rotated and one that does not exist."""
    old = {"previousClientSecretHash": client_secrets.hash_client_secret("old-secret")}
    apps = [
        app_object(
            "web",
            CLIENT,
            SECRET,
            providers=[{"name": "corp"}],
            status={**old, "previousClientSecretExpiresAt": "2027-01-18T08:00:00Z"},
        ),  # NOW + 3 days
        app_object(
            "expired",
            "tb-expired",
            SECRET,
            providers=[{"name": "corp"}],
            status={**old, "previousClientSecretExpiresAt": "2027-01-14T08:00:00Z"},
        ),  # NOW - 1 day
        app_object("plain", "tb-plain", SECRET, providers=[{"name": "corp"}]),
    ]
    client = client_for(world.source(apps=apps))
    assert_accepted(exchange(client, world.corp.token(), auth=basic(CLIENT, "old-secret")))  # in grace
    assert_refused(exchange(client, world.corp.token(), auth=basic("tb-expired", "old-secret")), "invalid_client")
    work = {}
    real_hash, real_compare = client_secrets.hash_client_secret, hmac.compare_digest
    for who in (CLIENT, "tb-expired", "tb-plain", "tb-does-not-exist"):
        hashes, compares = [], []
        monkeypatch.setattr(
            client_secrets, "hash_client_secret", lambda v, hashes=hashes: hashes.append(v) or real_hash(v)
        )
        monkeypatch.setattr(
            hmac, "compare_digest", lambda a, b, compares=compares: compares.append(a) or real_compare(a, b)
        )
        assert_refused(exchange(client, world.corp.token(), auth=basic(who, "guess")), "invalid_client")
        work[who] = (len(hashes), len([a for a in compares if str(a).startswith(client_secrets.HASH_PREFIX)]))
    assert len(set(work.values())) == 1, work


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "x" * 20,
        "Digest username=web",
        "Basic",
        "Basic ",
        "Basic !!!!",
        "Basic " + "A" * 5,
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode() + "=",
        "Basic " + base64.urlsafe_b64encode(b"\xfb\xff:?>").decode(),
        "Basic " + base64.b64encode(b":").decode(),
        "basic " + base64.b64encode(f"{CLIENT}:".encode()).decode(),
    ],
)
def test_malformed_authorization_header(client, world, authorization):
    assert_refused(exchange(client, world.corp.token(), auth={"Authorization": authorization}), "invalid_client")


def test_basic_and_post_credentials_together(client, world):
    result = post(client, exchange_form(world, client_secret=SECRET), {**FORM, **basic(CLIENT, SECRET)})
    assert_refused(result, "invalid_request")


def test_registered_method_is_enforced_even_with_the_right_secret(client, world):
    form = {"grant_type": api.GRANT_CLIENT_CREDENTIALS}
    assert_refused(post(client, form, {**FORM, **basic(POST_CLIENT, POST_SECRET)}), "invalid_client")
    assert_refused(post(client, exchange_form(world, client_id=CLIENT, client_secret=SECRET)), "invalid_client")


def test_body_client_id_differing_from_basic(client, world):
    assert_refused(
        post(client, exchange_form(world, client_id=POST_CLIENT), {**FORM, **basic(CLIENT, SECRET)}), "invalid_client"
    )


def test_no_credentials_at_all(client, world):
    assert_refused(post(client, exchange_form(world)), "invalid_client")
    assert_refused(post(client, exchange_form(world, client_id=CLIENT)), "invalid_client")


# --- form parameters: repeated, missing, escalation ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "requested_token_type",
        "scope",
        "client_id",
        "client_secret",
        "assertion",
        "actor_token",
    ],
)
def test_repeated_parameter(client, world, name):
    pairs = list(exchange_form(world).items())
    if name in ("client_id", "client_secret"):  # post credentials, each twice
        pairs += [("client_id", POST_CLIENT), ("client_secret", POST_SECRET)]
        pairs.append((name, POST_CLIENT if name == "client_id" else POST_SECRET))
        headers = FORM
    else:
        value = dict(pairs).get(name, "x")
        pairs += [(name, value), (name, value)] if name not in dict(pairs) else [(name, value)]
        headers = {**FORM, **basic(CLIENT, SECRET)}
    body = assert_refused(post(client, pairs, headers), "invalid_request")
    assert "repeated" in body["error_description"]


def test_repeated_subject_token_with_different_tokens(client, world):
    """Two subject tokens, the first forged: neither "first wins" nor "last wins" may be chosen."""
    pairs = [
        ("grant_type", api.GRANT_TOKEN_EXCHANGE),
        ("subject_token", world.attacker_rsa.token()),
        ("subject_token", world.corp.token()),
        ("subject_token_type", api.TOKEN_TYPE_JWT),
    ]
    assert_refused(post(client, pairs, {**FORM, **basic(CLIENT, SECRET)}), "invalid_request")


@pytest.mark.parametrize("missing", ["grant_type", "subject_token", "subject_token_type"])
@pytest.mark.parametrize("how", ["absent", "empty"])
def test_missing_parameter(client, world, missing, how):
    form = exchange_form(world)
    if how == "absent":
        del form[missing]
    else:
        form[missing] = ""
    body = assert_refused(post(client, form, {**FORM, **basic(CLIENT, SECRET)}), "invalid_request")
    assert missing in body["error_description"]


def test_missing_assertion_for_jwt_bearer(client):
    assert_refused(
        post(client, {"grant_type": api.GRANT_JWT_BEARER}, {**FORM, **basic(CLIENT, SECRET)}), "invalid_request"
    )


def test_parameters_in_the_query_string_are_not_read(client, world):
    """RFC 6749 §3.2: parameters in the body. A token in a URL leaks into logs; the server must not read it."""
    result = client.simulate_post(
        "/oauth2/token", query_string=encode(exchange_form(world)), body="", headers={**FORM, **basic(CLIENT, SECRET)}
    )
    assert_refused(result, "invalid_request")


@pytest.mark.parametrize(
    "grant_type",
    [
        "password",
        "authorization_code",
        "refresh_token",
        "implicit",
        "urn:ietf:params:oauth:grant-type:device_code",
        api.GRANT_TOKEN_EXCHANGE.upper(),
        api.GRANT_TOKEN_EXCHANGE + " ",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "none",
        "*",
    ],
)
def test_unsupported_grant_types(client, world, grant_type):
    assert_refused(
        post(client, exchange_form(world, grant_type=grant_type), {**FORM, **basic(CLIENT, SECRET)}),
        "unsupported_grant_type",
    )


@pytest.mark.parametrize("grant_type", [api.GRANT_TOKEN_EXCHANGE, api.GRANT_JWT_BEARER])
def test_grant_the_client_is_not_registered_for(client, world, grant_type):
    form = exchange_form(
        world, grant_type=grant_type, assertion=world.corp.token(), client_id=POST_CLIENT, client_secret=POST_SECRET
    )
    assert_refused(post(client, form), "unauthorized_client")


@pytest.mark.parametrize(
    "param, value",
    [
        ("audience", "https://elsewhere.example.test"),
        ("resource", "https://elsewhere.example.test"),
        ("audience", "https://api.example.test/"),
        ("audience", "HTTPS://API.EXAMPLE.TEST"),
        ("audience", "api://tokenbridge"),  # the IdP-side audience is not a target of this client
        ("audience", "https://api.example.test https://other.example.test"),
        ("resource", "*"),
    ],
)
def test_target_escalation(client, world, param, value):
    assert_refused(
        post(client, exchange_form(world, **{param: value}), {**FORM, **basic(CLIENT, SECRET)}), "invalid_target"
    )


@pytest.mark.parametrize(
    "scope", ["admin", "read admin", "READ", "read,write", "*", "openid", "read+write", "read write admin", "read\x00"]
)
def test_scope_escalation(client, world, scope):
    assert_refused(post(client, exchange_form(world, scope=scope), {**FORM, **basic(CLIENT, SECRET)}), "invalid_scope")


@pytest.mark.parametrize(
    "scope",
    [
        "read\u00a0write",
        "read\twrite",
        "read\nwrite",
        "read\u2003write",
        "read\u3000write",
        "read  write",
        " read",
        "read ",
        " ",
        "read\u200bwrite",
        'read"',
        "re\\ad",
        "r\u00e9ad",
    ],
)
def test_scope_outside_the_rfc6749_syntax(client, world, scope):
    """RFC 6749 §3.3: scope tokens (printable ASCII except SP, " and \\) are separated by single SPs (%x20): other
    whitespace separates nothing, and empty tokens (double, leading or trailing spaces) are malformed."""
    assert_refused(post(client, exchange_form(world, scope=scope), {**FORM, **basic(CLIENT, SECRET)}), "invalid_scope")


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"subject_token_type": api.TOKEN_TYPE_JWT.upper()},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"actor_token": "x"},
        {"actor_token_type": api.TOKEN_TYPE_JWT},
    ],
)
def test_unsupported_exchange_options(client, world, overrides):
    assert_refused(
        post(client, exchange_form(world, **overrides), {**FORM, **basic(CLIENT, SECRET)}), "invalid_request"
    )


# --- content types, methods, sizes ---------------------------------------------------------------------------


def test_json_body(client, world):
    result = client.simulate_post("/oauth2/token", json=exchange_form(world), headers=basic(CLIENT, SECRET))
    assert_refused(result, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/json",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/x-www-form-urlencoded-evil",
        "application/x-www-form-urlencodedx",
        "form",
        "*/*",
        "application/x-www-form-urlencoded\u0000",
    ],
)
def test_wrong_content_type(client, world, content_type):
    headers = basic(CLIENT, SECRET)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = encode(exchange_form(world))
    if content_type and content_type.startswith("multipart"):
        fields = exchange_form(world)
        body = "".join(f'--xyz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
        body += "--xyz--\r\n"
    assert_refused(client.simulate_post("/oauth2/token", body=body, headers=headers), "invalid_request")


def test_charset_parameter_and_case_are_tolerated(client, world):
    """Content-Type matching ignores case and parameters (RFC 9110 §8.3.1): not a refusal reason."""
    headers = {"Content-Type": "Application/X-WWW-Form-Urlencoded; charset=UTF-8", **basic(CLIENT, SECRET)}
    assert_accepted(client.simulate_post("/oauth2/token", body=encode(exchange_form(world)), headers=headers))


def _other_method(client, world, method):
    return client.simulate_request(
        method, "/oauth2/token", query_string=encode(exchange_form(world)), headers={**FORM, **basic(CLIENT, SECRET)}
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_the_token_endpoint_are_refused(client, world, method):
    result = _other_method(client, world, method)
    assert result.status_code == 405, result.text
    assert "POST" in result.headers.get("Allow", "")
    body = json.loads(result.text)
    assert "access_token" not in body and isinstance(body.get("error"), str)
    assert result.headers.get("Cache-Control") == "no-store"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_answer_an_oauth_error_code(client, world, method):
    assert_refused(_other_method(client, world, method), "invalid_request", status=405)


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024])
def test_huge_form_body(client, world, size):
    form = exchange_form(world)
    body = encode(form) + "&pad=" + "x" * size
    result = post(client, body, {**FORM, **basic(CLIENT, SECRET)})
    assert_refused(result, "invalid_request", status=413)


def test_huge_subject_token_within_the_body_cap(client, world):
    """A 60 KiB token fits the body cap but not the token cap: refused as a grant, not parsed."""
    form = exchange_form(world, subject_token="eyJ" + "A" * (60 * 1024))
    assert_refused(post(client, form, {**FORM, **basic(CLIENT, SECRET)}), "invalid_grant")


def test_too_many_form_fields(client, world):
    pairs = list(exchange_form(world).items()) + [(f"f{i}", "x") for i in range(100)]
    assert_refused(post(client, pairs, {**FORM, **basic(CLIENT, SECRET)}), "invalid_request")


@pytest.mark.parametrize(
    "body", [b"grant_type=%ff%fe", b"\xff\xfe\x00g\x00r", b"grant_type=\xc3\x28", b"grant_type=%ED%A0%80"]
)
def test_body_that_is_not_utf8(client, body):
    assert_refused(post(client, body, {**FORM, **basic(CLIENT, SECRET)}), "invalid_request")


@pytest.mark.parametrize("content_length", ["abc", "-1", "1e3", "99999999999999999999"])
def test_bad_content_length(client, world, content_length):
    """Straight to the WSGI app: falcon's TestClient validates Content-Length itself and would never send these."""
    body = encode(exchange_form(world)).encode()
    environ = falcon.testing.create_environ(
        "/oauth2/token", method="POST", body=body, headers={**FORM, **basic(CLIENT, SECRET)}
    )
    environ["CONTENT_LENGTH"] = content_length
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"], captured["headers"] = int(status.split()[0]), dict(headers)

    text = b"".join(client.app(environ, start_response)).decode()
    expected = 413 if content_length.startswith("9999") else 400
    assert captured["status"] == expected, text
    assert json.loads(text)["error"] == "invalid_request"
    assert {k.lower(): v for k, v in captured["headers"].items()}["cache-control"] == "no-store"


def test_error_bodies_do_not_echo_secrets(client, world):
    result = exchange(client, world.corp.token(), auth=basic(CLIENT, "guess-that-must-not-echo"))
    assert "guess-that-must-not-echo" not in result.text
    assert SECRET not in json.dumps(dict(result.headers))
