"""Manifests, tags and referrers of a repository (rows `m:`, `t:`, `r:` of its partition).

The manifest row `m:<digest>` is the one source of truth for a manifest's media type and
size; tag and referrer rows carry copies of it, written in the same entity-group transaction.
Writes that could lose to a concurrent one are conditional:
- a push of a manifest that exists updates its row If-Match the etag it read, so a delete that
  read the row (and then the tags) before this push fails on the row's etag and looks again;
- a manifest delete removes its tags If-Match their etags, so a tag moved meanwhile to
  another manifest is never taken with it.

A referrer row copies the referrer's artifactType and annotations so a page of the referrers
list is one query; when either does not fit a table property the row says so
(`detailsInManifest`) and the listing reads them from the referrer manifest itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID, MANIFEST_UNKNOWN, RegistryError
from registry.oci.manifest import Manifest, effective_artifact_type, parse_manifest
from registry.storage.blobs import BlobStore
from registry.storage.content import MANIFEST_PREFIX, ContentStore
from registry.storage.errors import storage_failure, unavailable
from registry.storage.events import EventOutbox, PendingEvent
from registry.storage.locks import (
    MANIFEST_READ_ENABLED,
    Locks,
    RepositoryLocks,
    check_delete,
    check_write,
    locks_of,
)
from registry.storage.metadata import (
    BLOB,
    MANIFEST,
    MAX_BATCH,
    REFERRER,
    RENDITION_OF,
    TAG,
    MetadataStore,
    etag_of,
    int64,
    read_int,
    repository_key,
)

# Table properties hold at most 64 KiB; manifests up to this size live in the row itself,
# so a pull by tag or digest is a single point read.
INLINE_MANIFEST_LIMIT = 60 * 1024
# The inline copies one push transaction may carry; the rest of its 4 MiB is the referrer row
# (at most two 64 KiB properties) and the rows' other properties.
INLINE_TRANSACTION_BYTES = 3 * 1024 * 1024
# A table string holds 32K UTF-16 code units (64 KiB); with two such properties a referrer row
# stays far below the 1 MiB a row may hold.
MAX_TABLE_STRING = 32 * 1024
# Referrer rows whose artifactType or annotations did not fit: the manifest holds them.
DETAILS_IN_MANIFEST = "detailsInManifest"
# What the listing copies from a referrer manifest is at most the manifest's own text (see
# encode_listing); a page counts the manifest's size plus this slack for such a descriptor.
_DESCRIPTOR_OVERHEAD = 512
# Conflicting transactions are retried this often before the client is told to retry.
ATTEMPTS = 4
PUT_ATTEMPTS = 16  # a push's transaction: concurrent pushes of one manifest take turns (see put)
# Tags one manifest PUT may apply (`?tag=`): with the manifest and referrer rows they fit one
# entity-group transaction of at most 100 operations.
MAX_TAGS_PER_PUSH = 64
_CONFLICT_STATUS = (404, 409, 412)
# Written on a manifest row whose tag moved away or was deleted, and on a link or child row a
# push references: each write restarts the row's retention clock (its Timestamp).
UNTAGGED = "untagged"
REACHED = "reached"
UPSTREAM_CHECKED = "upstreamChecked"  # on a pull-through tag row
Operation = tuple[str, dict[str, Any], dict[str, Any]]

log = logging.getLogger("berth.storage")


class ManifestChanged(Exception):
    """A manifest retention judged was written since (see ManifestStore.delete)."""


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    size: int
    subject: str | None
    body: bytes | None  # None when asked for metadata only
    upstream_checked: str | None = None  # a pull-through tag: when upstream was last asked (ISO)


async def _nothing() -> None:
    return None


def _conditional(entity: dict[str, Any]) -> dict[str, Any]:
    return {"etag": etag_of(entity), "match_condition": MatchConditions.IfNotModified}


def _conflict(error: TableTransactionError) -> bool:
    return error.status_code in _CONFLICT_STATUS


def _reference_touches(partition: str, digest: Digest, manifest: Manifest, now: datetime) -> list[Operation]:
    """A push writes the link of every blob it references and the row of every child it
    references (a MERGE, which fails if the row is gone): retention (retention.py) deletes a row
    only If-Match the version it scanned and only if it was last written longer ago than any
    request takes, so it never removes what a manifest it did not see yet references."""
    keys = dict.fromkeys([BLOB + str(d.digest) for d in manifest.blobs]
                         + [MANIFEST + str(d.digest) for d in manifest.children if d.digest != digest])
    return [("update", {"PartitionKey": partition, "RowKey": key, REACHED: now}, {"mode": UpdateMode.MERGE})
            for key in keys]


def _untag_stamps(partition: str, digest: Digest, tag_rows: Sequence[dict[str, Any] | None],
                  references: list[Operation], now: datetime) -> list[Operation]:
    """Manifests the push's tags move away from: their retention clock starts now (UNTAGGED),
    as ACR's does when a manifest loses its tag."""
    touched = {operation[1]["RowKey"] for operation in references} | {MANIFEST + str(digest)}
    keys = dict.fromkeys(MANIFEST + row["digest"] for row in tag_rows if row is not None and row.get("digest"))
    return [("update", {"PartitionKey": partition, "RowKey": key, UNTAGGED: now}, {"mode": UpdateMode.MERGE})
            for key in keys if key not in touched]


def _fits_table_string(text: str) -> bool:
    return len(text.encode("utf-16-le")) <= 2 * MAX_TABLE_STRING


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def encode_listing(document: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding referrers pages are sent in and measured by.

    Not ASCII-escaped, so a descriptor is never larger than the manifest text it copies; a lone
    surrogate (a legal JSON escape, but not UTF-8) is written back as that escape.
    """
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class ManifestStore:
    def __init__(self, content: ContentStore, metadata: MetadataStore, blobs: BlobStore,
                 locks: RepositoryLocks | None = None, events: EventOutbox | None = None):
        self._content = content
        self._metadata = metadata
        self._blobs = blobs
        self.locks = locks or RepositoryLocks(metadata)
        # Pushes and deletes record their event in their own transaction (events.py).
        self.events = events

    async def _announce(self, partition: str, derived: bool = False) -> PendingEvent | None:
        return None if self.events is None or derived else await self.events.prepare(partition)

    def _committed(self, pending: PendingEvent | None) -> None:
        if self.events is not None:
            self.events.committed(pending)

    async def _fresh(self, pending: PendingEvent | None) -> PendingEvent | None:
        return pending if self.events is None else await self.events.fresh(pending)

    async def _recorded(self, pending: PendingEvent | None) -> bool:
        """A conflict may be our own transaction, committed on a retried request: its event row says."""
        if self.events is None or not await self.events.recorded(pending):
            return False
        self._committed(pending)
        return True

    async def put(self, repository: str, digest: Digest, body: bytes, manifest: Manifest,
                  tags: Sequence[str] = (), rendition_of: Digest | None = None,
                  cached_from_upstream: bool = False) -> None:
        """Store a manifest and apply tags. `rendition_of`: the OCI source of a Docker rendition
        (renditions.py): the row carries it only if this write creates the row (an existing row
        is left as it is), and a push of the same bytes by a user takes it away: theirs now.
        `cached_from_upstream`: a pull-through copy (pullthrough.py), whose blobs and children
        are fetched when first pulled, so none is checked; its tags record when upstream was
        last asked (UPSTREAM_CHECKED). Either makes no event: a copy is not a push."""
        partition = repository_key(repository)
        repository_locks, existing, tag_rows, _, pending = await asyncio.gather(
            self.locks.fresh(repository),
            self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest)),
            self._read_tags(partition, tags),
            _nothing() if cached_from_upstream else self._check_references(repository, manifest),
            self._announce(partition, derived=cached_from_upstream or rendition_of is not None),
        )
        if rendition_of is None:  # a rendition is derived content, made on a pull
            check_write(repository_locks, f"repository {repository}")
        location = None
        # Each tag row carries a copy of an inline body, and a transaction holds at most 4 MiB:
        # many tags of a large body keep it in a blob instead (the rows then name it).
        if len(body) > INLINE_MANIFEST_LIMIT or len(body) * (len(tags) + 1) > INLINE_TRANSACTION_BYTES:
            location = f"{MANIFEST_PREFIX}{digest.algorithm}/{digest.hex}"
            await self._content.put_once(location, body)
        now = datetime.now(UTC)
        references = [] if cached_from_upstream else _reference_touches(partition, digest, manifest, now)
        gone: set[str] = set()  # manifests a tag named that are not there: nothing to stamp
        for attempt in range(PUT_ATTEMPTS):
            pending = await self._fresh(pending)
            if existing is not None and rendition_of is not None:
                return  # the rendition exists: renditions.py settles the rest with its pointer
            # A manifest already stored keeps its media type: the first push decided it.
            media_type = existing["mediaType"] if existing is not None else manifest.media_type
            stored: dict[str, Any] = {"mediaType": media_type, "size": int64(len(body))}
            stored.update({"location": location} if location else {"data": body})
            operations: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            if existing is None:
                row = {"PartitionKey": partition, "RowKey": MANIFEST + str(digest), **stored, "created": now,
                       "pushed": now}
                if manifest.subject is not None:
                    row["subject"] = str(manifest.subject.digest)
                if rendition_of is not None:
                    row[RENDITION_OF] = str(rendition_of)
                operations.append(("create", row, {}))
            else:
                touch = {"PartitionKey": partition, "RowKey": MANIFEST + str(digest), "pushed": now}
                if rendition_of is None and existing.get(RENDITION_OF):
                    touch[RENDITION_OF] = ""
                operations.append(("update", touch, {"mode": UpdateMode.MERGE, **_conditional(existing)}))
            manifest_readable = locks_of(existing).readEnabled
            for tag, current in zip(tags, tag_rows, strict=True):  # one transaction: all tags, or none
                tag_row = {"PartitionKey": partition, "RowKey": TAG + tag, "digest": str(digest), **stored,
                           "updated": now}  # the tag's lastUpdateTime (attributes.py)
                if cached_from_upstream:
                    tag_row[UPSTREAM_CHECKED] = now
                if not manifest_readable:
                    tag_row[MANIFEST_READ_ENABLED] = False
                if current is None:
                    operations.append(("create", tag_row, {}))
                    continue
                tag_locks = locks_of(current)
                if current.get("digest") == str(digest) and not tag_locks.writeEnabled:
                    continue  # already there, and locked: nothing to write
                if cached_from_upstream and not current.get(UPSTREAM_CHECKED):
                    continue  # a tag a user pushed: the cache never overwrites it
                check_write(tag_locks, f"tag {tag}")
                # The tag keeps its locks; conditional, so a lock set since the read is not lost.
                tag_row.update(tag_locks.properties())
                operations.append(("update", tag_row, {"mode": UpdateMode.REPLACE, **_conditional(current)}))
            if manifest.subject is not None:
                operations.append(("upsert", self._referrer_row(partition, digest, media_type, len(body), manifest),
                                   {"mode": UpdateMode.REPLACE}))
            if pending is not None:
                subject = manifest.subject
                operations.append(pending.operation(
                    "push", repository, str(digest), media_type, len(body), tuple(tags),
                    effective_artifact_type(manifest) if subject or manifest.artifact_type else None,
                    {"mediaType": subject.media_type, "digest": str(subject.digest), "size": subject.size}
                    if subject else None))
            stamps = [stamp for stamp in _untag_stamps(partition, digest, tag_rows, references, now)
                      if stamp[1]["RowKey"] not in gone]
            try:
                if len(operations) + len(references) + len(stamps) <= MAX_BATCH:
                    await self._metadata.repos.submit_transaction(operations + references + stamps)
                else:  # too many for one transaction: first what retention must see (see _reference_touches)
                    await self._touch_apart(references, stamps)
                    await self._metadata.repos.submit_transaction(operations)
                self._committed(pending)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
                if await self._recorded(pending):
                    return
            # Pushes of one manifest under several tags at once conflict on its row, one winner a
            # round: a random pause spreads the others out, so each gets its turn.
            await asyncio.sleep(random.uniform(0, min(0.25, 0.01 * 2**attempt)))
            # A referenced blob or child deleted meanwhile fails the touch: say which, as a check would.
            existing, tag_rows, _, stamped = await asyncio.gather(
                self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest)),
                self._read_tags(partition, tags),
                _nothing() if cached_from_upstream else self._check_references(repository, manifest),
                asyncio.gather(*(self._metadata.read_fast(self._metadata.repos, partition, stamp[1]["RowKey"])
                                 for stamp in stamps)))
            gone.update(stamp[1]["RowKey"] for stamp, row in zip(stamps, stamped, strict=True) if row is None)
        raise unavailable(f"manifest {digest} kept changing while it was pushed")

    async def _touch_apart(self, references: list[Operation], stamps: list[Operation]) -> None:
        """The touches of a push too big for one transaction, before it: in transactions of their
        own (a missing reference fails one), and the untag stamps one by one (a manifest deleted
        meanwhile needs none)."""
        async def stamp(operation: Operation) -> None:
            try:
                await self._metadata.repos.update_entity(operation[1], mode=UpdateMode.MERGE)
            except ResourceNotFoundError:
                pass

        await asyncio.gather(*(self._metadata.repos.submit_transaction(references[start:start + MAX_BATCH])
                               for start in range(0, len(references), MAX_BATCH)),
                             *(stamp(operation) for operation in stamps))

    async def _read_tags(self, partition: str, tags: Sequence[str]) -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(self._metadata.read_fast(self._metadata.repos, partition, TAG + tag)
                                           for tag in tags)))

    @staticmethod
    def _referrer_row(partition: str, digest: Digest, media_type: str, size: int,
                      manifest: Manifest) -> dict[str, Any]:
        assert manifest.subject is not None
        row: dict[str, Any] = {
            "PartitionKey": partition,
            "RowKey": f"{REFERRER}{manifest.subject.digest}:{digest}",
            "mediaType": media_type,
            "size": int64(size),
        }
        artifact_type = effective_artifact_type(manifest)
        if artifact_type and _fits_table_string(artifact_type):
            row["artifactType"] = artifact_type
        elif artifact_type:  # the listing filters on its hash and reads it from the manifest
            row["artifactTypeSha256"] = _sha256(artifact_type)
            row[DETAILS_IN_MANIFEST] = True
        if manifest.annotations:
            annotations = json.dumps(manifest.annotations)
            if _fits_table_string(annotations):
                row["annotations"] = annotations
            else:
                row[DETAILS_IN_MANIFEST] = True
        return row

    async def _check_references(self, repository: str, manifest: Manifest) -> None:
        async def blob_problem(descriptor: Any) -> str | None:
            try:
                blob = await self._blobs.stat(repository, descriptor.digest)
            except RegistryError:
                return f"blob {descriptor.digest} is not in repository {repository}"
            if blob.size != descriptor.size:
                raise RegistryError(
                    MANIFEST_INVALID,
                    f"descriptor of {descriptor.digest} says {descriptor.size} bytes; the blob has {blob.size}",
                )
            # The bytes too, not only the link: the garbage collector may have condemned them.
            if not await self._blobs.ensure_readable(blob):
                await self._blobs.remove_dangling_link(repository, blob.digest, blob.location)
                return f"the bytes of blob {descriptor.digest} are gone; push it again"
            return None

        async def child_problem(descriptor: Any) -> str | None:
            row = await self._metadata.read_fast(
                self._metadata.repos, repository_key(repository), MANIFEST + str(descriptor.digest)
            )
            if row is None:
                return f"manifest {descriptor.digest} is not in repository {repository}"
            return None

        checks = [blob_problem(d) for d in manifest.blobs] + [child_problem(d) for d in manifest.children]
        problems = [p for p in await asyncio.gather(*checks) if p]
        if problems:
            raise RegistryError(MANIFEST_BLOB_UNKNOWN, problems[0], {"missing": problems})

    async def get(self, repository: str, reference: Digest | str, with_body: bool = True) -> StoredManifest:
        row_key = MANIFEST + str(reference) if isinstance(reference, Digest) else TAG + reference
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), row_key)
        if row is None:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {repository}")
        if not locks_of(row).readEnabled or row.get(MANIFEST_READ_ENABLED) is False \
                or (row.get(RENDITION_OF) and not await self._source_readable(repository, row[RENDITION_OF])):
            # Read-disabled: not served, as if absent (ACR's readEnabled=false). A Docker
            # rendition is as readable as its source (one more read, for renditions only).
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {repository}")
        digest = reference if isinstance(reference, Digest) else parse_digest(row["digest"])
        body = await self.body(row) if with_body else None
        return StoredManifest(digest, row["mediaType"], read_int(row, "size"), row.get("subject"), body,
                              row.get(UPSTREAM_CHECKED))

    async def mark_checked(self, repository: str, tag: str, digest: Digest) -> None:
        """Upstream still names what the pull-through tag names: note when it was asked (only if
        the tag still names that manifest; a tag moved meanwhile is left alone)."""
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), TAG + tag)
        if row is None or row.get("digest") != str(digest):
            return
        try:
            await self._metadata.repos.update_entity(
                {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], UPSTREAM_CHECKED: datetime.now(UTC)},
                mode=UpdateMode.MERGE, **_conditional(row))
        except (ResourceModifiedError, ResourceNotFoundError):
            pass

    async def _source_readable(self, repository: str, source: str) -> bool:
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), MANIFEST + source)
        return row is not None and locks_of(row).readEnabled

    async def body(self, row: dict[str, Any]) -> bytes:
        """The manifest bytes a manifest, tag or rendition row holds or names."""
        return row["data"] if "data" in row else await self._content.read_all(row["location"])

    async def delete(self, repository: str, digest: Digest, judged: str | None = None) -> list[str]:
        """Delete a manifest, its referrer entry, every tag that points at it and the entries of
        its own referrers (which are no longer listed; retention deletes those referrers). Returns
        the tags it deleted. `judged`: the row's version retention decided on; a row written
        since (tagged, referenced by a push, locked) or with a tag raises ManifestChanged."""
        partition = repository_key(repository)
        repository_locks, pending = await asyncio.gather(self.locks.fresh(repository), self._announce(partition))
        check_delete(repository_locks, f"repository {repository}")
        for _ in range(ATTEMPTS):
            # The row first, then its tags: a push that tags the manifest after the row was read
            # changes the row, so the conditional delete of the row below fails and we look again.
            row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest))
            tags = await self._tags_of(partition, digest) if row is not None else []
            if row is None:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repository}")
            if judged is not None and (etag_of(row) != judged or tags):
                raise ManifestChanged(f"manifest {digest} changed since it was judged")
            # Every delete below is If-Match what was read: a lock set since fails it, and the
            # next attempt sees the lock.
            check_delete(locks_of(row), f"manifest {digest}")
            for tag in tags:
                check_delete(locks_of(tag), f"tag {tag['RowKey'][len(TAG):]}, which names manifest {digest},")
            operations: list[tuple[str, Any, dict[str, Any]]] = [("delete", tag, _conditional(tag)) for tag in tags]
            if row.get("subject"):
                referrer = await self._metadata.read_fast(self._metadata.repos, partition,
                                                          f"{REFERRER}{row['subject']}:{digest}")
                if referrer is not None:
                    operations.append(("delete", referrer, {}))
            try:
                # The row and the event last, in one transaction: the event is there iff the row went.
                if len(operations) + 2 > MAX_BATCH:  # the tags first, in transactions of their own
                    await self._metadata.transact(self._metadata.repos, operations)
                    operations = []
                pending = await self._fresh(pending)
                final: list[tuple[str, Any, dict[str, Any]]] = [("delete", row, _conditional(row))]
                if pending is not None:
                    final.append(pending.operation("delete", repository, str(digest), row["mediaType"], None))
                await self._metadata.repos.submit_transaction(operations + final)
                self._committed(pending)
                break
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
                if await self._recorded(pending):
                    break
        else:
            raise unavailable(f"manifest {digest} kept changing while it was deleted")
        try:
            await self._delete_referrer_rows(partition, digest)
        except Exception as error:
            # The manifest is gone, as asked; its referrers stay listed, as if pushed before it.
            if not isinstance(error, RegistryError) and storage_failure(error) is None:
                raise
            log.warning("manifest %s deleted, but not the entries of its referrers: %r", digest, error)
        return [tag["RowKey"][len(TAG):] for tag in tags]

    async def _delete_referrer_rows(self, partition: str, subject: Digest) -> None:
        """Remove every `r:<subject>:*` row, a transaction of at most MAX_BATCH at a time."""
        conflicts = 0
        while True:
            rows = [
                {"PartitionKey": partition, "RowKey": row["RowKey"]}
                async for row in self._metadata.scan(self._metadata.repos, partition, f"{REFERRER}{subject}:",
                                                     limit=MAX_BATCH)
            ]
            if not rows:
                return
            try:  # unconditional: a referrer re-pushed meanwhile goes with its subject too
                await self._metadata.repos.submit_transaction([("delete", row, {}) for row in rows])
            except TableTransactionError as error:
                # A row deleted meanwhile (its referrer was deleted) fails the batch: read again.
                if not _conflict(error):
                    raise
                conflicts += 1
                if conflicts == ATTEMPTS:
                    raise unavailable(f"the referrers of {subject} kept changing while they were deleted") from None

    async def _tags_of(self, partition: str, digest: Digest, select: list[str] | None = None) -> list[Any]:
        return [
            tag async for tag in self._metadata.scan(
                self._metadata.repos, partition, TAG, extra_filter=" and digest eq @digest",
                parameters={"digest": str(digest)}, select=select,
            )
        ]

    async def delete_tag(self, repository: str, tag: str) -> None:
        """Delete a tag (If-Match: a tag moved or locked meanwhile is looked at again); its
        manifest's retention clock starts in the same transaction (UNTAGGED)."""
        partition = repository_key(repository)
        repository_locks, pending = await asyncio.gather(self.locks.fresh(repository), self._announce(partition))
        check_delete(repository_locks, f"repository {repository}")
        gone: set[str] = set()  # manifests a tag named that are not there: nothing to stamp
        for _ in range(ATTEMPTS):
            row = await self._metadata.read_fast(self._metadata.repos, partition, TAG + tag)
            if row is None:
                raise RegistryError(MANIFEST_UNKNOWN, f"tag {tag} is not in repository {repository}")
            check_delete(locks_of(row), f"tag {tag}")
            pending = await self._fresh(pending)
            operations: list[Operation] = [("delete", row, _conditional(row))]
            if row["digest"] not in gone:
                operations.append(("update", {"PartitionKey": partition, "RowKey": MANIFEST + row["digest"],
                                              UNTAGGED: datetime.now(UTC)}, {"mode": UpdateMode.MERGE}))
            if pending is not None:  # beyond ACR, which has no event for a tag delete
                operations.append(pending.operation("untag", repository, row["digest"], row["mediaType"], None,
                                                    (tag,)))
            try:
                await self._metadata.repos.submit_transaction(operations)
                self._committed(pending)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
                if await self._recorded(pending):
                    return
            # Moved, locked or deleted since it was read: look again (and at its manifest, which
            # a tag always has; if not, the tag goes without a stamp).
            if await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + row["digest"]) is None:
                gone.add(row["digest"])
        raise unavailable(f"tag {tag} kept changing while it was deleted")

    async def set_tag_locks(self, repository: str, tag: str, changes: dict[str, bool]) -> Locks:
        """Set a tag's changeable attributes (If-Match the row read: a push meanwhile wins, and
        this looks again)."""
        partition = repository_key(repository)
        for _ in range(ATTEMPTS):
            row = await self._metadata.read_fast(self._metadata.repos, partition, TAG + tag)
            if row is None:
                raise RegistryError(MANIFEST_UNKNOWN, f"tag {tag} is not in repository {repository}")
            locks = locks_of(row).updated(changes)
            entity = {"PartitionKey": partition, "RowKey": TAG + tag, **locks.document()}
            try:
                await self._metadata.repos.update_entity(entity, mode=UpdateMode.MERGE, **_conditional(row))
                return locks
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise unavailable(f"tag {tag} kept changing while its attributes were set")

    async def set_manifest_locks(self, repository: str, digest: Digest, changes: dict[str, bool]) -> Locks:
        """Set a manifest's changeable attributes; its tags' rows get its readEnabled too (one
        transaction, If-Match every row read), so a pull by tag needs no second read."""
        partition = repository_key(repository)
        for _ in range(ATTEMPTS):
            row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest))
            if row is None:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repository}")
            tags = await self._tags_of(partition, digest, select=["PartitionKey", "RowKey"])
            locks = locks_of(row).updated(changes)
            operations: list[tuple[str, Any, dict[str, Any]]] = [
                ("update", {"PartitionKey": partition, "RowKey": tag["RowKey"],
                            MANIFEST_READ_ENABLED: locks.readEnabled}, {"mode": UpdateMode.MERGE, **_conditional(tag)})
                for tag in tags
            ]
            operations.append(("update", {"PartitionKey": partition, "RowKey": MANIFEST + str(digest),
                                          **locks.document()}, {"mode": UpdateMode.MERGE, **_conditional(row)}))
            try:
                await self._metadata.transact(self._metadata.repos, operations)
                return locks
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
        raise unavailable(f"manifest {digest} kept changing while its attributes were set")

    async def list_tags(self, repository: str, limit: int, last: str | None) -> list[str]:
        """Up to `limit` listable tags after `last`, in lexical order (keys only are read)."""
        partition = repository_key(repository)
        names: list[str] = []
        rows = self._metadata.scan(self._metadata.repos, partition, TAG, last, select=["RowKey", "listEnabled"])
        async with aclosing(rows):
            async for row in rows:
                if len(names) == limit:
                    break
                if row.get("listEnabled") is not False:
                    names.append(row["RowKey"][len(TAG):])
        return names

    async def list_referrers(self, repository: str, subject: Digest, artifact_type: str | None,
                             after: str | None, limit: int, max_bytes: int) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the descriptors of `subject`'s referrers, in digest order after `after`.

        At most `limit` descriptors, together at most `max_bytes` in `encode_listing` (one
        descriptor always); with the key to continue after, None on the last page.
        """
        prefix = f"{REFERRER}{subject}:"
        extra_filter, parameters = "", {}
        if artifact_type is not None and _fits_table_string(artifact_type):
            extra_filter, parameters = " and artifactType eq @type", {"type": artifact_type}
        elif artifact_type is not None:
            extra_filter, parameters = " and artifactTypeSha256 eq @type", {"type": _sha256(artifact_type)}
        page: list[tuple[dict[str, Any], dict[str, Any]]] = []
        used, more = 0, False
        rows = self._metadata.scan(self._metadata.repos, repository_key(repository), prefix, after, limit + 1,
                                   extra_filter, parameters)
        async with aclosing(rows):
            async for row in rows:
                descriptor = _referrer_descriptor(row, prefix)
                cost = len(encode_listing(descriptor)) + 1
                if row.get(DETAILS_IN_MANIFEST):
                    cost += read_int(row, "size") + _DESCRIPTOR_OVERHEAD
                if len(page) == limit or (page and used + cost > max_bytes):
                    more = True
                    break
                page.append((row, descriptor))
                used += cost
        details = [self._details_from_manifest(repository, descriptor)
                   for row, descriptor in page if row.get(DETAILS_IN_MANIFEST)]
        missing = {digest for digest in await asyncio.gather(*details) if digest}
        listed = [descriptor for _, descriptor in page if descriptor["digest"] not in missing]
        return listed, page[-1][1]["digest"] if more else None

    async def _details_from_manifest(self, repository: str, descriptor: dict[str, Any]) -> str | None:
        """Fill in artifactType and annotations from the referrer manifest; its digest if it is gone."""
        try:
            stored = await self.get(repository, parse_digest(descriptor["digest"]))
        except RegistryError as error:
            if error.error is not MANIFEST_UNKNOWN:
                raise
            return descriptor["digest"]  # deleted since the page was read: its entry is gone too
        assert stored.body is not None
        manifest = parse_manifest(stored.body, stored.media_type)
        artifact_type = effective_artifact_type(manifest)
        if artifact_type:
            descriptor["artifactType"] = artifact_type
        if manifest.annotations:
            descriptor["annotations"] = manifest.annotations
        return None


def _referrer_descriptor(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "mediaType": row["mediaType"],
        "digest": row["RowKey"][len(prefix):],
        "size": read_int(row, "size"),
    }
    if row.get("artifactType"):
        descriptor["artifactType"] = row["artifactType"]
    if row.get("annotations"):
        descriptor["annotations"] = json.loads(row["annotations"])
    return descriptor
