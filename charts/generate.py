"""Keeps the Helm chart's generated files in step with their sources:

- ``tokenbridge/crds/*.yaml``: byte-identical copies of the repository's ``crds/*.yaml`` (the single source; Helm
  reads only the chart's own crds/ folder, and a chart may not reach outside itself);
- ``tokenbridge/values.schema.json``: written from the schema below, where every object is closed
  (``additionalProperties: false``; free-form string maps such as annotations allow string values only).

    .venv/bin/python charts/generate.py          # rewrite both
    .venv/bin/python charts/generate.py --check  # exit 1 when either is out of date (tests/unit/test_chart.py)

This script lives beside the chart, not in it, so it is never packaged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenbridge.durations import DURATION_PATTERN
from tokenbridge_exchange.config import WORKER_CLASSES

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHART = HERE / "tokenbridge"
SOURCE_CRDS = REPO / "crds"
CHART_CRDS = CHART / "crds"
SCHEMA = CHART / "values.schema.json"

DURATION = DURATION_PATTERN  # the one pattern the CRDs and the loaders use


# ------------------------------------------------------------------------------------------------ helpers
def obj(description: str | None = None, required: tuple[str, ...] = (), **properties) -> dict:
    """A closed object: only the named properties."""
    schema: dict = {"type": "object"}
    if description:
        schema["description"] = description
    schema["additionalProperties"] = False
    schema["properties"] = properties
    if required:
        schema["required"] = list(required)
    return schema


def ref(name: str, description: str | None = None) -> dict:
    schema = {"$ref": f"#/$defs/{name}"}
    if description:
        schema["description"] = description
    return schema


def string(description: str | None = None, **extra) -> dict:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def boolean(description: str) -> dict:
    return {"type": "boolean", "description": description}


def integer(description: str, minimum: int | None = None, maximum: int | None = None, nullable=False) -> dict:
    schema: dict = {"type": ["integer", "null"] if nullable else "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def array(items: dict, description: str | None = None) -> dict:
    return {"type": "array", **({"description": description} if description else {}), "items": items}


def string_map(description: str) -> dict:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def duration(description: str) -> dict:
    return string(description, pattern=DURATION)


QUANTITY = {"type": ["string", "number"]}
K8S_NAME = string(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", maxLength=253)
INT_OR_STRING = {"type": ["integer", "string"]}

# Kubernetes structures passed through to pod specs, each closed at every level.
DEFS = {
    "resources": obj(
        "Container resources.",
        requests=obj(cpu=QUANTITY, memory=QUANTITY, **{"ephemeral-storage": QUANTITY}),
        limits=obj(cpu=QUANTITY, memory=QUANTITY, **{"ephemeral-storage": QUANTITY}),
    ),
    "labelSelectorRequirement": obj(
        required=("key", "operator"),
        key=string(),
        operator=string(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
        values=array(string()),
    ),
    "labelSelector": obj(
        matchLabels={"type": "object", "additionalProperties": {"type": "string"}},
        matchExpressions=array(ref("labelSelectorRequirement")),
    ),
    "nodeSelectorRequirement": obj(
        required=("key", "operator"),
        key=string(),
        operator=string(enum=["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]),
        values=array(string()),
    ),
    "nodeSelectorTerm": obj(
        matchExpressions=array(ref("nodeSelectorRequirement")), matchFields=array(ref("nodeSelectorRequirement"))
    ),
    "podAffinityTerm": obj(
        required=("topologyKey",),
        labelSelector=ref("labelSelector"),
        namespaceSelector=ref("labelSelector"),
        namespaces=array(string()),
        topologyKey=string(),
        matchLabelKeys=array(string()),
        mismatchLabelKeys=array(string()),
    ),
    "podAffinity": obj(
        requiredDuringSchedulingIgnoredDuringExecution=array(ref("podAffinityTerm")),
        preferredDuringSchedulingIgnoredDuringExecution=array(
            obj(
                required=("weight", "podAffinityTerm"),
                weight=integer("1-100", 1, 100),
                podAffinityTerm=ref("podAffinityTerm"),
            )
        ),
    ),
    "affinity": obj(
        "Pod affinity (Kubernetes Affinity).",
        nodeAffinity=obj(
            requiredDuringSchedulingIgnoredDuringExecution=obj(
                required=("nodeSelectorTerms",), nodeSelectorTerms=array(ref("nodeSelectorTerm"))
            ),
            preferredDuringSchedulingIgnoredDuringExecution=array(
                obj(
                    required=("weight", "preference"),
                    weight=integer("1-100", 1, 100),
                    preference=ref("nodeSelectorTerm"),
                )
            ),
        ),
        podAffinity=ref("podAffinity"),
        podAntiAffinity=ref("podAffinity"),
    ),
    "toleration": obj(
        key=string(),
        operator=string(enum=["Exists", "Equal"]),
        value=string(),
        effect=string(enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""]),
        tolerationSeconds=integer("seconds"),
    ),
    "envVar": obj(
        required=("name",),
        name=string(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"),
        value=string(),
        valueFrom=obj(
            secretKeyRef=obj(required=("name", "key"), name=string(), key=string(), optional={"type": "boolean"}),
            configMapKeyRef=obj(required=("name", "key"), name=string(), key=string(), optional={"type": "boolean"}),
            fieldRef=obj(required=("fieldPath",), fieldPath=string(), apiVersion=string()),
            resourceFieldRef=obj(required=("resource",), resource=string(), containerName=string(), divisor=QUANTITY),
        ),
    ),
    "networkPolicyPeer": obj(
        podSelector=ref("labelSelector"),
        namespaceSelector=ref("labelSelector"),
        ipBlock=obj(required=("cidr",), cidr=string(), **{"except": array(string())}),
    ),
    "networkPolicyPort": obj(
        protocol=string(enum=["TCP", "UDP", "SCTP"]),
        port=INT_OR_STRING,
        endPort=integer("end of a port range", 1, 65535),
    ),
    "serviceAccount": obj(
        "The component's ServiceAccount.",
        create=boolean("Create the ServiceAccount (else `name` must exist)."),
        name=string("Name; empty means <fullname>-<component>."),
        annotations=string_map("ServiceAccount annotations."),
    ),
}


def pod_settings() -> dict:
    return {
        "extraEnv": array(ref("envVar"), "Extra environment variables."),
        "resources": ref("resources"),
        "serviceAccount": ref("serviceAccount"),
        "podAnnotations": string_map("Extra pod annotations."),
        "podLabels": string_map("Extra pod labels."),
        "nodeSelector": string_map("Node selector."),
        "tolerations": array(ref("toleration"), "Tolerations."),
        "affinity": ref("affinity"),
        "priorityClassName": string("Priority class name."),
    }


def values_schema() -> dict:
    schema = obj(
        None,
        required=("publicIssuer",),
        nameOverride=string("Override the chart name part of resource names."),
        fullnameOverride=string("Override the full resource name prefix."),
        image=obj(
            "The one Tokenbridge image.",
            required=("repository",),
            repository=string("Image repository.", minLength=1),
            tag=string("Tag; empty means appVersion."),
            pullPolicy=string("Pull policy.", enum=["Always", "IfNotPresent", "Never"]),
        ),
        imagePullSecrets=array(obj(required=("name",), name=string()), "Image pull secrets."),
        publicIssuer={
            "type": "string",
            "description": "REQUIRED public issuer URL (https://...)",
            "anyOf": [{"const": ""}, {"pattern": r"^https?://[^\s/?#]+(/[^\s?#]*)?$"}],
        },
        signing=obj(
            "Token-signing key.",
            algorithm=string("Signing algorithm.", enum=["ES256", "RS256", "EdDSA"]),
            rotationPeriod=duration("Age at which the signing key is replaced."),
            publishLead=duration("Publication of a new key before it signs."),
            maxTokenLifetime=duration("Longest lifetime of an issued token."),
            secretName={**K8S_NAME, "description": "Signing-key Secret name in the release namespace."},
        ),
        fetch=obj(
            "SSRF guard of outbound fetches (both components).",
            allowedNetworks=array(
                string(pattern=r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"), "Private CIDRs that may be fetched from."
            ),
            allowInsecureHTTP=boolean("Allow http:// IdP URLs where the IdP opts in. Development only."),
        ),
        rbac=obj(
            "RBAC.",
            create=boolean("Create Roles/ClusterRoles and bindings."),
            scope=string("cluster or namespace.", enum=["cluster", "namespace"]),
            clusterIdentityProviders=boolean("scope=namespace only: use ClusterIdentityProviders."),
            issuerDiscovery=boolean("Allow reading the ServiceAccount issuer discovery URLs."),
        ),
        operator=obj(
            "The operator.",
            replicas=integer("Replicas; more than one needs peering.", 0),
            peering=string("kopf peering name; empty runs standalone."),
            idpRefreshInterval=duration("Re-discovery interval."),
            appRecheckInterval=duration("Re-validation interval of application references."),
            secretRotationGrace=duration("Validity of a rotated client secret."),
            metricsPort=integer("Port of the operator's Prometheus /metrics; 0 disables.", 0, 65535),
            **pod_settings(),
        ),
        server=obj(
            "The token exchange server.",
            replicas=integer("Replicas (ignored with autoscaling).", 0),
            workers=integer("gunicorn workers per pod.", 1, 64),
            workerClass=string("gunicorn worker class.", enum=list(WORKER_CLASSES)),
            threads=integer("Threads per worker (workerClass gthread only).", 1, 256),
            jwksLifespan=duration("Refresh interval of cached IdP keys."),
            jwksMaxStaleness=duration("Serve last good IdP keys this long."),
            **pod_settings(),
            service=obj(
                "The Service.",
                type=string(enum=["ClusterIP", "NodePort", "LoadBalancer"]),
                port=integer("Service port.", 1, 65535),
                annotations=string_map("Annotations."),
            ),
            ingress=obj(
                "Optional Ingress.",
                enabled=boolean("Create an Ingress."),
                className=string("IngressClass."),
                annotations=string_map("Annotations."),
                hosts=array(
                    obj(
                        required=("host",),
                        host=string(minLength=1),
                        paths=array(
                            obj(
                                required=("path",),
                                path=string(pattern="^/"),
                                pathType=string(enum=["Prefix", "Exact", "ImplementationSpecific"]),
                            )
                        ),
                    )
                ),
                tls=array(obj(secretName=string(), hosts=array(string()))),
            ),
            podDisruptionBudget=obj(
                "Optional PodDisruptionBudget.",
                enabled=boolean("Create a PodDisruptionBudget."),
                minAvailable={**INT_OR_STRING, "type": ["integer", "string", "null"]},
                maxUnavailable={**INT_OR_STRING, "type": ["integer", "string", "null"]},
            ),
            autoscaling=obj(
                "Optional HorizontalPodAutoscaler.",
                enabled=boolean("Create a HorizontalPodAutoscaler."),
                minReplicas=integer("Minimum replicas.", 1),
                maxReplicas=integer("Maximum replicas.", 1),
                targetCPUUtilizationPercentage=integer("CPU target percent.", 1, nullable=True),
                targetMemoryUtilizationPercentage=integer("Memory target percent.", 1, nullable=True),
            ),
            serviceMonitor=obj(
                "Optional Prometheus Operator ServiceMonitor.",
                enabled=boolean("Create a ServiceMonitor."),
                path=string("Metrics path.", pattern="^/"),
                interval=duration("Scrape interval."),
                scrapeTimeout=duration("Scrape timeout."),
                labels=string_map("Extra labels."),
            ),
        ),
        networkPolicy=obj(
            "Optional NetworkPolicies.",
            enabled=boolean("Create NetworkPolicies."),
            serverIngressFrom=array(ref("networkPolicyPeer"), "Who may reach the server; empty: anyone."),
            operatorMetricsFrom=array(
                ref("networkPolicyPeer"), "Who may scrape the operator's metrics port; empty: anyone."
            ),
            egressPorts=array(integer("TCP port", 1, 65535), "TCP ports both may connect to."),
            extraEgress=array(
                obj(to=array(ref("networkPolicyPeer")), ports=array(ref("networkPolicyPort"))), "Extra egress rules."
            ),
        ),
        podSecurityContext=obj(
            "Pod security context (runAsNonRoot and seccomp RuntimeDefault are always set).",
            runAsUser=integer("Non-root user id.", 1),
            runAsGroup=integer("Group id.", 1),
            fsGroup=integer("fsGroup.", 1),
        ),
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Tokenbridge chart values",
        **schema,
        "$defs": DEFS,
    }


def render_schema() -> str:
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


def crd_drift() -> list[str]:
    """Names of the chart CRD copies that are missing, extra or not byte-identical to crds/*.yaml."""
    source = {p.name: p.read_bytes() for p in SOURCE_CRDS.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*")}
    return sorted(name for name in source.keys() | copies.keys() if source.get(name) != copies.get(name))


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        problems = [f"charts/tokenbridge/crds/{name} differs from crds/{name}" for name in crd_drift()]
        if SCHEMA.read_text(encoding="utf-8") != render_schema():
            problems.append("charts/tokenbridge/values.schema.json is out of date")
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: .venv/bin/python charts/generate.py", file=sys.stderr)
        return 1 if problems else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    CHART_CRDS.mkdir(exist_ok=True)
    for stale in CHART_CRDS.glob("*"):
        if not (SOURCE_CRDS / stale.name).is_file():
            stale.unlink()
    for crd in SOURCE_CRDS.glob("*.yaml"):
        (CHART_CRDS / crd.name).write_bytes(crd.read_bytes())
    SCHEMA.write_text(render_schema(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
