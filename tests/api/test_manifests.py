"""Manifest push and pull: by tag and digest, every media type, validation and deletes."""

from __future__ import annotations

import json
import os

import httpx

from tests.conftest import StorageView
from tests.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_EMPTY,
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


def test_push_and_pull_by_tag_and_digest_returns_exact_bytes(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo, layers=2)
    body = body.replace(b'"schemaVersion": 2', b'"schemaVersion":   2')  # odd spacing must survive
    response = put_manifest(client, repo, "v1", body)
    assert response.status_code == 201
    digest = sha256(body)
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Location"] == f"/v2/{repo}/manifests/{digest}"
    for reference in ("v1", digest):
        got = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert got.content == body
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = client.head(f"/v2/{repo}/manifests/{reference}")
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert head.headers["Docker-Content-Digest"] == digest


def test_docker_schema2_manifest_and_list(client: httpx.Client, repo: str) -> None:
    child_digests = []
    for arch in ("amd64", "arm64"):
        body = image_manifest(client, repo, media_type=DOCKER_MANIFEST)
        response = put_manifest(client, repo, sha256(body), body, DOCKER_MANIFEST)
        assert response.status_code == 201, response.text
        child_digests.append((sha256(body), len(body), arch))
    manifest_list = json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": d, "size": n, "platform": {"architecture": a, "os": "linux"}}
            for d, n, a in child_digests
        ],
    }).encode()
    assert put_manifest(client, repo, "multi", manifest_list, DOCKER_LIST).status_code == 201
    got = client.get(f"/v2/{repo}/manifests/multi")
    assert got.headers["Content-Type"] == DOCKER_LIST
    assert got.content == manifest_list


def test_oci_index_needs_its_children(client: httpx.Client, repo: str) -> None:
    missing = {"mediaType": OCI_MANIFEST, "digest": sha256(b"nope"), "size": 4}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [missing]}).encode()
    response = put_manifest(client, repo, "idx", index, OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]


def test_manifest_with_missing_layer_is_refused(client: httpx.Client, repo: str) -> None:
    config = b"{}"
    push_blob(client, repo, config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"missing layer")],
    }).encode()
    response = put_manifest(client, repo, "v1", body)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404


def test_layer_from_another_repository_does_not_count(client: httpx.Client, repo: str) -> None:
    layer = os.urandom(64)
    push_blob(client, f"{repo}/other", layer)
    config = b"{}"
    push_blob(client, repo, config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_EMPTY, config), "layers": [descriptor("application/octet-stream", layer)],
    }).encode()
    assert error_codes(put_manifest(client, repo, "v1", body)) == ["MANIFEST_BLOB_UNKNOWN"]


def test_descriptor_size_must_match_the_blob(client: httpx.Client, repo: str) -> None:
    config = b"{}"
    push_blob(client, repo, config)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_EMPTY, "digest": sha256(config), "size": 3}, "layers": [],
    }).encode()
    assert error_codes(put_manifest(client, repo, "v1", body)) == ["MANIFEST_INVALID"]


def test_schema1_is_refused_with_a_reason(client: httpx.Client, repo: str) -> None:
    body = json.dumps({"schemaVersion": 1, "name": repo, "tag": "v1", "fsLayers": []}).encode()
    response = put_manifest(client, repo, "v1", body, "application/vnd.docker.distribution.manifest.v1+prettyjws")
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert "schema 1" in response.json()["errors"][0]["message"]


def test_invalid_manifests(client: httpx.Client, repo: str) -> None:
    cases = [
        b"not json",
        b"[]",
        json.dumps({"schemaVersion": 3, "mediaType": OCI_MANIFEST}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown", "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_EMPTY, "digest": "sha256:bad", "size": 2}, "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": -1}, "layers": []}).encode(),
    ]
    for body in cases:
        response = put_manifest(client, repo, "bad", body)
        assert response.status_code == 400, body
        assert error_codes(response) == ["MANIFEST_INVALID"], body
    assert client.get(f"/v2/{repo}/manifests/bad").status_code == 404


def test_content_type_must_agree_with_media_type(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    response = put_manifest(client, repo, "v1", body, DOCKER_MANIFEST)
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_digest_reference_must_match_body(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    response = put_manifest(client, repo, sha256(body + b" "), body)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_manifest_over_4_mib_is_refused(client: httpx.Client, repo: str) -> None:
    body = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    response = put_manifest(client, repo, "huge", body)
    assert response.status_code == 413


def test_large_manifest_under_the_limit_round_trips(client: httpx.Client, repo: str) -> None:
    # Larger than a table property, so it is kept as a blob rather than inline.
    body = image_manifest(client, repo, annotations={"padding": "x" * 200_000})
    assert put_manifest(client, repo, "big", body).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/big").content == body
    assert client.head(f"/v2/{repo}/manifests/big").headers["Content-Length"] == str(len(body))


def test_retag_moves_the_tag(client: httpx.Client, repo: str) -> None:
    first, _ = push_image(client, repo, "latest")
    second, _ = push_image(client, repo, "latest")
    assert first != second
    assert client.get(f"/v2/{repo}/manifests/latest").headers["Docker-Content-Digest"] == second
    assert client.get(f"/v2/{repo}/manifests/{first}").status_code == 200


def test_invalid_tags_and_names(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    long_tag = "a" * 129
    assert error_codes(put_manifest(client, repo, long_tag, body)) == ["TAG_INVALID"]
    assert error_codes(put_manifest(client, repo, ".hidden", body)) == ["TAG_INVALID"]
    for name in ("UPPER/case", "double//slash", "trailing-", "-leading", "a" * 256):
        response = client.get(f"/v2/{name}/manifests/latest")
        assert response.status_code == 400, name
        assert error_codes(response) == ["NAME_INVALID"], name


def test_unknown_manifest(client: httpx.Client, repo: str) -> None:
    for reference in ("nope", sha256(b"nope")):
        response = client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
        assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_delete_by_digest_removes_its_tags(client: httpx.Client, repo: str, storage: StorageView) -> None:
    digest, _ = push_image(client, repo, "one")
    put_manifest(client, repo, "two", client.get(f"/v2/{repo}/manifests/one").content)
    keep, _ = push_image(client, repo, "keep")
    assert client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    for reference in ("one", "two", digest):
        assert client.get(f"/v2/{repo}/manifests/{reference}").status_code == 404
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]
    rows = storage.repository_rows(repo)
    assert f"m:{digest}" not in rows and f"m:{keep}" in rows
    assert client.delete(f"/v2/{repo}/manifests/{digest}").status_code == 404


def test_delete_by_tag_removes_only_the_tag(client: httpx.Client, repo: str) -> None:
    digest, _ = push_image(client, repo, "gone")
    assert client.delete(f"/v2/{repo}/manifests/gone").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/gone").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 200
    assert error_codes(client.delete(f"/v2/{repo}/manifests/gone")) == ["MANIFEST_UNKNOWN"]


def test_names_with_every_separator_resolve(client: httpx.Client, repo: str) -> None:
    # '-', '.', '_', '__' and '/' all change how the repository is keyed in Table Storage.
    name = f"{repo}/a-b.c_d__e---f"
    digest, body = push_image(client, name, "v1.0_rc-1")
    assert client.get(f"/v2/{name}/manifests/v1.0_rc-1").content == body
    assert client.head(f"/v2/{name}/manifests/{digest}").status_code == 200
    layer = json.loads(body)["layers"][0]["digest"]
    assert client.head(f"/v2/{name}/blobs/{layer}").status_code == 200
    assert client.get(f"/v2/{name}/tags/list").json()["tags"] == ["v1.0_rc-1"]


def test_hostile_json_is_a_manifest_error_not_a_crash(client: httpx.Client, repo: str) -> None:
    nested_layers = b'{"schemaVersion": 2, "layers": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    for body in (b"[" * 100_000 + b"]" * 100_000, nested_layers):
        response = put_manifest(client, repo, "deep", body)
        assert response.status_code == 400
        assert error_codes(response) == ["MANIFEST_INVALID"]
