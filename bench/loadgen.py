"""Open-loop load at a fixed arrival rate, free of coordinated omission.

Request ``i`` is due at ``start + i / rate`` whatever happened before; it goes out on an idle keep-alive connection
(or a new one, up to ``connections``), else waits in a queue. Its latency is measured from its *scheduled* time to
the last byte of its response, so a server that stalls is charged for every request that should have been sent
meanwhile (what wrk2 does; wrk2 is not packaged by Debian). The service time (from the actual send) is kept too.

Raw asyncio protocols and pre-built request bytes keep the generator cheap: a few percent of a core at the rates a
2-core Python server reaches. HTTP/1.1 only, responses framed by Content-Length (what gunicorn and Go send here);
a server that closes the connection (gunicorn's sync worker) is reconnected.

    python bench/loadgen.py --url http://127.0.0.1:8080/oauth2/token --pool pool.tsv --rate 800 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def build_requests(pool: list[tuple[str, str]], host: str, path: str) -> list[bytes]:
    out = []
    for auth, body in pool:
        raw = body.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(raw)}\r\n"
        )
        if auth:
            head += f"Authorization: {auth}\r\n"
        out.append(head.encode() + b"\r\n" + raw)
    return out


class Conn(asyncio.Protocol):
    def __init__(self, gen: OpenLoop):
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.inflight: tuple[float, float] | None = None  # (scheduled, sent)
        self.closed = False
        self.need: int | None = None  # total bytes of the current response once its head is parsed

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.gen.connected(self)

    def send(self, scheduled: float, payload: bytes) -> None:
        self.inflight = (scheduled, time.perf_counter())
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.inflight is not None:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                i = head.find(b"content-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i)
                    length = int(head[i + 15 : j if j >= 0 else len(head)])
                else:
                    length = 0
                self.need = end + 4 + length
                self.status = int(head[9:12])
                self.close_after = b"connection: close" in head
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = None
            scheduled, sent = self.inflight
            self.inflight = None
            self.gen.completed(self, scheduled, sent, self.status)
            if self.close_after:
                self.transport.close()
                return
            self.gen.idle(self)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.gen.lost(self)


class OpenLoop:
    def __init__(
        self, host: str, port: int, requests: list[bytes], rate: float, duration: float, connections: int, warmup: float
    ):
        self.host, self.port, self.requests = host, port, requests
        self.rate, self.duration, self.connections, self.warmup = rate, duration, connections, warmup
        self.idle_conns: collections.deque[Conn] = collections.deque()
        self.queue: collections.deque[float] = collections.deque()
        self.opening = 0
        self.open: set[Conn] = set()
        self.latencies: list[float] = []
        self.service: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors = 0
        self.in_window = 0  # requests scheduled inside the measured window
        self.done_in_window = 0  # of those, answered or failed
        self.sent = 0
        self.measure_from = 0.0
        self.measure_to = 0.0

    # connection management -------------------------------------------------------------------------------
    def _open_one(self) -> None:
        self.opening += 1
        loop = asyncio.get_running_loop()

        async def opener():
            try:
                await loop.create_connection(lambda: Conn(self), self.host, self.port)
            except OSError:
                self.opening -= 1
                self.errors += 1

        loop.create_task(opener())

    def connected(self, conn: Conn) -> None:
        self.opening -= 1
        self.open.add(conn)
        self.idle(conn)

    def idle(self, conn: Conn) -> None:
        if self.queue:
            self._send(conn, self.queue.popleft())
        else:
            self.idle_conns.append(conn)

    def lost(self, conn: Conn) -> None:
        self.open.discard(conn)
        try:
            self.idle_conns.remove(conn)
        except ValueError:
            pass
        if conn.inflight is not None:  # reset mid-request: an error, charged to its schedule
            self.errors += 1
            if self.measure_from <= conn.inflight[0] < self.measure_to:
                self.done_in_window += 1
            conn.inflight = None
        if self.queue and len(self.open) + self.opening < self.connections:
            self._open_one()

    def _send(self, conn: Conn, scheduled: float) -> None:
        payload = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        conn.send(scheduled, payload)

    def dispatch(self, scheduled: float) -> None:
        if self.measure_from <= scheduled < self.measure_to:
            self.in_window += 1
        while self.idle_conns:
            conn = self.idle_conns.popleft()
            if not conn.closed:
                self._send(conn, scheduled)
                return
        self.queue.append(scheduled)
        if len(self.open) + self.opening < self.connections:
            self._open_one()

    def completed(self, conn: Conn, scheduled: float, sent: float, status: int) -> None:
        now = time.perf_counter()
        if self.measure_from <= scheduled < self.measure_to:
            self.done_in_window += 1
            self.latencies.append(now - scheduled)
            self.service.append(now - sent)
            self.statuses[status] += 1

    # the schedule -----------------------------------------------------------------------------------------
    async def run(self) -> dict:
        interval = 1.0 / self.rate
        start = time.perf_counter() + 0.05
        self.measure_from = start + self.warmup
        self.measure_to = start + self.warmup + self.duration
        total = int((self.warmup + self.duration) * self.rate)
        lag_max = 0.0
        i = 0
        while i < total:
            now = time.perf_counter()
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            lag_max = max(lag_max, now - due) if due >= self.measure_from else lag_max
            while i < total and start + i * interval <= now:
                self.dispatch(start + i * interval)
                i += 1
        # drain: wait for what was scheduled inside the window (bounded)
        deadline = time.perf_counter() + 10.0
        while self.done_in_window < self.in_window and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        missing = self.in_window - self.done_in_window  # still unanswered 10 s after the schedule ended
        for conn in list(self.open):
            conn.transport.close()
        return self.summary(missing, lag_max)

    def summary(self, missing: int, lag_max: float) -> dict:
        lat = sorted(self.latencies)
        svc = sorted(self.service)

        def pct(values, p):
            if not values:
                return None
            return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

        ok = self.statuses.get(200, 0)
        return {
            "rate": self.rate,
            "duration": self.duration,
            "completed": len(lat),
            "ok": ok,
            "non200": sum(v for k, v in self.statuses.items() if k != 200),
            "errors": self.errors,
            "missing": missing,
            "scheduled": self.in_window,
            "achieved_rate": len(lat) / self.duration,
            "p50_ms": pct(lat, 50),
            "p90_ms": pct(lat, 90),
            "p99_ms": pct(lat, 99),
            "max_ms": pct(lat, 100),
            "service_p50_ms": pct(svc, 50),
            "service_p99_ms": pct(svc, 99),
            "generator_max_lag_ms": lag_max * 1000,
        }


def run_open_loop(
    url: str, pool: list[tuple[str, str]], rate: float, duration: float, *, connections: int = 64, warmup: float = 1.0
) -> dict:
    parts = urlsplit(url)
    requests = build_requests(pool, parts.netloc, parts.path or "/")
    gen = OpenLoop(parts.hostname, parts.port or 80, requests, rate, duration, connections, warmup)
    return asyncio.run(gen.run())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--pool", required=True, help="authorization<TAB>body lines")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args(argv)
    pool = [tuple(line.split("\t", 1)) for line in Path(args.pool).read_text().splitlines() if line]
    print(
        json.dumps(
            run_open_loop(args.url, pool, args.rate, args.duration, connections=args.connections, warmup=args.warmup)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
