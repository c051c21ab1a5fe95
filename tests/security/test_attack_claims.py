"""Attacks on the claims of correctly signed subject tokens (what an IdP could be made, or tricked, to sign) and on
the boundaries between tenants: issuer look-alikes, audience shapes, time claims, the Entra tenant template,
cross-namespace IdP references, client-id squatting, and the unknown-kid refresh storm.
"""

from __future__ import annotations

import json

import pytest

from tests.support.attacks import (
    B_CLIENT,
    B_SECRET,
    CLIENT,
    SECRET,
    assert_accepted,
    assert_refused,
    client_for,
    exchange,
)
from tests.support.exchange import Clock, FixedSource, app_object, basic, idp_object, snapshot_of
from tests.support.idp import NOW, IdP
from tokenbridge.jwks import parse_jwks
from tokenbridge_exchange.jwks_cache import JwksCache

CORP = "https://idp.example.test"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ENTRA_ISS = f"https://login.microsoftonline.com/{TENANT}/v2.0"


# --- issuer look-alikes --------------------------------------------------------------------------------------

ISSUER_TRICKS = {
    "trailing-slash": CORP + "/",
    "double-trailing-slash": CORP + "//",
    "path-dot": CORP + "/.",
    "path-suffix": CORP + "/tenant",
    "suffix-domain": "https://idp.example.test.attacker.example",
    "prefix-domain": "https://evil-idp.example.test",
    "userinfo": "https://idp.example.test@attacker.example",
    "embedded": "https://attacker.example/https://idp.example.test",
    "upper-host": "https://IDP.EXAMPLE.TEST",
    "upper-scheme": "HTTPS://idp.example.test",
    "http-scheme": "http://idp.example.test",
    "default-port": "https://idp.example.test:443",
    "query": CORP + "?",
    "fragment": CORP + "#",
    "percent-encoded": "https://idp%2Eexample.test",
    "leading-space": " " + CORP,
    "trailing-space": CORP + " ",
    "trailing-newline": CORP + "\n",
    "null-byte": CORP + "\u0000",
    "zero-width-space": "https://idp.exa\u200bmple.test",
    "cyrillic-a": "https://idp.ex\u0430mple.test",
    "fullwidth": "\uff48ttps://idp.example.test",
    "punycode-lookalike": "https://xn--idp-example-test.example",
    "dotless-i": "https://\u0131dp.example.test",
    "trailing-dot-host": "https://idp.example.test.",
}


@pytest.mark.parametrize("name", list(ISSUER_TRICKS))
def test_issuer_lookalikes_signed_by_the_idp(client, world, name):
    """Issuers compare exactly (OIDC Core §3.1.3.7): not even the IdP's own key makes a near-miss iss acceptable."""
    body = assert_refused(exchange(client, world.corp.token(iss=ISSUER_TRICKS[name])), "invalid_grant")
    assert "issuer" in body["error_description"]


@pytest.mark.parametrize("iss", [[CORP], {"url": CORP}, 1, True, "", None])
def test_issuer_that_is_not_a_string(client, world, iss):
    claims = world.corp.claims()
    if iss is None:
        del claims["iss"]
    else:
        claims["iss"] = iss
    assert_refused(exchange(client, world.corp.sign(world.corp.header(), claims)), "invalid_grant")


def test_issuer_of_an_idp_the_client_may_not_use(client, world):
    """b-only exists (in team-b): its own valid token is still not usable by team-a's client."""
    assert_refused(exchange(client, world.b_only.token()), "invalid_grant")


# --- audience ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "api://tokenbridge",
        ["api://tokenbridge"],
        ["https://other.test", "api://tokenbridge"],
        ["api://tokenbridge", 5, None, ["x"]],
    ],
)
def test_audience_containing_an_allowed_value_is_accepted(client, world, aud):
    assert_accepted(exchange(client, world.corp.token(aud=aud)))


@pytest.mark.parametrize(
    "aud",
    [
        [],
        "",
        None,
        0,
        1.5,
        True,
        {},
        {"api://tokenbridge": True},
        [["api://tokenbridge"]],
        [None],
        [1, 2],
        "API://tokenbridge",
        "api://tokenbridge/",
        "api://tokenbridge ",
        "api://tokenbridge\u0000",
        "api://tokenbridge,https://other.test",
        "api://tokenbridge https://other.test",
        ["api://tokenbridge2"],
        "https://api.example.test",  # the application's own audience is not an IdP-allowed audience
        "missing",
    ],
)
def test_audience_that_must_be_refused(client, world, aud):
    claims = world.corp.claims()
    if aud == "missing":
        del claims["aud"]
    else:
        claims["aud"] = aud
    body = assert_refused(exchange(client, world.corp.sign(world.corp.header(), claims)), "invalid_grant")
    assert "aud" in body["error_description"]


# --- time claims ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which, claims",
    [
        ("corp", {"exp": int(NOW) - 61}),  # just past exp + 60 s skew
        ("corp", {"exp": int(NOW) - 86400}),
        ("corp", {"exp": 0}),
        ("corp", {"exp": -1}),
        ("corp", {"exp": None}),
        ("corp", {"exp": str(int(NOW) + 3600)}),
        ("corp", {"exp": True}),
        ("corp", {"exp": [int(NOW) + 3600]}),
        ("corp", {"nbf": int(NOW) + 61}),
        ("corp", {"nbf": "0"}),
        ("corp", {"iat": int(NOW) + 61}),
        ("corp", {"iat": int(NOW) + 86400 * 365}),
        ("corp", {"iat": {"t": 0}}),
        ("strict", {"iat": int(NOW) - 311}),  # maxTokenAge 5m + clockSkew 10s
        ("strict", {"iat": int(NOW) - 86400, "exp": int(NOW) + 86400}),
        ("strict", {"iat": None}),
        ("strict", {"exp": int(NOW) - 11}),  # this IdP's skew is 10 s
        ("strict", {"nbf": int(NOW) + 11}),
    ],
)
def test_time_claims_that_must_be_refused(client, world, which, claims):
    assert_refused(exchange(client, getattr(world, which).token(**claims)), "invalid_grant")


@pytest.mark.parametrize(
    "which, claims",
    [
        ("strict", {"iat": int(NOW) - 305}),
        ("strict", {"exp": int(NOW) + 30, "nbf": int(NOW) + 9, "iat": int(NOW) + 9}),
        ("corp", {"exp": int(NOW) + 2, "nbf": int(NOW) - 1, "iat": int(NOW) - 86400 * 365}),
        ("corp", {"exp": int(NOW) + 3600.5, "iat": int(NOW) - 0.5}),
    ],
)
def test_time_claims_at_the_edges_are_accepted(client, world, which, claims):
    """The refusals above are the limits, not blanket suspicion: just inside them is accepted."""
    assert_accepted(exchange(client, getattr(world, which).token(**claims)))


def _token_with_raw_claim(idp, name, raw):
    claims = idp.claims()
    claims.pop(name, None)
    text = '{"' + name + '":' + raw + "," + json.dumps(claims)[1:]
    return idp.sign(idp.header(), text.encode())


@pytest.mark.parametrize(
    "which, name, raw",
    [
        ("corp", "exp", "NaN"),
        ("corp", "exp", "Infinity"),
        ("corp", "exp", "1e400"),
        ("corp", "nbf", "NaN"),
        ("strict", "iat", "NaN"),  # would skip maxTokenAge
        ("strict", "iat", "-Infinity"),
    ],
)
def test_non_finite_time_claims(client, world, which, name, raw):
    """A token that never expires, or dodges maxTokenAge. NaN/Infinity are not JSON at all; 1e400 is JSON but
    not a representable NumericDate. (Found by this corpus: accepted, later a 500; fixed in 09fa33e.)"""
    assert_refused(exchange(client, _token_with_raw_claim(getattr(world, which), name, raw)), "invalid_grant")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_time_claim_integer_too_large_for_a_float(client, world, name):
    assert_refused(exchange(client, _token_with_raw_claim(world.corp, name, "1" + "0" * 400)), "invalid_grant")


@pytest.mark.parametrize("sub", [None, "", 0, ["alice"], {"id": "alice"}, True])
def test_subject_that_is_not_a_non_empty_string(client, world, sub):
    claims = world.corp.claims()
    if sub is None:
        del claims["sub"]
    else:
        claims["sub"] = sub
    assert_refused(exchange(client, world.corp.sign(world.corp.header(), claims)), "invalid_grant")


# --- the Entra multi-tenant {tenantid} template --------------------------------------------------------------


def test_entra_baseline_own_tenant_is_accepted(client, world):
    assert_accepted(exchange(client, world.entra.token(iss=ENTRA_ISS, tid=TENANT)))


@pytest.mark.parametrize(
    "iss, tid",
    [
        (ENTRA_ISS, "00000000-0000-0000-0000-000000000000"),  # tid of another tenant
        (ENTRA_ISS, None),  # no tid at all
        (ENTRA_ISS, TENANT.upper()),
        (ENTRA_ISS, TENANT + " "),
        (ENTRA_ISS, [TENANT]),
        (ENTRA_ISS, 7),
        (ENTRA_ISS, TENANT[:-1]),  # a prefix of the tenant in iss
        ("https://login.microsoftonline.com/{tenantid}/v2.0", "{tenantid}"),  # the template itself
        ("https://login.microsoftonline.com/{tenantid}/v2.0", None),
        (f"https://login.microsoftonline.com/{TENANT}/x/v2.0", f"{TENANT}/x"),  # a slash in tid
        (f"https://login.microsoftonline.com/../{TENANT}/v2.0", f"../{TENANT}"),
        (f"https://attacker.example/{TENANT}/v2.0", TENANT),  # right tid, wrong host
        (f"https://login.microsoftonline.com/{TENANT}/v2.0/", TENANT),
        (f"https://login.microsoftonline.com/{TENANT}/v1.0", TENANT),
        (f"https://login.microsoftonline.com/{TENANT}{TENANT}/v2.0", TENANT),
        ("https://login.microsoftonline.com//v2.0", ""),
    ],
)
def test_entra_template_tricks(client, world, iss, tid):
    token = world.entra.token(iss=iss, tid=tid)
    assert_refused(exchange(client, token), "invalid_grant")


def test_entra_template_does_not_lend_its_key_to_other_issuers(client, world):
    """corp's issuer with a tid: the template IdP's key must not be tried for it."""
    assert_refused(exchange(client, world.entra.token(iss=CORP, tid=TENANT)), "invalid_grant")


# --- tenants (namespaces) ------------------------------------------------------------------------------------


def test_team_b_idp_with_the_same_name_is_not_used_for_team_a(client, world):
    """web (team-a) references IdP "corp": that is team-a/corp, never team-b/corp (same name, own issuer)."""
    assert_refused(exchange(client, world.team_b.token()), "invalid_grant")


@pytest.mark.parametrize("claims", [{}, {"aud": "api://tokenbridge"}, {"sub": "system:admin"}])
def test_team_b_idp_token_refused_for_team_a_client(client, world, claims):
    assert_refused(exchange(client, world.b_only.token(**claims)), "invalid_grant")


def test_team_b_client_cannot_use_team_a_idp(client, world):
    assert_refused(exchange(client, world.corp.token(), auth=basic(B_CLIENT, B_SECRET)), "invalid_grant")


def test_team_b_baseline(client, world):
    """b-app does accept its own namespace's corp: the refusals above are about the namespace, not the token."""
    assert_accepted(exchange(client, world.team_b.token(), auth=basic(B_CLIENT, B_SECRET)))


def test_references_outside_the_namespace_resolve_to_nothing(source, world):
    """The snapshot itself: web's references to team-b's IdPs (by name, with a namespace field, as a cluster IdP,
    as "team-b/b-only") resolved to nothing."""
    web = source.current().applications[CLIENT]
    for idp in (world.team_b, world.b_only):
        assert web.providers.lookup(idp.issuer) == ()
    assert [p.label for p in web.providers.lookup(CORP)] == ["team-a/corp"]
    assert len(web.providers) == 6  # corp, ec-corp, ed-corp, strict, partner and the cluster IdP entra


@pytest.mark.parametrize("order", ["victim-first", "squatter-first"])
def test_client_id_squatting_across_namespaces(world, order):
    """team-b publishes team-a's (not secret) client id with its own secret. Whichever order the source lists
    them in, the squatter's secret must not authenticate as that client id, and the application that had it first
    keeps it."""
    victim = app_object("web", CLIENT, SECRET, providers=[{"name": "corp"}])
    squatter = app_object("squatter", CLIENT, "squatter-secret", namespace="team-b", providers=[{"name": "corp"}])
    victim["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"  # the squatter came later
    squatter["metadata"]["creationTimestamp"] = "2026-06-01T00:00:00Z"
    apps = [victim, squatter] if order == "victim-first" else [squatter, victim]
    client = client_for(world.source(apps=apps))
    assert_refused(exchange(client, world.team_b.token(), auth=basic(CLIENT, "squatter-secret")), "invalid_client")
    # ... and the squatter cannot lock the older, rightful owner out either
    assert_accepted(exchange(client, world.corp.token(), auth=basic(CLIENT, SECRET)))


@pytest.mark.parametrize("times", ["equal", "squatter-missing", "victim-missing", "both-missing", "malformed"])
def test_client_id_claimed_twice_without_a_clear_first_is_served_to_nobody(world, times):
    """When creation times cannot tell which application had the client id first, neither secret authenticates
    as it (failing closed), and the conflict is in the snapshot's skipped reasons for both."""
    victim = app_object("web", CLIENT, SECRET, providers=[{"name": "corp"}])
    squatter = app_object("squatter", CLIENT, "squatter-secret", namespace="team-b", providers=[{"name": "corp"}])
    early, late = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"
    stamps = {
        "equal": (early, early),
        "squatter-missing": (early, None),
        "victim-missing": (None, late),
        "both-missing": (None, None),
        "malformed": (early, "yesterday"),
    }[times]
    for obj, stamp in zip((victim, squatter), stamps, strict=True):
        if stamp:
            obj["metadata"]["creationTimestamp"] = stamp
    source = world.source(apps=[squatter, victim])
    client = client_for(source)
    assert_refused(exchange(client, world.corp.token(), auth=basic(CLIENT, SECRET)), "invalid_client")
    assert_refused(exchange(client, world.team_b.token(), auth=basic(CLIENT, "squatter-secret")), "invalid_client")
    conflicts = [s for s in source.current().skipped if f"client id {CLIENT}" in s]
    assert len(conflicts) == 2 and any("team-a/web" in s for s in conflicts), conflicts


# --- unknown-kid storm against a remote IdP -----------------------------------------------------------------


def test_unknown_kid_storm_respects_the_refresh_cooldown():
    """Many tokens with random kids against one remote IdP: each is refused, at most one JWKS fetch per cooldown,
    and a good token is still accepted in the middle of the storm."""
    remote = IdP("https://remote.example.test", "RS256")
    clock = Clock()
    fetches = []

    def fetch(uri, spec):
        fetches.append(clock())
        return parse_jwks(remote.jwks(), ["RS256"])

    cache = JwksCache(fetch, clock=clock, cooldown=10.0)
    snapshot = snapshot_of(
        [idp_object("remote", remote.issuer, jwks_uri="https://remote.example.test/jwks")],
        apps=[app_object("web", CLIENT, SECRET, providers=[{"name": "remote"}])],
        cache=cache,
        clock=clock,
    )
    client = client_for(FixedSource(snapshot), clock)
    assert_accepted(exchange(client, remote.token()))
    assert len(fetches) == 1
    for i in range(300):
        clock.now = NOW + i * 0.1  # 30 s of storm
        forged = remote.token(header={"kid": f"random-{i}"})
        assert_refused(exchange(client, forged), "invalid_grant")
        if i % 50 == 0:
            assert_accepted(exchange(client, remote.token()))
    assert 1 <= len(fetches) - 1 <= 4, fetches  # 30 s / 10 s cooldown (+ the first)
