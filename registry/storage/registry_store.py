"""The registry's model: what the API layer asks for, composed of one store per resource.

`blobs` (links, the digest index, mounts), `uploads` (pushes in progress), `manifests`
(manifests, tags, referrers) and the catalog; only these modules know how data sits in Blob
and Table Storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from azure.data.tables import UpdateMode

from registry.oci.digest import Digest
from registry.oci.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_UNKNOWN, RegistryError
from registry.oci.manifest import Manifest
from registry.settings import MiB, Settings
from registry.storage.blobs import BlobInfo, BlobStore, IndexEntry
from registry.storage.clients import StorageClients
from registry.storage.content import ContentStore
from registry.storage.manifests import ManifestStore
from registry.storage.metadata import (
    CATALOG_PARTITION,
    MANIFEST,
    MetadataStore,
    repository_key,
    repository_name,
)
from registry.storage.renditions import RenditionStore
from registry.storage.uploads import UploadSession, UploadStore

__all__ = ["BlobInfo", "RegistryStore", "UploadSession"]

log = logging.getLogger("berth.storage")

# Catalog row flag: the repository's last manifest was deleted; listings check it has content.
EMPTIED = "emptied"


class RegistryStore:
    def __init__(self, clients: StorageClients, settings: Settings):
        self._settings = settings
        self.content = ContentStore(
            clients.blob_service, settings.blob_container, settings.block_size, settings.blocks_in_flight,
            clients.session,
            # Generous: a block must move at 1 MiB/s at least, after the usual call timeout.
            block_timeout=3 * settings.storage_timeout_seconds + settings.block_size / MiB,
        )
        self.metadata = MetadataStore(clients.table_service, settings.table_prefix, clients.table_reader)
        self.blobs = BlobStore(self.content, self.metadata)
        self.uploads = UploadStore(self.content, self.metadata, settings.upload_ttl_seconds)
        self.manifests = ManifestStore(self.content, self.metadata, self.blobs)
        self.renditions = RenditionStore(self.metadata, self.manifests)
        # Repositories this instance has registered in the catalog: saves an idempotent write.
        self._known_repositories: set[str] = set()

    async def initialize(self) -> None:
        await self.content.ensure_container()
        await self.metadata.ensure_tables()

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
                                        session.has_row)

    async def put_manifest(self, repository: str, digest: Digest, body: bytes, manifest: Manifest,
                           tags: Sequence[str] = ()) -> None:
        # The catalog row is idempotent and harmless before the manifest: one round trip. A first
        # push that fails leaves the row flagged, so the catalog lists no empty repository.
        registering = repository not in self._known_repositories
        pushed, registered = await asyncio.gather(self.manifests.put(repository, digest, body, manifest, tags),
                                                  self.register_repository(repository), return_exceptions=True)
        if isinstance(pushed, BaseException):
            if registering and not isinstance(registered, BaseException):
                await self._flag_if_empty(repository)
            raise pushed
        if isinstance(registered, BaseException):
            raise registered

    async def delete_manifest(self, repository: str, digest: Digest) -> None:
        """Delete a manifest by digest, with its tags, its own referrer entry and its Docker
        rendition (renditions.py: only one made for it, never a manifest a user pushed).

        A repository left without manifests is flagged in the catalog; listings then check it
        (see `_listed`), so a push racing this delete on another instance is never hidden.
        """
        try:
            await self.manifests.delete(repository, digest)
        except RegistryError as error:
            if error.error is MANIFEST_UNKNOWN:  # a delete cut short may have left its rendition
                await self.renditions.forget(repository, digest)
            raise
        # Its Docker rendition goes with it (the rendition may be the last manifest: then first).
        await self.renditions.forget(repository, digest)
        await self._flag_if_empty(repository)

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
        # REPLACE: a push clears the EMPTIED flag a delete may have left.
        await self.metadata.catalog.upsert_entity(
            {"PartitionKey": CATALOG_PARTITION, "RowKey": repository_key(repository)}, mode=UpdateMode.REPLACE
        )
        self._known_repositories.add(repository)

    async def _has_manifests(self, repository: str) -> bool:
        rows = self.metadata.scan(self.metadata.repos, repository_key(repository), MANIFEST, limit=1)
        return await anext(aiter(rows), None) is not None

    async def _listed(self, row: dict[str, Any]) -> bool:
        """Whether a catalog row names a repository that has content.

        The manifests, not the flag, decide: a push on an instance that registered the
        repository before (and so writes no catalog row) may land just after a delete set it.
        """
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

    async def list_repositories(self, limit: int, last: str | None) -> tuple[list[str], bool]:
        """Up to `limit` repositories after `last` that have content, and whether more follow."""
        names: list[str] = []
        after = repository_key(last) if last else None
        while True:
            rows = [row async for row in
                    self.metadata.scan(self.metadata.catalog, CATALOG_PARTITION, "", after, limit + 1)]
            listed = await asyncio.gather(*(self._listed(row) for row in rows))
            names += [repository_name(row["RowKey"]) for row, keep in zip(rows, listed, strict=True) if keep]
            if len(names) > limit or len(rows) <= limit:
                return names[:limit], len(names) > limit
            after = rows[-1]["RowKey"]
