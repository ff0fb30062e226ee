"""Locks: ACR's changeable attributes (writeEnabled, deleteEnabled, readEnabled, listEnabled)
on a repository, a tag and a manifest, set with PATCH on /acr/v1 and kept by every instance."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.conftest import Server
from tests.helpers import OCI_MANIFEST, error_codes, image_manifest, push_blob, push_image, put_manifest, sha256

ALL_TRUE = {"deleteEnabled": True, "writeEnabled": True, "readEnabled": True, "listEnabled": True}


def lock(client: httpx.Client, path: str, **flags: bool) -> httpx.Response:
    response = client.patch(f"/acr/v1/{path}", json=flags)
    assert response.status_code == 200, response.text
    return response


def refused(response: httpx.Response) -> bool:
    return response.status_code == 405 and error_codes(response) == ["DENIED"] and \
        "disallowed" in response.json()["errors"][0]["message"]


def test_a_write_disabled_tag_is_neither_moved_nor_deleted(client: httpx.Client, repo: str) -> None:
    first, body = push_image(client, repo, "prod")
    answer = lock(client, f"{repo}/_tags/prod", writeEnabled=False).json()
    assert answer["tag"]["changeableAttributes"] == {**ALL_TRUE, "writeEnabled": False}
    other = image_manifest(client, repo)
    assert refused(put_manifest(client, repo, "prod", other))
    assert refused(client.put(f"/v2/{repo}/manifests/{sha256(other)}", params={"tag": "prod"}, content=other,
                              headers={"Content-Type": OCI_MANIFEST}))
    assert put_manifest(client, repo, "prod", body).status_code == 201  # the same manifest: nothing moves
    assert refused(client.delete(f"/v2/{repo}/manifests/prod"))
    assert refused(client.delete(f"/v2/{repo}/manifests/{first}"))  # it would take the tag with it
    assert refused(client.delete(f"/acr/v1/{repo}/_tags/prod"))
    assert refused(client.delete(f"/acr/v1/{repo}"))
    assert client.get(f"/v2/{repo}/manifests/prod").headers["Docker-Content-Digest"] == first
    lock(client, f"{repo}/_tags/prod", writeEnabled=True)
    assert put_manifest(client, repo, "prod", other).status_code == 201


def test_a_tag_keeps_its_locks_when_it_is_moved(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "stable")
    lock(client, f"{repo}/_tags/stable", deleteEnabled=False)
    moved, _ = push_image(client, repo, "stable")  # writes are allowed: the tag moves
    assert client.get(f"/v2/{repo}/manifests/stable").headers["Docker-Content-Digest"] == moved
    assert refused(client.delete(f"/v2/{repo}/manifests/stable"))
    attributes = client.get(f"/acr/v1/{repo}/_tags/stable").json()["tag"]["changeableAttributes"]
    assert attributes == {**ALL_TRUE, "deleteEnabled": False}


def test_a_delete_disabled_manifest_survives_deletes_but_takes_tags(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v1")
    lock(client, f"{repo}/_manifests/{digest}", deleteEnabled=False)
    assert refused(client.delete(f"/v2/{repo}/manifests/{digest}"))
    assert refused(client.delete(f"/acr/v1/{repo}/_manifests/{digest}"))
    assert put_manifest(client, repo, "v2", body).status_code == 201
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 200
    manifests = client.get(f"/acr/v1/{repo}/_manifests").json()["manifests"]
    assert [m["changeableAttributes"]["deleteEnabled"] for m in manifests] == [False]


def test_read_disabled_content_is_not_served(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v1")
    put_manifest(client, repo, "v2", body)
    lock(client, f"{repo}/_manifests/{digest}", readEnabled=False)
    for reference in (digest, "v1", "v2"):
        response = client.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 404 and error_codes(response) == ["MANIFEST_UNKNOWN"], reference
        assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404
    assert put_manifest(client, repo, "v3", body).status_code == 201  # a new tag on it: not served either
    assert client.get(f"/v2/{repo}/manifests/v3").status_code == 404
    lock(client, f"{repo}/_manifests/{digest}", readEnabled=True)
    assert client.get(f"/v2/{repo}/manifests/v3").status_code == 200
    lock(client, f"{repo}/_tags/v1", readEnabled=False)  # a tag alone: the digest still pulls
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 200


def test_list_disabled_tags_and_manifests_are_not_listed(client: httpx.Client, repo: str) -> None:
    digest, _ = push_image(client, repo, "hidden")
    push_image(client, repo, "shown")
    lock(client, f"{repo}/_tags/hidden", listEnabled=False)
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["shown"]
    assert [t["name"] for t in client.get(f"/acr/v1/{repo}/_tags").json()["tags"]] == ["shown"]
    assert client.get(f"/v2/{repo}/manifests/hidden").status_code == 200  # listing only
    lock(client, f"{repo}/_manifests/{digest}", listEnabled=False)
    assert digest not in [m["digest"] for m in client.get(f"/acr/v1/{repo}/_manifests").json()["manifests"]]


def test_a_locked_repository(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v1")
    layer = os.urandom(500)
    layer_digest = push_blob(client, repo, layer)
    source = push_blob(client, f"{repo}/src", os.urandom(300))
    answer = lock(client, repo, writeEnabled=False, deleteEnabled=False).json()
    assert answer["changeableAttributes"] == {**ALL_TRUE, "writeEnabled": False, "deleteEnabled": False}
    assert refused(put_manifest(client, repo, "v2", body))
    assert refused(client.post(f"/v2/{repo}/blobs/uploads/"))
    assert refused(client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(b"x")}, content=b"x"))
    assert refused(client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": source, "from": f"{repo}/src"}))
    assert refused(client.delete(f"/v2/{repo}/manifests/{digest}"))
    assert refused(client.delete(f"/v2/{repo}/manifests/v1"))
    assert refused(client.delete(f"/v2/{repo}/blobs/{layer_digest}"))
    assert refused(client.delete(f"/acr/v1/{repo}"))
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 200  # pulls go on
    assert client.get(f"/v2/{repo}/blobs/{layer_digest}", follow_redirects=True).content == layer
    lock(client, repo, writeEnabled=True, deleteEnabled=True)
    assert put_manifest(client, repo, "v2", body).status_code == 201
    assert client.delete(f"/acr/v1/{repo}").status_code == 202


def test_a_read_and_list_disabled_repository_on_every_instance(instances: list[Server], repo: str) -> None:
    clients = [httpx.Client(base_url=server.url, timeout=30) for server in instances]
    try:
        digest, _ = push_image(clients[0], repo, "v1")
        layer = push_blob(clients[0], repo, os.urandom(200))
        for http in clients:  # every instance has read the repository's flags (and caches them)
            assert http.get(f"/v2/{repo}/manifests/v1").status_code == 200
        lock(clients[0], repo, readEnabled=False, listEnabled=False)
        deadline = time.monotonic() + 15  # pulls see a repository's flags within 5 s
        for http in clients:
            while http.get(f"/v2/{repo}/manifests/v1").status_code != 404:
                assert time.monotonic() < deadline, "a read-disabled repository was still served"
                time.sleep(0.5)
            assert http.get(f"/v2/{repo}/manifests/{digest}").status_code == 404
            assert http.head(f"/v2/{repo}/blobs/{layer}").status_code == 404
            listed = http.get("/v2/_catalog", params={"n": 1000, "last": repo[:-1]}).json()["repositories"]
            assert repo not in listed
        lock(clients[0], repo, readEnabled=True, listEnabled=True)
        assert clients[0].get(f"/v2/{repo}/manifests/v1").status_code == 200
    finally:
        for http in clients:
            http.close()


@pytest.mark.parametrize("body", [b"[]", b'{"writeEnabled": "no"}', b'{"locked": true}', b"{nope"])
def test_bad_attribute_bodies_are_refused(client: httpx.Client, repo: str, body: bytes) -> None:
    push_image(client, repo, "v1")
    response = client.patch(f"/acr/v1/{repo}/_tags/v1", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert client.get(f"/acr/v1/{repo}/_tags/v1").json()["tag"]["changeableAttributes"] == ALL_TRUE


def test_locks_of_unknown_things(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "v1")
    assert client.patch(f"/acr/v1/{repo}/_tags/nope", json={"writeEnabled": False}).status_code == 404
    assert client.patch(f"/acr/v1/{repo}/_manifests/{sha256(b'nope')}", json={"writeEnabled": False}).status_code \
        == 404
    assert client.patch(f"/acr/v1/{repo}/absent", json={"writeEnabled": False}).status_code == 404
