"""``tokenbridge serve --manifests`` for real: gunicorn with two workers on a loopback port, over HTTP."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tokenbridge import api
from tokenbridge_exchange import config as server_config
from test_exchange_helpers import TestIdP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    idp = TestIdP()
    docs = [
        {"apiVersion": api.API_VERSION, "kind": api.KIND_CLUSTER_IDP, "metadata": {"name": "corp"},
         "spec": {"type": "OIDC", "issuer": idp.issuer, "jwks": idp.jwks(), "allowedAudiences": ["api://tb"]}},
        {"apiVersion": api.API_VERSION, "kind": api.KIND_APP, "metadata": {"name": "web", "namespace": "default"},
         "spec": {"grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                  "identityProviders": [{"kind": api.KIND_CLUSTER_IDP, "name": "corp"}],
                  "audiences": ["https://api.example.test"], "credentials": {"secretName": "web-creds"}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-creds"},
         "stringData": {"client_id": "web", "client_secret": "pw"}},
    ]
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    exe = Path(sys.executable).parent / "tokenbridge"
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([str(exe), "serve", "--manifests", str(tmp_path), "--bind", f"127.0.0.1:{port}",
                             "--workers", "2"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": ""})
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
        yield base, idp
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_serve_manifests_with_two_workers(server):
    base, idp = server
    metadata = httpx.get(base + "/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == base and metadata["token_endpoint"] == base + "/oauth2/token"
    now = int(time.time())
    subject = idp.token(aud="api://tb", iat=now, exp=now + 300)
    connections: dict[int, httpx.Client] = {}  # worker pid -> a kept-alive connection that worker accepted
    deadline = time.monotonic() + 20
    while len(connections) < 2:
        assert time.monotonic() < deadline, f"only workers {list(connections)} answered"
        http = httpx.Client(base_url=base)
        pid = http.get("/readyz").json()["worker"]
        if pid in connections:
            http.close()
        else:
            connections[pid] = http
    kids = set()
    try:
        for http in connections.values():
            for _ in range(3):
                result = http.post("/oauth2/token", auth=("web", "pw"), data={
                    "grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": subject,
                    "subject_token_type": api.TOKEN_TYPE_ID_TOKEN})
                assert result.status_code == 200, result.text
                token = result.json()["access_token"]
                kid = jwt.get_unverified_header(token)["kid"]
                kids.add(kid)
                for other in connections.values():  # every worker publishes the key any worker signs with
                    key = jwt.PyJWKSet.from_dict(other.get("/.well-known/jwks.json").json())[kid]
                    claims = jwt.decode(token, key, algorithms=["ES256"], audience="https://api.example.test",
                                        issuer=base)
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
        issued = [line for line in scrape.splitlines() if line.startswith("tokenbridge_token_requests_total{")
                  and 'outcome="issued"' in line]
        assert issued and float(issued[0].rsplit(" ", 1)[1]) == 6, scrape
        assert 'grant_type="other",outcome="invalid_client"} 1.0' in scrape


def test_config_needs_a_source(capsys, tmp_path):
    with pytest.raises(SystemExit):
        server_config.load([], env={})
    assert "--manifests" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server_config.load(["--manifests", str(tmp_path / "missing")], env={})
    assert "no such file" in capsys.readouterr().err
    cfg = server_config.load(["--manifests", str(tmp_path), "--bind", "0.0.0.0:9000"],
                             env={"TOKENBRIDGE_PUBLIC_ISSUER": "https://tb.example.test/"})
    assert cfg.issuer == "https://tb.example.test" and cfg.token_endpoint == "https://tb.example.test/oauth2/token"


def test_config_from_the_charts_environment(tmp_path):
    cfg = server_config.load(["--kubernetes", "--workers", "3", "--threads", "4"], env={
        "TOKENBRIDGE_PUBLIC_ISSUER": "https://tb.example.test", "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": "tb",
        "TOKENBRIDGE_SIGNING_SECRET_NAME": "keys", "TOKENBRIDGE_SIGNING_ALGORITHM": "RS256",
        "TOKENBRIDGE_WATCH_NAMESPACE": "team-a", "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "false",
        "TOKENBRIDGE_JWKS_LIFESPAN": "5m", "TOKENBRIDGE_JWKS_MAX_STALENESS": "24h"})
    assert cfg.kubernetes and cfg.workers == 3 and cfg.threads == 4
    assert (cfg.signing_secret_namespace, cfg.signing_secret_name, cfg.signing_algorithm) == ("tb", "keys", "RS256")
    assert cfg.watch_namespace == "team-a" and cfg.cluster_identity_providers is False
    assert cfg.jwks_lifespan == 300 and cfg.jwks_max_staleness == 86400
