"""``tokenbridge serve``: the exchange server under gunicorn, configured in code (no gunicorn config file).

The master parses the configuration and, for standalone mode, generates the fallback signing key once, before
forking, so every worker signs with the same key, and the private directory of the replay cache every worker
shares (:mod:`.replay`). Each worker then builds its own snapshot source and JWKS cache (threads and connections do
not survive a fork). Audit records (logger ``tokenbridge.audit``) go to stdout as bare JSON lines; everything else
is logged to stderr.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import replace

import falcon
from gunicorn.app.base import BaseApplication

from tokenbridge.discovery import KubeCredentials, discover, fetch_keys
from tokenbridge.fetch import FetchPolicy
from tokenbridge.signing import SigningKeySet, generate_keyset

from . import config as config_module
from .config import ServerConfig
from .jwks_cache import JwksCache
from .sources import SnapshotSource

log = logging.getLogger("tokenbridge_exchange")
READY_WAIT = 10.0  # seconds; below gunicorn's 30 s worker timeout


def build_source(config: ServerConfig, signing_keys: SigningKeySet | None) -> SnapshotSource:
    """The configured source with its JWKS cache, both started (call in the serving process)."""
    policy = FetchPolicy.from_env()
    credentials = None
    if config.kubernetes:
        credentials = KubeCredentials.load(config.kubeconfig)

    def fetch(jwks_uri, spec):
        return fetch_keys(jwks_uri, spec, policy, credentials=credentials)[1]

    cache = JwksCache(fetch, lifespan=config.jwks_lifespan, cooldown=config.jwks_cooldown,
                      max_staleness=config.jwks_max_staleness)
    source: SnapshotSource
    if config.kubernetes:
        from .sources.kubernetes import KubernetesSource
        source = KubernetesSource.from_kubeconfig(
            config.kubeconfig, cache, signing_secret=(config.signing_secret_namespace, config.signing_secret_name),
            namespace=config.watch_namespace, cluster_identity_providers=config.cluster_identity_providers)
    else:
        from .sources.manifests import ManifestSource
        source = ManifestSource(config.manifests, cache, lambda spec: discover(spec, policy),
                                signing_keys=signing_keys, poll_interval=config.manifests_poll_interval)
    source.start()
    cache.start()
    return source


def wait_until_ready(source: SnapshotSource, timeout: float) -> None:
    """Hold the worker back (bounded) until its first snapshot is served, so no client sees its 503s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = source.current()
        if snapshot is not None and snapshot.ready:
            return
        time.sleep(0.05)
    log.warning("no configuration loaded after %.0fs; serving 503 until it is", timeout)


class AuditWriter:
    """Per worker: audit records go through a queue to one writer thread, so request threads never wait on stdout
    or on the handler's lock (the largest cost in the benchmark's profile). Started in the worker, stopped (and
    drained) by gunicorn's ``worker_exit``."""

    def __init__(self):
        self._listener: logging.handlers.QueueListener | None = None

    def start(self) -> None:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("%(message)s"))
        records: queue.SimpleQueue = queue.SimpleQueue()
        audit = logging.getLogger("tokenbridge.audit")  # one bare JSON line per token request, on stdout
        audit.handlers[:] = [logging.handlers.QueueHandler(records)]
        audit.propagate = False
        self._listener = logging.handlers.QueueListener(records, stream)
        self._listener.start()

    def stop(self, server=None, worker=None) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


AUDIT = AuditWriter()


def worker_exited(server, worker) -> None:
    """gunicorn ``child_exit`` (in the master): a dead worker's live gauges (snapshot, JWKS age) stop counting."""
    from prometheus_client import multiprocess  # the workers forked already; they import it themselves

    multiprocess.mark_process_dead(worker.pid)


class Server(BaseApplication):
    def __init__(self, config: ServerConfig, signing_keys: SigningKeySet | None, metrics_dir: str | None,
                 replay_dir: str | None = None):
        self._config, self._signing_keys, self._metrics_dir = config, signing_keys, metrics_dir
        self._replay_dir = replay_dir
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": [self._config.bind],
            "workers": self._config.workers,
            "threads": self._config.threads,
            "worker_class": "gthread",
            "proc_name": "tokenbridge-serve",
            "control_socket_disable": True,  # nothing uses it; a shared default path would clash between servers
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            # limits before our own: request line and header sizes
            "limit_request_line": 8190,
            "limit_request_field_size": 16384,
            "worker_exit": AUDIT.stop,
        }
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            settings["child_exit"] = worker_exited
        created = [d for d in (self._metrics_dir, self._replay_dir) if d]
        if created:  # the master removes the directories it created; workers never do
            settings["on_exit"] = lambda arbiter: [shutil.rmtree(d, ignore_errors=True) for d in created]
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App:
        from .app import create_app  # imports prometheus_client: only now, in the worker (see metrics.py)

        AUDIT.start()
        source = build_source(self._config, self._signing_keys)
        wait_until_ready(source, READY_WAIT)
        return create_app(self._config, source)


def main(argv: list[str]) -> int:
    config = config_module.load(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    signing_keys = None if config.kubernetes else generate_keyset(config.signing_algorithm, time.time())
    replay_dir = None
    if config.replay_cache_path is None:  # shared by every worker of this process tree (mode 0700)
        replay_dir = tempfile.mkdtemp(prefix="tokenbridge-replay-")
        config = replace(config, replay_cache_path=os.path.join(replay_dir, "replay.sqlite3"))
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # before any worker imports prometheus_client
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tokenbridge-metrics-")
    log.info("serving %s as issuer %s on %s", "the cluster's configuration" if config.kubernetes
             else config.manifests, config.issuer, config.bind)
    Server(config, signing_keys, metrics_dir, replay_dir).run()
    return 0
