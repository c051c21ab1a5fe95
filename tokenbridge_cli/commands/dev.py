"""``tokenbridge dev``: a full token exchange on a laptop in a minute. DEVELOPMENT ONLY.

A newcomer needs an external IdP to try an exchange; this command plays that IdP. It keeps an EC key pair in a
directory, writes the manifests a standalone server reads (an IdentityProvider with the public key inline, so
nothing is ever fetched; an OAuthApplication with all three grants; its credentials Secret), runs ``tokenbridge
serve`` on loopback, and prints a copy-paste walkthrough. ``tokenbridge dev token`` mints subject tokens with the
key. The directory is reused on the next start, so minted tokens and the client secret stay valid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tokenbridge import api
from tokenbridge.client_secrets import generate_client_secret
from tokenbridge.durations import parse_duration
from tokenbridge.signing import thumbprint

from . import EXIT_FAILED, EXIT_OK, fail, parser

DEFAULT_DIR = ".tokenbridge-dev"
DEFAULT_PORT = 8080
KEY_FILE = "dev-idp-key.pem"  # not .yaml/.json: the server reads every manifest file in the directory
MANIFEST_FILE = "manifests.yaml"
DEV_ISSUER = "https://dev-idp.tokenbridge.local"  # never resolved: the IdP's keys are inline
SUBJECT_AUDIENCE = "tokenbridge-dev"
API_AUDIENCE = "api://dev-api"
SCOPES = ("read", "write")
CLIENT_ID = "dev-client"
IDP_NAME, APP_NAME, SECRET_NAME = "dev-idp", "dev-app", "dev-app-credentials"
ALGORITHM = "ES256"
READY_TIMEOUT = 30.0

WARNING = (
    "DEVELOPMENT ONLY: 'tokenbridge dev' keeps a private signing key and a client secret unencrypted on disk "
    "and serves plain http on loopback. Never use it, its key or its manifests in production."
)

DESCRIPTION = f"""
{WARNING}

Starts a local Tokenbridge and a development identity provider in one command:
  1. keeps an EC P-256 key pair for the dev issuer {DEV_ISSUER} in DIR (created once, then reused);
  2. writes DIR/{MANIFEST_FILE}: an IdentityProvider with the public key inline (nothing is fetched), an
     OAuthApplication with the token-exchange, jwt-bearer and client_credentials grants, and a Secret with its
     generated client secret;
  3. runs 'tokenbridge serve --manifests DIR' on http://127.0.0.1:PORT and prints a walkthrough
     (mint -> exchange -> decode) once it is ready. Ctrl-C stops it.

'tokenbridge dev token' mints subject tokens signed by the dev issuer (see 'tokenbridge dev token --help').
Edit DIR/{MANIFEST_FILE} while the server runs: changes are picked up within a second.
"""
EXAMPLES = """
tokenbridge dev                              # http://127.0.0.1:8080, files in .tokenbridge-dev/
tokenbridge dev --port 9090 --dir /tmp/tb-dev
tokenbridge dev token --sub alice            # in another terminal
tokenbridge dev --reset                      # new key, client secret and manifests
"""
TOKEN_DESCRIPTION = f"""
{WARNING}

Mint a subject token signed by the dev issuer's key in DIR (written by 'tokenbridge dev'), as an external IdP
would issue it: iss {DEV_ISSUER}, the given sub and aud, iat/nbf now, exp after --ttl, a random jti. The token
is printed alone on stdout, ready for $(...).
"""
TOKEN_EXAMPLES = """
SUBJECT=$(tokenbridge dev token --sub alice)
tokenbridge dev token --sub bob --ttl 1h --claim email=bob@example.com --claim 'groups=["admins"]'
tokenbridge dev token --sub alice --aud someone-else     # an audience the IdP refuses: the exchange fails
"""


class _QuotingDumper(yaml.SafeDumper):
    """Quotes strings YAML 1.1 reads as booleans: kubectl would turn a JWK's bare ``y:`` key into ``true:``."""


_YAML11_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false"})
_QuotingDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style='"' if value.lower() in _YAML11_WORDS else None
    ),
)


def public_jwk(private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk = json.loads(jwt.get_algorithm_by_name(ALGORITHM).to_jwk(private_key.public_key()))
    return {**jwk, "kid": thumbprint(jwk), "alg": ALGORITHM, "use": "sig"}


def load_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    """The dev issuer's private key; FileNotFoundError when 'tokenbridge dev' has not run in ``directory``."""
    key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / KEY_FILE} is not an EC private key")
    return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def manifests(jwk: dict[str, Any], client_secret: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_IDP,
            "metadata": {"name": IDP_NAME},
            "spec": {
                "type": api.IDP_OIDC,
                "description": "tokenbridge dev: development issuer (DEVELOPMENT ONLY)",
                "issuer": DEV_ISSUER,
                "jwks": {"keys": [jwk]},
                "allowedAudiences": [SUBJECT_AUDIENCE],
                "allowedAlgorithms": [ALGORITHM],
            },
        },
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": APP_NAME},
            "spec": {
                "description": "tokenbridge dev: an application with every grant (DEVELOPMENT ONLY)",
                "grantTypes": list(api.GRANT_TYPES),
                "identityProviders": [{"name": IDP_NAME}],
                "audiences": [API_AUDIENCE],
                "scopes": list(SCOPES),
                "accessTokenLifetime": "15m",
                "credentials": {"secretName": SECRET_NAME},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET_NAME},
            "type": "Opaque",
            "stringData": {"client_id": CLIENT_ID, "client_secret": client_secret},
        },
    ]


def prepare(directory: Path, reset: bool = False) -> str:
    """Create (or reuse) the key and manifests in ``directory``; returns the client secret."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".gitignore").write_text("# tokenbridge dev: a private key and a client secret live here\n*\n")
    key_path, manifest_path = directory / KEY_FILE, directory / MANIFEST_FILE
    if reset or not key_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        reset = True
    if not reset and manifest_path.exists():
        for doc in yaml.safe_load_all(manifest_path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                return str((doc.get("stringData") or {}).get("client_secret", ""))
    client_secret = generate_client_secret()  # as the operator's: never starting with "-"
    text = yaml.dump_all(
        manifests(public_jwk(load_key(directory)), client_secret), Dumper=_QuotingDumper, sort_keys=False
    )
    _write_private(manifest_path, (f"# Written by 'tokenbridge dev'. {WARNING}\n---\n" + text).encode())
    return client_secret


def command_name() -> str:
    """How the user can call us again: 'tokenbridge' when that is on PATH, else the venv's script."""
    script = Path(sys.executable).parent / "tokenbridge"
    found = shutil.which("tokenbridge")
    if found and (not script.exists() or Path(found).resolve() == script.resolve()):
        return "tokenbridge"
    return str(script) if script.exists() else f"{sys.executable} -m tokenbridge_cli"


def walkthrough(base: str, directory: Path, client_secret: str) -> str:
    tb = command_name()
    dir_flag = "" if str(directory) == DEFAULT_DIR else f" --dir {directory}"
    return f"""
Tokenbridge (DEVELOPMENT ONLY) is serving {base}, configured from {directory}/{MANIFEST_FILE}.
  dev issuer   {DEV_ISSUER}   (key {directory}/{KEY_FILE}; subject tokens for audience {SUBJECT_AUDIENCE})
  client       {CLIENT_ID}   (OAuthApplication {APP_NAME}: token-exchange, jwt-bearer, client_credentials;
               audience {API_AUDIENCE}, scopes {" ".join(SCOPES)})

Try it from another terminal:

  # 1. mint a subject token, as an external identity provider would
  SUBJECT=$({tb} dev token{dir_flag} --sub alice)

  # 2. exchange it for a Tokenbridge access token (RFC 8693)
  export TOKENBRIDGE_CLIENT_ID={CLIENT_ID} TOKENBRIDGE_CLIENT_SECRET={client_secret}
  ACCESS=$({tb} exchange --issuer {base} --subject-token "$SUBJECT" --audience {API_AUDIENCE})

  # 3. look inside (decoded only, not verified)
  {tb} decode "$ACCESS"

  # the same exchange as a curl command, and a refusal (wrong audience: exit 1, invalid_grant)
  {tb} exchange --issuer {base} --subject-token "$SUBJECT" --curl
  {tb} exchange --issuer {base} --subject-token "$({tb} dev token{dir_flag} --aud someone-else)"

APIs verify issued tokens with {base}/.well-known/jwks.json (issuer {base}).
Ctrl-C stops the server.
"""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(proc: subprocess.Popen, base: str) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def serve(argv: list[str]) -> int:
    p = parser("tokenbridge dev", DESCRIPTION, EXAMPLES)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"loopback port to serve on (default {DEFAULT_PORT})")
    p.add_argument(
        "--dir", default=DEFAULT_DIR, type=Path, help=f"where the key and manifests live (default {DEFAULT_DIR}/)"
    )
    p.add_argument("--reset", action="store_true", help="generate a new key, client secret and manifests")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error("--port must be between 1 and 65535")
    print(f"WARNING: {WARNING}", file=sys.stderr)
    if not _port_free(args.port):
        return fail(f"127.0.0.1:{args.port} is already in use", f"stop what runs there, or pass --port {args.port + 1}")
    try:
        client_secret = prepare(args.dir, args.reset)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return fail(f"cannot prepare {args.dir}: {exc}", "fix or remove the directory, or pass --reset")
    base = f"http://127.0.0.1:{args.port}"
    print(f"starting tokenbridge serve on {base} (manifests in {args.dir}/) ...", file=sys.stderr)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenbridge_cli",
            "serve",
            "--manifests",
            str(args.dir),
            "--bind",
            f"127.0.0.1:{args.port}",
            "--issuer",
            base,
            "--workers",
            "1",
        ]
    )

    def stop(signum: int, frame: Any) -> None:
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not _wait_ready(proc, base):
        proc.terminate()
        proc.wait()
        return fail(
            f"the server did not become ready within {READY_TIMEOUT:.0f}s (exit status {proc.returncode})",
            "its log is above",
        )
    print(walkthrough(base, args.dir, client_secret), flush=True)
    code = proc.wait()
    return EXIT_OK if code in (0, -signal.SIGTERM, -signal.SIGINT) else EXIT_FAILED


def _claim(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--claim {text!r} is not NAME=VALUE")
    try:
        return name, json.loads(value)  # numbers, booleans, lists, objects
    except ValueError:
        return name, value


def mint(
    directory: Path, subject: str, audiences: list[str], ttl: float, claims: dict[str, Any], now: float | None = None
) -> str:
    key = load_key(directory)
    now = time.time() if now is None else now
    body: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "sub": subject,
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + ttl),
        "jti": uuid.uuid4().hex,
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm=ALGORITHM, headers={"kid": public_jwk(key)["kid"], "typ": "JWT"})


def token(argv: list[str]) -> int:
    p = parser("tokenbridge dev token", TOKEN_DESCRIPTION, TOKEN_EXAMPLES)
    p.add_argument("--sub", default="alice", help="the subject (default alice)")
    p.add_argument(
        "--aud",
        action="append",
        metavar="AUDIENCE",
        help=f"audience, repeatable (default {SUBJECT_AUDIENCE}, the one the dev IdP allows)",
    )
    p.add_argument("--ttl", default="10m", help="lifetime, Go duration such as 90s, 10m, 1h (default 10m)")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim, repeatable; VALUE is JSON when it parses as JSON, else a string",
    )
    p.add_argument("--dir", default=DEFAULT_DIR, type=Path, help=f"the dev directory (default {DEFAULT_DIR}/)")
    args = p.parse_args(argv)
    try:
        ttl = parse_duration(args.ttl)
        claims = dict(_claim(c) for c in args.claim)
    except ValueError as exc:
        p.error(str(exc))
    try:
        print(mint(args.dir, args.sub, args.aud or [SUBJECT_AUDIENCE], ttl, claims))
    except FileNotFoundError:
        dir_flag = "" if str(args.dir) == DEFAULT_DIR else f" --dir {args.dir}"
        return fail(
            f"no dev issuer key in {args.dir}/", f"start 'tokenbridge dev{dir_flag}' first (it creates the key)"
        )
    except ValueError as exc:
        return fail(str(exc), "run 'tokenbridge dev --reset' to create a new key")
    return EXIT_OK


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"]:
        return token(argv[1:])
    return serve(argv)
