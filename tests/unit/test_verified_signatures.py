"""A subject token presented again skips its signature's public-key operation, and nothing else."""

from __future__ import annotations

import pytest

from tests.support.exchange import (
    Clock,
    FixedSource,
    app_object,
    expect_error,
    idp_object,
    make_client,
    post_form,
    snapshot_of,
)
from tests.support.idp import NOW, IdP
from tokenbridge import api
from tokenbridge.jwks import VerificationKey
from tokenbridge_exchange import assertions
from tokenbridge_exchange import config as server_config

CLIENT, SECRET = "tb-client", "s3cret-s3cret"


class CountingVerify:
    """The RS256 verifier, counting the public-key operations."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def verify(self, signing_input, key, signature):
        self.calls += 1
        return self.real.verify(signing_input, key, signature)


@pytest.fixture
def rs256(monkeypatch):
    counting = CountingVerify(assertions._ALGORITHMS["RS256"])
    monkeypatch.setitem(assertions._ALGORITHMS, "RS256", counting)
    return counting


@pytest.fixture
def world():
    clock = Clock()
    idp = IdP()
    source = FixedSource()

    def configure(idp_for_snapshot=idp):
        source.snapshot = snapshot_of(
            [idp_object("corp", idp_for_snapshot.issuer, jwks=idp_for_snapshot.jwks())],
            apps=[app_object("web", CLIENT, SECRET)],
            clock=clock,
        )

    configure()
    return clock, idp, source, configure


def exchange(client, token):
    return post_form(
        client,
        "/oauth2/token",
        {"grant_type": api.GRANT_TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": api.TOKEN_TYPE_JWT},
        (CLIENT, SECRET),
    )


def test_a_token_presented_again_is_not_verified_again(world, rs256):
    clock, idp, source, _ = world
    client = make_client(source, clock)
    token = idp.token()
    assert [exchange(client, token).status_code for _ in range(3)] == [200, 200, 200]
    assert rs256.calls == 1
    assert exchange(client, idp.token(sub="bob")).status_code == 200  # another token: verified
    assert rs256.calls == 2


def test_every_other_check_still_runs_on_a_remembered_token(world, rs256):
    clock, idp, source, _ = world
    client = make_client(source, clock)
    token = idp.token(exp=int(NOW) + 120)
    assert exchange(client, token).status_code == 200
    clock.now = NOW + 3600  # past exp (and the clock skew)
    expect_error(exchange(client, token), 400, "invalid_grant", "expired")
    assert rs256.calls == 1


def test_new_keys_verify_again_and_removed_keys_no_longer_count(world, rs256):
    clock, idp, source, configure = world
    client = make_client(source, clock)
    token = idp.token()
    assert exchange(client, token).status_code == 200
    configure()  # the same key material, parsed again (a new snapshot or a JWKS refresh): new key objects
    assert exchange(client, token).status_code == 200
    assert rs256.calls == 2
    stranger = IdP(issuer=idp.issuer)  # the IdP rotated: the token's key is gone, its kid unknown
    configure(stranger)
    expect_error(exchange(client, token), 400, "invalid_grant", "no RS256 key")


def test_failed_signatures_are_never_remembered(world, rs256):
    clock, idp, source, _ = world
    client = make_client(source, clock)
    other = IdP()
    forged = idp.token(key=other.keys[other.kid])  # the IdP's kid, another key's signature
    for _ in range(3):
        expect_error(exchange(client, forged), 400, "invalid_grant", "signature does not verify")
    assert rs256.calls == 3
    header, payload, signature = idp.token().split(".")
    other_payload = idp.token(sub="mallory").split(".")[1]
    assert exchange(client, f"{header}.{payload}.{signature}").status_code == 200
    # a remembered signature with another payload is not a hit: verified, and refused
    expect_error(
        exchange(client, f"{header}.{other_payload}.{signature}"), 400, "invalid_grant", "signature does not verify"
    )
    assert rs256.calls == 5


def test_the_memory_is_bounded_and_can_be_off(world):
    _, idp, _, _ = world

    key = VerificationKey("k", frozenset({"RS256"}), object())
    tokens = [assertions.parse(idp.token(sub=f"user-{i}"), 16384, "token") for i in range(5)]
    bounded = assertions.VerifiedSignatures(max_entries=3)
    for token in tokens:
        bounded.add(token, "RS256", key)
        assert len(bounded) <= 3
    assert bounded.verified_by(tokens[-1], "RS256", [key]) is key
    assert bounded.verified_by(tokens[-1], "ES256", [key]) is None  # another alg is another check
    assert bounded.verified_by(tokens[-1], "RS256", [VerificationKey("k", frozenset({"RS256"}), key.key)]) is None
    off = assertions.VerifiedSignatures(max_entries=0)
    off.add(tokens[0], "RS256", key)
    assert len(off) == 0 and off.verified_by(tokens[0], "RS256", [key]) is None


def test_the_size_comes_from_the_environment(tmp_path):
    load = server_config.load
    assert load(["--manifests", str(tmp_path)], env={}).verified_signatures == 4096
    assert load(["--manifests", str(tmp_path)], env={"TOKENBRIDGE_VERIFIED_SIGNATURES": "0"}).verified_signatures == 0
    with pytest.raises(SystemExit) as exit_:
        load(["--manifests", str(tmp_path)], env={"TOKENBRIDGE_VERIFIED_SIGNATURES": "-1"})
    assert exit_.value.code == 2
