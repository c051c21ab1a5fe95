"""tokenbridge.specs: what the code reads from a spec's JSON (the schema rendered from the same models is checked
in test_crds.py)."""

import pytest

from tokenbridge import api
from tokenbridge.specs import IdentityProviderSpec, OAuthApplicationSpec, SpecError


def test_absent_and_empty_fields_get_the_schema_defaults():
    idp = IdentityProviderSpec.from_dict({"type": "Okta", "clockSkew": "", "allowedAlgorithms": []})
    assert idp.clock_skew == "60s" and idp.allowed_algorithms == api.DEFAULT_ALLOWED_ALGORITHMS
    assert idp.allowed_audiences == () and idp.issuer is None and idp.jwks is None and idp.tls is None
    assert idp.allow_insecure_http is False and idp.require_jti is False
    app = OAuthApplicationSpec.from_dict({"identityProviders": [{"name": "okta"}]})
    assert app.access_token_lifetime == "15m" and app.token_endpoint_auth_method == api.AUTH_METHOD_BASIC
    assert [(r.kind, r.name) for r in app.identity_providers] == [(api.KIND_IDP, "okta")]
    assert app.credentials is None and app.delegation is False


def test_operator_credentials_only_for_kubernetes_unless_turned_off():
    assert IdentityProviderSpec.from_dict({"type": "Kubernetes"}).uses_operator_credentials
    assert IdentityProviderSpec.from_dict({"type": "Kubernetes", "kubernetes": {}}).uses_operator_credentials
    assert not IdentityProviderSpec.from_dict(
        {"type": "Kubernetes", "kubernetes": {"useOperatorCredentials": False}}
    ).uses_operator_credentials
    assert not IdentityProviderSpec.from_dict({"type": "OIDC"}).uses_operator_credentials


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"allowedAudiences": "api"}, "spec.allowedAudiences must be a list, not 'api'"),  # not the characters a, p, i
        ({"requireJTI": "false"}, "spec.requireJTI must be true or false, not 'false'"),
        ({"issuer": 42}, "spec.issuer must be a string, not 42"),
        ({"tls": "pem"}, "spec.tls must be an object"),
        ({"tls": {"caBundle": ["x"]}}, "spec.tls.caBundle must be a string"),
    ],
)
def test_json_of_the_wrong_type_names_the_field(spec, message):
    with pytest.raises(SpecError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        IdentityProviderSpec.from_dict(spec)


def test_wrong_types_in_an_application_name_the_item():
    with pytest.raises(SpecError, match=r"^spec\.identityProviders\[1\]\.name must be a string"):
        OAuthApplicationSpec.from_dict({"identityProviders": [{"name": "a"}, {"name": 7}]})
    with pytest.raises(SpecError, match=r"^spec must be an object"):
        OAuthApplicationSpec.from_dict(["grantTypes"])


def test_raw_json_fields_are_kept_as_they_are():
    """An inline key set with a private member reaches tokenbridge.jwks, which skips that key with its reason."""
    jwks = {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "private"}]}
    idp = IdentityProviderSpec.from_dict({"jwks": jwks, "claimMappings": {"sub": "assertion.sub"}})
    assert idp.jwks is jwks and idp.claim_mappings == {"sub": "assertion.sub"}


def test_of_parses_only_what_is_not_parsed_yet():
    idp = IdentityProviderSpec.from_dict({"type": "OIDC"})
    assert IdentityProviderSpec.of(idp) is idp
    assert IdentityProviderSpec.of({"type": "OIDC"}) == idp


def test_a_standalone_manifest_of_the_wrong_json_type_is_left_out_naming_the_field():
    from tokenbridge_exchange.jwks_cache import JwksCache
    from tokenbridge_exchange.snapshot import build_snapshot

    idp = {
        "metadata": {"namespace": "team", "name": "corp"},
        "spec": {
            "type": "OIDC",
            "issuer": "https://idp.example",
            "jwksURI": "https://idp.example/jwks",
            "allowedAudiences": "api",
        },
    }
    snapshot = build_snapshot(
        identity_providers=[idp],
        cluster_identity_providers=[],
        applications=[],
        signing_keys=None,
        cache=JwksCache(lambda uri, spec: None),
    )
    assert snapshot.skipped == ("IdentityProvider team/corp: spec.allowedAudiences must be a list, not 'api'",)
