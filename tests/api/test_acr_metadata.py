"""The ACR metadata API (/acr/v1) as `az acr` and the azure-containerregistry SDK see it: every
field of ACR's REST reference (2021-07-01), paging, ordering, and what /v2 answers after deletes."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from datetime import datetime
from typing import Any

import httpx

from tests.conftest import Server, StorageView
from tests.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
CHANGEABLE = {"deleteEnabled": True, "writeEnabled": True, "readEnabled": True, "listEnabled": True}
TAG_KEYS = {"name", "digest", "createdTime", "lastUpdateTime", "signed", "changeableAttributes"}


def when(text: str) -> datetime:
    assert ISO.fullmatch(text), text
    return datetime.fromisoformat(text)


def follow(client: httpx.Client, url: str, key: str) -> tuple[list[Any], list[str]]:
    """Every item of a paged list, following Link headers as az acr does; and the links seen."""
    items: list[Any] = []
    links: list[str] = []
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.text
        items += response.json()[key]
        link = response.headers.get("Link")
        assert link is None or link.endswith('>; rel="next"')
        next_url = link[1:link.index(">")] if link else None
        if link:
            links.append(next_url)
    return items, links


def platform_image(client: httpx.Client, repo: str, architecture: str) -> tuple[str, bytes, int]:
    """Push an untagged image for one platform: (digest, manifest bytes, config + layer sizes)."""
    config = json.dumps({"architecture": architecture, "os": "linux", "rootfs": {"type": "layers"},
                         "nonce": os.urandom(4).hex()}).encode()
    layer = os.urandom(2000)
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    assert put_manifest(client, repo, sha256(body), body).status_code == 201
    return sha256(body), body, len(config) + len(layer)


def test_repository_attributes(client: httpx.Client, server: Server, repo: str) -> None:
    push_image(client, repo, "v1")
    time.sleep(0.01)
    push_image(client, repo, "v2", layers=2)
    response = client.get(f"/acr/v1/{repo}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"registry", "imageName", "createdTime", "lastUpdateTime", "manifestCount", "tagCount",
                         "changeableAttributes"}
    assert body["registry"] == server.host and body["imageName"] == repo
    assert body["manifestCount"] == 2 and body["tagCount"] == 2
    assert when(body["createdTime"]) < when(body["lastUpdateTime"])
    assert body["changeableAttributes"] == CHANGEABLE
    unknown = client.get(f"/acr/v1/{repo}x")
    assert unknown.status_code == 404 and error_codes(unknown) == ["NAME_UNKNOWN"]
    assert error_codes(client.get("/acr/v1/Bad_Name")) == ["NAME_INVALID"]


def test_tags_list_fields_order_paging_and_digest_filter(client: httpx.Client, server: Server, repo: str) -> None:
    digests = {}
    for tag in ("b", "c", "a"):  # pushed in this order: time order differs from name order
        digests[tag], _ = push_image(client, repo, tag)
        time.sleep(0.01)
    body = client.get(f"/acr/v1/{repo}/_tags").json()
    assert set(body) == {"registry", "imageName", "tags"}
    assert body["registry"] == server.host and body["imageName"] == repo
    assert [t["name"] for t in body["tags"]] == ["a", "b", "c"]
    for tag in body["tags"]:
        assert set(tag) == TAG_KEYS
        assert tag["digest"] == digests[tag["name"]]
        assert tag["signed"] is False and tag["changeableAttributes"] == CHANGEABLE
        assert when(tag["createdTime"]) == when(tag["lastUpdateTime"])
    by_time = {t["name"]: when(t["lastUpdateTime"]) for t in body["tags"]}
    assert by_time["b"] < by_time["c"] < by_time["a"]

    newest = client.get(f"/acr/v1/{repo}/_tags", params={"orderby": "timedesc"}).json()["tags"]
    assert [t["name"] for t in newest] == ["a", "c", "b"]
    oldest = client.get(f"/acr/v1/{repo}/_tags", params={"orderby": "timeasc"}).json()["tags"]
    assert [t["name"] for t in oldest] == ["b", "c", "a"]

    # Pages of one, following Link as az acr does; the order and the filter travel in the link.
    paged, links = follow(client, f"/acr/v1/{repo}/_tags?n=1", "tags")
    assert [t["name"] for t in paged] == ["a", "b", "c"] and len(links) == 2
    assert links[0].startswith(f"/acr/v1/{repo}/_tags?n=1&last=a")
    paged, links = follow(client, f"/acr/v1/{repo}/_tags?n=1&orderby=timedesc", "tags")
    assert [t["name"] for t in paged] == ["a", "c", "b"] and all("orderby=timedesc" in link for link in links)

    # Re-tagging moves a tag to the front of timedesc; a page boundary on it neither repeats nor skips.
    first = client.get(f"/acr/v1/{repo}/_tags", params={"orderby": "timedesc", "n": 1})
    assert [t["name"] for t in first.json()["tags"]] == ["a"]
    manifest = client.get(f"/v2/{repo}/manifests/b", headers={"Accept": OCI_MANIFEST}).content
    assert put_manifest(client, repo, "a", manifest).status_code == 201
    rest, _ = follow(client, first.headers["Link"][1:first.headers["Link"].index(">")], "tags")
    assert [t["name"] for t in rest] == ["c", "b"]
    tags = client.get(f"/acr/v1/{repo}/_tags", params={"orderby": "timedesc"}).json()["tags"]
    assert [t["name"] for t in tags] == ["a", "c", "b"] and tags[0]["digest"] == digests["b"]

    filtered = client.get(f"/acr/v1/{repo}/_tags", params={"digest": digests["b"]}).json()["tags"]
    assert [t["name"] for t in filtered] == ["a", "b"]
    paged, links = follow(client, f"/acr/v1/{repo}/_tags?n=1&digest={digests['b']}", "tags")
    assert [t["name"] for t in paged] == ["a", "b"] and f"digest={digests['b'].replace(':', '%3A')}" in links[0]
    assert client.get(f"/acr/v1/{repo}/_tags", params={"digest": sha256(b"none")}).json()["tags"] == []

    assert error_codes(client.get(f"/acr/v1/{repo}/_tags", params={"orderby": "name"})) == ["UNSUPPORTED"]
    assert error_codes(client.get(f"/acr/v1/{repo}/_tags", params={"n": "x"})) == ["PAGINATION_NUMBER_INVALID"]
    missing = client.get(f"/acr/v1/{repo}x/_tags")
    assert missing.status_code == 404 and error_codes(missing) == ["NAME_UNKNOWN"]


def test_tag_properties(client: httpx.Client, server: Server, repo: str) -> None:
    digest, _ = push_image(client, repo, "v1")
    response = client.get(f"/acr/v1/{repo}/_tags/v1")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"registry", "imageName", "tag"}
    assert body["registry"] == server.host and body["imageName"] == repo
    assert set(body["tag"]) == TAG_KEYS
    assert body["tag"]["name"] == "v1" and body["tag"]["digest"] == digest and body["tag"]["signed"] is False
    listed = client.get(f"/acr/v1/{repo}/_tags").json()["tags"][0]
    assert listed == body["tag"]
    missing = client.get(f"/acr/v1/{repo}/_tags/v2")
    assert missing.status_code == 404 and error_codes(missing) == ["TAG_UNKNOWN"]
    assert error_codes(client.get(f"/acr/v1/{repo}x/_tags/v1")) == ["NAME_UNKNOWN"]


def test_manifests_of_a_multi_arch_image(client: httpx.Client, server: Server, repo: str) -> None:
    amd64, amd64_body, amd64_blobs = platform_image(client, repo, "amd64")
    arm64, arm64_body, arm64_blobs = platform_image(client, repo, "arm64")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        descriptor(OCI_MANIFEST, amd64_body, platform={"architecture": "amd64", "os": "linux"}),
        descriptor(OCI_MANIFEST, arm64_body, platform={"architecture": "arm64", "os": "linux"}),
    ]}).encode()
    time.sleep(0.01)
    assert put_manifest(client, repo, "multi", index, OCI_INDEX).status_code == 201
    assert put_manifest(client, repo, "latest", index, OCI_INDEX).status_code == 201
    index_digest = sha256(index)

    body = client.get(f"/acr/v1/{repo}/_manifests").json()
    assert set(body) == {"registry", "imageName", "manifests"}
    assert body["registry"] == server.host and body["imageName"] == repo
    listed = {m["digest"]: m for m in body["manifests"]}
    assert [m["digest"] for m in body["manifests"]] == sorted(listed) == sorted([amd64, arm64, index_digest])
    for digest, image_body, blobs in ((amd64, amd64_body, amd64_blobs), (arm64, arm64_body, arm64_blobs)):
        entry = listed[digest]
        # The list leaves out the platform (it would cost a config read per manifest) and the
        # tags of an untagged manifest, as ACR does.
        assert set(entry) == {"digest", "imageSize", "createdTime", "lastUpdateTime", "mediaType",
                              "configMediaType", "changeableAttributes"}
        assert entry["imageSize"] == len(image_body) + blobs
        assert entry["mediaType"] == OCI_MANIFEST and entry["configMediaType"] == OCI_CONFIG
        assert when(entry["createdTime"]) == when(entry["lastUpdateTime"])
        assert entry["changeableAttributes"] == CHANGEABLE
    entry = listed[index_digest]
    assert set(entry) == {"digest", "imageSize", "createdTime", "lastUpdateTime", "mediaType", "references",
                          "tags", "changeableAttributes"}
    assert entry["mediaType"] == OCI_INDEX and entry["tags"] == ["latest", "multi"]
    assert entry["imageSize"] == len(index) + len(amd64_body) + len(arm64_body)
    assert entry["references"] == [{"digest": amd64, "architecture": "amd64", "os": "linux"},
                                   {"digest": arm64, "architecture": "arm64", "os": "linux"}]
    assert when(entry["createdTime"]) < when(entry["lastUpdateTime"])  # pushed again as `latest`

    single = client.get(f"/acr/v1/{repo}/_manifests/{arm64}").json()
    assert set(single) == {"registry", "imageName", "manifest"} and single["imageName"] == repo
    assert single["manifest"] == {**listed[arm64], "architecture": "arm64", "os": "linux"}
    assert client.get(f"/acr/v1/{repo}/_manifests/{index_digest}").json()["manifest"] == entry

    newest = client.get(f"/acr/v1/{repo}/_manifests", params={"orderby": "timedesc"}).json()["manifests"]
    assert [m["digest"] for m in newest] == [index_digest, arm64, amd64]
    oldest, links = follow(client, f"/acr/v1/{repo}/_manifests?n=2&orderby=timeasc", "manifests")
    assert [m["digest"] for m in oldest] == [amd64, arm64, index_digest] and len(links) == 1
    paged, links = follow(client, f"/acr/v1/{repo}/_manifests?n=1", "manifests")
    assert paged == body["manifests"] and len(links) == 2

    for reference in (sha256(b"absent"), "multi"):
        missing = client.get(f"/acr/v1/{repo}/_manifests/{reference}")
        assert missing.status_code == 404 and error_codes(missing) == ["MANIFEST_UNKNOWN"]
    assert error_codes(client.get(f"/acr/v1/{repo}x/_manifests")) == ["NAME_UNKNOWN"]


def test_delete_tag_and_manifest(client: httpx.Client, repo: str) -> None:
    digest, _ = push_image(client, repo, "v1")
    assert put_manifest(client, repo, "v2", client.get(f"/v2/{repo}/manifests/v1").content).status_code == 201
    other, _ = push_image(client, repo, "keep")
    response = client.delete(f"/acr/v1/{repo}/_tags/v1")
    assert response.status_code == 202 and response.content == b""
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 200  # only the tag went
    gone = client.delete(f"/acr/v1/{repo}/_tags/v1")
    assert gone.status_code == 404 and error_codes(gone) == ["TAG_UNKNOWN"]

    assert client.delete(f"/acr/v1/{repo}/_manifests/{digest}").status_code == 202
    assert client.get(f"/v2/{repo}/manifests/{digest}").status_code == 404
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["keep"]  # v2 went with its manifest
    assert [m["digest"] for m in client.get(f"/acr/v1/{repo}/_manifests").json()["manifests"]] == [other]
    assert error_codes(client.delete(f"/acr/v1/{repo}/_manifests/{digest}")) == ["MANIFEST_UNKNOWN"]


def test_delete_repository(client: httpx.Client, repo: str, storage: StorageView) -> None:
    image, _ = push_image(client, repo, "v1")
    assert put_manifest(client, repo, "stable", client.get(f"/v2/{repo}/manifests/v1").content).status_code == 201
    amd64, amd64_body, _ = platform_image(client, repo, "amd64")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [descriptor(OCI_MANIFEST, amd64_body)]}).encode()
    assert put_manifest(client, repo, "multi", index, OCI_INDEX).status_code == 201
    client.post(f"/v2/{repo}/blobs/uploads/")  # an upload in progress: its session may stay to expire

    response = client.delete(f"/acr/v1/{repo}")
    assert response.status_code == 202
    assert response.json() == {"manifestsDeleted": sorted([image, amd64, sha256(index)]),
                               "tagsDeleted": ["multi", "stable", "v1"]}

    tags = client.get(f"/v2/{repo}/tags/list")
    assert tags.status_code == 404 and error_codes(tags) == ["NAME_UNKNOWN"]
    catalog = client.get("/v2/_catalog", params={"last": repo[:-1], "n": 20}).json()["repositories"]
    assert repo not in catalog
    assert repo not in client.get("/acr/v1/_catalog", params={"last": repo[:-1], "n": 20}).json()["repositories"]
    assert error_codes(client.get(f"/acr/v1/{repo}")) == ["NAME_UNKNOWN"]
    assert client.get(f"/v2/{repo}/manifests/{image}").status_code == 404
    assert {key[:2] for key in storage.repository_rows(repo)} <= {"u:"}  # links gone too
    again = client.delete(f"/acr/v1/{repo}")
    assert again.status_code == 404 and error_codes(again) == ["NAME_UNKNOWN"]

    push_image(client, repo, "v1")  # the name can be used again
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["v1"]


def test_catalog_pages_with_link(client: httpx.Client, repo: str) -> None:
    names = [f"{repo}/{suffix}" for suffix in ("a", "b", "c")]
    for name in names:
        push_image(client, name, "v1")
    page = client.get("/acr/v1/_catalog", params={"n": 2, "last": repo})
    assert page.json() == {"repositories": names[:2]}
    assert page.headers["Link"] == f'</acr/v1/_catalog?n=2&last={names[1].replace("/", "%2F")}>; rel="next"'


def test_repository_delete_racing_pushes_on_other_instances(instances: list[Server], repo: str) -> None:
    """Pushes on two instances while a third deletes the repository: afterwards every tag names a
    manifest that pulls, and each manifest either survived whole or went with its tags."""
    a, b, c = (httpx.Client(base_url=server.url, timeout=60) for server in instances)
    try:
        for i in range(6):
            push_image(a, repo, f"old{i}")
        stop = threading.Event()
        pushed: list[str] = []

        def push(client: httpx.Client, prefix: str) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    push_image(client, repo, f"{prefix}{i}")
                except AssertionError:  # refused (MANIFEST_BLOB_UNKNOWN): its blob links went meanwhile
                    continue
                pushed.append(f"{prefix}{i}")

        threads = [threading.Thread(target=push, args=(client, prefix)) for client, prefix in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        response = c.delete(f"/acr/v1/{repo}")
        stop.set()
        for thread in threads:
            thread.join()
        assert response.status_code == 202, response.text
        assert pushed  # pushes did land while the delete ran
        assert {f"old{i}" for i in range(6)} <= set(response.json()["tagsDeleted"])
        listed = c.get(f"/v2/{repo}/tags/list")
        survivors = listed.json()["tags"] if listed.status_code == 200 else []
        assert listed.status_code in (200, 404)
        for tag in survivors:
            manifest = c.get(f"/v2/{repo}/manifests/{tag}")
            assert manifest.status_code == 200, tag
            for layer in json.loads(manifest.content)["layers"]:
                assert c.head(f"/v2/{repo}/blobs/{layer['digest']}").status_code == 200, tag
        deleted = set(response.json()["tagsDeleted"])
        assert set(pushed) - deleted <= set(survivors)  # nothing lost but what the delete reported
    finally:
        for client in (a, b, c):
            client.close()
