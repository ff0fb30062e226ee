"""The web page, /ui/: a read-only browser of the registry, rendered on the server.

Who sees what: with BERTH_AUTH=none, everything. With token auth the login form takes the
credentials `docker login` takes (a scoped token's name and password, the admin user, or
00000000-0000-0000-0000-000000000000 with an Entra or refresh token), and keeps a registry
refresh token in an HttpOnly, SameSite=Strict cookie; every page is then checked against that
principal's pull rights, repository by repository, as a pull would be. Nothing is shown that
the caller could not pull; deletes and locks stay in the CLI and /acr/v1.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from registry.api.http import Context
from registry.auth.audit import client_address
from registry.auth.authorizer import base_url, service_name
from registry.auth.limits import TooManyFailures
from registry.auth.roles import Principal
from registry.auth.service import AuthenticationFailed
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import RegistryError
from registry.oci.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, INDEXES, OCI_INDEX, OCI_MANIFEST
from registry.oci.names import validate_name
from registry.oci.summary import summarize
from registry.storage.attributes import Cursor

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
COOKIE = "berth_ui"
PAGE = 50
MAX_CONFIG_BYTES = 256 * 1024  # a config bigger than this is not fetched for the page
MAX_MANIFEST_PAGE_BYTES = 512 * 1024  # the raw manifest is shown only up to this size
# /ui/repo/<name> (its tags) and /ui/repo/<name>@<digest> (a manifest): no name contains "@".
_REPOSITORY = re.compile(r"/ui/repo/(?P<name>[^@]+?)/?")
_MANIFEST = re.compile(r"/ui/repo/(?P<name>[^@]+)@(?P<digest>[a-z0-9+._-]+:[a-zA-Z0-9=_-]+)")

KINDS = {OCI_MANIFEST: "OCI image", OCI_INDEX: "OCI index", DOCKER_MANIFEST: "Docker image",
         DOCKER_MANIFEST_LIST: "Docker manifest list"}


def kind_of(media_type: str) -> str:
    """The answer to "which of my images are OCI?": OCI, Docker, or the media type itself."""
    return KINDS.get(media_type, media_type)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def when(time: datetime | str | None) -> str:
    if time is None:
        return "-"
    if isinstance(time, str):
        try:
            time = datetime.fromisoformat(time.replace("Z", "+00:00"))
        except ValueError:
            return time[:40]
    return time.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["size"] = human_size
templates.env.filters["when"] = when
templates.env.filters["kind"] = kind_of
templates.env.filters["short"] = lambda digest: str(digest).split(":", 1)[-1][:12]


class Viewer:
    """Who is looking, and what they may pull."""

    def __init__(self, principal: Principal | None, signed_in: bool):
        self.principal = principal  # None: auth is off, everything is visible
        self.signed_in = signed_in

    @property
    def name(self) -> str:
        if self.principal is None:
            return ""
        return self.principal.id if self.principal.kind != "anonymous" else ""

    def can_pull(self, repository: str) -> bool:
        return self.principal is None or "pull" in self.principal.actions_on(repository)


class WebPages:
    """Answers /ui/... for the registry's application (registry/api/routes.py dispatches here)."""

    async def handle(self, request: Request, ctx: Context) -> Response:
        path = request.scope["path"]
        if path == "/ui/static/berth.css" and request.method in ("GET", "HEAD"):
            return FileResponse(HERE / "static" / "berth.css", headers={"Cache-Control": "max-age=3600"})
        if path == "/ui":
            return RedirectResponse("/ui/", status_code=308)
        if path == "/ui/login":
            if request.method == "POST":
                return await self._login(request, ctx)
            return self._page(request, "login.html", {"error": None, "viewer": Viewer(None, False)},
                              ctx=ctx, status=200)
        if path == "/ui/logout" and request.method == "POST":
            response = RedirectResponse("/ui/login", status_code=303)
            response.delete_cookie(COOKIE, path="/ui")
            return response
        if request.method not in ("GET", "HEAD"):
            return self._error(request, ctx, 405, "Method not allowed", "This page is read-only.")
        viewer = await self._viewer(request, ctx)
        if viewer is None:
            target = "/ui/login?" + urlencode({"next": request.url.path})
            response = RedirectResponse(target, status_code=303)
            response.delete_cookie(COOKIE, path="/ui")
            return response
        try:
            if path == "/ui/":
                return await self._repositories(request, ctx, viewer)
            if match := _MANIFEST.fullmatch(path):
                return await self._manifest(request, ctx, viewer, match["name"], match["digest"])
            if match := _REPOSITORY.fullmatch(path):
                return await self._repository(request, ctx, viewer, match["name"])
        except RegistryError as error:
            if error.status in (400, 404):
                return self._error(request, ctx, 404, "Not found", error.message, viewer)
            raise
        return self._error(request, ctx, 404, "Not found", "There is no page at this address.", viewer)

    # --- who is looking --------------------------------------------------------------------

    async def _viewer(self, request: Request, ctx: Context) -> Viewer | None:
        if ctx.tokens is None:
            return Viewer(None, False)
        cookie = request.cookies.get(COOKIE)
        if cookie:
            try:
                principal = await ctx.tokens.from_refresh_token(cookie, service_name(request, ctx.settings))
            except AuthenticationFailed:
                return None
            return Viewer(principal, True)
        anonymous = ctx.tokens.anonymous()
        return Viewer(anonymous, False) if anonymous.rules else None

    async def _login(self, request: Request, ctx: Context) -> Response:
        form = await request.form()
        username, password = str(form.get("username") or ""), str(form.get("password") or "")
        target = str(form.get("next") or "/ui/")
        if not target.startswith("/ui/") or target.startswith("//"):
            target = "/ui/"  # never redirect off this site
        if ctx.tokens is None:
            return RedirectResponse(target, status_code=303)
        service = service_name(request, ctx.settings)
        try:
            principal = await ctx.tokens.from_password(username, password, service,
                                                       client_address(request, ctx.settings))
            refresh = ctx.tokens.refresh_token(service, principal)
        except (AuthenticationFailed, TooManyFailures) as error:
            status = 429 if isinstance(error, TooManyFailures) else 401
            message = ("Too many failed sign-ins; wait a few minutes." if status == 429
                       else "Those credentials were not accepted.")
            return self._page(request, "login.html", {"error": message, "viewer": Viewer(None, False),
                                                      "next": target}, ctx=ctx, status=status)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, refresh, max_age=ctx.settings.refresh_token_ttl_seconds, path="/ui",
                            secure=base_url(request, ctx.settings).startswith("https://"), httponly=True,
                            samesite="strict")
        return response

    # --- pages ----------------------------------------------------------------------------

    async def _repositories(self, request: Request, ctx: Context, viewer: Viewer) -> Response:
        """Repositories in name order, PAGE at a time, optionally those starting with `q`: the
        catalog is read in pages from where the prefix starts, so 10,000 repositories cost
        what the page shows, not a scan."""
        query = (request.query_params.get("q") or "").strip().lower()[:256]
        last = request.query_params.get("last") or None
        if last is None and query:
            last = query[:-1] + chr(ord(query[-1]) - 1) + "~"  # just before the first name with the prefix
        shown: list[str] = []
        more = False
        for _ in range(20):  # a viewer who may pull few repositories: read on, a bounded number of pages
            names, after = await ctx.store.list_repositories(200, last)
            for name in names:
                if query and not name.startswith(query):
                    after = None
                    break
                if viewer.can_pull(name):
                    if len(shown) == PAGE:
                        more = True
                        break
                    shown.append(name)
            if more or after is None:
                break
            last = after
        next_page = None
        if more:
            next_page = "/ui/?" + urlencode({k: v for k, v in (("q", query), ("last", shown[-1])) if v})
        return self._page(request, "repositories.html", {"viewer": viewer, "repositories": shown, "query": query,
                                                         "next_page": next_page}, ctx=ctx)

    async def _repository(self, request: Request, ctx: Context, viewer: Viewer, name: str) -> Response:
        name = validate_name(name)
        if not viewer.can_pull(name):
            return self._error(request, ctx, 404, "Not found", f"No repository {name} you may pull.", viewer)
        last = request.query_params.get("last") or None
        (tags, more), repository = await asyncio.gather(
            ctx.store.attributes.tags(name, PAGE, Cursor(last), None, None), ctx.store.attributes.repository(name))
        manifests = await _manifests(ctx, name, {tag.digest for tag in tags})
        rows = [{"tag": tag, "manifest": manifests.get(tag.digest)} for tag in tags]
        next_page = f"/ui/repo/{name}?" + urlencode({"last": tags[-1].name}) if more else None
        return self._page(request, "repository.html", {
            "viewer": viewer, "name": name, "repository": repository, "rows": rows, "next_page": next_page,
            "host": _host(request, ctx)}, ctx=ctx)

    async def _manifest(self, request: Request, ctx: Context, viewer: Viewer, name: str, raw: str) -> Response:
        name = validate_name(name)
        digest = parse_digest(raw)
        if not viewer.can_pull(name):
            return self._error(request, ctx, 404, "Not found", f"No repository {name} you may pull.", viewer)
        attributes, stored = await asyncio.gather(ctx.store.attributes.manifest(name, digest),
                                                  ctx.store.manifests.get(name, digest, with_body=True))
        body = stored.body or b""
        document: dict[str, Any] = json.loads(body) if body else {}
        config, referrers = await asyncio.gather(_config(ctx, name, document),
                                                 _referrers(ctx, name, digest))
        subject = document.get("subject") if isinstance(document.get("subject"), dict) else None
        return self._page(request, "manifest.html", {
            "viewer": viewer, "name": name, "digest": str(digest), "attributes": attributes,
            "media_type": stored.media_type, "is_index": stored.media_type in INDEXES,
            "entries": [entry for entry in document.get("manifests", []) if isinstance(entry, dict)],
            "layers": [layer for layer in document.get("layers", []) if isinstance(layer, dict)],
            "config_descriptor": document.get("config") if isinstance(document.get("config"), dict) else None,
            "config": config, "annotations": _strings(document.get("annotations")),
            "artifact_type": document.get("artifactType"), "subject": subject, "referrers": referrers,
            "raw": json.dumps(document, indent=2) if len(body) <= MAX_MANIFEST_PAGE_BYTES else None,
            "host": _host(request, ctx)}, ctx=ctx)

    # --- rendering ------------------------------------------------------------------------

    def _page(self, request: Request, template: str, context: dict[str, Any], ctx: Context,
              status: int = 200) -> Response:
        context = {"auth": ctx.tokens is not None, "next": "/ui/", **context}
        response = templates.TemplateResponse(request, template, context, status_code=status)
        # Pages show what one caller may see: never cached by a shared cache, never framed.
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                                       "form-action 'self'; frame-ancestors 'none'")
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def _error(self, request: Request, ctx: Context, status: int, title: str, message: str,
               viewer: Viewer | None = None) -> Response:
        return self._page(request, "error.html", {"viewer": viewer or Viewer(None, False), "title": title,
                                                  "message": message}, ctx=ctx, status=status)


def _host(request: Request, ctx: Context) -> str:
    """The registry's host as `docker pull` wants it."""
    return base_url(request, ctx.settings).split("://", 1)[1].rstrip("/")


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


async def _manifests(ctx: Context, name: str, digests: set[str]) -> dict[str, dict[str, Any]]:
    """Media type and size of each manifest a page of tags names: one point read each, at once."""
    async def one(raw: str) -> tuple[str, dict[str, Any] | None]:
        try:
            stored = await ctx.store.manifests.get(name, parse_digest(raw), with_body=True)
        except RegistryError:
            return raw, None
        return raw, {"media_type": stored.media_type, "size": summarize(stored.body or b"").image_size}

    found = await asyncio.gather(*(one(raw) for raw in digests))
    return {raw: value for raw, value in found if value is not None}


async def _config(ctx: Context, name: str, document: dict[str, Any]) -> dict[str, Any] | None:
    """An image's config (os, architecture, created, labels), read when it is small."""
    descriptor = document.get("config")
    if not isinstance(descriptor, dict) or not str(descriptor.get("mediaType", "")).endswith("json"):
        return None
    try:
        blob = await ctx.store.blobs.stat(name, parse_digest(str(descriptor.get("digest"))))
    except RegistryError:
        return None
    if blob.size > MAX_CONFIG_BYTES:
        return None
    chunks = [chunk async for chunk in await ctx.store.read_blob(blob)]
    try:
        config = json.loads(b"".join(chunks))
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    return {"os": config.get("os"), "architecture": config.get("architecture"), "variant": config.get("variant"),
            "created": config.get("created"), "labels": _strings(inner.get("Labels")),
            "entrypoint": inner.get("Entrypoint"), "cmd": inner.get("Cmd")}


async def _referrers(ctx: Context, name: str, digest: Digest) -> dict[str, list[dict[str, Any]]]:
    """Signatures, SBOMs and attestations that name this manifest, grouped by artifactType."""
    descriptors, _ = await ctx.store.manifests.list_referrers(name, digest, None, None, 200, 1 << 20)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for descriptor in descriptors:
        grouped.setdefault(str(descriptor.get("artifactType") or "(no artifact type)"), []).append(descriptor)
    return dict(sorted(grouped.items()))


def manifest_path(name: str, digest: str) -> str:
    return f"/ui/repo/{name}@{quote(digest, safe=':')}"


templates.env.globals["manifest_path"] = manifest_path
