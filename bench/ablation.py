"""Where Tokenbridge's per-exchange time goes, by ablation: the same WSGI app called in process, single-threaded,
with one feature switched off at a time (from the outside: no server code is edited).

    python bench/ablation.py MANIFEST_DIR POOL_FILE FLOOR_JSON FLOOR_POOL_FILE [--requests N]

Each variant runs in a fresh interpreter (prometheus_client reads PROMETHEUS_MULTIPROC_DIR at import):
  full              as ``tokenbridge serve`` runs it: multiprocess metrics, audit records through serve's sink
                    (:class:`StreamAudit`: a queue and a writer thread) into a file instead of stdout
  verify-every-token  no verified signature remembered (TOKENBRIDGE_VERIFIED_SIGNATURES=0): the pool's tokens
                    repeat, so "full" verifies each once and remembers it
  no-audit          an audit sink that is off
  metrics-in-memory no PROMETHEUS_MULTIPROC_DIR: prometheus_client's in-process values instead of mmap files
  no-middleware     ``MetricsMiddleware`` replaced by a no-op (neither metrics nor audit)
  floor             bench/floor_app.py's app
Requests go straight into the WSGI callable (no HTTP, no gunicorn), so the differences are the app's own.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VARIANTS = ("full", "verify-every-token", "no-audit", "metrics-in-memory", "no-middleware", "floor")


def _environ(auth: str, body: bytes) -> dict:
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/oauth2/token",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if auth:
        env["HTTP_AUTHORIZATION"] = auth
    return env


def child(variant: str, manifests: str, pool_file: str, floor_json: str, floor_pool: str, requests: int) -> dict:
    sys.path.insert(0, str(BENCH))
    if variant == "floor":
        import floor_app

        spec = json.loads(Path(floor_json).read_text())
        app = floor_app.create_app(spec["jwk"], spec["issuer"], spec["audience"])
        pool_path = floor_pool
    else:
        from tokenbridge.signing import generate_keyset
        from tokenbridge_exchange import app as app_module
        from tokenbridge_exchange.audit import StreamAudit
        from tokenbridge_exchange.config import ServerConfig
        from tokenbridge_exchange.jwks_cache import JwksCache
        from tokenbridge_exchange.sources.manifests import ManifestSource

        audit = StreamAudit(open(os.path.join(tempfile.mkdtemp(), "audit.jsonl"), "w"))
        audit.start()
        if variant == "no-audit":
            audit.enabled = False
        if variant == "no-middleware":

            class NoMiddleware:
                def __init__(self, metrics, audit):
                    pass

                def process_request(self, req, resp):
                    pass

            app_module.MetricsMiddleware = NoMiddleware
        source = ManifestSource(
            manifests,
            JwksCache(lambda uri, spec: None),
            lambda spec: None,
            signing_keys=generate_keyset("ES256", time.time()),
        )
        source.start()
        config = ServerConfig(
            issuer="http://bench.local",
            replay_cache_path=os.path.join(tempfile.mkdtemp(), "replay.sqlite3"),
            verified_signatures=0 if variant == "verify-every-token" else 4096,
        )
        app = app_module.create_app(config, source, audit=audit)
        pool_path = pool_file
    pool = [
        (a, b.encode()) for a, b in (line.split("\t", 1) for line in Path(pool_path).read_text().splitlines() if line)
    ]
    statuses: dict[str, int] = {}

    def start_response(status, headers, exc_info=None):
        statuses[status[:3]] = statuses.get(status[:3], 0) + 1

    times = []
    for i in range(requests):
        auth, body = pool[i % len(pool)]
        env = _environ(auth, body)
        t0 = time.perf_counter()
        for _ in app(env, start_response):
            pass
        times.append(time.perf_counter() - t0)
    times = sorted(times[requests // 5 :])  # the first fifth warms up
    return {
        "variant": variant,
        "mean_us": statistics.fmean(times) * 1e6,
        "p50_us": statistics.median(times) * 1e6,
        "statuses": statuses,
    }


def run(manifests: Path, pool: Path, floor_json: Path, floor_pool: Path, requests: int = 3000) -> dict:
    out = {}
    for variant in VARIANTS:
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if variant != "metrics-in-memory" and variant != "floor":
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tokenbridge-ablation-metrics-")
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                variant,
                str(manifests),
                str(pool),
                str(floor_json),
                str(floor_pool),
                str(requests),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        if proc.returncode != 0:
            out[variant] = {"error": proc.stderr[-1500:]}
            continue
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        v, m, p, fj, fp, n = sys.argv[2:8]
        print(json.dumps(child(v, m, p, fj, fp, int(n))))
    else:
        args = sys.argv[1:]
        n = 3000
        if "--requests" in args:
            i = args.index("--requests")
            n = int(args[i + 1])
            del args[i : i + 2]
        print(json.dumps(run(*map(Path, args[:4]), requests=n), indent=1))
