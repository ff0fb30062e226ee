"""The registry's model: what the API layer asks for, composed of one store per resource.

`blobs` (links, the digest index, mounts), `uploads` (pushes in progress), `manifests`
(manifests, tags, referrers) and the catalog; only these modules know how data sits in Blob
and Table Storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from azure.data.tables import TableTransactionError, UpdateMode

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_UNKNOWN, RegistryError
from registry.oci.manifest import Manifest, parse_manifest
from registry.settings import MiB, Settings
from registry.storage.attributes import AttributeStore
from registry.storage.blobs import BlobInfo, BlobStore, IndexEntry
from registry.storage.cache_rules import CacheRules
from registry.storage.clients import StorageClients
from registry.storage.content import ContentStore
from registry.storage.credential_sets import CredentialSets
from registry.storage.errors import unavailable
from registry.storage.events import DeliveryLog, EventOutbox, EventQueue, Webhooks
from registry.storage.gc import GarbageCollector
from registry.storage.locks import Locks, RepositoryLocks, check_delete, locks_of
from registry.storage.manifests import ManifestStore
from registry.storage.metadata import (
    BLOB,
    CATALOG_PARTITION,
    MANIFEST,
    RENDITION_OF,
    TAG,
    MetadataStore,
    next_key,
    repository_key,
    repository_name,
)
from registry.storage.renditions import RenditionStore
from registry.storage.retention import Retention, RetentionPolicies, RetentionPolicy
from registry.storage.uploads import UploadSession, UploadStore

__all__ = ["BlobInfo", "RegistryStore", "UploadSession"]

log = logging.getLogger("berth.storage")

# Catalog reads one listing makes at most when emptied repositories thin a page out.
CATALOG_PASSES = 4
# Manifest rows `_has_manifests` reads at most (renditions sort among them).
HAS_MANIFESTS_PROBE = 100
# Catalog row flag: the repository's last manifest was deleted; listings check it has content.
EMPTIED = "emptied"
# A repository delete looks this often for manifests pushed while it ran before giving up (503).
REPOSITORY_DELETE_PASSES = 8
# Manifests a repository delete removes at once.
REPOSITORY_DELETE_CONCURRENCY = 8


class RegistryStore:
    def __init__(self, clients: StorageClients, settings: Settings):
        self._settings = settings
        self.content = ContentStore(
            clients.blob_service, settings.blob_container, settings.block_size, settings.blocks_in_flight,
            clients.session,
            # Generous: a block must move at 1 MiB/s at least, after the usual call timeout.
            block_timeout=3 * settings.storage_timeout_seconds + settings.block_size / MiB,
        )
        self.metadata = MetadataStore(clients.table_service, settings.table_prefix, clients.table_requests)
        self.blobs = BlobStore(self.content, self.metadata)
        self.uploads = UploadStore(self.content, self.metadata, settings.upload_ttl_seconds)
        self.locks = RepositoryLocks(self.metadata)
        events_table = clients.table_service.get_table_client(f"{settings.table_prefix}events")
        self.webhooks = Webhooks(self.metadata, settings.webhooks_ttl_seconds)
        self.events = EventOutbox(self.metadata, events_table, EventQueue(clients.events_queue),
                                  EventQueue(clients.poison_queue), self.webhooks,
                                  always=settings.eventgrid_topic_endpoint is not None,
                                  look_after=settings.event_look_after_seconds, fault=settings.test_event_fault)
        self.deliveries = DeliveryLog(events_table, self.metadata)
        self.manifests = ManifestStore(self.content, self.metadata, self.blobs, self.locks, self.events)
        self.renditions = RenditionStore(self.metadata, self.manifests)
        self.attributes = AttributeStore(self.content, self.metadata, self.blobs, self.manifests)
        self.collector = GarbageCollector(self.content, self.metadata)
        self.credential_sets = CredentialSets(self.metadata)
        self.cache_rules = CacheRules(self.metadata)
        self.retention = Retention(self.metadata, self.manifests,
                                   RetentionPolicies(self.metadata, settings.retention_days),
                                   self.delete_manifest, self.renditions.forget,
                                   settings.retention_margin_seconds, settings.gc_grace_seconds)
        # Repositories this instance has registered in the catalog: saves an idempotent write.
        self._known_repositories: set[str] = set()

    async def initialize(self) -> None:
        if not self._settings.create_storage:  # made by the deployment (infra/modules/storage.bicep)
            return
        await self.content.ensure_container()
        await self.metadata.ensure_tables()
        await self.events.ensure()

    async def check_ready(self) -> None:
        """Raises unless both storage services answer (the readiness probe)."""
        await asyncio.gather(self.content.check(), self.metadata.check())

    # --- blob bytes ----------------------------------------------------------------------

    async def read_blob(self, blob: BlobInfo, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes, once storage has started to send them."""
        stream = await self.content.open_stream(blob.location, self._settings.sas_ttl_seconds, offset, length)
        if stream is None:
            log.error("blob %s is linked at %s, which storage does not have", blob.digest, blob.location)
            raise RegistryError(BLOB_UNKNOWN, f"blob {blob.digest} is not readable")
        return stream

    async def blob_url(self, blob: BlobInfo) -> str:
        return await self.content.read_url(blob.location, self._settings.sas_ttl_seconds)

    async def finish_upload(self, session: UploadSession, digest: Digest) -> BlobInfo:
        """Verify and seal the upload, then make it a blob of its repository.

        The digest index is consulted (or the row created) while the seal is written, once the
        bytes are known to have the digest: a finish costs the seal and the link, one round
        trip each, when the content is new.
        """
        claims: list[asyncio.Future[IndexEntry]] = []

        def verified(checked: UploadSession) -> None:
            if not claims:
                claims.append(asyncio.ensure_future(self.blobs.claim(digest, checked.offset, checked.location)))

        try:
            sealed = await self.uploads.seal(session, digest, verified)
            index = await claims[0] if claims else await self.blobs.claim(digest, sealed.size, session.location)
        except BaseException:
            for claim in claims:
                claim.cancel()
                claim.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise
        return await self.blobs.publish(session.repository, digest, sealed, session.location, index,
                                        session.resumable)

    async def put_manifest(self, repository: str, digest: Digest, body: bytes, manifest: Manifest,
                           tags: Sequence[str] = (), cached_from_upstream: bool = False) -> None:
        # The catalog row is idempotent and harmless before the manifest: one round trip. A first
        # push that fails leaves the row flagged, so the catalog lists no empty repository.
        registering = repository not in self._known_repositories
        pushed, registered = await asyncio.gather(self.manifests.put(repository, digest, body, manifest, tags,
                                                                     cached_from_upstream=cached_from_upstream),
                                                  self.register_repository(repository), return_exceptions=True)
        if isinstance(pushed, BaseException):
            if registering and not isinstance(registered, BaseException):
                await self._flag_if_empty(repository)
            raise pushed
        if isinstance(registered, BaseException):
            raise registered

    async def delete_manifest(self, repository: str, digest: Digest, judged: str | None = None) -> None:
        """Delete a manifest by digest, with its tags, its own referrer entry and its Docker
        rendition (renditions.py: only one made for it, never a manifest a user pushed).
        `judged`: retention's condition (ManifestStore.delete).

        A repository left without manifests is flagged in the catalog; listings then check it
        (see `_listed`), so a push racing this delete on another instance is never hidden.
        """
        try:
            await self.manifests.delete(repository, digest, judged)
        except RegistryError as error:
            if error.error is MANIFEST_UNKNOWN:  # a delete cut short (503) may have left these
                await self.renditions.forget(repository, digest)
                await self._flag_if_empty(repository)
            raise
        # Its Docker rendition goes with it (the rendition may be the last manifest: then first).
        await self.renditions.forget(repository, digest)
        await self._flag_if_empty(repository)

    async def set_repository_locks(self, repository: str, changes: dict[str, bool]) -> Locks:
        """Set a repository's changeable attributes; listEnabled also on its catalog row."""
        if not await self._has_manifests(repository):
            raise RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")
        locks = await self.locks.update(repository, changes)
        if "listEnabled" in changes:
            await self.metadata.catalog.upsert_entity(
                {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository),
                 "listEnabled": changes["listEnabled"]}, mode=UpdateMode.MERGE)
        return locks

    async def set_repository_retention(self, repository: str, status: str, days: int | None) -> RetentionPolicy:
        """Override the registry's retention policy for one repository (retention.py)."""
        if not await self._has_manifests(repository):
            raise RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")
        return await self.retention.policies.set_repository(repository, status, days)

    async def _refuse_locked_content(self, repository: str) -> None:
        """A repository delete is refused up front if the repository or anything in it is
        locked against deletes (a lock set while it runs stops it at that manifest)."""
        check_delete(await self.locks.fresh(repository), f"repository {repository}")
        for prefix, kind in ((MANIFEST, "manifest"), (TAG, "tag")):
            async for row in self.metadata.scan(self.metadata.repos, repository_key(repository), prefix,
                                                select=["RowKey", "writeEnabled", "deleteEnabled"]):
                check_delete(locks_of(row), f"{kind} {row['RowKey'][len(prefix):]}")

    async def delete_repository(self, repository: str) -> tuple[list[str], list[str]]:
        """Delete every manifest of a repository as `delete_manifest` does (tags, referrer entries,
        rendition), then its blob links; upload sessions expire on their own and blob bytes are
        the garbage collector's. Returns (manifests, tags) deleted.

        Manifests go only through ManifestStore.delete (If-Match), so no tag outlives its
        manifest. A push landing meanwhile on another instance either has all its blobs linked
        once the links went (it linked them after: it stays, whole) or not (it is deleted with
        its tags); passes repeat until no manifest lacks a blob or child. Links a refused or
        deleted concurrent push made may stay.
        """
        partition = repository_key(repository)
        manifests: list[str] = []
        tags: list[str] = []
        gate = asyncio.Semaphore(REPOSITORY_DELETE_CONCURRENCY)

        async def delete(row: dict[str, Any]) -> None:
            digest = parse_digest(row["RowKey"][len(MANIFEST):])
            async with gate:
                try:
                    tags.extend(await self.manifests.delete(repository, digest))
                    if not row.get(RENDITION_OF):
                        manifests.append(str(digest))
                except RegistryError as error:
                    if error.error is not MANIFEST_UNKNOWN:  # gone already: a rendition with its source
                        raise
                await self.renditions.forget(repository, digest)

        async def delete_all(rows: list[dict[str, Any]]) -> None:
            # Sources first: their renditions go with them.
            await asyncio.gather(*(delete(row) for row in rows if not row.get(RENDITION_OF)))
            await asyncio.gather(*(delete(row) for row in rows if row.get(RENDITION_OF)))

        rows = [row async for row in self.metadata.scan(self.metadata.repos, partition, MANIFEST,
                                                        select=["RowKey", RENDITION_OF])]
        if not rows:
            raise RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")
        await self._refuse_locked_content(repository)
        await delete_all(rows)
        await self._unlink_all(partition)
        # A push that checked its blobs before their links went has written its manifest by now:
        # an acknowledged push ends within the request budget, and the wait is longer than that.
        await asyncio.sleep(self._settings.repository_delete_settle_seconds)
        for _ in range(REPOSITORY_DELETE_PASSES):
            rows = [row async for row in self.metadata.scan(self.metadata.repos, partition, MANIFEST)]
            complete = await asyncio.gather(*(self._complete(repository, row) for row in rows))
            broken = [row for row, whole in zip(rows, complete, strict=True) if not whole]
            if not broken:  # pushed after the links went, with links of their own: they stay
                break
            await delete_all(broken)  # an index whose child this deletes is broken next pass
        else:
            raise unavailable(f"repository {repository} kept changing while it was deleted")
        if not await self._has_manifests(repository):  # gone: a later push starts without its locks
            await self.locks.forget(repository)
            await self.metadata.catalog.upsert_entity(
                {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository), "listEnabled": True},
                mode=UpdateMode.MERGE)
        await self._flag_if_empty(repository)
        return sorted(set(manifests)), sorted(set(tags))

    async def _unlink_all(self, partition: str) -> None:
        """Remove every blob link of a repository (unconditional: a push may link again)."""
        for _ in range(REPOSITORY_DELETE_PASSES):
            links = [{"PartitionKey": partition, "RowKey": row["RowKey"]} async for row in
                     self.metadata.scan(self.metadata.repos, partition, BLOB, select=["RowKey"])]
            try:
                await self.metadata.transact(self.metadata.repos, [("delete", link, {}) for link in links])
                return
            except TableTransactionError as error:
                if error.status_code not in (404, 409, 412):  # a link deleted meanwhile: read them again
                    raise
        raise unavailable("blob links kept changing while they were deleted")

    async def _complete(self, repository: str, row: dict[str, Any]) -> bool:
        """Whether every blob and child manifest a stored manifest names is in its repository."""
        manifest = parse_manifest(await self.manifests.body(row), row["mediaType"])
        partition = repository_key(repository)
        keys = [BLOB + str(d.digest) for d in manifest.blobs] + [MANIFEST + str(d.digest) for d in manifest.children]
        found = await asyncio.gather(*(self.metadata.read_fast(self.metadata.repos, partition, key) for key in keys))
        return all(row is not None for row in found)

    async def _flag_if_empty(self, repository: str) -> None:
        if not await self._has_manifests(repository):
            self._known_repositories.discard(repository)
            await self.metadata.catalog.upsert_entity(
                {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository), EMPTIED: True},
                mode=UpdateMode.MERGE,
            )

    # --- catalog -------------------------------------------------------------------------

    async def register_repository(self, repository: str) -> None:
        if repository in self._known_repositories:
            return
        # A push clears the EMPTIED flag a delete may have left (and keeps listEnabled).
        await self.metadata.catalog.upsert_entity(
            {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository), EMPTIED: False},
            mode=UpdateMode.MERGE,
        )
        self._known_repositories.add(repository)

    async def _has_manifests(self, repository: str) -> bool:
        """Whether the repository holds a manifest that is not a Docker rendition (a rendition
        alone, whose source is being deleted, is on its way out with it)."""
        rows = self.metadata.scan(self.metadata.repos, repository_key(repository), MANIFEST,
                                  limit=HAS_MANIFESTS_PROBE, select=["RowKey", RENDITION_OF])
        seen = 0
        async with aclosing(rows):
            async for row in rows:
                seen += 1
                if not row.get(RENDITION_OF):
                    return True
        return seen == HAS_MANIFESTS_PROBE  # that many renditions in a row: assume a source too

    async def _listed(self, row: dict[str, Any]) -> bool:
        """Whether a catalog row names a repository that has content.

        The manifests, not the flag, decide: a push on an instance that registered the
        repository before (and so writes no catalog row) may land just after a delete set it.
        """
        if row.get("listEnabled") is False:  # list-disabled (a lock): never listed
            return False
        return not row.get(EMPTIED) or await self._has_manifests(repository_name(row["RowKey"]))

    async def list_tags(self, repository: str, limit: int, last: str | None) -> tuple[list[str], bool]:
        """Up to `limit` tags after `last` in lexical order, and whether more follow."""
        tags = await self.manifests.list_tags(repository, limit + 1, last)
        if not tags and last is None and not await self._repository_exists(repository):
            raise RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")
        return tags[:limit], len(tags) > limit

    async def _repository_exists(self, repository: str) -> bool:
        row = await self.metadata.get(self.metadata.catalog, CATALOG_PARTITION, repository_key(repository))
        return row is not None and await self._listed(row)

    async def list_repositories(self, limit: int, last: str | None, prefix: str = "") -> tuple[list[str], str | None]:
        """Up to `limit` repositories after `last` that have content (and whose names start with
        `prefix`), and the name to continue after (None: the last page). Emptied repositories are
        skipped; after CATALOG_PASSES reads the page may be short (the spec allows it), so no
        listing costs more than that."""
        names: list[str] = []
        after = repository_key(last) if last else None
        bounds, parameters = "", {}
        if prefix:  # keys from the prefix's own (a name equal to it included) to the next prefix
            start = repository_key(prefix)
            below = start[:-1] + chr(ord(start[-1]) - 1) + "~"  # names use no character after "~"
            after = after if after is not None and after > below else below
            bounds, parameters = " and RowKey lt @high", {"high": next_key(start)}
        for _ in range(CATALOG_PASSES):
            rows = [row async for row in self.metadata.scan(self.metadata.catalog, CATALOG_PARTITION, "", after,
                                                            limit + 1, bounds, parameters)]
            listed = await asyncio.gather(*(self._listed(row) for row in rows))
            names += [repository_name(row["RowKey"]) for row, keep in zip(rows, listed, strict=True) if keep]
            if len(names) > limit:
                return names[:limit], names[limit - 1]
            if len(rows) <= limit:
                return names, None
            after = rows[-1]["RowKey"]
        assert after is not None
        return names, repository_name(after)
