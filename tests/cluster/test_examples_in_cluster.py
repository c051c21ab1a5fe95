"""The per-provider examples (examples/<provider>/) are ready to apply: the real API server admits every manifest
unchanged (server-side dry run, so no operator ever reconciles them), and each folder is complete.

The folder checks need no cluster and run with the unit tests; the dry runs are marked ``cluster``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tokenbridge import api

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROVIDERS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name not in ("valid", "invalid"))
FILES = [f for d in PROVIDERS for f in sorted(d.glob("*.yaml"))]
NAMESPACE = "tokenbridge-provider-examples"
IDP_KINDS = (api.KIND_IDP, api.KIND_CLUSTER_IDP)
# kubectl reads YAML 1.1: a bare y or n key would silently become a boolean
YAML11_BOOL_KEY = re.compile(r"^\s*(-\s+)?(y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)\s*:", re.M)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def missing(expected, actual, where: str = "") -> list[str]:
    """Paths in ``expected`` that ``actual`` lacks or changed (defaults the server adds are fine)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [where or "."]
        return [p for k, v in expected.items() for p in missing(v, actual.get(k), f"{where}.{k}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [where]
        return [
            p for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in missing(e, a, f"{where}[{i}]")
        ]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def test_there_is_a_folder_per_provider():
    assert {p.name for p in PROVIDERS} >= {
        "okta",
        "entra-single-tenant",
        "entra-multi-tenant",
        "auth0",
        "kubernetes-serviceaccount",
        "generic-oidc",
    }


@pytest.mark.parametrize("folder", PROVIDERS, ids=lambda p: p.name)
def test_folder_has_an_idp_an_application_using_it_and_a_readme(folder):
    docs = [d for f in sorted(folder.glob("*.yaml")) for d in documents(f)]
    idps = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in IDP_KINDS}
    apps = [d for d in docs if d["kind"] == api.KIND_APP]
    assert idps and apps
    for app in apps:
        for ref in app["spec"].get("identityProviders", []):
            assert (ref.get("kind", api.KIND_IDP), ref["name"]) in idps, f"{app['metadata']['name']}: {ref}"
    for doc in docs:
        assert "namespace" not in doc["metadata"], "applied with -n, like the other examples"
    readme = (folder / "README.md").read_text()
    secret = apps[0]["spec"]["credentials"]["secretName"]
    assert "tokenbridge exchange" in readme and "curl" in readme and secret in readme
    assert f"examples/{folder.name}/" in readme, "the README says how to apply its folder"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_bare_yaml11_boolean_keys(path):
    assert not YAML11_BOOL_KEY.findall(path.read_text())


@pytest.fixture(scope="module")
def namespace(control_plane):
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    # Pod admission looks the ServiceAccount up, and a dry run creates nothing: create them for real.
    for path in FILES:
        for doc in documents(path):
            if doc["kind"] == "ServiceAccount":
                control_plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(doc))
    yield NAMESPACE
    control_plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def admit(cp, namespace: str, path) -> list[dict]:
    """The objects the API server would store for ``path`` (server-side dry-run apply); fails if it refuses any."""
    proc = cp.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager", "examples-test",
        "-n", namespace, "-f", str(path), "-o", "json", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{path} was refused:\n{proc.stderr}"
    out = json.loads(proc.stdout)
    return out["items"] if out.get("kind") == "List" else [out]


@pytest.mark.cluster
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_is_admitted_unchanged(control_plane, namespace, path):
    admitted = admit(control_plane, namespace, path)
    sent = documents(path)
    assert [(d["kind"], d["metadata"]["name"]) for d in admitted] == [(d["kind"], d["metadata"]["name"]) for d in sent]
    for doc, stored in zip(sent, admitted, strict=True):
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        assert missing(body, stored) == [], f"{path.name} {doc['kind']} was pruned or rewritten"


@pytest.mark.cluster
def test_tokenbridge_dev_manifests_are_admitted_unchanged(control_plane, namespace, tmp_path):
    """What ``tokenbridge dev`` writes is valid for a cluster too (its YAML quotes the JWK's "y")."""
    from tokenbridge_cli.commands import dev

    dev.prepare(tmp_path)
    path = tmp_path / dev.MANIFEST_FILE
    admitted = admit(control_plane, namespace, path)
    for doc, stored in zip(documents(path), admitted, strict=True):
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "stringData")}
        assert missing(body, stored) == [], doc["kind"]
