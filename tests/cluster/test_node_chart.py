"""The shipped artefacts on a real node: the OCI image built by image/, installed with the Helm chart, pods run by
kubelet + containerd, Ready through the chart's own probes. The example examples/kubernetes-serviceaccount (its
IdentityProvider, OAuthApplication and workload Pod) runs on it: the Pod exchanges its projected ServiceAccount
token through the chart's Service, and the issued token verifies against the server's JWKS; deleting the server
pod loses nothing (same client, same signing key).

Nothing is pulled: both images are built from source (image/build.sh, image/build-pause.sh, cached by their inputs)
and imported into the node's containerd.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jwt
import pytest
import yaml

from tests.support.node import Node, built_image, can_run
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tokenbridge"
RELEASE, NAMESPACE, APP_NS = "tb", "tokenbridge", "tb-node-app"
ISSUER = "https://tokens.example.com"
AUDIENCE = "https://payments.example.com"
EXAMPLE = REPO / "examples" / "kubernetes-serviceaccount"

# Runs in the workload Pod (the Tokenbridge image has Python and httpx): one RFC 8693 exchange of the projected
# ServiceAccount token through the Service, then the server's JWKS through the same Service; prints both as JSON.
WORKLOAD = """
import json, os, httpx
base = "http://" + os.environ["TB_HOST"] + ":" + os.environ["TB_PORT"]
token = open(os.environ["TOKEN_FILE"]).read().strip()
r = httpx.post(base + "/oauth2/token", auth=(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"]), data={
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": os.environ["AUDIENCE"]})
jwks = httpx.get(base + "/.well-known/jwks.json").json()
print(json.dumps({"status": r.status_code, "body": r.json(), "jwks": jwks}))
"""


@pytest.fixture(scope="module")
def node(control_plane, tmp_path_factory, pytestconfig):
    reason = can_run()
    if reason:
        pytest.fail(f"the node tests cannot run here: {reason}")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # a cold image build takes minutes: show its progress
        pause, image = built_image("build-pause.sh"), built_image("build.sh")
    n = Node(control_plane, tmp_path_factory.mktemp("node"))
    try:
        n.start(pause, [image])
        yield n, image[1]
    finally:
        n.stop()


def kubectl_json(cp, *args: str):
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def apply(cp, *docs: dict) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}))


def condition(obj: dict, kind: str) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


@pytest.fixture(scope="module")
def release(node, control_plane, helm, tmp_path_factory):
    """The chart installed with the built image; the application's credentials once the operator wrote them."""
    cp, (n, reference) = control_plane, node
    repository, tag = reference.rsplit(":", 1)
    values = tmp_path_factory.mktemp("values") / "values.json"
    values.write_text(
        json.dumps(
            {
                "publicIssuer": ISSUER,
                "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                "server": {"replicas": 1, "workers": 1},
                # The kubernetes Service's address: the operator reads the ServiceAccount issuer through it.
                "fetch": {"allowedNetworks": ["10.0.0.1/32"]},
            }
        )
    )

    def diagnose() -> str:
        pods = cp.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = cp.kubectl("get", "events", "-n", NAMESPACE, check=False).stdout[-3000:]
        logs = "".join(
            cp.kubectl(
                "logs", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={c}", "--tail", "30", check=False
            ).stdout
            for c in ("operator", "server")
        )
        return f"{pods}\n{events}\n{logs}\nkubelet:\n{n.log('kubelet', 2000)}"

    install = subprocess.run(
        [
            helm,
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--skip-crds",
            "--kubeconfig",
            str(cp.kubeconfig),
            "-f",
            str(values),
            "--wait",
            "--timeout",
            "240s",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, f"{install.stderr}\n{diagnose()}"
    cp.kubectl("create", "namespace", APP_NS)
    # The example's manifests as they are, but for the API server's address: there is no cluster DNS on this node,
    # so kubernetes.default.svc is the kubernetes Service's IP.
    idp, app = example("identityprovider.yaml")[0], example("oauthapplication.yaml")[0]
    for field in ("wellKnownURL", "jwksURI"):
        idp["spec"][field] = idp["spec"][field].replace("kubernetes.default.svc", "10.0.0.1")
    service_account = next(d for d in example("workload.yaml") if d["kind"] == "ServiceAccount")
    apply(cp, *({**d, "metadata": {**d["metadata"], "namespace": APP_NS}} for d in (idp, app, service_account)))
    wait_for(
        lambda: (
            condition(kubectl_json(cp, "get", "oauthapplication", "payments-worker", "-n", APP_NS), "Ready") == "True"
        ),
        120,
        "the application Ready",
        interval=1.0,
        diagnose=lambda: cp.kubectl("get", "idp,oauthapp", "-n", APP_NS, "-o", "yaml", check=False).stdout + diagnose(),
    )
    service = kubectl_json(cp, "get", "service", f"{RELEASE}-tokenbridge-server", "-n", NAMESPACE)
    yield service["spec"]["clusterIP"], str(service["spec"]["ports"][0]["port"]), reference, diagnose
    cp.kubectl("delete", "namespace", APP_NS, "--wait=false", check=False)
    subprocess.run(
        [
            helm,
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--kubeconfig",
            str(cp.kubeconfig),
            "--wait",
            "--timeout",
            "120s",
        ],
        capture_output=True,
        timeout=180,
    )


def example(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((EXAMPLE / name).read_text()) if d]


def run_workload(cp, release, name: str) -> dict:
    """Run the example's workload Pod once to completion on the node; its printed result. Its ServiceAccount,
    projected token, Secret references and security context are the example's; the image is the one built here
    (the example's curl image cannot be pulled), whose Python makes one exchange instead of the example's loop."""
    host, port, reference, diagnose = release
    pod = next(d for d in example("workload.yaml") if d["kind"] == "Pod")
    (container,) = pod["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tokenbridge-token"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    (projected,) = volume["projected"]["sources"]
    container.update(image=reference, imagePullPolicy="Never", command=["python", "-c", WORKLOAD])
    container["env"] += [
        {"name": "TB_HOST", "value": host},
        {"name": "TB_PORT", "value": port},
        {"name": "AUDIENCE", "value": AUDIENCE},
        {"name": "TOKEN_FILE", "value": f"{mount['mountPath']}/{projected['serviceAccountToken']['path']}"},
    ]
    pod["metadata"].update(name=name, namespace=APP_NS)
    pod["spec"]["restartPolicy"] = "Never"
    apply(cp, pod)

    def finished():
        phase = kubectl_json(cp, "get", "pod", name, "-n", APP_NS).get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, 120, f"pod {name} finished", interval=1.0, diagnose=diagnose)
    logs = cp.kubectl("logs", name, "-n", APP_NS).stdout
    assert phase == "Succeeded", f"{phase}: {logs}\n{diagnose()}"
    return json.loads(logs.strip().splitlines()[-1])


def verify(result: dict) -> dict:
    assert result["status"] == 200, result["body"]
    token = result["body"]["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in result["jwks"]["keys"] if k["kid"] == kid]
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=[key["alg"]], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == f"system:serviceaccount:{APP_NS}:payments-worker"
    assert claims["idp"] == f"{APP_NS}/this-cluster"
    return {"kid": kid, "claims": claims, "token": token}


def test_the_pods_are_ready_through_the_charts_probes(control_plane, release):
    """helm --wait returned: each component's pod is Ready, started from the built image, with the chart's probes
    (the server's readiness probe only passes once it has loaded its configuration)."""
    reference = release[2]
    probes = {"operator": {"livenessProbe"}, "server": {"startupProbe", "livenessProbe", "readinessProbe"}}
    for component, expected in probes.items():
        (pod,) = kubectl_json(
            control_plane, "get", "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}"
        )["items"]
        assert condition(pod, "Ready") == "True", pod["status"]
        (container,) = pod["spec"]["containers"]
        assert container["image"] == reference
        assert expected <= {k for k in container if k.endswith("Probe")}, container
        (state,) = pod["status"]["containerStatuses"]
        assert state["ready"] and state["restartCount"] == 0, state


def test_workload_exchanges_its_projected_token_through_the_service(control_plane, release):
    first = verify(run_workload(control_plane, release, "worker-1"))
    assert first["claims"]["client_id"]


def test_deleting_the_server_pod_loses_no_configuration(control_plane, release):
    cp = control_plane
    before = verify(run_workload(cp, release, "worker-before"))
    selector = "app.kubernetes.io/component=server"
    (old,) = [p["metadata"]["name"] for p in kubectl_json(cp, "get", "pods", "-n", NAMESPACE, "-l", selector)["items"]]
    cp.kubectl("delete", "pod", old, "-n", NAMESPACE, "--wait=true")

    def replaced():
        pods = kubectl_json(cp, "get", "pods", "-n", NAMESPACE, "-l", selector)["items"]
        return [
            p
            for p in pods
            if p["metadata"]["name"] != old
            and condition(p, "Ready") == "True"
            and not p["metadata"].get("deletionTimestamp")
        ]

    wait_for(replaced, 180, "a new Ready server pod", interval=1.0, diagnose=release[3])
    after = verify(run_workload(cp, release, "worker-after"))
    # The same client and the same signing key: the new pod read everything back from the API server.
    assert after["claims"]["client_id"] == before["claims"]["client_id"]
    assert after["kid"] == before["kid"]
