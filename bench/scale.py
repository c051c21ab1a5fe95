"""Scale: 10,000 IdPs and 100,000 applications in one snapshot.

    .venv/bin/python bench/scale.py [--idps 10000] [--apps 100000] [--json out.json] [--no-server]

The large configuration is one JSON ``kind: List`` (as ``kubectl get -o json`` writes it): a configuration this
size is JSON or lives in a cluster; YAML is for the hand-written sizes (the small one, 100 IdPs / 1,000
applications, is YAML). Measured, each in a fresh interpreter so memory is the snapshot's own:
  load     ``ManifestSource.preload``, exactly as the gunicorn master runs it before forking (read + parse +
           snapshot build); then in parts: the parse alone (``json.load``, or ``yaml.load_all`` with
           ``CSafeLoader``) and ``build_snapshot`` alone (the part the Kubernetes source shares);
  memory   RSS (VmRSS, peak VmHWM) of that process once the snapshot is served, and after gc + malloc_trim (what
           ``tokenbridge serve``'s master does before forking): what the workers inherit; live Python memory of
           the snapshot (tracemalloc, a separate process);
  latency  per-exchange time through the real WSGI app (``create_app``) in process, single-threaded, for both
           sizes: lookups are dict accesses, so it must not change with size;
  server   ``tokenbridge serve --workers 2`` on the large configuration: seconds from start to ``/readyz`` 200, the
           master's own load time (its log), and RSS and PSS (/proc/PID/smaps_rollup) of the master and of each
           worker once ready and again after a few hundred exchanges through each of them.
IdP key material comes from a pool of 20 RSA keys (every IdP still has its own issuer, kid and JWKS to parse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import free_port, stop, table

BENCH = Path(__file__).resolve().parent
PY = sys.executable
SERVER_WAIT = 75.0  # s: gunicorn's worker timeout is 30 s, so two timeouts fit
TARGET_LOAD_S = 10.0
TARGET_WORKER_MB = 400.0


def _status_mb(field: str, pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pss_mb(pid: int | str) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(directory: str, pool_file: str, requests: int) -> dict:
    """In a fresh interpreter: load like the server's master does, then measure memory, the load's parts and
    per-request latency."""
    import statistics

    import falcon.testing
    import yaml

    from tokenbridge.signing import generate_keyset
    from tokenbridge_exchange.app import create_app
    from tokenbridge_exchange.config import ServerConfig
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.snapshot import build_snapshot
    from tokenbridge_exchange.sources.manifests import ManifestSource

    out: dict = {"rss_before_mb": _status_mb("VmRSS")}
    cache = JwksCache(lambda uri, spec: None)
    source = ManifestSource(directory, cache, lambda spec: None, signing_keys=generate_keyset("ES256", time.time()))
    t0 = time.perf_counter()
    source.preload()  # what tokenbridge serve's master does before forking the workers
    out["load_s"] = time.perf_counter() - t0
    snapshot = source.current()
    out["applications"], out["identity_providers"] = len(snapshot.applications), len(snapshot.providers)
    out["skipped"] = len(snapshot.skipped)
    out["rss_loaded_mb"] = _status_mb("VmRSS")
    out["hwm_loaded_mb"] = _status_mb("VmHWM")
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # as serve.settle_before_fork: what the workers inherit
    out["rss_trimmed_mb"] = _status_mb("VmRSS")

    # the load's parts, after the real load so they do not inflate its memory figures
    (path,) = Path(directory).glob("manifests.*")
    gc.disable()  # as ManifestSource does while loading
    t0 = time.perf_counter()
    with open(path, "rb") as f:  # the library call the source makes
        docs = json.load(f)["items"] if path.suffix == ".json" else list(yaml.load_all(f, Loader=yaml.CSafeLoader))
    out["parse_s"] = time.perf_counter() - t0
    by_kind: dict = {}
    for d in docs:
        d.setdefault("metadata", {}).setdefault("namespace", "default")
        by_kind.setdefault(d["kind"], []).append(d)
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["stringData"] for s in by_kind["Secret"]}
    apps = [source._with_credentials(d, secrets) for d in by_kind["OAuthApplication"]]
    t0 = time.perf_counter()
    build_snapshot(
        identity_providers=by_kind["IdentityProvider"],
        cluster_identity_providers=[],
        applications=apps,
        signing_keys=snapshot.signing_keys,
        cache=cache,
    )
    out["build_snapshot_s"] = time.perf_counter() - t0
    gc.enable()
    del docs, by_kind, apps, secrets

    config = ServerConfig(issuer="http://bench.local")
    client = falcon.testing.TestClient(create_app(config, source))
    pool = [line.split("\t", 1) for line in Path(pool_file).read_text().splitlines() if line]
    times = []
    statuses: dict = {}
    for i in range(requests):
        auth, body = pool[i % len(pool)]
        t0 = time.perf_counter()
        r = client.simulate_post(
            "/oauth2/token",
            body=body,
            headers={"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"},
        )
        times.append(time.perf_counter() - t0)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    times = times[len(times) // 10 :]  # first 10 % are warm-up
    times.sort()
    out["latency_p50_ms"] = statistics.median(times) * 1000
    out["latency_p99_ms"] = times[int(0.99 * len(times))] * 1000
    out["statuses"] = statuses
    out["rss_after_requests_mb"] = _status_mb("VmRSS")
    return out


def trace_child(directory: str) -> dict:
    """Live Python memory of the snapshot vs the load's peak (tracemalloc)."""
    import gc
    import tracemalloc

    from tokenbridge.signing import generate_keyset
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.sources.manifests import ManifestSource

    source = ManifestSource(
        directory,
        JwksCache(lambda uri, spec: None),
        lambda spec: None,
        signing_keys=generate_keyset("ES256", time.time()),
    )
    tracemalloc.start(1)
    source.preload()
    gc.collect()
    live, peak = tracemalloc.get_traced_memory()
    top = tracemalloc.take_snapshot().statistics("lineno")[:6]
    return {
        "live_mb": live / 1e6,
        "peak_mb": peak / 1e6,
        "top": [(str(s.traceback[0]), round(s.size / 1e6, 1), s.count) for s in top],
    }


def measure(directory: Path, pool_file: Path, requests: int, timeout: float) -> dict:
    proc = subprocess.run(
        [PY, __file__, "--child", str(directory), str(pool_file), str(requests)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trace(directory: Path) -> dict:
    proc = subprocess.run([PY, __file__, "--trace-child", str(directory)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory(pids: list[str]) -> list[dict]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(
                {"pid": int(pid), "rss_mb": round(_status_mb("VmRSS", pid), 1), "pss_mb": round(_pss_mb(pid), 1)}
            )
    return out


def try_server(directory: Path, wait: float, pool_file: Path | None = None, exchanges: int = 400) -> dict:
    """``tokenbridge serve --workers 2`` on the large manifests: how fast it is ready, with what memory, per process
    (RSS counts the pages a worker shares with the master; PSS splits shared pages between the processes sharing
    them, so the PSS of the master and the workers add up to what the server really holds)."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    logf = open(log_path, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            str(Path(PY).parent / "tokenbridge"),
            "serve",
            "--manifests",
            str(directory),
            "--bind",
            f"127.0.0.1:{port}",
            "--issuer",
            base,
            "--workers",
            "2",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out: dict = {"wait_s": wait}
    try:
        while time.monotonic() - t0 < wait:
            if proc.poll() is not None:
                out["exited"] = proc.returncode
                break
            try:
                r = httpx.get(base + "/readyz", timeout=2)
                if r.status_code == 200:
                    out["ready_s"] = time.monotonic() - t0
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        if "ready_s" in out:
            time.sleep(1.0)  # both workers past their boot
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            out["master"] = _memory([str(proc.pid)])[0]
            out["workers"] = _memory(workers)
            out["worker_rss_mb"] = [w["rss_mb"] for w in out["workers"]]
            out["worker_pss_mb"] = [w["pss_mb"] for w in out["workers"]]
            out["total_pss_mb"] = round(out["master"]["pss_mb"] + sum(out["worker_pss_mb"]), 1)
            if pool_file is not None and exchanges:
                pool = [line.split("\t", 1) for line in pool_file.read_text().splitlines() if line]
                statuses: dict = {}
                with httpx.Client(base_url=base) as http:
                    for i in range(exchanges):
                        auth, body = pool[i % len(pool)]
                        r = http.post(
                            "/oauth2/token",
                            content=body,
                            headers={
                                "Authorization": auth,
                                "Content-Type": "application/x-www-form-urlencoded",
                                "Connection": "close",
                            },
                        )  # a new connection each: both workers answer
                        statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                out["exchanges"] = statuses
                out["workers_after_exchanges"] = _memory(workers)
                out["master_after_exchanges"] = _memory([str(proc.pid)])[0]
    finally:
        stop(proc)
        logf.close()
    text = log_path.read_text()
    loaded = re.search(r"first snapshot loaded in ([0-9.]+)s", text)
    if loaded:
        out["master_load_s"] = float(loaded.group(1))
    out["worker_timeouts"] = len(re.findall(r"WORKER TIMEOUT", text))
    out["workers_booted"] = len(re.findall(r"Booting worker", text))
    out["snapshot_loads"] = len(re.findall(r"loaded \d+ applications", text))  # 1: only the master parsed
    out["log_excerpt"] = [
        line
        for line in text.splitlines()
        if "TIMEOUT" in line or "loaded" in line or "Booting" in line or "Error" in line
    ][:12]
    return out


def _short(site: str) -> str:
    """A traceback location without the machine's prefixes: "tokenbridge/issuers.py:62"."""
    site = re.sub(r"^.*tokenbridge-bench-src-[^/]+/", "", site).replace(str(BENCH.parent) + "/", "")
    for marker in ("site-packages/", "exchange_server/"):
        if marker in site:
            site = site.split(marker, 1)[1]
    return re.sub(r"^/tmp/[^/]+/", "", site)


def _mb(values: list[dict], field: str) -> str:
    return ", ".join(f"{v[field]:.0f}" for v in values) if values else "n/a"


def _s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def _yes(value: float | None, goal: float) -> str:
    return "n/a" if value is None else ("**met**" if value <= goal else "**missed**")


def markdown(r: dict) -> list[str]:
    """Tables: the two configurations side by side, where the large one's memory is, the server on it."""
    small, big = r.get("small") or {}, r.get("large_json") or {}
    src = r.get("source") or {}

    def both(label: str, field: str, show, goal: float | None = None) -> list[str]:
        a, b = small.get(field), big.get(field)
        return [label, show(a), show(b), "" if goal is None else _yes(b, goal)]

    latency = "{:.2f} / {:.2f} ms".format
    L = table(
        ["scale run", "commit", "IdPs / applications (large)", "generated in", "large manifests"],
        [
            [
                r.get("started", "?"),
                f"`{src.get('commit', '?')}`",
                f"{r['identity_providers']:,} / {r['applications']:,}",
                _s(r.get("generate_s"), 0),
                f"{r.get('manifest_json_mb', 0):.0f} MB JSON `kind: List`",
            ]
        ],
    )
    L += table(
        [
            "",
            "100 IdPs / 1,000 apps, YAML",
            f"{r['identity_providers']:,} IdPs / {r['applications']:,} apps, JSON",
            f"≤ {TARGET_LOAD_S:.0f} s / ≤ {TARGET_WORKER_MB:.0f} MB",
        ],
        [
            both("first load (`ManifestSource.preload`: read, parse, snapshot)", "load_s", _s, TARGET_LOAD_S),
            both("of which the parse alone (`yaml.load_all` / `json.load`)", "parse_s", _s),
            both("of which `build_snapshot` alone", "build_snapshot_s", _s),
            both("RSS with the snapshot served (MB)", "rss_loaded_mb", _f0),
            both("peak RSS during the load (MB)", "hwm_loaded_mb", _f0),
            both("RSS after gc + malloc_trim: what workers inherit (MB)", "rss_trimmed_mb", _f0, TARGET_WORKER_MB),
            [
                "per-exchange time in process, p50 / p99",
                *(
                    latency(c["latency_p50_ms"], c["latency_p99_ms"]) if "latency_p50_ms" in c else "n/a"
                    for c in (small, big)
                ),
                "",
            ],
            ["exchanges answered 200", *((c.get("statuses") or {}).get("200", "n/a") for c in (small, big)), ""],
        ],
    )
    tr = r.get("large_traced") or {}
    if "live_mb" in tr:
        L += table(
            ["live Python memory of the large snapshot (tracemalloc)", "per application", "traced peak"],
            [
                [
                    f"{tr['live_mb']:.0f} MB",
                    f"{tr['live_mb'] * 1e3 / r['applications']:.2f} KB",
                    f"{tr['peak_mb']:.0f} MB",
                ]
            ],
        )
        L += table(
            ["largest live allocation site", "MB", "blocks"],
            [[f"`{_short(site)}`", mb, f"{n:,}"] for site, mb, n in tr["top"]],
        )
    servers = [(name, srv) for name, srv in (("JSON", r.get("server_json")),) if srv]
    if servers:
        L += table(
            [
                "`tokenbridge serve --workers 2`",
                "/readyz 200 after",
                "master's load",
                "loads in its log",
                "worker timeouts",
                "master RSS / PSS (MB)",
                "workers RSS (MB)",
                "workers PSS (MB)",
                "all PSS (MB)",
                "exchanges",
                "then workers RSS / PSS (MB)",
            ],
            [
                [
                    f"large {name}",
                    _s(srv.get("ready_s"), 1),
                    _s(srv.get("master_load_s"), 1),
                    srv.get("snapshot_loads", "n/a"),
                    srv.get("worker_timeouts", "n/a"),
                    f"{srv['master']['rss_mb']:.0f} / {srv['master']['pss_mb']:.0f}" if "master" in srv else "n/a",
                    _mb(srv.get("workers"), "rss_mb"),
                    _mb(srv.get("workers"), "pss_mb"),
                    srv.get("total_pss_mb", "n/a"),
                    srv.get("exchanges", "n/a"),
                    f"{_mb(srv.get('workers_after_exchanges'), 'rss_mb')} / "
                    f"{_mb(srv.get('workers_after_exchanges'), 'pss_mb')}",
                ]
                for name, srv in servers
            ],
        )
    return L


def _f0(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trace-child"]:
        print(json.dumps(trace_child(argv[1])))
        return 0
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], int(argv[3]))))
        return 0
    p = argparse.ArgumentParser(description="Scale benchmark")
    p.add_argument("--idps", type=int, default=10_000)
    p.add_argument("--apps", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--json", type=Path)
    p.add_argument("--no-server", action="store_true")
    p.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a running pytest (default 600)")
    args = p.parse_args(argv)
    import configgen

    waited = 0
    while subprocess.run(["pgrep", "-f", "pytest"], capture_output=True).returncode == 0 and waited < args.max_wait:
        if not waited:
            print("pytest is running on this machine: waiting (polling every 30 s, up to 10 min)", flush=True)
        time.sleep(30)
        waited += 30
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH.parent
    ).stdout.strip()
    results: dict = {
        "identity_providers": args.idps,
        "applications": args.apps,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": {"commit": commit},
    }
    with tempfile.TemporaryDirectory(prefix="tokenbridge-scale-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.monotonic()
        big = configgen.generate(
            tmp_path / "large",
            args.idps,
            args.apps,
            distinct_keys=20,
            json_directory=tmp_path / "large",
            write_yaml=False,
        )
        results["generate_s"] = time.monotonic() - t0
        results["manifest_json_mb"] = (big.directory / "manifests.json").stat().st_size / 1e6
        small = configgen.generate(tmp_path / "small", 100, 1000, distinct_keys=20)
        big_pool = configgen.write_pool(configgen.request_pool(big, 200), tmp_path / "large-pool.tsv")
        small_pool = configgen.write_pool(configgen.request_pool(small, 200), tmp_path / "small-pool.tsv")
        print(f"generated in {results['generate_s']:.0f} s; loading the small configuration", flush=True)
        results["small"] = measure(small.directory, small_pool, args.requests, 120)
        print(f"loading the large configuration ({results['manifest_json_mb']:.0f} MB JSON)", flush=True)
        results["large_json"] = measure(big.directory, big_pool, args.requests, 400)
        print(json.dumps({k: v for k, v in results["large_json"].items() if k != "statuses"}), flush=True)
        print("tracing the live memory of the snapshot (tracemalloc)", flush=True)
        results["large_traced"] = trace(big.directory)
        if not args.no_server:
            print("starting tokenbridge serve --workers 2 on the large configuration", flush=True)
            results["server_json"] = try_server(big.directory, SERVER_WAIT, big_pool)
            print(json.dumps({k: v for k, v in results["server_json"].items() if k != "log_excerpt"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
