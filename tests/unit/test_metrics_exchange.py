"""``/metrics`` after known traffic: exchanges by outcome/grant/IdP/application/error, latency, replay rejections,
JWKS fetches and unknown-kid refreshes, cache and snapshot age, snapshot generation (parsed from the text format)."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.exchange import Clock, FixedSource, app_object, idp_object, make_client, post_form, snapshot_of
from tests.support.idp import NOW, IdP
from tokenbridge import api
from tokenbridge.jwks import parse_jwks
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.telemetry import Telemetry

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
AUTH = (CLIENT, SECRET)


def scrape(client) -> dict[tuple[str, tuple], float]:
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(result.text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    remote, local = IdP("https://remote.example.test"), IdP()
    fetches = []

    def fetch(uri, spec):
        fetches.append(uri)
        if len(fetches) == 2:
            raise OSError("connection refused")
        return parse_jwks(remote.jwks(), frozenset(api.DEFAULT_ALLOWED_ALGORITHMS))

    telemetry = Telemetry()
    cache = JwksCache(fetch, clock=clock, cooldown=10, telemetry=telemetry)
    idps = [
        idp_object("remote", remote.issuer, jwks_uri="https://remote.example.test/jwks"),
        idp_object("local", local.issuer, jwks=local.jwks(), requireJTI=True, preventReplay=True),
    ]
    apps = [app_object("web", CLIENT, SECRET, providers=[{"name": "remote"}, {"name": "local"}])]
    snap = snapshot_of(idps, apps=apps, clock=clock, cache=cache)
    client = make_client(FixedSource(snap), clock, telemetry, replay_cache_path=str(tmp_path / "replay.sqlite3"))
    return client, clock, remote, local, snap, fetches


def exchange(client, token, auth=AUTH, **params):
    return post_form(
        client,
        "/oauth2/token",
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            **params,
        },
        auth,
    )


def test_metric_values_after_known_traffic(world):
    client, clock, remote, local, snap, fetches = world
    once = local.token(jti=uuid.uuid4().hex)
    assert exchange(client, remote.token()).status_code == 200  # first use: keys fetched (unknown kid, cold)
    assert exchange(client, remote.token()).status_code == 200
    assert exchange(client, once).status_code == 200
    assert exchange(client, once).status_code == 400  # replayed
    assert exchange(client, local.token()).status_code == 400  # no jti
    assert exchange(client, remote.token(), scope="admin").status_code == 400
    assert exchange(client, remote.token(), auth=(CLIENT, "wrong")).status_code == 401
    cc = post_form(client, "/oauth2/token", {"grant_type": api.GRANT_CLIENT_CREDENTIALS}, AUTH)
    assert cc.status_code == 200
    clock.now += 11  # past the cooldown
    assert exchange(client, remote.token(header={"kid": "rotated"})).status_code == 400  # refetch: fails
    clock.now += 1
    assert exchange(client, remote.token(header={"kid": "rotated-2"})).status_code == 400  # within cooldown

    m = scrape(client)
    x, tx = "tokenbridge_exchanges_total", api.GRANT_TOKEN_EXCHANGE
    assert value(m, x, grant_type=tx, outcome="issued", idp="team-a/remote", application="team-a/web", error="") == 2
    assert value(m, x, grant_type=tx, outcome="issued", idp="team-a/local", application="team-a/web", error="") == 1
    assert (
        value(
            m, x, grant_type=tx, outcome="refused", idp="team-a/local", application="team-a/web", error="invalid_grant"
        )
        == 1
    )  # the replay (the IdP was known by then)
    assert (
        value(m, x, grant_type=tx, outcome="refused", idp="", application="team-a/web", error="invalid_grant") == 3
    )  # no jti, and the two unknown kids
    assert value(m, x, grant_type=tx, outcome="refused", idp="", application="team-a/web", error="invalid_scope") == 1
    assert value(m, x, grant_type="other", outcome="refused", idp="", application="", error="invalid_client") == 1
    assert (
        value(
            m, x, grant_type=api.GRANT_CLIENT_CREDENTIALS, outcome="issued", idp="", application="team-a/web", error=""
        )
        == 1
    )
    assert value(m, "tokenbridge_token_request_seconds_count", grant_type=tx) == 8
    assert "tokenbridge_token_requests_total" not in {name for name, _ in m}  # the same as exchanges_total
    assert value(m, "tokenbridge_replay_rejections_total", idp="team-a/local") == 1
    assert value(m, "tokenbridge_jwks_fetches_total", idp="team-a/remote", result="success") == 1
    assert value(m, "tokenbridge_jwks_fetches_total", idp="team-a/remote", result="failure") == 1
    assert len(fetches) == 2
    assert value(m, "tokenbridge_jwks_unknown_kid_refreshes_total", idp="team-a/remote", result="refreshed") == 2
    assert value(m, "tokenbridge_jwks_unknown_kid_refreshes_total", idp="team-a/remote", result="cooldown") == 1
    # ages: the fake clock is years ahead of the scrape's wall clock, so compare with the timestamps instead
    fetched_at = value(m, "tokenbridge_jwks_last_success_timestamp_seconds", idp="team-a/remote")
    assert fetched_at == NOW
    assert ("tokenbridge_jwks_cache_age_seconds", (("idp", "team-a/remote"),)) in m
    assert ("tokenbridge_jwks_cache_age_seconds", (("idp", "team-a/local"),)) not in m  # inline keys: no age
    assert value(m, "tokenbridge_snapshot_generation") == snap.generation > 0
    assert value(m, "tokenbridge_snapshot_timestamp_seconds") == pytest.approx(snap.built_at)
    assert 0 <= value(m, "tokenbridge_snapshot_age_seconds") < 60


def test_explain_requests_are_not_counted_as_exchanges(world):
    client, _, remote, _, _, _ = world
    post_form(
        client,
        "/oauth2/explain",
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": remote.token(),
            "subject_token_type": api.TOKEN_TYPE_JWT,
        },
        AUTH,
    )
    assert not [k for k in scrape(client) if k[0] == "tokenbridge_exchanges_total"]
