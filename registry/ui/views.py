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
from registry.api.token import password_principal, read_form
from registry.auth import Grant
from registry.auth.authorizer import base_url, service_name
from registry.auth.roles import Principal
from registry.auth.service import AuthenticationFailed
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import RegistryError
from registry.oci.manifest import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, INDEXES, OCI_INDEX, OCI_MANIFEST
from registry.oci.names import validate_name
from registry.oci.summary import summarize
from registry.storage.attributes import Cursor
from registry.storage.metadata import repository_key

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
COOKIE = "berth_ui"
PAGE = 50
MAX_CONFIG_BYTES = 256 * 1024  # a config bigger than this is not fetched for the page
MAX_MANIFEST_PAGE_BYTES = 512 * 1024  # the raw manifest is shown only up to this size
MAX_SUMMARIZED_BYTES = 512 * 1024  # a tag's image size is worked out from manifests up to this size
MAX_ROWS = 500  # layers or platforms shown of one manifest ("and N more")
MAX_RANGES = 20  # the repository ranges a viewer's rules name that one page reads
SAFE_QUERY = re.compile(r"[a-z0-9._/-]*")
# /ui/repo/<name> (its tags) and /ui/repo/<name>@<digest> (a manifest): no name contains "@".
_REPOSITORY = re.compile(r"/ui/repo/(?P<name>[^@]+?)/?")
_MANIFEST = re.compile(r"/ui/repo/(?P<name>[^@]+)@(?P<digest>[a-z0-9+._-]+:[a-zA-Z0-9=_-]+)")

KINDS = {OCI_MANIFEST: "OCI image", OCI_INDEX: "OCI index", DOCKER_MANIFEST: "Docker image",
         DOCKER_MANIFEST_LIST: "Docker manifest list"}


def kind_of(media_type: object) -> str:
    """The answer to "which of my images are OCI?": OCI, Docker, or the media type itself."""
    return KINDS.get(media_type, media_type) if isinstance(media_type, str) else "-"


def human_size(size: object) -> str:
    """Sizes come from manifests anyone with push wrote: anything but a sane integer is "-"."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 2**63:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def when(time: object) -> str:
    if not isinstance(time, (str, datetime)):
        return "-"
    if isinstance(time, str):
        try:
            time = datetime.fromisoformat(time.replace("Z", "+00:00"))
        except ValueError:
            return time[:40]
    if not isinstance(time, datetime):
        return "-"
    return time.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters["size"] = human_size
templates.env.filters["when"] = when
templates.env.filters["kind"] = kind_of
templates.env.filters["short"] = lambda digest: str(digest).split(":", 1)[-1][:12]


def ui_service(request: Request, ctx: Context) -> str:
    """The audience of the page's refresh tokens: not the registry's, so a cookie that leaked is
    no `docker login` password (the token endpoint verifies against the registry's audience)."""
    return service_name(request, ctx.settings) + "#ui"


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

    def may_list(self) -> bool:
        """Anonymous callers pull by name but do not browse: /v2/_catalog refuses them too."""
        return self.principal is None or self.principal.kind != "anonymous"

    def prefixes(self, query: str) -> list[str] | None:
        """The catalog ranges (name prefixes) to read for `query`: where the viewer's pull rules
        and the query overlap. An exact name is a range too; names it holds that the rule does
        not cover are filtered out afterwards."""
        if self.principal is None:
            return [query]
        found: set[str] = set()
        for rule in self.principal.rules:
            if "pull" not in rule.actions:
                continue
            if rule.pattern == "*":
                return [query]
            if rule.pattern.endswith("/*"):
                start = rule.pattern[:-1]
            else:
                start = rule.pattern  # an exact name: its range holds it (and longer names, filtered)
            if query.startswith(start):
                found.add(query)
            elif start.startswith(query):
                found.add(start)
        return sorted(found)[:MAX_RANGES]


class WebPages:
    """Answers /ui/... for the registry's application (registry/api/routes.py dispatches here)."""

    async def handle(self, request: Request, ctx: Context) -> Response:
        path = request.scope["path"]
        if path == "/ui/static/berth.css" and request.method in ("GET", "HEAD"):
            return FileResponse(HERE / "static" / "berth.css", headers={"Cache-Control": "max-age=3600"})
        if path == "/ui":
            return RedirectResponse("/ui/", status_code=308)
        if path in ("/ui/login", "/ui/logout") and request.method == "POST" and not _same_site(request, ctx):
            return self._error(request, ctx, 403, "Forbidden", "Sign-in and sign-out are only taken from this site.")
        if path == "/ui/login":
            if request.method == "POST":
                return await self._login(request, ctx)
            return self._page(request, "login.html", {"error": None, "viewer": Viewer(None, False),
                                                      "next": _target(request.query_params.get("next"))}, ctx=ctx)
        if path == "/ui/logout" and request.method == "POST":
            response = RedirectResponse("/ui/login", status_code=303)
            response.delete_cookie(COOKIE, path="/ui")
            return response
        if request.method not in ("GET", "HEAD"):
            response = self._error(request, ctx, 405, "Method not allowed", "This page is read-only.")
            response.headers["Allow"] = "GET, HEAD"
            return response
        viewer = await self._viewer(request, ctx)
        if viewer is not None and viewer.principal is not None:
            request.state.grant = Grant(viewer.principal.subject)  # the request log names the viewer
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
                principal = await ctx.tokens.from_refresh_token(cookie, ui_service(request, ctx))
            except AuthenticationFailed:
                return None
            return Viewer(principal, True)
        anonymous = ctx.tokens.anonymous()
        return Viewer(anonymous, False) if anonymous.rules else None

    async def _login(self, request: Request, ctx: Context) -> Response:
        """The token endpoint's password check (failure limits, a fixed-time refusal, the audit
        log), then a refresh token only this page accepts, in the cookie."""
        form = await read_form(request)
        username, password = (form.get("username") or [""])[0], (form.get("password") or [""])[0]
        target = _target((form.get("next") or [None])[0])
        if ctx.tokens is None:
            return RedirectResponse(target, status_code=303)
        try:
            principal = await password_principal(request, ctx, ctx.tokens, username, password,
                                                 service_name(request, ctx.settings))
            refresh = ctx.tokens.refresh_token(ui_service(request, ctx), principal)
        except (RegistryError, AuthenticationFailed) as error:
            status = 429 if isinstance(error, RegistryError) and error.status == 429 else 401
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
        """Repositories in catalog order, PAGE at a time, those starting with `q` if given. Only
        the ranges the viewer's pull rules name are read (a prefix each, from where it starts):
        a page costs what it shows, never a scan past names the viewer may not pull, and the
        cursor is always a name the viewer may see."""
        query = (request.query_params.get("q") or "").strip().lower()[:256]
        last = request.query_params.get("last") or None
        context: dict[str, Any] = {"viewer": viewer, "repositories": [], "query": query, "next_page": None,
                                   "browsable": viewer.may_list()}
        if not viewer.may_list() or not SAFE_QUERY.fullmatch(query) or (last and not SAFE_QUERY.fullmatch(last)):
            return self._page(request, "repositories.html", context, ctx=ctx)
        if last and not viewer.can_pull(last):
            last = None
        pages = await asyncio.gather(*(ctx.store.list_repositories(PAGE + 1, last, prefix)
                                       for prefix in viewer.prefixes(query) or []))
        names = sorted({name for found, _ in pages for name in found
                        if name.startswith(query) and viewer.can_pull(name)}, key=repository_key)
        context["repositories"] = names[:PAGE]
        if len(names) > PAGE or any(after is not None for _, after in pages):
            if names[:PAGE]:
                context["next_page"] = "/ui/?" + urlencode({k: v for k, v in (("q", query),
                                                                            ("last", names[:PAGE][-1])) if v})
        return self._page(request, "repositories.html", context, ctx=ctx)

    async def _repository(self, request: Request, ctx: Context, viewer: Viewer, name: str) -> Response:
        name = validate_name(name)
        if not await _readable(ctx, viewer, name):
            return self._error(request, ctx, 404, "Not found", f"No repository {name} you may pull.", viewer)
        last = request.query_params.get("last") or None
        # No counts: they would read every tag and manifest row of the repository on each view.
        (tags, more), locks = await asyncio.gather(ctx.store.attributes.tags(name, PAGE, Cursor(last), None, None),
                                                   ctx.store.locks.cached(name))
        manifests = await _manifests(ctx, name, {tag.digest for tag in tags})
        # A tag whose manifest is read-disabled (or gone meanwhile) pulls as unknown: not shown.
        rows = [{"tag": tag, "manifest": manifests[tag.digest]} for tag in tags if tag.digest in manifests]
        next_page = f"/ui/repo/{name}?" + urlencode({"last": tags[-1].name}) if more else None
        return self._page(request, "repository.html", {
            "viewer": viewer, "name": name, "locks": locks, "rows": rows, "next_page": next_page, "first": last is None,
            "host": _host(request, ctx)}, ctx=ctx)

    async def _manifest(self, request: Request, ctx: Context, viewer: Viewer, name: str, raw: str) -> Response:
        name = validate_name(name)
        digest = parse_digest(raw)
        if not await _readable(ctx, viewer, name):
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
            "entries": _rows(document.get("manifests")), "layers": _rows(document.get("layers")),
            "entries_more": _more(document.get("manifests")), "layers_more": _more(document.get("layers")),
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
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _error(self, request: Request, ctx: Context, status: int, title: str, message: str,
               viewer: Viewer | None = None) -> Response:
        return self._page(request, "error.html", {"viewer": viewer or Viewer(None, False), "title": title,
                                                  "message": message}, ctx=ctx, status=status)


def _target(raw: str | None) -> str:
    """Where to go after signing in: a page of this site, never anywhere else."""
    return raw if raw and raw.startswith("/ui/") and "\\" not in raw else "/ui/"


def _same_site(request: Request, ctx: Context) -> bool:
    """A sign-in or sign-out form sent from this site (not a forged cross-site POST)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site POST (those send Origin)
    return origin == base_url(request, ctx.settings)


async def _readable(ctx: Context, viewer: Viewer, name: str) -> bool:
    """The viewer may pull here, and the repository is not read-disabled (a pull would fail)."""
    return viewer.can_pull(name) and (await ctx.store.locks.fresh(name)).readEnabled


def _rows(value: Any) -> list[dict[str, Any]]:
    return [row for row in value if isinstance(row, dict)][:MAX_ROWS] if isinstance(value, list) else []


def _more(value: Any) -> int:
    return max(0, len(value) - MAX_ROWS) if isinstance(value, list) else 0


def _host(request: Request, ctx: Context) -> str:
    """The registry's host as `docker pull` wants it."""
    return base_url(request, ctx.settings).split("://", 1)[1].rstrip("/")


def _strings(value: Any) -> dict[str, str]:
    """Labels or annotations: strings, at most 200 of them, each clipped."""
    if not isinstance(value, dict):
        return {}
    return {str(k)[:200]: str(v)[:1000] for k, v in list(value.items())[:200]}


async def _manifests(ctx: Context, name: str, digests: set[str]) -> dict[str, dict[str, Any]]:
    """Media type and image size of each manifest a page of tags names (a point read each, a few
    at a time); a big manifest's image size is not worked out for a list ("-")."""
    gate = asyncio.Semaphore(8)

    async def one(raw: str) -> tuple[str, dict[str, Any] | None]:
        async with gate:
            try:
                stored = await ctx.store.manifests.get(name, parse_digest(raw), with_body=True)
            except RegistryError:
                return raw, None
        body = stored.body or b""
        size = summarize(body).image_size if len(body) <= MAX_SUMMARIZED_BYTES else None
        return raw, {"media_type": stored.media_type, "size": size}

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
    return {"os": _text(config.get("os")), "architecture": _text(config.get("architecture")),
            "variant": _text(config.get("variant")), "created": _text(config.get("created")),
            "labels": _strings(inner.get("Labels")), "entrypoint": _words(inner.get("Entrypoint")),
            "cmd": _words(inner.get("Cmd"))}


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) else None


def _words(value: Any) -> list[str] | None:
    """A command as the config gives it (a list of strings), clipped for the page."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return [item[:200] for item in value[:50]]


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
