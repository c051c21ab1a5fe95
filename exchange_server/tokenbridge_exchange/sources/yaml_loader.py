"""Manifest YAML: PyYAML's safe loader (libyaml's parser when PyYAML has it), with less Python per node.

A large configuration spends most of its load in PyYAML's Python code, not in libyaml: resolving the tag of every
scalar (a list concatenation and regular expressions per value) and constructing every node through the
constructor's generic, generator-based machinery. :class:`ManifestLoader` keeps PyYAML's parser, tags and scalar
constructors, so the result is the same Python data as ``yaml.safe_load_all`` gives (YAML 1.1 as kubectl reads it:
``yes`` is a boolean, ``0777`` octal, timestamps are datetimes), and only takes a shorter path for what manifests
are made of: plain maps, sequences and scalars, aliases included. A document with anything else (merge keys
``<<``, ``!!set`` and other explicit collection tags, unhashable keys, recursive aliases) is constructed by
PyYAML's own code, errors included.

:func:`load_all` can also parse a large file on several cores at once (the gunicorn master's first load).
"""
from __future__ import annotations

import os
import pickle
import posix
import re
from pathlib import Path
from typing import Any, Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

STR, MAP, SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
# scalar tags whose constructors are plain functions of the node (the collection ones are generators)
_SCALAR_CONSTRUCTORS = {tag: BaseLoader.yaml_constructors[tag] for tag in (
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:binary", "tag:yaml.org,2002:timestamp")}
_KEY_TAGS_LEFT_TO_PYYAML = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_REMEMBERED_LENGTH = 64  # plain scalars this short are resolved once per load: map keys and enum-like values repeat,
#                          long ones (key material, secrets) hardly ever do
_BUSY = object()


class _LeftToPyYAML(Exception):
    """The document holds something only PyYAML's own constructor handles."""


class ManifestLoader(BaseLoader):  # type: ignore[misc, valid-type]
    def __init__(self, stream: Any):
        super().__init__(stream)
        wildcard = tuple(self.yaml_implicit_resolvers.get(None, []))
        self._resolvers = {first: tuple(resolvers) + wildcard
                           for first, resolvers in self.yaml_implicit_resolvers.items() if first is not None}
        self._wildcard = wildcard
        self._resolved: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        """``Resolver.resolve`` for loaders without path resolvers (SafeLoader has none), remembering short
        values: called by the parser for every node of the file."""
        if self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        if kind is ScalarNode:
            if not implicit[0]:  # quoted, or the non-specific tag "!"
                return STR
            tag = self._resolved.get(value)
            if tag is None:
                tag = STR
                for candidate, regexp in self._resolvers.get(value[:1], self._wildcard):
                    if regexp.match(value):
                        tag = candidate
                        break
                if len(value) <= _REMEMBERED_LENGTH:
                    self._resolved[value] = tag
            return tag
        return SEQ if kind is SequenceNode else MAP

    def construct_document(self, node: Node) -> Any:
        try:
            return self._construct(node, {})
        except _LeftToPyYAML:
            return super().construct_document(node)

    def _construct(self, node: Node, made: dict[int, Any]) -> Any:
        kind = node.__class__
        if kind is ScalarNode:
            if node.tag == STR:
                return node.value
            constructor = _SCALAR_CONSTRUCTORS.get(node.tag)
            if constructor is None:
                raise _LeftToPyYAML
            return constructor(self, node)
        # an alias is the same node again: the same object, as PyYAML makes it
        done = made.get(id(node))
        if done is not None:
            if done is _BUSY:  # a collection inside itself
                raise _LeftToPyYAML
            return done
        made[id(node)] = _BUSY
        construct = self._construct
        value: Any
        if kind is MappingNode and node.tag == MAP:
            value = {}
            for key_node, value_node in node.value:
                if key_node.__class__ is ScalarNode and key_node.tag == STR:
                    key = key_node.value
                elif key_node.tag in _KEY_TAGS_LEFT_TO_PYYAML:
                    raise _LeftToPyYAML
                else:
                    key = construct(key_node, made)
                try:
                    value[key] = construct(value_node, made)
                except TypeError:  # an unhashable key: PyYAML's error says where
                    raise _LeftToPyYAML from None
        elif kind is SequenceNode and node.tag == SEQ:
            value = [construct(item, made) for item in node.value]
        else:
            raise _LeftToPyYAML
        made[id(node)] = value
        return value


# A line starting "---" and a blank always starts a document: libyaml checks for it at column 0 before anything else,
# ends a plain or block scalar there (block scalar lines are indented) and refuses it inside a quoted one.
_DOCUMENT_START = re.compile(rb"\n---(?=[ \t\r\n])")
PARALLEL_MIN_BYTES = 4 << 20  # below this, forking costs more than it saves
_WINDOW = 1 << 20


def load_all(path: Path, processes: int = 1, *, min_bytes: int = PARALLEL_MIN_BYTES) -> Iterator[Any]:
    """The documents of a YAML file, in order, one at a time.

    With ``processes`` > 1 and a large file, the file is cut at document starts and the parts are parsed at the
    same time, all but the first in forked children, each part parsed as it would be within the whole file.
    Documents are handed out only once every part parsed; should any part fail, the whole file is parsed again
    in one piece, so a bad file fails exactly as it does without cutting. Fork only where no thread runs (the
    master before gunicorn starts): children must not inherit a lock someone holds.
    """
    cuts = _cuts(path, processes) if processes > 1 and path.stat().st_size >= min_bytes else []
    if cuts:
        frames = _parse_parts(path, [0, *cuts, path.stat().st_size])
        if frames is not None:
            for frame in _drain_frames(frames):
                yield pickle.loads(frame)
            return
    with open(path, "rb") as stream:  # bytes: libyaml detects UTF-8/UTF-16 itself, as kubectl's decoder does
        yield from yaml.load_all(stream, Loader=ManifestLoader)


def _cuts(path: Path, parts: int) -> list[int]:
    """Offsets of document starts near each ``1/parts`` of the file."""
    size = path.stat().st_size
    cuts: list[int] = []
    with open(path, "rb") as f:
        for k in range(1, parts):
            start = max(size * k // parts - 1, cuts[-1] if cuts else 0)
            while start < size:
                f.seek(start)
                window = f.read(_WINDOW + 4)
                found = _DOCUMENT_START.search(window)
                if found:
                    cuts.append(start + found.start() + 1)
                    break
                start += _WINDOW
    return sorted(set(cuts))


def _frames(data: bytes) -> list[bytes]:
    return [pickle.dumps(doc, pickle.HIGHEST_PROTOCOL) for doc in yaml.load_all(data, Loader=ManifestLoader)]


def _read_part(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _parse_parts(path: Path, bounds: list[int]) -> list[list[bytes]] | None:
    """Each part's documents as pickles; None when any part failed (the caller parses the file whole).

    Processes and pipes are handled with :mod:`posix`'s functions, not :mod:`os`'s: with gevent workers (the
    default) the master runs patched, and gevent's ``os.fork``, ``os.waitpid`` and ``os.close`` wait for its hub's
    loop, which the master never runs (a pipe's close was deferred forever, so its reader never saw the end)."""
    children = []
    parts: list[list[bytes]] | None = []
    for start, end in zip(bounds[1:-1], bounds[2:]):
        read_end, write_end = posix.pipe()
        try:
            pid = posix.fork()
        except OSError:  # no more processes: parse whole, once the children started are reaped
            posix.close(read_end)
            posix.close(write_end)
            parts = None
            break
        if pid == 0:  # the child: parse, send, leave without running the parent's exit handlers
            status = 1
            try:
                posix.close(read_end)
                payload = pickle.dumps(_frames(_read_part(path, start, end)), pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_end, "wb") as out:
                    out.write(payload)
                status = 0
            finally:
                os._exit(status)
        posix.close(write_end)
        children.append((pid, read_end))
    try:
        if parts is not None:
            parts.append(_frames(_read_part(path, bounds[0], bounds[1])))
    except Exception:  # noqa: BLE001 - the whole file is parsed again, and fails there as it always would
        parts = None
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as stream:
            payload = stream.read()
        _, status = posix.waitpid(pid, 0)
        if parts is not None:
            if status != 0:
                parts = None
            else:
                parts.append(pickle.loads(payload))
    return parts


def _drain_frames(parts: list[list[bytes]]) -> Iterator[bytes]:
    """Every frame in order, each let go as it is handed out."""
    for frames in parts:
        for index in range(len(frames)):
            frame, frames[index] = frames[index], b""
            yield frame
        frames.clear()
