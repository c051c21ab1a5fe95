"""``tokenbridge exchange``: one token request from the command line, or the curl command that makes it.

Trying an application's configuration should not need a hand-assembled form post. This sends exactly what a
client library would (RFC 8693, RFC 7523 or client credentials, client_secret_basic or _post) with httpx, and
``--curl`` prints the same request for docs, tickets and CI scripts, with the client secret left in an
environment variable unless ``--show-secret``.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx

from tokenbridge import api

from . import EXIT_FAILED, EXIT_OK, GRANTS, TOKEN_TYPES, fail, parser, read_argument

ENV_CLIENT_ID = "TOKENBRIDGE_CLIENT_ID"
ENV_CLIENT_SECRET = "TOKENBRIDGE_CLIENT_SECRET"
METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
TIMEOUT = 10.0

DESCRIPTION = f"""
Request a token from a token endpoint (Tokenbridge's, or any OAuth 2.0 server's) and print the access token, or
the whole response with --json, or with --curl the equivalent curl command instead of sending anything.

Grants: token-exchange (RFC 8693, the default: --subject-token is the subject_token), jwt-bearer (RFC 7523:
--subject-token is the assertion), client_credentials (no subject token).

Client credentials, first found wins: --client-id/--client-secret; the environment ({ENV_CLIENT_ID},
{ENV_CLIENT_SECRET}); --from-secret NAMESPACE/NAME, the OAuthApplication's credentials Secret read from the
cluster with your kubeconfig (it also holds the token endpoint). Prefer the environment or the Secret to
--client-secret, which shows in the process list and shell history.

The endpoint: --token-endpoint URL, or --issuer URL to read it from the issuer's metadata
({METADATA_PATHS[0]}, then {METADATA_PATHS[1]}), or the token_endpoint of --from-secret.

OAuth errors are printed as 'error: description' on stderr, with exit status 1.
"""
EXAMPLES = f"""
export {ENV_CLIENT_ID}=dev-client {ENV_CLIENT_SECRET}=...
tokenbridge exchange --issuer http://127.0.0.1:8080 --subject-token "$(tokenbridge dev token --sub alice)"
tokenbridge exchange --from-secret team-a/web-credentials --subject-token @/var/run/secrets/tokens/tokenbridge \\
    --audience https://api.example.com --scope orders:read --json
okta-login | tokenbridge exchange --token-endpoint https://tb.example.com/oauth2/token --subject-token - \\
    --subject-token-type id_token
tokenbridge exchange --issuer https://tb.example.com --grant client_credentials --curl
"""


class UsageError(Exception):
    """A missing or conflicting input (exit 2)."""


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    token_endpoint: str | None  # from a credentials Secret
    secret_source: str  # how a printed curl command obtains the secret


def secret_from_cluster(reference: str, kubeconfig: str | None, context: str | None) -> dict[str, str]:
    """The data of the Secret NAMESPACE/NAME, decoded; RuntimeError with a readable reason."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    namespace, sep, name = reference.partition("/")
    if not sep or not namespace or not name:
        raise UsageError(f"--from-secret {reference!r} is not NAMESPACE/NAME")
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
    except Exception as exc:  # ConfigException, or a file error, depending on what is missing
        raise RuntimeError(f"cannot load a kubeconfig: {exc} (set KUBECONFIG or --kubeconfig)") from None
    try:
        secret = client.CoreV1Api().read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise RuntimeError(
                f"Secret {namespace}/{name} does not exist: the operator writes it once the "
                f"OAuthApplication is reconciled (kubectl get oauthapp -n {namespace})"
            ) from None
        if exc.status == 403:
            raise RuntimeError(
                f"you may not read Secret {namespace}/{name} (kubectl auth can-i get secret/{name} -n {namespace})"
            ) from None
        raise RuntimeError(f"reading Secret {namespace}/{name} failed: HTTP {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3 connection errors
        raise RuntimeError(f"cannot reach the cluster: {exc}") from None
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def credentials(args: Any) -> Credentials:
    client_id = args.client_id or os.environ.get(ENV_CLIENT_ID)
    secret = args.client_secret
    source = "--client-secret"
    if secret is None and os.environ.get(ENV_CLIENT_SECRET):
        secret, source = os.environ[ENV_CLIENT_SECRET], "env"
    endpoint = None
    if args.from_secret and (client_id is None or secret is None or not (args.token_endpoint or args.issuer)):
        data = secret_from_cluster(args.from_secret, args.kubeconfig, args.context)
        missing = [k for k in ("client_id", "client_secret") if not data.get(k)]
        if missing:
            raise RuntimeError(
                f"Secret {args.from_secret} has no {' or '.join(missing)}: is it an "
                "OAuthApplication's credentials Secret?"
            )
        client_id = client_id or data["client_id"]
        if secret is None:
            secret, source = data["client_secret"], "secret"
        endpoint = data.get("token_endpoint") or None
    if not client_id or secret is None:
        raise UsageError(
            f"no client credentials: pass --client-id/--client-secret, set {ENV_CLIENT_ID} and "
            f"{ENV_CLIENT_SECRET}, or --from-secret NAMESPACE/NAME"
        )
    return Credentials(client_id, secret, endpoint, source)


def token_endpoint_from_issuer(issuer: str, verify: Any) -> str:
    """The token_endpoint of the issuer's metadata; the document must name this issuer (RFC 8414 §3.3)."""
    issuer = issuer.rstrip("/")
    errors = []
    for path in METADATA_PATHS:
        url = issuer + path
        try:
            response = httpx.get(url, timeout=TIMEOUT, verify=verify)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"cannot reach {url}: {exc}") from None
        if response.status_code != 200:
            errors.append(f"{url} answered HTTP {response.status_code}")
            continue
        try:
            document = response.json()
        except ValueError:
            errors.append(f"{url} is not JSON")
            continue
        if document.get("issuer", "").rstrip("/") != issuer:
            raise RuntimeError(f"{url} names issuer {document.get('issuer')!r}, not {issuer!r}: check --issuer")
        if not document.get("token_endpoint"):
            raise RuntimeError(f"{url} has no token_endpoint: pass --token-endpoint")
        return document["token_endpoint"]
    raise RuntimeError("; ".join(errors) + ": pass --token-endpoint")


def form(args: Any, subject_token: str | None) -> list[tuple[str, str]]:
    grant = GRANTS[args.grant]
    fields = [("grant_type", grant)]
    if grant == api.GRANT_TOKEN_EXCHANGE:
        fields += [
            ("subject_token", subject_token or ""),
            ("subject_token_type", TOKEN_TYPES.get(args.subject_token_type, args.subject_token_type)),
        ]
    elif grant == api.GRANT_JWT_BEARER:
        fields.append(("assertion", subject_token or ""))
    fields += [("audience", a) for a in args.audience or ()]
    if args.scope:
        fields.append(("scope", " ".join(args.scope)))
    return fields


def basic_header(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then joined and base64-encoded."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def curl_command(
    endpoint: str, fields: list[tuple[str, str]], creds: Credentials, auth_method: str, show_secret: bool, args: Any
) -> str:
    """A runnable shell snippet; the secret is ``$TOKENBRIDGE_CLIENT_SECRET`` unless ``show_secret``."""
    lines = []
    if show_secret:
        secret = shlex.quote(creds.client_secret)
    else:
        secret = f'"${ENV_CLIENT_SECRET}"'
        if creds.secret_source == "secret":
            namespace, _, name = args.from_secret.partition("/")
            lines.append(
                f'export {ENV_CLIENT_SECRET}="$(kubectl get secret -n {shlex.quote(namespace)} '
                f"{shlex.quote(name)} -o jsonpath='{{.data.client_secret}}' | base64 -d)\""
            )
        elif creds.secret_source != "env":
            lines.append(f"# set {ENV_CLIENT_SECRET} to the client secret first (--show-secret prints it inline)")
    command = [f"curl -sS -X POST {shlex.quote(endpoint)}"]
    if args.ca_file:
        command.append(f"--cacert {shlex.quote(args.ca_file)}")
    if auth_method == api.AUTH_METHOD_BASIC:
        command.append(f"-u {shlex.quote(creds.client_id)}:{secret}")
        # curl sends -u as is; RFC 6749 wants both parts form-urlencoded, which only matters for unusual secrets
    else:
        command.append(f"--data-urlencode {shlex.quote('client_id=' + creds.client_id)}")
        command.append(f"--data-urlencode client_secret={secret}")
    command += [f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in fields]
    lines.append(" \\\n  ".join(command))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = parser("tokenbridge exchange", DESCRIPTION, EXAMPLES)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--token-endpoint", metavar="URL", help="the token endpoint")
    where.add_argument("--issuer", metavar="URL", help="read the token endpoint from this issuer's metadata")
    p.add_argument("--client-id", help=f"client id (or env {ENV_CLIENT_ID})")
    p.add_argument("--client-secret", help=f"client secret (prefer env {ENV_CLIENT_SECRET})")
    p.add_argument(
        "--from-secret",
        metavar="NAMESPACE/NAME",
        help="read client_id, client_secret and token_endpoint from this Secret in the cluster",
    )
    p.add_argument("--kubeconfig", help="kubeconfig for --from-secret (default: KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context for --from-secret")
    p.add_argument(
        "--subject-token",
        metavar="TOKEN|@FILE|-",
        help="the subject token (token-exchange) or assertion (jwt-bearer): inline, @FILE, or - for stdin",
    )
    p.add_argument(
        "--subject-token-type",
        default="jwt",
        metavar="TYPE",
        help="jwt (default), id_token, access_token, or a full urn:ietf:params:oauth:token-type:... URN",
    )
    p.add_argument(
        "--audience",
        action="append",
        metavar="AUDIENCE",
        help="requested audience, repeatable (default: the application's audiences)",
    )
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="requested scope, repeatable or space-separated (default: all of the application's)",
    )
    p.add_argument("--grant", choices=GRANTS, default="token-exchange", help="grant type (default token-exchange)")
    p.add_argument(
        "--auth-method",
        choices=(api.AUTH_METHOD_BASIC, api.AUTH_METHOD_POST),
        default=api.AUTH_METHOD_BASIC,
        help="client authentication, as the application's tokenEndpointAuthMethod (default basic)",
    )
    p.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify an https endpoint with")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    output.add_argument(
        "--curl", action="store_true", help="print the equivalent curl command instead of sending the request"
    )
    p.add_argument("--show-secret", action="store_true", help="--curl: put the client secret inline")
    args = p.parse_args(argv)

    needs_subject = args.grant != "client_credentials"
    if needs_subject and not args.subject_token:
        p.error(f"--grant {args.grant} needs --subject-token TOKEN|@FILE|-")
    if not needs_subject and args.subject_token:
        p.error("--grant client_credentials takes no --subject-token")
    if args.show_secret and not args.curl:
        p.error("--show-secret only applies to --curl")
    try:
        subject_token = read_argument(args.subject_token, "--subject-token") if needs_subject else None
        creds = credentials(args)
    except UsageError as exc:
        p.error(str(exc))
    except (OSError, ValueError, RuntimeError) as exc:
        return fail(str(exc))
    verify: Any = args.ca_file or True
    try:
        endpoint = args.token_endpoint or (
            token_endpoint_from_issuer(args.issuer, verify) if args.issuer else creds.token_endpoint
        )
    except RuntimeError as exc:
        return fail(str(exc))
    if not endpoint:
        p.error("give --token-endpoint URL or --issuer URL (or --from-secret with a token_endpoint)")
    fields = form(args, subject_token)
    if args.curl:
        print(curl_command(endpoint, fields, creds, args.auth_method, args.show_secret, args))
        return EXIT_OK
    headers = {"Accept": "application/json"}
    if args.auth_method == api.AUTH_METHOD_BASIC:
        headers["Authorization"] = basic_header(creds.client_id, creds.client_secret)
    else:
        fields += [("client_id", creds.client_id), ("client_secret", creds.client_secret)]
    try:
        data: dict[str, list[str]] = {}
        for name, value in fields:
            data.setdefault(name, []).append(value)
        response = httpx.post(endpoint, data=data, headers=headers, timeout=TIMEOUT, verify=verify)
    except httpx.HTTPError as exc:
        return fail(f"cannot reach {endpoint}: {exc}", "check the URL, and that the server is running")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
        if isinstance(body, dict) and "error" in body:
            print(f"{body['error']}: {body.get('error_description', '(no description)')}", file=sys.stderr)
            return EXIT_FAILED
        return fail(f"{endpoint} answered HTTP {response.status_code} without a token: {response.text[:300]}")
    print(json.dumps(body, indent=2) if args.json else body["access_token"])
    return EXIT_OK
