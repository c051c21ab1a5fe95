"""Explain: ``POST /oauth2/explain`` and ``tokenbridge explain`` report each step of the token endpoint's decision,
issue nothing, consume no jti, and never echo the token or the client secret."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

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
from tests.support.idp import IdP
from tokenbridge import api
from tokenbridge_cli.commands import explain as explain_cli

CLIENT, SECRET = "tb-client", "s3cret-s3cret"
AUTH = (CLIENT, SECRET)
CONDITION = "assertion.sub.endsWith(':alice')"


@pytest.fixture
def client(idp, tmp_path):
    clock = Clock()
    idps = [
        idp_object(
            "corp",
            idp.issuer,
            jwks=idp.jwks(),
            condition=CONDITION,
            preventReplay=True,
            claimMappings={"groups": "assertion.groups", "sub": "'corp:' + assertion.sub"},
        )
    ]
    apps = [app_object("web", CLIENT, SECRET)]
    return make_client(
        FixedSource(snapshot_of(idps, apps=apps, clock=clock)),
        clock,
        replay_cache_path=str(tmp_path / "replay.sqlite3"),
    )


def form(token, **extra):
    return {
        "grant_type": api.GRANT_TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": api.TOKEN_TYPE_JWT,
        **extra,
    }


def steps(report):
    return {s["step"]: (s["result"], s["detail"]) for s in report["steps"]}


def assert_nothing_secret(text: str, token: str) -> None:
    for part in token.split("."):
        assert part not in text
    assert SECRET not in text


def test_an_accepted_token_step_by_step(client, idp):
    token = idp.token(sub="system:serviceaccount:ns:alice", groups=["dev"], jti=uuid.uuid4().hex)
    result = post_form(client, "/oauth2/explain", form(token, scope="read"), AUTH)
    assert result.status_code == 200 and result.headers["Cache-Control"] == "no-store"
    report = result.json
    assert report["decision"] == "issue" and report["application"] == "team-a/web"
    got = steps(report)
    assert [s["result"] for s in report["steps"]] == ["pass"] * len(report["steps"])
    assert list(got)[:5] == ["client", "grant_type", "audience", "scope", "subject_token_type"]
    for name in (
        "format",
        "issuer",
        "alg",
        "signature",
        "aud",
        "exp",
        "nbf",
        "iat",
        "maxTokenAge",
        "sub",
        "jti",
        "condition",
    ):
        assert f"subject_token.{name}" in got, name
    assert "identity provider team-a/corp" in got["subject_token.issuer"][1]
    assert got["client"][1].startswith("authenticated as application team-a/web")
    assert got["claim_mappings"] == ("pass", "computed groups, sub")
    assert got["replay"][0] == "pass"
    assert report["token"]["sub"] == "corp:system:serviceaccount:ns:alice"
    assert report["token"]["scope"] == "read" and "groups" in report["token"]["claims"]
    assert '"access_token"' not in result.text
    assert_nothing_secret(result.text, token)
    # explain consumed nothing: the token is still good once, at the token endpoint
    assert post_form(client, "/oauth2/token", form(token), AUTH).status_code == 200
    replayed = post_form(client, "/oauth2/explain", form(token), AUTH).json
    assert replayed["decision"] == "refused" and steps(replayed)["replay"][0] == "fail"


def test_a_refused_token_names_the_failed_step(client, idp):
    token = idp.token(sub="system:serviceaccount:ns:mallory", jti=uuid.uuid4().hex)
    report = post_form(client, "/oauth2/explain", form(token), AUTH).json
    assert report["decision"] == "refused" and report["error"] == "invalid_grant"
    last = report["steps"][-1]
    assert last == {
        "step": "subject_token.condition",
        "result": "fail",
        "detail": "the condition of identity provider team-a/corp refused the request",
    }
    assert "token" not in report
    assert_nothing_secret(json.dumps(report), token)
    assert "mallory" not in json.dumps(report)


def test_a_bad_signature_fails_at_the_signature_step(client, idp):
    forged = IdP(idp.issuer).token(header={"kid": idp.kid})
    report = post_form(client, "/oauth2/explain", form(forged), AUTH).json
    assert steps(report)["subject_token.alg"][0] == "pass"
    assert steps(report)["subject_token.signature"] == (
        "fail",
        "the signature does not verify with the keys of identity provider team-a/corp",
    )


def test_explain_needs_client_authentication(client, idp):
    result = post_form(client, "/oauth2/explain", form(idp.token()), (CLIENT, "wrong"))
    expect_error(result, 401, "invalid_client")
    assert "steps" not in result.json


def test_request_errors_are_steps_too(client, idp):
    report = post_form(client, "/oauth2/explain", form(idp.token(), scope="admin"), AUTH).json
    assert report["error"] == "invalid_scope" and report["steps"][-1]["step"] == "scope"


# --- the CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture
def manifests(tmp_path, idp):
    docs = [
        idp_object("corp", idp.issuer, jwks=idp.jwks(), condition=CONDITION, preventReplay=True),
        idp_object("broken", "https://broken.example.test", jwks=idp.jwks(), condition="assertion.sub +"),
        {k: v for k, v in app_object("web", "unused", "unused").items() if k != "status"},
    ]
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_cli_accepts_with_exit_0(manifests, idp, capsys):
    import time  # the CLI runs on the real clock

    token = idp.token(sub="x:alice", iat=int(time.time()), exp=int(time.time()) + 300, jti="j1")
    code = explain_cli.main(
        [
            "--manifests",
            manifests,
            "--app",
            "web",
            "--namespace",
            "team-a",
            "--token",
            token,
            "--audience",
            "https://api.example.test",
            "--scope",
            "read",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "application team-a/web" in out
    assert "PASS  subject_token.signature" in out and "PASS  subject_token.condition" in out
    assert "SKIP  replay" in out  # the server's replay cache is not visible from the CLI
    assert "decision: a token would be issued: sub 'x:alice'" in out
    assert "not served: IdentityProvider team-a/broken" in err  # the policy that does not compile
    assert_nothing_secret(out + err, token)


def test_cli_refuses_with_exit_1_as_json(manifests, idp, capsys):
    import time

    token = idp.token(sub="x:bob", iat=int(time.time()), exp=int(time.time()) + 300)
    code = explain_cli.main(["--manifests", manifests, "--app", "web", "-n", "team-a", "--token", token, "--json"])
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert code == 1 and report["decision"] == "refused"
    assert report["steps"][-1]["step"] == "subject_token.condition"
    assert report["steps"][0]["detail"].endswith("selected by name (the CLI does not authenticate clients)")
    assert_nothing_secret(out, token)


def test_cli_unknown_application(manifests, idp, capsys):
    assert explain_cli.main(["--manifests", manifests, "--app", "nope", "--token", idp.token()]) == 1
    assert "no usable OAuthApplication default/nope" in capsys.readouterr().err


def test_cli_usage_errors(manifests):
    with pytest.raises(SystemExit) as info:
        explain_cli.main(["--app", "web", "--token", "x"])  # no configuration source
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        explain_cli.main(["--manifests", manifests, "--app", "web"])  # token-exchange needs --token
