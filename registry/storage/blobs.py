"""Blobs as repositories see them: links (`b:<digest>` rows), the global digest index, mounts.

Where the bytes of a digest live is decided by the digest index, once; a link names the
location its push settled on. The rules that keep every link readable on many instances:
- an index row or a link only ever names a sealed blob whose metadata carries that digest;
- the index row is created once (If-None-Match) and replaced only when the blob it names is
  no longer valid (If-Match on the row, after the replacement blob was claimed by a write
  that changes its etag);
- a push drops its own copy only when the index names another valid copy, and only with an
  etag condition, so a copy that anything may have linked meanwhile is never deleted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from registry.oci.digest import Digest
from registry.oci.errors import BLOB_UNKNOWN, RegistryError
from registry.storage.content import BlobChanged, BlobState, ContentStore
from registry.storage.errors import unavailable
from registry.storage.metadata import BLOB, MetadataStore, int64, read_int, repository_key

# A finished upload's blob says so in its metadata; sealing changes its etag, so no stale
# append or cancel (both conditional on the etag they read) can touch verified bytes.
STATE = "berth"
SEALED = "sealed"
DIGEST = "digest"


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    location: str


@dataclass(frozen=True)
class IndexEntry:
    location: str
    size: int
    etag: str


def sealed_metadata(digest: Digest) -> dict[str, str]:
    return {STATE: SEALED, DIGEST: str(digest)}


def holds(state: BlobState | None, digest: Digest, size: int) -> bool:
    """Whether a stored blob is finished content of exactly this digest and size."""
    return (state is not None and state.size == size and state.metadata.get(STATE) == SEALED
            and state.metadata.get(DIGEST) == str(digest))


class BlobStore:
    def __init__(self, content: ContentStore, metadata: MetadataStore):
        self._content = content
        self._metadata = metadata

    async def stat(self, repository: str, digest: Digest) -> BlobInfo:
        """The blob as linked into `repository` (one point read: the blob HEAD hot path)."""
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), BLOB + str(digest))
        if row is None:
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")
        return BlobInfo(digest, read_int(row, "size"), row["location"])

    async def unlink(self, repository: str, digest: Digest) -> None:
        """Remove the blob from the repository; its bytes stay while other links may need them."""
        if not await self._metadata.delete(self._metadata.repos, repository_key(repository), BLOB + str(digest)):
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {repository}")

    async def mount(self, repository: str, digest: Digest, source: str) -> BlobInfo | None:
        """Link a blob that `source` already has into `repository`; None if it has none."""
        try:
            blob = await self.stat(source, digest)
        except RegistryError:
            return None
        await self._link(repository, blob)
        return blob

    async def _link(self, repository: str, blob: BlobInfo) -> None:
        # Any two links of one digest name valid copies of the same bytes, so the last
        # writer may win; a delete, which must not lose to a new link, is the conditional one.
        await self._metadata.repos.upsert_entity({
            "PartitionKey": repository_key(repository),
            "RowKey": BLOB + str(blob.digest),
            "size": int64(blob.size),
            "location": blob.location,
        })

    async def index_entry(self, digest: Digest) -> IndexEntry | None:
        row = await self._metadata.get(self._metadata.digests, str(digest), "")
        if row is None:
            return None
        return IndexEntry(row["location"], read_int(row, "size"), row.metadata["etag"])

    async def publish(self, repository: str, digest: Digest, sealed: BlobState, location: str,
                      index: IndexEntry | None) -> BlobInfo:
        """Make a sealed upload blob `digest` of `repository`, deduplicated where that is safe.

        `index` is the digest index row as read before the upload was sealed (None: none).
        Idempotent: a retried or concurrent finish of the same upload converges.
        """
        ours = BlobInfo(digest, sealed.size, location)
        for _ in range(3):
            if index is None:
                # New content: link our copy and index it in one round trip. Losing the index
                # race to another copy only leaves ours linked as a duplicate; nothing is lost.
                await asyncio.gather(self._link(repository, ours), self._create_index(ours))
                return ours
            if index.location == location:
                await self._link(repository, ours)
                return ours
            if holds(await self._content.stat(index.location), digest, sealed.size):
                existing = BlobInfo(digest, sealed.size, index.location)
                await asyncio.gather(self._link(repository, existing),
                                     self._content.delete(location, sealed.etag))
                return existing
            if await self._repair_index(ours, sealed.etag, index):
                await self._link(repository, ours)
                return ours
            index = await self.index_entry(digest)
        raise unavailable("the digest index kept changing")

    async def _create_index(self, blob: BlobInfo) -> None:
        entity = {"PartitionKey": str(blob.digest), "RowKey": "", "size": int64(blob.size),
                  "location": blob.location, "created": datetime.now(UTC)}
        try:
            await self._metadata.digests.create_entity(entity)
        except ResourceExistsError:
            pass

    async def _repair_index(self, blob: BlobInfo, etag: str, index: IndexEntry) -> bool:
        """Point the index at our copy because the blob it names is gone or not this digest.

        Our copy is claimed first (a metadata write changes its etag), so a finish of the
        same upload that decided to drop it, conditionally on the old etag, cannot.
        """
        try:
            await self._content.set_metadata(blob.location, sealed_metadata(blob.digest), etag)
        except BlobChanged:
            return False
        entity: dict[str, Any] = {"PartitionKey": str(blob.digest), "RowKey": "", "size": int64(blob.size),
                                  "location": blob.location, "created": datetime.now(UTC)}
        try:
            await self._metadata.digests.update_entity(entity, etag=index.etag,
                                                       match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True
