"""The floor: the least a token exchange endpoint can do in Python, to measure Tokenbridge against.

A bare Falcon handler that reads the form, verifies the subject token with PyJWT (RS256, one key, ``iss``/``aud``/
``exp`` checked) and signs an ES256 token with PyJWT — no client authentication, no configuration lookup, no
metrics, no error mapping. It runs under the very gunicorn settings ``tokenbridge serve`` uses: the server class
of :mod:`tokenbridge_exchange.gunicorn_app` with only its ``load()`` replaced, and the same default worker class.
Its master builds nothing the workers inherit but the signing key, so gevent's patching by gunicorn's worker (after
the fork) is enough here.

    python bench/floor_app.py --bind 127.0.0.1:9001 --verify-key floor.json [--workers 2] [--threads 8]
                              [--worker-class gevent|gthread|sync]

``floor.json`` holds ``{"issuer": ..., "audience": ..., "jwk": <public RSA JWK>}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from urllib.parse import parse_qs

import falcon
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "http://floor.bench"


class FloorToken:
    def __init__(self, verify_key, subject_issuer: str, subject_audience: str, signing_key, kid: str):
        self._verify_key, self._iss, self._aud = verify_key, subject_issuer, subject_audience
        self._signing_key, self._kid = signing_key, kid

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = parse_qs(req.bounded_stream.read().decode())
        try:
            claims = jwt.decode(
                form["subject_token"][0], self._verify_key, algorithms=["RS256"], audience=self._aud, issuer=self._iss
            )
        except (KeyError, jwt.PyJWTError) as exc:
            resp.status = falcon.HTTP_400
            resp.media = {"error": "invalid_grant", "error_description": str(exc)}
            return
        now = int(time.time())
        audience = form.get("audience", ["api://default"])[0]
        token = jwt.encode(
            {
                "iss": ISSUER,
                "sub": claims["sub"],
                "aud": audience,
                "iat": now,
                "exp": now + 900,
                "jti": uuid.uuid4().hex,
            },
            self._signing_key,
            algorithm="ES256",
            headers={"kid": self._kid, "typ": "at+jwt"},
        )
        resp.media = {
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 900,
        }


class Ready:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ready"}


def create_app(verify_jwk: dict, subject_issuer: str, subject_audience: str, signing_key=None) -> falcon.App:
    verify_key = jwt.get_algorithm_by_name("RS256").from_jwk(json.dumps(verify_jwk))
    signing_key = signing_key or ec.generate_private_key(ec.SECP256R1())
    app = falcon.App()
    app.add_route("/oauth2/token", FloorToken(verify_key, subject_issuer, subject_audience, signing_key, "floor-1"))
    app.add_route("/readyz", Ready())
    return app


def main(argv: list[str]) -> int:
    from tokenbridge_exchange.config import WORKER_CLASSES, ServerConfig
    from tokenbridge_exchange.gunicorn_app import Server
    from tokenbridge_exchange.telemetry import Telemetry

    p = argparse.ArgumentParser(prog="floor_app")
    p.add_argument("--bind", required=True)
    p.add_argument("--verify-key", required=True, help="JSON file: issuer, audience, jwk")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--worker-class", default=ServerConfig.worker_class, choices=WORKER_CLASSES)
    args = p.parse_args(argv)
    with open(args.verify_key) as f:
        spec = json.load(f)
    signing_key = ec.generate_private_key(ec.SECP256R1())  # before forking: every worker signs with it

    class FloorServer(Server):  # tokenbridge serve's gunicorn settings, the floor's app
        def load(self) -> falcon.App:
            return create_app(spec["jwk"], spec["issuer"], spec["audience"], signing_key)

    config = ServerConfig(
        issuer=ISSUER, bind=args.bind, workers=args.workers, threads=args.threads, worker_class=args.worker_class
    )
    FloorServer(config, None, None, telemetry=Telemetry()).run()  # nothing emits: the floor has no source
    return 0


if __name__ == "__main__":
    sys.argv[0] = "floor_app"
    sys.exit(main(sys.argv[1:]))
