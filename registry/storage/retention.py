"""Retention: untagged manifests deleted after N days (ACR's retention policy), the referrers of
a deleted subject with it, and blob links that no manifest references any more.

The policy is the registry's (a row of the catalog table; until one is stored, the setting
BERTH_RETENTION_DAYS; disabled when neither says otherwise), which a repository may override
(properties of its `a:` row). A run (daily timer, `python -m registry retention run`) looks at
one repository partition at a time, in passes, and in each pass deletes:
- an untagged manifest whose row was last written more than N days ago: a row is written when
  it is pushed, when a tag moves away from it or is deleted (`untagged`), and when a pushed
  index references it (`reached`), so the clock starts when it lost its last tag, as ACR's;
- a referrer whose subject was deleted (its `r:` row went with the subject), whatever the policy;
never a manifest that is tagged, locked (write- or delete-disabled, or in a locked repository),
a Docker rendition (it goes with its source), a child of an index that stays, or a referrer of
a subject that stays. Indexes go before their children, subjects before their referrers; each
pass looks again, until nothing is left to delete.
When the policy is enabled, links (`b:` rows) no manifest of the repository references, last
written longer ago than N days and the GC grace period, are removed; the garbage collector then
deletes bytes no link names.

Safe while pushes run on other instances: every delete is If-Match the version scanned (a push
that tags, references or re-pushes the row meanwhile changes it), and rows written less than
`margin` ago (longer than any request takes) are never deleted, so a push that wrote its
references before the scan has committed its manifest before the scan started, and the scan
sees it. Pushes too large for one transaction write those references first (manifests.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import LOCKED, MANIFEST_UNKNOWN, RegistryError
from registry.oci.manifest import parse_manifest
from registry.storage.locks import ATTRIBUTES, locks_of
from registry.storage.manifests import ManifestChanged, ManifestStore
from registry.storage.metadata import (
    BLOB,
    CATALOG_PARTITION,
    MANIFEST,
    REFERRER,
    RENDITION_OF,
    TAG,
    MetadataStore,
    etag_of,
    repository_key,
    repository_name,
)

ENABLED, DISABLED, INHERIT = "enabled", "disabled", "inherit"
DEFAULT_DAYS = 7  # ACR's, when a policy is enabled without days
MAX_DAYS = 365
POLICY_PARTITION, POLICY_ROW = "registry", "retention"  # the registry's policy, in the catalog table
STATUS, DAYS = "retentionStatus", "retentionDays"  # a repository's override, on its `a:` row
# Passes over one repository: an index, then its children; a subject, then its referrers.
PASSES = 8
CONCURRENCY = 8
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")

log = logging.getLogger("berth.retention")
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class RetentionPolicy:
    status: str  # enabled | disabled
    days: int
    source: str  # repository | registry | setting | default

    @property
    def enabled(self) -> bool:
        return self.status == ENABLED

    def document(self) -> dict[str, Any]:
        """As `az acr config retention show` prints it, with where it comes from."""
        return {"type": "UntaggedManifests", "status": self.status, "days": self.days, "source": self.source}


def check_days(days: int) -> int:
    if not 0 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 0 to {MAX_DAYS}, not {days}")
    return days


class RetentionPolicies:
    def __init__(self, metadata: MetadataStore, setting_days: int | None):
        self._metadata = metadata
        self._setting_days = setting_days

    async def registry(self) -> RetentionPolicy:
        row = await self._metadata.read_fast(self._metadata.catalog, POLICY_PARTITION, POLICY_ROW)
        if row is not None:
            return RetentionPolicy(row["status"], int(row["days"]), "registry")
        if self._setting_days is not None:
            return RetentionPolicy(ENABLED, self._setting_days, "setting")
        return RetentionPolicy(DISABLED, DEFAULT_DAYS, "default")

    async def set_registry(self, status: str, days: int | None) -> RetentionPolicy:
        """ENABLED or DISABLED stores the registry's policy; INHERIT forgets it (the setting rules)."""
        if status == INHERIT:
            await self._metadata.delete(self._metadata.catalog, POLICY_PARTITION, POLICY_ROW)
            return await self.registry()
        current = await self.registry()
        days = check_days(current.days if days is None else days)
        await self._metadata.catalog.upsert_entity({"PartitionKey": POLICY_PARTITION, "RowKey": POLICY_ROW,
                                                    "status": status, "days": days}, mode=UpdateMode.REPLACE)
        return await self.registry()

    async def repository(self, name: str, registry: RetentionPolicy | None = None) -> RetentionPolicy:
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(name), ATTRIBUTES)
        return effective_policy(row, registry or await self.registry())

    async def set_repository(self, name: str, status: str, days: int | None) -> RetentionPolicy:
        """Override the registry's policy for one repository; INHERIT drops the override. Only
        these properties are written (MERGE): the repository's locks stay as they are."""
        registry = await self.registry()
        if status == INHERIT:
            changes: dict[str, Any] = {STATUS: "", DAYS: 0}
        else:
            current = await self.repository(name, registry)
            changes = {STATUS: status, DAYS: check_days(current.days if days is None else days)}
        await self._metadata.repos.upsert_entity({"PartitionKey": repository_key(name), "RowKey": ATTRIBUTES,
                                                  **changes}, mode=UpdateMode.MERGE)
        return await self.repository(name, registry)


def effective_policy(attributes: dict[str, Any] | None, registry: RetentionPolicy) -> RetentionPolicy:
    if attributes is not None and attributes.get(STATUS) in (ENABLED, DISABLED):
        return RetentionPolicy(attributes[STATUS], int(attributes.get(DAYS) or 0), "repository")
    return registry


@dataclass
class RetentionReport:
    repositories: int = 0
    deleted: list[str] = field(default_factory=list)  # repository@digest
    referrers_deleted: int = 0  # of those: referrers whose subject was deleted
    links_removed: int = 0
    locked_repositories: int = 0
    changed: int = 0  # judged, then written by someone else: kept
    failed: list[str] = field(default_factory=list)  # repositories a storage error cut short
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{self.repositories} repositories; {verb} {len(self.deleted)} manifests "
                f"({self.referrers_deleted} referrers of deleted subjects) and {self.links_removed} unreferenced "
                f"blob links; {self.locked_repositories} locked repositories skipped, {self.changed} manifests "
                f"kept because they changed while judged"
                + (f"; FAILED in {len(self.failed)}: {', '.join(self.failed)}" if self.failed else ""))


@dataclass
class _Manifest:
    digest: str
    row: dict[str, Any]
    written: datetime
    tagged: bool = False
    orphaned: bool = False  # a referrer whose subject was deleted
    children: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)

    @property
    def locked(self) -> bool:
        locks = locks_of(self.row)
        return not locks.writeEnabled or not locks.deleteEnabled


def _written(row: dict[str, Any]) -> datetime:
    """When the row was last written, by storage's clock (no instance's)."""
    stamp = row.metadata["timestamp"]
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class _Repository:
    """One scan of a repository's partition: its manifests, what references what, its links."""

    def __init__(self, rows: Iterable[dict[str, Any]]):
        self.attributes: dict[str, Any] | None = None
        self.manifests: dict[str, _Manifest] = {}
        self.links: list[dict[str, Any]] = []
        tagged: set[str] = set()
        referrers: set[str] = set()  # "<subject>:<digest>"
        for row in rows:
            key = row["RowKey"]
            if key == ATTRIBUTES:
                self.attributes = row
            elif key.startswith(MANIFEST):
                self.manifests[key[len(MANIFEST):]] = _Manifest(key[len(MANIFEST):], row, _written(row))
            elif key.startswith(TAG):
                tagged.add(row["digest"])
            elif key.startswith(REFERRER):
                referrers.add(key[len(REFERRER):])
            elif key.startswith(BLOB):
                self.links.append(row)
        for digest, manifest in self.manifests.items():
            manifest.tagged = digest in tagged
            subject = manifest.row.get("subject")
            manifest.orphaned = bool(subject) and f"{subject}:{digest}" not in referrers

    def doomed(self, policy: RetentionPolicy, now: datetime, margin: timedelta,
               deleted_subjects: frozenset[str] = frozenset()) -> set[str]:
        """What may go: untagged manifests older than the policy's days and referrers of deleted
        subjects (and of `deleted_subjects`: a dry run's view of later passes), less what a
        manifest that stays still reaches."""
        settled = now - margin
        expired = now - timedelta(days=policy.days) - margin

        def orphaned(manifest: _Manifest) -> bool:
            return manifest.orphaned or manifest.row.get("subject") in deleted_subjects

        doomed = set()
        for digest, manifest in self.manifests.items():
            if manifest.tagged or manifest.locked or manifest.row.get(RENDITION_OF) or manifest.written > settled:
                continue
            if orphaned(manifest) or (policy.enabled and manifest.written < expired):
                doomed.add(digest)
        while True:  # what stays protects what it reaches, which then stays too
            staying = self.manifests.keys() - doomed
            reached = {child for digest in staying for child in self.manifests[digest].children}
            # A Docker rendition reached (a user pushed a rendition index) needs its source: a
            # rendition goes with its source and is served only while that is readable.
            reached |= {source for digest in reached if digest in self.manifests
                        and (source := self.manifests[digest].row.get(RENDITION_OF))}
            reached |= {digest for digest in doomed if not orphaned(self.manifests[digest])
                        and self.manifests[digest].row.get("subject") in staying}
            if not reached & doomed:
                return doomed
            doomed -= reached

    def roots(self, doomed: set[str]) -> list[str]:
        """The doomed manifests no other doomed one names as child or subject: deleted first, so a
        failed delete (the manifest was tagged or locked meanwhile) never leaves an index without
        a child or a subject without its referrers; the others go in a later pass."""
        named = {child for digest in doomed for child in self.manifests[digest].children}
        named |= {digest for digest in doomed if self.manifests[digest].row.get("subject") in doomed}
        return sorted(doomed - named)

    def cascade(self, policy: RetentionPolicy, now: datetime, margin: timedelta) -> set[str]:
        """Everything the passes of a run would delete, if no delete failed (a dry run)."""
        doomed = self.doomed(policy, now, margin)
        while True:
            more = self.doomed(policy, now, margin, frozenset(doomed))
            if more <= doomed:
                return doomed
            doomed |= more


class Retention:
    def __init__(self, metadata: MetadataStore, manifests: ManifestStore, policies: RetentionPolicies,
                 delete_manifest: Callable[[str, Digest, str], Awaitable[None]],
                 forget_rendition: Callable[[str, Digest], Awaitable[None]],
                 margin_seconds: int, link_grace_seconds: int):
        self._metadata = metadata
        self._manifests = manifests
        self.policies = policies
        self._delete_manifest = delete_manifest
        self._forget_rendition = forget_rendition
        self._margin = timedelta(seconds=margin_seconds)
        self._link_grace = timedelta(seconds=link_grace_seconds)

    async def run(self, repositories: list[str] | None = None, dry_run: bool = False,
                  now: datetime | None = None, progress: Progress | None = None) -> RetentionReport:
        """Apply retention to the given repositories (default: every one in the catalog). `now`
        moves the clock (tests of the day arithmetic); the margin then counts from it too."""
        report = RetentionReport(dry_run=dry_run)
        registry = await self.policies.registry()
        if repositories is None:
            repositories = [repository_name(row["RowKey"]) async for row in
                            self._metadata.scan(self._metadata.catalog, CATALOG_PARTITION, "", select=["RowKey"])]
        for name in repositories:
            try:
                await self._repository(name, registry, dry_run, now, report)
            except Exception:  # storage unavailable, a body that cannot be read: the others still run
                log.exception("retention failed in repository %s; it is judged again next run", name)
                report.failed.append(name)
            report.repositories += 1
            if progress is not None:
                progress("repositories", report.repositories)
        return report

    async def _scan(self, name: str) -> _Repository:
        return _Repository([row async for row in self._metadata.scan(self._metadata.repos, repository_key(name), "")])

    async def _read_references(self, repository: _Repository, blobs_too: bool) -> None:
        """The children of every index; with `blobs_too`, the blobs of every manifest."""
        for manifest in repository.manifests.values():
            if manifest.row["mediaType"] in _INDEX_TYPES or (blobs_too and repository.links):
                parsed = parse_manifest(await self._manifests.body(manifest.row), manifest.row["mediaType"])
                manifest.children = {str(d.digest) for d in parsed.children}
                manifest.blobs = {str(d.digest) for d in parsed.blobs}

    async def _repository(self, name: str, registry: RetentionPolicy, dry_run: bool, now: datetime | None,
                          report: RetentionReport) -> None:
        for _ in range(PASSES):
            started = now or datetime.now(UTC)
            repository = await self._scan(name)
            locks = locks_of(repository.attributes)
            if not locks.writeEnabled or not locks.deleteEnabled:
                report.locked_repositories += 1
                return
            policy = effective_policy(repository.attributes, registry)
            try:
                await self._read_references(repository, policy.enabled)
            except RegistryError as error:  # a body that does not parse: judge nothing here
                log.error("retention skipped repository %s: %s", name, error.message)
                return
            doomed = repository.doomed(policy, started, self._margin)
            if dry_run:
                doomed = repository.cascade(policy, started, self._margin)
                report.deleted += [f"{name}@{digest}" for digest in sorted(doomed)]
                report.referrers_deleted += sum(repository.manifests[d].orphaned
                                                or repository.manifests[d].row.get("subject") in doomed for d in doomed)
                if policy.enabled:
                    report.links_removed += len(self._unreferenced(repository, doomed, policy, started))
                return
            await self._forget_orphaned_renditions(name, repository, started)
            roots = [repository.manifests[digest] for digest in repository.roots(doomed)]
            if not roots:
                if policy.enabled:
                    await self._unlink_unreferenced(repository, policy, started, report)
                return
            gate = asyncio.Semaphore(CONCURRENCY)
            outcomes = await asyncio.gather(*(self._delete(name, manifest, gate, report) for manifest in roots))
            if not any(outcomes):
                return  # each one changed or went meanwhile: the next run judges them again
        log.warning("retention: repository %s still had manifests to delete after %d passes", name, PASSES)

    async def _delete(self, name: str, manifest: _Manifest, gate: asyncio.Semaphore,
                      report: RetentionReport) -> bool:
        async with gate:
            try:
                await self._delete_manifest(name, parse_digest(manifest.digest), etag_of(manifest.row))
            except ManifestChanged:
                report.changed += 1
                return False
            except RegistryError as error:
                if error.error is MANIFEST_UNKNOWN:
                    return False
                if error.error is LOCKED:  # locked since the scan
                    report.changed += 1
                    return False
                raise
        log.info("retention deleted %s@%s%s", name, manifest.digest,
                 " (its subject was deleted)" if manifest.orphaned else "")
        report.deleted.append(f"{name}@{manifest.digest}")
        report.referrers_deleted += manifest.orphaned
        return True

    async def _forget_orphaned_renditions(self, name: str, repository: _Repository, now: datetime) -> None:
        """A Docker rendition whose source is gone (a delete cut short before its rendition went)."""
        for manifest in repository.manifests.values():
            source = manifest.row.get(RENDITION_OF)
            if source and source not in repository.manifests and manifest.written <= now - self._margin:
                await self._forget_rendition(name, parse_digest(source))

    def _unreferenced(self, repository: _Repository, doomed: set[str], policy: RetentionPolicy,
                      now: datetime) -> list[dict[str, Any]]:
        """Links no manifest that stays references, last written before the policy's days and
        the GC grace period (a push links its blobs before it sends its manifest)."""
        referenced = {blob for digest, manifest in repository.manifests.items() if digest not in doomed
                      for blob in manifest.blobs}
        cutoff = now - max(timedelta(days=policy.days), self._link_grace) - self._margin
        return [link for link in repository.links
                if link["RowKey"][len(BLOB):] not in referenced and _written(link) < cutoff]

    async def _unlink_unreferenced(self, repository: _Repository, policy: RetentionPolicy, now: datetime,
                                   report: RetentionReport) -> None:
        for link in self._unreferenced(repository, set(), policy, now):
            try:  # If-Match: a push that referenced it since wrote it
                await self._metadata.repos.delete_entity(link["PartitionKey"], link["RowKey"], etag=etag_of(link),
                                                         match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
            report.links_removed += 1
