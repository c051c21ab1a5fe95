"""Verification keys of each identity provider, fetched off the request path and parsed once per fetch.

A remote IdP's keys are refreshed in the background after ``lifespan``. A token with an unknown ``kid`` (the IdP
rotated) may trigger one refresh on the request path: concurrent requests share it (single flight) and it happens
at most once per ``cooldown`` per IdP, so a flood of forged kids cannot turn into a flood of fetches. When fetches
fail, the last good keys keep serving until ``max_staleness`` after the last good fetch. Inline JWKS never fetch.

The cooldown (``TOKENBRIDGE_JWKS_COOLDOWN``, never below 10 s) bounds every fetch, background ones included: a
lifespan shorter than the cooldown refreshes once per cooldown, and after an IdP goes away its keys are served
for between ``max_staleness`` minus one cooldown and ``max_staleness``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tokenbridge.jwks import KeySet, VerificationKey
from tokenbridge.specs import IdentityProviderSpec

from .telemetry import Telemetry

log = logging.getLogger(__name__)

# fetch(jwks_uri, spec) -> KeySet; raises on failure (FetchError, DiscoveryError, JWKSError, ...)
Fetcher = Callable[[str, IdentityProviderSpec], KeySet]


class KeysUnavailable(Exception):
    """The IdP has no usable keys: never fetched successfully, or the last good fetch is too old."""


class KeySource(Protocol):
    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]: ...


class StaticKeys:
    """Keys from an inline ``spec.jwks``: parsed once when the snapshot is built, never fetched."""

    def __init__(self, keys: KeySet):
        self.keys = keys

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        return self.keys.candidates(kid, alg)


class RemoteKeys:
    """The keys behind one IdP's ``jwks_uri``; thread-safe, shared by every snapshot that uses the same IdP."""

    def __init__(
        self,
        name: str,
        jwks_uri: str,
        spec: IdentityProviderSpec,
        fetch: Fetcher,
        *,
        clock: Callable[[], float],
        telemetry: Telemetry,
        lifespan: float,
        cooldown: float,
        max_staleness: float,
    ):
        self.name, self.jwks_uri, self.spec = name, jwks_uri, spec
        self._fetch, self._clock, self._telemetry = fetch, clock, telemetry
        self.lifespan, self.cooldown, self.max_staleness = lifespan, cooldown, max_staleness
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._last_error = "keys not fetched yet"
        self._lock = threading.Lock()
        self._flight: threading.Event | None = None
        self.fetches = 0  # fetch attempts so far

    def seed(self, keys: KeySet, fetched_at: float) -> None:
        """Keys obtained elsewhere (standalone discovery) so the first request needs no fetch."""
        with self._lock:
            if fetched_at <= self._fetched_at:
                return
            self._keys, self._fetched_at = keys, fetched_at
        self._telemetry.emit("jwks_fetch", idp=self.name, result="seeded", fetched_at=fetched_at)

    @property
    def fetched_at(self) -> float:
        """When the keys in use were fetched (-inf: never)."""
        return self._fetched_at

    def _usable(self, now: float) -> KeySet | None:
        if self._keys is not None and now - self._fetched_at <= self.max_staleness:
            return self._keys
        return None

    def candidates(self, kid: str | None, alg: str) -> list[VerificationKey]:
        keys = self._usable(self._clock())
        found = keys.candidates(kid, alg) if keys is not None else []
        if found:
            return found
        refreshed = self.refresh(min_interval=self.cooldown)
        self._telemetry.emit("jwks_unknown_kid", idp=self.name, refreshed=refreshed)
        if refreshed:
            keys = self._usable(self._clock())
            found = keys.candidates(kid, alg) if keys is not None else []
        if keys is None:
            raise KeysUnavailable(f"signing keys of {self.name} are unavailable: {self._last_error}")
        return found

    def refresh_if_due(self) -> None:
        """Background refresh: once ``lifespan`` has passed since the last good fetch (retry after cooldown)."""
        if self._clock() - self._fetched_at >= self.lifespan:
            self.refresh(min_interval=self.cooldown)

    def refresh(self, *, min_interval: float) -> bool:
        """Fetch now unless a fetch ran less than ``min_interval`` ago; join one already running.

        Returns whether a fetch ran (or was joined), i.e. whether looking at the keys again can help.
        """
        with self._lock:
            flight = self._flight
            if flight is None:
                now = self._clock()
                if now - self._attempted_at < min_interval:
                    return False
                self._attempted_at = now
                self._flight = flight = threading.Event()
                leader = True
            else:
                leader = False
        if not leader:
            flight.wait(timeout=10)
            return True
        try:
            self._fetch_once()
        finally:
            with self._lock:
                self._flight = None
            flight.set()
        return True

    def _fetch_once(self) -> None:
        self.fetches += 1
        try:
            keys = self._fetch(self.jwks_uri, self.spec)
        except Exception as exc:  # any failure keeps the last good keys; the reason is what clients see
            self._last_error = str(exc) or type(exc).__name__
            log.warning("refreshing the keys of %s from %s failed: %s", self.name, self.jwks_uri, self._last_error)
            self._telemetry.emit("jwks_fetch", idp=self.name, result="failure", fetched_at=None)
            return
        with self._lock:
            self._keys, self._fetched_at = keys, self._clock()
        self._telemetry.emit("jwks_fetch", idp=self.name, result="success", fetched_at=self._fetched_at)
        log.info("fetched %d keys of %s from %s", len(keys), self.name, self.jwks_uri)


class JwksCache:
    """Every remote IdP's :class:`RemoteKeys`, kept across snapshot rebuilds, refreshed by one thread. Fetches are
    reported on ``telemetry`` (none: nobody listens, as in ``tokenbridge explain``)."""

    def __init__(
        self,
        fetch: Fetcher,
        *,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        lifespan: float = 300.0,
        cooldown: float = 10.0,
        max_staleness: float = 86400.0,
        tick: float = 1.0,
    ):
        self._fetch, self._clock, self._tick = fetch, clock, tick
        self._telemetry = telemetry if telemetry is not None else Telemetry()
        self._settings = {"lifespan": lifespan, "cooldown": max(cooldown, 10.0), "max_staleness": max_staleness}
        self._entries: dict[tuple, RemoteKeys] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def fingerprint(name: str, jwks_uri: str, spec: IdentityProviderSpec) -> tuple:
        """What the fetch depends on: a change to anything else in the spec keeps the cached keys."""
        return (
            name,
            jwks_uri,
            spec.type,
            spec.tls,
            spec.uses_operator_credentials,
            spec.allow_insecure_http,
            spec.allowed_algorithms,
        )

    def remote(self, name: str, jwks_uri: str, spec: IdentityProviderSpec | Mapping[str, Any]) -> RemoteKeys:
        spec = IdentityProviderSpec.of(spec)
        key = self.fingerprint(name, jwks_uri, spec)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = RemoteKeys(
                    name, jwks_uri, spec, self._fetch, clock=self._clock, telemetry=self._telemetry, **self._settings
                )
                self._entries[key] = entry
            return entry

    def retain(self, entries: list[RemoteKeys]) -> None:
        """Forget every entry the newest snapshot no longer uses."""
        keep = {id(e) for e in entries}
        with self._lock:
            self._entries = {k: e for k, e in self._entries.items() if id(e) in keep}

    def refresh_due(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            entry.refresh_if_due()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.refresh_due()
            except Exception:  # the refresher must outlive any single bad entry
                log.exception("JWKS refresh loop")
