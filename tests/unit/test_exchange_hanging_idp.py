"""A JWKS endpoint that hangs during an unknown-kid refresh holds only the request that asked for the refresh.

The refresh is the one fetch on the request path (bounded by the fetch timeout, at most once per cooldown). With
gevent workers (the default) every request of a worker shares one OS thread, so the fetch must wait cooperatively:
here one worker serves good tokens while its only other request waits on an IdP that does not answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt
import yaml

from tests.support.exchange import basic
from tests.support.idp import HttpsIdP
from tests.support.processes import free_port, stop_group
from tokenbridge import api

AUDIENCE = "api://hanging"


def test_good_tokens_are_served_while_a_refresh_waits_on_a_hanging_idp(tmp_path):
    idp = HttpsIdP(kind="oidc", alg="RS256").start()
    docs = [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_IDP,
            "metadata": {"name": "corp", "namespace": "ns"},
            "spec": {
                "type": "OIDC",
                "wellKnownURL": idp.well_known_url,
                "tls": {"caBundle": idp.ca_pem},
                "allowedAudiences": [AUDIENCE],
            },
        },
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {
                "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                "identityProviders": [{"name": "corp"}],
                "audiences": ["https://api.hanging.test"],
                "credentials": {"secretName": "web-credentials"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-credentials", "namespace": "ns"},
            "stringData": {"client_id": "web", "client_secret": "pw"},
        },
    ]
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tokenbridge"),
                "serve",
                "--manifests",
                str(tmp_path),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],  # one worker: both requests share its thread
            env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": base, "TOKENBRIDGE_ALLOWED_NETWORKS": "127.0.0.0/8"},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )

    def exchange(token: str) -> httpx.Response:
        return httpx.post(
            base + "/oauth2/token",
            headers=basic("web", "pw"),
            timeout=30,
            data={
                "grant_type": api.GRANT_TOKEN_EXCHANGE,
                "subject_token_type": api.TOKEN_TYPE_JWT,
                "subject_token": token,
            },
        )

    try:
        good = idp.mint({"sub": "alice", "aud": AUDIENCE}, lifetime=900)
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if exchange(good).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)

        jwks_path = idp._path(idp.jwks_uri)
        fetches = sum(1 for path, _ in idp.requests if path == jwks_path)
        idp.delay = 8.0  # longer than any fetch timeout: the refresh gives up, the IdP never answers it
        now = int(time.time())
        forged = jwt.encode(
            {"iss": idp.issuer, "sub": "mallory", "aud": AUDIENCE, "iat": now, "exp": now + 900},
            idp.key,
            algorithm="RS256",
            headers={"kid": uuid.uuid4().hex},
        )
        answer: dict[str, httpx.Response] = {}
        waiting = threading.Thread(target=lambda: answer.setdefault("forged", exchange(forged)))
        waiting.start()
        deadline = time.monotonic() + 5
        while sum(1 for path, _ in idp.requests if path == jwks_path) == fetches:  # the refresh has begun
            assert time.monotonic() < deadline, "the unknown kid did not start a JWKS refresh"
            time.sleep(0.01)

        statuses = [exchange(good).status_code for _ in range(20)]
        still_waiting = waiting.is_alive()
        waiting.join(30)

        assert statuses == [200] * 20
        assert still_waiting, "the good tokens were answered only after the hanging refresh gave up"
        forged_answer = answer["forged"]
        assert forged_answer.status_code == 400 and forged_answer.json()["error"] == "invalid_grant", forged_answer.text
    finally:
        stop_group(server)
        idp.delay = 0.0
        idp.stop()
