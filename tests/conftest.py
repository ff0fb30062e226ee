"""Fixtures: a real Azurite, real Berth servers over real HTTP, and a look into storage."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from registry.azurite import PROJECT_ROOT, Azurite, free_port, stop_process, wait_until_serving
from tests.faults import FaultyStorage
from tests.front import Front, find_nginx

# Fixture modules shared across folders (auth servers, a private containerd).
pytest_plugins = ["tests.auth.support", "tests.clients.containerd"]

CONTAINER = "berth"
TABLE_PREFIX = "berth"


def _keeping_the_query(build_request):  # type: ignore[no-untyped-def]
    """httpx replaces a URL's query with `params`; every registry client (containerd, docker,
    containers/image, oras) adds `?digest=` to the upload Location's own query instead, which
    carries the upload's signed state. The tests' clients do as those clients do."""
    def build(self, method, url, *, params=None, **kwargs):  # type: ignore[no-untyped-def]
        if params is not None:
            url, params = httpx.URL(url).copy_merge_params(params), None
        return build_request(self, method, url, params=params, **kwargs)
    return build


httpx.Client.build_request = _keeping_the_query(httpx.Client.build_request)  # type: ignore[method-assign]
httpx.AsyncClient.build_request = _keeping_the_query(httpx.AsyncClient.build_request)  # type: ignore[method-assign]


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
    # A port picked as free can be taken before the server binds it (by another xdist worker's
    # server): the server then exits, and is started again on another port.
    for attempt in range(3):
        try:
            return _start_server(azurite, tmp, **settings)
        except ServerExited:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class ServerExited(RuntimeError):
    pass


def _start_server(azurite: Azurite, tmp: Path, **settings: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "BERTH_BLOB_CONTAINER": CONTAINER,
        "BERTH_TABLE_PREFIX": TABLE_PREFIX,
        # A repository delete waits out the push budget (65 s); these servers' pushes are fast.
        "BERTH_REPOSITORY_DELETE_SETTLE_SECONDS": "1",
        # The upstreams of the import and pull-through tests live on loopback.
        "BERTH_UPSTREAM_PRIVATE_HOSTS": "127.0.0.1",
        # No events worker polling the queue unless a test delivers events (tests/api/test_events.py).
        "BERTH_EVENTS_WORKER": "false",
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
        failure = ServerExited if process.returncode not in (None, -15) else RuntimeError
        raise failure(f"{error}:\n{log.read_text()}") from None
    return Server(url, f"127.0.0.1:{port}", process, log)


def stop_server(server: Server) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session")
def instances(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Three Berth instances on one Azurite (redirect delivery), each addressed directly, so a
    test decides which instance takes which request of a push."""
    tmp = tmp_path_factory.mktemp("instances")
    started: list[Server] = []
    try:
        for _ in range(3):
            started.append(start_server(azurite, tmp, BERTH_BLOB_DELIVERY="redirect"))
        yield started
    finally:  # also when one fails to start: the others must not outlive the run
        for instance in started:
            stop_server(instance)


@pytest.fixture(scope="session")
def front(instances: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """nginx on loopback, balancing each request round-robin over the three `instances`."""
    nginx = require_tool("nginx", package="nginx-light")
    with Front(nginx, [instance.host for instance in instances], tmp_path_factory.mktemp("front")) as started:
        yield started


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, azurite: Azurite,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Berth in its default mode (blob GETs redirect to a SAS URL on Azurite), as on Azure: three
    instances behind a round-robin front, so one push's requests land on different instances.
    BERTH_TEST_INSTANCES=1: one instance, addressed directly (for debugging)."""
    if os.environ.get("BERTH_TEST_INSTANCES") == "1" or not _front_possible():
        instance = start_server(azurite, tmp_path_factory.mktemp("redirect"), BERTH_BLOB_DELIVERY="redirect")
        yield instance
        stop_server(instance)
        return
    balancer: Front = request.getfixturevalue("front")
    assert balancer.process is not None
    # `process` and `log` are nginx's: its access log names the instance that served each request.
    yield Server(balancer.url, balancer.host, balancer.process, balancer.access_log)


def _front_possible() -> bool:
    """Without nginx a local run falls back to one instance (and says so); CI requires it."""
    if find_nginx() is not None or os.environ.get("CI"):
        return True
    warnings.warn("nginx is not installed: `server` is one Berth instance, not three behind a front",
                  stacklevel=2)
    return False


@pytest.fixture(scope="session")
def proxy_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Berth streaming blob bytes itself, over the same storage as `server`."""
    instance = start_server(azurite, tmp_path_factory.mktemp("proxy"), BERTH_BLOB_DELIVERY="proxy")
    yield instance
    stop_server(instance)


@pytest.fixture(scope="module")
def faulty_storage(azurite: Azurite) -> Iterator[FaultyStorage]:
    """The session's Azurite behind fault proxies (blob and table) a test can stall, cut or slow."""
    with FaultyStorage(azurite) as proxies:
        yield proxies


@pytest.fixture(scope="module")
def faulty_server(faulty_storage: FaultyStorage, azurite: Azurite,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One Berth instance whose storage traffic goes through `faulty_storage`, with a short
    per-call storage timeout, so trouble is answered within seconds."""
    instance = start_server(azurite, tmp_path_factory.mktemp("faulty"),
                            BERTH_STORAGE_CONNECTION_STRING=faulty_storage.connection_string,
                            BERTH_STORAGE_TIMEOUT_SECONDS="2")
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


def require_tool(name: str, package: str | None = None) -> str:
    """Path of a client binary; in CI a missing client is a failure, locally a skip."""
    from shutil import which

    # Debian puts some (nginx) in /usr/sbin, which is not on a non-root user's PATH.
    path = which(name) or which(name, path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed (apt-get install {package or name})")
    return path
