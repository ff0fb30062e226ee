"""Manifests, tags and referrers of a repository (rows `m:`, `t:`, `r:` of its partition).

The manifest row `m:<digest>` is the one source of truth for a manifest's media type and
size; tag and referrer rows carry copies of it, written in the same entity-group transaction.
Writes that could lose to a concurrent one are conditional:
- a push of a manifest that exists updates its row If-Match the etag it read, so a delete that
  read the row (and then the tags) before this push fails on the row's etag and looks again;
- a manifest delete removes its tags If-Match their etags, so a tag moved meanwhile to
  another manifest is never taken with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID, MANIFEST_UNKNOWN, RegistryError
from registry.oci.manifest import Manifest, effective_artifact_type
from registry.storage.blobs import BlobStore
from registry.storage.content import MANIFEST_PREFIX, ContentStore
from registry.storage.errors import unavailable
from registry.storage.metadata import (
    MANIFEST,
    REFERRER,
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
MAX_TABLE_STRING = 32 * 1024
# Conflicting transactions are retried this often before the client is told to retry.
ATTEMPTS = 4
# Tags one manifest PUT may apply (`?tag=`): with the manifest and referrer rows they fit one
# entity-group transaction of at most 100 operations.
MAX_TAGS_PER_PUSH = 64
_CONFLICT_STATUS = (404, 409, 412)


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    size: int
    subject: str | None
    body: bytes | None  # None when asked for metadata only


def _conditional(entity: dict[str, Any]) -> dict[str, Any]:
    return {"etag": etag_of(entity), "match_condition": MatchConditions.IfNotModified}


def _conflict(error: TableTransactionError) -> bool:
    return error.status_code in _CONFLICT_STATUS


class ManifestStore:
    def __init__(self, content: ContentStore, metadata: MetadataStore, blobs: BlobStore):
        self._content = content
        self._metadata = metadata
        self._blobs = blobs

    async def put(self, repository: str, digest: Digest, body: bytes, manifest: Manifest,
                  tags: Sequence[str] = ()) -> None:
        partition = repository_key(repository)
        existing, _ = await asyncio.gather(
            self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest)),
            self._check_references(repository, manifest),
        )
        location = None
        if len(body) > INLINE_MANIFEST_LIMIT:
            location = f"{MANIFEST_PREFIX}{digest.algorithm}/{digest.hex}"
            await self._content.put_once(location, body)
        now = datetime.now(UTC)
        for _ in range(ATTEMPTS):
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
                operations.append(("create", row, {}))
            else:
                touch = {"PartitionKey": partition, "RowKey": MANIFEST + str(digest), "pushed": now}
                operations.append(("update", touch, {"mode": UpdateMode.MERGE, **_conditional(existing)}))
            for tag in tags:  # all in the one transaction: every tag is applied, or none
                tag_row = {"PartitionKey": partition, "RowKey": TAG + tag, "digest": str(digest), **stored}
                operations.append(("upsert", tag_row, {"mode": UpdateMode.REPLACE}))
            if manifest.subject is not None:
                operations.append(("upsert", self._referrer_row(partition, digest, media_type, len(body), manifest),
                                   {"mode": UpdateMode.REPLACE}))
            try:
                await self._metadata.repos.submit_transaction(operations)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
            existing = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest))
        raise unavailable(f"manifest {digest} kept changing while it was pushed")

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
        if artifact_type:
            row["artifactType"] = artifact_type
        if manifest.annotations:
            annotations = json.dumps(manifest.annotations)
            # A table string holds 32K UTF-16 characters: larger annotations are left out of
            # the referrers list (the manifest itself keeps them).
            if len(annotations) <= MAX_TABLE_STRING:
                row["annotations"] = annotations
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
        digest = reference if isinstance(reference, Digest) else parse_digest(row["digest"])
        body: bytes | None = None
        if with_body:
            body = row["data"] if "data" in row else await self._content.read_all(row["location"])
        return StoredManifest(digest, row["mediaType"], read_int(row, "size"), row.get("subject"), body)

    async def delete(self, repository: str, digest: Digest) -> None:
        """Delete a manifest, its referrer entry and every tag that points at it."""
        partition = repository_key(repository)
        for _ in range(ATTEMPTS):
            # The row first, then its tags: a push that tags the manifest after the row was read
            # changes the row, so the conditional delete of the row below fails and we look again.
            row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(digest))
            tags = await self._tags_of(partition, digest) if row is not None else []
            if row is None:
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repository}")
            operations: list[tuple[str, Any, dict[str, Any]]] = [("delete", tag, _conditional(tag)) for tag in tags]
            if row.get("subject"):
                referrer = await self._metadata.read_fast(self._metadata.repos, partition,
                                                          f"{REFERRER}{row['subject']}:{digest}")
                if referrer is not None:
                    operations.append(("delete", referrer, {}))
            operations.append(("delete", row, _conditional(row)))  # last: in the final batch
            try:
                await self._metadata.transact(self._metadata.repos, operations)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
        raise unavailable(f"manifest {digest} kept changing while it was deleted")

    async def _tags_of(self, partition: str, digest: Digest) -> list[Any]:
        return [
            tag async for tag in self._metadata.scan(
                self._metadata.repos, partition, TAG, extra_filter=" and digest eq @digest",
                parameters={"digest": str(digest)},
            )
        ]

    async def delete_tag(self, repository: str, tag: str) -> None:
        if not await self._metadata.delete(self._metadata.repos, repository_key(repository), TAG + tag):
            raise RegistryError(MANIFEST_UNKNOWN, f"tag {tag} is not in repository {repository}")

    async def list_tags(self, repository: str, limit: int, last: str | None) -> list[str]:
        """Up to `limit` tags after `last`, in lexical order."""
        partition = repository_key(repository)
        return [
            row["RowKey"][len(TAG):]
            async for row in self._metadata.scan(self._metadata.repos, partition, TAG, last, limit)
        ]

    async def list_referrers(self, repository: str, subject: Digest, artifact_type: str | None) -> list[dict[str, Any]]:
        prefix = f"{REFERRER}{subject}:"
        descriptors = []
        async for row in self._metadata.scan(self._metadata.repos, repository_key(repository), prefix):
            descriptor: dict[str, Any] = {
                "mediaType": row["mediaType"],
                "digest": row["RowKey"][len(prefix):],
                "size": read_int(row, "size"),
            }
            if row.get("artifactType"):
                descriptor["artifactType"] = row["artifactType"]
            if row.get("annotations"):
                descriptor["annotations"] = json.loads(row["annotations"])
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                descriptors.append(descriptor)
        return descriptors
