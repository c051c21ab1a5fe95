"""The developer-facing ``tokenbridge`` subcommands (discover, decode, exchange, dev), one module each.

Every module has ``main(argv) -> int``. They share one exit-code contract, so scripts can tell a refusal from a
typo: 0 done, 1 refused or failed (the message says why and what to do), 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from tokenbridge import api

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EXIT_CODES = """\
exit codes:
  0  success
  1  refused or failed (the message says why and what to do)
  2  usage error"""

# The short names exchange and explain accept for --grant and the token-type options.
GRANTS = {
    "token-exchange": api.GRANT_TOKEN_EXCHANGE,
    "jwt-bearer": api.GRANT_JWT_BEARER,
    "client_credentials": api.GRANT_CLIENT_CREDENTIALS,
}
TOKEN_TYPES = {
    "jwt": api.TOKEN_TYPE_JWT,
    "id_token": api.TOKEN_TYPE_ID_TOKEN,
    "access_token": api.TOKEN_TYPE_ACCESS_TOKEN,
}


def parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help ends with worked examples and the exit codes."""
    return argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(description).strip(),
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ") + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fail(message: str, hint: str | None = None) -> int:
    """Print an error (and what to do about it) to stderr; returns EXIT_FAILED."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return EXIT_FAILED


def read_argument(value: str, what: str) -> str:
    """A value given inline, as ``@file``, or as ``-`` (stdin); surrounding whitespace removed."""
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            text = f.read()
    else:
        text = value
    text = text.strip()
    if not text:
        raise ValueError(f"{what} is empty")
    return text
