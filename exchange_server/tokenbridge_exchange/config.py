"""Server configuration, read once from the command line and the environment (flags win over env)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenbridge.durations import parse_duration

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_SIGNING_SECRET = ("tokenbridge", "tokenbridge-signing-keys")
# gunicorn's. gevent (the default): one process, one OS thread, a greenlet per connection, so a request never waits
# for a thread pool hand-off or the GIL (bench/results/report.md: the most exchanges/s and the lowest tail latency);
# gthread: --threads requests at once per worker; sync: one request at a time per worker, no keep-alive.
WORKER_CLASSES = ("gevent", "gthread", "sync")


@dataclass(frozen=True)
class ServerConfig:
    issuer: str  # public issuer URL of the tokens we issue; endpoint URLs are derived from it
    bind: str = DEFAULT_BIND
    workers: int = 2
    threads: int = 8
    worker_class: str = "gevent"  # one of WORKER_CLASSES
    manifests: str | None = None  # standalone source
    kubernetes: bool = False  # cluster source
    kubeconfig: str | None = None
    signing_secret_namespace: str = DEFAULT_SIGNING_SECRET[0]
    signing_secret_name: str = DEFAULT_SIGNING_SECRET[1]
    signing_algorithm: str = "ES256"  # for the key generated in standalone mode
    watch_namespace: str = ""  # cluster source: "" watches every namespace, else only this one
    cluster_identity_providers: bool = True  # cluster source: whether ClusterIdentityProviders are readable
    max_body_bytes: int = 64 * 1024
    max_token_bytes: int = 16 * 1024
    jwks_lifespan: float = 300.0  # refresh remote IdP keys this often
    jwks_cooldown: float = 10.0  # at most one fetch per IdP this often (floor 10 s, see jwks_cache)
    jwks_max_staleness: float = 86400.0  # serve last good keys this long after the last good fetch
    manifests_poll_interval: float = 1.0
    # no issued token outlives this (the operator keeps a retired signing key published this long)
    max_token_lifetime: float = 86400.0
    replay_cache_path: str | None = None  # SQLite file shared by the workers; None: a private one on first use
    replay_cache_max_entries: int = 100_000
    verified_signatures: int = 4096  # per worker, tokens whose verified signature is remembered; 0: none

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/oauth2/token"

    @property
    def introspection_endpoint(self) -> str:
        return self.issuer + "/oauth2/introspect"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/.well-known/jwks.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenbridge serve", description="Run the token exchange server.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--manifests", metavar="PATH", help="standalone: YAML file or directory of manifests")
    source.add_argument("--kubernetes", action="store_true", help="read configuration from the cluster")
    p.add_argument("--kubeconfig", help="kubeconfig for --kubernetes (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--bind", help=f"host:port to listen on (default {DEFAULT_BIND})")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (default 2)")
    p.add_argument("--threads", type=int, help="threads per worker (default 8; gthread only)")
    p.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        help="gunicorn worker class (env TOKENBRIDGE_WORKER_CLASS; default gevent): gevent serves each "
        "connection in a greenlet, gthread --threads requests at once per worker, sync one at a time "
        "(--threads applies to gthread only)",
    )
    p.add_argument("--issuer", help="public issuer URL (env TOKENBRIDGE_PUBLIC_ISSUER)")
    return p


def load(argv: list[str], env: Mapping[str, str] | None = None) -> ServerConfig:
    """Build the configuration from ``argv`` and ``env``; argparse errors exit with status 2."""
    env = os.environ if env is None else env
    p = parser()
    args = p.parse_args(argv)
    kubernetes = args.kubernetes or bool(args.kubeconfig)
    if not kubernetes and not args.manifests:
        p.error("give --manifests PATH (standalone) or --kubernetes")
    if args.manifests and not os.path.exists(args.manifests):
        p.error(f"--manifests {args.manifests}: no such file or directory")
    bind = args.bind or env.get("TOKENBRIDGE_BIND") or DEFAULT_BIND
    issuer = args.issuer or env.get("TOKENBRIDGE_PUBLIC_ISSUER") or f"http://{bind}"
    if not issuer.startswith(("https://", "http://")):
        p.error(f"--issuer {issuer!r} must be an http(s) URL")
    worker_class = args.worker_class or env.get("TOKENBRIDGE_WORKER_CLASS") or "gevent"
    if worker_class not in WORKER_CLASSES:
        p.error(f"TOKENBRIDGE_WORKER_CLASS={worker_class!r}: choose from {', '.join(WORKER_CLASSES)}")
    values: dict[str, Any] = {
        "issuer": issuer.rstrip("/"),
        "bind": bind,
        "workers": args.workers or int(env.get("TOKENBRIDGE_WORKERS", "2")),
        "threads": args.threads or int(env.get("TOKENBRIDGE_THREADS", "8")),
        "worker_class": worker_class,
        "manifests": args.manifests,
        "kubernetes": kubernetes,
        "kubeconfig": args.kubeconfig,
        "signing_secret_namespace": env.get("TOKENBRIDGE_SIGNING_SECRET_NAMESPACE", DEFAULT_SIGNING_SECRET[0]),
        "signing_secret_name": env.get("TOKENBRIDGE_SIGNING_SECRET_NAME", DEFAULT_SIGNING_SECRET[1]),
        "signing_algorithm": env.get("TOKENBRIDGE_SIGNING_ALGORITHM") or "ES256",
        "watch_namespace": env.get("TOKENBRIDGE_WATCH_NAMESPACE", ""),
        "cluster_identity_providers": env.get("TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS", "true").strip().lower()
        in ("true", "1", "yes"),
    }
    for field, var in (
        ("jwks_lifespan", "TOKENBRIDGE_JWKS_LIFESPAN"),
        ("jwks_cooldown", "TOKENBRIDGE_JWKS_COOLDOWN"),
        ("jwks_max_staleness", "TOKENBRIDGE_JWKS_MAX_STALENESS"),
        ("max_token_lifetime", "TOKENBRIDGE_MAX_TOKEN_LIFETIME"),
    ):
        if env.get(var):
            values[field] = parse_duration(env[var])
    for field, var in (
        ("replay_cache_max_entries", "TOKENBRIDGE_REPLAY_CACHE_MAX_ENTRIES"),
        ("verified_signatures", "TOKENBRIDGE_VERIFIED_SIGNATURES"),
    ):
        if env.get(var):
            if not env[var].strip().isdigit():
                p.error(f"{var}={env[var]!r}: must be a whole number, 0 or more")
            values[field] = int(env[var])
    return ServerConfig(**values)
