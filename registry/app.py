"""Builds Berth: settings -> storage clients -> model -> authorizer -> routes.

The same `BerthApplication` serves both hosts: it is an ASGI app for uvicorn, and
`function_app.py` hands it the Starlette requests of the Azure Functions HTTP stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context
from registry.api.request_log import RequestLog
from registry.api.routes import RegistryApi
from registry.auth import AllowAll, Authorizer
from registry.auth.authorizer import TokenAuthorizer
from registry.auth.entra import EntraValidator
from registry.auth.service import TokenService
from registry.auth.tokens import TokenIssuer
from registry.oci.errors import UNAVAILABLE, RegistryError
from registry.oci.events import RequestInfo
from registry.ops.events import EventDispatcher, SweepReport
from registry.ops.pullthrough import PullThrough
from registry.settings import Settings, SettingsError, load_settings
from registry.storage.access_store import AccessStore
from registry.storage.clients import StorageClients, create_clients
from registry.storage.events import current_request, decode_message
from registry.storage.gc import CollectionReport
from registry.storage.registry_store import RegistryStore
from registry.storage.retention import RetentionReport

log = logging.getLogger("berth")


def token_issuer(settings: Settings) -> TokenIssuer:
    if not settings.token_signing_keys:
        raise SettingsError("BERTH_AUTH=token needs BERTH_TOKEN_SIGNING_KEY (base64, at least 32 bytes)")
    return TokenIssuer(settings.token_signing_keys, settings.access_token_ttl_seconds,
                       settings.refresh_token_ttl_seconds)


def entra_validator(settings: Settings) -> EntraValidator | None:
    if not settings.entra_tenant_id or not settings.entra_jwks_url:
        return None
    return EntraValidator(settings.entra_tenant_id, list(settings.entra_audiences), settings.entra_jwks_url,
                          settings.entra_authority_host, settings.entra_jwks_cooldown_seconds)


class MisconfiguredApplication:
    """What the host serves when the settings are wrong: every request answers 503 (the reason
    is logged, not sent), so the functions are still indexed and the log says what to fix,
    instead of an import error that leaves the app without any function."""

    def __init__(self, reason: str):
        self.reason = reason
        log.error("Berth is misconfigured and serves nothing: %s", reason)

    async def handle(self, request: Request) -> Response:
        error = RegistryError(UNAVAILABLE, "the registry is misconfigured; its log says what to fix")
        return Response(json.dumps(error.body()).encode(), status_code=503, media_type="application/json",
                        headers={"Retry-After": "300"})

    async def _refuse(self) -> Any:
        raise RuntimeError(f"Berth is misconfigured: {self.reason}")

    purge_expired = collect_garbage = apply_retention = sweep_events = _refuse

    async def handle_event_message(self, body: bytes) -> None:
        await self._refuse()


def application_from_environment() -> BerthApplication | MisconfiguredApplication:
    """The application the Functions host serves, from the app settings."""
    try:
        return BerthApplication(load_settings())
    except SettingsError as error:
        return MisconfiguredApplication(str(error))


class BerthApplication:
    def __init__(self, settings: Settings):
        self.settings = settings
        authorizer: Authorizer = AllowAll()
        self._issuer: TokenIssuer | None = None
        if settings.auth == "token":
            self._issuer = token_issuer(settings)
            authorizer = TokenAuthorizer(settings, self._issuer)
        self.api = RegistryApi(self.context, authorizer, RequestLog(settings))
        self._context: Context | None = None
        self._clients: StorageClients | None = None
        self._pullthrough: PullThrough | None = None
        self._dispatcher: EventDispatcher | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stop_worker = asyncio.Event()
        self._lock = asyncio.Lock()

    async def context(self) -> Context:
        """Storage clients are created on first use, inside the event loop that serves."""
        if self._context is None:
            async with self._lock:
                if self._context is None:
                    clients = create_clients(self.settings)
                    store = RegistryStore(clients, self.settings)
                    await store.initialize()
                    access = AccessStore(clients.table_service, self.settings.table_prefix)
                    if self.settings.create_storage:
                        await access.ensure_table()
                    tokens = None
                    if self._issuer is not None:
                        tokens = TokenService(self.settings, self._issuer, access, entra_validator(self.settings))
                    self._clients = clients
                    self._pullthrough = PullThrough(store, self.settings)
                    self._dispatcher = EventDispatcher(store, self.settings)
                    self._context = Context(store, self.settings, access, tokens, self._pullthrough)
        return self._context

    async def handle(self, request: Request) -> Response:
        return await self.api.handle(request)

    async def purge_expired(self) -> tuple[int, int]:
        """The hourly clean-up: expired upload sessions (with their unfinished bytes) and failed
        login records older than the lockout window. Returns how many of each."""
        context = await self.context()
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.auth_failure_window_seconds)
        return await context.store.uploads.purge_expired(), await context.access.purge_failures(cutoff)

    async def collect_garbage(self) -> CollectionReport:
        """The daily collection of blob bytes no repository links to (README, "Garbage collection")."""
        context = await self.context()
        return await context.store.collector.collect(timedelta(seconds=self.settings.gc_grace_seconds),
                                                     self.settings.gc_settle_seconds)

    async def apply_retention(self) -> RetentionReport:
        """The daily retention run (README, "Retention"), before the garbage collection."""
        context = await self.context()
        host = (self.settings.public_url or "").removeprefix("https://").removeprefix("http://")
        current_request.set(RequestInfo(str(uuid.uuid4()), host, "DELETE", "berth-retention"))
        return await context.store.retention.run()

    async def dispatcher(self) -> EventDispatcher:
        await self.context()
        assert self._dispatcher is not None
        return self._dispatcher

    async def handle_event_message(self, body: bytes) -> None:
        """One message of the events queue (README, "Events and webhooks"); raises to retry it."""
        await (await self.dispatcher()).handle(decode_message(body))

    async def sweep_events(self) -> SweepReport:
        """Every minute: events no queue message handed on, and the delivery logs' pruning."""
        return await (await self.dispatcher()).sweep()

    async def start_worker(self) -> None:
        """`serve`: deliver events in this process (on Azure the queue trigger does)."""
        dispatcher = await self.dispatcher()
        self._stop_worker.clear()
        self._worker = asyncio.create_task(dispatcher.run(self._stop_worker))

    async def close(self) -> None:
        if self._worker is not None:
            self._stop_worker.set()
            await self._worker
            self._worker = None
        if self._dispatcher is not None:
            await self._dispatcher.close()
            self._dispatcher = None
        if self._pullthrough is not None:
            await self._pullthrough.close()
        if self._clients is not None:
            await self._clients.close()
        self._clients = None
        self._context = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.context()
                    if self.settings.events_worker:
                        await self.start_worker()
                except Exception as error:  # tell the server, which then refuses to start
                    log.exception("storage is not reachable")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
