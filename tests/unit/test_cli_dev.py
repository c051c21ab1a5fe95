"""``tokenbridge dev``: the files it writes (and reuses), the tokens it mints, what it refuses, and that stopping
it stops the server it started."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tokenbridge import api
from tokenbridge.jwks import parse_jwks
from tokenbridge_cli.commands import dev

TB = str(Path(sys.executable).parent / "tokenbridge")


def docs(directory: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((directory / dev.MANIFEST_FILE).read_text()) if d}


def test_prepare_writes_a_private_key_and_matching_manifests(tmp_path):
    secret = dev.prepare(tmp_path)
    assert stat.S_IMODE((tmp_path / dev.KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / dev.MANIFEST_FILE).stat().st_mode) == 0o600
    assert (tmp_path / ".gitignore").read_text().splitlines()[-1] == "*"
    text = (tmp_path / dev.MANIFEST_FILE).read_text()
    assert "DEVELOPMENT ONLY" in text.splitlines()[0]
    assert '"y":' in text, "a bare y: key is a boolean to kubectl (YAML 1.1)"
    found = docs(tmp_path)
    idp, app, secret_doc = found[api.KIND_IDP], found[api.KIND_APP], found["Secret"]
    assert idp["spec"]["issuer"] == dev.DEV_ISSUER and idp["spec"]["allowedAudiences"] == [dev.SUBJECT_AUDIENCE]
    assert set(app["spec"]["grantTypes"]) == set(api.GRANT_TYPES)
    assert app["spec"]["identityProviders"] == [{"name": idp["metadata"]["name"]}]
    assert app["spec"]["credentials"]["secretName"] == secret_doc["metadata"]["name"]
    assert secret_doc["stringData"] == {"client_id": dev.CLIENT_ID, "client_secret": secret}
    # the inline key is the dev issuer's public key: a minted token verifies with it
    keys = parse_jwks(idp["spec"]["jwks"], ["ES256"])
    token = dev.mint(tmp_path, "alice", [dev.SUBJECT_AUDIENCE], 60, {})
    (key,) = keys.candidates(jwt.get_unverified_header(token)["kid"], "ES256")
    claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=dev.SUBJECT_AUDIENCE, issuer=dev.DEV_ISSUER)
    assert claims["sub"] == "alice"


def test_prepare_reuses_the_directory_unless_reset(tmp_path):
    first = dev.prepare(tmp_path)
    key = (tmp_path / dev.KEY_FILE).read_bytes()
    assert dev.prepare(tmp_path) == first and (tmp_path / dev.KEY_FILE).read_bytes() == key
    assert dev.prepare(tmp_path, reset=True) != first and (tmp_path / dev.KEY_FILE).read_bytes() != key
    assert docs(tmp_path)["Secret"]["stringData"]["client_secret"] != first


def test_dev_token_claims_ttl_and_extra_claims(tmp_path):
    dev.prepare(tmp_path)
    before = int(time.time())
    proc = subprocess.run(
        [
            TB,
            "dev",
            "token",
            "--dir",
            str(tmp_path),
            "--sub",
            "bob",
            "--aud",
            "a",
            "--aud",
            "b",
            "--ttl",
            "1h",
            "--claim",
            "email=bob@example.com",
            "--claim",
            'groups=["admins"]',
            "--claim",
            "level=3",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == dev.DEV_ISSUER and claims["sub"] == "bob" and claims["aud"] == ["a", "b"]
    assert claims["email"] == "bob@example.com" and claims["groups"] == ["admins"] and claims["level"] == 3
    assert before <= claims["iat"] and claims["exp"] - claims["iat"] == 3600 and claims["jti"]
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    default = jwt.decode(dev.mint(tmp_path, "x", [dev.SUBJECT_AUDIENCE], 600, {}), options={"verify_signature": False})
    assert default["aud"] == dev.SUBJECT_AUDIENCE


def test_dev_token_refusals(tmp_path):
    missing = subprocess.run([TB, "dev", "token", "--dir", str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 1 and "no dev issuer key" in missing.stderr
    assert "tokenbridge dev --dir" in missing.stderr
    bad_ttl = subprocess.run([TB, "dev", "token", "--ttl", "10 minutes"], capture_output=True, text=True)
    assert bad_ttl.returncode == 2 and "is not a duration" in bad_ttl.stderr
    bad_claim = subprocess.run([TB, "dev", "token", "--claim", "novalue"], capture_output=True, text=True)
    assert bad_claim.returncode == 2 and "NAME=VALUE" in bad_claim.stderr


def test_help_says_development_only():
    for args in (["dev", "--help"], ["dev", "token", "--help"]):
        proc = subprocess.run([TB, *args], capture_output=True, text=True)
        assert proc.returncode == 0 and "DEVELOPMENT ONLY" in proc.stdout and "examples:" in proc.stdout


def test_port_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [TB, "dev", "--port", str(port), "--dir", str(tmp_path)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 1
    assert "DEVELOPMENT ONLY" in proc.stderr and f"127.0.0.1:{port} is already in use" in proc.stderr
    assert f"--port {port + 1}" in proc.stderr


def start_dev(directory: Path) -> tuple[subprocess.Popen, int, str]:
    """``tokenbridge dev`` on a free port; returns once it printed its walkthrough (it then serves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [TB, "dev", "--port", str(port), "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops the server" in line:
            break
    return proc, port, "".join(lines)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stopping_dev_stops_its_server(tmp_path, stop):
    proc, port, walkthrough = start_dev(tmp_path)
    try:
        assert f"http://127.0.0.1:{port}" in walkthrough and "DEVELOPMENT ONLY" in walkthrough
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children
        proc.send_signal(stop)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)


def test_the_walkthrough_runs_as_printed(tmp_path):
    """Copy-paste of the printed commands: mint, exchange, decode, the curl form, and the refusal."""
    proc, port, walkthrough = start_dev(tmp_path)
    try:
        block = walkthrough.split("Try it from another terminal:", 1)[1].split("APIs verify", 1)[0]
        script = "\n".join(line.strip() for line in block.splitlines() if not line.strip().startswith("#"))
        assert "dev token" in script and " exchange " in script and " decode " in script and "--curl" in script
        ran = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        proc.terminate()
        proc.wait(20)
    decoded = ran.stdout.split("Claims:\n", 1)[1].split("Times (UTC):", 1)[0]
    assert json.loads(decoded)["sub"] == "alice" and json.loads(decoded)["iss"] == f"http://127.0.0.1:{port}"
    assert f"curl -sS -X POST http://127.0.0.1:{port}/oauth2/token" in ran.stdout
    assert ran.returncode == 1, "the last command is the refused exchange"
    assert "invalid_grant: the token's aud 'someone-else'" in ran.stderr


def test_the_dev_client_secret_comes_from_the_operators_generator(tmp_path, monkeypatch):
    """Never starting with "-", so the walkthrough's commands can take it as an argument."""
    monkeypatch.setattr(dev, "generate_client_secret", lambda: "from-the-shared-generator")
    assert dev.prepare(tmp_path, reset=True) == "from-the-shared-generator"
    assert docs(tmp_path)["Secret"]["stringData"]["client_secret"] == "from-the-shared-generator"
