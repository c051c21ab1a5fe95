"""The JWT segment parser's guards in isolation: depth cap, canonical base64url, strict UTF-8, unique members."""

from __future__ import annotations

import base64
import json

import pytest

from tokenbridge_exchange import assertions
from tokenbridge_exchange.errors import InvalidGrant


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text, deep",
    [
        ('{"a":' + "[" * 63 + "]" * 63 + "}", False),  # 64 levels, the object included
        ('{"a":' + "[" * 64 + "]" * 64 + "}", True),
        ('{"a":' + "[" * 64, True),  # unclosed counts as it opens
        ('{"a":' + ",".join(["[[{}]]"] * 100) + "}", False),  # many brackets, little depth
        ('{"a":"' + "[" * 500 + '"}', False),  # inside a string
        ('{"a":"\\"' + "[" * 500 + '"}', False),  # after an escaped quote, still inside the string
        ('{"a":"\\\\",' + '"b":' + "[" * 70 + "]" * 70 + "}", True),  # an escaped backslash ends before the quote
        ('{"a":"' + "[" * 500, True),  # an unterminated string is not a string: counted (and not JSON anyway)
        ('{"\u00e9\u4e2d":"\u00e9' + "[" * 100 + '\u4e2d"}', False),  # multi-byte UTF-8 around and in strings
        ('{"\u00e9\u4e2d":' + "[" * 70 + "]" * 70 + "}", True),
    ],
)
def test_too_deep(text, deep):
    assert assertions.too_deep(text.encode()) is deep


def test_too_deep_agrees_with_json_about_what_parses():
    """Below the cap json.loads parses without recursing anywhere near the limit."""
    text = '{"a":' + "[" * 63 + '"]]]"' + "]" * 63 + "}"
    assert not assertions.too_deep(text.encode())
    assert json.loads(text)["a"]


@pytest.mark.parametrize("segment", ["ab+/", "ab-_=", "YR", "YQ=", "Y Q", "é"])
def test_non_canonical_or_invalid_base64url_is_refused(segment):
    with pytest.raises(InvalidGrant):
        assertions._b64decode(segment, "payload")


def test_canonical_base64url_round_trips():
    for data in (b"", b"a", b"ab", b"abc", bytes(range(256))):
        assert assertions._b64decode(b64url(data), "payload") == data


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"a":1,"a":1}', "repeats a JSON member name"),
        (b'{"a":{"b":1,"b":2}}', "repeats a JSON member name"),
        ('{"a":1}'.encode("utf-16"), "not UTF-8"),
        ('{"a":1}'.encode("utf-8-sig"), "not JSON"),
        (b'{"a":"\xed\xa0\x80"}', "not UTF-8"),  # an encoded surrogate
        (b'{"a":NaN}', "not JSON"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "levels deep"),
    ],
)
def test_segments_that_are_refused(raw, reason):
    with pytest.raises(InvalidGrant, match=reason):
        assertions._json_object(b64url(raw), "payload")


def test_escaped_lone_surrogates_and_distinct_members_parse():
    assert assertions._json_object(b64url(b'{"a":"\\ud800","A":1}'), "payload") == {"a": "\ud800", "A": 1}
