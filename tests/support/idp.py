"""A local OpenID provider over real HTTPS, shaped like Okta, Microsoft Entra ID, Auth0 or a generic OIDC IdP.

Shared by the operator and exchange-server tests. The certificate comes from a ``trustme`` CA and names
``hostnames`` (default ``localhost`` and ``127.0.0.1``; URLs use the first); fetchers need ``.ca_pem`` (e.g. as
``tls.caBundle``) and an allow-list containing ``127.0.0.0/8,::1/128`` to reach it. The server listens on
127.0.0.1. Usage::

    with LocalIdP(kind="okta") as idp:
        idp.well_known_url   # https://localhost:PORT/oauth2/default/.well-known/openid-configuration
        token = idp.mint({"sub": "alice", "aud": "api://tb"})   # iss/iat/exp filled in, signed with the current key
        idp.rotate()          # publish a new key and sign with it from now on
        idp.fail(503)         # every request answers 503; idp.fail(None) drops connections; idp.recover()

Kinds (document ``issuer`` → what tokens carry):

- ``oidc``: ``https://localhost:PORT{issuer_path}`` (default path empty)
- ``okta``: custom authorization server ``.../oauth2/default`` (``issuer_path`` overrides ``/oauth2/default``)
- ``auth0``: ``https://localhost:PORT/`` (trailing slash); discovery also lists HS256, as Auth0's does
- ``entra``: multi-tenant v2 ``.../common/v2.0`` whose issuer is ``.../{tenantid}/v2.0``; tokens carry the tenant
  in ``iss`` and ``tid`` (``mint(..., tenant=...)``)
- ``entra-v1``: multi-tenant v1 ``.../common`` whose issuer is ``https://sts.windows.net/{tenantid}/``
"""
from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

KINDS = ("oidc", "okta", "auth0", "entra", "entra-v1")
DEFAULT_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class LocalIdP:
    """An HTTPS IdP on 127.0.0.1 serving discovery, JWKS and arbitrary extra JSON routes; mints tokens."""

    def __init__(self, kind: str = "oidc", *, issuer_path: str | None = None, alg: str = "RS256",
                 ca: trustme.CA | None = None, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.alg = alg
        self.ca = ca or trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.hostname = hostnames[0]
        self._cert = self.ca.issue_cert(*hostnames)
        self._issuer_path = issuer_path
        self._keys: list[tuple[str, Any]] = []
        self._failure: tuple[bool, int | None] = (False, None)
        self.routes: dict[str, tuple[int, Any, dict[str, str]]] = {}  # path -> (status, JSON or bytes, headers)
        self.document_overrides: dict[str, Any] = {}
        self.delay = 0.0  # seconds to wait before answering
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request received
        self._server: ThreadingHTTPServer | None = None
        self._port = 0  # kept after stop() so URLs stay printable
        self._thread: threading.Thread | None = None
        self.rotate()

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "LocalIdP":
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
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=f"LocalIdP-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "LocalIdP":
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
        default = {"oidc": "", "okta": "/oauth2/default", "auth0": "", "entra": "/common/v2.0", "entra-v1": "/common"}
        path = self._issuer_path if self._issuer_path is not None else default[self.kind]
        return self.base_url + path

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

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, private_key in self._keys:
            jwk = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(private_key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": self.alg})
        return {"keys": keys}

    @staticmethod
    def _path(url: str) -> str:
        return urlsplit(url).path or "/"

    # --- behaviour switches ----------------------------------------------------------------------------------
    def rotate(self, kid: str | None = None) -> str:
        """Publish a new key and sign with it from now on; older keys stay published. Returns its kid."""
        if self.alg.startswith("ES"):
            private_key = ec.generate_private_key(ec.SECP256R1())
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = kid or uuid.uuid4().hex[:16]
        self._keys.append((kid, private_key))
        return kid

    def fail(self, status: int | None = 503) -> None:
        """Answer every request with ``status``, or drop the connection without an answer when None."""
        self._failure = (True, status)

    def recover(self) -> None:
        self._failure = (False, None)

    # --- tokens ----------------------------------------------------------------------------------------------
    def token_issuer(self, tenant: str = DEFAULT_TENANT) -> str:
        """The ``iss`` a token of this IdP carries (Entra: the template filled with ``tenant``)."""
        return self.issuer.replace("{tenantid}", tenant)

    def mint(self, claims: dict[str, Any], *, kid: str | None = None, lifetime: int = 300,
             tenant: str = DEFAULT_TENANT, headers: dict[str, Any] | None = None) -> str:
        """A signed JWT; ``iss``, ``iat``, ``exp`` (and for Entra ``tid``) default to this IdP's values."""
        now = int(time.time())
        body = {"iss": self.token_issuer(tenant), "iat": now, "nbf": now, "exp": now + lifetime}
        if self.kind.startswith("entra"):
            body["tid"] = tenant
        body.update(claims)
        keys = dict(self._keys)
        kid = kid or self._keys[-1][0]
        return jwt.encode(body, keys[kid], algorithm=self.alg, headers={"kid": kid, **(headers or {})})
