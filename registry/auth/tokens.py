"""Registry access and refresh tokens: short-lived HS256 JWTs signed with the shared keys.

Several keys may be accepted at once; the first signs, and each token names its key (`kid`),
so a key rotates without a cliff: add the new key after the old one, then put it first, then
retire the old one once every token it signed has expired.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from registry.oci.scope import Scope

ALGORITHM = "HS256"
REFRESH = "refresh"
ACCESS = "access"
# Instances' clocks may differ this much: iat, nbf and exp are checked with this leeway.
CLOCK_SKEW_SECONDS = 30


class InvalidToken(Exception):
    pass


def key_id(key: bytes) -> str:
    """A key's public name (not a secret: a hash prefix)."""
    return hashlib.sha256(b"berth-kid\0" + key).hexdigest()[:12]


@dataclass(frozen=True)
class TokenIssuer:
    """Every instance shares `keys`, so any of them accepts a token another one issued."""

    keys: tuple[bytes, ...]
    access_ttl: int
    refresh_ttl: int

    def _encode(self, service: str, subject: str, ttl: int, claims: dict[str, Any]) -> str:
        now = int(time.time())
        payload = {
            "iss": service,
            "aud": service,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
            **claims,
        }
        return jwt.encode(payload, self.keys[0], algorithm=ALGORITHM, headers={"kid": key_id(self.keys[0])})

    def issue_access(self, service: str, subject: str, scopes: list[Scope]) -> str:
        claims = {"typ": ACCESS, "access": [s.claim() for s in scopes]}
        return self._encode(service, subject, self.access_ttl, claims)

    def issue_refresh(self, service: str, subject: str, claims: dict[str, Any], ttl: int | None = None) -> str:
        lifetime = self.refresh_ttl if ttl is None else min(ttl, self.refresh_ttl)
        return self._encode(service, subject, lifetime, {"typ": REFRESH, **claims})

    def _key_for(self, token: str) -> bytes:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        if kid is None:
            return self.keys[0]  # tokens from before keys had names were signed by the one key
        for key in self.keys:
            if hmac.compare_digest(key_id(key), str(kid)):
                return key
        raise InvalidToken("signed with a key this registry no longer accepts")

    def verify(self, token: str, kind: str, service: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=[ALGORITHM],
                audience=service,
                issuer=service,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        if claims.get("typ") != kind:
            raise InvalidToken(f"not a {kind} token")
        return claims

    def fingerprint(self, secret: str) -> list[str]:
        """What a refresh token records of the credential it was issued for, under each key:
        a changed credential no longer matches. Keyed, so the token does not expose it."""
        return [hmac.new(key, b"berth-credential\0" + secret.encode(), hashlib.sha256).hexdigest()[:32]
                for key in self.keys]

    @staticmethod
    def access_scopes(claims: dict[str, Any]) -> tuple[Scope, ...]:
        scopes = []
        for entry in claims.get("access") or []:
            try:
                scopes.append(Scope(str(entry["type"]), str(entry["name"]), frozenset(entry["actions"])))
            except (KeyError, TypeError):
                raise InvalidToken("malformed access claim") from None
        return tuple(scopes)
