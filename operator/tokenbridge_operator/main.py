"""kopf wiring: every decorator of the operator, and nothing else of substance.

Handlers here translate kopf's kwargs into explicit arguments for the reconcilers in ``handlers/``, apply what
they return (``patch.status``, Events: :func:`_apply`, one for every kind) and turn failures into
``kopf.TemporaryError`` (retried with backoff) or ``kopf.PermanentError`` (until the spec changes; the periodic
refresh still re-checks). Each reconcile is counted by that result in ``metrics``, whose endpoint the startup
handler starts.

Periodic work runs on a short fixed ``TIMER_TICK``; each object's own interval (from ``OperatorConfig``, loaded
at startup, never at import) decides whether a tick does anything. kopf timers put the finalizer
``tokenbridge.dev/finalizer`` on every IdentityProvider, ClusterIdentityProvider and OAuthApplication; the running
operator removes it on deletion, so uninstall the operator after its resources (or remove the finalizers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
import urllib3
from kubernetes.client import ApiException

from tokenbridge.api import GROUP, PLURAL_APP, PLURAL_CLUSTER_IDP, PLURAL_IDP, VERSION
from tokenbridge.conditions import rfc3339
from tokenbridge.discovery import KubeCredentials
from tokenbridge.specs import IdentityProviderSpec, OAuthApplicationSpec

from . import metrics
from .config import OperatorConfig
from .handlers import application, identity_provider, signing_keys
from .handlers.expressions import INVALID_EXPRESSION
from .kube import Kube, connection_info

TIMER_TICK = 5.0  # seconds; the granularity of refresh intervals, not an interval itself
# kopf's own bookkeeping annotations. Not plain tokenbridge.dev: kopf ignores every annotation under its storage
# prefix when diffing, and tokenbridge.dev/rotate-secret must count as a change.
KOPF_PREFIX = f"operator.{GROUP}"

logger = logging.getLogger(__name__)


class _QuietTicks(logging.Filter):
    """Drop kopf's "Timer ... succeeded." line: every object logs it every tick, mostly for a tick with nothing due."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and record.getMessage().startswith("Timer '")
            and record.getMessage().endswith("' succeeded.")
        )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig.from_env()
    logging.getLogger("kopf.objects").addFilter(_QuietTicks())
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = int(config.watch_timeout)  # the API server wants whole seconds
    settings.watching.client_timeout = config.watch_timeout + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = config.request_timeout
    settings.networking.connect_timeout = 10
    settings.posting.reporting_component = "tokenbridge-operator"
    settings.posting.level = logging.CRITICAL  # only our own transition Events, not every log line
    if config.peering:
        settings.peering.name, settings.peering.mandatory, settings.peering.standalone = config.peering, True, False
    elif not settings.peering.mandatory:
        settings.peering.standalone = True
    memo.config = config
    memo.kube = Kube.load(config.request_timeout)
    memo.board = application.ReadinessBoard()
    memo.signing_checked_at = None
    try:
        memo.metrics_server = metrics.serve(config.metrics_port) if config.metrics_port else None
    except OSError as exc:  # a port in use stays in use: stop rather than run unobserved
        raise kopf.PermanentError(f"TOKENBRIDGE_METRICS_PORT={config.metrics_port}: {exc}") from None
    await _check_signing_keys(memo)
    memo.signing_task = asyncio.create_task(_signing_keys_loop(memo))


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return connection_info()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.signing_task.cancel()
    server = memo.get("metrics_server")
    if server is not None:  # frees the port for a restart within the same process (tests)
        server.shutdown()
        server.server_close()


@kopf.on.probe(id="signingKeysCheckedAt")
def signing_keys_probe(memo: kopf.Memo, **_: Any) -> str | None:
    return memo.signing_checked_at


# --- signing keys ----------------------------------------------------------------------------------------------


async def _check_signing_keys(memo: kopf.Memo) -> None:
    try:
        now = time.time()
        result = await asyncio.to_thread(
            signing_keys.reconcile,
            memo.config,
            read_secret=memo.kube.read_secret,
            write_secret=memo.kube.write_secret,
            now=now,
        )
        metrics.signing_key_in_use(result.keyset.active(now).sign_from)
        memo.signing_checked_at = rfc3339(application.utcnow())
    except ApiException as exc:
        logger.error(
            "signing keys: Kubernetes API error %s %s; retrying in %gs",
            exc.status,
            exc.reason,
            memo.config.signing_check_interval,
        )
    except Exception as exc:  # the loop must outlive any single failure (API server down, ...)
        logger.error(
            "signing keys: %s: %s; retrying in %gs", type(exc).__name__, exc, memo.config.signing_check_interval
        )


async def _signing_keys_loop(memo: kopf.Memo) -> None:
    while True:
        await asyncio.sleep(memo.config.signing_check_interval)
        await _check_signing_keys(memo)


# --- outcomes --------------------------------------------------------------------------------------------------


def _apply(body: kopf.Body, patch: kopf.Patch, outcome: identity_provider.Outcome | application.Outcome) -> None:
    """Write a reconcile's outcome, IdP or application alike: its status (kopf patches it even when the handler
    raises), its Events, and an invalid expression as a PermanentError (retrying cannot fix the spec)."""
    patch.status.update(outcome.status)
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    if outcome.invalid_expression is not None:
        raise kopf.PermanentError(f"{INVALID_EXPRESSION}: {outcome.invalid_expression}")


# --- identity providers ----------------------------------------------------------------------------------------


def _idp_key(body: kopf.Body) -> tuple[str, str, str]:
    return (body["kind"], body["metadata"].get("namespace") or "", body["metadata"]["name"])


@metrics.counted
def _reconcile_idp(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int) -> None:
    config: OperatorConfig = memo.config
    status = dict(body.get("status") or {})
    outcome = identity_provider.reconcile(
        IdentityProviderSpec.from_dict(body["spec"]),
        status,
        body["metadata"].get("generation"),
        kind=body["kind"],
        policy=config.fetch_policy,
        load_credentials=_operator_credentials,
        now=application.utcnow,
    )
    memo.next_refresh = time.monotonic() + config.idp_refresh_interval  # sooner only after a temporary error
    _apply(body, patch, outcome)
    if outcome.error is None:
        metrics.IDP_KEYS.labels(*_idp_key(body)).set(outcome.status["keyCount"])
        return
    metrics.DISCOVERY_FAILURES.labels(outcome.error.reason).inc()
    if outcome.error.permanent:
        raise kopf.PermanentError(f"{outcome.error.reason}: {outcome.error.message}")
    delay = config.backoff(retry)
    memo.next_refresh = time.monotonic() + delay
    raise kopf.TemporaryError(f"{outcome.error.reason}: {outcome.error.message}", delay=delay)


def _operator_credentials() -> KubeCredentials | None:
    try:
        return KubeCredentials.load()
    except Exception as exc:  # any config-loading failure means: no credentials to use
        logger.warning("no Kubernetes credentials for type: Kubernetes discovery: %s", exc)
        return None


@kopf.on.resume(GROUP, VERSION, PLURAL_IDP)
@kopf.on.create(GROUP, VERSION, PLURAL_IDP)
@kopf.on.update(GROUP, VERSION, PLURAL_IDP, field="spec")
def identity_provider_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    memo.change_retrying = False
    try:
        _reconcile_idp(body, patch, memo, retry)
    except kopf.TemporaryError:
        memo.change_retrying = True  # kopf retries this handler; the timer stays out of its way meanwhile
        raise


@kopf.timer(GROUP, VERSION, PLURAL_IDP, interval=TIMER_TICK, initial_delay=TIMER_TICK)
async def identity_provider_refresh(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int = 0, **_: Any
) -> None:
    if memo.get("change_retrying") or time.monotonic() < memo.get("next_refresh", 0.0):
        return
    await asyncio.to_thread(_reconcile_idp, body, patch, memo, retry)


@kopf.on.event(GROUP, VERSION, PLURAL_IDP)
def identity_provider_observed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Feed the readiness board from the watch: an IdP's new status is visible to applications only once written."""
    ready = None if type == "DELETED" else identity_provider.is_ready(body.get("status"))
    memo.board.observe(_idp_key(body), ready)


@kopf.on.delete(GROUP, VERSION, PLURAL_IDP, optional=True)
def identity_provider_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.forget_identity_provider(*_idp_key(body))


_serving_cluster_identity_providers: set[int] = set()


def serve_cluster_identity_providers(registry: kopf.OperatorRegistry | None = None) -> None:
    """Also reconcile ClusterIdentityProviders, with the same handlers (idempotent).

    ``tokenbridge operator`` calls this unless ``TOKENBRIDGE_CLUSTER_IDENTITY_PROVIDERS=false``: a namespace-scoped
    install may have no RBAC for the cluster-scoped kind, and kopf cannot watch a forbidden resource.
    """
    registry = registry or kopf.get_default_registry()
    if id(registry) in _serving_cluster_identity_providers:
        return
    _serving_cluster_identity_providers.add(id(registry))
    resource = (GROUP, VERSION, PLURAL_CLUSTER_IDP)
    kopf.on.resume(*resource, registry=registry)(identity_provider_changed)
    kopf.on.create(*resource, registry=registry)(identity_provider_changed)
    kopf.on.update(*resource, field="spec", registry=registry)(identity_provider_changed)
    kopf.timer(*resource, interval=TIMER_TICK, initial_delay=TIMER_TICK, registry=registry)(identity_provider_refresh)
    kopf.on.event(*resource, registry=registry)(identity_provider_observed)
    kopf.on.delete(*resource, optional=True, registry=registry)(identity_provider_deleted)


# --- applications ----------------------------------------------------------------------------------------------


@metrics.counted
def _reconcile_app(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int) -> None:
    config: OperatorConfig = memo.config
    memo.checked_at = time.monotonic()
    app = {
        "metadata": body["metadata"],
        "spec": OAuthApplicationSpec.from_dict(body["spec"]),
        "status": dict(body.get("status") or {}),
    }
    try:
        outcome = application.reconcile(
            app,
            read_secret=memo.kube.read_secret,
            write_secret=memo.kube.write_secret,
            lookup_idp=memo.kube.get_idp,
            cluster_identity_providers=config.cluster_identity_providers,
            token_endpoint=config.token_endpoint,
            grace=config.secret_rotation_grace,
            now=application.utcnow(),
            client_id_holders=application.list_client_id_holders(memo.kube.custom, memo.kube.timeout),
        )
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        delay = config.backoff(retry)
        memo.next_check = time.monotonic() + delay
        what = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else type(exc).__name__
        raise kopf.TemporaryError(f"Kubernetes API error {what}", delay=delay) from None
    memo.next_check = time.monotonic() + config.app_recheck_interval
    _apply(body, patch, outcome)
    if outcome.next_check is not None:  # a rotation grace ends sooner
        grace_left = (outcome.next_check - application.utcnow()).total_seconds()
        memo.next_check = min(memo.next_check, time.monotonic() + max(grace_left, 0.0))


@kopf.on.resume(GROUP, VERSION, PLURAL_APP)
@kopf.on.create(GROUP, VERSION, PLURAL_APP)
@kopf.on.update(GROUP, VERSION, PLURAL_APP)
def application_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any) -> None:
    _reconcile_app(body, patch, memo, retry)


@kopf.timer(GROUP, VERSION, PLURAL_APP, interval=TIMER_TICK, initial_delay=TIMER_TICK)
async def application_recheck(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, retry: int = 0, **_: Any) -> None:
    refs = application.reference_keys(
        body["metadata"]["namespace"], OAuthApplicationSpec.from_dict(body["spec"]).identity_providers
    )
    due = time.monotonic() >= memo.get("next_check", 0.0)
    if not due and not memo.board.changed_since(refs, memo.get("checked_at", 0.0)):
        return
    await asyncio.to_thread(_reconcile_app, body, patch, memo, retry)
