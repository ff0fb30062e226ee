"""Pull-through cache (ACR's artifact cache): a pull of a repository a cache rule covers fetches
what it asks for from upstream when this registry does not have it, stores it, then serves it.

- Manifests, by tag or digest, are fetched one at a time, verified (manifests.py's digest
  checks in upstream.py) and stored as pushed, without their blobs or an index's children: those
  are fetched when a client asks for them, so a pull of one platform fetches one platform.
- Tags are asked upstream again (a HEAD, which Docker Hub does not count against its pull
  limit) once they are older than BERTH_CACHE_TAG_TTL_SECONDS; a changed tag is fetched anew,
  and an upstream that fails or throttles leaves the cached one served.
- Blobs stream from upstream into an upload that checks their digest and length before
  anything is committed (never held in memory), then are served like any blob. One download per
  digest at a time: within an instance callers share it, across instances a claim row in the
  digest index lets one instance fetch while the others wait for its result.
- Nothing a client names is fetched unless a rule maps its repository, and blob bytes another
  repository holds are never linked by digest alone: upstream must hand them over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from registry.oci.digest import Digest
from registry.oci.errors import (
    BLOB_UNKNOWN,
    MANIFEST_UNKNOWN,
    TOO_MANY_REQUESTS,
    UPSTREAM_FAILED,
    UPSTREAM_FORBIDDEN,
    RegistryError,
)
from registry.oci.manifest import Descriptor, parse_manifest
from registry.ops.importer import Importer, ImportReport
from registry.ops.secrets import SecretReader, SecretUnavailable, key_vault_credential, login_with_set
from registry.ops.upstream import (
    GuardedConnector,
    SourceImage,
    UpstreamClient,
    UpstreamError,
    UpstreamForbidden,
    parse_source,
)
from registry.settings import Settings
from registry.storage.blobs import BlobInfo
from registry.storage.errors import unavailable
from registry.storage.manifests import StoredManifest
from registry.storage.metadata import etag_of, repository_key
from registry.storage.registry_store import RegistryStore

CLAIM = "fetching:"  # + repository key: the RowKey of a download's claim, in the digest's partition
CLIENT_TTL = 300.0
REFRESH_SECONDS = 10.0
TAP_CHUNKS = 8  # chunks (up to 1 MiB each) buffered for a streaming client
TAP_PATIENCE = 10.0  # seconds a streaming client may stop reading before it is let go
POLL_SECONDS = 0.5

log = logging.getLogger("berth.cache")


class _NotStreaming(Exception):
    """This request does not stream the download (see PullThrough.stream_blob)."""


_END = object()


class _Tap:
    """The chunks of a download, handed to the client that started it as they are stored.

    A slow client slows the download (TAP_CHUNKS are buffered); one that stops reading for
    TAP_PATIENCE seconds, leaves, or never starts is let go (`leave`): its response is cut short
    and the download goes on into storage for the next client. The size is announced with the
    first chunk, so a download that sends nothing (stored meanwhile, refused) declines instead,
    and the request is answered from storage. The last chunk is held back until the download
    is verified and stored: a client never receives all the bytes of a blob whose digest is wrong.
    """

    def __init__(self) -> None:
        self.size: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue: asyncio.Queue[object] = asyncio.Queue()  # unbounded: `put` waits for room
        self._room = asyncio.Event()
        self._room.set()
        self._length = 0
        self._held: bytes | None = None
        self._gone = False

    def announce(self, size: int) -> None:
        self._length = size

    def decline(self) -> None:
        if not self.size.done():
            self.size.set_exception(_NotStreaming())

    def leave(self) -> None:
        """The client is gone (or never came): nothing more is queued for it."""
        self._gone = True
        self._room.set()
        while not self._queue.empty():
            self._queue.get_nowait()

    async def put(self, chunk: bytes) -> None:
        if not self.size.done():
            self.size.set_result(self._length)
        held, self._held = self._held, chunk
        if held is None or self._gone:
            return
        self._queue.put_nowait(held)
        if self._queue.qsize() >= TAP_CHUNKS:
            self._room.clear()
            try:
                async with asyncio.timeout(TAP_PATIENCE):
                    await self._room.wait()
            except TimeoutError:
                log.info("a client stopped reading a blob it was streamed; it is stored without it")
                self.leave()

    def finish(self) -> None:
        self.decline()  # nothing was sent: the request is answered from storage
        if not self._gone:
            if self._held is not None:
                self._queue.put_nowait(self._held)
            self._queue.put_nowait(_END)

    def fail(self, error: BaseException) -> None:
        if not self.size.done():
            if isinstance(error, asyncio.CancelledError):
                self.decline()
            else:
                self.size.set_exception(error)
            return
        if not self._gone:  # mid-stream: the client's response is cut short, so it never completes
            self._queue.put_nowait(error if isinstance(error, Exception) else RuntimeError("download cancelled"))

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await self._queue.get()
                if self._queue.qsize() < TAP_CHUNKS // 2:
                    self._room.set()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.leave()


class PullThrough:
    def __init__(self, store: RegistryStore, settings: Settings):
        self._store = store
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._identity = key_vault_credential(settings.managed_identity_client_id)
        # Per rule: its client (which keeps upstream's tokens) and login, for CLIENT_TTL seconds.
        self._clients: dict[str, tuple[float, UpstreamClient]] = {}
        self._fetches: dict[tuple[str, str], asyncio.Future[None]] = {}  # downloads in progress
        self._refreshing: set[str] = set()  # tags being asked upstream again

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._identity.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
            # Rules are an operator's, but redirects and token realms are upstream's: the same
            # guard as the import endpoint keeps them off private addresses (metadata endpoints).
            connector = GuardedConnector(self._settings.upstream_private_hosts)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
        return self._session

    async def _upstream(self, repository: str, reference: str) -> tuple[UpstreamClient, SourceImage] | None:
        """The upstream client and image for a repository a rule covers, if it may be filled:
        never for a read- or write-disabled repository (nothing is fetched for it)."""
        matched = await self._store.cache_rules.match(repository)
        if matched is None:
            return None
        locks = await self._store.locks.cached(repository)
        if not locks.readEnabled or not locks.writeEnabled:
            return None
        rule, upstream = matched  # http://host/... only where the rule says so
        source = parse_source(f"{upstream}@{reference}" if ":" in reference else f"{upstream}:{reference}")
        kept = self._clients.get(rule.name)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1], source
        login = None
        if rule.credential_set:
            reader = SecretReader(self._http(), self._identity)
            try:
                login = await login_with_set(self._store.credential_sets, reader, rule.credential_set, source)
            except (SecretUnavailable, RegistryError) as error:
                raise RegistryError(UPSTREAM_FAILED, f"cache rule {rule.name}: "
                                    f"{getattr(error, 'message', error)}") from None
        client = UpstreamClient(self._http(), login, self._settings.max_manifest_bytes)
        self._clients[rule.name] = (time.monotonic() + CLIENT_TTL, client)
        return client, source

    # --- manifests ------------------------------------------------------------------------

    async def manifest(self, repository: str, reference: Digest | str, with_body: bool) -> StoredManifest | None:
        """A manifest this registry does not have, fetched and stored; None without a rule."""
        found = await self._upstream(repository, str(reference))
        if found is None:
            return None
        client, source = found
        await self._shared(("manifest", f"{repository}@{reference}"),
                           lambda: self._fetch_manifest(client, source, repository, reference))
        return await self._store.manifests.get(repository, reference, with_body=with_body)

    async def _shared(self, key: tuple[str, str], work: Callable[[], Awaitable[None]]) -> None:
        """Requests on this instance for the same thing share one fetch."""
        running = self._fetches.get(key)
        if running is None:
            running = self._fetches[key] = asyncio.ensure_future(work())
            running.add_done_callback(lambda _: self._fetches.pop(key, None))
        await asyncio.shield(running)

    async def _fetch_manifest(self, client: UpstreamClient, source: SourceImage, repository: str,
                              reference: Digest | str) -> None:
        what = f"manifest {reference}"
        try:
            body, media_type, digest = await client.manifest(source, str(reference))
            manifest = parse_manifest(body, media_type)
        except UpstreamError as error:
            raise self._failure(error, what) from None
        except RegistryError as error:  # not a manifest Berth stores (schema 1, invalid)
            raise RegistryError(UPSTREAM_FAILED, f"{what} from upstream: {error.message}") from None
        tags = [reference] if isinstance(reference, str) else []
        await self._store.put_manifest(repository, digest, body, manifest, tags, cached_from_upstream=True)

    async def refresh(self, repository: str, tag: str, stored: StoredManifest) -> StoredManifest:
        """A cached tag older than the TTL: asked upstream again (HEAD); fetched anew if it moved.
        An upstream that fails leaves the cached manifest served."""
        checked = stored.upstream_checked
        ttl = timedelta(seconds=self._settings.cache_tag_ttl_seconds)
        if checked is None or datetime.fromisoformat(checked.replace("Z", "+00:00")) + ttl > datetime.now(UTC):
            return stored
        key = f"{repository}:{tag}"
        if key in self._refreshing:  # another request on this instance is asking already
            return stored
        self._refreshing.add(key)
        try:
            async with asyncio.timeout(REFRESH_SECONDS):  # the pull waits this long at most
                found = await self._upstream(repository, tag)
                if found is None:
                    return stored
                client, source = found
                digest = await client.head_manifest(source, tag)
                if digest != stored.digest:
                    await self._fetch_manifest(client, source, repository, tag)
                    return await self._store.manifests.get(repository, tag, with_body=stored.body is not None)
        except (UpstreamError, RegistryError, TimeoutError) as error:
            # Down, throttling, gone, or a tag that may not move (locked, or pushed by a user meanwhile):
            # serve what is here and ask again after the TTL, not on every pull.
            log.warning("cached tag %s:%s served as it is; upstream not asked again for %d s: %s", repository, tag,
                        self._settings.cache_tag_ttl_seconds, getattr(error, "message", repr(error)))
        finally:
            self._refreshing.discard(key)
        await self._store.manifests.mark_checked(repository, tag, stored.digest)
        return stored

    # --- blobs ----------------------------------------------------------------------------

    async def blob(self, repository: str, digest: Digest) -> BlobInfo | None:
        """A blob this registry does not have in `repository`, fetched and linked; None without a rule."""
        if await self._store.cache_rules.match(repository) is None:
            return None
        await self._shared(("blob", f"{repository}@{digest}"), lambda: self._fetch_blob_once(repository, digest))
        return await self._store.blobs.stat(repository, digest)

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        """A blob not here yet, as a HEAD sees it: its length as upstream says (upstream's HEAD;
        nothing is fetched). None without a rule."""
        found = await self._upstream(repository, str(digest))
        if found is None:
            return None
        client, source = found
        try:
            return await client.blob_size(source, digest)
        except UpstreamError as error:
            raise self._failure(error, f"blob {digest}") from None

    async def stream_blob(self, repository: str, digest: Digest) -> tuple[int, _Tap] | None:
        """A blob not here yet, streamed to this caller while it is stored: (size, chunks). None
        when this request does not start the download (no rule, already stored, being fetched
        here or by another instance): then `blob` waits for the stored copy."""
        if await self._store.cache_rules.match(repository) is None:
            return None
        key = ("blob", f"{repository}@{digest}")
        if key in self._fetches:
            return None
        tap = _Tap()
        running = self._fetches[key] = asyncio.ensure_future(self._fetch_blob_once(repository, digest, tap))
        running.add_done_callback(lambda done: (self._fetches.pop(key, None), done.cancelled() or done.exception()))
        try:
            size = await asyncio.shield(tap.size)
        except _NotStreaming:
            return None
        except asyncio.CancelledError:  # this request ran out of time before the first byte
            tap.leave()
            raise
        return size, tap

    async def _fetch_blob_once(self, repository: str, digest: Digest, tap: _Tap | None = None) -> None:
        """Fetch unless another instance is: its claim makes this one wait for the link instead."""
        try:
            await self._fetch_blob(repository, digest, tap)
        except BaseException as error:
            if tap is not None:
                tap.fail(error)
            raise
        if tap is not None:
            tap.finish()

    async def _fetch_blob(self, repository: str, digest: Digest, tap: _Tap | None) -> None:
        deadline = asyncio.get_running_loop().time() + self._settings.request_budget_seconds - 10
        while True:
            if await self._linked(repository, digest):
                if tap is not None:
                    tap.decline()
                return
            claim = await self._claim(repository, digest)
            if claim is not None:
                break
            if tap is not None:
                tap.decline()  # another instance fetches it: this request waits for its copy
                tap = None
            if asyncio.get_running_loop().time() > deadline:
                raise unavailable(f"blob {digest} is being fetched from upstream by another instance")
            await asyncio.sleep(POLL_SECONDS)
        renewing = asyncio.ensure_future(self._renew(repository, digest, claim))
        try:
            found = await self._upstream(repository, str(digest))
            if found is None:
                raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")
            client, source = found
            try:
                size = await client.blob_size(source, digest)
                if tap is not None:
                    tap.announce(size)
                # A digest alone never links another repository's bytes: upstream hands them over.
                importer = Importer(self._store, client, link_from_anywhere=False,
                                    tap=tap.put if tap is not None else None)
                await importer.copy_blob(source, repository, Descriptor("application/octet-stream", digest, size),
                                         ImportReport(str(source), repository))
            except UpstreamError as error:
                raise self._failure(error, f"blob {digest}") from None
            except RegistryError as error:
                if error.error.code not in ("DIGEST_INVALID", "SIZE_INVALID"):
                    raise
                # Upstream sent other bytes than the digest names: nothing was stored.
                raise RegistryError(UPSTREAM_FAILED, f"blob {digest} from upstream: {error.message}") from None
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await self._release(repository, digest, claim[0])

    async def _linked(self, repository: str, digest: Digest) -> bool:
        try:
            await self._store.blobs.stat(repository, digest)
        except RegistryError:
            return False
        return True

    def _claim_key(self, repository: str) -> str:
        return CLAIM + repository_key(repository)

    async def _claim(self, repository: str, digest: Digest) -> list[str] | None:
        """Claim the download of `digest` into `repository`: [the claim's etag] (renewed in place
        by `_renew`), or None while another instance holds a live claim."""
        table = self._store.metadata.digests
        entity = {"PartitionKey": str(digest), "RowKey": self._claim_key(repository), "until": self._until()}
        try:
            created = await table.create_entity(entity)
            return [created["etag"]]
        except ResourceExistsError:
            pass
        row = await self._store.metadata.get(table, str(digest), self._claim_key(repository))
        if row is None or row["until"] > datetime.now(UTC):
            return None  # released just now (the next look finds the link), or alive
        try:  # the instance that claimed it stopped renewing: take the claim over
            replaced = await table.update_entity(entity, etag=etag_of(row),
                                                 match_condition=MatchConditions.IfNotModified)
            return [replaced["etag"]]
        except (ResourceModifiedError, ResourceNotFoundError):
            return None

    def _until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._settings.request_budget_seconds)

    async def _renew(self, repository: str, digest: Digest, claim: list[str]) -> None:
        """Keep the claim alive while the download runs, however long it takes."""
        table = self._store.metadata.digests
        while True:
            await asyncio.sleep(self._settings.request_budget_seconds / 3)
            entity = {"PartitionKey": str(digest), "RowKey": self._claim_key(repository), "until": self._until()}
            try:
                renewed = await table.update_entity(entity, etag=claim[0],
                                                    match_condition=MatchConditions.IfNotModified)
                claim[0] = renewed["etag"]
            except (ResourceModifiedError, ResourceNotFoundError):
                return  # taken over (this one was presumed dead): its download goes on regardless
            except Exception as error:  # noqa: BLE001 (storage hiccup: try again next period)
                log.warning("claim of %s not renewed: %r", digest, error)

    async def _release(self, repository: str, digest: Digest, etag: str) -> None:
        try:
            await self._store.metadata.digests.delete_entity(str(digest), self._claim_key(repository), etag=etag,
                                                             match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    # --- outcomes -------------------------------------------------------------------------

    def _failure(self, error: UpstreamError, what: str) -> RegistryError:
        if isinstance(error, UpstreamForbidden):
            return RegistryError(UPSTREAM_FORBIDDEN, f"{what}: {error.message}")
        # Docker Hub answers 401 for a repository that does not exist (or is private): not found.
        if error.status in (401, 403, 404):
            code = MANIFEST_UNKNOWN if what.startswith("manifest") else BLOB_UNKNOWN
            return RegistryError(code, f"{what}: {error.message}")
        if error.status == 429:
            return RegistryError(TOO_MANY_REQUESTS, f"upstream is throttling; {what} is not cached yet",
                                 headers={"Retry-After": "30"})
        return RegistryError(UPSTREAM_FAILED, f"{what}: {error.message}")
