"""Locks: ACR's changeable attributes on a repository, a tag and a manifest.

Each is a flag that is true unless set false, kept where the check needs it without a read:
- a tag's and a manifest's flags are properties of their own rows (`t:`, `m:`), which every
  write of them reads and then writes conditionally, so a lock set meanwhile fails the write
  and is seen on the retry; a tag row also carries its manifest's `readEnabled` as
  `manifestReadEnabled`, so a pull by tag still needs one read;
- a repository's flags are the row `a:` of its partition (and `listEnabled` also its catalog
  row). Writes and deletes read it fresh; pulls use a copy at most REPOSITORY_TTL seconds old.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any

from azure.data.tables import UpdateMode

from registry.oci.errors import LOCKED, RegistryError
from registry.storage.metadata import MetadataStore, repository_key

ATTRIBUTES = "a:"  # the repository's own row
MANIFEST_READ_ENABLED = "manifestReadEnabled"  # on a tag row: a copy of its manifest's readEnabled
REPOSITORY_TTL = 5.0
_CACHED_REPOSITORIES = 10_000


@dataclass(frozen=True)
class Locks:
    deleteEnabled: bool = True  # noqa: N815 (ACR's names, as they are stored and sent)
    writeEnabled: bool = True  # noqa: N815
    readEnabled: bool = True  # noqa: N815
    listEnabled: bool = True  # noqa: N815

    def document(self) -> dict[str, bool]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def properties(self) -> dict[str, bool]:
        """The flags as row properties: only those set false (a missing one is true)."""
        return {name: False for name, value in self.document().items() if not value}

    def updated(self, changes: dict[str, Any]) -> Locks:
        return replace(self, **changes)


NAMES = tuple(field.name for field in fields(Locks))


def locks_of(row: dict[str, Any] | None) -> Locks:
    if row is None:
        return Locks()
    return Locks(**{name: row.get(name) is not False for name in NAMES})


def parse_changes(document: Any) -> dict[str, bool]:
    """The flags a PATCH body sets (ACR's *WriteableProperties): booleans, nothing else."""
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object of changeable attributes")
    unknown = sorted(set(document) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown attributes {', '.join(unknown)}; changeable: {', '.join(NAMES)}")
    for name, value in document.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
    return dict(document)


def refuse(what: str) -> RegistryError:
    return RegistryError(LOCKED, f"The operation is disallowed on this registry, repository or image. ({what})")


def check_write(locks: Locks, what: str) -> None:
    if not locks.writeEnabled:
        raise refuse(f"{what} is write-disabled")


def check_delete(locks: Locks, what: str) -> None:
    if not locks.writeEnabled or not locks.deleteEnabled:
        raise refuse(f"{what} is {'write' if not locks.writeEnabled else 'delete'}-disabled")


class RepositoryLocks:
    """A repository's flags: fresh for writes, briefly cached for pulls."""

    def __init__(self, metadata: MetadataStore):
        self._metadata = metadata
        self._cache: OrderedDict[str, tuple[float, Locks]] = OrderedDict()

    async def fresh(self, repository: str) -> Locks:
        row = await self._metadata.read_fast(self._metadata.repos, repository_key(repository), ATTRIBUTES)
        locks = locks_of(row)
        self._remember(repository, locks)
        return locks

    def peek(self, repository: str) -> Locks | None:
        """The flags a pull may use without a read (at most REPOSITORY_TTL old), if this
        instance has them."""
        entry = self._cache.get(repository)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    async def cached(self, repository: str) -> Locks:
        return self.peek(repository) or await self.fresh(repository)

    def _remember(self, repository: str, locks: Locks) -> None:
        self._cache[repository] = (time.monotonic() + REPOSITORY_TTL, locks)
        self._cache.move_to_end(repository)
        while len(self._cache) > _CACHED_REPOSITORIES:
            self._cache.popitem(last=False)

    async def update(self, repository: str, changes: dict[str, bool]) -> Locks:
        """Set flags on the repository's row (RegistryStore mirrors listEnabled in the catalog).
        Only the flags given are written (MERGE), so two PATCHes of different flags both hold."""
        entity = {"PartitionKey": repository_key(repository), "RowKey": ATTRIBUTES, **changes}
        await self._metadata.repos.upsert_entity(entity, mode=UpdateMode.MERGE)
        return await self.fresh(repository)

    async def forget(self, repository: str) -> None:
        """Drop a deleted repository's flags: a repository pushed later under its name has none."""
        await self._metadata.delete(self._metadata.repos, repository_key(repository), ATTRIBUTES)
        self._cache.pop(repository, None)
