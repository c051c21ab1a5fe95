"""The audit record of every token request: one JSON line, never a token or a secret, written by
:class:`AuditMiddleware`.

Records go to a sink. ``create_app`` defaults to the logger ``tokenbridge.audit`` (embedding, tests);
``tokenbridge serve`` passes a :class:`StreamAudit` on stdout instead (one per worker): a request thread only
appends its line and one writer thread per worker writes what has gathered, a few times a second, in one call. A
request then never waits on stdout or a handler's lock, and skips logging's record machinery (LogRecord, caller
lookup, QueueHandler copy).
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

import falcon

from .pipeline import Exchange

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class AuditSink(Protocol):
    @property
    def enabled(self) -> bool: ...

    def write(self, line: str) -> None: ...


class LoggerAudit:
    """Records as INFO messages of a logger; off while the logger does not take INFO."""

    def __init__(self, logger: logging.Logger | None = None):
        self._logger = logger or logging.getLogger("tokenbridge.audit")

    @property
    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, line: str) -> None:
        self._logger.info(line)


class StreamAudit:
    """Records as lines on a stream, written by one thread every ``interval`` seconds (started in the process that
    serves: threads do not survive a fork). Requests only append to a deque: no lock, no wake-up of the writer per
    record (which in the benchmark cost more than the write). ``stop`` writes what is queued before it returns."""

    enabled = True

    def __init__(self, stream: IO[str], interval: float = 0.05):
        self._stream, self._interval = stream, interval
        self._lines: collections.deque[str] = collections.deque()
        self._call: Callable[..., Any] = _direct
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._call = _blocking_call()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        self._lines.append(line)

    def stop(self, server: object = None, worker: object = None) -> None:
        """Also gunicorn's ``worker_exit(server, worker)`` hook."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        pending = []
        try:
            while True:
                pending.append(self._lines.popleft())
        except IndexError:
            pass
        if pending:
            self._call(self._write_out, "\n".join(pending) + "\n")

    def _write_out(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: lose the records, not the worker
            pass


class AuditMiddleware:
    """One record per token endpoint response (``path``), refusals included (they pass the error handler first)."""

    def __init__(self, sink: AuditSink, path: str):
        self._sink, self._path = sink, path

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if req.path != self._path or req.method != "POST" or not self._sink.enabled:
            return
        state, status, error, description = token_response(req, resp)
        self._sink.write(record(state, status, error, description, req.remote_addr))


def token_response(req: falcon.Request, resp: falcon.Response) -> tuple[Exchange, int, str | None, str | None]:
    """A token endpoint response as the metrics and the audit see it: the request as far as it got, the status,
    and a refusal's OAuth error and description."""
    status = resp.status_code
    if status == 200:
        return req.context.get("exchange") or Exchange(), status, None, None
    media = resp.media if isinstance(resp.media, dict) else {}
    return (
        req.context.get("exchange") or Exchange(),
        status,
        media.get("error", "server_error"),
        media.get("error_description"),
    )


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _blocking_call() -> Callable[..., Any]:
    """How the writer makes a blocking write. A gevent worker's greenlets share one OS thread, so a write to a
    stdout nobody reads (a stalled log pipe) would hold every request of the worker: there the write runs in
    gevent's pool of native threads and only the writer greenlet waits for it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        from gevent import get_hub

        return lambda fn, *args: get_hub().threadpool.apply(fn, args)
    return _direct


_second: list = [None, ""]  # the last whole second formatted (RFC 3339 up to the seconds)


def _timestamp() -> str:
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


def outcome(status: int) -> str:
    return "issued" if status == 200 else "refused" if status < 500 else "failed"


def record(state: Exchange, status: int, error: str | None, description: str | None, remote_addr: str | None) -> str:
    """Who asked for what and what they got: the issued token named by its ``jti``, the subject token by its
    ``jti`` when it has one."""
    return _encode(
        {
            "time": _timestamp(),
            "event": "token_request",
            "outcome": outcome(status),
            "status": status,
            "grant_type": state.grant_type,
            "client_id": state.client_id,
            "application": state.app.label if state.app is not None else None,
            "idp": state.idp,
            "subject": state.subject,
            "actor": state.actor,
            "audience": list(state.audiences),
            "scope": list(state.scopes),
            "error": error,
            "error_description": description,
            "jti": state.jti,
            "subject_jti": state.subject_jti,
            "expires_at": int(state.expires_at) if state.jti and state.expires_at else None,
            "remote_addr": remote_addr,
        }
    )
