"""Generates docs/reference.md, the field-by-field reference of every CRD, from the CRD YAML in crds/.

The CRD schemas are the source of truth (crds/generate.py writes them); a hand-kept reference would drift, so
this renders every field with its type, description, default and validation, and tests/unit/test_reference.py
fails when the checked-in file differs from this script's output.

    .venv/bin/python docs/generate_reference.py          # rewrite docs/reference.md
    .venv/bin/python docs/generate_reference.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
OUTPUT = REPO / "docs" / "reference.md"
COMMAND = ".venv/bin/python docs/generate_reference.py"


def load_crds(crd_dir: Path = CRD_DIR) -> list[dict[str, Any]]:
    return [doc for path in sorted(crd_dir.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code(value: Any) -> str:
    """A value as inline code (escaped for the table later, by ``cell``)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + " ".join(text.split()).replace("`", "'") + "`"


def type_name(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        item = node.get("items") or {}
        list_type = node.get("x-kubernetes-list-type")
        noun = {"set": "set", "map": "list-map"}.get(list_type, "list")
        return f"{noun} of {type_name(item)}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {type_name(node['additionalProperties'])}"
    if node.get("format"):
        return f"{kind} ({node['format']})"
    return kind


def constraints(node: dict[str, Any], required: bool) -> list[str]:
    out = ["**required**"] if required else []
    if "default" in node:
        out.append(f"default {code(node['default'])}")
    enum = node.get("enum") or (node.get("items") or {}).get("enum")
    if enum:
        out.append("one of " + ", ".join(code(v) for v in enum))
    for key, what in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
        ("minimum", "minimum"),
    ):
        if key in node:
            out.append(f"{what} {node[key]}")
    item = node.get("items") or {}
    for key, what in (("minLength", "item min length"), ("maxLength", "item max length")):
        if key in item and node.get("type") == "array" and item.get("type") == "string":
            out.append(f"{what} {item[key]}")
    for pattern in (node.get("pattern"), item.get("pattern") if item.get("type") == "string" else None):
        if pattern:
            out.append(f"pattern {code(pattern)}")
    if node.get("x-kubernetes-list-map-keys"):
        out.append("keyed by " + ", ".join(code(k) for k in node["x-kubernetes-list-map-keys"]))
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.append("free-form (unknown fields kept)")
    for rule in node.get("x-kubernetes-validations") or ():
        if not rule.get("fieldPath"):
            out.append(f"rule: {rule['message']}")
    return out


def fields(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, node, required) for every field under ``node``, depth first in schema order."""
    required = set(node.get("required") or ())
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, child, name in required
        yield from _children(child, path)


def _children(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    if node.get("type") == "array" and (node.get("items") or {}).get("properties"):
        yield from fields(node["items"], path + "[]")
    elif node.get("properties"):
        yield from fields(node, path)
    elif isinstance(node.get("additionalProperties"), dict) and node["additionalProperties"].get("properties"):
        yield from fields(node["additionalProperties"], path + "{}")


def placed_rules(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    """Rules an object declares about one of its fields (``fieldPath``): (field path, message)."""
    for rule in node.get("x-kubernetes-validations") or ():
        if rule.get("fieldPath"):
            yield f"{prefix}{rule['fieldPath']}", rule["message"]
    for path, child, _ in fields(node, prefix):
        for rule in child.get("x-kubernetes-validations") or ():
            if rule.get("fieldPath"):
                yield f"{path}{rule['fieldPath']}", rule["message"]


def section(title: str, node: dict[str, Any], prefix: str) -> list[str]:
    lines = [f"### {title}", ""]
    if node.get("description"):
        lines += [cell(node["description"]), ""]
    rules: dict[str, list[str]] = {}
    for path, message in placed_rules(node, prefix):
        rules.setdefault(path, []).append(message)
    lines += ["| Field | Type | Description | Validation |", "| --- | --- | --- | --- |"]
    for path, child, required in fields(node, prefix):
        notes = constraints(child, required) + [f"rule: {m}" for m in rules.pop(path, ())]
        lines.append(
            f"| `{path}` | {cell(type_name(child))} | {cell(child.get('description', ''))} | {cell('; '.join(notes))} |"
        )
    lines.append("")
    own = [rule["message"] for rule in node.get("x-kubernetes-validations") or () if not rule.get("fieldPath")]
    leftover = own + [f"{path}: {m}" for path, messages in rules.items() for m in messages]
    if leftover:
        lines += ["Rules on the whole object:", ""] + [f"- {cell(m)}" for m in leftover] + [""]
    return lines


def render_crd(crd: dict[str, Any]) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    (version,) = spec["versions"]
    root = version["schema"]["openAPIV3Schema"]
    scope = "cluster-scoped" if spec["scope"] == "Cluster" else "namespaced"
    short = ", ".join(f"`{s}`" for s in names.get("shortNames") or ())
    lines = [
        f"## {names['kind']}",
        "",
        f"`apiVersion: {spec['group']}/{version['name']}`, {scope}, plural `{names['plural']}`"
        + (f", short name {short}" if short else "")
        + ".",
        "",
    ]
    if root.get("description"):
        lines += [cell(root["description"]), ""]
    columns = version.get("additionalPrinterColumns") or ()
    if columns:
        default = [c["name"] for c in columns if not c.get("priority")]
        wide = [c["name"] for c in columns if c.get("priority")]
        lines += [
            f"`kubectl get {names.get('shortNames', [names['plural']])[0]}` shows "
            + ", ".join(default)
            + ("; `-o wide` adds " + ", ".join(wide) if wide else "")
            + ".",
            "",
        ]
    for part in ("spec", "status"):
        if part in root.get("properties", {}):
            lines += section(f"{names['kind']}.{part}", root["properties"][part], part)
    return lines


def render(crds: list[dict[str, Any]]) -> str:
    kinds = [crd["spec"]["names"]["kind"] for crd in crds]
    lines = [
        "# CRD field reference",
        "",
        f"Generated by `docs/generate_reference.py` from `crds/*.yaml`; do not edit by hand (run `{COMMAND}`).",
        "The short form, with the semantics shared by the operator and the server, is in [api.md](api.md).",
        "",
        "Durations are Go style (`90s`, `5m`, `1h30m`). `[]` marks the items of a list.",
        "",
    ]
    lines += [f"- [{kind}](#{kind.lower()})" for kind in kinds] + [""]
    for crd in crds:
        lines += render_crd(crd)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render(load_crds())
    if argv == ["--check"]:
        if OUTPUT.exists() and OUTPUT.read_text() == text:
            return 0
        print(f"{OUTPUT.relative_to(REPO)} is out of date with crds/: run {COMMAND}", file=sys.stderr)
        return 1
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
