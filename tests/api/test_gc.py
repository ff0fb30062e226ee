"""Garbage collection: unreferenced bytes go, referenced bytes never do, even under fire.

These tests use their own container and tables (the collector, run with no grace period,
judges everything in them) and run the collector as an operator does: `python -m registry gc`,
or a loop of collections in a process of its own, while two instances serve pushes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from registry.azurite import PROJECT_ROOT, Azurite
from registry.storage.metadata import repository_key
from tests.conftest import Server, start_server, stop_server
from tests.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes, push_blob, sha256

PREFIX = "berthgc"
SETTINGS = {"BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX}


class GcStorage:
    def __init__(self, connection_string: str):
        self.connection_string = connection_string
        self.container = BlobServiceClient.from_connection_string(connection_string).get_container_client(PREFIX)
        self.tables = TableServiceClient.from_connection_string(connection_string)

    def blob_names(self) -> set[str]:
        return {blob.name for blob in self.container.list_blobs(name_starts_with="data/")}

    def link(self, repository: str, digest: str) -> dict | None:
        table = self.tables.get_table_client(f"{PREFIX}repos")
        rows = list(table.query_entities("PartitionKey eq @pk and RowKey eq @rk",
                                         parameters={"pk": repository_key(repository), "rk": f"b:{digest}"}))
        return rows[0] if rows else None

    def index_row(self, digest: str) -> dict | None:
        table = self.tables.get_table_client(f"{PREFIX}digests")
        rows = list(table.query_entities("PartitionKey eq @pk", parameters={"pk": digest}))
        return rows[0] if rows else None

    def blob_state(self, location: str) -> str | None:
        blob = self.container.get_blob_client(location)
        if not blob.exists():
            return None
        return blob.get_blob_properties().metadata.get("berth")

    def set_state(self, location: str, state: str) -> None:
        blob = self.container.get_blob_client(location)
        metadata = blob.get_blob_properties().metadata
        blob.set_blob_metadata({**metadata, "berth": state})


@pytest.fixture(scope="module")
def gc_servers(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    tmp = tmp_path_factory.mktemp("gc")
    started: list[Server] = []
    try:
        for _ in range(2):
            started.append(start_server(azurite, tmp, BERTH_BLOB_DELIVERY="redirect", **SETTINGS))
        yield started
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture(scope="module")
def gc_storage(azurite: Azurite, gc_servers: list[Server]) -> GcStorage:
    return GcStorage(azurite.connection_string)


@pytest.fixture
def http(gc_servers: list[Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gc_servers[0].url, timeout=60) as client:
        yield client


def gc(azurite: Azurite, *args: str) -> str:
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, **SETTINGS}
    result = subprocess.run([sys.executable, "-m", "registry", "gc", *args], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def push_image(http: httpx.Client, repo: str, tag: str, layers: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Push config + layers (blobs may exist already) and the manifest; the manifest response."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": os.urandom(6).hex()}).encode()
    for blob in [config, *layers]:
        if http.head(f"/v2/{repo}/blobs/{sha256(blob)}").status_code != 200:
            push_blob(http, repo, blob)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(OCI_LAYER, layer) for layer in layers]}).encode()
    response = http.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return body, [config, *layers]


def pulls_exactly(http: httpx.Client, repo: str, tag: str, body: bytes, blobs: list[bytes]) -> None:
    response = http.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200 and response.content == body, (repo, tag, response.text)
    for blob in blobs:
        got = http.get(f"/v2/{repo}/blobs/{sha256(blob)}", follow_redirects=True)
        assert got.status_code == 200 and got.content == blob, (repo, tag, sha256(blob), got.status_code)


def test_unreferenced_bytes_go_and_referenced_bytes_stay(azurite: Azurite, http: httpx.Client,
                                                         gc_storage: GcStorage) -> None:
    repo, other = f"gc/{os.urandom(4).hex()}", f"gc/{os.urandom(4).hex()}"
    garbage = os.urandom(5000)
    garbage_digest = push_blob(http, repo, garbage)
    garbage_at = gc_storage.link(repo, garbage_digest)["location"]
    shared = os.urandom(3000)
    body, blobs = push_image(http, repo, "v1", [shared])
    push_blob(http, other, shared)  # linked twice; one link goes below, the other keeps it
    shared_at = gc_storage.link(other, sha256(shared))["location"]
    assert http.delete(f"/v2/{repo}/blobs/{garbage_digest}").status_code == 202
    assert http.delete(f"/v2/{other}/blobs/{sha256(shared)}").status_code == 202

    kept = gc(azurite)  # the default grace period (a day) protects everything this young
    assert "deleted 0 blobs" in kept and garbage_at in gc_storage.blob_names()
    dry = gc(azurite, "--dry-run", "--grace-period", "0")
    assert f"would delete {garbage_at}" in dry and garbage_at in gc_storage.blob_names()

    gc(azurite, "--grace-period", "0", "--settle", "0")
    names = gc_storage.blob_names()
    assert garbage_at not in names and gc_storage.index_row(garbage_digest) is None
    assert shared_at in names and gc_storage.blob_state(shared_at) == "sealed"
    pulls_exactly(http, repo, "v1", body, blobs)
    # The content can be pushed again, and is stored anew.
    assert push_blob(http, repo, garbage) == garbage_digest
    assert http.get(f"/v2/{repo}/blobs/{garbage_digest}", follow_redirects=True).content == garbage


def test_a_manifest_push_restores_condemned_bytes_and_refuses_deleted_ones(
        azurite: Azurite, http: httpx.Client, gc_storage: GcStorage) -> None:
    repo = f"gc/{os.urandom(4).hex()}"
    layer = os.urandom(2000)
    digest = push_blob(http, repo, layer)
    location = gc_storage.link(repo, digest)["location"]
    # A collection condemned the bytes while this push linked them (the race the re-scan and
    # the push's check close): the manifest push restores them, and the collector keeps them.
    gc_storage.set_state(location, "condemned")
    body, blobs = push_image(http, repo, "v1", [layer])
    assert gc_storage.blob_state(location) == "sealed"
    gc(azurite, "--grace-period", "0", "--settle", "0")
    pulls_exactly(http, repo, "v1", body, blobs)

    # Bytes already deleted under a link: the push is refused, and the link goes with them so
    # the client's retry uploads the blob again.
    lost = os.urandom(2000)
    lost_digest = push_blob(http, repo, lost)
    gc_storage.container.delete_blob(gc_storage.link(repo, lost_digest)["location"])
    config = json.dumps({"os": "linux"}).encode()
    push_blob(http, repo, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER, lost)]}).encode()
    refused = http.put(f"/v2/{repo}/manifests/v2", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert refused.status_code == 400 and error_codes(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    assert http.head(f"/v2/{repo}/blobs/{lost_digest}").status_code == 404
    push_blob(http, repo, lost)
    assert http.put(f"/v2/{repo}/manifests/v2", content=manifest,
                    headers={"Content-Type": OCI_MANIFEST}).status_code == 201
    assert http.get(f"/v2/{repo}/blobs/{lost_digest}", follow_redirects=True).content == lost


def test_a_condemned_upload_is_finished_not_open(http: httpx.Client, gc_storage: GcStorage) -> None:
    repo = f"gc/{os.urandom(4).hex()}"
    location = http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    data = os.urandom(100)
    assert http.put(location, params={"digest": sha256(data)}, content=data).status_code == 201
    gc_storage.set_state(gc_storage.link(repo, sha256(data))["location"], "condemned")
    assert http.patch(location, content=b"more").status_code == 404
    assert http.get(location).status_code == 404


LOOP = """
import asyncio, sys, pathlib
from datetime import timedelta
from registry.app import BerthApplication
from registry.settings import load_settings

async def main():
    berth = BerthApplication(load_settings())
    store = (await berth.context()).store
    stop, runs = pathlib.Path(sys.argv[1]), 0
    while not stop.exists():
        await store.collector.collect(timedelta(0), 0)
        runs += 1
    await berth.close()
    print(runs)

asyncio.run(main())
"""


def test_collection_under_fire_never_loses_an_acknowledged_image(
        azurite: Azurite, gc_servers: list[Server], gc_storage: GcStorage, tmp_path: Path) -> None:
    """Collections run back to back, with no grace period, in a process of their own, while two
    instances take pushes that share layers across repositories, mounts and deletes."""
    rng = random.Random(7)
    clients = [httpx.Client(base_url=server.url, timeout=60) for server in gc_servers]
    base = [os.urandom(4000) for _ in range(3)]
    # Garbage from before: bytes no repository links any more.
    doomed = []
    for _ in range(5):
        repo = f"gc/old{os.urandom(3).hex()}"
        digest = push_blob(clients[0], repo, os.urandom(1500))
        doomed.append(gc_storage.link(repo, digest)["location"])
        assert clients[0].delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    stop = tmp_path / "stop"
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, **SETTINGS}
    collector = subprocess.Popen([sys.executable, "-c", LOOP, str(stop)], cwd=PROJECT_ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acknowledged: list[tuple[str, str, bytes, list[bytes]]] = []
    refused = 0
    try:
        for round_ in range(20):
            repos = [f"gc/r{round_}-{os.urandom(3).hex()}" for _ in range(2)]

            def push(index: int, repos: list[str]) -> None:
                nonlocal refused
                http = clients[index % 2]
                repo = repos[index % 2]
                layers = [rng.choice(base), os.urandom(1000 + index)]
                for _attempt in range(5):
                    try:
                        body, blobs = push_image(http, repo, f"t{index}", layers)
                    except AssertionError as error:  # refused: bytes collected under its link
                        assert "MANIFEST_BLOB_UNKNOWN" in str(error), error
                        refused += 1
                        continue
                    acknowledged.append((repo, f"t{index}", body, blobs))
                    return
                raise AssertionError(f"push {repo}:t{index} refused five times")

            workers = [threading.Thread(target=push, args=(i, repos)) for i in range(4)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            # Deletes: a manifest of this round, and a blob link of the other repository.
            gone = next(entry for entry in acknowledged if entry[0] == repos[0])
            digest = sha256(gone[2])
            assert clients[1].delete(f"/v2/{gone[0]}/manifests/{digest}").status_code == 202
            acknowledged.remove(gone)
            extra = push_blob(clients[round_ % 2], repos[1], os.urandom(700))
            assert clients[0].delete(f"/v2/{repos[1]}/blobs/{extra}").status_code == 202
    finally:
        stop.touch()
        out, err = collector.communicate(timeout=120)
    assert collector.returncode == 0, err
    runs = int(out.strip())
    assert runs >= 10, f"only {runs} collections ran during the pushes"
    gc(azurite, "--grace-period", "0", "--settle", "0")
    for repo, tag, body, blobs in acknowledged:
        pulls_exactly(clients[round_ % 2], repo, tag, body, blobs)
    names = gc_storage.blob_names()
    assert not set(doomed) & names, "bytes unreferenced at the start are still stored"
    print(f"{runs} collections, {len(acknowledged)} images intact, {refused} pushes refused and retried")
    for client in clients:
        client.close()


def test_bad_arguments_are_refused(azurite: Azurite) -> None:
    env = {**os.environ, "BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string, **SETTINGS}
    result = subprocess.run([sys.executable, "-m", "registry", "gc", "--grace-period", "-5"], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "whole number of seconds" in result.stderr
