"""The replay cache: a token's ``(iss, jti)`` is accepted once, until the token expires (``exp`` + clock skew).

Only identity providers with ``preventReplay: true`` use it, so a server without such an IdP never opens it.
It is a small SQLite database (WAL mode) in a private directory that ``tokenbridge serve`` creates in the master
before forking: every gunicorn worker (and thread) of one server process tree shares it, and a second use is the
``INSERT`` that fails on the primary key (a 128-bit hash of ``iss`` and ``jti``, so every row has the same small
size), atomically across processes. Each replica of a
Deployment has its own cache: a token replayed against another replica is not detected (see the README).

Memory and disk stay bounded: expired rows are purged every ``purge_interval`` seconds (and at once, at most once a
second, when the cache is full), and while the table holds ``max_entries`` unexpired rows new tokens of those IdPs
are refused (``temporarily_unavailable``) rather than accepted unchecked: the cache fails closed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 100_000
PURGE_INTERVAL = 10.0
DB_NAME = "replay.sqlite3"

Key = tuple[str, str, float]  # (iss, jti, accepted until: exp + clock skew)


def _id(iss: str, jti: str) -> bytes:
    """A fixed-size row key, however long the issuer and jti: 128 bits of BLAKE2b over both."""
    return hashlib.blake2b(f"{iss}\0{jti}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Replayed(Exception):
    """The ``(iss, jti)`` was already used."""

    def __init__(self, iss: str, jti: str):
        super().__init__(f"jti already used for issuer {iss}")
        self.iss, self.jti = iss, jti


class CacheFull(Exception):
    """The cache holds ``max_entries`` unexpired tokens."""


class ReplayCache:
    """Thread-safe; one SQLite connection per process (reopened after a fork), opened on first use."""

    def __init__(
        self,
        path: str | None = None,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        purge_interval: float = PURGE_INTERVAL,
        clock: Callable[[], float] = time.time,
    ):
        self._path = path
        self.max_entries, self._purge_interval, self._clock = max_entries, purge_interval, clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._purged_at = float("-inf")
        self._full = False

    @property
    def path(self) -> str:
        if self._path is None:  # no directory from the master (tests, a bare create_app): a private one
            self._path = os.path.join(tempfile.mkdtemp(prefix="tokenbridge-replay-"), DB_NAME)
        return self._path

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")  # a crash may lose entries; the directory is temporary anyway
            conn.execute("CREATE TABLE IF NOT EXISTS seen (id BLOB PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID")
            conn.execute("CREATE INDEX IF NOT EXISTS seen_until ON seen (until)")
            # the number of rows, kept in step by every writer (counting them is O(n), this is O(1))
            conn.execute("CREATE TABLE IF NOT EXISTS size (k INTEGER PRIMARY KEY CHECK (k = 0), n INTEGER NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO size (k, n) VALUES (0, 0)")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete the expired rows and recount (the count may drift up when an expired row was overwritten)."""
        self._purged_at = now
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM seen WHERE until < ?", (now,))
            conn.execute("UPDATE size SET n = (SELECT count(*) FROM seen)")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def seen(self, iss: str, jti: str) -> bool:
        """Whether ``(iss, jti)`` was used and has not expired yet; consumes nothing (explain)."""
        with self._lock:
            row = self._connection().execute("SELECT until FROM seen WHERE id = ?", (_id(iss, jti),)).fetchone()
        return row is not None and row[0] >= self._clock()

    def consume(self, keys: Iterable[Key]) -> None:
        """Record every key at once, or none: :class:`Replayed` when one was used before, :class:`CacheFull`."""
        keys = list(keys)
        if not keys:
            return
        now = self._clock()
        with self._lock:
            conn = self._connection()
            if now - self._purged_at >= self._purge_interval:
                self._purge(conn, now)
            for attempt in (1, 2):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    (size,) = conn.execute("SELECT n FROM size").fetchone()
                    if size + len(keys) > self.max_entries:
                        conn.execute("ROLLBACK")
                        if attempt == 1 and now - self._purged_at >= 1.0:  # purge now, at most once a second
                            self._purge(conn, now)
                            continue
                        if not self._full:
                            log.error(
                                "the replay cache holds %d unexpired tokens, its limit; refusing tokens of "
                                "identity providers with preventReplay until some expire",
                                size,
                            )
                        self._full = True
                        raise CacheFull(f"the replay cache holds {self.max_entries} unexpired tokens")
                    self._full = False
                    for iss, jti, until in keys:
                        # a row that expired but was not purged yet no longer counts as a use: it is overwritten
                        cursor = conn.execute(
                            "INSERT INTO seen (id, until) VALUES (?, ?) ON CONFLICT (id) "
                            "DO UPDATE SET until = excluded.until WHERE seen.until < ?",
                            (_id(iss, jti), until, now),
                        )
                        if cursor.rowcount != 1:
                            raise Replayed(iss, jti)
                    conn.execute("UPDATE size SET n = n + ?", (len(keys),))
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
