"""The token service: turns credentials into principals, and principals into registry tokens."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from registry.auth import roles
from registry.auth.entra import EntraValidator, InvalidEntraToken
from registry.auth.passwords import verify_password
from registry.auth.roles import Principal
from registry.auth.tokens import REFRESH, InvalidToken, TokenIssuer
from registry.oci.scope import Scope
from registry.settings import Settings
from registry.storage.access_store import AccessStore

# ACR's convention: this user name means "the password is a token".
TOKEN_USER = "00000000-0000-0000-0000-000000000000"
# Successful scoped-token password checks are remembered briefly: scrypt is slow on purpose.
PASSWORD_CACHE_SECONDS = 60


class AuthenticationFailed(Exception):
    pass


@dataclass(frozen=True)
class IssuedToken:
    token: str
    scopes: list[Scope]
    expires_in: int


class TokenService:
    def __init__(self, settings: Settings, issuer: TokenIssuer, access: AccessStore,
                 entra: EntraValidator | None):
        self._settings = settings
        self._issuer = issuer
        self._access = access
        self._entra = entra
        self._password_cache: dict[tuple[str, str], float] = {}

    def anonymous(self) -> Principal:
        return roles.anonymous(self._settings.anonymous_pull)

    async def from_password(self, username: str, password: str, service: str) -> Principal:
        if username == TOKEN_USER:
            return await self.from_token(password, service)
        admin_user, admin_password = self._settings.admin_user, self._settings.admin_password
        if admin_user and admin_password and hmac.compare_digest(username, admin_user):
            if hmac.compare_digest(password.encode(), admin_password.encode()):
                return roles.admin(admin_user)
            raise AuthenticationFailed("invalid username or password")
        token = await self._access.get_token(username)
        if token is None or not token.usable() or not self._password_ok(username, password, token.password_hash):
            raise AuthenticationFailed("invalid username or password")
        return roles.from_scope_map(token.name, token.scope_map)

    def _password_ok(self, username: str, password: str, stored: str) -> bool:
        key = (username, hashlib.sha256(f"{stored}\0{password}".encode()).hexdigest())
        now = time.monotonic()
        if self._password_cache.get(key, 0) > now:
            return True
        if not verify_password(password, stored):
            return False
        if len(self._password_cache) > 1000:
            self._password_cache.clear()
        self._password_cache[key] = now + PASSWORD_CACHE_SECONDS
        return True

    async def from_token(self, token: str, service: str) -> Principal:
        """A Berth refresh token, or else an Entra ID access token."""
        try:
            return await self.from_refresh_token(token, service)
        except AuthenticationFailed:
            pass
        return await self.from_entra_token(token)

    async def from_refresh_token(self, token: str, service: str) -> Principal:
        try:
            claims = self._issuer.verify(token, REFRESH, service)
        except InvalidToken as error:
            raise AuthenticationFailed(f"invalid refresh token: {error}") from None
        kind, subject = claims.get("kind"), claims["sub"]
        if kind == "admin":
            if subject != self._settings.admin_user:
                raise AuthenticationFailed("the admin user is disabled")
            return roles.admin(subject)
        if kind == "token":
            scoped = await self._access.get_token(subject)
            if scoped is None or not scoped.usable():
                raise AuthenticationFailed("the token was revoked or has expired")
            return roles.from_scope_map(scoped.name, scoped.scope_map)
        if kind == "entra":
            assignments = await self._access.role_assignments(subject)
            return roles.from_roles("entra", subject, claims.get("roles") or [], assignments)
        raise AuthenticationFailed("refresh token of an unknown kind")

    async def from_entra_token(self, token: str) -> Principal:
        if self._entra is None:
            raise AuthenticationFailed("Entra ID sign-in is not configured (BERTH_ENTRA_TENANT_ID)")
        try:
            identity = await self._entra.validate(token)
        except InvalidEntraToken as error:
            raise AuthenticationFailed(f"invalid Entra ID token: {error}") from None
        assignments = await self._access.role_assignments(identity.object_id)
        return roles.from_roles("entra", identity.object_id, identity.roles, assignments)

    def access_token(self, service: str, principal: Principal, requested: list[Scope]) -> IssuedToken:
        granted = principal.grant(requested)
        token = self._issuer.issue_access(service, principal.subject, granted)
        return IssuedToken(token, granted, self._issuer.access_ttl)

    def refresh_token(self, service: str, principal: Principal) -> str:
        if principal.kind == "anonymous":
            raise AuthenticationFailed("anonymous callers get no refresh token")
        claims: dict[str, object] = {"kind": principal.kind}
        if principal.kind == "entra":
            claims["roles"] = list(principal.app_roles)
        return self._issuer.issue_refresh(service, principal.id, claims)
