"""One JSON audit record per token request (logger ``tokenbridge.audit``), issued or refused, never a token or a
secret."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from tests.support.exchange import (
    Clock,
    FixedSource,
    app_object,
    claims_of,
    idp_object,
    make_client,
    post_form,
    snapshot_of,
)
from tokenbridge import api

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
AUTH = (CLIENT, SECRET)


@pytest.fixture
def client(idp, tmp_path):
    clock = Clock()
    idps = [
        idp_object(
            "corp",
            idp.issuer,
            jwks=idp.jwks(),
            condition="assertion.sub != 'mallory'",
            claimMappings={"sub": "'corp:' + assertion.sub"},
        )
    ]
    apps = [app_object("web", CLIENT, SECRET, delegation=True)]
    return make_client(
        FixedSource(snapshot_of(idps, apps=apps, clock=clock)),
        clock,
        replay_cache_path=str(tmp_path / "replay.sqlite3"),
    )


def records(caplog) -> list[dict]:
    lines = [r for r in caplog.records if r.name == "tokenbridge.audit"]
    return [json.loads(r.getMessage()) for r in lines]


def exchange(client, token, auth=AUTH, **params):
    return post_form(
        client,
        "/oauth2/token",
        {
            "grant_type": api.GRANT_TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": api.TOKEN_TYPE_JWT,
            **params,
        },
        auth,
    )


def test_an_issued_token_is_audited_without_the_tokens(client, idp, caplog):
    caplog.set_level(logging.INFO, logger="tokenbridge.audit")
    subject_jti = uuid.uuid4().hex
    subject = idp.token(jti=subject_jti)
    actor = idp.token(sub="robot")
    result = exchange(
        client,
        subject,
        audience="https://api.example.test",
        scope="read",
        actor_token=actor,
        actor_token_type=api.TOKEN_TYPE_JWT,
    )
    issued = claims_of(result)
    (record,) = records(caplog)
    assert record["event"] == "token_request" and record["outcome"] == "issued" and record["status"] == 200
    assert record["time"].endswith("Z")
    assert record["grant_type"] == api.GRANT_TOKEN_EXCHANGE
    assert (record["client_id"], record["application"], record["idp"]) == (CLIENT, "team-a/web", "team-a/corp")
    assert record["subject"] == "corp:alice" and record["actor"] == "robot"
    assert record["audience"] == ["https://api.example.test"] and record["scope"] == ["read"]
    assert record["jti"] == issued["jti"] and record["subject_jti"] == subject_jti
    assert record["expires_at"] == issued["exp"]
    assert record["error"] is None and record["error_description"] is None
    text = caplog.text
    for token in (subject, actor, result.json["access_token"]):
        for part in token.split("."):
            assert part not in text
    assert SECRET not in text


@pytest.mark.parametrize(
    "case, error, status, subject",
    [
        ("condition", "invalid_grant", 400, "mallory"),  # validated, then refused by the condition
        ("secret", "invalid_client", 401, None),
        ("scope", "invalid_scope", 400, None),
    ],
)
def test_refusals_are_audited_with_code_and_reason(client, idp, caplog, case, error, status, subject):
    caplog.set_level(logging.INFO, logger="tokenbridge.audit")
    if case == "condition":
        exchange(client, idp.token(sub="mallory"))
    elif case == "secret":
        exchange(client, idp.token(), auth=(CLIENT, "not-" + SECRET))
    else:
        exchange(client, idp.token(), scope="admin")
    (record,) = records(caplog)
    assert record["outcome"] == "refused" and record["status"] == status and record["error"] == error
    assert record["error_description"]
    assert record["client_id"] == CLIENT and record["jti"] is None and record["subject"] == subject
    if case == "condition":
        assert record["idp"] == "team-a/corp" and "identity provider team-a/corp" in record["error_description"]
    if case == "secret":
        assert record["application"] is None  # not authenticated: only the presented client id
    assert SECRET not in caplog.text


def test_one_record_per_request_and_none_for_other_endpoints(client, idp, caplog):
    caplog.set_level(logging.INFO, logger="tokenbridge.audit")
    for _ in range(3):
        exchange(client, idp.token())
    client.simulate_get("/.well-known/jwks.json")
    post_form(client, "/oauth2/explain", {"grant_type": api.GRANT_CLIENT_CREDENTIALS}, AUTH)
    assert [r["outcome"] for r in records(caplog)] == ["issued"] * 3


def test_stream_audit_writes_every_line_in_order_and_drains_on_stop(tmp_path):
    """``tokenbridge serve``'s sink: request threads only queue; the writer thread loses nothing, even at stop."""
    import threading

    from tokenbridge_exchange.audit import StreamAudit

    path = tmp_path / "audit.jsonl"
    with open(path, "w") as stream:
        sink = StreamAudit(stream)
        sink.start()

        def burst(t):
            for i in range(500):
                sink.write(json.dumps({"thread": t, "i": i}))

        threads = [threading.Thread(target=burst, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sink.stop()
        sink.write("after stop: queued, never written")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2000
    for t in range(4):
        assert [r["i"] for r in lines if r["thread"] == t] == list(range(500))


def test_a_stalled_stdout_holds_only_the_audit_writer_under_gevent():
    """gevent workers (the default) run every request on one OS thread: a write to a stdout nobody reads must not
    hold them. The lines wait and are all written once the reader catches up."""
    import subprocess
    import sys

    code = """
from gevent import monkey; monkey.patch_all()
import os, time, gevent
from tokenbridge_exchange.audit import StreamAudit
read_end, write_end = os.pipe()  # nobody reads yet: 200 lines of 1 KiB overflow the pipe's buffer
sink = StreamAudit(os.fdopen(write_end, "w"), interval=0.01)
sink.start()
for i in range(200):
    sink.write(f"{i:04d}" + "x" * 1020)
ticks, until = 0, time.monotonic() + 0.5
while time.monotonic() < until:  # a request's worth of work, again and again, meanwhile
    gevent.sleep(0.005)
    ticks += 1
print("ticks", ticks, flush=True)
data = b""
while data.count(b"\\n") < 200:
    data += os.read(read_end, 65536)
sink.stop()
lines = data.decode().splitlines()
assert [line[:4] for line in lines] == [f"{i:04d}" for i in range(200)], lines[:3]
print("lines", len(lines))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr[-2000:]
    ticks = int(run.stdout.split()[1])
    assert ticks > 40, f"the other greenlets ran {ticks} times in 0.5 s: the blocked write held them"
    assert "lines 200" in run.stdout
