"""Registry access and refresh tokens: short-lived HS256 JWTs signed with the shared key."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from registry.oci.scope import Scope

ALGORITHM = "HS256"
REFRESH = "refresh"
ACCESS = "access"


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class TokenIssuer:
    """Every instance shares `key`, so any of them accepts a token another one issued."""

    key: bytes
    access_ttl: int
    refresh_ttl: int

    def _encode(self, service: str, subject: str, ttl: int, claims: dict[str, Any]) -> str:
        now = int(time.time())
        payload = {
            "iss": service,
            "aud": service,
            "sub": subject,
            "iat": now,
            "nbf": now - 30,  # tolerate clock skew between instances
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm=ALGORITHM)

    def issue_access(self, service: str, subject: str, scopes: list[Scope]) -> str:
        claims = {"typ": ACCESS, "access": [s.claim() for s in scopes]}
        return self._encode(service, subject, self.access_ttl, claims)

    def issue_refresh(self, service: str, subject: str, claims: dict[str, Any]) -> str:
        return self._encode(service, subject, self.refresh_ttl, {"typ": REFRESH, **claims})

    def verify(self, token: str, kind: str, service: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=service,
                issuer=service,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        if claims.get("typ") != kind:
            raise InvalidToken(f"not a {kind} token")
        return claims

    @staticmethod
    def access_scopes(claims: dict[str, Any]) -> tuple[Scope, ...]:
        scopes = []
        for entry in claims.get("access") or []:
            try:
                scopes.append(Scope(str(entry["type"]), str(entry["name"]), frozenset(entry["actions"])))
            except (KeyError, TypeError):
                raise InvalidToken("malformed access claim") from None
        return tuple(scopes)
