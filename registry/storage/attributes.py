"""What the ACR metadata API reads: attributes of repositories, tags and manifests.

Read from the rows of a repository's partition (manifests.py writes them):
- a manifest's createdTime is its row's `created`, its lastUpdateTime `pushed` (each push of
  the manifest, by digest or tag, sets it);
- a tag's lastUpdateTime is `updated` (written with the tag), or the row's own Timestamp for
  tags written before that property existed. Its createdTime is the same: the tag row is
  replaced at every push, and keeping a first-write time would cost the push a read;
- Docker renditions (renditions.py) are Berth's own derived manifests: not listed, not counted.

Lists page by key (tag name, digest) like /v2; ordered by time they need every row of the kind
in memory, so ordering is refused above MAX_ORDERED rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core.exceptions import ResourceNotFoundError

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import (
    BLOB_UNKNOWN,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    QUERY_UNSUPPORTED,
    TAG_UNKNOWN,
    RegistryError,
)
from registry.oci.manifest import IMAGE_MANIFESTS
from registry.oci.summary import ManifestSummary, config_platform, summarize
from registry.storage.blobs import BlobStore
from registry.storage.content import ContentStore
from registry.storage.locks import NAMES as LOCK_NAMES
from registry.storage.locks import Locks, locks_of
from registry.storage.manifests import ManifestStore
from registry.storage.metadata import MANIFEST, RENDITION_OF, TAG, MetadataStore, repository_key

# Rows one ordered listing may sort in memory (tags or manifests of one repository).
MAX_ORDERED = 10_000
# A config larger than this is not read for the platform of a single manifest.
MAX_CONFIG_BYTES = 1024 * 1024
ORDERS = ("timeasc", "timedesc")

_TAG_FIELDS = ["RowKey", "digest", "updated", "Timestamp", *LOCK_NAMES]
_MANIFEST_KEY_FIELDS = ["RowKey", "created", "pushed", RENDITION_OF, "listEnabled"]
T = TypeVar("T")


@dataclass(frozen=True)
class TagAttributes:
    name: str
    digest: str
    created: datetime
    updated: datetime
    locks: Locks = Locks()


@dataclass(frozen=True)
class ManifestAttributes:
    digest: str
    media_type: str
    created: datetime
    updated: datetime
    summary: ManifestSummary
    tags: list[str]
    architecture: str | None = None
    os: str | None = None
    locks: Locks = Locks()


@dataclass(frozen=True)
class RepositoryAttributes:
    name: str
    created: datetime
    updated: datetime
    manifest_count: int
    tag_count: int
    locks: Locks = Locks()


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after `name` (a tag or digest), and in a time order after `time`."""

    name: str | None = None
    time: datetime | None = None


def parse_time(value: Any) -> datetime:
    """A table date as the SDK (datetime) or a fast point read (ISO text, 7 decimals) gives it."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def _row_time(row: dict[str, Any], key: str) -> datetime:
    """A property's date, else the row's last write (SDK metadata or the fast read's Timestamp)."""
    value = row.get(key)
    if value is None:
        metadata = getattr(row, "metadata", None)
        value = metadata["timestamp"] if metadata else row["Timestamp"]
    return parse_time(value)


def _tag(row: dict[str, Any]) -> TagAttributes:
    updated = _row_time(row, "updated")
    return TagAttributes(row["RowKey"][len(TAG):], row["digest"], updated, updated, locks_of(row))


def _listed(row: dict[str, Any]) -> bool:
    """Whether a tag or manifest row may be listed (listEnabled, a lock), and is no rendition."""
    return row.get("listEnabled") is not False and not row.get(RENDITION_OF)


def _page(items: list[T], key: Any, cursor: Cursor, order: str, limit: int) -> tuple[list[T], bool]:
    """A page of `items` sorted by (time, name) in `order`, after the cursor."""
    descending = order == "timedesc"
    ordered = sorted(items, key=key, reverse=descending)
    if cursor.name is not None:
        time = cursor.time
        if time is None:  # a hand-made `last` without a time: where that name is now
            time = next((key(item)[0] for item in ordered if key(item)[1] == cursor.name), None)
            if time is None:
                return [], False
        mark = (time, cursor.name)
        ordered = [item for item in ordered if (key(item) < mark if descending else key(item) > mark)]
    return ordered[:limit], len(ordered) > limit


class AttributeStore:
    def __init__(self, content: ContentStore, metadata: MetadataStore, blobs: BlobStore, manifests: ManifestStore):
        self._content = content
        self._metadata = metadata
        self._blobs = blobs
        self._manifests = manifests

    def _scan(self, repository: str, prefix: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
        return self._metadata.scan(self._metadata.repos, repository_key(repository), prefix, **options)

    async def _exists(self, repository: str) -> bool:
        """A repository exists while it has a manifest (as the catalog and /v2 say)."""
        rows = self._scan(repository, MANIFEST, limit=1, select=["RowKey"])
        async with aclosing(rows):
            return await anext(aiter(rows), None) is not None

    @staticmethod
    def _unknown(repository: str) -> RegistryError:
        return RegistryError(NAME_UNKNOWN, f"repository {repository} is not known to this registry")

    async def repository(self, repository: str) -> RepositoryAttributes:
        """Counts and times of a repository: one key-only pass over its manifests and its tags."""
        manifests, tags = 0, 0
        created: datetime | None = None
        updated: datetime | None = None
        async for row in self._scan(repository, MANIFEST, select=_MANIFEST_KEY_FIELDS):
            if row.get(RENDITION_OF):
                continue
            manifests += 1
            first, last = parse_time(row["created"]), parse_time(row["pushed"])
            created = first if created is None else min(created, first)
            updated = last if updated is None else max(updated, last)
        if not manifests or created is None or updated is None:
            raise self._unknown(repository)
        async for row in self._scan(repository, TAG, select=_TAG_FIELDS):
            tags += 1
            updated = max(updated, _row_time(row, "updated"))
        locks = await self._manifests.locks.fresh(repository)
        return RepositoryAttributes(repository, created, updated, manifests, tags, locks)

    async def tags(self, repository: str, limit: int, cursor: Cursor, order: str | None,
                   digest: Digest | None) -> tuple[list[TagAttributes], bool]:
        """A page of tags in name order (or time order), and whether more follow."""
        extra, parameters = (" and digest eq @digest", {"digest": str(digest)}) if digest else ("", {})
        if order is None:
            found: list[TagAttributes] = []
            # A page's worth per read (and a little more for tags not listed): not 1,000 rows for 50.
            scan = self._scan(repository, TAG, after=cursor.name, extra_filter=extra, parameters=parameters,
                              select=_TAG_FIELDS, page_size=min(limit + 10, 1000))
            async with aclosing(scan):
                async for row in scan:
                    if _listed(row):
                        found.append(_tag(row))
                    if len(found) > limit:
                        break
            page, more = found[:limit], len(found) > limit
        else:
            rows = await self._all(repository, TAG, "tags", extra_filter=extra, parameters=parameters,
                                   select=_TAG_FIELDS)
            page, more = _page([_tag(row) for row in rows if _listed(row)], lambda t: (t.updated, t.name), cursor,
                               order, limit)
        if not page and cursor.name is None and not await self._exists(repository):
            raise self._unknown(repository)
        return page, more

    async def tag(self, repository: str, tag: str) -> TagAttributes:
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), TAG + tag)
        if row is None:
            if not await self._exists(repository):
                raise self._unknown(repository)
            raise RegistryError(TAG_UNKNOWN, f"tag {tag} is not in repository {repository}")
        return _tag(row)

    async def manifests(self, repository: str, limit: int, cursor: Cursor,
                        order: str | None) -> tuple[list[ManifestAttributes], bool]:
        """A page of manifests in digest order (or time order), and whether more follow."""
        if order is None:
            rows: list[dict[str, Any]] = []
            scan = self._scan(repository, MANIFEST, after=cursor.name)
            async with aclosing(scan):
                async for row in scan:
                    if _listed(row):
                        rows.append(row)
                    if len(rows) > limit:
                        break
            page, more = rows[:limit], len(rows) > limit
        else:
            keys = [row for row in await self._all(repository, MANIFEST, "manifests", select=_MANIFEST_KEY_FIELDS)
                    if _listed(row)]
            chosen, more = _page(keys, lambda r: (parse_time(r["pushed"]), r["RowKey"][len(MANIFEST):]),
                                 cursor, order, limit)
            partition = repository_key(repository)
            read = await asyncio.gather(*(self._metadata.read_fast(self._metadata.repos, partition, row["RowKey"])
                                          for row in chosen))
            page = [row for row in read if row is not None]  # deleted since the keys were read
        if not page and cursor.name is None and not await self._exists(repository):
            raise self._unknown(repository)
        tags = await self._tags_by_digest(repository) if page else {}
        return list(await asyncio.gather(*(self._attributes(row, tags) for row in page))), more

    async def manifest(self, repository: str, digest: Digest) -> ManifestAttributes:
        """One manifest, with the platform its config names (one more read: lists leave it out)."""
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), MANIFEST + str(digest))
        if row is None:
            if not await self._exists(repository):
                raise self._unknown(repository)
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repository}")
        tags = [row["RowKey"][len(TAG):] async for row in self._scan(
            repository, TAG, extra_filter=" and digest eq @digest", parameters={"digest": str(digest)},
            select=["RowKey"])]
        attributes = await self._attributes(row, {str(digest): tags})
        if attributes.media_type not in IMAGE_MANIFESTS or attributes.summary.config_digest is None:
            return attributes
        architecture, os = await self._platform(repository, attributes.summary.config_digest)
        return replace(attributes, architecture=architecture, os=os)

    async def _attributes(self, row: dict[str, Any], tags: dict[str, list[str]]) -> ManifestAttributes:
        digest = row["RowKey"][len(MANIFEST):]
        return ManifestAttributes(digest, row["mediaType"], parse_time(row["created"]), parse_time(row["pushed"]),
                                  summarize(await self._manifests.body(row)), sorted(tags.get(digest, [])),
                                  locks=locks_of(row))

    async def _platform(self, repository: str, config_digest: str) -> tuple[str | None, str | None]:
        try:
            blob = await self._blobs.stat(repository, parse_digest(config_digest))
            if blob.size > MAX_CONFIG_BYTES:
                return None, None
            return config_platform(await self._content.read_all(blob.location))
        except RegistryError as error:
            if error.error is not BLOB_UNKNOWN:
                raise
        except ResourceNotFoundError:
            pass
        return None, None  # the config is no longer linked or stored: the manifest is still listed

    async def _tags_by_digest(self, repository: str) -> dict[str, list[str]]:
        """Every tag of the repository by the digest it names (names only: one query per 1000 tags)."""
        tags: dict[str, list[str]] = {}
        async for row in self._scan(repository, TAG, select=["RowKey", "digest"]):
            tags.setdefault(row["digest"], []).append(row["RowKey"][len(TAG):])
        return tags

    async def _all(self, repository: str, prefix: str, kind: str, **options: Any) -> list[dict[str, Any]]:
        rows = [row async for row in self._scan(repository, prefix, limit=MAX_ORDERED + 1, **options)]
        if len(rows) > MAX_ORDERED:
            raise RegistryError(QUERY_UNSUPPORTED, f"repository {repository} has more than {MAX_ORDERED} {kind}: "
                                "orderby is not supported for it; list in name order (without orderby)")
        return rows
