"""The configuration the server answers from: immutable, indexed, built off the request path, swapped whole.

A source (cluster watch or manifests on disk) hands :func:`build_snapshot` the resources as Kubernetes objects
(spec + status; a spec is read through :mod:`tokenbridge.specs`, unless the source parsed it already); every lookup
a request makes is then one dict access. A resource that cannot be used (not yet reconciled, invalid, a CEL policy
that does not compile) is left out with a logged reason; it never breaks the rest of the snapshot, and the server
never serves half a policy.

Policies (:mod:`tokenbridge.policy`) are compiled here, once per configuration change: a source hands every build
its :class:`PolicyCache`, so an unchanged expression keeps its compiled program across rebuilds.

Sized for 100,000 applications: within one build, equal values (grant types, scopes, audiences, the index of the
IdPs an application trusts) are one shared object, and the resources are slotted dataclasses.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from tokenbridge import api
from tokenbridge.durations import parse_duration
from tokenbridge.issuers import IssuerIndex
from tokenbridge.jwks import parse_jwks
from tokenbridge.policy import Policy, compile_policy
from tokenbridge.signing import SigningKeySet
from tokenbridge.specs import IdentityProviderSpec, OAuthApplicationSpec

from .jwks_cache import JwksCache, KeySource, RemoteKeys, StaticKeys
from .telemetry import Telemetry

log = logging.getLogger(__name__)

Ref = tuple[str, str, str]  # (kind, namespace or "", name)
NO_POLICY = Policy.EMPTY  # type: ignore[attr-defined]
_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class IdentityProvider:
    ref: Ref
    label: str  # the issued token's "idp" claim: namespace/name, or the cluster IdP's name
    issuer: str
    allowed_audiences: frozenset[str]
    allowed_algorithms: frozenset[str]
    clock_skew: float
    max_token_age: float | None
    keys: KeySource
    policy: Policy = NO_POLICY  # claimMappings and condition
    require_jti: bool = False
    prevent_replay: bool = False


@dataclass(frozen=True, slots=True)
class Application:
    namespace: str
    name: str
    client_id: str
    secret_hash: str
    previous_secret_hash: str | None
    previous_secret_expires_at: float | None
    auth_method: str
    grant_types: frozenset[str]
    providers: IssuerIndex  # issuer -> the application's allowed IdentityProviders
    audiences: tuple[str, ...]  # in spec order: the default audience of issued tokens
    audience_set: frozenset[str]
    scopes: frozenset[str]
    lifetime: float
    policy: Policy = NO_POLICY  # condition
    delegation: bool = False  # actor_token accepted (RFC 8693 §4.1)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Snapshot:
    applications: Mapping[str, Application]  # by client id
    providers: Mapping[Ref, IdentityProvider]
    signing_keys: SigningKeySet | None
    skipped: tuple[str, ...] = field(default=())
    generation: int = 0  # per process, +1 per snapshot built
    built_at: float = 0.0

    def application(self, namespace: str, name: str) -> Application | None:
        """An application by its namespace and name (``tokenbridge explain``; requests look up client ids)."""
        return next((a for a in self.applications.values() if (a.namespace, a.name) == (namespace, name)), None)

    @property
    def ready(self) -> bool:
        return self.signing_keys is not None


class PolicyCache:
    """Compiled policies by (kind, owner, expressions), from one build to the next: made once by whoever builds
    the source, so its rebuilds compile only what changed. It keeps what the newest snapshot uses, nothing else."""

    def __init__(self) -> None:
        self._kept: dict[str, Policy] = {}

    def get(self, key: str) -> Policy | None:
        return self._kept.get(key)

    def keep(self, used: dict[str, Policy]) -> None:
        self._kept = used


class _Shared:
    """One object per distinct value within one build (not kept afterwards: it keys IdPs by ``id``)."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}
        self._seconds: dict[str, float] = {}
        self._indexes: dict[tuple[int, ...], IssuerIndex] = {}
        self._tuples: dict[tuple[int, ...], tuple] = {}

    def strings(self, value: Any, kind: type = frozenset) -> Any:
        """``kind(value)``, shared with every equal one of only strings (other values, which a valid manifest does
        not have, stay apart: 1 and True are equal but not the same claim)."""
        made = kind(value)
        if all(type(v) is str for v in made):
            return self._values.setdefault((kind, made), made)
        return made

    def value(self, value: Any) -> Any:
        """A string, shared with every equal one (anything else as it is)."""
        if type(value) is str:
            return self._values.setdefault((str, value), value)
        return value

    def seconds(self, duration: str) -> float:
        """``parse_duration(duration)``, parsed once per distinct text (and shared)."""
        seconds = self._seconds.get(duration)
        if seconds is None:
            seconds = self._seconds[duration] = parse_duration(duration)
        return seconds

    def index(self, allowed: list[IdentityProvider]) -> IssuerIndex:
        """The issuer index of these IdPs, in this order (the same list of IdPs gives the same index)."""
        key = tuple(map(id, allowed))
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = IssuerIndex(((p.issuer, p) for p in allowed), share=self._tuple)
        return index

    def _tuple(self, values: tuple) -> tuple:
        return self._tuples.setdefault(tuple(map(id, values)), values)


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _timestamp(text: Any) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _policy(
    spec: IdentityProviderSpec | OAuthApplicationSpec, kind: str, owner: str, kept: PolicyCache, used: dict[str, Policy]
) -> Policy:
    """The compiled policy of a spec (PolicyError, a ValueError, when it does not compile)."""
    mappings = spec.claim_mappings if isinstance(spec, IdentityProviderSpec) else None
    if not mappings and not spec.condition:
        return NO_POLICY
    key = json.dumps([kind, owner, mappings or None, spec.condition or None], sort_keys=True)
    policy = kept.get(key) or used.get(key)
    if policy is None:
        policy = compile_policy(spec, kind=kind, owner=owner)
    used[key] = policy
    return policy


def _provider(
    kind: str, obj: Mapping[str, Any], cache: JwksCache, kept: PolicyCache, used: dict[str, Policy], shared: _Shared
) -> IdentityProvider:
    namespace, name = _meta(obj)
    spec, status = IdentityProviderSpec.of(obj.get("spec") or {}), obj.get("status") or {}
    label = f"{namespace}/{name}" if kind == api.KIND_IDP else name
    issuer = spec.issuer or status.get("issuer")
    if not issuer:
        raise ValueError("no issuer yet (neither spec.issuer nor a reconciled status.issuer)")
    algorithms = shared.strings(frozenset(spec.allowed_algorithms) & frozenset(api.ASYMMETRIC_ALGORITHMS))
    audiences = frozenset(spec.allowed_audiences)
    if not algorithms or not audiences:
        raise ValueError("needs allowedAudiences and at least one asymmetric allowedAlgorithms entry")
    keys: KeySource
    if spec.jwks is not None:
        keys = StaticKeys(parse_jwks(spec.jwks, algorithms))
    else:
        jwks_uri = spec.jwks_uri or status.get("jwksURI")
        if not jwks_uri:
            raise ValueError("no jwksURI yet (neither spec.jwksURI nor a reconciled status.jwksURI)")
        keys = cache.remote(label, jwks_uri, spec)
    owner = "cluster identity provider" if kind == api.KIND_CLUSTER_IDP else "identity provider"
    policy = _policy(spec, kind, f"{owner} {label}", kept, used)
    return IdentityProvider(
        ref=(kind, namespace, name),
        label=label,
        issuer=issuer,
        allowed_audiences=audiences,
        allowed_algorithms=algorithms,
        clock_skew=shared.seconds(spec.clock_skew),
        max_token_age=shared.seconds(spec.max_token_age) if spec.max_token_age else None,
        keys=keys,
        policy=policy,
        require_jti=spec.require_jti,
        prevent_replay=spec.prevent_replay,
    )


def _application(
    obj: Mapping[str, Any],
    providers: Mapping[Ref, IdentityProvider],
    kept: PolicyCache,
    used: dict[str, Policy],
    shared: _Shared,
) -> Application:
    namespace, name = _meta(obj)
    spec, status = OAuthApplicationSpec.of(obj.get("spec") or {}), obj.get("status") or {}
    client_id, secret_hash = status.get("clientID"), status.get("clientSecretHash")
    if not client_id or not secret_hash:
        raise ValueError("no client credentials yet (status.clientID / status.clientSecretHash)")
    allowed = []
    for ref in spec.identity_providers:
        key = (ref.kind, namespace if ref.kind == api.KIND_IDP else "", ref.name)
        if key in providers:  # a missing or unusable IdP only narrows what the application accepts
            allowed.append(providers[key])
    audiences = shared.strings(dict.fromkeys(spec.audiences), tuple)
    policy = _policy(spec, api.KIND_APP, f"application {namespace}/{name}", kept, used)
    return Application(
        namespace=shared.value(namespace),
        name=name,
        client_id=client_id,
        secret_hash=secret_hash,
        previous_secret_hash=status.get("previousClientSecretHash"),
        previous_secret_expires_at=_timestamp(status.get("previousClientSecretExpiresAt")),
        auth_method=shared.value(spec.token_endpoint_auth_method),
        grant_types=shared.strings(spec.grant_types),
        providers=shared.index(allowed),
        audiences=audiences,
        audience_set=shared.strings(audiences),
        scopes=shared.strings(spec.scopes),
        lifetime=shared.seconds(spec.access_token_lifetime),
        policy=policy,
        delegation=spec.delegation,
    )


def _created(obj: Mapping[str, Any]) -> float | None:
    try:
        return _timestamp((obj.get("metadata") or {}).get("creationTimestamp"))
    except (TypeError, ValueError):
        return None


def _client_id_owner(
    client_id: str, claimants: list[tuple[Application, float | None]], skipped: list[str]
) -> Application | None:
    """Several applications publish one client id (a copied status, or a squatter in another namespace): the one
    created first keeps it, whatever order they are listed in; when creation times cannot decide (missing, equal),
    none of them is served. The others are left out with the reason, and the conflict is logged as a warning."""
    labels = ", ".join(sorted(app.label for app, _ in claimants))
    times = [created for _, created in claimants]
    oldest = min((t for t in times if t is not None), default=None)
    owner = None
    if None not in times and times.count(oldest) == 1:
        owner = claimants[times.index(oldest)][0]
    log.warning(
        "client id %s is claimed by several applications (%s): %s",
        client_id,
        labels,
        f"serving {owner.label}, created first"
        if owner
        else "creation times do not tell which had it first, serving none of them",
    )
    for app, _ in claimants:
        if app is owner:
            continue
        skipped.append(
            f"{api.KIND_APP} {app.label}: client id {client_id} is also claimed by "
            + (
                f"{owner.label}, created earlier"
                if owner
                else f"{labels} and creation times do not tell which had it first"
            )
        )
    return owner


def build_snapshot(
    *,
    identity_providers: Iterable[Mapping[str, Any]],
    cluster_identity_providers: Iterable[Mapping[str, Any]],
    applications: Iterable[Mapping[str, Any]],
    signing_keys: SigningKeySet | None,
    cache: JwksCache,
    policies: PolicyCache | None = None,
    telemetry: Telemetry | None = None,
) -> Snapshot:
    """Index the resources; ``cache`` and ``policies`` keep (and afterwards only keep) the remote key sets and
    compiled policies still in use. Without ``policies`` (a one-off build) every policy is compiled; the snapshot
    is announced on ``telemetry``, if any."""
    kept = policies if policies is not None else PolicyCache()
    skipped: list[str] = []
    used: dict[str, Policy] = {}
    shared = _Shared()
    providers: dict[Ref, IdentityProvider] = {}
    for kind, objects in ((api.KIND_IDP, identity_providers), (api.KIND_CLUSTER_IDP, cluster_identity_providers)):
        for obj in objects:
            namespace, name = _meta(obj)
            try:
                provider = _provider(kind, obj, cache, kept, used, shared)
            except Exception as exc:  # one bad resource must not take the others down
                skipped.append(f"{kind} {namespace}/{name}: {exc}")
                continue
            providers[provider.ref] = provider
    claims: dict[str, list[tuple[Application, float | None]]] = {}
    for obj in applications:
        namespace, name = _meta(obj)
        try:
            app = _application(obj, providers, kept, used, shared)
        except Exception as exc:
            skipped.append(f"{api.KIND_APP} {namespace}/{name}: {exc}")
            continue
        claims.setdefault(app.client_id, []).append((app, _created(obj)))
    apps: dict[str, Application] = {}
    for client_id, claimants in claims.items():
        owner = claimants[0][0] if len(claimants) == 1 else _client_id_owner(client_id, claimants, skipped)
        if owner is not None:
            apps[client_id] = owner
    cache.retain([p.keys for p in providers.values() if isinstance(p.keys, RemoteKeys)])
    kept.keep(used)
    for reason in skipped:
        log.info("not serving %s", reason)
    snapshot = Snapshot(
        MappingProxyType(apps),
        MappingProxyType(providers),
        signing_keys,
        tuple(skipped),
        generation=next(_generations),
        built_at=time.time(),
    )
    if telemetry is not None:
        telemetry.emit("snapshot", snapshot=snapshot)
    return snapshot
