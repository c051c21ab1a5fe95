"""The per-IdP key cache: refresh after a lifespan, single-flight unknown-kid refresh with a cooldown, last good
keys up to a maximum staleness, inline keys never fetched, entries kept across snapshot rebuilds."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.exchange import Clock, app_object, idp_object, snapshot_of
from tests.support.idp import IdP
from tokenbridge.jwks import parse_jwks
from tokenbridge_exchange.jwks_cache import JwksCache, KeysUnavailable, RemoteKeys, StaticKeys

ALGS = ["RS256"]


class Fetcher:
    """Serves the IdP's current JWKS; can fail or be slow; counts calls."""

    def __init__(self, idp: IdP, delay: float = 0.0):
        self.idp, self.delay, self.calls, self.failing = idp, delay, 0, False

    def __call__(self, uri, spec):
        self.calls += 1
        time.sleep(self.delay)
        if self.failing:
            raise OSError("connection refused")
        return parse_jwks(self.idp.jwks(), ALGS)


def entry(fetcher, clock, **settings) -> RemoteKeys:
    cache = JwksCache(fetcher, clock=clock, **settings)
    return cache.remote("ns/corp", "https://idp.example.test/jwks", {})


def test_first_use_fetches_then_keys_are_reused(idp):
    fetcher, clock = Fetcher(idp), Clock()
    keys = entry(fetcher, clock)
    assert keys.candidates(idp.kid, "RS256")
    assert keys.candidates(idp.kid, "RS256")
    assert fetcher.calls == 1


def test_unknown_kid_refreshes_at_most_once_per_cooldown(idp):
    fetcher, clock = Fetcher(idp), Clock()
    keys = entry(fetcher, clock, cooldown=10)
    keys.candidates(idp.kid, "RS256")
    new_kid = idp.rotate()
    clock.now += 5  # within the cooldown of the first fetch
    assert keys.candidates(new_kid, "RS256") == []
    assert keys.candidates("forged", "RS256") == []
    assert fetcher.calls == 1
    clock.now += 5
    assert keys.candidates(new_kid, "RS256")
    assert fetcher.calls == 2
    for _ in range(50):  # a flood of forged kids
        keys.candidates("forged", "RS256")
    assert fetcher.calls == 2


def test_cooldown_is_never_below_ten_seconds(idp):
    fetcher, clock = Fetcher(idp), Clock()
    keys = entry(fetcher, clock, cooldown=0)
    keys.candidates(idp.kid, "RS256")
    clock.now += 9
    keys.candidates("forged", "RS256")
    assert fetcher.calls == 1


def test_concurrent_unknown_kids_share_one_fetch(idp):
    fetcher = Fetcher(idp, delay=0.3)
    keys = entry(fetcher, time.time)
    results, barrier = [], threading.Barrier(16)

    def request():
        barrier.wait()
        results.append(keys.candidates(idp.kid, "RS256"))

    threads = [threading.Thread(target=request) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetcher.calls == 1
    assert len(results) == 16 and all(results)


def test_background_refresh_after_the_lifespan(idp):
    fetcher, clock = Fetcher(idp), Clock()
    cache = JwksCache(fetcher, clock=clock, lifespan=300)
    keys = cache.remote("ns/corp", "https://idp.example.test/jwks", {})
    cache.refresh_due()  # never fetched: due at once
    assert fetcher.calls == 1
    clock.now += 299
    cache.refresh_due()
    assert fetcher.calls == 1
    new_kid = idp.rotate()
    clock.now += 1
    cache.refresh_due()
    assert fetcher.calls == 2
    assert keys.candidates(new_kid, "RS256")
    assert fetcher.calls == 2


def test_failed_fetch_keeps_last_good_keys_until_max_staleness(idp):
    fetcher, clock = Fetcher(idp), Clock()
    cache = JwksCache(fetcher, clock=clock, lifespan=60, max_staleness=600)
    keys = cache.remote("ns/corp", "https://idp.example.test/jwks", {})
    cache.refresh_due()
    fetcher.failing = True
    clock.now += 590
    cache.refresh_due()
    assert fetcher.calls == 2
    assert keys.candidates(idp.kid, "RS256")  # stale but within max staleness
    clock.now += 20
    with pytest.raises(KeysUnavailable, match="connection refused"):
        keys.candidates(idp.kid, "RS256")
    fetcher.failing = False
    clock.now += 10
    assert keys.candidates(idp.kid, "RS256")  # recovers with the next allowed fetch


def test_never_fetched_and_failing_is_unavailable(idp):
    fetcher, clock = Fetcher(idp), Clock()
    fetcher.failing = True
    keys = entry(fetcher, clock)
    with pytest.raises(KeysUnavailable):
        keys.candidates(idp.kid, "RS256")
    with pytest.raises(KeysUnavailable):
        keys.candidates(idp.kid, "RS256")
    assert fetcher.calls == 1


def test_snapshot_rebuilds_keep_the_cached_keys_and_drop_unused_ones(idp):
    fetcher, clock = Fetcher(idp), Clock()
    cache = JwksCache(fetcher, clock=clock)
    app = app_object("web", "c", "s")

    def build(**spec):
        return snapshot_of(
            [idp_object("corp", idp.issuer, jwks_uri="https://idp.example.test/jwks", **spec)],
            apps=[app],
            cache=cache,
            clock=clock,
        )

    first = build()
    keys = first.providers[("IdentityProvider", "team-a", "corp")].keys
    keys.candidates(idp.kid, "RS256")
    second = build(allowedAudiences=["something-else"])  # unrelated change: same cached keys
    assert second.providers[("IdentityProvider", "team-a", "corp")].keys is keys
    third = build(allowedAlgorithms=["ES256"])  # the fetch depends on it: a new entry, the old one dropped
    assert third.providers[("IdentityProvider", "team-a", "corp")].keys is not keys
    cache.refresh_due()
    assert fetcher.calls == 2  # only the entry still in use was fetched


def test_inline_jwks_never_fetch(idp):
    def fetch(uri, spec):
        raise AssertionError("inline keys must not be fetched")

    cache = JwksCache(fetch)
    snapshot = snapshot_of([idp_object("corp", idp.issuer, jwks=idp.jwks())], cache=cache)
    keys = snapshot.providers[("IdentityProvider", "team-a", "corp")].keys
    assert isinstance(keys, StaticKeys)
    assert keys.candidates("unknown", "RS256") == []
    cache.refresh_due()


def test_refresher_thread_fetches_new_idps(idp):
    fetcher = Fetcher(idp)
    cache = JwksCache(fetcher, tick=0.05)
    keys = cache.remote("ns/corp", "https://idp.example.test/jwks", {})
    cache.start()
    try:
        deadline = time.monotonic() + 2
        while fetcher.calls == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        cache.stop()
    assert keys.candidates(idp.kid, "RS256")
