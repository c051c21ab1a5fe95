"""OAuthApplication credentials and references, decided without a cluster (Secrets as plain dicts)."""

import base64
from datetime import UTC, datetime, timedelta

import pytest

from tokenbridge.client_secrets import hash_client_secret
from tokenbridge_operator.handlers.application import (
    ANNOTATION_ROTATED_FOR,
    ReadinessBoard,
    check_references,
    client_id_conflict,
    list_client_id_holders,
    plan_credentials,
    reconcile,
    reference_keys,
)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
UID = "0b7e-uid"
ENDPOINT = "https://tokens.example/oauth2/token"
READY_IDP = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}}
DOWN_IDP = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "DiscoveryUnavailable"}]}}


def app(annotations=None, status=None, idps=()):
    return {
        "metadata": {"name": "web", "namespace": "team", "uid": UID, "generation": 3, "annotations": annotations or {}},
        "spec": {"credentials": {"secretName": "web-creds"}, "identityProviders": list(idps)},
        "status": status or {},
    }


def decode(secret):
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


class FakeSecrets:
    """An in-memory Secret store (the reconciler's read/write callables), not a Kubernetes API mock."""

    def __init__(self):
        self.items = {}
        self.writes = 0

    def read(self, namespace, name):
        return self.items.get((namespace, name))

    def write(self, body, create):
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        assert (key in self.items) != create
        self.items[key] = body
        self.writes += 1


def run(application, secrets, lookup=lambda key: READY_IDP, now=T0, cluster=True, holders=None):
    return reconcile(
        application,
        read_secret=secrets.read,
        write_secret=secrets.write,
        lookup_idp=lookup,
        cluster_identity_providers=cluster,
        token_endpoint=ENDPOINT,
        grace=3600,
        now=now,
        client_id_holders=holders,
    )


def nobody_else(client_id):
    return []


def test_first_run_creates_an_owned_secret_and_publishes_only_the_hash():
    secrets = FakeSecrets()
    outcome = run(app(), secrets)
    secret = secrets.items[("team", "web-creds")]
    values = decode(secret)
    assert values["client_id"].startswith("tb-") and values["token_endpoint"] == ENDPOINT
    assert len(base64.urlsafe_b64decode(values["client_secret"] + "=")) == 32  # 256 bits
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "tokenbridge.dev/v1alpha1",
            "kind": "OAuthApplication",
            "name": "web",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    status = outcome.status
    assert status["clientID"] == values["client_id"] and status["credentialsSecret"] == "web-creds"
    assert status["clientSecretHash"] == hash_client_secret(values["client_secret"])
    assert values["client_secret"] not in repr(outcome)
    assert outcome.ready and [e[1] for e in outcome.events] == ["CredentialsCreated", "Ready"]
    assert status["observedGeneration"] == 3


def test_rerun_changes_nothing():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    again = run(app(status=first.status), secrets, now=T0 + timedelta(hours=1))
    assert secrets.writes == 1 and again.events == []
    assert {k: again.status[k] for k in ("clientID", "clientSecretHash")} == {
        k: first.status[k] for k in ("clientID", "clientSecretHash")
    }


def test_lost_status_is_rebuilt_from_the_owned_secret():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    asked = []
    rebuilt = run(app(), secrets, holders=lambda client_id: asked.append(client_id) or [app(status=first.status)])
    assert asked == [first.status["clientID"]]  # the only holder is the application itself
    assert secrets.writes == 1
    assert rebuilt.status["clientID"] == first.status["clientID"]
    assert rebuilt.status["clientSecretHash"] == first.status["clientSecretHash"]


def test_deleted_secret_is_recreated_with_the_same_client_id():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    secrets.items.clear()
    again = run(app(status=first.status), secrets)
    assert decode(secrets.items[("team", "web-creds")])["client_id"] == first.status["clientID"]
    assert again.status["clientSecretHash"] != first.status["clientSecretHash"]
    assert ("Warning", "CredentialsRecreated") in [e[:2] for e in again.events]


def test_rotation_once_per_annotation_value_with_grace():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    old = decode(secrets.items[("team", "web-creds")])["client_secret"]
    rotated = run(app({"tokenbridge.dev/rotate-secret": "2026-11-26"}, first.status), secrets)
    secret = secrets.items[("team", "web-creds")]
    new = decode(secret)["client_secret"]
    assert new != old and secret["metadata"]["annotations"][ANNOTATION_ROTATED_FOR] == "2026-11-26"
    assert rotated.status["previousClientSecretHash"] == hash_client_secret(old)
    assert rotated.status["previousClientSecretExpiresAt"] == "2026-11-26T13:00:00Z"
    assert rotated.status["clientSecretHash"] == hash_client_secret(new)
    assert rotated.next_check == T0 + timedelta(hours=1)
    assert "CredentialsRotated" in [e[1] for e in rotated.events]
    # the same value again: no second rotation; within the grace window the previous hash stays
    same = run(
        app({"tokenbridge.dev/rotate-secret": "2026-11-26"}, rotated.status), secrets, now=T0 + timedelta(minutes=30)
    )
    assert decode(secrets.items[("team", "web-creds")])["client_secret"] == new
    assert same.status["previousClientSecretHash"] == hash_client_secret(old)
    # after the window it is dropped (None deletes the field in the merge patch)
    later = run(app({"tokenbridge.dev/rotate-secret": "2026-11-26"}, same.status), secrets, now=T0 + timedelta(hours=1))
    assert later.status["previousClientSecretHash"] is None and later.status["previousClientSecretExpiresAt"] is None
    assert "RotationGraceEnded" in [e[1] for e in later.events] and later.next_check is None


def test_rotate_annotation_present_at_creation_does_not_rotate_later():
    secrets = FakeSecrets()
    first = run(app({"tokenbridge.dev/rotate-secret": "x"}), secrets)
    again = run(app({"tokenbridge.dev/rotate-secret": "x"}, first.status), secrets)
    assert secrets.writes == 1 and again.status["previousClientSecretHash"] is None


def test_foreign_secret_is_left_alone():
    secrets = FakeSecrets()
    secrets.items[("team", "web-creds")] = {
        "metadata": {"name": "web-creds", "namespace": "team"},
        "data": {"client_secret": base64.b64encode(b"mine").decode()},
    }
    outcome = run(app(), secrets)
    assert secrets.writes == 0 and "clientID" not in outcome.status and not outcome.ready
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "SecretConflict"


def test_token_endpoint_change_updates_the_secret_not_the_credentials():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    outcome = reconcile(
        app(status=first.status),
        read_secret=secrets.read,
        write_secret=secrets.write,
        lookup_idp=lambda key: None,
        cluster_identity_providers=True,
        token_endpoint="https://new.example/oauth2/token",
        grace=60,
        now=T0,
        client_id_holders=None,
    )
    values = decode(secrets.items[("team", "web-creds")])
    assert values["token_endpoint"] == "https://new.example/oauth2/token"
    assert outcome.status["clientSecretHash"] == first.status["clientSecretHash"]


def test_references():
    found = {("IdentityProvider", "team", "okta"): READY_IDP, ("ClusterIdentityProvider", "", "entra"): DOWN_IDP}
    refs = [
        {"kind": "IdentityProvider", "name": "okta"},
        {"name": "missing"},
        {"kind": "ClusterIdentityProvider", "name": "entra"},
        {"kind": "IdentityProvider", "name": "okta", "namespace": "elsewhere"},
    ]
    status, reason, message = check_references("team", refs, found.get)
    assert (status, reason) == ("False", "IdentityProviderNotFound")
    assert "IdentityProvider team/missing not found" in message
    assert "ClusterIdentityProvider entra is not Ready: DiscoveryUnavailable" in message
    assert "IdentityProvider elsewhere/okta is in another namespace" in message
    assert check_references("team", refs[:1], found.get)[:2] == ("True", "ReferencesResolved")
    assert check_references("team", [], found.get)[:2] == ("True", "NoIdentityProviders")
    assert check_references("team", refs[2:3], found.get, cluster_identity_providers=False)[1] == (
        "ClusterIdentityProvidersUnavailable"
    )


def test_unready_reference_makes_the_application_not_ready_but_keeps_credentials():
    secrets = FakeSecrets()
    outcome = run(
        app(idps=[{"kind": "ClusterIdentityProvider", "name": "entra"}]), secrets, lookup=lambda key: DOWN_IDP
    )
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["CredentialsReady"]["status"] == "True"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "IdentityProviderNotReady")
    assert secrets.writes == 1


def test_readiness_board():
    board = ReadinessBoard()
    keys = reference_keys("team", [{"name": "okta"}, {"kind": "ClusterIdentityProvider", "name": "entra"}])
    assert keys == [("IdentityProvider", "team", "okta"), ("ClusterIdentityProvider", "", "entra")]
    entra = ("ClusterIdentityProvider", "", "entra")
    board.observe(entra, False, at=10.0)
    assert board.changed_since(keys, 5.0) and not board.changed_since(keys, 10.0)
    assert not board.changed_since([("IdentityProvider", "other", "okta")], 0.0)
    board.observe(entra, False, at=20.0)  # a status patch that kept readiness (e.g. a key count) is no change
    assert not board.changed_since(keys, 10.0)
    board.observe(entra, True, at=30.0)
    assert board.changed_since(keys, 20.0) and not board.changed_since(keys, 30.0)
    board.observe(entra, None, at=40.0)  # deleted
    assert board.changed_since(keys, 30.0)
    board.observe(entra, False, at=50.0)  # re-created: a change again, even in the state it had before deletion
    assert board.changed_since(keys, 40.0)


@pytest.mark.parametrize("expires", ["", "not-a-time"])
def test_unreadable_grace_expiry_ends_the_grace(expires):
    plan = plan_credentials(
        app(),
        {"previousClientSecretHash": "sha256:" + "0" * 64, "previousClientSecretExpiresAt": expires},
        None,
        token_endpoint=None,
        grace=60,
        now=T0,
    )
    assert plan.status["previousClientSecretHash"] is None


# --- CEL condition -----------------------------------------------------------------------------------------------


def with_condition(condition, **kwargs):
    application = app(**kwargs)
    application["spec"]["condition"] = condition
    return application


@pytest.mark.parametrize(
    "condition, problem",
    [
        ("request.client_id", "must evaluate to a bool"),
        ("request.audience.exists(a, a ==", "is not valid CEL: syntax error"),
    ],
)
def test_invalid_condition_is_reported_before_anything_else(condition, problem):
    secrets = FakeSecrets()
    looked_up = []
    outcome = run(with_condition(condition), secrets, lookup=lambda key: looked_up.append(key))
    assert secrets.items == {} and secrets.writes == 0 and looked_up == []  # no Secret, no references
    assert not outcome.ready and outcome.invalid_expression.startswith("spec.condition: ")
    assert problem in outcome.invalid_expression
    assert outcome.status["observedGeneration"] == 3 and "clientID" not in outcome.status
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("False", "InvalidExpression", 3)
    assert ready["message"] == outcome.invalid_expression
    assert outcome.events == [("Warning", "InvalidExpression", ready["message"])]


def test_invalid_condition_keeps_the_credentials_and_a_fix_makes_the_application_ready():
    secrets = FakeSecrets()
    first = run(app(), secrets)
    bad = run(with_condition("'yes'", status=first.status), secrets)
    assert secrets.writes == 1 and set(bad.status) == {"observedGeneration", "conditions"}  # merge patch
    assert [e[:2] for e in bad.events] == [("Warning", "InvalidExpression")]
    again = run(with_condition("'yes'", status={**first.status, **bad.status}), secrets)
    assert again.events == []
    fixed = run(with_condition("request.namespace == 'team'", status={**first.status, **bad.status}), secrets)
    assert fixed.ready and fixed.invalid_expression is None and secrets.writes == 1
    assert fixed.status["clientSecretHash"] == first.status["clientSecretHash"]
    assert [e[:2] for e in fixed.events] == [("Normal", "Ready")]


def test_a_valid_condition_changes_nothing():
    plain, conditioned = FakeSecrets(), FakeSecrets()
    without = run(app(), plain)
    with_ = run(with_condition("request.namespace == 'team' && 'admins' in assertion.groups"), conditioned)
    assert with_.ready and with_.invalid_expression is None
    assert [e[:2] for e in with_.events] == [e[:2] for e in without.events]
    assert set(with_.status) == set(without.status)


# --- a client id in the Secret that another application already has ---------------------------------------------


def other_app(client_id, namespace="victims", name="web", uid="victim-uid"):
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid}, "status": {"clientID": client_id}}


def squatting_secret(secrets, client_id, secret="known-to-the-squatter"):
    """What a user who may create Secrets can pre-create: the victim's (public) client id, an ownerReference to
    their own application (its uid is public too), before the operator ever reconciles that application."""
    secrets.items[("team", "web-creds")] = {
        "metadata": {
            "name": "web-creds",
            "namespace": "team",
            "ownerReferences": [
                {
                    "apiVersion": "tokenbridge.dev/v1alpha1",
                    "kind": "OAuthApplication",
                    "name": "web",
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {
            "client_id": base64.b64encode(client_id.encode()).decode(),
            "client_secret": base64.b64encode(secret.encode()).decode(),
        },
    }


def test_a_client_id_another_application_has_is_not_taken_over():
    secrets = FakeSecrets()
    squatting_secret(secrets, "tb-victim")
    outcome = run(app(), secrets, holders=lambda client_id: [other_app(client_id)])
    values = decode(secrets.items[("team", "web-creds")])
    assert values["client_id"] != "tb-victim" and values["client_id"].startswith("tb-")
    assert values["client_secret"] != "known-to-the-squatter"  # the planted secret is not kept either
    assert outcome.status["clientID"] == values["client_id"]
    assert outcome.status["clientSecretHash"] == hash_client_secret(values["client_secret"])
    warning = next(e for e in outcome.events if e[1] == "ClientIDConflict")
    assert warning[0] == "Warning" and "tb-victim" in warning[2] and "victims/web" in warning[2]
    assert outcome.ready  # the application works, with credentials of its own
    again = run(app(status=outcome.status), secrets, holders=lambda client_id: pytest.fail("listed again"))
    assert again.events == [] and again.status["clientID"] == values["client_id"]


@pytest.mark.parametrize("holders", ["none-available", "forbidden"])
def test_a_client_id_that_cannot_be_checked_is_not_taken_over(holders):
    """Failing closed: without a listing of every namespace's applications (no client, RBAC of a namespace-scoped
    install), the Secret's client id is not adopted; the application gets its own."""

    class Forbidden(Exception):
        status, reason = 403, "Forbidden"

    def forbidden(client_id):
        raise Forbidden()

    secrets = FakeSecrets()
    squatting_secret(secrets, "tb-victim")
    outcome = run(app(), secrets, holders=None if holders == "none-available" else forbidden)
    assert outcome.status["clientID"] != "tb-victim" and outcome.ready
    assert "ClientIDConflict" in [e[1] for e in outcome.events]


def test_other_listing_errors_propagate_to_be_retried():
    class Unavailable(Exception):
        status = 503

    def unavailable(client_id):
        raise Unavailable()

    secrets = FakeSecrets()
    squatting_secret(secrets, "tb-victim")
    with pytest.raises(Unavailable):
        run(app(), secrets, holders=unavailable)
    assert secrets.writes == 0


def test_listing_happens_only_when_a_client_id_would_be_taken_over():
    secrets = FakeSecrets()
    never = lambda client_id: pytest.fail("listed")  # noqa: E731
    first = run(app(), secrets, holders=never)  # no Secret yet: a new client id
    run(app(status=first.status), secrets, holders=never)  # status has it
    secrets.items.clear()
    run(app(status=first.status), secrets, holders=never)  # Secret lost, status has it


def test_the_conflict_decision():
    me = app()
    assert client_id_conflict(me, "tb-x", nobody_else) is None
    assert client_id_conflict(me, "tb-x", lambda c: [me]) is None  # itself
    assert (
        client_id_conflict(me, "tb-x", lambda c: [me, other_app(c), other_app(c, "b", "z", "u2")])
        == "OAuthApplication b/z, victims/web already has it"
    )
    assert "no OAuthApplication listing is available" in client_id_conflict(me, "tb-x", None)  # fails closed


def test_the_applications_are_listed_with_the_operator_client():
    """main.py passes ``list_client_id_holders(memo.kube.custom, ...)``: OAuthApplications in all namespaces."""
    calls = []

    class Custom:
        def list_cluster_custom_object(self, group, version, plural, _request_timeout=None):
            calls.append((group, version, plural, _request_timeout))
            return {"items": [other_app("tb-victim"), other_app("tb-other", uid="u3")]}

    kube = FakeSecrets()
    squatting_secret(kube, "tb-victim")
    outcome = reconcile(
        app(),
        read_secret=kube.read,
        write_secret=kube.write,
        lookup_idp=lambda key: READY_IDP,
        cluster_identity_providers=True,
        token_endpoint=ENDPOINT,
        grace=60,
        now=T0,
        client_id_holders=list_client_id_holders(Custom(), 7.0),
    )
    assert calls == [("tokenbridge.dev", "v1alpha1", "oauthapplications", 7.0)]
    assert outcome.status["clientID"] != "tb-victim"
    assert "victims/web" in next(e[2] for e in outcome.events if e[1] == "ClientIDConflict")
