"""The specs of the Tokenbridge resources as frozen dataclasses: every field declared once, with its schema.

``crds/generate.py`` renders the CRDs' ``spec`` schemas from these models (JSON name, type, description, bounds,
default, required, CEL rules), and the operator, the exchange server and the command line read a spec through
them, ``IdentityProviderSpec.from_dict(body["spec"])`` once and attributes afterwards, so no field name is spelled
twice. :class:`IdentityProviderSpec` is the spec of both IdentityProvider and ClusterIdentityProvider.

``from_dict`` fills in the schema's defaults, an empty string or list counting as absent (``clockSkew: ""`` is
60s). It checks only the JSON types: the API server has done that already, but a standalone manifest has not, and
a string read as a list would be its characters (``allowedAudiences: api`` accepting ``a``), a quoted
``"false"`` read as a boolean true. The values themselves are checked where they are used, in a cluster and
standalone alike: a missing issuer, a duration that does not parse, an expression that does not compile. Fields
kept as raw JSON (``jwks``, ``claimMappings``) are checked only there (``tokenbridge.jwks``, ``tokenbridge.policy``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from . import api
from .durations import DURATION_PATTERN

URL_MAX = 2048
NAME_MAX = 253
EXPRESSION_MAX = 4096
CLAIM_MAPPINGS_MAX = 32
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 6749 §3.3 scope-token: printable ASCII except space, double quote and backslash.
SCOPE_TOKEN = r"^[\x21\x23-\x5B\x5D-\x7E]+$"
NO_DEFAULT = object()
Rule = Mapping[str, str]  # one x-kubernetes-validations entry: rule, message and optionally fieldPath


class SpecError(ValueError):
    """A spec whose JSON has the wrong shape (an object, list, string or boolean where another is expected)."""


@dataclass(frozen=True)
class Prop:
    """How one attribute appears in the schema. ``schema``: the other JSON Schema keywords in the order they are
    rendered (``list_type``/``map_keys``: x-kubernetes-list-type/-map-keys; ``items``/``values``: the keywords of a
    list's items / a map's values); ``rules``: its CEL rules; ``shape``: the model describing a field kept as raw
    JSON; ``declared``: False for a member that is read but not in the schema."""

    name: str
    description: str
    required: bool
    default: Any
    schema: Mapping[str, Any]
    rules: tuple[Rule, ...]
    shape: type | None
    declared: bool


def prop(
    name: str,
    description: str,
    *,
    required: bool = False,
    default: Any = NO_DEFAULT,
    empty: Any = None,
    rules: tuple[Rule, ...] = (),
    shape: type | None = None,
    declared: bool = True,
    **schema: Any,
) -> Any:
    """A dataclass field with its schema. ``default`` is the schema's default and the attribute of an absent
    field; ``empty`` is the attribute of an absent field without one (None, False, ())."""
    meta = Prop(name, description, required, default, schema, rules, shape, declared)
    return dataclasses.field(default=empty if default is NO_DEFAULT else default, metadata={"prop": meta})


def _https_url(name: str, description: str) -> Any:
    return prop(
        name,
        description + " Must start with https:// (http:// only with allowInsecureHTTP: true).",
        maxLength=URL_MAX,
        minLength=1,
    )


def _duration(name: str, description: str, **kwargs: Any) -> Any:
    return prop(
        name,
        description + " A Go-style duration such as 90s, 5m or 1h30m.",
        maxLength=32,
        pattern=DURATION_PATTERN,
        **kwargs,
    )


def _https_rule(name: str) -> Rule:
    return {
        "rule": f"!has(self.{name}) || self.{name}.startsWith('https://') || "
        f"(has(self.allowInsecureHTTP) && self.allowInsecureHTTP && self.{name}.startsWith('http://'))",
        "message": f"{name} must be an https:// URL (http:// is allowed only with allowInsecureHTTP: true)",
        "fieldPath": f".{name}",
    }


class Model:
    """Base of the models: built from a resource's JSON by :meth:`from_dict`; ``RULES``: the object's CEL rules."""

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str = "spec") -> Self:
        """The model of ``data`` (a JSON object, e.g. a resource's ``spec``); SpecError names the field at fault."""
        try:
            return cls._parse(data)
        except SpecError as exc:
            raise SpecError(f"{path}{exc}") from None

    @classmethod
    def of(cls, value: Self | Mapping[str, Any]) -> Self:
        """``value`` itself when it is parsed already, else its model: for functions handed either."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    @classmethod
    def _parse(cls, data: Any) -> Self:
        # Sized for 100,000 applications per snapshot, several times faster than calling __init__: only the members
        # present are read, into the new instance's __dict__; the others are the defaults, which a dataclass keeps
        # as class attributes. A SpecError carries the path below this object (".tls.caBundle must be ..."),
        # prefixed on its way up.
        if type(data) is not dict and not isinstance(data, Mapping):
            raise SpecError(" must be an object")
        readers = _readers(cls)
        parsed = object.__new__(cls)
        values = parsed.__dict__
        for name, raw in data.items():
            reader = readers.get(name)
            if reader is not None:
                values[reader[0]] = reader[1](raw)
        return parsed


def props(model: type) -> list[tuple[dataclasses.Field[Any], Prop, Any]]:
    """(field, its Prop, its resolved type) of each field of ``model``, in declaration order."""
    hints = typing.get_type_hints(model)
    return [(f, f.metadata["prop"], hints[f.name]) for f in dataclasses.fields(model)]


def unoptional(hint: Any) -> Any:
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


_READERS: dict[type, dict[str, tuple[str, Callable[[Any], Any]]]] = {}


def _readers(model: type) -> dict[str, tuple[str, Callable[[Any], Any]]]:
    """JSON name -> (attribute, reader) of each field of ``model``."""
    readers = _READERS.get(model)
    if readers is None:
        readers = _READERS[model] = {
            p.name: (f.name, _reader(unoptional(hint), p.name, f.default)) for f, p, hint in props(model)
        }
    return readers


def _reader(hint: Any, name: str, default: Any) -> Callable[[Any], Any]:
    """How one field is read from its JSON value (null, and an empty string or list, are its default)."""
    origin = typing.get_origin(hint)
    if hint is bool:

        def read(raw: Any) -> Any:
            if raw is None:
                return default
            if type(raw) is not bool:
                raise SpecError(f".{name} must be true or false, not {raw!r:.60}")
            return raw
    elif hint is str:

        def read(raw: Any) -> Any:
            if raw is None or raw == "":
                return default
            if type(raw) is not str:
                raise SpecError(f".{name} must be a string, not {raw!r:.60}")
            return raw
    elif isinstance(hint, type) and issubclass(hint, Model):

        def read(raw: Any) -> Any:
            if raw is None:
                return default
            try:
                return hint._parse(raw)
            except SpecError as exc:
                raise SpecError(f".{name}{exc}") from None
    elif origin is tuple:
        item = typing.get_args(hint)[0]
        models = isinstance(item, type) and issubclass(item, Model)

        def read(raw: Any) -> Any:
            if raw is None:
                return default
            if not isinstance(raw, (list, tuple)):
                raise SpecError(f".{name} must be a list, not {raw!r:.60}")
            if not raw:
                return default
            if not models:
                return tuple(raw)  # items are checked where they are used
            parsed = []
            for i, entry in enumerate(raw):
                try:
                    parsed.append(item._parse(entry))
                except SpecError as exc:
                    raise SpecError(f".{name}[{i}]{exc}") from None
            return tuple(parsed)
    elif origin is Mapping:

        def read(raw: Any) -> Any:
            return raw  # raw JSON, checked where it is used
    else:
        raise TypeError(f"no reader for {name}: {hint}")
    return read


# --------------------------------------------------------------------------------------------- identity providers
_B64 = "base64url-encoded"


@dataclass(frozen=True, kw_only=True)
class JsonWebKey(Model):
    """One public JWK: the schema of ``spec.jwks.keys`` items (the set itself stays JSON, see IdentityProviderSpec)."""

    RULES = (
        {"rule": "self.kty != 'RSA' || (has(self.n) && has(self.e))", "message": "an RSA key needs n and e"},
        {
            "rule": "self.kty != 'EC' || (has(self.crv) && has(self.x) && has(self.y))",
            "message": "an EC key needs crv, x and y",
        },
        {"rule": "self.kty != 'OKP' || (has(self.crv) && has(self.x))", "message": "an OKP key needs crv and x"},
    )

    kty: str = prop(
        "kty",
        "Key type: RSA, EC or OKP (Ed25519/Ed448). Symmetric (oct) keys are never accepted.",
        required=True,
        enum=("RSA", "EC", "OKP"),
    )
    kid: str | None = prop("kid", "Key ID, matched against the kid header of a subject token.", maxLength=256)
    use: str | None = prop("use", "Intended use; only sig keys verify tokens.", maxLength=16)
    alg: str | None = prop(
        "alg",
        "Algorithm the key is meant for, e.g. RS256; keys whose alg is not in allowedAlgorithms are not used.",
        maxLength=32,
    )
    key_ops: tuple[str, ...] = prop(
        "key_ops",
        "Permitted operations, e.g. [verify].",
        empty=(),
        maxItems=8,
        list_type="set",
        items={"maxLength": 32},
    )
    n: str | None = prop("n", "RSA modulus, " + _B64 + ", big-endian.", maxLength=4096)
    e: str | None = prop("e", "RSA public exponent, " + _B64 + " (usually AQAB).", maxLength=16)
    crv: str | None = prop("crv", "Curve of an EC or OKP key: P-256, P-384, P-521, Ed25519 or Ed448.", maxLength=16)
    x: str | None = prop("x", "x coordinate (EC) or public key (OKP), " + _B64 + ".", maxLength=256)
    y: str | None = prop("y", "y coordinate of an EC key, " + _B64 + ".", maxLength=256)
    x5t: str | None = prop("x5t", "SHA-1 thumbprint of the first x5c certificate, " + _B64 + ".", maxLength=64)
    x5t_s256: str | None = prop(
        "x5t#S256", "SHA-256 thumbprint of the first x5c certificate, " + _B64 + ".", maxLength=64
    )
    x5c: tuple[str, ...] = prop(
        "x5c",
        "X.509 certificate chain, each base64 (not base64url) DER.",
        empty=(),
        maxItems=10,
        list_type="atomic",
        items={"maxLength": 16384},
    )


@dataclass(frozen=True, kw_only=True)
class JsonWebKeySet(Model):
    """The schema of ``spec.jwks``."""

    keys: tuple[JsonWebKey, ...] = prop(
        "keys",
        "The public keys (at most 100).",
        required=True,
        empty=(),
        minItems=1,
        maxItems=100,
        list_type="atomic",
        items={
            "description": "One public JSON Web Key (RFC 7517). Only the public members below are declared, so "
            "a private member (d, p, q, k, ...) is refused by strict field validation (or "
            "pruned)."
        },
    )


@dataclass(frozen=True, kw_only=True)
class TLSSettings(Model):
    ca_bundle: str | None = prop(
        "caBundle",
        "PEM-encoded CA certificates trusted, in addition to the system roots, for this identity "
        "provider's HTTPS endpoints (private IdPs).",
        maxLength=65536,
        rules=(
            {
                "rule": "self.contains('-----BEGIN CERTIFICATE-----')",
                "message": "caBundle must contain PEM certificates (-----BEGIN CERTIFICATE-----)",
            },
        ),
    )


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings(Model):
    use_operator_credentials: bool = prop(
        "useOperatorCredentials",
        "Fetch discovery and JWKS with the fetcher's own in-cluster/kubeconfig "
        "credentials and CA (the API server's discovery endpoints usually need "
        "authentication). Defaults to true.",
        default=True,
    )


@dataclass(frozen=True, kw_only=True)
class IdentityProviderSpec(Model):
    """The spec of an IdentityProvider or ClusterIdentityProvider. ``jwks`` and ``claimMappings`` stay the JSON
    they are: an inline key set is parsed by tokenbridge.jwks exactly like a fetched one (a private member is
    skipped with its reason, not lost here), and the mappings are compiled by tokenbridge.policy."""

    RULES = (
        {
            "rule": "has(self.wellKnownURL) || (has(self.issuer) && (has(self.jwksURI) || has(self.jwks)))",
            "message": "either wellKnownURL, or issuer together with jwksURI or jwks, must be set",
        },
        {
            "rule": "!(has(self.jwksURI) && has(self.jwks))",
            "message": "jwksURI and jwks are mutually exclusive",
            "fieldPath": ".jwks",
        },
        *(_https_rule(name) for name in ("wellKnownURL", "issuer", "jwksURI", "tokenEndpoint")),
        {
            "rule": f"!has(self.kubernetes) || self.type == '{api.IDP_KUBERNETES}'",
            "message": f"kubernetes may only be set when type is {api.IDP_KUBERNETES}",
            "fieldPath": ".kubernetes",
        },
    )

    type: str | None = prop(
        "type",
        f"Kind of identity provider: {', '.join(api.IDP_TYPES)}. Selects provider-specific handling (e.g. "
        "the Entra multi-tenant {tenantid} issuer, ServiceAccount tokens).",
        required=True,
        enum=api.IDP_TYPES,
    )
    description: str | None = prop("description", "Free text for humans.", maxLength=1024)
    well_known_url: str | None = _https_url(
        "wellKnownURL",
        "URL of the OpenID Provider Metadata, usually <issuer>/.well-known/openid-configuration. "
        "issuer, jwksURI and tokenEndpoint are discovered from it unless given.",
    )
    issuer: str | None = _https_url(
        "issuer",
        "Issuer (iss) that subject tokens must carry, compared exactly (mind a trailing slash, e.g. "
        "Auth0). Overrides the discovered issuer.",
    )
    jwks_uri: str | None = _https_url(
        "jwksURI",
        "URL of the JSON Web Key Set that signs the tokens. Overrides the discovered jwks_uri. Mutually "
        "exclusive with jwks.",
    )
    token_endpoint: str | None = _https_url(
        "tokenEndpoint", "Token endpoint of the identity provider. Overrides the discovered token_endpoint."
    )
    jwks: Mapping[str, Any] | None = prop(
        "jwks",
        "Inline JSON Web Key Set for air-gapped identity providers; it is never fetched or refreshed. Use "
        "with issuer instead of wellKnownURL/jwksURI.",
        shape=JsonWebKeySet,
    )
    allowed_audiences: tuple[str, ...] = prop(
        "allowedAudiences",
        "Audiences accepted from this identity provider: a subject token's aud must contain at "
        "least one of them (1 to 10 values).",
        required=True,
        empty=(),
        minItems=1,
        maxItems=10,
        list_type="set",
        items={"minLength": 1, "maxLength": 512},
    )
    allowed_algorithms: tuple[str, ...] = prop(
        "allowedAlgorithms",
        "Asymmetric JWS algorithms accepted in subject tokens (RFC 8725: never HS* or none). "
        "Defaults to " + ", ".join(api.DEFAULT_ALLOWED_ALGORITHMS) + ".",
        default=api.DEFAULT_ALLOWED_ALGORITHMS,
        minItems=1,
        maxItems=len(api.ASYMMETRIC_ALGORITHMS),
        list_type="set",
        items={"enum": api.ASYMMETRIC_ALGORITHMS},
    )
    clock_skew: str = _duration(
        "clockSkew", "Leeway applied to exp, nbf and iat of subject tokens. Defaults to 60s.", default="60s"
    )
    max_token_age: str | None = _duration(
        "maxTokenAge", "If set, subject tokens whose iat is older than this are refused."
    )
    tls: TLSSettings | None = prop("tls", "TLS settings used to reach this identity provider.")
    kubernetes: KubernetesSettings | None = prop(
        "kubernetes", "Settings for type Kubernetes (ServiceAccount token issuers); only allowed with that type."
    )
    allow_insecure_http: bool = prop(
        "allowInsecureHTTP",
        "Development only: allow http:// URLs. Defaults to false; never enable in production.",
        default=False,
    )
    claim_mappings: Mapping[str, str] | None = prop(
        "claimMappings",
        "Claims of issued tokens computed from the subject token: claim name -> CEL expression "
        "over assertion (the validated subject token's claims), e.g. sub: \"'okta:' + "
        'assertion.sub" or groups: assertion.groups. sub replaces the subject (default: the '
        "subject token's sub); iss, aud, exp, iat, nbf, jti, client_id, scope, act, idp, cnf, "
        "may_act and typ cannot be mapped. A mapping that cannot be computed for a token (a claim "
        "it reads is missing) refuses the request. Compiled when the resource changes: an "
        "expression that does not compile keeps the identity provider out of service "
        "(Ready=False, reason InvalidExpression).",
        maxProperties=CLAIM_MAPPINGS_MAX,
        values={"maxLength": EXPRESSION_MAX},
    )
    condition: str | None = prop(
        "condition",
        "CEL expression that must be true for a token of this identity provider to be accepted, over "
        "assertion (the validated token's claims) and request (client_id, audience and scope as "
        "lists, namespace of the application, grant_type), e.g. \"assertion['kubernetes.io']."
        "serviceaccount.name == 'ci' && 'read' in request.scope\". False, or not evaluable for the "
        "token, refuses with invalid_grant naming this identity provider.",
        maxLength=EXPRESSION_MAX,
    )
    require_jti: bool = prop("requireJTI", "Refuse tokens without a jti claim. Defaults to false.", empty=False)
    prevent_replay: bool = prop(
        "preventReplay",
        "Accept each token (iss, jti) only once, until it expires (exp plus clockSkew): a second "
        "use is refused with invalid_grant. The replay cache is per server process tree, so "
        "replicas of the server do not see each other's uses. Combine with requireJTI to refuse "
        "tokens without jti. Defaults to false.",
        empty=False,
    )

    @property
    def uses_operator_credentials(self) -> bool:
        """Whether discovery and JWKS are fetched with the fetcher's own Kubernetes credentials."""
        return self.type == api.IDP_KUBERNETES and (self.kubernetes is None or self.kubernetes.use_operator_credentials)


# --------------------------------------------------------------------------------------------- applications
@dataclass(frozen=True, kw_only=True)
class IdentityProviderReference(Model):
    kind: str = prop(
        "kind",
        f"{api.KIND_IDP} (default, same namespace) or {api.KIND_CLUSTER_IDP}.",
        default=api.KIND_IDP,
        enum=(api.KIND_IDP, api.KIND_CLUSTER_IDP),
    )
    name: str = prop(
        "name",
        "Name of the identity provider.",
        required=True,
        empty="",
        maxLength=NAME_MAX,
        minLength=1,
        pattern=DNS_SUBDOMAIN,
    )
    # The API server prunes it; read so that a reference naming another namespace is reported as such.
    namespace: str | None = prop("namespace", "Not part of the API.", declared=False)


@dataclass(frozen=True, kw_only=True)
class ClientCredentials(Model):
    secret_name: str = prop(
        "secretName",
        "Secret in the application's namespace that receives client_id, client_secret and token_endpoint. Immutable.",
        required=True,
        empty="",
        maxLength=NAME_MAX,
        minLength=1,
        pattern=DNS_SUBDOMAIN,
        rules=({"rule": "self == oldSelf", "message": "credentials.secretName is immutable"},),
    )


_NEEDS_IDENTITY_PROVIDERS = (api.GRANT_TOKEN_EXCHANGE, api.GRANT_JWT_BEARER)


@dataclass(frozen=True, kw_only=True)
class OAuthApplicationSpec(Model):
    RULES = (
        {
            "rule": "!has(self.grantTypes) || !self.grantTypes.exists(g, g in "
            + "["
            + ", ".join(f"'{g}'" for g in _NEEDS_IDENTITY_PROVIDERS)
            + "]) || "
            "(has(self.identityProviders) && size(self.identityProviders) > 0)",
            "message": "the token-exchange and jwt-bearer grants need at least one entry in identityProviders",
            "fieldPath": ".identityProviders",
        },
    )

    description: str | None = prop("description", "Free text for humans.", maxLength=1024)
    grant_types: tuple[str, ...] = prop(
        "grantTypes",
        "Grant types the client may use (a set of 1 to 3): "
        + ", ".join(api.GRANT_TYPES)
        + ". token-exchange (RFC 8693) and jwt-bearer (RFC 7523) need identityProviders.",
        required=True,
        empty=(),
        minItems=1,
        maxItems=len(api.GRANT_TYPES),
        list_type="set",
        items={"enum": api.GRANT_TYPES},
    )
    identity_providers: tuple[IdentityProviderReference, ...] = prop(
        "identityProviders",
        "Identity providers whose tokens this client may present as subject tokens or "
        "assertions. An IdentityProvider is always looked up in the application's own "
        "namespace.",
        empty=(),
        maxItems=20,
        list_type="map",
        map_keys=("kind", "name"),
        items={"description": "Reference to an IdentityProvider or ClusterIdentityProvider."},
    )
    audiences: tuple[str, ...] = prop(
        "audiences",
        "Audiences the client may request for issued tokens.",
        empty=(),
        maxItems=32,
        list_type="set",
        items={"minLength": 1, "maxLength": 512},
    )
    scopes: tuple[str, ...] = prop(
        "scopes",
        "Scopes the client may request for issued tokens (RFC 6749 scope tokens).",
        empty=(),
        maxItems=64,
        list_type="set",
        items={"minLength": 1, "maxLength": 256, "pattern": SCOPE_TOKEN},
    )
    access_token_lifetime: str = _duration(
        "accessTokenLifetime", "Lifetime of issued access tokens. Defaults to 15m.", default="15m"
    )
    token_endpoint_auth_method: str = prop(
        "tokenEndpointAuthMethod",
        f"How the client authenticates at the token endpoint: {api.AUTH_METHOD_BASIC} "
        f"(default, HTTP Basic) or {api.AUTH_METHOD_POST} (form parameters).",
        default=api.AUTH_METHOD_BASIC,
        enum=(api.AUTH_METHOD_BASIC, api.AUTH_METHOD_POST),
    )
    credentials: ClientCredentials | None = prop(
        "credentials", "Where the client's credentials are published.", required=True
    )
    condition: str | None = prop(
        "condition",
        "CEL expression that must be true for this client to get a token, over assertion (the "
        "validated subject token's claims) and request (client_id, audience and scope as lists, "
        "namespace, grant_type), e.g. \"assertion.sub.endsWith(':alice') && request.scope.all(s, s != "
        "'admin')\". For client_credentials assertion is empty, so a condition reading it refuses. False "
        "refuses with invalid_grant naming this application.",
        maxLength=EXPRESSION_MAX,
    )
    delegation: bool = prop(
        "delegation",
        "Allow delegation in token exchange (RFC 8693 §4.1): an actor_token from any of this client's "
        "identity providers, validated like a subject token; the issued token carries act {sub, iss} "
        "(nested when the actor token has act), and a may_act claim in the subject token must name "
        "the actor. Defaults to false.",
        empty=False,
    )
