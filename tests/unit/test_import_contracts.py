"""One direction of imports: tokenbridge_cli > tokenbridge_exchange | tokenbridge_operator > tokenbridge.

The contracts are ``[tool.importlinter]`` in pyproject.toml; this runs ``lint-imports`` on the repository (so
``make test`` enforces them, not only ``make lint``) and on copies with one forbidden import added, so a contract
that stopped checking anything (a renamed package, a typo in a layer) fails here too.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# package -> its folder, relative to the repository (operator/ and exchange_server/ are source roots)
PACKAGES = {
    "tokenbridge": "tokenbridge",
    "tokenbridge_cli": "tokenbridge_cli",
    "tokenbridge_exchange": "exchange_server/tokenbridge_exchange",
    "tokenbridge_operator": "operator/tokenbridge_operator",
}
SOURCE_ROOTS = (".", "operator", "exchange_server")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the tree at root first on the path, ahead of the editable install's finder for the repository
    env["PYTHONPATH"] = os.pathsep.join(str(root / r) for r in SOURCE_ROOTS)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_repository_keeps_every_import_contract():
    assert LINT_IMPORTS.exists(), "import-linter is not installed (make install)"
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout, out.stdout


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("tokenbridge", "tokenbridge_exchange"),  # the core above a component
        ("tokenbridge", "tokenbridge_cli"),  # the core above the command line
        ("tokenbridge_exchange", "tokenbridge_operator"),  # one component importing the other
        ("tokenbridge_operator", "tokenbridge_exchange"),
        ("tokenbridge_operator", "tokenbridge_cli"),  # a component above the command line
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, importer, imported):
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for folder in PACKAGES.values():
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    module = tmp_path / PACKAGES[importer] / "__init__.py"
    module.write_text(module.read_text() + f"\nimport {imported}  # noqa: the violation under test\n")
    out = lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "BROKEN" in out.stdout and f"{importer} -> {imported}" in out.stdout, out.stdout
