"""Scale: 10,000 IdPs and 100,000 applications in one snapshot.

    .venv/bin/python bench/scale.py [--idps 10000] [--apps 100000] [--json out.json] [--no-server]

Measured, each in a fresh interpreter so memory is the snapshot's own:
  load     the standalone source's own path (``ManifestSource``: read + YAML parse + snapshot build), timed in
           parts: the YAML parse as the server does it (PyYAML's pure-Python SafeLoader), the same parse with
           PyYAML's C loader (libyaml) for comparison, and ``build_snapshot`` alone (the part the Kubernetes source
           shares);
  memory   RSS (VmRSS, and peak VmHWM) of that process once the snapshot is served, i.e. what each worker holds;
  latency  per-exchange time through the real WSGI app (``create_app``) in process, single-threaded, for the
           large snapshot and for the benchmark's 100 IdPs / 1,000 applications: lookups are dict accesses, so it
           must not change with size.
  server   ``tokenbridge serve`` started on the large manifests (bounded wait): ready or not, and why.
IdP key material comes from a pool of 20 RSA keys (every IdP still has its own issuer, kid and JWKS to parse).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
PY = sys.executable
SERVER_WAIT = 75.0  # s: gunicorn's worker timeout is 30 s, so two timeouts fit


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(directory: str, pool_file: str, requests: int, c_loader: bool = False) -> dict:
    """In a fresh interpreter: load like a worker does, then measure memory and per-request latency. ``c_loader``
    swaps, from the outside, the manifests source's ``yaml.safe_load_all`` for PyYAML's libyaml loader: the
    proposed change, measured before anyone makes it."""
    import statistics

    import falcon.testing
    import yaml

    if c_loader:
        from tokenbridge_exchange.sources import manifests as manifests_module
        manifests_module.yaml = type("yaml", (), {"safe_load_all": staticmethod(
            lambda text: yaml.load_all(text, Loader=yaml.CSafeLoader))})

    from tokenbridge_exchange.app import create_app
    from tokenbridge_exchange.config import ServerConfig
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.snapshot import build_snapshot
    from tokenbridge_exchange.sources.manifests import ManifestSource
    from tokenbridge.signing import generate_keyset

    out: dict = {"rss_before_mb": _status_mb("VmRSS")}
    cache = JwksCache(lambda uri, spec: None)
    source = ManifestSource(directory, cache, lambda spec: None, signing_keys=generate_keyset("ES256", time.time()))
    t0 = time.perf_counter()
    source.reload_if_changed()  # what a worker's source.start() does first
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
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the parse's freed memory back: what the snapshot itself holds
    out["rss_trimmed_mb"] = _status_mb("VmRSS")

    if c_loader:
        return out
    # the parts, after the real load (so they do not inflate its memory figures)
    text = (Path(directory) / "manifests.yaml").read_text()
    t0 = time.perf_counter()
    docs = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    out["yaml_c_parse_s"] = time.perf_counter() - t0
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
    del docs, by_kind, apps, text, secrets

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
    """Live Python memory of the snapshot vs the load's peak (tracemalloc; C loader swapped in, as above)."""
    import gc
    import tracemalloc

    import yaml

    from tokenbridge.signing import generate_keyset
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.sources import manifests as manifests_module
    manifests_module.yaml = type("yaml", (), {"safe_load_all": staticmethod(
        lambda text: yaml.load_all(text, Loader=yaml.CSafeLoader))})
    source = manifests_module.ManifestSource(directory, JwksCache(lambda uri, spec: None), lambda spec: None,
                                             signing_keys=generate_keyset("ES256", time.time()))
    tracemalloc.start(1)
    source.reload_if_changed()
    gc.collect()
    live, peak = tracemalloc.get_traced_memory()
    top = tracemalloc.take_snapshot().statistics("lineno")[:6]
    return {"live_mb": live / 1e6, "peak_mb": peak / 1e6,
            "top": [(str(s.traceback[0]), round(s.size / 1e6, 1), s.count) for s in top]}


def measure(directory: Path, pool_file: Path, requests: int, timeout: float, c_loader: bool = False) -> dict:
    proc = subprocess.run([PY, __file__, "--child", str(directory), str(pool_file), str(requests),
                           "c" if c_loader else "py"],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trace(directory: Path) -> dict:
    proc = subprocess.run([PY, __file__, "--trace-child", str(directory)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def try_server(directory: Path, wait: float) -> dict:
    """``tokenbridge serve`` on the large manifests: does it become ready, how fast, with what per worker."""
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
            time.sleep(0.5)
        if "ready_s" in out:
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            out["worker_rss_mb"] = []
            for w in workers:
                for line in Path(f"/proc/{w}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out["worker_rss_mb"].append(int(line.split()[1]) / 1024)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logf.close()
    text = log_path.read_text()
    out["worker_timeouts"] = len(re.findall(r"WORKER TIMEOUT", text))
    out["workers_booted"] = len(re.findall(r"Booting worker", text))
    out["log_excerpt"] = [line for line in text.splitlines()
                          if "TIMEOUT" in line or "loaded" in line or "Booting" in line or "Error" in line][:12]
    return out


def _short(site: str) -> str:
    """A traceback location without the machine's prefixes: "tokenbridge/issuers.py:62"."""
    site = re.sub(r"^.*tokenbridge-bench-src-[^/]+/", "", site)
    for marker in ("site-packages/", "exchange_server/"):
        if marker in site:
            site = site.split(marker, 1)[1]
    return re.sub(r"^/tmp/[^/]+/", "", site)


def markdown(r: dict) -> list[str]:
    big, small = r["large"], r["small"]
    L = [f"{r['identity_providers']:,} IdentityProviders (inline RS256 JWKS each) and {r['applications']:,} "
         f"OAuthApplications with their Secrets: one {r['manifest_mb']:.0f} MB manifests file, generated in "
         f"{r['generate_s']:.0f} s. Each figure comes from a fresh Python process loading it exactly as a worker "
         "does (`bench/scale.py`).", "",
         "| | 100 IdPs / 1,000 apps | " + f"{r['identity_providers']:,} IdPs / {r['applications']:,} apps | goal |",
         "| --- | --- | --- | --- |",
         f"| load through the standalone source (read, YAML parse, snapshot) | {small['load_s']:.2f} s | "
         f"{big['load_s']:.1f} s | ≤ 10 s |",
         f"| of which `build_snapshot` alone (shared with the Kubernetes source) | {small['build_snapshot_s']:.2f} s | "
         f"{big['build_snapshot_s']:.1f} s | |",
         f"| the same YAML parsed with PyYAML's C loader instead (`yaml.CSafeLoader`) | {small['yaml_c_parse_s']:.2f} s | "
         f"{big['yaml_c_parse_s']:.1f} s | |",
         f"| RSS with the snapshot served (peak during load) | {small['rss_loaded_mb']:.0f} MB "
         f"({small['hwm_loaded_mb']:.0f}) | {big['rss_loaded_mb']:.0f} MB ({big['hwm_loaded_mb']:.0f}) | "
         "≤ 400 MB per worker |",
         f"| RSS after gc + malloc_trim | {small['rss_trimmed_mb']:.0f} MB | {big['rss_trimmed_mb']:.0f} MB | |",
         f"| per-exchange time in process, p50 / p99 | {small['latency_p50_ms']:.2f} / {small['latency_p99_ms']:.2f} ms"
         f" | {big['latency_p50_ms']:.2f} / {big['latency_p99_ms']:.2f} ms | unchanged |",
         f"| exchanges answered 200 | {small['statuses'].get('200', 0)} | {big['statuses'].get('200', 0)} | all |",
         ""]
    cl = r.get("large_c_loader")
    if cl:
        L += [f"With the proposed change (PyYAML's C loader in `ManifestSource._documents`, swapped in from outside "
              f"for this measurement) the same large load takes **{cl['load_s']:.1f} s** and leaves the worker at "
              f"**{cl['rss_loaded_mb']:.0f} MB** RSS (peak {cl['hwm_loaded_mb']:.0f} MB; {cl['rss_trimmed_mb']:.0f} "
              "MB after gc + malloc_trim).", ""]
    tr = r.get("large_traced")
    if tr and "live_mb" in tr:
        L += [f"Where the memory is (tracemalloc, C loader): the snapshot's live Python objects are "
              f"**{tr['live_mb']:.0f} MB** ({tr['live_mb'] * 1e3 / r['applications']:.1f} KB per application), while "
              f"the load peaks at {tr['peak_mb']:.0f} MB (all {r['applications'] * 2 + r['identity_providers']:,} "
              "parsed documents held at once, then the snapshot built from them); the worker's RSS stays near that "
              "peak because pymalloc returns an arena only once it is entirely free, and the snapshot's objects are "
              "spread through them. Largest live allocation sites: " + "; ".join(
                  f"`{_short(site)}` {mb} MB ({n:,} blocks)" for site, mb, n in tr["top"]) + ".", ""]
    srv = r.get("server")
    if srv:
        if "ready_s" in srv:
            L.append(f"`tokenbridge serve --workers 2` on the large manifests was ready after {srv['ready_s']:.1f} s; "
                     f"worker RSS {', '.join(f'{x:.0f}' for x in srv.get('worker_rss_mb', []))} MB.")
        else:
            text = (f"`tokenbridge serve --workers 2` on the large manifests was **not ready after "
                    f"{srv['wait_s']:.0f} s** ({srv['workers_booted']} worker boots, {srv['worker_timeouts']} "
                    "`WORKER TIMEOUT` kills in the log). Each worker parses the manifests itself, inside gunicorn's "
                    f"`load()`, at the {big['load_s']:.0f} s per worker measured above, both workers at once.")
            if srv["worker_timeouts"]:
                text += (" Gunicorn killed workers that had not finished loading within its worker timeout, so "
                         "they are re-forked and start over.")
            L.append(text)
        L.append("")
    return L


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trace-child"]:
        print(json.dumps(trace_child(argv[1])))
        return 0
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], argv[2], int(argv[3]), argv[4:5] == ["c"])))
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
        big = configgen.generate(tmp_path / "large", args.idps, args.apps, distinct_keys=20)
        results["generate_s"] = time.monotonic() - t0
        results["manifest_mb"] = big.manifest_path.stat().st_size / 1e6
        small = configgen.generate(tmp_path / "small", 100, 1000, distinct_keys=20)
        big_pool = configgen.write_pool(configgen.request_pool(big, 200), tmp_path / "large-pool.tsv")
        small_pool = configgen.write_pool(configgen.request_pool(small, 200), tmp_path / "small-pool.tsv")
        print(f"generated in {results['generate_s']:.0f} s; loading the small configuration", flush=True)
        results["small"] = measure(small.directory, small_pool, args.requests, 120)
        print(f"loading the large configuration ({results['manifest_mb']:.0f} MB)", flush=True)
        results["large"] = measure(big.directory, big_pool, args.requests, 400)
        print(json.dumps({k: v for k, v in results["large"].items() if k != "statuses"}), flush=True)
        print("loading it again with PyYAML's C loader swapped in (the proposed change)", flush=True)
        results["large_c_loader"] = measure(big.directory, big_pool, args.requests, 200, c_loader=True)
        print("tracing the live memory of the snapshot (tracemalloc)", flush=True)
        results["large_traced"] = trace(big.directory)
        if not args.no_server:
            print("starting tokenbridge serve on the large configuration", flush=True)
            results["server"] = try_server(big.directory, SERVER_WAIT)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
