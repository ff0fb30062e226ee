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
from datetime import UTC, datetime, timedelta

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from registry.oci.digest import Digest
from registry.oci.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, UPSTREAM_FAILED, RegistryError
from registry.oci.manifest import Descriptor, parse_manifest
from registry.ops.importer import Importer, ImportReport
from registry.ops.secrets import SecretReader, SecretUnavailable, key_vault_credential, login_with_set
from registry.ops.upstream import SourceImage, UpstreamClient, UpstreamError, parse_source
from registry.settings import Settings
from registry.storage.blobs import BlobInfo
from registry.storage.errors import unavailable
from registry.storage.manifests import StoredManifest
from registry.storage.metadata import etag_of
from registry.storage.registry_store import RegistryStore

CLAIM = "fetching"  # RowKey of a digest's claim row in the digest index
POLL_SECONDS = 0.5

log = logging.getLogger("berth.cache")


class PullThrough:
    def __init__(self, store: RegistryStore, settings: Settings):
        self._store = store
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._fetches: dict[tuple[str, str], asyncio.Future[None]] = {}  # blob downloads in progress
        self._refreshing: set[str] = set()  # tags being asked upstream again

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        return self._session

    async def _upstream(self, repository: str, reference: str) -> tuple[UpstreamClient, SourceImage] | None:
        matched = await self._store.cache_rules.match(repository)
        if matched is None:
            return None
        rule, upstream = matched  # http://host/... only where the rule says so
        source = parse_source(f"{upstream}@{reference}" if ":" in reference else f"{upstream}:{reference}")
        login = None
        if rule.credential_set:
            reader = SecretReader(self._http(), key_vault_credential(self._settings.managed_identity_client_id))
            try:
                login = await login_with_set(self._store.credential_sets, reader, rule.credential_set, source)
            except SecretUnavailable as error:
                raise RegistryError(UPSTREAM_FAILED, f"cache rule {rule.name}: {error}") from None
        return UpstreamClient(self._http(), login, self._settings.max_manifest_bytes), source

    # --- manifests ------------------------------------------------------------------------

    async def manifest(self, repository: str, reference: Digest | str, with_body: bool) -> StoredManifest | None:
        """A manifest this registry does not have, fetched and stored; None without a rule."""
        found = await self._upstream(repository, str(reference))
        if found is None:
            return None
        client, source = found
        try:
            await self._fetch_manifest(client, source, repository, reference)
        except UpstreamError as error:
            raise self._failure(error, f"manifest {reference}") from None
        return await self._store.manifests.get(repository, reference, with_body=with_body)

    async def _fetch_manifest(self, client: UpstreamClient, source: SourceImage, repository: str,
                              reference: Digest | str) -> None:
        body, media_type, digest = await client.manifest(source, str(reference))
        manifest = parse_manifest(body, media_type)
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
            found = await self._upstream(repository, tag)
            if found is None:
                return stored
            client, source = found
            digest = await client.head_manifest(source, tag)
            if digest == stored.digest:
                await self._store.manifests.mark_checked(repository, tag, stored.digest)
                return stored
            await self._fetch_manifest(client, source, repository, tag)
            return await self._store.manifests.get(repository, tag, with_body=stored.body is not None)
        except (UpstreamError, RegistryError) as error:
            log.warning("cached tag %s:%s served as it is; upstream could not be asked: %s", repository, tag,
                        getattr(error, "message", error))
            return stored
        finally:
            self._refreshing.discard(key)

    # --- blobs ----------------------------------------------------------------------------

    async def blob(self, repository: str, digest: Digest) -> BlobInfo | None:
        """A blob this registry does not have in `repository`, fetched and linked; None without a rule."""
        if await self._store.cache_rules.match(repository) is None:
            return None
        key = (repository, str(digest))
        running = self._fetches.get(key)
        if running is None:
            running = self._fetches[key] = asyncio.ensure_future(self._fetch_blob_once(repository, digest))
            running.add_done_callback(lambda _: self._fetches.pop(key, None))
        await asyncio.shield(running)
        return await self._store.blobs.stat(repository, digest)

    async def _fetch_blob_once(self, repository: str, digest: Digest) -> None:
        """Fetch unless another instance is: its claim makes this one wait for the link instead."""
        deadline = asyncio.get_running_loop().time() + self._settings.request_budget_seconds - 10
        while True:
            if await self._linked(repository, digest):
                return
            claim = await self._claim(digest)
            if claim is not None:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise unavailable(f"blob {digest} is being fetched from upstream by another instance")
            await asyncio.sleep(POLL_SECONDS)
        try:
            found = await self._upstream(repository, str(digest))
            if found is None:
                raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")
            client, source = found
            try:
                size = await client.blob_size(source, digest)
                # A digest alone never links another repository's bytes: upstream hands them over.
                importer = Importer(self._store, client, link_from_anywhere=False)
                await importer.copy_blob(source, repository, Descriptor("application/octet-stream", digest, size),
                                         ImportReport(str(source), repository))
            except UpstreamError as error:
                raise self._failure(error, f"blob {digest}") from None
        finally:
            await self._release(digest, claim)

    async def _linked(self, repository: str, digest: Digest) -> bool:
        try:
            await self._store.blobs.stat(repository, digest)
        except RegistryError:
            return False
        return True

    async def _claim(self, digest: Digest) -> str | None:
        """Claim the download of `digest` (the etag of the claim), or None if a live claim exists."""
        table = self._store.metadata.digests
        until = datetime.now(UTC) + timedelta(seconds=self._settings.request_budget_seconds)
        entity = {"PartitionKey": str(digest), "RowKey": CLAIM, "until": until}
        try:
            created = await table.create_entity(entity)
            return created["etag"]
        except ResourceExistsError:
            pass
        row = await self._store.metadata.get(table, str(digest), CLAIM)
        if row is None:
            return None  # released just now: the next look finds the link, or claims
        if row["until"] > datetime.now(UTC):
            return None
        try:  # an instance that claimed it died: take the claim over
            replaced = await table.update_entity(entity, etag=etag_of(row),
                                                 match_condition=MatchConditions.IfNotModified)
            return replaced["etag"]
        except (ResourceModifiedError, ResourceNotFoundError):
            return None

    async def _release(self, digest: Digest, etag: str) -> None:
        try:
            await self._store.metadata.digests.delete_entity(str(digest), CLAIM, etag=etag,
                                                             match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    # --- outcomes -------------------------------------------------------------------------

    def _failure(self, error: UpstreamError, what: str) -> RegistryError:
        if error.status == 404:
            return RegistryError(MANIFEST_UNKNOWN if what.startswith("manifest") else BLOB_UNKNOWN,
                                 f"{what}: {error.message}")
        if error.status == 429:
            return unavailable(f"upstream is throttling; {what} is not cached yet")
        return RegistryError(UPSTREAM_FAILED, f"{what}: {error.message}")

