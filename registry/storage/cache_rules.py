"""Cache rules (ACR's artifact cache): which repositories of this registry mirror which upstream
repositories. Rows of the catalog table, partition `cacherule`.

A rule maps a target (`library/nginx`, `library/*` for every repository under it, or `*` for
every one-part name, as Docker Hub's short names) to a source (`docker.io/library/nginx`,
`docker.io/library/*`); a `*` stands for the same path on both sides. A pull of a target
repository finds the most specific rule (an exact one, then the longest prefix, then `*`).
Rules are read on a miss only (content already here costs nothing), and kept per instance for
RULES_TTL seconds: a deleted rule may still fetch for that long.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError

from registry.oci.errors import NAME_UNKNOWN, RegistryError
from registry.oci.names import validate_name
from registry.storage.metadata import MetadataStore

PARTITION = "cacherule"
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]{1,48}[a-zA-Z0-9]")
RULES_TTL = 30.0
MISS_TTL = 1.0


@dataclass(frozen=True)
class CacheRule:
    name: str
    source: str  # [http://]registry/repository or [http://]registry/prefix/*
    target: str  # repository or prefix/*
    credential_set: str | None = None
    created: datetime | None = None

    def upstream_for(self, repository: str) -> str | None:
        """The upstream `registry/repository` for a target repository, if this rule covers it."""
        if self.target == "*":  # every one-part name: Docker Hub's short names (`nginx`)
            return self.source[:-1] + repository if "/" not in repository else None
        if not self.target.endswith("/*"):
            return self.source if repository == self.target else None
        prefix = self.target[:-1]
        if not repository.startswith(prefix) or len(repository) == len(prefix):
            return None
        return self.source[:-1] + repository[len(prefix):]

    def specificity(self) -> tuple[int, int]:
        """Exact rules first, then the longest prefix, then `*`."""
        if self.target == "*":
            return (-1, 0)
        return (0 if self.target.endswith("/*") else 1, len(self.target))

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "sourceRepository": self.source, "targetRepository": self.target,
                "credentialSetName": self.credential_set,
                "createdTime": self.created.astimezone(UTC).isoformat() if self.created else None}


def check_rule(source: str, target: str) -> None:
    """A source `registry/repository[/*]` and a target `repository[/*]` or `*` (every one-part
    name), wildcards on both or neither."""
    if source.endswith("/*") != (target.endswith("/*") or target == "*"):
        raise ValueError("use * in both the source and the target, or in neither")
    if target != "*":
        validate_name(target.removesuffix("/*"))
    registry, _, repository = source.removeprefix("http://").partition("/")  # http:// for a registry without TLS
    if not repository or not ("." in registry or ":" in registry or registry == "localhost"):
        raise ValueError(f"the source must name its registry: registry/repository, not {source!r}")
    validate_name(repository.removesuffix("/*"))


class CacheRules:
    def __init__(self, metadata: MetadataStore):
        self._metadata = metadata
        self._cached: tuple[float, float, list[CacheRule]] | None = None  # (until, read at, rules)

    async def create(self, name: str, source: str, target: str, credential_set: str | None) -> CacheRule:
        if not NAME.fullmatch(name):
            raise ValueError("a cache rule's name is 3-50 letters, digits and '-'")
        try:
            check_rule(source, target)
        except RegistryError as error:
            raise ValueError(error.message) from None
        entity = {"PartitionKey": PARTITION, "RowKey": name, "source": source, "target": target,
                  "credentialSet": credential_set or "", "created": datetime.now(UTC)}
        try:
            await self._metadata.catalog.create_entity(entity)
        except ResourceExistsError:
            raise ValueError(f"a cache rule named {name} exists; delete it first") from None
        self._cached = None
        return await self.get(name)

    async def get(self, name: str) -> CacheRule:
        row = await self._metadata.get(self._metadata.catalog, PARTITION, name)
        if row is None:
            raise RegistryError(NAME_UNKNOWN, f"there is no cache rule named {name}")
        return _from_row(row)

    async def list(self) -> list[CacheRule]:
        return [_from_row(row) async for row in self._metadata.scan(self._metadata.catalog, PARTITION, "")]

    async def delete(self, name: str) -> None:
        if not await self._metadata.delete(self._metadata.catalog, PARTITION, name):
            raise RegistryError(NAME_UNKNOWN, f"there is no cache rule named {name}")
        self._cached = None

    async def match(self, repository: str) -> tuple[CacheRule, str] | None:
        """The most specific rule covering `repository`, and the upstream repository it maps to.
        Rules are kept RULES_TTL seconds; a repository no kept rule covers looks again after
        MISS_TTL, so a new rule works within a second everywhere."""
        now = time.monotonic()
        if self._cached is None or self._cached[0] < now:
            self._cached = (now + RULES_TTL, now, await self.list())
        found = self._find(repository)
        if found is None and self._cached[1] + MISS_TTL < now:
            self._cached = (now + RULES_TTL, now, await self.list())
            found = self._find(repository)
        return found

    def _find(self, repository: str) -> tuple[CacheRule, str] | None:
        assert self._cached is not None
        found = [(rule, upstream) for rule in self._cached[2] if (upstream := rule.upstream_for(repository))]
        return max(found, key=lambda pair: pair[0].specificity()) if found else None


def _from_row(row: dict[str, Any]) -> CacheRule:
    created = row.get("created")
    return CacheRule(row["RowKey"], row["source"], row["target"], row.get("credentialSet") or None,
                     created if isinstance(created, datetime) else None)
