"""The lean table requests against a real Azurite: rows they write read back exactly as rows the
SDK writes, and their failures are the errors the rest of the code handles."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import EdmType, EntityProperty, TableServiceClient, UpdateMode

from registry.azurite import Azurite
from registry.settings import load_settings
from registry.storage.clients import create_clients
from registry.storage.errors import storage_failure


def _entity(partition: str, row: str) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": row, "size": EntityProperty(2**40 + 7, EdmType.INT64),
            "location": "data/x'y z", "created": datetime(2026, 11, 26, 4, 50, 1, 123456, tzinfo=UTC),
            "flag": True, "count": 12}


def _run(azurite: Azurite, body: Any) -> Any:
    async def main() -> Any:
        clients = create_clients(load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string}))
        try:
            return await body(clients.table_requests)
        finally:
            await clients.close()
    return asyncio.run(main())


def test_an_inserted_row_reads_back_as_the_sdks_own(azurite: Azurite) -> None:
    table_name = f"lean{uuid.uuid4().hex[:12]}"
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = service.create_table(table_name)
    table.create_entity(_entity("p", "by-sdk"))
    etag = _run(azurite, lambda requests: requests.insert(table_name, _entity("p", "lean")))

    by_sdk, lean = table.get_entity("p", "by-sdk"), table.get_entity("p", "lean")
    assert {k: v for k, v in lean.items() if k != "RowKey"} == {k: v for k, v in by_sdk.items() if k != "RowKey"}
    assert lean["size"] == EntityProperty(2**40 + 7, EdmType.INT64) and lean["created"] == by_sdk["created"]
    assert lean.metadata["etag"] == etag  # the answer's etag is the row's version: If-Match works
    table.update_entity({"PartitionKey": "p", "RowKey": "lean", "flag": False}, mode=UpdateMode.MERGE,
                        etag=etag, match_condition=MatchConditions.IfNotModified)
    fast = _run(azurite, lambda requests: requests.get(table_name, "p", "lean"))
    assert fast["size"] == 2**40 + 7 and fast["location"] == "data/x'y z" and fast["flag"] is False


def test_an_existing_row_and_a_missing_table_are_the_errors_callers_handle(azurite: Azurite) -> None:
    table_name = f"lean{uuid.uuid4().hex[:12]}"
    TableServiceClient.from_connection_string(azurite.connection_string).create_table(table_name)
    _run(azurite, lambda requests: requests.insert(table_name, _entity("p", "r")))
    with pytest.raises(ResourceExistsError):
        _run(azurite, lambda requests: requests.insert(table_name, _entity("p", "r")))
    with pytest.raises(Exception) as missing:
        _run(azurite, lambda requests: requests.insert(f"gone{uuid.uuid4().hex[:8]}", _entity("p", "r")))
    failure = storage_failure(missing.value)  # a table not provisioned: 503, not a 500
    assert failure is not None and failure.status == 503, repr(missing.value)


def test_a_read_from_a_missing_table_is_not_an_absent_row(azurite: Azurite) -> None:
    present = _present(azurite)
    assert _run(azurite, lambda requests: requests.get(present, "p", "r")) is None
    with pytest.raises(Exception) as missing:
        _run(azurite, lambda requests: requests.get(f"gone{uuid.uuid4().hex[:8]}", "p", "r"))
    failure = storage_failure(missing.value)
    assert failure is not None and failure.status == 503, repr(missing.value)


def _present(azurite: Azurite) -> str:
    name = f"lean{uuid.uuid4().hex[:12]}"
    TableServiceClient.from_connection_string(azurite.connection_string).create_table(name)
    return name
