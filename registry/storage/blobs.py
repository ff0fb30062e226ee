"""Blobs as repositories see them: links (`b:<digest>` rows), the global digest index, mounts.

Where the bytes of a digest live is decided by the digest index; a link names the blob its
push settled on. The rules that keep every link readable on many instances:
- nothing is trusted for being in the index: before a push relies on the blob an index row
  names, it checks that the blob is sealed with that digest and size (`holds`);
- the index row is created once (If-None-Match) and replaced only when the blob it names is
  no longer valid (If-Match on the row, after the replacement blob was claimed by a write
  that changes its etag);
- a link is written only after the index was read or created, and names the blob the index
  names then; so a copy the index does not name was never linked, and a push drops its own
  copy only in that case (conditional on the copy's etag).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from registry.oci.digest import Digest
from registry.oci.errors import BLOB_UNKNOWN, BLOB_UPLOAD_UNKNOWN, RegistryError
from registry.storage.content import BlobChanged, BlobState, ContentStore
from registry.storage.errors import unavailable
from registry.storage.metadata import BLOB, MetadataStore, etag_of, int64, read_int, repository_key

# A finished upload's blob says so in its metadata; sealing changes its etag, so no stale
# append or cancel (both conditional on the etag they read) can touch verified bytes.
STATE = "berth"
SEALED = "sealed"
DIGEST = "digest"
# A finished upload whose bytes were dropped because an identical copy was already indexed;
# LENGTH keeps the size it had. It answers a repeated closing PUT, then the purge removes it.
DROPPED = "dropped"
LENGTH = "length"
# Sealed content no link named when the garbage collector looked: it is deleted unless a link
# names it when the collector looks again, and anyone who needs it first restores it (gc.py).
CONDEMNED = "condemned"
CONDEMNED_AT = "condemnedat"


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
        """Link a blob that `source` already has into `repository`; None if it has none (or its
        link names bytes that are not there: the client then uploads them)."""
        try:
            blob = await self.stat(source, digest)
        except RegistryError:
            return None
        if not holds(await self._content.stat(blob.location), digest, blob.size):
            return None
        return await self._link(repository, blob)

    async def mount_indexed(self, repository: str, digest: Digest) -> BlobInfo | None:
        """Link the blob the digest index names into `repository`, whichever repository pushed
        it; None if there is none (or its bytes are not sealed content of that digest)."""
        entry = await self.index_entry(digest)
        if entry is None or not holds(await self._content.stat(entry.location), digest, entry.size):
            return None
        return await self._link(repository, BlobInfo(digest, entry.size, entry.location))

    async def ensure_readable(self, blob: BlobInfo) -> bool:
        """Whether the linked bytes are there as sealed content, restoring them if the garbage
        collector condemned them (which then makes its conditional delete fail); False if gone.

        A manifest push calls this for every blob it references, after reading their links: a
        collection that condemned a blob before that read sees the link when it looks again, or
        finds its condemnation undone here; either way it keeps the bytes.
        """
        for _ in range(3):
            state = await self._content.stat(blob.location)
            if holds(state, blob.digest, blob.size):
                return True
            if state is None or state.metadata.get(STATE) != CONDEMNED or state.size != blob.size \
                    or state.metadata.get(DIGEST) != str(blob.digest):
                return False
            try:
                await self._content.set_metadata(blob.location, sealed_metadata(blob.digest), state.etag)
                return True
            except BlobChanged:
                continue  # deleted or restored meanwhile: look again
        raise unavailable(f"blob {blob.digest} kept changing while it was checked")

    async def remove_dangling_link(self, repository: str, digest: Digest, location: str) -> None:
        """Delete a link whose bytes are gone, if it still names them, so the client uploads again."""
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), BLOB + str(digest))
        if row is None or row.get("location") != location:
            return
        try:
            await self._metadata.repos.delete_entity(row["PartitionKey"], row["RowKey"], etag=etag_of(row),
                                                     match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # relinked or removed meanwhile

    async def _link(self, repository: str, blob: BlobInfo) -> BlobInfo:
        """Link `blob` into `repository`; the blob the link names afterwards.

        A link that names another copy of the digest whose bytes are there is kept (an image
        of the repository may rely on it, and the collector may have condemned this copy since
        it was checked); it is replaced, If-Match, only when its bytes are gone. So a link
        never moves away from readable bytes, and a delete, which must not lose to a new link,
        is the conditional one.
        """
        entity = {"PartitionKey": repository_key(repository), "RowKey": BLOB + str(blob.digest),
                  "size": int64(blob.size), "location": blob.location}
        for _ in range(3):
            try:
                await self._metadata.insert(self._metadata.repos, entity)
                return blob
            except ResourceExistsError:  # also what an SDK retry of our own create meets
                pass
            row = await self._metadata.read_fast(self._metadata.repos, entity["PartitionKey"], entity["RowKey"])
            if row is None:
                continue  # unlinked meanwhile: link again
            if row.get("location") == blob.location:
                return blob
            current = BlobInfo(blob.digest, read_int(row, "size"), row["location"])
            if await self.ensure_readable(current):
                return current
            try:
                await self._metadata.repos.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag_of(row),
                                                         match_condition=MatchConditions.IfNotModified)
                return blob
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise unavailable(f"the link of blob {blob.digest} kept changing")

    async def index_entry(self, digest: Digest) -> IndexEntry | None:
        row = await self._metadata.read_fast(self._metadata.digests, str(digest), "")
        if row is None:
            return None
        return IndexEntry(row["location"], read_int(row, "size"), etag_of(row))

    async def claim(self, digest: Digest, size: int, location: str) -> IndexEntry:
        """The digest's index row: created now naming `location` if there was none, else the
        row that is there (which `publish` then checks before it trusts it)."""
        entity = {"PartitionKey": str(digest), "RowKey": "", "size": int64(size), "location": location,
                  "created": datetime.now(UTC)}
        for _ in range(3):
            try:
                etag = await self._metadata.insert(self._metadata.digests, entity)
            except ResourceExistsError:  # also what an SDK retry of our own create meets
                existing = await self.index_entry(digest)
                if existing is not None:
                    return existing
                continue
            return IndexEntry(location, size, etag)
        raise unavailable("the digest index kept changing")

    async def publish(self, repository: str, digest: Digest, sealed: BlobState, location: str,
                      index: IndexEntry, has_session: bool) -> BlobInfo:
        """Link a sealed upload blob into `repository` as `digest`, deduplicated where safe.

        `index` is what `claim` found. A link only ever names the blob the index names at that
        moment, and the index moves away from a blob only once that blob is no longer valid;
        so a copy the index does not name was never linked, and dropping it loses nothing.
        A dropped copy of an upload with a session becomes an empty marker saying where the
        upload went (so a repeated PUT still completes it); a one-request upload's just goes.
        Idempotent: a retried or concurrent finish of the same upload converges.
        """
        ours = BlobInfo(digest, sealed.size, location)
        if sealed.metadata.get(STATE) == CONDEMNED and not await self.ensure_readable(ours):
            # A repeated closing PUT of an upload the collector took meanwhile.
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "the upload's bytes are no longer stored; push the blob again")
        for _ in range(3):
            if index.location == location:
                return await self._link(repository, ours)
            if holds(await self._content.stat(index.location), digest, sealed.size):
                existing = BlobInfo(digest, sealed.size, index.location)
                linked, _ = await asyncio.gather(self._link(repository, existing),
                                                 self._drop_copy(ours, sealed.etag, has_session))
                return linked
            if not holds(await self._content.stat(location), digest, sealed.size):
                # Ours was dropped for the indexed copy, which has gone since: nothing to link.
                raise RegistryError(BLOB_UPLOAD_UNKNOWN, "the upload's bytes are no longer stored; push the blob again")
            if await self._repair_index(ours, sealed.etag, index):
                return await self._link(repository, ours)
            index = await self.claim(digest, sealed.size, location)
        raise unavailable("the digest index kept changing")

    async def _drop_copy(self, blob: BlobInfo, etag: str, has_session: bool) -> None:
        if not has_session:
            await self._content.delete(blob.location, etag)
            return
        marker = {STATE: DROPPED, DIGEST: str(blob.digest), LENGTH: str(blob.size)}
        try:
            await self._content.truncate(blob.location, marker, etag)
        except BlobChanged:
            pass  # claimed meanwhile (an index repair chose it) or already dropped: keep it

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
