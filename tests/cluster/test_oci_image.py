"""The OCI images image/ builds without a container engine: the Tokenbridge image is the Dockerfile's image (user,
entrypoint, command, environment, labels), holds exactly the locked dependencies, and is cached by its inputs; the
pause image is upstream's shape. tests/cluster/test_node_chart.py runs both on a real node."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.node import built_image, can_run

pytestmark = [pytest.mark.cluster, pytest.mark.node]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenbridge_image():
    if reason := can_run():
        pytest.fail(f"the image build cannot run here: {reason}")
    archive, reference = built_image("build.sh")
    return archive, reference, json.loads((archive.parent / "image.json").read_text())


def blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / digest.replace(":", "/")).read_text())


def dockerfile_runtime_stage() -> dict[str, str]:
    """The last stage's instructions (continuation lines joined), by name; the runtime image's config."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    stage = text.rsplit("\nFROM ", 1)[1]
    return {
        m[0]: m[1].strip()
        for m in re.findall(r"^(USER|ENTRYPOINT|CMD|WORKDIR|EXPOSE|ENV|LABEL) (.*)$", stage, re.MULTILINE)
    }


def test_the_image_is_the_dockerfiles_image(tokenbridge_image):
    archive, reference, meta = tokenbridge_image
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert reference == f"docker.io/library/tokenbridge:{version}" and archive.is_file()
    layout = Path(meta["layout"])
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == reference
    manifest = blob(layout, entry["digest"])
    config = blob(layout, manifest["config"]["digest"])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(manifest["layers"]) == 2  # the Debian base, then the venv and the user
    c = config["config"]
    docker = dockerfile_runtime_stage()
    assert c["User"] == docker["USER"] == "10001:10001"
    assert c["Entrypoint"] == json.loads(docker["ENTRYPOINT"])
    assert c["Cmd"] == json.loads(docker["CMD"])
    assert c["WorkingDir"] == docker["WORKDIR"]
    assert set(c["ExposedPorts"]) == {f"{docker['EXPOSE']}/tcp"}
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["PATH"].startswith("/opt/tokenbridge/bin:")
    assert {k: v for k, v in env.items() if k != "PATH"} == dict(
        kv.split("=", 1) for kv in docker["ENV"].split() if not kv.startswith("PATH=")
    )
    labels = c["Labels"]
    dockerfile_labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', docker["LABEL"]))
    for key, value in dockerfile_labels.items():
        if "$" not in value:
            assert labels[key] == value, key
    assert labels["org.opencontainers.image.version"] == version
    assert set(dockerfile_labels) | {"org.opencontainers.image.created"} == set(labels)
    inputs = [
        "tokenbridge",
        "tokenbridge_cli",
        "operator",
        "exchange_server",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "constraints.txt",
        "image",
    ]
    commit = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", *inputs], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] in (commit, f"{commit}-dirty")
    assert manifest["annotations"] == labels


def test_the_image_holds_the_locked_dependencies(tokenbridge_image):
    archive, _, meta = tokenbridge_image
    installed = dict(
        line.split("==") for line in (archive.parent / "python-packages.txt").read_text().split() if "==" in line
    )
    locked = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    installed.pop("tokenbridge")
    assert {"gunicorn", "gevent", "packaging", "falcon", "kopf", "PyJWT"} <= set(installed)
    unpinned = {
        name: version
        for name, version in installed.items()
        if name not in ("pip", "setuptools") and locked.get(name) != version
    }
    assert not unpinned, f"in the image but not as locked in constraints.txt: {unpinned}"


def test_a_rebuild_with_the_same_inputs_is_the_cached_image(tokenbridge_image):
    archive, reference, meta = tokenbridge_image
    assert built_image("build.sh") == (archive, reference)
    assert json.loads((archive.parent / "image.json").read_text()) == meta


def test_the_pause_image_is_upstreams_shape():
    archive, reference = built_image("build-pause.sh")
    assert re.fullmatch(r"registry\.k8s\.io/pause:3\.\d+(\.\d+)?", reference) and archive.is_file()
    layout = archive.parent / "layout"
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == reference
    manifest = blob(layout, entry["digest"])
    config = blob(layout, manifest["config"]["digest"])["config"]
    assert config["User"] == "65535:65535" and config["Entrypoint"] == ["/pause"]
    assert len(manifest["layers"]) == 1
