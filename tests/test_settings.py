"""Settings come from BERTH_* variables, with clear errors for bad values."""

from __future__ import annotations

import pytest

from registry.settings import SettingsError, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.blob_delivery == "redirect"
    assert settings.max_manifest_bytes == 4 * 1024 * 1024
    assert not settings.storage_configured
    assert settings.referrers_page_size == 100


def test_account_name_gives_endpoints() -> None:
    settings = load_settings({"BERTH_STORAGE_ACCOUNT": "berthdata"})
    assert settings.blob_endpoint == "https://berthdata.blob.core.windows.net"
    assert settings.table_endpoint == "https://berthdata.table.core.windows.net"
    assert settings.storage_configured


@pytest.mark.parametrize("env", [
    {"BERTH_BLOB_DELIVERY": "ftp"},
    {"BERTH_BLOCK_SIZE": "12abc"},
    {"BERTH_BLOCK_SIZE": "1"},
    {"BERTH_TABLE_PREFIX": "has-dash"},
    {"BERTH_REFERRERS_PAGE_SIZE": "0"},
    {"BERTH_REFERRERS_PAGE_SIZE": "1001"},
])
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(env)
