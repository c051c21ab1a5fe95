"""``tokenbridge serve --manifests`` for real: gunicorn with two workers on a loopback port, over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tests.support.idp import IdP
from tests.support.processes import free_port
from tokenbridge import api
from tokenbridge_exchange import config as server_config

ONCE_ISSUER = "https://once.example.test"


@pytest.fixture
def server(tmp_path):
    idp = IdP()
    docs = [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_CLUSTER_IDP,
            "metadata": {"name": "corp"},
            "spec": {"type": "OIDC", "issuer": idp.issuer, "jwks": idp.jwks(), "allowedAudiences": ["api://tb"]},
        },
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_CLUSTER_IDP,
            "metadata": {"name": "once"},
            "spec": {
                "type": "OIDC",
                "issuer": ONCE_ISSUER,
                "jwks": idp.jwks(),
                "allowedAudiences": ["api://tb"],
                "requireJTI": True,
                "preventReplay": True,
            },
        },
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                "identityProviders": [
                    {"kind": api.KIND_CLUSTER_IDP, "name": "corp"},
                    {"kind": api.KIND_CLUSTER_IDP, "name": "once"},
                ],
                "audiences": ["https://api.example.test"],
                "credentials": {"secretName": "web-creds"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-creds"},
            "stringData": {"client_id": "web", "client_secret": "pw"},
        },
    ]
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    exe = Path(sys.executable).parent / "tokenbridge"
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(
        [str(exe), "serve", "--manifests", str(tmp_path), "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": ""},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        yield base, idp, tmp_path / "server.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def worker_connections(base: str) -> dict[int, httpx.Client]:
    """Worker pid -> a kept-alive connection that worker accepted, for both workers."""
    connections: dict[int, httpx.Client] = {}
    deadline = time.monotonic() + 20
    while len(connections) < 2:
        assert time.monotonic() < deadline, f"only workers {list(connections)} answered"
        http = httpx.Client(base_url=base)
        pid = http.get("/readyz").json()["worker"]
        if pid in connections:
            http.close()
        else:
            connections[pid] = http
    return connections


def test_serve_manifests_with_two_workers(server):
    base, idp, _ = server
    metadata = httpx.get(base + "/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == base and metadata["token_endpoint"] == base + "/oauth2/token"
    now = int(time.time())
    subject = idp.token(aud="api://tb", iat=now, exp=now + 300)
    connections = worker_connections(base)
    kids = set()
    try:
        for http in connections.values():
            for _ in range(3):
                result = http.post(
                    "/oauth2/token",
                    auth=("web", "pw"),
                    data={
                        "grant_type": api.GRANT_TOKEN_EXCHANGE,
                        "subject_token": subject,
                        "subject_token_type": api.TOKEN_TYPE_ID_TOKEN,
                    },
                )
                assert result.status_code == 200, result.text
                token = result.json()["access_token"]
                kid = jwt.get_unverified_header(token)["kid"]
                kids.add(kid)
                for other in connections.values():  # every worker publishes the key any worker signs with
                    key = jwt.PyJWKSet.from_dict(other.get("/.well-known/jwks.json").json())[kid]
                    claims = jwt.decode(
                        token, key, algorithms=["ES256"], audience="https://api.example.test", issuer=base
                    )
                    assert claims["sub"] == "alice" and claims["idp"] == "corp"
    finally:
        for http in connections.values():
            http.close()
    assert len(kids) == 1, "every worker must sign with the one key generated before the fork"
    refused = httpx.post(metadata["token_endpoint"], auth=("web", "wrong"), data={"grant_type": "x"})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    # whichever worker answers the scrape, it counts every worker's requests
    for _ in range(4):
        scrape = httpx.get(base + "/metrics", headers={"Connection": "close"}).text
        assert (
            'tokenbridge_exchanges_total{application="",error="invalid_client",grant_type="other",idp="",'
            'outcome="refused"} 1.0' in scrape
        )
        assert (
            f'tokenbridge_exchanges_total{{application="default/web",error="",grant_type='
            f'"{api.GRANT_TOKEN_EXCHANGE}",idp="corp",outcome="issued"}} 6.0'
        ) in scrape
        assert "tokenbridge_snapshot_generation 1.0" in scrape and "tokenbridge_snapshot_age_seconds " in scrape


def test_replay_is_refused_by_the_other_worker_and_audited(server):
    base, idp, log_path = server
    now = int(time.time())
    token = idp.token(iss=ONCE_ISSUER, aud="api://tb", iat=now, exp=now + 300, jti="jti-" + str(now))
    form = {"grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": api.TOKEN_TYPE_JWT}
    first, second = worker_connections(base).values()
    try:
        assert first.post("/oauth2/token", auth=("web", "pw"), data=form).status_code == 200
        replayed = second.post("/oauth2/token", auth=("web", "pw"), data=form)
        assert replayed.status_code == 400 and "replayed jti" in replayed.json()["error_description"]
        explained = second.post("/oauth2/explain", auth=("web", "pw"), data=form).json()
        assert explained["decision"] == "refused" and explained["steps"][-1]["step"] == "replay"
    finally:
        first.close()
        second.close()
    scrape = httpx.get(base + "/metrics", headers={"Connection": "close"}).text
    assert 'tokenbridge_replay_rejections_total{idp="once"} 1.0' in scrape
    deadline = time.monotonic() + 5
    while True:  # audit lines are bare JSON on stdout (the log file here), one per token request
        audit = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith('{"time"')]
        if len(audit) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # each worker writes its own batch of lines: the file's order across workers is not the requests' order
    assert sorted((a["outcome"], a["idp"]) for a in audit) == [("issued", "once"), ("refused", "once")]
    assert token.split(".")[2] not in log_path.read_text()


def test_config_needs_a_source(capsys, tmp_path):
    with pytest.raises(SystemExit):
        server_config.load([], env={})
    assert "--manifests" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server_config.load(["--manifests", str(tmp_path / "missing")], env={})
    assert "no such file" in capsys.readouterr().err
    cfg = server_config.load(
        ["--manifests", str(tmp_path), "--bind", "0.0.0.0:9000"],
        env={"TOKENBRIDGE_PUBLIC_ISSUER": "https://tb.example.test/"},
    )
    assert cfg.issuer == "https://tb.example.test" and cfg.token_endpoint == "https://tb.example.test/oauth2/token"


def test_config_from_the_charts_environment(tmp_path):
    cfg = server_config.load(
        ["--kubernetes", "--workers", "3", "--threads", "4"],
        env={
            "TOKENBRIDGE_PUBLIC_ISSUER": "https://tb.example.test",
            "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": "tb",
            "TOKENBRIDGE_SIGNING_SECRET_NAME": "keys",
            "TOKENBRIDGE_SIGNING_ALGORITHM": "RS256",
            "TOKENBRIDGE_WATCH_NAMESPACE": "team-a",
            "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "false",
            "TOKENBRIDGE_JWKS_LIFESPAN": "5m",
            "TOKENBRIDGE_JWKS_MAX_STALENESS": "24h",
            "TOKENBRIDGE_JWKS_COOLDOWN": "30s",
        },
    )
    assert cfg.kubernetes and cfg.workers == 3 and cfg.threads == 4
    assert (cfg.signing_secret_namespace, cfg.signing_secret_name, cfg.signing_algorithm) == ("tb", "keys", "RS256")
    assert cfg.watch_namespace == "team-a" and cfg.cluster_identity_providers is False
    assert cfg.jwks_lifespan == 300 and cfg.jwks_max_staleness == 86400 and cfg.jwks_cooldown == 30


def _owners_of_connections_to(port: int) -> list[int]:
    """The pids holding the server side of each established loopback connection to ``port`` (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].split(":")[1], 16), fields[3], fields[9]
        if local_port == port and state == "01":  # ESTABLISHED, server side
            inodes.add(f"socket:[{inode}]")
    owners = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        owners += [int(pid)] * sum(fd in inodes for fd in fds)
    return owners


def test_a_burst_of_connections_is_spread_over_the_workers(server):
    """Each worker has its own SO_REUSEPORT socket: on one shared socket a burst of connections could all land on the
    first worker to wake, and the others would idle while it queues (as the benchmark saw)."""
    base, _, _ = server
    port = int(base.rsplit(":", 1)[1])
    clients = [httpx.Client(base_url=base) for _ in range(32)]
    try:
        for client in clients:
            assert client.get("/healthz").status_code == 200  # each client keeps its connection open
        owners = _owners_of_connections_to(port)
        assert len(owners) == 32
        counts = sorted(owners.count(pid) for pid in set(owners))
        assert len(counts) == 2 and counts[0] >= 4, f"connections per worker: {counts}"
    finally:
        for client in clients:
            client.close()
