"""A local OpenID provider over HTTPS for bench/kid_storm.py: discovery and JWKS only, one RS256 key, every request
path recorded so JWKS fetches are counted where they arrive (the bench's own, not the tests' IdP)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa


class HttpsIdP:
    """Serves ``/.well-known/openid-configuration`` and ``/keys`` on 127.0.0.1 (certificate for ``localhost``)."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "bench-key-1"
        self.paths: list[str] = []  # of every request received, in order
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> HttpsIdP:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                idp.paths.append(self.path)
                body = {"/.well-known/openid-configuration": idp.document, "/keys": idp.jwks}.get(self.path)
                data = json.dumps(body() if body else {"error": "not_found"}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.issuer = f"https://localhost:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, args=(0.05,), name="bench-idp", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def well_known_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/keys",
            "token_endpoint": self.issuer + "/token",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def jwks_fetches(self) -> int:
        return self.paths.count("/keys")

    def mint(self, claims: dict[str, Any], *, kid: str | None = None, lifetime: int = 900) -> str:
        """A token signed with the IdP's key; ``kid`` another than the published one makes an unknown-kid token."""
        now = int(time.time())
        return jwt.encode(
            {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + lifetime, **claims},
            self.key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )
