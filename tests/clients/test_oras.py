"""oras-py: artifacts, chunked uploads and the referrers API."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest

from tests.conftest import Server


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # oras-py refuses files outside the working directory
    return tmp_path


def oras_client(server: Server) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=server.host, insecure=True)


def test_push_and_pull_artifact(server: Server, repo: str, workdir: Path) -> None:
    (workdir / "notes.txt").write_text("hello from berth\n")
    (workdir / "data.bin").write_bytes(bytes(range(256)) * 1000)
    client = oras_client(server)
    response = client.push(target=f"{server.host}/{repo}:v1", files=["notes.txt", "data.bin"])
    assert response.status_code == 201
    out = workdir / "out"
    pulled = client.pull(target=f"{server.host}/{repo}:v1", outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == ["data.bin", "notes.txt"]
    assert (out / "notes.txt").read_text() == "hello from berth\n"
    assert (out / "data.bin").read_bytes() == bytes(range(256)) * 1000


def test_chunked_push(server: Server, repo: str, workdir: Path) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB in 1 MB chunks with Content-Range
    (workdir / "big.bin").write_bytes(payload)
    client = oras_client(server)
    response = client.push(target=f"{server.host}/{repo}:chunked", files=["big.bin"], do_chunked=True,
                           chunk_size=1024 * 1024)
    assert response.status_code == 201
    pulled = client.pull(target=f"{server.host}/{repo}:chunked", outdir=str(workdir / "out"))
    assert Path(pulled[0]).read_bytes() == payload


def test_artifact_with_subject_is_found_through_referrers(server: Server, repo: str, workdir: Path) -> None:
    (workdir / "app.txt").write_text("the application\n")
    client = oras_client(server)
    client.push(target=f"{server.host}/{repo}:app", files=["app.txt"])
    subject_bytes = httpx.get(
        f"{server.url}/v2/{repo}/manifests/app", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    ).content
    subject = oras.oci.Subject(
        mediaType=json.loads(subject_bytes)["mediaType"],
        digest="sha256:" + hashlib.sha256(subject_bytes).hexdigest(),
        size=len(subject_bytes),
    )
    (workdir / "sbom.json").write_text('{"packages": []}')
    response = client.push(target=f"{server.host}/{repo}:sbom", files=["sbom.json"], subject=subject)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject.digest
    index = httpx.get(f"{server.url}/v2/{repo}/referrers/{subject.digest}").json()
    assert [m["digest"] for m in index["manifests"]] == [response.headers["Docker-Content-Digest"]]
