"""Fixtures: a real Azurite, real Berth servers over real HTTP, and a look into storage."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving

# Fixture modules shared across folders (auth servers, a private containerd).
pytest_plugins = ["tests.auth.support", "tests.clients.containerd"]

CONTAINER = "berth"
TABLE_PREFIX = "berth"


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as instance:
        yield instance


@dataclass
class Server:
    url: str
    host: str  # host:port, as clients name the registry
    process: subprocess.Popen[bytes]
    log: Path


def start_server(azurite: Azurite, tmp: Path, **settings: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "BERTH_BLOB_CONTAINER": CONTAINER,
        "BERTH_TABLE_PREFIX": TABLE_PREFIX,
        **settings,
    }
    log = tmp / f"berth-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "registry", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/v2/", process, "berth")
    except RuntimeError as error:
        stop_process(process)
        raise RuntimeError(f"{error}:\n{log.read_text()}") from None
    return Server(url, f"127.0.0.1:{port}", process, log)


def stop_server(server: Server) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session")
def server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Berth in its default mode: blob GETs redirect to a SAS URL on Azurite."""
    instance = start_server(azurite, tmp_path_factory.mktemp("redirect"), BERTH_BLOB_DELIVERY="redirect")
    yield instance
    stop_server(instance)


@pytest.fixture(scope="session")
def proxy_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Berth streaming blob bytes itself, over the same storage as `server`."""
    instance = start_server(azurite, tmp_path_factory.mktemp("proxy"), BERTH_BLOB_DELIVERY="proxy")
    yield instance
    stop_server(instance)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture
def proxy_client(proxy_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy_server.url, timeout=60) as http:
        yield http


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses."""
    return f"test/{uuid.uuid4().hex[:12]}"


class StorageView:
    """Reads what Berth left in Azurite, the way an operator would see it."""

    def __init__(self, connection_string: str):
        self.blobs = BlobServiceClient.from_connection_string(connection_string).get_container_client(CONTAINER)
        self.tables = TableServiceClient.from_connection_string(connection_string)

    def blob_names(self, prefix: str = "") -> set[str]:
        return {blob.name for blob in self.blobs.list_blobs(name_starts_with=prefix)}

    def rows(self, table: str, partition: str) -> dict[str, dict]:
        client = self.tables.get_table_client(f"{TABLE_PREFIX}{table}")
        entities = client.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
        return {entity["RowKey"]: entity for entity in entities}

    def repository_rows(self, repository: str) -> dict[str, dict]:
        from registry.storage.metadata import repository_key

        return self.rows("repos", repository_key(repository))


@pytest.fixture(scope="session")
def storage(azurite: Azurite) -> StorageView:
    return StorageView(azurite.connection_string)


def require_tool(name: str) -> str:
    """Path of a client binary; in CI a missing client is a failure, locally a skip."""
    from shutil import which

    path = which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path
