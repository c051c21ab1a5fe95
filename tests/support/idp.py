"""The tests' identity providers, and the compact JWS they sign with.

``IdP`` is an OIDC issuer whose keys the test generates (any asymmetric JOSE algorithm): its JWKS goes inline into
an IdentityProvider, and it signs tokens, valid ones or with any header and payload a test wants (``jws`` controls
every byte). ``HttpsIdP`` is the same issuer served over real HTTPS, for the code that discovers and fetches::

    idp = IdP("https://idp.example.test", "ES256")
    idp_object("corp", idp.issuer, jwks=idp.jwks())
    idp.token(sub="bob")                     # issued at NOW, the in-process tests' fixed time
    idp.mint({"sub": "bob", "aud": "api://tb"})   # issued at the wall clock, for servers running in real time
    idp.rotate()                             # publish a new key and sign with it from now on

    with HttpsIdP("okta") as okta:
        okta.well_known_url   # https://localhost:PORT/oauth2/default/.well-known/openid-configuration
        okta.fail(503)        # every request answers 503; okta.fail(None) drops connections; okta.recover()
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import trustme
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

NOW = 1_800_000_000.0  # the in-process tests' time: IdP.token() issues at it, the exchange server's Clock reads it
ALGORITHMS = get_default_algorithms()
DEFAULT_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"  # the tenant of minted tokens of a {tenantid} issuer


def b64url(data: bytes | str) -> str:
    data = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(part: Any) -> str:
    if isinstance(part, bytes):
        return b64url(part)
    if isinstance(part, str):  # already a segment (possibly malformed on purpose)
        return part
    return b64url(json.dumps(part, separators=(",", ":")))


def jws(
    header: Any, payload: Any, key: Any = None, alg: str | None = None, signature: bytes | str | None = None
) -> str:
    """A compact JWS. ``header``/``payload``: dict (JSON-encoded), bytes (base64url-encoded) or str (used as the
    segment verbatim). The signature is ``signature`` (bytes are encoded, str used verbatim) or made with ``key``
    under ``alg`` (default: the header's alg) over the exact signing input, so any header passes through."""
    h, p = _segment(header), _segment(payload)
    if signature is None:
        if key is None:
            signature = b""
        else:
            name = alg or header["alg"]
            signature = ALGORITHMS[name].sign(f"{h}.{p}".encode(), key)
    s = signature if isinstance(signature, str) else b64url(signature)
    return f"{h}.{p}.{s}"


def _private_key(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg.startswith("ES"):
        return ec.generate_private_key({"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


class IdP:
    """An OIDC issuer for the tests: keys it generates for ``alg``, their JWKS, and tokens signed with them."""

    def __init__(self, issuer: str = "https://idp.example.test", alg: str = "RS256"):
        self._issuer = issuer
        self.alg = alg
        self.keys: dict[str, Any] = {}  # kid -> private key, all published; ``kid`` signs
        self.rotate()

    @property
    def issuer(self) -> str:
        return self._issuer

    def rotate(self, kid: str | None = None) -> str:
        """Publish a new key and sign with it from now on; older keys stay published. Returns its kid."""
        self.kid = kid or uuid.uuid4().hex[:12]
        self.keys[self.kid] = _private_key(self.alg)
        return self.kid

    @property
    def key(self) -> Any:
        return self.keys[self.kid]

    @property
    def public_key(self) -> Any:
        return self.key.public_key()

    def public_jwk(self, kid: str | None = None) -> dict[str, Any]:
        kid = kid or self.kid
        jwk = json.loads(ALGORITHMS[self.alg].to_jwk(self.keys[kid].public_key()))
        return {**jwk, "kid": kid, "use": "sig", "alg": self.alg}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk(kid) for kid in self.keys]}

    def header(self, **overrides: Any) -> dict[str, Any]:
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": "api://tokenbridge",
            "iat": int(NOW) - 10,
            "exp": int(NOW) + 3600,
            **overrides,
        }
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, header: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        """A valid token issued at NOW (header and claims overridden as given, None removes one), signed with the
        current key, or with ``key`` under this IdP's kid (a forgery)."""
        return jws(self.header(**(header or {})), self.claims(**claims), key or self.key, self.alg)

    def sign(self, header: Any, payload: Any) -> str:
        """Sign arbitrary segments (dict/bytes/str, see :func:`jws`) with this IdP's current key."""
        return jws(header, payload, self.key, self.alg)

    def mint(self, claims: dict[str, Any], *, lifetime: int = 300) -> str:
        """A token issued now by the wall clock, with ``claims`` (``iss``, ``iat``, ``nbf`` and ``exp`` default to
        this IdP's; a ``{tenantid}`` issuer's tokens carry DEFAULT_TENANT in ``iss`` and ``tid``, as Entra's do)."""
        now = int(time.time())
        body = {"iss": self.issuer.replace("{tenantid}", DEFAULT_TENANT), "iat": now, "nbf": now, "exp": now + lifetime}
        if "{tenantid}" in self.issuer:
            body["tid"] = DEFAULT_TENANT
        return jws(self.header(), {**body, **claims}, self.key, self.alg)


KINDS = ("oidc", "okta", "auth0", "entra", "entra-v1")


class HttpsIdP(IdP):
    """An IdP serving discovery, JWKS and arbitrary extra JSON routes over HTTPS on 127.0.0.1, shaped like ``kind``
    (document ``issuer`` → what tokens carry):

    - ``oidc``: ``https://localhost:PORT``
    - ``okta``: custom authorization server ``.../oauth2/default``
    - ``auth0``: ``https://localhost:PORT/`` (trailing slash); discovery also lists HS256, as Auth0's does
    - ``entra``: multi-tenant v2 ``.../common/v2.0`` whose issuer is ``.../{tenantid}/v2.0``
    - ``entra-v1``: multi-tenant v1 ``.../common`` whose issuer is ``https://sts.windows.net/{tenantid}/``

    The certificate comes from a ``trustme`` CA and names ``hostnames`` (URLs use the first); fetchers need
    ``.ca_pem`` (e.g. as ``tls.caBundle``) and an allow-list containing ``127.0.0.0/8,::1/128`` to reach it.
    ``start()`` after ``stop()`` listens on the same port again, so its URLs stay valid across an outage.
    """

    def __init__(
        self,
        kind: str = "oidc",
        *,
        alg: str = "RS256",
        ca: trustme.CA | None = None,
        hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        super().__init__(None, alg)  # no fixed issuer: it is the served URL (the issuer property)
        self.kind = kind
        self.ca = ca or trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.hostname = hostnames[0]
        self._cert = self.ca.issue_cert(*hostnames)
        self._failure: tuple[bool, int | None] = (False, None)
        self.routes: dict[str, tuple[int, Any, dict[str, str]]] = {}  # path -> (status, JSON or bytes, headers)
        self.document_overrides: dict[str, Any] = {}
        self.delay = 0.0  # seconds to wait before answering
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request received
        self._server: ThreadingHTTPServer | None = None
        self._port = 0  # kept after stop(): URLs stay printable, and a restart listens there again
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> HttpsIdP:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                idp.requests.append((self.path, dict(self.headers)))
                time.sleep(idp.delay)
                failing, status = idp._failure
                if failing and status is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if failing:
                    return self._send(status, {"error": "temporarily_unavailable"}, {})
                if self.path in idp.routes:
                    return self._send(*idp.routes[self.path])
                if self.path == idp._path(idp.well_known_url):
                    return self._send(200, idp.document(), {})
                if self.path == idp._path(idp.jwks_uri):
                    return self._send(200, idp.jwks(), {})
                self._send(404, {"error": "not_found"}, {})

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for name, value in headers.items():
                    if value != "":
                        self.send_header(name, value)
                if "Content-Length" not in headers:  # a route may set it to "" to send no length at all
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"HttpsIdP-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HttpsIdP:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- URLs and documents ----------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._port, "start() the IdP first"
        return self._port

    @property
    def base_url(self) -> str:
        return f"https://{self.hostname}:{self.port}"

    @property
    def _root(self) -> str:
        """The issuer-like prefix under which this kind serves its endpoints."""
        path = {"oidc": "", "okta": "/oauth2/default", "auth0": "", "entra": "/common/v2.0", "entra-v1": "/common"}
        return self.base_url + path[self.kind]

    @property
    def issuer(self) -> str:
        """The ``issuer`` the discovery document states (a ``{tenantid}`` template for the Entra kinds)."""
        if self.kind == "auth0":
            return self._root + "/"
        if self.kind == "entra":
            return self._root.replace("/common/", "/{tenantid}/")
        if self.kind == "entra-v1":
            return "https://sts.windows.net/{tenantid}/"
        return self._root

    @property
    def well_known_url(self) -> str:
        return self._root + "/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        if self.kind == "okta":
            return self._root + "/v1/keys"
        if self.kind == "auth0":
            return self._root + "/.well-known/jwks.json"
        if self.kind == "entra":
            return self._root.replace("/v2.0", "/discovery/v2.0/keys")
        if self.kind == "entra-v1":
            return self._root + "/discovery/keys"
        return self._root + "/keys"

    @property
    def token_endpoint(self) -> str:
        if self.kind == "entra":
            return self._root.replace("/v2.0", "/oauth2/v2.0/token")
        suffix = {"okta": "/v1/token", "auth0": "/oauth/token", "entra-v1": "/oauth2/token"}.get(self.kind, "/token")
        return self._root + suffix

    def document(self) -> dict[str, Any]:
        algs = ["HS256", "RS256"] if self.kind == "auth0" else [self.alg]
        doc = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "authorization_endpoint": self._root + "/authorize",
            "response_types_supported": ["code", "id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        }
        doc.update(self.document_overrides)
        return {k: v for k, v in doc.items() if v is not None}

    @staticmethod
    def _path(url: str) -> str:
        return urlsplit(url).path or "/"

    # --- behaviour switches ----------------------------------------------------------------------------------
    def fail(self, status: int | None = 503) -> None:
        """Answer every request with ``status``, or drop the connection without an answer when None."""
        self._failure = (True, status)

    def recover(self) -> None:
        self._failure = (False, None)
