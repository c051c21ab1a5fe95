"""The Helm chart (charts/tokenbridge) without a cluster: its CRDs are the repository's, its values schema is closed
and refuses unknown keys, `helm lint` passes, and `helm template` renders what we promise — kinds, security contexts,
probes, environment the components really parse, and least-privilege RBAC.

helm comes from tests/cluster/build-helm.sh (built from its Go module, cached). The in-cluster half is
tests/cluster/test_chart_in_cluster.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokenbridge"
ISSUER = "https://tokens.example.com"
NS = "tokenbridge-system"
RELEASE = "tb"
PREFIX = "tb-tokenbridge"
OPERATOR_SA = f"{PREFIX}-operator"
SERVER_SA = f"{PREFIX}-server"

# Every optional feature on, every knob off its default.
FULL_VALUES = {
    "publicIssuer": ISSUER + "/",
    "image": {"repository": "registry.example.com/tokenbridge", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "signing": {
        "algorithm": "EdDSA",
        "rotationPeriod": "168h",
        "publishLead": "2h",
        "maxTokenLifetime": "12h",
        "secretName": "tb-keys",
    },
    "fetch": {"allowedNetworks": ["10.0.0.1/32", "192.168.10.0/24"], "allowInsecureHTTP": True},
    "operator": {
        "replicas": 2,
        "peering": "tokenbridge",
        "idpRefreshInterval": "10m",
        "appRecheckInterval": "2m",
        "secretRotationGrace": "1h",
        "extraEnv": [{"name": "TOKENBRIDGE_RETRY_BACKOFF", "value": "10s"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "auth", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
    },
    "server": {
        "workers": 4,
        "workerClass": "gthread",
        "threads": 4,
        "jwksLifespan": "10m",
        "jwksMaxStaleness": "12h",
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}},
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "server"}},
                        },
                    }
                ]
            }
        },
        "service": {"type": "ClusterIP", "port": 80, "annotations": {"example.com/a": "b"}},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/x": "y"},
            "hosts": [{"host": "tokens.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "tokens-tls", "hosts": ["tokens.example.com"]}],
        },
        "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 6,
            "targetCPUUtilizationPercentage": 60,
            "targetMemoryUtilizationPercentage": 80,
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "networkPolicy": {
        "enabled": True,
        "serverIngressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        "operatorMetricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "192.168.10.0/24"}}], "ports": [{"port": 8443}]}],
    },
}
NAMESPACE_VALUES = {"publicIssuer": ISSUER, "rbac": {"scope": "namespace"}}
DANGEROUS_VERBS = {"*", "delete", "deletecollection", "escalate", "bind", "impersonate"}


# ------------------------------------------------------------------------------------------------- helpers
def run_helm(helm: str, tmp_path: Path, command: str, values: dict | None, *extra: str):
    args = [helm, command]
    if command == "template":
        args += [RELEASE, str(CHART), "--namespace", NS, "--skip-crds"]
    else:
        args += [str(CHART)]
    if values is not None:
        path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(values))
        args += ["-f", str(path)]
    return subprocess.run([*args, *extra], capture_output=True, text=True, timeout=60)


def render(helm: str, tmp_path: Path, values: dict) -> list[dict]:
    proc = run_helm(helm, tmp_path, "template", values)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(deployment: dict) -> dict[str, str]:
    env = container(deployment)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e["value"] for e in env}


def rules_for(docs: list[dict], sa: str, namespace: str | None = None) -> list[tuple[str, str | None, dict]]:
    """(role kind, role namespace, rule) for every rule bound to ServiceAccount ``sa``."""
    out = []
    for binding in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding"):
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NS for s in binding["subjects"]
        ):
            continue
        ref = binding["roleRef"]
        role = one(docs, ref["kind"], ref["name"])
        ns = role["metadata"].get("namespace")
        if binding["kind"] == "RoleBinding":
            assert ns == binding["metadata"]["namespace"]
        out += [(ref["kind"], ns, rule) for rule in role["rules"]]
    return out


def resource_rules(rules, group: str, resource: str) -> list[tuple[str, str | None, dict]]:
    return [(k, ns, r) for k, ns, r in rules if group in r.get("apiGroups", []) and resource in r.get("resources", [])]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chart")


@pytest.fixture(scope="module")
def default_docs(helm, tmp) -> list[dict]:
    return render(helm, tmp, {"publicIssuer": ISSUER})


@pytest.fixture(scope="module")
def full_docs(helm, tmp) -> list[dict]:
    return render(helm, tmp, FULL_VALUES)


@pytest.fixture(scope="module")
def namespace_docs(helm, tmp) -> list[dict]:
    return render(helm, tmp, NAMESPACE_VALUES)


# ------------------------------------------------------------------------------------- sources in sync
def load_generator():
    spec = importlib.util.spec_from_file_location("tokenbridge_chart_generate", REPO / "charts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crds_are_byte_identical_copies_of_repo_crds():
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert len(source) == 3
    assert copies.keys() == source.keys(), "run: .venv/bin/python charts/generate.py"
    for name, content in source.items():
        assert copies[name] == content, (
            f"charts/tokenbridge/crds/{name} differs; run .venv/bin/python charts/generate.py"
        )


def test_helm_ships_the_crds(helm, tmp):
    """helm sees exactly the three CRDs in the chart (installed by `helm install`, skipped by --skip-crds)."""
    proc = subprocess.run([helm, "show", "crds", str(CHART)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = sorted(d["metadata"]["name"] for d in yaml.safe_load_all(proc.stdout) if d)
    assert names == [
        "clusteridentityproviders.tokenbridge.dev",
        "identityproviders.tokenbridge.dev",
        "oauthapplications.tokenbridge.dev",
    ]


def test_generated_files_are_up_to_date():
    generate = load_generator()
    assert generate.crd_drift() == []
    assert (CHART / "values.schema.json").read_text(encoding="utf-8") == generate.render_schema(), (
        "values.schema.json is out of date: run .venv/bin/python charts/generate.py"
    )


def test_schema_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                extra = node.get("additionalProperties")
                if extra is not False and not (isinstance(extra, dict) and extra.get("type") == "string"):
                    open_objects.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(schema, "#")
    assert open_objects == []


def test_values_yaml_documents_every_key():
    """Each leaf key in values.yaml has a comment right above it; blocks may be documented by their children.
    Default resource quantities (under a documented `resources:`) are exempt."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, parents = [], []  # parents: (indent, key)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = stripped.split(":", 1)[0]
        is_block = stripped.endswith(":")
        previous = lines[i - 1].strip() if i else ""
        if not is_block and not previous.startswith("#") and "resources" not in [k for _, k in parents]:
            undocumented.append(line)
        parents.append((indent, key))
    assert undocumented == []


# -------------------------------------------------------------------------------------------- lint/schema
def test_helm_lint_passes(helm, tmp):
    for values in ({"publicIssuer": ISSUER}, FULL_VALUES, NAMESPACE_VALUES):
        proc = run_helm(helm, tmp, "lint", values, "--strict", "--namespace", NS)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_helm_lint_reports_missing_public_issuer(helm, tmp):
    """helm lint runs `required` in lint mode: the chart with its own defaults lints, the message is reported, and
    only a real render (template/install) fails (test_template_fails_with_a_clear_message)."""
    proc = run_helm(helm, tmp, "lint", None, "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "publicIssuer is required" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        ({"publicIssuer": ISSUER, "bogus": 1}, "additional properties 'bogus' not allowed"),
        (
            {"publicIssuer": ISSUER, "server": {"ingres": {"enabled": True}}},
            "additional properties 'ingres' not allowed",
        ),
        (
            {"publicIssuer": ISSUER, "operator": {"resources": {"requests": {"gpu": 1}}}},
            "additional properties 'gpu' not allowed",
        ),
        (
            {"publicIssuer": ISSUER, "server": {"affinity": {"podAntiAffinity": {"required": []}}}},
            "additional properties 'required' not allowed",
        ),
        ({"publicIssuer": ISSUER, "rbac": {"scope": "everywhere"}}, "rbac/scope"),
        ({"publicIssuer": ISSUER, "signing": {"algorithm": "HS256"}}, "signing/algorithm"),
        ({"publicIssuer": ISSUER, "signing": {"rotationPeriod": "30 days"}}, "signing/rotationPeriod"),
        ({"publicIssuer": "tokens.example.com"}, "publicIssuer"),
    ],
)
def test_schema_refuses_bad_values(helm, tmp, values, message):
    for command in ("template", "lint"):
        proc = run_helm(helm, tmp, command, values)
        assert proc.returncode != 0, f"helm {command} accepted {values}"
        assert message in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "publicIssuer is required"),
        ({"publicIssuer": ""}, "publicIssuer is required"),
        ({"publicIssuer": ISSUER, "operator": {"replicas": 2}}, "operator.replicas > 1 needs operator.peering"),
        ({"publicIssuer": ISSUER, "server": {"ingress": {"enabled": True}}}, "needs at least one entry"),
        ({"publicIssuer": ISSUER, "server": {"serviceAccount": {"create": False}}}, "server.serviceAccount.name"),
    ],
)
def test_template_fails_with_a_clear_message(helm, tmp, values, message):
    proc = run_helm(helm, tmp, "template", values)
    assert proc.returncode != 0
    assert message in proc.stderr


# ------------------------------------------------------------------------------------------------- kinds
def kinds(docs):
    return sorted(d["kind"] for d in docs)


def test_default_render_kinds(default_docs):
    assert kinds(default_docs) == sorted(
        [
            "ServiceAccount",
            "ServiceAccount",
            "Deployment",
            "Deployment",
            "Service",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ]
    )
    assert not any(d["kind"] == "CustomResourceDefinition" for d in default_docs)
    for doc in default_docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NS, doc["metadata"]["name"]


def test_full_render_kinds(full_docs):
    counts = {kind: kinds(full_docs).count(kind) for kind in set(kinds(full_docs))}
    assert counts == {
        "ServiceAccount": 2,
        "Deployment": 2,
        "Service": 1,
        "ClusterRole": 3,
        "ClusterRoleBinding": 3,
        "Role": 1,
        "RoleBinding": 1,
        "Ingress": 1,
        "PodDisruptionBudget": 1,
        "HorizontalPodAutoscaler": 1,
        "NetworkPolicy": 2,
        "ServiceMonitor": 1,
    }


def test_namespace_scope_kinds(namespace_docs, helm, tmp):
    # only the issuer-discovery ClusterRole (non-resource URLs) is cluster-wide
    (cluster_role,) = of_kind(namespace_docs, "ClusterRole")
    assert [set(r) for r in cluster_role["rules"]] == [{"nonResourceURLs", "verbs"}]
    assert len(of_kind(namespace_docs, "Role")) == 3 and len(of_kind(namespace_docs, "RoleBinding")) == 3
    off = render(helm, tmp, {**NAMESPACE_VALUES, "rbac": {"scope": "namespace", "issuerDiscovery": False}})
    assert of_kind(off, "ClusterRole") == [] and of_kind(off, "ClusterRoleBinding") == []


# ---------------------------------------------------------------------------------- pods: security, probes
@pytest.mark.parametrize("docs_fixture", ["default_docs", "full_docs", "namespace_docs"])
def test_security_contexts_and_tmp(docs_fixture, request):
    docs = request.getfixturevalue(docs_fixture)
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        c = container(deployment)
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc.get("privileged") is False
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert "hostNetwork" not in pod and "hostPID" not in pod


def test_server_probes_ports_and_service(default_docs):
    server = one(default_docs, "Deployment", f"{PREFIX}-server")
    c = container(server)
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    service = one(default_docs, "Service", f"{PREFIX}-server")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    operator = one(default_docs, "Deployment", f"{PREFIX}-operator")
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert not all(operator_labels.get(k) == v for k, v in service["spec"]["selector"].items()), (
        "the Service must not select operator pods"
    )
    for deployment in (server, operator):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert all(deployment["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())
    assert server["spec"]["replicas"] == 2 and operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators


def test_one_image_two_entrypoints(default_docs, full_docs):
    for docs, image in ((default_docs, "tokenbridge:0.1.0"), (full_docs, "registry.example.com/tokenbridge:1.2.3")):
        operator = container(one(docs, "Deployment", f"{PREFIX}-operator"))
        server = container(one(docs, "Deployment", f"{PREFIX}-server"))
        assert operator["image"] == server["image"] == image
        assert operator["args"][0] == "operator"
        assert server["args"][0] == "serve" and "--kubernetes" in server["args"]
        assert "command" not in operator and "command" not in server  # the image's ENTRYPOINT is tokenbridge


# -------------------------------------------------------------------------------------------- environment
def test_operator_environment_parses(default_docs, full_docs):
    from tokenbridge_operator.config import OperatorConfig

    config = OperatorConfig.from_env(env_of(one(default_docs, "Deployment", f"{PREFIX}-operator")))
    assert config.public_issuer == ISSUER
    assert (config.signing_secret_namespace, config.signing_secret_name) == (NS, "tokenbridge-signing-keys")
    assert config.signing_algorithm == "ES256" and config.peering is None
    assert config.fetch_policy.allowed_networks == () and config.fetch_policy.allow_http is False

    env = env_of(one(full_docs, "Deployment", f"{PREFIX}-operator"))
    config = OperatorConfig.from_env(env)
    assert config.public_issuer == ISSUER  # trailing slash dropped
    assert (config.signing_secret_namespace, config.signing_secret_name) == (NS, "tb-keys")
    assert config.signing_algorithm == "EdDSA"
    assert config.signing_rotation_period == 168 * 3600 and config.signing_publish_lead == 7200
    assert config.max_token_lifetime == 12 * 3600
    assert config.idp_refresh_interval == 600 and config.app_recheck_interval == 120
    assert config.secret_rotation_grace == 3600 and config.retry_backoff == 10
    assert config.peering == "tokenbridge"
    assert [str(n) for n in config.fetch_policy.allowed_networks] == ["10.0.0.1/32", "192.168.10.0/24"]
    assert config.fetch_policy.allow_http is True
    assert env["TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS"] == "true"


def test_operator_arguments_parse(default_docs, namespace_docs):
    """`tokenbridge operator` flags as the operator's own parser reads them, and the kopf command they become."""
    from tokenbridge_operator.config import OperatorConfig
    from tokenbridge_operator.run import kopf_args, parser

    for docs, scope in ((default_docs, ["--all-namespaces"]), (namespace_docs, [f"--namespace={NS}"])):
        operator = one(docs, "Deployment", f"{PREFIX}-operator")
        c = container(operator)
        args = parser().parse_args(c["args"][1:])
        argv = kopf_args(args, env_of(operator))
        assert [a for a in argv if a.startswith(("--all-namespaces", "--namespace"))] == scope
        assert argv[argv.index("--liveness") + 1] == "http://0.0.0.0:8081/healthz"
        assert "--standalone" in argv
        assert c["ports"] == [
            {"name": "health", "containerPort": 8081, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ]
        assert OperatorConfig.from_env(env_of(operator)).metrics_port == 9090
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_server_arguments_and_environment_parse(default_docs, full_docs):
    from tokenbridge_exchange.config import load

    for docs, workers, worker_class, threads, secret in (
        (default_docs, 2, "gevent", 8, "tokenbridge-signing-keys"),
        (full_docs, 4, "gthread", 4, "tb-keys"),
    ):
        c = container(one(docs, "Deployment", f"{PREFIX}-server"))
        config = load(c["args"][1:], env_of(one(docs, "Deployment", f"{PREFIX}-server")))
        assert config.kubernetes is True and config.kubeconfig is None and config.manifests is None
        assert config.bind == "0.0.0.0:8080"
        assert config.issuer == ISSUER
        assert (config.workers, config.worker_class, config.threads) == (workers, worker_class, threads)
        assert (config.signing_secret_namespace, config.signing_secret_name) == (NS, secret)
        assert (config.watch_namespace, config.cluster_identity_providers) == ("", True)
    config = load(
        container(one(full_docs, "Deployment", f"{PREFIX}-server"))["args"][1:],
        env_of(one(full_docs, "Deployment", f"{PREFIX}-server")),
    )
    assert (config.jwks_lifespan, config.jwks_max_staleness) == (600, 12 * 3600)
    # the server's cap on issued tokens is the operator's retention of retired signing keys: one value
    from tokenbridge_operator.config import OperatorConfig

    operator = OperatorConfig.from_env(env_of(one(full_docs, "Deployment", f"{PREFIX}-operator")))
    assert config.max_token_lifetime == operator.max_token_lifetime == 12 * 3600


def test_namespace_scope_environment(namespace_docs, helm, tmp):
    for name in ("operator", "server"):
        env = env_of(one(namespace_docs, "Deployment", f"{PREFIX}-{name}"))
        assert env["TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS"] == "false"
    assert env_of(one(namespace_docs, "Deployment", f"{PREFIX}-server"))["TOKENBRIDGE_WATCH_NAMESPACE"] == NS
    # as the components read them
    from tokenbridge_exchange.config import load
    from tokenbridge_operator.config import OperatorConfig

    server = one(namespace_docs, "Deployment", f"{PREFIX}-server")
    config = load(container(server)["args"][1:], env_of(server))
    assert (config.watch_namespace, config.cluster_identity_providers) == (NS, False)
    operator = OperatorConfig.from_env(env_of(one(namespace_docs, "Deployment", f"{PREFIX}-operator")))
    assert operator.cluster_identity_providers is False
    docs = render(helm, tmp, {**NAMESPACE_VALUES, "rbac": {"scope": "namespace", "clusterIdentityProviders": True}})
    assert env_of(one(docs, "Deployment", f"{PREFIX}-server"))["TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS"] == "true"


# --------------------------------------------------------------------------------------------------- RBAC
@pytest.mark.parametrize("docs_fixture", ["default_docs", "full_docs", "namespace_docs"])
def test_no_wildcards_or_dangerous_verbs(docs_fixture, request):
    docs = request.getfixturevalue(docs_fixture)
    for role in of_kind(docs, "Role") + of_kind(docs, "ClusterRole"):
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(key, [])), (role["metadata"]["name"], rule)
            assert not DANGEROUS_VERBS & set(rule["verbs"]), (role["metadata"]["name"], rule)
    for binding in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit", "view")
        assert all(s["kind"] == "ServiceAccount" for s in binding["subjects"])


def test_server_rbac_is_read_only_and_one_secret(default_docs):
    rules = rules_for(default_docs, SERVER_SA)
    by_resource = {}
    for kind, ns, rule in rules:
        for group in rule.get("apiGroups", ["<non-resource>"]):
            for resource in rule.get("resources", rule.get("nonResourceURLs", [])):
                by_resource.setdefault((group, resource), []).append((kind, ns, rule))
    assert set(by_resource) == {
        ("tokenbridge.dev", "identityproviders"),
        ("tokenbridge.dev", "clusteridentityproviders"),
        ("tokenbridge.dev", "oauthapplications"),
        ("", "secrets"),
        ("<non-resource>", "/.well-known/openid-configuration"),
        ("<non-resource>", "/openid/v1/jwks"),
    }
    for (group, resource), grants in by_resource.items():
        for kind, ns, rule in grants:
            if group == "tokenbridge.dev":
                assert set(rule["verbs"]) == {"get", "list", "watch"}
            elif resource == "secrets":
                # exactly one Secret, in the release namespace: get, and list/watch with a metadata.name selector
                assert (kind, ns) == ("Role", NS)
                assert rule["resourceNames"] == ["tokenbridge-signing-keys"]
                assert set(rule["verbs"]) == {"get", "list", "watch"}
            else:
                assert rule["verbs"] == ["get"]
    # never any status subresource, secret write or other core resource
    assert not any("/" in r for _, _, rule in rules for r in rule.get("resources", []))


def test_server_secret_rule_follows_the_secret_name(full_docs, namespace_docs):
    for docs, name in ((full_docs, "tb-keys"), (namespace_docs, "tokenbridge-signing-keys")):
        (grant,) = resource_rules(rules_for(docs, SERVER_SA), "", "secrets")
        assert grant[0] == "Role" and grant[1] == NS and grant[2]["resourceNames"] == [name]
        env = env_of(one(docs, "Deployment", f"{PREFIX}-server"))
        assert env["TOKENBRIDGE_SIGNING_SECRET_NAME"] == name and env["TOKENBRIDGE_SIGNING_SECRET_NAMESPACE"] == NS


def test_operator_rbac(default_docs):
    rules = rules_for(default_docs, OPERATOR_SA)
    kinds_ = {"identityproviders", "clusteridentityproviders", "oauthapplications"}
    (main,) = [r for _, _, r in rules if set(r.get("resources", [])) == kinds_]
    assert set(main["verbs"]) == {"get", "list", "watch", "patch", "update"}
    (status,) = [r for _, _, r in rules if set(r.get("resources", [])) == {k + "/status" for k in kinds_}]
    assert set(status["verbs"]) == {"get", "patch", "update"}
    ((kind, _, secrets),) = resource_rules(rules, "", "secrets")
    assert kind == "ClusterRole" and "resourceNames" not in secrets
    assert set(secrets["verbs"]) == {"get", "list", "watch", "create", "update", "patch"}
    ((_, _, events),) = resource_rules(rules, "", "events")
    assert events["verbs"] == ["create"]
    ((_, _, crds),) = resource_rules(rules, "apiextensions.k8s.io", "customresourcedefinitions")
    assert set(crds["verbs"]) == {"list", "watch"}
    assert resource_rules(rules, "kopf.dev", "clusterkopfpeerings") == []  # standalone: no peering
    resources = {res for _, _, r in rules for res in r.get("resources", [])}
    assert resources <= kinds_ | {k + "/status" for k in kinds_} | {
        "oauthapplications/finalizers",
        "secrets",
        "events",
        "customresourcedefinitions",
    }


def test_operator_peering_rbac(full_docs, helm, tmp):
    ((_, _, rule),) = resource_rules(rules_for(full_docs, OPERATOR_SA), "kopf.dev", "clusterkopfpeerings")
    assert set(rule["verbs"]) == {"get", "list", "watch", "patch"}
    docs = render(helm, tmp, {**NAMESPACE_VALUES, "operator": {"peering": "tb"}})
    ((kind, ns, _),) = resource_rules(rules_for(docs, OPERATOR_SA), "kopf.dev", "kopfpeerings")
    assert (kind, ns) == ("Role", NS)


def test_namespace_scope_rbac(namespace_docs, helm, tmp):
    for sa in (OPERATOR_SA, SERVER_SA):
        for kind, ns, rule in rules_for(namespace_docs, sa):
            if "nonResourceURLs" in rule:
                continue
            assert (kind, ns) == ("Role", NS), rule
            assert "clusteridentityproviders" not in rule.get("resources", [])
    docs = render(helm, tmp, {**NAMESPACE_VALUES, "rbac": {"scope": "namespace", "clusterIdentityProviders": True}})
    cluster_rules = [r for k, _, r in rules_for(docs, SERVER_SA) if k == "ClusterRole" and "resources" in r]
    assert cluster_rules == [
        {"apiGroups": ["tokenbridge.dev"], "resources": ["clusteridentityproviders"], "verbs": ["get", "list", "watch"]}
    ]
    cluster_rules = [r for k, _, r in rules_for(docs, OPERATOR_SA) if k == "ClusterRole" and "resources" in r]
    assert {res for r in cluster_rules for res in r["resources"]} == {
        "clusteridentityproviders",
        "clusteridentityproviders/status",
    }


def test_rbac_can_be_left_to_the_user(helm, tmp):
    docs = render(helm, tmp, {"publicIssuer": ISSUER, "rbac": {"create": False}})
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(kinds(docs))


# ----------------------------------------------------------------------------------------- optional kinds
def test_optional_kinds(full_docs):
    name = f"{PREFIX}-server"
    server = one(full_docs, "Deployment", name)
    assert "replicas" not in server["spec"]  # the HPA owns it
    hpa = one(full_docs, "HorizontalPodAutoscaler", name)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]} == {
        "cpu": 60,
        "memory": 80,
    }
    pdb = one(full_docs, "PodDisruptionBudget", name)
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == server["spec"]["selector"]["matchLabels"]
    ingress = one(full_docs, "Ingress", name)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "tokens-tls", "hosts": ["tokens.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "tokens.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": name, "port": {"name": "http"}}}
    monitor = one(full_docs, "ServiceMonitor", name)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    service = one(full_docs, "Service", name)
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    operator = one(full_docs, "Deployment", f"{PREFIX}-operator")
    assert operator["spec"]["replicas"] == 2 and operator["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = operator["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "dedicated"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert server["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]


def test_network_policies(full_docs):
    operator = one(full_docs, "NetworkPolicy", f"{PREFIX}-operator")
    assert operator["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert operator["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 9090}], "from": FULL_VALUES["networkPolicy"]["operatorMetricsFrom"]}
    ]
    assert operator["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    server = one(full_docs, "NetworkPolicy", f"{PREFIX}-server")
    (ingress,) = server["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert ingress["from"] == FULL_VALUES["networkPolicy"]["serverIngressFrom"]
    for policy in (operator, server):
        egress = policy["spec"]["egress"]
        ports = [(p["protocol"], p["port"]) for rule in egress for p in rule["ports"] if "protocol" in p]
        assert ("UDP", 53) in ports and ("TCP", 443) in ports and ("TCP", 6443) in ports
        assert egress[-1] == FULL_VALUES["networkPolicy"]["extraEgress"][0]


def test_operator_metrics_can_be_turned_off(helm, tmp):
    docs = render(helm, tmp, {**FULL_VALUES, "operator": {"metricsPort": 0}})
    operator = one(docs, "Deployment", f"{PREFIX}-operator")
    assert [p["name"] for p in container(operator)["ports"]] == ["health"]
    assert one(docs, "NetworkPolicy", f"{PREFIX}-operator")["spec"]["ingress"] == []


def test_optional_kinds_off_by_default(default_docs):
    assert not {"Ingress", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"} & set(
        kinds(default_docs)
    )


# ------------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))]
    froms = [rest.split()[0] for op, rest in instructions if op == "FROM"]
    (base,) = [rest.split("=", 1)[1] for op, rest in instructions if op == "ARG" and rest.startswith("BASE=")]
    # every stage on one base, pinned by digest so a re-pushed tag cannot change what is built
    assert froms and set(froms) == {"${BASE}"} and re.fullmatch(r"python:3\.11-slim\S*@sha256:[0-9a-f]{64}", base)
    (user,) = [rest for op, rest in instructions if op == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    (entrypoint,) = [json.loads(rest) for op, rest in instructions if op == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for op, rest in instructions if op == "CMD"]
    assert entrypoint == ["tokenbridge"] and cmd[0] == "serve"
    assert "pip install -c constraints.txt ." in text and "[dev]" not in text  # the tested versions, no dev extras
    ignore = (REPO / ".dockerignore").read_text()
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "constraints.txt",
        "tokenbridge/",
        "operator/",
        "exchange_server/",
    ):
        assert f"!{needed}" in ignore
