"""``tokenbridge operator`` and ``tokenbridge serve --kubernetes`` run for real against the test control plane, one
namespace each, with small helpers over kubectl and the token endpoint: what the end-to-end tests deploy."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.support.processes import free_port, stop_group
from tokenbridge import api

TOKENBRIDGE = str(Path(sys.executable).parent / "tokenbridge")


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [TOKENBRIDGE, *args],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class Stack:
    """Operator + server for one namespace, and small helpers over kubectl and the token endpoint."""

    def __init__(self, cp, ns: str, base: str):
        self.cp, self.ns, self.base = cp, ns, base

    def apply(self, doc: dict) -> None:
        self.cp.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(doc))

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.cp.kubectl("get", kind, name, "-n", self.ns, "-o", "json").stdout)

    def ready(self, kind: str, name: str) -> bool:
        conditions = self.get(kind, name).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def credentials(self, secret: str) -> dict[str, str]:
        data = self.get("secret", secret)["data"]
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def sa_token(self, sa: str, audience: str) -> str:
        return self.cp.kubectl(
            "create", "token", sa, "-n", self.ns, "--audience", audience, "--duration", "10m"
        ).stdout.strip()

    def exchange(self, creds: dict, subject: str, **extra) -> httpx.Response:
        form = {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            **extra,
        }
        return httpx.post(
            creds["token_endpoint"], data=form, auth=(creds["client_id"], creds["client_secret"]), timeout=10
        )


@contextlib.contextmanager
def deployed(cp, logs: Path, prefix: str, **env_extra: str):
    """A fresh namespace with ``tokenbridge operator`` and ``tokenbridge serve --kubernetes`` (2 workers) for it;
    their logs are printed when the block fails; both stopped and the namespace deleted afterwards."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "KUBECONFIG": str(cp.kubeconfig),
        "TOKENBRIDGE_PUBLIC_ISSUER": base,
        "TOKENBRIDGE_SIGNING_SECRET_NAMESPACE": ns,
        "TOKENBRIDGE_SIGNING_SECRET_NAME": "signing-keys",
        "TOKENBRIDGE_METRICS_PORT": str(free_port()),
        **env_extra,
    }
    operator = start(["operator", "--kubeconfig", str(cp.kubeconfig), "--namespace", ns], env, logs / "operator.log")
    server = start(
        ["serve", "--kubernetes", "--kubeconfig", str(cp.kubeconfig), "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env,
        logs / "server.log",
    )
    try:
        yield Stack(cp, ns, base)
    except BaseException:
        for name in ("operator.log", "server.log"):
            sys.stderr.write(f"--- {name}\n{(logs / name).read_text(errors='replace')[-4000:]}\n")
        raise
    finally:
        stop_group(server)
        stop_group(operator)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
