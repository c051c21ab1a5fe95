"""``tokenbridge --version``: the installed distribution's version, else a source tree's pyproject.toml's."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tokenbridge_cli import cli

REPO = Path(__file__).resolve().parents[2]
PROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_the_installed_distributions(capsys):
    assert metadata.version("tokenbridge") == PROJECT_VERSION
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tokenbridge {PROJECT_VERSION}\n"


def test_console_script_prints_the_version():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "tokenbridge"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"tokenbridge {PROJECT_VERSION}\n"


def test_not_installed_falls_back_to_pyproject_then_unknown(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.PYPROJECT == str(REPO / "pyproject.toml")
    assert cli.version() == PROJECT_VERSION
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something-else"\nversion = "9.9"\n')
    monkeypatch.setattr(cli, "PYPROJECT", str(other))
    assert cli.version() == "unknown"
    other.write_text("not toml [")
    assert cli.version() == "unknown"
    monkeypatch.setattr(cli, "PYPROJECT", str(tmp_path / "missing.toml"))
    assert cli.version() == "unknown"
