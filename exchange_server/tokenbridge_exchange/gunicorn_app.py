"""The exchange server as a gunicorn application, configured in code (no gunicorn config file); started by
:mod:`.serve`.

The master generates the fallback signing key (standalone mode) once, before forking, so every worker signs with the
same key, and makes the private directory of the replay cache every worker shares (:mod:`.replay`). Audit records
(:mod:`.audit`) go to stdout as bare JSON lines, from a sink each worker makes; everything else is logged to stderr.
The master also makes the :class:`~.telemetry.Telemetry` the sources, the JWKS caches and the apps share, and
:func:`build_source` the policy cache its source keeps across rebuilds.

Standalone (``--manifests``), the master also loads the first snapshot, once, before forking: the workers inherit
it (copy-on-write; ``gc.freeze()`` keeps the collector from writing to, and so copying, its pages) instead of each
parsing the manifests again at boot, so no worker's boot grows with the configuration. Each worker then starts its
own threads (threads and locks do not survive a fork; greenlets under gevent workers): the manifests poll thread,
which reloads a changed file in that worker, and the JWKS refresh thread. When the master forks a worker again
(one died, or ``SIGHUP``), it first reloads the manifests if they changed since, so a new worker never starts from
an older configuration than the file holds. The cluster source (``--kubernetes``) is built in each worker (its
watches are threads).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import falcon
from gunicorn.app.base import BaseApplication

from tokenbridge.discovery import KubeCredentials, discover, fetch_keys
from tokenbridge.fetch import FetchPolicy
from tokenbridge.signing import SigningKeySet, generate_keyset

from .config import ServerConfig
from .jwks_cache import JwksCache
from .snapshot import PolicyCache
from .sources import SnapshotSource
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .audit import StreamAudit

log = logging.getLogger("tokenbridge_exchange")
READY_WAIT = 10.0  # seconds; below gunicorn's 30 s worker timeout


def build_source(
    config: ServerConfig, signing_keys: SigningKeySet | None, telemetry: Telemetry, *, start: bool = True
) -> SnapshotSource:
    """The configured source with its JWKS cache and policy cache, reporting on ``telemetry``; both started (call
    in the serving process) unless ``start`` is false (see :func:`start_source`)."""
    policy = FetchPolicy.from_env()
    credentials = None
    if config.kubernetes:
        credentials = KubeCredentials.load(config.kubeconfig)

    def fetch(jwks_uri, spec):
        return fetch_keys(jwks_uri, spec, policy, credentials=credentials)[1]

    cache = JwksCache(
        fetch,
        telemetry=telemetry,
        lifespan=config.jwks_lifespan,
        cooldown=config.jwks_cooldown,
        max_staleness=config.jwks_max_staleness,
    )
    policies = PolicyCache()  # one per source: every rebuild compiles only the policies that changed
    source: SnapshotSource
    if config.kubernetes:
        from .sources.kubernetes import KubernetesSource

        source = KubernetesSource.from_kubeconfig(
            config.kubeconfig,
            cache,
            signing_secret=(config.signing_secret_namespace, config.signing_secret_name),
            namespace=config.watch_namespace,
            cluster_identity_providers=config.cluster_identity_providers,
            policies=policies,
            telemetry=telemetry,
        )
    else:
        from .sources.manifests import ManifestSource

        assert config.manifests, "the command line requires --manifests without --kubernetes"
        source = ManifestSource(
            config.manifests,
            cache,
            lambda spec: discover(spec, policy),
            signing_keys=signing_keys,
            poll_interval=config.manifests_poll_interval,
            policies=policies,
            telemetry=telemetry,
        )
    if start:
        start_source(source, cache)
    return source


def start_source(source: SnapshotSource, cache: JwksCache | None = None) -> None:
    """Start the source's threads and its JWKS cache's: a manifests source preloaded in the master loads nothing
    here, its poll thread picks up changes from now on."""
    source.start()
    (cache if cache is not None else source.cache).start()  # type: ignore[attr-defined]


def preload_source(config: ServerConfig, signing_keys: SigningKeySet | None, telemetry: Telemetry) -> SnapshotSource:
    """Standalone: the manifests source with its first snapshot loaded, no thread started (call in the master)."""
    source = build_source(config, signing_keys, telemetry, start=False)
    started = time.monotonic()
    if source.preload():  # type: ignore[attr-defined]
        log.info("first snapshot loaded in %.1fs, before forking the workers", time.monotonic() - started)
    else:
        log.error(
            "no configuration loaded from %s: the workers serve 503 until a good one is in place", config.manifests
        )
    settle_before_fork()
    return source


def settle_before_fork() -> None:
    """What the master holds goes to the workers as shared pages: collect the load's garbage, hand its freed memory
    back to the system, and freeze what is left, so no collection (in the master or a worker) writes to it."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc only
    except (OSError, AttributeError):
        pass
    gc.freeze()


def wait_until_ready(source: SnapshotSource, timeout: float) -> None:
    """Hold the worker back (bounded) until its first snapshot is served, so no client sees its 503s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = source.current()
        if snapshot is not None and snapshot.ready:
            return
        time.sleep(0.05)
    log.warning("no configuration loaded after %.0fs; serving 503 until it is", timeout)


def worker_exited(server, worker) -> None:
    """gunicorn ``child_exit`` (in the master): a dead worker's live gauges (snapshot, JWKS age) stop counting."""
    from prometheus_client import multiprocess  # the workers forked already; they import it themselves

    multiprocess.mark_process_dead(worker.pid)


class Server(BaseApplication):
    """``telemetry``: the one a preloaded ``source`` was built with; forked into every worker, whose app listens."""

    def __init__(
        self,
        config: ServerConfig,
        signing_keys: SigningKeySet | None,
        metrics_dir: str | None,
        replay_dir: str | None = None,
        source: SnapshotSource | None = None,
        *,
        telemetry: Telemetry,
    ):
        self._config, self._signing_keys, self._metrics_dir = config, signing_keys, metrics_dir
        self._replay_dir = replay_dir
        self._source = source  # standalone: preloaded in the master (preload_source); None: built per worker
        self._telemetry = telemetry
        self._audit: StreamAudit | None = None  # made in each worker (load)
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": [self._config.bind],
            "workers": self._config.workers,
            "threads": self._config.threads if self._config.worker_class == "gthread" else 1,
            "worker_class": self._config.worker_class,
            "proc_name": "tokenbridge-serve",
            # each worker listens on its own SO_REUSEPORT socket and the kernel spreads connections over them: on
            # one shared socket a burst of new connections can all land on whichever worker wakes first, leaving the
            # others idle (bench/run.py saw runs with every wrk connection on one worker)
            "reuse_port": True,
            "control_socket_disable": True,  # nothing uses it; a shared default path would clash between servers
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            # limits before our own: request line and header sizes
            "limit_request_line": 8190,
            "limit_request_field_size": 16384,
            "worker_exit": self.worker_exit,
        }
        if self._source is not None:
            settings["pre_fork"] = self.before_fork
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            settings["child_exit"] = worker_exited
        created = [d for d in (self._metrics_dir, self._replay_dir) if d]
        if created:  # the master removes the directories it created; workers never do

            def remove_created(arbiter: object) -> None:
                for d in created:
                    shutil.rmtree(d, ignore_errors=True)

            settings["on_exit"] = remove_created
        for key, value in settings.items():
            self.cfg.set(key, value)

    def before_fork(self, arbiter=None, worker=None) -> None:
        """gunicorn ``pre_fork`` (in the master, before each worker is forked): a worker forked after the manifests
        changed (a respawn, a ``SIGHUP``) must not start from the older snapshot, so the master reloads first.
        Unchanged (every first fork), this is one stat per file and nothing in the master is touched."""
        if self._source.reload_if_changed():  # type: ignore[union-attr]
            log.info("manifests changed: reloaded in the master before forking a worker")
            gc.unfreeze()  # the old snapshot is gone: let the collector free its cycles too
            settle_before_fork()
        else:
            gc.freeze()  # whatever the master allocated since (cheap: no collection)

    def load(self) -> falcon.App:
        """In the worker, after the fork: its audit writer, its source's threads, its app."""
        from .app import create_app  # imports prometheus_client: only now, in the worker (see metrics.py)
        from .audit import StreamAudit

        # one bare JSON line per token request on stdout, written by this worker's writer thread (stopped and
        # drained by worker_exit): request threads never wait on stdout
        self._audit = StreamAudit(sys.stdout)
        self._audit.start()
        if self._source is not None:  # loaded in the master: this worker only starts its threads
            source = self._source
            start_source(source)
        else:
            source = build_source(self._config, self._signing_keys, self._telemetry)
        wait_until_ready(source, READY_WAIT)
        return create_app(self._config, source, audit=self._audit, telemetry=self._telemetry)

    def worker_exit(self, server: object = None, worker: object = None) -> None:
        """gunicorn ``worker_exit`` (in the worker): the audit records queued so far are written before it goes."""
        if self._audit is not None:
            self._audit.stop()


def run(config: ServerConfig) -> int:
    """Serve until gunicorn's master exits (in the master: everything here happens once, before forking)."""
    signing_keys = None if config.kubernetes else generate_keyset(config.signing_algorithm, time.time())
    replay_dir = None
    if config.replay_cache_path is None:  # shared by every worker of this process tree (mode 0700)
        replay_dir = tempfile.mkdtemp(prefix="tokenbridge-replay-")
        config = replace(config, replay_cache_path=os.path.join(replay_dir, "replay.sqlite3"))
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # before any worker imports prometheus_client
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tokenbridge-metrics-")
    log.info(
        "serving %s as issuer %s on %s (%s workers)",
        "the cluster's configuration" if config.kubernetes else config.manifests,
        config.issuer,
        config.bind,
        config.worker_class,
    )
    telemetry = Telemetry()  # no listener in the master: each worker's app subscribes to its forked copy
    source = None if config.kubernetes else preload_source(config, signing_keys, telemetry)
    Server(config, signing_keys, metrics_dir, replay_dir, source, telemetry=telemetry).run()
    return 0
