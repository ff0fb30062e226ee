"""Read-only SAS URLs: the account-key form runs against Azurite in tests/api; the user-delegation
form (Azure, managed identity) is checked here for what it grants."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from azure.storage.blob import UserDelegationKey

from registry.azurite import ACCOUNT, ACCOUNT_KEY
from registry.storage.content import read_only_sas


def delegation_key() -> UserDelegationKey:
    key = UserDelegationKey()
    key.signed_oid = "11111111-2222-3333-4444-555555555555"
    key.signed_tid = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    key.signed_start = "2026-11-25T00:00:00Z"
    key.signed_expiry = "2026-11-26T00:00:00Z"
    key.signed_service = "b"
    key.signed_version = "2025-01-05"
    key.value = base64.b64encode(b"k" * 32).decode()
    return key


def test_user_delegation_sas_reads_one_blob_only() -> None:
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    query = parse_qs(read_only_sas("berthdata", "berth", "data/abc", start, start + timedelta(minutes=10),
                                   delegation_key=delegation_key()))
    assert query["sp"] == ["r"]  # read, nothing else
    assert query["sr"] == ["b"]  # this blob, not the container
    assert query["skoid"] == ["11111111-2222-3333-4444-555555555555"]
    assert query["sktid"] == ["72f988bf-86f1-41af-91ab-2d7cd011db47"]
    assert query["se"] == ["2026-11-25T10:10:00Z"] and query["st"] == ["2026-11-25T10:00:00Z"]
    assert query["sig"][0]


def test_account_key_sas_reads_one_blob_only() -> None:
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    query = parse_qs(read_only_sas(ACCOUNT, "berth", "data/abc", start, start + timedelta(minutes=5),
                                   account_key=ACCOUNT_KEY))
    assert query["sp"] == ["r"] and query["sr"] == ["b"]
    assert "skoid" not in query
