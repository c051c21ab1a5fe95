"""CEL policy on identity providers and applications: claim mappings and conditions (cel-python).

Expressions are compiled once per configuration change, here, by both the operator (to report
``InvalidExpression`` on the resource) and the exchange server (which serves no resource whose policy does not
compile), so the two always agree on what is valid.

Variables: ``assertion`` — the validated subject token's claims; ``request`` — ``client_id`` (string),
``audience`` and ``scope`` (lists of strings), ``namespace`` (the application's namespace), ``grant_type``.

cel-python checks no types before evaluation, so compilation also evaluates each expression once against a
representative sample: a missing claim there is fine (tokens differ), a wrong result type or an operator applied
to the wrong types is a compile error. Cost is bounded by the expression's length and syntax-tree size here and by
the token-size cap on the input: CEL has no loops beyond macros over the (bounded) input lists.

Errors never carry claim values: a refusal names the expression's field, not what the token contained.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from .api import KIND_APP
from .specs import CLAIM_MAPPINGS_MAX, EXPRESSION_MAX, IdentityProviderSpec, OAuthApplicationSpec

# The schema's own bounds, so that a manifest standalone meets the limits the API server enforces in a cluster.
MAX_EXPRESSION_LENGTH = EXPRESSION_MAX
MAX_CLAIM_MAPPINGS = CLAIM_MAPPINGS_MAX
MAX_SYNTAX_NODES = 400
# Claims the server sets itself; a mapping may not forge them. ``sub`` may be mapped.
RESERVED_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "act", "idp", "cnf", "may_act", "typ"}
)
_CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")

SAMPLE_ASSERTION: dict[str, Any] = {
    "iss": "https://issuer.example",
    "sub": "sample-subject",
    "aud": ["sample-audience"],
    "exp": 2000000000,
    "iat": 1700000000,
    "nbf": 1700000000,
    "jti": "sample-jti",
    "email": "user@example.com",
    "email_verified": True,
    "name": "Sample User",
    "groups": ["sample-group"],
    "roles": ["sample-role"],
    "scp": "read",
    "tid": "00000000-0000-0000-0000-000000000000",
    "azp": "sample-client",
    "kubernetes.io": {"namespace": "sample", "serviceaccount": {"name": "sample", "uid": "sample-uid"}},
}
SAMPLE_REQUEST: dict[str, Any] = {
    "client_id": "sample-client",
    "audience": ["https://api.example"],
    "scope": ["read"],
    "namespace": "sample",
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
}

_ENV = celpy.Environment()


class PolicyError(ValueError):
    """An expression that cannot be served: syntax, size, or a type error found on the sample."""

    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


class PolicyDenied(Exception):
    """A condition was false, or an expression could not be evaluated for this token."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _missing_member(error: CELEvalError) -> bool:
    """The token lacks what the expression reads (a claim, a map key, a list element): data, not a bug.

    cel-python reports ``a && b`` with both sides missing as an overload error *on error operands*; that too is
    only missing data.
    """
    if len(error.args) > 1 and error.args[1] in (KeyError, IndexError):
        return True
    return "CELEvalError" in str(error.args[0] if error.args else "")


def _from_cel(value: Any) -> Any:
    """CEL values (cel-python types, or plain Python ones for some results) as JSON-native Python values."""
    if isinstance(value, (celtypes.BoolType, bool)):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_from_cel(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _from_cel(v) for k, v in value.items()}
    if value is None or isinstance(value, celtypes.NullType):
        return None
    raise TypeError(f"a {type(value).__name__} cannot be a token claim")


@dataclass(frozen=True)
class Expression:
    field: str
    source: str
    program: Any = dataclasses.field(repr=False, compare=False)

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        return self.program.evaluate(activation)


def _activation(assertion: Mapping[str, Any], request: Mapping[str, Any] | None) -> dict[str, Any]:
    activation = {"assertion": celpy.json_to_cel(dict(assertion))}
    if request is not None:
        activation["request"] = celpy.json_to_cel(dict(request))
    return activation


def compile_expression(source: Any, field_path: str, *, boolean: bool) -> Expression:
    if not isinstance(source, str) or not source.strip():
        raise PolicyError(field_path, "must be a non-empty CEL expression")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise PolicyError(field_path, f"is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        ast = _ENV.compile(source)
    except CELParseError as exc:
        where = f" at line {exc.line}, column {exc.column}" if getattr(exc, "line", None) else ""
        raise PolicyError(field_path, f"is not valid CEL: syntax error{where}") from None
    if sum(1 for _ in ast.iter_subtrees()) > MAX_SYNTAX_NODES:
        raise PolicyError(field_path, f"is too complex (more than {MAX_SYNTAX_NODES} syntax nodes)")
    expression = Expression(field_path, source, _ENV.program(ast))
    sample_request = SAMPLE_REQUEST if boolean else None
    try:
        result = expression.evaluate(_activation(SAMPLE_ASSERTION, sample_request))
    except CELEvalError as exc:
        if _missing_member(exc):
            return expression  # depends on the token: fine
        raise PolicyError(field_path, f"cannot be evaluated: {exc.args[0]}") from None
    except Exception as exc:  # cel-python raises plain Python errors for some misuse
        raise PolicyError(field_path, f"cannot be evaluated: {exc}") from None
    if boolean and not isinstance(result, (celtypes.BoolType, bool)):
        raise PolicyError(field_path, f"must evaluate to a bool, not {type(result).__name__}")
    if not boolean:
        try:
            _from_cel(result)
        except TypeError as exc:
            raise PolicyError(field_path, str(exc)) from None
    return expression


@dataclass(frozen=True)
class Policy:
    owner: str = ""
    claim_mappings: tuple[tuple[str, Expression], ...] = ()
    condition: Expression | None = None

    @property
    def empty(self) -> bool:
        return not self.claim_mappings and self.condition is None

    def map_claims(self, assertion: Mapping[str, Any]) -> dict[str, Any]:
        """Claims computed by the mappings (``sub`` included when mapped); empty without mappings."""
        if not self.claim_mappings:
            return {}
        activation = _activation(assertion, None)
        claims: dict[str, Any] = {}
        for name, expression in self.claim_mappings:
            try:
                claims[name] = _from_cel(expression.evaluate(activation))
            except CELEvalError as exc:
                why = "a claim it reads is missing" if _missing_member(exc) else "it failed to evaluate"
                raise PolicyDenied(f"claim mapping {name!r} of {self.owner} cannot be computed: {why}") from None
            except (TypeError, ValueError):
                raise PolicyDenied(f"claim mapping {name!r} of {self.owner} did not produce a JSON value") from None
        if "sub" in claims and (not isinstance(claims["sub"], str) or not claims["sub"]):
            raise PolicyDenied(f"claim mapping 'sub' of {self.owner} did not produce a non-empty string")
        return claims

    def check(self, assertion: Mapping[str, Any], request: Mapping[str, Any]) -> None:
        """PolicyDenied unless the condition holds (a condition that cannot be evaluated does not hold)."""
        if self.condition is None:
            return
        try:
            result = self.condition.evaluate(_activation(assertion, request))
        except CELEvalError as exc:
            why = "a claim it reads is missing" if _missing_member(exc) else "it failed to evaluate"
            raise PolicyDenied(f"the condition of {self.owner} refused the request ({why})") from None
        if not (isinstance(result, (celtypes.BoolType, bool)) and bool(result)):
            raise PolicyDenied(f"the condition of {self.owner} refused the request")


Policy.EMPTY = Policy()  # type: ignore[attr-defined]


def compile_policy(
    spec: IdentityProviderSpec | OAuthApplicationSpec | Mapping[str, Any], *, kind: str, owner: str | None = None
) -> Policy:
    """The compiled policy of an IdentityProvider/ClusterIdentityProvider (claimMappings, condition) or
    OAuthApplication (condition) spec, a spec's JSON read as the model of ``kind``; PolicyError for the first
    invalid expression."""
    owner = owner or kind
    if isinstance(spec, Mapping):
        spec = (OAuthApplicationSpec if kind == KIND_APP else IdentityProviderSpec).from_dict(spec)
    mappings: list[tuple[str, Expression]] = []
    raw = spec.claim_mappings if isinstance(spec, IdentityProviderSpec) else None
    if raw:
        if not isinstance(raw, Mapping) or len(raw) > MAX_CLAIM_MAPPINGS:
            raise PolicyError("spec.claimMappings", f"must be a map of at most {MAX_CLAIM_MAPPINGS} claims")
        for name in sorted(raw):
            path = f"spec.claimMappings[{name!r}]"
            if not _CLAIM_NAME.match(name):
                raise PolicyError(path, "is not a valid claim name")
            if name in RESERVED_CLAIMS:
                raise PolicyError(path, f"{name!r} is set by Tokenbridge itself and cannot be mapped")
            mappings.append((name, compile_expression(raw[name], path, boolean=False)))
    compiled = compile_expression(spec.condition, "spec.condition", boolean=True) if spec.condition else None
    if not mappings and compiled is None:
        return Policy(owner)
    return Policy(owner, tuple(mappings), compiled)
