"""Validation of Entra ID access tokens (managed identities, users, service principals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWKClient


class InvalidEntraToken(Exception):
    pass


@dataclass(frozen=True)
class EntraIdentity:
    object_id: str
    tenant_id: str
    roles: tuple[str, ...]


class EntraValidator:
    """RS256 against the tenant's JWKS (cached; refetched when an unknown key id appears),
    exact issuer (v1 or v2 form), audience and lifetime; identity = oid within tid.
    """

    def __init__(self, tenant_id: str, audiences: list[str], jwks_url: str, authority_host: str, cooldown: float):
        self.tenant_id = tenant_id
        self.audiences = audiences
        self.issuers = [
            f"https://sts.windows.net/{tenant_id}/",
            f"https://{authority_host}/{tenant_id}/v2.0",
        ]
        self._jwks = PyJWKClient(jwks_url, cache_keys=True, lifespan=3600, timeout=10, cooldown_duration=cooldown)

    def _validate(self, token: str) -> EntraIdentity:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audiences,
                issuer=self.issuers,
                options={"require": ["exp", "iss", "aud"]},
                leeway=60,
            )
        except jwt.PyJWTError as error:
            raise InvalidEntraToken(str(error)) from None
        object_id, tenant = claims.get("oid"), claims.get("tid")
        if not isinstance(object_id, str) or not object_id:
            raise InvalidEntraToken("token has no oid claim")
        if tenant != self.tenant_id:
            raise InvalidEntraToken("token is from another tenant")
        roles = claims.get("roles") or []
        return EntraIdentity(object_id, tenant, tuple(r for r in roles if isinstance(r, str)))

    async def validate(self, token: str) -> EntraIdentity:
        # The JWKS client may fetch keys over the network; keep that off the event loop.
        return await asyncio.to_thread(self._validate, token)
