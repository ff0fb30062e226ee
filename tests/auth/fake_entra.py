"""A stand-in for Entra ID's signing side: RSA keys, a JWKS served on loopback, token minting.

Only the issuing side is fake; Berth validates these tokens with its real code path.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://berth-registry"
APP_ID = "5a4d2a43-0d5c-4c77-9d2e-1b1c1a2f3e4d"


class FakeEntra:
    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: set[str] = set()
        self.add_key("key-1")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/keys":
                    self.send_error(404)
                    return
                body = json.dumps(owner.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/keys"

    def add_key(self, kid: str, publish: bool = True) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.add(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in sorted(self.published):
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(self, roles: list[str] | None = None, *, version: int = 2, kid: str = "key-1",
              object_id: str | None = None, **overrides: Any) -> str:
        now = int(time.time())
        issuer = (f"https://login.microsoftonline.com/{TENANT}/v2.0" if version == 2
                  else f"https://sts.windows.net/{TENANT}/")
        claims: dict[str, Any] = {
            "iss": issuer, "aud": AUDIENCE if version == 1 else APP_ID, "tid": TENANT,
            "oid": object_id or str(uuid.uuid4()), "sub": "subject", "iat": now, "nbf": now, "exp": now + 3600,
            "roles": roles or [], "ver": "1.0" if version == 1 else "2.0",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
