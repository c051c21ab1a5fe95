"""Discovery against local HTTPS IdPs shaped like Okta, Entra ID (v1, v2 multi-tenant), Auth0 and a Kubernetes
API server; issuer rules (OpenID Discovery §4.3 and the documented quirks) as a table."""

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.support.idp import HttpsIdP
from tokenbridge.discovery import (
    DiscoveryError,
    KubeCredentials,
    discover,
    fetch_keys,
    implied_issuer,
    issuer_matches,
)
from tokenbridge.fetch import FetchPolicy

LOCAL = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))


def spec_for(idp, type="OIDC", **extra):
    return {
        "type": type,
        "wellKnownURL": idp.well_known_url,
        "tls": {"caBundle": idp.ca_pem},
        "allowedAudiences": ["api://tb"],
        **extra,
    }


def error_of(spec, policy=LOCAL, **kwargs) -> DiscoveryError:
    with pytest.raises(DiscoveryError) as info:
        discover(spec, policy, **kwargs)
    return info.value


def test_okta_custom_authorization_server(okta):
    meta = discover(spec_for(okta, "Okta"), LOCAL)
    assert meta.issuer == okta.issuer and meta.issuer.endswith("/oauth2/default")
    assert meta.jwks_uri == okta.jwks_uri and meta.token_endpoint == okta.token_endpoint
    assert len(meta.keys) == 1 and meta.jwks == okta.jwks()
    assert meta.discovered_at.tzinfo is not None


def test_auth0_trailing_slash_issuer_and_symmetric_algorithms_ignored():
    with HttpsIdP("auth0") as idp:
        meta = discover(spec_for(idp, "Auth0"), LOCAL)
    assert meta.issuer == idp.issuer and meta.issuer.endswith("/")
    assert meta.keys.algorithms <= {"RS256", "RS384", "RS512"}


@pytest.mark.parametrize("kind, issuer_suffix", [("entra", "/{tenantid}/v2.0"), ("entra-v1", None)])
def test_entra_multi_tenant_template_is_kept(kind, issuer_suffix):
    with HttpsIdP(kind) as idp:
        meta = discover(spec_for(idp, "MicrosoftEntraID"), LOCAL)
        assert meta.issuer == idp.issuer and "{tenantid}" in meta.issuer
        if issuer_suffix:
            assert meta.issuer == idp.base_url + issuer_suffix
        else:
            assert meta.issuer == "https://sts.windows.net/{tenantid}/"
        # the template is an Entra quirk only: the same document for a generic OIDC IdP is a mismatch
        error = error_of(spec_for(idp, "OIDC"))
        assert error.reason == "IssuerMismatch" and error.permanent


def test_issuer_mismatch_is_permanent_and_override_is_authoritative(okta):
    okta.document_overrides["issuer"] = "https://evil.example/oauth2/default"
    error = error_of(spec_for(okta, "Okta"))
    assert error.reason == "IssuerMismatch" and error.permanent and "evil.example" in error.message
    meta = discover(spec_for(okta, "Okta", issuer="https://tokens.example/"), LOCAL)
    assert meta.issuer == "https://tokens.example/"


def test_overrides_win_over_discovery(okta):
    okta.routes["/other-keys"] = (200, okta.jwks(), {})
    meta = discover(spec_for(okta, jwksURI=f"{okta.base_url}/other-keys", tokenEndpoint="https://tb.example/t"), LOCAL)
    assert meta.jwks_uri.endswith("/other-keys") and meta.token_endpoint == "https://tb.example/t"
    paths = [p for p, _ in okta.requests]
    assert "/other-keys" in paths and "/oauth2/default/v1/keys" not in paths


def test_inline_jwks_is_never_fetched(okta):
    meta = discover({"type": "OIDC", "issuer": "https://air.gapped/", "jwks": okta.jwks()}, FetchPolicy())
    assert meta.issuer == "https://air.gapped/" and len(meta.keys) == 1 and meta.jwks_uri is None
    assert okta.requests == []
    discover(spec_for(okta, jwks=okta.jwks()), LOCAL)
    assert [p for p, _ in okta.requests] == ["/oauth2/default/.well-known/openid-configuration"]


def test_unreachable_is_temporary_and_names_the_stage(okta):
    okta.fail(None)
    error = error_of(spec_for(okta))
    assert (error.reason, error.permanent, error.stage) == ("DiscoveryUnavailable", False, "discovery")
    okta.recover()
    okta.routes[okta._path(okta.jwks_uri)] = (503, {}, {})
    error = error_of(spec_for(okta))
    assert (error.reason, error.permanent, error.stage) == ("JWKSUnavailable", False, "keys")


def test_unknown_ca_is_temporary_unavailability(okta):
    spec = spec_for(okta)
    del spec["tls"]
    error = error_of(spec)
    assert error.reason == "DiscoveryUnavailable" and not error.permanent and "TLS" in error.message


def test_ssrf_refusal_is_permanent(okta):
    error = error_of(spec_for(okta), FetchPolicy())
    assert error.reason == "BlockedAddress" and error.permanent
    assert okta.requests == []
    error = error_of(
        {"type": "OIDC", "wellKnownURL": "https://169.254.169.254/.well-known/openid-configuration"}, FetchPolicy()
    )
    assert error.reason == "BlockedAddress"


def test_blocked_jwks_uri_in_a_good_document(okta):
    okta.document_overrides["jwks_uri"] = "https://10.1.2.3/keys"
    error = error_of(spec_for(okta), FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)))
    assert (error.reason, error.stage) == ("BlockedAddress", "keys")


@pytest.fixture
def plain_http_idp():
    """A plain-http IdP (development opt-in)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = {"issuer": base, "jwks_uri": base + "/keys"} if "well-known" in self.path else jwks
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with HttpsIdP() as signer:
        jwks = signer.jwks()
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/openid-configuration"
    server.shutdown()
    server.server_close()


def test_plain_http_needs_both_spec_and_operator_opt_in(plain_http_idp):
    spec = {"type": "OIDC", "wellKnownURL": plain_http_idp}
    assert error_of(spec).reason == "InsecureURL"
    error = error_of({**spec, "allowInsecureHTTP": True})
    assert error.reason == "InsecureURL" and "TOKENBRIDGE_ALLOW_INSECURE_HTTP" in error.message
    insecure = FetchPolicy(allow_http=True, allowed_networks=LOCAL.allowed_networks)
    assert error_of(spec, insecure).reason == "InsecureURL"
    assert len(discover({**spec, "allowInsecureHTTP": True}, insecure).keys) == 1


def test_no_usable_keys_names_why(okta):
    error = error_of(spec_for(okta, allowedAlgorithms=["ES256"]))
    assert (error.reason, error.permanent, error.stage) == ("NoUsableKeys", True, "keys")
    assert "RS256" in error.message


@pytest.mark.parametrize(
    "jwks, reason", [({"nokeys": []}, "InvalidJWKS"), ({"keys": []}, "NoUsableKeys"), (b"<html>", "InvalidJWKS")]
)
def test_bad_jwks(okta, jwks, reason):
    okta.routes[okta._path(okta.jwks_uri)] = (200, jwks, {})
    error = error_of(spec_for(okta))
    assert error.reason == reason and error.permanent


@pytest.mark.parametrize(
    "override",
    [{"issuer": None}, {"issuer": 42}, {"jwks_uri": 7}, {"jwks_uri": None}, {"token_endpoint": "javascript:alert(1)"}],
)
def test_invalid_documents_are_permanent(okta, override):
    okta.document_overrides.update(override)
    error = error_of(spec_for(okta))
    assert error.reason == "InvalidDiscoveryDocument" and error.permanent


def test_document_that_is_not_an_object(okta):
    okta.routes[okta._path(okta.well_known_url)] = (200, ["issuer"], {})
    assert error_of(spec_for(okta)).reason == "InvalidDiscoveryDocument"


def test_well_known_url_must_be_a_metadata_url():
    error = error_of({"type": "OIDC", "wellKnownURL": "https://idp.example/config.json"})
    assert error.reason == "InvalidURL" and error.permanent


def test_fetch_keys_for_the_server_refresh(okta):
    document, keys = fetch_keys(okta.jwks_uri, spec_for(okta), LOCAL)
    assert document == okta.jwks() and len(keys) == 1
    kid = okta.rotate()
    _, keys = fetch_keys(okta.jwks_uri, spec_for(okta), LOCAL)
    assert len(keys) == 2 and kid in keys.by_kid


# --- type: Kubernetes ------------------------------------------------------------------------------------------


@pytest.fixture
def apiserver(tmp_path):
    """A HttpsIdP standing in for the operator's API server, whose issuer differs from its URL."""
    with HttpsIdP("oidc") as idp:
        idp.document_overrides["issuer"] = "https://kubernetes.default.svc.cluster.local"
        ca_file = tmp_path / "ca.crt"
        ca_file.write_text(idp.ca_pem)
        yield idp, KubeCredentials(host=idp.base_url, ca_file=str(ca_file), bearer_token="operator-token")


def kube_spec(idp, **extra):
    return {"type": "Kubernetes", "wellKnownURL": idp.well_known_url, **extra}


def test_kubernetes_issuer_is_taken_from_our_api_server_with_our_credentials(apiserver):
    idp, credentials = apiserver
    # no allow-list: the API server's own address comes from the operator's configuration, not from a user
    meta = discover(kube_spec(idp), FetchPolicy(), credentials=credentials)
    assert meta.issuer == "https://kubernetes.default.svc.cluster.local"
    assert all(headers.get("Authorization") == "Bearer operator-token" for _, headers in idp.requests)
    assert len(idp.requests) == 2


def test_kubernetes_without_operator_credentials_follows_the_url_rule(apiserver):
    idp, credentials = apiserver
    spec = kube_spec(idp, kubernetes={"useOperatorCredentials": False}, tls={"caBundle": idp.ca_pem})
    assert error_of(spec, LOCAL, credentials=credentials).reason == "IssuerMismatch"
    assert all("Authorization" not in headers for _, headers in idp.requests)


def test_operator_credentials_are_never_sent_elsewhere(apiserver, okta):
    _, credentials = apiserver
    error = error_of(kube_spec(okta, tls={"caBundle": okta.ca_pem}), LOCAL, credentials=credentials)
    assert error.reason == "InvalidSpec" and error.permanent
    assert okta.requests == []


def test_operator_credentials_missing_is_temporary(apiserver):
    idp, _ = apiserver
    error = error_of(kube_spec(idp), LOCAL, credentials=None)
    assert error.reason == "CredentialsUnavailable" and not error.permanent


def test_kube_credentials_from_a_kubeconfig(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "k",
                        "cluster": {
                            "server": "https://127.0.0.1:6443",
                            "certificate-authority": str(tmp_path / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "abc"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    (tmp_path / "ca.crt").write_text("x")
    credentials = KubeCredentials.load(str(kubeconfig))
    assert credentials == KubeCredentials("https://127.0.0.1:6443", str(tmp_path / "ca.crt"), None, "abc")
    assert credentials.serves("https://127.0.0.1:6443/.well-known/openid-configuration")
    assert credentials.serves("https://localhost:6443/openid/v1/jwks")
    assert not credentials.serves("https://127.0.0.1:6444/openid/v1/jwks")
    assert not credentials.serves("http://127.0.0.1:6443/openid/v1/jwks")


# --- issuer rules --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type, url, issuer, ok",
    [
        (
            "Okta",
            "https://org.okta.com/oauth2/default/.well-known/openid-configuration",
            "https://org.okta.com/oauth2/default",
            True,
        ),
        (
            "Okta",
            "https://org.okta.com/oauth2/aus1/.well-known/oauth-authorization-server",
            "https://org.okta.com/oauth2/aus1",
            True,
        ),
        ("Okta", "https://org.okta.com/oauth2/default/.well-known/openid-configuration", "https://org.okta.com", False),
        ("Auth0", "https://t.eu.auth0.com/.well-known/openid-configuration", "https://t.eu.auth0.com/", True),
        ("OIDC", "https://idp.example/.well-known/openid-configuration", "https://idp.example//", False),
        (
            "OIDC",
            "https://idp.example/.well-known/oauth-authorization-server/tenant",
            "https://idp.example/tenant",
            True,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            True,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration",
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            True,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/common/.well-known/openid-configuration",
            "https://sts.windows.net/{tenantid}/",
            True,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/.well-known/openid-configuration",
            "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
            True,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://evil.example/{tenantid}/v2.0",
            False,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://login.microsoftonline.com/a/b/v2.0",
            False,
        ),
        (
            "MicrosoftEntraID",
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://sts.windows.net/{tenantid}/",
            False,
        ),
        (
            "OIDC",
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            False,
        ),
    ],
)
def test_issuer_rules(type, url, issuer, ok):
    assert issuer_matches(type, url, issuer) is ok


def test_implied_issuer():
    assert implied_issuer("https://a.example/x/.well-known/openid-configuration") == "https://a.example/x"
    with pytest.raises(ValueError):
        implied_issuer("https://a.example/metadata")


def test_urls_with_credentials_are_refused_without_echo():
    error = error_of({"type": "OIDC", "wellKnownURL": "https://u:hunter2@idp.example/.well-known/openid-configuration"})
    assert error.reason == "InvalidURL" and "hunter2" not in str(error)


def test_in_cluster_token_is_reread_on_every_use(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    credentials = KubeCredentials("https://10.0.0.1:443", bearer_token="first", token_file=str(token_file))
    assert credentials.token() == "first"
    token_file.write_text("rotated")
    assert credentials.token() == "rotated"
    token_file.unlink()
    assert credentials.token() == "first"


def test_unusable_ca_bundle_is_permanent(okta):
    error = error_of(spec_for(okta, tls={"caBundle": "not a certificate"}))
    assert error.reason == "InvalidTLSConfiguration" and error.permanent
