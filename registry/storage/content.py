"""Blob bytes in Blob Storage: streamed block uploads, ranged reads, read-only SAS links."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobSasPermissions, BlockState, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

# Upload blobs are named by their session id; finished blobs keep that name (no copy).
UPLOAD_PREFIX = "data/"
MANIFEST_PREFIX = "manifests/"
# A finished upload's blob carries this; sealing changes its etag, so stale appends fail.
SEALED = {"berth": "sealed"}


class ConcurrentAppend(Exception):
    """Another request changed the upload's blob first."""


class LengthMismatch(Exception):
    """The stream ended with a different number of bytes than the client announced."""

    def __init__(self, expected: int, received: int):
        super().__init__(f"expected {expected} bytes, received {received}")
        self.expected = expected
        self.received = received


class ContentStore:
    def __init__(self, service: BlobServiceClient, container: str, block_size: int, blocks_in_flight: int,
                 session: aiohttp.ClientSession):
        self._service = service
        self._session = session
        self._container: ContainerClient = service.get_container_client(container)
        self._block_size = block_size
        self._blocks_in_flight = blocks_in_flight
        self._delegation_key: Any = None
        self._delegation_key_expiry = datetime.min.replace(tzinfo=UTC)

    async def ensure_container(self) -> None:
        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass

    async def append(
        self,
        name: str,
        chunks: AsyncIterator[bytes],
        etag: str | None,
        expected_length: int | None = None,
        seal_if: Callable[[], bool] | None = None,
    ) -> tuple[str, int, bool]:
        """Stage the stream as blocks, then commit them after the blob's existing blocks.

        Nothing is committed unless the whole stream arrived; the commit is conditional on
        the blob's etag so that two appends at the same offset cannot both win. `seal_if`,
        asked once all bytes are staged, may seal the blob in the same commit (or raise to
        commit nothing). Returns (new etag, bytes appended, sealed).
        """
        blob = self._container.get_blob_client(name)
        staged: list[str] = []
        in_flight: set[asyncio.Task[Any]] = set()
        buffer = bytearray()
        total = 0

        async def launch(data: bytes) -> None:
            while len(in_flight) >= self._blocks_in_flight:
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.discard(task)
                    task.result()
            block_id = secrets.token_hex(16)
            staged.append(block_id)
            in_flight.add(asyncio.create_task(blob.stage_block(block_id, io.BytesIO(data), length=len(data))))

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                total += len(chunk)
                buffer += chunk
                while len(buffer) >= self._block_size:
                    block = bytes(buffer[: self._block_size])
                    del buffer[: self._block_size]
                    await launch(block)
            if buffer:
                await launch(bytes(buffer))
            if in_flight:
                await asyncio.gather(*in_flight)
            if expected_length is not None and total != expected_length:
                raise LengthMismatch(expected_length, total)
        except BaseException:
            for task in in_flight:
                task.cancel()
            raise

        sealed = seal_if() if seal_if is not None else False
        if etag is not None and not staged:
            return etag, 0, False
        blocks: list[BlobBlock] = []
        if etag is not None:
            committed, _ = await blob.get_block_list("committed")
            blocks = [BlobBlock(b.id, BlockState.COMMITTED) for b in committed]
        blocks += [BlobBlock(block_id, BlockState.UNCOMMITTED) for block_id in staged]
        conditions: dict[str, Any] = (
            {"match_condition": MatchConditions.IfMissing}
            if etag is None
            else {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        )
        metadata = SEALED if sealed else None
        try:
            result = await blob.commit_block_list(blocks, metadata=metadata, **conditions)
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError) as error:
            raise ConcurrentAppend(str(error)) from error
        return result["etag"], total, sealed

    async def stat(self, name: str) -> tuple[int, str, bool] | None:
        """(size, etag, sealed) of a blob, or None if there is none."""
        try:
            properties = await self._container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return properties.size, properties.etag, properties.metadata.get("berth") == "sealed"

    async def read(self, name: str, offset: int = 0, length: int | None = None,
                   etag: str | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes; with `etag`, only if it is still that version (else ConcurrentAppend)."""
        conditions: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            downloader = await self._container.get_blob_client(name).download_blob(
                offset=offset, length=length, **conditions
            )
        except ResourceModifiedError as error:
            raise ConcurrentAppend(str(error)) from error
        async for chunk in downloader.chunks():
            yield chunk

    async def stream(self, name: str, ttl_seconds: int, offset: int = 0,
                     length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes for a client, as one streamed GET of a read-only SAS URL.

        One request instead of the SDK's series of ranged reads: several times the throughput
        in proxy delivery, and the same URL a redirect would have handed out.
        """
        url = await self.read_url(name, ttl_seconds)
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        async with self._session.get(url, headers=headers) as response:
            if response.status not in (200, 206):
                raise HttpResponseError(f"reading {name} failed: {response.status}")
            async for chunk in response.content.iter_chunked(1024 * 1024):
                yield chunk

    async def seal(self, name: str, etag: str | None) -> None:
        """Mark a finished upload's blob; conditional on `etag`, and it changes the etag."""
        blob = self._container.get_blob_client(name)
        try:
            if etag is None:  # nothing was ever appended: the blob is the empty one
                await blob.commit_block_list([], metadata=SEALED, match_condition=MatchConditions.IfMissing)
            else:
                await blob.set_blob_metadata(SEALED, etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError) as error:
            raise ConcurrentAppend(str(error)) from error

    async def read_all(self, name: str) -> bytes:
        downloader = await self._container.get_blob_client(name).download_blob()
        return await downloader.readall()

    async def put(self, name: str, data: bytes) -> None:
        await self._container.get_blob_client(name).upload_blob(io.BytesIO(data), length=len(data), overwrite=True)

    async def delete(self, name: str) -> None:
        try:
            await self._container.get_blob_client(name).delete_blob()
        except ResourceNotFoundError:
            pass

    async def read_url(self, name: str, ttl_seconds: int) -> str:
        """A URL that lets its holder read this one blob for ttl_seconds, and nothing else."""
        blob = self._container.get_blob_client(name)
        now = datetime.now(UTC)
        expiry = now + timedelta(seconds=ttl_seconds)
        start = now - timedelta(minutes=5)  # tolerate clock skew between us and storage
        account_key = getattr(self._service.credential, "account_key", None)
        delegation_key = None if account_key else await self._user_delegation_key(expiry)
        sas = read_only_sas(self._service.account_name, self._container.container_name, name, start, expiry,
                            account_key=account_key, delegation_key=delegation_key)
        return f"{blob.url}?{sas}"

    async def _user_delegation_key(self, needed_until: datetime) -> Any:
        # One key serves many SAS URLs; renew it well before any URL could outlive it.
        if self._delegation_key is None or self._delegation_key_expiry < needed_until:
            now = datetime.now(UTC)
            expiry = now + timedelta(hours=6)
            self._delegation_key = await self._service.get_user_delegation_key(
                key_start_time=now - timedelta(minutes=5), key_expiry_time=expiry
            )
            self._delegation_key_expiry = expiry
        return self._delegation_key


def read_only_sas(account: str, container: str, blob: str, start: datetime, expiry: datetime,
                  account_key: str | None = None, delegation_key: Any = None) -> str:
    """SAS query string granting read of one blob: signed with the account key (Azurite, key
    auth) or with a user delegation key (managed identity: no account key exists)."""
    return generate_blob_sas(
        account,
        container,
        blob,
        account_key=account_key,
        user_delegation_key=delegation_key,
        permission=BlobSasPermissions(read=True),
        expiry=expiry,
        start=start,
    )
