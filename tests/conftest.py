"""Shared fixtures. ``control_plane`` is a real etcd + kube-apiserver + kube-controller-manager (see
tests/cluster/controlplane.py), started once per session and always torn down."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "cluster"))
from controlplane import ControlPlane, build_binaries  # noqa: E402


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, pytestconfig):
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # show build progress: a cold build takes minutes
        bin_dir = build_binaries()
    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"), bin_dir)
    try:
        cp.start()
        cp.install_crds()
        yield cp
    finally:
        cp.stop()
