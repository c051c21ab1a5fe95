"""``tokenbridge discover`` against a real local HTTPS IdP: the operator's checks and quirks, its refusals with
a hint, and what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.idp import HttpsIdP
from tokenbridge_cli.commands import discover

TB = str(Path(sys.executable).parent / "tokenbridge")


@pytest.fixture
def ca_file(tmp_path):
    def write(idp: HttpsIdP) -> str:
        path = tmp_path / "ca.pem"
        path.write_text(idp.ca_pem)
        return str(path)

    return write


@pytest.mark.parametrize(
    "kind, idp_type, issuer_suffix",
    [
        ("oidc", "OIDC", ""),
        ("okta", "Okta", "/oauth2/default"),
        ("auth0", "Auth0", "/"),  # Auth0's trailing slash is kept
        ("entra", "MicrosoftEntraID", "/{tenantid}/v2.0"),  # the multi-tenant template is kept literally
    ],
)
def test_discovers_what_the_operator_would(kind, idp_type, issuer_suffix, ca_file, capsys):
    with HttpsIdP(kind=kind) as idp:
        code = discover.main(
            [idp.well_known_url, "--type", idp_type, "--allow-private", "--ca-file", ca_file(idp), "--json"]
        )
        out = json.loads(capsys.readouterr().out)
        assert code == 0
        assert out["issuer"] == idp.base_url + issuer_suffix == idp.issuer
        assert out["tokenEndpoint"] == idp.token_endpoint and out["jwksURI"] == idp.jwks_uri
        kid = idp.jwks()["keys"][0]["kid"]
        assert out["keys"] == [{"kid": kid, "algorithms": ["RS256"], "type": "RSA 2048"}]
        assert out["keyCount"] == 1 and out["skippedKeys"] == []


def test_human_output_lists_keys_and_skipped_keys_with_reasons(ca_file, capsys):
    with HttpsIdP(kind="okta", alg="ES256") as idp:
        good = idp.jwks()["keys"][0]
        idp.routes["/oauth2/default/v1/keys"] = (
            200,
            {"keys": [good, {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, {**good, "kid": "enc", "use": "enc"}]},
            {},
        )
        assert discover.main([idp.well_known_url, "--allow-private", "--ca-file", ca_file(idp)]) == 0
        out = capsys.readouterr().out
    assert f"issuer:         {idp.issuer}\n" in out
    assert f"token endpoint: {idp.token_endpoint}\n" in out
    assert f"kid {good['kid']}" in out and "ES256" in out and "EC secp256r1" in out
    assert "skipped keys:   2" in out
    assert "key 'hmac': private or symmetric key material is never used" in out
    assert "key 'enc': use is 'enc', not 'sig'" in out


def test_loopback_is_refused_without_allow_private(ca_file, capsys):
    with HttpsIdP() as idp:
        assert discover.main([idp.well_known_url, "--ca-file", ca_file(idp)]) == 1
    err = capsys.readouterr().err
    assert "BlockedAddress (discovery): localhost resolves to 127.0.0.1, a loopback address" in err
    assert "hint:" in err and "--allow-private" in err


def test_untrusted_certificate_says_to_pass_the_ca(capsys):
    with HttpsIdP() as idp:
        assert discover.main([idp.well_known_url, "--allow-private"]) == 1
    err = capsys.readouterr().err
    assert "CERTIFICATE_VERIFY_FAILED" in err and "--ca-file" in err


def test_issuer_mismatch_is_the_operators_refusal(ca_file, capsys):
    with HttpsIdP() as idp:
        idp.document_overrides["issuer"] = "https://evil.example.com"
        assert discover.main([idp.well_known_url, "--allow-private", "--ca-file", ca_file(idp)]) == 1
    err = capsys.readouterr().err
    assert "IssuerMismatch (discovery)" in err and "https://evil.example.com" in err


def test_entra_issuer_needs_the_entra_type(ca_file, capsys):
    """The {tenantid} quirk is type-specific in the operator, so it is here: as OIDC the document is refused."""
    with HttpsIdP(kind="entra") as idp:
        assert discover.main([idp.well_known_url, "--type", "OIDC", "--allow-private", "--ca-file", ca_file(idp)]) == 1
    assert "IssuerMismatch" in capsys.readouterr().err


def test_no_usable_keys_names_each_skipped_key(ca_file, capsys):
    with HttpsIdP(alg="ES256") as idp:
        assert (
            discover.main([idp.well_known_url, "--allow-private", "--ca-file", ca_file(idp), "--algorithm", "RS256"])
            == 1
        )
    err = capsys.readouterr().err
    assert "NoUsableKeys (keys)" in err and "is not an allowed algorithm" in err


def test_plain_http_needs_allow_http(capsys):
    url = "http://127.0.0.1:9/.well-known/openid-configuration"
    assert discover.main([url, "--allow-private"]) == 1
    assert "InsecureURL" in capsys.readouterr().err
    assert discover.main([url, "--allow-private", "--allow-http"]) == 1  # now it tries, and nothing listens
    assert "DiscoveryUnavailable" in capsys.readouterr().err


def test_type_is_guessed_from_the_host():
    assert discover.guess_type("https://login.microsoftonline.com/common/v2.0/.well-known/x") == "MicrosoftEntraID"
    assert discover.guess_type("https://dev-1.okta.com/oauth2/default/.well-known/x") == "Okta"
    assert discover.guess_type("https://t.eu.auth0.com/.well-known/x") == "Auth0"
    assert discover.guess_type("https://idp.example.com/.well-known/x") == "OIDC"


def test_command_line_exit_codes():
    helped = subprocess.run([TB, "discover", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "exit codes:" in helped.stdout
    usage = subprocess.run([TB, "discover"], capture_output=True, text=True)
    assert usage.returncode == 2 and "URL" in usage.stderr
    refused = subprocess.run([TB, "discover", "not-a-url"], capture_output=True, text=True)
    assert refused.returncode == 1 and "InvalidURL" in refused.stderr
