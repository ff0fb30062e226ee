"""Online garbage collection of blob bytes: sealed uploads no repository links to any more.

Safe while pushes, mounts and deletes run on other instances, without locks:
1. scan every link (`b:` rows of every repository) and list every upload blob;
2. *condemn* each sealed blob that no link names and that has not changed for the grace
   period: its metadata becomes `berth=condemned`, conditional on the etag listed, so a blob
   written since is left alone. From then on no push or mount links it (they link only blobs
   `holds` calls sealed; a push with the same content links its own copy instead);
3. wait `settle` seconds (a request that checked the blob before it was condemned has
   written its link by then), and scan every link again;
4. a condemned blob a link now names is restored; any other is deleted, conditional on the
   etag of its condemnation, with the digest index row that names it.
A manifest push reads the bytes behind every blob it references and restores condemned ones
(`BlobStore.ensure_readable`), which changes their etag and so fails step 4's delete; bytes
already deleted make the push fail (`MANIFEST_BLOB_UNKNOWN`, the dangling link removed so the
client uploads again). So an acknowledged manifest never references deleted bytes: its links
existed before it was acknowledged, hence at step 3's scan.
Links whose bytes are gone and index rows that name no blob are removed on the way.
Manifest bodies stored as blobs (`manifests/`, over 60 KiB) are not collected yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from registry.oci.digest import parse_digest
from registry.oci.errors import RegistryError
from registry.storage.blobs import CONDEMNED, CONDEMNED_AT, DIGEST, SEALED, STATE, sealed_metadata
from registry.storage.content import UPLOAD_PREFIX, BlobChanged, BlobState, ContentStore
from registry.storage.metadata import BLOB, MetadataStore, etag_of, next_key

Progress = Callable[[str, int], None]


@dataclass
class CollectionReport:
    links: int = 0
    blobs: int = 0
    condemned: int = 0
    restored: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    index_rows_deleted: int = 0
    dangling_links_removed: int = 0
    dry_run: bool = False
    would_delete: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return (f"dry run: {self.links} links, {self.blobs} upload blobs; {len(self.would_delete)} "
                    f"unreferenced blobs ({self.deleted_bytes} bytes) would be deleted")
        return (f"{self.links} links, {self.blobs} upload blobs; condemned {self.condemned}, restored "
                f"{self.restored}, deleted {self.deleted} blobs ({self.deleted_bytes} bytes) and "
                f"{self.index_rows_deleted} index rows; removed {self.dangling_links_removed} dangling links")


@dataclass(frozen=True)
class _Link:
    partition: str
    row_key: str
    location: str
    etag: str


def _quiet(step: str, count: int) -> None:
    pass


class GarbageCollector:
    def __init__(self, content: ContentStore, metadata: MetadataStore):
        self._content = content
        self._metadata = metadata

    async def collect(self, grace: timedelta, settle: float, dry_run: bool = False,
                      progress: Progress = _quiet) -> CollectionReport:
        report = CollectionReport(dry_run=dry_run)
        links = await self._links(progress)
        blobs = await self._blobs(progress)
        report.links, report.blobs = len(links), len(blobs)
        linked = {link.location for link in links}
        cutoff = datetime.now(UTC) - grace
        candidates = {name: state for name, (state, changed) in blobs.items()
                      if name not in linked and changed <= cutoff
                      and state.metadata.get(STATE) in (SEALED, CONDEMNED)}
        if dry_run:
            report.would_delete = sorted(candidates)
            report.deleted_bytes = sum(state.size for state in candidates.values())
            return report
        condemned = await self._condemn(candidates, report, progress)
        if condemned:  # nothing condemned, nothing to wait for (the daily run then costs seconds)
            await asyncio.sleep(settle)
            linked_now = {link.location for link in await self._links(progress)}
            await self._settle(condemned, linked_now, report, progress)
        await self._remove_dangling_links(links, blobs, report)
        await self._remove_stale_index_rows(cutoff, blobs, report)
        return report

    async def _links(self, progress: Progress) -> list[_Link]:
        query = "RowKey ge @low and RowKey lt @high"
        parameters = {"low": BLOB, "high": next_key(BLOB)}
        links = []
        async for row in self._metadata.repos.query_entities(query, parameters=parameters,
                                                               select=["PartitionKey", "RowKey", "location"]):
            links.append(_Link(row["PartitionKey"], row["RowKey"], row["location"], etag_of(row)))
            if len(links) % 1000 == 0:
                progress("links", len(links))
        progress("links", len(links))
        return links

    async def _blobs(self, progress: Progress) -> dict[str, tuple[BlobState, datetime]]:
        blobs = {}
        async for name, state, changed in self._content.list(UPLOAD_PREFIX):
            blobs[name] = (state, changed)
            if len(blobs) % 1000 == 0:
                progress("blobs", len(blobs))
        progress("blobs", len(blobs))
        return blobs

    async def _condemn(self, candidates: dict[str, BlobState], report: CollectionReport,
                       progress: Progress) -> dict[str, BlobState]:
        """Mark each candidate condemned (those already condemned stay as they are)."""
        condemned: dict[str, BlobState] = {}
        now = datetime.now(UTC).isoformat()
        for name, state in candidates.items():
            if state.metadata.get(STATE) == CONDEMNED:  # left by an earlier, interrupted run
                condemned[name] = state
                continue
            marked = {STATE: CONDEMNED, DIGEST: state.metadata.get(DIGEST, ""), CONDEMNED_AT: now}
            try:
                etag = await self._content.set_metadata(name, marked, state.etag)
            except BlobChanged:
                continue  # written since it was listed: not ours to judge in this run
            condemned[name] = BlobState(state.size, etag, marked)
            report.condemned += 1
            progress("condemned", report.condemned)
        return condemned

    async def _settle(self, condemned: dict[str, BlobState], linked: set[str], report: CollectionReport,
                      progress: Progress) -> None:
        for name, state in condemned.items():
            if name in linked:
                digest = state.metadata.get(DIGEST)
                if digest:
                    try:
                        await self._content.set_metadata(name, sealed_metadata(parse_digest(digest)), state.etag)
                        report.restored += 1
                    except (BlobChanged, RegistryError):
                        pass  # restored by the push that linked it
                continue
            if not await self._content.delete(name, state.etag):
                continue  # restored (or changed) since it was condemned: it stays
            report.deleted += 1
            report.deleted_bytes += state.size
            progress("deleted", report.deleted)
            digest = state.metadata.get(DIGEST)
            if digest and await self._delete_index_row(digest, name):
                report.index_rows_deleted += 1

    async def _delete_index_row(self, digest: str, location: str) -> bool:
        row = await self._metadata.read_fast(self._metadata.digests, digest, "")
        if row is None or row.get("location") != location:
            return False  # the index names another copy (or none): leave it
        return await self._delete_if_unchanged(self._metadata.digests, row)

    @staticmethod
    async def _delete_if_unchanged(table: Any, row: dict[str, Any]) -> bool:
        try:
            await table.delete_entity(row["PartitionKey"], row["RowKey"], etag=etag_of(row),
                                      match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def _remove_dangling_links(self, links: list[_Link], blobs: dict[str, tuple[BlobState, datetime]],
                                     report: CollectionReport) -> None:
        """Links whose bytes are missing: removed (conditionally), so the next push uploads them."""
        for link in links:
            if link.location in blobs or not link.location.startswith(UPLOAD_PREFIX):
                continue
            if await self._content.stat(link.location) is not None:
                continue  # written after the listing
            row = {"PartitionKey": link.partition, "RowKey": link.row_key, "odata.etag": link.etag}
            if await self._delete_if_unchanged(self._metadata.repos, row):
                report.dangling_links_removed += 1

    async def _remove_stale_index_rows(self, cutoff: datetime, blobs: dict[str, tuple[BlobState, datetime]],
                                       report: CollectionReport) -> None:
        """Index rows older than the grace period that name a blob that is not there (a crashed
        push, a deleted copy). Younger ones may belong to a push whose bytes are committing."""
        columns = ["PartitionKey", "RowKey", "location", "created"]
        async for row in self._metadata.digests.query_entities("created le @cutoff", parameters={"cutoff": cutoff},
                                                               select=columns):
            if row["location"] in blobs:
                continue
            if await self._content.stat(row["location"]) is None and \
                    await self._delete_if_unchanged(self._metadata.digests, row):
                report.index_rows_deleted += 1
