"""The ``tokenbridge`` command: one entry point, a subcommand per component or task.

Each subcommand's module is imported only when it runs, so ``tokenbridge serve`` never loads kopf and
``tokenbridge operator`` never loads falcon. The subcommand gets the rest of the command line untouched (its own
parser handles ``--help``, ``-`` and ``--``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
SUBCOMMANDS = {
    "serve": (
        "tokenbridge_exchange.serve",
        "run the token exchange server (standalone from manifests, or from a cluster)",
    ),
    "operator": ("tokenbridge_operator.run", "run the Kubernetes operator that reconciles Tokenbridge resources"),
    "discover": ("tokenbridge_cli.commands.discover", "show what the operator would discover from a well-known URL"),
    "exchange": (
        "tokenbridge_cli.commands.exchange",
        "exchange a token at a token endpoint (or print the curl command)",
    ),
    "explain": (
        "tokenbridge_cli.commands.explain",
        "show step by step what the token endpoint would decide for a token",
    ),
    "decode": ("tokenbridge_cli.commands.decode", "show a JWT's header and claims (NOT verified)"),
    "dev": (
        "tokenbridge_cli.commands.dev",
        "DEVELOPMENT ONLY: a local server and issuer, ready to exchange in a minute",
    ),
}

EPILOG = """\
get started (development only):
  tokenbridge dev                      # local server + dev issuer, prints a walkthrough
  tokenbridge dev token --sub alice    # a subject token from the dev issuer

'tokenbridge COMMAND --help' shows each command's options and examples.

exit codes: 0 success, 1 refused or failed, 2 usage error"""

DISTRIBUTION = "tokenbridge"
# a source tree run without installing (PYTHONPATH=.): the version its pyproject.toml states
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")


def version() -> str:
    """The installed distribution's version; else the source tree's pyproject.toml's; else ``unknown``."""
    from importlib import metadata  # only for --version: it costs more to import than the rest of this module

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(PYPROJECT, "rb") as f:
            project = tomllib.load(f).get("project", {})
    except (OSError, ValueError):
        return "unknown"
    return str(project["version"]) if project.get("name") == DISTRIBUTION and "version" in project else "unknown"


class VersionAction(argparse.Action):
    """``--version``: like argparse's own, but the version is looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit", **kwargs
        )

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="tokenbridge",
        description="Kubernetes-native OAuth 2.0 token exchange for external identity providers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        try:
            return module.main(argv[1:])
        except BrokenPipeError:  # output piped into head & co.: not an error worth a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            return 130
    parser.parse_args(argv)  # --help exits 0, an unknown command 2
    parser.print_help(sys.stderr)  # no command at all
    return 2


if __name__ == "__main__":
    sys.exit(main())
