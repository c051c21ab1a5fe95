"""Property-based fuzzing of ``POST /oauth2/token`` through falcon's TestClient.

Four generators, one invariant: never a 5xx; every refusal is a JSON body with an RFC 6749/8693 error code and
``Cache-Control: no-store``; and a token is issued only when it should be:

1. whole requests: generated form fields (known and random names, interesting and random values, repeated),
   bodies, Content-Type and Authorization headers -> a 200 only with a real client's real secret;
2. byte-level mutations of a valid token (not re-signed) -> a 200 only if the mutation left the signed segments
   identical and the signature's bytes unchanged;
3. header and claims mutations RE-SIGNED with the IdP's real key -> accepted exactly when an independent oracle
   of the documented rules (alg, kid, crit, iss, aud, exp/nbf/iat with skew, sub) says so, refused otherwise;
4. random JWT-looking strings -> always ``invalid_grant``.

Plus the positive control: the base token all mutations start from is accepted, so the refusals are not vacuous.

The re-signed variants are also serialized in hostile ways (a repeated member name, nesting around the depth cap
and far beyond it, UTF-16/UTF-32/BOM encodings), and ``b64`` is among the header names: the oracle refuses all of
those, so the fuzz checks the parser's refusals as well as the claim rules.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.attacks import (
    B_CLIENT,
    B_SECRET,
    CLIENT,
    OAUTH_ERRORS,
    POST_CLIENT,
    POST_SECRET,
    SECRET,
    assert_accepted,
    encode,
    exchange,
    post,
)
from tests.support.exchange import FORM, basic
from tests.support.idp import NOW, b64url, jws
from tokenbridge import api

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALLER = settings(FUZZ, max_examples=1500)

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
CREDENTIALS = {(CLIENT, SECRET), (POST_CLIENT, POST_SECRET), (B_CLIENT, B_SECRET)}


def check(result: Any) -> dict[str, Any]:
    """The invariant every response meets."""
    assert result.status_code < 500, f"{result.status_code}: {result.text[:1000]}"
    assert result.headers.get("Cache-Control") == "no-store", result.headers
    body = json.loads(result.text)
    assert isinstance(body, dict)
    if result.status_code == 200:
        assert_accepted(result)
    else:
        assert result.status_code in (400, 401, 413), result.status_code
        assert body.get("error") in OAUTH_ERRORS, body
        assert isinstance(body.get("error_description"), str)
        assert "access_token" not in body
    return body


@pytest.fixture(scope="module")
def base(world):
    return world.corp.token()


def test_positive_control_base_token_is_accepted(client, world, base):
    """The token every mutation below starts from is accepted, by the same request shape the fuzz uses."""
    assert_accepted(exchange(client, base))
    header, payload, _ = base.split(".")
    assert json.loads(base64.urlsafe_b64decode(payload + "==")) == world.corp.claims()


# --- 1. whole requests ---------------------------------------------------------------------------------------

FIELDS = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "requested_token_type",
    "assertion",
    "audience",
    "resource",
    "scope",
    "client_id",
    "client_secret",
    "actor_token",
    "actor_token_type",
]


def weighted(draw, choices):
    """Draw from (weight, strategy) pairs: most requests are plausible so they reach the grant logic."""
    index = draw(st.sampled_from([i for i, (weight, _) in enumerate(choices) for _ in range(weight)]))
    return draw(choices[index][1])


@st.composite
def requests(draw, world, base):
    interesting = st.sampled_from(
        [
            api.GRANT_TOKEN_EXCHANGE,
            api.GRANT_JWT_BEARER,
            api.GRANT_CLIENT_CREDENTIALS,
            "password",
            "",
            api.TOKEN_TYPE_JWT,
            api.TOKEN_TYPE_ID_TOKEN,
            api.TOKEN_TYPE_ACCESS_TOKEN,
            "urn:x",
            base,
            world.attacker_rsa.token(),
            world.team_b.token(),
            world.corp.token(aud="nope"),
            world.corp.token(exp=1),
            "https://api.example.test",
            "https://other.example.test",
            "read",
            "write",
            "read write",
            "admin",
            CLIENT,
            POST_CLIENT,
            B_CLIENT,
            SECRET,
            POST_SECRET,
            "x" * 300,
        ]
    )
    value = st.one_of(interesting, interesting, st.text(max_size=40), st.text(alphabet=B64URL + ".", max_size=200))
    name = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS), st.text(max_size=12))
    extra = draw(st.lists(st.tuples(name, value), max_size=draw(st.sampled_from([0, 0, 2, 4, 14]))))
    grant = draw(
        st.sampled_from(
            [api.GRANT_TOKEN_EXCHANGE] * 4 + [api.GRANT_JWT_BEARER] * 2 + [api.GRANT_CLIENT_CREDENTIALS, "password"]
        )
    )
    token = draw(st.one_of(st.just(base), interesting, st.text(alphabet=B64URL + ".", max_size=400)))
    skeleton = {
        api.GRANT_TOKEN_EXCHANGE: [("subject_token", token), ("subject_token_type", api.TOKEN_TYPE_JWT)],
        api.GRANT_JWT_BEARER: [("assertion", token)],
    }.get(grant, [])
    pairs = [("grant_type", grant)] + skeleton if draw(st.integers(0, 4)) else []
    if draw(st.integers(0, 3)):  # mostly no repeated names (a repeat is refused before anything else is read)
        seen = {k for k, _ in pairs}
        extra = [(k, v) for k, v in extra if not (k in seen or seen.add(k))]
    pairs += extra
    pairs = draw(st.permutations(pairs))
    body_kind = draw(st.sampled_from(["form"] * 7 + ["raw-text", "raw-bytes", "json"]))
    if body_kind == "form":
        body: Any = encode(pairs)
    elif body_kind == "raw-text":
        body = draw(st.text(max_size=300))
    elif body_kind == "raw-bytes":
        body = draw(st.binary(max_size=300))
    else:
        body = json.dumps(dict(pairs))
    headers: dict[str, str] = {}
    content_type = weighted(
        draw,
        [
            (6, st.just("application/x-www-form-urlencoded")),
            (
                2,
                st.sampled_from(
                    [
                        "application/x-www-form-urlencoded; charset=utf-8",
                        "APPLICATION/X-WWW-FORM-URLENCODED",
                        "application/json",
                        "multipart/form-data; boundary=x",
                        "text/plain",
                        None,
                    ]
                ),
            ),
            (1, st.text(alphabet=PRINTABLE, max_size=40)),
        ],
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    auth_id = draw(
        st.one_of(st.sampled_from([CLIENT, POST_CLIENT, B_CLIENT, "nobody"]), st.text(PRINTABLE, max_size=20))
    )
    auth_secret = draw(
        st.one_of(st.sampled_from([SECRET, POST_SECRET, B_SECRET, "guess", ""]), st.text(PRINTABLE, max_size=20))
    )
    authorization = weighted(
        draw,
        [
            (5, st.just(basic(CLIENT, SECRET)["Authorization"])),
            (2, st.just(basic(auth_id, auth_secret)["Authorization"])),
            (1, st.none()),
            (1, st.builds(lambda s: "Basic " + s, st.text(alphabet=B64URL + "+/=", max_size=40))),
            (1, st.text(alphabet=PRINTABLE, max_size=60)),
        ],
    )
    if authorization:
        headers["Authorization"] = authorization
    return body, headers, pairs


def _form_credentials(pairs):
    ids = [v for k, v in pairs if k == "client_id"]
    secrets = [v for k, v in pairs if k == "client_secret"]
    return (ids[0], secrets[0]) if ids and secrets else None


@pytest.mark.timeout(120)
def test_fuzz_whole_requests(client, world, base):
    @FUZZ
    @given(requests(world, base))
    def run(request):
        body, headers, pairs = request
        result = post(client, body, headers)
        check(result)
        if result.status_code == 200:  # a token only for a real client with its real secret
            authorization = headers.get("Authorization", "")
            header_credentials = authorization.startswith("Basic ") and any(
                authorization == basic(i, s)["Authorization"] for i, s in CREDENTIALS
            )
            assert header_credentials or _form_credentials(pairs) in CREDENTIALS, (headers, pairs)

    run()


# --- 2. byte-level mutations of a valid token (not re-signed) ------------------------------------------------


@st.composite
def mutations(draw, base):
    token = base
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "segments", "bitflip", "resegment"]))
        if kind == "replace" and token:
            i = draw(st.integers(0, len(token) - 1))
            token = token[:i] + draw(st.sampled_from(B64URL + ".=+/ \x00é")) + token[i + 1 :]
        elif kind == "delete" and token:
            i = draw(st.integers(0, len(token) - 1))
            token = token[:i] + token[i + draw(st.integers(1, 40)) :]
        elif kind == "insert":
            i = draw(st.integers(0, len(token)))
            token = token[:i] + draw(st.text(alphabet=B64URL + ".=", min_size=1, max_size=30)) + token[i:]
        elif kind == "truncate":
            token = token[: draw(st.integers(0, max(len(token) - 1, 0)))]
        elif kind == "segments":
            parts = token.split(".")
            token = ".".join(draw(st.lists(st.sampled_from(parts), min_size=1, max_size=6)))
        elif kind == "bitflip":
            parts = token.split(".")
            i = draw(st.integers(0, len(parts) - 1))
            try:
                raw = bytearray(base64.urlsafe_b64decode(parts[i] + "=" * (-len(parts[i]) % 4)))
            except ValueError:
                continue
            if raw:
                j = draw(st.integers(0, len(raw) - 1))
                raw[j] ^= 1 << draw(st.integers(0, 7))
                parts[i] = b64url(bytes(raw))
                token = ".".join(parts)
        elif kind == "resegment":
            parts = token.split(".")
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] = draw(
                st.one_of(
                    st.builds(b64url, st.binary(max_size=80)),
                    st.builds(
                        lambda d: b64url(json.dumps(d)), st.dictionaries(st.text(max_size=5), st.integers(), max_size=4)
                    ),
                )
            )
            token = ".".join(parts)
    return token


@pytest.mark.timeout(120)
def test_fuzz_token_mutations(client, base):
    header, payload, signature = base.split(".")

    @FUZZ
    @given(mutations(base))
    def run(token):
        result = exchange(client, token)
        body = check(result)
        if result.status_code == 200:  # base64url is canonical: only the token itself has the same bytes
            assert token == base, token
        else:
            assert body["error"] in ("invalid_grant", "invalid_request"), body  # invalid_request: empty token

    run()


# --- 3. header and claims mutations, re-signed with the IdP's real key ---------------------------------------


def json_values(max_leaves=6):
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400, -(10**400), 1e308]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=max_leaves,
    )


def _non_finite(value):
    """Whether json.dumps would write NaN/Infinity somewhere in ``value`` (not JSON: the server refuses it)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


HEADER_NAMES = ["alg", "kid", "typ", "crit", "cty", "jku", "jwk", "x5u", "x5c", "zip", "enc", "b64"]
CLAIM_NAMES = ["iss", "sub", "aud", "exp", "nbf", "iat", "tid", "jti", "azp", "scope"]


@st.composite
def signed_variants(draw, world):
    header, claims = world.corp.header(), world.corp.claims()
    interesting = {
        "alg": st.sampled_from(["RS256", "none", "HS256", "ES256", "RS384", "rs256", "PS256"]),
        "kid": st.sampled_from([world.corp.kid, world.partner.kid, "x", None]),
        "iss": st.sampled_from([world.corp.issuer, world.corp.issuer + "/", world.partner.issuer, "", None]),
        "aud": st.sampled_from(["api://tokenbridge", ["x", "api://tokenbridge"], [], "x", None]),
        "sub": st.sampled_from(["alice", "", None, "system:admin"]),
        "exp": st.one_of(st.integers(int(NOW) - 200, int(NOW) + 200), st.floats(NOW - 200, NOW + 200)),
        "nbf": st.integers(int(NOW) - 200, int(NOW) + 200),
        "iat": st.integers(int(NOW) - 200, int(NOW) + 200),
        "b64": st.sampled_from([True, False, "false", "true", 0, 1, None]),
    }
    for target, names in ((header, HEADER_NAMES), (claims, CLAIM_NAMES)):
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.one_of(st.sampled_from(names), st.text(max_size=6)))
            action = draw(st.sampled_from(["set", "set", "interesting", "delete"]))
            if action == "delete":
                target.pop(name, None)
            elif action == "interesting" and name in interesting:
                target[name] = draw(interesting[name])
            else:
                target[name] = draw(json_values())
    return header, claims, draw(serializations(header)), draw(serializations(claims))


MAX_DEPTH = 64  # the server's cap on JSON nesting in a segment (assertions.MAX_JSON_DEPTH)


def _depth(value):
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


@st.composite
def serializations(draw, obj):
    """(segment bytes, well-formed): mostly plain UTF-8 JSON of ``obj``, sometimes with a repeated member name, an
    extra member nested around or far beyond the depth cap, or another Unicode encoding (or a BOM)."""
    pairs = [(json.dumps(k), json.dumps(v)) for k, v in obj.items()]
    well_formed = not _non_finite(obj)
    kind = draw(st.sampled_from(["plain"] * 6 + ["duplicate", "nested", "encoding"]))
    if kind == "duplicate" and pairs:
        name = draw(st.sampled_from([k for k, _ in pairs]))
        pairs.insert(draw(st.integers(0, len(pairs))), (name, json.dumps(draw(json_values(max_leaves=2)))))
        well_formed = False
    elif kind == "nested":
        levels = draw(st.sampled_from([1, 10, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200, 5000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        levels = levels if opener == "[" else min(levels, 1500)  # beyond the recursion limit, within the body cap
        inner = draw(st.sampled_from(["0", '"[[{{"', "[]"]))
        value = opener * levels + inner + closer * levels
        pairs.insert(draw(st.integers(0, len(pairs))), (json.dumps("x-nested"), value))
        nested_depth = 1 + levels + (1 if inner == "[]" else 0)  # the segment's own object counts
        if "x-nested" in obj or max(nested_depth, _depth(obj)) > MAX_DEPTH:
            well_formed = False
    text = "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    encoding = (
        draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
        if kind == "encoding"
        else "utf-8"
    )
    return text.encode(encoding), well_formed and encoding == "utf-8"


def _number(value):
    """(value as a float, acceptable): absent/null is acceptable, anything but a finite number is not."""
    if value is None:
        return None, True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, False
    try:
        number = float(value)
    except OverflowError:
        return None, False
    return number, math.isfinite(number)


def oracle(header, claims, corp, now=NOW, skew=60.0, lifetime=600.0):
    """The documented acceptance rules for a token signed with corp's RS256 key, written independently."""
    if _non_finite(header) or _non_finite(claims):
        return False
    if header.get("alg") != "RS256" or "crit" in header or ("b64" in header and header["b64"] is not True):
        return False
    kid = header.get("kid")
    if kid is not None and kid != corp.kid:
        return False
    if claims.get("iss") != corp.issuer:
        return False
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if "api://tokenbridge" not in [a for a in auds if isinstance(a, str)]:
        return False
    exp, ok = _number(claims.get("exp"))
    if not ok or exp is None or now >= exp + skew:
        return False
    nbf, ok = _number(claims.get("nbf"))
    if not ok or (nbf is not None and now + skew < nbf):
        return False
    iat, ok = _number(claims.get("iat"))
    if not ok or (iat is not None and now + skew < iat):
        return False
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return False
    return min(now + lifetime, exp) - now >= 1


@pytest.mark.timeout(120)
def test_fuzz_resigned_header_and_claims(client, world):
    outcomes = {"accepted": 0, "refused": 0}

    @SMALLER
    @given(signed_variants(world))
    def run(variant):
        header, claims, (header_bytes, header_ok), (claims_bytes, claims_ok) = variant
        token = jws(header_bytes, claims_bytes, world.corp.key, "RS256")
        result = exchange(client, token)
        body = check(result)
        expected = header_ok and claims_ok and oracle(header, claims, world.corp)
        assert (result.status_code == 200) == expected, (header, claims, body)
        if not expected:
            assert body["error"] == "invalid_grant", body
        outcomes["accepted" if expected else "refused"] += 1

    run()
    assert outcomes["accepted"] > 0 and outcomes["refused"] > 0, outcomes  # both sides were exercised


@pytest.mark.timeout(120)
def test_fuzz_explain_agrees_with_the_token_endpoint(client, world):
    """Differential: /oauth2/explain (consume=False) decides exactly what /oauth2/token then does, with the same
    error code, for the re-signed variants; explain never crashes where the token endpoint does not."""

    @settings(FUZZ, max_examples=400)
    @given(signed_variants(world))
    def run(variant):
        _, _, (header_bytes, _), (claims_bytes, _) = variant
        form = {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": jws(header_bytes, claims_bytes, world.corp.key, "RS256"),
            "subject_token_type": api.TOKEN_TYPE_JWT,
        }
        explained = client.simulate_post(
            "/oauth2/explain", body=encode(form), headers={**FORM, **basic(CLIENT, SECRET)}
        )
        assert explained.status_code == 200, explained.text[:500]
        report = json.loads(explained.text)
        body = check(post(client, form, {**FORM, **basic(CLIENT, SECRET)}))
        if report["decision"] == "issue":
            assert "access_token" in body, (report, body)
        else:
            assert report["decision"] == "refused" and report["error"] == body.get("error"), (report, body)

    run()


# --- 4. random JWT-looking strings ---------------------------------------------------------------------------

segment = st.one_of(
    st.text(alphabet=B64URL, max_size=120),
    st.builds(b64url, st.binary(max_size=90)),
    st.builds(lambda v: b64url(json.dumps(v)), json_values(max_leaves=8)),
    st.text(max_size=30),
)


@pytest.mark.timeout(120)
def test_fuzz_jwt_looking_strings(client):
    @SMALLER
    @given(st.lists(segment, min_size=1, max_size=6).map(".".join))
    def run(token):
        result = exchange(client, token)
        body = check(result)
        assert result.status_code != 200
        assert body["error"] in ("invalid_grant", "invalid_request"), body  # invalid_request: blank token

    run()


def test_fuzz_assertion_grant_shares_the_invariant(client, world, base):
    """The jwt-bearer grant reads its assertion through the same parser: a quick pass over the same mutations."""

    @settings(FUZZ, max_examples=300)
    @given(mutations(base))
    def run(token):
        form = {"grant_type": api.GRANT_JWT_BEARER, "assertion": token}
        check(post(client, form, {**FORM, **basic(CLIENT, SECRET)}))

    run()
