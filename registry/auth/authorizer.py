"""BERTH_AUTH=token: every /v2 request carries a registry access token covering what it does."""

from __future__ import annotations

from starlette.requests import Request

from registry.auth import Access, Grant
from registry.auth.tokens import ACCESS, InvalidToken, TokenIssuer
from registry.oci.errors import DENIED, UNAUTHORIZED, RegistryError
from registry.oci.scope import Scope
from registry.settings import Settings


def base_url(request: Request, settings: Settings) -> str:
    """The registry's public address, as clients reach it (behind the Functions front end too)."""
    if settings.public_url:
        return settings.public_url
    proto = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    return f"{proto}://{host}"


def service_name(request: Request, settings: Settings) -> str:
    """The token audience: BERTH_SERVICE, else the host clients address us by."""
    if settings.service:
        return settings.service
    return base_url(request, settings).split("://", 1)[1]


def challenge(request: Request, settings: Settings, needed: list[Access], error: str | None,
              message: str = "authentication required") -> RegistryError:
    """401 (or 403 for a valid token without the scope, as RFC 6750 says) with the Bearer challenge.

    The 403 still carries the challenge, so clients that fetch a token per scope (oras-py,
    go-containerregistry) retry with a new one; docker, containerd and containers/image ask
    for the push scope up front and never meet it.
    """
    parts = [f'realm="{base_url(request, settings)}/oauth2/token"', f'service="{service_name(request, settings)}"']
    scopes = " ".join(f"{a.type}:{a.name}:{','.join(a.actions)}" for a in needed)
    if scopes:
        parts.append(f'scope="{scopes}"')
    if error:
        parts.append(f'error="{error}"')
    detail = [{"Type": a.type, "Name": a.name, "Action": action} for a in needed for action in a.actions]
    code = DENIED if error == "insufficient_scope" else UNAUTHORIZED
    return RegistryError(code, message, detail or None, headers={"WWW-Authenticate": "Bearer " + ",".join(parts)})


class TokenAuthorizer:
    def __init__(self, settings: Settings, issuer: TokenIssuer):
        self._settings = settings
        self._issuer = issuer

    async def authorize(self, request: Request, needed: list[Access]) -> Grant:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if needed and self._settings.anonymous_pull and all(
                a.type == "repository" and set(a.actions) <= {"pull"} for a in needed
            ):
                scopes = tuple(Scope(a.type, a.name, frozenset(a.actions)) for a in needed)
                return Grant("anonymous:anonymous", scopes)
            raise challenge(request, self._settings, needed, None)
        try:
            claims = self._issuer.verify(token.strip(), ACCESS, service_name(request, self._settings))
            grant = Grant(claims["sub"], self._issuer.access_scopes(claims))
        except InvalidToken as error:
            raise challenge(request, self._settings, needed, "invalid_token", f"invalid token: {error}") from None
        for access in needed:
            for action in access.actions:
                if not grant.allows(access.type, access.name, action):
                    raise challenge(request, self._settings, needed, "insufficient_scope",
                                    f"the token does not allow {action} on {access.type} {access.name}")
        return grant
