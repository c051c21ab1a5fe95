"""The ``tokenbridge`` command: one entry point, a subcommand per component.

Each subcommand's module is imported only when it runs, so ``tokenbridge serve`` never loads kopf and
``tokenbridge operator`` never loads falcon.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
SUBCOMMANDS = {
    "serve": ("tokenbridge_exchange.serve", "run the token exchange server (standalone from manifests, or from a cluster)"),
    "operator": ("tokenbridge_operator.run", "run the Kubernetes operator that reconciles Tokenbridge resources"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="tokenbridge",
        description="Kubernetes-native OAuth 2.0 token exchange for external identity providers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
