"""Blob bytes in Blob Storage: streamed block uploads, conditional writes, reads, SAS links.

Every write that can race is conditional on the etag the caller read (or on the blob's
absence), and carries a one-off `commit` marker in the blob's metadata: when a write's answer
is lost (a timeout, or the SDK's own retry then meeting its first attempt's change), one stat
tells whether the change that is there is ours.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from registry.storage.blob_requests import BlobRequests

# Upload blobs are named by their session id; finished blobs keep that name (no copy).
UPLOAD_PREFIX = "data/"
MANIFEST_PREFIX = "manifests/"
COMMIT_MARK = "commit"
META_HEADER = "x-ms-meta-"
STAT_SAS_SECONDS = 300


@dataclass(frozen=True)
class BlobState:
    size: int
    etag: str
    metadata: dict[str, str]


class BlobChanged(Exception):
    """The blob is not the version the caller read: changed, created or deleted since."""


class TooManyBlocks(Exception):
    """The blob would pass Azure's limit of committed blocks (many tiny chunks)."""


class LengthMismatch(Exception):
    """The stream ended with a different number of bytes than the client announced."""

    def __init__(self, expected: int, received: int):
        super().__init__(f"expected {expected} bytes, received {received}")
        self.expected = expected
        self.received = received


def _condition(etag: str | None) -> dict[str, Any]:
    """If-Match the version read, or If-None-Match * when there was none."""
    if etag is None:
        return {"match_condition": MatchConditions.IfMissing}
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


# Chunks smaller than this are gathered into one piece of the next block (see stage).
GATHER_BELOW = 64 * 1024
_CONFLICTS = (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError)
# The 409s that mean "If-None-Match: * failed" (None: an emulator that sends no code).
_EXISTS_CODES = (None, "BlobAlreadyExists")
# Azure keeps at most this many committed blocks per block blob.
MAX_BLOCKS = 50_000


def _discard(task: asyncio.Future[Any] | None) -> None:
    """Cancel a helper task we no longer need, and never leave its failure unretrieved."""
    if task is None:
        return
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


class ContentStore:
    def __init__(self, service: BlobServiceClient, container: str, block_size: int, blocks_in_flight: int,
                 session: aiohttp.ClientSession, block_timeout: float = 60):
        self._service = service
        # Socket reads are bounded by the transport; a storage that stops reading our upload
        # is not, so each staged block gets a deadline of its own.
        self._block_timeout = block_timeout
        self._session = session
        self._container: ContainerClient = service.get_container_client(container)
        self.block_size = block_size
        self._blocks_in_flight = blocks_in_flight
        account_key = getattr(service.credential, "account_key", None)
        self._blocks = BlobRequests(session, service.account_name, account_key=account_key,
                                    credential=None if account_key else service.credential)
        self._delegation_key: Any = None
        self._delegation_key_expiry = datetime.min.replace(tzinfo=UTC)

    async def ensure_container(self) -> None:
        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass

    async def check(self) -> None:
        """Raises unless the container answers (readiness)."""
        await self._container.get_container_properties()

    async def stage(self, name: str, chunks: AsyncIterator[bytes],
                    expected_length: int | None = None) -> tuple[list[str], int]:
        """Stage the stream as uncommitted blocks of the blob; their ids and how many bytes.

        Staged blocks change nothing anyone can see until a commit names them (Azure drops
        them a week later, or at the blob's next commit if that commit leaves them out). All
        of the stream is staged or the call raises (LengthMismatch if the client announced
        another length); `blocks_in_flight` blocks upload at once.
        """
        url = self._url(name)
        staged: list[str] = []
        in_flight: set[asyncio.Task[Any]] = set()
        # The next block's pieces, joined once it is full: each byte of a socket-sized chunk is
        # copied once on its way (a bytearray buffer copied it three times, a fifth of a large
        # push's CPU). The join waits for a free slot first, so an upload holds at most
        # (blocks_in_flight + 1) blocks.
        pieces: list[memoryview | bytearray] = []
        pending = total = 0

        async def launch() -> None:
            while len(in_flight) >= self._blocks_in_flight:
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.discard(task)
                    task.result()
            block_id = secrets.token_hex(16)  # a blob's block ids must all have one length
            staged.append(block_id)
            in_flight.add(asyncio.create_task(stage_one(block_id, b"".join(pieces))))
            pieces.clear()

        async def stage_one(block_id: str, data: bytes) -> None:
            try:
                await asyncio.wait_for(self._blocks.put_block(url, block_id, data), self._block_timeout)
            except HttpResponseError as error:
                if getattr(error, "error_code", None) == "BlockCountExceedsLimit":  # 100,000 uncommitted
                    raise TooManyBlocks(f"{name} holds too many uncommitted blocks") from None
                raise

        try:
            async for chunk in chunks:
                if not isinstance(chunk, bytes):
                    chunk = bytes(chunk)  # held until its block is full: never a buffer its producer reuses
                total += len(chunk)
                view = memoryview(chunk)
                while pending + len(view) >= self.block_size:
                    room = self.block_size - pending
                    pieces.append(view[:room])
                    view = view[room:]
                    pending = 0
                    await launch()
                if not view:
                    continue
                pending += len(view)
                if len(view) >= GATHER_BELOW:
                    pieces.append(view)
                elif pieces and isinstance(pieces[-1], bytearray):
                    pieces[-1] += view  # a trickle of tiny chunks is one piece, not an object each
                else:
                    pieces.append(bytearray(view))
            if pieces:
                await launch()
            if in_flight:
                await asyncio.gather(*in_flight)
        except BaseException:
            for task in in_flight:
                _discard(task)
            raise
        if expected_length is not None and total != expected_length:
            raise LengthMismatch(expected_length, total)
        return staged, total

    async def committed_blocks(self, name: str) -> list[str]:
        """The ids of the blob's committed blocks, in order (BlobChanged if it is gone)."""
        try:
            existing, _ = await self._container.get_blob_client(name).get_block_list("committed")
        except ResourceNotFoundError:
            raise BlobChanged(f"{name} is gone") from None
        return [block.id for block in existing]

    async def commit(self, name: str, committed: list[str], staged: list[str], metadata: dict[str, str],
                     etag: str | None) -> str:
        """Make the blob its `committed` blocks followed by `staged` ones, with `metadata`;
        conditional on version `etag` (None: the blob must not exist). Returns the new etag."""
        if len(committed) + len(staged) > MAX_BLOCKS:
            raise TooManyBlocks(f"{name} would have {len(committed) + len(staged)} blocks")
        return await self._commit(name, committed, staged, metadata, etag)

    async def truncate(self, name: str, metadata: dict[str, str], etag: str | None) -> str:
        """Replace the blob by an empty one with `metadata` (its bytes are freed); conditional."""
        return await self._commit(name, [], [], metadata, etag)

    async def _commit(self, name: str, committed: list[str], staged: list[str], metadata: dict[str, str],
                      etag: str | None) -> str:
        marked = {**metadata, COMMIT_MARK: secrets.token_hex(8)}
        condition = {"If-None-Match": "*"} if etag is None else {"If-Match": etag}
        try:
            return await self._blocks.put_block_list(self._url(name), committed, staged, marked, condition)
        except _CONFLICTS as error:
            return await self._ours_or_raise(name, marked, error)

    def _url(self, name: str) -> str:
        # The blob's URL as the SDK spells it, without building a client (and its pipeline) for it.
        return f"{self._container.url}/{quote(name, safe='/~')}"

    async def set_metadata(self, name: str, metadata: dict[str, str], etag: str | None) -> str:
        """Write the blob's metadata (None: create it empty); conditional; returns the new etag."""
        if etag is None:
            return await self.truncate(name, metadata, None)
        marked = {**metadata, COMMIT_MARK: secrets.token_hex(8)}
        try:
            result = await self._container.get_blob_client(name).set_blob_metadata(marked, **_condition(etag))
        except _CONFLICTS as error:
            return await self._ours_or_raise(name, marked, error)
        return result["etag"]

    async def _ours_or_raise(self, name: str, marked: dict[str, str], error: Exception) -> str:
        """After a failed condition: the etag if the blob holds our own write, else BlobChanged.

        Only a failed condition is a lost race; any other refusal (a 409 such as
        BlockCountExceedsLimit) is raised as it is, not misreported as a concurrent change.
        """
        code = getattr(error, "error_code", None)
        if isinstance(error, ResourceExistsError) and code not in _EXISTS_CODES:
            raise error
        if isinstance(error, ResourceNotFoundError) and code not in (None, "BlobNotFound"):
            raise error  # the container itself (ContainerNotFound): storage trouble, not a race
        state = await self.stat(name)
        if state is not None and state.metadata.get(COMMIT_MARK) == marked[COMMIT_MARK]:
            return state.etag
        raise BlobChanged(str(error)) from error

    async def stat(self, name: str) -> BlobState | None:
        """Size, etag and metadata of a blob, or None if there is none.

        On every upload request's path, so a plain HEAD of a read-only SAS URL (signed here, no
        round trip) on the shared session: a fraction of the SDK's cost, most of all for a 404.
        """
        url = await self.read_url(name, STAT_SAS_SECONDS)
        for attempt in range(2):  # a read is idempotent: one retry absorbs a dropped connection
            try:
                async with self._session.head(url) as response:
                    if response.status == 404:
                        return None
                    if response.status != 200:
                        error = HttpResponseError(f"reading the properties of {name} failed: {response.status}")
                        error.status_code = response.status
                        raise error
                    metadata = {key.lower()[len(META_HEADER):]: value for key, value in response.headers.items()
                                if key.lower().startswith(META_HEADER)}
                    return BlobState(int(response.headers["Content-Length"]), response.headers["ETag"], metadata)
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def list(self, prefix: str) -> AsyncIterator[tuple[str, BlobState, datetime]]:
        """Every blob under `prefix`: name, state and when it last changed (for the collector)."""
        async for blob in self._container.list_blobs(name_starts_with=prefix, include=["metadata"]):
            state = BlobState(blob.size, blob.etag, {k.lower(): v for k, v in (blob.metadata or {}).items()})
            yield blob.name, state, blob.last_modified

    async def read(self, name: str, etag: str) -> AsyncIterator[bytes]:
        """The blob's bytes, only while it is still version `etag` (else BlobChanged)."""
        try:
            downloader = await self._container.get_blob_client(name).download_blob(**_condition(etag))
        except _CONFLICTS as error:
            raise BlobChanged(str(error)) from error
        async for chunk in downloader.chunks():
            yield chunk

    async def open_stream(self, name: str, ttl_seconds: int, offset: int = 0,
                          length: int | None = None) -> AsyncIterator[bytes] | None:
        """The blob's bytes for a client, as one streamed GET of a read-only SAS URL; None if
        the blob is not there.

        Storage has answered before this returns, so its trouble is still a 503 rather than a
        200 cut short. One request instead of the SDK's series of ranged reads: several times
        the throughput in proxy delivery, and the same URL a redirect would have handed out.
        """
        url = await self.read_url(name, ttl_seconds)
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = await self._session.get(url, headers=headers)
        if response.status not in (200, 206):
            response.release()
            if response.status == 404:
                return None
            error = HttpResponseError(f"reading {name} failed: {response.status}")
            error.status_code = response.status
            raise error

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_chunked(1024 * 1024):
                    yield chunk
            finally:
                response.release()

        return body()

    async def read_all(self, name: str) -> bytes:
        downloader = await self._container.get_blob_client(name).download_blob()
        return await downloader.readall()

    async def put_once(self, name: str, data: bytes) -> None:
        """Store content-addressed bytes; a blob already there holds the same bytes."""
        try:
            await self._container.get_blob_client(name).upload_blob(
                io.BytesIO(data), length=len(data), **_condition(None)
            )
        except ResourceExistsError:
            pass

    async def delete(self, name: str, etag: str) -> bool:
        """Delete the blob if it is still version `etag`; False if it changed or is gone."""
        try:
            await self._container.get_blob_client(name).delete_blob(**_condition(etag))
        except _CONFLICTS:
            return False
        return True

    async def read_url(self, name: str, ttl_seconds: int) -> str:
        """A URL that lets its holder read this one blob for ttl_seconds, and nothing else."""
        now = datetime.now(UTC)
        expiry = now + timedelta(seconds=ttl_seconds)
        start = now - timedelta(minutes=5)  # tolerate clock skew between us and storage
        account_key = getattr(self._service.credential, "account_key", None)
        delegation_key = None if account_key else await self._user_delegation_key(expiry)
        sas = read_only_sas(self._service.account_name, self._container.container_name, name, start, expiry,
                            account_key=account_key, delegation_key=delegation_key)
        return f"{self._url(name)}?{sas}"

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
