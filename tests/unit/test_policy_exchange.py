"""CEL policy in the request path: IdP and application conditions, claim mappings, policies that do not compile
(the resource is not served), and the lifetime cap — through the token endpoint (falcon TestClient)."""

from __future__ import annotations

import pytest
import yaml

from tests.support.exchange import (
    Clock,
    FixedSource,
    app_object,
    claims_of,
    expect_error,
    idp_object,
    make_client,
    no_fetch,
    post_form,
    snapshot_of,
)
from tests.support.idp import NOW, IdP
from tokenbridge import api
from tokenbridge_exchange import snapshot as snapshot_module
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.sources.manifests import ManifestSource

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
AUTH = (CLIENT, SECRET)


def exchange(client, token, **params):
    return post_form(
        client,
        "/oauth2/token",
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            **params,
        },
        AUTH,
    )


def setup(idp_spec=None, app_spec=None, *, idp=None, clock=None, **config):
    idp = idp or IdP()
    clock = clock or Clock()
    snap = snapshot_of(
        [idp_object("corp", idp.issuer, jwks=idp.jwks(), **(idp_spec or {}))],
        apps=[app_object("web", CLIENT, SECRET, **(app_spec or {}))],
        clock=clock,
    )
    return make_client(FixedSource(snap), clock, **config), idp, snap


# --- conditions ------------------------------------------------------------------------------------------------


def test_idp_condition_admits_and_refuses_naming_the_idp_not_the_token():
    client, idp, _ = setup({"condition": "assertion.sub.endsWith(':alice')"})
    assert exchange(client, idp.token(sub="system:serviceaccount:ns:alice")).status_code == 200
    body = expect_error(
        exchange(client, idp.token(sub="system:serviceaccount:ns:mallory-secret")),
        400,
        "invalid_grant",
        "the condition of identity provider team-a/corp refused the request",
    )
    assert "mallory" not in body["error_description"]


def test_condition_on_a_nested_claim_with_a_dotted_name():
    cond = "assertion['kubernetes.io'].serviceaccount.name == 'alice'"
    client, idp, _ = setup({"condition": cond})
    sa = lambda name: {"namespace": "ns", "serviceaccount": {"name": name, "uid": "u"}}  # noqa: E731
    assert exchange(client, idp.token(**{"kubernetes.io": sa("alice")})).status_code == 200
    expect_error(
        exchange(client, idp.token(**{"kubernetes.io": sa("bob")})),
        400,
        "invalid_grant",
        "condition of identity provider team-a/corp",
    )
    # the claim missing entirely: refused, not a 500
    expect_error(exchange(client, idp.token()), 400, "invalid_grant", "a claim it reads is missing")


@pytest.mark.parametrize(
    "condition, params, ok",
    [
        ("'https://api.example.test' in request.audience", {"audience": "https://api.example.test"}, True),
        ("'https://api.example.test' in request.audience", {"audience": "https://other.example.test"}, False),
        ("request.scope.all(s, s != 'write')", {"scope": "read"}, True),
        ("request.scope.all(s, s != 'write')", {"scope": "read write"}, False),
        ("request.scope.all(s, s != 'write')", {}, False),  # no scope requested: every scope of the app
        ("request.namespace == 'team-a' && request.client_id == 'tb-client'", {}, True),
        ("request.namespace == 'prod'", {}, False),
        (f"request.grant_type == '{api.GRANT_TOKEN_EXCHANGE}'", {}, True),
    ],
)
def test_application_condition_sees_the_request(condition, params, ok):
    client, idp, _ = setup(app_spec={"condition": condition})
    result = exchange(client, idp.token(), **params)
    if ok:
        assert result.status_code == 200, result.text
    else:
        expect_error(result, 400, "invalid_grant", "the condition of application team-a/web refused the request")


def test_both_conditions_must_hold_idp_first():
    client, idp, _ = setup({"condition": "assertion.sub == 'alice'"}, {"condition": "'admins' in assertion.groups"})
    assert exchange(client, idp.token(groups=["admins"])).status_code == 200
    expect_error(
        exchange(client, idp.token(sub="bob", groups=["admins"])), 400, "invalid_grant", "identity provider team-a/corp"
    )
    expect_error(exchange(client, idp.token(groups=["dev"])), 400, "invalid_grant", "application team-a/web")


def test_application_condition_gates_client_credentials_with_an_empty_assertion():
    client, _, _ = setup(app_spec={"condition": "request.scope == ['read']"})
    form = {"grant_type": api.GRANT_CLIENT_CREDENTIALS, "scope": "read"}
    assert post_form(client, "/oauth2/token", form, AUTH).status_code == 200
    expect_error(
        post_form(client, "/oauth2/token", {**form, "scope": "write"}, AUTH),
        400,
        "invalid_grant",
        "application team-a/web",
    )
    client, _, _ = setup(app_spec={"condition": "assertion.sub == 'x'"})
    expect_error(post_form(client, "/oauth2/token", form, AUTH), 400, "invalid_grant", "application team-a/web")


def test_jwt_bearer_assertions_meet_the_idp_condition():
    client, idp, _ = setup({"condition": "assertion.sub == 'alice'"})
    form = {"grant_type": api.GRANT_JWT_BEARER, "assertion": idp.token(sub="bob")}
    expect_error(post_form(client, "/oauth2/token", form, AUTH), 400, "invalid_grant", "identity provider")


# --- claim mappings --------------------------------------------------------------------------------------------


def test_claim_mappings_set_sub_and_extra_claims_in_the_issued_token():
    client, idp, _ = setup(
        {
            "claimMappings": {
                "sub": "'corp:' + assertion.sub",
                "groups": "assertion.groups",
                "corp_mail": "assertion.email.endsWith('@example.com')",
                "admin": "'admins' in assertion.groups",
            }
        }
    )
    claims = claims_of(exchange(client, idp.token(groups=["admins", "dev"], email="alice@example.com")))
    assert claims["sub"] == "corp:alice"
    assert claims["groups"] == ["admins", "dev"] and claims["admin"] is True
    assert claims["corp_mail"] is True
    assert claims["iss"] != idp.issuer and claims["idp"] == "team-a/corp"  # reserved claims stay ours


def test_conditions_read_the_subject_token_not_the_mapped_claims():
    client, idp, _ = setup(
        {"claimMappings": {"sub": "'corp:' + assertion.sub"}, "condition": "assertion.sub == 'alice'"}
    )
    assert claims_of(exchange(client, idp.token()))["sub"] == "corp:alice"


def test_a_mapping_that_cannot_be_computed_refuses_without_echoing_the_token():
    client, idp, _ = setup({"claimMappings": {"mail": "assertion.email"}})
    body = expect_error(
        exchange(client, idp.token()),
        400,
        "invalid_grant",
        "claim mapping 'mail' of identity provider team-a/corp cannot be computed",
    )
    assert "alice" not in body["error_description"]


def test_mapped_sub_must_be_a_non_empty_string():
    client, idp, _ = setup({"claimMappings": {"sub": "assertion.nickname"}})
    expect_error(exchange(client, idp.token(nickname="")), 400, "invalid_grant", "non-empty string")


# --- policies that do not compile: the resource is not served -----------------------------------------------


@pytest.mark.parametrize(
    "spec, reason",
    [
        ({"condition": "assertion.sub +"}, "spec.condition: is not valid CEL"),
        ({"condition": "assertion.sub"}, "must evaluate to a bool"),
        ({"claimMappings": {"iss": "'https://evil.example'"}}, "cannot be mapped"),
        ({"claimMappings": {"groups": "assertion.groups +"}}, "not valid CEL"),
    ],
)
def test_an_idp_whose_policy_does_not_compile_is_not_served(spec, reason):
    client, idp, snap = setup(spec)
    assert not snap.providers
    assert any(r.startswith("IdentityProvider team-a/corp:") and reason in r for r in snap.skipped), snap.skipped
    expect_error(exchange(client, idp.token()), 400, "invalid_grant", "not an identity provider of this client")


def test_an_application_whose_condition_does_not_compile_is_not_served():
    client, idp, snap = setup(app_spec={"condition": "request.scope +"})
    assert not snap.applications
    assert any(r.startswith("OAuthApplication team-a/web:") and "spec.condition" in r for r in snap.skipped)
    expect_error(exchange(client, idp.token()), 401, "invalid_client")


def test_policies_compile_once_and_are_reused_while_unchanged(monkeypatch):
    idp = IdP()
    calls = []
    real = snapshot_module.compile_policy
    monkeypatch.setattr(snapshot_module, "compile_policy", lambda *a, **k: calls.append(a) or real(*a, **k))
    idps = [idp_object("corp", idp.issuer, jwks=idp.jwks(), condition="assertion.sub == 'alice'")]
    apps = [app_object("web", CLIENT, SECRET, condition="request.namespace == 'team-a'")]
    policies = snapshot_module.PolicyCache()  # a source's, shared by its rebuilds
    first = snapshot_of(idps, apps=apps, policies=policies)
    second = snapshot_of(idps, apps=apps + [app_object("other", "c2", "s2")], policies=policies)  # another changed
    assert len(calls) == 2  # one IdP, one application: compiled for the first snapshot only
    key = ("IdentityProvider", "team-a", "corp")
    assert first.providers[key].policy is second.providers[key].policy
    changed = [idp_object("corp", idp.issuer, jwks=idp.jwks(), condition="assertion.sub == 'bob'")]
    snapshot_of(changed, apps=apps, policies=policies)
    assert len(calls) == 3


def test_a_source_compiles_a_policy_once_across_its_reloads(monkeypatch, tmp_path):
    """A source keeps one PolicyCache for all its rebuilds: a reload that leaves a policy alone compiles nothing."""
    idp = IdP()
    calls = []
    real = snapshot_module.compile_policy
    monkeypatch.setattr(snapshot_module, "compile_policy", lambda *a, **k: calls.append(a) or real(*a, **k))
    corp = idp_object("corp", idp.issuer, jwks=idp.jwks(), condition="assertion.sub == 'alice'")
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all([corp]))
    source = ManifestSource(tmp_path, JwksCache(no_fetch), no_fetch)
    assert source.reload_if_changed()
    first = source.current()
    path.write_text(yaml.safe_dump_all([corp, idp_object("other", "https://other.example.test", jwks=idp.jwks())]))
    assert source.reload_if_changed()
    second, key = source.current(), ("IdentityProvider", "team-a", "corp")
    assert len(second.providers) == 2 and second.providers[key].policy is first.providers[key].policy
    assert len(calls) == 1


def test_no_policy_means_no_cel_on_the_request_path(monkeypatch):
    client, idp, snap = setup()
    assert snap.providers[("IdentityProvider", "team-a", "corp")].policy.empty
    import tokenbridge.policy as policy

    monkeypatch.setattr(policy, "_activation", lambda *a: pytest.fail("CEL evaluated without a policy"))
    assert exchange(client, idp.token()).status_code == 200


# --- lifetime cap ---------------------------------------------------------------------------------------------


def test_issued_lifetime_is_capped_by_the_server_maximum():
    client, idp, _ = setup(app_spec={"accessTokenLifetime": "48h"}, max_token_lifetime=3600.0)
    claims = claims_of(exchange(client, idp.token(exp=int(NOW) + 7 * 86400)))
    assert claims["exp"] - claims["iat"] == 3600
    client, idp, _ = setup(app_spec={"accessTokenLifetime": "48h"})  # default maximum: 24h
    claims = claims_of(exchange(client, idp.token(exp=int(NOW) + 7 * 86400)))
    assert claims["exp"] - claims["iat"] == 86400
    cc = post_form(client, "/oauth2/token", {"grant_type": api.GRANT_CLIENT_CREDENTIALS}, AUTH)
    assert cc.json["expires_in"] == 86400


def test_max_token_lifetime_comes_from_the_operators_variable(tmp_path):
    from tokenbridge_exchange import config

    cfg = config.load(["--manifests", str(tmp_path)], env={"TOKENBRIDGE_MAX_TOKEN_LIFETIME": "2h"})
    assert cfg.max_token_lifetime == 7200
    assert config.load(["--manifests", str(tmp_path)], env={}).max_token_lifetime == 86400
