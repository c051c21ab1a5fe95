"""``tokenbridge decode``: header and claims, ISO times, the NOT VERIFIED banner, refusals of non-JWTs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tokenbridge_cli.commands import decode

TB = str(Path(sys.executable).parent / "tokenbridge")
KEY = ec.generate_private_key(ec.SECP256R1())


def token(**claims) -> str:
    return jwt.encode(
        {"iss": "https://idp.example.com", "sub": "alice", **claims}, KEY, algorithm="ES256", headers={"kid": "k1"}
    )


def test_header_claims_and_iso_times(capsys):
    exp = 1893456000  # 2030-01-01T00:00:00Z
    assert decode.main([token(aud=["a", "b"], iat=1767225600, exp=exp, name="Zoë")]) == 0
    captured = capsys.readouterr()
    assert decode.BANNER in captured.err and "NOT VERIFIED" in captured.err
    header_text = captured.out.split("Header:\n", 1)[1].split("Claims:\n", 1)[0]
    assert json.loads(header_text) == {"alg": "ES256", "kid": "k1", "typ": "JWT"}
    claims_text = captured.out.split("Claims:\n", 1)[1].split("Times (UTC):\n", 1)[0]
    assert json.loads(claims_text)["aud"] == ["a", "b"] and "Zoë" in claims_text
    assert "exp       1893456000   2030-01-01T00:00:00Z  (in " in captured.out
    assert "iat       1767225600   2026-01-01T00:00:00Z" in captured.out


def test_expired_token_says_so(capsys):
    assert decode.main([token(exp=int(time.time()) - 120)]) == 0
    assert "(EXPIRED 2m ago)" in capsys.readouterr().out


def test_json_output_from_stdin_and_bearer_prefix(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Bearer " + token(exp=1893456000) + "\n"))
    assert decode.main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified"] is False and out["claims"]["sub"] == "alice"
    assert out["times"] == {"exp": "2030-01-01T00:00:00Z"}


def test_file_argument(tmp_path, capsys):
    (tmp_path / "t.jwt").write_text(token())
    assert decode.main([f"@{tmp_path / 't.jwt'}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["header"]["kid"] == "k1"


def test_not_a_jwt_exits_1_with_what_to_do(capsys):
    assert decode.main(["hello"]) == 1
    err = capsys.readouterr().err
    assert "not a JWT: a signed JWT has three dot-separated parts, this has 1" in err and "hint:" in err
    assert decode.main(["a.b.c.d.e"]) == 1
    assert "encrypted JWT (JWE" in capsys.readouterr().err
    assert decode.main(["e30.!!!.sig"]) == 1
    assert "not a JWT" in capsys.readouterr().err


def test_piped_through_the_command():
    proc = subprocess.run([TB, "decode", "--json", "-"], input=token(), capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["claims"]["iss"] == "https://idp.example.com"
    assert "NOT VERIFIED" in proc.stderr
    empty = subprocess.run([TB, "decode"], input="", capture_output=True, text=True)
    assert empty.returncode == 1 and "the token is empty" in empty.stderr
