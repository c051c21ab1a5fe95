"""Fault tests on the real control plane, each under continuous exchange load (issue 7, "Fault tests").

Every test runs real ``tokenbridge operator`` and ``tokenbridge serve --kubernetes`` processes and a background
thread that exchanges tokens over loopback at a fixed rate, recording every response; the loop stops by itself
after a bounded time. The assertions are the behaviours the issue names, never timings of our own choosing:

- the API server stopped for 60 s and restarted: not one failed exchange; afterwards a configuration change is
  served again and the operator reconciles again;
- an IdP's JWKS endpoint down: cached keys keep verifying within the server's max staleness while
  ``tokenbridge_jwks_cache_age_seconds`` grows, past it exchanges are refused with ``invalid_grant`` (never a 5xx),
  and they are accepted again once the IdP is back;
- the operator SIGKILLed while it creates credentials for many applications, then restarted: every application
  converges to Ready with exactly one credentials Secret, and credentials that existed before the kill are unchanged;
- signing keys rotating every few seconds: a resource server that refreshes our JWKS only when it meets an unknown
  ``kid`` verifies every issued token, across at least two rotations.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from jwcrypto import jwk
from jwcrypto import jwt as jose_jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.support.idp import HttpsIdP, IdP
from tests.support.processes import free_port, stop_group
from tests.support.waiting import seconds_until, wait_for
from tokenbridge import api
from tokenbridge.client_secrets import hash_client_secret

pytestmark = pytest.mark.cluster

TOKENBRIDGE = str(Path(sys.executable).parent / "tokenbridge")
API = "https://api.faults.test"
OTHER = "https://other.faults.test"
SUBJECT_AUDIENCE = "tokenbridge-faults"
LOOPBACK = "127.0.0.0/8,::1/128"
RATE = 25.0  # exchanges per second of the background load


# ----- processes ------------------------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [TOKENBRIDGE, *args],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class Stack:
    """One namespace with its own operator and exchange server (two workers), and helpers over both."""

    def __init__(
        self, cp, workdir: Path, *, operator_env: dict[str, str] | None = None, server_env: dict[str, str] | None = None
    ):
        self.cp, self.dir = cp, workdir
        self.ns = f"faults-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        common = {
            "KUBECONFIG": str(cp.kubeconfig),
            "TOKENBRIDGE_PUBLIC_ISSUER": self.base,
            "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": self.ns,
            "TOKENBRIDGE_SIGNING_SECRET_NAME": "signing-keys",
        }
        self.operator_env = {
            **common,
            "TOKENBRIDGE_METRICS_PORT": "0",
            "TOKENBRIDGE_SECRET_ROTATION_GRACE": "10m",
            **(operator_env or {}),
        }
        self.server_env = {**common, **(server_env or {})}
        self.operator: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        cp.kubectl("create", "namespace", self.ns)

    # processes
    def start_operator(self) -> None:
        self.operator = spawn(
            ["operator", "--kubeconfig", str(self.cp.kubeconfig), "--namespace", self.ns],
            self.operator_env,
            self.dir / "operator.log",
        )

    def start_server(self) -> None:
        self.server = spawn(
            [
                "serve",
                "--kubernetes",
                "--kubeconfig",
                str(self.cp.kubeconfig),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
            ],
            self.server_env,
            self.dir / "server.log",
        )
        seen: set[int] = set()

        def both_workers_ready() -> bool:  # a worker answers only once it holds its first snapshot
            assert self.server.poll() is None, self.log("server")
            try:
                r = httpx.get(self.base + "/readyz", headers={"Connection": "close"}, timeout=2)
            except httpx.TransportError:
                return False
            if r.status_code == 200:
                seen.add(r.json()["worker"])
            return len(seen) == 2

        wait_for(both_workers_ready, 60, "both server workers ready")

    def close(self) -> None:
        stop_group(self.server)
        stop_group(self.operator)
        for kind in ("oauthapplications", "identityproviders"):  # the operator is gone: release its finalizers
            names = self.cp.kubectl("get", kind, "-n", self.ns, "-o", "name", check=False).stdout.split()
            for name in names:
                self.cp.kubectl(
                    "patch", name, "-n", self.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False
                )
        self.cp.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)

    def log(self, which: str) -> str:
        path = self.dir / f"{which}.log"
        return f"--- {which}.log\n" + (path.read_text(errors="replace")[-4000:] if path.exists() else "(none)")

    # resources
    def apply(self, *docs: dict) -> None:
        self.cp.kubectl("apply", "-n", self.ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.cp.kubectl("get", kind, name, "-n", self.ns, "-o", "json").stdout)

    def api_get(self, path: str) -> dict:
        return self.cp.get_json(path)

    def apps(self) -> list[dict]:
        return self.api_get(f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{self.ns}/{api.PLURAL_APP}")["items"]

    def secrets(self) -> list[dict]:
        return self.api_get(f"/api/v1/namespaces/{self.ns}/secrets")["items"]

    def ready(self, kind: str, name: str) -> bool:
        return _is_ready(self.get(kind, name))

    def credentials(self, secret: str) -> dict[str, str]:
        data = self.get("secret", secret)["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def idp(self, name: str, spec: dict) -> dict:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_IDP,
            "metadata": {"name": name},
            "spec": {"allowedAudiences": [SUBJECT_AUDIENCE], **spec},
        }

    def app(self, name: str, idp: str, audiences=(API, OTHER)) -> dict:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": name},
            "spec": {
                "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                "identityProviders": [{"kind": api.KIND_IDP, "name": idp}],
                "audiences": list(audiences),
                "scopes": ["read"],
                "credentials": {"secretName": f"{name}-credentials"},
            },
        }

    def exchange(self, creds: dict, subject: str, client: httpx.Client | None = None, **extra) -> httpx.Response:
        form = {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            "audience": API,
            **extra,
        }
        post = client.post if client is not None else httpx.post
        # a new connection each time, so both workers take turns
        return post(
            self.base + "/oauth2/token",
            data=form,
            auth=(creds["client_id"], creds["client_secret"]),
            headers={"Connection": "close"},
            timeout=10,
        )


def _is_ready(obj: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


@pytest.fixture
def stacks(control_plane, tmp_path):
    """Stacks made by a test, always torn down (with their logs on stderr when the test failed)."""
    made: list[Stack] = []

    def make(**kw) -> Stack:
        workdir = tmp_path / f"stack{len(made)}"
        workdir.mkdir()
        stack = Stack(control_plane, workdir, **kw)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.close()
        for path in sorted(stack.dir.glob("*.log")):  # shown by pytest only when the test failed
            sys.stderr.write(f"--- {path}\n{path.read_text(errors='replace')[-5000:]}\n")


# ----- subject tokens of an inline-key IdP (nothing to fetch) ---------------------------------------------------
def inline_spec(idp: IdP) -> dict:
    return {"type": api.IDP_OIDC, "issuer": idp.issuer, "allowedAlgorithms": ["ES256"], "jwks": idp.jwks()}


# ----- load -----------------------------------------------------------------------------------------------------
@dataclass
class Record:
    at: float  # time.monotonic() when sent
    status: int | None  # None: no HTTP answer at all
    error: str  # OAuth error code, or the transport error
    description: str


class Load:
    """Exchanges at ``rate``/s from a background thread; stops on ``stop()`` or by itself after ``limit`` s."""

    def __init__(
        self,
        send: Callable[[httpx.Client], httpx.Response],
        *,
        rate: float = RATE,
        limit: float = 150.0,
        on_response: Callable[[httpx.Response], None] | None = None,
    ):
        self.send, self.rate, self.limit, self.on_response = send, rate, limit, on_response
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exchange-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        interval = 1.0 / self.rate
        start = due = time.monotonic()
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() - start < self.limit:
                at = time.monotonic()
                try:
                    r = self.send(client)
                    body = _json(r)
                    record = Record(at, r.status_code, body.get("error", ""), body.get("error_description", ""))
                    if self.on_response is not None:
                        self.on_response(r)
                except Exception as exc:  # noqa: BLE001 - a transport error is a failed exchange
                    record = Record(at, None, type(exc).__name__, str(exc))
                self.records.append(record)
                due += interval
                self._stop.wait(max(0.0, due - time.monotonic()))

    def between(self, start: float, end: float = float("inf")) -> list[Record]:
        return [r for r in list(self.records) if start <= r.at < end]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[Record]:
        return [r for r in self.between(start, end) if r.status != 200]

    def last(self, n: int) -> list[Record]:
        return list(self.records)[-n:]


def _json(r: httpx.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def summary(records: list[Record], limit: int = 5) -> str:
    return f"{len(records)} failures, e.g. {records[:limit]}"


# ----- a. the API server away for 60 s --------------------------------------------------------------------------
OUTAGE = 60.0


def test_api_server_down_for_60s_fails_no_exchange_and_config_resumes(control_plane, stacks):
    cp = control_plane
    s = stacks()
    s.start_operator()
    s.start_server()
    # the cluster's own ServiceAccount issuer: keys fetched from the API server before the outage
    s.apply(
        s.idp(
            "cluster-sa",
            {
                "type": api.IDP_KUBERNETES,
                "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                "kubernetes": {"useOperatorCredentials": True},
            },
        ),
        s.app("web", "cluster-sa"),
    )
    cp.kubectl("create", "serviceaccount", "workload", "-n", s.ns)
    wait_for(lambda: s.ready(api.KIND_APP, "web"), 60, "OAuthApplication Ready")
    creds = s.credentials("web-credentials")
    subject = cp.kubectl(
        "create", "token", "workload", "-n", s.ns, "--audience", SUBJECT_AUDIENCE, "--duration", "15m"
    ).stdout.strip()
    wait_for(
        lambda: all(s.exchange(creds, subject).status_code == 200 for _ in range(4)),
        10,
        "exchanges through both workers",
    )

    with Load(lambda c: s.exchange(creds, subject, client=c), limit=OUTAGE + 60) as load:
        time.sleep(2)
        stopped = time.monotonic()
        cp.stop_apiserver()
        try:
            while time.monotonic() - stopped < OUTAGE:
                assert load.running and s.server.poll() is None, "the load or the server stopped during the outage"
                time.sleep(1)
        finally:
            cp.start_apiserver()  # waits for /readyz
        restarted = time.monotonic()

        # the server's watches reconnect: an audience removed after the restart is refused again
        s.cp.kubectl(
            "patch",
            "oauthapplication",
            "web",
            "-n",
            s.ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"audiences": [API]}}),
        )

        def other_refused_by_all() -> bool:
            return all(s.exchange(creds, subject, audience=OTHER).status_code == 400 for _ in range(4))

        took = seconds_until(other_refused_by_all, 15, "the removed audience refused after the restart", interval=0.2)
        assert s.exchange(creds, subject, audience=OTHER).json()["error"] == "invalid_target"
        # the operator survived the outage and reconciles again: a new application gets credentials
        assert s.operator.poll() is None, s.log("operator")
        s.apply(s.app("after", "cluster-sa"))
        wait_for(lambda: s.ready(api.KIND_APP, "after"), 60, "an application created after the restart Ready")
        after = s.credentials("after-credentials")
        wait_for(lambda: s.exchange(after, subject).status_code == 200, 10, "the new application served")
        time.sleep(2)

    during = load.between(stopped, restarted)
    assert len(during) >= OUTAGE * RATE * 0.5, f"only {len(during)} exchanges during the outage"
    failures = load.failures()
    assert not failures, summary(failures)
    print(
        f"{len(load.records)} exchanges, {len(during)} during the {OUTAGE:.0f}s outage, 0 failed; "
        f"config change served {took:.1f}s after the patch"
    )


# ----- b. the IdP's JWKS endpoint down --------------------------------------------------------------------------
LIFESPAN, MAX_STALENESS = 2.0, 22.0
COOLDOWN = 10.0  # JwksCache's floor (not configurable): background refreshes are at least this far apart


def cache_age(s: Stack, idp_label: str) -> float | None:
    text = httpx.get(s.base + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "tokenbridge_jwks_cache_age_seconds":
            for sample in family.samples:
                if sample.labels.get("idp") == idp_label:
                    return sample.value
    return None


def test_idp_jwks_down_serves_cached_keys_within_max_staleness_then_refuses(stacks):
    idp = HttpsIdP("oidc", alg="RS256").start()
    try:
        s = stacks(
            operator_env={"TOKENBRIDGE_ALLOWED_NETWORKS": LOOPBACK},
            server_env={
                "TOKENBRIDGE_ALLOWED_NETWORKS": LOOPBACK,
                "TOKENBRIDGE_JWKS_LIFESPAN": f"{LIFESPAN:g}s",
                "TOKENBRIDGE_JWKS_MAX_STALENESS": f"{MAX_STALENESS:g}s",
            },
        )
        s.start_operator()
        s.start_server()
        s.apply(
            s.idp("corp", {"type": api.IDP_OIDC, "wellKnownURL": idp.well_known_url, "tls": {"caBundle": idp.ca_pem}}),
            s.app("web", "corp"),
        )
        wait_for(lambda: s.ready(api.KIND_APP, "web"), 60, "OAuthApplication Ready")
        creds = s.credentials("web-credentials")
        subject = idp.mint({"sub": "alice", "aud": SUBJECT_AUDIENCE}, lifetime=900)
        wait_for(
            lambda: all(s.exchange(creds, subject).status_code == 200 for _ in range(4)),
            10,
            "exchanges through both workers",
        )
        label = f"{s.ns}/corp"
        jwks_path = idp._path(idp.jwks_uri)
        assert cache_age(s, label) is not None, "no tokenbridge_jwks_cache_age_seconds for the provider"

        with Load(lambda c: s.exchange(creds, subject, client=c), limit=120) as load:
            time.sleep(3)
            fetched_before = sum(1 for path, _ in idp.requests if path == jwks_path)
            idp.stop()
            down = time.monotonic()
            time.sleep(1)
            age_early = cache_age(s, label)
            # every worker's last good fetch is at most cooldown + 1 s tick old when the IdP goes away, so its
            # keys stay usable until at least down + MAX_STALENESS - COOLDOWN - 1
            safe = MAX_STALENESS - COOLDOWN - 1 - 2  # 2 s margin
            time.sleep(max(0.0, down + safe - time.monotonic()))
            age_late = cache_age(s, label)
            refused_from = MAX_STALENESS + 2  # past max staleness for every worker, whenever it fetched last
            time.sleep(max(0.0, down + refused_from + 4 - time.monotonic()))
            idp.start()  # same port: the IdP is back
            back = time.monotonic()
            wait_for(
                lambda: [r.status for r in load.last(8)] == [200] * 8 and load.last(1)[0].at > back + 1,
                COOLDOWN + 15,
                "exchanges accepted again after the IdP came back",
                interval=0.2,
            )
            recovered = time.monotonic()

        assert fetched_before >= 2, f"the server never fetched the JWKS from the IdP ({idp.requests})"
        within = load.between(down, down + safe)
        assert len(within) >= safe * RATE * 0.5
        assert not load.failures(0, down + safe), "refused within max staleness: " + summary(
            load.failures(0, down + safe)
        )
        assert age_early is not None and age_late is not None, "tokenbridge_jwks_cache_age_seconds disappeared"
        assert age_late >= age_early + (safe - 1) / 2 and age_late > LIFESPAN, (
            f"cache age did not grow while the IdP was down: {age_early} -> {age_late}"
        )
        # between the two windows: accepted or invalid_grant, never a 5xx or a dropped connection
        middle = load.between(down, back)
        odd = [r for r in middle if not (r.status == 200 or (r.status == 400 and r.error == "invalid_grant"))]
        assert not odd, summary(odd)
        past = load.between(down + refused_from, back)
        assert len(past) >= 2 * RATE
        accepted = [r for r in past if r.status != 400]
        assert not accepted, "accepted past max staleness: " + summary(accepted)
        assert all("unavailable" in r.description for r in past), past[:3]
        print(
            f"cache age {age_early:.1f}s -> {age_late:.1f}s; refused from {past[0].at - down:.1f}s after the IdP "
            f"went down ({len(past)} refusals, all invalid_grant); accepted again {recovered - back:.1f}s after "
            f"it came back"
        )
    finally:
        idp.stop()


# ----- c. the operator SIGKILLed mid-reconcile ------------------------------------------------------------------
APPS = 12


def test_operator_killed_mid_reconcile_converges_without_duplicate_or_changed_credentials(stacks):
    s = stacks()
    issuer = IdP(f"https://idp-{s.ns}.faults.test", "ES256")
    s.start_operator()
    s.start_server()
    s.apply(s.idp("corp", inline_spec(issuer)), s.app("steady", "corp"))
    wait_for(lambda: s.ready(api.KIND_APP, "steady"), 60, "OAuthApplication Ready")
    steady = s.credentials("steady-credentials")
    subject = issuer.mint({"sub": "alice", "aud": SUBJECT_AUDIENCE}, lifetime=900)
    wait_for(lambda: all(s.exchange(steady, subject).status_code == 200 for _ in range(4)), 10, "exchanges")

    def credential_secrets() -> dict[str, dict]:
        return {sec["metadata"]["name"]: sec for sec in s.secrets() if sec["metadata"]["name"].endswith("-credentials")}

    names = [f"app-{i:02d}" for i in range(APPS)]
    with Load(lambda c: s.exchange(steady, subject, client=c), limit=120) as load:
        s.apply(*(s.app(n, "corp") for n in names))
        # kill as soon as the operator has written its first new credentials (polled straight from the API)
        wait_for(lambda: len(credential_secrets()) > 1, 30, "the operator's first credentials", interval=0.02)
        os.killpg(s.operator.pid, signal.SIGKILL)
        s.operator.wait()
        before = {
            name: {k: base64.b64decode(v).decode() for k, v in sec["data"].items()}
            for name, sec in credential_secrets().items()
        }
        ready_at_kill = sum(_is_ready(a) for a in s.apps() if a["metadata"]["name"] in names)
        s.start_operator()
        wait_for(
            lambda: all(_is_ready(a) for a in s.apps()), 90, "every application Ready after the restart", interval=0.5
        )
        time.sleep(1)

    assert not load.failures(), summary(load.failures())
    apps = {a["metadata"]["name"]: a for a in s.apps()}
    secrets = [sec for sec in s.secrets() if sec.get("type") != "kubernetes.io/service-account-token"]
    for name, app in apps.items():
        owned = [
            sec
            for sec in secrets
            if any(ref.get("uid") == app["metadata"]["uid"] for ref in sec["metadata"].get("ownerReferences") or [])
        ]
        assert len(owned) == 1, f"{name} owns {[o['metadata']['name'] for o in owned]}"
        creds = {k: base64.b64decode(v).decode() for k, v in owned[0]["data"].items()}
        assert app["status"]["clientID"] == creds["client_id"]
        assert hash_client_secret(creds["client_secret"]) == app["status"]["clientSecretHash"], name
        if f"{name}-credentials" in before:
            old = before[f"{name}-credentials"]
            assert (creds["client_id"], creds["client_secret"]) == (old["client_id"], old["client_secret"]), (
                f"{name}: credentials changed across the operator restart"
            )
    # the credentials in each Secret really authenticate at the token endpoint
    for name in names:
        creds = s.credentials(f"{name}-credentials")
        wait_for(lambda creds=creds: s.exchange(creds, subject).status_code == 200, 5, f"{name} served with its Secret")
    print(
        f"killed with {len(before) - 1} of {APPS} credentials written and {ready_at_kill} Ready; "
        f"{len(load.records)} exchanges, 0 failed"
    )


# ----- d. signing keys rotating under load ----------------------------------------------------------------------
class ResourceServer:
    """Verifies issued tokens with jwcrypto against our JWKS, fetched again only on an unknown kid."""

    def __init__(self, base: str):
        self.base = base
        self.keys = jwk.JWKSet()
        self.fetches = 0
        self.verified = 0
        self.kids: list[str] = []
        self.failures: list[str] = []
        self._refresh()

    def _refresh(self) -> None:
        self.fetches += 1
        self.keys = jwk.JWKSet.from_json(httpx.get(self.base + "/.well-known/jwks.json", timeout=5).text)

    def __call__(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            return
        token = response.json()["access_token"]
        kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
        if kid not in self.kids:
            self.kids.append(kid)
        if self.keys.get_key(kid) is None:
            self._refresh()
        try:
            jose_jwt.JWT(
                jwt=token, key=self.keys, algs=["ES256"], check_claims={"iss": self.base, "aud": API, "exp": None}
            )
            self.verified += 1
        except Exception as exc:  # noqa: BLE001
            self.failures.append(f"kid {kid}: {type(exc).__name__}: {exc}")


def test_signing_key_rotation_under_load_fails_no_verification(stacks):
    s = stacks(
        operator_env={
            "TOKENBRIDGE_SIGNING_ROTATION_PERIOD": "6s",
            "TOKENBRIDGE_SIGNING_PUBLISH_LEAD": "2s",
            "TOKENBRIDGE_SIGNING_CHECK_INTERVAL": "1s",
            "TOKENBRIDGE_MAX_TOKEN_LIFETIME": "60s",
        },
        server_env={"TOKENBRIDGE_MAX_TOKEN_LIFETIME": "60s"},
    )
    issuer = IdP(f"https://idp-{s.ns}.faults.test", "ES256")
    s.start_operator()
    s.start_server()
    s.apply(s.idp("corp", inline_spec(issuer)), s.app("web", "corp"))
    wait_for(lambda: s.ready(api.KIND_APP, "web"), 60, "OAuthApplication Ready")
    creds = s.credentials("web-credentials")
    subject = issuer.mint({"sub": "alice", "aud": SUBJECT_AUDIENCE}, lifetime=900)
    wait_for(lambda: all(s.exchange(creds, subject).status_code == 200 for _ in range(4)), 10, "exchanges")

    rs = ResourceServer(s.base)
    with Load(lambda c: s.exchange(creds, subject, client=c), limit=60, on_response=rs) as load:
        wait_for(lambda: len(rs.kids) >= 3 or not load.running, 45, "two signing-key rotations", interval=0.5)
        time.sleep(2)

    assert not load.failures(), summary(load.failures())
    assert not rs.failures, f"{len(rs.failures)} of {rs.verified + len(rs.failures)} failed: {rs.failures[:5]}"
    assert len(rs.kids) >= 3, f"only {len(rs.kids)} signing keys seen: {rs.kids}"
    assert rs.verified == len(load.records)
    print(f"{rs.verified} tokens verified across {len(rs.kids) - 1} rotations, {rs.fetches} JWKS fetches")
