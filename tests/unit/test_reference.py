"""docs/reference.md is exactly what docs/generate_reference.py makes of crds/, and it documents every field."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "generate_reference.py"

spec = importlib.util.spec_from_file_location("generate_reference", SCRIPT)
generate_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_reference)


def test_reference_is_up_to_date():
    expected = generate_reference.render(generate_reference.load_crds())
    actual = (REPO / "docs" / "reference.md").read_text()
    assert actual == expected, "docs/reference.md is out of date: run .venv/bin/python docs/generate_reference.py"


def test_check_mode_exit_status():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_field_and_rule_is_documented():
    text = (REPO / "docs" / "reference.md").read_text()
    for crd in generate_reference.load_crds():
        kind = crd["spec"]["names"]["kind"]
        assert f"## {kind}\n" in text
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            node = root["properties"][part]
            for path, child, _ in generate_reference.fields(node, part):
                assert f"| `{path}` |" in text, f"{kind}: {path} is missing"
                for rule in child.get("x-kubernetes-validations") or ():
                    assert rule["message"] in text
            for rule in node.get("x-kubernetes-validations") or ():
                assert rule["message"] in text
        for column in crd["spec"]["versions"][0].get("additionalPrinterColumns") or ():
            assert column["name"] in text


def test_a_schema_change_changes_the_reference():
    """The comparison above can fail: a changed description, default or enum shows in the output."""
    crds = generate_reference.load_crds()
    before = generate_reference.render(crds)
    changed = copy.deepcopy(crds)
    app = next(c for c in changed if c["spec"]["names"]["kind"] == "OAuthApplication")
    props = app["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    props["accessTokenLifetime"]["default"] = "5m"
    props["tokenEndpointAuthMethod"]["enum"].append("private_key_jwt")
    after = generate_reference.render(changed)
    assert after != before
    assert "default `5m`" in after and "`private_key_jwt`" in after


def test_table_cells_escape_pipes_once():
    row = generate_reference.cell("pattern " + generate_reference.code("^(a|b)$"))
    assert row == "pattern `^(a\\|b)$`"
