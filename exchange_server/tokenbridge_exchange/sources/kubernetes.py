"""Cluster configuration: list + watch the Tokenbridge resources and the signing-key Secret.

One thread per resource type keeps a local copy of its objects (list, then watch from that resourceVersion; on
an expired resourceVersion or any error, list again after a capped backoff). A rebuild thread turns the copies
into a new snapshot shortly after any change (well within the 2 s the API promises). While the API server is
unreachable nothing changes locally, so the last good snapshot keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tokenbridge import api
from tokenbridge.signing import SigningKeySet

from ..jwks_cache import JwksCache
from ..snapshot import PolicyCache, Snapshot, build_snapshot
from ..telemetry import Telemetry
from . import cooperative

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 60  # server-side; a quiet watch is renewed this often
DEBOUNCE = 0.05  # coalesce a burst of events into one rebuild
MAX_BACKOFF = 5.0
SECRETS = "secrets"

Key = tuple[str, str]  # (namespace, name)


class KubernetesSource:
    """``namespace`` limits IdentityProviders and OAuthApplications to one namespace (namespace-scoped RBAC);
    ``cluster_identity_providers=False`` leaves ClusterIdentityProviders out (not readable with that RBAC).
    ``policies``: kept across rebuilds (its own when not given); each snapshot is announced on ``telemetry``."""

    def __init__(
        self,
        api_client: client.ApiClient,
        cache: JwksCache,
        *,
        signing_secret: Key,
        namespace: str = "",
        cluster_identity_providers: bool = True,
        policies: PolicyCache | None = None,
        telemetry: Telemetry | None = None,
    ):
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._cache, self._signing_secret, self._namespace = cache, signing_secret, namespace
        self._policies = policies if policies is not None else PolicyCache()
        self._telemetry = telemetry
        self._stores: dict[str, dict[Key, dict[str, Any]]] = {
            api.PLURAL_IDP: {},
            api.PLURAL_CLUSTER_IDP: {},
            api.PLURAL_APP: {},
            SECRETS: {},
        }
        self._listed = {plural: threading.Event() for plural in self._stores}
        self._watched = [p for p in self._stores if cluster_identity_providers or p != api.PLURAL_CLUSTER_IDP]
        if not cluster_identity_providers:
            self._listed[api.PLURAL_CLUSTER_IDP].set()
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._signing_keys: SigningKeySet | None = None
        self._signing_data: dict[str, str] | None = None
        self._snapshot: Snapshot | None = None
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None, cache: JwksCache, **options: Any) -> KubernetesSource:
        """In-cluster configuration when running in a pod, else the kubeconfig."""
        if kubeconfig is None:
            try:
                config.load_incluster_config()
                return cls(client.ApiClient(), cache, **options)
            except config.ConfigException:
                pass
        return cls(config.new_client_from_config(config_file=kubeconfig), cache, **options)

    def current(self) -> Snapshot | None:
        return self._snapshot

    def start(self) -> None:
        for plural in self._watched:
            thread = threading.Thread(target=self._watch_loop, args=(plural,), name=f"watch-{plural}", daemon=True)
            thread.start()
            self._threads.append(thread)
        thread = threading.Thread(target=self._rebuild_loop, name="snapshot-rebuild", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()

    # --- list + watch ---------------------------------------------------------------------------------------
    def _call(self, plural: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        if plural == SECRETS:
            namespace, name = self._signing_secret
            return self._core.list_namespaced_secret, {
                "namespace": namespace,
                "field_selector": f"metadata.name={name}",
            }
        kwargs = {"group": api.GROUP, "version": api.VERSION, "plural": plural}
        if self._namespace and plural != api.PLURAL_CLUSTER_IDP:
            return self._custom.list_namespaced_custom_object, {**kwargs, "namespace": self._namespace}
        return self._custom.list_cluster_custom_object, kwargs

    def _list(self, plural: str) -> str:
        func, kwargs = self._call(plural)
        response = func(**kwargs, _preload_content=False, _request_timeout=(5, 30))
        document = json.loads(response.data)
        items = {self._key(obj): obj for obj in document.get("items") or ()}
        with self._lock:
            self._stores[plural] = items
        self._listed[plural].set()
        self._dirty.set()
        return document["metadata"]["resourceVersion"]

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return meta.get("namespace") or "", meta.get("name") or ""

    def _watch(self, plural: str, resource_version: str) -> str:
        """Apply events until the watch times out (returns where to resume) or fails (raises)."""
        func, kwargs = self._call(plural)
        stream = watch.Watch().stream(
            func,
            **kwargs,
            resource_version=resource_version,
            timeout_seconds=WATCH_TIMEOUT,
            allow_watch_bookmarks=True,
            _request_timeout=(5, WATCH_TIMEOUT + 15),
        )
        for event in stream:  # an ERROR event (410 Gone included) is raised by the client as ApiException
            obj = event["raw_object"]
            resource_version = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                continue
            with self._lock:  # _build copies the stores under this lock
                if event["type"] == "DELETED":
                    self._stores[plural].pop(self._key(obj), None)
                else:
                    self._stores[plural][self._key(obj)] = obj
            self._dirty.set()
            if self._stop.is_set():
                break
        return resource_version

    def _watch_loop(self, plural: str) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                resource_version = self._list(plural)
                backoff = 0.2
                while not self._stop.is_set():
                    resource_version = self._watch(plural, resource_version)
            except ApiException as exc:
                if exc.status == 410:  # resourceVersion too old: list again at once
                    continue
                log.warning("watching %s failed (HTTP %s), listing again in %.1fs", plural, exc.status, backoff)
            except Exception as exc:  # connection refused/reset, timeouts: the API server is away
                log.warning("watching %s failed (%s), listing again in %.1fs", plural, exc, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def load_once(self) -> Snapshot:
        """List the resources once, no watch, and build a snapshot without signing keys (``tokenbridge explain``
        issues nothing). ClusterIdentityProviders the credentials may not list are left out."""
        for plural in self._watched:
            if plural == SECRETS:
                continue
            try:
                self._list(plural)
            except ApiException as exc:
                if plural != api.PLURAL_CLUSTER_IDP or exc.status != 403:
                    raise
                log.warning("not allowed to list %s; leaving them out", plural)
        with self._lock:
            stores = {plural: list(objects.values()) for plural, objects in self._stores.items()}
        return build_snapshot(
            identity_providers=stores[api.PLURAL_IDP],
            cluster_identity_providers=stores[api.PLURAL_CLUSTER_IDP],
            applications=stores[api.PLURAL_APP],
            signing_keys=None,
            cache=self._cache,
            policies=self._policies,
            telemetry=self._telemetry,
        )

    # --- snapshot -------------------------------------------------------------------------------------------
    def _rebuild_loop(self) -> None:
        for listed in self._listed.values():  # a first snapshot only once everything has been listed
            while not listed.wait(0.5):
                if self._stop.is_set():
                    return
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.wait(DEBOUNCE):
                return
            self._dirty.clear()
            try:
                self._snapshot = self._build()
            except Exception:
                log.exception("building a snapshot failed; serving the previous one")

    def _build(self) -> Snapshot:
        with self._lock:
            stores = {plural: list(objects.values()) for plural, objects in self._stores.items()}
        secret = next(iter(stores[SECRETS]), None)
        data = (secret or {}).get("data") or None
        if data != self._signing_data:
            self._signing_data = data
            try:  # a missing or invalid Secret keeps the last good keys signing until the operator fixes it
                self._signing_keys = SigningKeySet.from_secret_data(data or {})
            except ValueError as exc:
                log.error("signing key Secret %s/%s: %s", *self._signing_secret, exc)
        return build_snapshot(
            identity_providers=cooperative(stores[api.PLURAL_IDP]),
            cluster_identity_providers=cooperative(stores[api.PLURAL_CLUSTER_IDP]),
            applications=cooperative(stores[api.PLURAL_APP]),
            signing_keys=self._signing_keys,
            cache=self._cache,
            policies=self._policies,
            telemetry=self._telemetry,
        )
