"""The CRDs and examples, checked without a cluster: structure, bounds, printer columns, and agreement with
tokenbridge/api.py and docs/api.md (the cluster tests in tests/cluster/test_crds_in_cluster.py check what the API server
makes of them)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import celpy
import pytest
import yaml

from tokenbridge import api
from tokenbridge.durations import DURATION_PATTERN, parse_duration

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "examples"
VALID = sorted((EXAMPLES / "valid").glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))

KINDS = {api.KIND_IDP: "Namespaced", api.KIND_CLUSTER_IDP: "Cluster", api.KIND_APP: "Namespaced"}
PLURALS = {api.KIND_IDP: api.PLURAL_IDP, api.KIND_CLUSTER_IDP: api.PLURAL_CLUSTER_IDP, api.KIND_APP: api.PLURAL_APP}
SHORT = {api.KIND_IDP: "idp", api.KIND_CLUSTER_IDP: "cidp", api.KIND_APP: "oauthapp"}
IDP_KINDS = (api.KIND_IDP, api.KIND_CLUSTER_IDP)
READY = '.status.conditions[?(@.type=="Ready")]'
# YAML 1.1 (what kubectl and the API server read) takes these bare keys as booleans: a JWK's y or n would
# silently become "true"/"false" and be pruned.
YAML11_BOOL_KEY = re.compile(r"^\s*(-\s+)?(y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)\s*:", re.M)


def load_crds() -> dict[str, dict]:
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, f"{path.name}: one CRD per file"
        out[docs[0]["spec"]["names"]["kind"]] = docs[0]
    return out


CRDS = load_crds()


def version(kind: str) -> dict:
    (v,) = CRDS[kind]["spec"]["versions"]
    return v


def schema(kind: str) -> dict:
    return version(kind)["schema"]["openAPIV3Schema"]


def spec(kind: str) -> dict:
    return schema(kind)["properties"]["spec"]


def status(kind: str) -> dict:
    return schema(kind)["properties"]["status"]


def walk(node: dict, path: str = ""):
    """Yield (path, schema) for every schema node below and including ``node``."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{*}}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[*]")


def all_nodes():
    for kind in CRDS:
        for part in ("spec", "status"):
            for path, node in walk(schema(kind)["properties"][part], part):
                yield kind, path, node


def is_kopf(path: str) -> bool:
    return path == "status.kopf"


# ------------------------------------------------------------------------------------------ files and names
def test_crd_files_are_the_generators_output():
    spec_ = importlib.util.spec_from_file_location("crds_generate", CRD_DIR / "generate.py")
    gen = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(gen)
    generated = {name: gen.render(doc) for name, doc in gen.all_crds().items()}
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    assert generated == on_disk, "crds/*.yaml are out of date: run .venv/bin/python crds/generate.py"


def test_three_crds_with_names_scope_and_status_subresource():
    assert set(CRDS) == set(KINDS)
    for kind, crd in CRDS.items():
        s = crd["spec"]
        plural = PLURALS[kind]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{plural}.{api.GROUP}"
        assert (CRD_DIR / f"{api.GROUP}_{plural}.yaml").exists()
        assert s["group"] == api.GROUP
        assert s["scope"] == KINDS[kind]
        assert s["names"]["plural"] == plural
        assert s["names"]["singular"] == kind.lower()
        assert s["names"]["shortNames"] == [SHORT[kind]]
        assert s["names"]["categories"] == ["tokenbridge"]
        v = version(kind)
        assert v["name"] == api.VERSION and v["served"] and v["storage"]
        assert v["subresources"] == {"status": {}}


def test_no_bare_yaml11_boolean_keys_in_crds_or_examples():
    for path in [*CRD_DIR.glob("*.yaml"), *VALID, *INVALID]:
        bad = YAML11_BOOL_KEY.findall(path.read_text())
        assert not bad, f"{path.relative_to(REPO)}: quote the keys {bad} (YAML 1.1 reads them as booleans)"


# ------------------------------------------------------------------------------------------ structural schema
def test_schemas_are_structural():
    for kind in CRDS:
        root = schema(kind)
        assert root["type"] == "object"
        assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
        assert root["properties"]["metadata"] == {"type": "object"}
    for kind, path, node in all_nodes():
        where = f"{kind} {path}"
        assert "type" in node, f"{where}: every node needs a type"
        forbidden = {
            "$ref",
            "allOf",
            "oneOf",
            "anyOf",
            "not",
            "definitions",
            "dependencies",
            "patternProperties",
            "x-kubernetes-int-or-string",
            "x-kubernetes-embedded-resource",
        } & set(node)
        assert not forbidden, f"{where}: {forbidden}"
        preserve = node.get("x-kubernetes-preserve-unknown-fields")
        if preserve:
            assert is_kopf(path), f"{where}: x-kubernetes-preserve-unknown-fields is only allowed on status.kopf"
            continue
        if node["type"] == "object":
            assert "properties" in node or "additionalProperties" in node, f"{where}: object without properties"
            if "additionalProperties" in node:
                assert isinstance(node["additionalProperties"], dict) and "type" in node["additionalProperties"], (
                    f"{where}: additionalProperties must be a typed schema"
                )
                assert "properties" not in node, f"{where}: properties and additionalProperties are exclusive"
        if node["type"] == "array":
            assert "type" in node.get("items", {}), f"{where}: array items need a type"
            assert node.get("x-kubernetes-list-type") in ("atomic", "set", "map"), f"{where}: list type"
    for kind in CRDS:
        assert "x-kubernetes-preserve-unknown-fields" not in str(spec(kind))


def test_every_field_is_described():
    for kind, path, node in all_nodes():
        if path.endswith(("[*]", "{*}")) and node["type"] != "object":
            continue  # scalar list items and map values are described by their list/map
        assert node.get("description", "").strip(), f"{kind} {path}: add a description (kubectl explain)"


def test_every_string_list_and_map_is_bounded():
    # The API server estimates CEL cost from these bounds and refuses CRDs whose rules could cost too much.
    for kind, path, node in all_nodes():
        where = f"{kind} {path}"
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node or node.get("format") == "date-time", f"{where}: maxLength"
        elif node["type"] == "array":
            assert "maxItems" in node, f"{where}: maxItems"
        elif node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{where}: maxProperties"


def test_cel_rules_parse_and_have_messages():
    env = celpy.Environment()
    count = 0
    for kind, path, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{kind} {path}: rule {rule['rule']!r} needs a clear message"
            env.compile(rule["rule"])  # raises on a syntax error
            count += 1
    assert count >= 15


# ------------------------------------------------------------------------------------------ columns, conditions
def columns(kind: str) -> dict[str, dict]:
    return {c["name"]: c for c in version(kind)["additionalPrinterColumns"]}


@pytest.mark.parametrize("kind", list(KINDS))
def test_printer_columns(kind):
    cols = columns(kind)
    assert cols["Ready"]["jsonPath"] == READY + ".status" and cols["Ready"].get("priority", 0) == 0
    assert cols["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert cols["Message"]["jsonPath"] == READY + ".message" and cols["Message"]["priority"] == 1
    if kind in IDP_KINDS:
        assert cols["Type"]["jsonPath"] == ".spec.type" and cols["Type"].get("priority", 0) == 0
        assert cols["Issuer"]["jsonPath"] == ".status.issuer" and cols["Issuer"].get("priority", 0) == 0
    else:
        assert cols["Client ID"]["jsonPath"] == ".status.clientID" and cols["Client ID"].get("priority", 0) == 0
    names = list(cols)
    assert names[0] == "Ready" and names.index("Age") < names.index("Message")
    for col in cols.values():  # each column points at a field the schema has
        if col["jsonPath"].startswith(".metadata."):
            continue
        field = col["jsonPath"].split("[")[0].lstrip(".").split(".")
        node = schema(kind)
        for part in field:
            assert part in node.get("properties", {}), f"{kind} column {col['name']}: no field {part}"
            node = node["properties"][part]


@pytest.mark.parametrize("kind", list(KINDS))
def test_conditions_have_the_cert_manager_shape(kind):
    cond = status(kind)["properties"]["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    item = cond["items"]
    assert set(item["required"]) == {"type", "status"}
    props = item["properties"]
    assert set(props) == {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert props["status"]["enum"] == ["True", "False", "Unknown"]
    assert props["lastTransitionTime"]["format"] == "date-time"
    assert props["observedGeneration"]["type"] == "integer" and props["observedGeneration"]["format"] == "int64"
    expected = (
        (api.COND_READY, api.COND_DISCOVERED, api.COND_KEYS_AVAILABLE)
        if kind in IDP_KINDS
        else (api.COND_READY, api.COND_CREDENTIALS_READY, api.COND_REFERENCES_RESOLVED)
    )
    for t in expected:
        assert t in cond["description"]


# ------------------------------------------------------------------------------------------ contract
IDP_SPEC_FIELDS = {
    "type",
    "description",
    "wellKnownURL",
    "issuer",
    "jwksURI",
    "tokenEndpoint",
    "jwks",
    "allowedAudiences",
    "allowedAlgorithms",
    "clockSkew",
    "maxTokenAge",
    "tls",
    "kubernetes",
    "allowInsecureHTTP",
    "claimMappings",
    "condition",
    "requireJTI",
    "preventReplay",
}
IDP_STATUS_FIELDS = {
    "issuer",
    "tokenEndpoint",
    "jwksURI",
    "discoveredAt",
    "keyCount",
    "stale",
    "observedGeneration",
    "conditions",
}
APP_SPEC_FIELDS = {
    "description",
    "grantTypes",
    "identityProviders",
    "audiences",
    "scopes",
    "accessTokenLifetime",
    "tokenEndpointAuthMethod",
    "credentials",
    "condition",
    "delegation",
}
APP_STATUS_FIELDS = {
    "clientID",
    "credentialsSecret",
    "clientSecretHash",
    "previousClientSecretHash",
    "previousClientSecretExpiresAt",
    "observedGeneration",
    "conditions",
}


def test_field_names_are_those_of_docs_api_md():
    doc = (REPO / "docs" / "api.md").read_text()
    for name in IDP_SPEC_FIELDS | IDP_STATUS_FIELDS | APP_SPEC_FIELDS | APP_STATUS_FIELDS:
        assert f"`{name}" in doc or f".{name}`" in doc, f"{name} is not in docs/api.md"
    for kind in IDP_KINDS:
        assert set(spec(kind)["properties"]) == IDP_SPEC_FIELDS
        assert set(status(kind)["properties"]) == IDP_STATUS_FIELDS | {"kopf"}
        assert set(spec(kind)["required"]) == {"type", "allowedAudiences"}
        assert set(spec(kind)["properties"]["tls"]["properties"]) == {"caBundle"}
        assert set(spec(kind)["properties"]["kubernetes"]["properties"]) == {"useOperatorCredentials"}
    assert set(spec(api.KIND_APP)["properties"]) == APP_SPEC_FIELDS
    assert set(status(api.KIND_APP)["properties"]) == APP_STATUS_FIELDS | {"kopf"}
    assert set(spec(api.KIND_APP)["required"]) == {"grantTypes", "credentials"}
    assert spec(api.KIND_APP)["properties"]["credentials"]["required"] == ["secretName"]


def test_idp_and_cluster_idp_share_one_spec():
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "description"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    assert strip(spec(api.KIND_IDP)) == strip(spec(api.KIND_CLUSTER_IDP))
    assert strip(status(api.KIND_IDP)) == strip(status(api.KIND_CLUSTER_IDP))


@pytest.mark.parametrize("kind", IDP_KINDS)
def test_idp_enums_and_defaults_equal_tokenbridge_api(kind):
    p = spec(kind)["properties"]
    assert tuple(p["type"]["enum"]) == api.IDP_TYPES
    algs = p["allowedAlgorithms"]
    assert tuple(algs["items"]["enum"]) == api.ASYMMETRIC_ALGORITHMS
    assert tuple(algs["default"]) == api.DEFAULT_ALLOWED_ALGORITHMS
    assert algs["x-kubernetes-list-type"] == "set" and algs["minItems"] == 1
    assert not any(a.startswith("HS") or a == "none" for a in algs["items"]["enum"])
    aud = p["allowedAudiences"]
    assert (aud["minItems"], aud["maxItems"]) == (1, 10)
    assert p["allowInsecureHTTP"]["default"] is False
    assert p["kubernetes"]["properties"]["useOperatorCredentials"]["default"] is True
    assert p["clockSkew"]["default"] == "60s"
    keys = p["jwks"]["properties"]["keys"]
    assert keys["maxItems"] >= 1
    members = keys["items"]["properties"]
    for m in ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y", "x5t"):
        assert members[m]["type"] == "string", m
    for m in ("x5c", "key_ops"):
        assert members[m]["type"] == "array" and members[m]["items"]["type"] == "string"
        assert "maxItems" in members[m]
    assert keys["items"]["required"] == ["kty"]


def test_app_enums_and_defaults_equal_tokenbridge_api():
    p = spec(api.KIND_APP)["properties"]
    grants = p["grantTypes"]
    assert tuple(grants["items"]["enum"]) == api.GRANT_TYPES
    assert grants["x-kubernetes-list-type"] == "set"
    assert (grants["minItems"], grants["maxItems"]) == (1, 3)
    assert p["tokenEndpointAuthMethod"]["enum"] == [api.AUTH_METHOD_BASIC, api.AUTH_METHOD_POST]
    assert p["tokenEndpointAuthMethod"]["default"] == api.AUTH_METHOD_BASIC
    assert p["accessTokenLifetime"]["default"] == "15m"
    idps = p["identityProviders"]
    assert idps["x-kubernetes-list-type"] == "map"
    assert idps["x-kubernetes-list-map-keys"] == ["kind", "name"]
    kind = idps["items"]["properties"]["kind"]
    assert kind["enum"] == [api.KIND_IDP, api.KIND_CLUSTER_IDP] and kind["default"] == api.KIND_IDP
    for name in ("audiences", "scopes"):
        assert p[name]["x-kubernetes-list-type"] == "set"
    secret = p["credentials"]["properties"]["secretName"]
    assert {"rule": "self == oldSelf", "message": "credentials.secretName is immutable"} in secret[
        "x-kubernetes-validations"
    ]
    client_id_rules = [r["rule"] for r in status(api.KIND_APP)["x-kubernetes-validations"]]
    assert any("oldSelf.clientID" in r for r in client_id_rules)


def test_durations_use_the_parser_pattern_and_defaults_parse():
    fields = [spec(k)["properties"][f] for k in IDP_KINDS for f in ("clockSkew", "maxTokenAge")]
    fields.append(spec(api.KIND_APP)["properties"]["accessTokenLifetime"])
    for node in fields:
        assert node["pattern"] == DURATION_PATTERN
        if "default" in node:
            assert parse_duration(node["default"]) > 0


def test_policy_fields_are_described_and_bounded():
    fields = [
        spec(k)["properties"][f]
        for k in IDP_KINDS
        for f in ("claimMappings", "condition", "requireJTI", "preventReplay")
    ]
    fields += [spec(api.KIND_APP)["properties"][f] for f in ("condition", "delegation")]
    for node in fields:
        assert "reserved" not in node["description"].lower()
    for k in IDP_KINDS:
        cm = spec(k)["properties"]["claimMappings"]
        assert cm["type"] == "object" and cm["additionalProperties"]["type"] == "string" and cm["maxProperties"]
        assert cm["additionalProperties"]["maxLength"] == spec(k)["properties"]["condition"]["maxLength"] == 4096
        assert spec(k)["properties"]["requireJTI"]["type"] == "boolean"
        assert spec(k)["properties"]["preventReplay"]["type"] == "boolean"
    assert spec(api.KIND_APP)["properties"]["delegation"]["type"] == "boolean"
    assert spec(api.KIND_APP)["properties"]["condition"]["maxLength"] == 4096


@pytest.mark.parametrize("kind", IDP_KINDS)
def test_idp_cel_rules_cover_the_contract(kind):
    rules = {r["message"]: r for r in spec(kind)["x-kubernetes-validations"]}
    assert "either wellKnownURL, or issuer together with jwksURI or jwks, must be set" in rules
    for field in ("wellKnownURL", "issuer", "jwksURI", "tokenEndpoint"):
        msg = f"{field} must be an https:// URL (http:// is allowed only with allowInsecureHTTP: true)"
        assert msg in rules and rules[msg]["fieldPath"] == f".{field}"
        assert "allowInsecureHTTP" in rules[msg]["rule"]
    assert "kubernetes may only be set when type is Kubernetes" in rules


# ------------------------------------------------------------------------------------------ examples
def load_example(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one manifest per file"
    return docs[0]


def expectations(path: Path) -> list[str]:
    return [m.strip() for m in re.findall(r"^# expect: (.+)$", path.read_text(), re.M)]


@pytest.mark.parametrize("path", VALID + INVALID, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_parses_and_names_an_existing_kind(path):
    doc = load_example(path)
    assert doc["apiVersion"] == api.API_VERSION
    assert doc["kind"] in CRDS
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    ns = doc["metadata"].get("namespace")
    if KINDS[doc["kind"]] == "Cluster":
        assert ns is None
    else:
        assert ns in (None, "tokenbridge-examples")
    assert isinstance(doc.get("spec"), dict)
    if path.parent.name == "valid":
        assert not expectations(path), "valid examples carry no # expect: line"
        assert doc["metadata"]["name"] == doc["metadata"]["name"].lower()
    else:
        assert expectations(path), "an invalid example says which error the API server must return (# expect:)"


def test_every_cel_rule_is_exercised_by_an_invalid_example():
    """Each validation rule is proven against the real API server by the cluster tests; rules on oldSelf
    (immutability) are exercised there directly, not by a single manifest."""
    expected = {e for p in INVALID for e in expectations(p)}
    for kind, path, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:
                continue
            assert any(rule["message"] in e for e in expected), (
                f"{kind} {path}: no examples/invalid manifest expects {rule['message']!r}"
            )


def test_valid_examples_cover_every_kind_type_and_grant():
    docs = [load_example(p) for p in VALID]
    assert {d["kind"] for d in docs} == set(KINDS)
    assert {d["spec"]["type"] for d in docs if d["kind"] in IDP_KINDS} == set(api.IDP_TYPES)
    assert {g for d in docs if d["kind"] == api.KIND_APP for g in d["spec"]["grantTypes"]} == set(api.GRANT_TYPES)
    assert any("jwks" in d["spec"] for d in docs if d["kind"] in IDP_KINDS)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert len(names) == len(docs), "example names are unique per kind"
    for d in docs:  # apps reference providers that the examples define
        for ref in d["spec"].get("identityProviders", []):
            assert (ref.get("kind", api.KIND_IDP), ref["name"]) in names


def test_valid_examples_satisfy_the_enums_and_patterns():
    """A cheap offline pre-check of what the cluster test proves for real."""
    for path in VALID:
        doc = load_example(path)
        s, p = doc["spec"], spec(doc["kind"])["properties"]
        assert set(s) <= set(p), f"{path.name}: unknown fields {set(s) - set(p)}"
        for field in ("clockSkew", "maxTokenAge", "accessTokenLifetime"):
            if field in s:
                parse_duration(s[field])
        for alg in s.get("allowedAlgorithms", []):
            assert alg in api.ASYMMETRIC_ALGORITHMS
        for url_field in ("wellKnownURL", "issuer", "jwksURI", "tokenEndpoint"):
            if url_field in s:
                assert s[url_field].startswith("https://") or (
                    s.get("allowInsecureHTTP") and s[url_field].startswith("http://")
                ), path.name
