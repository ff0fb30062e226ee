"""Repository-scoped tokens and per-repository role assignments, in `<prefix>auth`.

Rows: partition "token", key = token name (password hash, scope map, expiry, status, and a
generation that changes whenever the password does: refresh tokens name the generation they were
issued under); partition "role:<object id>", key = encoded repository pattern (roles);
partition "failures", key = a hash of a user name (failed password attempts in the current window).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from registry.storage.metadata import MetadataStore, repository_key, repository_name

TOKEN_PARTITION = "token"
FAILURE_PARTITION = "failures"
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


def _failure_key(name: str) -> str:
    # Any text may be tried as a user name; a hash is always a legal row key.
    return hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()


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

    async def set_password(self, token: ScopedToken, password_hash: str, new_generation: bool) -> bool:
        """Replace the token's password hash, If-Match the version read; a new generation ends
        every refresh token issued before. False if the token changed or went meanwhile."""
        entity = {"PartitionKey": TOKEN_PARTITION, "RowKey": token.name, "hash": password_hash}
        if new_generation:
            entity["generation"] = secrets.token_hex(8)
        try:
            await self.table.update_entity(entity, mode=UpdateMode.MERGE, etag=token.etag,
                                           match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def list_tokens(self) -> list[ScopedToken]:
        rows = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": TOKEN_PARTITION})
        return [_scoped_token(r) async for r in rows]

    # --- failed password attempts (one row per user name, shared by every instance) ---------

    async def failures(self, name: str, window_seconds: int) -> tuple[int, datetime | None]:
        """Failed attempts for `name` in the current window, and when that window started."""
        row = await MetadataStore.get(self.table, FAILURE_PARTITION, _failure_key(name))
        if row is None or row["since"] + timedelta(seconds=window_seconds) < datetime.now(UTC):
            return 0, None
        return int(row["count"]), row["since"]

    async def record_failure(self, name: str, window_seconds: int) -> int:
        """Count one more failed attempt for `name`; the count in the current window."""
        key = _failure_key(name)
        for _ in range(3):
            now = datetime.now(UTC)
            row = await MetadataStore.get(self.table, FAILURE_PARTITION, key)
            fresh = row is None or row["since"] + timedelta(seconds=window_seconds) < now
            entity = {"PartitionKey": FAILURE_PARTITION, "RowKey": key,
                      "count": 1 if fresh else int(row["count"]) + 1, "since": now if fresh else row["since"]}
            try:
                if row is None:
                    await self.table.create_entity(entity)
                else:
                    await self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=row.metadata["etag"],
                                                   match_condition=MatchConditions.IfNotModified)
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
                continue  # another instance counted at the same time: count again on top of it
            return int(entity["count"])
        return int(entity["count"])

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
