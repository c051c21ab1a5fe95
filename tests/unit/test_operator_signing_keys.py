"""The signing-key Secret reconciler: created once, rotated publish-then-sign, unchanged when nothing is due."""

from tokenbridge.signing import SigningKeySet
from tokenbridge_operator.config import OperatorConfig
from tokenbridge_operator.handlers.signing_keys import reconcile

CONFIG = OperatorConfig(
    signing_rotation_period=100,
    signing_publish_lead=10,
    max_token_lifetime=50,
    signing_secret_namespace="tb",
    signing_secret_name="keys",
)


class Store:
    def __init__(self):
        self.secret = None
        self.writes = []

    def read(self, namespace, name):
        assert (namespace, name) == ("tb", "keys")
        return self.secret

    def write(self, body, create):
        assert create == (self.secret is None)
        self.writes.append(create)
        self.written = body
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": str(len(self.writes))}}


def test_created_once_then_rotated_with_the_old_key_still_published():
    store = Store()
    first = reconcile(CONFIG, read_secret=store.read, write_secret=store.write, now=1000.0)
    assert first.changed and store.writes == [True]
    assert store.secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tokenbridge"}
    kid = first.keyset.active(1000.0).kid
    assert first.keyset.keys[0].alg == "ES256"

    assert not reconcile(CONFIG, read_secret=store.read, write_secret=store.write, now=1050.0).changed
    assert store.writes == [True]

    due = reconcile(CONFIG, read_secret=store.read, write_secret=store.write, now=1095.0)
    assert due.changed and store.writes == [True, False]
    assert store.written["metadata"]["resourceVersion"] == "1", "replaced at the version that was read"
    stored = SigningKeySet.from_secret_data(store.secret["data"])
    published = [k["kid"] for k in stored.jwks(1095.0)["keys"]]
    assert len(published) == 2 and kid in published
    assert stored.active(1095.0).kid == kid, "the new key is published before it signs"
    assert stored.active(1106.0).kid != kid
    assert kid in [k["kid"] for k in stored.jwks(1150.0)["keys"]], "kept while its tokens may live"
    reconcile(CONFIG, read_secret=store.read, write_secret=store.write, now=1200.0)
    assert kid not in [k["kid"] for k in SigningKeySet.from_secret_data(store.secret["data"]).jwks(1200.0)["keys"]]


def test_unreadable_secret_is_replaced():
    store = Store()
    store.secret = {
        "metadata": {"name": "keys", "namespace": "tb", "resourceVersion": "7"},
        "data": {"keys.json": "bm90IGpzb24="},
    }
    result = reconcile(CONFIG, read_secret=store.read, write_secret=store.write, now=5.0)
    assert result.changed and store.writes == [False]
    assert SigningKeySet.from_secret_data(store.secret["data"]).active(5.0)
