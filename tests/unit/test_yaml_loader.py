"""The manifests' YAML loader gives exactly what PyYAML's safe loader gives: values, types, key order, aliases
(compared through pickle, which records shared objects), documents and errors."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenbridge_exchange.sources.yaml_loader import BaseLoader, ManifestLoader

ROOT = Path(__file__).resolve().parents[2]


def both(text: str | bytes) -> tuple[object, object]:
    def load(loader):
        try:
            return ("ok", pickle.dumps(list(yaml.load_all(text, Loader=loader))))
        except Exception as exc:  # noqa: BLE001 - the same failure, whatever it is
            return ("error", type(exc).__name__, str(exc))
    return load(BaseLoader), load(ManifestLoader)


CASES = {
    "yaml 1.1 scalars": "a: yes\nb: Off\nc: 0777\nd: 0x1F\ne: 1:30\nf: .inf\ng: -.NaN\nh: ~\n"
                        "i: 2001-12-14t21:59:43.10-05:00\n"
                        "j: 2002-12-14\nk: 1_000\nl: +12.5e3\nm: null\nn: ''\no: '1'\np: \"true\"\nq: !!str 12\n"
                        "r: !!binary aGVsbG8=\ns: !!float 1\nt: !!int '7'\nu: -0\nv: =\n",
    "block scalars": "a: |\n  one\n  two\nb: >-\n  folded\n  text\n\nc: |+\n  keep\n\n",
    "aliases share objects": "base: &b {x: [1, 2]}\none: *b\ntwo: *b\nlist: &l [a, b]\nagain: *l\n",
    "merge keys": "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\nmany:\n  <<: [*b, {z: 4}]\n",
    "explicit collection tags": "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\np: !!pairs [{a: 1}, {a: 2}]\n",
    "non-string keys": "1: one\ntrue: yes\n~: nothing\n2001-01-01: date\n[1, 2]: list\n",
    "unhashable mapping key": "? {a: 1}\n: v\n",
    "recursive alias": "a: &a [*a]\n",
    "recursive mapping alias": "&m {self: *m}\n",
    "duplicate keys": "a: 1\nb: 2\na: 3\n",
    "documents": "---\na: 1\n---\n---\n- x\n...\n--- plain\n--- !!str 5\n",
    "non-specific tag": "a: ! 12\nb: ! [1]\nc: ! {d: e}\n",
    "unknown tag": "a: !custom 1\n",
    "bad timestamp": "a: 2001-13-45\n",
    "bad binary": "a: !!binary '@@@'\n",
    "syntax error": "a: [1, 2\nb: 3\n",
    "tabs": "a:\n\t- b\n",
    "value key": "=: x\n",
    "utf-16": "\ufeffa: é\n".encode("utf-16"),
    "look-alikes in either order": "a: yesterday\nb: yes\nc: 12ab\nd: 12\ne: nullish\nf: null\ng: 'yes'\nh: yes\n"
                                   "i: Null\nj: nul\nk: 1.5x\nl: 1.5\nm: trueish\nn: true\n",
    "long and short repeated values": "\n".join(f"k{i}: {'v' * (i % 90)}" for i in range(300)) + "\n",
}


@pytest.mark.parametrize("name", CASES)
def test_same_as_pyyaml(name):
    stock, ours = both(CASES[name])
    assert ours == stock


def test_aliases_are_one_object_and_merge_keys_apply():
    doc = yaml.load(CASES["aliases share objects"] + "m:\n  <<: *b\n  z: 1\n", Loader=ManifestLoader)
    assert doc["one"] is doc["two"] is doc["base"] and doc["again"] is doc["list"]
    assert doc["m"] == {"x": [1, 2], "z": 1}


def test_every_manifest_in_the_repository_loads_the_same():
    files = [p for p in ROOT.glob("**/*.y*ml") if p.suffix in (".yaml", ".yml")
             and ".venv" not in p.parts and "templates" not in p.parts]
    assert len(files) > 20
    for path in files:
        stock, ours = both(path.read_bytes())
        assert ours == stock, path


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["yes", "No", "on", "OFF", "0777", "0x1f", "1:30", "~", "null", "2001-12-14", ".inf", "-.nan",
                     "1e3", "+1", "<<", "=", "", " ", "a: b", "- x", "#", "'", '"', "\t"]),
    st.binary(max_size=8), st.dates())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
                                                 inner, max_size=4)), max_leaves=20)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.sampled_from([None, True, False]), st.booleans())
def test_dumped_data_loads_the_same(value, flow, explicit_start):
    text = yaml.dump_all([value, {"again": value}], default_flow_style=flow, explicit_start=explicit_start)
    stock, ours = both(text)
    assert ours == stock


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab01:-[]{}&*!?|>'\"#~ \n\t,.<=%@`", max_size=60))
def test_arbitrary_text_loads_or_fails_the_same(text):
    stock, ours = both(text)
    assert ours == stock


# --- a large file parsed on several cores ------------------------------------------------------------------------

from tokenbridge_exchange.sources import yaml_loader  # noqa: E402

MANY = "".join(
    f"---\nkind: Doc\nmetadata: {{name: d{i}}}\nspec:\n  text: |\n    line\n    --- not a start (indented)\n"
    f"  quoted: \"a\n    --- b\"\n  anchor: &a{i} [x{i}]\n  alias: *a{i}\n  when: 2001-12-14\n  flag: yes\n"
    + ("...\n" if i % 7 == 0 else "") + ("# --- a comment\n" if i % 5 == 0 else "")
    for i in range(60))


def parallel_and_serial(tmp_path, text: str, processes: int):
    path = tmp_path / "m.yaml"
    path.write_text(text)

    def load(n):
        try:
            # document by document: equal immutable values of different documents may or may not be one object
            return ("ok", [pickle.dumps(doc) for doc in yaml_loader.load_all(path, n, min_bytes=0)])
        except Exception as exc:  # noqa: BLE001
            return ("error", type(exc).__name__, str(exc))
    return load(processes), load(1)


@pytest.mark.parametrize("processes", [2, 3, 4, 8])
def test_parts_parse_to_the_same_documents(tmp_path, processes, monkeypatch):
    path = tmp_path / "m.yaml"
    path.write_text(MANY)
    cuts = yaml_loader._cuts(path, processes)
    assert len(cuts) == processes - 1, "a cut near every part's start"
    data = path.read_bytes()
    assert all(data[c - 1:c + 4] in (b"\n--- ", b"\n---\n") for c in cuts)
    ours, serial = parallel_and_serial(tmp_path, MANY, processes)
    assert ours == serial and ours[0] == "ok"
    forked = []
    fork = yaml_loader.posix.fork
    monkeypatch.setattr(yaml_loader.posix, "fork", lambda: forked.append(fork()) or forked[-1])
    docs = list(yaml_loader.load_all(path, processes, min_bytes=0))
    assert [d["metadata"]["name"] for d in docs] == [f"d{i}" for i in range(60)]
    assert docs[59]["spec"]["alias"] is docs[59]["spec"]["anchor"]
    assert len(forked) == processes - 1
    for pid in forked:  # every child reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("broken, where", [("spec: [unclosed\n", 50), ("%YAML 1.1\n", 30), ("\tkey: tab\n", 45)])
def test_a_part_that_fails_fails_as_the_whole_file_does(tmp_path, broken, where):
    """A syntax error in a later part, or a directive cut off from its document, gives what the whole file
    gives: the same error (same line) or, for the directive, the same documents."""
    docs = MANY.split("---\n")
    text = "---\n".join(docs[:where] + [docs[where] + broken] + docs[where + 1:])
    for processes in (2, 4):
        ours, serial = parallel_and_serial(tmp_path, text, processes)
        assert ours == serial


def test_small_files_and_one_process_do_not_fork(tmp_path, monkeypatch):
    path = tmp_path / "m.yaml"
    path.write_text(MANY)
    monkeypatch.setattr(yaml_loader.posix, "fork", lambda: pytest.fail("forked"))
    assert len(list(yaml_loader.load_all(path, 4))) == 60  # under PARALLEL_MIN_BYTES
    assert len(list(yaml_loader.load_all(path, 1, min_bytes=0))) == 60


@settings(max_examples=60, deadline=None)
@given(st.lists(values, min_size=1, max_size=12), st.integers(2, 4), st.sampled_from([None, False]))
def test_generated_streams_parse_the_same_in_parts(tmp_path_factory, docs, processes, flow):
    text = yaml.dump_all(docs, explicit_start=True, default_flow_style=flow)
    ours, serial = parallel_and_serial(tmp_path_factory.mktemp("p"), text, processes)
    assert ours == serial


def test_a_directive_cut_off_from_its_document_still_loads(tmp_path):
    text = "---\na: " + "x" * 1000 + "\n...\n%YAML 1.1\n---\nb: " + "y" * 1000 + "\n"
    path = tmp_path / "m.yaml"
    path.write_text(text)
    (cut,) = yaml_loader._cuts(path, 2)
    assert text[:cut].endswith("%YAML 1.1\n"), "the first part ends with the directive and fails alone"
    assert list(yaml_loader.load_all(path, 2, min_bytes=0)) == [{"a": "x" * 1000}, {"b": "y" * 1000}]


def test_parts_parse_in_a_gevent_patched_master(tmp_path):
    """tokenbridge serve patches the standard library for gevent workers before its master loads: os.fork,
    os.waitpid and os.close are then gevent's, and wait for a hub loop the master does not run."""
    import subprocess
    import sys

    path = tmp_path / "m.yaml"
    path.write_text(MANY)
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import gevent; gevent.get_hub()  # as in the master: a hub exists, its loop does not run\n"
            "import os, sys\nfrom pathlib import Path\n"
            "from tokenbridge_exchange.sources import yaml_loader\n"
            "assert yaml_loader.os.fork.__module__.startswith('gevent'), yaml_loader.os.fork.__module__\n"
            "docs = list(yaml_loader.load_all(Path(sys.argv[1]), 3, min_bytes=0))\n"
            "print(len(docs), docs[-1]['metadata']['name'])\n")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["60", "d59"]
