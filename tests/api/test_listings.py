"""Content discovery: API root, tags list, catalog, referrers; and routing errors."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.helpers import OCI_EMPTY, OCI_MANIFEST, descriptor, error_codes, push_blob, push_image, put_manifest, sha256


def test_api_root(client: httpx.Client) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert client.get("/v2").status_code == 200


def test_tags_are_listed_in_lexical_order_with_pagination(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "seed")
    tags = ["v1.10", "v1.2", "A", "latest", "v1.9", "_x"]
    for tag in tags:
        assert put_manifest(client, repo, tag, body).status_code == 201
    expected = sorted(tags + ["seed"])
    assert client.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": expected}
    first = client.get(f"/v2/{repo}/tags/list", params={"n": 3})
    assert first.json()["tags"] == expected[:3]
    link = first.headers["Link"]
    assert link.startswith(f"</v2/{repo}/tags/list?") and link.endswith('>; rel="next"')
    second = client.get(link[1:link.index(">")])
    assert second.json()["tags"] == expected[3:6]
    rest = client.get(f"/v2/{repo}/tags/list", params={"n": 3, "last": expected[5]})
    assert rest.json()["tags"] == expected[6:]
    assert "Link" not in rest.headers
    assert client.get(f"/v2/{repo}/tags/list", params={"n": 0}).json()["tags"] == []
    assert error_codes(client.get(f"/v2/{repo}/tags/list", params={"n": "-1"})) == ["PAGINATION_NUMBER_INVALID"]


def test_tags_of_unknown_repository(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_catalog_lists_repositories_in_order_with_pagination(client: httpx.Client) -> None:
    prefix = f"cat{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}/a", f"{prefix}/a-b", f"{prefix}/a/b", f"{prefix}/a.b", f"{prefix}/a0", f"{prefix}/a_b"]
    for name in names:
        push_image(client, name, "latest")
    listed: list[str] = []
    url: str | None = "/v2/_catalog?n=2"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = response.json()["repositories"]
        assert len(page) <= 2
        listed += page
        link = response.headers.get("Link")
        url = link[1:link.index(">")] if link else None
    ours = [name for name in listed if name.startswith(prefix)]
    assert ours == sorted(names)
    assert listed == sorted(listed)


def test_referrers_api(client: httpx.Client, repo: str) -> None:
    subject_digest, subject_body = push_image(client, repo, "app")
    empty = b"{}"
    push_blob(client, repo, empty)

    def push_referrer(artifact_type: str, payload: bytes) -> str:
        push_blob(client, repo, payload)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": descriptor(OCI_EMPTY, empty),
            "layers": [descriptor("application/octet-stream", payload)],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject_body)},
            "annotations": {"org.example.kind": artifact_type},
        }).encode()
        response = put_manifest(client, repo, sha256(body), body)
        assert response.status_code == 201, response.text
        assert response.headers["OCI-Subject"] == subject_digest
        return response.headers["Docker-Content-Digest"]

    sbom = push_referrer("application/spdx+json", b"sbom")
    signature = push_referrer("application/vnd.example.signature", b"sig")
    response = client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/vnd.oci.image.index.v1+json")
    index = response.json()
    assert index["schemaVersion"] == 2
    assert {m["digest"] for m in index["manifests"]} == {sbom, signature}
    entry = next(m for m in index["manifests"] if m["digest"] == sbom)
    assert entry["artifactType"] == "application/spdx+json"
    assert entry["annotations"] == {"org.example.kind": "application/spdx+json"}
    assert entry["mediaType"] == OCI_MANIFEST
    filtered = client.get(f"/v2/{repo}/referrers/{subject_digest}", params={"artifactType": "application/spdx+json"})
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sbom]
    # Deleting a referrer takes it out of the list.
    assert client.delete(f"/v2/{repo}/manifests/{sbom}").status_code == 202
    after = client.get(f"/v2/{repo}/referrers/{subject_digest}").json()
    assert [m["digest"] for m in after["manifests"]] == [signature]


def test_referrers_before_the_subject_exists(client: httpx.Client, repo: str) -> None:
    empty = b"{}"
    push_blob(client, repo, empty)
    future = "sha256:" + "ab" * 32
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.test",
        "config": descriptor(OCI_EMPTY, empty), "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": future, "size": 100},
    }).encode()
    assert put_manifest(client, repo, "sig", body).status_code == 201
    listed = client.get(f"/v2/{repo}/referrers/{future}").json()["manifests"]
    assert len(listed) == 1
    none = client.get(f"/v2/{repo}/referrers/sha256:{'cd' * 32}")
    assert none.status_code == 200 and none.json()["manifests"] == []
    assert error_codes(client.get(f"/v2/{repo}/referrers/sha256:short")) == ["DIGEST_INVALID"]


def test_unknown_routes_and_methods(client: httpx.Client, repo: str) -> None:
    response = client.get("/v2/nothing-here")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    response = client.post(f"/v2/{repo}/manifests/latest")
    assert response.status_code == 405
    assert "PUT" in response.headers["Allow"]
