"""IdentityProvider and ClusterIdentityProvider: discovery and keys turned into status, conditions and Events.

One idempotent reconciler serves create, update, resume and the periodic refresh. It never talks to the Kubernetes
API itself: it returns the status patch, the Events to post and the failure (if any), and ``main`` applies them, so
that a failure still records why. A failed refresh keeps the last good ``issuer``/``jwksURI``/``tokenEndpoint``/
``keyCount``/``discoveredAt`` and marks them ``stale`` instead of wiping them. A spec whose CEL expressions do not
compile is not discovered at all: it is ``InvalidExpression`` until the spec changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tokenbridge.api import COND_DISCOVERED, COND_KEYS_AVAILABLE, COND_READY
from tokenbridge.conditions import FALSE, TRUE, UNKNOWN, get_condition, rfc3339, set_condition
from tokenbridge.discovery import (
    STAGE_KEYS,
    DiscoveryError,
    KubeCredentials,
    ProviderMetadata,
    discover,
)
from tokenbridge.fetch import FetchPolicy
from tokenbridge.specs import IdentityProviderSpec

from .expressions import INVALID_EXPRESSION, invalid_expression

# Condition reasons of success; failures use the DiscoveryError reasons (tokenbridge.discovery) verbatim.
READY = "Ready"
DISCOVERED = "Discovered"
STATIC_CONFIGURATION = "StaticConfiguration"
KEYS_AVAILABLE = "KeysAvailable"
DISCOVERY_FAILED = "DiscoveryFailed"

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]  # merge patch for .status
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    error: DiscoveryError | None = None
    invalid_expression: str | None = None  # the field and the problem; discovery was not attempted

    @property
    def ready(self) -> bool:
        return self.error is None and self.invalid_expression is None


def _keys_message(metadata: ProviderMetadata) -> str:
    source = metadata.jwks_uri or "the inline spec.jwks"
    algorithms = ", ".join(sorted(metadata.keys.algorithms))
    message = f"{len(metadata.keys)} usable key(s) ({algorithms}) from {source}"
    if metadata.keys.skipped:
        message += f"; skipped: {'; '.join(metadata.keys.skipped[:5])}"
    return message


def desired_status(
    spec: IdentityProviderSpec | Mapping[str, Any],
    old: Mapping[str, Any] | None,
    generation: int | None,
    metadata: ProviderMetadata | None,
    error: DiscoveryError | None,
    now: datetime,
) -> dict[str, Any]:
    """The status after one reconcile: exactly one of ``metadata`` (success) and ``error`` is given."""
    well_known = IdentityProviderSpec.of(spec).well_known_url
    old = old or {}
    conditions = old.get("conditions") or []

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)

    if metadata is not None:
        if well_known:
            put(COND_DISCOVERED, TRUE, DISCOVERED, f"issuer {metadata.issuer} discovered at {well_known}")
        else:
            put(COND_DISCOVERED, TRUE, STATIC_CONFIGURATION, f"issuer {metadata.issuer} configured in the spec")
        put(COND_KEYS_AVAILABLE, TRUE, KEYS_AVAILABLE, _keys_message(metadata))
        put(COND_READY, TRUE, READY, f"tokens from {metadata.issuer} can be verified with {len(metadata.keys)} key(s)")
        return {
            "issuer": metadata.issuer,
            "tokenEndpoint": metadata.token_endpoint,
            "jwksURI": metadata.jwks_uri,
            "keyCount": len(metadata.keys),
            "discoveredAt": rfc3339(metadata.discovered_at),
            "stale": False,
            "observedGeneration": generation,
            "conditions": conditions,
        }
    assert error is not None
    if error.stage == STAGE_KEYS:
        put(COND_DISCOVERED, TRUE, DISCOVERED if well_known else STATIC_CONFIGURATION, "the provider metadata is valid")
        put(COND_KEYS_AVAILABLE, FALSE, error.reason, error.message)
    else:
        put(COND_DISCOVERED, FALSE, error.reason, error.message)
        put(COND_KEYS_AVAILABLE, UNKNOWN, DISCOVERY_FAILED, "keys were not checked because discovery failed")
    retry = "retrying with backoff" if not error.permanent else "fix the spec or the provider; re-checked periodically"
    put(COND_READY, FALSE, error.reason, f"{error.message} ({retry})")
    return {
        "stale": bool(old.get("issuer")),
        "observedGeneration": generation,
        "conditions": conditions,
    }


def invalid_expression_status(
    old: Mapping[str, Any] | None, generation: int | None, problem: str, now: datetime
) -> dict[str, Any]:
    """Ready=False, InvalidExpression; Discovered and KeysAvailable keep describing the last discovery."""
    old = old or {}
    conditions = set_condition(old.get("conditions"), COND_READY, FALSE, INVALID_EXPRESSION, problem, generation, now)
    return {"stale": bool(old.get("issuer")), "observedGeneration": generation, "conditions": conditions}


def transition_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """One Event when Ready changes status or reason (including the first reconcile), none on a plain refresh."""
    before = get_condition((old or {}).get("conditions"), COND_READY)
    after = get_condition(new.get("conditions"), COND_READY)
    if after is None:
        return []
    if before is not None and (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
        return []
    return [(NORMAL if after["status"] == TRUE else WARNING, after["reason"], after["message"])]


def needs_operator_credentials(spec: IdentityProviderSpec | Mapping[str, Any]) -> bool:
    return IdentityProviderSpec.of(spec).uses_operator_credentials


def reconcile(
    spec: IdentityProviderSpec | Mapping[str, Any],
    status: Mapping[str, Any] | None,
    generation: int | None,
    *,
    kind: str,
    policy: FetchPolicy,
    load_credentials: Callable[[], KubeCredentials | None],
    now: Callable[[], datetime],
) -> Outcome:
    """Discover the provider described by ``spec`` (of ``kind``) and say what its status and Events become."""
    spec = IdentityProviderSpec.of(spec)
    problem = invalid_expression(spec, kind)
    if problem is not None:
        new = invalid_expression_status(status, generation, problem, now())
        return Outcome(new, transition_events(status, new), invalid_expression=problem)
    credentials = load_credentials() if needs_operator_credentials(spec) else None
    try:
        metadata, error = discover(spec, policy, credentials=credentials), None
    except DiscoveryError as exc:
        metadata, error = None, exc
    new = desired_status(spec, status, generation, metadata, error, now())
    return Outcome(new, transition_events(status, new), error)


def is_ready(status: Mapping[str, Any] | None) -> bool:
    condition = get_condition((status or {}).get("conditions"), COND_READY)
    return condition is not None and condition.get("status") == TRUE
