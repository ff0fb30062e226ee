"""Accept negotiation on manifest GET/HEAD, and Docker renditions of OCI images (opt-in).

The `client` server has renditions off; `rendering` is two instances with
BERTH_DOCKER_RENDITIONS=rendered/*, so a rendition made on one is pulled from the other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from registry.azurite import Azurite
from registry.settings import SettingsError, load_settings
from tests.conftest import StorageView, start_server, stop_server
from tests.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

DOCKER_ONLY = f"{DOCKER_MANIFEST}, {DOCKER_LIST}"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


@pytest.fixture(scope="module")
def rendering(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[httpx.Client]]:
    """Clients of two instances with renditions on for `rendered/*` (and `exact`)."""
    tmp = tmp_path_factory.mktemp("renditions")
    servers = []
    try:
        for _ in range(2):
            servers.append(start_server(azurite, tmp, BERTH_DOCKER_RENDITIONS="rendered/*, exact"))
        clients = [httpx.Client(base_url=server.url, timeout=60) for server in servers]
        yield clients
        for client in clients:
            client.close()
    finally:
        for server in servers:
            stop_server(server)


@pytest.fixture
def rendered_repo() -> str:
    return f"rendered/{uuid.uuid4().hex[:12]}"


def get(client: httpx.Client, repo: str, reference: str, accept: str | list[str] | None = None,
        method: str = "GET") -> httpx.Response:
    """A manifest request with exactly these Accept headers (None: none at all)."""
    request = client.build_request(method, f"/v2/{repo}/manifests/{reference}")
    del request.headers["Accept"]  # httpx sends `*/*` by default
    values = [accept] if isinstance(accept, str) else accept or []
    request.headers.update(httpx.Headers([("Accept", value) for value in values]))
    return client.send(request)


def assert_refused(response: httpx.Response, kind: str = "manifest") -> None:
    assert response.status_code == 404, response.text
    if response.request.method == "GET":
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
        assert f"OCI {kind} found, but the Accept header does not allow OCI {kind}es" in response.text
    else:
        assert response.content == b""


def assert_served(response: httpx.Response, body: bytes, media_type: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    assert response.headers["ETag"] == f'"{sha256(body)}"'
    assert response.headers["Content-Length"] == str(len(body))
    if response.request.method == "GET":
        assert response.content == body


# --- Accept negotiation, renditions off ------------------------------------------------------

@pytest.mark.parametrize("accept", [
    None,
    "*/*",
    "application/*",
    OCI_MANIFEST,
    [DOCKER_MANIFEST, OCI_MANIFEST],  # two headers
    f"{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST.upper()};q=0.1",
    f"{DOCKER_ONLY}, */*;q=0.1",  # what containerd sends, in spirit
])
def test_accept_covering_the_stored_type_serves_it(client: httpx.Client, repo: str,
                                                   accept: str | list[str] | None) -> None:
    digest, body = push_image(client, repo, "v1")
    for reference in ("v1", digest):
        for method in ("GET", "HEAD"):
            assert_served(get(client, repo, reference, accept, method), body, OCI_MANIFEST)


@pytest.mark.parametrize("accept", [
    DOCKER_ONLY,
    [DOCKER_MANIFEST, DOCKER_LIST],
    f"{OCI_MANIFEST};q=0, */*",  # q=0: not acceptable, whatever the wildcard says
    "text/*",
    OCI_INDEX,
])
def test_accept_excluding_oci_is_404_without_renditions(client: httpx.Client, repo: str,
                                                        accept: str | list[str]) -> None:
    digest, _ = push_image(client, repo, "v1")
    for reference in ("v1", digest):
        for method in ("GET", "HEAD"):
            assert_refused(get(client, repo, reference, accept, method))


def test_oci_index_refused_to_docker_only_accept(client: httpx.Client, repo: str) -> None:
    child_digest, child = push_image(client, repo, "child")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, child, platform={"architecture": "amd64", "os": "linux"})]}).encode()
    assert put_manifest(client, repo, "multi", index, OCI_INDEX).status_code == 201
    for method in ("GET", "HEAD"):
        assert_refused(get(client, repo, "multi", DOCKER_ONLY, method), "index")
        assert_refused(get(client, repo, "multi", OCI_MANIFEST, method), "index")
    assert_served(get(client, repo, "multi", OCI_INDEX), index, OCI_INDEX)


def test_docker_manifest_served_whatever_the_accept(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v1", media_type=DOCKER_MANIFEST)
    for accept in (OCI_MANIFEST, f"{OCI_MANIFEST}, {OCI_INDEX}", "text/plain", None):
        for reference in ("v1", digest):
            for method in ("GET", "HEAD"):
                assert_served(get(client, repo, reference, accept, method), body, DOCKER_MANIFEST)


# --- renditions on --------------------------------------------------------------------------

def test_setting_takes_repository_patterns() -> None:
    assert load_settings({}).docker_renditions == ()
    setting = load_settings({"BERTH_DOCKER_RENDITIONS": " *, team/*,app ,"}).docker_renditions
    assert setting == ("*", "team/*", "app")
    for bad in ("Team/*", "team/**", "a b"):
        with pytest.raises(SettingsError):
            load_settings({"BERTH_DOCKER_RENDITIONS": bad})


def test_tag_pulled_as_docker_by_a_docker_only_client(rendering: list[httpx.Client], rendered_repo: str) -> None:
    one, other = rendering
    source_digest, source = push_image(one, rendered_repo, "v1", layers=2)
    response = get(one, rendered_repo, "v1", DOCKER_ONLY)
    assert response.status_code == 200, response.text
    rendition = response.content
    assert_served(response, rendition, DOCKER_MANIFEST)
    assert sha256(rendition) != source_digest
    manifest, original = json.loads(rendition), json.loads(source)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"] == {**original["config"], "mediaType": DOCKER_CONFIG}
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in original["layers"]]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER}
    # HEAD says the same as GET; the other instance serves the same rendition, by tag and digest.
    assert_served(get(one, rendered_repo, "v1", DOCKER_ONLY, "HEAD"), rendition, DOCKER_MANIFEST)
    assert_served(get(other, rendered_repo, "v1", DOCKER_MANIFEST), rendition, DOCKER_MANIFEST)
    for accept in (DOCKER_ONLY, None):
        assert_served(get(other, rendered_repo, sha256(rendition), accept), rendition, DOCKER_MANIFEST)
    # Its blobs are the source's, pullable in the repository.
    assert other.head(f"/v2/{rendered_repo}/blobs/{manifest['layers'][0]['digest']}").status_code == 200
    # Clients that take OCI still get the source; a pull by the OCI digest is never converted.
    assert_served(get(other, rendered_repo, "v1"), source, OCI_MANIFEST)
    assert_served(get(other, rendered_repo, "v1", f"{DOCKER_ONLY}, {OCI_MANIFEST}"), source, OCI_MANIFEST)
    assert_refused(get(other, rendered_repo, source_digest, DOCKER_ONLY))
    assert_refused(get(other, rendered_repo, source_digest, DOCKER_ONLY, "HEAD"))
    # The rendition is untagged: the tag stays on the source.
    assert other.get(f"/v2/{rendered_repo}/tags/list").json()["tags"] == ["v1"]


def test_first_use_on_many_instances_converges(rendering: list[httpx.Client], rendered_repo: str) -> None:
    push_image(rendering[0], rendered_repo, "v1")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: get(rendering[i % 2], rendered_repo, "v1", DOCKER_ONLY,
                                                "HEAD" if i % 3 == 0 else "GET"), range(8)))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert len({r.headers["Docker-Content-Digest"] for r in responses}) == 1


def test_repositories_outside_the_setting_get_no_rendition(rendering: list[httpx.Client], repo: str) -> None:
    push_image(rendering[0], repo, "v1")  # test/..., not rendered/*
    assert_refused(get(rendering[0], repo, "v1", DOCKER_ONLY))
    push_image(rendering[0], "exact", "v1")  # the exact name is on
    assert get(rendering[1], "exact", "v1", DOCKER_ONLY).headers["Content-Type"] == DOCKER_MANIFEST


def test_zstd_image_has_no_rendition(rendering: list[httpx.Client], rendered_repo: str) -> None:
    one = rendering[0]
    document = json.loads(image_manifest(one, rendered_repo))
    document["layers"][0]["mediaType"] = ZSTD_LAYER
    body = json.dumps(document).encode()
    assert put_manifest(one, rendered_repo, "zstd", body).status_code == 201
    for method in ("GET", "HEAD"):
        response = get(one, rendered_repo, "zstd", DOCKER_ONLY, method)
        assert_refused(response)
    assert "no Docker schema 2 equivalent" in get(one, rendered_repo, "zstd", DOCKER_ONLY).text
    assert_served(get(one, rendered_repo, "zstd"), body, OCI_MANIFEST)


def push_multiarch(client: httpx.Client, repo: str, tag: str) -> tuple[bytes, list[bytes]]:
    """An OCI index of two images and a BuildKit-style attestation manifest."""
    children = []
    entries: list[dict[str, Any]] = []
    for arch in ("amd64", "arm64"):
        child = image_manifest(client, repo)
        assert put_manifest(client, repo, sha256(child), child).status_code == 201
        children.append(child)
        entries.append(descriptor(OCI_MANIFEST, child, platform={"architecture": arch, "os": "linux"}))
    statement = push_blob(client, repo, b'{"_type": "https://in-toto.io/Statement/v0.1"}')
    config = b'{"architecture": "unknown", "os": "unknown"}'
    push_blob(client, repo, config)
    attestation = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": statement, "size": 46}],
    }).encode()
    assert put_manifest(client, repo, sha256(attestation), attestation).status_code == 201, attestation
    entries.append(descriptor(OCI_MANIFEST, attestation, platform={"architecture": "unknown", "os": "unknown"},
                              annotations={"vnd.docker.reference.type": "attestation-manifest",
                                           "vnd.docker.reference.digest": sha256(children[0])}))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    assert put_manifest(client, repo, tag, index, OCI_INDEX).status_code == 201
    return index, children


def test_index_becomes_manifest_list_of_pullable_children(rendering: list[httpx.Client],
                                                          rendered_repo: str) -> None:
    one, other = rendering
    _, children = push_multiarch(one, rendered_repo, "multi")
    response = get(one, rendered_repo, "multi", DOCKER_ONLY)
    assert response.status_code == 200, response.text
    manifest_list = json.loads(response.content)
    assert response.headers["Content-Type"] == DOCKER_LIST == manifest_list["mediaType"]
    assert response.headers["Docker-Content-Digest"] == sha256(response.content)
    # The attestation is left out; each image is there as a Docker manifest, pullable by digest.
    assert [entry["platform"] for entry in manifest_list["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    for entry, child in zip(manifest_list["manifests"], children, strict=True):
        assert entry["mediaType"] == DOCKER_MANIFEST
        pulled = get(other, rendered_repo, entry["digest"], DOCKER_MANIFEST)
        assert_served(pulled, pulled.content, DOCKER_MANIFEST)
        assert sha256(pulled.content) == entry["digest"] and len(pulled.content) == entry["size"]
        assert json.loads(pulled.content)["layers"][0]["digest"] == json.loads(child)["layers"][0]["digest"]
    assert_served(get(other, rendered_repo, sha256(response.content), DOCKER_ONLY, "HEAD"), response.content,
                  DOCKER_LIST)


def test_index_with_an_unconvertible_image_is_refused(rendering: list[httpx.Client], rendered_repo: str) -> None:
    one = rendering[0]
    document = json.loads(image_manifest(one, rendered_repo))
    document["layers"][0]["mediaType"] = ZSTD_LAYER
    zstd = json.dumps(document).encode()
    assert put_manifest(one, rendered_repo, sha256(zstd), zstd).status_code == 201
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, zstd, platform={"architecture": "amd64", "os": "linux"})]}).encode()
    assert put_manifest(one, rendered_repo, "multi", index, OCI_INDEX).status_code == 201
    assert_refused(get(one, rendered_repo, "multi", DOCKER_ONLY), "index")


def test_deleting_the_source_removes_its_rendition(rendering: list[httpx.Client], rendered_repo: str,
                                                   storage: StorageView) -> None:
    one, other = rendering
    source_digest, _ = push_image(one, rendered_repo, "v1")
    rendition = get(one, rendered_repo, "v1", DOCKER_ONLY).content
    assert get(other, rendered_repo, sha256(rendition)).status_code == 200
    assert other.delete(f"/v2/{rendered_repo}/manifests/{source_digest}").status_code == 202
    assert get(one, rendered_repo, sha256(rendition)).status_code == 404
    assert get(one, rendered_repo, "v1", DOCKER_ONLY).status_code == 404
    left = storage.repository_rows(rendered_repo)
    assert not [key for key in left if key.startswith(("m:", "v:"))], left.keys()


def test_index_rendition_goes_with_the_index_children_with_theirs(rendering: list[httpx.Client],
                                                                  rendered_repo: str) -> None:
    one, other = rendering
    index, children = push_multiarch(one, rendered_repo, "multi")
    manifest_list = get(one, rendered_repo, "multi", DOCKER_ONLY).content
    child_renditions = [entry["digest"] for entry in json.loads(manifest_list)["manifests"]]
    assert other.delete(f"/v2/{rendered_repo}/manifests/{sha256(index)}").status_code == 202
    assert get(other, rendered_repo, sha256(manifest_list)).status_code == 404
    # The children are still there, and so are their renditions, until they go.
    assert get(other, rendered_repo, child_renditions[0]).status_code == 200
    assert one.delete(f"/v2/{rendered_repo}/manifests/{sha256(children[0])}").status_code == 202
    assert get(other, rendered_repo, child_renditions[0]).status_code == 404
    assert get(other, rendered_repo, child_renditions[1]).status_code == 200


def rendition_bytes(client: httpx.Client, repo: str, source: bytes) -> bytes:
    """The rendition a source gets: made in a scratch repository (same blobs pushed there)."""
    scratch = f"{repo}/scratch"
    for blob in [json.loads(source)["config"]] + json.loads(source)["layers"]:
        assert client.post(f"/v2/{scratch}/blobs/uploads/",
                           params={"mount": blob["digest"], "from": repo}).status_code == 201
    assert put_manifest(client, scratch, "x", source).status_code == 201
    response = get(client, scratch, "x", DOCKER_ONLY)
    assert response.status_code == 200
    return response.content


def test_a_manifest_pushed_by_a_user_before_is_never_deleted(rendering: list[httpx.Client],
                                                             rendered_repo: str) -> None:
    one, other = rendering
    body = image_manifest(one, rendered_repo)
    rendition = rendition_bytes(one, rendered_repo, body)
    # The user pushes those Docker bytes themselves (untagged), then the OCI image.
    assert put_manifest(one, rendered_repo, sha256(rendition), rendition, DOCKER_MANIFEST).status_code == 201
    assert put_manifest(one, rendered_repo, "v1", body).status_code == 201
    assert get(other, rendered_repo, "v1", DOCKER_ONLY).content == rendition
    assert other.delete(f"/v2/{rendered_repo}/manifests/{sha256(body)}").status_code == 202
    assert_served(get(one, rendered_repo, sha256(rendition)), rendition, DOCKER_MANIFEST)


def test_a_manifest_pushed_by_a_user_after_is_never_deleted(rendering: list[httpx.Client],
                                                            rendered_repo: str) -> None:
    one, other = rendering
    source_digest, _ = push_image(one, rendered_repo, "v1")
    rendition = get(one, rendered_repo, "v1", DOCKER_ONLY).content
    # The user pushes the same bytes (here, untagged by digest); they are the user's now.
    assert put_manifest(other, rendered_repo, sha256(rendition), rendition, DOCKER_MANIFEST).status_code == 201
    assert other.delete(f"/v2/{rendered_repo}/manifests/{source_digest}").status_code == 202
    assert_served(get(one, rendered_repo, sha256(rendition)), rendition, DOCKER_MANIFEST)


def test_sources_sharing_a_rendition(rendering: list[httpx.Client], rendered_repo: str) -> None:
    """Two OCI manifests that differ only in annotations have one rendition: it stays while
    either source does."""
    one, other = rendering
    body = image_manifest(one, rendered_repo)
    annotated = json.dumps({**json.loads(body), "annotations": {"org.example": "b"}}).encode()
    assert put_manifest(one, rendered_repo, "a", body).status_code == 201
    assert put_manifest(one, rendered_repo, "b", annotated).status_code == 201
    rendition = get(one, rendered_repo, "a", DOCKER_ONLY).content
    assert get(other, rendered_repo, "b", DOCKER_ONLY).content == rendition
    for deleted, remaining in ((body, "b"), (annotated, None)):
        assert one.delete(f"/v2/{rendered_repo}/manifests/{sha256(deleted)}").status_code == 202
        pulled = get(other, rendered_repo, sha256(rendition))
        if remaining:
            assert_served(pulled, rendition, DOCKER_MANIFEST)
            assert get(one, rendered_repo, remaining, DOCKER_ONLY).content == rendition
        else:
            assert pulled.status_code == 404


def test_deleting_the_rendition_itself(rendering: list[httpx.Client], rendered_repo: str) -> None:
    """A user may delete a rendition by digest; the next Docker-only pull makes it again."""
    one, other = rendering
    push_image(one, rendered_repo, "v1")
    rendition = get(one, rendered_repo, "v1", DOCKER_ONLY).content
    assert other.delete(f"/v2/{rendered_repo}/manifests/{sha256(rendition)}").status_code == 202
    assert get(one, rendered_repo, sha256(rendition)).status_code == 404
    assert get(other, rendered_repo, "v1", DOCKER_ONLY).content == rendition
    assert_served(get(one, rendered_repo, sha256(rendition)), rendition, DOCKER_MANIFEST)
