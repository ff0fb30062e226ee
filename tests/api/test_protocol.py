"""Corners of the distribution spec (v1.1 and main): references, ranges, `?tag=`, mounts
without `from`, chunk sizes, strict grammars, the catalog after deletes, finished uploads."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from registry.api.http import is_decimal
from tests.conftest import Server
from tests.helpers import error_codes, image_manifest, push_blob, push_image, put_manifest, sha256

# --- references ------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["-leading", ".hidden", "a" * 129, "sha256:abc", "md5:" + "0" * 32,
                                       "latest%0A", "tag%20space"])
def test_a_reference_that_is_neither_tag_nor_digest_is_unknown(client: httpx.Client, repo: str,
                                                                reference: str) -> None:
    push_image(client, repo, "latest")
    response = client.get(f"/v2/{repo}/manifests/{reference}")
    assert response.status_code == 404, response.text
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    assert client.head(f"/v2/{repo}/manifests/{reference}").status_code == 404
    assert client.delete(f"/v2/{repo}/manifests/{reference}").status_code == 404


def test_a_push_to_an_invalid_reference_is_refused(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    assert error_codes(put_manifest(client, repo, "latest%0A", body)) == ["TAG_INVALID"]
    assert error_codes(put_manifest(client, repo, "-x", body)) == ["TAG_INVALID"]
    assert error_codes(put_manifest(client, repo, "sha256:abc", body)) == ["DIGEST_INVALID"]
    assert client.get(f"/v2/{repo}/tags/list").status_code == 404  # nothing was stored


def test_names_are_matched_whole(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, b"mount me")
    response = client.post(f"/v2/{repo}/other/blobs/uploads/", params={"mount": digest, "from": f"{repo}\n"})
    assert response.status_code == 400 and error_codes(response) == ["NAME_INVALID"]
    assert client.get(f"/v2/{repo}%0A/tags/list").status_code in (400, 404)


# --- PUT by digest with ?tag= ----------------------------------------------------------


def test_put_by_digest_applies_every_tag_parameter(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    digest = sha256(body)
    response = client.put(f"/v2/{repo}/manifests/{digest}", params=[("tag", "1.2.3"), ("tag", "1.2"),
                                                                    ("tag", "latest"), ("tag", "1.2")],
                          content=body, headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Tag"] == "1.2.3, 1.2, latest"
    assert response.headers["Docker-Content-Digest"] == digest
    for tag in ("1.2.3", "1.2", "latest"):
        assert client.get(f"/v2/{repo}/manifests/{tag}").headers["Docker-Content-Digest"] == digest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["1.2", "1.2.3", "latest"]


def test_put_by_digest_with_a_bad_tag_applies_none(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    digest = sha256(body)
    response = client.put(f"/v2/{repo}/manifests/{digest}", params=[("tag", "good"), ("tag", "-bad")],
                          content=body, headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 400 and error_codes(response) == ["TAG_INVALID"]
    assert client.get(f"/v2/{repo}/manifests/good").status_code == 404
    too_many = [("tag", f"t{i}") for i in range(65)]
    response = client.put(f"/v2/{repo}/manifests/{digest}", params=too_many, content=body,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 414
    assert client.get(f"/v2/{repo}/manifests/t0").status_code == 404


def test_put_by_digest_without_tags_has_no_oci_tag_header(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    response = put_manifest(client, repo, sha256(body), body)
    assert response.status_code == 201 and "OCI-Tag" not in response.headers


# --- blob ranges, in both delivery modes --------------------------------------------------

RANGES = [
    ("bytes=10-19", 206, slice(10, 20)),
    ("bytes=990-", 206, slice(990, 1000)),
    ("bytes=0-", 206, slice(0, 1000)),
    ("bytes=-5", 206, slice(995, 1000)),
    ("bytes=-5000", 206, slice(0, 1000)),
    ("bytes=995-5000", 206, slice(995, 1000)),
    ("bytes=1000-1010", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=0-1,5-6", 200, slice(0, 1000)),
    ("bytes=20-10", 200, slice(0, 1000)),
    ("pages=1-2", 200, slice(0, 1000)),
    ("bytes=²-5", 200, slice(0, 1000)),
]


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_every_range_form_gives_the_right_bytes(client: httpx.Client, proxy_client: httpx.Client, repo: str,
                                                mode: str) -> None:
    http = client if mode == "redirect" else proxy_client
    data = os.urandom(1000)
    digest = push_blob(http, repo, data)
    for header, status, part in RANGES:
        response = http.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header.encode()},
                            follow_redirects=True)
        assert response.status_code == status, (header, response.status_code, response.headers)
        if part is None:
            assert response.headers["Content-Range"] == "bytes */1000", header
            continue
        expected = data[part]
        assert response.content == expected, header
        assert response.headers["Content-Length"] == str(len(expected)), header
        if status == 206:
            assert response.headers["Content-Range"] == f"bytes {part.start}-{part.stop - 1}/1000", header


def test_plain_ranges_are_redirected_and_others_served_directly(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, repo, os.urandom(100))
    url = f"/v2/{repo}/blobs/{digest}"
    redirected = client.get(url, headers={"Range": "bytes=0-9"})
    assert redirected.status_code == 307
    assert redirected.headers["Docker-Content-Digest"] == digest
    suffix = client.get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and len(suffix.content) == 10
    assert suffix.headers["Docker-Content-Digest"] == digest


# --- empty and sha512 blobs, every upload method ------------------------------------------


def _finish(client: httpx.Client, repo: str, method: str, data: bytes, digest: str) -> httpx.Response:
    uploads = f"/v2/{repo}/blobs/uploads/"
    algorithm = {"digest-algorithm": digest.partition(":")[0]}
    if method == "monolithic":
        return client.post(uploads, params={"digest": digest}, content=data)
    location = client.post(uploads, params=algorithm).headers["Location"]
    if method == "post-put":
        return client.put(location, params={"digest": digest}, content=data)
    if method == "patch-stream":
        location = client.patch(location, content=data).headers["Location"]
    elif method == "chunked":
        half = len(data) // 2
        for start, chunk in ((0, data[:half]), (half, data[half:])):
            if chunk:
                response = client.patch(location, content=chunk, headers={
                    "Content-Range": f"{start}-{start + len(chunk) - 1}", "Content-Type": "application/octet-stream"})
                assert response.status_code == 202, response.text
                location = response.headers["Location"]
    return client.put(location, params={"digest": digest})


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("size", [0, 1, 70_000])
@pytest.mark.parametrize("method", ["monolithic", "post-put", "patch-stream", "chunked"])
def test_every_algorithm_size_and_method(client: httpx.Client, repo: str, algorithm: str, size: int,
                                         method: str) -> None:
    data = os.urandom(size)
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    response = _finish(client, repo, method, data, digest)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    head = client.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size)
    assert client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data


# --- uploads: chunk size, status, Content-Range grammar -----------------------------------


def test_upload_session_advertises_a_minimum_chunk_length(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    assert int(response.headers["OCI-Chunk-Min-Length"]) >= 64 * 1024


def test_finished_and_cancelled_uploads_are_unknown_on_every_instance(instances: list[Server],
                                                                      repo: str) -> None:
    clients = [httpx.Client(base_url=instance.url, timeout=30) for instance in instances]
    try:
        first = clients[0]
        finished = first.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        data = os.urandom(100)
        assert first.put(finished, params={"digest": sha256(data)}, content=data).status_code == 201
        cancelled = first.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        first.patch(cancelled, content=b"partial")
        assert first.delete(cancelled).status_code == 204
        for http in clients:
            for location in (finished, cancelled):
                response = http.get(location)
                assert response.status_code == 404, (http.base_url, location)
                assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    finally:
        for http in clients:
            http.close()


@pytest.mark.parametrize("header", ["bytes=0-9", "0-9/10", "0 - 9", "-9", "0-", "bytes 0-9", "0-٩"])
def test_patch_content_range_follows_the_spec_grammar(client: httpx.Client, repo: str, header: str) -> None:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    response = client.patch(location, content=b"0123456789", headers={"Content-Range": header.encode()})
    if header == "bytes 0-9":  # RFC 9110's unit prefix is tolerated; the spec's form is below
        assert response.status_code == 202
        return
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]
    accepted = client.patch(location, content=b"0123456789", headers={"Content-Range": "0-9"})
    assert accepted.status_code == 202 and accepted.headers["Range"] == "0-9"


@pytest.mark.parametrize("value", ["²", "١٠", "-1", "1e3", " 5"])
def test_page_size_must_be_ascii_digits(client: httpx.Client, repo: str, value: str) -> None:
    push_image(client, repo, "latest")
    response = client.get(f"/v2/{repo}/tags/list", params={"n": value})
    assert response.status_code == 400, response.text
    assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"]


def test_header_numbers_are_ascii_digits_of_sane_length() -> None:
    # The HTTP layer (h11, nginx) already refuses a Content-Length like "²"; Berth's own parser
    # must not rely on that, nor hand int() the 4300+ digits it refuses with a ValueError.
    for text in ("²", "١٠", "", "-1", " 5", "1" * 19, "9" * 5000):
        assert not is_decimal(text), text
    assert is_decimal("0") and is_decimal("9" * 18)


def test_an_absurdly_large_page_size_is_clamped(client: httpx.Client, repo: str) -> None:
    push_image(client, repo, "latest")
    response = client.get(f"/v2/{repo}/tags/list", params={"n": "9" * 5000})
    assert response.status_code == 200 and response.json()["tags"] == ["latest"]


# --- mounts without `from` ----------------------------------------------------------------


def test_mount_without_from_finds_the_blob_anywhere(client: httpx.Client, repo: str) -> None:
    digest = push_blob(client, f"{repo}/source", os.urandom(300))
    response = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/{repo}/target/blobs/{digest}"
    assert client.head(f"/v2/{repo}/target/blobs/{digest}").status_code == 200
    unknown = client.post(f"/v2/{repo}/target/blobs/uploads/", params={"mount": sha256(os.urandom(8))})
    assert unknown.status_code == 202 and "Location" in unknown.headers


# --- the catalog after deletes --------------------------------------------------------------


def _catalog(http: httpx.Client) -> list[str]:
    names: list[str] = []
    last = None
    while True:
        response = http.get("/v2/_catalog", params={"n": 1000, **({"last": last} if last else {})})
        assert response.status_code == 200
        names += response.json()["repositories"]
        if "Link" not in response.headers:
            return names
        last = names[-1]


def test_a_repository_whose_last_manifest_is_deleted_leaves_the_catalog(instances: list[Server],
                                                                         repo: str) -> None:
    clients = [httpx.Client(base_url=instance.url, timeout=30) for instance in instances]
    try:
        first, second, third = clients
        digest, body = push_image(first, repo, "v1")
        other, _ = push_image(second, repo, "v2")  # `second` now knows the repository
        assert repo in _catalog(third)
        assert third.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
        assert repo in _catalog(first)  # v2 is still there
        assert third.delete(f"/v2/{repo}/manifests/{other}").status_code == 202
        for http in clients:
            assert repo not in _catalog(http)
            response = http.get(f"/v2/{repo}/tags/list")
            assert response.status_code == 404 and error_codes(response) == ["NAME_UNKNOWN"]
        # A push through an instance that registered the repository before brings it back.
        assert put_manifest(second, repo, "again", body).status_code == 201
        for http in clients:
            assert repo in _catalog(http)
            assert http.get(f"/v2/{repo}/tags/list").json()["tags"] == ["again"]
    finally:
        for http in clients:
            http.close()


def test_a_failed_first_push_lists_no_repository(client: httpx.Client, repo: str) -> None:
    body = image_manifest(client, repo)
    response = put_manifest(client, f"{repo}/empty", "v1", body)  # its blobs are in `repo` only
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]
    assert f"{repo}/empty" not in _catalog(client)


def test_a_catalog_page_thinned_by_emptied_repositories_stays_cheap_and_continues(client: httpx.Client,
                                                                                 repo: str) -> None:
    # Twelve emptied repositories sort before a live one: a page of one may come back short
    # (at most four catalog reads per request), and its Link still leads on to the live one.
    for index in range(12):
        digest, _ = push_image(client, f"{repo}/a{index:02}", "v1")
        assert client.delete(f"/v2/{repo}/a{index:02}/manifests/{digest}").status_code == 202
    push_image(client, f"{repo}/z", "v1")
    seen, last, requests = [], repo, 0
    while last is not None and requests < 20:
        response = client.get("/v2/_catalog", params={"n": 1, "last": last})
        requests += 1
        names = response.json()["repositories"]
        assert len(names) <= 1
        seen += [name for name in names if name.startswith(f"{repo}/")]
        link = response.headers.get("Link")
        last = httpx.URL(link[1:link.index(">")]).params["last"] if link else None
        if seen:
            break
    assert seen == [f"{repo}/z"] and requests > 1


def test_a_conditional_manifest_get_is_304_when_the_digest_matches(client: httpx.Client, repo: str) -> None:
    digest, body = push_image(client, repo, "v1")
    etag = client.get(f"/v2/{repo}/manifests/v1").headers["ETag"]
    assert etag == f'"{digest}"'
    for method in ("GET", "HEAD"):
        for header in (etag, f'"sha256:{"0" * 64}", {etag}', f"W/{etag}", "*"):
            response = client.request(method, f"/v2/{repo}/manifests/v1", headers={"If-None-Match": header})
            assert response.status_code == 304 and response.content == b"", (method, header)
            assert response.headers["Docker-Content-Digest"] == digest and response.headers["ETag"] == etag
        other = client.request(method, f"/v2/{repo}/manifests/v1", headers={"If-None-Match": f'"sha256:{"0" * 64}"'})
        assert other.status_code == 200
    assert client.get(f"/v2/{repo}/manifests/{digest}", headers={"If-None-Match": etag}).status_code == 304
    missing = client.get(f"/v2/{repo}/manifests/nope", headers={"If-None-Match": "*"})
    assert missing.status_code == 404
