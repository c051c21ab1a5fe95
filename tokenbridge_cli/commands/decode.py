"""``tokenbridge decode``: a JWT's header and claims, for reading only.

Debugging an exchange usually means asking "what is actually in this token?" (iss, aud, exp). Decoding is not
verifying, so the output says so loudly and nothing here looks up keys or secrets.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import jwt

from . import EXIT_OK, fail, parser, read_argument

TIME_CLAIMS = ("iat", "nbf", "exp", "auth_time")
BANNER = "NOT VERIFIED: decoded only; the signature, issuer, audience and expiry were not checked."

DESCRIPTION = """
Show a JWT's header and claims as pretty JSON, with iat/nbf/exp/auth_time also as ISO 8601 dates (UTC).

The token is only decoded: its signature is NOT verified and no key, JWKS or secret is looked up. A leading
"Bearer " is ignored, so an Authorization header value can be pasted as is.
"""
EXAMPLES = """
tokenbridge decode eyJhbGciOiJFUzI1NiIs...
tokenbridge dev token --sub alice | tokenbridge decode
tokenbridge decode - < token.jwt
tokenbridge decode --json "$ACCESS_TOKEN" | jq .claims.aud
"""


def _relative(seconds: float) -> str:
    """``in 14m`` / ``3h ago``: enough to see at a glance whether a token is still usable."""
    amount = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if amount >= size or unit == "s":
            text = f"{amount // size}{unit}"
            break
    return f"in {text}" if seconds > 0 else f"{text} ago"


def iso(value: Any) -> str | None:
    """An epoch-seconds claim as ISO 8601 UTC, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims without any verification; ValueError with a readable reason."""
    if token.lower().startswith("bearer "):
        token = token[len("bearer ") :].strip()
    parts = token.split(".")
    if len(parts) == 5:
        raise ValueError(
            "this is an encrypted JWT (JWE, five parts); only signed JWTs (JWS, three parts) can be "
            "read without the decryption key"
        )
    if len(parts) != 3:
        raise ValueError(f"not a JWT: a signed JWT has three dot-separated parts, this has {len(parts)}")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    return header, claims


def main(argv: list[str]) -> int:
    p = parser("tokenbridge decode", DESCRIPTION, EXAMPLES)
    p.add_argument(
        "token",
        nargs="?",
        default="-",
        metavar="TOKEN|-",
        help="the JWT, @FILE, or - to read it from stdin (the default)",
    )
    p.add_argument(
        "--json", action="store_true", help='print one JSON object {"verified": false, "header", "claims", "times"}'
    )
    args = p.parse_args(argv)
    try:
        header, claims = decode(read_argument(args.token, "the token"))
    except (ValueError, OSError) as exc:
        return fail(str(exc), "pass the token itself, @FILE, or pipe it into 'tokenbridge decode -'")
    times = {name: iso(claims[name]) for name in TIME_CLAIMS if iso(claims.get(name))}
    print(BANNER, file=sys.stderr)
    if args.json:
        print(json.dumps({"verified": False, "header": header, "claims": claims, "times": times}, indent=2))
        return EXIT_OK
    print("Header:")
    print(json.dumps(header, indent=2))
    print("Claims:")
    print(json.dumps(claims, indent=2, ensure_ascii=False))
    if times:
        print("Times (UTC):")
        now = time.time()
        for name, text in times.items():
            note = _relative(claims[name] - now)
            if name == "exp" and claims[name] <= now:
                note = f"EXPIRED {note}"
            print(f"  {name:<9} {claims[name]:<12} {text}  ({note})")
    return EXIT_OK
