"""The source-root layout must never shadow the standard library, and the console script must be installed."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cwd", [REPO, REPO / "operator", REPO / "exchange_server"])
def test_stdlib_operator_is_not_shadowed(cwd):
    code = (
        "import operator, json, tokenbridge, tokenbridge_cli, tokenbridge_operator, tokenbridge_exchange; "
        "assert operator.itemgetter(1)([0, 7]) == 7; print(operator.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(str(REPO)), f"'operator' resolved inside the repo: {out.stdout}"


def test_operator_folder_is_a_source_root_not_a_package():
    assert not (REPO / "operator" / "__init__.py").exists()
    assert not (REPO / "exchange_server" / "__init__.py").exists()


def test_console_script_lists_subcommands():
    exe = shutil.which("tokenbridge", path=str(Path(sys.executable).parent))
    assert exe, "the tokenbridge console script is not installed next to this interpreter"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "serve" in out.stdout and "operator" in out.stdout
    bare = subprocess.run([exe], capture_output=True, text=True)
    assert bare.returncode == 2


def test_python_dash_m_runs_the_same_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tokenbridge_cli", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: tokenbridge ") and "serve" in out.stdout and "operator" in out.stdout
