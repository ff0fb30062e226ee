"""The ACR-compatible token service: /oauth2/token (GET and POST) and /oauth2/exchange."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, json_response, read_body
from registry.auth.audit import audit, client_address
from registry.auth.authorizer import service_name
from registry.auth.limits import TooManyFailures
from registry.auth.roles import Principal
from registry.auth.service import AuthenticationFailed, TokenService
from registry.oci.errors import NOT_FOUND, TOO_MANY_REQUESTS, UNAUTHORIZED, UNSUPPORTED_GRANT, RegistryError
from registry.oci.scope import Scope, parse_scopes
from registry.settings import Settings

MAX_FORM_BYTES = 64 * 1024
MAX_SCOPES = 100  # per token request: a token is a header, and headers are bounded
REFUSED_ANSWER_SECONDS = 0.3  # a wrong password is answered this long after it arrived
LOCKED_OUT_ANSWER_SECONDS = 1.0  # and a locked-out attempt this long


def _service(ctx: Context) -> TokenService:
    if ctx.tokens is None:
        raise RegistryError(NOT_FOUND, "the token service is off (BERTH_AUTH=none)")
    return ctx.tokens


def _denied(request: Request, settings: Settings, error: AuthenticationFailed | TooManyFailures,
            name: str | None = None) -> RegistryError:
    tried = {"name": name} if name is not None else {}
    if isinstance(error, TooManyFailures):
        audit("token.refused", request, settings, reason="too many failed attempts", **tried)
        return RegistryError(TOO_MANY_REQUESTS, str(error), headers={"Retry-After": str(error.retry_after)})
    audit("token.denied", request, settings, reason=str(error), **tried)
    return RegistryError(UNAUTHORIZED, str(error), headers={"WWW-Authenticate": 'Basic realm="berth"'})


async def password_principal(request: Request, ctx: Context, tokens: TokenService, username: str, password: str,
                     service: str) -> Principal:
    """The principal of a password login. A refused one is answered at a fixed time after it
    arrived: every wrong guess costs its sender that long (and us nothing but a timer), and the
    answer's timing does not tell a name that exists from one that does not."""
    arrived = time.monotonic()
    try:
        return await tokens.from_password(username, password, service, client_address(request, ctx.settings))
    except (AuthenticationFailed, TooManyFailures) as error:
        delay = LOCKED_OUT_ANSWER_SECONDS if isinstance(error, TooManyFailures) else REFUSED_ANSWER_SECONDS
        await asyncio.sleep(max(0.0, arrived + delay - time.monotonic()))
        raise _denied(request, ctx.settings, error, username) from None


async def read_form(request: Request) -> dict[str, list[str]]:
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        return parse_qs(body.decode(), keep_blank_values=False)
    except UnicodeDecodeError:
        raise RegistryError(UNSUPPORTED_GRANT, "the form is not valid UTF-8") from None


def _first(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


def _basic_credentials(request: Request, settings: Settings) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _denied(request, settings, AuthenticationFailed("malformed Basic credentials")) from None
    if not sep or not username:
        raise _denied(request, settings, AuthenticationFailed("malformed Basic credentials"))
    return username, password


def _token_response(request: Request, ctx: Context, tokens: TokenService, service: str, principal: Principal,
                    scopes: list[Scope], offline: bool) -> dict[str, object]:
    """An access token for the granted part of `scopes`, plus a refresh token when asked."""
    if len(scopes) > MAX_SCOPES:
        raise RegistryError(UNSUPPORTED_GRANT, f"at most {MAX_SCOPES} scopes per token request")
    issued = tokens.access_token(service, principal, scopes)
    audit("token.issued", request, ctx.settings, principal=principal.subject,
          requested=[str(s) for s in scopes], granted=[str(s) for s in issued.scopes], refresh_token=offline)
    document: dict[str, object] = {
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scope": " ".join(str(s) for s in issued.scopes),
    }
    if offline:
        document["refresh_token"] = tokens.refresh_token(service, principal)
    return document


async def get_token(request: Request, ctx: Context) -> Response:
    """Docker token flow: Basic credentials (or none) + scope parameters -> access token."""
    tokens = _service(ctx)
    service = service_name(request, ctx.settings)
    credentials = _basic_credentials(request, ctx.settings)
    principal = (await password_principal(request, ctx, tokens, *credentials, service) if credentials
                 else tokens.anonymous())
    scopes = parse_scopes(request.query_params.getlist("scope"))
    offline = request.query_params.get("offline_token") == "true" and principal.kind != "anonymous"
    document = _token_response(request, ctx, tokens, service, principal, scopes, offline)
    document["token"] = document["access_token"]  # the Docker token spec's name for it
    return json_response(document)


async def post_token(request: Request, ctx: Context) -> Response:
    """OAuth2 form: grant_type=password or refresh_token -> access token (+ refresh token if offline)."""
    tokens = _service(ctx)
    service = service_name(request, ctx.settings)
    form = await read_form(request)
    grant_type = _first(form, "grant_type")
    principal: Principal
    if grant_type == "password":
        username, password = _first(form, "username"), _first(form, "password")
        if not username or password is None:
            raise _denied(request, ctx.settings, AuthenticationFailed("username and password are required"))
        principal = await password_principal(request, ctx, tokens, username, password, service)
    elif grant_type == "refresh_token":
        refresh = _first(form, "refresh_token")
        try:
            if not refresh:
                raise AuthenticationFailed("refresh_token is required")
            principal = await tokens.from_refresh_token(refresh, service)
        except AuthenticationFailed as error:
            raise _denied(request, ctx.settings, error) from None
    else:
        raise RegistryError(UNSUPPORTED_GRANT, f"unsupported grant_type {str(grant_type)[:40]!r}")
    offline = _first(form, "access_type") == "offline"
    scopes = parse_scopes(form.get("scope", []))
    return json_response(_token_response(request, ctx, tokens, service, principal, scopes, offline))


async def exchange(request: Request, ctx: Context) -> Response:
    """Entra ID access token -> registry refresh token (what `az acr login` does)."""
    tokens = _service(ctx)
    service = service_name(request, ctx.settings)
    form = await read_form(request)
    grant_type = _first(form, "grant_type")
    if grant_type not in ("access_token", "access_token_refresh_token"):
        raise RegistryError(UNSUPPORTED_GRANT, f"unsupported grant_type {grant_type!r}")
    access_token = _first(form, "access_token")
    try:
        if not access_token:
            raise AuthenticationFailed("access_token is required")
        principal = await tokens.from_entra_token(access_token)
    except AuthenticationFailed as error:
        raise _denied(request, ctx.settings, error) from None
    audit("token.exchanged", request, ctx.settings, principal=principal.subject)
    return json_response({"refresh_token": tokens.refresh_token(service, principal)})
