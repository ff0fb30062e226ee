"""Creates the process-wide Azure Storage clients (the only place that picks credentials)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry
from azure.storage.queue.aio import QueueClient

from registry.settings import MiB, Settings
from registry.storage.table_requests import TableRequests


@dataclass
class StorageClients:
    blob_service: BlobServiceClient
    table_service: TableServiceClient
    session: aiohttp.ClientSession
    table_requests: TableRequests
    events_queue: QueueClient
    poison_queue: QueueClient  # where the Functions host puts what it gave up on (`<queue>-poison`)
    credential: Any = None

    async def close(self) -> None:
        await self.blob_service.close()
        await self.table_service.close()
        await self.events_queue.close()
        await self.poison_queue.close()
        if self.credential is not None:
            await self.credential.close()
        await self.session.close()


def _transport(session: aiohttp.ClientSession, timeout: int) -> AioHttpTransport:
    # Per attempt: connect and each socket read are bounded, so a stalled storage fails fast.
    return AioHttpTransport(session=session, session_owner=False, connection_timeout=timeout,
                            read_timeout=timeout)


def _retries(settings: Settings) -> dict[str, Any]:
    """One quick retry per call: a blip is absorbed, an outage becomes a 503 within seconds.

    Writes may be retried too because each is idempotent or checks, on a conflict, whether
    the change it meets is its own (content.py, uploads.py).
    """
    return {
        "blob": {"retry_policy": ExponentialRetry(initial_backoff=0.5, increment_base=2, retry_total=1,
                                                  random_jitter_range=0.5)},
        "table": {"retry_total": 1, "retry_backoff_factor": 0.5, "retry_backoff_max": 2},
        "queue": {"retry_total": 1, "initial_backoff": 0.5, "increment_base": 2},
    }


def events_queue_name(settings: Settings) -> str:
    return f"{settings.table_prefix.lower()}events"


def create_clients(settings: Settings) -> StorageClients:
    """Build clients sharing one aiohttp session (call inside the running event loop).

    A shared session with trust_env off avoids per-request .netrc/proxy lookups that the
    SDK's default transport repeats on every call (see LOCAL-AZURE-NOTES: ~2.5x throughput).
    """
    timeout = settings.storage_timeout_seconds
    # Azurite (Node) closes an idle keep-alive connection after 5 s; aiohttp keeps one for 15 s,
    # so a request could go out on a connection the server is closing that very moment ("Server
    # disconnected", seen once in a CI run). Against a loopback Azurite, let connections go first.
    local = bool(re.search(r"Endpoint=https?://(127\.0\.0\.1|localhost)[:/]", settings.storage_connection_string or ""))
    session = aiohttp.ClientSession(
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=4.0 if local else 15.0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
    )
    retries = _retries(settings)
    blob_options = {"max_single_get_size": 32 * MiB, "max_chunk_get_size": 8 * MiB, **retries["blob"]}
    if settings.storage_connection_string:
        blob = BlobServiceClient.from_connection_string(
            settings.storage_connection_string, transport=_transport(session, timeout), **blob_options
        )
        table = TableServiceClient.from_connection_string(
            settings.storage_connection_string, transport=_transport(session, timeout), **retries["table"]
        )
        key = table.credential.named_key.key if hasattr(table.credential, "named_key") else None
        reader = TableRequests(session, table.url, table.account_name, account_key=key)
        queue, poison = (QueueClient.from_connection_string(settings.storage_connection_string, name,
                                                            transport=_transport(session, timeout), **retries["queue"])
                         for name in (events_queue_name(settings), events_queue_name(settings) + "-poison"))
        return StorageClients(blob, table, session, reader, queue, poison)
    if not (settings.blob_endpoint and settings.table_endpoint and settings.queue_endpoint):
        raise ValueError("no storage configured: set BERTH_STORAGE_CONNECTION_STRING or BERTH_STORAGE_ACCOUNT")
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    credential = (
        ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
        if settings.managed_identity_client_id
        else DefaultAzureCredential()
    )
    blob = BlobServiceClient(
        settings.blob_endpoint, credential=credential, transport=_transport(session, timeout), **blob_options
    )
    table = TableServiceClient(settings.table_endpoint, credential=credential,
                               transport=_transport(session, timeout), **retries["table"])
    reader = TableRequests(session, table.url, table.account_name, credential=credential)
    queue, poison = (QueueClient(settings.queue_endpoint, name, credential=credential,
                                 transport=_transport(session, timeout), **retries["queue"])
                     for name in (events_queue_name(settings), events_queue_name(settings) + "-poison"))
    return StorageClients(blob, table, session, reader, queue, poison, credential)
