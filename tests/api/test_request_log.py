"""The request log and X-Request-Id: what an operator finds when a user reports a request."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from registry.azurite import Azurite
from tests.conftest import Server, start_server, stop_server
from tests.helpers import error_codes, push_image


def logged(server: Server) -> list[dict]:
    lines = []
    for line in server.log.read_text().splitlines():
        if " berth.request: " in line:
            lines.append(json.loads(line.split(" berth.request: ", 1)[1]))
    return lines


@pytest.fixture(scope="module")
def changes_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(azurite, tmp_path_factory.mktemp("request-log"), BERTH_REQUEST_LOG="changes")
    yield server
    stop_server(server)


def test_every_answer_has_a_request_id_and_writes_and_errors_are_logged_with_it(
        changes_server: Server, repo: str) -> None:
    with httpx.Client(base_url=changes_server.url, timeout=30) as client:
        digest, _ = push_image(client, repo, "v1")
        pulled = client.get(f"/v2/{repo}/manifests/v1")
        probe = client.head(f"/v2/{repo}/blobs/sha256:{'0' * 64}")
        missing = client.get(f"/v2/{repo}/manifests/nope")
        bad = client.put(f"/v2/{repo}/manifests/v2", content=b"{not json",
                         headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    ids = [response.headers["X-Request-Id"] for response in (pulled, probe, missing, bad)]
    assert len(set(ids)) == 4 and all(len(i) == 32 for i in ids)
    assert error_codes(missing) == ["MANIFEST_UNKNOWN"] and bad.status_code == 400
    lines = {line["requestId"]: line for line in logged(changes_server)}
    # A pull that worked and a HEAD probe of a blob not there yet are not logged at `changes`.
    assert ids[0] not in lines and ids[1] not in lines
    assert lines[ids[2]] | {"ms": 0} == {
        "requestId": ids[2], "method": "GET", "path": f"/v2/{repo}/manifests/nope", "status": 404,
        "ms": 0, "client": "127.0.0.1", "subject": "anonymous", "userAgent": lines[ids[2]]["userAgent"],
        "error": "MANIFEST_UNKNOWN", "bytes": lines[ids[2]]["bytes"]}
    assert lines[ids[3]]["error"] == "MANIFEST_INVALID" and lines[ids[3]]["method"] == "PUT"
    # Every write of the push is there: its blobs' uploads and the manifest, with the digest answered.
    writes = [line for line in lines.values() if line["path"].startswith(f"/v2/{repo}/")
              and line["method"] in ("POST", "PUT", "PATCH")]
    assert any(line["path"] == f"/v2/{repo}/manifests/v1" and line["status"] == 201 for line in writes)
    assert sum(line["method"] == "POST" for line in writes) >= 2  # the config and a layer
    assert digest.startswith("sha256:")


def test_all_logs_pulls_and_off_logs_nothing(azurite: Azurite, tmp_path: Path, repo: str) -> None:
    every = start_server(azurite, tmp_path, BERTH_REQUEST_LOG="all")
    silent = start_server(azurite, tmp_path, BERTH_REQUEST_LOG="off")
    try:
        with httpx.Client(timeout=30) as client:
            pulled = client.get(f"{every.url}/v2/{repo}/tags/list")
            quiet = client.get(f"{silent.url}/v2/{repo}/tags/list")
        assert [line["status"] for line in logged(every)
                if line["requestId"] == pulled.headers["X-Request-Id"]] == [pulled.status_code]
        assert quiet.headers["X-Request-Id"] and logged(silent) == []
    finally:
        stop_server(every)
        stop_server(silent)


def test_an_instance_told_storage_is_provisioned_creates_nothing(azurite: Azurite, tmp_path: Path) -> None:
    """BERTH_CREATE_STORAGE=false (what infra/ sets): an identity without the right to create
    containers or tables starts without trying; a missing table is an error, not made on the fly."""
    prefix = f"bprov{uuid.uuid4().hex[:8]}"
    server = start_server(azurite, tmp_path, BERTH_CREATE_STORAGE="false", BERTH_TABLE_PREFIX=prefix,
                          BERTH_BLOB_CONTAINER=prefix)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answer = client.get("/v2/some/repo/manifests/latest")
        assert answer.status_code == 503, answer.text  # storage not usable: retry later, not a 500
        assert "not provisioned" in answer.text and "TableNotFound" not in answer.text  # details: the log
        assert "TableNotFound" in server.log.read_text()
        tables = {t.name for t in TableServiceClient.from_connection_string(azurite.connection_string).list_tables()}
        assert not {name for name in tables if name.startswith(prefix)}
        container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(prefix)
        assert not container.exists()
    finally:
        stop_server(server)
