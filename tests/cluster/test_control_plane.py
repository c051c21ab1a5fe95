"""The test control plane is real: versions are stamped, garbage collection runs, and the ServiceAccount issuer
is an external IdP whose TokenRequest tokens verify through its own discovery document."""

import json
import ssl
import time
import urllib.request

import jwt
import pytest

from tokenbridge.jwks import parse_jwks

pytestmark = pytest.mark.cluster


def test_versions_are_stamped(control_plane):
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"].startswith("v1.")
    assert out["serverVersion"]["gitVersion"] == out["clientVersion"]["gitVersion"]


def test_owner_reference_garbage_collection(control_plane):
    kubectl = control_plane.kubectl
    kubectl("create", "configmap", "gc-owner")
    uid = kubectl("get", "configmap", "gc-owner", "-o", "jsonpath={.metadata.uid}").stdout
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "gc-owned",
                    "namespace": "default",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-owner", "uid": uid, "controller": True}
                    ],
                },
            }
        ),
    )
    kubectl("delete", "configmap", "gc-owner")
    deadline = time.monotonic() + 30
    while kubectl("get", "configmap", "gc-owned", check=False).returncode == 0:
        assert time.monotonic() < deadline, "kube-controller-manager did not garbage-collect the owned object"
        time.sleep(0.5)


def test_token_request_verifies_against_issuer_discovery(control_plane):
    kubectl = control_plane.kubectl
    kubectl("create", "namespace", "idp-check")
    kubectl("create", "serviceaccount", "workload", "-n", "idp-check")
    token = kubectl(
        "create", "token", "workload", "-n", "idp-check", "--audience", "tokenbridge-test", "--duration", "10m"
    ).stdout.strip()

    discovery = control_plane.get_json("/.well-known/openid-configuration")
    assert discovery["issuer"] == control_plane.issuer
    ctx = ssl.create_default_context(cafile=str(control_plane.ca_file))
    ctx.load_cert_chain(*map(str, control_plane.admin_cert))
    with urllib.request.urlopen(discovery["jwks_uri"], context=ctx, timeout=5) as r:
        keys = parse_jwks(json.load(r), discovery["id_token_signing_alg_values_supported"])
    header = jwt.get_unverified_header(token)
    (key,) = keys.candidates(header.get("kid"), header["alg"])
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience="tokenbridge-test",
        issuer=discovery["issuer"],
        options={"require": ["exp", "iat", "sub"]},
    )
    assert claims["sub"] == "system:serviceaccount:idp-check:workload"
    assert claims["kubernetes.io"]["namespace"] == "idp-check"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key.key, algorithms=[header["alg"]], audience="someone-else")


def test_make_cluster_up_and_down_script(tmp_path, control_plane):
    """`make cluster-up`/`cluster-down` run this program with a relative --dir; it must leave nothing running."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    program = [sys.executable, "-m", "tests.support.controlplane"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # make runs it from the root
    up = subprocess.run(
        [*program, "up", "--dir", "cp"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        kubeconfig = tmp_path / "cp" / "admin.kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        out = subprocess.run(
            [str(control_plane.bin / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "crd", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "oauthapplications.tokenbridge.dev" in out.stdout, out.stderr
        pids = [
            int((tmp_path / "cp" / f"{name}.pid").read_text())
            for name in ("etcd", "kube-apiserver", "kube-controller-manager")
        ]
    finally:
        down = subprocess.run(
            [*program, "down", "--dir", "cp"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
