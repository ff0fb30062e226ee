"""The token service: turns credentials into principals, and principals into registry tokens."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from dataclasses import dataclass, replace

from registry.auth import roles
from registry.auth.entra import EntraValidator, InvalidEntraToken
from registry.auth.limits import FailureLimiter
from registry.auth.passwords import DECOY_HASH, hash_password, is_legacy, verify_password
from registry.auth.roles import Principal
from registry.auth.tokens import REFRESH, InvalidToken, TokenIssuer
from registry.oci.scope import Scope
from registry.settings import Settings
from registry.storage.access_store import AccessStore

# ACR's convention: this user name means "the password is a token".
TOKEN_USER = "00000000-0000-0000-0000-000000000000"
# What `tokens create` accepts as a name; anything else cannot be a scoped token's name.
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_PASSWORD_LENGTH = 16 * 1024  # refresh tokens and Entra tokens are passwords too


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
        self._limiter = FailureLimiter(access, settings.auth_failure_limit, settings.auth_failure_window_seconds)
        self._slow_hashes = asyncio.Semaphore(2)

    def anonymous(self) -> Principal:
        return roles.anonymous(self._settings.anonymous_pull)

    async def from_password(self, username: str, password: str, service: str, address: str) -> Principal:
        """The principal these credentials name; AuthenticationFailed (401) or, after too many
        failures for this name or address, TooManyFailures (429) whatever the password."""
        if len(password) > MAX_PASSWORD_LENGTH:
            raise AuthenticationFailed("invalid username or password")
        if username == TOKEN_USER:  # a refresh or Entra token: unguessable, so not limited
            return await self.from_token(password, service)
        async with self._limiter.attempt(username, address) as attempt:
            try:
                return await self._check_password(username, password)
            except AuthenticationFailed:
                attempt.failed = True
                raise

    async def _check_password(self, username: str, password: str) -> Principal:
        admin_user, admin_password = self._settings.admin_user, self._settings.admin_password
        if admin_user and admin_password and hmac.compare_digest(username.encode(), admin_user.encode()):
            if hmac.compare_digest(password.encode(), admin_password.encode()):
                return roles.admin(admin_user)
            raise AuthenticationFailed("invalid username or password")
        # An unknown or malformed name costs what a known one does, so timing tells nothing.
        token = await self._access.get_token(username) if TOKEN_NAME.fullmatch(username) else None
        stored = token.password_hash if token is not None else DECOY_HASH
        if is_legacy(stored):
            async with self._slow_hashes:  # a few at a time: each costs 16 MiB and tens of ms
                matches = await asyncio.to_thread(verify_password, password, stored)
        else:
            matches = verify_password(password, stored)
        if token is None or not matches or not token.usable():
            raise AuthenticationFailed("invalid username or password")
        generation = token.generation
        if is_legacy(stored) or not generation:
            # A token from before generations: replace the slow hash and start a generation
            # (refresh tokens issued before carry none and are refused).
            generation = await self._access.set_password(token, hash_password(password)) or generation
        return roles.from_scope_map(token.name, token.scope_map, generation)

    async def from_token(self, token: str, service: str) -> Principal:
        """A Berth refresh token, or else an Entra ID access token."""
        try:
            return await self.from_refresh_token(token, service)
        except AuthenticationFailed:
            pass
        return await self.from_entra_token(token)

    async def from_refresh_token(self, token: str, service: str) -> Principal:
        """The principal a refresh token was issued to, if the credential behind it still stands:
        the admin password it was issued under, or the scoped token's generation."""
        try:
            claims = self._issuer.verify(token, REFRESH, service)
        except InvalidToken as error:
            raise AuthenticationFailed(f"invalid refresh token: {error}") from None
        kind, subject = claims.get("kind"), claims["sub"]
        if kind == "admin":
            admin_password = self._settings.admin_password
            if subject != self._settings.admin_user or admin_password is None:
                raise AuthenticationFailed("the admin user is disabled")
            if claims.get("gen") not in self._issuer.fingerprint(admin_password):
                raise AuthenticationFailed("the admin password has changed since this token was issued")
            return roles.admin(subject)
        if kind == "token":
            scoped = await self._access.get_token(subject)
            if scoped is None or not scoped.usable():
                raise AuthenticationFailed("the token was revoked or has expired")
            generation = str(claims.get("gen", ""))
            if not generation or not hmac.compare_digest(generation, scoped.generation):
                raise AuthenticationFailed("the token's password was rotated, or the token re-created")
            return roles.from_scope_map(scoped.name, scoped.scope_map, scoped.generation)
        if kind == "entra":
            assignments = await self._access.role_assignments(subject)
            principal = roles.from_roles("entra", subject, _strings(claims.get("roles")), assignments)
            # A refresh token made from this one ends when this chain must: roles frozen at the
            # Entra sign-in are not carried past it by renewing.
            until = claims.get("until", claims["exp"])
            return replace(principal, refresh_until=int(until) if isinstance(until, int) else claims["exp"])
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
        ttl = None
        if principal.kind == "entra":
            # Entra app roles travel in the token: it must not outlive a role's removal by long,
            # nor may renewing it (a refresh token for a refresh token) push that limit out.
            claims["roles"] = list(principal.app_roles)
            until = principal.refresh_until or int(time.time()) + self._settings.entra_refresh_token_ttl_seconds
            claims["until"] = until
            ttl = max(0, until - int(time.time()))
        elif principal.kind == "admin":
            claims["gen"] = self._issuer.fingerprint(self._settings.admin_password or "")[0]
        elif principal.kind == "token":
            claims["gen"] = principal.generation
        return self._issuer.issue_refresh(service, principal.id, claims, ttl)


def _strings(value: object) -> list[str]:
    """A claim that should be a list of strings, as one (anything else in it is ignored)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
