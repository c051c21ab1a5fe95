"""Client credentials: generation and the published hash the exchange server verifies against.

Client secrets are 256 random bits, so a fast hash is enough (no dictionary to guess from) and lets the server
verify without ever reading the Secret. The server compares hashes in constant time
(``tokenbridge_exchange.client_auth``).
"""

from __future__ import annotations

import hashlib
import secrets

HASH_PREFIX = "sha256:"


def generate_client_id() -> str:
    return "tb-" + secrets.token_hex(12)


def generate_client_secret() -> str:
    """256 random bits, base64url. Never starting with "-": command lines (argparse, getopt) would read
    ``--client-secret -abc...`` as an option (redrawing costs less than 0.03 bits of entropy)."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def hash_client_secret(secret: str) -> str:
    return HASH_PREFIX + hashlib.sha256(secret.encode()).hexdigest()
