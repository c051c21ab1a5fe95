"""``tokenbridge exchange`` against a real running server: ``tokenbridge dev`` as a subprocess on a free loopback
port, subject tokens minted with ``tokenbridge dev token``, results decoded and verified with the server's JWKS,
refusals with the OAuth error, and ``--curl`` output run by the real curl."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tests.support.processes import free_port
from tokenbridge import api
from tokenbridge_cli.commands import dev

TB = str(Path(sys.executable).parent / "tokenbridge")


class DevServer:
    def __init__(self, directory: Path, port: int):
        self.dir, self.port = directory, port
        self.base = f"http://127.0.0.1:{port}"
        self.secret = ""

    def mint(self, *args: str) -> str:
        proc = subprocess.run(
            [TB, "dev", "token", "--dir", str(self.dir), *args], capture_output=True, text=True, check=True
        )
        return proc.stdout.strip()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBRIDGE_")}
        return {**env, "TOKENBRIDGE_CLIENT_ID": dev.CLIENT_ID, "TOKENBRIDGE_CLIENT_SECRET": self.secret, **extra}

    def exchange(self, *args: str, env: dict[str, str] | None = None, input: str | None = None):
        return subprocess.run(
            [TB, "exchange", *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.env() if env is None else env,
            timeout=30,
        )

    def verify(self, token: str) -> dict:
        jwks = httpx.get(self.base + "/.well-known/jwks.json").json()
        key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
        return jwt.decode(token, key, algorithms=["ES256"], audience=dev.API_AUDIENCE, issuer=self.base)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dev")
    srv = DevServer(directory, free_port())
    log = open(directory.parent / "dev.log", "w+")
    proc = subprocess.Popen(
        [TB, "dev", "--port", str(srv.port), "--dir", str(directory)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=srv.env(),
    )
    try:
        deadline = time.monotonic() + 40
        while "Ctrl-C stops the server" not in Path(log.name).read_text():  # the walkthrough: ready
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.1)
        assert httpx.get(srv.base + "/readyz").status_code == 200
        secret = next(
            d for d in yaml.safe_load_all((directory / dev.MANIFEST_FILE).read_text()) if d and d["kind"] == "Secret"
        )["stringData"]["client_secret"]
        srv.secret = secret
        srv.walkthrough = Path(log.name).read_text()
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()


def test_token_exchange_prints_a_token_the_server_signed(server):
    subject = server.mint("--sub", "alice")
    proc = server.exchange("--issuer", server.base, "--subject-token", subject, "--audience", dev.API_AUDIENCE)
    assert proc.returncode == 0, proc.stderr
    claims = server.verify(proc.stdout.strip())
    assert claims["sub"] == "alice" and claims["client_id"] == dev.CLIENT_ID and claims["idp"] == "default/dev-idp"
    decoded = subprocess.run([TB, "decode", "--json", proc.stdout.strip()], capture_output=True, text=True)
    assert decoded.returncode == 0 and json.loads(decoded.stdout)["claims"]["scope"] == "read write"


def test_json_output_token_endpoint_stdin_and_scope(server):
    proc = server.exchange(
        "--token-endpoint",
        server.base + "/oauth2/token",
        "--subject-token",
        "-",
        "--subject-token-type",
        "id_token",
        "--scope",
        "read",
        "--json",
        input=server.mint("--sub", "bob") + "\n",
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["token_type"] == "Bearer" and body["scope"] == "read"
    assert body["issued_token_type"] == api.TOKEN_TYPE_ACCESS_TOKEN
    assert server.verify(body["access_token"])["sub"] == "bob"


def test_jwt_bearer_and_client_credentials_grants(server, tmp_path):
    (tmp_path / "assertion.jwt").write_text(server.mint("--sub", "carol"))
    bearer = server.exchange(
        "--issuer", server.base, "--grant", "jwt-bearer", "--subject-token", f"@{tmp_path / 'assertion.jwt'}"
    )
    assert bearer.returncode == 0, bearer.stderr
    assert server.verify(bearer.stdout.strip())["sub"] == "carol"
    client = server.exchange("--issuer", server.base, "--grant", "client_credentials")
    assert client.returncode == 0, client.stderr
    assert server.verify(client.stdout.strip())["sub"] == dev.CLIENT_ID


def test_refused_exchange_exits_1_with_the_oauth_error(server):
    wrong_audience = server.mint("--sub", "alice", "--aud", "someone-else")
    proc = server.exchange("--issuer", server.base, "--subject-token", wrong_audience)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("invalid_grant: the token's aud 'someone-else' contains none of the audiences")
    proc = server.exchange(
        "--issuer", server.base, "--subject-token", server.mint(), env=server.env(TOKENBRIDGE_CLIENT_SECRET="wrong")
    )
    assert proc.returncode == 1 and proc.stderr.startswith("invalid_client: unknown client or wrong client secret")
    proc = server.exchange("--issuer", server.base, "--grant", "client_credentials", "--audience", "api://other")
    assert proc.returncode == 1 and proc.stderr.startswith("invalid_target:")
    proc = server.exchange(
        "--issuer", server.base, "--grant", "client_credentials", "--auth-method", "client_secret_post"
    )
    assert proc.returncode == 1 and "registered for client_secret_basic" in proc.stderr


def test_flags_win_over_the_environment(server):
    proc = server.exchange(
        "--issuer",
        server.base,
        "--grant",
        "client_credentials",
        # "=": a generated secret may start with "-", which argparse would read as an option
        "--client-id",
        dev.CLIENT_ID,
        f"--client-secret={server.secret}",
        env=server.env(TOKENBRIDGE_CLIENT_ID="nobody", TOKENBRIDGE_CLIENT_SECRET="wrong"),
    )
    assert proc.returncode == 0, proc.stderr


def test_usage_errors_exit_2(server):
    no_subject = server.exchange("--issuer", server.base)
    assert no_subject.returncode == 2 and "needs --subject-token" in no_subject.stderr
    no_endpoint = server.exchange("--grant", "client_credentials")
    assert no_endpoint.returncode == 2 and "--token-endpoint" in no_endpoint.stderr
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBRIDGE_")}
    no_client = server.exchange("--issuer", server.base, "--grant", "client_credentials", env=bare_env)
    assert no_client.returncode == 2 and "no client credentials" in no_client.stderr


def test_unreachable_endpoint_and_wrong_issuer_exit_1(server):
    down = server.exchange(
        "--token-endpoint", f"http://127.0.0.1:{free_port()}/oauth2/token", "--grant", "client_credentials"
    )
    assert down.returncode == 1 and "cannot reach" in down.stderr
    wrong = server.exchange("--issuer", server.base + "/other", "--grant", "client_credentials")
    assert wrong.returncode == 1 and "HTTP 404" in wrong.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("extra", [[], ["--grant", "jwt-bearer"], ["--show-secret"]])
def test_curl_command_runs_and_gets_a_token(server, extra):
    args = [
        "--issuer",
        server.base,
        "--subject-token",
        server.mint("--sub", "dave"),
        "--audience",
        dev.API_AUDIENCE,
        "--scope",
        "read write",
        "--curl",
        *extra,
    ]
    printed = server.exchange(*args)
    assert printed.returncode == 0, printed.stderr
    if "--show-secret" in extra:
        assert server.secret in printed.stdout
        env = {k: v for k, v in server.env().items() if k != "TOKENBRIDGE_CLIENT_SECRET"}
    else:
        assert server.secret not in printed.stdout and '"$TOKENBRIDGE_CLIENT_SECRET"' in printed.stdout
        env = server.env()
    ran = subprocess.run(["sh", "-c", printed.stdout], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0, ran.stderr
    body = json.loads(ran.stdout)
    assert server.verify(body["access_token"])["sub"] == "dave" and body["scope"] == "read write"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_client_secret_post(server):
    printed = server.exchange(
        "--token-endpoint",
        server.base + "/oauth2/token",
        "--grant",
        "client_credentials",
        "--auth-method",
        "client_secret_post",
        "--curl",
    )
    assert '--data-urlencode client_secret="$TOKENBRIDGE_CLIENT_SECRET"' in printed.stdout
    ran = subprocess.run(["sh", "-c", printed.stdout], capture_output=True, text=True, env=server.env())
    assert json.loads(ran.stdout)["error"] == "invalid_client"  # the dev client is registered for basic


def test_basic_credentials_are_form_urlencoded():
    from tokenbridge_cli.commands.exchange import basic_header

    assert base64.b64decode(basic_header("a b", "p:%+").split()[1]).decode() == "a+b:p%3A%25%2B"


@pytest.mark.cluster
def test_credentials_from_a_secret_in_the_cluster(server, control_plane, tmp_path):
    """--from-secret reads client_id, client_secret and token_endpoint with the kubeconfig; --curl prints the
    kubectl command that fetches the secret, and that runs too."""
    namespace = "tokenbridge-cli-exchange"
    control_plane.kubectl("create", "namespace", namespace, check=False)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "dev-creds", "namespace": namespace},
        "stringData": {
            "client_id": dev.CLIENT_ID,
            "client_secret": server.secret,
            "token_endpoint": server.base + "/oauth2/token",
        },
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(secret))
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBRIDGE_")}
    kubeconfig = str(control_plane.kubeconfig)
    proc = server.exchange(
        "--from-secret",
        f"{namespace}/dev-creds",
        "--kubeconfig",
        kubeconfig,
        "--subject-token",
        server.mint("--sub", "erin"),
        env=bare_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert server.verify(proc.stdout.strip())["sub"] == "erin"
    missing = server.exchange(
        "--from-secret", f"{namespace}/nope", "--kubeconfig", kubeconfig, "--grant", "client_credentials", env=bare_env
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    if shutil.which("curl"):
        printed = server.exchange(
            "--from-secret",
            f"{namespace}/dev-creds",
            "--kubeconfig",
            kubeconfig,
            "--grant",
            "client_credentials",
            "--curl",
            env=bare_env,
        )
        assert server.secret not in printed.stdout and "kubectl get secret" in printed.stdout
        env = {
            **bare_env,
            "KUBECONFIG": kubeconfig,
            "PATH": f"{control_plane.bin}{os.pathsep}{bare_env.get('PATH', '')}",
        }
        ran = subprocess.run(["sh", "-c", printed.stdout], capture_output=True, text=True, env=env)
        assert ran.returncode == 0, ran.stderr
        assert server.verify(json.loads(ran.stdout)["access_token"])["sub"] == dev.CLIENT_ID
    control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
