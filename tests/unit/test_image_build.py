"""The image's build step without a container engine: exactly what the Dockerfile COPYs, installed with a plain
(non-editable) `pip install .`, must give both entrypoints. This is what `docker build` would run."""

import subprocess
import sys

from tests.support.dockerfile import copy_build_context


def test_dockerfile_build_context_installs_both_entrypoints(tmp_path):
    context = tmp_path / "context"
    sources = copy_build_context(context)
    assert {"pyproject.toml", "README.md", "tokenbridge/", "tokenbridge_cli/", "operator/", "exchange_server/"} <= set(
        sources
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("tokenbridge-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (target / "operator").exists(), "the wheel must not ship a top-level 'operator' package"
    # Run away from the repository, the installed wheel first on the path (dependencies from this venv).
    code = (
        "import operator, tokenbridge_cli.cli, tokenbridge_exchange.serve, tokenbridge_operator.main, sys; "
        "assert tokenbridge_cli.cli.__file__.startswith(sys.argv[1]), tokenbridge_cli.cli.__file__; "
        "assert operator.__file__.startswith(sys.base_prefix); "
        "sys.argv = ['tokenbridge', '--help']; tokenbridge_cli.cli.main()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "serve" in run.stdout and "operator" in run.stdout
