"""Repository-scoped tokens and per-repository role assignments, in `<prefix>auth`.

Rows: partition "token", key = token name (password hash, scope map, expiry, status, and a
generation that changes whenever the password does: refresh tokens name the generation they were
issued under); partition "role:<object id>", key = encoded repository pattern (roles);
partition "failures:<hash of a user name>", one row per failed password attempt (time-ordered keys).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from registry.storage.metadata import MetadataStore, repository_key, repository_name

TOKEN_PARTITION = "token"
FAILURE_PARTITION = "failures:"
ROLE_PARTITION = "role:"


@dataclass(frozen=True)
class ScopedToken:
    name: str
    password_hash: str
    scope_map: dict[str, list[str]]
    expires: datetime | None
    enabled: bool
    generation: str = ""  # "" for tokens made before generations existed
    etag: str = ""

    def usable(self) -> bool:
        return self.enabled and (self.expires is None or self.expires > datetime.now(UTC))


def _scoped_token(row: dict) -> ScopedToken:
    return ScopedToken(row["RowKey"], row["hash"], json.loads(row["scopes"]), row.get("expires"),
                       bool(row["enabled"]), row.get("generation", ""), row.metadata["etag"])


def _failure_partition(name: str) -> str:
    # Any text may be tried as a user name; a hash is always a legal key, and one partition per
    # name keeps a flood of made-up names from heating a single partition.
    return FAILURE_PARTITION + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:32]


def _time_key(moment: datetime) -> str:
    return f"{int(moment.timestamp() * 1000):015d}"


def _key_time(key: str) -> datetime:
    return datetime.fromtimestamp(int(key[:15]) / 1000, UTC)


def _pattern_key(pattern: str) -> str:
    # '*' is not part of the name grammar, so it survives the name encoding unchanged.
    return repository_key(pattern)


class AccessStore:
    def __init__(self, service: TableServiceClient, prefix: str):
        self.table: TableClient = service.get_table_client(f"{prefix}auth")

    async def ensure_table(self) -> None:
        try:
            await self.table.create_table()
        except ResourceExistsError:
            pass

    async def get_token(self, name: str) -> ScopedToken | None:
        row = await MetadataStore.get(self.table, TOKEN_PARTITION, name)
        return None if row is None else _scoped_token(row)

    async def create_token(self, name: str, password_hash: str, scope_map: dict[str, list[str]],
                           expires: datetime | None) -> None:
        entity = {
            "PartitionKey": TOKEN_PARTITION,
            "RowKey": name,
            "hash": password_hash,
            "generation": secrets.token_hex(8),
            "scopes": json.dumps(scope_map),
            "enabled": True,
            "created": datetime.now(UTC),
        }
        if expires is not None:
            entity["expires"] = expires
        await self.table.create_entity(entity)

    async def set_password(self, token: ScopedToken, password_hash: str) -> str | None:
        """Replace the token's password hash and start a new generation (every refresh token
        issued before ends), If-Match the version read; the new generation, or None if the
        token changed or went meanwhile."""
        generation = secrets.token_hex(8)
        entity = {"PartitionKey": TOKEN_PARTITION, "RowKey": token.name, "hash": password_hash,
                  "generation": generation}
        try:
            await self.table.update_entity(entity, mode=UpdateMode.MERGE, etag=token.etag,
                                           match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return generation

    async def list_tokens(self) -> list[ScopedToken]:
        rows = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": TOKEN_PARTITION})
        return [_scoped_token(r) async for r in rows]

    # --- failed password attempts: one row per failure, in a partition per user name ---------
    # Rows are only ever inserted (no counter to contend for, no count lost) and counted with a
    # query bounded by the limit; the hourly purge removes rows older than the window.

    async def failures_since(self, name: str, since: datetime, limit: int) -> list[datetime]:
        """When `name` failed since `since` (at most `limit` of them, oldest first)."""
        query = "PartitionKey eq @pk and RowKey ge @low"
        params = {"pk": _failure_partition(name), "low": _time_key(since)}
        found: list[datetime] = []
        async for row in self.table.query_entities(query, parameters=params, select=["RowKey"],
                                                   results_per_page=limit):
            found.append(_key_time(row["RowKey"]))
            if len(found) >= limit:
                break
        return found

    async def record_failure(self, name: str) -> None:
        now = datetime.now(UTC)
        await self.table.create_entity({"PartitionKey": _failure_partition(name),
                                        "RowKey": f"{_time_key(now)}-{secrets.token_hex(4)}"})

    async def purge_failures(self, before: datetime) -> int:
        """Delete failure records older than `before`; returns how many."""
        query = "PartitionKey ge @low and PartitionKey lt @high and RowKey lt @before"
        params = {"low": FAILURE_PARTITION, "high": FAILURE_PARTITION[:-1] + chr(ord(FAILURE_PARTITION[-1]) + 1),
                  "before": _time_key(before)}
        purged = 0
        async for row in self.table.query_entities(query, parameters=params, select=["PartitionKey", "RowKey"]):
            await self.table.delete_entity(row["PartitionKey"], row["RowKey"])
            purged += 1
        return purged

    async def delete_token(self, name: str) -> bool:
        return await MetadataStore.delete(self.table, TOKEN_PARTITION, name)

    async def role_assignments(self, object_id: str) -> list[tuple[str, list[str]]]:
        rows = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": ROLE_PARTITION + object_id})
        return [(repository_name(r["RowKey"]), r["roles"].split(",")) async for r in rows]

    async def assign_role(self, object_id: str, pattern: str, roles: list[str]) -> None:
        await self.table.upsert_entity(
            {"PartitionKey": ROLE_PARTITION + object_id, "RowKey": _pattern_key(pattern), "roles": ",".join(roles)}
        )

    async def remove_assignment(self, object_id: str, pattern: str) -> bool:
        return await MetadataStore.delete(self.table, ROLE_PARTITION + object_id, _pattern_key(pattern))
