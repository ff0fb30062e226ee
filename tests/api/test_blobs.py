"""Blob pull: HEAD, GET (redirect and proxy delivery), Range, DELETE."""

from __future__ import annotations

import os

import httpx

from tests.helpers import error_codes, push_blob, sha256


def test_head_reports_length_and_digest(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3000)
    digest = push_blob(client, repo, data)
    response = client.head(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "3000"
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content == b""


def test_get_redirects_to_a_read_only_url_for_that_blob(client: httpx.Client, repo: str) -> None:
    data = os.urandom(5000)
    digest = push_blob(client, repo, data)
    response = client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 307
    location = response.headers["Location"]
    assert "sig=" in location and "sp=r" in location
    assert response.headers["Docker-Content-Digest"] == digest
    followed = httpx.get(location)
    assert followed.status_code == 200 and followed.content == data
    # The SAS grants read only: writing through it is refused by storage.
    assert httpx.put(location, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403


def test_redirected_get_honours_range(client: httpx.Client, repo: str) -> None:
    data = os.urandom(4096)
    digest = push_blob(client, repo, data)
    response = client.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-199"}, follow_redirects=True)
    assert response.status_code == 206
    assert response.content == data[100:200]


def test_proxy_get_streams_bytes(proxy_client: httpx.Client, repo: str) -> None:
    data = os.urandom(9 * 1024 * 1024 + 17)  # more than one storage read chunk
    digest = push_blob(proxy_client, repo, data)
    response = proxy_client.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Docker-Content-Digest"] == digest
    assert sha256(response.content) == digest


def test_proxy_range_requests(proxy_client: httpx.Client, repo: str) -> None:
    data = os.urandom(1000)
    digest = push_blob(proxy_client, repo, data)
    url = f"/v2/{repo}/blobs/{digest}"
    middle = proxy_client.get(url, headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206
    assert middle.headers["Content-Range"] == "bytes 10-19/1000"
    assert middle.content == data[10:20]
    open_ended = proxy_client.get(url, headers={"Range": "bytes=990-"})
    assert open_ended.status_code == 206 and open_ended.content == data[990:]
    suffix = proxy_client.get(url, headers={"Range": "bytes=-5"})
    assert suffix.status_code == 206 and suffix.content == data[-5:]
    clamped = proxy_client.get(url, headers={"Range": "bytes=995-5000"})
    assert clamped.status_code == 206 and clamped.content == data[995:]
    outside = proxy_client.get(url, headers={"Range": "bytes=1000-1010"})
    assert outside.status_code == 416
    assert outside.headers["Content-Range"] == "bytes */1000"
    garbage = proxy_client.get(url, headers={"Range": "pages=1-2"})
    assert garbage.status_code == 200 and garbage.content == data


def test_unknown_blob(client: httpx.Client, repo: str) -> None:
    missing = sha256(b"never pushed")
    for method in ("GET", "DELETE"):
        response = client.request(method, f"/v2/{repo}/blobs/{missing}")
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UNKNOWN"]
    assert client.head(f"/v2/{repo}/blobs/{missing}").status_code == 404


def test_blob_is_visible_only_through_its_repository(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, os.urandom(100))
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
    assert client.head(f"/v2/{repo}-other/blobs/{digest}").status_code == 404


def test_malformed_digests_are_refused(client: httpx.Client, repo: str) -> None:
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "sha256:" + "A" * 64, "nocolon"):
        response = client.get(f"/v2/{repo}/blobs/{bad}")
        assert response.status_code == 400, bad
        assert error_codes(response) == ["DIGEST_INVALID"]


def test_delete_unlinks_blob_from_repository_only(client: httpx.Client, repo: str) -> None:
    data = os.urandom(200)
    digest = push_blob(client, repo, data)
    push_blob(client, f"{repo}/b", data)
    assert client.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    assert client.get(f"/v2/{repo}/b/blobs/{digest}", follow_redirects=True).content == data


def test_sha512_blob(client: httpx.Client, repo: str) -> None:
    import hashlib

    data = os.urandom(777)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    assert client.head(f"/v2/{repo}/blobs/{digest}").headers["Docker-Content-Digest"] == digest
