"""Manifest YAML: PyYAML's safe loader (libyaml's parser when PyYAML has it), with less Python per node.

A large configuration spends most of its load in PyYAML's Python code, not in libyaml: resolving the tag of every
scalar (a list concatenation and regular expressions per value) and constructing every node through the
constructor's generic, generator-based machinery. :class:`ManifestLoader` keeps PyYAML's parser, tags and scalar
constructors, so the result is the same Python data as ``yaml.safe_load_all`` gives (YAML 1.1 as kubectl reads it:
``yes`` is a boolean, ``0777`` octal, timestamps are datetimes), and only takes a shorter path for what manifests
are made of: plain maps, sequences and scalars, aliases included. A document with anything else (merge keys
``<<``, ``!!set`` and other explicit collection tags, unhashable keys, recursive aliases) is constructed by
PyYAML's own code, errors included.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

STR, MAP, SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
# scalar tags whose constructors are plain functions of the node (the collection ones are generators)
_SCALAR_CONSTRUCTORS = {tag: BaseLoader.yaml_constructors[tag] for tag in (
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:binary", "tag:yaml.org,2002:timestamp")}
_KEY_TAGS_LEFT_TO_PYYAML = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")
_REMEMBERED_LENGTH = 64  # plain scalars this short are resolved once per load (keys, enums repeat; keys do not)
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
