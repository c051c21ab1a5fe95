"""End to end on the real control plane: ``tokenbridge operator`` and ``tokenbridge serve`` as processes.

The operator discovers the cluster's ServiceAccount issuer, gives the application its credentials Secret and
writes the signing keys; the server reads all of it from the API server. A ServiceAccount token minted with
TokenRequest is exchanged with the credentials from that Secret at the token endpoint it names, and the issued
token is verified with jwcrypto through the server's discovery document and JWKS. A client secret rotation is
served at once, with the previous secret still accepted during its grace window.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from jwcrypto import jwk, jwt as jose_jwt

from tokenbridge import api

pytestmark = pytest.mark.cluster

AUDIENCE = "tokenbridge-e2e"
TOKENBRIDGE = str(Path(sys.executable).parent / "tokenbridge")


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s" + (f"\n{log.read_text()[-4000:]}" if log else ""))
        time.sleep(0.1)


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([TOKENBRIDGE, *args], env={**os.environ, **env}, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"{self.log.name} exited:\n{self.log.read_text()[-4000:]}"
        return True

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def secret_values(cp, namespace: str, name: str) -> dict[str, str] | None:
    result = cp.kubectl("get", "secret", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout).get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployment(control_plane, tmp_path):
    cp = control_plane
    ns = f"tb-e2e-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    base = f"http://127.0.0.1:{free_port()}"
    env = {"TOKENBRIDGE_PUBLIC_ISSUER": base, "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": ns,
           "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "false", "TOKENBRIDGE_WATCH_NAMESPACE": ns}
    processes: list[Process] = []
    try:
        operator = Process(["operator", "--kubeconfig", str(cp.kubeconfig), "-n", ns], env, tmp_path / "operator.log")
        processes.append(operator)
        yield {"cp": cp, "ns": ns, "base": base, "env": env, "operator": operator, "processes": processes,
               "tmp": tmp_path}
    finally:
        for process in reversed(processes):
            process.stop()
        for kind in ("oauthapplications", "identityproviders"):  # the stopped operator cannot drop its finalizers
            for name in cp.kubectl("get", kind, "-n", ns, "-o", "name", check=False).stdout.split():
                cp.kubectl("patch", name, "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                           check=False)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_and_server_exchange_a_service_account_token(deployment):
    d = deployment
    cp, ns = d["cp"], d["ns"]
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": api.API_VERSION, "kind": api.KIND_IDP, "metadata": {"name": "cluster-sa", "namespace": ns},
        "spec": {"type": api.IDP_KUBERNETES, "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                 "allowedAudiences": [AUDIENCE]}}))
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": api.API_VERSION, "kind": api.KIND_APP, "metadata": {"name": "web", "namespace": ns},
        "spec": {"grantTypes": [api.GRANT_TOKEN_EXCHANGE], "identityProviders": [{"name": "cluster-sa"}],
                 "audiences": ["https://api.e2e.test"], "scopes": ["read"],
                 "credentials": {"secretName": "web-client"}}}))
    cp.kubectl("create", "serviceaccount", "workload", "-n", ns)

    credentials = wait_for(lambda: d["operator"].alive() and secret_values(cp, ns, "web-client"), 60,
                           "the application's credentials Secret", d["operator"].log)
    wait_for(lambda: secret_values(cp, ns, "tokenbridge-signing-keys"), 30, "the signing-key Secret", d["operator"].log)
    wait_for(lambda: json.loads(cp.kubectl("get", "idp", "cluster-sa", "-n", ns, "-o", "json").stdout)
             .get("status", {}).get("jwksURI"), 60, "the discovered IdP status", d["operator"].log)
    assert credentials["token_endpoint"] == d["base"] + "/oauth2/token"

    server = Process(["serve", "--kubeconfig", str(cp.kubeconfig), "--bind", d["base"].removeprefix("http://"),
                      "--workers", "2"], d["env"], d["tmp"] / "server.log")
    d["processes"].append(server)

    def ready():
        server.alive()
        try:
            return httpx.get(d["base"] + "/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, 60, "server readiness", server.log)

    def exchange(secret: str) -> httpx.Response:
        subject = cp.kubectl("create", "token", "workload", "-n", ns, "--audience", AUDIENCE).stdout.strip()
        return httpx.post(credentials["token_endpoint"], auth=(credentials["client_id"], secret),
                          headers={"Connection": "close"}, timeout=10, data={
                              "grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": subject,
                              "subject_token_type": api.TOKEN_TYPE_JWT})

    # the server fetches the IdP's keys itself; both workers must be ready and have them
    wait_for(lambda: all(exchange(credentials["client_secret"]).status_code == 200 for _ in range(4)), 30,
             "successful exchanges", server.log)
    token = exchange(credentials["client_secret"]).json()["access_token"]
    metadata = httpx.get(d["base"] + "/.well-known/openid-configuration").json()
    keys = jwk.JWKSet.from_json(httpx.get(metadata["jwks_uri"]).text)
    verified = jose_jwt.JWT(jwt=token, key=keys, expected_type="JWS",
                            check_claims={"iss": d["base"], "aud": "https://api.e2e.test", "exp": None})
    claims = json.loads(verified.claims)
    assert claims["sub"] == f"system:serviceaccount:{ns}:workload"
    assert claims["idp"] == f"{ns}/cluster-sa" and claims["client_id"] == credentials["client_id"]

    # rotation: the new secret works as soon as the operator has published its hash, the old one still does
    cp.kubectl("annotate", "oauthapplication", "web", "-n", ns, f"{api.ANNOTATION_ROTATE_SECRET}=1")
    rotated = wait_for(lambda: (lambda v: v if v and v["client_secret"] != credentials["client_secret"] else None)(
        secret_values(cp, ns, "web-client")), 30, "the rotated client secret", d["operator"].log)
    wait_for(lambda: all(exchange(rotated["client_secret"]).status_code == 200 for _ in range(4)), 5,
             "the rotated secret accepted", server.log)
    assert exchange(credentials["client_secret"]).status_code == 200
