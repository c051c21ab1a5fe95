"""Unknown-kid storm: many subject tokens with random ``kid``s against one IdP, alongside good tokens.

    .venv/bin/python bench/kid_storm.py [--baseline 15] [--storm 40] [--storm-threads 4] [--good-rate 40]
                                        [--out bench/results/kid_storm.md]

A standalone ``tokenbridge serve --manifests`` (2 workers of the default class, as shipped) with one IdP discovered
from a local HTTPS IdP (bench/https_idp.py, which records every request it gets, so every JWKS fetch is counted at the
source) and one application. Two phases, loopback only:

  baseline  good tokens only, paced at ``--good-rate``/s from one thread (keep-alive), latency per request;
  storm     the same good tokens, plus ``--storm-threads`` threads sending, as fast as they can, tokens that are
            correctly signed by the IdP's key but carry a random kid the IdP never published.

A forged kid may trigger one JWKS refresh on the request path, at most once per cooldown per IdP and per worker
(the cache is per worker process), so the JWKS fetches during the storm must stay within
``workers * (storm / cooldown + 1)`` (+1 for a background refresh); the report states the count, the bound, the
server's own ``tokenbridge_jwks_*`` counters and the good tokens' latency in both phases.

Waits (up to 10 minutes) while ``bench/run.py`` is running, so the numbers are not taken under another load.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml
from harness import free_port, machine, percentile, stop, wait_for_quiet_machine, waited_note
from https_idp import HttpsIdP
from prometheus_client.parser import text_string_to_metric_families

from tokenbridge_exchange.config import ServerConfig

BENCH = Path(__file__).resolve().parent

TOKENBRIDGE = str(Path(sys.executable).parent / "tokenbridge")
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUDIENCE = "api://kid-storm"
COOLDOWN = 10.0  # tokenbridge_exchange.jwks_cache.JwksCache's floor; not configurable
WORKERS = 2
WORKER_CLASS = ServerConfig.worker_class


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class Phase:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}

    def add(self, key: str, latency: float | None = None) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if latency is not None:
            self.latencies.append(latency)


def post(client: httpx.Client, url: str, auth: str, token: str) -> httpx.Response:
    return client.post(
        url,
        data={
            "grant_type": GRANT,
            "subject_token": token,
            "subject_token_type": JWT_TYPE,
            "audience": "https://api.kid-storm.test",
        },
        headers={"Authorization": auth},
    )


def good_loop(url: str, auth: str, tokens: list[str], rate: float, until: float, phase: Phase) -> None:
    interval, due, i = 1.0 / rate, time.monotonic(), 0
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                r = post(client, url, auth, tokens[i % len(tokens)])
                phase.add(str(r.status_code), time.perf_counter() - start)
            except httpx.HTTPError as exc:
                phase.add(type(exc).__name__)
            i += 1
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))


def storm_loop(
    url: str, auth: str, tokens: list[str], offset: int, until: float, phase: Phase, lock: threading.Lock
) -> None:
    i = offset
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < until:
            try:
                r = post(client, url, auth, tokens[i % len(tokens)])
                key = f"{r.status_code} {r.json().get('error', '')}".strip()
            except (httpx.HTTPError, ValueError) as exc:
                key = type(exc).__name__
            with lock:
                phase.add(key)
            i += 7


def scrape(base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=5).text):
        if family.name.startswith("tokenbridge_jwks"):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "idp")
                out[f"{sample.name}{{{labels}}}"] = out.get(f"{sample.name}{{{labels}}}", 0.0) + sample.value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=float, default=15.0, help="seconds of good tokens only")
    p.add_argument("--storm", type=float, default=40.0, help="seconds of storm (with good tokens)")
    p.add_argument("--storm-threads", type=int, default=4)
    p.add_argument("--good-rate", type=float, default=40.0, help="good tokens per second (one thread)")
    p.add_argument("--out", type=Path, default=BENCH / "results" / "kid_storm.md")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a running bench/run.py")
    args = p.parse_args(argv)

    waited, busy = (0.0, False) if args.no_wait else wait_for_quiet_machine()
    workdir = Path(tempfile.mkdtemp(prefix="tokenbridge-kid-storm-"))
    idp = HttpsIdP().start()
    client_id, client_secret = "storm-client", secrets.token_urlsafe(32)
    docs = [
        {
            "apiVersion": "tokenbridge.dev/v1alpha1",
            "kind": "IdentityProvider",
            "metadata": {"name": "corp", "namespace": "storm"},
            "spec": {
                "type": "OIDC",
                "wellKnownURL": idp.well_known_url,
                "tls": {"caBundle": idp.ca_pem},
                "allowedAudiences": [AUDIENCE],
            },
        },
        {
            "apiVersion": "tokenbridge.dev/v1alpha1",
            "kind": "OAuthApplication",
            "metadata": {"name": "web", "namespace": "storm"},
            "spec": {
                "grantTypes": [GRANT],
                "identityProviders": [{"name": "corp"}],
                "audiences": ["https://api.kid-storm.test"],
                "credentials": {"secretName": "web-credentials"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-credentials", "namespace": "storm"},
            "stringData": {"client_id": client_id, "client_secret": client_secret},
        },
    ]
    (workdir / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(
        [
            TOKENBRIDGE,
            "serve",
            "--manifests",
            str(workdir / "manifests.yaml"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(WORKERS),
        ],
        env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": base, "TOKENBRIDGE_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128"},
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        url, auth = base + "/oauth2/token", basic(client_id, client_secret)
        good_tokens = [idp.mint({"sub": f"user-{i}", "aud": AUDIENCE}) for i in range(50)]
        while True:  # both workers answer a good token
            assert server.poll() is None and time.monotonic() < deadline, (workdir / "server.log").read_text()[-3000:]
            try:
                if all(
                    httpx.post(
                        url,
                        data={
                            "grant_type": GRANT,
                            "subject_token": good_tokens[0],
                            "subject_token_type": JWT_TYPE,
                            "audience": "https://api.kid-storm.test",
                        },
                        headers={"Authorization": auth, "Connection": "close"},
                    ).status_code
                    == 200
                    for _ in range(4)
                ):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        # forged kids: a valid signature by the IdP's real key, a kid it never published
        storm_tokens = [idp.mint({"sub": "mallory", "aud": AUDIENCE}, kid=uuid.uuid4().hex) for _ in range(2000)]
        time.sleep(1)
        baseline = Phase()
        good_loop(url, auth, good_tokens, args.good_rate, time.monotonic() + args.baseline, baseline)
        metrics_before, fetches_before = scrape(base), idp.jwks_fetches()
        storm_good, storm_bad, lock = Phase(), Phase(), threading.Lock()
        started = time.monotonic()
        until = started + args.storm
        threads = [
            threading.Thread(target=storm_loop, args=(url, auth, storm_tokens, i, until, storm_bad, lock))
            for i in range(args.storm_threads)
        ]
        for t in threads:
            t.start()
        good_loop(url, auth, good_tokens, args.good_rate, until, storm_good)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        fetches = idp.jwks_fetches() - fetches_before
        metrics_after = scrape(base)
    finally:
        stop(server)
        idp.stop()

    bound = WORKERS * (elapsed / COOLDOWN + 1) + 1
    forged = sum(storm_bad.statuses.values())
    delta = {
        k: metrics_after.get(k, 0.0) - metrics_before.get(k, 0.0)
        for k in sorted(metrics_after)
        if "total" in k and metrics_after.get(k, 0.0) != metrics_before.get(k, 0.0)
    }

    def row(name: str, phase: Phase, seconds: float) -> str:
        lat = [x * 1000 for x in phase.latencies]
        return (
            f"| {name} | {len(lat)} | {len(lat) / seconds:.1f} | {percentile(lat, 50):.2f} | "
            f"{percentile(lat, 90):.2f} | {percentile(lat, 99):.2f} | {max(lat) if lat else float('nan'):.2f} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(phase.statuses.items()))} |"
        )

    def ratio(q: float) -> str:
        a, b = percentile(baseline.latencies, q) * 1000, percentile(storm_good.latencies, q) * 1000
        return f"{a:.2f} → {b:.2f} ms (×{b / a:.1f})"

    verdict = "within" if fetches <= bound else "**over**"
    good_ok = storm_good.statuses.get("200", 0) == sum(storm_good.statuses.values())
    text = f"""# Unknown-kid storm

`bench/kid_storm.py` — {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; {machine()}.
`tokenbridge serve --manifests` with {WORKERS} {WORKER_CLASS} workers (the default); one IdentityProvider discovered
from a local HTTPS IdP (RS256, bench/https_idp.py), one application. Load generator: Python threads (httpx,
keep-alive) in the same machine, so the generator competes with the server for the 2 cores.{waited_note(waited, busy)}

## JWKS fetches during the storm

| storm | forged-kid requests | forged req/s | JWKS fetches at the IdP | bound `workers × (duration / cooldown + 1) + 1` | |
| --- | --- | --- | --- | --- | --- |
| {elapsed:.1f} s, {args.storm_threads} threads | {forged} | {forged / elapsed:.0f} | **{fetches}** | {bound:.1f} (cooldown {COOLDOWN:.0f} s) | {verdict} the bound |

Answers to forged kids: {", ".join(f"{k}: {v}" for k, v in sorted(storm_bad.statuses.items()))}.

Server counters over the storm (summed over workers):

{chr(10).join(f"- `{k}`: +{v:.0f}" for k, v in delta.items()) or "- (no change)"}

## Good tokens meanwhile

Paced at {args.good_rate:.0f}/s from one thread; latency from send to response, in ms.

| phase | requests | req/s | p50 | p90 | p99 | max | answers |
| --- | --- | --- | --- | --- | --- | --- | --- |
{row("baseline (good only)", baseline, args.baseline)}
{row("during the storm", storm_good, elapsed)}

Every good token during the storm accepted: {"yes" if good_ok else "**no**"}. Good-token p50 {ratio(50)}, p99
{ratio(99)} (storm vs baseline). The forged tokens are refused without waiting for a fetch (the `cooldown` counter
above), so what good tokens pay during the storm is sharing the 2 cores with the forged requests and with the
generator's own threads.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if fetches <= bound and good_ok else 1


if __name__ == "__main__":
    sys.exit(main())
