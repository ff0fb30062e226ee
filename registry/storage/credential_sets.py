"""Credential sets (ACR's): the login of an upstream registry, kept as references to where the
secret lives, never as the secret. Rows of the catalog table, partition `credentialset`.

A set names the registry it is for (`loginServer`): its credentials are sent there and nowhere
else, whoever asks for an import. Each use records its outcome (`lastSuccess`, `lastFailure`,
`failure`), so `credential-set list` shows which sets work.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import UpdateMode

from registry.oci.errors import NAME_UNKNOWN, RegistryError
from registry.storage.metadata import MetadataStore

log = logging.getLogger("berth.storage")

PARTITION = "credentialset"
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]{1,48}[a-zA-Z0-9]")
MAX_REASON = 300
# Where a secret may live: an environment variable, a file, or a Key Vault secret; or no secret at
# all: `identity:<audience>`, the app's managed identity (ops/secrets.py, `login`).
REFERENCE = re.compile(r"(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+|keyvault:https://[^/\s]+/secrets/[^\s]+"
                       r"|identity:[A-Za-z][A-Za-z0-9+.-]*://[^\s]+)")
IDENTITY = "identity:"
# The user name that says "the password is a token" (ACR's, and Berth's token service's).
TOKEN_USER = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class CredentialSet:
    name: str
    login_server: str
    username: str  # a reference, or the user name itself (not a secret)
    password: str  # always a reference
    created: datetime | None = None
    last_success: datetime | None = None
    last_failure: datetime | None = None
    failure: str | None = None

    def document(self) -> dict[str, Any]:
        """What `credential-set show` prints: references, never secrets."""
        def when(moment: datetime | None) -> str | None:
            return moment.astimezone(UTC).isoformat() if moment else None

        health = "unknown" if not (self.last_success or self.last_failure) else (
            "healthy" if (self.last_success or datetime.min.replace(tzinfo=UTC))
            >= (self.last_failure or datetime.min.replace(tzinfo=UTC)) else "unhealthy")
        return {"name": self.name, "loginServer": self.login_server, "username": self.username,
                "password": self.password, "createdTime": when(self.created), "health": health,
                "lastSuccess": when(self.last_success), "lastFailure": when(self.last_failure),
                "failure": self.failure}


def check_reference(value: str, what: str) -> str:
    if not REFERENCE.fullmatch(value):
        raise ValueError(f"{what} must be a reference: env:NAME, file:/path or "
                         "keyvault:https://<vault>.vault.azure.net/secrets/<name>")
    return value


def _time(row: dict[str, Any], key: str) -> datetime | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


class CredentialSets:
    def __init__(self, metadata: MetadataStore):
        self._metadata = metadata

    async def create(self, name: str, login_server: str, username: str, password: str) -> CredentialSet:
        if not NAME.fullmatch(name):
            raise ValueError("a credential set's name is 3-50 letters, digits and '-'")
        check_reference(password, "the password")
        if ":" in username:
            check_reference(username, "a username reference")
        entity = {"PartitionKey": PARTITION, "RowKey": name, "loginServer": login_server, "username": username,
                  "password": password, "created": datetime.now(UTC)}
        try:
            await self._metadata.catalog.create_entity(entity)
        except ResourceExistsError:
            raise ValueError(f"a credential set named {name} exists; delete it first") from None
        return await self.get(name)

    async def get(self, name: str) -> CredentialSet:
        row = await self._metadata.get(self._metadata.catalog, PARTITION, name)
        if row is None:
            raise RegistryError(NAME_UNKNOWN, f"there is no credential set named {name}")
        return _from_row(row)

    async def list(self) -> list[CredentialSet]:
        return [_from_row(row) async for row in self._metadata.scan(self._metadata.catalog, PARTITION, "")]

    async def delete(self, name: str) -> None:
        if not await self._metadata.delete(self._metadata.catalog, PARTITION, name):
            raise RegistryError(NAME_UNKNOWN, f"there is no credential set named {name}")

    async def record(self, name: str, failure: str | None) -> None:
        """The outcome of a use: success (None) or why it failed (no secret in it)."""
        now = datetime.now(UTC)
        changes: dict[str, Any] = {"lastSuccess": now} if failure is None else {
            "lastFailure": now, "failure": failure[:MAX_REASON]}
        try:
            await self._metadata.catalog.update_entity({"PartitionKey": PARTITION, "RowKey": name, **changes},
                                                       mode=UpdateMode.MERGE)
        except Exception as error:  # noqa: BLE001 (health is advisory: never fail an import over it)
            log.warning("the health of credential set %s was not recorded: %r", name, error)


def _from_row(row: dict[str, Any]) -> CredentialSet:
    return CredentialSet(row["RowKey"], row["loginServer"], row["username"], row["password"], _time(row, "created"),
                         _time(row, "lastSuccess"), _time(row, "lastFailure"), row.get("failure") or None)
