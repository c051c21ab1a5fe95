"""Status conditions in the cert-manager shape (see docs/api.md), set without touching the API.

A pure function so that reconcilers can compute the whole new status first and write it once through
``patch.status``; ``lastTransitionTime`` only moves when a condition's status really changes, which is what
lets readers (and the operator's own Event logic) tell a transition from a refresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"
STATUSES = (TRUE, FALSE, UNKNOWN)


def rfc3339(moment: datetime) -> str:
    """Kubernetes' metav1.Time format: UTC, second precision, ``Z`` suffix."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]] | None,
    type: str,
    status: str,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type`` set; other conditions are copied unchanged, in order."""
    if status not in STATUSES:
        raise ValueError(f"condition status must be one of {STATUSES}, not {status!r}")
    existing = [dict(c) for c in conditions or ()]
    index = next((i for i, c in enumerate(existing) if c.get("type") == type), None)
    previous = existing[index] if index is not None else None
    transition = rfc3339(now)
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    new: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    if index is None:
        existing.append(new)
    else:
        existing[index] = new
    return existing


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, type: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type:
            return condition
    return None
