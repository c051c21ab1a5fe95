"""The one decision pipeline: what a token request gets, from an authenticated client to the claims to sign.

The token endpoint, ``POST /oauth2/explain`` and ``tokenbridge explain`` all run :meth:`Pipeline.run`; explain
passes a :class:`~.trace.Recorder` and ``consume=False`` (the replay cache is looked at, never written). Cheap
checks run first (grant, audience, scope), signatures after, policies (CEL) only for resources that have one,
and the replay cache is written last, once everything else has passed, so a refused request burns no ``jti``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from tokenbridge import api
from tokenbridge.policy import PolicyDenied

from . import assertions
from .config import ServerConfig
from .errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from .forms import required, single
from .replay import CacheFull, ReplayCache, Replayed
from .snapshot import Application, IdentityProvider
from .trace import FAIL, NO_TRACE, PASS, SKIP, Recorder, Trace, step

log = logging.getLogger(__name__)

SUBJECT_TOKEN_TYPES = frozenset({api.TOKEN_TYPE_JWT, api.TOKEN_TYPE_ID_TOKEN, api.TOKEN_TYPE_ACCESS_TOKEN})
ISSUED_TOKEN_TYPES = frozenset({api.TOKEN_TYPE_ACCESS_TOKEN, api.TOKEN_TYPE_JWT})
MAX_ACT_DEPTH = 8
# RFC 6749 §3.3: scope = scope-token *( SP scope-token ), scope-token = 1*NQCHAR (%x21 / %x23-5B / %x5D-7E)
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+(?: [\x21\x23-\x5b\x5d-\x7e]+)*")

Form = dict[str, list[str]]


@dataclass
class Exchange:
    """One token request as far as it got: filled in by the pipeline, read by the endpoint, metrics and audit."""

    client_id: str | None = None  # as presented (authenticated only when ``app`` is set)
    app: Application | None = None
    grant_type: str | None = None
    idp: str | None = None  # label of the IdP that vouched for the subject token
    subject: str | None = None  # the issued token's sub (mapped, or the subject token's)
    subject_jti: str | None = None
    actor: str | None = None  # sub of the actor token (delegation)
    audiences: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    issued_type: str = api.TOKEN_TYPE_ACCESS_TOKEN
    claims: dict[str, Any] = field(default_factory=dict)  # mapped claims and act, added to the issued token
    expires_at: float | None = None
    replayed_idp: str | None = None  # set when the replay cache refused a token of this IdP
    jti: str | None = None  # of the issued token


@dataclass(frozen=True)
class Validated:
    provider: IdentityProvider
    claims: dict[str, Any]
    what: str  # subject_token, assertion or actor_token


# --- the checks; each returns (value, what passed) or raises the OAuth error --------------------------------------


def _grant_type(form: Form, app: Application, supported: frozenset[str]) -> tuple[str, str]:
    grant_type = required(form, "grant_type")
    if grant_type not in supported:
        raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
    if grant_type not in app.grant_types:
        raise UnauthorizedClient(f"this client may not use grant_type {grant_type}")
    return grant_type, f"{grant_type} is allowed for this client"


def requested_audiences(form: Form, app: Application) -> tuple[tuple[str, ...], str]:
    """``audience`` and ``resource`` values (RFC 8693 §2.1, RFC 8707), each one of the application's audiences."""
    requested = tuple(dict.fromkeys(form.get("audience", []) + form.get("resource", [])))
    for audience in requested:
        if audience not in app.audience_set:
            raise InvalidTarget(f"audience {audience!r} is not one of this client's audiences")
    audiences = requested or app.audiences
    if not audiences:
        raise InvalidTarget("this client has no audiences to issue a token for")
    return audiences, ", ".join(audiences) + ("" if requested else " (the client's default)")


def requested_scopes(form: Form, app: Application) -> tuple[tuple[str, ...], str]:
    """The requested scopes (RFC 6749 §3.3: NQCHAR tokens separated by single spaces), all within the
    application's; none requested means all of them."""
    scope = single(form, "scope")
    if scope is None:
        scopes = tuple(sorted(app.scopes))
        return scopes, (" ".join(scopes) or "none") + " (the client's default)"
    if not _SCOPE.fullmatch(scope):  # not str.split(): other whitespace is no separator, and no scope token's
        raise InvalidScope(
            f'scope {scope[:200]!r} is not scope tokens (printable ASCII other than " and \\) '
            "separated by single spaces (RFC 6749 §3.3)"
        )
    requested = tuple(dict.fromkeys(scope.split(" ")))
    unknown = [s for s in requested if s not in app.scopes]
    if unknown:
        raise InvalidScope(f"scope {' '.join(unknown)!r} is not allowed for this client")
    return requested, " ".join(requested)


def _token_type(form: Form, name: str, token_name: str) -> tuple[str, str]:
    required(form, token_name)
    token_type = required(form, name)
    if token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(
            f"{name} {token_type!r} is not supported; use a JWT ({', '.join(sorted(SUBJECT_TOKEN_TYPES))})"
        )
    return token_type, token_type


def _requested_token_type(form: Form) -> tuple[str, str]:
    issued_type = single(form, "requested_token_type") or api.TOKEN_TYPE_ACCESS_TOKEN
    if issued_type not in ISSUED_TOKEN_TYPES:
        raise InvalidRequest(
            f"requested_token_type {issued_type!r} cannot be issued; use {api.TOKEN_TYPE_ACCESS_TOKEN}"
        )
    return issued_type, issued_type


def _parse(token: str, max_bytes: int, what: str) -> tuple[assertions.UnverifiedJWT, str]:
    parsed = assertions.parse(token, max_bytes, what)
    return parsed, f"a signed JWT (alg {parsed.header.get('alg')!r}, kid {parsed.header.get('kid')!r})"


def _delegation(app: Application) -> tuple[None, str]:
    if not app.delegation:
        raise InvalidRequest(
            "actor_token (delegation) is not enabled for this client; the OAuthApplication needs spec.delegation: true"
        )
    return None, "enabled for this client"


def _may_act(subject: Validated, actor: Validated) -> tuple[None, str]:
    """RFC 8693 §4.4: when the subject token names who may act for it, the actor must be that party."""
    may_act = subject.claims.get("may_act")
    if may_act is None:
        return None, "the subject token has no may_act claim (any actor)"
    if not isinstance(may_act, dict) or not isinstance(may_act.get("sub"), str):
        raise InvalidGrant("the subject token's may_act claim is not an object with a sub")
    if may_act["sub"] != actor.claims["sub"] or may_act.get("iss", actor.claims["iss"]) != actor.claims["iss"]:
        raise InvalidGrant("the subject token's may_act claim does not allow this actor")
    return None, "the subject token's may_act allows this actor"


def _act(actor: Validated) -> dict[str, Any]:
    """The issued token's ``act``: the actor, and the actor token's own ``act`` nested (a delegation chain)."""
    act: dict[str, Any] = {"sub": actor.claims["sub"], "iss": actor.claims["iss"]}
    prior = actor.claims.get("act")
    if prior is not None:
        depth, node = 0, prior
        while isinstance(node, dict) and depth <= MAX_ACT_DEPTH:
            node, depth = node.get("act"), depth + 1
        if not isinstance(prior, dict) or depth > MAX_ACT_DEPTH or node is not None:
            raise InvalidGrant(f"the actor token's act claim is not a chain of at most {MAX_ACT_DEPTH} objects")
        act["act"] = prior
    return act


def _condition(policy: Any, claims: dict[str, Any], request: dict[str, Any]) -> tuple[None, str]:
    try:
        policy.check(claims, request)
    except PolicyDenied as exc:
        raise InvalidGrant(exc.message) from None
    except Exception:  # cel-python raises plain Python errors for some inputs: a refusal, never a 500
        log.exception("evaluating the condition of %s", policy.owner)
        raise InvalidGrant(f"the condition of {policy.owner} could not be evaluated") from None
    return None, "true"


def _map_claims(policy: Any, claims: dict[str, Any]) -> tuple[dict[str, Any], str]:
    try:
        mapped = policy.map_claims(claims)
    except PolicyDenied as exc:
        raise InvalidGrant(exc.message) from None
    except Exception:
        log.exception("evaluating the claim mappings of %s", policy.owner)
        raise InvalidGrant(f"the claim mappings of {policy.owner} could not be evaluated") from None
    return mapped, "computed " + ", ".join(sorted(mapped))


class Pipeline:
    def __init__(
        self, config: ServerConfig, replay: ReplayCache | None, verified: assertions.VerifiedSignatures | None = None
    ):
        self._config, self._replay, self._verified = config, replay, verified
        self._grants = frozenset(api.GRANT_TYPES)

    def run(
        self,
        form: Form,
        app: Application,
        now: float,
        state: Exchange,
        trace: Trace = NO_TRACE,
        *,
        consume: bool = True,
    ) -> None:
        """Decide ``state`` for an authenticated ``app``; raises the OAuthError the client gets.

        ``consume`` writes the tokens' ``jti`` to the replay cache (the token endpoint); without it the cache is
        only read (explain). Without a replay cache (the CLI) the replay step is skipped.
        """
        state.app, state.client_id = app, app.client_id
        grant_type = state.grant_type = step(trace, "grant_type", _grant_type, form, app, self._grants)
        state.audiences = step(trace, "audience", requested_audiences, form, app)
        state.scopes = step(trace, "scope", requested_scopes, form, app)
        if grant_type == api.GRANT_CLIENT_CREDENTIALS:  # RFC 6749 §4.4: no external IdP; the client is the subject
            state.subject = app.client_id
            if app.policy.condition is not None:  # no subject token: assertion is empty (fails closed on it)
                step(trace, "condition", _condition, app.policy, {}, self._request(state, app))
            self._lifetime(state, now, (), trace)
            return
        if grant_type == api.GRANT_TOKEN_EXCHANGE:  # RFC 8693 §2.1
            step(trace, "subject_token_type", _token_type, form, "subject_token_type", "subject_token")
            state.issued_type = step(trace, "requested_token_type", _requested_token_type, form)
            subject = self._validated(form["subject_token"][0], "subject_token", app, now, trace)
        else:  # RFC 7523 §2.1: the assertion is validated exactly like a subject token
            subject = self._validated(required(form, "assertion"), "assertion", app, now, trace)
        state.idp = subject.provider.label
        state.subject = subject.claims["sub"]
        jti = subject.claims.get("jti")
        state.subject_jti = jti[:256] if isinstance(jti, str) else None
        validated = [subject]
        actor = None
        if grant_type == api.GRANT_TOKEN_EXCHANGE and ("actor_token" in form or "actor_token_type" in form):
            step(trace, "delegation", _delegation, app)
            step(trace, "actor_token_type", _token_type, form, "actor_token_type", "actor_token")
            actor = self._validated(form["actor_token"][0], "actor_token", app, now, trace)
            state.actor = actor.claims["sub"]
            step(trace, "may_act", _may_act, subject, actor)
            validated.append(actor)
        request = None
        for token in validated:  # each IdP's condition on its own token
            policy = token.provider.policy
            if policy.condition is not None:
                request = request or self._request(state, app)
                step(trace, f"{token.what}.condition", _condition, policy, token.claims, request)
        if app.policy.condition is not None:
            request = request or self._request(state, app)
            step(trace, "condition", _condition, app.policy, subject.claims, request)
        if subject.provider.policy.claim_mappings:
            mapped = step(trace, "claim_mappings", _map_claims, subject.provider.policy, subject.claims)
            state.subject = mapped.pop("sub", state.subject)
            state.claims.update(mapped)
        if actor is not None:
            state.claims["act"] = step(
                trace, "act", lambda a: (_act(a), "act names the actor token's sub and iss"), actor
            )
        self._lifetime(state, now, validated, trace)
        self._replay_step(validated, now, state, trace, consume)

    @staticmethod
    def _request(state: Exchange, app: Application) -> dict[str, Any]:
        """The CEL ``request`` variable."""
        return {
            "client_id": app.client_id,
            "audience": list(state.audiences),
            "scope": list(state.scopes),
            "namespace": app.namespace,
            "grant_type": state.grant_type,
        }

    def _validated(self, token: str, what: str, app: Application, now: float, trace: Trace) -> Validated:
        parsed = step(trace, f"{what}.format", _parse, token, self._config.max_token_bytes, what)
        provider, claims = assertions.validate(parsed, app, now, trace, what, self._verified)
        return Validated(provider, claims, what)

    def _lifetime(self, state: Exchange, now: float, validated: list[Validated] | tuple, trace: Trace) -> None:
        """The client's lifetime, capped by the server's maximum and by every presented token's expiry."""
        app = state.app
        assert app is not None
        expires_at = now + min(app.lifetime, self._config.max_token_lifetime)
        capped_by = (
            "the client's accessTokenLifetime"
            if app.lifetime <= self._config.max_token_lifetime
            else "the server's maximum token lifetime"
        )
        for token in validated:
            if float(token.claims["exp"]) < expires_at:
                expires_at, capped_by = float(token.claims["exp"]), f"the {token.what}'s exp"
        if expires_at - now < 1:
            trace.record("lifetime", FAIL, "the subject token expires now; there is no lifetime left to issue")
            raise InvalidGrant("the subject token expires now; there is no lifetime left to issue")
        state.expires_at = expires_at
        trace.record("lifetime", PASS, f"{int(expires_at) - int(now)}s, set by {capped_by}")

    def _replay_step(
        self, validated: list[Validated], now: float, state: Exchange, trace: Trace, consume: bool
    ) -> None:
        keys = [
            (v.claims["iss"], v.claims["jti"], float(v.claims["exp"]) + v.provider.clock_skew, v)
            for v in validated
            if v.provider.prevent_replay and isinstance(v.claims.get("jti"), str)
        ]
        if not keys:
            if any(v.provider.prevent_replay for v in validated):
                trace.record("replay", PASS, "no jti to check (the identity provider does not require one)")
            return
        if self._replay is None:
            trace.record(
                "replay",
                SKIP,
                "not checked: the replay cache belongs to the server (each server process tree has its own)",
            )
            return
        if not consume:
            for iss, jti, _, v in keys:
                if self._replay.seen(iss, jti):
                    trace.record("replay", FAIL, f"the {v.what} was already used (its jti was seen before)")
                    state.replayed_idp = v.provider.label
                    raise InvalidGrant(f"the {v.what} was already used (replayed jti)")
            trace.record("replay", PASS, "jti not used before (explain does not record it)")
            return
        try:
            self._replay.consume((iss, jti, until) for iss, jti, until, _ in keys)
        except Replayed as exc:
            v = next(v for iss, jti, _, v in keys if (iss, jti) == (exc.iss, exc.jti))
            state.replayed_idp = v.provider.label
            raise InvalidGrant(f"the {v.what} was already used (replayed jti)") from None
        except CacheFull as exc:
            raise TemporarilyUnavailable(f"{exc}; try again later") from None


def explain(pipeline: Pipeline, form: Form, app: Application, now: float, *, client: str) -> dict[str, Any]:
    """What the token endpoint would answer ``form`` from ``app``, step by step; nothing is issued or consumed.

    The report carries no token and no secret: steps say what passed or why not, the result names the claims a
    token would get but shows only its subject, audiences, scopes and lifetime.
    """
    trace = Recorder()
    trace.record("client", PASS, client)
    state = Exchange()
    report: dict[str, Any] = {"client_id": app.client_id, "application": app.label}
    try:
        pipeline.run(form, app, now, state, trace, consume=False)
    except OAuthError as exc:
        if not trace.failed:  # a refusal outside a step (cannot happen today; keeps the report honest)
            trace.record("request", FAIL, exc.description)
        report.update(decision="refused", error=exc.error, error_description=exc.description, steps=trace.steps)
        return report
    assert state.expires_at is not None
    report.update(
        decision="issue",
        steps=trace.steps,
        token={
            "sub": state.subject,
            "aud": list(state.audiences),
            "scope": " ".join(state.scopes),
            "idp": state.idp,
            "expires_in": int(state.expires_at) - int(now),
            "issued_token_type": state.issued_type,
            "claims": sorted(
                {
                    "iss",
                    "sub",
                    "aud",
                    "client_id",
                    "iat",
                    "exp",
                    "jti",
                    *state.claims,
                    *(["scope"] if state.scopes else []),
                    *(["idp"] if state.idp else []),
                }
            ),
        },
    )
    return report
