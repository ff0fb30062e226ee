"""Table Storage layout: key encoding, row kinds and the few table operations we use.

Tables (named with the configured prefix):
- `<prefix>repos`: one partition per repository; rows `m:<digest>` manifest, `t:<tag>` tag,
  `b:<digest>` blob link, `r:<subject>:<digest>` referrer, `v:<digest>` the Docker rendition
  of an OCI manifest, `e:<id>` a write's event (events.py); `u:<id>` upload session rows are
  left only by older versions (an upload's state now travels in its Location) and purged.
- `<prefix>digests`: the content index, partition = digest: where the bytes are, size.
- `<prefix>catalog`: partition "repository", one row per repository that has manifests; and the
  registry's settings rows (retention, cache rules, credential sets, webhooks, and the key that
  signs upload states: upload_state.py).
- `<prefix>events`: event intents and webhook delivery logs (events.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty
from azure.data.tables.aio import TableClient, TableServiceClient

from registry.storage.errors import unavailable
from registry.storage.table_requests import TableRequests

MANIFEST = "m:"
TAG = "t:"
BLOB = "b:"
REFERRER = "r:"
UPLOAD = "u:"
RENDITION = "v:"  # v:<OCI source digest> -> its Docker rendition (renditions.py)
RENDITION_OF = "renditionOf"  # on a rendition's m: row: the source it was made for
CATALOG_PARTITION = "repository"
MAX_BATCH = 100  # entity-group transactions take at most 100 operations

# Repository names use [a-z0-9._-/]; '/' is not allowed in table keys. This mapping is
# one-to-one and keeps the names' sort order, so catalog pages come out in lexical order.
_TO_KEY = str.maketrans({"-": "+", ".": ",", "/": "-"})
_FROM_KEY = str.maketrans({"+": "-", ",": ".", "-": "/"})


def repository_key(name: str) -> str:
    return name.translate(_TO_KEY)


def repository_name(key: str) -> str:
    return key.translate(_FROM_KEY)


def int64(value: int) -> EntityProperty:
    return EntityProperty(value, EdmType.INT64)


def read_int(entity: dict[str, Any], key: str) -> int:
    value = entity[key]
    return int(value.value if isinstance(value, EntityProperty) else value)


def etag_of(entity: dict[str, Any]) -> str:
    """The row version of an entity read by the SDK (metadata) or by the fast point read (odata.etag)."""
    metadata = getattr(entity, "metadata", None)
    return metadata["etag"] if metadata else entity["odata.etag"]


def next_key(prefix: str) -> str:
    """The smallest key greater than every key that starts with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class MetadataStore:
    def __init__(self, service: TableServiceClient, prefix: str, reader: TableRequests):
        self.repos: TableClient = service.get_table_client(f"{prefix}repos")
        self._reader = reader
        self.digests: TableClient = service.get_table_client(f"{prefix}digests")
        self.catalog: TableClient = service.get_table_client(f"{prefix}catalog")

    async def ensure_tables(self) -> None:
        for table in (self.repos, self.digests, self.catalog):
            try:
                await table.create_table()
            except ResourceExistsError:
                pass

    async def check(self) -> None:
        """Raises unless the table service answers (readiness): a read of a row that need not exist."""
        await self._reader.get(self.repos.table_name, "readiness", "probe")

    async def read_fast(self, table: TableClient, partition: str, row: str) -> dict[str, Any] | None:
        """A point read at a third of the SDK's cost: Int64 and Binary decoded, dates left as ISO
        text, the version in `odata.etag` (see etag_of)."""
        return await self._reader.get(table.table_name, partition, row)

    async def insert(self, table: TableClient, entity: dict[str, Any]) -> str:
        """Create the row (ResourceExistsError if there is one); its etag. The lean path of reads."""
        return await self._reader.insert(table.table_name, entity)

    @staticmethod
    async def get(table: TableClient, partition: str, row: str) -> dict[str, Any] | None:
        try:
            return await table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

    @staticmethod
    async def delete(table: TableClient, partition: str, row: str) -> bool:
        """Delete one row as it is now; False if there is none.

        Conditional on the version read: a row rewritten meanwhile is read again, so the
        delete applies to what is there, never half to an old version and half to a new one.
        """
        for _ in range(3):
            existing = await MetadataStore.get(table, partition, row)
            if existing is None:
                return False
            try:
                await table.delete_entity(partition, row, etag=existing.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                continue
            return True
        raise unavailable(f"{row} kept changing while it was deleted")

    @staticmethod
    async def scan(
        table: TableClient,
        partition: str,
        prefix: str,
        after: str | None = None,
        limit: int | None = None,
        extra_filter: str = "",
        parameters: dict[str, Any] | None = None,
        select: list[str] | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows of one partition whose key starts with prefix, in key order, after `after`;
        with `select`, only those properties (and the keys) are read. `page_size`: rows per
        storage read where the caller stops by itself (without it, `limit` or 1000)."""
        query = "PartitionKey eq @pk and RowKey gt @low"
        params = {"pk": partition, "low": prefix + after if after else prefix, **(parameters or {})}
        if prefix:
            query += " and RowKey lt @high"
            params["high"] = next_key(prefix)
        query += extra_filter
        page_size = page_size or (min(limit, 1000) if limit else 1000)
        count = 0
        chosen = {"select": select} if select else {}
        async for entity in table.query_entities(query, parameters=params, results_per_page=page_size, **chosen):
            yield entity
            count += 1
            if limit is not None and count >= limit:
                return

    @staticmethod
    async def transact(table: TableClient, operations: Iterable[tuple[Any, ...]]) -> None:
        """Entity-group transactions of at most MAX_BATCH operations each, in order."""
        batch: list[tuple[Any, ...]] = []
        for operation in operations:
            batch.append(operation)
            if len(batch) == MAX_BATCH:
                await table.submit_transaction(batch)
                batch = []
        if batch:
            await table.submit_transaction(batch)
