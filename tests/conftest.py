"""Fixtures shared by the test directories: the IdPs and the clock fresh for each test, the cluster and helm once
per session.

``control_plane`` is a real etcd + kube-apiserver + kube-controller-manager (see tests/support/controlplane.py),
started once per session and always torn down. Where a node can run (root), the node's network
(tests/support/node.py) is set up first, so the API server is reachable from pods; the node itself is started by
the tests that need it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane, build_binaries
from tests.support.exchange import Clock
from tests.support.idp import HttpsIdP, IdP
from tests.support.node import GATEWAY, NodeNetwork, can_run


@pytest.fixture
def idp() -> IdP:
    """An RS256 issuer, https://idp.example.test, whose JWKS the tests put inline."""
    return IdP()


@pytest.fixture
def clock() -> Clock:
    """The in-process server's clock, at NOW until a test moves it."""
    return Clock()


@pytest.fixture
def okta():
    """An Okta-shaped IdP served over HTTPS on loopback, for discovery and fetching."""
    with HttpsIdP("okta") as served:
        yield served


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, pytestconfig):
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # show build progress: a cold build takes minutes
        bin_dir = build_binaries()
    network = NodeNetwork().up() if can_run() is None else None
    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"), bin_dir, node_ip=GATEWAY if network else None)
    try:
        cp.start()
        cp.install_crds()
        yield cp
    finally:
        cp.stop()
        if network:
            network.down()


@pytest.fixture(scope="session")
def helm() -> str:
    """helm, built from its Go module by tests/cluster/build-helm.sh (cached)."""
    out = subprocess.run(
        ["bash", str(Path(__file__).parent / "cluster" / "build-helm.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / "helm")
