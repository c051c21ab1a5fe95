"""The Helm chart against the real test API server: the rendered templates (CRDs excluded: the control_plane fixture
has installed crds/ already) apply with server-side apply and strict field validation, the Deployments' pods pass
the `restricted` Pod Security Standard, and each ServiceAccount can do what its component needs and nothing more
(`kubectl auth can-i --as system:serviceaccount:NS:SA`, plus real requests made as the server).

There is no kubelet or scheduler: Deployments create ReplicaSets and Pods that stay Pending, which is all we need.
Everything created here is deleted at the end of the module.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokenbridge"
ISSUER = "https://tokens.example.com"
SIGNING_SECRET = "tokenbridge-signing-keys"
APP_NS = "tb-chart-app"  # an application namespace
FIELD_MANAGER = "chart-tests"

# name -> (release, namespace, values)
INSTALLS = {
    "cluster": ("tbc", "tb-chart-cluster", {"publicIssuer": ISSUER}),
    "namespace": ("tbn", "tb-chart-namespaced", {"publicIssuer": ISSUER, "rbac": {"scope": "namespace"}}),
    "namespace-cidp": (
        "tbm",
        "tb-chart-namespaced-cidp",
        {"publicIssuer": ISSUER, "rbac": {"scope": "namespace", "clusterIdentityProviders": True}},
    ),
    "full": (
        "tbf",
        "tb-chart-full",
        {
            "publicIssuer": ISSUER,
            "signing": {"secretName": "tbf-keys"},
            "operator": {"replicas": 2, "peering": "tokenbridge"},
            "fetch": {"allowedNetworks": ["10.0.0.1/32"]},
            "server": {
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "hosts": [{"host": "tokens.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                    "tls": [{"secretName": "tokens-tls", "hosts": ["tokens.example.com"]}],
                },
                "podDisruptionBudget": {"enabled": True},
                "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
                "serviceMonitor": {"enabled": True},  # needs the Prometheus Operator's CRD: filtered out below
            },
            "networkPolicy": {
                "enabled": True,
                "serverIngressFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
                ],
            },
        },
    ),
}


def render(helm: str, tmp_path: Path, release: str, namespace: str, values: dict) -> list[dict]:
    path = tmp_path / f"{release}.json"
    path.write_text(json.dumps(values))
    proc = subprocess.run(
        [helm, "template", release, str(CHART), "--namespace", namespace, "--skip-crds", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


class Cluster:
    def __init__(self, control_plane):
        self.cp = control_plane

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        return self.cp.kubectl(*args, input=input, check=check)

    def can(self, sa: tuple[str, str], verb: str, resource: str, namespace: str | None = None, *extra: str) -> bool:
        ns = ["-n", namespace] if namespace else []
        proc = self.kubectl(
            "auth", "can-i", verb, resource, *ns, *extra, "--as", f"system:serviceaccount:{sa[0]}:{sa[1]}", check=False
        )
        answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {proc.stdout}{proc.stderr}"
        return answer == "yes"

    def review(
        self,
        sa: tuple[str, str],
        verb: str,
        *,
        group: str = "",
        resource: str | None = None,
        path: str | None = None,
        groups: list[str] | None = None,
    ) -> bool:
        """A SubjectAccessReview. Unlike `kubectl auth can-i` it works for resources the server does not serve
        (kopf.dev peerings), and with ``groups=[]`` it leaves out the groups every ServiceAccount is in, so only
        bindings to the ServiceAccount itself count."""
        user = f"system:serviceaccount:{sa[0]}:{sa[1]}"
        spec = {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa[0]}", "system:authenticated"]
            if groups is None
            else groups,
        }
        if path:
            spec["nonResourceAttributes"] = {"path": path, "verb": verb}
        else:
            spec["resourceAttributes"] = {"group": group, "resource": resource, "verb": verb}
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        out = self.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
        return json.loads(out.stdout)["status"].get("allowed", False)

    def as_sa(self, sa: tuple[str, str], *args: str, check: bool = False):
        return self.kubectl(*args, "--as", f"system:serviceaccount:{sa[0]}:{sa[1]}", check=check)


@pytest.fixture(scope="module")
def installed(control_plane, helm, tmp_path_factory):
    """Each install's namespace (restricted Pod Security enforced), its rendered manifests applied; cleaned up."""
    cluster = Cluster(control_plane)
    tmp = tmp_path_factory.mktemp("chart-in-cluster")
    results = {}
    created_namespaces = [APP_NS]
    cluster.kubectl("create", "namespace", APP_NS)
    try:
        for name, (release, namespace, values) in INSTALLS.items():
            cluster.kubectl("create", "namespace", namespace)
            created_namespaces.append(namespace)
            cluster.kubectl(
                "label",
                "namespace",
                namespace,
                "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/warn=restricted",
            )
            docs = [d for d in render(helm, tmp, release, namespace, values) if d["kind"] != "ServiceMonitor"]
            proc = cluster.kubectl(
                "apply",
                "--server-side",
                "--field-manager",
                FIELD_MANAGER,
                "--validate=strict",
                "-f",
                "-",
                input="\n---\n".join(json.dumps(d) for d in docs),
                check=False,
            )
            results[name] = (release, namespace, docs, proc)
        yield cluster, results
    finally:
        for release, _namespace, _values in INSTALLS.values():
            cluster.kubectl(
                "delete",
                "clusterrole,clusterrolebinding",
                "-l",
                f"app.kubernetes.io/instance={release}",
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )
        for namespace in created_namespaces:
            cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.parametrize("name", list(INSTALLS))
def test_manifests_apply_server_side(installed, name):
    cluster, results = installed
    release, namespace, docs, proc = results[name]
    assert proc.returncode == 0, proc.stderr
    assert "would violate PodSecurity" not in proc.stderr, proc.stderr
    for doc in docs:
        ns = ["-n", doc["metadata"]["namespace"]] if doc["metadata"].get("namespace") else []
        live = json.loads(
            cluster.kubectl(
                "get",
                f"{doc['kind']}.{doc['apiVersion'].split('/')[0]}" if "/" in doc["apiVersion"] else doc["kind"],
                doc["metadata"]["name"],
                *ns,
                "-o",
                "json",
            ).stdout
        )
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release


@pytest.mark.parametrize("name", ["cluster", "full"])
def test_pods_are_admitted_under_restricted_pod_security(installed, name):
    """The ReplicaSet controller creates the pods (they stay Pending: no scheduler); PodSecurity `restricted` is
    enforced in the namespace, so a non-compliant pod template would leave the ReplicaSet with FailedCreate."""
    cluster, results = installed
    release, namespace, docs, _ = results[name]
    expected = {"server": 2, "operator": 2 if name == "full" else 1}
    deadline = time.monotonic() + 60
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        counts = {
            c: sum(1 for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == c) for c in expected
        }
        if counts == expected:
            break
        time.sleep(0.5)
    else:
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "wide", check=False).stdout
        pytest.fail(f"pods {counts}, expected {expected}; events:\n{events}")
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["serviceAccountName"].startswith(f"{release}-tokenbridge-")


def sas(results, name):
    release, namespace, _, proc = results[name]
    assert proc.returncode == 0, proc.stderr
    return (namespace, f"{release}-tokenbridge-operator"), (namespace, f"{release}-tokenbridge-server"), namespace


def test_cluster_scope_server_permissions(installed):
    cluster, results = installed
    _, server, ns = sas(results, "cluster")
    assert cluster.can(server, "get", f"secrets/{SIGNING_SECRET}", ns)
    assert cluster.can(server, "watch", f"secrets/{SIGNING_SECRET}", ns)
    assert cluster.can(server, "list", f"secrets/{SIGNING_SECRET}", ns)
    assert not cluster.can(server, "get", "secrets/another-secret", ns)
    assert not cluster.can(server, "list", "secrets", ns)
    assert not cluster.can(server, "watch", "secrets", ns)
    assert not cluster.can(server, "get", f"secrets/{SIGNING_SECRET}", APP_NS)
    assert not cluster.can(server, "create", "secrets", ns)
    assert not cluster.can(server, "update", f"secrets/{SIGNING_SECRET}", ns)
    assert not cluster.can(server, "patch", f"secrets/{SIGNING_SECRET}", ns)
    for kind in ("identityproviders", "oauthapplications"):
        assert cluster.can(server, "list", f"{kind}.tokenbridge.dev", None, "--all-namespaces")
        assert cluster.can(server, "watch", f"{kind}.tokenbridge.dev", APP_NS)
        assert not cluster.can(server, "patch", f"{kind}.tokenbridge.dev", APP_NS)
        assert not cluster.can(server, "patch", f"{kind}.tokenbridge.dev", APP_NS, "--subresource=status")
    assert cluster.can(server, "list", "clusteridentityproviders.tokenbridge.dev")
    assert not cluster.can(server, "create", "events", ns)
    assert not cluster.can(server, "delete", "namespaces")
    assert not cluster.can(server, "list", "configmaps", ns)
    # The cluster's default system:service-account-issuer-discovery binding already lets every ServiceAccount
    # (group system:serviceaccounts) read these; groups=[] checks that our own binding grants them too.
    for path in ("/openid/v1/jwks", "/.well-known/openid-configuration"):
        assert cluster.review(server, "get", path=path, groups=[])
        assert not cluster.review(server, "post", path=path, groups=[])


def test_cluster_scope_operator_permissions(installed):
    cluster, results = installed
    operator, _, ns = sas(results, "cluster")
    for kind in ("identityproviders", "oauthapplications"):
        assert cluster.can(operator, "watch", f"{kind}.tokenbridge.dev", None, "--all-namespaces")
        assert cluster.can(operator, "patch", f"{kind}.tokenbridge.dev", APP_NS)
        assert cluster.can(operator, "patch", f"{kind}.tokenbridge.dev", APP_NS, "--subresource=status")
        assert not cluster.can(operator, "delete", f"{kind}.tokenbridge.dev", APP_NS)
    assert cluster.can(operator, "patch", "clusteridentityproviders.tokenbridge.dev", None, "--subresource=status")
    assert cluster.can(operator, "update", "oauthapplications.tokenbridge.dev", APP_NS, "--subresource=finalizers")
    assert cluster.can(operator, "create", "events", APP_NS)
    assert cluster.can(operator, "create", "events", ns)
    assert cluster.can(operator, "create", "secrets", APP_NS)  # credential Secrets in application namespaces
    assert cluster.can(operator, "create", "secrets", ns)  # the signing-key Secret
    assert cluster.can(operator, "update", f"secrets/{SIGNING_SECRET}", ns)
    assert not cluster.can(operator, "delete", "secrets", APP_NS)
    assert not cluster.can(operator, "delete", "namespaces")
    assert not cluster.can(operator, "create", "pods", APP_NS)
    assert not cluster.can(operator, "create", "rolebindings.rbac.authorization.k8s.io", APP_NS)
    assert cluster.can(operator, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not cluster.can(operator, "update", "customresourcedefinitions.apiextensions.k8s.io")
    # standalone: no peering
    assert not cluster.review(operator, "patch", group="kopf.dev", resource="clusterkopfpeerings")
    assert cluster.review(operator, "get", path="/openid/v1/jwks", groups=[])


def test_namespace_scope_permissions(installed):
    cluster, results = installed
    operator, server, ns = sas(results, "namespace")
    assert cluster.can(server, "get", f"secrets/{SIGNING_SECRET}", ns)
    assert not cluster.can(server, "get", "secrets/another-secret", ns)
    assert cluster.can(server, "list", "identityproviders.tokenbridge.dev", ns)
    assert not cluster.can(server, "list", "identityproviders.tokenbridge.dev", APP_NS)
    assert not cluster.can(server, "list", "identityproviders.tokenbridge.dev", None, "--all-namespaces")
    assert not cluster.can(server, "list", "clusteridentityproviders.tokenbridge.dev")
    assert cluster.can(operator, "create", "secrets", ns)
    assert not cluster.can(operator, "create", "secrets", APP_NS)
    assert cluster.can(operator, "patch", "oauthapplications.tokenbridge.dev", ns, "--subresource=status")
    assert not cluster.can(operator, "patch", "oauthapplications.tokenbridge.dev", APP_NS, "--subresource=status")
    assert cluster.can(operator, "create", "events", ns)
    assert not cluster.can(operator, "create", "events", APP_NS)
    assert not cluster.can(operator, "patch", "clusteridentityproviders.tokenbridge.dev", None, "--subresource=status")
    assert not cluster.can(operator, "list", "customresourcedefinitions.apiextensions.k8s.io")
    for sa in (operator, server):
        assert not cluster.can(sa, "delete", "namespaces")

    operator, server, ns = sas(results, "namespace-cidp")
    assert cluster.can(server, "list", "clusteridentityproviders.tokenbridge.dev")
    assert not cluster.can(server, "patch", "clusteridentityproviders.tokenbridge.dev")
    assert cluster.can(operator, "patch", "clusteridentityproviders.tokenbridge.dev", None, "--subresource=status")
    assert not cluster.can(operator, "delete", "clusteridentityproviders.tokenbridge.dev")
    assert not cluster.can(server, "list", "identityproviders.tokenbridge.dev", APP_NS)


def test_full_install_permissions(installed):
    cluster, results = installed
    operator, server, ns = sas(results, "full")
    assert cluster.can(server, "get", "secrets/tbf-keys", ns)
    assert not cluster.can(server, "get", f"secrets/{SIGNING_SECRET}", ns)
    assert cluster.review(operator, "patch", group="kopf.dev", resource="clusterkopfpeerings")
    assert not cluster.review(operator, "delete", group="kopf.dev", resource="clusterkopfpeerings")
    assert not cluster.review(server, "patch", group="kopf.dev", resource="clusterkopfpeerings")


def test_review_without_groups_is_discriminating(installed):
    """Sanity check of the groups=[] review: a ServiceAccount no chart binding names gets no non-resource URL."""
    cluster, _ = installed
    assert not cluster.review((APP_NS, "default"), "get", path="/openid/v1/jwks", groups=[])


def test_server_reads_the_signing_secret_the_way_its_code_does(installed):
    """Real requests as the server: a list and a watch need fieldSelector=metadata.name=<the Secret> to be allowed
    by resourceNames (as the server's KubernetesSource does); without it they are Forbidden."""
    cluster, results = installed
    _, server, ns = sas(results, "cluster")
    for name in (SIGNING_SECRET, "another-secret"):
        cluster.kubectl("create", "secret", "generic", name, "-n", ns, "--from-literal=keys.json={}")
    got = cluster.as_sa(server, "get", "secret", SIGNING_SECRET, "-n", ns, "-o", "json")
    assert got.returncode == 0, got.stderr
    listed = cluster.as_sa(
        server, "get", "secrets", "-n", ns, "--field-selector", f"metadata.name={SIGNING_SECRET}", "-o", "json"
    )
    assert listed.returncode == 0, listed.stderr
    assert [s["metadata"]["name"] for s in json.loads(listed.stdout)["items"]] == [SIGNING_SECRET]
    watched = cluster.as_sa(
        server,
        "get",
        "secrets",
        "-n",
        ns,
        "--field-selector",
        f"metadata.name={SIGNING_SECRET}",
        "--watch",
        "--request-timeout=2s",
        "-o",
        "name",
    )
    assert "Forbidden" not in watched.stderr and f"secret/{SIGNING_SECRET}" in watched.stdout, watched.stderr
    for args in (
        ("get", "secrets", "-n", ns),
        ("get", "secret", "another-secret", "-n", ns),
        ("get", "secrets", "-n", ns, "--field-selector", "metadata.name=another-secret"),
    ):
        denied = cluster.as_sa(server, *args)
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, (args, denied.stdout, denied.stderr)
    listed = cluster.as_sa(
        server,
        "get",
        "identityproviders.tokenbridge.dev,oauthapplications.tokenbridge.dev,clusteridentityproviders.tokenbridge.dev",
        "--all-namespaces",
    )
    assert listed.returncode == 0, listed.stderr
