"""The SSRF-guarded fetcher against a real local HTTPS server (trustme certificates), no mocks of httpx."""

import ipaddress
import socket

import pytest

from tests.support.idp import HttpsIdP
from tokenbridge import fetch
from tokenbridge.fetch import FetchError, FetchPolicy, blocked_because, fetch_json

LOCAL = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))


def reason_of(url, policy=LOCAL, **kwargs):
    with pytest.raises(FetchError) as info:
        fetch_json(url, policy, **kwargs)
    return info.value.reason


def test_policy_from_env():
    policy = FetchPolicy.from_env(
        {"TOKENBRIDGE_ALLOWED_NETWORKS": "127.0.0.0/8, ::1/128,10.1.2.3/16", "TOKENBRIDGE_ALLOW_INSECURE_HTTP": "true"}
    )
    assert policy.allow_http is True
    assert policy.allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.1.0.0/16"),
    )
    assert FetchPolicy.from_env({}) == FetchPolicy()
    assert FetchPolicy().timeout <= 5
    with pytest.raises(ValueError):
        FetchPolicy.from_env({"TOKENBRIDGE_ALLOWED_NETWORKS": "not-a-cidr"})
    with pytest.raises(ValueError):
        FetchPolicy.from_env({"TOKENBRIDGE_ALLOW_INSECURE_HTTP": "maybe"})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "ff02::1",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_non_public_addresses_are_blocked(address):
    assert blocked_because(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert blocked_because(ipaddress.ip_address(address)) is None


def test_metadata_address_is_named():
    assert "metadata" in blocked_because(ipaddress.ip_address("169.254.169.254"))
    assert "metadata" in blocked_because(ipaddress.ip_address("fd00:ec2::254"))


def test_fetches_json_with_the_ca_bundle(okta):
    doc = fetch_json(okta.well_known_url, LOCAL, ca_bundle=okta.ca_pem)
    assert doc["issuer"] == okta.issuer
    path, headers = okta.requests[-1]
    assert headers["Host"] == f"localhost:{okta.port}"
    assert "Authorization" not in headers


def test_ca_file_is_honoured(okta, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(okta.ca_pem)
    assert fetch_json(okta.jwks_uri, LOCAL, ca_file=str(ca_file))["keys"]


def test_loopback_is_refused_without_allow_list_and_nothing_is_sent(okta):
    assert reason_of(okta.well_known_url, FetchPolicy(), ca_bundle=okta.ca_pem) == "BlockedAddress"
    assert reason_of(f"https://127.0.0.1:{okta.port}/x", FetchPolicy(), ca_bundle=okta.ca_pem) == "BlockedAddress"
    assert okta.requests == []


def test_allow_list_must_cover_the_address(okta):
    policy = FetchPolicy(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert reason_of(okta.well_known_url, policy, ca_bundle=okta.ca_pem) == "BlockedAddress"


def test_metadata_and_private_literals_are_refused():
    assert reason_of("https://169.254.169.254/latest/meta-data/", FetchPolicy()) == "BlockedAddress"
    assert reason_of("https://[fd00:ec2::254]/latest/", FetchPolicy()) == "BlockedAddress"
    assert reason_of("https://10.0.0.1/", FetchPolicy()) == "BlockedAddress"


def test_plain_http_needs_the_policy_opt_in(okta):
    assert reason_of(f"http://localhost:{okta.port}/x") == "InsecureURL"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "https:///nohost",
        "https://user:pw@example.com/x",
        "https://example.com:99999/",
        "/relative",
    ],
)
def test_malformed_urls_are_refused(url):
    assert reason_of(url) == "InvalidURL"


def test_unknown_ca_fails_tls(okta):
    assert reason_of(okta.well_known_url) == "TLSError"


def test_certificate_is_verified_against_the_host_name_not_the_pinned_ip():
    with HttpsIdP(hostnames=("localhost",)) as only_name:
        assert fetch_json(only_name.jwks_uri, LOCAL, ca_bundle=only_name.ca_pem)["keys"]
        ip_url = only_name.jwks_uri.replace("localhost", "127.0.0.1")
        assert reason_of(ip_url, ca_bundle=only_name.ca_pem) == "TLSError"


def test_connection_is_pinned_to_the_checked_address(monkeypatch):
    """A rebinding resolver answers loopback (allowed) first and a blocked address afterwards: only one lookup."""
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.test":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with HttpsIdP(hostnames=("rebind.test",)) as idp:
        assert fetch_json(idp.jwks_uri, LOCAL, ca_bundle=idp.ca_pem)["keys"]
        assert lookups == ["rebind.test"]
        assert idp.requests[-1][1]["Host"] == f"rebind.test:{idp.port}"


def test_a_name_resolving_to_a_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, *a, **k: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ],
    )
    with pytest.raises(FetchError) as info:
        fetch_json("https://internal.example/.well-known/openid-configuration", FetchPolicy())
    assert info.value.reason == "BlockedAddress" and "10.0.0.7" in info.value.message


def test_unresolvable_host_is_unreachable():
    assert reason_of("https://does-not-exist.invalid/x") == "Unreachable"


def test_redirects_are_not_followed(okta):
    okta.routes["/moved"] = (302, b"", {"Location": "https://169.254.169.254/latest/"})
    assert reason_of(f"{okta.base_url}/moved", ca_bundle=okta.ca_pem) == "Redirected"
    assert [p for p, _ in okta.requests] == ["/moved"]


def test_http_errors_and_dropped_connections(okta):
    okta.fail(503)
    assert reason_of(okta.well_known_url, ca_bundle=okta.ca_pem) == "HTTPError"
    okta.fail(None)
    assert reason_of(okta.well_known_url, ca_bundle=okta.ca_pem) == "Unreachable"
    okta.recover()
    assert fetch_json(okta.well_known_url, LOCAL, ca_bundle=okta.ca_pem)


def test_slow_server_times_out(okta):
    okta.delay = 1.0
    policy = FetchPolicy(allowed_networks=LOCAL.allowed_networks, timeout=0.3)
    assert reason_of(okta.well_known_url, policy, ca_bundle=okta.ca_pem) == "Unreachable"


def test_body_is_capped_with_and_without_content_length(okta):
    policy = FetchPolicy(allowed_networks=LOCAL.allowed_networks, max_bytes=1000)
    big = b'{"pad": "' + b"x" * 5000 + b'"}'
    okta.routes["/big"] = (200, big, {})
    okta.routes["/big-unannounced"] = (200, big, {"Content-Length": "", "Connection": "close"})
    assert reason_of(f"{okta.base_url}/big", policy, ca_bundle=okta.ca_pem) == "TooLarge"
    assert reason_of(f"{okta.base_url}/big-unannounced", policy, ca_bundle=okta.ca_pem) == "TooLarge"
    small = FetchPolicy(allowed_networks=LOCAL.allowed_networks, max_bytes=len(big))
    assert fetch_json(f"{okta.base_url}/big-unannounced", small, ca_bundle=okta.ca_pem)["pad"]


def test_invalid_json(okta):
    okta.routes["/html"] = (200, b"<html>login</html>", {"Content-Type": "text/html"})
    assert reason_of(f"{okta.base_url}/html", ca_bundle=okta.ca_pem) == "InvalidJSON"


def test_bearer_token_is_sent_only_when_given(okta):
    fetch_json(okta.jwks_uri, LOCAL, ca_bundle=okta.ca_pem, bearer_token="s3cr3t")
    assert okta.requests[-1][1]["Authorization"] == "Bearer s3cr3t"


def test_errors_never_echo_the_bearer_token(okta):
    okta.fail(401)
    with pytest.raises(FetchError) as info:
        fetch_json(okta.jwks_uri, LOCAL, ca_bundle=okta.ca_pem, bearer_token="s3cr3t")
    assert "s3cr3t" not in str(info.value)


def test_timeout_is_capped():
    assert fetch.MAX_TIMEOUT <= 5


def test_user_information_is_never_echoed():
    with pytest.raises(FetchError) as info:
        fetch_json("https://admin:hunter2@okta.example:99999/x", LOCAL)
    assert info.value.reason == "InvalidURL" and "hunter2" not in str(info.value)


def test_unusable_ca_bundle_is_a_configuration_error(okta):
    assert reason_of(okta.well_known_url, ca_bundle="-----BEGIN CERTIFICATE-----\nnope\n") == "InvalidTLSConfiguration"
    assert okta.requests == []
