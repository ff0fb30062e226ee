"""The route table (/v2, /acr/v1 and /oauth2) and the one dispatcher every host calls.

Each route names the access it needs, so authorisation is decided here, before any
handler runs, and no handler can forget it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from registry.api import acr, blobs, health, imports, listings, manifests, token, uploads
from registry.api.http import API_VERSION_HEADER, Context, error_response
from registry.api.request_log import REQUEST_ID_HEADER, RequestLog, new_request_id
from registry.auth import Access, Authorizer, Grant
from registry.auth.audit import client_address
from registry.oci.errors import METHOD_NOT_ALLOWED, NOT_FOUND, UNKNOWN, RegistryError
from registry.oci.events import RequestInfo
from registry.oci.names import validate_name
from registry.storage.errors import storage_failure, unavailable
from registry.storage.events import current_request

log = logging.getLogger("berth.api")

Handler = Callable[..., Awaitable[Response]]
_NAME = r"(?P<name>.+?)"


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    handlers: dict[str, tuple[Handler, tuple[str, ...] | None]]  # method -> (handler, actions)


def _route(path: str, **methods: tuple[Handler, tuple[str, ...] | None]) -> Route:
    return Route(re.compile(path), methods)


# Actions per route: None = public (the token service), () = any authenticated caller.
PULL, PUSH, DELETE, CATALOG = ("pull",), ("pull", "push"), ("delete",), ("*",)
METADATA_READ = ("metadata_read",)  # ACR's action for the /acr/v1 reads
METADATA_WRITE = ("metadata_write",)  # and for its PATCH of changeable attributes (locks)

ROUTES = [
    _route("/v2/?", GET=(listings.api_root, ()), HEAD=(listings.api_root, ())),
    _route("/v2/_catalog", GET=(listings.catalog, CATALOG)),
    _route(f"/v2/{_NAME}/tags/list", GET=(listings.list_tags, PULL)),
    _route(
        f"/v2/{_NAME}/manifests/(?P<reference>[^/]+)",
        GET=(manifests.get_manifest, PULL),
        HEAD=(manifests.head_manifest, PULL),
        PUT=(manifests.put_manifest, PUSH),
        DELETE=(manifests.delete_manifest, DELETE),
    ),
    _route(f"/v2/{_NAME}/blobs/uploads/?", POST=(uploads.start_upload, PUSH)),
    _route(
        f"/v2/{_NAME}/blobs/uploads/(?P<upload_id>[A-Za-z0-9_-]{{1,64}})",
        GET=(uploads.upload_status, PUSH),
        PATCH=(uploads.patch_upload, PUSH),
        PUT=(uploads.finish_upload, PUSH),
        DELETE=(uploads.cancel_upload, PUSH),
    ),
    _route(
        f"/v2/{_NAME}/blobs/(?P<digest>[^/]+)",
        GET=(blobs.get_blob, PULL),
        HEAD=(blobs.head_blob, PULL),
        DELETE=(blobs.delete_blob, DELETE),
    ),
    _route(f"/v2/{_NAME}/referrers/(?P<digest>[^/]+)", GET=(listings.referrers, PULL)),
    # The ACR metadata API; PATCH (changeable attributes) is not implemented: 405.
    _route("/acr/v1/_catalog", GET=(acr.catalog, CATALOG)),
    _route(f"/acr/v1/{_NAME}/_tags", GET=(acr.list_tags, METADATA_READ)),
    _route(f"/acr/v1/{_NAME}/_tags/(?P<tag>[^/]+)", GET=(acr.get_tag, METADATA_READ),
           PATCH=(acr.update_tag, METADATA_WRITE), DELETE=(acr.delete_tag, DELETE)),
    _route(f"/acr/v1/{_NAME}/_manifests", GET=(acr.list_manifests, METADATA_READ)),
    _route(f"/acr/v1/{_NAME}/_manifests/(?P<digest>[^/]+)", GET=(acr.get_manifest, METADATA_READ),
           PATCH=(acr.update_manifest, METADATA_WRITE), DELETE=(acr.delete_manifest, DELETE)),
    _route(f"/acr/v1/{_NAME}/_import", POST=(imports.import_image, PUSH)),
    _route(f"/acr/v1/{_NAME}", GET=(acr.get_repository, METADATA_READ), PATCH=(acr.update_repository, METADATA_WRITE),
           DELETE=(acr.delete_repository, DELETE)),
    _route("/oauth2/token", GET=(token.get_token, None), POST=(token.post_token, None)),
    _route("/oauth2/exchange", POST=(token.exchange, None)),
    _route("/health/ready", GET=(health.ready, None), HEAD=(health.ready, None)),
]
# Handlers whose time follows the client's upload: each storage call they make is bounded, the
# whole request is not. Every other handler answers within Settings.request_budget_seconds.
CLIENT_PACED = {uploads.start_upload, uploads.patch_upload, uploads.finish_upload}
# Handlers that wait out the request budget of others on purpose (a repository delete waits for
# pushes that checked their blobs before it unlinked them): bounded by their own storage calls.
OUTLASTS_BUDGET = {acr.delete_repository, imports.import_image}  # an import has a budget of its own
# Routes that must answer without storage (or a context) at all.
BARE_ROUTES: dict[str, Handler] = {"/health/live": health.live}


def required_access(params: dict[str, str], actions: tuple[str, ...]) -> list[Access]:
    """What a request needs on its repository, or on the catalog."""
    if not actions:
        return []
    if "name" not in params:
        return [Access("registry", "catalog", actions)]
    return [Access("repository", params["name"], actions)]


def wanted_access(request: Request) -> list[Access]:
    """What a request would use if the caller has it: pull on a cross-repository mount's source.

    Without it the request still succeeds (a plain upload, 202), so it is not required; but
    the challenge names it, so a client that asks for exactly that scope can mount (201).
    """
    source = request.query_params.get("from")
    if request.method == "POST" and request.query_params.get("mount") and source:
        return [Access("repository", validate_name(source), ("pull",))]
    return []


def _request_info(request: Request, context: Context, grant: Grant | None) -> RequestInfo:
    return RequestInfo(request.state.request_id, request.headers.get("host", ""), request.method,
                       request.headers.get("user-agent", ""), client_address(request, context.settings),
                       grant.subject if grant is not None else "")


class RegistryApi:
    """Routes a Starlette request to its handler; turns every failure into an OCI error."""

    def __init__(self, context_factory: Callable[[], Awaitable[Context]], authorizer: Authorizer,
                 request_log: RequestLog):
        self._context_factory = context_factory
        self._authorizer = authorizer
        self._request_log = request_log
        self._pages: Any = None  # the web page (registry/ui), imported on its first request

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.state.request_id = new_request_id()
        head = request.method == "HEAD"
        code = None
        try:
            response = await self._dispatch(request)
        except RegistryError as error:
            code = error.error.code
            response = error_response(error, head)
        except ClientDisconnect:
            log.info("client went away during %s %s (request %s)", request.method, request.url.path, request_id)
            code = "CLIENT_DISCONNECTED"
            response = Response(b"", status_code=400)
        except Exception as error:
            unavailable = storage_failure(error)
            if unavailable is not None:
                log.warning("storage failed during %s %s (request %s): %r", request.method, request.url.path,
                            request_id, error)
                code = unavailable.error.code
                response = error_response(unavailable, head)
            else:
                log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
                code = UNKNOWN.code
                response = error_response(RegistryError(UNKNOWN, "internal error; see the registry's log"), head)
        response.headers.update(API_VERSION_HEADER)
        response.headers[REQUEST_ID_HEADER] = request_id
        self._request_log.record(request, response, request_id, started, code)
        return response

    async def _dispatch(self, request: Request) -> Response:
        # The decoded path as the server received it: `request.url` goes through urlsplit,
        # which silently drops tabs and newlines ("latest%0A" would read as "latest").
        path = request.scope["path"]
        if path in BARE_ROUTES and request.method in ("GET", "HEAD"):
            return await BARE_ROUTES[path](request)
        if path == "/ui" or path.startswith("/ui/"):  # the web page: its own sign-in, see registry/ui
            context = await self._context_factory()
            if self._pages is None:  # Jinja2 and the templates: not on the registry API's cold start
                from registry.ui.views import WebPages

                self._pages = WebPages()
            try:
                async with asyncio.timeout(context.settings.request_budget_seconds):
                    return await self._pages.handle(request, context)
            except TimeoutError:
                raise unavailable(f"no answer within {context.settings.request_budget_seconds} s") from None
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            entry = route.handlers.get(request.method)
            if entry is None:
                raise RegistryError(METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {path}",
                                    headers={"Allow": ", ".join(route.handlers)})
            handler, actions = entry
            params = {key: value for key, value in match.groupdict().items() if value is not None}
            if "name" in params:
                validate_name(params["name"])
            grant = None
            if actions is not None:
                grant = await self._authorizer.authorize(request, required_access(params, actions),
                                                         wanted_access(request))
                request.state.grant = grant
            context = await self._context_factory()
            if request.method not in ("GET", "HEAD"):  # a write's event names its request
                current_request.set(_request_info(request, context, grant))
            if handler in CLIENT_PACED or handler in OUTLASTS_BUDGET:
                return await handler(request, context, **params)
            try:
                async with asyncio.timeout(context.settings.request_budget_seconds):  # no extra task
                    return await handler(request, context, **params)
            except TimeoutError:
                raise unavailable(f"no answer within {context.settings.request_budget_seconds} s") from None
        raise RegistryError(NOT_FOUND, f"no registry endpoint at {path[:200]}")
