"""The benchmark's own pieces work: generated configs give real exchanges, the floor app exchanges, the open-loop
generator frames HTTP responses, the reports are tables of the committed results. No timing is asserted here
(numbers live in bench/results/)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import configgen  # bench/'s scripts, importable by name through pytest's pythonpath (pyproject.toml)
import falcon.testing
import floor_app
import jwt
import library_calls
import loadgen
import report

from tokenbridge.signing import generate_keyset
from tokenbridge_exchange.app import create_app
from tokenbridge_exchange.config import ServerConfig
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.sources.manifests import ManifestSource

BENCH = Path(__file__).resolve().parents[2] / "bench"

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_generated_config_serves_exchanges_from_every_pooled_request(tmp_path):
    config = configgen.generate(tmp_path, n_idps=4, n_apps=6, distinct_keys=2)
    source = ManifestSource(
        tmp_path,
        JwksCache(lambda uri, spec: None),
        lambda spec: None,
        signing_keys=generate_keyset("ES256", time.time()),
    )
    source.start()
    try:
        snapshot = source.current()
        assert len(snapshot.applications) == 6 and len(snapshot.providers) == 4 and not snapshot.skipped
        client = falcon.testing.TestClient(create_app(ServerConfig(issuer="http://bench.test"), source))
        pool = configgen.request_pool(config, size=8)
        path = configgen.write_pool(pool, tmp_path / "pool.tsv")
        assert configgen.read_pool(path) == pool
        for auth, body in pool:
            r = client.simulate_post("/oauth2/token", body=body, headers={**FORM, "Authorization": auth})
            assert r.status_code == 200, r.text
            assert jwt.get_unverified_header(r.json["access_token"])["alg"] == "ES256"
        wrong = config.idps[[i for i in range(4) if i not in config.apps[0].idps][0]]  # an IdP app 0 does not trust
        body = configgen.exchange_body(configgen.subject_token(wrong, "mallory"), config.apps[0].audience)
        r = client.simulate_post(
            "/oauth2/token",
            body=body,
            headers={
                **FORM,
                "Authorization": configgen.basic_auth(config.apps[0].client_id, config.apps[0].client_secret),
            },
        )
        assert r.status_code == 400 and r.json["error"] == "invalid_grant"
    finally:
        source.stop()


def test_floor_app_verifies_and_signs(tmp_path):
    idp = configgen.IdP("ns", "idp", "https://floor-idp.test", "k1", configgen.rsa_key())
    client = falcon.testing.TestClient(
        floor_app.create_app(configgen.public_jwk(idp.key, idp.kid), idp.issuer, configgen.SUBJECT_AUDIENCE)
    )
    r = client.simulate_post(
        "/oauth2/token", headers=FORM, body=configgen.exchange_body(configgen.subject_token(idp, "alice"), "api://x")
    )
    assert r.status_code == 200
    claims = jwt.decode(r.json["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["aud"] == "api://x"
    r = client.simulate_post(
        "/oauth2/token",
        headers=FORM,
        body=configgen.exchange_body(configgen.subject_token(idp, "alice", audience="someone-else"), "api://x"),
    )
    assert r.status_code == 400


def test_open_loop_generator_counts_keepalive_and_closed_responses():
    """A tiny server answering with Content-Length, alternately keeping and closing the connection."""

    async def scenario():
        served = 0

        async def handle(reader, writer):
            nonlocal served
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                served += 1
                close = served % 2 == 0
                body = b'{"ok":true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    writer.close()
                    return

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = loadgen.build_requests([("Basic eDp5", "a=b")], f"127.0.0.1:{port}", "/oauth2/token")
        gen = loadgen.OpenLoop("127.0.0.1", port, requests, rate=200, duration=0.5, connections=4, warmup=0.1)
        result = await gen.run()
        server.close()
        return result

    result = asyncio.run(scenario())
    assert result["ok"] == result["completed"] == 100
    assert result["errors"] == 0 and result["missing"] == 0 and result["p99_ms"] is not None


def prose(text: str) -> list[str]:
    """The lines of a report that are neither headings, table rows nor blank."""
    return [line for line in text.splitlines() if line and not line.startswith(("#", "|"))]


def test_report_is_tables_of_the_committed_results(tmp_path):
    results = json.loads((BENCH / "results" / "results.json").read_text())
    text = report.write(results, tmp_path).read_text()
    assert prose(text) == [text.splitlines()[2], "![benchmark plot](bench.png)"], "one introduction, the plot"
    for heading in (
        "## Results against the targets",
        "## Peak throughput (closed loop)",
        "## Scale",
        "## Ablation: the app's own cost per exchange, in process",
    ):
        assert heading in text
    floor = results["peak"]["tokenbridge"]["median_rps"] / results["peak"]["floor"]["median_rps"]
    assert f"| Tokenbridge / floor, peak exchanges/s | {floor:.2f} " in text
    tables = "\n".join(line if line.startswith("|") else "" for line in text.splitlines()).split("\n\n")
    for rows in (t.strip().splitlines() for t in tables if t.strip()):
        assert rows[1].startswith("| --- |") and len({row.count("|") for row in rows}) == 1, rows


def test_library_calls_report_is_one_table_per_subject(tmp_path):
    results = json.loads((BENCH / "results" / "library_calls.json").read_text())
    text = library_calls.markdown(results)
    assert prose(text) == [text.splitlines()[2]]
    rows = [line for line in text.splitlines() if line.startswith("| ES256: ")]
    assert len(rows) == 3 and all(line.count(" µs") == 1 + bool(results["previous"]) for line in rows)


def test_the_report_shows_the_library_calls_beside_their_floors(tmp_path):
    results = json.loads((BENCH / "results" / "results.json").read_text())
    calls = json.loads((BENCH / "results" / "library_calls.json").read_text())
    (tmp_path / "library_calls.json").write_text(json.dumps(calls))
    text = report.write(results, tmp_path).read_text()
    section = text.split("## Library calls beside their floors\n", 1)[1]
    for row in (
        "| YAML floor: libyaml's events alone",
        "| JSON: `json.load` |",
        "| ES256: `jwt.encode` per token |",
        "| ES256: floor, `key.sign` per token |",
    ):
        assert row in section
    assert len(prose(text)) == 3  # the report's introduction, the plot, the library calls' set-up
