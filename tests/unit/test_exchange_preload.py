"""Standalone at scale: the first snapshot loaded once in the gunicorn master and inherited by the workers, reloads
after that, ``.json`` manifests read as JSON, shared values in the snapshot, and ``--worker-class``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.exchange import basic, standalone_documents
from tests.support.processes import free_port, stop_group
from tokenbridge import api
from tokenbridge.signing import generate_keyset
from tokenbridge_exchange import config as server_config
from tokenbridge_exchange import gunicorn_app
from tokenbridge_exchange.config import ServerConfig
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.sources import manifests as manifests_module
from tokenbridge_exchange.sources.manifests import ManifestSource
from tokenbridge_exchange.telemetry import Telemetry


def never_discover(spec):
    raise AssertionError("no discovery expected")


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(text)
    tmp.replace(path)


class CountingSource(ManifestSource):
    loads = 0

    def _load(self):
        type(self).loads += 1
        return super()._load()


@pytest.fixture
def counting():
    CountingSource.loads = 0
    return CountingSource


def test_preloaded_source_hands_its_snapshot_to_the_worker_without_reparsing(tmp_path, idp, counting, monkeypatch):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(standalone_documents(idp)))
    monkeypatch.setattr(manifests_module, "ManifestSource", counting)
    config = ServerConfig(
        issuer="http://tb.test",
        manifests=str(tmp_path),
        manifests_poll_interval=0.05,
        replay_cache_path=str(tmp_path / "replay.sqlite3"),
    )
    telemetry = Telemetry()
    source = gunicorn_app.preload_source(config, generate_keyset("ES256", time.time()), telemetry)
    snapshot = source.current()
    assert counting.loads == 1 and snapshot is not None and len(snapshot.applications) == 2
    assert source._thread is None, "no thread may run in the master: it would not survive the fork"

    server = gunicorn_app.Server(
        config, generate_keyset("ES256", time.time()), None, source=source, telemetry=telemetry
    )
    assert server.cfg.pre_fork == server.before_fork
    server.before_fork()  # nothing changed: one stat, same snapshot
    assert source.current() is snapshot and counting.loads == 1
    try:
        import falcon.testing

        client = falcon.testing.TestClient(server.load())  # what the worker does after the fork
        assert source.current() is snapshot and counting.loads == 1, "the worker must not parse the manifests again"
        assert client.simulate_get("/readyz").json["applications"] == 2

        # the worker's poll thread still serves a changed file within the poll interval
        replace_file(tmp_path / "m.yaml", yaml.safe_dump_all(standalone_documents(idp, apps=3)))
        deadline = time.monotonic() + 5
        while client.simulate_get("/readyz").json["applications"] != 3:
            assert time.monotonic() < deadline, "the changed manifests were not served"
            time.sleep(0.05)
        assert counting.loads == 2
        # the reload was heard by the worker's metrics: the source and the app share the telemetry
        generation = source.current().generation
        assert f"tokenbridge_snapshot_generation {float(generation)}" in client.simulate_get("/metrics").text
    finally:
        source.stop()
        source.cache.stop()
        server.cfg.worker_exit(None, None)  # stops the worker's audit writer


def test_master_reloads_a_changed_file_before_forking_a_worker(tmp_path, idp):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(standalone_documents(idp)))
    config = ServerConfig(issuer="http://tb.test", manifests=str(tmp_path))
    telemetry = Telemetry()
    source = gunicorn_app.preload_source(config, generate_keyset("ES256", time.time()), telemetry)
    server = gunicorn_app.Server(config, None, None, source=source, telemetry=telemetry)
    first = source.current()
    replace_file(path, yaml.safe_dump_all(standalone_documents(idp, apps=1)))
    server.before_fork()  # a respawned worker must not start from the older configuration
    assert source.current() is not first and len(source.current().applications) == 1
    replace_file(path, "kind: [unclosed\n")
    server.before_fork()  # a bad file: the last good snapshot stays
    assert len(source.current().applications) == 1


def test_a_bad_file_at_start_preloads_nothing_and_the_worker_polls_for_a_good_one(tmp_path, idp):
    path = tmp_path / "m.yaml"
    path.write_text("kind: [unclosed\n")
    source = ManifestSource(
        tmp_path,
        JwksCache(never_discover),
        never_discover,
        signing_keys=generate_keyset("ES256", time.time()),
        poll_interval=0.05,
    )
    assert source.preload() is False and source.current() is None
    source.start()  # no second attempt at the same file: the poll thread waits for a change
    try:
        replace_file(path, yaml.safe_dump_all(standalone_documents(idp)))
        deadline = time.monotonic() + 5
        while source.current() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        source.stop()


# --- .json manifests --------------------------------------------------------------------------------------------


def test_json_list_and_single_object_load_as_json(tmp_path, idp):
    docs = standalone_documents(idp, apps=2)
    (tmp_path / "list.json").write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": docs[:3]}))
    (tmp_path / "single.json").write_text(json.dumps(docs[3]))  # app-1
    (tmp_path / "secret.json").write_text(json.dumps(docs[4]))
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    snapshot = source.load()
    assert sorted(snapshot.applications) == ["client-0", "client-1"] and snapshot.skipped == ()


def test_json_semantics_not_yaml(tmp_path):
    # YAML 1.1 would read 1e3 as a string, "yes" unquoted as a boolean; JSON has neither ambiguity
    (tmp_path / "a.json").write_text(
        '{"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"n": 1e3, "s": "yes", "esc": "a\\/b"}}'
    )
    source = ManifestSource(tmp_path, JwksCache(never_discover), never_discover)
    [doc] = list(source._documents())
    assert doc["data"] == {"n": 1000.0, "s": "yes", "esc": "a/b"}
    assert doc["metadata"] == {"name": "x", "namespace": "default"}


@pytest.mark.parametrize(
    "text",
    [
        '{"kind":"List","items":[{"a":1},{"b":[1,2]}]}',
        ' {"items" : [ ] , "kind" : "List" } ',
        '{"items":[1,2],"kind":"Secret"}',
        '{"items":[1],"items":{"x":1},"kind":"List"}',
        '{"items":{"x":1},"items":[3],"kind":"List"}',
        "[1,2]",
        "{}",
        '{"a":1,}',
        '{"items":[1,],"kind":"List"}',
        '{"items":[1 2]}',
        '{"a" 1}',
        "{a:1}",
        '{"a":NaN}',
        '{"items":[Infinity],"kind":"List"}',
        '{"a":1} x',
        '{"a":1}{"b":2}',
        "",
        '{"a":"\\u00e9\\n"}',
        '{"a":"tab\tinside"}',
        '\ufeff{"a":1}',
        '{"items":[1,',
        '{"items":[{"kind":"List","items":[1]}],"kind":"List"}',
        '{"a":-0.0,"b":12345678901234567890}',
        '{"items":null,"kind":"List"}',
    ],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_json_file_reads_as_json_loads_reads_it(tmp_path, text, encoding):
    """Exact JSON (no NaN or Infinity) in UTF-8 or UTF-16: json.loads's value, or its error prefixed with the file."""
    path = tmp_path / "m.json"
    path.write_bytes(text.encode(encoding))

    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    try:
        expected = ("value", [json.loads(path.read_bytes(), parse_constant=reject)])
    except ValueError as exc:
        expected = ("error", f"{path}: {exc}")
    try:
        ours = ("value", list(manifests_module._parse(path)))
    except ValueError as exc:
        ours = ("error", str(exc))
    assert ours == expected


def test_a_bad_json_file_keeps_the_last_good_snapshot(tmp_path, idp):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"kind": "List", "items": standalone_documents(idp)}))
    source = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    )
    assert source.reload_if_changed()
    good = source.current()
    for bad in (
        '{"kind": "List", "items": [',
        json.dumps({"kind": "List", "items": standalone_documents(idp)})[:-1] + ",]}",
        '{"kind": "List", "items": [{"a": NaN}]}',
    ):
        replace_file(path, bad)
        assert not source.reload_if_changed()
        assert source.current() is good


# --- shared values ---------------------------------------------------------------------------------------------


def test_equal_values_are_one_object_across_applications(tmp_path, idp):
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(standalone_documents(idp, apps=3, scopes=("read", "write"))))
    snapshot = ManifestSource(
        tmp_path, JwksCache(never_discover), never_discover, signing_keys=generate_keyset("ES256", time.time())
    ).load()
    a, b, c = (snapshot.applications[f"client-{n}"] for n in range(3))
    for field in ("grant_types", "scopes", "audiences", "audience_set", "providers", "namespace"):
        assert getattr(a, field) is getattr(b, field) is getattr(c, field), field
    assert a.scopes == {"read", "write"} and a.audiences == ("https://api.example.test",)
    assert [p.label for p in a.providers.lookup(idp.issuer)] == ["apps/corp"]


# --- --worker-class ---------------------------------------------------------------------------------------------


def test_worker_class_flag_env_and_settings(tmp_path, capsys):
    assert server_config.load(["--manifests", str(tmp_path)], env={}).worker_class == "gevent"
    cfg = server_config.load(["--manifests", str(tmp_path), "--worker-class", "sync"], env={})
    assert cfg.worker_class == "sync"
    env = {"TOKENBRIDGE_WORKER_CLASS": "sync"}
    assert server_config.load(["--manifests", str(tmp_path)], env=env).worker_class == "sync"
    assert (
        server_config.load(["--manifests", str(tmp_path), "--worker-class", "gthread"], env=env).worker_class
        == "gthread"
    ), "the flag wins over the environment"
    with pytest.raises(SystemExit):
        server_config.load(["--manifests", str(tmp_path), "--worker-class", "eventlet"], env={})
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        server_config.load(["--manifests", str(tmp_path)], env={"TOKENBRIDGE_WORKER_CLASS": "eventlet"})
    assert "TOKENBRIDGE_WORKER_CLASS" in capsys.readouterr().err

    sync = gunicorn_app.Server(
        ServerConfig(issuer="http://x", worker_class="sync", threads=8), None, None, telemetry=Telemetry()
    )
    assert (sync.cfg.worker_class_str, sync.cfg.threads) == ("sync", 1)  # gunicorn turns sync + threads into gthread
    threaded = gunicorn_app.Server(
        ServerConfig(issuer="http://x", worker_class="gthread", threads=4), None, None, telemetry=Telemetry()
    )
    assert (threaded.cfg.worker_class_str, threaded.cfg.threads) == ("gthread", 4)
    default = gunicorn_app.Server(ServerConfig(issuer="http://x", threads=4), None, None, telemetry=Telemetry())
    assert (default.cfg.worker_class_str, default.cfg.threads) == ("gevent", 1)


# --- for real: tokenbridge serve ---------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["gevent", "gthread", "sync"])
def test_serve_loads_once_in_the_master_and_each_worker_reloads(tmp_path, idp, worker_class):
    manifests = tmp_path / "config"
    manifests.mkdir()
    (manifests / "m.json").write_text(json.dumps({"kind": "List", "items": standalone_documents(idp)}))
    port = free_port()
    log_path = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tokenbridge"),
                "serve",
                "--manifests",
                str(manifests),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--worker-class",
                worker_class,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TOKENBRIDGE_PUBLIC_ISSUER": ""},
        )
    try:

        def workers_answering(applications: int) -> set[int]:
            pids: set[int] = set()
            deadline = time.monotonic() + 20
            while len(pids) < 2:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    ready = httpx.get(base + "/readyz", headers={"Connection": "close"})
                except httpx.TransportError:
                    time.sleep(0.1)
                    continue
                if ready.status_code == 200 and ready.json()["applications"] == applications:
                    pids.add(ready.json()["worker"])
            return pids

        assert len(workers_answering(2)) == 2
        text = log_path.read_text()
        assert "before forking the workers" in text
        assert len(re.findall(r"loaded 2 applications", text)) == 1, "only the master parses the first load"
        assert f"Using worker: {worker_class}" in text
        # gevent: the master patched the standard library before importing anything that makes sockets or locks
        assert "MonkeyPatchWarning" not in text and "Traceback" not in text, text
        token = httpx.post(
            base + "/oauth2/token",
            headers=basic("client-0", "pw"),
            data={
                "grant_type": api.GRANT_TOKEN_EXCHANGE,
                "subject_token_type": api.TOKEN_TYPE_JWT,
                "subject_token": idp.token(aud="api://tb", iat=int(time.time()), exp=int(time.time()) + 300),
            },
        )
        assert token.status_code == 200, token.text

        replace_file(manifests / "m.json", json.dumps({"kind": "List", "items": standalone_documents(idp, apps=3)}))
        assert len(workers_answering(3)) == 2  # each worker's poll thread reloads
        assert len(re.findall(r"loaded 3 applications", log_path.read_text())) == 2
    finally:
        stop_group(proc)


# --- reloads do not hold a gevent worker's requests ---------------------------------------------------------------


def test_a_reload_lets_a_gevent_workers_requests_run_between_documents(tmp_path, idp):
    """In a gevent worker (one OS thread) a CPU-bound reload would hold every request until done: the reload
    pauses every 64 documents (and every 64 applications while building), and whatever waits runs then."""
    manifests = tmp_path / "m.yaml"
    manifests.write_text(yaml.safe_dump_all(standalone_documents(idp, apps=400)))
    code = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent
from tokenbridge.signing import generate_keyset
from tokenbridge_exchange.jwks_cache import JwksCache
from tokenbridge_exchange.sources.manifests import ManifestSource
ran = []
def request():  # stands for the requests of the worker, each ready to run
    while True:
        gevent.sleep(0)
        ran.append(1)
gevent.spawn(request)
gevent.sleep(0)
source = ManifestSource(sys.argv[1], JwksCache(lambda uri, spec: None), lambda spec: None,
                        signing_keys=generate_keyset("ES256", time.time()))
before = len(ran)
snapshot = source.load()
print(len(snapshot.applications), len(ran) - before)
"""
    run = subprocess.run([sys.executable, "-c", code, str(manifests)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    applications, ran = map(int, run.stdout.split())
    assert applications == 400
    # 801 documents and 400 applications: at least 12 + 6 pauses, each letting the waiting greenlet run once
    assert ran >= 18, f"the waiting greenlet ran {ran} times during the reload"


def test_cooperative_hands_out_every_item_and_pauses_every_nth(monkeypatch):
    from tokenbridge_exchange import sources

    pauses = []
    monkeypatch.setattr(sources.time, "sleep", pauses.append)
    assert list(sources.cooperative(range(200), every=64)) == list(range(200))
    assert pauses == [0, 0, 0]
