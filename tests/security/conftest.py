"""The configuration every attack runs against (keys generated once per session; the server holds no state that
a request could change, so one client serves every test).

team-a: IdPs corp (RS256), ec-corp (ES256), ed-corp (EdDSA), strict (ES256, maxTokenAge 5m, clockSkew 10s),
partner (RS256, another issuer); the cluster IdP entra (Entra multi-tenant ``{tenantid}`` template); application
web (client_secret_basic, every grant) allowed to use all of them, plus references that must NOT resolve to
team-b's IdPs; application post (client_secret_post, client_credentials only).
team-b: its own IdP also named corp (another issuer and key), an IdP b-only, and application b-app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.attacks import B_CLIENT, B_SECRET, CLIENT, POST_CLIENT, POST_SECRET, SECRET, client_for
from tests.support.exchange import Clock, FixedSource, app_object, idp_object, snapshot_of
from tests.support.idp import IdP
from tokenbridge import api

ENTRA_TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"


@dataclass
class World:
    corp: IdP
    ec: IdP
    ed: IdP
    strict: IdP
    partner: IdP
    entra: IdP
    team_b: IdP
    b_only: IdP
    attacker_rsa: IdP
    attacker_ec: IdP

    def idp_objects(self) -> list[dict[str, Any]]:
        return [
            idp_object("corp", self.corp.issuer, jwks=self.corp.jwks()),
            idp_object("ec-corp", self.ec.issuer, jwks=self.ec.jwks()),
            idp_object("ed-corp", self.ed.issuer, jwks=self.ed.jwks(), allowedAlgorithms=["EdDSA"]),
            idp_object(
                "strict",
                self.strict.issuer,
                jwks=self.strict.jwks(),
                allowedAlgorithms=["ES256"],
                maxTokenAge="5m",
                clockSkew="10s",
            ),
            idp_object("partner", self.partner.issuer, jwks=self.partner.jwks()),
            idp_object("corp", self.team_b.issuer, namespace="team-b", jwks=self.team_b.jwks()),
            idp_object("b-only", self.b_only.issuer, namespace="team-b", jwks=self.b_only.jwks()),
        ]

    def cluster_idp_objects(self) -> list[dict[str, Any]]:
        return [idp_object("entra", ENTRA_TEMPLATE, kind=api.KIND_CLUSTER_IDP, jwks=self.entra.jwks())]

    def app_objects(self) -> list[dict[str, Any]]:
        web_providers = [
            {"name": "corp"},
            {"name": "ec-corp"},
            {"name": "ed-corp"},
            {"name": "strict"},
            {"name": "partner"},
            {"kind": api.KIND_CLUSTER_IDP, "name": "entra"},
            # None of these may resolve to team-b's IdPs (or to a namespaced IdP as a cluster one).
            {"name": "b-only"},
            {"name": "b-only", "namespace": "team-b"},
            {"kind": api.KIND_CLUSTER_IDP, "name": "corp"},
            {"name": "team-b/b-only"},
        ]
        return [
            app_object("web", CLIENT, SECRET, providers=web_providers, accessTokenLifetime="10m"),
            app_object(
                "post",
                POST_CLIENT,
                POST_SECRET,
                tokenEndpointAuthMethod=api.AUTH_METHOD_POST,
                grantTypes=[api.GRANT_CLIENT_CREDENTIALS],
                providers=[{"name": "corp"}],
            ),
            app_object("b-app", B_CLIENT, B_SECRET, namespace="team-b", providers=[{"name": "corp"}]),
        ]

    def source(self, clock: Any = None, apps: list[dict[str, Any]] | None = None) -> FixedSource:
        return FixedSource(
            snapshot_of(
                self.idp_objects(),
                self.cluster_idp_objects(),
                self.app_objects() if apps is None else apps,
                clock=clock or Clock(),
            )
        )


@pytest.fixture(scope="session")
def world() -> World:
    return World(
        corp=IdP("https://idp.example.test", "RS256"),
        ec=IdP("https://ec.example.test", "ES256"),
        ed=IdP("https://ed.example.test", "EdDSA"),
        strict=IdP("https://strict.example.test", "ES256"),
        partner=IdP("https://partner.example.test", "RS256"),
        entra=IdP(ENTRA_TEMPLATE, "RS256"),
        team_b=IdP("https://idp-b.example.test", "RS256"),
        b_only=IdP("https://b-only.example.test", "RS256"),
        attacker_rsa=IdP("https://idp.example.test", "RS256"),  # claims corp's issuer
        attacker_ec=IdP("https://ec.example.test", "ES256"),  # claims ec-corp's issuer
    )


@pytest.fixture(scope="session")
def source(world) -> FixedSource:
    source = world.source()
    snapshot = source.current()
    assert not snapshot.skipped, snapshot.skipped  # every resource above is usable
    assert set(snapshot.applications) == {CLIENT, POST_CLIENT, B_CLIENT}
    return source


@pytest.fixture(scope="session")
def client(source):
    return client_for(source)
