"""OAuthApplication: client credentials in an owned Secret, their hash in status, and reference validation.

The Secret is the source of truth for the credentials; status publishes ``clientID`` and the secret's hash for the
exchange server. Re-running (restart, resume, an unrelated edit) finds a Secret owned by this application and
changes nothing. ``tokenbridge.dev/rotate-secret`` with a value not seen before makes a new secret; the value acted
on is remembered on the Secret (annotation ``tokenbridge.dev/rotated-for``) and the previous hash stays valid for
the grace period. A client id is taken from the Secret (status lost, or never written after the Secret was) only
when no other OAuthApplication already publishes it: a Secret pre-created with someone else's client id (and an
ownerReference to the squatting application) gets a new client id and secret instead, with a ``ClientIDConflict``
Warning. The secret itself is never logged, put in status or in an Event. An application whose
``condition`` does not compile is left alone (no Secret read or written) and is ``InvalidExpression`` until its spec
changes.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenbridge.api import (
    ANNOTATION_ROTATE_SECRET,
    API_VERSION,
    COND_CREDENTIALS_READY,
    COND_READY,
    COND_REFERENCES_RESOLVED,
    GROUP,
    KIND_APP,
    KIND_CLUSTER_IDP,
    KIND_IDP,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL_APP,
    VERSION,
)
from tokenbridge.client_secrets import generate_client_id, generate_client_secret, hash_client_secret
from tokenbridge.conditions import FALSE, TRUE, get_condition, rfc3339, set_condition
from tokenbridge.specs import IdentityProviderReference, OAuthApplicationSpec

from .expressions import INVALID_EXPRESSION, invalid_expression
from .identity_provider import is_ready

ANNOTATION_ROTATED_FOR = f"{GROUP}/rotated-for"
KEY_CLIENT_ID = "client_id"
KEY_CLIENT_SECRET = "client_secret"
KEY_TOKEN_ENDPOINT = "token_endpoint"

# Condition reasons
READY = "Ready"
REFERENCES_RESOLVED = "ReferencesResolved"
NO_REFERENCES = "NoIdentityProviders"
IDP_NOT_FOUND = "IdentityProviderNotFound"
IDP_NOT_READY = "IdentityProviderNotReady"
CROSS_NAMESPACE_REFERENCE = "CrossNamespaceReference"
CLUSTER_IDPS_UNAVAILABLE = "ClusterIdentityProvidersUnavailable"
CREDENTIALS_READY = "CredentialsReady"
SECRET_CONFLICT = "SecretConflict"
# Event reasons
CREDENTIALS_CREATED = "CredentialsCreated"
CREDENTIALS_RECREATED = "CredentialsRecreated"
CREDENTIALS_ROTATED = "CredentialsRotated"
ROTATION_GRACE_ENDED = "RotationGraceEnded"
CLIENT_ID_CONFLICT = "ClientIDConflict"

NORMAL = "Normal"
WARNING = "Warning"

IdPKey = tuple[str, str, str]  # (kind, namespace or "", name)
Reference = IdentityProviderReference | Mapping[str, Any]  # an entry of spec.identityProviders, parsed or its JSON


# --- references ------------------------------------------------------------------------------------------------


def _key(namespace: str, ref: IdentityProviderReference) -> IdPKey:
    return (ref.kind, namespace if ref.kind == KIND_IDP else "", ref.name)


def reference_keys(namespace: str, refs: Iterable[Reference]) -> list[IdPKey]:
    return [_key(namespace, IdentityProviderReference.of(ref)) for ref in refs]


def check_references(
    namespace: str,
    refs: Iterable[Reference],
    lookup: Callable[[IdPKey], Mapping[str, Any] | None],
    *,
    cluster_identity_providers: bool = True,
) -> tuple[str, str, str]:
    """(status, reason, message) of ReferencesResolved; ``lookup`` returns the referenced object or None."""
    parsed = [IdentityProviderReference.of(ref) for ref in refs]
    if not parsed:
        return TRUE, NO_REFERENCES, "no identity providers referenced (client_credentials only)"
    problems: list[tuple[str, str]] = []
    for ref in parsed:
        kind = ref.kind
        if kind == KIND_IDP and ref.namespace not in (None, namespace):
            problems.append(
                (
                    CROSS_NAMESPACE_REFERENCE,
                    f"IdentityProvider {ref.namespace}/{ref.name} is in "
                    f"another namespace; use an IdentityProvider in {namespace} or a ClusterIdentityProvider",
                )
            )
            continue
        if kind == KIND_CLUSTER_IDP and not cluster_identity_providers:
            problems.append(
                (
                    CLUSTER_IDPS_UNAVAILABLE,
                    f"ClusterIdentityProvider {ref.name}: this installation "
                    "does not serve ClusterIdentityProviders (TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS=false)",
                )
            )
            continue
        key = _key(namespace, ref)
        name = f"{kind} {namespace}/{ref.name}" if kind == KIND_IDP else f"{kind} {ref.name}"
        found = lookup(key)
        if found is None:
            hint = " (IdentityProviders are looked up in the application's own namespace)" if kind == KIND_IDP else ""
            problems.append((IDP_NOT_FOUND, f"{name} not found{hint}"))
        elif not is_ready(found.get("status")):
            ready = get_condition((found.get("status") or {}).get("conditions"), COND_READY)
            why = f": {ready.get('reason')}" if ready else ": not reconciled yet"
            problems.append((IDP_NOT_READY, f"{name} is not Ready{why}"))
    if not problems:
        return TRUE, REFERENCES_RESOLVED, f"{len(parsed)} identity provider(s) Ready"
    return FALSE, problems[0][0], "; ".join(message for _, message in problems)


class ReadinessBoard:
    """When each identity provider last changed readiness, as seen on the watch stream, so applications re-check.

    Fed from watch events, not from the IdP handler: kopf writes a handler's status patch only after the handler
    returns, so a mark made inside it could precede the write, and an application checked in between would read
    the old status yet count as checked after the change.
    """

    def __init__(self) -> None:
        self._changed: dict[IdPKey, float] = {}
        self._ready: dict[IdPKey, bool] = {}
        self._lock = threading.Lock()

    def observe(self, key: IdPKey, ready: bool | None, at: float | None = None) -> None:
        """Record a watched state of an IdP (``None``: deleted); marks it when its readiness differs from before."""
        with self._lock:
            if ready is None:
                self._ready.pop(key, None)
            elif self._ready.get(key) == ready:
                return
            else:
                self._ready[key] = ready
            self._changed[key] = time.monotonic() if at is None else at

    def changed_since(self, keys: Iterable[IdPKey], since: float) -> bool:
        with self._lock:
            return any(self._changed.get(key, float("-inf")) > since for key in keys)


# --- credentials -----------------------------------------------------------------------------------------------


def _decode(data: Mapping[str, str] | None, key: str) -> str | None:
    value = (data or {}).get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(value).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _encode(values: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def owns(secret: Mapping[str, Any], app_uid: str) -> bool:
    return any(
        ref.get("uid") == app_uid and ref.get("controller")
        for ref in (secret.get("metadata") or {}).get("ownerReferences") or ()
    )


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND_APP,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


@dataclass(frozen=True)
class CredentialsPlan:
    """What to do about the credentials: the Secret to write (None: leave it) and the status fields."""

    secret: dict[str, Any] | None
    create: bool
    status: dict[str, Any]
    condition: tuple[str, str, str]  # (status, reason, message) of CredentialsReady
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def secret_client_id(app: Mapping[str, Any], status: Mapping[str, Any], secret: Mapping[str, Any] | None) -> str | None:
    """The client id :func:`plan_credentials` would take over from the Secret (none in status, the Secret is this
    application's), else None: the one case where another application's claim to it must be checked first."""
    if status.get("clientID") or secret is None or not owns(secret, app["metadata"]["uid"]):
        return None
    return _decode(secret.get("data"), KEY_CLIENT_ID) or None


def plan_credentials(
    app: Mapping[str, Any],
    status: Mapping[str, Any],
    secret: Mapping[str, Any] | None,
    *,
    token_endpoint: str | None,
    grace: float,
    now: datetime,
    client_id_conflict: str | None = None,
) -> CredentialsPlan:
    """Decide the credentials for ``app`` (its metadata and spec) given the current Secret (or None). Pure.

    ``client_id_conflict``: why the Secret's client id (:func:`secret_client_id`) may not be taken over (another
    application has it, or that could not be checked); the application then gets a new client id and a new secret
    (the Secret's may be known to whoever put that client id there)."""
    meta = app["metadata"]
    secret_name = _secret_name(app)
    rotate_value = (meta.get("annotations") or {}).get(ANNOTATION_ROTATE_SECRET)
    fields: dict[str, Any] = {"credentialsSecret": secret_name}
    events: list[tuple[str, str, str]] = []

    if secret is not None and not owns(secret, meta["uid"]):
        return CredentialsPlan(
            None,
            False,
            {},
            (
                FALSE,
                SECRET_CONFLICT,
                f"Secret {secret_name} exists and is not owned by this OAuthApplication; "
                "delete it or choose another credentials.secretName",
            ),
        )

    client_id = status.get("clientID") or _decode((secret or {}).get("data"), KEY_CLIENT_ID) or generate_client_id()
    current = _decode((secret or {}).get("data"), KEY_CLIENT_SECRET) if secret is not None else None
    handled = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_ROTATED_FOR)
    previous_hash, previous_expiry = status.get("previousClientSecretHash"), status.get("previousClientSecretExpiresAt")

    if client_id_conflict is not None and client_id == secret_client_id(app, status, secret):
        events.append(
            (
                WARNING,
                CLIENT_ID_CONFLICT,
                f"Secret {secret_name} holds client id {client_id}, which was "
                f"not taken over: {client_id_conflict}; issued a new client id and secret",
            )
        )
        client_id, current = generate_client_id(), generate_client_secret()
        previous_hash = previous_expiry = None
        handled = rotate_value
    elif current is None:
        current = generate_client_secret()
        previous_hash = previous_expiry = None  # whatever the lost Secret held is gone with it
        handled = rotate_value
        if status.get("clientID"):
            events.append(
                (
                    WARNING,
                    CREDENTIALS_RECREATED,
                    f"Secret {secret_name} was missing or incomplete: issued a new client secret",
                )
            )
        else:
            events.append((NORMAL, CREDENTIALS_CREATED, f"client {client_id} created; credentials in {secret_name}"))
    elif rotate_value is not None and rotate_value != handled:
        previous_hash = hash_client_secret(current)
        previous_expiry = rfc3339(now + timedelta(seconds=grace))
        current = generate_client_secret()
        handled = rotate_value
        events.append(
            (
                NORMAL,
                CREDENTIALS_ROTATED,
                f"new client secret in {secret_name}; the previous one is accepted until {previous_expiry}",
            )
        )

    expiry = _parse_time(previous_expiry)
    if previous_hash and (expiry is None or expiry <= now):
        previous_hash = previous_expiry = None
        if status.get("previousClientSecretHash"):
            events.append((NORMAL, ROTATION_GRACE_ENDED, "the previous client secret is no longer accepted"))

    wanted = {KEY_CLIENT_ID: client_id, KEY_CLIENT_SECRET: current}
    if token_endpoint:
        wanted[KEY_TOKEN_ENDPOINT] = token_endpoint
    desired_data = _encode(wanted)
    new_secret = None
    if (
        secret is None
        or secret.get("data") != desired_data
        or ((secret.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_ROTATED_FOR) != handled)
    ):
        metadata = (
            {k: v for k, v in secret["metadata"].items() if k != "managedFields"}
            if secret is not None
            else {
                "name": secret_name,
                "namespace": meta["namespace"],
                "labels": {LABEL_MANAGED_BY: MANAGED_BY},
                "ownerReferences": [owner_reference(meta["name"], meta["uid"])],
            }
        )
        annotations = dict(metadata.get("annotations") or {})
        if handled is None:
            annotations.pop(ANNOTATION_ROTATED_FOR, None)
        else:
            annotations[ANNOTATION_ROTATED_FOR] = handled
        metadata["annotations"] = annotations
        new_secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": metadata,
            "data": desired_data,
        }

    fields.update(
        {
            "clientID": client_id,
            "clientSecretHash": hash_client_secret(current),
            "previousClientSecretHash": previous_hash,
            "previousClientSecretExpiresAt": previous_expiry,
        }
    )
    ready = (TRUE, CREDENTIALS_READY, f"client {client_id}; credentials in Secret {secret_name}")
    return CredentialsPlan(new_secret, secret is None, fields, ready, events)


# --- the reconciler --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]]
    ready: bool
    next_check: datetime | None  # when a grace window ends and the status must change
    invalid_expression: str | None = None  # the field and the problem; nothing else was done


def desired_status(
    status: Mapping[str, Any] | None,
    generation: int | None,
    credentials: CredentialsPlan,
    references: tuple[str, str, str],
    now: datetime,
) -> dict[str, Any]:
    conditions = (status or {}).get("conditions") or []
    conditions = set_condition(conditions, COND_CREDENTIALS_READY, *credentials.condition, generation, now)
    conditions = set_condition(conditions, COND_REFERENCES_RESOLVED, *references, generation, now)
    failed = [c for c in (credentials.condition, references) if c[0] != TRUE]
    if failed:
        conditions = set_condition(
            conditions, COND_READY, FALSE, failed[0][1], "; ".join(c[2] for c in failed), generation, now
        )
    else:
        conditions = set_condition(
            conditions, COND_READY, TRUE, READY, "the client can use the token endpoint", generation, now
        )
    return {**credentials.status, "observedGeneration": generation, "conditions": conditions}


def ready_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    before = get_condition((old or {}).get("conditions"), COND_READY)
    after = get_condition(new.get("conditions"), COND_READY)
    if after is None or (
        before is not None and (before.get("status"), before.get("reason")) == (after["status"], after["reason"])
    ):
        return []
    return [(NORMAL if after["status"] == TRUE else WARNING, after["reason"], after["message"])]


ClientIDHolders = Callable[[str], Iterable[Mapping[str, Any]]]  # client id -> the OAuthApplications publishing it


def list_client_id_holders(custom_objects: Any, timeout: float | None = None) -> ClientIDHolders:
    """The OAuthApplications in every namespace whose status publishes a client id, listed with a
    ``kubernetes.client.CustomObjectsApi`` (the operator's own client; RBAC: list oauthapplications)."""

    def holders(client_id: str) -> list[Mapping[str, Any]]:
        listed = custom_objects.list_cluster_custom_object(GROUP, VERSION, PLURAL_APP, _request_timeout=timeout)
        return [item for item in listed.get("items") or () if (item.get("status") or {}).get("clientID") == client_id]

    return holders


def client_id_conflict(app: Mapping[str, Any], client_id: str, holders: ClientIDHolders | None) -> str | None:
    """Why ``app`` may not take over ``client_id`` from its Secret: the other OAuthApplications that already
    publish it, or that this cannot be checked (no way to list, or the listing is forbidden); None when it may."""
    if holders is None:
        return "no OAuthApplication listing is available to check that no other application has it"
    try:
        found = list(holders(client_id))
    except Exception as exc:
        code = getattr(exc, "status", None)
        if code in (401, 403):  # a namespace-scoped install: fail closed, do not retry
            return (
                f"OAuthApplications in all namespaces cannot be listed to check that no other application has "
                f"it ({code} {getattr(exc, 'reason', '')})".rstrip()
            )
        raise  # anything else is an API error like any other: retried
    uid = app["metadata"]["uid"]
    others = sorted(
        f"{(o.get('metadata') or {}).get('namespace')}/{(o.get('metadata') or {}).get('name')}"
        for o in found
        if (o.get("metadata") or {}).get("uid") != uid
    )
    return f"OAuthApplication {', '.join(others)} already has it" if others else None


def _secret_name(app: Mapping[str, Any]) -> str:
    credentials = OAuthApplicationSpec.of(app["spec"]).credentials
    if credentials is None:
        raise ValueError("spec.credentials is not set")
    return credentials.secret_name


def reconcile(
    app: Mapping[str, Any],
    *,
    read_secret: Callable[[str, str], Mapping[str, Any] | None],
    write_secret: Callable[[dict[str, Any], bool], None],
    lookup_idp: Callable[[IdPKey], Mapping[str, Any] | None],
    cluster_identity_providers: bool,
    token_endpoint: str | None,
    grace: float,
    now: datetime,
    client_id_holders: ClientIDHolders | None,
) -> Outcome:
    """One pass over an application (``app`` = metadata, spec (parsed or its JSON), status). Kubernetes errors
    propagate.

    ``client_id_holders`` is asked only when the client id would be taken over from the Secret (rare: status lost,
    or a Secret that was there first); None means no listing is possible, and the Secret's id is not adopted."""
    spec = OAuthApplicationSpec.of(app["spec"])
    app = {**app, "spec": spec}  # parsed once, for plan_credentials too
    meta, status = app["metadata"], app.get("status") or {}
    problem = invalid_expression(spec, KIND_APP)
    if problem is not None:
        conditions = set_condition(
            status.get("conditions"), COND_READY, FALSE, INVALID_EXPRESSION, problem, meta.get("generation"), now
        )
        new = {"observedGeneration": meta.get("generation"), "conditions": conditions}
        return Outcome(new, ready_events(status, new), False, None, problem)
    secret = read_secret(meta["namespace"], _secret_name(app))
    adopted = secret_client_id(app, status, secret)
    conflict = None
    if adopted is not None:
        conflict = client_id_conflict(app, adopted, client_id_holders)
    plan = plan_credentials(
        app, status, secret, token_endpoint=token_endpoint, grace=grace, now=now, client_id_conflict=conflict
    )
    if plan.secret is not None:
        write_secret(plan.secret, plan.create)
    references = check_references(
        meta["namespace"], spec.identity_providers, lookup_idp, cluster_identity_providers=cluster_identity_providers
    )
    new = desired_status(status, meta.get("generation"), plan, references, now)
    expiry = _parse_time(new.get("previousClientSecretExpiresAt"))
    ready = get_condition(new["conditions"], COND_READY)
    return Outcome(new, plan.events + ready_events(status, new), ready is not None and ready["status"] == TRUE, expiry)


def utcnow() -> datetime:
    return datetime.now(UTC)
