"""The CRDs against a real kube-apiserver: they install, every valid example is admitted unchanged, every invalid
example is refused with the message its ``# expect:`` lines name, the transition rules hold, and kubectl shows
the printer columns.

Everything created here is deleted again at the end of the module, so that an operator started by a later test
never reconciles (and tries to fetch) the example identity providers.

Not named test_crds.py: tests/unit/test_crds.py has that basename, and without __init__.py files in tests/ pytest
refuses two test modules of one name in one run.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from tokenbridge import api

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
VALID = sorted((REPO / "examples" / "valid").glob("*.yaml"))
INVALID = sorted((REPO / "examples" / "invalid").glob("*.yaml"))
EXAMPLES_NS = "tokenbridge-examples"
INVALID_NS = "tokenbridge-crd-invalid"
SCRATCH_NS = "tokenbridge-crd-scratch"
CLUSTER_SCOPED = {api.KIND_CLUSTER_IDP}


def load(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


class Kubectl:
    """control_plane.kubectl with a discovery cache of our own: the fixture's kubectl calls may have cached
    discovery before the CRDs existed, and short names (idp, cidp) are resolved from that cache."""

    def __init__(self, control_plane, cache_dir: Path):
        self.cp = control_plane
        self.cache = str(cache_dir)

    def __call__(self, *args: str, input: str | None = None, check: bool = True):
        return self.cp.kubectl("--cache-dir", self.cache, *args, input=input, check=check)

    def apply(self, manifest: str | dict, namespace: str, check: bool = True):
        # JSON, not yaml.safe_dump: PyYAML writes the JWK members y and n bare, which kubectl reads as booleans
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self(
            "apply",
            "--server-side",
            "--field-manager",
            "crd-tests",
            "-n",
            namespace,
            "-f",
            "-",
            input=text,
            check=check,
        )

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict:
        ns = ["-n", namespace] if namespace else []
        return json.loads(self("get", resource, name, *ns, "-o", "json").stdout)

    def exists(self, resource: str, name: str, namespace: str | None = None) -> bool:
        ns = ["-n", namespace] if namespace else []
        proc = self("get", resource, name, *ns, "-o", "name", "--ignore-not-found", check=False)
        assert proc.returncode == 0, proc.stderr
        return bool(proc.stdout.strip())


@pytest.fixture(scope="module")
def kc(control_plane, tmp_path_factory):
    control_plane.install_crds()  # idempotent; the session fixture has normally done it already
    k = Kubectl(control_plane, tmp_path_factory.mktemp("kubectl-cache"))
    for ns in (EXAMPLES_NS, INVALID_NS, SCRATCH_NS):
        k("create", "namespace", ns, check=False)
        assert k.exists("namespace", ns)
    cluster_names = [load(p)["metadata"]["name"] for p in VALID + INVALID if load(p)["kind"] in CLUSTER_SCOPED]
    try:
        yield k
    finally:
        for ns in (EXAMPLES_NS, INVALID_NS, SCRATCH_NS):
            k("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
        for name in cluster_names + [n for n in _scratch_cluster_names]:
            k("delete", "clusteridentityprovider", name, "--ignore-not-found", check=False)


_scratch_cluster_names: list[str] = []


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def subset(expected, actual, path="spec") -> list[str]:
    """Paths where ``actual`` lacks or differs from ``expected`` (defaults may add fields)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [path]
        return [
            p
            for k, v in expected.items()
            for p in ([f"{path}.{k}"] if k not in actual else subset(v, actual[k], f"{path}.{k}"))
        ]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [path]
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in subset(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [path]


# ------------------------------------------------------------------------------------------ installation
def test_all_crds_are_established(kc):
    names = [load(p)["metadata"]["name"] for p in sorted(CRD_DIR.glob("*.yaml"))]
    assert len(names) == 3
    for name in names:
        crd = kc.get("customresourcedefinition", name)
        conds = {c["type"]: c for c in crd["status"]["conditions"]}
        assert conds["Established"]["status"] == "True", conds
        assert conds["NamesAccepted"]["status"] == "True", conds
        assert "NonStructuralSchema" not in conds, conds["NonStructuralSchema"]["message"]
        assert crd["status"]["acceptedNames"]["categories"] == ["tokenbridge"]
    resources = kc("api-resources", "--api-group", api.GROUP, "-o", "wide").stdout
    for short, plural in (("idp", api.PLURAL_IDP), ("cidp", api.PLURAL_CLUSTER_IDP), ("oauthapp", api.PLURAL_APP)):
        line = next(line for line in resources.splitlines() if line.startswith(plural + " "))
        assert re.search(rf"\s{short}\s", line), line


def test_install_is_idempotent(control_plane, kc):
    control_plane.install_crds()
    assert kc.exists("customresourcedefinition", f"{api.PLURAL_IDP}.{api.GROUP}")


# ------------------------------------------------------------------------------------------ examples
@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_is_accepted_unchanged(kc, path):
    doc = load(path)
    proc = kc("apply", "--server-side", "--field-manager", "crd-tests", "-n", EXAMPLES_NS, "-f", str(path), check=False)
    assert proc.returncode == 0, f"{path.name} was refused:\n{proc.stderr}"
    ns = None if doc["kind"] in CLUSTER_SCOPED else EXAMPLES_NS
    stored = kc.get(f"{doc['kind'].lower()}s.{api.GROUP}", doc["metadata"]["name"], ns)
    # nothing in the manifest was pruned or rewritten (a bare YAML 1.1 key such as y would be)
    assert subset(doc["spec"], stored["spec"]) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_refused_with_its_message(kc, path):
    doc = load(path)
    expects = re.findall(r"^# expect: (.+)$", path.read_text(), re.M)
    assert expects
    proc = kc("apply", "--server-side", "--field-manager", "crd-tests", "-n", INVALID_NS, "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was admitted"
    for text in expects:
        assert text.strip() in proc.stderr, f"{path.name}: expected {text.strip()!r} in:\n{proc.stderr}"
    ns = None if doc["kind"] in CLUSTER_SCOPED else INVALID_NS
    assert not kc.exists(f"{doc['kind'].lower()}s.{api.GROUP}", doc["metadata"]["name"], ns)


# ------------------------------------------------------------------------------------------ defaults and rules
def idp(name: str, **spec) -> dict:
    base = {
        "type": "OIDC",
        "wellKnownURL": "https://idp.example.com/.well-known/openid-configuration",
        "allowedAudiences": ["api"],
    }
    base.update(spec)
    return {"apiVersion": api.API_VERSION, "kind": api.KIND_IDP, "metadata": {"name": name}, "spec": base}


def app(name: str, secret: str, **spec) -> dict:
    base = {"grantTypes": [api.GRANT_CLIENT_CREDENTIALS], "credentials": {"secretName": secret}}
    base.update(spec)
    return {"apiVersion": api.API_VERSION, "kind": api.KIND_APP, "metadata": {"name": name}, "spec": base}


def test_defaults_are_applied(kc):
    name = unique("defaults")
    kc.apply(idp(name, type="Kubernetes", kubernetes={}), SCRATCH_NS)
    s = kc.get("idp", name, SCRATCH_NS)["spec"]
    assert s["allowedAlgorithms"] == list(api.DEFAULT_ALLOWED_ALGORITHMS)
    assert s["clockSkew"] == "60s"
    assert s["allowInsecureHTTP"] is False
    assert s["kubernetes"] == {"useOperatorCredentials": True}
    assert "maxTokenAge" not in s

    kc.apply(app(name, "s1", grantTypes=[api.GRANT_TOKEN_EXCHANGE], identityProviders=[{"name": name}]), SCRATCH_NS)
    s = kc.get("oauthapp", name, SCRATCH_NS)["spec"]
    assert s["accessTokenLifetime"] == "15m"
    assert s["tokenEndpointAuthMethod"] == api.AUTH_METHOD_BASIC
    assert s["identityProviders"] == [{"kind": api.KIND_IDP, "name": name}]


def test_kubernetes_idp_for_the_test_clusters_own_issuer_is_accepted(kc, control_plane):
    name = unique("sa-issuer")
    kc.apply(
        idp(
            name,
            type="Kubernetes",
            issuer=control_plane.issuer,
            wellKnownURL=control_plane.issuer + "/.well-known/openid-configuration",
            allowedAudiences=["tokenbridge"],
            allowedAlgorithms=["ES256"],
        ),
        SCRATCH_NS,
    )
    assert kc.get("idp", name, SCRATCH_NS)["spec"]["issuer"] == control_plane.issuer


def test_http_needs_allow_insecure_and_other_schemes_never_pass(kc):
    name = unique("http")
    http = {"wellKnownURL": "http://idp.dev.svc/.well-known/openid-configuration"}
    refused = kc.apply(idp(name, **http), SCRATCH_NS, check=False)
    assert refused.returncode != 0 and "wellKnownURL must be an https:// URL" in refused.stderr
    kc.apply(idp(name, allowInsecureHTTP=True, **http), SCRATCH_NS)
    # turning the opt-in off again while the URL is http:// is refused as well
    refused = kc.apply(idp(name, allowInsecureHTTP=False, **http), SCRATCH_NS, check=False)
    assert refused.returncode != 0 and "wellKnownURL must be an https:// URL" in refused.stderr
    ftp = kc.apply(
        idp(unique("ftp"), allowInsecureHTTP=True, tokenEndpoint="ftp://idp.example.com/token"), SCRATCH_NS, check=False
    )
    assert ftp.returncode != 0 and "tokenEndpoint must be an https:// URL" in ftp.stderr


def test_kubernetes_block_cannot_be_added_to_another_type_later(kc):
    name = unique("okta")
    kc.apply(idp(name, type="Okta"), SCRATCH_NS)
    proc = kc.apply(idp(name, type="Okta", kubernetes={"useOperatorCredentials": False}), SCRATCH_NS, check=False)
    assert proc.returncode != 0 and "kubernetes may only be set when type is Kubernetes" in proc.stderr


def test_credentials_secret_name_is_immutable(kc):
    name = unique("immutable")
    kc.apply(app(name, "first-secret"), SCRATCH_NS)
    proc = kc.apply(app(name, "second-secret"), SCRATCH_NS, check=False)
    assert proc.returncode != 0
    assert "credentials.secretName is immutable" in proc.stderr, proc.stderr
    assert kc.get("oauthapp", name, SCRATCH_NS)["spec"]["credentials"]["secretName"] == "first-secret"
    # other changes still go through
    kc.apply(app(name, "first-secret", scopes=["read"]), SCRATCH_NS)
    assert kc.get("oauthapp", name, SCRATCH_NS)["spec"]["scopes"] == ["read"]
    # and a plain patch is held to the same rule as apply
    proc = kc(
        "patch",
        "oauthapp",
        name,
        "-n",
        SCRATCH_NS,
        "--type=merge",
        "-p",
        '{"spec":{"credentials":{"secretName":"third"}}}',
        check=False,
    )
    assert proc.returncode != 0 and "credentials.secretName is immutable" in proc.stderr


def patch_status(kc, resource: str, name: str, namespace: str | None, patch, *, kind="merge", check=True):
    ns = ["-n", namespace] if namespace else []
    return kc(
        "patch", resource, name, *ns, "--subresource=status", f"--type={kind}", "-p", json.dumps(patch), check=check
    )


def test_status_client_id_is_immutable_once_set(kc):
    name = unique("clientid")
    kc.apply(app(name, "s"), SCRATCH_NS)
    patch_status(kc, "oauthapp", name, SCRATCH_NS, {"status": {"observedGeneration": 1}})  # unset: any value ok
    patch_status(kc, "oauthapp", name, SCRATCH_NS, {"status": {"clientID": "tb-0123456789abcdef01234567"}})
    proc = patch_status(kc, "oauthapp", name, SCRATCH_NS, {"status": {"clientID": "tb-other"}}, check=False)
    assert proc.returncode != 0 and "status.clientID is immutable once set" in proc.stderr, proc.stderr
    proc = patch_status(
        kc, "oauthapp", name, SCRATCH_NS, [{"op": "remove", "path": "/status/clientID"}], kind="json", check=False
    )
    assert proc.returncode != 0 and "status.clientID is immutable once set" in proc.stderr, proc.stderr
    # the same clientID with other status changes is fine
    digest = "sha256:" + "ab" * 32
    patch_status(
        kc,
        "oauthapp",
        name,
        SCRATCH_NS,
        {"status": {"clientID": "tb-0123456789abcdef01234567", "clientSecretHash": digest}},
    )
    st = kc.get("oauthapp", name, SCRATCH_NS)["status"]
    assert st["clientID"] == "tb-0123456789abcdef01234567" and st["clientSecretHash"] == digest
    proc = patch_status(kc, "oauthapp", name, SCRATCH_NS, {"status": {"clientSecretHash": "md5:abc"}}, check=False)
    assert proc.returncode != 0 and "status.clientSecretHash: Invalid value" in proc.stderr


def test_status_is_a_subresource(kc):
    name = unique("subresource")
    kc.apply(app(name, "s"), SCRATCH_NS)
    # a status written through the main resource is ignored
    kc("patch", "oauthapp", name, "-n", SCRATCH_NS, "--type=merge", "-p", '{"status":{"clientID":"tb-x"}}')
    assert "clientID" not in kc.get("oauthapp", name, SCRATCH_NS).get("status", {})


def ready(message: str, status: str = "True") -> dict:
    return {
        "type": "Ready",
        "status": status,
        "reason": "Ready" if status == "True" else "NotReady",
        "message": message,
        "lastTransitionTime": "2026-01-02T03:04:05Z",
        "observedGeneration": 1,
    }


def table(text: str) -> tuple[list[str], list[str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return re.split(r"\s{2,}", lines[0].strip()), lines[1:]


def test_printer_columns_of_identity_providers(kc):
    name = unique("columns")
    kc.apply(idp(name, type="Auth0"), SCRATCH_NS)
    header, rows = table(kc("get", "idp", "-n", SCRATCH_NS).stdout)
    assert header == ["NAME", "READY", "TYPE", "ISSUER", "AGE"]
    patch_status(
        kc,
        "idp",
        name,
        SCRATCH_NS,
        {
            "status": {
                "issuer": "https://example-tenant.us.auth0.com/",
                "keyCount": 2,
                "stale": False,
                "conditions": [ready("2 keys from https://example-tenant.us.auth0.com/.well-known/jwks.json")],
            }
        },
    )
    header, rows = table(kc("get", "idp", name, "-n", SCRATCH_NS).stdout)
    assert header == ["NAME", "READY", "TYPE", "ISSUER", "AGE"]
    assert re.split(r"\s{2,}", rows[0].strip())[:4] == [name, "True", "Auth0", "https://example-tenant.us.auth0.com/"]
    header, rows = table(kc("get", "idp", name, "-n", SCRATCH_NS, "-o", "wide").stdout)
    assert header == ["NAME", "READY", "TYPE", "ISSUER", "KEYS", "STALE", "AGE", "MESSAGE"]
    assert rows[0].rstrip().endswith("2 keys from https://example-tenant.us.auth0.com/.well-known/jwks.json")

    cname = unique("columns")
    _scratch_cluster_names.append(cname)
    cluster = idp(cname, type="MicrosoftEntraID")
    cluster["kind"] = api.KIND_CLUSTER_IDP
    kc.apply(cluster, SCRATCH_NS)
    patch_status(kc, "cidp", cname, None, {"status": {"conditions": [ready("discovery failed: timeout", "False")]}})
    header, rows = table(kc("get", "cidp", cname, "-o", "wide").stdout)
    assert header == ["NAME", "READY", "TYPE", "ISSUER", "KEYS", "STALE", "AGE", "MESSAGE"]
    assert rows[0].split()[:3] == [cname, "False", "MicrosoftEntraID"]
    assert rows[0].rstrip().endswith("discovery failed: timeout")


def test_printer_columns_of_oauth_applications(kc):
    name = unique("columns")
    kc.apply(app(name, "columns-secret"), SCRATCH_NS)
    patch_status(
        kc,
        "oauthapp",
        name,
        SCRATCH_NS,
        {
            "status": {
                "clientID": "tb-feedfacefeedfacefeedface",
                "conditions": [ready("credentials in Secret columns-secret")],
            }
        },
    )
    header, rows = table(kc("get", "oauthapp", name, "-n", SCRATCH_NS).stdout)
    assert header == ["NAME", "READY", "CLIENT ID", "AGE"]
    assert rows[0].split()[:3] == [name, "True", "tb-feedfacefeedfacefeedface"]
    header, rows = table(kc("get", "oauthapp", name, "-n", SCRATCH_NS, "-o", "wide").stdout)
    assert header == ["NAME", "READY", "CLIENT ID", "SECRET", "AGE", "MESSAGE"]
    assert rows[0].rstrip().endswith("credentials in Secret columns-secret")


def test_category_lists_all_tokenbridge_kinds(kc):
    name = unique("category")
    kc.apply(idp(name), SCRATCH_NS)
    kc.apply(app(name, "s"), SCRATCH_NS)
    out = kc("get", "tokenbridge", "-n", SCRATCH_NS, "-o", "name").stdout.split()
    assert f"identityprovider.{api.GROUP}/{name}" in out
    assert f"oauthapplication.{api.GROUP}/{name}" in out


def test_explain_shows_field_descriptions(kc):
    out = kc("explain", "idp.spec.allowedAlgorithms").stdout
    assert "Asymmetric JWS algorithms" in out
    out = kc("explain", "oauthapp.spec.credentials.secretName").stdout
    assert "Immutable" in out
    out = kc("explain", "idp.spec.claimMappings").stdout
    assert "InvalidExpression" in out  # the policy fields document how a bad expression shows
