"""Ship what is tested: the wheel built from the image's build context, installed with its own dependencies only
(no dev extras, versions from ``constraints.txt``) into a fresh virtualenv outside the repository, must serve a
token exchange with the default worker class. The dev extras once hid that gunicorn's gevent worker needs
``packaging`` (gunicorn lists it only under its ``gevent`` extra): ``tokenbridge serve`` exited at once.

pip resolves from its cache or the package index, as ``pip install`` of the wheel would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tests.support.dockerfile import copy_build_context
from tests.support.exchange import basic, standalone_documents
from tests.support.idp import IdP
from tests.support.processes import free_port, stop_group
from tokenbridge import api

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = "constraints.txt"


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 300)
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    """What the Dockerfile copies into its build stage, constraints included."""
    context = tmp_path_factory.mktemp("wheel") / "context"
    assert CONSTRAINTS in copy_build_context(context), f"the Dockerfile must COPY {CONSTRAINTS}"
    return context


@pytest.fixture(scope="module")
def wheel(context) -> Path:
    dist = context.parent / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(context)])
    (built,) = dist.glob("tokenbridge-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(context, wheel) -> Path:
    """A new virtualenv with the wheel and its runtime dependencies, pinned by the constraints file."""
    venv = context.parent / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    # this venv's pip, pointed at the new interpreter: it resolves and installs for that environment only
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "-q", "-c", str(context / CONSTRAINTS), str(wheel)], timeout=600)
    run([*pip, "check"])
    return venv


def test_wheel_metadata_is_pep_639(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(whl.read(metadata_name).decode())
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence, names
        assert b"Version 2.0, January 2004" in whl.read(licence[0])
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert "License" not in metadata, "PEP 639: the License field is replaced by License-Expression"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert all(u.startswith("https://") for u in urls.values())
    assert not [c for c in metadata.get_all("Classifier") if c.startswith("License ::")], (
        "PEP 639: no license classifiers next to License-Expression"
    )
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("gunicorn[gevent]") for r in requires), requires


def test_installed_wheel_serves_a_token_exchange_with_the_default_worker_class(venv, tmp_path):
    bin_dir = venv / "bin"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKENBRIDGE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["TOKENBRIDGE_PUBLIC_ISSUER"] = ""
    # the installed code, not the repository's; and no dev extras came along
    code = (
        "import importlib.util, sys, tokenbridge_cli.cli, tokenbridge_exchange.serve, tokenbridge_operator.main; "
        "assert tokenbridge_cli.cli.__file__.startswith(sys.prefix), tokenbridge_cli.cli.__file__; "
        "assert importlib.util.find_spec('pytest') is None, 'dev extras installed'"
    )
    run([str(bin_dir / "python"), "-c", code], cwd=tmp_path, env=env, timeout=60)

    idp = IdP()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "config.yaml").write_text(yaml.safe_dump_all(standalone_documents(idp, apps=1)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:  # no --worker-class: the default is what ships
        proc = subprocess.Popen(
            [
                str(bin_dir / "tokenbridge"),
                "serve",
                "--manifests",
                str(manifests),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert "Using worker: gevent" in log_path.read_text()
        now = int(time.time())
        issued = httpx.post(
            base + "/oauth2/token",
            headers=basic("client-0", "pw"),
            data={
                "grant_type": api.GRANT_TOKEN_EXCHANGE,
                "subject_token_type": api.TOKEN_TYPE_JWT,
                "subject_token": idp.token(aud="api://tb", iat=now, exp=now + 300),
                "audience": "https://api.example.test",
            },
        )
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        header = jwt.get_unverified_header(token)
        key = jwt.PyJWKSet.from_dict(httpx.get(base + "/.well-known/jwks.json").json())[header["kid"]]
        claims = jwt.decode(token, key, algorithms=[header["alg"]], audience="https://api.example.test", issuer=base)
        assert claims["sub"] == "alice" and claims["client_id"] == "client-0" and claims["idp"] == "apps/corp"
    finally:
        stop_group(proc)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
    version = run([str(bin_dir / "tokenbridge"), "--version"], cwd=tmp_path, env=env, timeout=60)
    assert version.stdout.strip() == "tokenbridge 0.1.0"
