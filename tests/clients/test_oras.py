"""oras-py: artifacts, chunked uploads and the referrers API."""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest

from registry.azurite import Azurite
from tests.conftest import Server, start_server, stop_server

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # oras-py refuses files outside the working directory
    return tmp_path


def oras_client(server: Server) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=server.host, insecure=True)


@pytest.fixture(scope="module")
def pages_of_25(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Berth serving referrers 25 to a page."""
    instance = start_server(azurite, tmp_path_factory.mktemp("oras-referrers"), BERTH_REFERRERS_PAGE_SIZE="25")
    yield instance
    stop_server(instance)


def pushed_subject(client: oras.client.OrasClient, server: Server, repo: str, tag: str) -> oras.oci.Subject:
    """Push app.txt as repo:tag; describe that manifest from the registry's own bytes."""
    client.push(target=f"{server.host}/{repo}:{tag}", files=["app.txt"])
    manifest = httpx.get(f"{server.url}/v2/{repo}/manifests/{tag}",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content
    return oras.oci.Subject(mediaType=json.loads(manifest)["mediaType"],
                            digest="sha256:" + hashlib.sha256(manifest).hexdigest(), size=len(manifest))


def referrer_pages(client: oras.client.OrasClient, server: Server, url: str) -> list[list[dict]]:
    """oras-py 0.2 has no referrers call: read the pages through its own session (do_request),
    following `Link: <...>; rel="next"` with requests' RFC 5988 parser."""
    pages = []
    while url:
        response = client.do_request(url, "GET", headers={"Accept": OCI_INDEX})
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith(OCI_INDEX)
        pages.append(response.json()["manifests"])
        following = response.links.get("next", {}).get("url")
        url = urllib.parse.urljoin(server.url, following) if following else ""
    return pages


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


def test_sixty_referrers_pushed_by_oras_are_read_page_by_page(pages_of_25: Server, repo: str, workdir: Path) -> None:
    server = pages_of_25
    (workdir / "app.txt").write_text("the application\n")
    (workdir / "evidence.json").write_text('{"ok": true}')
    client = oras_client(server)
    subject = pushed_subject(client, server, repo, "app")
    kinds = {}
    for number in range(60):
        # The config's media type is the artifactType (oras-py's push has no artifactType).
        kind = "application/vnd.example.signature" if number % 2 else "application/vnd.example.sbom+json"
        response = client.push(target=f"{server.host}/{repo}:evidence-{number}", files=["evidence.json"],
                               subject=subject, manifest_config=f"no-config-file:{kind}",
                               manifest_annotations={"org.example.number": str(number)})
        assert response.status_code == 201
        assert response.headers["OCI-Subject"] == subject.digest
        kinds[response.headers["Docker-Content-Digest"]] = (kind, str(number))

    pages = referrer_pages(client, server, f"{server.url}/v2/{repo}/referrers/{subject.digest}")
    assert [len(page) for page in pages] == [25, 25, 10]
    listed = [entry["digest"] for page in pages for entry in page]
    assert len(listed) == len(set(listed)) and set(listed) == set(kinds)
    for entry in (entry for page in pages for entry in page):
        assert (entry["artifactType"], entry["annotations"]["org.example.number"]) == kinds[entry["digest"]]

    query = urllib.parse.urlencode({"artifactType": "application/vnd.example.sbom+json"})
    sboms = referrer_pages(client, server, f"{server.url}/v2/{repo}/referrers/{subject.digest}?{query}")
    assert [len(page) for page in sboms] == [25, 5]
    assert {entry["digest"] for page in sboms for entry in page} == {
        digest for digest, (kind, _) in kinds.items() if kind.endswith("+json")
    }
