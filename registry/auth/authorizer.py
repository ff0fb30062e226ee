"""BERTH_AUTH=token: every /v2 request carries a registry access token covering what it does."""

from __future__ import annotations

from starlette.requests import Request

from registry.auth import Access, Grant
from registry.auth.audit import audit
from registry.auth.tokens import ACCESS, InvalidToken, TokenIssuer
from registry.oci.errors import DENIED, UNAUTHORIZED, ErrorCode, RegistryError
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
              message: str = "authentication required", status: ErrorCode = UNAUTHORIZED) -> RegistryError:
    """The Bearer challenge naming the scope the request needs (401 unless `status` says otherwise)."""
    parts = [f'realm="{base_url(request, settings)}/oauth2/token"', f'service="{service_name(request, settings)}"']
    scopes = " ".join(f"{a.type}:{a.name}:{','.join(a.actions)}" for a in needed)
    if scopes:
        parts.append(f'scope="{scopes}"')
    if error:
        parts.append(f'error="{error}"')
    detail = [{"Type": a.type, "Name": a.name, "Action": action} for a in needed for action in a.actions]
    return RegistryError(status, message, detail or None, headers={"WWW-Authenticate": "Bearer " + ",".join(parts)})


def insufficient_scope_status(grant: Grant, access: Access) -> ErrorCode:
    """401 for a token that grants nothing on the resource, as ACR and the CNCF registry answer;
    403 for one that grants a lesser part of it.

    Clients disagree on which status makes them fetch a new token: containerd and
    containers/image do so on 401 only (and meet a lacking scope only when they hold no token
    for the resource: they ask for push up front), oras-py on 403 only (it checks a blob with a
    pull token, then uploads). Both carry the challenge with error="insufficient_scope".
    """
    partial = any(scope.type == access.type and scope.name == access.name for scope in grant.scopes)
    return DENIED if partial else UNAUTHORIZED


class TokenAuthorizer:
    def __init__(self, settings: Settings, issuer: TokenIssuer):
        self._settings = settings
        self._issuer = issuer

    async def authorize(self, request: Request, needed: list[Access], wanted: list[Access] | None = None) -> Grant:
        """`needed` must be covered; `wanted` (a mount's source) is only named in the challenge,
        so a client that asks for exactly the challenged scope gets what lets it succeed."""
        challenged = needed + (wanted or [])
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if needed and self._settings.anonymous_pull and all(
                a.type == "repository" and set(a.actions) <= {"pull"} for a in needed
            ):
                scopes = tuple(Scope(a.type, a.name, frozenset(a.actions)) for a in needed)
                return Grant("anonymous:anonymous", scopes)
            raise challenge(request, self._settings, challenged, None)
        try:
            claims = self._issuer.verify(token.strip(), ACCESS, service_name(request, self._settings))
            grant = Grant(claims["sub"], self._issuer.access_scopes(claims))
        except InvalidToken as error:
            audit("request.denied", request, self._settings, reason=f"invalid token: {error}")
            raise challenge(request, self._settings, challenged, "invalid_token",
                            f"invalid token: {error}") from None
        for access in needed:
            for action in access.actions:
                if not grant.allows(access.type, access.name, action):
                    audit("request.denied", request, self._settings, principal=grant.subject, type=access.type,
                          name=access.name, action=action, reason="insufficient_scope")
                    raise challenge(request, self._settings, challenged, "insufficient_scope",
                                    f"the token does not allow {action} on {access.type} {access.name}",
                                    insufficient_scope_status(grant, access))
        return grant
