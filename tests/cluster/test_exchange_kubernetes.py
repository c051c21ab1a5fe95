"""The exchange server reading its configuration from a real cluster (``tokenbridge serve --kubeconfig``).

The operator's part is played by the test: it writes the signing-key Secret and patches the status the operator
would publish (client id and secret hash, the IdP's effective issuer). A ServiceAccount token minted with
TokenRequest is exchanged; the issued token is verified with jwcrypto through our discovery document and JWKS;
changes are served within 2 s; the API server stops and restarts while exchanges keep succeeding.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from jwcrypto import jwk
from jwcrypto import jwt as jose_jwt

from tests.support.processes import free_port
from tests.support.waiting import wait_for
from tokenbridge import api
from tokenbridge.client_secrets import hash_client_secret
from tokenbridge.signing import generate_keyset

pytestmark = pytest.mark.cluster

SECRET = "cluster-test-secret"
AUDIENCE = "tokenbridge-exchange-test"


def apply(cp, doc: dict) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps(doc))


def patch_status(cp, kind: str, name: str, status: dict, namespace: str | None = None) -> None:
    ns = ["-n", namespace] if namespace else []
    cp.kubectl("patch", kind, name, *ns, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


@pytest.fixture(scope="module")
def setup(control_plane, tmp_path_factory):
    cp = control_plane
    suffix = uuid.uuid4().hex[:6]
    ns, cidp = f"tb-exchange-{suffix}", f"tb-exchange-sa-{suffix}"
    cp.kubectl("create", "namespace", ns)
    keyset = generate_keyset("ES256", time.time())
    apply(
        cp,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "signing-keys", "namespace": ns},
            "data": keyset.to_secret_data(),
        },
    )
    # Inline keys (the air-gapped form) here; test_keys_fetched_from_the_api_server uses a jwksURI.
    apply(
        cp,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_CLUSTER_IDP,
            "metadata": {"name": cidp},
            "spec": {
                "type": api.IDP_KUBERNETES,
                "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                "jwks": cp.get_json("/openid/v1/jwks"),
                "allowedAudiences": [AUDIENCE],
                "kubernetes": {"useOperatorCredentials": True},
            },
        },
    )
    patch_status(cp, "clusteridentityprovider", cidp, {"issuer": cp.issuer, "jwksURI": f"{cp.issuer}/openid/v1/jwks"})
    apply(
        cp,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                "identityProviders": [{"kind": api.KIND_CLUSTER_IDP, "name": cidp}],
                "audiences": ["https://api.tb.test", "https://other.tb.test"],
                "scopes": ["read"],
                "credentials": {"secretName": "web-credentials"},
            },
        },
    )
    patch_status(
        cp, "oauthapplication", "web", {"clientID": f"web-{suffix}", "clientSecretHash": hash_client_secret(SECRET)}, ns
    )
    cp.kubectl("create", "serviceaccount", "workload", "-n", ns)

    try:
        server = Server(
            cp.kubeconfig,
            tmp_path_factory.mktemp("exchange"),
            {"TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": ns, "TOKENBRIDGE_SIGNING_SECRET_NAME": "signing-keys"},
        )
        try:
            yield {
                "cp": cp,
                "ns": ns,
                "cidp": cidp,
                "client_id": f"web-{suffix}",
                "base": server.base,
                "log": server.log_path,
            }
        finally:
            server.stop()
    finally:
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cp.kubectl("delete", "clusteridentityprovider", cidp, "--ignore-not-found", check=False)


class Server:
    """``tokenbridge serve --kubeconfig`` with two workers, started and ready (every worker) on return."""

    def __init__(self, kubeconfig, workdir: Path, env: dict[str, str]):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tokenbridge"),
                "serve",
                "--kubeconfig",
                str(kubeconfig),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": self.base, **env},
        )
        ready_workers: set[int] = set()

        def all_workers_ready():  # a worker accepts connections only once it has its first snapshot
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                result = httpx.get(self.base + "/readyz", headers={"Connection": "close"})
            except httpx.TransportError:
                return False
            if result.status_code == 200:
                ready_workers.add(result.json()["worker"])
            return len(ready_workers) == 2

        try:
            wait_for(all_workers_ready, 60, "readiness of both workers")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def sa_token(s) -> str:
    return s["cp"].kubectl("create", "token", "workload", "-n", s["ns"], "--audience", AUDIENCE).stdout.strip()


def exchange(s, subject: str, **params) -> httpx.Response:
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **params,
    }
    # a new connection each time, so both workers are exercised
    return httpx.post(
        s["base"] + "/oauth2/token",
        data=form,
        auth=(s["client_id"], SECRET),
        headers={"Connection": "close"},
        timeout=10,
    )


def test_service_account_token_is_exchanged_and_verifies_through_discovery(setup):
    s = setup
    result = exchange(s, sa_token(s), audience="https://api.tb.test")
    assert result.status_code == 200, result.text + s["log"].read_text()[-3000:]
    body = result.json()
    assert body["token_type"] == "Bearer" and body["issued_token_type"] == api.TOKEN_TYPE_ACCESS_TOKEN
    metadata = httpx.get(s["base"] + "/.well-known/openid-configuration").json()
    assert metadata["issuer"] == s["base"]
    keys = jwk.JWKSet.from_json(httpx.get(metadata["jwks_uri"]).text)
    verified = jose_jwt.JWT(
        jwt=body["access_token"],
        key=keys,
        expected_type="JWS",
        check_claims={"iss": s["base"], "aud": "https://api.tb.test", "exp": None},
    )
    claims = json.loads(verified.claims)
    assert claims["sub"] == f"system:serviceaccount:{s['ns']}:workload"
    assert claims["idp"] == s["cidp"] and claims["client_id"] == s["client_id"] and claims["scope"] == "read"


def test_changes_are_served_within_two_seconds(setup):
    s = setup
    subject = sa_token(s)
    assert exchange(s, subject, audience="https://other.tb.test").status_code == 200
    s["cp"].kubectl(
        "patch",
        "oauthapplication",
        "web",
        "-n",
        s["ns"],
        "--type=merge",
        "-p",
        json.dumps({"spec": {"audiences": ["https://api.tb.test"]}}),
    )

    def refused_by_all():  # several fresh connections in a row: every worker has the change
        return all(exchange(s, subject, audience="https://other.tb.test").status_code == 400 for _ in range(4))

    wait_for(refused_by_all, 2.0, "the narrowed audiences")
    assert exchange(s, subject, audience="https://other.tb.test").json()["error"] == "invalid_target"


def test_api_server_restart_does_not_fail_a_single_exchange(setup):
    s = setup
    cp = s["cp"]
    subject = sa_token(s)
    assert exchange(s, subject).status_code == 200
    cp.stop_apiserver()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            result = exchange(s, subject)
            assert result.status_code == 200, result.text + s["log"].read_text()[-3000:]
    finally:
        cp.start_apiserver()
    for _ in range(10):
        assert exchange(s, subject).status_code == 200
    # the watches reconnect: a change after the restart is served again
    cp.kubectl(
        "patch",
        "oauthapplication",
        "web",
        "-n",
        s["ns"],
        "--type=merge",
        "-p",
        json.dumps({"spec": {"scopes": ["read", "write"]}}),
    )
    wait_for(
        lambda: all(exchange(s, subject, scope="write").status_code == 200 for _ in range(4)),
        10,
        "a change after the API server restart",
    )


def test_signing_key_secret_changes(setup):
    """A new key set in the Secret signs within 2 s; an invalid Secret leaves the last good keys signing."""
    s, cp = setup, setup["cp"]
    subject = sa_token(s)

    def kid_of(result: httpx.Response) -> str:
        assert result.status_code == 200, result.text
        return jwt_header(result.json()["access_token"])["kid"]

    before = kid_of(exchange(s, subject))
    cp.kubectl(
        "patch",
        "secret",
        "signing-keys",
        "-n",
        s["ns"],
        "--type=merge",
        "-p",
        json.dumps({"data": {"keys.json": base64.b64encode(b"not json").decode()}}),
    )
    time.sleep(1)
    assert {kid_of(exchange(s, subject)) for _ in range(4)} == {before}
    keyset = generate_keyset("ES256", time.time())
    cp.kubectl(
        "patch",
        "secret",
        "signing-keys",
        "-n",
        s["ns"],
        "--type=merge",
        "-p",
        json.dumps({"data": keyset.to_secret_data()}),
    )
    wait_for(
        lambda: {kid_of(exchange(s, subject)) for _ in range(4)} == {keyset.keys[0].kid}, 2.0, "the new signing key"
    )
    published = [k["kid"] for k in httpx.get(s["base"] + "/.well-known/jwks.json").json()["keys"]]
    assert published == [keyset.keys[0].kid]


def jwt_header(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))


def use_identity_provider(s, name: str) -> None:
    s["cp"].kubectl(
        "patch",
        "oauthapplication",
        "web",
        "-n",
        s["ns"],
        "--type=merge",
        "-p",
        json.dumps({"spec": {"identityProviders": [{"kind": api.KIND_CLUSTER_IDP, "name": name}]}}),
    )


def test_keys_fetched_from_the_api_server(setup):
    """An IdP with a jwksURI: the server fetches the keys itself, with the credentials of its kubeconfig (the API
    server answers /openid/v1/jwks only to an Accept that allows application/jwk-set+json)."""
    s, cp = setup, setup["cp"]
    fetched = s["cidp"] + "-fetched"
    apply(
        cp,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_CLUSTER_IDP,
            "metadata": {"name": fetched},
            "spec": {
                "type": api.IDP_KUBERNETES,
                "wellKnownURL": f"{cp.issuer}/.well-known/openid-configuration",
                "jwksURI": f"{cp.issuer}/openid/v1/jwks",
                "allowedAudiences": [AUDIENCE],
            },
        },
    )
    patch_status(cp, "clusteridentityprovider", fetched, {"issuer": cp.issuer})
    subject = sa_token(s)
    use_identity_provider(s, fetched)

    try:
        wait_for(
            lambda: all(
                _claims(r.json().get("access_token", "")).get("idp") == fetched
                for r in [exchange(s, subject) for _ in range(4)]
            ),
            2.0,
            "exchanges verified with keys the server fetched",
        )
    finally:
        use_identity_provider(s, s["cidp"])
        cp.kubectl("delete", "clusteridentityprovider", fetched, "--wait=false")


def _claims(token: str) -> dict:
    """Unverified claims, only to see which IdP a token names (its signature is checked in the first test)."""
    try:
        return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    except (IndexError, ValueError):
        return {}


def test_deleting_the_identity_provider_takes_effect_within_two_seconds(setup):
    s = setup
    subject = sa_token(s)
    wait_for(lambda: exchange(s, subject).status_code == 200, 2.0, "exchanges through the identity provider")
    s["cp"].kubectl("delete", "clusteridentityprovider", s["cidp"])

    def refused_by_all():
        return all(exchange(s, subject).status_code == 400 for _ in range(4))

    wait_for(refused_by_all, 2.0, "the deleted identity provider")
    assert "not an identity provider of this client" in exchange(s, subject).json()["error_description"]


def test_least_privilege_namespace_scope(control_plane, tmp_path):
    """The server with only the chart's namespace-scope RBAC: its namespace's resources, one Secret by name."""
    cp = control_plane
    ns = f"tb-exchange-ns-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    try:
        apply(
            cp,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "signing-keys", "namespace": ns},
                "data": generate_keyset("ES256", time.time()).to_secret_data(),
            },
        )
        apply(
            cp,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "not-for-the-server", "namespace": ns},
                "stringData": {"x": "y"},
            },
        )
        apply(
            cp,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "server", "namespace": ns},
                "rules": [
                    {
                        "apiGroups": [api.GROUP],
                        "resources": [api.PLURAL_IDP, api.PLURAL_APP],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "resourceNames": ["signing-keys"],
                        "verbs": ["get", "list", "watch"],
                    },
                ],
            },
        )
        cp.kubectl("create", "serviceaccount", "server", "-n", ns)
        cp.kubectl("create", "rolebinding", "server", "-n", ns, "--role=server", f"--serviceaccount={ns}:server")
        apply(
            cp,
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_IDP,
                "metadata": {"name": "sa", "namespace": ns},
                "spec": {
                    "type": api.IDP_KUBERNETES,
                    "issuer": cp.issuer,
                    "jwks": cp.get_json("/openid/v1/jwks"),
                    "allowedAudiences": [AUDIENCE],
                    "kubernetes": {"useOperatorCredentials": False},
                },
            },
        )
        apply(
            cp,
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND_APP,
                "metadata": {"name": "web", "namespace": ns},
                "spec": {
                    "grantTypes": [api.GRANT_TOKEN_EXCHANGE],
                    "identityProviders": [{"name": "sa"}],
                    "audiences": ["https://api.tb.test"],
                    "credentials": {"secretName": "web-credentials"},
                },
            },
        )
        patch_status(
            cp, "oauthapplication", "web", {"clientID": f"{ns}-web", "clientSecretHash": hash_client_secret(SECRET)}, ns
        )
        cp.kubectl("create", "serviceaccount", "workload", "-n", ns)
        server_token = cp.kubectl("create", "token", "server", "-n", ns, "--duration", "1h").stdout.strip()
        kubeconfig = tmp_path / "server.kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "server",
                    "clusters": [
                        {"name": "cp", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_file)}}
                    ],
                    "users": [{"name": "server", "user": {"token": server_token}}],
                    "contexts": [{"name": "server", "context": {"cluster": "cp", "user": "server"}}],
                }
            )
        )
        server = Server(
            kubeconfig,
            tmp_path,
            {
                "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": ns,
                "TOKENBRIDGE_SIGNING_SECRET_NAME": "signing-keys",
                "TOKENBRIDGE_WATCH_NAMESPACE": ns,
                "TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS": "false",
            },
        )
        try:
            s = {"cp": cp, "ns": ns, "base": server.base, "client_id": f"{ns}-web"}
            result = exchange(s, sa_token(s))
            assert result.status_code == 200, result.text + server.log_path.read_text()[-3000:]
            assert _claims(result.json()["access_token"])["idp"] == f"{ns}/sa"
            log = server.log_path.read_text()
            # a 403 status, not the milliseconds of a log timestamp (",403") or a pid ("[403]")
            assert "Forbidden" not in log and not re.search(r"(?<![,\[\d])403(?![\d\]])", log), log[-3000:]
        finally:
            server.stop()
    finally:
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
