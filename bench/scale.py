"""Scale: 10,000 IdPs and 100,000 applications in one snapshot.

    .venv/bin/python bench/scale.py [--idps 10000] [--apps 100000] [--json out.json] [--no-server]

The configuration is generated twice, with the same documents: ``manifests.yaml`` (YAML, as people write it) and
``manifests.json`` (one JSON ``kind: List``, as ``kubectl get -o json`` writes it). Measured, each in a fresh
interpreter so memory is the snapshot's own:
  load     the standalone source's own path, exactly as the gunicorn master runs it before forking
           (``ManifestSource.preload``: read + parse + snapshot build), for the YAML and for the JSON file; for YAML
           also in parts: the parse alone (PyYAML's C loader, what the source uses: its constructors are Python, the
           floor for YAML) and ``build_snapshot`` alone (the part the Kubernetes source shares);
  memory   RSS (VmRSS, peak VmHWM) of that process once the snapshot is served, and after gc + malloc_trim (what
           ``tokenbridge serve``'s master does before forking): what the workers inherit;
  latency  per-exchange time through the real WSGI app (``create_app``) in process, single-threaded, for the
           large snapshot and for the benchmark's 100 IdPs / 1,000 applications: lookups are dict accesses, so it
           must not change with size;
  server   ``tokenbridge serve --workers 2`` on the large YAML (and JSON) configuration: seconds from start to
           ``/readyz`` 200, the master's own load time (its log), and RSS and PSS (/proc/PID/smaps_rollup) of the
           master and of each worker once ready and again after a few hundred exchanges through each of them.
IdP key material comes from a pool of 20 RSA keys (every IdP still has its own issuer, kid and JWKS to parse).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from harness import stop  # noqa: E402
PY = sys.executable
SERVER_WAIT = 75.0  # s: gunicorn's worker timeout is 30 s, so two timeouts fit


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


def child(directory: str, pool_file: str, requests: int, parts: bool = True) -> dict:
    """In a fresh interpreter: load like the server's master does, then measure memory and per-request latency."""
    import statistics

    import falcon.testing
    import yaml

    from tokenbridge_exchange.app import create_app
    from tokenbridge_exchange.config import ServerConfig
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.snapshot import build_snapshot
    from tokenbridge_exchange.sources.manifests import ManifestSource
    from tokenbridge_exchange.sources.yaml_loader import BaseLoader, ManifestLoader
    from tokenbridge.signing import generate_keyset

    out: dict = {"rss_before_mb": _status_mb("VmRSS")}
    cache = JwksCache(lambda uri, spec: None)
    source = ManifestSource(directory, cache, lambda spec: None, signing_keys=generate_keyset("ES256", time.time()))
    t0 = time.perf_counter()
    source.preload()  # what tokenbridge serve's master does before forking the workers
    out["load_s"] = time.perf_counter() - t0
    out["processes"] = len(os.sched_getaffinity(0))  # preload parses a large YAML file on every core
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

    if parts:  # after the real load, so they do not inflate its memory figures
        path = Path(directory) / "manifests.yaml"
        gc.disable()  # as ManifestSource does while loading
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            docs = list(yaml.load_all(f, Loader=BaseLoader))
        out["yaml_c_parse_s"] = time.perf_counter() - t0  # stock PyYAML: libyaml + PyYAML's Python constructors
        del docs
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            docs = list(yaml.load_all(f, Loader=ManifestLoader))
        out["yaml_parse_s"] = time.perf_counter() - t0  # the parse inside load_s: libyaml + tokenbridge's loader
        by_kind: dict = {}
        for d in docs:
            d.setdefault("metadata", {}).setdefault("namespace", "default")
            by_kind.setdefault(d["kind"], []).append(d)
        secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s["stringData"] for s in by_kind["Secret"]}
        apps = [source._with_credentials(d, secrets) for d in by_kind["OAuthApplication"]]
        t0 = time.perf_counter()
        build_snapshot(identity_providers=by_kind["IdentityProvider"], cluster_identity_providers=[],
                       applications=apps, signing_keys=snapshot.signing_keys, cache=cache)
        out["build_snapshot_s"] = time.perf_counter() - t0
        gc.enable()
        del docs, by_kind, apps, secrets
    if not requests:
        return out

    config = ServerConfig(issuer="http://bench.local")
    client = falcon.testing.TestClient(create_app(config, source))
    pool = [line.split("\t", 1) for line in Path(pool_file).read_text().splitlines() if line]
    times = []
    statuses: dict = {}
    for i in range(requests):
        auth, body = pool[i % len(pool)]
        t0 = time.perf_counter()
        r = client.simulate_post("/oauth2/token", body=body, headers={
            "Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"})
        times.append(time.perf_counter() - t0)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    times = times[len(times) // 10:]  # first 10 % are warm-up
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
    source = ManifestSource(directory, JwksCache(lambda uri, spec: None), lambda spec: None,
                            signing_keys=generate_keyset("ES256", time.time()))
    tracemalloc.start(1)
    source.preload()
    gc.collect()
    live, peak = tracemalloc.get_traced_memory()
    top = tracemalloc.take_snapshot().statistics("lineno")[:6]
    return {"live_mb": live / 1e6, "peak_mb": peak / 1e6,
            "top": [(str(s.traceback[0]), round(s.size / 1e6, 1), s.count) for s in top]}


def measure(directory: Path, pool_file: Path, requests: int, timeout: float, parts: bool = True) -> dict:
    proc = subprocess.run([PY, __file__, "--child", str(directory), str(pool_file), str(requests),
                           "parts" if parts else "load"], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trace(directory: Path) -> dict:
    proc = subprocess.run([PY, __file__, "--trace-child", str(directory)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory(pids: list[str]) -> list[dict]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append({"pid": int(pid), "rss_mb": round(_status_mb("VmRSS", pid), 1),
                        "pss_mb": round(_pss_mb(pid), 1)})
    return out


def try_server(directory: Path, wait: float, pool_file: Path | None = None, exchanges: int = 400) -> dict:
    """``tokenbridge serve --workers 2`` on the large manifests: how fast it is ready, with what memory, per process
    (RSS counts the pages a worker shares with the master; PSS splits shared pages between the processes sharing
    them, so the PSS of the master and the workers add up to what the server really holds)."""
    import httpx
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log_path = directory / "server.log"
    logf = open(log_path, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(Path(PY).parent / "tokenbridge"), "serve", "--manifests", str(directory),
                             "--bind", f"127.0.0.1:{port}", "--issuer", base, "--workers", "2"],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
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
                        r = http.post("/oauth2/token", content=body, headers={
                            "Authorization": auth, "Content-Type": "application/x-www-form-urlencoded",
                            "Connection": "close"})  # a new connection each: both workers answer
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
    out["log_excerpt"] = [line for line in text.splitlines()
                          if "TIMEOUT" in line or "loaded" in line or "Booting" in line or "Error" in line][:12]
    return out


def _short(site: str) -> str:
    """A traceback location without the machine's prefixes: "tokenbridge/issuers.py:62"."""
    site = re.sub(r"^.*tokenbridge-bench-src-[^/]+/", "", site).replace(str(BENCH.parent) + "/", "")
    for marker in ("site-packages/", "exchange_server/"):
        if marker in site:
            site = site.split(marker, 1)[1]
    return re.sub(r"^/tmp/[^/]+/", "", site)


def _server_text(name: str, srv: dict) -> str:
    if "ready_s" not in srv:
        return (f"`tokenbridge serve --workers 2` on the large {name} configuration was **not ready after "
                f"{srv['wait_s']:.0f} s** ({srv.get('workers_booted', 0)} worker boots, "
                f"{srv.get('worker_timeouts', 0)} `WORKER TIMEOUT` kills in the log).")
    text = f"`tokenbridge serve --workers 2` on the large {name} configuration answered `/readyz` 200 after " \
           f"**{srv['ready_s']:.1f} s**"
    if "master_load_s" in srv:
        text += f" (the master's one load: {srv['master_load_s']:.1f} s; the manifests were parsed " \
                f"{srv.get('snapshot_loads', '?')} time(s))"
    if "master" in srv:
        text += (f". Once ready: master RSS {srv['master']['rss_mb']:.0f} MB / PSS {srv['master']['pss_mb']:.0f} MB, "
                 "workers RSS " + ", ".join(f"{w['rss_mb']:.0f}" for w in srv["workers"]) + " MB / PSS "
                 + ", ".join(f"{w['pss_mb']:.0f}" for w in srv["workers"]) + " MB (goal ≤ 400 MB per worker; "
                 f"all three together {srv['total_pss_mb']:.0f} MB PSS)")
    after = srv.get("workers_after_exchanges")
    if after:
        text += (f"; after {sum(srv.get('exchanges', {}).values())} exchanges over new connections "
                 f"({srv.get('exchanges')}) workers RSS " + ", ".join(f"{w['rss_mb']:.0f}" for w in after)
                 + " MB / PSS " + ", ".join(f"{w['pss_mb']:.0f}" for w in after) + " MB")
    return text + "."


def _seconds(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def markdown(r: dict) -> list[str]:
    big, small = r["large"], r["small"]
    js = r.get("large_json") or {}
    L = [f"{r['identity_providers']:,} IdentityProviders (inline RS256 JWKS each) and {r['applications']:,} "
         f"OAuthApplications with their Secrets: one {r['manifest_mb']:.0f} MB YAML manifests file"
         + (f" (and the same documents as a {r['manifest_json_mb']:.0f} MB JSON `kind: List`)"
            if r.get("manifest_json_mb") else "")
         + f", generated in {r['generate_s']:.0f} s. Each figure comes from a fresh Python process loading it "
         "exactly as `tokenbridge serve`'s master does before forking its workers (`bench/scale.py`).", "",
         "| | 100 IdPs / 1,000 apps | " + f"{r['identity_providers']:,} IdPs / {r['applications']:,} apps | goal |",
         "| --- | --- | --- | --- |",
         f"| load of the YAML file (read, parse, snapshot; {big.get('processes', 1)} parsing processes) | "
         f"{small['load_s']:.2f} s | {big['load_s']:.1f} s | ≤ 10 s |"]
    if js:
        L.append(f"| load of the same configuration as a `.json` file | | {js['load_s']:.1f} s | ≤ 10 s |")
    L += [f"| YAML parse alone, one process: stock PyYAML (`CSafeLoader`) | "
          f"{small.get('yaml_c_parse_s', 0):.2f} s | {big.get('yaml_c_parse_s', 0):.1f} s | |",
          f"| YAML parse alone, one process: Tokenbridge's loader (`sources/yaml_loader.py`, same data) | "
          f"{_seconds(small.get('yaml_parse_s'), 2)} | {_seconds(big.get('yaml_parse_s'), 1)} | |",
          f"| of the YAML load: `build_snapshot` alone (shared with the Kubernetes source) | "
          f"{small.get('build_snapshot_s', 0):.2f} s | {big.get('build_snapshot_s', 0):.1f} s | |",
          f"| RSS with the snapshot served (peak during load) | {small['rss_loaded_mb']:.0f} MB "
          f"({small['hwm_loaded_mb']:.0f}) | {big['rss_loaded_mb']:.0f} MB ({big['hwm_loaded_mb']:.0f}) | |",
          f"| RSS after gc + malloc_trim (what the workers inherit) | {small['rss_trimmed_mb']:.0f} MB | "
          f"{big['rss_trimmed_mb']:.0f} MB | ≤ 400 MB per worker |"]
    if js:
        L.append(f"| the same, JSON: RSS served (peak) / after gc + malloc_trim | | {js['rss_loaded_mb']:.0f} "
                 f"({js['hwm_loaded_mb']:.0f}) / {js['rss_trimmed_mb']:.0f} MB | |")
    L += [f"| per-exchange time in process, p50 / p99 | {small['latency_p50_ms']:.2f} / "
          f"{small['latency_p99_ms']:.2f} ms | {big['latency_p50_ms']:.2f} / {big['latency_p99_ms']:.2f} ms | "
          "unchanged |",
          f"| exchanges answered 200 | {small['statuses'].get('200', 0)} | {big['statuses'].get('200', 0)} | all |",
          ""]
    tr = r.get("large_traced")
    if tr and "live_mb" in tr:
        L += [f"Where the memory is (tracemalloc, YAML): the snapshot's live Python objects are "
              f"**{tr['live_mb']:.0f} MB** ({tr['live_mb'] * 1e3 / r['applications']:.2f} KB per application); the "
              f"load peaks at {tr['peak_mb']:.0f} MB traced. Largest live allocation sites: " + "; ".join(
                  f"`{_short(site)}` {mb} MB ({n:,} blocks)" for site, mb, n in tr["top"]) + ".", ""]
    for key, name in (("server", "YAML"), ("server_json", "JSON")):
        if r.get(key):
            L += [_server_text(name, r[key]), ""]
    return L


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trace-child"]:
        print(json.dumps(trace_child(argv[1])))
        return 0
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], int(argv[3]), argv[4:5] != ["load"])))
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
    results: dict = {"identity_providers": args.idps, "applications": args.apps}
    with tempfile.TemporaryDirectory(prefix="tokenbridge-scale-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.monotonic()
        big = configgen.generate(tmp_path / "large", args.idps, args.apps, distinct_keys=20,
                                 json_directory=tmp_path / "large-json")
        results["generate_s"] = time.monotonic() - t0
        results["manifest_mb"] = big.manifest_path.stat().st_size / 1e6
        results["manifest_json_mb"] = (tmp_path / "large-json" / "manifests.json").stat().st_size / 1e6
        small = configgen.generate(tmp_path / "small", 100, 1000, distinct_keys=20)
        big_pool = configgen.write_pool(configgen.request_pool(big, 200), tmp_path / "large-pool.tsv")
        small_pool = configgen.write_pool(configgen.request_pool(small, 200), tmp_path / "small-pool.tsv")
        print(f"generated in {results['generate_s']:.0f} s; loading the small configuration", flush=True)
        results["small"] = measure(small.directory, small_pool, args.requests, 120)
        print(f"loading the large configuration ({results['manifest_mb']:.0f} MB YAML)", flush=True)
        results["large"] = measure(big.directory, big_pool, args.requests, 400)
        print(json.dumps({k: v for k, v in results["large"].items() if k != "statuses"}), flush=True)
        print(f"loading it as JSON ({results['manifest_json_mb']:.0f} MB)", flush=True)
        results["large_json"] = measure(tmp_path / "large-json", big_pool, 0, 200, parts=False)
        print(json.dumps(results["large_json"]), flush=True)
        print("tracing the live memory of the snapshot (tracemalloc)", flush=True)
        results["large_traced"] = trace(big.directory)
        if not args.no_server:
            print("starting tokenbridge serve --workers 2 on the large YAML configuration", flush=True)
            results["server"] = try_server(big.directory, SERVER_WAIT, big_pool)
            print(json.dumps({k: v for k, v in results["server"].items() if k != "log_excerpt"}), flush=True)
            print("starting tokenbridge serve --workers 2 on the large JSON configuration", flush=True)
            results["server_json"] = try_server(tmp_path / "large-json", SERVER_WAIT, big_pool)
            print(json.dumps({k: v for k, v in results["server_json"].items() if k != "log_excerpt"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
