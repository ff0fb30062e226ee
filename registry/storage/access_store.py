"""Repository-scoped tokens and per-repository role assignments, in `<prefix>auth`.

Rows: partition "token", key = token name (password hash, scope map, expiry, status);
partition "role:<object id>", key = encoded repository pattern (roles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError
from azure.data.tables.aio import TableClient, TableServiceClient

from registry.storage.metadata import MetadataStore, repository_key, repository_name

TOKEN_PARTITION = "token"
ROLE_PARTITION = "role:"


@dataclass(frozen=True)
class ScopedToken:
    name: str
    password_hash: str
    scope_map: dict[str, list[str]]
    expires: datetime | None
    enabled: bool

    def usable(self) -> bool:
        return self.enabled and (self.expires is None or self.expires > datetime.now(UTC))


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
        if row is None:
            return None
        return ScopedToken(name, row["hash"], json.loads(row["scopes"]), row.get("expires"), bool(row["enabled"]))

    async def create_token(self, name: str, password_hash: str, scope_map: dict[str, list[str]],
                           expires: datetime | None) -> None:
        entity = {
            "PartitionKey": TOKEN_PARTITION,
            "RowKey": name,
            "hash": password_hash,
            "scopes": json.dumps(scope_map),
            "enabled": True,
            "created": datetime.now(UTC),
        }
        if expires is not None:
            entity["expires"] = expires
        await self.table.create_entity(entity)

    async def list_tokens(self) -> list[ScopedToken]:
        rows = self.table.query_entities("PartitionKey eq @pk", parameters={"pk": TOKEN_PARTITION})
        return [
            ScopedToken(r["RowKey"], r["hash"], json.loads(r["scopes"]), r.get("expires"), bool(r["enabled"]))
            async for r in rows
        ]

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
