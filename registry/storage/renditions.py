"""Docker renditions of OCI manifests (rows `v:<source digest>` of a repository's partition).

A rendition (oci/convert.py) is a real manifest of the repository, `m:<rendition digest>`,
written through ManifestStore.put (an index's children before it), so a pull by its digest
works on every instance. Its row carries `renditionOf` = the source, unless a user pushed the
same bytes (then it is theirs and never deleted for them). The pointer `v:<source>` names it
and holds a copy, as a tag row does: serving a rendition costs one point read.

Races are settled by storage, never by an instance:
- the pointer is created in one transaction that also touches the source's and the
  rendition's rows If-Match the versions read, so it never outlives a source deleted meanwhile
  nor names a rendition deleted meanwhile; instances making one rendition at once write the
  same rows, and the first pointer wins;
- a deleted manifest takes its pointer, the pointers naming it, and its rendition if that
  carries `renditionOf` = it and no other source's pointer names it (sources that differ only
  in what Docker cannot say share one rendition; the row's `renditionOf` passes to another).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode

from registry.oci.convert import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    docker_manifest,
    docker_manifest_list,
    index_children,
)
from registry.oci.digest import Digest, digest_of, parse_digest
from registry.oci.errors import MANIFEST_UNKNOWN, RegistryError
from registry.oci.manifest import parse_manifest
from registry.storage.errors import unavailable
from registry.storage.manifests import ManifestStore, StoredManifest
from registry.storage.metadata import (
    MANIFEST,
    RENDITION,
    RENDITION_OF,
    MetadataStore,
    etag_of,
    int64,
    read_int,
    repository_key,
)

ATTEMPTS = 4
_CONFLICT_STATUS = (404, 409, 412)
Operation = tuple[str, dict[str, Any], dict[str, Any]]


def _if_unchanged(entity: dict[str, Any]) -> dict[str, Any]:
    return {"etag": etag_of(entity), "match_condition": MatchConditions.IfNotModified}


def _touch(entity: dict[str, Any]) -> Operation:
    """A write that changes nothing but the row's version, and fails if the row changed or went."""
    keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
    return "update", keys, {"mode": UpdateMode.MERGE, **_if_unchanged(entity)}


def _conflict(error: TableTransactionError) -> bool:
    return error.status_code in _CONFLICT_STATUS


class RenditionStore:
    def __init__(self, metadata: MetadataStore, manifests: ManifestStore):
        self._metadata = metadata
        self._manifests = manifests

    async def docker(self, repository: str, source: Digest, with_body: bool = True) -> StoredManifest | None:
        """The Docker rendition of OCI manifest `source`, made on first use; None if it has none."""
        pointer = await self._metadata.read_fast(self._metadata.repos, repository_key(repository),
                                                 RENDITION + str(source))
        if pointer is None:
            pointer = await self._make(repository, source)
            if pointer is None:
                return None
        body = await self._manifests.body(pointer) if with_body else None
        return StoredManifest(parse_digest(pointer["digest"]), pointer["mediaType"], read_int(pointer, "size"),
                              None, body)

    async def _make(self, repository: str, source: Digest) -> dict[str, Any] | None:
        """Store the rendition and its pointer; the pointer row, None if there is no rendition."""
        partition = repository_key(repository)
        made: Digest | None = None
        for _ in range(ATTEMPTS):
            source_row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(source))
            if source_row is None:
                if made is not None:  # the source went while we made its rendition
                    await self._release(partition, source, made)
                raise RegistryError(MANIFEST_UNKNOWN, f"manifest {source} is not in repository {repository}")
            rendered = await self._render(repository, source_row["mediaType"], await self._manifests.body(source_row))
            if rendered is None:
                return None
            body, media_type = rendered
            made = digest_of(body)
            rendition_row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(made))
            if rendition_row is None:
                await self._manifests.put(repository, made, body, parse_manifest(body, media_type),
                                          rendition_of=source)
                rendition_row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(made))
                if rendition_row is None:
                    continue  # deleted as soon as made: start again
            pointer = {
                "PartitionKey": partition, "RowKey": RENDITION + str(source), "digest": str(made),
                "mediaType": rendition_row["mediaType"], "size": int64(len(body)),
                **({"location": rendition_row["location"]} if "location" in rendition_row else {"data": body}),
            }
            try:
                await self._metadata.repos.submit_transaction(
                    [_touch(source_row), _touch(rendition_row), ("create", pointer, {})]
                )
                return pointer
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
            existing = await self._metadata.read_fast(self._metadata.repos, partition, RENDITION + str(source))
            if existing is not None:  # another instance made it first
                return existing
        raise unavailable(f"the Docker rendition of {source} kept changing while it was made")

    async def _render(self, repository: str, media_type: str, body: bytes) -> tuple[bytes, str] | None:
        if media_type == OCI_MANIFEST:
            rendered = docker_manifest(body)
            return (rendered, DOCKER_MANIFEST) if rendered is not None else None
        if media_type != OCI_INDEX:
            return None
        children = [child for child in index_children(body) or [] if child.media_type == OCI_MANIFEST]
        results = await asyncio.gather(*(self._child(repository, child.digest) for child in children))
        renditions = {child.digest: result for child, result in zip(children, results, strict=True)}
        rendered = docker_manifest_list(body, renditions)
        return (rendered, DOCKER_MANIFEST_LIST) if rendered is not None else None

    async def _child(self, repository: str, digest: str) -> dict[str, Any] | None:
        """The descriptor of a child's rendition (made now if need be), None if it has none."""
        try:
            rendition = await self.docker(repository, parse_digest(digest), with_body=False)
        except RegistryError as error:
            if error.error is MANIFEST_UNKNOWN:
                return None  # deleted since the index was pushed: no rendition for it either
            raise
        if rendition is None:
            return None
        return {"mediaType": rendition.media_type, "size": rendition.size, "digest": str(rendition.digest)}

    async def forget(self, repository: str, digest: Digest) -> None:
        """After manifest `digest` was deleted: its pointer and its rendition, and the pointers
        that name it (it was a rendition) go."""
        partition = repository_key(repository)
        own_key = RENDITION + str(digest)
        for _ in range(ATTEMPTS):
            pointers = [row async for row in self._metadata.scan(
                self._metadata.repos, partition, RENDITION, extra_filter=" and ( RowKey eq @own or digest eq @digest )",
                parameters={"own": own_key, "digest": str(digest)},
            )]
            if not pointers:
                return
            operations: list[Operation] = [("delete", row, _if_unchanged(row)) for row in pointers]
            own = [row for row in pointers if row["RowKey"] == own_key]
            if own:
                operations += await self._release_operations(partition, digest, parse_digest(own[0]["digest"]),
                                                             ignoring={own_key})
            try:
                await self._metadata.transact(self._metadata.repos, operations)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
        raise unavailable(f"the Docker rendition of {digest} kept changing while it was deleted")

    async def _release(self, partition: str, source: Digest, rendition: Digest) -> None:
        """Delete a rendition made for `source` that no pointer names."""
        for _ in range(ATTEMPTS):
            operations = await self._release_operations(partition, source, rendition, ignoring=set())
            if not operations:
                return
            try:
                await self._metadata.transact(self._metadata.repos, operations)
                return
            except TableTransactionError as error:
                if not _conflict(error):
                    raise
        raise unavailable(f"the Docker rendition {rendition} kept changing while it was deleted")

    async def _release_operations(self, partition: str, source: Digest, rendition: Digest,
                                  ignoring: Iterable[str]) -> list[Operation]:
        """What deletes `rendition` for `source`: nothing unless its row says it was made for
        `source`; if other sources' pointers name it, it passes to one of them instead."""
        row = await self._metadata.read_fast(self._metadata.repos, partition, MANIFEST + str(rendition))
        if row is None or row.get(RENDITION_OF) != str(source):
            return []
        ignored = set(ignoring)
        others = [pointer["RowKey"] async for pointer in self._metadata.scan(
            self._metadata.repos, partition, RENDITION, extra_filter=" and digest eq @digest",
            parameters={"digest": str(rendition)},
        ) if pointer["RowKey"] not in ignored]
        if others:
            heir = {"PartitionKey": partition, "RowKey": row["RowKey"], RENDITION_OF: others[0][len(RENDITION):]}
            return [("update", heir, {"mode": UpdateMode.MERGE, **_if_unchanged(row)})]
        return [("delete", row, _if_unchanged(row))]
