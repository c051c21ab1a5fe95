"""Standalone mode: the manifests source on disk, reloads, discovery against a local HTTPS IdP, key rotation."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from urllib.parse import urlencode

import jwt
import pytest
import yaml

from tests.support.exchange import FORM, basic, make_client
from tests.support.idp import HttpsIdP, IdP
from tokenbridge import api
from tokenbridge.discovery import discover, fetch_keys
from tokenbridge.fetch import FetchPolicy
from tokenbridge.signing import generate_keyset
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.sources.manifests import ManifestSource

LOOPBACK = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))


def never_discover(spec):
    raise AssertionError("no discovery expected")


def manifests(idp_spec: dict, *, scopes=("read", "write"), secret="first-secret", extra=()) -> list[dict]:
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_IDP,
            "metadata": {"name": "corp", "namespace": "apps"},
            "spec": {"type": "OIDC", "allowedAudiences": ["api://tokenbridge"], **idp_spec},
        },
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND_APP,
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {
                "grantTypes": [api.GRANT_TOKEN_EXCHANGE, api.GRANT_CLIENT_CREDENTIALS],
                "identityProviders": [{"name": "corp"}],
                "audiences": ["https://api.example.test"],
                "scopes": list(scopes),
                "credentials": {"secretName": "web-credentials"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "web-credentials", "namespace": "apps"},
            "stringData": {"client_id": "web-client", "client_secret": secret},
        },
        *extra,
    ]


def write(path: Path, docs: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(path)


def exchange(client, token, secret="first-secret", **params):
    form = {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **params,
    }
    return client.simulate_post("/oauth2/token", body=urlencode(form), headers={**FORM, **basic("web-client", secret)})


def fresh(idp: IdP, **claims):
    now = int(time.time())
    return idp.token(iat=now, exp=now + 600, **claims)


def test_exchange_from_manifests_then_edit_and_see_the_change(tmp_path, idp):
    path = tmp_path / "tokenbridge.yaml"
    write(path, manifests({"issuer": idp.issuer, "jwks": idp.jwks()}))
    source = ManifestSource(
        path,
        JwksCache(never_discover),
        never_discover,
        signing_keys=generate_keyset("ES256", time.time()),
        poll_interval=0.05,
    )
    client = make_client(source, clock=time.time)
    assert client.simulate_get("/readyz").status_code == 503
    source.start()
    try:
        assert client.simulate_get("/readyz").json["applications"] == 1
        result = exchange(client, fresh(idp), scope="write")
        assert result.status_code == 200, result.text
        claims = jwt.decode(result.json["access_token"], options={"verify_signature": False})
        assert claims["idp"] == "apps/corp" and claims["client_id"] == "web-client"

        write(path, manifests({"issuer": idp.issuer, "jwks": idp.jwks()}, scopes=["read"], secret="second"))
        deadline = time.monotonic() + 2
        while exchange(client, fresh(idp), secret="second").status_code != 200:
            assert time.monotonic() < deadline, "the edited manifests were not served within 2 s"
            time.sleep(0.05)
        assert exchange(client, fresh(idp), secret="first-secret").status_code == 401
        assert exchange(client, fresh(idp), secret="second", scope="write").json["error"] == "invalid_scope"
    finally:
        source.stop()


def test_invalid_yaml_keeps_the_last_good_snapshot(tmp_path, idp):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all(manifests({"issuer": idp.issuer, "jwks": idp.jwks()})))
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    assert source.reload_if_changed()
    good = source.current()
    (tmp_path / "b.yml").write_text("kind: [unclosed\n")
    assert not source.reload_if_changed()
    assert source.current() is good
    assert exchange(make_client(source, clock=time.time), fresh(idp)).status_code == 200


# --- how manifest files read ------------------------------------------------------------------------------------


def documents_of(tmp_path: Path, name: str, data: bytes) -> list[dict]:
    (tmp_path / name).write_bytes(data)
    return list(ManifestSource(tmp_path, JwksCache(never_discover), never_discover)._documents())


def test_yaml_reads_as_kubectl_reads_it(tmp_path):
    """YAML 1.1, as kubectl's decoder reads it: booleans such as yes/Off, octal, sexagesimal, timestamps, explicit
    tags, anchors and merge keys."""
    text = (
        "kind: ConfigMap\nmetadata: {name: x}\ndata:\n  a: yes\n  b: Off\n  c: 0777\n  d: 0x1F\n  e: 1:30\n"
        "  f: .inf\n  g: ~\n  h: 2001-12-14t21:59:43.10-05:00\n  i: 2002-12-14\n  j: '1'\n  k: !!str 12\n"
        "  l: !!binary aGVsbG8=\n  m: 1_000\nbase: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nagain: *b\n"
    )
    [doc] = documents_of(tmp_path, "m.yaml", text.encode())
    data = doc["data"]
    assert (data["a"], data["b"], data["c"], data["d"], data["e"], data["f"], data["g"]) == (
        True,
        False,
        0o777,
        31,
        90,
        float("inf"),
        None,
    )
    assert data["h"].isoformat() == "2001-12-14T21:59:43.100000-05:00" and data["i"].isoformat() == "2002-12-14"
    assert (data["j"], data["k"], data["l"], data["m"]) == ("1", "12", b"hello", 1000)
    assert doc["derived"] == {"x": 1, "y": 3} and doc["again"] == {"x": 1, "y": 2}
    assert doc["metadata"] == {"name": "x", "namespace": "default"}


def test_a_yaml_file_holds_any_number_of_documents(tmp_path):
    text = "---\nkind: A\n---\n---\nkind: B\n...\n--- {kind: C}\n# the end\n"
    assert [d["kind"] for d in documents_of(tmp_path, "m.yaml", text.encode())] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="a manifest is not a mapping"):
        documents_of(tmp_path, "m.yaml", b"kind: A\n--- plain text\n")


def test_utf16_yaml_reads_as_utf8_does(tmp_path):
    text = "kind: ConfigMap\nmetadata: {name: é}\n"  # encode("utf-16") writes the byte-order mark
    assert documents_of(tmp_path, "m.yaml", text.encode("utf-16")) == documents_of(tmp_path, "m.yaml", text.encode())


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("bad.yaml", "kind: A\n---\nkind: [unclosed\nname: b\n", 'bad.yaml", line 3'),
        ("bad.yml", "kind: A\n\tname: tab\n", 'bad.yml", line 2'),
        ("bad.json", '{"kind": "A",\n "name": }', "bad.json: Expecting value: line 2"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_line(tmp_path, name, text, where):
    (tmp_path / name).write_text(text)
    with pytest.raises(Exception) as refused:
        ManifestSource(tmp_path, JwksCache(never_discover), never_discover).load()
    assert where in str(refused.value) and str(tmp_path) in str(refused.value)


def test_signing_key_secret_in_the_manifests_signs(tmp_path, idp):
    keyset = generate_keyset("ES256", time.time() - 10)
    signing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "signing", "namespace": "tokenbridge"},
        "data": keyset.to_secret_data(),
    }
    write(tmp_path / "all.yaml", manifests({"issuer": idp.issuer, "jwks": idp.jwks()}, extra=[signing]))
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    source.reload_if_changed()
    client = make_client(source, clock=time.time)
    token = exchange(client, fresh(idp)).json["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == keyset.keys[0].kid
    assert [k["kid"] for k in client.simulate_get("/.well-known/jwks.json").json["keys"]] == [keyset.keys[0].kid]


def test_application_without_its_credentials_secret_is_not_served(tmp_path, idp):
    docs = [d for d in manifests({"issuer": idp.issuer, "jwks": idp.jwks()}) if d["kind"] != "Secret"]
    write(tmp_path / "m.yaml", docs)
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    source.reload_if_changed()
    assert not source.current().applications
    assert any("client credentials" in s for s in source.current().skipped)


def test_discovery_by_the_server_and_an_idp_key_rotation(tmp_path):
    with HttpsIdP(kind="okta") as local:
        policy = LOOPBACK
        cache = JwksCache(lambda uri, spec: fetch_keys(uri, spec, policy)[1])
        write(tmp_path / "m.yaml", manifests({"wellKnownURL": local.well_known_url, "tls": {"caBundle": local.ca_pem}}))
        source = ManifestSource(
            tmp_path, cache, lambda spec: discover(spec, policy), signing_keys=generate_keyset("ES256", time.time())
        )
        source.reload_if_changed()
        provider = source.current().providers[(api.KIND_IDP, "apps", "corp")]
        assert provider.issuer == local.issuer
        client = make_client(source, clock=time.time)
        fetched_before = len(local.requests)
        result = exchange(client, local.mint({"sub": "bob", "aud": "api://tokenbridge"}))
        assert result.status_code == 200, result.text
        assert len(local.requests) == fetched_before, "discovery's keys must serve the first request"

        local.rotate()  # unknown kid: one bounded refresh on the request path
        result = exchange(client, local.mint({"sub": "bob", "aud": "api://tokenbridge"}))
        assert result.status_code == 200, result.text
        assert provider.keys.fetches == 1

        local.rotate()  # within the cooldown: no second fetch, the token is refused
        result = exchange(client, local.mint({"sub": "bob", "aud": "api://tokenbridge"}))
        assert result.json["error"] == "invalid_grant" and "no RS256 key with kid" in result.json["error_description"]
        assert provider.keys.fetches == 1


@pytest.mark.parametrize(
    "kind, idp_type",
    [
        ("oidc", "OIDC"),
        ("okta", "Okta"),
        ("auth0", "Auth0"),
        ("entra", "MicrosoftEntraID"),
        ("entra-v1", "MicrosoftEntraID"),
    ],
)
def test_idp_shapes_discovered_and_exchanged(tmp_path, kind, idp_type):
    """Auth0's trailing slash, Entra's {tenantid} issuer template (v2 and v1) and Okta's custom server path."""
    with HttpsIdP(kind=kind) as local:
        cache = JwksCache(lambda uri, spec: fetch_keys(uri, spec, LOOPBACK)[1])
        write(
            tmp_path / "m.yaml",
            manifests({"type": idp_type, "wellKnownURL": local.well_known_url, "tls": {"caBundle": local.ca_pem}}),
        )
        source = ManifestSource(
            tmp_path, cache, lambda spec: discover(spec, LOOPBACK), signing_keys=generate_keyset("ES256", time.time())
        )
        source.reload_if_changed()
        assert source.current().providers, source.current().skipped
        client = make_client(source, clock=time.time)
        result = exchange(client, local.mint({"sub": "carol", "aud": "api://tokenbridge"}))
        assert result.status_code == 200, result.text
        if kind.startswith("entra"):  # the template matches only the tenant the token itself names
            forged = local.mint({"sub": "carol", "aud": "api://tokenbridge", "tid": "other-tenant"})
            assert exchange(client, forged).json["error"] == "invalid_grant"


def test_configmap_volume_layout_is_read_once_and_swaps_are_seen(tmp_path, idp):
    """kubelet's ConfigMap volume: files are symlinks into ..data, which is swapped atomically to a new directory."""

    def publish(version: str, docs: list[dict]) -> None:
        target = tmp_path / f"..{version}"
        target.mkdir()
        (target / "tokenbridge.yaml").write_text(yaml.safe_dump_all(docs))
        (tmp_path / "..data_tmp").symlink_to(target.name)
        (tmp_path / "..data_tmp").replace(tmp_path / "..data")

    publish("v1", manifests({"issuer": idp.issuer, "jwks": idp.jwks()}))
    (tmp_path / "tokenbridge.yaml").symlink_to("..data/tokenbridge.yaml")
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    assert source.reload_if_changed()
    assert source.current().skipped == () and len(source.current().applications) == 1
    client = make_client(source, clock=time.time)
    assert exchange(client, fresh(idp)).status_code == 200
    publish("v2", manifests({"issuer": idp.issuer, "jwks": idp.jwks()}, secret="rotated"))
    assert source.reload_if_changed()
    assert exchange(client, fresh(idp), secret="rotated").status_code == 200
