"""``tokenbridge explain``: what the token endpoint would decide for a token, step by step, without a server.

The configuration comes from manifests (``--manifests``, as ``tokenbridge serve --manifests`` reads them) or from
the cluster (``--kubernetes``/``--kubeconfig``, what the operator reconciled); the decision is the exchange server's
own pipeline run in-process (:mod:`tokenbridge_exchange.pipeline`), so the two cannot disagree. There is no client
secret here: the application is selected by name, and nothing is issued. The server's replay cache is not visible
from here, so that one step is skipped; ``POST /oauth2/explain`` on the server checks it too.

The output never contains the token: each check says what passed or why not.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from tokenbridge import api

from . import EXIT_FAILED, EXIT_OK, GRANTS, TOKEN_TYPES, fail, parser, read_argument

DESCRIPTION = """
Explain what the Tokenbridge token endpoint would decide for a token and an application: the client, the identity
provider chosen by the token's issuer, each check (alg, signature, aud, exp/nbf/iat, maxTokenAge, jti, conditions,
claim mappings, audience and scope) with pass or fail and the reason. Nothing is issued.

Configuration: --manifests PATH (files as 'tokenbridge serve --manifests' reads them; an application does not
need its credentials Secret here), or --kubernetes / --kubeconfig FILE (the resources in the cluster, as the
operator reconciled them). Remote JWKS are fetched as the server would.

Exit status 0 when a token would be issued, 1 when it would be refused (or the application is not found).
"""
EXAMPLES = """
tokenbridge explain --manifests deploy/ --app web --namespace team-a --token "$(tokenbridge dev token --sub alice)"
tokenbridge explain --kubernetes --app web -n team-a --token @/var/run/secrets/tokens/tokenbridge --scope read
tokenbridge explain --kubeconfig ~/.kube/config --app web -n team-a --token - --json < token.jwt
"""


def build_parser():
    p = parser("tokenbridge explain", DESCRIPTION, EXAMPLES)
    p.add_argument("--app", required=True, metavar="NAME", help="the OAuthApplication's name")
    p.add_argument(
        "--namespace",
        "-n",
        metavar="NS",
        help="the OAuthApplication's namespace (default: the kubeconfig context's, else default)",
    )
    p.add_argument("--token", metavar="JWT", help="the subject token (or assertion): JWT, @file or - for stdin")
    p.add_argument("--token-type", choices=sorted(TOKEN_TYPES), default="jwt", help="subject_token_type")
    p.add_argument("--actor-token", metavar="JWT", help="an actor token (delegation): JWT, @file or -")
    p.add_argument("--actor-token-type", choices=sorted(TOKEN_TYPES), default="jwt")
    p.add_argument("--grant", choices=sorted(GRANTS), default="token-exchange")
    p.add_argument("--audience", action="append", default=[], metavar="URI", help="requested audience (repeat)")
    p.add_argument("--scope", help="requested scopes, space separated")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifests", metavar="PATH", help="YAML file or directory of manifests")
    source.add_argument("--kubernetes", action="store_true", help="read the resources from the cluster")
    source.add_argument("--kubeconfig", metavar="FILE", help="like --kubernetes, with this kubeconfig")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _context_namespace(kubeconfig: str | None) -> str:
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=kubeconfig or os.environ.get("KUBECONFIG"))
        return active["context"].get("namespace") or "default"
    except Exception:
        return "default"


def load_snapshot(args) -> Any:
    """The exchange server's snapshot of the configuration (no signing keys: nothing is issued)."""
    from tokenbridge.discovery import KubeCredentials, discover, fetch_keys
    from tokenbridge.fetch import FetchPolicy
    from tokenbridge_exchange.jwks_cache import JwksCache

    policy = FetchPolicy.from_env()
    kubernetes = args.kubernetes or bool(args.kubeconfig)
    credentials = KubeCredentials.load(args.kubeconfig) if kubernetes else None

    def fetch(jwks_uri, spec):
        return fetch_keys(jwks_uri, spec, policy, credentials=credentials)[1]

    cache = JwksCache(fetch)  # not started: keys are fetched when a token needs them
    if kubernetes:
        from tokenbridge_exchange.sources.kubernetes import KubernetesSource

        return KubernetesSource.from_kubeconfig(
            args.kubeconfig, cache, signing_secret=("", ""), namespace=args.namespace
        ).load_once()
    from tokenbridge_exchange.sources.manifests import ManifestSource

    return ManifestSource(args.manifests, cache, lambda spec: discover(spec, policy), credentials_optional=True).load()


def form_of(args) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {"grant_type": [GRANTS[args.grant]]}
    if args.token:
        token = read_argument(args.token, "--token")
        if args.grant == "jwt-bearer":
            form["assertion"] = [token]
        else:
            form["subject_token"] = [token]
            form["subject_token_type"] = [TOKEN_TYPES[args.token_type]]
    if args.actor_token:
        form["actor_token"] = [read_argument(args.actor_token, "--actor-token")]
        form["actor_token_type"] = [TOKEN_TYPES[args.actor_token_type]]
    if args.audience:
        form["audience"] = list(args.audience)
    if args.scope:
        form["scope"] = [args.scope]
    return form


def render(report: dict[str, Any]) -> str:
    lines = [f"application {report['application']} (client id {report['client_id']})"]
    width = max(len(s["step"]) for s in report["steps"])
    for s in report["steps"]:
        lines.append(f"  {s['result'].upper():4}  {s['step']:{width}}  {s['detail']}")
    if report["decision"] == "issue":
        t = report["token"]
        lines.append(
            f"decision: a token would be issued: sub {t['sub']!r}, aud {', '.join(t['aud'])}, "
            f"scope {t['scope'] or '(none)'!r}, expires in {t['expires_in']}s, "
            f"claims {', '.join(t['claims'])}"
        )
    else:
        lines.append(f"decision: refused: {report['error']}: {report['error_description']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.grant != "client_credentials" and not args.token:
        build_parser().error(f"--token is required for --grant {args.grant}")
    if args.namespace is None:
        args.namespace = _context_namespace(args.kubeconfig) if (args.kubernetes or args.kubeconfig) else "default"
    try:
        form = form_of(args)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    from tokenbridge.durations import parse_duration
    from tokenbridge_exchange.config import ServerConfig
    from tokenbridge_exchange.pipeline import Pipeline, explain

    try:
        snapshot = load_snapshot(args)
    except Exception as exc:  # unreadable manifests, an unreachable or forbidding API server
        return fail(f"cannot load the configuration: {exc}")
    app = snapshot.application(args.namespace, args.app)
    if app is None:
        reasons = [r for r in snapshot.skipped if f"{api.KIND_APP} {args.namespace}/{args.app}:" in r]
        return fail(
            f"no usable OAuthApplication {args.namespace}/{args.app}" + (f": {reasons[0]}" if reasons else ""),
            None if reasons else "check --app and --namespace",
        )
    config = ServerConfig(
        issuer="https://tokenbridge.invalid",
        max_token_lifetime=parse_duration(os.environ.get("TOKENBRIDGE_MAX_TOKEN_LIFETIME") or "24h"),
    )
    report = explain(
        Pipeline(config, None),
        form,
        app,
        time.time(),
        client=f"application {app.label} selected by name (the CLI does not authenticate clients)",
    )
    ignored = [r for r in snapshot.skipped if api.KIND_APP not in r.split(" ", 1)[0]]
    if ignored:
        report["not_served"] = ignored  # IdPs the server would not serve either (e.g. a policy that fails to compile)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        for reason in ignored:
            print(f"note: not served: {reason}", file=sys.stderr)
    return EXIT_OK if report["decision"] == "issue" else EXIT_FAILED
