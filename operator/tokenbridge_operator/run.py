"""``tokenbridge operator``: run the kopf operator (``kopf run -m tokenbridge_operator.main``) with our defaults.

Logs are JSON (one object per line). The operator is standalone (one replica) unless ``--peering NAME`` or
``TOKENBRIDGE_PEERING`` names a kopf peering object, which needs kopf's peering CRDs installed.
"""

from __future__ import annotations

import argparse
import os

MODULE = "tokenbridge_operator.main"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenbridge operator", description="Run the operator that reconciles Tokenbridge resources."
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG or ~/.kube/config)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch only this namespace (repeatable; globs as in kopf)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    p.add_argument("--liveness", metavar="URL", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--peering", metavar="NAME", help="kopf peering name for several replicas (env TOKENBRIDGE_PEERING)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs (as kopf's --verbose)")
    p.add_argument("-d", "--debug", action="store_true", help="debug logs, also of the asyncio/HTTP libraries")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def kopf_args(args: argparse.Namespace, environ: os._Environ | dict = os.environ) -> list[str]:
    """The ``kopf`` command line equivalent to ``args``."""
    argv = ["run", "-m", MODULE, "--log-format", "json"]
    argv += [f"--namespace={ns}" for ns in args.namespaces or ()] or ["--all-namespaces"]
    if args.liveness:
        argv += ["--liveness", args.liveness]
    peering = args.peering or environ.get("TOKENBRIDGE_PEERING")
    argv += ["--peering", peering] if peering else ["--standalone"]
    argv += [flag for flag, on in (("--verbose", args.verbose), ("--debug", args.debug), ("--quiet", args.quiet)) if on]
    return argv


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # read by kopf's login and by our own API client alike
    from .config import OperatorConfig

    try:
        config = OperatorConfig.from_env()  # fail fast; the startup handler loads it again for the handlers
    except ValueError as exc:
        p.error(str(exc))
    import kopf.cli  # only when actually running: `tokenbridge --help` must not import kopf

    from . import main as handlers

    if config.cluster_identity_providers:
        handlers.serve_cluster_identity_providers()
    kopf.cli.main.main(args=kopf_args(args), prog_name="tokenbridge operator", standalone_mode=False)
    return 0
