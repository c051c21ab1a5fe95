"""requireJTI and preventReplay: a token's (iss, jti) is accepted once, across every worker sharing the cache."""

from __future__ import annotations

import multiprocessing
import sqlite3
import uuid

import pytest

from tests.support.exchange import (
    FixedSource,
    app_object,
    expect_error,
    idp_object,
    make_client,
    post_form,
    snapshot_of,
)
from tests.support.idp import NOW
from tokenbridge import api
from tokenbridge_exchange.replay import CacheFull, ReplayCache, Replayed

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
AUTH = (CLIENT, SECRET)


@pytest.fixture
def source(idp, clock):
    idps = [
        idp_object("corp", idp.issuer, jwks=idp.jwks(), requireJTI=True, preventReplay=True),
        idp_object("loose", "https://loose.example.test", jwks=idp.jwks()),
    ]
    apps = [app_object("web", CLIENT, SECRET, delegation=True, providers=[{"name": "corp"}, {"name": "loose"}])]
    return FixedSource(snapshot_of(idps, apps=apps, clock=clock))


@pytest.fixture
def cache_path(tmp_path):
    return str(tmp_path / "replay.sqlite3")


def exchange(client, token, **params):
    return post_form(
        client,
        "/oauth2/token",
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            **params,
        },
        AUTH,
    )


def jti() -> str:
    return uuid.uuid4().hex


def test_require_jti(source, clock, idp, cache_path):
    client = make_client(source, clock, replay_cache_path=cache_path)
    expect_error(
        exchange(client, idp.token()),
        400,
        "invalid_grant",
        "identity provider team-a/corp requires a jti claim and the token has none",
    )
    expect_error(exchange(client, idp.token(jti=42)), 400, "invalid_grant", "not a non-empty string")
    assert exchange(client, idp.token(jti=jti())).status_code == 200


def test_second_use_is_refused_across_two_workers_sharing_the_cache(source, clock, idp, cache_path):
    worker_1 = make_client(source, clock, replay_cache_path=cache_path)
    worker_2 = make_client(source, clock, replay_cache_path=cache_path)
    token = idp.token(jti=jti())
    assert exchange(worker_1, token).status_code == 200
    expect_error(exchange(worker_2, token), 400, "invalid_grant", "the subject_token was already used (replayed jti)")
    expect_error(exchange(worker_1, token), 400, "invalid_grant", "replayed")
    assert exchange(worker_2, idp.token(jti=jti())).status_code == 200  # another jti is another token


def test_a_jti_is_free_again_once_the_token_expired(source, clock, idp, cache_path):
    client = make_client(source, clock, replay_cache_path=cache_path)
    token_id = jti()
    assert exchange(client, idp.token(jti=token_id, exp=int(NOW) + 120)).status_code == 200
    clock.now = NOW + 120 + 60 + 1  # exp + clock skew has passed: the old token is refused as expired anyway
    fresh = idp.token(jti=token_id, iat=int(clock.now), exp=int(clock.now) + 300)
    assert exchange(client, fresh).status_code == 200


def test_a_refused_request_does_not_burn_the_jti(source, clock, idp, cache_path):
    client = make_client(source, clock, replay_cache_path=cache_path)
    token = idp.token(jti=jti())
    expect_error(exchange(client, token, scope="admin"), 400, "invalid_scope")
    assert exchange(client, token).status_code == 200


def test_idps_without_prevent_replay_never_open_the_cache(source, clock, idp, cache_path, monkeypatch):
    monkeypatch.setattr(ReplayCache, "_connection", lambda self: pytest.fail("replay cache opened"))
    client = make_client(source, clock, replay_cache_path=cache_path)
    token = idp.token(iss="https://loose.example.test", jti="same")
    assert exchange(client, token).status_code == 200
    assert exchange(client, token).status_code == 200


def test_actor_tokens_are_replay_checked_too(source, clock, idp, cache_path):
    client = make_client(source, clock, replay_cache_path=cache_path)
    actor = idp.token(sub="svc", jti=jti())
    subject = idp.token(iss="https://loose.example.test")
    delegated = {"actor_token": actor, "actor_token_type": api.TOKEN_TYPE_JWT}
    assert exchange(client, subject, **delegated).status_code == 200
    expect_error(exchange(client, subject, **delegated), 400, "invalid_grant", "the actor_token was already used")


def test_a_full_cache_fails_closed(source, clock, idp, tmp_path):
    cache = ReplayCache(str(tmp_path / "full.sqlite3"), max_entries=2, clock=clock)
    cache.consume([("i", "a", NOW + 100), ("i", "b", NOW + 100)])
    with pytest.raises(CacheFull):
        cache.consume([("i", "c", NOW + 100)])
    clock.now = NOW + 101  # both expired: purged on the next use
    cache.consume([("i", "c", NOW + 200)])
    client = make_client(source, clock, replay_cache_path=str(tmp_path / "full2.sqlite3"), replay_cache_max_entries=1)
    clock.now = NOW
    assert exchange(client, idp.token(jti=jti())).status_code == 200
    expect_error(exchange(client, idp.token(jti=jti())), 503, "temporarily_unavailable", "replay cache")


def test_consume_is_all_or_nothing(cache_path):
    cache = ReplayCache(cache_path)
    cache.consume([("i", "used", 4e9)])
    with pytest.raises(Replayed):
        cache.consume([("i", "new", 4e9), ("i", "used", 4e9)])
    assert not cache.seen("i", "new")
    assert cache.seen("i", "used")
    with sqlite3.connect(cache_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _consume_in_child(path: str, key: tuple, results) -> None:
    try:
        ReplayCache(path).consume([key])
        results.put("accepted")
    except Replayed:
        results.put("replayed")


def test_two_processes_race_for_one_jti(cache_path):
    """What gunicorn workers do: separate processes, one file; exactly one of them wins each jti."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    keys = [("https://idp", f"jti-{i}", 4e9) for i in range(20)]
    procs = [ctx.Process(target=lambda: [_consume_in_child(cache_path, k, results) for k in keys]) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = [results.get(timeout=5) for _ in range(40)]
    assert outcomes.count("accepted") == 20 and outcomes.count("replayed") == 20
