"""The token-signing key Secret: created when missing, rotated publish-then-sign by ``tokenbridge.signing``.

Run at startup and on a schedule. Writes use the Secret's resourceVersion, so two operator replicas (or a
concurrent edit) cannot overwrite each other: the loser gets a conflict and re-reads on its next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tokenbridge.api import LABEL_MANAGED_BY, MANAGED_BY
from tokenbridge.signing import SigningKeySet, ensure_rotated

from ..config import OperatorConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    changed: bool
    keyset: SigningKeySet


def next_keyset(secret: Mapping[str, Any] | None, config: OperatorConfig, now: float) -> tuple[SigningKeySet, bool]:
    """The key set the Secret should hold at ``now``, and whether that differs from what it holds."""
    current = None
    if secret is not None:
        try:
            current = SigningKeySet.from_secret_data(secret.get("data") or {})
        except ValueError as exc:
            # Unreadable keys cannot verify anything: start over rather than stay broken.
            logger.warning("signing key Secret is unusable, generating a new key set: %s", exc)
    keyset = ensure_rotated(
        current,
        now=now,
        alg=config.signing_algorithm,
        rotation_period=config.signing_rotation_period,
        publish_lead=config.signing_publish_lead,
        max_token_lifetime=config.max_token_lifetime,
    )
    return keyset, keyset is not current


def secret_body(keyset: SigningKeySet, config: OperatorConfig, existing: Mapping[str, Any] | None) -> dict[str, Any]:
    if existing is not None:
        metadata = {k: v for k, v in existing["metadata"].items() if k != "managedFields"}
    else:
        metadata = {
            "name": config.signing_secret_name,
            "namespace": config.signing_secret_namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": keyset.to_secret_data(),
    }


def reconcile(
    config: OperatorConfig,
    *,
    read_secret: Callable[[str, str], Mapping[str, Any] | None],
    write_secret: Callable[[dict[str, Any], bool], None],
    now: float,
) -> Result:
    existing = read_secret(config.signing_secret_namespace, config.signing_secret_name)
    keyset, changed = next_keyset(existing, config, now)
    if changed:
        write_secret(secret_body(keyset, config, existing), existing is None)
        logger.info(
            "signing keys updated: active %s, published %s",
            keyset.active(now).kid,
            ", ".join(k.kid for k in keyset.published(now)),
        )
    return Result(changed, keyset)
