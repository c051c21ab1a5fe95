"""Standalone configuration: the same manifests a cluster would hold, read from a file or a directory.

``.yaml``/``.yml`` files are YAML 1.1 as kubectl reads them (PyYAML's safe loader, on libyaml when PyYAML has it:
``yes`` is a boolean, merge keys ``<<`` work), any number of documents per file. ``.json`` files are read with the
standard library's ``json`` (exact JSON: no NaN/Infinity, no comments, one value per file: a single object or a
``kind: List``), several times faster than YAML: large configurations (thousands of applications) are JSON, or live
in a cluster.

Besides the three Tokenbridge kinds, ``Secret``s provide what the operator would otherwise publish: an
application's ``credentials.secretName`` Secret holds ``client_id`` and ``client_secret`` (hashed at load, the
plain secret is not kept), and a Secret with ``keys.json`` (see :mod:`tokenbridge.signing`) the signing keys;
without one, the key set given at start (generated once, shared by all workers) signs. With no operator to
reconcile them, IdPs are discovered here, off the request path, and the files are polled for changes.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tokenbridge import api
from tokenbridge.client_secrets import hash_client_secret
from tokenbridge.discovery import ProviderMetadata
from tokenbridge.signing import SECRET_KEY, SigningKeySet
from tokenbridge.specs import IdentityProviderSpec, OAuthApplicationSpec, SpecError

from ..jwks_cache import JwksCache, RemoteKeys
from ..snapshot import PolicyCache, Snapshot, build_snapshot
from ..telemetry import Telemetry
from . import cooperative

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
DISCOVERY_RETRY = 30.0
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser, unless PyYAML was built without it

# discover(spec) -> ProviderMetadata; raises DiscoveryError
Discover = Callable[[IdentityProviderSpec], ProviderMetadata]


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _parse(path: Path) -> Iterator[Any]:
    """The documents of one file, one at a time (a YAML file is parsed as a stream); an error names the file and
    the line."""
    with open(path, "rb") as stream:  # bytes: both parsers detect UTF-8/UTF-16 themselves, as kubectl's decoder does
        if path.suffix != ".json":
            yield from yaml.load_all(stream, Loader=YAML_LOADER)  # its errors say "in <path>, line L, column C"
            return
        try:
            document = json.load(stream, parse_constant=_not_json)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    yield document


def _secret_values(secret: Mapping[str, Any]) -> dict[str, str]:
    """``stringData`` as is, ``data`` base64-decoded; stringData wins, as in the API server."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update({k: str(v) for k, v in (secret.get("stringData") or {}).items()})
    return values


def _namespaced(doc: dict[str, Any]) -> dict[str, Any]:
    doc.setdefault("metadata", {}).setdefault("namespace", "default")
    return doc


def _drain(items: list[Any]) -> Iterator[Any]:
    """The items in order, each dropped from the list as it is handed out (the list ends empty)."""
    for index in range(len(items)):
        item, items[index] = items[index], None
        yield item
    items.clear()


class ManifestSource:
    """``policies``: kept across this source's reloads (its own when not given); each snapshot is announced on
    ``telemetry``, if given."""

    def __init__(
        self,
        path: str | Path,
        cache: JwksCache,
        discover: Discover,
        *,
        signing_keys: SigningKeySet | None = None,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        credentials_optional: bool = False,
        policies: PolicyCache | None = None,
        telemetry: Telemetry | None = None,
    ):
        self._path = Path(path)
        self._cache, self._discover, self._fallback_keys = cache, discover, signing_keys
        self._policies = policies if policies is not None else PolicyCache()
        self._telemetry = telemetry
        self._poll_interval, self._clock = poll_interval, clock
        self._credentials_optional = credentials_optional  # explain: an application without its Secret is kept
        self._snapshot: Snapshot | None = None
        self._signature: tuple | None = None
        self._discovered: dict[str, tuple[float, ProviderMetadata | Exception]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> Snapshot | None:
        return self._snapshot

    def start(self) -> None:
        """Load (unless a load was tried already: ``tokenbridge serve`` loads once in the gunicorn master, before
        forking, see :meth:`preload`), then poll for changes in a thread of this process."""
        if self._signature is None:
            self.reload_if_changed()
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="manifests-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def preload(self) -> bool:
        """The first load, without starting any thread: in a process that forks afterwards (the gunicorn master),
        whose children share the snapshot and each :meth:`start` their own poll thread. True when a snapshot is
        served (a bad file leaves none; the children keep polling for a good one)."""
        self.reload_if_changed()
        return self._snapshot is not None

    @property
    def cache(self) -> JwksCache:
        return self._cache

    def _files(self) -> list[Path]:
        """Manifest files; hidden entries are skipped, so a mounted ConfigMap (its ``..data`` and timestamped
        directories behind symlinks that are swapped atomically) is read once, through the symlinks."""
        if self._path.is_dir():
            return sorted(
                p
                for p in self._path.rglob("*")
                if p.suffix in MANIFEST_SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(self._path).parts)
            )
        return [self._path]

    def _stat_signature(self) -> tuple:
        signature = []
        for path in self._files():
            try:
                st = path.stat()
            except OSError:
                continue
            signature.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def reload_if_changed(self) -> bool:
        """Rebuild when a file changed or a failed discovery is due again; True when a new snapshot is served."""
        signature = self._stat_signature()
        retry = any(
            isinstance(r, Exception) and self._clock() - t >= DISCOVERY_RETRY for t, r in self._discovered.values()
        )
        if signature == self._signature and not retry:
            return False
        try:
            self._snapshot = self._load()
        except Exception as exc:  # a half-written or invalid file: keep serving the last good snapshot
            log.error("not reloading manifests from %s: %s", self._path, exc)
            return False
        finally:
            self._signature = signature
        return True

    def load(self) -> Snapshot:
        """Read the manifests once (``tokenbridge explain``); raises on an invalid file."""
        return self._load()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            self.reload_if_changed()

    def _documents(self) -> Iterator[dict[str, Any]]:
        """Every manifest, one at a time (``kind: List`` items one by one), with its namespace defaulted."""
        for path in self._files():
            for doc in cooperative(_parse(path)):
                if isinstance(doc, dict) and doc.get("kind") == "List":
                    items, doc = doc.get("items") or (), None
                    for item in _drain(items) if isinstance(items, list) else items:  # each let go once handed out
                        if isinstance(item, dict):
                            yield _namespaced(item)
                elif isinstance(doc, dict):
                    yield _namespaced(doc)
                elif doc is not None:
                    raise ValueError(f"{path}: a manifest is not a mapping")

    def _load(self) -> Snapshot:
        # The collector would walk every object alive at each full collection; a load creates no cycles worth it.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._build()
        finally:
            if enabled:
                gc.enable()

    def _build(self) -> Snapshot:
        # Memory at 100,000 applications: only what the snapshot needs is kept while reading. Secrets are reduced
        # to their values at once, application documents pickled (a fraction of the parsed dicts' size). A JSON
        # file is parsed whole, so what is kept lies scattered among the freed parse: copied once through pickle,
        # it lies together, the parse's memory goes back to the system, and the snapshot's objects are not
        # interspersed with what the build lets go (without the copy, the workers inherit 485 MB instead of
        # 243 MB). Each application is unpickled (an exact copy) and let go as build_snapshot consumes it.
        by_kind: dict[str, list[Any]] = {api.KIND_IDP: [], api.KIND_CLUSTER_IDP: [], api.KIND_APP: []}
        secrets: dict[tuple, dict[str, str]] = {}
        for doc in self._documents():
            kind = doc.get("kind", "")
            if kind == "Secret":
                secrets[(doc["metadata"]["namespace"], doc["metadata"].get("name"))] = _secret_values(doc)
            elif kind == api.KIND_APP:
                by_kind[kind].append(pickle.dumps(doc, pickle.HIGHEST_PROTOCOL))
            elif kind in by_kind:
                by_kind[kind].append(doc)
        kept = pickle.dumps((by_kind, secrets), pickle.HIGHEST_PROTOCOL)
        del by_kind, secrets
        by_kind, secrets = pickle.loads(kept)
        del kept
        signing_keys = self._fallback_keys
        for values in secrets.values():
            if SECRET_KEY in values:
                data = {SECRET_KEY: base64.b64encode(values[SECRET_KEY].encode()).decode()}
                signing_keys = SigningKeySet.from_secret_data(data)
        used: set[str] = set()
        idps = [self._with_discovery(d, used) for d in by_kind.pop(api.KIND_IDP)]
        cluster_idps = [self._with_discovery(d, used) for d in by_kind.pop(api.KIND_CLUSTER_IDP)]
        self._discovered = {k: v for k, v in self._discovered.items() if k in used}
        for doc in cluster_idps:
            doc["metadata"].pop("namespace", None)
        apps = by_kind.pop(api.KIND_APP)
        snapshot = build_snapshot(
            identity_providers=cooperative(idps),
            cluster_identity_providers=cooperative(cluster_idps),
            applications=(self._with_credentials(pickle.loads(doc), secrets) for doc in cooperative(_drain(apps))),
            signing_keys=signing_keys,
            cache=self._cache,
            policies=self._policies,
            telemetry=self._telemetry,
        )
        self._seed_keys(snapshot)
        log.info(
            "loaded %d applications and %d identity providers from %s",
            len(snapshot.applications),
            len(snapshot.providers),
            self._path,
        )
        return snapshot

    def _with_discovery(self, doc: dict[str, Any], used: set[str]) -> dict[str, Any]:
        """The IdP with its spec parsed and the status the operator would have written: discovered issuer and
        jwks_uri."""
        try:
            spec = IdentityProviderSpec.from_dict(doc.get("spec") or {})
        except SpecError:
            return doc  # left out by the snapshot, with the reason logged
        has_keys = spec.jwks is not None or spec.jwks_uri
        if not spec.well_known_url or (spec.issuer and has_keys):
            return {**doc, "spec": spec}
        key = json.dumps(doc["spec"], sort_keys=True)
        used.add(key)
        attempted, result = self._discovered.get(key, (0.0, None))
        if result is None or isinstance(result, Exception) and self._clock() - attempted >= DISCOVERY_RETRY:
            try:
                result = self._discover(spec)
            except Exception as exc:
                log.warning("discovery of %s failed: %s", spec.well_known_url, exc)
                result = exc
            attempted = self._clock()
            self._discovered[key] = (attempted, result)
        if isinstance(result, Exception):
            return {**doc, "spec": spec}
        status = {"issuer": result.issuer, "jwksURI": result.jwks_uri, "tokenEndpoint": result.token_endpoint}
        return {**doc, "spec": spec, "status": {k: v for k, v in status.items() if v}}

    def _seed_keys(self, snapshot: Snapshot) -> None:
        """Discovery fetched the keys already: hand them to the cache so no request waits for them."""
        discovered = {
            r.jwks_uri: r for _, r in self._discovered.values() if isinstance(r, ProviderMetadata) and r.jwks_uri
        }
        for provider in snapshot.providers.values():
            if isinstance(provider.keys, RemoteKeys) and (metadata := discovered.get(provider.keys.jwks_uri)):
                provider.keys.seed(metadata.keys, metadata.discovered_at.timestamp())

    def _with_credentials(self, doc: dict[str, Any], secrets: Mapping[tuple, dict[str, str]]) -> dict[str, Any]:
        """The application with its spec parsed and the status the operator would have written: client id and
        secret hash."""
        try:
            spec = OAuthApplicationSpec.from_dict(doc.get("spec") or {})
        except SpecError:
            return doc  # left out by the snapshot, with the reason logged
        namespace = doc["metadata"]["namespace"]
        values = secrets.get((namespace, spec.credentials.secret_name if spec.credentials else None))
        if values and values.get("client_id") and values.get("client_secret"):
            status = {"clientID": values["client_id"], "clientSecretHash": hash_client_secret(values["client_secret"])}
        elif self._credentials_optional:  # nothing authenticates against it; it only has to be found by name
            status = {
                "clientID": f"{namespace}/{doc['metadata'].get('name')}",
                "clientSecretHash": "sha256:" + "0" * 64,
            }
        else:
            return doc  # left out by the snapshot, with the reason logged
        return {**doc, "spec": spec, "status": status}
